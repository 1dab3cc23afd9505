/*  Plugin ABI 1.0, frozen: every offset and size of the structs a plugin
    and a worker share, checked at compile time on x86_64 LP64, and the
    loader's accept/reject decisions checked at run time (with the mutant
    fixture, whose descriptor $LOOM_MUTANT breaks one way at a time).

    If a _Static_assert here fails, the change broke every plugin built so
    far: append fields instead, and bump LOOM_PLUGIN_ABI_MINOR.  */

#include "loom_test.h"

#include "executor.h"
#include "plugin_loader.h"

#include <loom/plugin.h>

//  Constants
_Static_assert(LOOM_PLUGIN_MAGIC == 0x4d4f4f4cu, "magic is \"LOOM\"");
_Static_assert(LOOM_PLUGIN_ABI_MAJOR == 1, "ABI major");
_Static_assert(LOOM_PLUGIN_ABI_MINOR == 1, "ABI minor: update this file when appending");

//  Error codes travel in messages: frozen too.
_Static_assert(LOOM_OK == 0 && LOOM_EINVAL == -1 && LOOM_ENOMEM == -2 && LOOM_EPROTO == -3 &&
                   LOOM_EABI == -4 && LOOM_ENOENT == -5 && LOOM_ETIMEDOUT == -6 &&
                   LOOM_ETASK == -7 && LOOM_ECRASHED == -8 && LOOM_ENOTSUP == -9 &&
                   LOOM_EIO == -10 && LOOM_ECANCELED == -11 && LOOM_EVERSION == -12 &&
                   LOOM_ECONNECT == -13 && LOOM_ETOOBIG == -14 && LOOM_EAGAIN == -15 &&
                   LOOM_ESTATE == -16 && LOOM_EACCES == -17 && LOOM_EINIT == -18,
               "error codes are frozen");

