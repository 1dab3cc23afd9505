/*  executor: running tasks and folds in-process, with the testkit fixture
    and the shipped plugins (squares, wordcount, echo), found through
    $LOOM_PLUGIN_PATH.  */

#include "loom_test.h"

#include "executor.h"
#include "plugin_loader.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <limits.h>

//  Open map 1 of executor ex on plugin/task, asserting success.
static void
s_open(loom_executor *ex, uint64_t id, const char *plugin, const char *task, bool reduce)
{
    char *reason = NULL;
    int rc = loom_executor_open_map(ex, id, plugin, NULL, task, NULL, 0, reduce, &reason);
    if (rc)
        fail_msg("open %s/%s: %d %s", plugin, task, rc, reason);
    assert_null(reason);
}

//  Run a text item, asserting the status; returns the output as a string
//  (caller frees) or the error message for a failure.
static char *
s_run(loom_executor *ex, uint64_t id, const char *input, int status)
{
    loom_exec_out out;
    int rc = loom_executor_run(ex, id, 7, input, strlen(input), &out);
    if (rc != status)
        fail_msg("run '%s': %d, want %d (%s)", input, rc, status, out.error ? out.error : "");
    assert_int_equal(out.status, rc);
    char *text;
    if (rc == 0) {
        assert_null(out.error);
        text = malloc(out.len + 1);
        if (out.len)
            memcpy(text, out.data, out.len);
        text[out.len] = 0;
    } else {
        assert_null(out.data);
        assert_int_equal(out.len, 0);
        assert_non_null(out.error);
        text = strdup(out.error);
    }
    loom_exec_out_clear(&out);
    return text;
}

static void
s_expect(loom_executor *ex, uint64_t id, const char *input, int status, const char *want)
{
    char *got = s_run(ex, id, input, status);
    if (status == 0)
        assert_string_equal(got, want);
    else if (!strstr(got, want))
        fail_msg("error '%s' lacks '%s'", got, want);
    free(got);
}

//  Fold two text outputs with map id's reduce.
static char *
s_fold(loom_executor *ex, uint64_t id, const char *a, const char *b, int status)
{
    loom_exec_out out;
    int rc = loom_executor_reduce(ex, id, a, strlen(a), b, strlen(b), &out);
    if (rc != status)
        fail_msg("fold: %d, want %d (%s)", rc, status, out.error ? out.error : "");
    char *text = rc ? strdup(out.error) : strndup(out.data ? out.data : "", out.len);
    loom_exec_out_clear(&out);
    return text;
}

//  An int exported by the loaded testkit (its init and fini counters).
static int *
s_testkit_counter(const char *symbol)
{
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    assert_int_equal(loom_plugin_lib_open("testkit", NULL, &lib, &reason), 0);
    void *h = dlopen(loom_plugin_lib_file(lib), RTLD_NOW | RTLD_NOLOAD);
    loom_plugin_lib_destroy(&lib);
    assert_non_null(h);
    int *counter = dlsym(h, symbol);
    assert_non_null(counter);
    dlclose(h); //  Still loaded: the loader keeps its own reference
    return counter;
}

static void
test_runs_echo_and_passes_index(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 3);
    s_open(ex, 1, "testkit", "echo", false);
    s_open(ex, 2, "testkit", "index", false);
    assert_true(loom_executor_has_map(ex, 1));
    s_expect(ex, 1, "hello", 0, "hello");

    //  Binary input with a NUL, and empty input (no data, len 0).
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, "a\0b", 3, &out), 0);
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.data, "a\0b", 3);
    loom_exec_out_clear(&out);
    assert_null(out.data);
    assert_int_equal(loom_executor_run(ex, 1, 0, NULL, 0, &out), 0);
    assert_null(out.data);
    assert_int_equal(out.len, 0);
    assert_null(out.error);

    assert_int_equal(loom_executor_run(ex, 2, 12345678901ull, "", 0, &out), 0);
    assert_int_equal(out.len, 11);
    assert_memory_equal(out.data, "12345678901", 11);
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
    assert_null(ex);
    loom_executor_destroy(&ex);
}

