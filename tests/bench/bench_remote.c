/*  bench_remote: a broker process and a worker host process on 127.0.0.1
    for the benchmarks, plaintext or under CURVE (bench_remote.h).

    The broker binds tcp://127.0.0.1:* for both channels and says where in
    its first log line ("loom broker: tasks on EP, blobs on EP"), read from
    its log file. Its store is a dir of the remote, removed with it; the
    store's time-to-live stays the default (10 min): a share is held by
    its pipeline only from the pipeline's first map on, and a bench waits
    between the upload and that map (a --store-ttl of 1 s lost the share
    in that gap).  */

#include "bench_remote.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define S_MAX_LIVE 8

struct bench_remote {
    bool curve;         //  keys for everyone
    int procs;          //  worker processes the broker must count
    char dir[128];      //  temp dir: keys, allow/, logs, store/, cache/
    char cache[512];    //  the host's blob cache
    bool own_cache;     //  cache is outside dir: removed on its own
    char client[160];   //  the client's certificate (client_secret beside it)
    char broker[160];   //  the broker's public certificate (the server key)
    char endpoint[128]; //  the broker's task endpoint
    pid_t broker_pid;   //  0 once stopped
    pid_t worker_pid;   //  the host's supervisor; 0 once stopped
};

//  Remotes not destroyed yet, destroyed at exit (a bench that dies on an
//  error leaves no process and no temp dir behind).
static bench_remote *s_live[S_MAX_LIVE];

static void
s_destroy_live(void)
{
    for (int i = 0; i < S_MAX_LIVE; i++)
        if (s_live[i])
            bench_remote_destroy(&s_live[i]);
}

static void s_rmtree(const char *dir);

//  SIGTERM, SIGINT, SIGHUP (a timeout, ^C): the remotes' processes are
//  stopped and their dirs removed (a store of gigabytes, a cache in
//  /dev/shm), then the signal does what it would have done. Not all of it
//  is async-signal-safe; at worst the bench hangs here until the SIGKILL
//  that follows a timeout's SIGTERM.
static void
s_on_signal(int sig)
{
    for (int i = 0; i < S_MAX_LIVE; i++) {
        bench_remote *r = s_live[i];
        if (!r)
            continue;
        if (r->worker_pid > 0)
            kill(r->worker_pid, SIGTERM);
        if (r->broker_pid > 0)
            kill(r->broker_pid, SIGTERM);
    }
    for (int i = 0; i < S_MAX_LIVE; i++) {
        bench_remote *r = s_live[i];
        if (!r)
            continue;
        if (r->worker_pid > 0)
            waitpid(r->worker_pid, NULL, 0);
        if (r->broker_pid > 0)
            waitpid(r->broker_pid, NULL, 0);
        if (r->own_cache)
            s_rmtree(r->cache);
        s_rmtree(r->dir);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void
s_track(bench_remote *self, bool on)
{
    static bool registered;
    if (!registered && on) {
        atexit(s_destroy_live);
        int sigs[] = {SIGTERM, SIGINT, SIGHUP};
        for (int i = 0; i < 3; i++) {
            struct sigaction old;
            if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_DFL)
                signal(sigs[i], s_on_signal);
        }
        registered = true;
    }
    for (int i = 0; i < S_MAX_LIVE; i++)
        if (on ? !s_live[i] : s_live[i] == self) {
            s_live[i] = on ? self : NULL;
            return;
        }
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

//  Start argv with stdout and stderr into log (NULL: /dev/null). The
//  child gets SIGTERM when this thread dies. Returns its pid, or -1.
static pid_t
s_spawn(char *const *argv, const char *log)
{
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    //  Only async-signal-safe calls until exec: the bench may have threads.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        _exit(127);
    dup2(fd, 1);
    dup2(fd, 2);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0)
        dup2(null, 0);
    execve(argv[0], argv, environ);
    _exit(127);
}

//  Stop pid (SIGTERM, SIGKILL after 10 s). Returns its exit status.
static int
s_stop(pid_t pid)
{
    int status = 0;
    kill(pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        s_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return status;
}

//  Run argv to its end. Returns 0 if it exited 0.
static int
s_run(char *const *argv)
{
    pid_t pid = s_spawn(argv, NULL);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int
s_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

static void
s_rmtree(const char *dir)
{
    if (dir[0])
        nftw(dir, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int
s_copy(const char *from, const char *to)
{
    FILE *in = fopen(from, "r"), *out = fopen(to, "w");
    int rc = in && out ? 0 : -1;
    char buf[4096];
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

//  Keys for broker, client and worker by `loom keygen`, the client's and
//  worker's public certificates in allow/.
static int
s_keys(bench_remote *self, const char *exe)
{
    const char *names[] = {"broker", "client", "worker"};
    char path[256], to[256];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", self->dir, names[i]);
        char *argv[] = {(char *)exe, "keygen", path, NULL};
        if (s_run(argv) != 0) {
            fprintf(stderr, "bench_remote: %s keygen %s failed\n", exe, path);
            return -1;
        }
        snprintf(to, sizeof to, "%s/allow/%s", self->dir, names[i]);
        if (i > 0 && s_copy(path, to) != 0)
            return -1;
    }
    return 0;
}

//  Wait for the broker's "tasks on EP," line in log. Returns 0 with the
//  endpoint, -1 if the broker ended or 10 s went by.
static int
s_broker_endpoint(bench_remote *self, const char *log)
{
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "tasks on ");
            if (!at)
                continue;
            at += strlen("tasks on ");
            size_t n = strcspn(at, ", \n");
            if (n == 0 || n >= sizeof self->endpoint)
                break;
            memcpy(self->endpoint, at, n);
            self->endpoint[n] = 0;
            fclose(f);
            return 0;
        }
        if (f)
            fclose(f);
        int status;
        if (waitpid(self->broker_pid, &status, WNOHANG) == self->broker_pid) {
            self->broker_pid = 0;
            return -1;
        }
        s_sleep_ms(10);
    }
    return -1;
}

//  Show the end of a log when something failed.
static void
s_tail(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f))
        fprintf(stderr, "  %s: %s", name, line);
    if (f)
        fclose(f);
}

