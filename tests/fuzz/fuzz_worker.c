/*  fuzz_worker: libFuzzer target for a worker process's handling of what
    the broker sends.

    A real worker (loom_worker_process_run: its watchdog, its executor
    and the shipped `echo` plugin) runs on a thread of this process,
    connected over ipc:// to a ROUTER we own and play the broker on. Each
    input is a list of frames, records [len:2 little-endian][frame:len],
    sent to the worker in order; then the worker must still run a one-item
    map of echo/echo and answer it within 10 s, or the input fails (as it
    does if the worker crashes, asserts or returns).

    One filter: a decoded MapOpen with an item timeout is sent with the
    timeout cleared, because a worker that runs past an item's timeout
    ends its process on purpose (_exit 124) and that would end the fuzzer.

    LOOM_FUZZ_SEEDS=DIR fuzz_worker: write the seed corpus into DIR, exit.  */

#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire.h"
#include "worker_process.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define S_EPOCH 77

static zsock_t *s_router;
static char s_ep[128];
static uint8_t s_rid[256];
static size_t s_rid_len;
static atomic_bool s_worker_ended;
static uint64_t s_next_map = 1000000;
static bool s_rehello; //  the worker said Hello again (it reconnected)

static void
s_die(const char *what)
{
    fprintf(stderr, "fuzz_worker: %s\n", what);
    abort();
}

static void *
s_worker_thread(void *arg)
{
    (void)arg;
    const char *path = getenv("LOOM_FUZZ_PLUGIN_PATH");
    loom_worker_process_opts o = {
        .endpoint = s_ep, .host = "fuzz", .plugin_path = path ? path : FUZZ_PLUGIN_DIR};
    loom_worker_process_run(&o);
    atomic_store(&s_worker_ended, true);
    return NULL;
}

static void
s_send(const loom_msg *m)
{
    loom_wire_send(zsock_resolve(s_router), s_rid, s_rid_len, m, ZMQ_DONTWAIT);
}

//  Receive what the worker sent within timeout_ms: answer Hellos (the
//  worker reconnects after a Welcome with a new epoch); true once a result
//  of `map` index 0 came.
static bool
s_pump(int timeout_ms, uint64_t map)
{
    int64_t until = zclock_mono() + timeout_ms;
    bool got = false;
    do {
        zmq_pollitem_t item = {zsock_resolve(s_router), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, timeout_ms ? 10 : 0);
        for (;;) {
            uint8_t rid[256];
            size_t rid_len = 0;
            loom_msg *m = NULL;
            int rc = loom_wire_recv(zsock_resolve(s_router), rid, sizeof rid, &rid_len, &m,
                                    ZMQ_DONTWAIT);
            if (rc == LOOM_EAGAIN || rc == LOOM_EIO)
                break;
            if (rc != 0)
                s_die("the worker sent something that does not decode");
            if (m->type == LOOM_MSG_HELLO) {
                memcpy(s_rid, rid, rid_len);
                s_rid_len = rid_len;
                s_rehello = true;
                loom_msg w = {.type = LOOM_MSG_WELCOME};
                w.u.welcome = (loom_wire_welcome){.epoch = S_EPOCH, .session = 1,
                                                  .heartbeat_ms = 3600000, .liveness = 3,
                                                  .max_batch = 256, .max_frame = 1 << 26};
                s_send(&w);
            } else if (m->type == LOOM_MSG_RESULT_BATCH && m->u.result_batch.map == map) {
                for (size_t i = 0; i < m->u.result_batch.nresults; i++)
                    if (m->u.result_batch.results[i].index == 0)
                        got = true;
            }
            loom_msg_destroy(&m);
        }
        if (atomic_load(&s_worker_ended))
            s_die("the worker returned");
    } while (!got && zclock_mono() < until);
    return got;
}

//  At exit, before CZMQ closes every socket under the worker's feet: stop
//  the worker (its SIGTERM handler) and wait for it to return.
static void
s_stop_worker(void)
{
    raise(SIGTERM);
    int64_t until = zclock_mono() + 10000;
    while (!atomic_load(&s_worker_ended) && zclock_mono() < until)
        zclock_sleep(10);
    //  Ours to close, before zsys's shutdown finds it open ("dangling").
    zsock_destroy(&s_router);
}

//  ---------------------------------------------------------------------
//  Seeds

static void
s_rec(FILE *f, const loom_msg *m)
{
    void *enc = NULL;
    size_t n = 0;
    if (loom_wire_encode(m, &enc, &n) != 0 || n > 65535)
        s_die("seed does not encode");
    uint8_t h[2] = {(uint8_t)(n & 0xff), (uint8_t)(n >> 8)};
    fwrite(h, 1, 2, f);
    fwrite(enc, 1, n, f);
    free(enc);
}

static FILE *
s_seed(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        s_die("cannot write a seed");
    return f;
}

static void
s_open(FILE *f, uint64_t map, const char *plugin, const char *task, bool reduce)
{
    loom_msg m = {.type = LOOM_MSG_MAP_OPEN};
    m.u.map_open = (loom_wire_map_open){
        .map = map, .pipeline = 1, .plugin = plugin, .version = "", .task = task, .reduce = reduce};
    s_rec(f, &m);
}

