/*  broker: the loom broker actor. Owns the task ROUTER (clients, worker
    processes and supervisors all connect there) and the blob ROUTER, a
    zloop with one reader per socket and a heartbeat timer, the session
    table and the scheduler (scheduler.c), which decides what goes where.

    Every handler drains its socket up to a budget, then settles: ends the
    sessions that died meanwhile (requeueing or cancelling their work),
    sends failed items and finished maps to their clients, and dispatches
    batches to workers with room. Peer input is never trusted: anything
    malformed or unexpected is counted in msgs_rejected and dropped.  */

#include "broker.h"

#include "base.h"
#include "blob_channel.h"
#include "curve_server.h"
#include "failure_policy.h"
#include "safe_paths.h"
#include "scheduler.h"
#include "wire.h"

#include <openssl/crypto.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define LOOM_BROKER_LIVENESS 3
#define LOOM_BROKER_MAX_BATCH 1024
#define LOOM_BROKER_MAX_FRAME (64 * 1024 * 1024)
#define LOOM_BROKER_HWM 100000
#define LOOM_BROKER_DRAIN 1000   //  messages per socket per wake-up
#define LOOM_BROKER_BLOB_DRAIN 8 //  blob messages per wake-up
#define LOOM_RID_MAX 256
#define LOOM_BROKER_USER_MAX 64           //  a ZAP User-Id: the Z85 public key (40 characters)
#define LOOM_BROKER_MAX_CREDIT (1u << 20) //  items a worker process may ask for

typedef struct {
    char key[2 * LOOM_RID_MAX + 1];  //  hex routing id: the sessions table key
    char user[LOOM_BROKER_USER_MAX]; //  CURVE: the key it said Hello with (Z85), else ""
    uint8_t rid[LOOM_RID_MAX];
    size_t rid_len;
    uint64_t id;
    loom_role role;
    char *host; //  supervisor's host id ("" if none)
    uint32_t pid;
    int64_t last_in, last_out; //  ms
    bool dead;                 //  to be ended at the next settle
    char *dead_reason;
    bool dead_clean;        //  ended by a clean exit: charge its items nothing
    int dead_status;        //  what its blamed items fail with (0: LOOM_ECRASHED)
    uint64_t dead_init_map; //  it died in this map's plugin init (WorkerExit), or 0
    uint32_t procs;         //  supervisors: the worker processes it runs (Hello)
    char *dead_init_error;  //  then: how (owned)
    int64_t gone_at;        //  worker: a send found it disconnected; its supervisor is to
                            //  say why (WorkerExit) within the expiry (s_await_exit)
    loom_sched_worker *sw;  //  worker processes
    uint32_t worker_id;
    zhashx_t *maps; //  clients: "client map id" -> loom_sched_map
    size_t pipelines;
    zhashx_t *pipeline_ids; //  clients: "pipeline id" of the open pipelines (value unused)
} s_session;

typedef struct {
    zsock_t *pipe;
    zloop_t *loop;
    zsock_t *tasks;
    zsock_t *blobs;
    bool bound, blobs_bound;
    loom_sched *sched;
    zhashx_t *sessions;  //  hex rid -> s_session
    zhashx_t *strangers; //  hex rid -> int64_t last Error sent (ms)
    uint64_t epoch;
    uint64_t next_session;
    int64_t started_ms;
    int hb_ms;
    size_t ndead;
    loom_wire_stats st; //  counters kept here; the rest is computed
    zsock_t *monitor;   //  disconnection events of the task ROUTER (PAIR), or NULL
    bool verbose;
    loom_blob_channel *bc;    //  the blob ROUTER's side (blob_channel.c)
    char *blob_ep;            //  bound blob endpoint, told to peers in Welcome
    loom_broker_opts lim;     //  limits in force (defaults filled in)
    loom_curve_server *curve; //  CURVE keys and allow-list, or NULL
    char *setup_error;        //  why BIND must fail (bad CURVE setup)
    int retry_timer;          //  zloop timer for the next failed item to retry, if any
    int64_t retry_at;         //  when it fires (0: not armed)
} s_broker;

//  The blob channel's name of a client's pipeline ("session/pipeline").
static void
s_owner_key(uint64_t session, uint64_t pipeline, char *key, size_t cap)
{
    snprintf(key, cap, "%llu/%llu", (unsigned long long)session, (unsigned long long)pipeline);
}

//  True if the blob endpoint is reachable from this host only (ipc://,
//  or tcp:// on a loopback address).
static bool
s_blob_ep_local(const char *ep)
{
    if (!ep)
        return false;
    return !strncmp(ep, "ipc://", 6) || !strncmp(ep, "tcp://127.", 10) ||
           !strncmp(ep, "tcp://[::1]:", 12) || !strncmp(ep, "tcp://localhost:", 16);
}

static void s_settle(s_broker *self);

//  ---------------------------------------------------------------------
//  Sessions and sending

static void
s_rid_key(const uint8_t *rid, size_t len, char *key)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        key[2 * i] = hex[rid[i] >> 4];
        key[2 * i + 1] = hex[rid[i] & 15];
    }
    key[2 * len] = 0;
}

static void
s_kill(s_broker *self, s_session *s, const char *reason)
{
    if (s->dead)
        return;
    s->dead = true;
    s->dead_reason = loom_xstrdup(reason);
    self->ndead++;
    if (self->verbose)
        loom_log_info("broker: session %llu ends: %s", (unsigned long long)s->id, reason);
}

static int
s_send_rid(s_broker *self, const uint8_t *rid, size_t rid_len, const loom_msg *m)
{
    int rc = loom_wire_send(zsock_resolve(self->tasks), rid, rid_len, m, ZMQ_DONTWAIT);
    if (rc == 0)
        self->st.msgs_out++;
    return rc;
}

//  A worker process's connection is gone: a process that died, whose
//  supervisor is about to say how (WorkerExit: a signal, out of memory),
//  which is what its items must be told. While its host's supervisor is
//  connected, the session gets nothing more and waits for that, for at
//  most the expiry (s_on_tick ends it then as "peer disconnected").
//  Returns true if it waits.
static bool
s_await_exit(s_broker *self, s_session *s)
{
    if (s->gone_at)
        return true;
    if (s->role != LOOM_ROLE_WORKER || !s->sw || !s->host || !*s->host)
        return false;
    bool supervised = false;
    //  A copy, not the table's cursor: this may run inside a walk of it.
    zlistx_t *all = zhashx_values(self->sessions);
    for (s_session *x = zlistx_first(all); x && !supervised; x = zlistx_next(all))
        supervised =
            x->role == LOOM_ROLE_SUPERVISOR && !x->dead && x->host && !strcmp(x->host, s->host);
    zlistx_destroy(&all);
    if (!supervised)
        return false;
    s->gone_at = loom_now_ms();
    loom_sched_worker_pause(s->sw, true);
    return true;
}

//  Send to a session. A peer gone (LOOM_ECONNECT) or failing is ended (a
//  worker process first waits for its supervisor's word, s_await_exit); a
//  peer not reading (LOOM_EAGAIN) loses the message.
static int
s_sent(s_broker *self, s_session *s, loom_msg_type type, int rc)
{
    if (rc == 0)
        s->last_out = loom_now_ms();
    else if (rc == LOOM_EAGAIN)
        loom_log_warning("broker: session %llu is not reading: %s dropped",
                         (unsigned long long)s->id, loom_msg_type_name(type));
    else if (rc == LOOM_ECONNECT && s_await_exit(self, s))
        ;
    else if (rc == LOOM_ECONNECT || rc == LOOM_EIO)
        s_kill(self, s, rc == LOOM_ECONNECT ? "peer disconnected" : "send failed");
    else //  not encodable: an oversized message or our bug, not the peer's fault
        loom_log_error("broker: cannot encode %s for session %llu: %d", loom_msg_type_name(type),
                       (unsigned long long)s->id, rc);
    return rc;
}

static int
s_send(s_broker *self, s_session *s, const loom_msg *m)
{
    if (s->dead || s->gone_at)
        return LOOM_ECONNECT;
    return s_sent(self, s, m->type, s_send_rid(self, s->rid, s->rid_len, m));
}

//  Send a received batch on to a session as the same bytes, with `map` as
//  its map id (loom_wire_forward). Takes *msg_p.
static int
s_forward(s_broker *self, s_session *s, loom_msg **msg_p, uint64_t map)
{
    loom_msg_type type = (*msg_p)->type;
    if (s->dead) {
        loom_msg_destroy(msg_p);
        return LOOM_ECONNECT;
    }
    int rc =
        loom_wire_forward(zsock_resolve(self->tasks), s->rid, s->rid_len, msg_p, map, ZMQ_DONTWAIT);
    if (rc == 0)
        self->st.msgs_out++;
    return s_sent(self, s, type, rc);
}

