/*  curve_auth: the broker's ZAP handler. See curve_auth.h.

    A CZMQ actor: a REP socket bound to the ZAP endpoint answers libzmq's
    requests (version, request id, domain, address, routing id, mechanism,
    credentials) with 200 for a listed CURVE key and 400 for anything
    else; the pipe only carries $TERM.  */

#include "curve_auth.h"

#include "base.h"

#include <czmq.h>
#include <stdatomic.h>
#include <string.h>

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_LOG_EVERY_MS 60000 //  one log line per refused key and minute
#define S_LOGGED_MAX 4096    //  keys remembered for that; forgotten in bulk beyond

struct loom_curve_auth {
    zactor_t *actor;          //  the handler's thread
    char *dir;                //  allow-list directory
    bool failed;              //  the actor could not bind (set before its signal)
    atomic_uint_least64_t refused; //  connections refused
};

typedef struct {
    loom_curve_auth *owner;
    zcertstore_t *store; //  the allow-list, re-read when the directory changes
    zhashx_t *logged;    //  Z85 key -> time it was last logged (int64_t, owned)
} s_handler;

//  Log a refusal unless this key was logged less than a minute ago.
static void
s_log_refusal(s_handler *h, const char *key, const char *address, const char *why)
{
    int64_t now = loom_now_ms();
    int64_t *last = zhashx_lookup(h->logged, key);
    if (last && now - *last < S_LOG_EVERY_MS)
        return;
    if (!last) {
        if (zhashx_size(h->logged) >= S_LOGGED_MAX)
            zhashx_purge(h->logged);
        last = loom_xmalloc(sizeof *last);
        zhashx_insert(h->logged, key, last);
    }
    *last = now;
    loom_log_warning("broker: refused CURVE key %s from %s: %s (at most one line a minute per "
                     "key)",
                     key, address && *address ? address : "a local (ipc) peer", why);
}

//  Answer one ZAP request.
static void
s_answer(s_handler *h, zsock_t *rep)
{
    zmsg_t *req = zmsg_recv(rep);
    if (!req)
        return;
    char *version = zmsg_popstr(req);
    char *request_id = zmsg_popstr(req);
    char *domain = zmsg_popstr(req);
    char *address = zmsg_popstr(req);
    char *identity = zmsg_popstr(req);
    char *mechanism = zmsg_popstr(req);
    zframe_t *cred = zmsg_pop(req);
    char key[41] = "";
    const char *status = "400", *text = "not a CURVE connection";
    if (mechanism && !strcmp(mechanism, "CURVE") && cred && zframe_size(cred) == 32) {
        zmq_z85_encode(key, zframe_data(cred), 32);
        if (zcertstore_lookup(h->store, key)) {
            status = "200";
            text = "OK";
        } else
            text = "key not in the allow-list";
    }
    if (strcmp(status, "200") != 0) {
        atomic_fetch_add(&h->owner->refused, 1);
        s_log_refusal(h, *key ? key : "(none)", address, text);
    }
    //  Reply: version, request id, status code and text, user id, metadata.
    zstr_sendm(rep, version ? version : "1.0");
    zstr_sendm(rep, request_id ? request_id : "");
    zstr_sendm(rep, status);
    zstr_sendm(rep, text);
    zstr_sendm(rep, key);
    zstr_send(rep, "");
    zframe_destroy(&cred);
    zstr_free(&version);
    zstr_free(&request_id);
    zstr_free(&domain);
    zstr_free(&address);
    zstr_free(&identity);
    zstr_free(&mechanism);
    zmsg_destroy(&req);
}

static void
s_free_time(void **item)
{
    free(*item);
    *item = NULL;
}

static void
s_actor(zsock_t *pipe, void *args)
{
    loom_curve_auth *owner = args;
    s_handler h = {.owner = owner, .store = zcertstore_new(owner->dir), .logged = zhashx_new()};
    zhashx_set_destructor(h.logged, s_free_time);
    zsock_t *rep = zsock_new(ZMQ_REP);
    if (!h.store || !rep || zsock_bind(rep, S_ZAP_ENDPOINT) != 0) {
        zsock_destroy(&rep);
        zcertstore_destroy(&h.store);
        zhashx_destroy(&h.logged);
        owner->failed = true;
        zsock_signal(pipe, 1);
        return;
    }
    zsock_signal(pipe, 0);
    zpoller_t *poller = zpoller_new(pipe, rep, NULL);
    while (true) {
        void *which = zpoller_wait(poller, -1);
        if (which == rep)
            s_answer(&h, rep);
        else if (which == pipe) {
            char *cmd = zstr_recv(pipe);
            bool term = !cmd || !strcmp(cmd, "$TERM");
            zstr_free(&cmd);
            if (term)
                break;
        } else if (zpoller_terminated(poller))
            break;
    }
    zpoller_destroy(&poller);
    //  Unbound first: a closed socket's inproc endpoint stays taken for a
    //  while, and the next broker of this process binds it again.
    zsock_unbind(rep, "%s", S_ZAP_ENDPOINT);
    zsock_destroy(&rep);
    zcertstore_destroy(&h.store);
    zhashx_destroy(&h.logged);
}

loom_curve_auth *
loom_curve_auth_new(const char *dir, char **error)
{
    loom_curve_auth *self = loom_xcalloc(1, sizeof *self);
    self->dir = loom_xstrdup(dir);
    atomic_init(&self->refused, 0);
    //  zactor_new returns after the actor's first signal, which follows
    //  its bind (failed or not): self->failed is set by then.
    self->actor = zactor_new(s_actor, self);
    if (!self->actor || self->failed) {
        *error = loom_xstrdup("cannot start the CURVE authenticator (ZAP endpoint "
                              "inproc://zeromq.zap.01 in use?)");
        loom_curve_auth_destroy(&self);
    }
    return self;
}

void
loom_curve_auth_destroy(loom_curve_auth **self_p)
{
    loom_curve_auth *self = *self_p;
    if (!self)
        return;
    zactor_destroy(&self->actor);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

uint64_t
loom_curve_auth_refused(loom_curve_auth *self)
{
    return self ? (uint64_t)atomic_load(&self->refused) : 0;
}

const char *
loom_curve_auth_dir(loom_curve_auth *self)
{
    return self->dir;
}
