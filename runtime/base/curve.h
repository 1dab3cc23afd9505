/*  curve: CURVE security for the sockets of loom's peers (one place for the
    client, the worker processes, the supervisor and the tools).

    Certificates are CZMQ zcert files: `loom keygen NAME` writes NAME (the
    public certificate, safe to copy) and NAME_secret (both keys, keep it
    private). A peer's --cert FILE names either of them; the secret keys are
    read from FILE_secret when it exists, else from FILE itself.

    The broker's key, for a client or worker (--server-key), is either the
    40-character Z85 text of the public key or a path to the broker's public
    certificate file.

    The server side, the broker's, is broker/curve_server.h.  */

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

//  This peer's certificate from cert_path (FILE_secret read first, if
//  there), with both keys; NULL with *error (malloc'd) saying what is wrong.
//  The caller owns it (zcert_destroy).
typedef struct _zcert_t zcert_t;
zcert_t *loom_curve_load_cert(const char *cert_path, char **error);

#ifdef __cplusplus
}
#endif

#endif
