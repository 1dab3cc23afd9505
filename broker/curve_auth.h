/*  curve_auth: the broker's ZAP handler (ZeroMQ RFC 27). libzmq asks it,
    for every CURVE connection to a socket with a ZAP domain, whether the
    client's public key may in; it answers yes only for the public keys of
    the certificates in the allow-list directory (re-read when the
    directory changes, as zcertstore does).

    It replaces CZMQ's zauth for one thing zauth cannot do: say who was
    refused. Each refused key is logged with its Z85 text and the peer's
    address, at most once a minute per key (a peer retrying every second
    does not flood the log), and counted.

    One per process: it binds the context's ZAP endpoint
    (inproc://zeromq.zap.01).  */

#ifndef LOOM_CURVE_AUTH_H
#define LOOM_CURVE_AUTH_H

#include <stdint.h>

typedef struct loom_curve_auth loom_curve_auth;

//  Start the handler for the allow-list directory dir (an absolute path).
//  Returns NULL with *error (malloc'd) when the ZAP endpoint cannot be bound.
loom_curve_auth *loom_curve_auth_new(const char *dir, char **error);

//  Stop the handler. Accepts NULL.
void loom_curve_auth_destroy(loom_curve_auth **self_p);

//  Connections refused since the start (unlisted keys, other mechanisms).
uint64_t loom_curve_auth_refused(loom_curve_auth *self);

//  The allow-list directory.
const char *loom_curve_auth_dir(loom_curve_auth *self);

#endif
