/*  fuzz_broker: libFuzzer target for the broker's handling of messages.

    Each input is a conversation: records [peer:1][len:2 little-endian]
    [frame:len] sent in order from three DEALER peers to a fresh broker
    actor over inproc (the broker's own thread, its real zloop, sessions and
    scheduler; only the transport is in-process). After the last record
    every peer asks for Stats and must get them: a broker that crashed,
    asserted, hung or stopped answering fails the input. Frames are whatever
    the fuzzer makes of the seeds (tests/fuzz/corpus/broker: Hellos, maps,
    batches, results, credit, cancels, worker exits, errors), so the
    decoder's refusals and the handlers behind it are both reached.

    LOOM_FUZZ_SEEDS=DIR fuzz_broker: write the seed corpus into DIR, exit.  */

#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define S_PEERS 3

static void
s_die(const char *what)
{
    fprintf(stderr, "fuzz_broker: %s\n", what);
    abort();
}

//  ---------------------------------------------------------------------
//  Seeds

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} s_conv;

static void
s_add(s_conv *c, int peer, const loom_msg *m)
{
    void *enc = NULL;
    size_t n = 0;
    if (loom_wire_encode(m, &enc, &n) != 0 || n > 65535)
        s_die("seed does not encode");
    if (c->len + 3 + n > c->cap) {
        c->cap = (c->len + 3 + n) * 2;
        c->buf = realloc(c->buf, c->cap);
    }
    c->buf[c->len++] = (uint8_t)peer;
    c->buf[c->len++] = (uint8_t)(n & 0xff);
    c->buf[c->len++] = (uint8_t)(n >> 8);
    memcpy(c->buf + c->len, enc, n);
    c->len += n;
    free(enc);
}

static void
s_write(const char *dir, const char *name, s_conv *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(c->buf, 1, c->len, f) != c->len)
        s_die("cannot write a seed");
    fclose(f);
    free(c->buf);
    memset(c, 0, sizeof *c);
}

static void
s_hello(s_conv *c, int peer, loom_role role, uint32_t credit)
{
    loom_msg m = {.type = LOOM_MSG_HELLO};
    m.u.hello = (loom_wire_hello){.role = role, .host = "h1", .pid = 100 + (uint32_t)peer,
                                  .credit = credit, .software = "fuzz"};
    s_add(c, peer, &m);
}

//  Client on peer 0 opens pipeline 1 and map 1 (n items), worker on peer 1.
static void
s_map(s_conv *c, bool reduce, uint64_t n)
{
    s_hello(c, 0, LOOM_ROLE_CLIENT, 0);
    s_hello(c, 1, LOOM_ROLE_WORKER, 64);
    loom_msg m = {.type = LOOM_MSG_PIPELINE_OPEN};
    m.u.pipeline_open = (loom_wire_pipeline){.pipeline = 1, .name = "p"};
    s_add(c, 0, &m);
    m = (loom_msg){.type = LOOM_MSG_MAP_OPEN};
    m.u.map_open = (loom_wire_map_open){.map = 1, .pipeline = 1, .plugin = "echo", .version = "",
                                        .task = "echo", .reduce = reduce, .retries = 1};
    s_add(c, 0, &m);
    loom_wire_item items[8];
    for (uint64_t i = 0; i < n && i < 8; i++)
        items[i] = (loom_wire_item){.index = i, .data = {(const uint8_t *)"abcdefgh", 1 + i}};
    m = (loom_msg){.type = LOOM_MSG_TASK_BATCH};
    m.u.task_batch = (loom_wire_task_batch){.map = 1, .nitems = n, .items = items};
    s_add(c, 0, &m);
    m = (loom_msg){.type = LOOM_MSG_MAP_END};
    m.u.map_end = (loom_wire_map_end){.map = 1, .count = n};
    s_add(c, 0, &m);
}

//  The worker's results for broker map `map`, items 0..n-1.
static void
s_results(s_conv *c, uint64_t map, uint64_t n, int32_t status, bool partial)
{
    loom_wire_result r[8];
    for (uint64_t i = 0; i < n && i < 8; i++)
        r[i] = (loom_wire_result){.index = i, .attempt = 1, .status = status,
                                  .data = {(const uint8_t *)"out", 3},
                                  .error = status ? "failed" : NULL};
    loom_msg m = {.type = LOOM_MSG_RESULT_BATCH};
    m.u.result_batch = (loom_wire_result_batch){.map = map, .elapsed_us = 10, .nresults = n,
                                                .results = r, .has_partial = partial,
                                                .partial = {(const uint8_t *)"\1\0\0\0\0\0\0\0", 8}};
    s_add(c, 1, &m);
    m = (loom_msg){.type = LOOM_MSG_CREDIT};
    m.u.credit = (uint32_t)n;
    s_add(c, 1, &m);
}

