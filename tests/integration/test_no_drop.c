/*  test_no_drop: no combination of map options drops a successful item's
    data or output files without an error (issue 21, point 1).

    Every combination of ordered, reduce, on_result and files (none; output
    files; an attached input file and output files) runs testkit's sum or
    sum_file over "0".."N-1" on the embedded cluster, and the results are
    checked: without reduce, each index yields exactly one result with its
    data and its output file "out"; with reduce, one combined result whose
    data is the sum and which carries every item's "out" as "INDEX/out".
    A reduce map with failing items keeps the successful items' data and
    files and reports each failure. (The journal does not exist yet: when
    it does, it joins the matrix.)

    Plugins: testkit (tests/plugins), through $LOOM_PLUGIN_PATH.  */

#include "loom_test.h"

#include <inttypes.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <loom/loom.h>

#define S_N 40 //  items per map

typedef struct {
    bool ordered, reduce, on_result;
    int files; //  0: none, 1: output files, 2: an input file and output files
} s_combo;

//  What a map delivered.
typedef struct {
    const s_combo *combo;
    uint8_t seen[S_N];
    uint64_t results;    //  every result
    uint64_t bad;        //  wrong index, data or files; out of order
    uint64_t failed;     //  status != 0
    uint64_t reduced;    //  combined results
    uint64_t next_index; //  ordered: the index expected next
    char why[512];       //  the first thing found wrong
} s_seen;

static loom_client *s_client;
static char s_dir[64]; //  the input files

static void
s_bad(s_seen *s, const char *what, uint64_t index)
{
    s->bad++;
    if (!s->why[0])
        snprintf(s->why, sizeof s->why, "%s (index %" PRIu64 ")", what, index);
}

//  True if the file at path holds exactly text.
static bool
s_file_is(const char *path, const char *text)
{
    char buf[64];
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return n == strlen(text) && memcmp(buf, text, n) == 0;
}

static void
s_check(s_seen *s, const loom_result *r)
{
    const s_combo *c = s->combo;
    s->results++;
    if (r->status != 0) {
        s->failed++;
        s_bad(s, r->error ? r->error : loom_strerror(r->status), r->index);
        return;
    }
    char want[32];
    if (r->index == LOOM_REDUCED_INDEX) {
        s->reduced++;
        if (!c->reduce)
            s_bad(s, "a combined result from a map without reduce", r->index);
        snprintf(want, sizeof want, "%d", S_N * (S_N - 1) / 2);
        if (r->len != strlen(want) || memcmp(r->data, want, r->len) != 0)
            s_bad(s, "wrong sum", r->index);
        size_t nfiles = c->files ? S_N : 0;
        if (r->nfiles != nfiles) {
            s_bad(s, "combined result: wrong number of files", r->nfiles);
            return;
        }
        for (size_t i = 0; i < r->nfiles; i++) {
            char name[32];
            snprintf(name, sizeof name, "%zu/out", i);
            snprintf(want, sizeof want, "%zu", i);
            if (strcmp(r->file_names[i], name) != 0 || !s_file_is(r->file_paths[i], want))
                s_bad(s, "combined result: wrong file name or content", i);
        }
        return;
    }
    if (r->index >= S_N) {
        s_bad(s, "index out of range", r->index);
        return;
    }
    if (c->reduce)
        s_bad(s, "a successful item of a reduce map delivered on its own", r->index);
    if (s->seen[r->index]++)
        s_bad(s, "a second result", r->index);
    if (c->ordered && r->index != s->next_index)
        s_bad(s, "out of order", r->index);
    s->next_index = r->index + 1;
    snprintf(want, sizeof want, "%" PRIu64, r->index);
    if (r->len != strlen(want) || memcmp(r->data, want, r->len) != 0)
        s_bad(s, "wrong data", r->index);
    if (r->nfiles != (c->files ? 1u : 0u))
        s_bad(s, "wrong number of files", r->index);
    else if (c->files &&
             (strcmp(r->file_names[0], "out") != 0 || !s_file_is(r->file_paths[0], want)))
        s_bad(s, "wrong file name or content", r->index);
}

