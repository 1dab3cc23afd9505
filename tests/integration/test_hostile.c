/*  test_hostile: a running broker attacked by hostile peers while a
    legitimate map runs.

    The broker is an in-process actor (loom_broker_start_opts, with small
    limits) serving a real `loom worker` process ($LOOM_EXE) and a real
    client (the public API, on its own thread) that keeps submitting items
    until the attacks are over. Raw DEALER sockets then send every kind of
    bad message we know of; each must be refused or dropped and counted in
    the broker's stats (or answered with an Error to the sender only), the
    broker must stay up, and the legitimate map must end with every index
    exactly once and its own data.

    Under CURVE (LOOM_TEST_CURVE=1, the hostile-curve run) every broker
    here has the allow-list, the worker and the legitimate client the
    listed keys, and the raw attacking sockets a listed key too, so that
    the hostile bytes still reach the decoders; one more test checks that
    a peer with an unlisted key, or none, reaches neither ROUTER.  */

#include "loom_test.h"
#include "loom_test_curve.h"

#include "base.h"
#include "broker.h"
#include "scheduler.h"
#include "wire.h"

#include <czmq.h>
#include <errno.h>
#include <loom/loom.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

#define S_WAIT_MS 10000
#define S_MAX_ITEMS 1000000
#define S_MAX_FRAME (1024 * 1024)
#define S_MAX_BATCH 64
#define S_MAX_MAPS 4
#define S_MAX_PIPELINES 4

static char s_ep[128];
static char s_blob_ep[128];
static zactor_t *s_broker;
static pid_t s_worker_pid;

//  ---------------------------------------------------------------------
//  The legitimate client

typedef struct {
    atomic_bool stop; //  the attacks are over: close the map
    atomic_size_t submitted;
    uint8_t *seen;       //  results per index
    size_t bad_data;     //  results whose data is not their index
    size_t failed;       //  results with an error
    int rc;              //  0, or what went wrong
    atomic_bool started; //  the first result came back
} s_legit;

static void *
s_legit_run(void *arg)
{
    s_legit *l = arg;
    loom_client_opts co = {0};
    loom_test_curve_client_opts(&co);
    loom_client *c = loom_client_new(s_ep, &co);
    if (!c) {
        l->rc = -1;
        return NULL;
    }
    loom_pipeline *p = loom_pipeline_new(c, "legit");
    //  A wide window: items stay queued at the broker all along, so a
    //  (fake) worker that asks for work gets some.
    loom_map_opts o = {.window = 50000};
    loom_map *m = p ? loom_map_new(p, "echo", "echo", &o) : NULL;
    if (!m) {
        l->rc = -2;
        loom_client_destroy(&c);
        return NULL;
    }
    size_t n = 0;
    loom_result r;
    while (n < S_MAX_ITEMS && !(atomic_load(&l->stop) && n >= 60000)) {
        uint64_t x = n;
        int rc = loom_map_submit(m, &x, sizeof x);
        if (rc) {
            l->rc = rc;
            break;
        }
        atomic_store(&l->submitted, ++n);
        //  Take what has come back (the window buffers the rest).
        while ((rc = loom_map_next(m, &r, 0)) == 1) {
            atomic_store(&l->started, true);
            if (r.index < S_MAX_ITEMS && l->seen[r.index] < 255)
                l->seen[r.index]++;
            uint64_t y;
            if (r.status)
                l->failed++;
            else if (r.len != sizeof y || (memcpy(&y, r.data, sizeof y), y != r.index))
                l->bad_data++;
        }
    }
    if (l->rc == 0)
        l->rc = loom_map_close(m);
    int rc;
    while (l->rc == 0 && (rc = loom_map_next(m, &r, S_WAIT_MS)) == 1) {
        if (r.index < S_MAX_ITEMS && l->seen[r.index] < 255)
            l->seen[r.index]++;
        uint64_t y;
        if (r.status)
            l->failed++;
        else if (r.len != sizeof y || (memcpy(&y, r.data, sizeof y), y != r.index))
            l->bad_data++;
    }
    if (l->rc == 0 && rc != 0)
        l->rc = rc;
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
    return NULL;
}

//  ---------------------------------------------------------------------
//  Helpers

static loom_wire_stats
s_stats(void)
{
    zstr_send(s_broker, "STATS");
    zframe_t *frame = zframe_recv(s_broker);
    assert_non_null(frame);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_decode(zframe_data(frame), zframe_size(frame), &m), 0);
    loom_wire_stats st = m->u.stats;
    loom_msg_destroy(&m);
    zframe_destroy(&frame);
    return st;
}

//  Refused or dropped, as the broker counts them.
static uint64_t
s_refused(void)
{
    loom_wire_stats st = s_stats();
    return st.msgs_rejected + st.results_dropped;
}

//  Wait until the counter at offset `off` of the stats reaches want.
static uint64_t
s_wait_stat(size_t off, uint64_t want)
{
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    uint64_t v;
    for (;;) {
        loom_wire_stats st = s_stats();
        memcpy(&v, (char *)&st + off, sizeof v);
        if (v >= want || loom_now_ms() > deadline)
            return v;
        zmq_poll(NULL, 0, 5);
    }
}

#define S_STAT(f) offsetof(loom_wire_stats, f)

//  Wait until msgs_rejected + results_dropped >= want.
static void
s_wait_refused(uint64_t want, const char *what)
{
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    uint64_t v;
    while ((v = s_refused()) < want && loom_now_ms() < deadline)
        zmq_poll(NULL, 0, 5);
    if (v < want)
        fail_msg("%s: not counted (refused+dropped %llu, want %llu)", what, (unsigned long long)v,
                 (unsigned long long)want);
}

//  Under CURVE, a listed peer's certificate (the worker's when worker is
//  true, else the client's); NULL in plaintext.
static const char *
s_listed(bool worker)
{
    const loom_test_curve *k = loom_test_curve_get();
    return !k->on ? NULL : worker ? k->worker : k->client;
}

//  A DEALER connected to ep: a CURVE client of the broker with the keys of
//  the certificate cert (NULL: plaintext). With monitor not NULL, *monitor
//  gets the socket's handshake and disconnection events (s_watch_refusal).
static zsock_t *
s_dealer_to(const char *ep, const char *cert, zsock_t **monitor)
{
    zsock_t *s = zsock_new(ZMQ_DEALER);
    assert_non_null(s);
    zsock_set_linger(s, 0);
    int tmo = 2000;
    if (zmq_setsockopt(zsock_resolve(s), ZMQ_SNDTIMEO, &tmo, sizeof tmo) != 0)
        fail_msg("setsockopt: %s", zmq_strerror(zmq_errno()));
    if (cert) {
        zcert_t *c = zcert_load(cert);
        if (!c)
            fail_msg("cannot load the certificate %s", cert);
        zcert_apply(c, s);
        zcert_destroy(&c);
        zsock_set_curve_serverkey(s, loom_test_curve_get()->server_key);
    }
    if (monitor) {
        //  A new name each time: a closed socket's monitor endpoint may
        //  still be bound for a moment.
        static int monitors;
        char mep[64];
        snprintf(mep, sizeof mep, "inproc://hostile-monitor-%d", ++monitors);
        int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                     ZMQ_EVENT_DISCONNECTED;
        assert_int_equal(zmq_socket_monitor(zsock_resolve(s), mep, events), 0);
        *monitor = zsock_new(ZMQ_PAIR);
        assert_non_null(*monitor);
        assert_int_equal(zsock_connect(*monitor, "%s", mep), 0);
    }
    assert_int_equal(zsock_connect(s, "%s", ep), 0);
    return s;
}

