/*  curve: CURVE security for loom's sockets (one place for the client,
    the worker processes, the supervisor and the broker).

    Certificates are CZMQ zcert files: `loom keygen NAME` writes NAME (the
    public certificate, safe to copy) and NAME_secret (both keys, keep it
    private). A peer's --cert FILE names either of them; the secret keys are
    read from FILE_secret when it exists, else from FILE itself.

    The broker's key, for a client or worker (--server-key), is either the
    40-character Z85 text of the public key or a path to the broker's public
    certificate file.

    Server side: the broker's ROUTERs get CURVE_SERVER and the broker's keys
    before they bind, and a zauth actor (CZMQ's ZAP handler) accepts only the
    public keys of the certificates in the allow-list directory, logging
    each refused key (curve_auth.h). The ZAP handler is per process (one per
    ZeroMQ context): one process can run only one CURVE allow-list at a
    time; a second with another directory is refused.  */

#ifndef LOOM_CURVE_H
#define LOOM_CURVE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Check and load a client-side configuration without a socket: both NULL
//  (no CURVE) is fine; one without the other, an unreadable certificate, a
//  certificate without its secret key or a bad server key is refused with
//  *error (malloc'd, says what is wrong). Returns 0 or LOOM_EINVAL.
int loom_curve_client_check(const char *cert_path, const char *server_key, char **error);

//  Make sock (a libzmq socket handle, before connect) a CURVE client of the
//  broker whose public key is server_key, with this peer's keys from
//  cert_path. Both NULL: nothing to do, returns 0. Returns 0 or
//  LOOM_EINVAL with *error (malloc'd) as loom_curve_client_check.
int loom_curve_client_setup(void *sock, const char *cert_path, const char *server_key,
                            char **error);

//  A broker's CURVE server state: its keys and the allow-list (zauth).
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

#ifdef __cplusplus
}
#endif

#endif
