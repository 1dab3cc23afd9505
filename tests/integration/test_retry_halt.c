/*  test_retry_halt: retries of failed items (loom_map_opts.retry_failed)
    and fail-fast (halt_after_failures) on the embedded cluster, through
    loom.h as a user meets them: every index still yields exactly one
    result, a retried item runs again after its backoff on the other worker
    process, and a halted map reports the rest as not run.

    Plugins: testkit (flaky, fail, crash, sum) through $LOOM_PLUGIN_PATH.  */

#include "loom_test.h"

#include <ftw.h>
#include <inttypes.h>

#include <loom/loom.h>

#define S_BACKOFF_MS 100 //  before a first retry (LOOM_RETRY_BACKOFF_MS), doubling

static char s_dir[128]; //  the flaky task's run logs, one file per index

static int
s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/loom-test-%d-retry-XXXXXX", (int)getpid());
    return mkdtemp(s_dir) ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    nftw(s_dir, s_rm, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static loom_client *
s_client(int workers)
{
    loom_client_opts o = {.local_workers = workers};
    loom_client *c = loom_client_new(NULL, &o);
    assert_non_null(c);
    return c;
}

//  Each index exactly once: counts by status.
typedef struct {
    uint64_t n;
    uint8_t *seen;
    uint64_t ok, task_failed, crashed, not_run, other, dups;
    bool reduced;
    int reduced_status;
    char reduced_error[128];
} s_tally;

static void
s_tally_add(s_tally *t, const loom_result *r)
{
    if (r->index == LOOM_REDUCED_INDEX) {
        assert_false(t->reduced);
        t->reduced = true;
        t->reduced_status = r->status;
        snprintf(t->reduced_error, sizeof t->reduced_error, "%s", r->error ? r->error : "");
        return;
    }
    assert_true(r->index < t->n);
    if (t->seen[r->index]++)
        t->dups++;
    if (r->status == 0)
        t->ok++;
    else if (r->status == LOOM_ETASK)
        t->task_failed++;
    else if (r->status == LOOM_ECRASHED)
        t->crashed++;
    else if (r->status == LOOM_ECANCELED) {
        assert_non_null(r->error);
        assert_non_null(strstr(r->error, "not run: map halted after"));
        t->not_run++;
    } else
        t->other++;
}

static void
s_drain(loom_map *m, s_tally *t)
{
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 60000)) == 1)
        s_tally_add(t, &r);
    assert_int_equal(rc, 0);
    assert_int_equal(t->dups, 0);
    for (uint64_t i = 0; i < t->n; i++)
        assert_int_equal(t->seen[i], 1);
}

//  The run log of item i: worker ids and start times, *n runs.
static int
s_runs(uint64_t i, unsigned *workers, long long *ms, int cap)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%" PRIu64, s_dir, i);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = 0;
    while (n < cap && fscanf(f, "%u %lld", &workers[n], &ms[n]) == 2)
        n++;
    fclose(f);
    return n;
}

static loom_map *
s_flaky_map(loom_pipeline *p, loom_map_opts *o)
{
    o->args = s_dir;
    o->args_len = strlen(s_dir);
    loom_map *m = loom_map_new(p, "testkit", "flaky", o);
    assert_non_null(m);
    return m;
}