static void s_send_error(s_broker *self, s_session *s, int code, uint64_t map, const char *fmt, ...)
    LOOM_PRINTF(5, 6);

static void
s_send_error(s_broker *self, s_session *s, int code, uint64_t map, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    loom_msg m = {.type = LOOM_MSG_ERROR};
    m.u.error.code = code;
    m.u.error.map = map;
    m.u.error.message = text;
    s_send(self, s, &m);
}

static void
s_session_free(s_session **s_p)
{
    s_session *s = *s_p;
    if (!s)
        return;
    zhashx_destroy(&s->maps);
    zhashx_destroy(&s->pipeline_ids);
    free(s->host);
    free(s->dead_reason);
    free(s->dead_init_error);
    free(s);
    *s_p = NULL;
}

//  Map table key of a client's map id.
static void
s_map_key(uint64_t id, char *key, size_t cap)
{
    snprintf(key, cap, "%llu", (unsigned long long)id);
}

//  Cancel a map (its client cancelled it, or is gone): tell the workers
//  holding its items to stop them, and forget it; its items still running
//  stay counted on their workers (no new work goes to a worker running
//  one) until each worker answers them or ends (loom_sched_map_cancel).
//  The entry point for stopping a map's running work: a worker stops a
//  cancelled item at its next loom_task_cancelled check, else ends itself
//  LOOM_CANCEL_GRACE_MS after the Cancel.
static void
s_map_cancel(s_broker *self, loom_sched_map *map)
{
    loom_sched_worker *ws[256];
    size_t n = loom_sched_map_workers(map, ws, 256);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = loom_sched_map_id(map);
    for (size_t i = 0; i < n; i++)
        s_send(self, loom_sched_worker_handle(ws[i]), &m);
    s_session *client = loom_sched_map_owner(map);
    char key[32];
    s_map_key(loom_sched_map_owner_id(map), key, sizeof key);
    zhashx_delete(client->maps, key);
    loom_sched_map_cancel(self->sched, &map); //  its owner is not to be used from here on
}

//  Fail the whole map: queued items and those submitted later get this
//  status and message at once; its workers stop the rest (Cancel).
static void
s_map_fail(s_broker *self, loom_sched_map *map, int code, const char *message)
{
    loom_sched_worker *ws[256];
    size_t n = loom_sched_map_workers(map, ws, 256);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = loom_sched_map_id(map);
    for (size_t i = 0; i < n; i++)
        s_send(self, loom_sched_worker_handle(ws[i]), &m);
    loom_sched_map_fail(self->sched, map, code, message);
}

//  A map some of whose workers failed its plugin init fails as a whole
//  once no live worker can run it, unless more worker processes are on
//  their way (a host starting up or restarting one: its supervisor said
//  how many it runs), which may.
static void
s_init_check(s_broker *self, loom_sched_map *map)
{
    if (loom_sched_map_cancelled(map) || loom_sched_map_failed(map))
        return;
    const char *why = NULL;
    if (loom_sched_map_runnable(self->sched, map, &why) > 0 || !why)
        return; //  a worker can run it, or none has tried yet
    //  Worker processes may say Hello before their supervisor does: one
    //  whose host has no supervisor session yet means the host is starting.
    size_t live = 0, expected = 0;
    zhashx_t *hosts = zhashx_new();
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (!s->dead && s->role == LOOM_ROLE_SUPERVISOR && s->host && *s->host) {
            expected += s->procs;
            zhashx_insert(hosts, s->host, s);
        }
    bool starting = false;
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (!s->dead && s->role == LOOM_ROLE_WORKER) {
            live++;
            starting = starting || !zhashx_lookup(hosts, s->host ? s->host : "");
        }
    zhashx_destroy(&hosts);
    if (starting || live < expected)
        return;
    char text[640];
    snprintf(text, sizeof text, "%s (no worker process can run the map)",
             why ? why : "plugin init failed");
    s_map_fail(self, map, LOOM_EINIT, text);
}

static void
s_init_check_all(s_broker *self)
{
    for (loom_sched_map *m = loom_sched_map_first(self->sched); m; m = loom_sched_map_next(m))
        s_init_check(self, m);
}

//  Worker session s died in a plugin's init (its supervisor said so): not
//  the fault of the items it held, which are requeued uncharged (a process
//  killed in init, by the OOM killer or a person, loses nothing); after
//  more such deaths than the map's retries, the whole map fails with
//  LOOM_EINIT and how, its items on s included. Returns true if s died in
//  an init (whatever became of the map).
static bool
s_init_died(s_broker *self, s_session *s)
{
    if (!s->dead_init_map)
        return false;
    const char *why = s->dead_init_error ? s->dead_init_error : "plugin init died";
    loom_sched_map *map = loom_sched_map_find(self->sched, s->dead_init_map);
    if (!map || loom_sched_map_cancelled(map) || loom_sched_map_failed(map))
        return true;
    uint32_t deaths = loom_sched_map_init_died(map);
    if (deaths > (uint32_t)loom_sched_map_def(map)->retries) {
        char text[640];
        snprintf(text, sizeof text, "%s (%u worker process%s died in its init, over its retries)",
                 why, deaths, deaths == 1 ? "" : "es");
        s_map_fail(self, map, LOOM_EINIT, text);
    }
    return true;
}

//  End a dead session now: requeue a worker's items, cancel a client's
//  maps, end a supervisor's worker processes.
static void
s_session_end(s_broker *self, s_session *s)
{
    const char *reason = s->dead_reason ? s->dead_reason : "session ended";
    if (s->dead)
        self->ndead--;
    zhashx_delete(self->sessions, s->key);
    if (s->role == LOOM_ROLE_WORKER && s->sw) {
        //  A death in a plugin's init is not the fault of the items it held.
        bool blame = !s->dead_clean && !s_init_died(self, s);
        loom_sched_worker_remove_as(self->sched, &s->sw, reason, blame,
                                    s->dead_status ? s->dead_status : LOOM_ECRASHED);
        s_init_check_all(self); //  one fewer that could run them
    } else if (s->role == LOOM_ROLE_CLIENT && s->maps) {
        zlistx_t *maps = zhashx_values(s->maps);
        for (loom_sched_map *map = zlistx_first(maps); map; map = zlistx_next(maps))
            s_map_cancel(self, map);
        zlistx_destroy(&maps);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "%llu/", (unsigned long long)s->id);
        loom_blob_channel_release_prefix(self->bc, prefix);
    } else if (s->role == LOOM_ROLE_SUPERVISOR && s->host && *s->host) {
        char text[256];
        snprintf(text, sizeof text, "supervisor of host %s lost (%s)", s->host, reason);
        for (s_session *w = zhashx_first(self->sessions); w; w = zhashx_next(self->sessions))
            if (w->role == LOOM_ROLE_WORKER && w->host && !strcmp(w->host, s->host))
                s_kill(self, w, text);
    }
    s_session_free(&s);
}

static void
s_reap(s_broker *self)
{
    while (self->ndead) {
        zlistx_t *all = zhashx_values(self->sessions);
        size_t ended = 0;
        //  Ending a supervisor kills its worker sessions: those listed
        //  before it are ended in the next pass.
        for (s_session *s = zlistx_first(all); s; s = zlistx_next(all))
            if (s->dead) {
                s_session_end(self, s);
                ended++;
            }
        zlistx_destroy(&all);
        if (ended == 0) {
            //  Cannot happen: every dead session is in the table.
            LOOM_ASSERT(false);
        }
    }
}

//  ---------------------------------------------------------------------
//  Results to clients

//  The map has had its halt_after_failures: its workers skip the rest of
//  its batches (Cancel), and every item not done fails at once as not
//  run, the ones still running included.
static void
s_halt(s_broker *self, loom_sched_map *map)
{
    loom_sched_worker *ws[256];
    size_t n = loom_sched_map_workers(map, ws, 256);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = loom_sched_map_id(map);
    for (size_t i = 0; i < n; i++)
        s_send(self, loom_sched_worker_handle(ws[i]), &m);
    if (self->verbose)
        loom_log_info("broker: map %llu halted after %u failures",
                      (unsigned long long)loom_sched_map_id(map),
                      loom_sched_map_def(map)->halt_after_failures);
    loom_sched_map_halt(self->sched, map);
}