static void
test_fail_gives_task_error_with_message(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "fail", false);
    s_expect(ex, 1, "bad apple", LOOM_ETASK, "testkit fail: input was 'bad apple'");

    //  A long message is kept, up to the cap of about 4 KiB.
    char big[10000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    char *msg = s_run(ex, 1, big, LOOM_ETASK);
    assert_true(strlen(msg) > 4000 && strlen(msg) < 4097);
    assert_non_null(strstr(msg, "input was 'zzzz"));
    free(msg);
    loom_executor_destroy(&ex);
}

static void
test_nonzero_return_without_fail_is_task_error(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "ret", false);
    s_expect(ex, 1, "-5", LOOM_ETASK, "task returned -5 (no such plugin");
    s_expect(ex, 1, "-7", LOOM_ETASK, "task returned -7 (task failed)");
    s_expect(ex, 1, "2", LOOM_ETASK, "task returned 2 (No such file or directory)");
    s_expect(ex, 1, "0", 0, "");
    loom_executor_destroy(&ex);
}

static void
test_args_are_copied_and_given_to_tasks(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    char args[] = {'k', '=', 0, 'v'};
    char *reason = NULL;
    assert_int_equal(
        loom_executor_open_map(ex, 1, "testkit", NULL, "args", args, sizeof args, false, &reason),
        0);
    memset(args, 'X', sizeof args); //  The executor kept its own copy
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, "", 0, &out), 0);
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.data, "k=\0v", 4);
    loom_exec_out_clear(&out);

    //  Reopening an id replaces the map: no args now.
    s_open(ex, 1, "testkit", "args", false);
    s_expect(ex, 1, "", 0, "");
    loom_executor_destroy(&ex);
}

static void
test_worker_id_and_state(void **state)
{
    (void)state;
    int *init_calls = s_testkit_counter("testkit_init_calls");
    int before = *init_calls;
    loom_executor *ex = loom_executor_new(NULL, 42);
    s_open(ex, 1, "testkit", "workerid", false);
    s_expect(ex, 1, "", 0, "42");
    loom_executor_destroy(&ex);
    assert_int_equal(*init_calls, before + 1);
}

static void
test_init_runs_once_per_executor_and_fini_at_destroy(void **state)
{
    (void)state;
    int *init_calls = s_testkit_counter("testkit_init_calls");
    int *fini_calls = s_testkit_counter("testkit_fini_calls");
    int inits = *init_calls, finis = *fini_calls;

    loom_executor *ex = loom_executor_new(NULL, 1);
    assert_int_equal(*init_calls, inits); //  Lazily: nothing opened yet
    s_open(ex, 1, "testkit", "state", false);
    assert_int_equal(*init_calls, inits + 1);
    s_open(ex, 2, "testkit", "echo", false);
    s_open(ex, 3, "testkit", "state", false);
    loom_executor_close_map(ex, 1);
    assert_false(loom_executor_has_map(ex, 1));
    s_open(ex, 1, "testkit", "state", false);
    assert_int_equal(*init_calls, inits + 1);

    //  The state init stored is what tasks see.
    char want[16];
    snprintf(want, sizeof want, "%d", inits + 1);
    for (int i = 0; i < 5; i++)
        s_expect(ex, 3, "", 0, want);
    assert_int_equal(*init_calls, inits + 1);
    assert_int_equal(*fini_calls, finis);
    loom_executor_destroy(&ex);
    assert_int_equal(*fini_calls, finis + 1);

    //  An executor that never opened a map inits and finis nothing.
    ex = loom_executor_new(NULL, 1);
    loom_executor_destroy(&ex);
    assert_int_equal(*init_calls, inits + 1);
    assert_int_equal(*fini_calls, finis + 1);
}

static void
test_output_grows_and_is_capped(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "big", false);
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, "1000000", 7, &out), 0);
    assert_int_equal(out.len, 1000000);
    const unsigned char *p = out.data;
    for (size_t i = 0; i < out.len; i++)
        if (p[i] != i % 251)
            fail_msg("byte %zu is %u", i, p[i]);
    loom_exec_out_clear(&out);

    loom_executor_set_max_output(ex, 10000);
    assert_int_equal(loom_executor_run(ex, 1, 0, "10000", 5, &out), 0);
    assert_int_equal(out.len, 10000);
    loom_exec_out_clear(&out);
    assert_int_equal(loom_executor_run(ex, 1, 0, "10001", 5, &out), LOOM_ETOOBIG);
    assert_int_equal(out.status, LOOM_ETOOBIG);
    assert_null(out.data);
    assert_non_null(strstr(out.error, "over the limit of 10000 bytes"));
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
}

