/*  cluster: the embedded local cluster (see cluster.h).  */

#include "cluster.h"

#include "base.h"
#include "broker.h"
#include "paths.h"

#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define S_STOP_GRACE_MS 5000
#define S_IPC_MAX 100 //  sun_path is 108 bytes with its NUL

struct loom__cluster {
    char *dir;        //  private 0700 directory, removed at destroy
    char *task_ep;    //  ipc://DIR/tasks
    char *blob_ep;    //  ipc://DIR/blobs
    char *local_ep;   //  inproc:// endpoint of the broker for the client
    zactor_t *broker; //  in-process broker
    pid_t supervisor; //  `loom worker` process, 0 if not started
};

//  mkdtemp under $TMPDIR, or /tmp when $TMPDIR is unset or too long for
//  an ipc:// socket path.
static char *
s_make_dir(void)
{
    const char *bases[] = {getenv("TMPDIR"), "/tmp"};
    for (size_t i = 0; i < 2; i++) {
        const char *base = bases[i];
        if (!base || !*base || strlen(base) + 32 > S_IPC_MAX)
            continue;
        char *dir = loom_xmalloc(strlen(base) + 32);
        sprintf(dir, "%s/loom-%d-XXXXXX", base, (int)getpid());
        if (mkdtemp(dir)) {
            chmod(dir, 0700);
            return dir;
        }
        loom_log_error("loom: cannot create a directory in %s: %s", base, strerror(errno));
        free(dir);
    }
    return NULL;
}

static void
s_remove_dir(const char *dir)
{
    //  Sockets, the blob store and the host cache, two levels below them.
    if (loom_remove_tree(dir, 3) != 0)
        loom_log_warning("loom: cannot remove %s: %s", dir, strerror(errno));
}

static int
s_spawn_supervisor(loom__cluster *self, const loom_client_opts *opts)
{
    int workers = opts->local_workers;
    const char *plugin_path = opts->plugin_path;
    if (workers <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        workers = cores > 0 ? (int)cores : 1;
    }
    if (!plugin_path)
        plugin_path = loom_plugin_default_path();
    const char *exe = loom__exe_path();
    char procs[16], parent[16];
    snprintf(procs, sizeof procs, "%d", workers);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    char cache[S_IPC_MAX + 16];
    snprintf(cache, sizeof cache, "%s/cache", self->dir);
    char *argv[20] = {(char *)exe, "worker", "--connect",     self->task_ep,
                      "--procs",   procs,    "--plugin-path", (char *)plugin_path,
                      "--parent",  parent,   "--quiet",       "--cache",
                      cache,       NULL};
    size_t n = 13;
    char max_tasks[24], max_rss[24];
    if (opts->max_tasks > 0) {
        snprintf(max_tasks, sizeof max_tasks, "%d", opts->max_tasks);
        argv[n++] = "--max-tasks";
        argv[n++] = max_tasks;
    }
    if (opts->max_rss_mb > 0) {
        snprintf(max_rss, sizeof max_rss, "%d", opts->max_rss_mb);
        argv[n++] = "--max-rss";
        argv[n++] = max_rss;
    }
    argv[n] = NULL;

    //  The supervisor starts with default dispositions and an empty mask,
    //  whatever this program does with its signals.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, deflt;
    sigemptyset(&none);
    sigemptyset(&deflt);
    sigaddset(&deflt, SIGINT);
    sigaddset(&deflt, SIGTERM);
    sigaddset(&deflt, SIGPIPE);
    sigaddset(&deflt, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &deflt);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&self->supervisor, exe, NULL, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        self->supervisor = 0;
        loom_log_error("loom: cannot start %s worker: %s", exe, strerror(rc));
        return LOOM_EIO;
    }
    return 0;
}

loom__cluster *
loom__cluster_new(const loom_client_opts *opts)
{
    loom__cluster *self = loom_xcalloc(1, sizeof *self);
    self->dir = s_make_dir();
    if (!self->dir)
        goto fail;
    self->task_ep = loom_xmalloc(strlen(self->dir) + 16);
    sprintf(self->task_ep, "ipc://%s/tasks", self->dir);
    self->blob_ep = loom_xmalloc(strlen(self->dir) + 16);
    sprintf(self->blob_ep, "ipc://%s/blobs", self->dir);

    char *bound_task = NULL, *bound_blob = NULL, *error = NULL;
    self->broker =
        loom_broker_start(self->task_ep, self->blob_ep, &bound_task, &bound_blob, &error);
    free(bound_task);
    free(bound_blob);
    if (!self->broker) {
        loom_log_error("loom: cannot start the embedded broker: %s", error ? error : "?");
        free(error);
        goto fail;
    }
    free(error);
    //  The client talks to its broker over inproc (no trip through
    //  libzmq's I/O thread); the worker processes over ipc.
    //  Named once per cluster: a name reused right away could still be
    //  held by the previous broker's socket, which libzmq closes later.
    static atomic_uint s_clusters;
    self->local_ep = loom_xmalloc(64);
    snprintf(self->local_ep, 64, "inproc://loom-cluster-%u", atomic_fetch_add(&s_clusters, 1));
    zstr_sendx(self->broker, "BIND-LOCAL", self->local_ep, NULL);
    char *reply = zstr_recv(self->broker);
    bool local_ok = reply && streq(reply, "OK");
    zstr_free(&reply);
    if (!local_ok) {
        loom_log_error("loom: the embedded broker cannot bind %s", self->local_ep);
        goto fail;
    }
    char *store = loom_xmalloc(strlen(self->dir) + 16);
    sprintf(store, "%s/store", self->dir);
    int src = loom_broker_set_store(self->broker, store, 0, 0, true);
    free(store);
    if (src != 0) {
        loom_log_error("loom: cannot create the embedded blob store in %s", self->dir);
        goto fail;
    }
    if (s_spawn_supervisor(self, opts) != 0)
        goto fail;
    return self;

fail:
    loom__cluster_destroy(&self);
    return NULL;
}

//  SIGTERM, then wait up to the grace period, then SIGKILL.
static void
s_stop_supervisor(pid_t pid)
{
    kill(pid, SIGTERM);
    int64_t deadline = loom_now_ms() + S_STOP_GRACE_MS;
    int status;
    while (true) {
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid || (rc < 0 && errno != EINTR))
            return;
        if (loom_now_ms() >= deadline)
            break;
        zclock_sleep(5);
    }
    loom_log_warning("loom: worker supervisor %d did not stop in %d ms: killed", (int)pid,
                     S_STOP_GRACE_MS);
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
}

void
loom__cluster_destroy(loom__cluster **self_p)
{
    LOOM_ASSERT(self_p);
    loom__cluster *self = *self_p;
    if (!self)
        return;
    if (self->supervisor > 0)
        s_stop_supervisor(self->supervisor);
    zactor_destroy(&self->broker);
    if (self->dir)
        s_remove_dir(self->dir);
    free(self->task_ep);
    free(self->blob_ep);
    free(self->local_ep);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

const char *
loom__cluster_endpoint(const loom__cluster *self)
{
    return self->local_ep;
}

const char *
loom__cluster_dir(const loom__cluster *self)
{
    return self->dir;
}

pid_t
loom__cluster_supervisor_pid(const loom__cluster *self)
{
    return self->supervisor;
}
