/*  bench_throughput: loom's cost per item beside raw ZeroMQ, in one run.

        bench_throughput [ITEMS [WORKERS [LATENCY_SAMPLES]]]
        defaults:         200000   2         2000

    loom: the embedded cluster (a broker in this process and WORKERS worker
    processes over ipc://), the echo plugin, automatic batching; ITEMS
    16-byte items unordered, then ordered; then LATENCY_SAMPLES round trips
    of one item at a time.

    raw-zmq: the same items through a hand-written relay with libzmq only:
    client DEALER -> relay ROUTER | ROUTER -> WORKERS echo worker threads
    (DEALER) -> back, over ipc://, 100 items per message and at most 10,000
    items in flight (the loom client's default window); then one 16-byte
    item at a time for the latency. The workers copy every item into their
    reply, as loom's worker copies every output.

    remote (LOOM_BENCH_CURVE=0: not run): a plaintext and a CURVE cluster
    of processes, as on a network but on tcp://127.0.0.1: a `loom broker`,
    a `loom worker --procs WORKERS` host, this process the client; keys by
    `loom keygen`, the client's and worker's certificates in the broker's
    --curve-dir (bench_remote.c). The same items unordered and the same
    round trips through each: CURVE beside plaintext, like with like (the
    embedded cluster cannot use CURVE: it has no keys, and its client
    skips libzmq's I/O thread). Beside them the raw relay over
    tcp://127.0.0.1 (echo threads) without and with CURVE keys: what
    libzmq's encryption alone costs.

    All run side by side and their measurements alternate (raw, loom
    unordered, loom ordered, raw again; then raw tcp, raw CURVE, remote
    plaintext, remote CURVE and back in the reverse order; latency in 10
    blocks, each rig in turn, forward then backward), so load from
    elsewhere falls on all alike.

    Output is fixed-format with units (see main), for humans and scripts.  */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include <loom/loom.h>

#include "bench_remote.h"

#define S_ITEM_SIZE 16
#define S_RAW_BATCH 100
#define S_RAW_INFLIGHT 10000

static int64_t
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
s_die(const char *what)
{
    fprintf(stderr, "bench_throughput: %s\n", what);
    exit(1);
}

//  Item i: 16 bytes, the index then a fixed pattern.
static void
s_item(uint64_t i, unsigned char *buf)
{
    memcpy(buf, &i, sizeof i);
    memset(buf + sizeof i, 0xa5, S_ITEM_SIZE - sizeof i);
}

typedef struct {
    double mean, p50, p99, max; //  microseconds
} s_lat;

static int
s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static s_lat
s_latency(int64_t *us, int n)
{
    s_lat l = {0, 0, 0, 0};
    if (n <= 0)
        return l;
    qsort(us, (size_t)n, sizeof *us, s_cmp_i64);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)us[i];
    l.mean = sum / n;
    l.p50 = (double)us[n / 2];
    l.p99 = (double)us[(int)((n - 1) * 0.99)];
    l.max = (double)us[n - 1];
    return l;
}

//  ---------------------------------------------------------------------------
//  loom

typedef struct {
    uint64_t got;
    uint64_t failed;
} s_count;

static void
s_on_result(const loom_result *r, void *user)
{
    s_count *c = user;
    c->got++;
    if (r->status != 0 || r->len != S_ITEM_SIZE)
        c->failed++;
}

//  Items per second through loom, or a negative number on failure.
static double
s_loom_throughput(loom_client *client, uint64_t items, bool ordered)
{
    loom_pipeline *p = loom_pipeline_new(client, "bench");
    if (!p)
        s_die("loom: cannot open a pipeline");
    s_count count = {0, 0};
    loom_map_opts o = {.ordered = ordered, .on_result = s_on_result, .user = &count};
    loom_map *m = loom_map_new(p, "echo", "echo", &o);
    if (!m)
        s_die("loom: cannot open a map of echo/echo");
    unsigned char item[S_ITEM_SIZE];
    int64_t t0 = s_now_us();
    for (uint64_t i = 0; i < items; i++) {
        s_item(i, item);
        int rc = loom_map_submit(m, item, sizeof item);
        if (rc < 0) {
            fprintf(stderr, "bench_throughput: loom submit: %s\n", loom_strerror(rc));
            exit(1);
        }
    }
    loom_map_close(m);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 60000)) == 1)
        s_on_result(&r, &count);
    int64_t t1 = s_now_us();
    if (rc < 0)
        fprintf(stderr, "bench_throughput: loom next: %s\n", loom_strerror(rc));
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    if (rc < 0 || count.got != items || count.failed) {
        fprintf(stderr,
                "bench_throughput: loom gave %" PRIu64 " results (%" PRIu64 " failed) for %" PRIu64
                " items\n",
                count.got, count.failed, items);
        return -1;
    }
    return (double)items * 1e6 / (double)(t1 - t0);
}