//  run_keep lends outputs up to `keep` bytes (the executor's buffer, valid
//  until its next run) and hands larger ones over as run does, also when
//  an output outgrows the buffer midway.
static void
test_run_keep_lends_small_outputs(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "echo", false);
    s_open(ex, 2, "testkit", "twice", false);
    s_open(ex, 3, "testkit", "fail", false);
    loom_exec_out out;
    assert_int_equal(loom_executor_run_keep(ex, 1, 0, "hello", 5, 64, &out), 0);
    assert_true(out.borrowed);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "hello", 5);
    const void *lent = out.data;
    loom_exec_out_clear(&out); //  frees nothing lent (ASan would tell)
    assert_int_equal(loom_executor_run_keep(ex, 1, 0, "again", 5, 64, &out), 0);
    assert_ptr_equal(out.data, lent); //  the same buffer, no allocation
    assert_memory_equal(out.data, "again", 5);
    loom_exec_out_clear(&out);

    //  Over keep, an owned copy; empty: nothing.
    char text[300];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = (char)('a' + i % 26);
    assert_int_equal(loom_executor_run_keep(ex, 1, 0, text, 65, 64, &out), 0);
    assert_false(out.borrowed);
    assert_int_equal(out.len, 65);
    assert_memory_equal(out.data, text, 65);
    free(out.data); //  the caller's
    out.data = NULL;
    loom_exec_out_clear(&out);
    assert_int_equal(loom_executor_run_keep(ex, 1, 0, "", 0, 64, &out), 0);
    assert_false(out.borrowed);
    assert_null(out.data);
    assert_int_equal(out.len, 0);

    //  Outgrowing the buffer: the first part is carried over.
    assert_int_equal(loom_executor_run_keep(ex, 2, 0, text, 200, 64, &out), 0);
    assert_false(out.borrowed);
    assert_int_equal(out.len, 400);
    assert_memory_equal(out.data, text, 200);
    assert_memory_equal((char *)out.data + 200, text, 200);
    loom_exec_out_clear(&out);
    assert_int_equal(loom_executor_run_keep(ex, 2, 0, text, 20, 64, &out), 0);
    assert_true(out.borrowed);
    assert_int_equal(out.len, 40);
    assert_memory_equal((char *)out.data + 20, text, 20);
    loom_exec_out_clear(&out);
    //  A keep over the buffer's size is capped: still correct.
    assert_int_equal(loom_executor_run_keep(ex, 2, 0, text, 300, SIZE_MAX, &out), 0);
    assert_false(out.borrowed);
    assert_int_equal(out.len, 600);
    assert_memory_equal((char *)out.data + 300, text, 300);
    loom_exec_out_clear(&out);

    //  Failures and over-limit outputs lend nothing.
    assert_int_equal(loom_executor_run_keep(ex, 3, 0, "x", 1, 64, &out), LOOM_ETASK);
    assert_false(out.borrowed);
    assert_null(out.data);
    loom_exec_out_clear(&out);
    loom_executor_set_max_output(ex, 10);
    assert_int_equal(loom_executor_run_keep(ex, 2, 0, "abcdef", 6, 64, &out), LOOM_ETOOBIG);
    assert_false(out.borrowed);
    assert_null(out.data);
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
}

static void
test_reduce_folds_with_fresh_context(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "sum", true);
    char *acc = NULL;
    for (int i = 1; i <= 10; i++) {
        char in[8];
        snprintf(in, sizeof in, "%d", i);
        char *item = s_run(ex, 1, in, 0);
        if (!acc)
            acc = item;
        else {
            char *next = s_fold(ex, 1, acc, item, 0);
            free(acc);
            free(item);
            acc = next;
        }
    }
    assert_string_equal(acc, "55");
    free(acc);

    //  A failing reduce gives its message.
    s_open(ex, 2, "testkit", "fail", true);
    char *err = s_fold(ex, 2, "ab", "cde", LOOM_ETASK);
    assert_string_equal(err, "failing reduce of 2 and 3 bytes");
    free(err);
    loom_executor_destroy(&ex);
}

