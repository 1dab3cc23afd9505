/*  curve_server: the broker's side of CURVE. The broker's ROUTERs get
    CURVE_SERVER and the broker's keys before they bind, and a ZAP handler
    (curve_auth.h) accepts only the public keys of the certificates in the
    allow-list directory, logging each refused key. The ZAP handler is per
    process (one per ZeroMQ context): one process can run only one CURVE
    allow-list at a time; a second with another directory is refused. The
    peers' side (certificates, keys on a connecting socket) is
    runtime/base/curve.h.  */

#ifndef LOOM_CURVE_SERVER_H
#define LOOM_CURVE_SERVER_H

#include <stdint.h>

//  A broker's CURVE server state: its keys and the allow-list (curve_auth.h).
typedef struct loom_curve_server loom_curve_server;

//  Start the allow-list of the public certificates in allow_dir (re-read
//  when the directory changes; curve_auth.h) and load the broker's certificate. Returns
//  NULL with *error (malloc'd) when the directory or certificate cannot be
//  used, or when this process already serves another directory.
loom_curve_server *loom_curve_server_new(const char *allow_dir, const char *cert_path,
                                         char **error);

//  Make sock (a libzmq handle, before bind) a CURVE server with our keys.
//  Returns 0 or LOOM_EIO.
int loom_curve_server_setup(loom_curve_server *self, void *sock);

//  Connections the process's allow-list refused since it started.
uint64_t loom_curve_server_refused(loom_curve_server *self);

//  The broker's public key as Z85 text (40 characters).
const char *loom_curve_server_public(loom_curve_server *self);

void loom_curve_server_destroy(loom_curve_server **self_p);

#endif
