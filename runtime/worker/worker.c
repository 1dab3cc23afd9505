/*  worker: the worker host supervisor.

    One loop: reap children (waitpid WNOHANG) and report each death to the
    broker at once (WorkerExit), restart children whose slot is due, keep
    the Supervisor session alive (Hello, Heartbeat, reconnect on silence or
    a new epoch), and watch for SIGINT/SIGTERM and the --parent process. It
    ticks every S_TICK_MS while something needs it, else sleeps until the
    next heartbeat; SIGCHLD and SIGTERM/SIGINT wake it through a pipe.

    Children are started by fork+exec of the `loom` binary: this process
    holds a ZeroMQ context, so the forked child does nothing but exec (and
    set its parent-death signal) before it becomes a fresh program.  */

#include "worker.h"

#include "base.h"
#include "blob_cache.h"
#include "curve.h"
#include "curve_watch.h"
#include "mem_watch.h"
#include "paths.h"
#include "plugin_loader.h"
#include "wire.h"
#include "worker_process.h"
#include "worker_stop.h"

#include <ctype.h>
#include <czmq.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <limits.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_TICK_MS 20
#define S_BURST 5       //  more deaths than this within S_BURST_MS ...
#define S_BURST_MS 1000 //  ... and restarts wait S_BACKOFF_MS
#define S_BACKOFF_MS 1000
#define S_STOP_GRACE_MS 5000 //  SIGTERM, then SIGKILL after this
#define S_PARENT_CHECK_MS 250 //  with --parent: look at it at least this often
#define S_MAX_PROCS 4096
#define S_UNSENT 256 //  exits kept while there is no session

typedef struct {
    pid_t pid;          //  0: not running
    int64_t restart_at; //  when not running: start again at this time
} s_child;

typedef struct {
    const loom_worker_opts *opts;
    const char *plugin_path;
    char host[33];
    s_child *children;
    int nchildren;
    int64_t deaths[S_BURST + 1]; //  times of the latest deaths (ring)
    size_t ndeaths;
    void *dealer;
    loom_curve_watch *watch; //  its handshakes, until welcomed (curve_watch.h)
    char why[256];           //  the last handshake failure logged ("" none)
    int64_t why_at;          //  when it was logged
    bool welcomed;
    bool hello_pending;
    uint64_t epoch;
    uint32_t hb_ms, liveness;
    int64_t last_rx, last_tx, hello_at;
    loom_wire_worker_exit unsent[S_UNSENT]; //  exits not reported yet (no session)
    size_t nunsent;
    char *cache_dir;     //  the host's blob cache, passed to every child
    bool cache_temp;     //  ours: removed at exit
    char cache_size[32]; //  its cap in bytes, "0": default
    uint64_t oom_kills;  //  loom__oom_kills() at the last reap: a rise is the OOM killer
} s_super;

static volatile sig_atomic_t s_stop;

//  mkdir dir if missing; true if it is then a directory owned by us that
//  no one else can write.
static bool
s_own_dir(const char *dir)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return false;
    struct stat sb;
    return lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_uid == geteuid() &&
           !(sb.st_mode & 022);
}

//  $XDG_CACHE_HOME/loom/blobs or $HOME/.cache/loom/blobs, made if needed;
//  NULL when neither is set or the path is not safely ours.
static char *
s_user_cache_dir(void)
{
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char base[1024];
    if (xdg && *xdg && strlen(xdg) < 900)
        snprintf(base, sizeof base, "%s", xdg);
    else if (home && *home && strlen(home) < 900)
        snprintf(base, sizeof base, "%s/.cache", home);
    else
        return NULL;
    if (mkdir(base, 0700) != 0 && errno != EEXIST)
        return NULL;
    char loom[1100], blobs[1200];
    snprintf(loom, sizeof loom, "%s/loom", base);
    snprintf(blobs, sizeof blobs, "%s/blobs", loom);
    if (!s_own_dir(loom) || !s_own_dir(blobs))
        return NULL;
    return loom_xstrdup(blobs);
}