//  n round trips of one item through map m, into us[0..n).
static void
s_loom_latency(loom_map *m, int64_t *us, int n)
{
    unsigned char item[S_ITEM_SIZE];
    loom_result r;
    for (int i = 0; i < n; i++) {
        s_item((uint64_t)i, item);
        int64_t t0 = s_now_us();
        if (loom_map_submit(m, item, sizeof item) < 0 || loom_map_next(m, &r, 10000) != 1 ||
            r.status != 0)
            s_die("loom: a latency round trip failed");
        us[i] = s_now_us() - t0;
    }
}

//  ---------------------------------------------------------------------------
//  raw ZeroMQ relay

typedef struct {
    void *ctx;
    char front[256];              //  relay ROUTER for the client
    char back[256];               //  relay ROUTER for the workers
    char ctl[64];                 //  inproc: tells the relay to stop
    int nworkers;                 //  workers the relay waits for before reading clients
    void *front_sock, *back_sock; //  bound by s_raw_start, then the relay's
    bool curve;                   //  the relay's ROUTERs CURVE servers, the peers clients
    char server_public[41], server_secret[41]; //  Z85: the relay's keys
    char client_public[41], client_secret[41]; //  Z85: every peer's keys
} s_raw;

static void
s_check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "bench_throughput: %s: %s\n", what, zmq_strerror(zmq_errno()));
        exit(1);
    }
}

//  With CURVE: sock (before bind) serves with the relay's keys. No ZAP
//  handler: libzmq lets in any client key, so the handshake is the only
//  cost beside the encryption of every frame.
static void
s_curve_server(void *sock, const s_raw *raw)
{
    int on = 1;
    if (!raw->curve)
        return;
    s_check(zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &on, sizeof on), "curve server");
    s_check(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, raw->server_secret, 41), "curve secret");
}

//  With CURVE: sock (before connect) is a client of the relay.
static void
s_curve_client(void *sock, const s_raw *raw)
{
    if (!raw->curve)
        return;
    s_check(zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, raw->server_public, 41), "curve server key");
    s_check(zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, raw->client_public, 41), "curve public");
    s_check(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, raw->client_secret, 41), "curve secret");
}

//  A relay ROUTER bound to *ep (tcp://127.0.0.1:* becomes the port taken).
static void *
s_relay_bind(s_raw *raw, char *ep, size_t cap)
{
    void *sock = zmq_socket(raw->ctx, ZMQ_ROUTER);
    int hwm = 0;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    s_curve_server(sock, raw);
    s_check(zmq_bind(sock, ep), "relay bind");
    s_check(zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &cap), "relay endpoint");
    return sock;
}