//  A DEALER on the task channel; under CURVE with the listed client's key,
//  so that what it sends reaches the broker's decoders.
static zsock_t *
s_dealer(void)
{
    return s_dealer_to(s_ep, s_listed(false), NULL);
}

static void
s_send(zsock_t *s, const loom_msg *m)
{
    assert_int_equal(loom_wire_send(zsock_resolve(s), NULL, 0, m, 0), 0);
}

static void
s_send_raw(zsock_t *s, const void *data, size_t len)
{
    zframe_t *f = zframe_new(data, len);
    assert_int_equal(zframe_send(&f, s, 0), 0);
}

//  Next message of `type` within timeout_ms (others dropped), or NULL.
//  While waiting, heartbeat when asked to, so the session stays alive.
static loom_msg *
s_expect_hb(zsock_t *s, loom_msg_type type, int timeout_ms, bool heartbeat)
{
    int64_t deadline = loom_now_ms() + timeout_ms;
    int64_t last_hb = loom_now_ms();
    for (;;) {
        int64_t now = loom_now_ms();
        if (now >= deadline)
            return NULL;
        if (heartbeat && now - last_hb >= 50) {
            loom_msg hb = {.type = LOOM_MSG_HEARTBEAT};
            loom_wire_send(zsock_resolve(s), NULL, 0, &hb, ZMQ_DONTWAIT);
            last_hb = now;
        }
        zmq_pollitem_t item = {zsock_resolve(s), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 20) <= 0)
            continue;
        loom_msg *m = NULL;
        if (loom_wire_recv(zsock_resolve(s), NULL, 0, NULL, &m, ZMQ_DONTWAIT) != 0)
            continue;
        if (m->type == type)
            return m;
        loom_msg_destroy(&m);
    }
}

//  The same with heartbeats, for a peer with a session.
static loom_msg *
s_expect(zsock_t *s, loom_msg_type type, int timeout_ms)
{
    return s_expect_hb(s, type, timeout_ms, true);
}

//  A new DEALER with a session of `role`.
static zsock_t *
s_session(loom_role role, uint32_t credit)
{
    zsock_t *s = s_dealer_to(s_ep, s_listed(role == LOOM_ROLE_WORKER), NULL);
    loom_msg h = {.type = LOOM_MSG_HELLO};
    h.u.hello = (loom_wire_hello){.role = role, .host = "hostile", .pid = 1, .credit = credit};
    s_send(s, &h);
    loom_msg *w = s_expect(s, LOOM_MSG_WELCOME, S_WAIT_MS);
    assert_non_null(w);
    loom_msg_destroy(&w);
    return s;
}

//  Expect an Error with `code` on s (heartbeating while waiting when s
//  has a session: from one without, a Heartbeat is refused too).
static void
s_expect_error_hb(zsock_t *s, int code, const char *what, bool heartbeat)
{
    loom_msg *e = s_expect_hb(s, LOOM_MSG_ERROR, S_WAIT_MS, heartbeat);
    if (!e)
        fail_msg("%s: no Error came back", what);
    if (e->u.error.code != code)
        fail_msg("%s: Error %d (%s), want %d", what, e->u.error.code,
                 e->u.error.message ? e->u.error.message : "", code);
    loom_msg_destroy(&e);
}

static void
s_expect_error(zsock_t *s, int code, const char *what)
{
    s_expect_error_hb(s, code, what, true);
}

//  Encode m, then patch the first byte run `from` (n bytes) that, changed
//  to `to`, still decodes as wanted (check) or fails to decode (check
//  NULL). Returns the patched buffer (free it) and its length.
static uint8_t *
s_patched(const loom_msg *m, size_t *len, const void *from, const void *to, size_t n,
          bool must_decode, uint16_t want_proto)
{
    void *buf = NULL;
    assert_int_equal(loom_wire_encode(m, &buf, len), 0);
    uint8_t *b = buf;
    for (size_t i = 0; i + n <= *len; i++) {
        if (memcmp(b + i, from, n) != 0)
            continue;
        memcpy(b + i, to, n);
        loom_msg *d = NULL;
        int rc = loom_wire_decode(b, *len, &d);
        bool ok = must_decode ? rc == 0 && d->proto == want_proto : rc != 0;
        loom_msg_destroy(&d);
        if (ok)
            return b;
        memcpy(b + i, from, n);
    }
    fail_msg("no patch found");
    return NULL;
}

//  ---------------------------------------------------------------------
//  Setup

//  Under CURVE, the broker's allow-list (the client and the worker) and
//  certificate; nothing in plaintext.
static void
s_broker_curve(loom_broker_opts *o)
{
    const loom_test_curve *k = loom_test_curve_get();
    if (!k->on)
        return;
    o->curve_dir = k->allow;
    o->cert_path = k->broker;
}

//  A broker did not start: fail with its reason (err, malloc'd, freed).
static void
s_broker_failed(char *err)
{
    char why[512];
    snprintf(why, sizeof why, "%s", err ? err : "?");
    free(err);
    fail_msg("broker: %s", why);
}

static int
s_setup(void **state)
{
    (void)state;
    loom_test_ipc(s_ep, sizeof s_ep, "hostile");
    loom_test_ipc(s_blob_ep, sizeof s_blob_ep, "hostile-blob");
    loom_broker_opts o = {.max_frame = S_MAX_FRAME,
                          .max_batch = S_MAX_BATCH,
                          .max_maps = S_MAX_MAPS,
                          .max_pipelines = S_MAX_PIPELINES};
    s_broker_curve(&o);
    char *err = NULL;
    s_broker = loom_broker_start_opts(&o, s_ep, s_blob_ep, NULL, NULL, &err);
    if (!s_broker)
        s_broker_failed(err);
    const char *exe = getenv("LOOM_EXE");
    assert_non_null(exe);
    char parent[32];
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    const char *argv[16] = {exe, "worker",   "--connect", s_ep,     "--procs",
                            "1", "--parent", parent,      "--quiet"};
    argv[loom_test_curve_peer_argv(argv, 9, true)] = NULL;
    assert_int_equal(posix_spawn(&s_worker_pid, exe, NULL, NULL, (char *const *)argv, environ), 0);
    //  Wait for the worker process's session.
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    while (s_stats().workers < 1 && loom_now_ms() < deadline)
        zmq_poll(NULL, 0, 10);
    assert_true(s_stats().workers >= 1);
    return 0;
}

static s_legit *s_running; //  the legitimate client, while its thread runs
static pthread_t s_thread;