static void
test_reduce_needs_a_reduce_function(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    char *reason = NULL;
    assert_int_equal(loom_executor_open_map(ex, 1, "testkit", NULL, "echo", NULL, 0, true, &reason),
                     LOOM_ENOTSUP);
    assert_non_null(strstr(reason, "task 'echo' of plugin 'testkit' has no reduce"));
    free(reason);
    assert_false(loom_executor_has_map(ex, 1));

    s_open(ex, 1, "testkit", "echo", false);
    char *err = s_fold(ex, 1, "a", "b", LOOM_ENOTSUP);
    assert_non_null(strstr(err, "no reduce"));
    free(err);
    loom_executor_destroy(&ex);
}

static void
test_version_pin(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    char *reason = NULL;
    assert_int_equal(
        loom_executor_open_map(ex, 1, "testkit", "9.9.9", "echo", NULL, 0, false, &reason),
        LOOM_EVERSION);
    assert_non_null(strstr(reason, "1.2.3"));
    assert_non_null(strstr(reason, "9.9.9"));
    assert_non_null(strstr(reason, "testkit"));
    free(reason);
    assert_false(loom_executor_has_map(ex, 1));
    assert_int_equal(
        loom_executor_open_map(ex, 1, "testkit", "1.2.3", "echo", NULL, 0, false, &reason), 0);
    assert_int_equal(loom_executor_open_map(ex, 2, "testkit", "", "echo", NULL, 0, false, &reason),
                     0);
    loom_executor_destroy(&ex);
}

static void
test_unknown_map_id(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 99, 0, "x", 1, &out), LOOM_ENOENT);
    assert_non_null(strstr(out.error, "map 99"));
    loom_exec_out_clear(&out);
    assert_int_equal(loom_executor_reduce(ex, 99, "a", 1, "b", 1, &out), LOOM_ENOENT);
    loom_exec_out_clear(&out);
    loom_executor_close_map(ex, 99);
    loom_executor_destroy(&ex);
}

static void
test_shares_and_files_absent_for_now(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "shared", false);
    s_expect(ex, 1, "", 0, "null 0 null null null");
    s_open(ex, 2, "testkit", "log", false);
    s_expect(ex, 2, "a line", 0, "a line");
    loom_executor_destroy(&ex);
}

static void
test_fold_combines_many_outputs(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "sum", true);
    loom_exec_fold *fold = loom_exec_fold_new(ex, 1);
    loom_exec_out out;

    //  Nothing added: empty.
    assert_int_equal(loom_exec_fold_count(fold), 0);
    assert_int_equal(loom_exec_fold_take(fold, &out), 0);
    assert_null(out.data);
    assert_int_equal(out.len, 0);

    //  One output comes back as it was.
    void *one = strdup("17");
    assert_int_equal(loom_exec_fold_add(fold, &one, 2, &out), 0);
    assert_null(one);
    assert_int_equal(loom_exec_fold_count(fold), 1);
    assert_int_equal(loom_exec_fold_take(fold, &out), 0);
    assert_int_equal(out.len, 2);
    assert_memory_equal(out.data, "17", 2);
    loom_exec_out_clear(&out);

    //  1..1000 (not a power of two: several ranks left at take).
    for (int i = 1; i <= 1000; i++) {
        char text[8];
        int n = snprintf(text, sizeof text, "%d", i);
        void *data = strdup(text);
        assert_int_equal(loom_exec_fold_add(fold, &data, (size_t)n, &out), 0);
    }
    assert_int_equal(loom_exec_fold_count(fold), 1000);
    assert_int_equal(loom_exec_fold_take(fold, &out), 0);
    assert_int_equal(loom_exec_fold_count(fold), 0);
    assert_int_equal(out.len, 6);
    assert_memory_equal(out.data, "500500", 6);
    loom_exec_out_clear(&out);
    loom_exec_fold_destroy(&fold);
    assert_null(fold);

    //  A failing reduce fails the add that triggers it, and empties the fold.
    s_open(ex, 2, "testkit", "fail", true);
    fold = loom_exec_fold_new(ex, 2);
    void *a = strdup("a"), *b = strdup("bb");
    assert_int_equal(loom_exec_fold_add(fold, &a, 1, &out), 0);
    assert_int_equal(loom_exec_fold_add(fold, &b, 2, &out), LOOM_ETASK);
    assert_non_null(strstr(out.error, "failing reduce of 1 and 2 bytes"));
    loom_exec_out_clear(&out);
    assert_int_equal(loom_exec_fold_count(fold), 0);
    //  Items left in the fold at destroy are freed (valgrind checks).
    a = strdup("a");
    assert_int_equal(loom_exec_fold_add(fold, &a, 1, &out), 0);
    loom_exec_fold_destroy(&fold);
    loom_exec_fold_destroy(&fold);
    loom_executor_destroy(&ex);
}

