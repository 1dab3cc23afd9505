/*  worker_process: one loom worker process (`loom worker --child`).

    Two threads. The main thread talks to the broker on its DEALER (Hello,
    Welcome, heartbeats, reconnects with a new socket and a new Hello after
    a silent or restarted broker), runs each TaskBatch's items through the
    executor and sends their results itself: no thread hop between a task
    arriving and its result leaving. While it runs plugin code it lets go of
    the connection, and a watchdog thread takes it over each tick: it reads
    and queues what the broker sends, heartbeats, and enforces item
    timeouts, so a long or hung task never stops the heartbeats.  */

#ifndef LOOM_WORKER_PROCESS_H
#define LOOM_WORKER_PROCESS_H

#include <stdint.h>

//  Its exit statuses (LOOM_WORKER_EXIT_*) are the protocol's: wire.h.

//  Items a worker process accepts in flight when not told otherwise.
#define LOOM_WORKER_DEFAULT_CREDIT 2048

typedef struct {
    const char *endpoint;    //  broker task endpoint (required)
    const char *host;        //  supervisor's host id (required)
    const char *plugin_path; //  ':'-separated; NULL: the default path
    long max_tasks;          //  exit 0 after this many items; 0: never
    uint32_t credit;         //  Hello.credit; 0: LOOM_WORKER_DEFAULT_CREDIT
    const char *cache_dir;   //  the host's blob cache; NULL: shares unavailable
    uint64_t cache_size;     //  its cap in bytes; 0: the default
    const char *cert_path;   //  CURVE (curve.h): this process's certificate, or NULL
    const char *server_key;  //  CURVE: the broker's public key, or NULL
    uint64_t max_rss;        //  bytes; 0: no limit. Over it after a batch: exit 0 (recycled);
                             //  while an item runs: exit LOOM_WORKER_EXIT_MEMORY
} loom_worker_process_opts;

//  Run one worker process until SIGTERM/SIGINT (finishes the batch it is
//  running, sends its results) or --max-tasks. Returns the process exit
//  status: 0 on a clean stop, 1 on a setup failure. An item that runs past
//  its timeout ends the process from the watchdog thread with
//  _exit(LOOM_WORKER_EXIT_TIMEDOUT) after sending its LOOM_ETIMEDOUT result.
int loom_worker_process_run(const loom_worker_process_opts *opts);

#endif