static int
s_teardown(void **state)
{
    (void)state;
    if (s_running) {
        //  A failed check left the legitimate map running: end it first.
        atomic_store(&s_running->stop, true);
        pthread_join(s_thread, NULL);
        s_running = NULL;
    }
    if (s_worker_pid > 0) {
        kill(s_worker_pid, SIGTERM);
        int64_t deadline = loom_now_ms() + 8000;
        int st;
        while (waitpid(s_worker_pid, &st, WNOHANG) == 0) {
            if (loom_now_ms() > deadline) {
                kill(s_worker_pid, SIGKILL);
                waitpid(s_worker_pid, &st, 0);
                break;
            }
            zmq_poll(NULL, 0, 10);
        }
    }
    zactor_destroy(&s_broker);
    unlink(s_ep + strlen("ipc://"));
    unlink(s_blob_ep + strlen("ipc://"));
    return 0;
}

//  ---------------------------------------------------------------------
//  The attacks

static int s_kinds; //  kinds of bad message sent, each checked

static void
s_attack_frames(void)
{
    zsock_t *s = s_dealer();
    uint64_t before = s_refused();

    //  1. Random bytes.
    uint8_t junk[1000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 7919 + 13);
    s_send_raw(s, junk, sizeof junk);
    s_wait_refused(++before, "random bytes");
    s_kinds++;

    //  2. An empty frame.
    s_send_raw(s, "", 0);
    s_wait_refused(++before, "empty frame");
    s_kinds++;

    //  3. A multi-frame message (each frame a valid Heartbeat).
    void *hb = NULL;
    size_t hb_len = 0;
    loom_msg hbm = {.type = LOOM_MSG_HEARTBEAT};
    assert_int_equal(loom_wire_encode(&hbm, &hb, &hb_len), 0);
    zmsg_t *multi = zmsg_new();
    for (int i = 0; i < 3; i++)
        zmsg_addmem(multi, hb, hb_len);
    assert_int_equal(zmsg_send(&multi, s), 0);
    free(hb);
    s_wait_refused(++before, "multi-frame message");
    s_kinds++;

    //  4. A valid header with lying lengths: a TaskBatch whose item data
    //  claims 2 GiB.
    uint8_t data[10];
    memset(data, 'A', sizeof data);
    loom_wire_item it = {.index = 0, .data = {data, sizeof data}};
    loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
    tb.u.task_batch = (loom_wire_task_batch){.map = 1, .nitems = 1, .items = &it};
    size_t len = 0;
    uint32_t ten = 10, huge = 0x7ffffff0;
    uint8_t *lying = s_patched(&tb, &len, &ten, &huge, 4, false, 0);
    s_send_raw(s, lying, len);
    free(lying);
    s_wait_refused(++before, "lying length");
    s_kinds++;

    //  5. A message before Hello: Error ESTATE, counted.
    loom_msg cr = {.type = LOOM_MSG_CREDIT};
    cr.u.credit = 10;
    s_send(s, &cr);
    s_expect_error_hb(s, LOOM_ESTATE, "message before Hello", false);
    s_wait_refused(++before, "message before Hello");
    s_kinds++;

    //  6. A wrong protocol version (a Hello with proto 9).
    loom_msg h = {.type = LOOM_MSG_HELLO};
    h.u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "", .software = "x"};
    uint16_t one = 1, nine = 9;
    uint8_t *p9 = s_patched(&h, &len, &one, &nine, 2, true, 9);
    s_send_raw(s, p9, len);
    free(p9);
    s_expect_error_hb(s, LOOM_EPROTO, "wrong protocol version", false);
    s_wait_refused(++before, "wrong protocol version");
    s_kinds++;
    assert_int_equal(s_stats().clients, 1); //  only the legitimate client has a session
    zsock_destroy(&s);

    //  7. A frame over the size limit: libzmq drops the connection before
    //  the broker reads a byte of it (ZMQ_MAXMSGSIZE), so it is not in
    //  msgs_in; the broker must not have received it, and its connection
    //  monitor counts the dropped connection. First let the disconnections
    //  of the sockets closed above settle, so the count is this one's.
    uint64_t dropped_before = s_stats().connections_dropped;
    for (int64_t quiet_since = loom_now_ms(); loom_now_ms() - quiet_since < 200;) {
        zmq_poll(NULL, 0, 20);
        uint64_t now = s_stats().connections_dropped;
        if (now != dropped_before) {
            dropped_before = now;
            quiet_since = loom_now_ms();
        }
    }
    s = s_dealer();
    uint64_t rejected_before = s_stats().msgs_rejected;
    size_t big_len = 2 * S_MAX_FRAME;
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    s_send_raw(s, big, big_len);
    free(big);
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    while (s_stats().connections_dropped == dropped_before && loom_now_ms() < deadline)
        zmq_poll(NULL, 0, 5);
    if (s_stats().connections_dropped == dropped_before)
        fail_msg("frame over the size limit: the dropped connection was not counted");
    //  A message after it on the same socket is lost with the connection
    //  (or, if libzmq reconnected, arrives alone): either way the big
    //  frame never reaches the broker.
    loom_msg sr = {.type = LOOM_MSG_STATS_REQUEST};
    zsock_t *probe = s_dealer();
    s_send(probe, &sr);
    //  No heartbeats: from a peer without a session they would be refused.
    loom_msg *st = s_expect_hb(probe, LOOM_MSG_STATS, S_WAIT_MS, false);
    assert_non_null(st);
    loom_msg_destroy(&st);
    zsock_destroy(&probe);
    //  Had the broker read it, the zero bytes would have been refused as
    //  malformed and counted.
    assert_int_equal(s_stats().msgs_rejected, rejected_before);
    s_kinds++;
    zsock_destroy(&s);
}