//  The host's blob cache: --cache, else the user's cache dir, else a
//  private temp dir of ours (removed at exit).
static int
s_cache_setup(s_super *self)
{
    const loom_worker_opts *o = self->opts;
    uint64_t size = o->cache_size;
    if (!size)
        size = (uint64_t)loom_env_long("LOOM_CACHE_SIZE", 0, 0, LONG_MAX);
    snprintf(self->cache_size, sizeof self->cache_size, "%llu", (unsigned long long)size);
    if (o->cache_dir && *o->cache_dir) {
        self->cache_dir = loom_xstrdup(o->cache_dir);
        if (mkdir(self->cache_dir, 0700) != 0 && errno != EEXIST) {
            loom_log_error("supervisor: cannot create the blob cache %s: %s", self->cache_dir,
                           strerror(errno));
            return LOOM_EIO;
        }
        return 0;
    }
    //  The user's cache ($XDG_CACHE_HOME/loom/blobs, ~/.cache/loom/blobs),
    //  shared by every supervisor of this user on the host, if it is ours.
    if ((self->cache_dir = s_user_cache_dir()))
        return 0;
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    self->cache_dir = loom_xmalloc(strlen(base) + 40);
    sprintf(self->cache_dir, "%s/loom-cache-%d-XXXXXX", base, (int)getpid());
    if (!mkdtemp(self->cache_dir)) {
        loom_log_error("supervisor: cannot create a blob cache in %s: %s", base, strerror(errno));
        return LOOM_EIO;
    }
    self->cache_temp = true;
    return 0;
}

//  The handlers' wake-up pipe (loom_wake_open): the loop, blocked in its
//  poll for as long as nothing is due (a heartbeat away when all is well),
//  sees a child's death or a stop at once.
static int s_wake[2] = {-1, -1};

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
    loom_wake_signal(s_wake);
}

static void
s_on_child(int sig)
{
    (void)sig;
    loom_wake_signal(s_wake);
}

//  Start the child of slot i. Returns 0 or LOOM_EIO.
static int
s_spawn(s_super *self, int i)
{
    const loom_worker_opts *o = self->opts;
    char max_tasks[32], credit[32], max_rss[32];
    snprintf(max_tasks, sizeof max_tasks, "%ld", o->max_tasks);
    snprintf(credit, sizeof credit, "%u", o->credit);
    snprintf(max_rss, sizeof max_rss, "%llu", (unsigned long long)(o->max_rss >> 20));
    const char *exe = loom__exe_path();
    const char *argv[32];
    int n = 0;
    argv[n++] = exe;
    argv[n++] = "worker";
    argv[n++] = "--child";
    argv[n++] = "--host";
    argv[n++] = self->host;
    argv[n++] = "--connect";
    argv[n++] = o->endpoint;
    argv[n++] = "--plugin-path";
    argv[n++] = self->plugin_path;
    if (o->max_tasks > 0) {
        argv[n++] = "--max-tasks";
        argv[n++] = max_tasks;
    }
    if (o->credit > 0) {
        argv[n++] = "--credit";
        argv[n++] = credit;
    }
    if (o->max_rss >> 20) {
        argv[n++] = "--max-rss";
        argv[n++] = max_rss;
    }
    argv[n++] = "--cache";
    argv[n++] = self->cache_dir;
    argv[n++] = "--cache-size";
    argv[n++] = self->cache_size;
    if (o->cert_path && o->server_key) {
        argv[n++] = "--cert";
        argv[n++] = o->cert_path;
        argv[n++] = "--server-key";
        argv[n++] = o->server_key;
    }
    argv[n] = NULL;
    pid_t me = getpid();
    //  The child starts with SIGTERM/SIGINT blocked: one sent before it has
    //  its handler stays pending instead of being lost (the worker process
    //  unblocks them on its watchdog thread once its handler is in place).
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid_t pid = fork();
    if (pid == 0) {
        //  Only async-signal-safe calls until exec.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != me)
            _exit(1);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        loom_log_error("supervisor: fork failed: %s", strerror(err));
        return LOOM_EIO;
    }
    self->children[i].pid = pid;
    loom_log_debug("supervisor: started worker process %d", (int)pid);
    return 0;
}