//  Items that fail twice succeed at their third run, each run after the
//  backoff (0.1 s, then 0.2 s) and on the other worker process.
static void
test_retry_failed_runs_again_on_another_worker(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "retry");
    loom_map_opts o = {.retry_failed = 3, .chunk = 1};
    loom_map *m = s_flaky_map(p, &o);
    const uint64_t n = 20;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(loom_map_submit(m, "2", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    s_tally t = {.n = n, .seen = calloc(n, 1)};
    s_drain(m, &t);
    assert_int_equal(t.ok, n);
    loom_stats st;
    loom_map_stats(m, &st);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.done, n);
    for (uint64_t i = 0; i < n; i++) {
        unsigned w[8];
        long long ms[8];
        assert_int_equal(s_runs(i, w, ms, 8), 3);
        assert_true(w[1] != w[0]); //  two worker processes: the other one
        assert_true(w[2] != w[1]);
        assert_true(ms[1] - ms[0] >= S_BACKOFF_MS);
        assert_true(ms[2] - ms[1] >= 2 * S_BACKOFF_MS);
    }
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  Out of retries, the item's result is its last run's failure.
static void
test_retry_failed_gives_up_with_the_last_error(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "give-up");
    loom_map_opts o = {.retry_failed = 2, .ordered = true};
    loom_map *m = s_flaky_map(p, &o);
    assert_int_equal(loom_map_submit(m, "9", 1), 0); //  index 0 (log files of the last test
    assert_int_equal(loom_map_submit(m, "9", 1), 0); //  are gone: a fresh directory each)
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    for (uint64_t i = 0; i < 2; i++) {
        assert_int_equal(loom_map_next(m, &r, 60000), 1);
        assert_int_equal(r.index, i);
        assert_int_equal(r.status, LOOM_ETASK);
        char want[64];
        snprintf(want, sizeof want, "flaky: run 3 of item %" PRIu64 " fails", i);
        assert_string_equal(r.error, want);
        unsigned w[8];
        long long ms[8];
        assert_int_equal(s_runs(i, w, ms, 8), 3);
    }
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  Without retry_failed a failure is final at once: one run.
static void
test_failures_not_retried_by_default(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "no-retry");
    loom_map_opts o = {0};
    loom_map *m = s_flaky_map(p, &o);
    assert_int_equal(loom_map_submit(m, "1", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 60000), 1);
    assert_int_equal(r.status, LOOM_ETASK);
    assert_string_equal(r.error, "flaky: run 1 of item 0 fails");
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    unsigned w[8];
    long long ms[8];
    assert_int_equal(s_runs(0, w, ms, 8), 1);
    //  Bad values are refused, naming the option.
    loom_map_opts bad = {.retry_failed = -1};
    assert_null(loom_map_new(p, "testkit", "flaky", &bad));
    bad = (loom_map_opts){.halt_after_failures = -2};
    assert_null(loom_map_new(p, "testkit", "flaky", &bad));
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  An item past its timeout is retried too (its process ends, a new one
//  takes the retry); out of retries it fails LOOM_ETIMEDOUT.
static void
test_timed_out_item_retried(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "timeout");
    loom_map_opts o = {.retry_failed = 1, .timeout_ms = 300};
    loom_map *m = s_flaky_map(p, &o);
    assert_int_equal(loom_map_submit(m, "0 5000", 6), 0); //  never fails, always too slow
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 60000), 1);
    assert_int_equal(r.status, LOOM_ETIMEDOUT);
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    unsigned w[8];
    long long ms[8];
    assert_int_equal(s_runs(0, w, ms, 8), 2);
    assert_true(ms[1] - ms[0] >= 300 + S_BACKOFF_MS);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  A retried item that then succeeds is not a failure: no halt.