static void
s_on_result(const loom_result *r, void *user)
{
    s_check((s_seen *)user, r);
}

//  An input file holding "i".
static void
s_input_file(uint64_t i, char *path, size_t cap)
{
    snprintf(path, cap, "%s/in-%" PRIu64, s_dir, i);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fprintf(f, "%" PRIu64, i);
    assert_int_equal(fclose(f), 0);
}

static void
s_run(const s_combo *c, s_seen *s)
{
    memset(s, 0, sizeof *s);
    s->combo = c;
    loom_pipeline *p = loom_pipeline_new(s_client, "no-drop");
    assert_non_null(p);
    loom_map_opts o = {.ordered = c->ordered, .reduce = c->reduce, .timeout_ms = 60000};
    if (c->on_result) {
        o.on_result = s_on_result;
        o.user = s;
    }
    loom_map *m = loom_map_new(p, "testkit", c->files ? "sum_file" : "sum", &o);
    assert_non_null(m);
    for (uint64_t i = 0; i < S_N; i++) {
        char text[32], path[128];
        int k = snprintf(text, sizeof text, "%" PRIu64, i);
        if (c->files == 2) {
            s_input_file(i, path, sizeof path);
            const char *names[] = {"in"};
            const char *paths[] = {path};
            assert_int_equal(loom_map_submit_files(m, text, (size_t)k, names, paths, 1), 0);
        } else
            assert_int_equal(loom_map_submit(m, text, (size_t)k), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 60000)) == 1)
        s_check(s, &r);
    assert_int_equal(rc, 0);
    loom_stats st;
    loom_map_stats(m, &st);
    assert_int_equal(st.submitted, S_N);
    assert_int_equal(st.in_flight, 0);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

static void
test_no_combination_drops_data_or_files(void **state)
{
    (void)state;
    int combos = 0;
    for (int bits = 0; bits < 8; bits++)
        for (int files = 0; files < 3; files++) {
            s_combo c = {.ordered = bits & 1,
                         .reduce = (bits & 2) != 0,
                         .on_result = (bits & 4) != 0,
                         .files = files};
            s_seen s;
            s_run(&c, &s);
            if (s.bad || s.failed)
                fprintf(stderr, "ordered %d reduce %d on_result %d files %d: %s\n", c.ordered,
                        c.reduce, c.on_result, c.files, s.why);
            assert_int_equal(s.bad, 0);
            assert_int_equal(s.failed, 0);
            if (c.reduce) {
                assert_int_equal(s.reduced, 1);
                assert_int_equal(s.results, 1);
            } else {
                assert_int_equal(s.reduced, 0);
                assert_int_equal(s.results, S_N);
                for (int i = 0; i < S_N; i++)
                    assert_int_equal(s.seen[i], 1);
            }
            combos++;
        }
    assert_int_equal(combos, 24);
}