static int
s_send(s_super *self, const loom_msg *m)
{
    int rc = loom_wire_send(self->dealer, NULL, 0, m, ZMQ_DONTWAIT);
    if (rc == 0)
        self->last_tx = loom_now_ms();
    return rc;
}

static void
s_connect(s_super *self)
{
    loom_curve_watch_destroy(&self->watch);
    if (self->dealer)
        zmq_close(self->dealer);
    self->dealer = zmq_socket(zsys_init(), ZMQ_DEALER);
    LOOM_ASSERT(self->dealer);
    int one = 1, zero = 0;
    zmq_setsockopt(self->dealer, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(self->dealer, ZMQ_LINGER, &zero, sizeof zero);
    char *curve_err = NULL;
    if (loom_curve_client_setup(self->dealer, self->opts->cert_path, self->opts->server_key,
                                &curve_err) != 0) {
        loom_log_error("supervisor: %s", curve_err); //  checked at start: cannot happen
        free(curve_err);
    }
    self->watch = loom_curve_watch_new(zsys_init(), self->dealer, self->opts->cert_path != NULL);
    if (zmq_connect(self->dealer, self->opts->endpoint) != 0)
        loom_log_error("supervisor: cannot connect to %s: %s", self->opts->endpoint,
                       zmq_strerror(zmq_errno()));
    self->welcomed = false;
    self->hello_pending = true;
    int64_t now = loom_now_ms();
    self->hello_at = self->last_rx = self->last_tx = now;
}

static void
s_hello(s_super *self)
{
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_HELLO;
    m.u.hello.role = LOOM_ROLE_SUPERVISOR;
    m.u.hello.host = self->host;
    m.u.hello.pid = (uint32_t)getpid();
    m.u.hello.procs = (uint32_t)self->nchildren;
    m.u.hello.software = loom_version();
    if (s_send(self, &m) == 0) {
        self->hello_pending = false;
        self->hello_at = loom_now_ms();
    }
}

static void
s_on_broker(s_super *self)
{
    for (int n = 0; n < 100; n++) {
        loom_msg *m = NULL;
        int rc = loom_wire_recv(self->dealer, NULL, 0, NULL, &m, ZMQ_DONTWAIT);
        if (rc == LOOM_EAGAIN || rc == LOOM_EIO)
            return;
        self->last_rx = loom_now_ms();
        if (rc != 0)
            continue;
        if (m->type == LOOM_MSG_WELCOME) {
            const loom_wire_welcome *w = &m->u.welcome;
            if (!self->welcomed) {
                self->welcomed = true;
                loom_curve_watch_destroy(&self->watch);
                self->why[0] = 0;
                self->epoch = w->epoch;
                if (w->heartbeat_ms)
                    self->hb_ms = w->heartbeat_ms;
                if (w->liveness)
                    self->liveness = w->liveness;
                loom_log_info("supervisor: host %s connected to %s", self->host,
                              self->opts->endpoint);
            } else if (w->epoch != self->epoch) {
                loom_log_notice("supervisor: broker restarted: saying hello again");
                s_connect(self);
            }
        } else if (m->type == LOOM_MSG_ERROR && m->u.error.code == LOOM_ESTATE) {
            loom_log_notice("supervisor: broker lost our session: saying hello again");
            s_connect(self);
        }
        loom_msg_destroy(&m);
        if (self->hello_pending)
            return;
    }
}

//  ru: the child's resource usage from wait4 (its peak resident memory).
static void
s_report_exit(s_super *self, pid_t pid, int wstatus, const struct rusage *ru)
{
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_WORKER_EXIT;
    m.u.worker_exit.pid = (uint32_t)pid;
    m.u.worker_exit.max_rss = (uint64_t)(ru->ru_maxrss > 0 ? ru->ru_maxrss : 0) * 1024;
    m.u.worker_exit.rss_limit = self->opts->max_rss;
    unsigned long long mib = loom__mib(m.u.worker_exit.max_rss);
    if (WIFSIGNALED(wstatus)) {
        m.u.worker_exit.signal = WTERMSIG(wstatus);
        //  The OOM killer sends SIGKILL: did it kill someone since we last looked?
        m.u.worker_exit.oom_kill =
            WTERMSIG(wstatus) == SIGKILL && loom__oom_kills() > self->oom_kills;
        loom_log_warning("supervisor: worker process %d killed by signal %d (%s) holding %llu "
                         "MiB%s",
                         (int)pid, WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)), mib,
                         m.u.worker_exit.oom_kill ? ": the kernel's OOM killer (out of memory)"
                                                  : "");
    } else if (WEXITSTATUS(wstatus) == LOOM_WORKER_EXIT_MEMORY && self->opts->max_rss) {
        m.u.worker_exit.status = WEXITSTATUS(wstatus);
        loom_log_warning("supervisor: worker process %d ran out of memory: it held %llu MiB, "
                         "over --max-rss %llu MiB",
                         (int)pid, mib, loom__mib(self->opts->max_rss));
    } else {
        m.u.worker_exit.status = WEXITSTATUS(wstatus);
        if (WEXITSTATUS(wstatus) != 0)
            loom_log_warning("supervisor: worker process %d exited with status %d", (int)pid,
                             WEXITSTATUS(wstatus));
    }
    //  It died in a plugin's init (it left its init marker): say how, so
    //  the broker fails that map's items naming init (worker_stop.h).
    char init_error[512];
    if (loom__init_marker_take(self->cache_dir, pid, wstatus, &m.u.worker_exit.init_map, init_error,
                               sizeof init_error)) {
        m.u.worker_exit.init_error = init_error;
        loom_log_warning("supervisor: %s", init_error);
    }
    //  Without a session (not welcomed yet, reconnecting) keep it for later.
    if (!self->welcomed || s_send(self, &m) != 0) {
        if (self->nunsent < S_UNSENT) {
            loom_wire_worker_exit *kept = &self->unsent[self->nunsent++];
            *kept = m.u.worker_exit;
            if (kept->init_error)
                kept->init_error = loom_xstrdup(kept->init_error); //  freed once sent
        } else
            loom_log_warning("supervisor: could not report the exit of %d", (int)pid);
    }
}