static void
test_retried_success_does_not_count_toward_halt(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "retry-halt");
    loom_map_opts o = {.retry_failed = 1, .halt_after_failures = 1};
    loom_map *m = s_flaky_map(p, &o);
    const uint64_t n = 10;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(loom_map_submit(m, "1", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    s_tally t = {.n = n, .seen = calloc(n, 1)};
    s_drain(m, &t);
    assert_int_equal(t.ok, n);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  After 2 failures the map halts: every other index not done yet comes
//  back once as not run, and later submits are refused.
static void
test_halt_after_failures_reports_the_rest_not_run(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "halt");
    loom_map_opts o = {.halt_after_failures = 2, .chunk = 1, .window = 400};
    loom_map *m = s_flaky_map(p, &o);
    const uint64_t n = 300;
    for (uint64_t i = 0; i < n; i++) {
        const char *in = i >= 4 && i <= 6 ? "99" : "0 20";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
    }
    //  Wait for the halt, then submit once more: refused.
    loom_result r;
    s_tally t = {.n = n, .seen = calloc(n, 1)};
    while (t.task_failed < 2) {
        assert_int_equal(loom_map_next(m, &r, 60000), 1);
        s_tally_add(&t, &r);
    }
    assert_int_equal(loom_map_submit(m, "0", 1), LOOM_ECANCELED);
    assert_int_equal(loom_map_close(m), 0);
    int rc;
    while ((rc = loom_map_next(m, &r, 60000)) == 1)
        s_tally_add(&t, &r);
    assert_int_equal(rc, 0);
    assert_int_equal(t.dups, 0);
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(t.seen[i], 1);
    assert_true(t.task_failed >= 2 && t.task_failed <= 3);
    assert_int_equal(t.other + t.crashed, 0);
    //  300 items of 20 ms on 2 processes, halted within the first few:
    //  most of them never ran.
    assert_true(t.not_run > n / 2);
    assert_int_equal(t.ok + t.task_failed + t.not_run, n);
    loom_stats st;
    loom_map_stats(m, &st);
    assert_int_equal(st.submitted, n);
    assert_int_equal(st.failed, t.task_failed + t.not_run);
    assert_int_equal(st.in_flight, 0);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  A crashed item (retries -1: none) counts as a failure too; an ordered
//  map delivers the not-run results in order.
static void
test_halt_counts_crashes_and_keeps_order(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "halt-crash");
    loom_map_opts o = {.halt_after_failures = 1, .retries = -1, .ordered = true, .chunk = 1};
    loom_map *m = loom_map_new(p, "testkit", "crash", &o);
    assert_non_null(m);
    const uint64_t n = 200;
    for (uint64_t i = 0; i < n; i++) {
        const char *in = i == 3 ? "crash" : "x";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    s_tally t = {.n = n, .seen = calloc(n, 1)};
    loom_result r;
    int rc;
    uint64_t next = 0;
    while ((rc = loom_map_next(m, &r, 60000)) == 1) {
        assert_int_equal(r.index, next++);
        s_tally_add(&t, &r);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(next, n);
    assert_int_equal(t.crashed, 1);
    assert_true(t.seen[3] == 1);
    assert_int_equal(t.ok + t.crashed + t.not_run, n);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  A halted reduce map's combined result is not made: it says why.
static void
test_halted_reduce_says_why(void **state)
{
    (void)state;
    loom_client *c = s_client(2);
    loom_pipeline *p = loom_pipeline_new(c, "halt-reduce");
    loom_map_opts o = {.halt_after_failures = 1, .reduce = true, .chunk = 1};
    loom_map *m = loom_map_new(p, "testkit", "sum", &o);
    assert_non_null(m);
    const uint64_t n = 50;
    for (uint64_t i = 0; i < n; i++) {
        const char *in = i == 2 ? "not a number" : "1";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    s_tally t = {.n = n, .seen = calloc(n, 1)};
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 60000)) == 1)
        s_tally_add(&t, &r);
    assert_int_equal(rc, 0);
    assert_int_equal(t.task_failed, 1);
    assert_true(t.reduced);
    assert_int_equal(t.reduced_status, LOOM_ECANCELED);
    assert_string_equal(t.reduced_error, "not run: map halted after 1 failure");
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_retry_failed_runs_again_on_another_worker, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_retry_failed_gives_up_with_the_last_error, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_failures_not_retried_by_default, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_timed_out_item_retried, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_retried_success_does_not_count_toward_halt, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_halt_after_failures_reports_the_rest_not_run, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_halt_counts_crashes_and_keeps_order, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_halted_reduce_says_why, s_setup, s_teardown),
    };
    return cmocka_run_group_tests_name("retry_halt", tests, NULL, NULL);
}
