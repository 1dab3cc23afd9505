/*  loom_test_curve.h: the test matrix's security axis. A test program run
    with LOOM_TEST_CURVE=1 in its environment (meson registers each matrix
    test twice: NAME and NAME-curve) runs every broker it starts under CURVE
    and every peer with a certificate, the way a user sets up a secured
    cluster: keys made by `loom keygen` ($LOOM_EXE), the client's and the
    worker's public certificates in the broker's --curve-dir, a stranger's
    key left out. Without it, every helper here adds nothing, so one test
    body serves both runs.

    Include after loom_test.h, once per test program.  */

#ifndef LOOM_TEST_CURVE_H
#define LOOM_TEST_CURVE_H

#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <loom/loom.h>

extern char **environ;

typedef struct {
    bool on;               //  LOOM_TEST_CURVE=1: run under CURVE
    char dir[128];         //  the keys, removed at exit
    char allow[160];       //  the broker's --curve-dir: client and worker
    char broker[160];      //  the broker's certificate (broker_secret beside it)
    char client[160];      //  a listed client's certificate
    char worker[160];      //  a listed worker host's certificate
    char stranger[160];    //  a key the broker does not list
    char server_key[41];   //  the broker's public key, Z85
} loom_test_curve;

static loom_test_curve s_ltc;

static inline void
s_ltc_cleanup(void)
{
    if (!s_ltc.dir[0])
        return;
    const char *names[] = {"broker", "client", "worker", "stranger"};
    char path[256];
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", s_ltc.dir, names[i]);
        unlink(path);
        snprintf(path, sizeof path, "%s/%s_secret", s_ltc.dir, names[i]);
        unlink(path);
        snprintf(path, sizeof path, "%s/allow/%s", s_ltc.dir, names[i]);
        unlink(path);
    }
    rmdir(s_ltc.allow);
    rmdir(s_ltc.dir);
    s_ltc.dir[0] = 0;
}

//  Run `loom keygen PATH`, its stdout (the Z85 public key) into z85 (41).
static inline int
s_ltc_keygen(const char *path, char *z85)
{
    const char *exe = getenv("LOOM_EXE");
    int fds[2];
    if (!exe || !*exe || pipe(fds) != 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *argv[] = {(char *)exe, "keygen", (char *)path, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    char buf[64] = {0};
    ssize_t n = rc == 0 ? read(fds[0], buf, sizeof buf - 1) : -1;
    close(fds[0]);
    int status = 0;
    if (rc == 0)
        waitpid(pid, &status, 0);
    if (rc != 0 || n < 40 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    memcpy(z85, buf, 40);
    z85[40] = 0;
    return 0;
}

//  Copy the public certificate at from into the allow-list directory.
static inline int
s_ltc_allow(const char *from, const char *name)
{
    char to[256];
    snprintf(to, sizeof to, "%s/%s", s_ltc.allow, name);
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

//  The process's CURVE set-up, made at the first call (keys written by
//  `loom keygen`); .on is false when LOOM_TEST_CURVE is not 1. Aborts the
//  test program if the keys cannot be made.
static inline const loom_test_curve *
loom_test_curve_get(void)
{
    static bool made;
    if (made)
        return &s_ltc;
    made = true;
    const char *env = getenv("LOOM_TEST_CURVE");
    s_ltc.on = env && !strcmp(env, "1");
    if (!s_ltc.on)
        return &s_ltc;
    snprintf(s_ltc.dir, sizeof s_ltc.dir, "/tmp/loom-test-%d-keys-XXXXXX", (int)getpid());
    if (!mkdtemp(s_ltc.dir)) {
        fprintf(stderr, "loom_test_curve: cannot make %s\n", s_ltc.dir);
        abort();
    }
    atexit(s_ltc_cleanup);
    snprintf(s_ltc.allow, sizeof s_ltc.allow, "%s/allow", s_ltc.dir);
    snprintf(s_ltc.broker, sizeof s_ltc.broker, "%s/broker", s_ltc.dir);
    snprintf(s_ltc.client, sizeof s_ltc.client, "%s/client", s_ltc.dir);
    snprintf(s_ltc.worker, sizeof s_ltc.worker, "%s/worker", s_ltc.dir);
    snprintf(s_ltc.stranger, sizeof s_ltc.stranger, "%s/stranger", s_ltc.dir);
    char z85[41];
    if (mkdir(s_ltc.allow, 0700) != 0 || s_ltc_keygen(s_ltc.broker, s_ltc.server_key) ||
        s_ltc_keygen(s_ltc.client, z85) || s_ltc_keygen(s_ltc.worker, z85) ||
        s_ltc_keygen(s_ltc.stranger, z85) || s_ltc_allow(s_ltc.client, "client") ||
        s_ltc_allow(s_ltc.worker, "worker")) {
        fprintf(stderr, "loom_test_curve: cannot make the keys with $LOOM_EXE keygen\n");
        abort();
    }
    return &s_ltc;
}

//  Append a broker's CURVE arguments (--curve-dir DIR --cert FILE) to
//  argv[0..n) (room for 4 more). Returns the new count.
static inline size_t
loom_test_curve_broker_argv(const char **argv, size_t n)
{
    const loom_test_curve *k = loom_test_curve_get();
    if (!k->on)
        return n;
    argv[n++] = "--curve-dir";
    argv[n++] = k->allow;
    argv[n++] = "--cert";
    argv[n++] = k->broker;
    return n;
}

//  Append a listed peer's arguments (--cert FILE --server-key KEY) to
//  argv[0..n) (room for 4 more): the worker's key when worker is true,
//  else the client's. Returns the new count.
static inline size_t
loom_test_curve_peer_argv(const char **argv, size_t n, bool worker)
{
    const loom_test_curve *k = loom_test_curve_get();
    if (!k->on)
        return n;
    argv[n++] = "--cert";
    argv[n++] = worker ? k->worker : k->client;
    argv[n++] = "--server-key";
    argv[n++] = k->server_key;
    return n;
}

//  Set a client's CURVE options (the listed client's key) under CURVE.
static inline void
loom_test_curve_client_opts(loom_client_opts *o)
{
    const loom_test_curve *k = loom_test_curve_get();
    if (!k->on)
        return;
    o->cert_path = k->client;
    o->server_key = k->server_key;
}

//  " under CURVE" or "", for messages.
static inline const char *
loom_test_curve_mode(void)
{
    return loom_test_curve_get()->on ? " under CURVE" : "";
}

#endif