static void
s_attack_as_worker(void)
{
    uint64_t before;
    //  8-9. Results for items never assigned to this worker: the legitimate
    //  map (broker id 1, the first map opened) is running on the real
    //  worker; results for its indexes, and for maps that do not exist.
    zsock_t *w = s_session(LOOM_ROLE_WORKER, 0);
    loom_wire_result res[16];
    for (int i = 0; i < 16; i++)
        res[i] =
            (loom_wire_result){.index = (uint64_t)i * 97, .data = {(const uint8_t *)"forged!!", 8}};
    loom_msg rb = {.type = LOOM_MSG_RESULT_BATCH};
    rb.u.result_batch = (loom_wire_result_batch){.map = 1, .nresults = 16, .results = res};
    uint64_t dropped = s_stats().results_dropped;
    s_send(w, &rb);
    assert_true(s_wait_stat(S_STAT(results_dropped), dropped + 16) >= dropped + 16);
    s_kinds++;
    rb.u.result_batch.map = 777777;
    s_send(w, &rb);
    assert_true(s_wait_stat(S_STAT(results_dropped), dropped + 17) >= dropped + 17);
    s_kinds++;

    //  10. Credit far over the limit.
    before = s_refused();
    loom_msg cr = {.type = LOOM_MSG_CREDIT};
    cr.u.credit = UINT32_MAX;
    s_send(w, &cr);
    s_wait_refused(before + 1, "credit over the limit");
    s_kinds++;

    //  11. Client messages from a worker: a TaskBatch, a MapOpen.
    before = s_refused();
    loom_wire_item it = {.index = 0, .data = {(const uint8_t *)"x", 1}};
    loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
    tb.u.task_batch = (loom_wire_task_batch){.map = 1, .nitems = 1, .items = &it};
    s_send(w, &tb);
    loom_msg mo = {.type = LOOM_MSG_MAP_OPEN};
    mo.u.map_open = (loom_wire_map_open){.map = 1, .plugin = "echo", .version = "", .task = "echo"};
    s_send(w, &mo);
    s_wait_refused(before + 2, "client messages from a worker");
    s_kinds++;

    //  12. Blob messages on the task channel (chunks with made-up offsets
    //  and hashes): not task messages, refused.
    before = s_refused();
    uint8_t hash[LOOM_HASH_SIZE];
    memset(hash, 0xab, sizeof hash);
    loom_msg bc = {.type = LOOM_MSG_BLOB_CHUNK};
    bc.u.blob_chunk = (loom_wire_blob_chunk){.hash = {hash, sizeof hash},
                                             .offset = UINT64_MAX - 5,
                                             .total = 10,
                                             .data = {(const uint8_t *)"abc", 3}};
    s_send(w, &bc);
    loom_msg bp = {.type = LOOM_MSG_BLOB_PUT};
    bp.u.blob_put = (loom_wire_blob_put){.hash = {hash, sizeof hash},
                                         .offset = 12345,
                                         .total = 3,
                                         .data = {(const uint8_t *)"abc", 3}};
    s_send(w, &bp);
    s_wait_refused(before + 2, "blob messages on the task channel");
    s_kinds++;

    //  13. Broker-only messages sent to the broker (Welcome, Stats).
    before = s_refused();
    loom_msg wm = {.type = LOOM_MSG_WELCOME};
    s_send(w, &wm);
    loom_msg sm = {.type = LOOM_MSG_STATS};
    s_send(w, &sm);
    s_wait_refused(before + 2, "broker messages sent to the broker");
    s_kinds++;
    zsock_destroy(&w);

    //  14. A Hello asking for absurd credit: clamped and counted.
    before = s_refused();
    w = s_session(LOOM_ROLE_WORKER, UINT32_MAX);
    s_wait_refused(before + 1, "Hello with absurd credit");
    s_kinds++;
    zsock_destroy(&w);
}

//  15. Duplicate results: a fake worker that takes a real batch of the
//  legitimate map, answers it correctly, then sends the same answer again.
static void
s_attack_duplicates(void)
{
    zsock_t *w = s_session(LOOM_ROLE_WORKER, 8);
    loom_msg *m = s_expect(w, LOOM_MSG_TASK_BATCH, S_WAIT_MS);
    assert_non_null(m);
    const loom_wire_task_batch *tb = &m->u.task_batch;
    assert_true(tb->nitems >= 1);
    loom_wire_result *res = calloc(tb->nitems, sizeof *res);
    for (size_t i = 0; i < tb->nitems; i++)
        res[i] = (loom_wire_result){.index = tb->items[i].index,
                                    .attempt = tb->items[i].attempt,
                                    .data = tb->items[i].data};
    loom_msg rb = {.type = LOOM_MSG_RESULT_BATCH};
    rb.u.result_batch =
        (loom_wire_result_batch){.map = tb->map, .nresults = tb->nitems, .results = res};
    uint64_t before = s_refused();
    s_send(w, &rb);
    s_send(w, &rb);
    //  The second copy (at least) is dropped, item by item.
    s_wait_refused(before + tb->nitems, "duplicate results");
    s_kinds++;
    free(res);
    loom_msg_destroy(&m);
    zsock_destroy(&w);
}