//  Send the map's failed items to its client, then its end if it is done.
//  A cancelled map has no client any more: it goes once nothing of it runs.
static void
s_map_check(s_broker *self, loom_sched_map *map)
{
    if (loom_sched_map_cancelled(map)) {
        if (!loom_sched_map_in_flight(map))
            loom_sched_map_destroy(self->sched, &map);
        return;
    }
    s_session *client = loom_sched_map_owner(map);
    uint64_t client_map = loom_sched_map_owner_id(map);
    loom_sched_item *items[LOOM_BROKER_MAX_BATCH];
    loom_wire_result res[LOOM_BROKER_MAX_BATCH];
    for (;;) {
        size_t n = 0;
        while (n < LOOM_BROKER_MAX_BATCH && (items[n] = loom_sched_map_pop_failed(map)))
            n++;
        if (!n)
            break;
        //  Items failed one by one (out of retries) count toward a halt;
        //  those of a failed (or halted) map do not.
        bool halt = loom_sched_map_count_failures(map, loom_sched_map_failed(map) ? 0 : n);
        for (size_t i = 0; i < n; i++) {
            res[i] = (loom_wire_result){.index = items[i]->index,
                                        .attempt = items[i]->attempt,
                                        .status = items[i]->status,
                                        .error = items[i]->reason};
            self->st.items_failed++;
        }
        loom_msg m = {.type = LOOM_MSG_RESULT_BATCH};
        m.u.result_batch.map = client_map;
        m.u.result_batch.results = res;
        m.u.result_batch.nresults = n;
        s_send(self, client, &m);
        for (size_t i = 0; i < n; i++)
            loom_sched_item_free(&items[i]);
        if (halt)
            s_halt(self, map); //  the rest comes round this loop
    }
    if (loom_sched_map_state(map) != LOOM_SCHED_DONE)
        return;
    size_t len = 0;
    const void *fold = loom_sched_map_result(map, &len);
    const char *fold_msg = NULL;
    int fold_status = loom_sched_map_fold_error(map, &fold_msg);
    if (fold || fold_status) {
        //  The reduced result, or why the fold failed, in its place.
        loom_wire_result r = {.index = UINT64_MAX, .data = {fold, len}};
        if (fold_status) {
            r = (loom_wire_result){.index = UINT64_MAX, .status = fold_status, .error = fold_msg};
            self->st.items_failed++;
        }
        loom_msg m = {.type = LOOM_MSG_RESULT_BATCH};
        m.u.result_batch.map = client_map;
        m.u.result_batch.results = &r;
        m.u.result_batch.nresults = 1;
        s_send(self, client, &m);
    }
    loom_msg end = {.type = LOOM_MSG_MAP_END};
    end.u.map_end.map = client_map;
    end.u.map_end.count = loom_sched_map_count_expected(map);
    s_send(self, client, &end);
    char key[32];
    s_map_key(client_map, key, sizeof key);
    zhashx_delete(client->maps, key);
    loom_sched_map_destroy(self->sched, &map);
}

static void
s_flush(s_broker *self)
{
    loom_sched_map *map = loom_sched_map_first(self->sched);
    while (map) {
        loom_sched_map *next = loom_sched_map_next(map);
        s_map_check(self, map);
        map = next;
    }
}

//  ---------------------------------------------------------------------
//  Dispatch to workers

static int
s_send_map_open(s_broker *self, s_session *w, loom_sched_map *map)
{
    const loom_sched_def *d = loom_sched_map_def(map);
    loom_msg m = {.type = LOOM_MSG_MAP_OPEN};
    loom_wire_map_open *o = &m.u.map_open;
    o->map = loom_sched_map_id(map);
    o->pipeline = d->pipeline;
    o->plugin = d->plugin;
    o->version = d->version;
    o->task = d->task;
    o->args = (loom_span){d->args, d->args_len};
    o->ordered = d->ordered;
    o->reduce = d->reduce;
    o->chunk = d->chunk;
    o->retries = d->retries;
    o->timeout_ms = d->timeout_ms;
    o->init_timeout_ms = d->init_timeout_ms;
    char owner[48];
    s_owner_key(((s_session *)loom_sched_map_owner(map))->id, d->pipeline, owner, sizeof owner);
    o->shares = loom_blob_channel_shares(self->bc, owner, &o->nshares);
    return s_send(self, w, &m);
}

static int
s_send_batch(s_broker *self, s_session *w, loom_sched_batch *b)
{
    loom_wire_item items[LOOM_SCHED_MAX_BATCH];
    loom_wire_file *files[LOOM_SCHED_MAX_BATCH]; //  the nfiles arrays allocated here
    size_t nfiles = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->combine) {
            items[i] = (loom_wire_item){.index = i, .data = {b->comb->data[i], b->comb->len[i]}};
            continue;
        }
        loom_sched_item *it = b->items[i];
        items[i] = (loom_wire_item){
            .index = it->index, .attempt = it->attempt, .data = {it->data, it->len}};
        if (it->nfiles) {
            loom_wire_file *fs = files[nfiles++] = loom_xcalloc(it->nfiles, sizeof *fs);
            for (size_t f = 0; f < it->nfiles; f++)
                fs[f] = (loom_wire_file){.name = it->files[f].name,
                                         .hash = {it->files[f].hash, it->files[f].hash_len},
                                         .size = it->files[f].size};
            items[i].files = fs;
            items[i].nfiles = it->nfiles;
        }
    }
    loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
    m.u.task_batch.map = loom_sched_map_id(b->map);
    m.u.task_batch.combine = b->combine;
    m.u.task_batch.items = items;
    m.u.task_batch.nitems = b->n;
    int rc = s_send(self, w, &m);
    for (size_t i = 0; i < nfiles; i++)
        free(files[i]);
    return rc;
}

static void
s_dispatch(s_broker *self)
{
    loom_sched_batch b;
    while (loom_sched_next_batch(self->sched, &b)) {
        s_session *w = loom_sched_worker_handle(b.worker);
        //  A client's batch going out whole goes as its own bytes.
        loom_msg *whole = loom_sched_batch_whole(&b);
        int rc = 0;
        if (b.open)
            rc = s_send_map_open(self, w, b.map);
        if (rc == 0 && whole)
            rc = s_forward(self, w, &whole, loom_sched_map_id(b.map));
        else if (rc == 0)
            rc = s_send_batch(self, w, &b);
        loom_msg_destroy(&whole);
        if (rc) {
            //  Not sent: everything goes back; the worker gets nothing more
            //  until it talks to us again (or is ended, if it is gone).
            loom_sched_worker *bw = b.worker; //  undo clears the batch
            loom_sched_batch_undo(self->sched, &b);
            loom_sched_worker_pause(bw, true);
        }
    }
}

static int
s_on_retry_due(zloop_t *loop, int timer_id, void *arg)
{
    (void)loop;
    (void)timer_id;
    s_broker *self = arg;
    self->retry_at = 0; //  a one-shot timer: gone now
    s_settle(self);
    return 0;
}

//  Queue again the failed items whose retry backoff is over; arm a timer
//  for the next one.
static void
s_retries_due(s_broker *self)
{
    int64_t now = loom_now_ms();
    int64_t next = loom_sched_release_due(self->sched, now);
    if (next == INT64_MAX || (self->retry_at && self->retry_at <= next))
        return;
    if (self->retry_at)
        zloop_timer_end(self->loop, self->retry_timer);
    int64_t delay = next > now ? next - now : 1;
    self->retry_timer = zloop_timer(self->loop, (size_t)delay, 1, s_on_retry_due, self);
    self->retry_at = self->retry_timer >= 0 ? next : 0;
}

static void
s_settle(s_broker *self)
{
    do {
        s_reap(self);
        s_flush(self);
        s_retries_due(self);
        s_dispatch(self);
    } while (self->ndead);
}

//  ---------------------------------------------------------------------
//  Stats

static void
s_stats_fill(s_broker *self, loom_wire_stats *st)
{
    *st = self->st;
    st->epoch = self->epoch;
    st->uptime_ms = (uint64_t)(loom_now_ms() - self->started_ms);
    st->clients = st->workers = st->supervisors = st->pipelines = 0;
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions)) {
        if (s->dead)
            continue;
        if (s->role == LOOM_ROLE_CLIENT)
            st->clients++;
        else if (s->role == LOOM_ROLE_WORKER)
            st->workers++;
        else
            st->supervisors++;
        st->pipelines += (uint32_t)s->pipelines;
    }
    st->maps = (uint32_t)loom_sched_map_count(self->sched);
    st->items_queued = loom_sched_queued(self->sched);
    st->items_in_flight = loom_sched_in_flight(self->sched);
    st->items_cancelling = loom_sched_cancelling(self->sched);
    st->items_retried = loom_sched_retried(self->sched);
    st->curve_refused = self->curve ? loom_curve_server_refused(self->curve) : 0;
    loom_blob_channel_stats(self->bc, st);
}

static void
s_answer_stats(s_broker *self, const uint8_t *rid, size_t rid_len)
{
    loom_msg m = {.type = LOOM_MSG_STATS};
    s_stats_fill(self, &m.u.stats);
    s_send_rid(self, rid, rid_len, &m);
}

