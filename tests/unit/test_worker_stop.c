/*  worker_stop: the cancel grace and init timeout decisions, and the init
    marker a dying worker process leaves its supervisor.  */

#include "loom_test.h"

#include "worker_stop.h"

#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>

static void
test_nothing_watched_does_nothing(void **state)
{
    (void)state;
    loom__stopwatch sw;
    memset(&sw, 0, sizeof sw);
    loom__stopwatch_clear(&sw);
    assert_int_equal(loom__stopwatch_due(&sw, 1000000, true), 0);
    assert_false(loom__stopwatch_cancel(&sw, 7, 1000));
    assert_int_equal(atomic_load(&sw.cancelled), 0);
    assert_true(loom__stopwatch_next(&sw) == INT64_MAX);
}

static void
test_cancel_grace_for_a_running_item(void **state)
{
    (void)state;
    loom__stopwatch sw;
    memset(&sw, 0, sizeof sw);
    loom__stopwatch_items(&sw, 7);
    assert_false(loom__stopwatch_cancel(&sw, 8, 1000)); //  another map
    assert_int_equal(atomic_load(&sw.cancelled), 0);
    assert_true(loom__stopwatch_cancel(&sw, 7, 1000));
    assert_int_equal(atomic_load(&sw.cancelled), 1);   //  the task is told at once
    assert_true(loom__stopwatch_cancel(&sw, 7, 1500)); //  a second Cancel keeps the first time
    assert_int_equal(loom__stopwatch_due(&sw, 1000 + LOOM_CANCEL_GRACE_MS - 1, true), 0);
    assert_int_equal(loom__stopwatch_due(&sw, 1000 + LOOM_CANCEL_GRACE_MS, true),
                     LOOM_WORKER_EXIT_CANCELLED);
    //  Between two items the main thread stops the batch itself.
    assert_int_equal(loom__stopwatch_due(&sw, 1000 + LOOM_CANCEL_GRACE_MS, false), 0);
    assert_true(loom__stopwatch_next(&sw) == 1000 + LOOM_CANCEL_GRACE_MS);
    loom__stopwatch_clear(&sw);
    assert_int_equal(atomic_load(&sw.cancelled), 0);
    assert_int_equal(loom__stopwatch_due(&sw, 5000, true), 0);
}

static void
test_init_timeout_and_cancel(void **state)
{
    (void)state;
    loom__stopwatch sw;
    memset(&sw, 0, sizeof sw);
    loom__stopwatch_init(&sw, 3, "p", 500, 10000);
    assert_int_equal(loom__stopwatch_due(&sw, 10499, false), 0);
    assert_int_equal(loom__stopwatch_due(&sw, 10500, false), LOOM_WORKER_EXIT_INIT);
    assert_true(loom__stopwatch_next(&sw) == 10500);
    //  No timeout: only a cancel ends it.
    loom__stopwatch_init(&sw, 3, "p", 0, 10000);
    assert_int_equal(loom__stopwatch_due(&sw, 99999999, false), 0);
    assert_true(loom__stopwatch_cancel(&sw, 3, 20000));
    assert_int_equal(loom__stopwatch_due(&sw, 20000 + LOOM_CANCEL_GRACE_MS, false),
                     LOOM_WORKER_EXIT_CANCELLED);
}

//  A child writes its marker and dies as told; the "supervisor" reads it.
static void
s_marker_case(const char *dir, int how, const char *needle)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        loom__init_mark(dir, 42, "myplugin", 700);
        if (how == 0) {
            signal(SIGSEGV, SIG_DFL); //  cmocka catches it otherwise
            raise(SIGSEGV);
        }
        _exit(how);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    uint64_t map = 0;
    char error[256];
    assert_true(loom__init_marker_take(dir, pid, st, &map, error, sizeof error));
    assert_true(map == 42);
    if (!strstr(error, needle))
        fail_msg("'%s' lacks '%s'", error, needle);
    //  Taken: gone.
    assert_false(loom__init_marker_take(dir, pid, st, &map, error, sizeof error));
}

static void
test_init_marker_names_init_and_the_cause(void **state)
{
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/loom-test-%d-stop-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(dir));
    s_marker_case(dir, 0, "plugin 'myplugin' init crashed worker process");
    s_marker_case(dir, 0, "killed by signal 11 (SIGSEGV)");
    s_marker_case(dir, LOOM_WORKER_EXIT_INIT, "plugin 'myplugin' init timed out after 700 ms");
    s_marker_case(dir, 3, "init ended worker process");
    //  No marker: the process did not die in an init.
    uint64_t map = 0;
    char error[64];
    assert_false(loom__init_marker_take(dir, 1, 0, &map, error, sizeof error));
    //  One left by a process that had our pid is removed at start.
    assert_int_equal(loom__init_mark(dir, 5, "p", 1), 0);
    loom__init_unmark(dir);
    assert_false(loom__init_marker_take(dir, getpid(), 0, &map, error, sizeof error));
    assert_false(loom__init_marker_take(NULL, getpid(), 0, &map, error, sizeof error));
    assert_int_equal(rmdir(dir), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_watched_does_nothing),
        cmocka_unit_test(test_cancel_grace_for_a_running_item),
        cmocka_unit_test(test_init_timeout_and_cancel),
        cmocka_unit_test(test_init_marker_names_init_and_the_cause),
    };
    return cmocka_run_group_tests_name("worker_stop", tests, NULL, NULL);
}