static void
s_attack_as_client(void)
{
    zsock_t *c = s_session(LOOM_ROLE_CLIENT, 0);
    uint64_t before;

    //  16. A map in a pipeline never opened.
    before = s_refused();
    loom_msg mo = {.type = LOOM_MSG_MAP_OPEN};
    mo.u.map_open = (loom_wire_map_open){
        .map = 1, .pipeline = 999, .plugin = "echo", .version = "", .task = "echo"};
    s_send(c, &mo);
    s_expect_error(c, LOOM_ESTATE, "map in an unknown pipeline");
    s_wait_refused(before + 1, "map in an unknown pipeline");
    s_kinds++;

    loom_msg po = {.type = LOOM_MSG_PIPELINE_OPEN};
    po.u.pipeline_open = (loom_wire_pipeline){.pipeline = 1, .name = "h"};
    s_send(c, &po);

    //  17. Plugin names that try to reach the filesystem.
    const char *bad_names[] = {"../../etc/passwd", "/tmp/x", "a b", "", "Echo", NULL};
    for (int i = 0; bad_names[i]; i++) {
        before = s_refused();
        mo.u.map_open = (loom_wire_map_open){.map = 10 + (uint64_t)i,
                                             .pipeline = 1,
                                             .plugin = bad_names[i],
                                             .version = "",
                                             .task = "echo"};
        s_send(c, &mo);
        s_expect_error(c, LOOM_EINVAL, bad_names[i]);
        s_wait_refused(before + 1, "bad plugin name");
    }
    s_kinds++;

    //  18-19. Unknown plugin, unknown task: the worker refuses them; the
    //  map fails with an Error to this client only.
    const char *unknown[][2] = {{"no_such_plugin", "echo"}, {"echo", "no_such_task"}};
    for (int i = 0; i < 2; i++) {
        uint64_t id = 20 + (uint64_t)i;
        mo.u.map_open = (loom_wire_map_open){.map = id,
                                             .pipeline = 1,
                                             .plugin = unknown[i][0],
                                             .version = "",
                                             .task = unknown[i][1]};
        s_send(c, &mo);
        loom_wire_item it = {.index = 0, .data = {(const uint8_t *)"x", 1}};
        loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
        tb.u.task_batch = (loom_wire_task_batch){.map = id, .nitems = 1, .items = &it};
        s_send(c, &tb);
        loom_msg end = {.type = LOOM_MSG_MAP_END};
        end.u.map_end = (loom_wire_map_end){.map = id, .count = 1};
        s_send(c, &end);
        //  Either a failed result or an Error for the map.
        int64_t deadline = loom_now_ms() + S_WAIT_MS;
        bool refused = false;
        while (!refused && loom_now_ms() < deadline) {
            loom_msg *r = s_expect(c, LOOM_MSG_RESULT_BATCH, 100);
            if (r && r->u.result_batch.map == id && r->u.result_batch.nresults &&
                r->u.result_batch.results[0].status != 0)
                refused = true;
            loom_msg_destroy(&r);
        }
        if (!refused)
            fail_msg("map of %s/%s did not fail", unknown[i][0], unknown[i][1]);
        s_kinds++;
    }

    //  20. Worker messages from a client: results, credit, WorkerExit.
    before = s_refused();
    loom_wire_result r = {.index = 0, .data = {(const uint8_t *)"zz", 2}};
    loom_msg rb = {.type = LOOM_MSG_RESULT_BATCH};
    rb.u.result_batch = (loom_wire_result_batch){.map = 1, .nresults = 1, .results = &r};
    s_send(c, &rb);
    loom_msg cr = {.type = LOOM_MSG_CREDIT};
    cr.u.credit = 5;
    s_send(c, &cr);
    loom_msg we = {.type = LOOM_MSG_WORKER_EXIT};
    we.u.worker_exit = (loom_wire_worker_exit){.pid = (uint32_t)s_worker_pid, .signal = 9};
    s_send(c, &we);
    s_wait_refused(before + 3, "worker messages from a client");
    s_kinds++;

    //  21. TaskBatch, MapEnd and Cancel for maps this client does not own
    //  (the legitimate client's map ids start at 1 in its own session).
    before = s_refused();
    loom_wire_item it = {.index = 0, .data = {(const uint8_t *)"x", 1}};
    loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
    tb.u.task_batch = (loom_wire_task_batch){.map = 424242, .nitems = 1, .items = &it};
    s_send(c, &tb);
    loom_msg end = {.type = LOOM_MSG_MAP_END};
    end.u.map_end = (loom_wire_map_end){.map = 424242, .count = 1};
    s_send(c, &end);
    loom_msg cancel = {.type = LOOM_MSG_CANCEL};
    cancel.u.cancel_map = 424242;
    s_send(c, &cancel);
    s_wait_refused(before + 3, "messages for maps not owned");
    s_kinds++;

    //  22. Over the limits: items per batch, open maps, open pipelines,
    //  and an index far beyond the others.
    mo.u.map_open = (loom_wire_map_open){
        .map = 30, .pipeline = 1, .plugin = "echo", .version = "", .task = "echo"};
    s_send(c, &mo);
    loom_wire_item items[S_MAX_BATCH + 1];
    for (size_t i = 0; i < S_MAX_BATCH + 1; i++)
        items[i] = (loom_wire_item){.index = i, .data = {(const uint8_t *)"x", 1}};
    tb.u.task_batch = (loom_wire_task_batch){.map = 30, .nitems = S_MAX_BATCH + 1, .items = items};
    before = s_refused();
    s_send(c, &tb);
    s_expect_error(c, LOOM_ETOOBIG, "batch over max_batch");
    s_wait_refused(before + 1, "batch over max_batch");
    s_kinds++;

    //  A file name that climbs out of the worker's directory.
    before = s_refused();
    uint8_t fh[LOOM_HASH_SIZE] = {0};
    loom_wire_file wf = {.name = "../../etc/passwd", .hash = {fh, sizeof fh}, .size = 1};
    it = (loom_wire_item){.index = 0, .data = {(const uint8_t *)"x", 1}, .nfiles = 1, .files = &wf};
    tb.u.task_batch = (loom_wire_task_batch){.map = 30, .nitems = 1, .items = &it};
    s_send(c, &tb);
    s_expect_error(c, LOOM_EINVAL, "bad file name");
    s_wait_refused(before + 1, "bad file name");
    s_kinds++;

    before = s_refused();
    it = (loom_wire_item){.index = UINT64_MAX / 2, .data = {(const uint8_t *)"x", 1}};
    tb.u.task_batch = (loom_wire_task_batch){.map = 30, .nitems = 1, .items = &it};
    s_send(c, &tb);
    s_expect_error(c, LOOM_ETOOBIG, "index far beyond");
    s_wait_refused(before + 1, "index far beyond");
    s_kinds++;

    //  Maps 30 (open) and, below, up to S_MAX_MAPS in all; one more is refused.
    for (uint64_t id = 31; id < 30 + S_MAX_MAPS; id++) {
        mo.u.map_open.map = id;
        s_send(c, &mo);
    }
    before = s_refused();
    mo.u.map_open.map = 99;
    s_send(c, &mo);
    s_expect_error(c, LOOM_ETOOBIG, "too many maps");
    s_wait_refused(before + 1, "too many maps");
    s_kinds++;

    //  Pipeline 1 is open; S_MAX_PIPELINES in all, then one more.
    for (uint64_t id = 2; id <= S_MAX_PIPELINES; id++) {
        po.u.pipeline_open.pipeline = id;
        s_send(c, &po);
    }
    before = s_refused();
    po.u.pipeline_open.pipeline = 100;
    s_send(c, &po);
    s_expect_error(c, LOOM_ETOOBIG, "too many pipelines");
    s_wait_refused(before + 1, "too many pipelines");
    s_kinds++;
    zsock_destroy(&c);
}

//  Ask the broker's blob channel to adopt `name` as a blob of size bytes:
//  it must answer have=false and count the refusal.
static void
s_adopt_refused(zsock_t *b, const char *name, uint64_t size, const char *what)
{
    uint8_t hash[LOOM_HASH_SIZE];
    memset(hash, 0x5a, sizeof hash);
    uint64_t before = s_refused();
    loom_msg m = {.type = LOOM_MSG_BLOB_HAVE};
    m.u.blob_have = (loom_wire_blob_have){{hash, sizeof hash}, size, false, name};
    s_send(b, &m);
    loom_msg *a = s_expect(b, LOOM_MSG_BLOB_HAVE, S_WAIT_MS);
    if (!a)
        fail_msg("%s: no answer", what);
    if (a->u.blob_have.have)
        fail_msg("%s: adopted", what);
    loom_msg_destroy(&a);
    s_wait_refused(before + 1, what);
}

//  27-28. A peer of the store's host asking the broker to adopt a file
//  outside its store, or a symlink in it to one outside: refused, and the
//  file outside is left as it was.
static void
s_attack_adopt(void)
{
    zsock_t *c = s_dealer();
    loom_msg h = {.type = LOOM_MSG_HELLO};
    h.u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "hostile", .pid = 1};
    s_send(c, &h);
    loom_msg *w = s_expect(c, LOOM_MSG_WELCOME, S_WAIT_MS);
    assert_non_null(w);
    assert_non_null(w->u.welcome.blob_store);
    char store[4096], outside[4200], link_path[4200];
    snprintf(store, sizeof store, "%s", w->u.welcome.blob_store);
    loom_msg_destroy(&w);
    zsock_t *b = s_dealer_to(s_blob_ep, s_listed(false), NULL);
    uint64_t stored = s_stats().blobs_stored;

    snprintf(outside, sizeof outside, "%s/../put-1-1.tmp", store);
    int fd = open(outside, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "secret", 6), 6);
    close(fd);
    s_adopt_refused(b, "../put-1-1.tmp", 6, "adopt of a file outside the store");
    s_adopt_refused(b, outside, 6, "adopt of an absolute path");
    s_adopt_refused(b, "/etc/passwd", 6, "adopt of /etc/passwd");
    s_kinds++;

    snprintf(link_path, sizeof link_path, "%s/put-2-2.tmp", store);
    assert_int_equal(symlink(outside, link_path), 0);
    s_adopt_refused(b, "put-2-2.tmp", 6, "adopt of a symlink");
    s_kinds++;

    struct stat sb;
    assert_int_equal(stat(outside, &sb), 0);
    assert_int_equal(sb.st_size, 6);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(s_stats().blobs_stored, stored);
    unlink(link_path);
    unlink(outside);
    zsock_destroy(&b);
    zsock_destroy(&c);
}