//  Shipped plugins

static void
test_squares_square(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "squares", "square", true);
    int64_t x = -12, y;
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, &x, sizeof x, &out), 0);
    assert_int_equal(out.len, 8);
    memcpy(&y, out.data, 8);
    assert_int_equal(y, 144);
    loom_exec_out_clear(&out);

    assert_int_equal(loom_executor_run(ex, 1, 0, "abc", 3, &out), LOOM_ETASK);
    assert_non_null(strstr(out.error, "want 8 bytes"));
    assert_non_null(strstr(out.error, "got 3"));
    loom_exec_out_clear(&out);

    x = INT64_C(4000000000);
    assert_int_equal(loom_executor_run(ex, 1, 0, &x, sizeof x, &out), LOOM_ETASK);
    assert_non_null(strstr(out.error, "overflows"));
    loom_exec_out_clear(&out);

    int64_t a = 40, b = 2, s;
    assert_int_equal(loom_executor_reduce(ex, 1, &a, 8, &b, 8, &out), 0);
    memcpy(&s, out.data, 8);
    assert_int_equal(s, 42);
    loom_exec_out_clear(&out);
    assert_int_equal(loom_executor_reduce(ex, 1, &a, 8, &b, 4, &out), LOOM_ETASK);
    loom_exec_out_clear(&out);
    loom_executor_destroy(&ex);
}

static void
test_squares_square_text(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "squares", "square_text", true);
    s_expect(ex, 1, "12", 0, "144");
    s_expect(ex, 1, "-3", 0, "9");
    s_expect(ex, 1, " 7\r", 0, "49");
    s_expect(ex, 1, "0", 0, "0");
    s_expect(ex, 1, "3037000499", 0, "9223372030926249001");
    s_expect(ex, 1, "3037000500", LOOM_ETASK, "overflows");
    s_expect(ex, 1, "12a", LOOM_ETASK, "'12a' is not a decimal int64");
    s_expect(ex, 1, "", LOOM_ETASK, "is not a decimal");
    char *sum = s_fold(ex, 1, "144", "-44", 0);
    assert_string_equal(sum, "100");
    free(sum);
    sum = s_fold(ex, 1, "x", "1", LOOM_ETASK);
    free(sum);
    loom_executor_destroy(&ex);
}

