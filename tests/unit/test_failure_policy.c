/*  Tests of the broker's failure policy (failure_policy.c) and of the
    scheduler's side of it: failed items retried after a backoff on another
    worker (retry_failed), maps halted after their failures
    (halt_after_failures), and what a worker process's end means (signals,
    running out of memory).  */

#include "loom_test.h"

#include <signal.h>

#include "base.h"
#include "failure_policy.h"
#include "scheduler.h"

static loom_sched_map *
s_map(loom_sched *s, uint32_t chunk, uint32_t retry_failed, uint32_t halt)
{
    loom_sched_def def = {.plugin = "testkit",
                          .task = "flaky",
                          .chunk = chunk,
                          .retry_failed = retry_failed,
                          .halt_after_failures = halt};
    return loom_sched_map_new(s, &def, NULL, 1);
}

static void
s_fill(loom_sched *s, loom_sched_map *m, uint64_t from, uint64_t to)
{
    for (uint64_t i = from; i < to; i++)
        assert_int_equal(loom_sched_submit(s, m, i, &i, sizeof i, NULL, 0), 0);
}

static void
test_backoff_doubles_up_to_the_cap(void **state)
{
    (void)state;
    assert_int_equal(loom_retry_backoff_ms(1), 100);
    assert_int_equal(loom_retry_backoff_ms(2), 200);
    assert_int_equal(loom_retry_backoff_ms(3), 400);
    assert_int_equal(loom_retry_backoff_ms(9), 25600);
    assert_int_equal(loom_retry_backoff_ms(10), LOOM_RETRY_BACKOFF_MAX_MS);
    assert_int_equal(loom_retry_backoff_ms(1000000), LOOM_RETRY_BACKOFF_MAX_MS);
    assert_true(loom_retry_status(LOOM_ETASK));
    assert_true(loom_retry_status(LOOM_ETIMEDOUT));
    assert_false(loom_retry_status(LOOM_ECRASHED));
    assert_false(loom_retry_status(LOOM_ENOENT));
    assert_false(loom_retry_status(0));
    char text[96];
    loom_halt_message(text, sizeof text, 1);
    assert_string_equal(text, "not run: map halted after 1 failure");
    loom_halt_message(text, sizeof text, 3);
    assert_string_equal(text, "not run: map halted after 3 failures");
}