//  ---------------------------------------------------------------------
//  Message handlers

static uint32_t
s_free_worker_id(s_broker *self)
{
    size_t n = zhashx_size(self->sessions) + 1;
    bool *used = loom_xcalloc(n, sizeof *used);
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (s->role == LOOM_ROLE_WORKER && !s->dead && s->worker_id < n)
            used[s->worker_id] = true;
    uint32_t id = 0;
    while (used[id])
        id++;
    free(used);
    return id;
}

static void
s_on_hello(s_broker *self, const uint8_t *rid, size_t rid_len, const char *key, const char *user,
           s_session *old, const loom_wire_hello *h)
{
    if (old) {
        //  Live, or dead and not yet ended: either way it ends now, so the
        //  new session can take its place in the table.
        s_kill(self, old, "new Hello on the same connection");
        s_session_end(self, old);
    }
    if (h->role != LOOM_ROLE_CLIENT && h->role != LOOM_ROLE_WORKER &&
        h->role != LOOM_ROLE_SUPERVISOR) {
        self->st.msgs_rejected++;
        return;
    }
    s_session *s = loom_xcalloc(1, sizeof *s);
    memcpy(s->key, key, strlen(key) + 1);
    snprintf(s->user, sizeof s->user, "%s", user);
    memcpy(s->rid, rid, rid_len);
    s->rid_len = rid_len;
    s->id = ++self->next_session;
    s->role = h->role;
    s->host = loom_xstrdup(h->host ? h->host : "");
    s->pid = h->pid;
    s->procs = h->role == LOOM_ROLE_SUPERVISOR ? h->procs : 0;
    s->last_in = s->last_out = loom_now_ms();
    if (s->role == LOOM_ROLE_WORKER) {
        s->worker_id = s_free_worker_id(self);
        uint32_t credit = h->credit;
        if (credit > LOOM_BROKER_MAX_CREDIT) {
            //  Asking for more than any worker process could hold.
            self->st.msgs_rejected++;
            credit = LOOM_BROKER_MAX_CREDIT;
        }
        s->sw = loom_sched_worker_new(self->sched, s, credit);
    } else if (s->role == LOOM_ROLE_CLIENT) {
        s->maps = zhashx_new();
        s->pipeline_ids = zhashx_new();
    }
    zhashx_insert(self->sessions, s->key, s);
    if (s->role == LOOM_ROLE_SUPERVISOR)
        s_init_check_all(self); //  a host whose worker processes came first is known now
    zhashx_delete(self->strangers, key);
    if (self->verbose)
        loom_log_info("broker: session %llu: role %d host '%s' pid %u", (unsigned long long)s->id,
                      (int)s->role, s->host, s->pid);
    //  Peers that can see the store (same host: the blob endpoint is
    //  ipc:// or loopback): workers may link its files instead of fetching
    //  them, clients may write a share there and ask the broker to adopt it.
    bool sees_store = s->role == LOOM_ROLE_WORKER || s->role == LOOM_ROLE_CLIENT;
    const char *store =
        sees_store && s_blob_ep_local(self->blob_ep) ? loom_blob_channel_store_dir(self->bc) : NULL;
    loom_msg m = {.type = LOOM_MSG_WELCOME};
    m.u.welcome = (loom_wire_welcome){.epoch = self->epoch,
                                      .session = s->id,
                                      .worker_id = s->worker_id,
                                      .heartbeat_ms = (uint32_t)self->hb_ms,
                                      .liveness = LOOM_BROKER_LIVENESS,
                                      .max_batch = self->lim.max_batch,
                                      .max_frame = self->lim.max_frame,
                                      .blob_endpoint = self->blob_ep,
                                      .blob_store = store};
    s_send(self, s, &m);
}

static bool
s_version_valid(const char *v)
{
    if (!v)
        return true;
    size_t n = 0;
    for (; v[n]; n++) {
        char c = v[n];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '.' || c == '+' || c == '-';
        if (!ok || n >= 64)
            return false;
    }
    return true;
}

static loom_sched_map *
s_client_map(s_session *client, uint64_t id)
{
    char key[32];
    s_map_key(id, key, sizeof key);
    return zhashx_lookup(client->maps, key);
}

static void
s_on_map_open(s_broker *self, s_session *c, const loom_wire_map_open *o)
{
    if (!loom_name_valid(o->plugin)) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_EINVAL, o->map, "plugin name '%.80s' is invalid",
                     o->plugin ? o->plugin : "");
        return;
    }
    if (!loom_name_valid(o->task)) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_EINVAL, o->map, "task name '%.80s' is invalid",
                     o->task ? o->task : "");
        return;
    }
    if (!s_version_valid(o->version)) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_EINVAL, o->map, "plugin version '%.80s' is invalid", o->version);
        return;
    }
    //  Share names reach the workers: the same check as item file names.
    for (size_t i = 0; i < o->nshares; i++)
        if (!loom_file_name_valid(o->shares[i].name)) {
            self->st.msgs_rejected++;
            s_send_error(self, c, LOOM_EINVAL, o->map, "share name '%.80s' is invalid",
                         o->shares[i].name);
            return;
        }
    char pkey[32];
    s_map_key(o->pipeline, pkey, sizeof pkey);
    if (!zhashx_lookup(c->pipeline_ids, pkey)) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_ESTATE, o->map, "map %llu: pipeline %llu is not open",
                     (unsigned long long)o->map, (unsigned long long)o->pipeline);
        return;
    }
    if (s_client_map(c, o->map)) {
        s_send_error(self, c, LOOM_ESTATE, o->map, "map %llu is already open",
                     (unsigned long long)o->map);
        return;
    }
    if (zhashx_size(c->maps) >= self->lim.max_maps) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_ETOOBIG, o->map,
                     "too many open maps: the broker allows %u per client (LOOM_MAX_MAPS)",
                     self->lim.max_maps);
        return;
    }
    loom_sched_def def = {.pipeline = o->pipeline,
                          .plugin = o->plugin,
                          .version = o->version,
                          .task = o->task,
                          .args = o->args.data,
                          .args_len = o->args.len,
                          .ordered = o->ordered,
                          .reduce = o->reduce,
                          .chunk = o->chunk,
                          .retries = o->retries,
                          .timeout_ms = o->timeout_ms,
                          .retry_failed = o->retry_failed,
                          .halt_after_failures = o->halt_after_failures,
                          .failures_seen = o->failures_seen,
                          .init_timeout_ms = o->init_timeout_ms};
    if (o->nshares) {
        char owner[48];
        s_owner_key(c->id, o->pipeline, owner, sizeof owner);
        loom_blob_channel_set_shares(self->bc, owner, o->shares, o->nshares);
    }
    loom_sched_map *map = loom_sched_map_new(self->sched, &def, c, o->map);
    char key[32];
    s_map_key(o->map, key, sizeof key);
    zhashx_insert(c->maps, key, map);
    s_init_check(self, map); //  no worker may be able to run its plugin
    //  Reopened (a broker restart) after it had halted: it stays halted.
    if (o->halt_after_failures && o->failures_seen >= o->halt_after_failures)
        loom_sched_map_halt(self->sched, map);
}

static void
s_on_pipeline_open(s_broker *self, s_session *c, const loom_wire_pipeline *p)
{
    char pkey[32];
    s_map_key(p->pipeline, pkey, sizeof pkey);
    if (zhashx_lookup(c->pipeline_ids, pkey)) {
        self->st.msgs_rejected++;
        loom_msg m = {.type = LOOM_MSG_ERROR};
        m.u.error.code = LOOM_ESTATE;
        m.u.error.pipeline = p->pipeline;
        m.u.error.message = "pipeline is already open";
        s_send(self, c, &m);
        return;
    }
    if (zhashx_size(c->pipeline_ids) >= self->lim.max_pipelines) {
        self->st.msgs_rejected++;
        char text[160];
        snprintf(text, sizeof text,
                 "too many open pipelines: the broker allows %u per client (LOOM_MAX_PIPELINES)",
                 self->lim.max_pipelines);
        loom_msg m = {.type = LOOM_MSG_ERROR};
        m.u.error.code = LOOM_ETOOBIG;
        m.u.error.pipeline = p->pipeline;
        m.u.error.message = text;
        s_send(self, c, &m);
        return;
    }
    zhashx_insert(c->pipeline_ids, pkey, (void *)1);
    c->pipelines = zhashx_size(c->pipeline_ids);
}

static void
s_msg_free(void *msg)
{
    loom_msg *m = msg;
    loom_msg_destroy(&m);
}