static void
test_wordcount_count_and_merge(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "wordcount", "count", true);
    s_expect(ex, 1, "The cat, the HAT; it's 42 cats! the", 0,
             "42 1\ncat 1\ncats 1\nhat 1\nit's 1\nthe 3\n");
    s_expect(ex, 1, "", 0, "");
    s_expect(ex, 1, " ,;! ", 0, "");
    char *m = s_fold(ex, 1, "a 1\ncat 2\nzoo 5\n", "b 3\ncat 40\nz 1\n", 0);
    assert_string_equal(m, "a 1\nb 3\ncat 42\nz 1\nzoo 5\n");
    free(m);
    m = s_fold(ex, 1, "", "a 1\n", 0);
    assert_string_equal(m, "a 1\n");
    free(m);
    //  Counts carry into a longer number.
    m = s_fold(ex, 1, "w 99\n", "w 1\n", 0);
    assert_string_equal(m, "w 100\n");
    free(m);
    m = s_fold(ex, 1, "b 1\na 1\n", "a 1\n", LOOM_ETASK);
    assert_non_null(strstr(m, "not sorted"));
    free(m);
    m = s_fold(ex, 1, "nonsense", "a 1\n", LOOM_ETASK);
    free(m);

    //  Many words: every count right, lines sorted.
    size_t n = 200000;
    char *text = malloc(n * 8);
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(text + len, "w%zu ", i % 1000);
    loom_exec_out out;
    assert_int_equal(loom_executor_run(ex, 1, 0, text, len, &out), 0);
    char *counted = strndup(out.data, out.len); //  sscanf wants a string
    const char *p = counted, *end = p + out.len;
    size_t lines = 0;
    char prev[32] = "";
    while (p < end) {
        char word[32];
        unsigned count;
        int used;
        assert_int_equal(sscanf(p, "%31s %u\n%n", word, &count, &used), 2);
        assert_int_equal(count, 200);
        assert_true(strcmp(prev, word) < 0);
        strcpy(prev, word);
        p = strchr(p, '\n') + 1;
        lines++;
    }
    assert_int_equal(lines, 1000);
    loom_exec_out_clear(&out);
    free(counted);

    //  The same words one item per word, folded: the same counts.
    loom_exec_fold *fold = loom_exec_fold_new(ex, 1);
    for (size_t i = 0; i < n; i++) {
        char word[16];
        int k = snprintf(word, sizeof word, "w%zu", i % 1000);
        assert_int_equal(loom_executor_run(ex, 1, i, word, (size_t)k, &out), 0);
        assert_int_equal(loom_exec_fold_add(fold, &out.data, out.len, &out), 0);
    }
    assert_int_equal(loom_exec_fold_take(fold, &out), 0);
    loom_exec_fold_destroy(&fold);
    loom_exec_out whole;
    assert_int_equal(loom_executor_run(ex, 1, 0, text, len, &whole), 0);
    assert_int_equal(out.len, whole.len);
    assert_memory_equal(out.data, whole.data, out.len);
    loom_exec_out_clear(&out);
    loom_exec_out_clear(&whole);
    free(text);
    loom_executor_destroy(&ex);
}

//  A small output folded into a big one (the skewed path: binary search
//  and copy) gives exactly what a line-by-line merge gives.
static void
test_wordcount_merges_small_into_big(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "wordcount", "count", true);
    char *big = malloc(1000 * 16), *want = malloc(1000 * 16 + 64);
    size_t bn = 0, wn = 0;
    wn += (size_t)sprintf(want + wn, "a 5\n");
    for (int i = 0; i < 1000; i++) {
        bn += (size_t)sprintf(big + bn, "w%04d %d\n", i, i + 1);
        if (i == 500)
            wn += (size_t)sprintf(want + wn, "w0500 503\nw05000 1\n");
        else
            wn += (size_t)sprintf(want + wn, "w%04d %d\n", i, i + 1);
    }
    wn += (size_t)sprintf(want + wn, "zz 3\n");
    const char *small = "a 5\nw0500 2\nw05000 1\nzz 3\n";
    char *got = s_fold(ex, 1, big, small, 0);
    assert_string_equal(got, want);
    free(got);
    got = s_fold(ex, 1, small, big, 0);
    assert_string_equal(got, want);
    free(got);

    //  The big side without its final newline, small words all after it.
    big[bn - 1] = 0;
    got = s_fold(ex, 1, big, "zz 3\n", 0);
    big[bn - 1] = '\n';
    big[bn] = 0;
    assert_int_equal(strlen(got), bn + 5);
    assert_memory_equal(got, big, bn);
    assert_string_equal(got + bn, "zz 3\n");
    free(got);

    //  Only the first word, only an existing word.
    got = s_fold(ex, 1, big, "w0000 1\n", 0);
    assert_int_equal(strncmp(got, "w0000 2\nw0001 2\n", 16), 0);
    assert_int_equal(strlen(got), bn);
    free(got);

    //  An unsorted small side is refused.
    got = s_fold(ex, 1, big, "b 1\na 1\n", LOOM_ETASK);
    assert_non_null(strstr(got, "not sorted"));
    free(got);
    free(big);
    free(want);
    loom_executor_destroy(&ex);
}

