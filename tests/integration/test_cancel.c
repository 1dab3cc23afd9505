/*  test_cancel: stop means stop (issue 21, point 2).

    A real `loom broker` and `loom worker --procs 1` (faults_procs.h). A map
    whose one item sleeps 30 s is cancelled a second into it: by
    loom_map_destroy, by Ctrl-C in `loom map`, by its client dying. The
    next map's item must start within 2 s of the cancel (the item reports
    the wall clock when it ran; the old broker handed the worker's slot to
    the next map at once, which then waited ~29 s behind the cancelled
    item). While the cancelled item still runs, the broker counts it in
    items_in_flight and items_cancelling. A task that checks
    loom_task_cancelled stops at once, in the same process; one that does
    not has its process ended after LOOM_CANCEL_GRACE_MS and replaced.  */

#include "loom_test.h"

#include "faults_procs.h"

#include <loom/plugin.h>

#define S_LONG "30000"  //  ms: the item that must not be waited for
#define S_BOUND_MS 2000 //  the next item starts within this of the cancel

static s_cluster s_c;

//  faults_procs.h's exactly-once helpers are not used here.
__attribute__((unused)) static void
s_unused(void)
{
    (void)s_tally_init;
    (void)s_tally_add;
    (void)s_assert_exactly_once;
}

static int64_t
s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
s_setup(void **state)
{
    (void)state;
    s_cluster_init(&s_c);
    s_host_start(&s_c, "1");
    return s_wait_workers(&s_c, 1, 10000) ? 0 : -1;
}

//  Wait until the broker counts `n` items in flight (and, with cancelling,
//  that many of cancelled maps). True if it did within timeout_ms.
static bool
s_wait_in_flight(uint64_t n, bool cancelling, int timeout_ms)
{
    int64_t deadline = loom_now_ms() + timeout_ms;
    while (loom_now_ms() < deadline) {
        loom_wire_stats st;
        if (s_stats(&s_c, &st) && st.items_in_flight == n &&
            (!cancelling || st.items_cancelling == n))
            return true;
        zclock_sleep(20); //  the broker tells nobody: ask again
    }
    return false;
}

//  Run one item of testkit's task on a new map; its output as text.
static void
s_one(loom_pipeline *p, const char *task, const char *input, char *out, size_t cap)
{
    loom_map *m = loom_map_new(p, "testkit", task, NULL);
    assert_non_null(m);
    assert_int_equal(loom_map_submit(m, input, strlen(input)), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 60000), 1);
    if (r.status != 0)
        fail_msg("%s: %s", task, r.error ? r.error : loom_strerror(r.status));
    snprintf(out, cap, "%.*s", (int)r.len, (const char *)r.data);
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    loom_map_destroy(&m);
}

//  The wall clock at which the next map's item ran.
static int64_t
s_next_start(loom_pipeline *p)
{
    char text[32];
    s_one(p, "clock", "x", text, sizeof text);
    return strtoll(text, NULL, 10);
}

//  Cancel (loom_map_destroy) a map a second into its one long item of
//  `task`; returns how long after the cancel the next map's item started.
static int64_t
s_cancel_then_next(loom_client *c, const char *task, bool check_status)
{
    loom_pipeline *p = loom_pipeline_new(c, "cancel");
    assert_non_null(p);
    loom_map *m = loom_map_new(p, "testkit", task, NULL);
    assert_non_null(m);
    assert_int_equal(loom_map_submit(m, S_LONG, strlen(S_LONG)), 0);
    assert_int_equal(loom_map_close(m), 0);
    assert_true(s_wait_in_flight(1, false, 10000));
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 1000), LOOM_EAGAIN); //  a second into the item
    int64_t t0 = s_wall_ms();
    loom_map_destroy(&m);
    if (check_status) {
        //  It still runs (the task ignores the cancel): counted as such.
        assert_true(s_wait_in_flight(1, true, 500));
    }
    int64_t started = s_next_start(p);
    loom_wire_stats st;
    assert_true(s_stats(&s_c, &st));
    assert_int_equal(st.items_cancelling, 0);
    assert_int_equal(st.items_in_flight, 0);
    loom_pipeline_destroy(&p);
    return started - t0;
}