static void
s_write_seeds(const char *dir)
{
    s_conv c = {0};
    s_map(&c, false, 4);
    s_results(&c, 1, 4, 0, false);
    s_write(dir, "map_ok", &c);

    s_map(&c, false, 3);
    s_results(&c, 1, 3, LOOM_ETASK, false);
    s_write(dir, "map_failed_items", &c);

    s_map(&c, true, 4);
    s_results(&c, 1, 4, 0, true);
    s_write(dir, "map_reduce", &c);

    s_map(&c, false, 8);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = 1;
    s_add(&c, 0, &m);
    m = (loom_msg){.type = LOOM_MSG_PIPELINE_CLOSE};
    m.u.pipeline_close.pipeline = 1;
    s_add(&c, 0, &m);
    s_write(dir, "map_cancel", &c);

    s_map(&c, false, 2);
    m = (loom_msg){.type = LOOM_MSG_ERROR};
    m.u.error = (loom_wire_error){.code = LOOM_ENOENT, .map = 1, .message = "no plugin"};
    s_add(&c, 1, &m);
    s_write(dir, "map_worker_error", &c);

    s_map(&c, false, 2);
    s_hello(&c, 2, LOOM_ROLE_SUPERVISOR, 0);
    m = (loom_msg){.type = LOOM_MSG_WORKER_EXIT};
    m.u.worker_exit = (loom_wire_worker_exit){.pid = 101, .signal = 9};
    s_add(&c, 2, &m);
    s_write(dir, "worker_exit", &c);

    s_map(&c, false, 2);
    s_hello(&c, 1, LOOM_ROLE_WORKER, 8); //  a second Hello on the same connection
    s_results(&c, 1, 2, 0, false);
    s_write(dir, "rehello", &c);

    m = (loom_msg){.type = LOOM_MSG_STATS_REQUEST};
    s_add(&c, 2, &m);
    m = (loom_msg){.type = LOOM_MSG_HEARTBEAT};
    s_add(&c, 0, &m);
    s_write(dir, "no_session", &c);
}

//  ---------------------------------------------------------------------
//  Target

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    //  No expiry and no heartbeat chatter within one input.
    setenv("LOOM_HEARTBEAT_MS", "3600000", 1);
    //  libFuzzer's -timeout works by SIGALRM, which interrupts the blocking
    //  calls of this harness and of CZMQ's actor plumbing (zactor_new,
    //  zactor_destroy) at random. Block it in every thread (they inherit
    //  this mask); the harness has its own watchdog (10 s per answer).
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, NULL);
    zsys_init();
    zsys_set_logstream(NULL);
    zsys_handler_set(NULL);
    const char *seeds = getenv("LOOM_FUZZ_SEEDS");
    if (seeds) {
        s_write_seeds(seeds);
        exit(0);
    }
    return 0;
}

//  Drain everything waiting on s; true once a Stats message came.
static bool
s_drain(zsock_t *s)
{
    bool stats = false;
    loom_msg *m = NULL;
    while (loom_wire_recv(zsock_resolve(s), NULL, 0, NULL, &m, ZMQ_DONTWAIT) != LOOM_EAGAIN) {
        if (m && m->type == LOOM_MSG_STATS)
            stats = true;
        loom_msg_destroy(&m);
    }
    return stats;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned run;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://fuzz-broker-%u", run++);
    char *error = NULL;
    zactor_t *broker = loom_broker_start(ep, NULL, NULL, NULL, &error);
    if (!broker)
        s_die(error ? error : "broker did not start");
    zsock_t *peers[S_PEERS];
    for (int i = 0; i < S_PEERS; i++) {
        peers[i] = zsock_new(ZMQ_DEALER);
        zsock_set_linger(peers[i], 0);
        if (!peers[i] || zsock_connect(peers[i], "%s", ep) != 0)
            s_die("cannot connect a peer");
    }
    while (size >= 3) {
        int peer = data[0] % S_PEERS;
        size_t len = (size_t)data[1] | ((size_t)data[2] << 8);
        data += 3;
        size -= 3;
        if (len > size)
            len = size;
        zmq_send(zsock_resolve(peers[peer]), data, len, ZMQ_DONTWAIT);
        data += len;
        size -= len;
        s_drain(peers[peer]);
    }
    //  Every peer must still get an answer.
    loom_msg req = {.type = LOOM_MSG_STATS_REQUEST};
    for (int i = 0; i < S_PEERS; i++) {
        int rc;
        while ((rc = loom_wire_send(zsock_resolve(peers[i]), NULL, 0, &req, ZMQ_DONTWAIT)) ==
               LOOM_EAGAIN)
            zmq_poll(NULL, 0, 1);
        if (rc != 0)
            s_die("cannot ask for stats");
        int64_t until = zclock_mono() + 10000;
        bool answered = false;
        while (!answered && zclock_mono() < until) {
            zmq_pollitem_t item = {zsock_resolve(peers[i]), 0, ZMQ_POLLIN, 0};
            zmq_poll(&item, 1, 100);
            answered = s_drain(peers[i]);
        }
        if (!answered)
            s_die("the broker stopped answering");
    }
    for (int i = 0; i < S_PEERS; i++)
        zsock_destroy(&peers[i]);
    zactor_destroy(&broker);
    return 0;
}