#if defined(__x86_64__) && defined(__LP64__)
#define S_AT(type, field, off)                                                                     \
    _Static_assert(offsetof(type, field) == (off), #type "." #field " moved")

//  loom_plugin_def 1.0
S_AT(loom_plugin_def, magic, 0);
S_AT(loom_plugin_def, abi_major, 4);
S_AT(loom_plugin_def, abi_minor, 6);
S_AT(loom_plugin_def, struct_size, 8);
S_AT(loom_plugin_def, task_size, 12);
S_AT(loom_plugin_def, flags, 16);
S_AT(loom_plugin_def, name, 24);
S_AT(loom_plugin_def, version, 32);
S_AT(loom_plugin_def, tasks, 40);
S_AT(loom_plugin_def, init, 48);
S_AT(loom_plugin_def, fini, 56);
_Static_assert(LOOM_PLUGIN_SIZE_1_0 == 64, "1.0 descriptor size");
_Static_assert(sizeof(((loom_plugin_def *)0)->magic) == 4, "magic width");
_Static_assert(sizeof(((loom_plugin_def *)0)->abi_major) == 2, "abi_major width");
_Static_assert(sizeof(((loom_plugin_def *)0)->abi_minor) == 2, "abi_minor width");

//  loom_task_def 1.0
S_AT(loom_task_def, name, 0);
S_AT(loom_task_def, run, 8);
S_AT(loom_task_def, reduce, 16);
S_AT(loom_task_def, doc, 24);
_Static_assert(sizeof(loom_task_def) >= 32, "1.0 task definition size");

//  loom_host 1.0
S_AT(loom_host, struct_size, 0);
S_AT(loom_host, abi_minor, 4);
S_AT(loom_host, input, 8);
S_AT(loom_host, args, 16);
S_AT(loom_host, output, 24);
S_AT(loom_host, vfail, 32);
S_AT(loom_host, vlog, 40);
S_AT(loom_host, state, 48);
S_AT(loom_host, task_worker_id, 56);
S_AT(loom_host, worker_id, 64);
S_AT(loom_host, index, 72);
S_AT(loom_host, shared, 80);
S_AT(loom_host, shared_path, 88);
S_AT(loom_host, file, 96);
S_AT(loom_host, output_file, 104);
_Static_assert(LOOM_HOST_SIZE_1_0 == 112, "1.0 host table size");

//  loom_host 1.1: appended after the 1.0 table, which is unchanged
S_AT(loom_host, cancelled, 112);
S_AT(loom_host, worker_vfail, 120);
_Static_assert(LOOM_HOST_SIZE_1_1 == 128, "1.1 host table size");

//  What a plugin sees of a task and a worker: the host pointer, first.
S_AT(struct loom_task, host, 0);
S_AT(struct loom_worker, host, 0);
#endif

//  The entry symbol's name is part of the ABI too.
static void
test_entry_symbol_name(void **state)
{
    (void)state;
    assert_string_equal(LOOM_PLUGIN_ENTRY_NAME, "loom_plugin_entry");
    const unsigned char magic[4] = {'L', 'O', 'O', 'M'};
    uint32_t m;
    memcpy(&m, magic, 4);
    assert_int_equal(m, LOOM_PLUGIN_MAGIC); //  little-endian hosts
}

//  Load plugin `name` with $LOOM_MUTANT set to `how`; returns the code and
//  checks the reason contains `needle` (when not NULL).
static int
s_load(const char *name, const char *how, const char *needle)
{
    if (how)
        setenv("LOOM_MUTANT", how, 1);
    else
        unsetenv("LOOM_MUTANT");
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    int rc = loom_plugin_lib_open(name, NULL, &lib, &reason);
    if (rc == 0) {
        assert_non_null(lib);
        assert_null(reason);
        loom_plugin_lib_destroy(&lib);
    } else {
        assert_null(lib);
        assert_non_null(reason);
        if (needle && !strstr(reason, needle))
            fail_msg("%s (%s): reason '%s' lacks '%s'", name, how ? how : "-", reason, needle);
        free(reason);
    }
    unsetenv("LOOM_MUTANT");
    return rc;
}

static void
test_accepts_good_plugins(void **state)
{
    (void)state;
    assert_int_equal(s_load("testkit", NULL, NULL), 0);
    assert_int_equal(s_load("squares", NULL, NULL), 0);
    assert_int_equal(s_load("wordcount", NULL, NULL), 0);
    assert_int_equal(s_load("echo", NULL, NULL), 0);
    assert_int_equal(s_load("mutant", NULL, NULL), 0);
    //  init_fails loads fine: its init runs later, in the executor.
    assert_int_equal(s_load("init_fails", NULL, NULL), 0);
}

static void
test_rejects_other_major(void **state)
{
    (void)state;
    assert_int_equal(s_load("wrong_major", NULL, "ABI 2.0, this worker speaks 1.1"), LOOM_EABI);
}

static void
test_rejects_newer_minor(void **state)
{
    (void)state;
    assert_int_equal(s_load("newer_minor", NULL, "needs a newer worker"), LOOM_EABI);
}

static void
test_rejects_missing_entry(void **state)
{
    (void)state;
    assert_int_equal(s_load("no_entry", NULL, "exports no loom_plugin_entry"), LOOM_EABI);
}

static void
test_rejects_broken_descriptors(void **state)
{
    (void)state;
    static const struct {
        const char *how;
        const char *needle;
    } cases[] = {
        {"null", "no loom descriptor"},
        {"not_loom", "no loom descriptor"},
        {"bad_magic", "bad magic"},
        {"truncated", "descriptor is truncated (56 bytes, a 1.0 descriptor has 64)"},
        {"no_name", "descriptor has no name"},
        {"no_version", "descriptor has no version"},
        {"no_tasks", "descriptor has no task table"},
        {"bad_plugin_name", "names itself 'Mutant'"},
        {"other_name", "holds plugin 'someone_else', not 'mutant'"},
        {"small_task_size", "task definitions are truncated"},
        {"bad_task_name", "invalid name 'Echo'"},
        {"no_run", "task 'echo' has no run function"},
        {"zero_tasks", "defines no tasks"},
        {"dup_task", "task 'echo' is defined twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(s_load("mutant", cases[i].how, cases[i].needle), LOOM_EABI);
    //  After all those refusals the good descriptor still loads.
    assert_int_equal(s_load("mutant", NULL, NULL), 0);
}

//  A descriptor and task table from a later minor (bigger structs, same
//  major, abi_minor not above ours) load, and tasks are read with the
//  plugin's stride.
static void
test_accepts_bigger_structs_and_uses_task_stride(void **state)
{
    (void)state;
    setenv("LOOM_MUTANT", "wide", 1);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("mutant", NULL, &lib, &reason), 0);
    const loom_plugin_def *def = loom_plugin_lib_def(lib);
    assert_true(def->struct_size > LOOM_PLUGIN_SIZE_1_0);
    assert_true(def->task_size > sizeof(loom_task_def));
    assert_string_equal(loom_plugin_lib_task_at(lib, 0)->name, "echo");
    assert_string_equal(loom_plugin_lib_task_at(lib, 1)->name, "twice");
    assert_null(loom_plugin_lib_task_at(lib, 2));
    assert_non_null(loom_plugin_lib_task(lib, "twice"));
    loom_plugin_lib_destroy(&lib);

    loom_executor *ex = loom_executor_new(NULL, 1);
    assert_int_equal(
        loom_executor_open_map(ex, 1, "mutant", NULL, "twice", NULL, 0, false, &reason), 0);
    unsetenv("LOOM_MUTANT");
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, "ab", 2, &out), 0);
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.data, "abab", 4);
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
}