static void
test_destroy_stops_a_task_that_runs_on(void **state)
{
    (void)state;
    loom_client_opts o = s_client_opts(10000);
    loom_client *c = loom_client_new(s_c.task_ep, &o);
    assert_non_null(c);
    loom_pipeline *p = loom_pipeline_new(c, "pid");
    char before[16], after[16];
    s_one(p, "pid", "x", before, sizeof before);
    int64_t waited = s_cancel_then_next(c, "sleep", true);
    fprintf(stderr, "sleep (ignores the cancel): next item started %lld ms after it\n",
            (long long)waited);
    assert_true(waited < S_BOUND_MS);
    //  Its process was ended and replaced.
    s_one(p, "pid", "x", after, sizeof after);
    assert_string_not_equal(before, after);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

static void
test_destroy_stops_a_cooperative_task_at_once(void **state)
{
    (void)state;
    loom_client_opts o = s_client_opts(10000);
    loom_client *c = loom_client_new(s_c.task_ep, &o);
    assert_non_null(c);
    loom_pipeline *p = loom_pipeline_new(c, "pid");
    char before[16], after[16];
    s_one(p, "pid", "x", before, sizeof before);
    int64_t waited = s_cancel_then_next(c, "sleep_coop", false);
    fprintf(stderr, "sleep_coop (checks loom_task_cancelled): next item started %lld ms after\n",
            (long long)waited);
    assert_true(waited < S_BOUND_MS);
    //  The same process: it stopped by itself, nothing was ended.
    s_one(p, "pid", "x", after, sizeof after);
    assert_string_equal(before, after);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  `loom map` running the long item, its stdin the item.
static pid_t
s_loom_map(void)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    const char *argv[16] = {s_exe(), "map", "testkit", "sleep", "--connect", s_c.task_ep};
    size_t n = loom_test_curve_peer_argv(argv, 6, false);
    argv[n] = NULL;
    pid_t pid = s_spawn_io(argv, fds[0]);
    close(fds[0]);
    assert_true(write(fds[1], S_LONG "\n", strlen(S_LONG) + 1) > 0);
    close(fds[1]);
    assert_true(pid > 0);
    return pid;
}

//  Ctrl-C (SIGINT) to `loom map`, or its death (SIGKILL): either way the
//  item stops and the next map's starts within the bound.
static void
s_signal_then_next(int sig)
{
    pid_t pid = s_loom_map();
    assert_true(s_wait_in_flight(1, false, 10000));
    int64_t until = loom_now_ms() + 1000;
    while (loom_now_ms() < until)
        zclock_sleep(50); //  a second into the item
    loom_client_opts o = s_client_opts(10000);
    loom_client *c = loom_client_new(s_c.task_ep, &o); //  before: its connect is not timed
    assert_non_null(c);
    loom_pipeline *p = loom_pipeline_new(c, "next");
    int64_t t0 = s_wall_ms();
    kill(pid, sig);
    int st = s_wait_exit(pid, 5000);
    int64_t started = s_next_start(p);
    fprintf(stderr, "loom map got signal %d: next item started %lld ms after it\n", sig,
            (long long)(started - t0));
    assert_true(started - t0 < S_BOUND_MS);
    if (sig == SIGINT) {
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 130);
    }
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

static void
test_ctrl_c_in_loom_map_stops_the_item(void **state)
{
    (void)state;
    s_signal_then_next(SIGINT);
}

static void
test_a_dead_client_has_its_item_stopped(void **state)
{
    (void)state;
    s_signal_then_next(SIGKILL);
}

static int
s_group_teardown(void **state)
{
    return s_teardown(state);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_destroy_stops_a_task_that_runs_on),
        cmocka_unit_test(test_destroy_stops_a_cooperative_task_at_once),
        cmocka_unit_test(test_ctrl_c_in_loom_map_stops_the_item),
        cmocka_unit_test(test_a_dead_client_has_its_item_stopped),
    };
    return cmocka_run_group_tests_name("cancel", tests, s_setup, s_group_teardown);
}
