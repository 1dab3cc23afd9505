/*  faults_procs.h: helpers shared by test_faults.c and test_chaos.c:
    starting and stopping real loom processes, finding worker processes in
    /proc, a broker with worker hosts on a private ipc:// directory, the
    broker's counters, and exactly-once bookkeeping. Static functions: each
    test program includes this once, after loom_test.h.

    Every broker, worker host and raw socket here takes the test matrix's
    CURVE arguments (loom_test_curve.h): nothing in plaintext, the keys
    under LOOM_TEST_CURVE=1. A test's own clients and `loom map` processes
    add theirs with loom_test_curve_client_opts / _peer_argv.  */

#ifndef LOOM_FAULTS_PROCS_H
#define LOOM_FAULTS_PROCS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include <czmq.h>
#include <loom/loom.h>

#include "base.h"
#include "curve.h"
#include "wire.h"

#include "loom_test_curve.h"

#define S_MAX_PIDS 64

//  ---------------------------------------------------------------------------
//  Processes

static const char *
s_exe(void)
{
    const char *exe = getenv("LOOM_EXE");
    return exe && *exe ? exe : "loom";
}

//  Start argv (argv[0] is the program) as a child that dies with us; with
//  stdin_fd >= 0 its stdin is that fd, and stdout goes to /dev/null.
static pid_t
s_spawn_io(const char *const argv[], int stdin_fd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (stdin_fd >= 0) {
            dup2(stdin_fd, 0);
            close(stdin_fd);
            int null = open("/dev/null", O_WRONLY);
            if (null >= 0)
                dup2(null, 1);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static pid_t
s_spawn(const char *const argv[])
{
    return s_spawn_io(argv, -1);
}

//  Wait up to timeout_ms for our child pid to end (pidfd: no sleeping).
//  Returns its wait status, or -1 if it is still running.
static int
s_wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = loom_now_ms() + timeout_ms;
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    while (true) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            if (fd >= 0)
                close(fd);
            return status;
        }
        int64_t left = deadline - loom_now_ms();
        if (left <= 0)
            break;
        if (fd >= 0) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, (int)left);
        } else
            zclock_sleep(5);
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

static pid_t s_ppid(pid_t pid, char *state);

//  Stop our child: SIGCONT (it may be stopped), SIGTERM, SIGKILL after 5 s.
static void
s_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    if (s_ppid(*pid, NULL) != getpid()) { //  not (or no longer) our child
        waitpid(*pid, NULL, WNOHANG);
        *pid = 0;
        return;
    }
    int early;
    if (waitpid(*pid, &early, WNOHANG) == *pid) {
        if (!WIFEXITED(early) || WEXITSTATUS(early) != 0)
            fprintf(stderr, "test_faults: pid %d had ended by itself: %s %d\n", (int)*pid,
                    WIFSIGNALED(early) ? "signal" : "status",
                    WIFSIGNALED(early) ? WTERMSIG(early) : WEXITSTATUS(early));
        *pid = 0;
        return;
    }
    kill(*pid, SIGCONT);
    kill(*pid, SIGTERM);
    if (s_wait_exit(*pid, 5000) == -1) {
        fprintf(stderr, "test_faults: pid %d ignored SIGTERM, killing it\n", (int)*pid);
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

//  Parent pid and state of a process from /proc, or -1 if it is gone.
static pid_t
s_ppid(pid_t pid, char *state)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    char st = 0;
    int ppid = -1;
    if (!p || sscanf(p + 1, " %c %d", &st, &ppid) != 2)
        return -1;
    if (state)
        *state = st;
    return ppid;
}

//  Live (not zombie) children of pid, found in /proc. Returns how many.
static size_t
s_children(pid_t pid, pid_t *out, size_t cap)
{
    size_t n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        char *end;
        long p = strtol(e->d_name, &end, 10);
        if (*end || p <= 0)
            continue;
        char st;
        if (s_ppid((pid_t)p, &st) == pid && st != 'Z')
            out[n++] = (pid_t)p;
    }
    closedir(d);
    return n;
}

//  Every live descendant of pid. Returns how many.
static inline size_t
s_descendants(pid_t pid, pid_t *out, size_t cap)
{
    size_t n = s_children(pid, out, cap);
    for (size_t i = 0; i < n && n < cap; i++)
        n += s_children(out[i], out + n, cap - n);
    return n;
}

static inline bool
s_alive(pid_t pid)
{
    char st;
    return s_ppid(pid, &st) >= 0 && st != 'Z';
}

//  ---------------------------------------------------------------------------
//  A broker and worker hosts on a private ipc:// directory

typedef struct {
    char dir[128];
    char task_ep[200];
    char blob_ep[200];
    pid_t broker;
    pid_t hosts[4];
    size_t nhosts;
} s_cluster;

//  What the running test started, stopped by the teardown even when an
//  assertion ended the test early.
static s_cluster *s_live;
//  $TMPDIR before s_cluster_init pointed it at the cluster's directory, so
//  that what the processes make there (a temp blob store, host caches)
//  goes with the directory even when a test kills them with SIGKILL.
static char *s_saved_tmpdir;
static pid_t s_extra[4];

//  `loom broker` on the cluster's endpoints, with extra arguments
//  (NULL-terminated, up to 4) and, under CURVE, the broker's keys.
static int
s_broker_start_args(s_cluster *c, const char *const extra[])
{
    const char *argv[16] = {s_exe(), "broker", "--bind", c->task_ep, "--blob-bind", c->blob_ep};
    size_t n = 6;
    for (size_t i = 0; extra && extra[i] && i < 4; i++)
        argv[n++] = extra[i];
    n = loom_test_curve_broker_argv(argv, n);
    argv[n] = NULL;
    c->broker = s_spawn(argv);
    return c->broker > 0 ? 0 : -1;
}