//  A client's new items. Takes *msg_p when it keeps the batch whole.
static void
s_on_task_batch(s_broker *self, s_session *c, loom_msg **msg_p)
{
    const loom_wire_task_batch *tb = &(*msg_p)->u.task_batch;
    loom_sched_map *map = s_client_map(c, tb->map);
    if (!map || tb->combine) {
        self->st.msgs_rejected++;
        return;
    }
    if (tb->nitems > self->lim.max_batch) {
        //  The whole batch is refused: the client sent more than Welcome
        //  allowed.
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_ETOOBIG, tb->map,
                     "batch of %zu items: the broker takes at most %u per batch", tb->nitems,
                     self->lim.max_batch);
        return;
    }
    //  File names become file names on the workers: refuse the batch
    //  before anything of it is kept.
    for (size_t i = 0; i < tb->nitems; i++)
        for (size_t f = 0; f < tb->items[i].nfiles; f++)
            if (!loom_file_name_valid(tb->items[i].files[f].name)) {
                self->st.msgs_rejected++;
                s_send_error(self, c, LOOM_EINVAL, tb->map,
                             "item %llu: file name '%.80s' is invalid",
                             (unsigned long long)tb->items[i].index, tb->items[i].files[f].name);
                return;
            }
    //  A plain batch of first attempts, each with its input, is kept as it
    //  came: if its items go to one worker together, they go as its bytes.
    loom_sched_chunk *chunk = NULL;
    if (loom_wire_forwardable(*msg_p) && !loom_sched_map_failed(map)) {
        bool plain = true;
        for (size_t i = 0; plain && i < tb->nitems; i++)
            plain = tb->items[i].attempt == 0 && tb->items[i].data.data;
        if (plain) {
            chunk = loom_sched_chunk_new(*msg_p, s_msg_free, tb->nitems);
            *msg_p = NULL; //  the chunk's now; tb lives while the chunk holds it
        }
    }
    uint64_t client_map = tb->map;
    size_t accepted = 0;
    bool too_far = false;
    char owner[48];
    s_owner_key(c->id, loom_sched_map_def(map)->pipeline, owner, sizeof owner);
    for (size_t i = 0; i < tb->nitems; i++) {
        const loom_wire_item *it = &tb->items[i];
        for (size_t f = 0; f < it->nfiles; f++) //  kept while the pipeline lives
            loom_blob_channel_ref(self->bc, owner, it->files[f].hash.data);
        loom_sched_file files[16];
        loom_sched_file *fp = it->nfiles <= 16 ? files : loom_xcalloc(it->nfiles, sizeof *fp);
        for (size_t f = 0; f < it->nfiles; f++) {
            fp[f] = (loom_sched_file){.name = (char *)it->files[f].name, .size = it->files[f].size};
            size_t hl = it->files[f].hash.len;
            if (hl > sizeof fp[f].hash)
                hl = sizeof fp[f].hash;
            if (hl)
                memcpy(fp[f].hash, it->files[f].hash.data, hl);
            fp[f].hash_len = hl;
        }
        int rc = loom_sched_submit_from(self->sched, map, chunk, (uint32_t)i, it->index,
                                        it->data.data, it->data.len, fp, it->nfiles);
        if (fp != files)
            free(fp);
        if (rc == 0)
            accepted++;
        else if (rc == LOOM_ESTATE)
            self->st.results_dropped++;
        else
            too_far = true;
    }
    loom_sched_chunk_done(&chunk, accepted == tb->nitems); //  tb may be gone now
    if (too_far) {
        self->st.msgs_rejected++;
        s_send_error(self, c, LOOM_ETOOBIG, client_map,
                     "item index too far beyond the lowest index not yet submitted");
    }
}

//  A worker's results: each one for an item in flight on that worker is
//  taken and goes to the map's client; the rest are dropped (late or
//  duplicate). When every result is taken, the batch was read in the plain
//  layout and the map is not a reduce (whose partial stays here), the
//  client gets the worker's frame itself with its own map id: no encoding.
//  Takes *msg_p when it forwards it.
static void
s_on_result_batch(s_broker *self, s_session *w, loom_msg **msg_p)
{
    const loom_wire_result_batch *rb = &(*msg_p)->u.result_batch;
    self->st.workers_blob_bytes_in += rb->blob_bytes_in;
    self->st.workers_blob_bytes_out += rb->blob_bytes_out;
    loom_sched_map *map = loom_sched_map_find(self->sched, rb->map);
    if (!map) {
        self->st.results_dropped += rb->nresults ? rb->nresults : 1;
        return;
    }
    if (loom_sched_map_cancelled(map)) {
        //  The worker is done with these (stopped, or finished first):
        //  nobody wants them, but it may take new work again.
        for (size_t i = 0; i < rb->nresults; i++) {
            loom_sched_item *it = loom_sched_take(self->sched, w->sw, map, rb->results[i].index);
            if (it)
                self->st.items_cancelled++;
            else
                self->st.results_dropped++;
            loom_sched_item_free(&it);
        }
        return;
    }
    if (rb->nresults == 0) {
        //  A combine batch's fold.
        if (!rb->has_partial ||
            !loom_sched_combine_done(self->sched, w->sw, map, rb->partial.data, rb->partial.len))
            self->st.results_dropped++;
        return;
    }
    loom_wire_result *out = NULL; //  the results kept, once one was dropped
    size_t k = 0, failed = 0;
    int64_t now = loom_now_ms();
    for (size_t i = 0; i < rb->nresults; i++) {
        const loom_wire_result *r = &rb->results[i];
        //  A failure the map retries stays here: the client hears of the
        //  item when it has succeeded or is out of retries.
        bool retried = r->status != 0 &&
                       loom_sched_retry_failed(self->sched, w->sw, map, r->index, r->status, now);
        loom_sched_item *it = retried ? NULL : loom_sched_take(self->sched, w->sw, map, r->index);
        if (!it) {
            if (!retried)
                self->st.results_dropped++;
            if (!out) {
                //  Every result before this one was kept.
                out = loom_xmalloc(rb->nresults * sizeof *out);
                memcpy(out, rb->results, k * sizeof *out);
            }
            continue;
        }
        loom_sched_item_free(&it);
        if (out)
            out[k] = *r;
        k++;
        if (r->status == 0)
            self->st.items_done++;
        else {
            self->st.items_failed++;
            failed++;
        }
    }
    if (k) {
        bool reduce = loom_sched_map_def(map)->reduce;
        if (rb->has_partial && reduce)
            loom_sched_map_add_partial(map, rb->partial.data, rb->partial.len);
        loom_sched_map_observe(map, rb->elapsed_us, rb->nresults);
        s_session *client = loom_sched_map_owner(map);
        uint64_t client_map = loom_sched_map_owner_id(map);
        if (!out && !reduce && loom_wire_forwardable(*msg_p))
            s_forward(self, client, msg_p, client_map);
        else {
            loom_msg m = {.type = LOOM_MSG_RESULT_BATCH};
            m.u.result_batch.map = client_map;
            m.u.result_batch.results = out ? out : rb->results;
            m.u.result_batch.nresults = k;
            m.u.result_batch.elapsed_us = rb->elapsed_us;
            s_send(self, client, &m);
        }
        if (loom_sched_map_count_failures(map, failed))
            s_halt(self, map);
    }
    free(out);
}

static void
s_on_worker_error(s_broker *self, s_session *w, const loom_wire_error *e)
{
    loom_log_warning("broker: worker %u (pid %u): error %d about map %llu: %s", w->worker_id,
                     w->pid, e->code, (unsigned long long)e->map, e->message ? e->message : "");
    loom_sched_map *map = e->map ? loom_sched_map_find(self->sched, e->map) : NULL;
    if (!map || loom_sched_map_failed(map) || loom_sched_map_cancelled(map))
        return;
    //  Its plugin's init failed in this process (which fails the map's
    //  items it holds itself): it gets no more of the map, which fails as
    //  a whole only once no live worker can run it.
    if (e->code == LOOM_EINIT) {
        loom_sched_worker_plugin_failed(self->sched, w->sw, loom_sched_map_def(map)->plugin,
                                        e->message);
        loom_sched_worker_return_combines(w->sw, map);
        //  The item that met the failure fails with it (the worker says
        //  so); what it was sent after runs elsewhere (its answers for
        //  them are dropped).
        loom_sched_worker_requeue_map(self->sched, w->sw, map);
        s_init_check_all(self); //  every map of that plugin
        return;
    }
    int code = e->code < 0 ? e->code : LOOM_EIO;
    s_map_fail(self, map, code, e->message ? e->message : "map failed");
}

