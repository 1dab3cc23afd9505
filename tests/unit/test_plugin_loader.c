/*  plugin_loader: finding plugins by name, refusing bad names and bad
    plugins with messages that name the cause. The fixtures are found
    through $LOOM_PLUGIN_PATH (build/plugins:build/tests/plugins).  */

#include "loom_test.h"

#include "executor.h"
#include "paths.h"
#include "plugin_loader.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>

static char s_tmp[256]; //  A private directory per test

//  Full path of fixture NAME.so in $LOOM_PLUGIN_PATH, into buf.
static void
s_fixture(const char *name, char *buf, size_t cap)
{
    const char *path = getenv("LOOM_PLUGIN_PATH");
    assert_non_null(path);
    char *copy = strdup(path);
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(buf, cap, "%s/%s.so", dir, name);
        if (access(buf, R_OK) == 0) {
            free(copy);
            return;
        }
    }
    free(copy);
    fail_msg("fixture %s.so not found in %s", name, path);
}

static void
s_copy(const char *from, const char *to)
{
    int in = open(from, O_RDONLY);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    assert_true(in >= 0 && out >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        assert_int_equal(write(out, buf, (size_t)n), n);
    close(in);
    close(out);
}

static void
s_tmp_file(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", s_tmp, name);
}

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/loom-test-loader-%d-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(s_tmp));
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void
test_finds_plugin_by_name_in_path_list(void **state)
{
    (void)state;
    char path[PATH_MAX * 2];
    snprintf(path, sizeof path, "/nonexistent-loom-dir:%s", getenv("LOOM_PLUGIN_PATH"));
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("testkit", path, &lib, &reason), 0);
    assert_null(reason);
    assert_non_null(lib);
    const loom_plugin_def *def = loom_plugin_lib_def(lib);
    assert_string_equal(def->name, "testkit");
    assert_string_equal(def->version, "1.2.3");
    const char *file = loom_plugin_lib_file(lib);
    assert_true(file[0] == '/');
    assert_string_equal(strrchr(file, '/'), "/testkit.so");
    loom_plugin_lib_destroy(&lib);
    assert_null(lib);
    loom_plugin_lib_destroy(&lib);
}

static void
test_null_path_uses_default_path(void **state)
{
    (void)state;
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("echo", NULL, &lib, &reason), 0);
    assert_string_equal(loom_plugin_lib_def(lib)->name, "echo");
    loom_plugin_lib_destroy(&lib);
}

static void
test_default_path_prefers_environment(void **state)
{
    (void)state;
    char *saved = strdup(getenv("LOOM_PLUGIN_PATH"));
    setenv("LOOM_PLUGIN_PATH", "/x/y:/z", 1);
    assert_string_equal(loom_plugin_default_path(), "/x/y:/z");
    unsetenv("LOOM_PLUGIN_PATH");
    const char *dflt = loom_plugin_default_path();
    //  The installed dir, then the build tree's plugins/ dir.
    assert_non_null(strchr(dflt, ':'));
    assert_non_null(strstr(dflt, "plugins"));
    setenv("LOOM_PLUGIN_PATH", saved, 1);
    free(saved);
}

static void
test_finds_libname_form(void **state)
{
    (void)state;
    char from[PATH_MAX], to[PATH_MAX];
    s_fixture("testkit", from, sizeof from);
    s_tmp_file("libtestkit.so", to, sizeof to);
    s_copy(from, to);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("testkit", s_tmp, &lib, &reason), 0);
    assert_string_equal(strrchr(loom_plugin_lib_file(lib), '/'), "/libtestkit.so");
    loom_plugin_lib_destroy(&lib);
}

static void
test_prefers_name_so_over_libname_so(void **state)
{
    (void)state;
    char from[PATH_MAX], to[PATH_MAX];
    s_fixture("echo", from, sizeof from);
    s_tmp_file("echo.so", to, sizeof to);
    s_copy(from, to);
    s_fixture("testkit", from, sizeof from);
    s_tmp_file("libecho.so", to, sizeof to); //  Would be refused: holds 'testkit'
    s_copy(from, to);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("echo", s_tmp, &lib, &reason), 0);
    assert_string_equal(strrchr(loom_plugin_lib_file(lib), '/'), "/echo.so");
    loom_plugin_lib_destroy(&lib);
}

static void
test_refuses_file_holding_another_plugin(void **state)
{
    (void)state;
    char from[PATH_MAX], to[PATH_MAX];
    s_fixture("echo", from, sizeof from);
    s_tmp_file("other.so", to, sizeof to);
    s_copy(from, to);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("other", s_tmp, &lib, &reason), LOOM_EABI);
    assert_null(lib);
    assert_non_null(strstr(reason, "holds plugin 'echo', not 'other'"));
    free(reason);
}

