/*  curve_watch: why a broker did not let this peer in. See curve_watch.h.

    What libzmq 4.3 reports on the connecting side, and what it means:
    - HANDSHAKE_FAILED_AUTH (value: the ZAP status, 400): the broker's
      allow-list does not hold our key;
    - HANDSHAKE_FAILED_PROTOCOL with MECHANISM_MISMATCH: one side uses CURVE
      and the other does not;
    - HANDSHAKE_FAILED_NO_DETAIL under CURVE: the broker closed the
      connection in the middle of the handshake, which is what a CURVE
      server does when it cannot open our HELLO: the key we were given as
      the broker's is not its key.  */

#include "curve_watch.h"

#include "base.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define S_EVENTS                                                                                   \
    (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |                        \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

struct loom_curve_watch {
    void *sock;       //  the watched socket (not owned)
    void *pair;       //  our end of its monitor
    bool curve;       //  the socket is a CURVE client
    bool failed;      //  the latest handshake failed
    bool refused;     //  ... and the broker said no
    char reason[256]; //  ... why
};

loom_curve_watch *
loom_curve_watch_new(void *ctx, void *sock, bool curve)
{
    static atomic_uint seq;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://loom-curve-watch-%d-%u", (int)getpid(),
             atomic_fetch_add(&seq, 1));
    if (zmq_socket_monitor(sock, ep, S_EVENTS) != 0)
        return NULL;
    void *pair = zmq_socket(ctx, ZMQ_PAIR);
    int zero = 0;
    if (!pair || zmq_setsockopt(pair, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(pair, ep) != 0) {
        if (pair)
            zmq_close(pair);
        zmq_socket_monitor(sock, NULL, 0);
        return NULL;
    }
    loom_curve_watch *self = loom_xcalloc(1, sizeof *self);
    self->sock = sock;
    self->pair = pair;
    self->curve = curve;
    return self;
}

void
loom_curve_watch_destroy(loom_curve_watch **self_p)
{
    loom_curve_watch *self = *self_p;
    if (!self)
        return;
    zmq_socket_monitor(self->sock, NULL, 0);
    zmq_close(self->pair);
    free(self);
    *self_p = NULL;
}

//  The sentence for one failure event.
static void
s_explain(loom_curve_watch *self, uint16_t event, uint32_t value)
{
    const char *text = NULL;
    self->refused = true;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        text = "the broker refused this key: is this peer's public certificate in the "
               "broker's allow-list (its --curve-dir)?";
    else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
             value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        text = self->curve ? "the broker does not use CURVE (started without --curve-dir): "
                             "drop --cert and --server-key, or secure the broker"
                           : "the broker requires CURVE: give --cert FILE (from loom keygen) "
                             "and --server-key KEY (the broker's public key)";
    else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
             value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        text = "the CURVE handshake failed on a cryptographic check: does --server-key name "
               "this broker's public key?";
    else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && self->curve)
        text = "the broker closed the connection during the CURVE handshake: the broker's "
               "public key does not match --server-key (or it is not a loom broker)";
    if (text) {
        snprintf(self->reason, sizeof self->reason, "%s", text);
        return;
    }
    self->refused = event != ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        snprintf(self->reason, sizeof self->reason,
                 "the connection to the broker broke off during the handshake (%s)",
                 zmq_strerror((int)value));
    else
        snprintf(self->reason, sizeof self->reason,
                 "the handshake with the broker failed: protocol error 0x%x (is it a loom "
                 "broker of this version?)",
                 (unsigned)value);
}

const char *
loom_curve_watch_reason(loom_curve_watch *self, bool *refused)
{
    if (refused)
        *refused = false;
    if (!self)
        return NULL;
    while (true) {
        zmq_msg_t head, addr;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, self->pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            break;
        }
        //  Version 1 events: 2 bytes event, 4 bytes value; then the endpoint.
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&head) >= 6) {
            memcpy(&event, zmq_msg_data(&head), 2);
            memcpy(&value, (const uint8_t *)zmq_msg_data(&head) + 2, 4);
        }
        bool more = zmq_msg_more(&head);
        zmq_msg_close(&head);
        while (more) {
            zmq_msg_init(&addr);
            if (zmq_msg_recv(&addr, self->pair, 0) < 0)
                more = false;
            else
                more = zmq_msg_more(&addr);
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            self->failed = false;
        else if (event & S_EVENTS) {
            self->failed = true;
            s_explain(self, event, value);
        }
    }
    if (!self->failed)
        return NULL;
    if (refused)
        *refused = self->refused;
    return self->reason;
}
