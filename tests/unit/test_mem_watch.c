/*  Tests of mem_watch: a process's resident size (what --max-rss is
    checked against) and the kernel's OOM-kill counts.  */

#include "loom_test.h"

#include "mem_watch.h"

#include <stdlib.h>

static void
test_key_value_reads_the_kernel_format(void **state)
{
    (void)state;
    const char *vmstat = "nr_free_pages 5721\noom_kill_extra 9\noom_kill 3\npgfault 12\n";
    uint64_t v = 0;
    assert_true(loom__key_value(vmstat, "oom_kill", &v));
    assert_int_equal(v, 3); //  not oom_kill_extra
    assert_true(loom__key_value(vmstat, "nr_free_pages", &v));
    assert_int_equal(v, 5721);
    assert_false(loom__key_value(vmstat, "oom", &v));
    assert_false(loom__key_value("oom_kill x\n", "oom_kill", &v));
    //  cgroup v2 memory.events and v1 memory.oom_control
    assert_true(loom__key_value("low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n", "oom_kill", &v));
    assert_int_equal(v, 1);
    assert_true(loom__key_value("oom_kill_disable 0\nunder_oom 0\noom_kill 7", "oom_kill", &v));
    assert_int_equal(v, 7);
    assert_false(loom__key_value("", "oom_kill", &v));
}

static void
test_oom_kill_counts_are_found(void **state)
{
    (void)state;
    char path[1200];
    //  Linux has /proc/vmstat (oom_kill since 4.13); the cgroup files
    //  depend on the machine, but a path given is one that can be read.
    assert_true(loom__oom_kill_path(0, path, sizeof path));
    assert_string_equal(path, "/proc/vmstat");
    for (int which = 1; which <= 2; which++)
        if (loom__oom_kill_path(which, path, sizeof path))
            assert_int_equal(access(path, R_OK), 0);
    assert_false(loom__oom_kill_path(3, path, sizeof path));
    uint64_t a = loom__oom_kills(), b = loom__oom_kills();
    assert_true(b >= a);
}

static void
test_rss_grows_with_touched_memory(void **state)
{
    (void)state;
    uint64_t before = loom__rss_self();
    assert_true(before > 0);
    size_t size = 64u << 20;
    volatile char *p = malloc(size);
    assert_non_null((void *)p);
    for (size_t i = 0; i < size; i += 4096)
        p[i] = 1;
    uint64_t after = loom__rss_self();
    assert_true(after >= before + (48u << 20));
    uint64_t rss = 0;
    assert_true(loom__rss_over(after / 2, &rss));
    assert_true(rss > after / 2);
    assert_false(loom__rss_over(after * 4, &rss));
    assert_false(loom__rss_over(0, &rss)); //  no limit
    free((void *)p);
    assert_int_equal(loom__mib(1), 1);
    assert_int_equal(loom__mib(1u << 20), 1);
    assert_int_equal(loom__mib((1u << 20) + 1), 2);
    assert_int_equal(loom__mib(0), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_value_reads_the_kernel_format),
        cmocka_unit_test(test_oom_kill_counts_are_found),
        cmocka_unit_test(test_rss_grows_with_touched_memory),
    };
    return cmocka_run_group_tests_name("mem_watch", tests, NULL, NULL);
}
