/*  worker: the worker host supervisor (`loom worker`).

    Starts N worker processes by fork+exec of the `loom` binary (`loom worker
    --child ...`, see worker_process.h), restarts any that die (with a
    backoff when they die in a loop), and tells the broker at once with
    WorkerExit over its own Supervisor session, which heartbeats and
    reconnects when the broker restarts. SIGINT/SIGTERM, or the end of the
    --parent process, stops the children (SIGTERM, then SIGKILL after a
    grace period) and returns.  */

#ifndef LOOM_WORKER_H
#define LOOM_WORKER_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    const char *endpoint;    //  broker task endpoint (required)
    int procs;               //  worker processes; 0: one per core
    const char *plugin_path; //  ':'-separated; NULL: loom_plugin_default_path()
    const char *cache_dir;   //  shared blob cache; NULL: $XDG_CACHE_HOME/loom/blobs or
                             //  ~/.cache/loom/blobs, else a temp dir removed at exit
    long max_tasks;          //  each process exits after this many items; 0: never
    uint32_t credit;         //  per process; 0: the default
    pid_t parent;            //  stop when this process is gone; 0: none
    uint64_t cache_size;     //  blob cache cap in bytes; 0: $LOOM_CACHE_SIZE, else 8 GiB
    const char *cert_path;   //  CURVE (curve.h): certificate, or NULL; passed on to the children
    const char *server_key;  //  CURVE: the broker's public key, or NULL
    uint64_t max_rss;        //  bytes (whole MiB); 0: none. Each process keeps to it
                             //  (worker_process.h); deaths say how much they held
} loom_worker_opts;

//  Run the supervisor until interrupted or the parent is gone. Returns 0,
//  or a negative LOOM_E* code when it could not start (bad options).
int loom_worker_run(const loom_worker_opts *opts);

#endif