static void
test_hostile_peers_while_a_map_runs(void **state)
{
    (void)state;
    //  Static, not on this stack: when a check fails, cmocka leaves this
    //  function while the client's thread still runs, until the teardown
    //  stops it.
    static s_legit l;
    memset(&l, 0, sizeof l);
    l.seen = calloc(S_MAX_ITEMS, 1);
    assert_non_null(l.seen);
    assert_int_equal(pthread_create(&s_thread, NULL, s_legit_run, &l), 0);
    s_running = &l;
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    while (!atomic_load(&l.started) && l.rc == 0 && loom_now_ms() < deadline)
        zmq_poll(NULL, 0, 5);
    assert_true(atomic_load(&l.started));

    s_attack_duplicates(); //  first: needs items queued
    s_attack_frames();
    s_attack_as_worker();
    s_attack_as_client();
    s_attack_adopt();
    atomic_store(&l.stop, true);
    pthread_join(s_thread, NULL);
    s_running = NULL;

    printf("# %d kinds of bad message; legitimate map: %zu items\n", s_kinds,
           atomic_load(&l.submitted));
    assert_true(s_kinds >= 15);
    assert_int_equal(l.rc, 0);
    size_t n = atomic_load(&l.submitted);
    assert_true(n >= 60000);
    size_t missing = 0, twice = 0;
    for (size_t i = 0; i < n; i++) {
        missing += l.seen[i] == 0;
        twice += l.seen[i] > 1;
    }
    for (size_t i = n; i < S_MAX_ITEMS; i++)
        assert_int_equal(l.seen[i], 0);
    if (missing || twice || l.bad_data || l.failed)
        fail_msg("legitimate map: %zu missing, %zu twice, %zu wrong data, %zu failed", missing,
                 twice, l.bad_data, l.failed);
    free(l.seen);
    l.seen = NULL;
    //  The broker and the real worker are still up.
    assert_true(s_stats().workers >= 1);
    assert_int_equal(waitpid(s_worker_pid, NULL, WNOHANG), 0);
}

//  ---------------------------------------------------------------------
//  Limits from the environment, and their defaults

static int
s_setup_env(void **state)
{
    (void)state;
    setenv("LOOM_MAX_PIPELINES", "2", 1);
    setenv("LOOM_MAX_MAPS", "1", 1);
    setenv("LOOM_MAX_BATCH", "8", 1);
    setenv("LOOM_MAX_FRAME", "65536", 1);
    loom_test_ipc(s_ep, sizeof s_ep, "limits");
    loom_broker_opts o = {0}; //  limits: from the environment
    s_broker_curve(&o);
    char *err = NULL;
    s_broker = loom_broker_start_opts(&o, s_ep, NULL, NULL, NULL, &err);
    unsetenv("LOOM_MAX_PIPELINES");
    unsetenv("LOOM_MAX_MAPS");
    unsetenv("LOOM_MAX_BATCH");
    unsetenv("LOOM_MAX_FRAME");
    if (!s_broker)
        s_broker_failed(err);
    return 0;
}

static int
s_teardown_broker(void **state)
{
    (void)state;
    zactor_destroy(&s_broker);
    unlink(s_ep + strlen("ipc://"));
    return 0;
}

//  A client session; returns the Welcome (destroy it).
static zsock_t *
s_client(loom_msg **welcome)
{
    zsock_t *s = s_dealer();
    loom_msg h = {.type = LOOM_MSG_HELLO};
    h.u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "", .pid = 1};
    s_send(s, &h);
    *welcome = s_expect(s, LOOM_MSG_WELCOME, S_WAIT_MS);
    assert_non_null(*welcome);
    return s;
}

static void
s_expect_error_text(zsock_t *s, int code, const char *text)
{
    loom_msg *e = s_expect(s, LOOM_MSG_ERROR, S_WAIT_MS);
    assert_non_null(e);
    assert_int_equal(e->u.error.code, code);
    if (!strstr(e->u.error.message, text))
        fail_msg("Error '%s' does not say '%s'", e->u.error.message, text);
    loom_msg_destroy(&e);
}

static void
test_limits_from_the_environment(void **state)
{
    (void)state;
    loom_msg *w = NULL;
    zsock_t *a = s_client(&w);
    assert_int_equal(w->u.welcome.max_batch, 8);
    assert_int_equal(w->u.welcome.max_frame, 65536);
    loom_msg_destroy(&w);

    loom_msg po = {.type = LOOM_MSG_PIPELINE_OPEN};
    for (uint64_t id = 1; id <= 3; id++) {
        po.u.pipeline_open = (loom_wire_pipeline){.pipeline = id, .name = "p"};
        s_send(a, &po);
    }
    s_expect_error_text(a, LOOM_ETOOBIG, "LOOM_MAX_PIPELINES");
    loom_msg mo = {.type = LOOM_MSG_MAP_OPEN};
    for (uint64_t id = 1; id <= 2; id++) {
        mo.u.map_open = (loom_wire_map_open){
            .map = id, .pipeline = 1, .plugin = "echo", .version = "", .task = "echo"};
        s_send(a, &mo);
    }
    s_expect_error_text(a, LOOM_ETOOBIG, "LOOM_MAX_MAPS");
    loom_wire_item items[9];
    for (size_t i = 0; i < 9; i++)
        items[i] = (loom_wire_item){.index = i, .data = {(const uint8_t *)"x", 1}};
    loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
    tb.u.task_batch = (loom_wire_task_batch){.map = 1, .nitems = 9, .items = items};
    s_send(a, &tb);
    s_expect_error_text(a, LOOM_ETOOBIG, "at most 8 per batch");
    //  8 items are fine: no Error (the next message is our Stats).
    tb.u.task_batch.nitems = 8;
    s_send(a, &tb);
    loom_msg sr = {.type = LOOM_MSG_STATS_REQUEST};
    s_send(a, &sr);
    loom_msg *m = NULL;
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    for (;;) {
        assert_true(loom_now_ms() < deadline);
        zmq_pollitem_t item = {zsock_resolve(a), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, 50);
        if (loom_wire_recv(zsock_resolve(a), NULL, 0, NULL, &m, ZMQ_DONTWAIT) != 0)
            continue;
        assert_int_not_equal(m->type, LOOM_MSG_ERROR);
        bool stats = m->type == LOOM_MSG_STATS;
        if (stats)
            assert_int_equal(m->u.stats.items_queued, 8);
        loom_msg_destroy(&m);
        if (stats)
            break;
    }

    //  The limits are per client: another one is not affected by a's.
    zsock_t *b = s_client(&w);
    loom_msg_destroy(&w);
    po.u.pipeline_open = (loom_wire_pipeline){.pipeline = 1, .name = "p"};
    s_send(b, &po);
    mo.u.map_open.map = 1;
    s_send(b, &mo);
    //  (Before a's session expires: it has been quiet since its Stats.)
    int64_t until = loom_now_ms() + S_WAIT_MS;
    while (s_stats().maps < 2 && loom_now_ms() < until)
        zmq_poll(NULL, 0, 2);
    assert_int_equal(s_stats().maps, 2);
    assert_null(s_expect(b, LOOM_MSG_ERROR, 100));
    zsock_destroy(&b);
    zsock_destroy(&a);
}