static void
s_on_worker_exit(s_broker *self, s_session *sup, const loom_wire_worker_exit *we)
{
    char reason[256];
    bool clean;
    int status = loom_worker_exit_reason(we, reason, sizeof reason, &clean);
    //  It ended an item (or init) of a cancelled map that ran past the
    //  grace: not the fault of what else it held.
    if (we->signal <= 0 && we->status == LOOM_WORKER_EXIT_CANCELLED)
        clean = true;
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions))
        if (s->role == LOOM_ROLE_WORKER && s->pid == we->pid && !strcmp(s->host, sup->host)) {
            s->dead_clean = clean;
            s->dead_status = status;
            //  It died in a plugin's init (a crash, the init timeout).
            if (we->init_map && !(we->signal <= 0 && we->status == LOOM_WORKER_EXIT_CANCELLED)) {
                s->dead_init_map = we->init_map;
                free(s->dead_init_error);
                s->dead_init_error = loom_xstrdup(we->init_error ? we->init_error : reason);
            }
            if (s->dead) { //  ended for another reason this very turn: this one says why
                free(s->dead_reason);
                s->dead_reason = loom_xstrdup(reason);
            } else
                s_kill(self, s, reason);
        }
}

//  A message from a live session.
static void
s_on_session_msg(s_broker *self, s_session *s, loom_msg **msg_p)
{
    const loom_msg *msg = *msg_p;
    bool ok = true;
    switch (msg->type) {
    case LOOM_MSG_HEARTBEAT:
        break;
    case LOOM_MSG_STATS_REQUEST:
        s_answer_stats(self, s->rid, s->rid_len);
        break;
    case LOOM_MSG_PIPELINE_OPEN:
        if ((ok = s->role == LOOM_ROLE_CLIENT))
            s_on_pipeline_open(self, s, &msg->u.pipeline_open);
        break;
    case LOOM_MSG_PIPELINE_CLOSE:
        if ((ok = s->role == LOOM_ROLE_CLIENT)) {
            char pkey[32];
            s_map_key(msg->u.pipeline_close.pipeline, pkey, sizeof pkey);
            ok = zhashx_lookup(s->pipeline_ids, pkey) != NULL;
            zhashx_delete(s->pipeline_ids, pkey);
            s->pipelines = zhashx_size(s->pipeline_ids);
            char owner[48];
            s_owner_key(s->id, msg->u.pipeline_close.pipeline, owner, sizeof owner);
            if (ok)
                loom_blob_channel_release(self->bc, owner);
        }
        break;
    case LOOM_MSG_MAP_OPEN:
        if ((ok = s->role == LOOM_ROLE_CLIENT))
            s_on_map_open(self, s, &msg->u.map_open);
        break;
    case LOOM_MSG_TASK_BATCH:
        if ((ok = s->role == LOOM_ROLE_CLIENT))
            s_on_task_batch(self, s, msg_p);
        break;
    case LOOM_MSG_MAP_END:
        if ((ok = s->role == LOOM_ROLE_CLIENT)) {
            loom_sched_map *map = s_client_map(s, msg->u.map_end.map);
            if (map)
                loom_sched_map_set_count(map, msg->u.map_end.count);
            else
                ok = false;
        }
        break;
    case LOOM_MSG_CANCEL:
        if ((ok = s->role == LOOM_ROLE_CLIENT)) {
            loom_sched_map *map = s_client_map(s, msg->u.cancel_map);
            if (map)
                s_map_cancel(self, map);
            else
                ok = false;
        }
        break;
    case LOOM_MSG_CREDIT:
        if ((ok = s->role == LOOM_ROLE_WORKER)) {
            //  Credit comes back as results go out: a worker asking to
            //  hold more than LOOM_BROKER_MAX_CREDIT items is refused.
            uint64_t want = (uint64_t)loom_sched_worker_in_flight(s->sw) +
                            loom_sched_worker_credit(s->sw) + msg->u.credit;
            if (want > LOOM_BROKER_MAX_CREDIT)
                ok = false;
            else
                loom_sched_worker_add_credit(s->sw, msg->u.credit);
        }
        break;
    case LOOM_MSG_RESULT_BATCH:
        if ((ok = s->role == LOOM_ROLE_WORKER))
            s_on_result_batch(self, s, msg_p);
        break;
    case LOOM_MSG_ERROR:
        if (s->role == LOOM_ROLE_WORKER)
            s_on_worker_error(self, s, &msg->u.error);
        else
            loom_log_warning("broker: session %llu reports error %d: %s", (unsigned long long)s->id,
                             msg->u.error.code, msg->u.error.message ? msg->u.error.message : "");
        break;
    case LOOM_MSG_WORKER_EXIT:
        if ((ok = s->role == LOOM_ROLE_SUPERVISOR))
            s_on_worker_exit(self, s, &msg->u.worker_exit);
        break;
    default:
        ok = false;
    }
    if (!ok) {
        self->st.msgs_rejected++;
        if (self->verbose)
            loom_log_info("broker: session %llu: unexpected %s", (unsigned long long)s->id,
                          loom_msg_type_name(msg->type));
    }
}

//  A message from the task ROUTER. May take *msg_p (a batch sent on).
static void
s_on_task_msg(s_broker *self, const uint8_t *rid, size_t rid_len, const char *user,
              loom_msg **msg_p)
{
    const loom_msg *msg = *msg_p;
    char key[2 * LOOM_RID_MAX + 1];
    s_rid_key(rid, rid_len, key);
    s_session *any = zhashx_lookup(self->sessions, key);
    if (any && strcmp(any->user, user) != 0) {
        //  A session belongs to the CURVE key it said Hello with: another
        //  connection that took the same routing id (the first one gone,
        //  its session not yet expired) neither speaks for it nor ends it.
        self->st.msgs_rejected++;
        if (self->verbose)
            loom_log_info("broker: %s from %s with another key: dropped",
                          loom_msg_type_name(msg->type), key);
        return;
    }
    //  A session about to be ended does not own its late messages.
    s_session *s = any && !any->dead ? any : NULL;
    if (self->verbose)
        loom_log_info("broker: %s from %s", loom_msg_type_name(msg->type), key);
    if (msg->proto != LOOM_PROTO_VERSION) {
        self->st.msgs_rejected++;
        loom_msg m = {.type = LOOM_MSG_ERROR};
        char text[96];
        snprintf(text, sizeof text, "protocol version %u, broker speaks %d", msg->proto,
                 LOOM_PROTO_VERSION);
        m.u.error.code = LOOM_EPROTO;
        m.u.error.message = text;
        s_send_rid(self, rid, rid_len, &m);
        return;
    }
    if (msg->type == LOOM_MSG_HELLO) {
        s_on_hello(self, rid, rid_len, key, user, any, &msg->u.hello);
        return;
    }
    if (!s) {
        if (msg->type == LOOM_MSG_STATS_REQUEST) {
            s_answer_stats(self, rid, rid_len);
            return;
        }
        self->st.msgs_rejected++;
        if (msg->type == LOOM_MSG_RESULT_BATCH) //  late: from a session declared dead
            self->st.results_dropped += msg->u.result_batch.nresults;
        int64_t now = loom_now_ms();
        int64_t *last = zhashx_lookup(self->strangers, key);
        if (last && now - *last < 1000)
            return;
        if (!last) {
            last = loom_xmalloc(sizeof *last);
            zhashx_insert(self->strangers, key, last);
        }
        *last = now;
        loom_msg m = {.type = LOOM_MSG_ERROR};
        m.u.error.code = LOOM_ESTATE;
        m.u.error.message = "no session: send Hello";
        s_send_rid(self, rid, rid_len, &m);
        return;
    }
    s->last_in = loom_now_ms();
    if (s->sw)
        loom_sched_worker_pause(s->sw, false);
    s_on_session_msg(self, s, msg_p);
}

//  ---------------------------------------------------------------------
//  Reactor handlers

static int
s_on_tasks(zloop_t *loop, zsock_t *reader, void *arg)
{
    (void)loop;
    s_broker *self = arg;
    void *sock = zsock_resolve(reader);
    for (int n = 0; n < LOOM_BROKER_DRAIN; n++) {
        uint8_t rid[LOOM_RID_MAX];
        size_t rid_len = 0;
        loom_msg *msg = NULL;
        char user[LOOM_BROKER_USER_MAX];
        int rc = loom_wire_recv_user(sock, rid, sizeof rid, &rid_len, &msg, ZMQ_DONTWAIT, user,
                                     sizeof user);
        if (rc == LOOM_EAGAIN || rc == LOOM_EIO)
            break;
        self->st.msgs_in++;
        if (rc == 0 && rid_len > 0 && rid_len <= LOOM_RID_MAX)
            s_on_task_msg(self, rid, rid_len, user, &msg);
        else
            self->st.msgs_rejected++;
        loom_msg_destroy(&msg);
    }
    s_settle(self);
    return 0;
}