//  Relay: client messages [client][payload] go to the next ready worker as
//  [worker][client][payload]; worker replies [worker][client][payload] go
//  back as [client][payload]. Workers say [worker]["READY"] first.
static void *
s_relay(void *arg)
{
    s_raw *raw = arg;
    void *front = raw->front_sock;
    void *back = raw->back_sock;
    void *ctl = zmq_socket(raw->ctx, ZMQ_PAIR);
    s_check(zmq_connect(ctl, raw->ctl), "relay connect ctl");

    enum { MAXW = 64 };
    zmq_msg_t workers[MAXW];
    int nworkers = 0, next = 0;
    zmq_pollitem_t items[] = {
        {ctl, 0, ZMQ_POLLIN, 0},
        {back, 0, ZMQ_POLLIN, 0},
        {front, 0, ZMQ_POLLIN, 0},
    };
    for (;;) {
        //  Read clients only once every worker has said READY.
        bool ready = nworkers >= raw->nworkers;
        int n = zmq_poll(items, ready ? 3 : 2, -1);
        if (n < 0 && zmq_errno() == EINTR)
            continue;
        s_check(n, "relay poll");
        if (items[0].revents & ZMQ_POLLIN)
            break;
        if (items[1].revents & ZMQ_POLLIN) {
            zmq_msg_t id, a, b;
            zmq_msg_init(&id);
            zmq_msg_init(&a);
            zmq_msg_init(&b);
            zmq_msg_recv(&id, back, 0);
            zmq_msg_recv(&a, back, 0);
            if (zmq_msg_more(&a)) {
                //  [worker][client][payload]: forward to the client.
                zmq_msg_recv(&b, back, 0);
                zmq_msg_send(&a, front, ZMQ_SNDMORE);
                zmq_msg_send(&b, front, 0);
                zmq_msg_close(&id);
            } else {
                //  READY: remember the worker.
                if (nworkers < MAXW) {
                    zmq_msg_init(&workers[nworkers]);
                    zmq_msg_move(&workers[nworkers++], &id);
                }
                zmq_msg_close(&id);
            }
            zmq_msg_close(&a);
            zmq_msg_close(&b);
        }
        if (ready && (items[2].revents & ZMQ_POLLIN)) {
            zmq_msg_t id, payload, wid;
            zmq_msg_init(&id);
            zmq_msg_init(&payload);
            zmq_msg_init(&wid);
            zmq_msg_recv(&id, front, 0);
            zmq_msg_recv(&payload, front, 0);
            zmq_msg_copy(&wid, &workers[next]);
            next = (next + 1) % nworkers;
            zmq_msg_send(&wid, back, ZMQ_SNDMORE);
            zmq_msg_send(&id, back, ZMQ_SNDMORE);
            zmq_msg_send(&payload, back, 0);
        }
    }
    for (int i = 0; i < nworkers; i++)
        zmq_msg_close(&workers[i]);
    int linger = 0;
    zmq_setsockopt(front, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(back, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(front);
    zmq_close(back);
    zmq_close(ctl);
    return NULL;
}

//  Echo worker: copies each 16-byte item of a batch into its reply.
//  Stops on an empty payload.
static void *
s_raw_worker(void *arg)
{
    s_raw *raw = arg;
    void *sock = zmq_socket(raw->ctx, ZMQ_DEALER);
    int hwm = 0;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    s_curve_client(sock, raw);
    s_check(zmq_connect(sock, raw->back), "worker connect");
    s_check(zmq_send(sock, "READY", 5, 0), "worker ready");
    for (;;) {
        zmq_msg_t client, payload, out;
        zmq_msg_init(&client);
        zmq_msg_init(&payload);
        if (zmq_msg_recv(&client, sock, 0) < 0 || zmq_msg_recv(&payload, sock, 0) < 0)
            break;
        size_t len = zmq_msg_size(&payload);
        if (len == 0) {
            zmq_msg_close(&client);
            zmq_msg_close(&payload);
            break;
        }
        zmq_msg_init_size(&out, len);
        const unsigned char *in = zmq_msg_data(&payload);
        unsigned char *o = zmq_msg_data(&out);
        for (size_t off = 0; off + S_ITEM_SIZE <= len; off += S_ITEM_SIZE)
            memcpy(o + off, in + off, S_ITEM_SIZE);
        zmq_msg_send(&client, sock, ZMQ_SNDMORE);
        zmq_msg_send(&out, sock, 0);
        zmq_msg_close(&payload);
    }
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    return NULL;
}

//  Receive one reply; returns its item count.
static uint64_t
s_raw_recv(void *client)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    s_check(zmq_msg_recv(&msg, client, 0), "client recv");
    uint64_t n = zmq_msg_size(&msg) / S_ITEM_SIZE;
    zmq_msg_close(&msg);
    return n;
}

//  The relay, its workers and a client, running until s_raw_stop.
typedef struct {
    s_raw raw;
    char dir[32];
    void *ctl;
    void *client;
    pthread_t relay, workers[64];
    pid_t pids[64]; //  worker processes, when the rig has them
    int nworkers;
    bool procs;
} s_raw_rig;

//  The relay's transport: ipc:// in a temp dir, or tcp://127.0.0.1 in
//  plaintext or under CURVE (keys made here, the relay's and one pair
//  for its client and workers).
typedef enum { S_IPC, S_TCP, S_TCP_CURVE } s_transport;

//  With procs (ipc only), the echo workers are processes, forked before
//  this process has a ZeroMQ context (call it before anything starts a
//  thread), each with a context of its own, as loom's workers are
//  processes.
static void
s_raw_start(s_raw_rig *rig, int nworkers, bool procs, s_transport tr)
{
    s_raw *raw = &rig->raw;
    snprintf(rig->dir, sizeof rig->dir, "/tmp/loom-bench-XXXXXX");
    if (!mkdtemp(rig->dir))
        s_die("cannot make a temp dir");
    if (tr == S_IPC) {
        snprintf(raw->front, sizeof raw->front, "ipc://%s/front", rig->dir);
        snprintf(raw->back, sizeof raw->back, "ipc://%s/back", rig->dir);
    } else {
        snprintf(raw->front, sizeof raw->front, "tcp://127.0.0.1:*");
        snprintf(raw->back, sizeof raw->back, "tcp://127.0.0.1:*");
    }
    raw->curve = tr == S_TCP_CURVE;
    if (raw->curve && (zmq_curve_keypair(raw->server_public, raw->server_secret) != 0 ||
                       zmq_curve_keypair(raw->client_public, raw->client_secret) != 0))
        s_die("this libzmq has no CURVE");
    if (procs && tr != S_IPC)
        s_die("a relay with worker processes is ipc:// only");
    snprintf(raw->ctl, sizeof raw->ctl, "inproc://relay-ctl-%s", procs ? "p" : "t");
    if (nworkers > 64)
        nworkers = 64;
    rig->nworkers = nworkers;
    rig->procs = procs;
    raw->nworkers = nworkers;
    for (int i = 0; procs && i < nworkers; i++) {
        fflush(stdout);
        rig->pids[i] = fork();
        if (rig->pids[i] < 0)
            s_die("cannot fork a raw worker");
        if (rig->pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); //  not left behind if the bench dies
            raw->ctx = zmq_ctx_new();
            s_raw_worker(raw);
            zmq_ctx_term(raw->ctx);
            _exit(0);
        }
    }
    raw->ctx = zmq_ctx_new();
    rig->ctl = zmq_socket(raw->ctx, ZMQ_PAIR);
    s_check(zmq_bind(rig->ctl, raw->ctl), "bind ctl");
    //  Bound here, so the workers and the client know the ports; the relay
    //  thread takes the sockets over (pthread_create is the barrier).
    raw->front_sock = s_relay_bind(raw, raw->front, sizeof raw->front);
    raw->back_sock = s_relay_bind(raw, raw->back, sizeof raw->back);
    pthread_create(&rig->relay, NULL, s_relay, raw);
    for (int i = 0; !procs && i < nworkers; i++)
        pthread_create(&rig->workers[i], NULL, s_raw_worker, raw);

    rig->client = zmq_socket(raw->ctx, ZMQ_DEALER);
    int hwm = 0;
    zmq_setsockopt(rig->client, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(rig->client, ZMQ_RCVHWM, &hwm, sizeof hwm);
    s_curve_client(rig->client, raw);
    s_check(zmq_connect(rig->client, raw->front), "client connect");

    //  Warm up: one round trip per worker, so every worker is connected.
    unsigned char item[S_ITEM_SIZE];
    for (int i = 0; i < nworkers * 2; i++) {
        s_item(0, item);
        s_check(zmq_send(rig->client, item, S_ITEM_SIZE, 0), "client send");
        s_raw_recv(rig->client);
    }
}

//  Items per second: batches of 100, at most 10,000 items in flight.
static double
s_raw_throughput(s_raw_rig *rig, uint64_t items)
{
    static unsigned char batch[S_RAW_BATCH * S_ITEM_SIZE];
    int64_t t0 = s_now_us();
    uint64_t sent = 0, got = 0;
    while (got < items) {
        while (sent < items && sent - got < S_RAW_INFLIGHT) {
            uint64_t k = items - sent < S_RAW_BATCH ? items - sent : S_RAW_BATCH;
            for (uint64_t j = 0; j < k; j++)
                s_item(sent + j, batch + j * S_ITEM_SIZE);
            s_check(zmq_send(rig->client, batch, k * S_ITEM_SIZE, 0), "client send");
            sent += k;
        }
        got += s_raw_recv(rig->client);
    }
    return (double)items * 1e6 / (double)(s_now_us() - t0);
}

//  n round trips of one item, into us[0..n).
static void
s_raw_latency(s_raw_rig *rig, int64_t *us, int n)
{
    unsigned char item[S_ITEM_SIZE];
    for (int i = 0; i < n; i++) {
        s_item((uint64_t)i, item);
        int64_t s0 = s_now_us();
        s_check(zmq_send(rig->client, item, S_ITEM_SIZE, 0), "client send");
        s_raw_recv(rig->client);
        us[i] = s_now_us() - s0;
    }
}

static void
s_raw_stop(s_raw_rig *rig)
{
    //  An empty payload to each worker (round robin reaches them all), then
    //  the relay.
    for (int i = 0; i < rig->nworkers; i++)
        s_check(zmq_send(rig->client, "", 0, 0), "client send stop");
    for (int i = 0; i < rig->nworkers; i++) {
        if (rig->procs)
            waitpid(rig->pids[i], NULL, 0);
        else
            pthread_join(rig->workers[i], NULL);
    }
    s_check(zmq_send(rig->ctl, "", 0, 0), "stop relay");
    pthread_join(rig->relay, NULL);
    int linger = 0;
    zmq_setsockopt(rig->client, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(rig->client);
    zmq_close(rig->ctl);
    zmq_ctx_term(rig->raw.ctx);
    char path[300];
    snprintf(path, sizeof path, "%s/front", rig->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/back", rig->dir);
    unlink(path);
    rmdir(rig->dir);
}

//  ---------------------------------------------------------------------------

static long
s_arg(int argc, char **argv, int i, long dflt, long min, long max)
{
    if (argc <= i)
        return dflt;
    char *end;
    long v = strtol(argv[i], &end, 10);
    if (*end || end == argv[i] || v < min || v > max) {
        fprintf(stderr, "usage: bench_throughput [ITEMS [WORKERS [LATENCY_SAMPLES]]]\n");
        exit(2);
    }
    return v;
}

//  One latency rig: its samples and how to take a block of them.
typedef struct {
    s_raw_rig *raw; //  a raw relay, or
    loom_map *map;  //  a loom map
    int64_t *us;    //  samples
} s_lat_rig;

static void
s_lat_block(s_lat_rig *r, int from, int to)
{
    if (r->raw)
        s_raw_latency(r->raw, r->us + from, to - from);
    else
        s_loom_latency(r->map, r->us + from, to - from);
}

//  A map for latency round trips on client (its pipeline in *p).
static loom_map *
s_latency_map(loom_client *client, loom_pipeline **p)
{
    *p = loom_pipeline_new(client, "bench-latency");
    loom_map *m = *p ? loom_map_new(*p, "echo", "echo", NULL) : NULL;
    if (!m)
        s_die("loom: cannot open a map of echo/echo");
    return m;
}

static void
s_latency_map_end(loom_map **m, loom_pipeline **p)
{
    loom_map_close(*m);
    loom_result r;
    while (loom_map_next(*m, &r, 10000) == 1)
        ;
    loom_map_destroy(m);
    loom_pipeline_destroy(p);
}

int
main(int argc, char **argv)
{
    uint64_t items = (uint64_t)s_arg(argc, argv, 1, 200000, 1, 100000000);
    int workers = (int)s_arg(argc, argv, 2, 2, 1, 64);
    int samples = (int)s_arg(argc, argv, 3, 2000, 1, 1000000);
    const char *env = getenv("LOOM_BENCH_CURVE");
    bool remote = !env || strcmp(env, "0") != 0;

    printf("bench_throughput: %" PRIu64 " items of %d bytes, %d workers, %d latency samples%s\n",
           items, S_ITEM_SIZE, workers, samples, remote ? ", remote plaintext and CURVE" : "");
    fflush(stdout);

    //  Every rig runs side by side and their measurements alternate, so a
    //  burst of load from elsewhere falls on all: throughput raw, loom
    //  unordered, loom ordered, raw again (the baseline is the mean of the
    //  two raw runs), then the tcp relays and the remote clusters in the
    //  same mirrored way; latency in 10 blocks of samples/10, each rig in
    //  turn. The relay with worker processes first: it forks before any
    //  thread.
    s_raw_rig prig, rig, trig, crig;
    s_raw_start(&prig, workers, true, S_IPC);
    s_raw_start(&rig, workers, false, S_IPC);
    loom_client_opts copts = {.local_workers = workers};
    loom_client *client = loom_client_new(NULL, &copts);
    if (!client)
        s_die("loom: cannot start the embedded cluster");
    //  Warm-up map: worker processes started and the plugin loaded.
    s_loom_throughput(client, 1000 < items ? 1000 : items, false);

    //  The remote clusters (a loom broker and a loom worker host, this
    //  process their client, over tcp://127.0.0.1) in plaintext and under
    //  CURVE, and the raw relay over tcp without and with CURVE keys.
    bench_remote *rplain = NULL, *rcurve = NULL;
    loom_client *cplain = NULL, *ccurve = NULL;
    if (remote) {
        s_raw_start(&trig, workers, false, S_TCP);
        s_raw_start(&crig, workers, false, S_TCP_CURVE);
        bench_remote_opts ro = {.curve = false, .procs = workers};
        rplain = bench_remote_new(&ro);
        ro.curve = true;
        rcurve = rplain ? bench_remote_new(&ro) : NULL;
        cplain = rcurve ? bench_remote_client(rplain) : NULL;
        ccurve = cplain ? bench_remote_client(rcurve) : NULL;
        if (!ccurve)
            s_die("loom: cannot start or reach the remote clusters");
        s_loom_throughput(cplain, 1000 < items ? 1000 : items, false);
        s_loom_throughput(ccurve, 1000 < items ? 1000 : items, false);
    }

    double raw_rate = s_raw_throughput(&rig, items);
    double unordered = s_loom_throughput(client, items, false);
    double ordered = s_loom_throughput(client, items, true);
    raw_rate = (raw_rate + s_raw_throughput(&rig, items)) / 2;
    double tcp_rate = 0, tcpc_rate = 0, rem_plain = 0, rem_curve = 0;
    if (remote) {
        tcp_rate = s_raw_throughput(&trig, items);
        tcpc_rate = s_raw_throughput(&crig, items);
        rem_plain = s_loom_throughput(cplain, items, false);
        rem_curve = s_loom_throughput(ccurve, items, false);
        double c2 = s_loom_throughput(ccurve, items, false);
        double p2 = s_loom_throughput(cplain, items, false);
        tcpc_rate = (tcpc_rate + s_raw_throughput(&crig, items)) / 2;
        tcp_rate = (tcp_rate + s_raw_throughput(&trig, items)) / 2;
        rem_plain = rem_plain > 0 && p2 > 0 ? (rem_plain + p2) / 2 : -1;
        rem_curve = rem_curve > 0 && c2 > 0 ? (rem_curve + c2) / 2 : -1;
    }

    //  Latency: rig order raw threads, loom, raw procs, then the tcp ones.
    loom_pipeline *p = NULL, *pp = NULL, *pc = NULL;
    s_lat_rig lr[7] = {{.raw = &rig},  {.map = s_latency_map(client, &p)},
                       {.raw = &prig}, {.raw = &trig},
                       {.raw = &crig}, {.map = NULL},
                       {.map = NULL}};
    int nlr = 3;
    if (remote) {
        lr[5].map = s_latency_map(cplain, &pp);
        lr[6].map = s_latency_map(ccurve, &pc);
        nlr = 7;
    }
    int64_t warm[10];
    for (int i = 0; i < nlr; i++) {
        lr[i].us = calloc((size_t)samples, sizeof *lr[i].us);
        s_lat_rig w = lr[i];
        w.us = warm;
        s_lat_block(&w, 0, 10); //  first round trips: not measured
    }
    int blocks = samples < 10 ? 1 : 10;
    for (int b = 0; b < blocks; b++) {
        int from = samples * b / blocks, to = samples * (b + 1) / blocks;
        for (int i = 0; i < nlr; i++)
            s_lat_block(&lr[(b % 2 ? nlr - 1 - i : i)], from, to);
    }
    s_lat lat[7];
    for (int i = 0; i < nlr; i++) {
        lat[i] = s_latency(lr[i].us, samples);
        free(lr[i].us);
    }
    s_lat raw_lat = lat[0], loom_lat = lat[1], proc_lat = lat[2];
    s_latency_map_end(&lr[1].map, &p);
    if (remote) {
        s_latency_map_end(&lr[5].map, &pp);
        s_latency_map_end(&lr[6].map, &pc);
        loom_client_destroy(&cplain);
        loom_client_destroy(&ccurve);
        bench_remote_destroy(&rplain);
        bench_remote_destroy(&rcurve);
        s_raw_stop(&trig);
        s_raw_stop(&crig);
    }
    loom_client_destroy(&client);
    s_raw_stop(&rig);
    s_raw_stop(&prig);

    printf("throughput unordered: loom %.0f items/s  raw-zmq %.0f items/s  ratio %.2f\n", unordered,
           raw_rate, unordered / raw_rate);
    printf("throughput ordered:   loom %.0f items/s  raw-zmq %.0f items/s  ratio %.2f\n", ordered,
           raw_rate, ordered / raw_rate);
    printf("latency one item:     loom mean %.0f us p50 %.0f us p99 %.0f us max %.0f us  "
           "raw-zmq mean %.0f us p50 %.0f us p99 %.0f us max %.0f us\n",
           loom_lat.mean, loom_lat.p50, loom_lat.p99, loom_lat.max, raw_lat.mean, raw_lat.p50,
           raw_lat.p99, raw_lat.max);
    printf(
        "latency one item:     raw-zmq with worker processes mean %.0f us p50 %.0f us p99 %.0f us "
        "max %.0f us\n",
        proc_lat.mean, proc_lat.p50, proc_lat.p99, proc_lat.max);
    if (remote) {
        s_lat rp = lat[5], rc = lat[6], tp = lat[3], tc = lat[4];
        printf(
            "remote, tcp://127.0.0.1: a loom broker process, a loom worker host of %d processes, "
            "this process the client; plaintext, then CURVE (loom keygen keys)\n",
            workers);
        printf("throughput unordered: plaintext %.0f items/s  CURVE %.0f items/s  ratio %.2f\n",
               rem_plain, rem_curve, rem_curve / rem_plain);
        printf(
            "latency one item:     plaintext p50 %.0f us p99 %.0f us  CURVE p50 %.0f us p99 %.0f "
            "us  ratio p50 %.2f p99 %.2f\n",
            rp.p50, rp.p99, rc.p50, rc.p99, rc.p50 / rp.p50, rc.p99 / rp.p99);
        printf("raw-zmq relay over tcp://127.0.0.1 (echo threads), without and with CURVE keys\n");
        printf("throughput:           plaintext %.0f items/s  CURVE %.0f items/s  ratio %.2f\n",
               tcp_rate, tcpc_rate, tcpc_rate / tcp_rate);
        printf(
            "latency one item:     plaintext p50 %.0f us p99 %.0f us  CURVE p50 %.0f us p99 %.0f "
            "us  ratio p50 %.2f p99 %.2f\n",
            tp.p50, tp.p99, tc.p50, tc.p99, tc.p50 / tp.p50, tc.p99 / tp.p99);
    }
    //  The same figures as "name value unit" lines, for tests/bench/suite.sh.
    if (getenv("LOOM_BENCH_MACHINE")) {
        printf("tp_unordered %.0f items/s\n", unordered);
        printf("tp_ordered %.0f items/s\n", ordered);
        printf("tp_raw %.0f items/s\n", raw_rate);
        printf("lat_p50 %.0f us\n", loom_lat.p50);
        printf("lat_p99 %.0f us\n", loom_lat.p99);
        printf("lat_raw_p50 %.0f us\n", raw_lat.p50);
        printf("lat_raw_p99 %.0f us\n", raw_lat.p99);
        printf("lat_rawproc_p50 %.0f us\n", proc_lat.p50);
        printf("lat_rawproc_p99 %.0f us\n", proc_lat.p99);
        if (remote) {
            printf("tp_remote_plain %.0f items/s\n", rem_plain);
            printf("tp_remote_curve %.0f items/s\n", rem_curve);
            printf("tp_rawtcp_plain %.0f items/s\n", tcp_rate);
            printf("tp_rawtcp_curve %.0f items/s\n", tcpc_rate);
            printf("lat_remote_plain_p50 %.0f us\n", lat[5].p50);
            printf("lat_remote_plain_p99 %.0f us\n", lat[5].p99);
            printf("lat_remote_curve_p50 %.0f us\n", lat[6].p50);
            printf("lat_remote_curve_p99 %.0f us\n", lat[6].p99);
            printf("lat_rawtcp_plain_p50 %.0f us\n", lat[3].p50);
            printf("lat_rawtcp_plain_p99 %.0f us\n", lat[3].p99);
            printf("lat_rawtcp_curve_p50 %.0f us\n", lat[4].p50);
            printf("lat_rawtcp_curve_p99 %.0f us\n", lat[4].p99);
        }
    }
    bool ok = unordered > 0 && ordered > 0 && (!remote || (rem_plain > 0 && rem_curve > 0));
    return ok ? 0 : 1;
}
