/*  test_memory: memory limits and recycling on the embedded cluster
    (loom_client_opts.max_rss_mb, max_tasks), through loom.h: an item over
    the limit fails "out of memory" saying how much it held, leaking
    processes are replaced and lose nothing, a process killed by SIGKILL
    (as the kernel's OOM killer kills) says how much it held, max_tasks
    recycles. Allocations stay at a few hundred MiB: no real OOM killer.

    Plugin: testkit (alloc, leak, oom) through $LOOM_PLUGIN_PATH.  */

#include "loom_test.h"

#include <inttypes.h>
#include <regex.h>

#include <loom/loom.h>

static loom_client *
s_client(int workers, int max_rss_mb, int max_tasks)
{
    loom_client_opts o = {
        .local_workers = workers, .max_rss_mb = max_rss_mb, .max_tasks = max_tasks};
    loom_client *c = loom_client_new(NULL, &o);
    assert_non_null(c);
    return c;
}

//  The number in the first group of pattern matched against text; -1 if
//  it does not match.
static long
s_match(const char *pattern, const char *text)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED), 0);
    regmatch_t m[2];
    long v = -1;
    if (text && regexec(&re, text, 2, m, 0) == 0)
        v = m[1].rm_so >= 0 ? strtol(text + m[1].rm_so, NULL, 10) : 0;
    regfree(&re);
    return v;
}