static int
s_on_blobs(zloop_t *loop, zsock_t *reader, void *arg)
{
    (void)loop;
    (void)reader;
    s_broker *self = arg;
    //  A few chunks per wake-up (each is a disk write or read of up to
    //  256 KiB), so heartbeats and task messages are never kept waiting.
    loom_blob_channel_on_readable(self->bc, LOOM_BROKER_BLOB_DRAIN);
    return 0;
}

static int
s_on_tick(zloop_t *loop, int timer_id, void *arg)
{
    (void)loop;
    (void)timer_id;
    s_broker *self = arg;
    //  zloop runs timers before readers: after a late wake-up (a loaded
    //  host), read what the peers sent meanwhile first, so that none that
    //  spoke is taken for silent.
    s_on_tasks(loop, self->tasks, self);
    int64_t now = loom_now_ms();
    int64_t expiry = (int64_t)self->hb_ms * LOOM_BROKER_LIVENESS;
    loom_msg hb = {.type = LOOM_MSG_HEARTBEAT};
    for (s_session *s = zhashx_first(self->sessions); s; s = zhashx_next(self->sessions)) {
        if (s->dead)
            continue;
        if (s->gone_at) {
            if (now - s->gone_at > expiry) //  no word from its supervisor
                s_kill(self, s, "peer disconnected");
            continue;
        }
        if (now - s->last_in > expiry) {
            char reason[160];
            if (s->role == LOOM_ROLE_WORKER)
                snprintf(reason, sizeof reason,
                         "worker process %u on host '%s' lost (silent for %lld ms)", s->pid,
                         s->host, (long long)(now - s->last_in));
            else
                snprintf(reason, sizeof reason, "silent for %lld ms",
                         (long long)(now - s->last_in));
            s_kill(self, s, reason);
        } else if (now - s->last_out >= self->hb_ms)
            s_send(self, s, &hb);
    }
    //  Forget strangers we answered long ago.
    if (zhashx_size(self->strangers)) {
        zlistx_t *keys = zhashx_keys(self->strangers);
        for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys)) {
            int64_t *last = zhashx_lookup(self->strangers, k);
            if (last && now - *last > 2000)
                zhashx_delete(self->strangers, k);
        }
        zlistx_destroy(&keys);
    }
    loom_blob_channel_tick(self->bc, now);
    s_settle(self);
    return 0;
}

static void
s_router_setup(zsock_t *sock, uint32_t max_frame)
{
    zsock_set_router_mandatory(sock, 1);
    zsock_set_sndhwm(sock, LOOM_BROKER_HWM);
    zsock_set_rcvhwm(sock, LOOM_BROKER_HWM);
    zsock_set_maxmsgsize(sock, (int)max_frame);
    zsock_set_linger(sock, 0);
}

//  Bind sock to ep; returns the bound endpoint (malloc'd) or NULL with a
//  message in err.
static char *
s_bind(zsock_t *sock, const char *ep, char *err, size_t errcap)
{
    if (zsock_bind(sock, "%s", ep) == -1) {
        snprintf(err, errcap, "cannot bind %s: %s", ep, zmq_strerror(zmq_errno()));
        return NULL;
    }
    char *bound = zsock_last_endpoint(sock);
    if (!bound)
        bound = loom_xstrdup(ep);
    return bound;
}

static void
s_on_bind(s_broker *self, zmsg_t *msg)
{
    char *task_ep = zmsg_popstr(msg);
    char *blob_ep = zmsg_popstr(msg);
    char err[512] = "";
    char *bound_task = NULL, *bound_blob = NULL;
    if (self->setup_error)
        snprintf(err, sizeof err, "%s", self->setup_error);
    else if (self->bound)
        snprintf(err, sizeof err, "broker is already bound");
    else if (!task_ep || !*task_ep)
        snprintf(err, sizeof err, "BIND needs a task endpoint");
    else if ((bound_task = s_bind(self->tasks, task_ep, err, sizeof err))) {
        if (blob_ep && *blob_ep) {
            bound_blob = s_bind(self->blobs, blob_ep, err, sizeof err);
            if (!bound_blob) {
                zsock_unbind(self->tasks, "%s", bound_task);
                zstr_free(&bound_task);
            }
        } else
            bound_blob = loom_xstrdup("");
    }
    if (bound_task && bound_blob) {
        self->bound = true;
        if (*bound_blob) {
            self->blobs_bound = true;
            free(self->blob_ep);
            self->blob_ep = loom_xstrdup(bound_blob);
            zloop_reader(self->loop, self->blobs, s_on_blobs, self);
            zloop_reader_set_tolerant(self->loop, self->blobs);
        }
        zstr_sendx(self->pipe, "OK", bound_task, bound_blob, NULL);
    } else
        zstr_sendx(self->pipe, "ERROR", err, NULL);
    zstr_free(&bound_task);
    zstr_free(&bound_blob);
    zstr_free(&task_ep);
    zstr_free(&blob_ep);
}

//  BIND-LOCAL inproc-endpoint: a second task endpoint for a client in this
//  process (embedded mode), after BIND. Its messages skip libzmq's I/O
//  thread; the broker treats them as any other peer's.
static void
s_on_bind_local(s_broker *self, zmsg_t *msg)
{
    char *ep = zmsg_popstr(msg);
    bool ok = self->bound && ep && strncmp(ep, "inproc://", 9) == 0 &&
              zsock_bind(self->tasks, "%s", ep) == 0;
    zstr_send(self->pipe, ok ? "OK" : "ERROR");
    zstr_free(&ep);
}

//  STORE dir cap ttl_ms [temp]: where and how the blob store lives.
static void
s_on_store(s_broker *self, zmsg_t *msg)
{
    char *dir = zmsg_popstr(msg);
    char *cap = zmsg_popstr(msg);
    char *ttl = zmsg_popstr(msg);
    char *temp = zmsg_popstr(msg);
    int rc = loom_blob_channel_set_store(
        self->bc, dir && *dir ? dir : NULL, cap ? strtoull(cap, NULL, 10) : 0,
        ttl ? strtoll(ttl, NULL, 10) : 0, temp && streq(temp, "temp"));
    zstr_send(self->pipe, rc == 0 ? "OK" : "ERROR");
    zstr_free(&dir);
    zstr_free(&cap);
    zstr_free(&ttl);
    zstr_free(&temp);
}

static int
s_on_pipe(zloop_t *loop, zsock_t *reader, void *arg)
{
    (void)loop;
    s_broker *self = arg;
    zmsg_t *msg = zmsg_recv(reader);
    if (!msg)
        return -1;
    char *cmd = zmsg_popstr(msg);
    int rc = 0;
    if (!cmd)
        ;
    else if (streq(cmd, "$TERM"))
        rc = -1;
    else if (streq(cmd, "BIND"))
        s_on_bind(self, msg);
    else if (streq(cmd, "BIND-LOCAL"))
        s_on_bind_local(self, msg);
    else if (streq(cmd, "STATS")) {
        loom_msg m = {.type = LOOM_MSG_STATS};
        s_stats_fill(self, &m.u.stats);
        void *buf = NULL;
        size_t len = 0;
        if (loom_wire_encode(&m, &buf, &len) == 0) {
            zframe_t *f = zframe_new(buf, len);
            zframe_send(&f, self->pipe, 0);
            free(buf);
        } else
            zstr_send(self->pipe, "");
    } else if (streq(cmd, "VERBOSE"))
        self->verbose = true;
    else if (streq(cmd, "STORE"))
        s_on_store(self, msg);
    else
        loom_log_warning("broker: unknown pipe command '%s'", cmd);
    zstr_free(&cmd);
    zmsg_destroy(&msg);
    return rc;
}

//  ---------------------------------------------------------------------
//  Actor

static void
s_broker_destroy(s_broker **self_p)
{
    s_broker *self = *self_p;
    if (!self)
        return;
    zloop_destroy(&self->loop);
    if (self->sessions) {
        //  Maps first (they belong to clients), then everything else.
        loom_sched_destroy(&self->sched);
        zlistx_t *all = zhashx_values(self->sessions);
        for (s_session *s = zlistx_first(all); s; s = zlistx_next(all)) {
            s->sw = NULL; //  freed with the scheduler
            s_session_free(&s);
        }
        zlistx_destroy(&all);
        zhashx_destroy(&self->sessions);
    }
    loom_sched_destroy(&self->sched);
    zhashx_destroy(&self->strangers);
    loom_blob_channel_destroy(&self->bc);
    free(self->blob_ep);
    if (self->monitor) {
        zmq_socket_monitor(zsock_resolve(self->tasks), NULL, 0);
        zsock_destroy(&self->monitor);
    }
    zsock_destroy(&self->tasks);
    zsock_destroy(&self->blobs);
    loom_curve_server_destroy(&self->curve);
    free(self->setup_error);
    free(self);
    *self_p = NULL;
}