static void
s_expect_bad_name(const char *name, const char *path)
{
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open(name, path, &lib, &reason), LOOM_EINVAL);
    assert_null(lib);
    assert_non_null(reason);
    char quoted[256];
    snprintf(quoted, sizeof quoted, "'%.100s", name);
    assert_non_null(strstr(reason, quoted));
    assert_non_null(strstr(reason, "invalid plugin name"));
    free(reason);
}

static void
test_refuses_bad_names_before_touching_files(void **state)
{
    (void)state;
    //  tmp/x.so and tmp/sub/Foo.so exist, so a loader that went to the
    //  files for "../x" or "Foo" would find something to load.
    char from[PATH_MAX], to[PATH_MAX], sub[PATH_MAX];
    s_fixture("testkit", from, sizeof from);
    s_tmp_file("x.so", to, sizeof to);
    s_copy(from, to);
    s_tmp_file("sub", sub, sizeof sub);
    assert_int_equal(mkdir(sub, 0755), 0);
    s_tmp_file("sub/Foo.so", to, sizeof to);
    s_copy(from, to);
    s_tmp_file("a", to, sizeof to);
    assert_int_equal(mkdir(to, 0755), 0);
    s_tmp_file("a/b.so", to, sizeof to);
    s_copy(from, to);

    s_expect_bad_name("../x", sub);
    s_expect_bad_name("a/b", s_tmp);
    s_expect_bad_name("Foo", sub);
    s_expect_bad_name("", s_tmp);
    s_expect_bad_name("x.so", s_tmp);
    char longname[101];
    memset(longname, 'a', 100);
    longname[100] = 0;
    s_expect_bad_name(longname, s_tmp);
    //  65 is one too many, 64 is fine (and then simply not found).
    longname[65] = 0;
    s_expect_bad_name(longname, s_tmp);
    longname[64] = 0;
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open(longname, s_tmp, &lib, &reason), LOOM_ENOENT);
    free(reason);
    assert_int_equal(loom_plugin_lib_open(NULL, s_tmp, &lib, &reason), LOOM_EINVAL);
    free(reason);
}

static void
test_not_found_message_names_the_path(void **state)
{
    (void)state;
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("nosuch", "/nonexistent-a:/nonexistent-b", &lib, &reason),
                     LOOM_ENOENT);
    assert_null(lib);
    assert_non_null(strstr(reason, "plugin 'nosuch' not found in /nonexistent-a:/nonexistent-b"));
    free(reason);
}

static void
s_expect_refused(const char *name, int code, const char *needle)
{
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open(name, NULL, &lib, &reason), code);
    assert_null(lib);
    assert_non_null(reason);
    if (!strstr(reason, needle))
        fail_msg("reason '%s' lacks '%s'", reason, needle);
    free(reason);
}

static void
test_wrong_major_names_both_versions(void **state)
{
    (void)state;
    s_expect_refused("wrong_major", LOOM_EABI,
                     "was built for loom plugin ABI 2.0, this worker speaks 1.1");
    s_expect_refused("wrong_major", LOOM_EABI, "plugin 'wrong_major' (/");
}

static void
test_rejects_newer_minor(void **state)
{
    (void)state;
    s_expect_refused("newer_minor", LOOM_EABI, "needs a newer worker");
    s_expect_refused("newer_minor", LOOM_EABI, "ABI 1.99, this worker speaks 1.1");
}

static void
test_rejects_plugin_without_entry(void **state)
{
    (void)state;
    s_expect_refused("no_entry", LOOM_EABI, "exports no loom_plugin_entry");
}

static void
test_rejects_file_that_is_not_a_library(void **state)
{
    (void)state;
    char to[PATH_MAX];
    s_tmp_file("junk.so", to, sizeof to);
    FILE *f = fopen(to, "w");
    assert_non_null(f);
    fputs("not an ELF file\n", f);
    fclose(f);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("junk", s_tmp, &lib, &reason), LOOM_EABI);
    assert_non_null(strstr(reason, "cannot be loaded"));
    free(reason);
}

static void
test_open_file_by_path(void **state)
{
    (void)state;
    char file[PATH_MAX];
    s_fixture("squares", file, sizeof file);
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open_file(file, &lib, &reason), 0);
    assert_string_equal(loom_plugin_lib_def(lib)->name, "squares");
    loom_plugin_lib_destroy(&lib);

    s_tmp_file("missing.so", file, sizeof file);
    assert_int_equal(loom_plugin_lib_open_file(file, &lib, &reason), LOOM_ENOENT);
    assert_non_null(strstr(reason, "missing.so"));
    free(reason);

    s_fixture("wrong_major", file, sizeof file);
    assert_int_equal(loom_plugin_lib_open_file(file, &lib, &reason), LOOM_EABI);
    assert_non_null(strstr(reason, "plugin 'wrong_major'"));
    free(reason);
}