//  A plugin built for ABI 1.0 (minor 0, a 1.0 descriptor) loads and runs
//  on this 1.1 worker.
static void
test_accepts_plugins_of_the_old_minor(void **state)
{
    (void)state;
    assert_int_equal(s_load("mutant", "minor0", NULL), 0);
    setenv("LOOM_MUTANT", "minor0", 1);
    loom_executor *ex = loom_executor_new(NULL, 1);
    char *reason = NULL;
    assert_int_equal(loom_executor_open_map(ex, 1, "mutant", NULL, "echo", NULL, 0, false, &reason),
                     0);
    unsetenv("LOOM_MUTANT");
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, "ab", 2, &out), 0);
    assert_int_equal(out.len, 2);
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
}

//  A 1.1 plugin's wrappers on a 1.0 worker's host table (shorter): they
//  never call past its end, and fall back.
static int
s_never(loom_task *t)
{
    (void)t;
    fail_msg("a 1.1 function was called through a 1.0 host table");
    return 0;
}

static void
test_new_calls_fall_back_on_an_old_host(void **state)
{
    (void)state;
    struct {
        loom_host host;
    } old;
    memset(&old, 0, sizeof old);
    old.host.struct_size = (uint32_t)LOOM_HOST_SIZE_1_0;
    old.host.abi_minor = 0;
    old.host.cancelled = s_never; //  beyond the 1.0 size: must not be read
    struct loom_task t = {.host = &old.host};
    struct loom_worker w = {.host = &old.host};
    assert_int_equal(loom_task_cancelled(&t), 0);
    assert_int_equal(loom_worker_fail(&w, "no %s", "reason"), LOOM_EINIT);
    assert_false(LOOM_HOST_HAS(&old.host, worker_vfail));
    old.host.struct_size = (uint32_t)LOOM_HOST_SIZE_1_1;
    assert_true(LOOM_HOST_HAS(&old.host, worker_vfail));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_symbol_name),
        cmocka_unit_test(test_accepts_good_plugins),
        cmocka_unit_test(test_rejects_other_major),
        cmocka_unit_test(test_rejects_newer_minor),
        cmocka_unit_test(test_rejects_missing_entry),
        cmocka_unit_test(test_rejects_broken_descriptors),
        cmocka_unit_test(test_accepts_bigger_structs_and_uses_task_stride),
        cmocka_unit_test(test_accepts_plugins_of_the_old_minor),
        cmocka_unit_test(test_new_calls_fall_back_on_an_old_host),
    };
    return cmocka_run_group_tests_name("plugin_abi", tests, NULL, NULL);
}