//  A failed item waits out its backoff off the queue, then runs again
//  first, on the other worker; only the failed run's worker is avoided.
static void
test_failed_item_retried_after_backoff_on_another_worker(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 2, 2, 0);
    s_fill(s, m, 0, 4);
    loom_sched_map_set_count(m, 4);
    loom_sched_worker *a = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b)); //  0, 1 to a
    assert_ptr_equal(b.worker, a);
    assert_int_equal(b.n, 2);
    loom_sched_worker *w2 = loom_sched_worker_new(s, NULL, 0);
    assert_true(loom_sched_worker_seq(w2) != loom_sched_worker_seq(a));
    assert_true(loom_sched_next_batch(s, &b)); //  2, 3 to w2
    assert_ptr_equal(b.worker, w2);
    //  Item 1 fails on a at t=1000: it waits until 1100.
    assert_true(loom_sched_retry_failed(s, a, m, 1, LOOM_ETASK, 1000));
    assert_int_equal(loom_sched_map_waiting(m), 1);
    assert_int_equal(loom_sched_map_in_flight(m), 3);
    assert_int_equal(loom_sched_queued(s), 1);
    assert_int_equal(loom_sched_retried(s), 1);
    //  Not again: it is no longer in flight on a (a late duplicate).
    assert_false(loom_sched_retry_failed(s, a, m, 1, LOOM_ETASK, 1000));
    assert_null(loom_sched_take(s, a, m, 1));
    //  A crash status is not retried this way; neither is a success.
    assert_false(loom_sched_retry_failed(s, a, m, 0, LOOM_ECRASHED, 1000));
    assert_false(loom_sched_retry_failed(s, a, m, 0, 0, 1000));
    loom_sched_item *it = loom_sched_take(s, a, m, 0);
    assert_non_null(it);
    loom_sched_item_free(&it);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_RUNNING);
    assert_int_equal(loom_sched_release_due(s, 1099), 1100);
    assert_false(loom_sched_next_batch(s, &b)); //  still waiting
    assert_int_equal(loom_sched_release_due(s, 1100), INT64_MAX);
    assert_int_equal(loom_sched_map_waiting(m), 0);
    assert_int_equal(loom_sched_map_queued(m), 1);
    //  a is idle and w2 holds 2 items, but item 1 failed on a: it goes to w2.
    assert_true(loom_sched_next_batch(s, &b));
    assert_ptr_equal(b.worker, w2);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.items[0]->index, 1);
    assert_int_equal(b.items[0]->attempt, 1);
    assert_int_equal(b.items[0]->fails, 1);
    //  It fails there too: the second wait is twice as long, and a is
    //  the worker to use now.
    assert_true(loom_sched_retry_failed(s, w2, m, 1, LOOM_ETIMEDOUT, 5000));
    assert_int_equal(loom_sched_release_due(s, 5000), 5200);
    assert_int_equal(loom_sched_release_due(s, 5200), INT64_MAX);
    assert_true(loom_sched_next_batch(s, &b));
    assert_ptr_equal(b.worker, a);
    assert_int_equal(b.items[0]->attempt, 2);
    //  Out of retries (retry_failed 2): the third failure is the result.
    assert_false(loom_sched_retry_failed(s, a, m, 1, LOOM_ETASK, 6000));
    it = loom_sched_take(s, a, m, 1);
    assert_non_null(it);
    assert_int_equal(it->fails, 2);
    loom_sched_item_free(&it);
    for (uint64_t i = 2; i < 4; i++) {
        it = loom_sched_take(s, w2, m, i);
        assert_non_null(it);
        loom_sched_item_free(&it);
    }
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_DONE);
    loom_sched_destroy(&s);
}

//  With a single worker, failed items run there again (there is no
//  other). A batch for a worker ends before an item that failed there.
static void
test_retry_on_the_only_worker(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 4, 1, 0);
    s_fill(s, m, 0, 4);
    loom_sched_worker *a = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 4);
    assert_true(loom_sched_retry_failed(s, a, m, 1, LOOM_ETASK, 0));
    assert_true(loom_sched_retry_failed(s, a, m, 2, LOOM_ETASK, 0));
    for (uint64_t i = 0; i < 4; i += 3) {
        loom_sched_item *it = loom_sched_take(s, a, m, i);
        assert_non_null(it);
        loom_sched_item_free(&it);
    }
    s_fill(s, m, 4, 8);
    assert_int_equal(loom_sched_release_due(s, 100), INT64_MAX);
    assert_true(loom_sched_next_batch(s, &b));
    assert_ptr_equal(b.worker, a);
    assert_int_equal(b.n, 1); //  item 2 failed on a too: it does not join item 1
    assert_int_equal(b.items[0]->index, 1);
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 4);
    assert_int_equal(b.items[0]->index, 2);
    assert_int_equal(b.items[1]->index, 4);
    loom_sched_destroy(&s);
}