static void
test_echo_plugin(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "echo", "echo", false);
    s_open(ex, 2, "echo", "fail", false);
    s_expect(ex, 1, "same bytes", 0, "same bytes");
    s_expect(ex, 2, "item 9", LOOM_ETASK, "input 'item 9'");
    char *reason = NULL;
    assert_int_equal(loom_executor_open_map(ex, 3, "echo", NULL, "echo", NULL, 0, true, &reason),
                     LOOM_ENOTSUP);
    free(reason);
    loom_executor_destroy(&ex);
}

//  loom_task_cancelled answers what the flag the worker gives says; a task
//  that checks it returns early.
static void
test_cancelled_flag_reaches_the_task(void **state)
{
    (void)state;
    loom_executor *ex = loom_executor_new(NULL, 1);
    s_open(ex, 1, "testkit", "sleep_coop", false);
    char *out = s_run(ex, 1, "1", 0); //  no flag: never cancelled
    assert_string_equal(out, "slept");
    free(out);
    atomic_int flag;
    atomic_init(&flag, 0);
    loom_executor_set_cancel_flag(ex, &flag);
    out = s_run(ex, 1, "1", 0);
    assert_string_equal(out, "slept");
    free(out);
    atomic_store(&flag, 1);
    out = s_run(ex, 1, "60000", 0); //  would sleep a minute
    assert_string_equal(out, "stopped");
    free(out);
    loom_executor_destroy(&ex);
}

//  An init that calls loom_worker_fail: the open fails with LOOM_EINIT and
//  its reason; init_pending says when an open runs plugin code first.
static void
test_init_failure_gives_the_plugins_reason(void **state)
{
    (void)state;
    setenv("LOOM_TEST_INIT", "fail", 1);
    loom_executor *ex = loom_executor_new(NULL, 0);
    assert_true(loom_executor_init_pending(ex, "init_modes"));
    char *reason = NULL;
    assert_int_equal(
        loom_executor_open_map(ex, 1, "init_modes", NULL, "echo", NULL, 0, false, &reason),
        LOOM_EINIT);
    assert_non_null(strstr(reason, "plugin 'init_modes' init failed in worker process"));
    assert_non_null(
        strstr(reason, "cannot open model /nonexistent/model.bin: No such file or directory"));
    free(reason);
    assert_false(loom_executor_init_pending(ex, "init_modes")); //  it ran (and failed)
    //  The same reason again, without running init again.
    assert_int_equal(
        loom_executor_open_map(ex, 2, "init_modes", NULL, "pid", NULL, 0, false, &reason),
        LOOM_EINIT);
    assert_non_null(strstr(reason, "cannot open model"));
    free(reason);
    loom_executor_destroy(&ex);
    unsetenv("LOOM_TEST_INIT");

    ex = loom_executor_new(NULL, 0);
    s_open(ex, 1, "init_modes", "echo", false);
    assert_false(loom_executor_init_pending(ex, "init_modes"));
    loom_executor_destroy(&ex);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runs_echo_and_passes_index),
        cmocka_unit_test(test_fail_gives_task_error_with_message),
        cmocka_unit_test(test_nonzero_return_without_fail_is_task_error),
        cmocka_unit_test(test_args_are_copied_and_given_to_tasks),
        cmocka_unit_test(test_worker_id_and_state),
        cmocka_unit_test(test_init_runs_once_per_executor_and_fini_at_destroy),
        cmocka_unit_test(test_output_grows_and_is_capped),
        cmocka_unit_test(test_run_keep_lends_small_outputs),
        cmocka_unit_test(test_reduce_folds_with_fresh_context),
        cmocka_unit_test(test_reduce_needs_a_reduce_function),
        cmocka_unit_test(test_version_pin),
        cmocka_unit_test(test_unknown_map_id),
        cmocka_unit_test(test_shares_and_files_absent_for_now),
        cmocka_unit_test(test_fold_combines_many_outputs),
        cmocka_unit_test(test_squares_square),
        cmocka_unit_test(test_squares_square_text),
        cmocka_unit_test(test_wordcount_count_and_merge),
        cmocka_unit_test(test_wordcount_merges_small_into_big),
        cmocka_unit_test(test_echo_plugin),
        cmocka_unit_test(test_cancelled_flag_reaches_the_task),
        cmocka_unit_test(test_init_failure_gives_the_plugins_reason),
    };
    return cmocka_run_group_tests_name("executor", tests, NULL, NULL);
}