static void
s_batch(FILE *f, uint64_t map, size_t n, bool combine)
{
    loom_wire_item items[8];
    for (size_t i = 0; i < n && i < 8; i++)
        items[i] = (loom_wire_item){.index = i, .attempt = 1,
                                    .data = {(const uint8_t *)"abcdefgh", 1 + i}};
    loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
    m.u.task_batch = (loom_wire_task_batch){.map = map, .combine = combine, .nitems = n,
                                            .items = items};
    s_rec(f, &m);
}

static void
s_write_seeds(const char *dir)
{
    FILE *f = s_seed(dir, "echo");
    s_open(f, 1, "echo", "echo", false);
    s_batch(f, 1, 4, false);
    fclose(f);

    f = s_seed(dir, "fail");
    s_open(f, 2, "echo", "fail", false);
    s_batch(f, 2, 3, false);
    fclose(f);

    f = s_seed(dir, "unknown");
    s_open(f, 3, "nosuch", "echo", false);
    s_batch(f, 3, 2, false);
    s_batch(f, 4, 2, false);
    fclose(f);

    f = s_seed(dir, "cancel_combine");
    s_open(f, 5, "echo", "echo", true);
    s_batch(f, 5, 8, false);
    s_batch(f, 5, 2, true);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = 5;
    s_rec(f, &m);
    s_batch(f, 5, 2, false);
    fclose(f);

    f = s_seed(dir, "welcome_heartbeat");
    m = (loom_msg){.type = LOOM_MSG_HEARTBEAT};
    s_rec(f, &m);
    m = (loom_msg){.type = LOOM_MSG_WELCOME};
    m.u.welcome = (loom_wire_welcome){.epoch = S_EPOCH, .heartbeat_ms = 100, .liveness = 3};
    s_rec(f, &m);
    m = (loom_msg){.type = LOOM_MSG_ERROR};
    m.u.error = (loom_wire_error){.code = -3, .map = 1, .message = "x"};
    s_rec(f, &m);
    fclose(f);
}

//  ---------------------------------------------------------------------
//  Target

//  Remove the ROUTER's ipc socket file at exit.
static void
s_unlink_endpoint(void)
{
    unlink(s_ep + strlen("ipc://"));
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *seeds = getenv("LOOM_FUZZ_SEEDS");
    if (seeds) {
        s_write_seeds(seeds);
        exit(0);
    }
    //  libFuzzer's -timeout SIGALRM would interrupt blocking calls here and
    //  in CZMQ's actor plumbing: block it in every thread (they inherit the
    //  mask); the harness has its own watchdog (10 s per answer).
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, NULL);
    zsys_init();
    zsys_handler_set(NULL);
    snprintf(s_ep, sizeof s_ep, "ipc:///tmp/loom-fuzz-worker-%d", (int)getpid());
    atexit(s_unlink_endpoint); //  libFuzzer ends a timed run with exit()
    s_router = zsock_new(ZMQ_ROUTER);
    zsock_set_linger(s_router, 0);
    zsock_set_router_mandatory(s_router, 1);
    if (!s_router || zsock_bind(s_router, "%s", s_ep) != 0)
        s_die("cannot bind");
    pthread_t th;
    if (pthread_create(&th, NULL, s_worker_thread, NULL) != 0)
        s_die("cannot start the worker");
    pthread_detach(th);
    int64_t until = zclock_mono() + 10000;
    while (!s_rid_len && zclock_mono() < until)
        s_pump(100, 0);
    if (!s_rid_len)
        s_die("the worker did not say Hello");
    atexit(s_stop_worker); //  runs before zsys_init's own
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    while (size >= 2) {
        size_t len = (size_t)data[0] | ((size_t)data[1] << 8);
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        loom_msg *m = NULL;
        if (loom_wire_decode(data, len, &m) == 0 && m->type == LOOM_MSG_MAP_OPEN &&
            m->u.map_open.timeout_ms) {
            loom_msg copy = *m;
            copy.u.map_open.timeout_ms = 0;
            s_send(&copy);
        } else {
            zmq_send(zsock_resolve(s_router), s_rid, s_rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(zsock_resolve(s_router), data, len, ZMQ_DONTWAIT);
        }
        loom_msg_destroy(&m);
        data += len;
        size -= len;
        s_pump(0, 0);
    }
    //  Still serving: one item of echo/echo in a map of its own.
    uint64_t map = s_next_map++;
    loom_msg open = {.type = LOOM_MSG_MAP_OPEN};
    open.u.map_open = (loom_wire_map_open){
        .map = map, .pipeline = 1, .plugin = "echo", .version = "", .task = "echo"};
    loom_wire_item item = {.index = 0, .attempt = 1, .data = {(const uint8_t *)"ping", 4}};
    loom_msg tb = {.type = LOOM_MSG_TASK_BATCH};
    tb.u.task_batch = (loom_wire_task_batch){.map = map, .nitems = 1, .items = &item};
    s_rehello = false;
    s_send(&open);
    s_send(&tb);
    int64_t until = zclock_mono() + 10000;
    bool served = false;
    while (!served && zclock_mono() < until) {
        served = s_pump(20, map);
        if (!served && s_rehello) {
            //  A Welcome with a new epoch made the worker reconnect: what
            //  we sent before went to the old connection. Again.
            s_rehello = false;
            s_send(&open);
            s_send(&tb);
        }
    }
    if (!served)
        s_die("the worker stopped serving");
    loom_msg cancel = {.type = LOOM_MSG_CANCEL};
    cancel.u.cancel_map = map; //  so the worker forgets it
    s_send(&cancel);
    return 0;
}
