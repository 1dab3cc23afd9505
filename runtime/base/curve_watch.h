/*  curve_watch: why a broker did not let this peer in. A socket monitor
    (zmq_socket_monitor) on a client-side socket reports libzmq's handshake
    events; the watch turns the last failure into a sentence naming the
    likely cause, so that a client, `loom map`, `loom status` and `loom
    worker` say "the broker refused this key" instead of "timed out".

    Use from the thread that owns the socket; destroy the watch before the
    socket is closed.  */

#ifndef LOOM_CURVE_WATCH_H
#define LOOM_CURVE_WATCH_H

#include <stdbool.h>

typedef struct loom_curve_watch loom_curve_watch;

//  Watch sock (a libzmq handle in context ctx), before it connects. curve:
//  the socket has CURVE client keys. Returns NULL if the monitor cannot
//  start (then there is nothing to tell, and nothing else changes).
loom_curve_watch *loom_curve_watch_new(void *ctx, void *sock, bool curve);

//  Stop watching and free. Accepts NULL.
void loom_curve_watch_destroy(loom_curve_watch **self_p);

//  Read the events so far. Returns why the latest handshake failed (text
//  owned by the watch, valid until the next call), or NULL when none
//  failed or one has succeeded since. *refused (may be NULL) is true when
//  the broker answered and said no (a wrong key or mechanism), as opposed
//  to a connection that broke off.
const char *loom_curve_watch_reason(loom_curve_watch *self, bool *refused);

#endif