//  A reduce map whose items 3, 10, 17, ... fail: the combined result holds
//  the sum and the files of the others, each failure comes on its own.
static void
test_reduce_with_failures_keeps_the_rest(void **state)
{
    (void)state;
    loom_pipeline *p = loom_pipeline_new(s_client, "no-drop-fail");
    assert_non_null(p);
    loom_map_opts o = {.reduce = true, .timeout_ms = 60000};
    loom_map *m = loom_map_new(p, "testkit", "sum_file", &o);
    assert_non_null(m);
    long long sum = 0;
    int fails = 0;
    for (int i = 0; i < S_N; i++) {
        char text[32];
        int k = i % 7 == 3 ? snprintf(text, sizeof text, "bad%d", i)
                           : snprintf(text, sizeof text, "%d", i);
        if (i % 7 == 3)
            fails++;
        else
            sum += i;
        assert_int_equal(loom_map_submit(m, text, (size_t)k), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc, failed = 0, combined = 0;
    while ((rc = loom_map_next(m, &r, 60000)) == 1) {
        if (r.index != LOOM_REDUCED_INDEX) {
            assert_int_not_equal(r.status, 0);
            assert_int_equal(r.index % 7, 3);
            assert_non_null(r.error);
            //  The failing item wrote its file before it failed: it comes
            //  with the failure.
            assert_int_equal(r.nfiles, 1);
            failed++;
            continue;
        }
        combined++;
        assert_int_equal(r.status, 0);
        char want[32];
        snprintf(want, sizeof want, "%lld", sum);
        assert_int_equal(r.len, strlen(want));
        assert_memory_equal(r.data, want, r.len);
        assert_int_equal(r.nfiles, S_N - fails);
        size_t k = 0;
        for (int i = 0; i < S_N; i++) {
            if (i % 7 == 3)
                continue;
            char name[32];
            snprintf(name, sizeof name, "%d/out", i);
            snprintf(want, sizeof want, "%d", i);
            assert_string_equal(r.file_names[k], name);
            assert_true(s_file_is(r.file_paths[k], want));
            k++;
        }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(failed, fails);
    assert_int_equal(combined, 1);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

//  Run `loom map testkit sum_file --reduce ARGS` over "0".."4"; its stdout
//  and stderr (each up to cap bytes), its exit status returned.
static int
s_loom_map(const char *extra, char *out, char *err, size_t cap)
{
    const char *exe = getenv("LOOM_EXE");
    assert_non_null(exe);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "printf '0\\n1\\n2\\n3\\n4\\n' | %s map testkit sum_file --reduce "
             "--procs 2 %s >%s/out.txt 2>%s/err.txt",
             exe, extra, s_dir, s_dir);
    int st = system(cmd);
    char path[128];
    const char *names[] = {"out.txt", "err.txt"};
    char *bufs[] = {out, err};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", s_dir, names[i]);
        FILE *f = fopen(path, "rb");
        size_t n = f ? fread(bufs[i], 1, cap - 1, f) : 0;
        bufs[i][n] = 0;
        if (f)
            fclose(f);
        unlink(path);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

//  `loom map --reduce` of a task that writes output files: the sum on
//  stdout; the files kept with --output-files DIR as DIR/INDEX/NAME, and
//  without it a line on stderr saying they were not kept (before: no word).
static void
test_loom_map_keeps_or_names_output_files(void **state)
{
    (void)state;
    char out[4096], err[4096], extra[256], dir[128];
    snprintf(dir, sizeof dir, "%s/kept", s_dir);
    snprintf(extra, sizeof extra, "--output-files %s", dir);
    assert_int_equal(s_loom_map(extra, out, err, sizeof out), 0);
    assert_string_equal(out, "10\n");
    for (int i = 0; i < 5; i++) {
        char path[192], want[8];
        snprintf(path, sizeof path, "%s/%d/out", dir, i);
        snprintf(want, sizeof want, "%d", i);
        assert_true(s_file_is(path, want));
        unlink(path);
        snprintf(path, sizeof path, "%s/%d", dir, i);
        rmdir(path);
    }
    rmdir(dir);
    assert_int_equal(s_loom_map("", out, err, sizeof out), 0);
    assert_string_equal(out, "10\n");
    if (!strstr(err, "results carried 5 output files, not kept: give --output-files DIR"))
        fail_msg("stderr: %s", err);
}

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/loom-test-%d-nodrop-XXXXXX", (int)getpid());
    if (!mkdtemp(s_dir))
        return -1;
    loom_client_opts co = {.local_workers = 2};
    s_client = loom_client_new(NULL, &co);
    return s_client ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    loom_client_destroy(&s_client);
    for (int i = 0; i < S_N; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/in-%d", s_dir, i);
        unlink(path);
    }
    rmdir(s_dir);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_combination_drops_data_or_files),
        cmocka_unit_test(test_reduce_with_failures_keeps_the_rest),
        cmocka_unit_test(test_loom_map_keeps_or_names_output_files),
    };
    return cmocka_run_group_tests_name("no_drop", tests, s_setup, s_teardown);
}