static int
s_setup_default(void **state)
{
    (void)state;
    loom_test_ipc(s_ep, sizeof s_ep, "defaults");
    loom_broker_opts o = {0};
    s_broker_curve(&o);
    char *err = NULL;
    s_broker = loom_broker_start_opts(&o, s_ep, NULL, NULL, NULL, &err);
    if (!s_broker)
        s_broker_failed(err);
    return 0;
}

static void
test_limits_have_safe_defaults(void **state)
{
    (void)state;
    loom_msg *w = NULL;
    zsock_t *a = s_client(&w);
    assert_int_equal(w->u.welcome.max_batch, LOOM_SCHED_MAX_BATCH);
    assert_int_equal(w->u.welcome.max_frame, 64 * 1024 * 1024);
    loom_msg_destroy(&w);
    loom_msg po = {.type = LOOM_MSG_PIPELINE_OPEN};
    for (uint64_t id = 1; id <= 1025; id++) {
        po.u.pipeline_open = (loom_wire_pipeline){.pipeline = id, .name = "p"};
        s_send(a, &po);
    }
    s_expect_error_text(a, LOOM_ETOOBIG, "allows 1024 per client");
    zsock_destroy(&a);
}

//  ---------------------------------------------------------------------
//  Unlisted peers under CURVE

static int
s_setup_unlisted(void **state)
{
    (void)state;
    loom_test_ipc(s_ep, sizeof s_ep, "unlisted");
    loom_test_ipc(s_blob_ep, sizeof s_blob_ep, "unlisted-blob");
    loom_broker_opts o = {0};
    s_broker_curve(&o);
    char *err = NULL;
    s_broker = loom_broker_start_opts(&o, s_ep, s_blob_ep, NULL, NULL, &err);
    if (!s_broker)
        s_broker_failed(err);
    return 0;
}

static int
s_teardown_unlisted(void **state)
{
    (void)state;
    zactor_destroy(&s_broker);
    unlink(s_ep + strlen("ipc://"));
    unlink(s_blob_ep + strlen("ipc://"));
    return 0;
}

//  Send every kind of message a peer may send on each channel, valid ones
//  and junk: on t (task) a client Hello, a PipelineOpen, a StatsRequest
//  and random bytes; on b (blob) a BlobHave, a BlobPut and a BlobGet of a
//  made-up hash and random bytes. Without waiting: a refused peer's
//  messages are only queued (and dropped when its handshake fails), so
//  only the first of each socket is sure to be taken. Returns how many
//  libzmq took.
static int
s_send_probes(zsock_t *t, zsock_t *b)
{
    static const uint8_t junk[] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0x04};
    uint8_t hash[LOOM_HASH_SIZE];
    memset(hash, 0x77, sizeof hash);
    loom_msg task[3] = {{.type = LOOM_MSG_HELLO},
                        {.type = LOOM_MSG_PIPELINE_OPEN},
                        {.type = LOOM_MSG_STATS_REQUEST}};
    task[0].u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "hostile", .pid = 1};
    task[1].u.pipeline_open = (loom_wire_pipeline){.pipeline = 1, .name = "p"};
    loom_msg blob[3] = {
        {.type = LOOM_MSG_BLOB_HAVE}, {.type = LOOM_MSG_BLOB_PUT}, {.type = LOOM_MSG_BLOB_GET}};
    blob[0].u.blob_have = (loom_wire_blob_have){{hash, sizeof hash}, 3, false, NULL};
    blob[1].u.blob_put = (loom_wire_blob_put){
        .hash = {hash, sizeof hash}, .offset = 0, .total = 3, .data = {(const uint8_t *)"abc", 3}};
    blob[2].u.blob_get =
        (loom_wire_blob_get){.hash = {hash, sizeof hash}, .offset = 0, .credit = 1 << 20};
    int taken = 0;
    for (int i = 0; i < 3; i++) {
        int rt = loom_wire_send(zsock_resolve(t), NULL, 0, &task[i], ZMQ_DONTWAIT);
        int rb = loom_wire_send(zsock_resolve(b), NULL, 0, &blob[i], ZMQ_DONTWAIT);
        if (i == 0 && (rt != 0 || rb != 0))
            fail_msg("the first message was not queued (%d, %d)", rt, rb);
        taken += (rt == 0) + (rb == 0);
    }
    taken += zmq_send(zsock_resolve(t), junk, sizeof junk, ZMQ_DONTWAIT) == (int)sizeof junk;
    taken += zmq_send(zsock_resolve(b), junk, sizeof junk, ZMQ_DONTWAIT) == (int)sizeof junk;
    return taken;
}

//  Read the monitor's events for timeout_ms: fail if the handshake
//  succeeded. Returns true once the connection was refused (a failed
//  handshake, or the connection closed before one succeeded).
static bool
s_watch_refusal(zsock_t *monitor, int timeout_ms, const char *what)
{
    bool refused = false;
    int64_t deadline = loom_now_ms() + timeout_ms;
    do {
        int64_t left = deadline - loom_now_ms();
        zmq_pollitem_t item = {zsock_resolve(monitor), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, left > 0 ? left : 0) <= 0)
            continue;
        zmsg_t *ev = zmsg_recv(monitor);
        zframe_t *f = ev ? zmsg_first(ev) : NULL;
        uint16_t id = 0;
        if (f && zframe_size(f) >= sizeof id)
            memcpy(&id, zframe_data(f), sizeof id);
        zmsg_destroy(&ev);
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            fail_msg("%s: the CURVE handshake succeeded", what);
        refused = refused || id != 0;
    } while (loom_now_ms() < deadline);
    return refused;
}

//  Wait until both monitors report a refused connection, then watch for
//  quiet_ms more: neither socket may get any message.
static void
s_expect_refused(zsock_t *t, zsock_t *tm, zsock_t *b, zsock_t *bm, int quiet_ms, const char *what)
{
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    bool t_refused = false, b_refused = false;
    while (!(t_refused && b_refused) && loom_now_ms() < deadline) {
        t_refused = t_refused || s_watch_refusal(tm, 10, what);
        b_refused = b_refused || s_watch_refusal(bm, 10, what);
    }
    if (!t_refused || !b_refused)
        fail_msg("%s: no refusal seen on the %s channel", what, t_refused ? "blob" : "task");
    int64_t until = loom_now_ms() + quiet_ms;
    while (loom_now_ms() < until) {
        zmq_pollitem_t items[2] = {{zsock_resolve(t), 0, ZMQ_POLLIN, 0},
                                   {zsock_resolve(b), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 20) > 0)
            fail_msg("%s: got an answer on the %s channel", what,
                     items[0].revents ? "task" : "blob");
        s_watch_refusal(tm, 0, what);
        s_watch_refusal(bm, 0, what);
    }
}

