/*  bench_remote: a remote-style cluster for the benchmarks, the way a
    user runs one across machines, here all on one: a `loom broker` process
    on tcp://127.0.0.1 ports it picks, a `loom worker --procs N` host
    process connected to it, and the bench process as the client. With
    curve, every key is made by `loom keygen` (broker, client, worker), the
    client's and the worker's public certificates are the broker's
    --curve-dir, and the peers get --cert / --server-key; without, the
    same processes in plaintext. Both forms side by side compare like with
    like: same broker, same transport, same workers.

    The processes run from $LOOM_EXE (and find plugins through
    $LOOM_PLUGIN_PATH); each gets SIGTERM if the bench dies
    (PR_SET_PDEATHSIG), and bench_remote_destroy stops them and removes
    the remote's temp dir (keys, logs, store, cache).  */

#ifndef LOOM_BENCH_REMOTE_H
#define LOOM_BENCH_REMOTE_H

#include <stdbool.h>
#include <stdint.h>

#include <loom/loom.h>

typedef struct bench_remote bench_remote;

typedef struct {
    bool curve;            //  CURVE keys for everyone, else plaintext
    int procs;             //  worker processes of the host (1-64)
    const char *cache_dir; //  the host's blob cache (made, removed at destroy);
                           //  NULL: a dir inside the remote's temp dir
    uint64_t cache_size;   //  its cap in bytes; 0: the worker's default
} bench_remote_opts;

//  Start a broker and a worker host, and wait until the broker counts
//  opts->procs workers. Returns NULL, having said why on stderr and
//  stopped what it started, on failure.
bench_remote *bench_remote_new(const bench_remote_opts *opts);

//  Stop the worker host and the broker (SIGTERM, then SIGKILL after 10 s)
//  and remove the temp dirs. Does nothing if *self_p is NULL.
void bench_remote_destroy(bench_remote **self_p);

//  The broker's task endpoint (tcp://127.0.0.1:PORT), borrowed.
const char *bench_remote_endpoint(const bench_remote *self);

//  Set a client's CURVE options (the listed client key and the broker's
//  certificate); nothing in plaintext. The paths stay valid until destroy.
void bench_remote_client_opts(const bench_remote *self, loom_client_opts *o);

//  Connect a client (timeout_ms 10 s). NULL on failure (logged by loom).
loom_client *bench_remote_client(const bench_remote *self);

//  Read counters of the broker with `loom status`: values[i] for names[i].
//  Returns 0, or -1 if the command failed or a counter was missing.
int bench_remote_counters(const bench_remote *self, const char *const *names, uint64_t *values,
                          int n);

//  "CURVE" or "plaintext", for messages.
const char *bench_remote_mode(const bench_remote *self);

#endif