//  Report the exits kept while there was no session.
static void
s_report_unsent(s_super *self)
{
    size_t sent = 0;
    for (; sent < self->nunsent; sent++) {
        loom_msg m;
        memset(&m, 0, sizeof m);
        m.type = LOOM_MSG_WORKER_EXIT;
        m.u.worker_exit = self->unsent[sent];
        if (s_send(self, &m) != 0)
            break;
        free((char *)self->unsent[sent].init_error);
    }
    memmove(self->unsent, self->unsent + sent, (self->nunsent - sent) * sizeof self->unsent[0]);
    self->nunsent -= sent;
}

//  While there is no session: say why the broker does not let us in, at
//  once, then again when the reason changes or a minute has passed.
static void
s_log_refusal(s_super *self, int64_t now)
{
    const char *why = loom_curve_watch_reason(self->watch, NULL);
    if (!why || (!strcmp(why, self->why) && now - self->why_at < 60000))
        return;
    loom_log_error("supervisor: broker %s: %s (retrying)", self->opts->endpoint, why);
    snprintf(self->why, sizeof self->why, "%s", why);
    self->why_at = now;
}

static void
s_session_tick(s_super *self)
{
    int64_t now = loom_now_ms();
    int64_t expiry = (int64_t)self->hb_ms * self->liveness;
    s_log_refusal(self, now);
    if (self->hello_pending)
        s_hello(self);
    else if ((!self->welcomed && now - self->hello_at > expiry) ||
             (self->welcomed && now - self->last_rx > expiry)) {
        loom_log_notice("supervisor: broker %s silent: reconnecting", self->opts->endpoint);
        s_connect(self);
        s_hello(self);
    }
    if (self->welcomed && self->nunsent)
        s_report_unsent(self);
    if (self->welcomed && now - self->last_tx >= self->hb_ms) {
        loom_msg m;
        memset(&m, 0, sizeof m);
        m.type = LOOM_MSG_HEARTBEAT;
        s_send(self, &m);
        self->last_tx = now;
    }
}

