/*  cluster: the embedded local cluster of a client with no endpoint.

    A private 0700 directory under $TMPDIR (or /tmp) holds the ipc://
    sockets of a broker running in this process (an actor) and of one
    supervisor process (`loom worker --connect ... --parent PID`) started
    with posix_spawn, which runs the worker processes. Destroying the
    cluster stops the supervisor (SIGTERM, SIGKILL after 5 s), the broker,
    and removes the directory: nothing is left behind.  */

#ifndef LOOM_CLUSTER_H
#define LOOM_CLUSTER_H

#include <loom/loom.h>
#include <sys/types.h>

typedef struct loom__cluster loom__cluster;

//  Start a broker and a supervisor of opts->local_workers processes (0:
//  one per online core) loading plugins from opts->plugin_path (NULL: the
//  default path), each running at most opts->max_tasks items and keeping
//  to opts->max_rss_mb (0: no limits). Returns NULL on failure, with the
//  reason logged.
loom__cluster *loom__cluster_new(const loom_client_opts *opts);

//  Stop everything and remove the directory. Sets *self_p to NULL;
//  accepts NULL.
void loom__cluster_destroy(loom__cluster **self_p);

//  The task endpoint the client connects to ("ipc://DIR/tasks").
const char *loom__cluster_endpoint(const loom__cluster *self);

//  The private directory and the supervisor's pid (for tests).
const char *loom__cluster_dir(const loom__cluster *self);
pid_t loom__cluster_supervisor_pid(const loom__cluster *self);

#endif
