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

    Both run side by side and their measurements alternate (raw, loom
    unordered, loom ordered, raw again; latency in 10 alternating blocks),
    so load from elsewhere falls on both alike.

    Output is fixed-format with units (see main), for humans and scripts.  */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include <loom/loom.h>

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
    char front[256]; //  relay ROUTER for the client
    char back[256];  //  relay ROUTER for the workers
    char ctl[64];    //  inproc: tells the relay to stop
    int nworkers;    //  workers the relay waits for before reading clients
} s_raw;

static void
s_check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "bench_throughput: %s: %s\n", what, zmq_strerror(zmq_errno()));
        exit(1);
    }
}

//  Relay: client messages [client][payload] go to the next ready worker as
//  [worker][client][payload]; worker replies [worker][client][payload] go
//  back as [client][payload]. Workers say [worker]["READY"] first.
static void *
s_relay(void *arg)
{
    s_raw *raw = arg;
    void *front = zmq_socket(raw->ctx, ZMQ_ROUTER);
    void *back = zmq_socket(raw->ctx, ZMQ_ROUTER);
    void *ctl = zmq_socket(raw->ctx, ZMQ_PAIR);
    int hwm = 0;
    zmq_setsockopt(front, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(front, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(back, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(back, ZMQ_RCVHWM, &hwm, sizeof hwm);
    s_check(zmq_bind(front, raw->front), "relay bind front");
    s_check(zmq_bind(back, raw->back), "relay bind back");
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

//  With procs, the echo workers are processes, forked before this process
//  has a ZeroMQ context (call it before anything starts a thread), each
//  with a context of its own, as loom's workers are processes.
static void
s_raw_start(s_raw_rig *rig, int nworkers, bool procs)
{
    s_raw *raw = &rig->raw;
    snprintf(rig->dir, sizeof rig->dir, "/tmp/loom-bench-XXXXXX");
    if (!mkdtemp(rig->dir))
        s_die("cannot make a temp dir");
    snprintf(raw->front, sizeof raw->front, "ipc://%s/front", rig->dir);
    snprintf(raw->back, sizeof raw->back, "ipc://%s/back", rig->dir);
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
            raw->ctx = zmq_ctx_new();
            s_raw_worker(raw);
            zmq_ctx_term(raw->ctx);
            _exit(0);
        }
    }
    raw->ctx = zmq_ctx_new();
    rig->ctl = zmq_socket(raw->ctx, ZMQ_PAIR);
    s_check(zmq_bind(rig->ctl, raw->ctl), "bind ctl");
    pthread_create(&rig->relay, NULL, s_relay, raw);
    for (int i = 0; !procs && i < nworkers; i++)
        pthread_create(&rig->workers[i], NULL, s_raw_worker, raw);

    rig->client = zmq_socket(raw->ctx, ZMQ_DEALER);
    int hwm = 0;
    zmq_setsockopt(rig->client, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(rig->client, ZMQ_RCVHWM, &hwm, sizeof hwm);
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

int
main(int argc, char **argv)
{
    uint64_t items = (uint64_t)s_arg(argc, argv, 1, 200000, 1, 100000000);
    int workers = (int)s_arg(argc, argv, 2, 2, 1, 64);
    int samples = (int)s_arg(argc, argv, 3, 2000, 1, 1000000);

    printf("bench_throughput: %" PRIu64 " items of %d bytes, %d workers, %d latency samples\n",
           items, S_ITEM_SIZE, workers, samples);
    fflush(stdout);

    //  Both rigs run side by side and their measurements alternate, so a
    //  burst of load from elsewhere falls on both: throughput raw, loom
    //  unordered, loom ordered, raw again (the baseline is the mean of the
    //  two raw runs); latency in 10 alternating blocks of samples/10.
    //  The relay with worker processes first: it forks before any thread.
    s_raw_rig prig, rig;
    s_raw_start(&prig, workers, true);
    s_raw_start(&rig, workers, false);
    loom_client_opts copts = {.local_workers = workers};
    loom_client *client = loom_client_new(NULL, &copts);
    if (!client)
        s_die("loom: cannot start the embedded cluster");
    //  Warm-up map: worker processes started and the plugin loaded.
    s_loom_throughput(client, 1000 < items ? 1000 : items, false);

    double raw_rate = s_raw_throughput(&rig, items);
    double unordered = s_loom_throughput(client, items, false);
    double ordered = s_loom_throughput(client, items, true);
    raw_rate = (raw_rate + s_raw_throughput(&rig, items)) / 2;

    loom_pipeline *p = loom_pipeline_new(client, "bench-latency");
    loom_map *m = p ? loom_map_new(p, "echo", "echo", NULL) : NULL;
    if (!m)
        s_die("loom: cannot open a map of echo/echo");
    int64_t *raw_us = calloc((size_t)samples, sizeof *raw_us);
    int64_t *loom_us = calloc((size_t)samples, sizeof *loom_us);
    int64_t *proc_us = calloc((size_t)samples, sizeof *proc_us);
    int64_t warm[10];
    s_loom_latency(m, warm, 10); //  first round trips of a map: not measured
    s_raw_latency(&rig, warm, 10);
    s_raw_latency(&prig, warm, 10);
    int blocks = samples < 10 ? 1 : 10;
    for (int b = 0; b < blocks; b++) {
        int from = samples * b / blocks, to = samples * (b + 1) / blocks;
        s_raw_latency(&rig, raw_us + from, to - from);
        s_loom_latency(m, loom_us + from, to - from);
        s_raw_latency(&prig, proc_us + from, to - from);
    }
    s_lat raw_lat = s_latency(raw_us, samples);
    s_lat loom_lat = s_latency(loom_us, samples);
    s_lat proc_lat = s_latency(proc_us, samples);
    free(proc_us);
    free(raw_us);
    free(loom_us);
    loom_map_close(m);
    loom_result r;
    while (loom_map_next(m, &r, 10000) == 1)
        ;
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
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
    printf("latency one item:     raw-zmq with worker processes mean %.0f us p50 %.0f us p99 %.0f us "
           "max %.0f us\n",
           proc_lat.mean, proc_lat.p50, proc_lat.p99, proc_lat.max);
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
    }
    return unordered > 0 && ordered > 0 ? 0 : 1;
}