bench_remote *
bench_remote_new(const bench_remote_opts *opts)
{
    const char *exe = getenv("LOOM_EXE");
    if (!exe || !*exe) {
        fprintf(stderr, "bench_remote: $LOOM_EXE must name the loom executable\n");
        return NULL;
    }
    bench_remote *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->curve = opts->curve;
    self->procs = opts->procs;
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(self->dir, sizeof self->dir, "%s/loom-bench-remote-XXXXXX", tmp);
    if (strlen(tmp) > 60 || !mkdtemp(self->dir)) {
        fprintf(stderr, "bench_remote: cannot make a temp dir in %s\n", tmp);
        free(self);
        return NULL;
    }
    s_track(self, true);
    char store[256], allow[256], blog[256], wlog[256], procs[16], parent[16], csize[32];
    snprintf(store, sizeof store, "%s/store", self->dir);
    snprintf(allow, sizeof allow, "%s/allow", self->dir);
    snprintf(blog, sizeof blog, "%s/broker.log", self->dir);
    snprintf(wlog, sizeof wlog, "%s/worker.log", self->dir);
    snprintf(self->client, sizeof self->client, "%s/client", self->dir);
    snprintf(self->broker, sizeof self->broker, "%s/broker", self->dir);
    self->own_cache = opts->cache_dir != NULL;
    if (opts->cache_dir)
        snprintf(self->cache, sizeof self->cache, "%s", opts->cache_dir);
    else
        snprintf(self->cache, sizeof self->cache, "%s/cache", self->dir);
    snprintf(procs, sizeof procs, "%d", opts->procs);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    snprintf(csize, sizeof csize, "%llu", (unsigned long long)opts->cache_size);
    if (mkdir(store, 0700) != 0 || mkdir(allow, 0700) != 0 ||
        (mkdir(self->cache, 0700) != 0 && errno != EEXIST)) {
        fprintf(stderr, "bench_remote: cannot make the dirs in %s\n", self->dir);
        goto fail;
    }
    if (self->curve && s_keys(self, exe) != 0)
        goto fail;

    const char *bargv[16] = {
        exe,       "broker", "--bind", "tcp://127.0.0.1:*", "--blob-bind", "tcp://127.0.0.1:*",
        "--store", store};
    int n = 8;
    if (self->curve) {
        bargv[n++] = "--curve-dir";
        bargv[n++] = allow;
        bargv[n++] = "--cert";
        bargv[n++] = self->broker;
    }
    bargv[n] = NULL;
    self->broker_pid = s_spawn((char *const *)bargv, blog);
    if (self->broker_pid < 0 || s_broker_endpoint(self, blog) != 0) {
        fprintf(stderr, "bench_remote: the %s broker did not start\n", bench_remote_mode(self));
        s_tail(self->dir, "broker.log");
        goto fail;
    }

    char wcert[256];
    snprintf(wcert, sizeof wcert, "%s/worker", self->dir);
    const char *wargv[20] = {exe,   "worker",  "--connect", self->endpoint, "--procs",
                             procs, "--cache", self->cache, "--parent",     parent};
    n = 10;
    if (opts->cache_size) {
        wargv[n++] = "--cache-size";
        wargv[n++] = csize;
    }
    if (self->curve) {
        wargv[n++] = "--cert";
        wargv[n++] = wcert;
        wargv[n++] = "--server-key";
        wargv[n++] = self->broker;
    }
    wargv[n] = NULL;
    self->worker_pid = s_spawn((char *const *)wargv, wlog);
    //  Ready when the broker counts every worker process (20 s at most).
    uint64_t workers = 0;
    const char *names[] = {"workers"};
    for (int i = 0; i < 200 && self->worker_pid > 0; i++) {
        if (bench_remote_counters(self, names, &workers, 1) == 0 &&
            workers >= (uint64_t)self->procs)
            return self;
        s_sleep_ms(100);
    }
    fprintf(stderr, "bench_remote: the %s broker counts %llu of %d workers\n",
            bench_remote_mode(self), (unsigned long long)workers, self->procs);
    s_tail(self->dir, "broker.log");
    s_tail(self->dir, "worker.log");
fail:
    bench_remote_destroy(&self);
    return NULL;
}