static int
s_broker_start(s_cluster *c)
{
    return s_broker_start_args(c, NULL);
}

//  A `loom worker` host of procs worker processes (the default cache) and,
//  under CURVE, the listed worker's key.
static inline pid_t
s_host_start(s_cluster *c, const char *procs)
{
    const char *argv[12] = {s_exe(), "worker", "--connect", c->task_ep, "--procs", procs};
    size_t n = 6;
    if (!getenv("LOOM_TEST_VERBOSE"))
        argv[n++] = "--quiet";
    n = loom_test_curve_peer_argv(argv, n, true);
    argv[n] = NULL;
    pid_t pid = s_spawn(argv);
    if (pid > 0)
        c->hosts[c->nhosts++] = pid;
    return pid;
}

static void
s_cluster_init(s_cluster *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/loom-test-%d-faults-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(c->dir));
    snprintf(c->task_ep, sizeof c->task_ep, "ipc://%s/task", c->dir);
    snprintf(c->blob_ep, sizeof c->blob_ep, "ipc://%s/blob", c->dir);
    free(s_saved_tmpdir);
    s_saved_tmpdir = getenv("TMPDIR") ? strdup(getenv("TMPDIR")) : NULL;
    setenv("TMPDIR", c->dir, 1);
    s_live = c;
    assert_int_equal(s_broker_start(c), 0);
}

static int
s_remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void
s_cluster_stop(s_cluster *c)
{
    for (size_t i = 0; i < c->nhosts; i++)
        s_stop(&c->hosts[i]);
    s_stop(&c->broker);
    nftw(c->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (s_saved_tmpdir)
        setenv("TMPDIR", s_saved_tmpdir, 1);
    else
        unsetenv("TMPDIR");
    if (s_live == c)
        s_live = NULL;
}

static int
s_teardown(void **state)
{
    (void)state;
    if (s_live)
        s_cluster_stop(s_live);
    for (size_t i = 0; i < sizeof s_extra / sizeof s_extra[0]; i++)
        if (s_extra[i] > 0) {
            if (s_ppid(s_extra[i], NULL) == getpid())
                kill(s_extra[i], SIGKILL);
            waitpid(s_extra[i], NULL, 0);
            s_extra[i] = 0;
        }
    return 0;
}

//  A client's options for the cluster: the timeout, and the listed
//  client's key under CURVE.
static inline loom_client_opts
s_client_opts(int timeout_ms)
{
    loom_client_opts o = {.timeout_ms = timeout_ms};
    loom_test_curve_client_opts(&o);
    return o;
}

//  The broker's counters (StatsRequest needs no session, but under CURVE
//  a listed key). True if it answered.
static bool
s_stats(const s_cluster *c, loom_wire_stats *st)
{
    zsock_t *zs = zsock_new(ZMQ_DEALER);
    zsock_set_linger(zs, 0);
    bool ok = false;
    loom_client_opts keys = {0};
    loom_test_curve_client_opts(&keys);
    if (loom_curve_client_setup(zsock_resolve(zs), keys.cert_path, keys.server_key, NULL) == 0 &&
        zsock_connect(zs, "%s", c->task_ep) == 0) {
        loom_msg req = {.type = LOOM_MSG_STATS_REQUEST};
        if (loom_wire_send(zsock_resolve(zs), NULL, 0, &req, 0) == 0) {
            int64_t deadline = loom_now_ms() + 1000;
            while (!ok && loom_now_ms() < deadline) {
                zmq_pollitem_t item = {zsock_resolve(zs), 0, ZMQ_POLLIN, 0};
                if (zmq_poll(&item, 1, 200) <= 0)
                    continue;
                loom_msg *m = NULL;
                if (loom_wire_recv(zsock_resolve(zs), NULL, 0, NULL, &m, ZMQ_DONTWAIT) != 0)
                    continue;
                if (m->type == LOOM_MSG_STATS) {
                    *st = m->u.stats;
                    ok = true;
                }
                loom_msg_destroy(&m);
            }
        }
    }
    zsock_destroy(&zs);
    return ok;
}

//  Wait until the broker has `workers` worker sessions.
static bool
s_wait_workers(const s_cluster *c, uint32_t workers, int timeout_ms)
{
    int64_t deadline = loom_now_ms() + timeout_ms;
    while (loom_now_ms() < deadline) {
        loom_wire_stats st;
        if (s_stats(c, &st) && st.workers == workers)
            return true;
        zclock_sleep(20); //  the broker tells nobody: ask again
    }
    return false;
}

//  ---------------------------------------------------------------------------
//  Exactly-once bookkeeping

typedef struct {
    uint64_t n;
    uint8_t *seen;
    uint64_t received, dups, bad, failed;
} s_tally;

static void
s_tally_init(s_tally *t, uint64_t n)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    t->seen = calloc(n ? n : 1, 1);
}

static void
s_tally_add(s_tally *t, const loom_result *r)
{
    t->received++;
    if (r->index >= t->n) {
        t->bad++;
        return;
    }
    if (t->seen[r->index]++)
        t->dups++;
    if (r->status != 0)
        t->failed++;
}

static uint64_t
s_tally_missing(const s_tally *t)
{
    uint64_t k = 0;
    for (uint64_t i = 0; i < t->n; i++)
        k += t->seen[i] == 0;
    return k;
}

//  Every index exactly once, every one a success.
static void
s_assert_exactly_once(const s_tally *t)
{
    assert_int_equal(t->dups, 0);
    assert_int_equal(t->bad, 0);
    assert_int_equal(t->failed, 0);
    assert_int_equal(s_tally_missing(t), 0);
    assert_int_equal(t->received, t->n);
}

#endif