//  Item 1 wants 300 MiB under a limit of 100: each of its runs (the first
//  and its two retries, alone on fresh processes) ends its process; then
//  it fails with LOOM_ENOMEM saying how much it held. The others succeed.
static void
test_item_over_max_rss_fails_out_of_memory(void **state)
{
    (void)state;
    loom_client *c = s_client(2, 100, 0);
    loom_pipeline *p = loom_pipeline_new(c, "rss");
    loom_map_opts o = {.ordered = true};
    loom_map *m = loom_map_new(p, "testkit", "alloc", &o);
    assert_non_null(m);
    const char *in[] = {"10", "300", "10", "20", "10"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(loom_map_submit(m, in[i], strlen(in[i])), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    for (uint64_t i = 0; i < 5; i++) {
        assert_int_equal(loom_map_next(m, &r, 60000), 1);
        assert_int_equal(r.index, i);
        if (i != 1) {
            assert_int_equal(r.status, 0);
            continue;
        }
        if (r.status != LOOM_ENOMEM)
            fprintf(stderr, "test_memory: item 1: %d %s\n", r.status, r.error ? r.error : "");
        assert_int_equal(r.status, LOOM_ENOMEM);
        long held = s_match("^worker process [0-9]+ ran out of memory: it held ([0-9]+) MiB, over "
                            "its limit of 100 MiB \\(--max-rss\\)$",
                            r.error);
        assert_true(held > 100 && held <= 400);
    }
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  Items that leak 30 MiB each under a limit of 150: processes are
//  replaced as they fill up (after a batch, or during an item, which then
//  runs again on a fresh one), no item fails, none held much more.
static void
test_leaking_processes_are_replaced(void **state)
{
    (void)state;
    loom_client *c = s_client(1, 150, 0);
    loom_pipeline *p = loom_pipeline_new(c, "leak");
    loom_map_opts o = {.chunk = 1, .ordered = true};
    loom_map *m = loom_map_new(p, "testkit", "leak", &o);
    assert_non_null(m);
    const uint64_t n = 16;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(loom_map_submit(m, "30", 2), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    long pids[64];
    size_t npids = 0;
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(loom_map_next(m, &r, 60000), 1);
        if (r.status != 0)
            fprintf(stderr, "test_memory: item %" PRIu64 ": %s\n", r.index, r.error);
        assert_int_equal(r.status, 0);
        char text[64];
        snprintf(text, sizeof text, "%.*s", (int)r.len, (const char *)r.data);
        long pid = 0, total = 0;
        assert_int_equal(sscanf(text, "%ld %ld", &pid, &total), 2);
        assert_true(total >= 30 && total <= 150);
        bool seen = false;
        for (size_t k = 0; k < npids; k++)
            seen |= pids[k] == pid;
        if (!seen && npids < 64)
            pids[npids++] = pid;
    }
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    //  16 x 30 MiB is 480: at least 4 processes of at most 150.
    assert_true(npids >= 4);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  A process killed by SIGKILL while it holds 200 MiB, as the kernel's
//  OOM killer would kill it: the item's error says how much it held.
static void
test_sigkill_says_how_much_it_held(void **state)
{
    (void)state;
    loom_client *c = s_client(1, 0, 0);
    loom_pipeline *p = loom_pipeline_new(c, "oom");
    loom_map_opts o = {.retries = -1};
    loom_map *m = loom_map_new(p, "testkit", "oom", &o);
    assert_non_null(m);
    assert_int_equal(loom_map_submit(m, "200", 3), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 60000), 1);
    //  LOOM_ENOMEM only if the kernel's OOM killer happened to kill
    //  something on this machine meanwhile: the supervisor would say so.
    assert_true(r.status == LOOM_ECRASHED || r.status == LOOM_ENOMEM);
    long held =
        s_match("^worker process [0-9]+ (killed by signal 9 \\(SIGKILL\\)|ran out of memory: "
                "killed by the kernel's OOM killer \\(SIGKILL\\)) holding ([0-9]+) MiB$",
                r.error);
    assert_true(held != -1);
    held = s_match("holding ([0-9]+) MiB$", r.error);
    assert_true(held >= 200 && held <= 300);
    assert_int_equal(loom_map_next(m, &r, 60000), 0);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

//  max_tasks on the embedded cluster: a process runs 3 items, then a new
//  one takes its place; nothing is lost.
static void
test_max_tasks_recycles_on_the_embedded_cluster(void **state)
{
    (void)state;
    loom_client *c = s_client(1, 0, 3);
    loom_pipeline *p = loom_pipeline_new(c, "max-tasks");
    loom_map_opts o = {.chunk = 1};
    loom_map *m = loom_map_new(p, "testkit", "leak", &o);
    assert_non_null(m);
    const uint64_t n = 12;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(loom_map_submit(m, "0", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    long pids[64];
    int runs[64] = {0};
    size_t npids = 0;
    loom_result r;
    int rc;
    uint64_t got = 0;
    while ((rc = loom_map_next(m, &r, 60000)) == 1) {
        assert_int_equal(r.status, 0);
        long pid = strtol((const char *)r.data, NULL, 10);
        size_t k = 0;
        while (k < npids && pids[k] != pid)
            k++;
        if (k == npids)
            pids[npids++] = pid;
        runs[k]++;
        got++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(got, n);
    assert_true(npids >= 4);
    for (size_t k = 0; k < npids; k++)
        assert_true(runs[k] <= 3);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
}

static void
test_bad_limits_refused(void **state)
{
    (void)state;
    loom_client_opts o = {.local_workers = 1, .max_rss_mb = -1};
    assert_null(loom_client_new(NULL, &o));
    o = (loom_client_opts){.local_workers = 1, .max_tasks = -5};
    assert_null(loom_client_new(NULL, &o));
    //  A remote broker's workers have their own limits.
    o = (loom_client_opts){.max_rss_mb = 100};
    assert_null(loom_client_new("ipc:///tmp/loom-test-nowhere", &o));
}

int
main(void)
{
    //  The items' errors are the supervisor's word on how a process ended,
    //  which must come before the broker takes the process for silent: on a
    //  loaded machine 3 x 100 ms (the tests' heartbeat) can pass while a
    //  process pages in 300 MiB. The embedded clusters here get 250 ms.
    setenv("LOOM_HEARTBEAT_MS", "250", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_over_max_rss_fails_out_of_memory),
        cmocka_unit_test(test_leaking_processes_are_replaced),
        cmocka_unit_test(test_sigkill_says_how_much_it_held),
        cmocka_unit_test(test_max_tasks_recycles_on_the_embedded_cluster),
        cmocka_unit_test(test_bad_limits_refused),
    };
    return cmocka_run_group_tests_name("memory", tests, NULL, NULL);
}