//  Reap every child that ended; report it; plan its restart.
static void
s_reap(s_super *self, bool restart)
{
    int wstatus;
    pid_t pid;
    struct rusage ru;
    while ((pid = wait4(-1, &wstatus, WNOHANG, &ru)) > 0) {
        s_report_exit(self, pid, wstatus, &ru);
        for (int i = 0; i < self->nchildren; i++) {
            if (self->children[i].pid != pid)
                continue;
            self->children[i].pid = 0;
            int64_t now = loom_now_ms();
            self->deaths[self->ndeaths++ % (S_BURST + 1)] = now;
            //  The oldest of the last S_BURST+1 deaths within the burst
            //  window: children die in a loop, wait before restarting.
            bool burst = self->ndeaths > S_BURST &&
                         now - self->deaths[self->ndeaths % (S_BURST + 1)] < S_BURST_MS;
            bool clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
            self->children[i].restart_at = now + (burst && !clean ? S_BACKOFF_MS : 0);
            if (burst && !clean)
                loom_log_warning("supervisor: worker processes die in a loop: waiting %d ms",
                                 S_BACKOFF_MS);
        }
    }
    self->oom_kills = loom__oom_kills(); //  what the next death is compared with
    if (!restart)
        return;
    int64_t now = loom_now_ms();
    for (int i = 0; i < self->nchildren; i++)
        if (self->children[i].pid == 0 && now >= self->children[i].restart_at) {
            if (s_spawn(self, i) != 0)
                self->children[i].restart_at = now + S_BACKOFF_MS;
        }
}

static bool
s_parent_gone(s_super *self)
{
    pid_t parent = self->opts->parent;
    if (parent <= 0)
        return false;
    return getppid() != parent && kill(parent, 0) != 0 && errno == ESRCH;
}

//  How long the loop may wait: the tick while anything needs it (no
//  session yet, exits not reported, a child to start again); else until
//  the next heartbeat to send or the moment the broker would count as
//  silent (a child's death or a signal wakes the loop through s_wake).
//  With a --parent, at most S_PARENT_CHECK_MS: PR_SET_PDEATHSIG is the
//  main watch on it, s_parent_gone the spare.
static long
s_wait_ms(s_super *self)
{
    if (s_wake[0] < 0 || !self->welcomed || self->hello_pending || self->nunsent)
        return S_TICK_MS;
    for (int i = 0; i < self->nchildren; i++)
        if (self->children[i].pid == 0)
            return S_TICK_MS;
    int64_t wait =
        loom_session_due(self->last_tx, self->last_rx, self->hb_ms, self->liveness) - loom_now_ms();
    if (self->opts->parent > 0 && wait > S_PARENT_CHECK_MS)
        wait = S_PARENT_CHECK_MS;
    return wait < 0 ? 0 : wait > S_TICK_MS ? (long)wait : S_TICK_MS;
}