void
bench_remote_destroy(bench_remote **self_p)
{
    bench_remote *self = *self_p;
    if (!self)
        return;
    if (self->worker_pid > 0)
        s_stop(self->worker_pid);
    if (self->broker_pid > 0)
        s_stop(self->broker_pid);
    if (self->own_cache)
        s_rmtree(self->cache);
    s_rmtree(self->dir);
    s_track(self, false);
    free(self);
    *self_p = NULL;
}

const char *
bench_remote_endpoint(const bench_remote *self)
{
    return self->endpoint;
}

void
bench_remote_client_opts(const bench_remote *self, loom_client_opts *o)
{
    if (!self->curve)
        return;
    o->cert_path = self->client;
    o->server_key = self->broker;
}

loom_client *
bench_remote_client(const bench_remote *self)
{
    loom_client_opts o = {.timeout_ms = 10000};
    bench_remote_client_opts(self, &o);
    return loom_client_new(self->endpoint, &o);
}

int
bench_remote_counters(const bench_remote *self, const char *const *names, uint64_t *values, int n)
{
    const char *exe = getenv("LOOM_EXE");
    char cmd[2048];
    int k =
        snprintf(cmd, sizeof cmd, "'%s' status --connect '%s' --timeout 3000", exe, self->endpoint);
    if (self->curve)
        k += snprintf(cmd + k, sizeof cmd - (size_t)k, " --cert '%s' --server-key '%s'",
                      self->client, self->broker);
    snprintf(cmd + k, sizeof cmd - (size_t)k, " 2>/dev/null");
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[256], name[128];
    unsigned long long v;
    int found = 0;
    while (fgets(line, sizeof line, f))
        for (int i = 0; i < n; i++)
            if (sscanf(line, "%127s %llu", name, &v) == 2 && !strcmp(name, names[i])) {
                values[i] = v;
                found++;
            }
    return pclose(f) == 0 && found == n ? 0 : -1;
}

const char *
bench_remote_mode(const bench_remote *self)
{
    return self->curve ? "CURVE" : "plaintext";
}