//  Fail if any counter of what the broker received or did differs.
static void
s_expect_same_stats(const loom_wire_stats *a, const loom_wire_stats *b, const char *what)
{
    const struct {
        const char *name;
        uint64_t was, is;
    } f[] = {
        {"clients", a->clients, b->clients},
        {"workers", a->workers, b->workers},
        {"supervisors", a->supervisors, b->supervisors},
        {"pipelines", a->pipelines, b->pipelines},
        {"maps", a->maps, b->maps},
        {"msgs_in", a->msgs_in, b->msgs_in},
        {"msgs_out", a->msgs_out, b->msgs_out},
        {"msgs_rejected", a->msgs_rejected, b->msgs_rejected},
        {"results_dropped", a->results_dropped, b->results_dropped},
        {"items_queued", a->items_queued, b->items_queued},
        {"blob_bytes_in", a->blob_bytes_in, b->blob_bytes_in},
        {"blob_bytes_out", a->blob_bytes_out, b->blob_bytes_out},
        {"blobs_stored", a->blobs_stored, b->blobs_stored},
        {"blob_store_bytes", a->blob_store_bytes, b->blob_store_bytes},
        {"blob_bytes_adopted", a->blob_bytes_adopted, b->blob_bytes_adopted},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].was != f[i].is)
            fail_msg("%s: the broker's %s went from %llu to %llu", what, f[i].name,
                     (unsigned long long)f[i].was, (unsigned long long)f[i].is);
}

//  Under CURVE, a peer with the stranger's key (not on the allow-list) and
//  a plaintext peer send valid and junk messages to both ROUTERs: their
//  handshakes fail, they get nothing back, and the broker's counters show
//  that nothing of theirs arrived (no session, no blob bytes, no decode
//  error; only the unlisted key's two connections counted as refused by
//  the allow-list, and the dropped connections as such). Then a peer with a listed key sends the
//  same and is answered on both channels, which moves those counters. In plaintext there is no
//  allow-list: no peer to refuse, and the plaintext peer is the one served.
static void
test_unlisted_peers_reach_neither_router(void **state)
{
    (void)state;
    const loom_test_curve *k = loom_test_curve_get();
    const struct {
        const char *what, *cert;
    } refused[] = {{"a peer with an unlisted key", k->stranger}, {"a plaintext peer", NULL}};
    size_t nrefused = k->on ? 2 : 0;
    const char *served_what = k->on ? "a peer with a listed key" : "a plaintext peer";
    const char *served_cert = s_listed(false);

    loom_wire_stats before = s_stats();
    for (size_t i = 0; i < nrefused; i++) {
        uint64_t was_refused = before.curve_refused; //  (the handshakes start at connect)
        zsock_t *tm = NULL, *bm = NULL;
        zsock_t *t = s_dealer_to(s_ep, refused[i].cert, &tm);
        zsock_t *b = s_dealer_to(s_blob_ep, refused[i].cert, &bm);
        int taken = s_send_probes(t, b);
        s_expect_refused(t, tm, b, bm, 300, refused[i].what);
        //  An unlisted key gets as far as the allow-list, once per ROUTER.
        if (refused[i].cert) {
            uint64_t n = s_wait_stat(S_STAT(curve_refused), was_refused + 2);
            if (n < was_refused + 2)
                fail_msg("%s: the allow-list refused %llu connections, want 2", refused[i].what,
                         (unsigned long long)(n - was_refused));
        }
        loom_wire_stats after = s_stats();
        s_expect_same_stats(&before, &after, refused[i].what);
        printf("# %s: refused on both ROUTERs (%d messages sent, none arrived; curve_refused "
               "+%llu, connections_dropped +%llu)\n",
               refused[i].what, taken, (unsigned long long)(after.curve_refused - was_refused),
               (unsigned long long)(after.connections_dropped - before.connections_dropped));
        before = after;
        zsock_destroy(&t);
        zsock_destroy(&tm);
        zsock_destroy(&b);
        zsock_destroy(&bm);
    }
    if (!k->on)
        printf("# plaintext run: no allow-list, no peer to refuse\n");

    //  The check can fail: the same messages from a listed (or, in
    //  plaintext, any) peer arrive and are answered on both channels.
    zsock_t *t = s_dealer_to(s_ep, served_cert, NULL);
    zsock_t *b = s_dealer_to(s_blob_ep, served_cert, NULL);
    assert_int_equal(s_send_probes(t, b), 8);
    loom_msg *w = s_expect(t, LOOM_MSG_WELCOME, S_WAIT_MS);
    if (!w)
        fail_msg("%s: no Welcome", served_what);
    loom_msg_destroy(&w);
    loom_msg *a = s_expect(b, LOOM_MSG_BLOB_HAVE, S_WAIT_MS);
    if (!a)
        fail_msg("%s: no answer to BlobHave", served_what);
    assert_false(a->u.blob_have.have);
    loom_msg_destroy(&a);
    loom_msg *st = s_expect(t, LOOM_MSG_STATS, S_WAIT_MS);
    if (!st)
        fail_msg("%s: no answer to StatsRequest", served_what);
    loom_msg_destroy(&st);
    //  The broker counted them: 8 in (the heartbeats s_expect sends while
    //  it waits come on top), the junk and the made-up blob refused.
    int64_t deadline = loom_now_ms() + S_WAIT_MS;
    loom_wire_stats after = s_stats();
    while ((after.msgs_in < before.msgs_in + 8 || after.msgs_rejected < before.msgs_rejected + 2 ||
            after.blob_bytes_in < before.blob_bytes_in + 3) &&
           loom_now_ms() < deadline) {
        zmq_poll(NULL, 0, 5);
        after = s_stats();
    }
    printf("# %s: served; msgs_in %llu -> %llu, msgs_rejected %llu -> %llu, blob_bytes_in %llu -> "
           "%llu\n",
           served_what, (unsigned long long)before.msgs_in, (unsigned long long)after.msgs_in,
           (unsigned long long)before.msgs_rejected, (unsigned long long)after.msgs_rejected,
           (unsigned long long)before.blob_bytes_in, (unsigned long long)after.blob_bytes_in);
    assert_true(after.msgs_in >= before.msgs_in + 8);
    assert_true(after.msgs_rejected >= before.msgs_rejected + 2);
    assert_true(after.blob_bytes_in >= before.blob_bytes_in + 3);
    assert_int_equal(after.clients, before.clients + 1);
    assert_int_equal(after.curve_refused, before.curve_refused);
    zsock_destroy(&t);
    zsock_destroy(&b);
}

int
main(void)
{
    zsys_init();
    zsys_set_logident("test-hostile");
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hostile_peers_while_a_map_runs, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_limits_from_the_environment, s_setup_env,
                                        s_teardown_broker),
        cmocka_unit_test_setup_teardown(test_limits_have_safe_defaults, s_setup_default,
                                        s_teardown_broker),
        cmocka_unit_test_setup_teardown(test_unlisted_peers_reach_neither_router, s_setup_unlisted,
                                        s_teardown_unlisted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