//  SIGTERM every child, wait for them (SIGKILL after the grace period).
static void
s_stop_children(s_super *self)
{
    for (int i = 0; i < self->nchildren; i++)
        if (self->children[i].pid > 0)
            kill(self->children[i].pid, SIGTERM);
    int64_t deadline = loom_now_ms() + S_STOP_GRACE_MS;
    bool killed = false;
    while (true) {
        int alive = 0;
        s_reap(self, false);
        for (int i = 0; i < self->nchildren; i++)
            alive += self->children[i].pid > 0;
        if (!alive)
            break;
        if (!killed && loom_now_ms() >= deadline) {
            loom_log_warning("supervisor: %d worker processes ignored SIGTERM: killing them",
                             alive);
            for (int i = 0; i < self->nchildren; i++)
                if (self->children[i].pid > 0)
                    kill(self->children[i].pid, SIGKILL);
            killed = true;
        }
        zmq_pollitem_t item = {self->dealer, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 10) > 0)
            s_on_broker(self);
    }
}

int
loom_worker_run(const loom_worker_opts *opts)
{
    LOOM_ASSERT(opts);
    if (!opts->endpoint || !*opts->endpoint || opts->procs < 0 || opts->procs > S_MAX_PROCS)
        return LOOM_EINVAL;
    //  No signal may be lost between CZMQ's handlers and ours.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    zsys_init();
    zsys_set_logident("loom-worker");
    zsys_handler_set(NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int err = s_wake[0] < 0 ? loom_wake_open(s_wake) : 0;
    if (err)
        loom_log_warning("supervisor: no wake-up pipe (%s): looking every %d ms", strerror(err),
                         S_TICK_MS);
    sa.sa_handler = s_on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    if (opts->parent > 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (s_parent_gone(&(s_super){.opts = opts}))
            return 0;
    }

    s_super self;
    memset(&self, 0, sizeof self);
    self.opts = opts;
    self.plugin_path = opts->plugin_path ? opts->plugin_path : loom_plugin_default_path();
    self.nchildren = opts->procs;
    if (self.nchildren == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        self.nchildren = cores > 0 ? (int)cores : 1;
    }
    //  The host id: 32 random hex digits, lower case.
    zuuid_t *uuid = zuuid_new();
    const char *hex = zuuid_str(uuid);
    for (size_t i = 0; hex[i] && i < sizeof self.host - 1; i++)
        self.host[i] = (char)tolower((unsigned char)hex[i]);
    zuuid_destroy(&uuid);
    self.hb_ms = (uint32_t)loom_env_long("LOOM_HEARTBEAT_MS", 1000, 10, 600000);
    self.liveness = 3;
    self.children = (s_child *)loom_xcalloc((size_t)self.nchildren, sizeof *self.children);
    self.oom_kills = loom__oom_kills();
    loom_log_info("supervisor: host %s, %d worker processes, broker %s, plugins %s", self.host,
                  self.nchildren, opts->endpoint, self.plugin_path);

    if (s_cache_setup(&self) != 0) {
        free(self.children);
        return LOOM_EIO;
    }
    for (int i = 0; i < self.nchildren; i++)
        s_spawn(&self, i);
    s_connect(&self);
    s_hello(&self);

    while (!s_stop && !s_parent_gone(&self)) {
        zmq_pollitem_t items[] = {{self.dealer, 0, ZMQ_POLLIN, 0}, {NULL, s_wake[0], ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, s_wake[0] >= 0 ? 2 : 1, s_wait_ms(&self));
        if (rc < 0 && zmq_errno() != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            loom_wake_drain(s_wake);
        if (items[0].revents & ZMQ_POLLIN)
            s_on_broker(&self);
        s_reap(&self, true);
        s_session_tick(&self);
    }
    loom_log_info("supervisor: stopping %d worker processes", self.nchildren);
    s_stop_children(&self);
    int linger = 500;
    zmq_setsockopt(self.dealer, ZMQ_LINGER, &linger, sizeof linger);
    loom_curve_watch_destroy(&self.watch);
    zmq_close(self.dealer);
    free(self.children);
    for (size_t i = 0; i < self.nunsent; i++)
        free((char *)self.unsent[i].init_error);
    if (self.cache_temp)
        loom_blob_cache_remove_dir(self.cache_dir);
    free(self.cache_dir);
    return 0;
}