//  Retries after failures do not use up the crash retries, and a map
//  without retry_failed retries nothing.
static void
test_failure_retries_leave_crash_retries(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *none = s_map(s, 1, 0, 0);
    s_fill(s, none, 0, 1);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_false(loom_sched_retry_failed(s, w, none, 0, LOOM_ETASK, 0));
    loom_sched_map_destroy(s, &none);

    loom_sched_map *m = s_map(s, 1, 3, 0); //  retries 0: the default, 2 crashes
    s_fill(s, m, 0, 1);
    int64_t now = 0;
    for (int i = 0; i < 3; i++) {
        assert_true(loom_sched_next_batch(s, &b));
        assert_true(loom_sched_retry_failed(s, b.worker, m, 0, LOOM_ETASK, now));
        now += 100000;
        loom_sched_release_due(s, now);
    }
    //  Three failures, then two crashes: still queued (attempt 5, 2 crashes).
    for (int i = 0; i < 2; i++) {
        assert_true(loom_sched_next_batch(s, &b));
        loom_sched_worker *dead = b.worker;
        loom_sched_worker_remove(s, &dead, "killed by signal 11", true);
        w = loom_sched_worker_new(s, NULL, 0);
        assert_null(loom_sched_map_pop_failed(m));
    }
    //  The third crash is one too many.
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.items[0]->attempt, 5);
    loom_sched_worker *dead = b.worker;
    loom_sched_worker_remove_as(s, &dead, "ran out of memory", true, LOOM_ENOMEM);
    loom_sched_item *it = loom_sched_map_pop_failed(m);
    assert_non_null(it);
    assert_int_equal(it->status, LOOM_ENOMEM);
    assert_string_equal(it->reason, "ran out of memory");
    loom_sched_item_free(&it);
    loom_sched_destroy(&s);
}

//  Halting fails what is queued, in flight and waiting as not run, and
//  what comes later; a halted reduce's fold fails too.
static void
test_halt_fails_the_rest_as_not_run(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 2, 1, 2);
    s_fill(s, m, 0, 10);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b)); //  0, 1
    assert_true(loom_sched_retry_failed(s, w, m, 0, LOOM_ETASK, 0));
    assert_false(loom_sched_map_count_failures(m, 0));
    assert_false(loom_sched_map_count_failures(m, 1));
    assert_true(loom_sched_map_count_failures(m, 1)); //  2 of 2
    loom_sched_map_halt(s, m);
    assert_true(loom_sched_map_failed(m));
    assert_false(loom_sched_map_count_failures(m, 5)); //  halted already
    assert_int_equal(loom_sched_map_waiting(m), 0);
    assert_int_equal(loom_sched_map_in_flight(m), 0);
    assert_int_equal(loom_sched_queued(s), 0);
    s_fill(s, m, 10, 12);
    size_t n = 0;
    for (loom_sched_item *it; (it = loom_sched_map_pop_failed(m)); n++) {
        assert_int_equal(it->status, LOOM_ECANCELED);
        assert_string_equal(it->reason, "not run: map halted after 2 failures");
        loom_sched_item_free(&it);
    }
    assert_int_equal(n, 12);
    //  The worker's late results are dropped.
    assert_null(loom_sched_take(s, w, m, 1));
    loom_sched_map_set_count(m, 12);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_DONE);

    loom_sched_def def = {
        .plugin = "testkit", .task = "sum", .reduce = true, .halt_after_failures = 1};
    loom_sched_map *r = loom_sched_map_new(s, &def, NULL, 2);
    s_fill(s, r, 0, 3);
    loom_sched_map_add_partial(r, "1", 1);
    assert_true(loom_sched_map_count_failures(r, 1));
    loom_sched_map_halt(s, r);
    const char *why = NULL;
    assert_int_equal(loom_sched_map_fold_error(r, &why), LOOM_ECANCELED);
    assert_string_equal(why, "not run: map halted after 1 failure");
    loom_sched_destroy(&s); //  frees the failed items not popped
}

//  A map reopened after a broker restart counts the failures its client
//  had before.
static void
test_halt_counts_failures_seen_before(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_def def = {
        .plugin = "testkit", .task = "fail", .halt_after_failures = 3, .failures_seen = 2};
    loom_sched_map *m = loom_sched_map_new(s, &def, NULL, 1);
    assert_true(loom_sched_map_count_failures(m, 1));
    loom_sched_map *never = s_map(s, 1, 0, 0);
    assert_false(loom_sched_map_count_failures(never, 1000));
    loom_sched_destroy(&s);
}

