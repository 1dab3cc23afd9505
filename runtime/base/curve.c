/*  curve: CURVE security for loom's sockets. See curve.h.  */

#include "curve.h"

#include "base.h"

#include <czmq.h>
#include <loom/errors.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define S_KEY_Z85 40 //  Z85 text of a 32-byte key

static void s_error(char **error, const char *fmt, ...) LOOM_PRINTF(2, 3);

static void
s_error(char **error, const char *fmt, ...)
{
    if (!error)
        return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    *error = loom_xstrdup(text);
}

static bool
s_key_zero(const uint8_t *key)
{
    for (int i = 0; i < 32; i++)
        if (key[i])
            return false;
    return true;
}

static bool
s_regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

zcert_t *
loom_curve_load_cert(const char *cert_path, char **error)
{
    if (!cert_path || !*cert_path) {
        s_error(error, "CURVE needs a certificate (--cert FILE, made by loom keygen)");
        return NULL;
    }
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", cert_path);
    if (!s_regular_file(cert_path) && !s_regular_file(secret)) {
        s_error(error, "certificate %s: no such file", cert_path);
        return NULL;
    }
    zcert_t *cert = zcert_load(cert_path); //  reads FILE_secret first, if there
    if (!cert) {
        s_error(error, "certificate %s: not a readable certificate", cert_path);
        return NULL;
    }
    if (s_key_zero(zcert_secret_key(cert))) {
        zcert_destroy(&cert);
        s_error(error,
                "certificate %s has no secret key: keep its %s_secret file next to it "
                "(loom keygen writes both)",
                cert_path, cert_path);
        return NULL;
    }
    return cert;
}

//  The broker's public key from Z85 text or a certificate file, into key.
static int
s_server_key(const char *server_key, uint8_t key[32], char **error)
{
    if (!server_key || !*server_key) {
        s_error(error, "CURVE needs the broker's public key (--server-key KEY)");
        return LOOM_EINVAL;
    }
    if (strlen(server_key) == S_KEY_Z85 && zmq_z85_decode(key, server_key) &&
        !s_regular_file(server_key))
        return 0;
    if (s_regular_file(server_key)) {
        zcert_t *cert = zcert_load(server_key);
        if (cert) {
            memcpy(key, zcert_public_key(cert), 32);
            zcert_destroy(&cert);
            if (!s_key_zero(key))
                return 0;
        }
        s_error(error, "server key file %s is not a certificate", server_key);
        return LOOM_EINVAL;
    }
    s_error(error,
            "server key '%.60s' is neither a 40-character Z85 key nor a certificate file",
            server_key);
    return LOOM_EINVAL;
}

int
loom_curve_client_check(const char *cert_path, const char *server_key, char **error)
{
    return loom_curve_client_setup(NULL, cert_path, server_key, error);
}

int
loom_curve_client_setup(void *sock, const char *cert_path, const char *server_key, char **error)
{
    if (error)
        *error = NULL;
    if (!cert_path && !server_key)
        return 0;
    if (!cert_path || !server_key) {
        s_error(error, "CURVE needs both a certificate (--cert) and the broker's key "
                       "(--server-key)");
        return LOOM_EINVAL;
    }
    uint8_t skey[32];
    if (s_server_key(server_key, skey, error))
        return LOOM_EINVAL;
    zcert_t *cert = loom_curve_load_cert(cert_path, error);
    if (!cert)
        return LOOM_EINVAL;
    int rc = 0;
    if (sock && (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, skey, 32) ||
                 zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, zcert_public_key(cert), 32) ||
                 zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, zcert_secret_key(cert), 32))) {
        s_error(error, "cannot set CURVE keys: %s", zmq_strerror(zmq_errno()));
        rc = LOOM_EINVAL;
    }
    zcert_destroy(&cert);
    return rc;
}