static void
test_task_lookup(void **state)
{
    (void)state;
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("squares", NULL, &lib, &reason), 0);
    const loom_task_def *t = loom_plugin_lib_task(lib, "square_text");
    assert_non_null(t);
    assert_string_equal(t->name, "square_text");
    assert_non_null(t->reduce);
    assert_null(loom_plugin_lib_task(lib, "cube"));
    assert_null(loom_plugin_lib_task(lib, NULL));
    assert_string_equal(loom_plugin_lib_task_at(lib, 0)->name, "square");
    assert_string_equal(loom_plugin_lib_task_at(lib, 1)->name, "square_text");
    assert_null(loom_plugin_lib_task_at(lib, 2));
    assert_null(loom_plugin_lib_task_at(lib, 50));
    loom_plugin_lib_destroy(&lib);
}

static void
test_init_failure_fails_open_map(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    char *reason = NULL;
    assert_int_equal(
        loom_executor_open_map(ex, 1, "init_fails", NULL, "echo", NULL, 0, false, &reason),
        LOOM_EINIT);
    assert_non_null(strstr(reason, "plugin 'init_fails' init failed"));
    assert_non_null(strstr(reason, "-1"));
    free(reason);
    assert_false(loom_executor_has_map(ex, 1));

    //  Not retried: the next open fails the same way without calling init.
    char file[PATH_MAX];
    s_fixture("init_fails", file, sizeof file);
    void *h = dlopen(file, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(h);
    int *calls = dlsym(h, "init_fails_calls");
    assert_non_null(calls);
    assert_int_equal(*calls, 1);
    assert_int_equal(
        loom_executor_open_map(ex, 2, "init_fails", NULL, "echo", NULL, 0, false, &reason),
        LOOM_EINIT);
    assert_non_null(strstr(reason, "init failed"));
    free(reason);
    assert_int_equal(*calls, 1);
    dlclose(h);
    loom_executor_destroy(&ex);
}

static void
test_unknown_task_names_task_and_lists_tasks(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    char *reason = NULL;
    assert_int_equal(
        loom_executor_open_map(ex, 1, "squares", NULL, "cube", NULL, 0, false, &reason),
        LOOM_ENOENT);
    assert_non_null(strstr(reason, "plugin 'squares' 1.0.0 has no task 'cube'"));
    assert_non_null(strstr(reason, "square, square_text"));
    free(reason);
    assert_int_equal(
        loom_executor_open_map(ex, 1, "squares", NULL, "../x", NULL, 0, false, &reason),
        LOOM_ENOENT);
    assert_non_null(strstr(reason, "invalid task name"));
    free(reason);
    assert_int_equal(loom_executor_open_map(ex, 1, "nosuch", NULL, "x", NULL, 0, false, &reason),
                     LOOM_ENOENT);
    assert_non_null(strstr(reason, "plugin 'nosuch' not found in "));
    free(reason);
    assert_int_equal(loom_executor_open_map(ex, 1, "a/b", NULL, "x", NULL, 0, false, &reason),
                     LOOM_EINVAL);
    assert_non_null(strstr(reason, "'a/b'"));
    free(reason);
    loom_executor_destroy(&ex);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finds_plugin_by_name_in_path_list),
        cmocka_unit_test(test_null_path_uses_default_path),
        cmocka_unit_test(test_default_path_prefers_environment),
        cmocka_unit_test_setup_teardown(test_finds_libname_form, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_prefers_name_so_over_libname_so, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_file_holding_another_plugin, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_refuses_bad_names_before_touching_files, s_setup,
                                        s_teardown),
        cmocka_unit_test(test_not_found_message_names_the_path),
        cmocka_unit_test(test_wrong_major_names_both_versions),
        cmocka_unit_test(test_rejects_newer_minor),
        cmocka_unit_test(test_rejects_plugin_without_entry),
        cmocka_unit_test_setup_teardown(test_rejects_file_that_is_not_a_library, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_open_file_by_path, s_setup, s_teardown),
        cmocka_unit_test(test_task_lookup),
        cmocka_unit_test(test_init_failure_fails_open_map),
        cmocka_unit_test(test_unknown_task_names_task_and_lists_tasks),
    };
    return cmocka_run_group_tests_name("plugin_loader", tests, NULL, NULL);
}