static void
s_free_int64(void **item)
{
    free(*item);
    *item = NULL;
}

//  Limits: the option, else the environment, else the default.
static void
s_limits(loom_broker_opts *lim, const loom_broker_opts *o)
{
    static const loom_broker_opts none = {0};
    if (!o)
        o = &none;
    lim->max_frame = o->max_frame ? o->max_frame
                                  : (uint32_t)loom_env_long("LOOM_MAX_FRAME", LOOM_BROKER_MAX_FRAME,
                                                            4096, 1L << 30);
    lim->max_batch = o->max_batch ? o->max_batch
                                  : (uint32_t)loom_env_long("LOOM_MAX_BATCH", LOOM_BROKER_MAX_BATCH,
                                                            1, LOOM_WIRE_MAX_ITEMS);
    if (lim->max_batch > LOOM_SCHED_MAX_BATCH)
        lim->max_batch = LOOM_SCHED_MAX_BATCH;
    lim->max_maps =
        o->max_maps ? o->max_maps : (uint32_t)loom_env_long("LOOM_MAX_MAPS", 1024, 1, 1L << 24);
    lim->max_pipelines = o->max_pipelines
                             ? o->max_pipelines
                             : (uint32_t)loom_env_long("LOOM_MAX_PIPELINES", 1024, 1, 1L << 24);
    lim->blob_quota =
        o->blob_quota ? o->blob_quota : (uint64_t)loom_env_long("LOOM_BLOB_QUOTA", 0, 0, LONG_MAX);
}

//  Connections libzmq closes never reach the broker as messages: a frame
//  over ZMQ_MAXMSGSIZE makes it drop the connection unread. A socket
//  monitor counts them (with peers that simply left) as connections_dropped.
static int
s_on_monitor(zloop_t *loop, zsock_t *reader, void *arg)
{
    (void)loop;
    s_broker *self = (s_broker *)arg;
    for (int n = 0; n < 256; n++) {
        zmsg_t *msg = zmsg_recv_nowait(reader);
        if (!msg)
            break;
        zframe_t *ev = zmsg_first(msg);
        if (ev && zframe_size(ev) >= 2) {
            uint16_t id;
            memcpy(&id, zframe_data(ev), sizeof id);
            if (id == ZMQ_EVENT_DISCONNECTED)
                self->st.connections_dropped++;
        }
        zmsg_destroy(&msg);
    }
    return 0;
}

static void
s_monitor_start(s_broker *self)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://loom-broker-monitor-%p", (void *)self);
    if (zmq_socket_monitor(zsock_resolve(self->tasks), ep, ZMQ_EVENT_DISCONNECTED) != 0) {
        loom_log_warning("broker: no connection monitor: %s", zmq_strerror(zmq_errno()));
        return;
    }
    self->monitor = zsock_new(ZMQ_PAIR);
    if (!self->monitor || zsock_connect(self->monitor, "%s", ep) != 0) {
        zmq_socket_monitor(zsock_resolve(self->tasks), NULL, 0);
        zsock_destroy(&self->monitor);
        return;
    }
    zloop_reader(self->loop, self->monitor, s_on_monitor, self);
}

static s_broker *
s_broker_new(zsock_t *pipe, const loom_broker_opts *opts)
{
    s_broker *self = loom_xcalloc(1, sizeof *self);
    self->pipe = pipe;
    s_limits(&self->lim, opts);
    self->hb_ms = (int)loom_env_long("LOOM_HEARTBEAT_MS", 1000, 10, 3600000);
    self->started_ms = loom_now_ms();
    if (sodium_init() < 0)
        self->epoch = (uint64_t)loom_now_us() ^ ((uint64_t)getpid() << 32);
    else
        randombytes_buf(&self->epoch, sizeof self->epoch);
    if (!self->epoch)
        self->epoch = 1;
    self->sched = loom_sched_new();
    self->sessions = zhashx_new();
    self->strangers = zhashx_new();
    zhashx_set_destructor(self->strangers, s_free_int64);
    self->tasks = zsock_new(ZMQ_ROUTER);
    self->blobs = zsock_new(ZMQ_ROUTER);
    LOOM_ASSERT(self->tasks && self->blobs);
    s_router_setup(self->tasks, self->lim.max_frame);
    s_router_setup(self->blobs, self->lim.max_frame);
    self->bc = loom_blob_channel_new(self->blobs);
    loom_blob_channel_set_quota(self->bc, self->lim.blob_quota);
    if (opts && (opts->curve_dir || opts->cert_path)) {
        //  Before any bind: CURVE_SERVER affects the binds that follow.
        char *err = NULL;
        if (!opts->curve_dir || !opts->cert_path)
            err = loom_xstrdup("CURVE needs both an allow-list directory and the broker's "
                               "certificate");
        else
            self->curve = loom_curve_server_new(opts->curve_dir, opts->cert_path, &err);
        if (self->curve && (loom_curve_server_setup(self->curve, zsock_resolve(self->tasks)) ||
                            loom_curve_server_setup(self->curve, zsock_resolve(self->blobs))))
            err = loom_xstrdup("cannot make the broker's sockets CURVE servers");
        if (err)
            self->setup_error = err;
    }
    self->loop = zloop_new();
    zloop_set_nonstop(self->loop, true);
    zloop_reader(self->loop, pipe, s_on_pipe, self);
    zloop_reader(self->loop, self->tasks, s_on_tasks, self);
    zloop_reader_set_tolerant(self->loop, self->tasks);
    s_monitor_start(self);
    int tick = self->hb_ms / 2 > 0 ? self->hb_ms / 2 : 1;
    zloop_timer(self->loop, (size_t)tick, 0, s_on_tick, self);
    return self;
}

void
loom_broker_actor(zsock_t *pipe, void *args)
{
    s_broker *self = s_broker_new(pipe, args);
    zsock_signal(pipe, 0);
    zloop_start(self->loop);
    s_broker_destroy(&self);
}

zactor_t *
loom_broker_start(const char *task_ep, const char *blob_ep, char **bound_task, char **bound_blob,
                  char **error)
{
    return loom_broker_start_opts(NULL, task_ep, blob_ep, bound_task, bound_blob, error);
}

zactor_t *
loom_broker_start_opts(const loom_broker_opts *opts, const char *task_ep, const char *blob_ep,
                       char **bound_task, char **bound_blob, char **error)
{
    if (bound_task)
        *bound_task = NULL;
    if (bound_blob)
        *bound_blob = NULL;
    if (error)
        *error = NULL;
    //  OpenSSL loads its configuration at its first use and keeps per-thread
    //  state of that load: done first by a broker thread that then exits
    //  (an upload's hashing thread), it is reported as a leak at exit. Load
    //  it here, on the caller's (long-lived) thread.
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
    zactor_t *actor = zactor_new(loom_broker_actor, (void *)opts);
    if (!actor) {
        if (error)
            *error = loom_xstrdup("cannot start the broker thread");
        return NULL;
    }
    zstr_sendx(actor, "BIND", task_ep ? task_ep : "", blob_ep ? blob_ep : "", NULL);
    //  A signal (SIGCHLD, a profiler's timer) must not lose the answer.
    zmsg_t *reply = NULL;
    while (!(reply = zmsg_recv(actor)) && zmq_errno() == EINTR)
        ;
    char *status = reply ? zmsg_popstr(reply) : NULL;
    char *a = reply ? zmsg_popstr(reply) : NULL;
    char *b = reply ? zmsg_popstr(reply) : NULL;
    zmsg_destroy(&reply);
    if (status && streq(status, "OK") && a && b) {
        if (bound_task) {
            *bound_task = a;
            a = NULL;
        }
        if (bound_blob) {
            *bound_blob = b;
            b = NULL;
        }
    } else {
        if (error)
            *error = loom_xstrdup(a ? a : "broker did not answer BIND");
        zactor_destroy(&actor);
    }
    zstr_free(&status);
    zstr_free(&a);
    zstr_free(&b);
    return actor;
}

int
loom_broker_set_store(zactor_t *broker, const char *dir, uint64_t cap, int64_t ttl_ms,
                      bool temporary)
{
    char caps[32], ttls[32];
    snprintf(caps, sizeof caps, "%llu", (unsigned long long)cap);
    snprintf(ttls, sizeof ttls, "%lld", (long long)ttl_ms);
    zstr_sendx(broker, "STORE", dir ? dir : "", caps, ttls, temporary ? "temp" : "", NULL);
    char *reply = zstr_recv(broker);
    int rc = reply && streq(reply, "OK") ? 0 : LOOM_EIO;
    zstr_free(&reply);
    return rc;
}
