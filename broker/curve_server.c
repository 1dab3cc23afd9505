/*  curve_server: the broker's side of CURVE. See curve_server.h.  */

#include "curve_server.h"

#include "base.h"
#include "curve.h"
#include "curve_auth.h"

#include <czmq.h>
#include <loom/errors.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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

struct loom_curve_server {
    zcert_t *cert;
};

//  The ZAP handler is one per process (it binds the context's ZAP
//  endpoint), shared by the brokers of the process that use one directory.
static pthread_mutex_t s_auth_lock = PTHREAD_MUTEX_INITIALIZER;
static loom_curve_auth *s_auth;
static int s_auth_refs;

loom_curve_server *
loom_curve_server_new(const char *allow_dir, const char *cert_path, char **error)
{
    if (error)
        *error = NULL;
    struct stat st;
    if (!allow_dir || stat(allow_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        s_error(error, "CURVE allow-list %s is not a directory", allow_dir ? allow_dir : "(none)");
        return NULL;
    }
    zcert_t *cert = loom_curve_load_cert(cert_path, error);
    if (!cert)
        return NULL;
    char *real = realpath(allow_dir, NULL);
    if (!real) {
        zcert_destroy(&cert);
        s_error(error, "CURVE allow-list %s: cannot resolve the path", allow_dir);
        return NULL;
    }
    pthread_mutex_lock(&s_auth_lock);
    int rc = 0;
    if (s_auth && strcmp(loom_curve_auth_dir(s_auth), real) != 0) {
        s_error(error, "this process already serves CURVE allow-list %s",
                loom_curve_auth_dir(s_auth));
        rc = -1;
    } else if (!s_auth) {
        //  Bound before any CURVE socket binds, so that no connection is
        //  ever let in unasked.
        char *err = NULL;
        s_auth = loom_curve_auth_new(real, &err);
        if (!s_auth) {
            s_error(error, "%s", err);
            free(err);
            rc = -1;
        }
    }
    if (rc == 0)
        s_auth_refs++;
    pthread_mutex_unlock(&s_auth_lock);
    free(real);
    if (rc) {
        zcert_destroy(&cert);
        return NULL;
    }
    loom_curve_server *self = loom_xcalloc(1, sizeof *self);
    self->cert = cert;
    return self;
}

int
loom_curve_server_setup(loom_curve_server *self, void *sock)
{
    int one = 1;
    //  CURVE_SERVER must come before bind; a ZAP domain makes libzmq ask
    //  the ZAP handler (curve_auth.c) about every connection.
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, zcert_secret_key(self->cert), 32) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, zcert_public_key(self->cert), 32) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "loom", 4))
        return LOOM_EIO;
    return 0;
}

const char *
loom_curve_server_public(loom_curve_server *self)
{
    return zcert_public_txt(self->cert);
}

uint64_t
loom_curve_server_refused(loom_curve_server *self)
{
    (void)self;
    pthread_mutex_lock(&s_auth_lock);
    uint64_t n = loom_curve_auth_refused(s_auth);
    pthread_mutex_unlock(&s_auth_lock);
    return n;
}

void
loom_curve_server_destroy(loom_curve_server **self_p)
{
    loom_curve_server *self = *self_p;
    if (!self)
        return;
    zcert_destroy(&self->cert);
    pthread_mutex_lock(&s_auth_lock);
    if (--s_auth_refs == 0)
        loom_curve_auth_destroy(&s_auth);
    pthread_mutex_unlock(&s_auth_lock);
    free(self);
    *self_p = NULL;
}