//  Waiting items are freed with their map and with the scheduler (the
//  sanitizer build checks for leaks).
static void
test_waiting_items_freed(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 4, 5, 0);
    loom_sched_map *k = s_map(s, 4, 5, 0);
    s_fill(s, m, 0, 4);
    s_fill(s, k, 0, 4);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    while (loom_sched_next_batch(s, &b))
        for (size_t i = 0; i < b.n; i++)
            assert_true(loom_sched_retry_failed(s, w, b.map, b.items[i]->index, LOOM_ETASK, 0));
    assert_int_equal(loom_sched_queued(s), 8);
    loom_sched_map_destroy(s, &m);
    assert_int_equal(loom_sched_queued(s), 4);
    loom_sched_destroy(&s);
}

static void
test_worker_exit_reasons(void **state)
{
    (void)state;
    char text[256];
    bool clean;
    loom_wire_worker_exit we = {.pid = 42, .signal = SIGSEGV, .max_rss = 5 << 20};
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ECRASHED);
    assert_string_equal(text, "worker process 42 killed by signal 11 (SIGSEGV)");
    assert_false(clean);
    //  SIGKILL says how much it held: the kernel's OOM killer sends it.
    we = (loom_wire_worker_exit){.pid = 42, .signal = SIGKILL, .max_rss = 300u << 20};
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ECRASHED);
    assert_string_equal(text, "worker process 42 killed by signal 9 (SIGKILL) holding 300 MiB");
    //  ... with the OOM killer seen at work: out of memory.
    we.oom_kill = true;
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ENOMEM);
    assert_string_equal(text, "worker process 42 ran out of memory: killed by the kernel's OOM "
                              "killer (SIGKILL) holding 300 MiB");
    //  ... or over its --max-rss.
    we = (loom_wire_worker_exit){
        .pid = 42, .signal = SIGKILL, .max_rss = 300u << 20, .rss_limit = 200u << 20};
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ENOMEM);
    assert_string_equal(text, "worker process 42 ran out of memory: killed by signal 9 (SIGKILL) "
                              "holding 300 MiB, over its limit of 200 MiB (--max-rss)");
    //  The worker process's own exit over --max-rss.
    we = (loom_wire_worker_exit){.pid = 7,
                                 .status = LOOM_WORKER_EXIT_MEMORY,
                                 .max_rss = (100u << 20) + 1,
                                 .rss_limit = 100u << 20};
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ENOMEM);
    assert_string_equal(text, "worker process 7 ran out of memory: it held 101 MiB, over its "
                              "limit of 100 MiB (--max-rss)");
    assert_false(clean);
    //  Status 125 without a limit is only a status.
    we.rss_limit = 0;
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ECRASHED);
    assert_string_equal(text, "worker process 7 exited with status 125");
    //  Clean exits: recycled or stopped (0), a timed-out item answered (124).
    we = (loom_wire_worker_exit){
        .pid = 7, .status = 0, .max_rss = 900u << 20, .rss_limit = 100u << 20};
    assert_int_equal(loom_worker_exit_reason(&we, text, sizeof text, &clean), LOOM_ECRASHED);
    assert_true(clean);
    we.status = 124;
    loom_worker_exit_reason(&we, text, sizeof text, &clean);
    assert_true(clean);
    we.status = 3;
    loom_worker_exit_reason(&we, text, sizeof text, &clean);
    assert_false(clean);
    assert_string_equal(text, "worker process 7 exited with status 3");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_doubles_up_to_the_cap),
        cmocka_unit_test(test_failed_item_retried_after_backoff_on_another_worker),
        cmocka_unit_test(test_retry_on_the_only_worker),
        cmocka_unit_test(test_failure_retries_leave_crash_retries),
        cmocka_unit_test(test_halt_fails_the_rest_as_not_run),
        cmocka_unit_test(test_halt_counts_failures_seen_before),
        cmocka_unit_test(test_waiting_items_freed),
        cmocka_unit_test(test_worker_exit_reasons),
    };
    return cmocka_run_group_tests_name("failure_policy", tests, NULL, NULL);
}
