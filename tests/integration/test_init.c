/*  test_init: a plugin's init is bounded and explains itself (issue 21,
    point 3).

    Each test starts an embedded cluster whose worker processes load
    tests/plugins/init_modes, whose init misbehaves as $LOOM_TEST_INIT says
    (set before the cluster starts, so every worker process sees it): an
    init that spins past init_timeout_ms, one that crashes, one that fails
    with a reason (loom_worker_fail) or with none (init_fails), and one
    that fails in one worker process of two. Every item must get a result
    (no hang, whatever --timeout says), with LOOM_EINIT and a message naming
    the plugin, init and the cause; a process whose init failed gets no more
    of the map, so with a second, healthy process the map goes on there.
    `loom map --init-timeout` is the same through the command.  */

#include "loom_test.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include <loom/loom.h>

#define S_WAIT_MS 30000 //  a result that has not come by then never will

typedef struct {
    int ok, einit, other;
    char first_error[512];
    int64_t took_ms;
    char pids[2][16]; //  the pids that ran successful items (up to two)
    int npids;
} s_outcome;

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Run n items of plugin's task on client c; what came back in *out.
static void
s_run_on(loom_client *c, const char *mode, const char *plugin, const char *task, int n,
         const loom_map_opts *o, s_outcome *out)
{
    memset(out, 0, sizeof *out);
    loom_pipeline *p = loom_pipeline_new(c, "init");
    assert_non_null(p);
    int64_t t0 = s_now_ms();
    loom_map *m = loom_map_new(p, plugin, task, o);
    assert_non_null(m);
    for (int i = 0; i < n; i++) {
        char text[16];
        int k = snprintf(text, sizeof text, "%d", i);
        assert_int_equal(loom_map_submit(m, text, (size_t)k), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc, got = 0;
    while ((rc = loom_map_next(m, &r, S_WAIT_MS)) == 1) {
        got++;
        if (r.status == 0) {
            out->ok++;
            char pid[16];
            snprintf(pid, sizeof pid, "%.*s", (int)r.len, (const char *)r.data);
            bool known = false;
            for (int i = 0; i < out->npids; i++)
                known = known || !strcmp(out->pids[i], pid);
            if (!known && out->npids < 2)
                snprintf(out->pids[out->npids++], sizeof out->pids[0], "%s", pid);
        } else if (r.status == LOOM_EINIT)
            out->einit++;
        else
            out->other++;
        if (r.status != 0 && !out->first_error[0])
            snprintf(out->first_error, sizeof out->first_error, "%s",
                     r.error ? r.error : loom_strerror(r.status));
    }
    out->took_ms = s_now_ms() - t0;
    fprintf(stderr, "%s: %d ok, %d LOOM_EINIT, %d other in %lld ms; first error: %s\n", mode,
            out->ok, out->einit, out->other, (long long)out->took_ms, out->first_error);
    assert_int_equal(rc, 0); //  every result came: nothing hangs
    assert_int_equal(got, n);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

//  The same on a fresh embedded cluster of `procs` processes whose init
//  does `mode`.
static void
s_run(const char *mode, const char *plugin, const char *task, int procs, int n,
      const loom_map_opts *o, s_outcome *out)
{
    setenv("LOOM_TEST_INIT", mode, 1);
    loom_client_opts co = {.local_workers = procs};
    loom_client *c = loom_client_new(NULL, &co);
    assert_non_null(c);
    s_run_on(c, mode, plugin, task, n, o, out);
    loom_client_destroy(&c);
    unsetenv("LOOM_TEST_INIT");
}

static void
s_has(const char *text, const char *needle)
{
    if (!strstr(text, needle))
        fail_msg("'%s' lacks '%s'", text, needle);
}

//  An init that spins: the item timeout does not watch init, its own
//  timeout does. Every item fails, naming init and the timeout, long before
//  the spin would end (never), with the map's retries (1) spent.
static void
test_spinning_init_times_out(void **state)
{
    (void)state;
    loom_map_opts o = {.timeout_ms = 1000, .init_timeout_ms = 500, .retries = 1};
    s_outcome out;
    s_run("spin", "init_modes", "pid", 1, 20, &o, &out);
    assert_int_equal(out.einit, 20);
    s_has(out.first_error, "plugin 'init_modes' init timed out after 500 ms");
    assert_true(out.took_ms < 15000);
}

static void
test_crashing_init_names_init_and_the_signal(void **state)
{
    (void)state;
    loom_map_opts o = {.retries = -1};
    s_outcome out;
    s_run("crash", "init_modes", "pid", 1, 10, &o, &out);
    assert_int_equal(out.einit, 10);
    s_has(out.first_error, "plugin 'init_modes' init crashed worker process");
    s_has(out.first_error, "killed by signal 11 (SIGSEGV)");
}

static void
test_failing_init_gives_its_reason(void **state)
{
    (void)state;
    s_outcome out;
    s_run("fail", "init_modes", "pid", 2, 30, NULL, &out);
    assert_int_equal(out.einit, 30);
    s_has(out.first_error, "plugin 'init_modes' init failed in worker process");
    s_has(out.first_error, "cannot open model /nonexistent/model.bin: No such file or directory");
}

static void
test_failing_init_without_a_reason_names_its_return_code(void **state)
{
    (void)state;
    s_outcome out;
    s_run("ok", "init_fails", "echo", 1, 5, NULL, &out);
    assert_int_equal(out.einit, 5);
    s_has(out.first_error, "plugin 'init_fails' init failed in worker process");
    s_has(out.first_error, "init returned -1");
}

//  Init fails in worker 0 only: the item that met the failure fails with
//  it, the worker gets no more, and the rest of the map (what it had been
//  sent too) succeeds on worker 1; nor does it get any of a second map of
//  the plugin (its init would fail there the same way).
static void
test_a_process_whose_init_failed_gets_no_more_of_the_map(void **state)
{
    (void)state;
    setenv("LOOM_TEST_INIT", "fail_id0", 1);
    loom_client_opts co = {.local_workers = 2};
    loom_client *c = loom_client_new(NULL, &co);
    assert_non_null(c);
    s_outcome out;
    s_run_on(c, "fail_id0", "init_modes", "pid", 200, NULL, &out);
    assert_int_equal(out.other, 0);
    assert_int_equal(out.einit, 1);
    assert_int_equal(out.ok, 199);
    assert_int_equal(out.npids, 1); //  one process ran all the successes
    s_has(out.first_error, "cannot open model");
    char healthy[16];
    snprintf(healthy, sizeof healthy, "%s", out.pids[0]);
    s_run_on(c, "fail_id0, second map", "init_modes", "pid", 100, NULL, &out);
    assert_int_equal(out.ok, 100);
    assert_int_equal(out.npids, 1);
    assert_string_equal(out.pids[0], healthy);
    loom_client_destroy(&c);
    unsetenv("LOOM_TEST_INIT");
}

//  A slow init within its timeout is fine.
static void
test_slow_init_within_its_timeout_succeeds(void **state)
{
    (void)state;
    loom_map_opts o = {.init_timeout_ms = 5000};
    s_outcome out;
    s_run("slow_ok", "init_modes", "pid", 1, 5, &o, &out);
    assert_int_equal(out.ok, 5);
}

//  `loom map --init-timeout`: exit status 1, the reason on stderr.
static void
test_loom_map_init_timeout(void **state)
{
    (void)state;
    const char *exe = getenv("LOOM_EXE");
    assert_non_null(exe);
    int in[2], err[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(err), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("LOOM_TEST_INIT", "sleep", 1);
        dup2(in[0], 0);
        dup2(err[1], 2);
        close(in[1]);
        close(err[0]);
        execl(exe, exe, "map", "init_modes", "echo", "--procs", "1", "--init-timeout", "400",
              "--retries", "-1", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(err[1]);
    assert_true(write(in[1], "a\nb\n", 4) == 4);
    close(in[1]);
    char text[8192];
    size_t len = 0;
    int64_t deadline = s_now_ms() + S_WAIT_MS;
    for (;;) {
        struct pollfd pfd = {.fd = err[0], .events = POLLIN};
        int left = (int)(deadline - s_now_ms());
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            break;
        ssize_t n = read(err[0], text + len, sizeof text - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    text[len] = 0;
    close(err[0]);
    int st = 0;
    //  Its stderr ends before it can be waited for: wait on a pidfd.
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd >= 0) {
        struct pollfd w = {.fd = pfd, .events = POLLIN};
        poll(&w, 1, 10000);
        close(pfd);
    }
    if (waitpid(pid, &st, WNOHANG) != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        fail_msg("loom map did not end: %s", text);
    }
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    s_has(text, "loom map: item 0: plugin 'init_modes' init timed out after 400 ms");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spinning_init_times_out),
        cmocka_unit_test(test_crashing_init_names_init_and_the_signal),
        cmocka_unit_test(test_failing_init_gives_its_reason),
        cmocka_unit_test(test_failing_init_without_a_reason_names_its_return_code),
        cmocka_unit_test(test_a_process_whose_init_failed_gets_no_more_of_the_map),
        cmocka_unit_test(test_slow_init_within_its_timeout_succeeds),
        cmocka_unit_test(test_loom_map_init_timeout),
    };
    return cmocka_run_group_tests_name("init", tests, NULL, NULL);
}
