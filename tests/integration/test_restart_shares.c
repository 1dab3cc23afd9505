/*  test_restart_shares: a pipeline's shares survive a broker restart.
    Real `loom broker` and `loom worker` processes on ipc:// paths in a
    private directory (faults_procs.h); the client runs in this process.

    A temporary store loses the shares with the broker: the client uploads
    them again on the new session (the new broker's blob_bytes_in shows
    it). A persistent --store DIR keeps them: nothing is uploaded again,
    and the store's time-to-live does not remove a blob a resumed pipeline
    references. Plus: `loom worker --max-tasks` recycling loses nothing.

    Part of the test matrix: restart_shares-curve (LOOM_TEST_CURVE=1) runs
    the same tests with every broker, host and client keyed, so the
    shares' uploads after a restart go over a CURVE blob channel.  */

#include "loom_test.h"

#include <glob.h>

#include "faults_procs.h"

#include "client_priv.h"

#define S_FILE_SIZE (3u << 20)
#define S_BYTES_SIZE (2u << 20)

//  kill -9 the broker and remove the temporary blob store it cannot remove
//  itself (loom-store-PID-* under $TMPDIR or /tmp).
static void
s_kill_broker(pid_t pid)
{
    kill(pid, SIGKILL);
    assert_true(s_wait_exit(pid, 5000) != -1);
    const char *base = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char pattern[4096];
    snprintf(pattern, sizeof pattern, "%s/loom-store-%d-*", base, (int)pid);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; i++)
            loom_remove_tree(g.gl_pathv[i], 2);
    globfree(&g);
}

//  Start the broker with extra arguments (NULL-terminated, up to 4) and,
//  under CURVE, its keys (faults_procs.h).
static void
s_broker_start_with(s_cluster *c, const char *const extra[])
{
    assert_int_equal(s_broker_start_args(c, extra), 0);
}

//  A worker host with its own empty blob cache in the cluster's directory
//  (the default, the user's cache, would hold the shares already).
static pid_t
s_host_start_with(s_cluster *c, const char *procs, const char *max_tasks)
{
    static int seq;
    char cache[300];
    snprintf(cache, sizeof cache, "%s/cache%d", c->dir, ++seq);
    const char *argv[16] = {s_exe(), "worker",  "--connect", c->task_ep, "--procs",
                            procs,   "--cache", cache,       "--quiet"};
    size_t n = 9;
    if (max_tasks) {
        argv[n++] = "--max-tasks";
        argv[n++] = max_tasks;
    }
    n = loom_test_curve_peer_argv(argv, n, true);
    argv[n] = NULL;
    pid_t pid = s_spawn(argv);
    assert_true(pid > 0);
    c->hosts[c->nhosts++] = pid;
    return pid;
}

//  Remove the cluster's directory (caches, store) once it is stopped.
static void
s_rm_dir(const s_cluster *c)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    assert_int_equal(system(cmd), 0);
}

static unsigned
s_sum(const uint8_t *p, size_t n)
{
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += p[i];
    return sum;
}

static uint8_t *
s_random(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n);
    assert_non_null(p);
    uint32_t x = seed;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint8_t)(x >> 24);
    }
    return p;
}

static void
s_check(s_tally *t, const loom_result *r, char want[2][64], uint64_t *wrong)
{
    s_tally_add(t, r);
    if (r->status != 0)
        fprintf(stderr, "item %" PRIu64 ": %s\n", r->index, r->error ? r->error : "");
    const char *w = want[r->index % 2];
    *wrong += r->status != 0 || r->len != strlen(w) || memcmp(r->data, w, r->len) != 0;
}

//  A map of shared_sum over n items ("file", "bytes" alternately) on a
//  pipeline sharing a file and bytes. After `at` submissions: stop the
//  worker host (so the next one starts with an empty cache and must fetch
//  the shares from the new broker), kill -9 the broker, start it again
//  with `extra`, wait `away_ms` (the store's TTL passes), start a host.
//  Returns the new broker's blob_bytes_in once the map completed.
static uint64_t
s_run(s_cluster *c, const char *const extra[], int away_ms)
{
    const uint64_t n = 300, at = 100;
    s_host_start_with(c, "2", NULL);
    assert_true(s_wait_workers(c, 2, 10000));

    char path[300];
    snprintf(path, sizeof path, "%s/shared.bin", c->dir);
    uint8_t *fbytes = s_random(S_FILE_SIZE, 1);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(fbytes, 1, S_FILE_SIZE, f), S_FILE_SIZE);
    fclose(f);
    uint8_t *bbytes = s_random(S_BYTES_SIZE, 2);
    char want[2][64];
    snprintf(want[0], sizeof want[0], "%u %u", S_FILE_SIZE, s_sum(fbytes, S_FILE_SIZE));
    snprintf(want[1], sizeof want[1], "%u %u", S_BYTES_SIZE, s_sum(bbytes, S_BYTES_SIZE));
    free(fbytes);

    loom_client_opts co = s_client_opts(20000);
    loom_client *cl = loom_client_new(c->task_ep, &co);
    assert_non_null(cl);
    loom_pipeline *p = loom_pipeline_new(cl, "restart-shares");
    assert_non_null(p);
    assert_int_equal(loom_pipeline_share_file(p, "file", path), 0);
    assert_int_equal(loom_pipeline_share(p, "bytes", bbytes, S_BYTES_SIZE), 0);
    memset(bbytes, 0, S_BYTES_SIZE); //  the caller may reuse its buffer
    free(bbytes);

    loom_map_opts o = {.chunk = 2, .window = 16};
    loom_map *m = loom_map_new(p, "testkit", "shared_sum", &o);
    assert_non_null(m);
    s_tally t;
    s_tally_init(&t, n);
    uint64_t wrong = 0;
    loom_result r;
    for (uint64_t i = 0; i < n; i++) {
        const char *in = i % 2 ? "bytes" : "file";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
        if (i + 1 == at) {
            for (size_t h = 0; h < c->nhosts; h++)
                s_stop(&c->hosts[h]);
            c->nhosts = 0;
            s_kill_broker(c->broker);
            c->broker = 0;
            s_broker_start_with(c, extra);
            //  No worker for away_ms: the client resumes meanwhile (its
            //  calls pump), then time passes (the point: the store's TTL).
            int64_t until = loom_now_ms() + away_ms;
            while (loom_now_ms() < until) {
                int k = loom_map_next(m, &r, (int)(until - loom_now_ms()));
                if (k == 1)
                    s_check(&t, &r, want, &wrong);
                else
                    assert_int_equal(k, LOOM_EAGAIN);
            }
            s_host_start_with(c, "2", NULL);
        }
        //  Read what is there as we go (the window keeps at most 16 out).
        while (loom_map_next(m, &r, 0) == 1) {
            s_check(&t, &r, want, &wrong);
        }
    }
    assert_int_equal(loom_map_close(m), 0);
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        s_check(&t, &r, want, &wrong);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(cl->reconnects, 1);
    s_assert_exactly_once(&t);
    assert_int_equal(wrong, 0);
    free(t.seen);
    loom_wire_stats st;
    assert_true(s_stats(c, &st));
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    unlink(path);
    return st.blob_bytes_in;
}

static void
test_temp_store_restart_reuploads_the_shares(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    uint64_t in = s_run(&c, NULL, 500);
    printf("restarted broker (temp store): blob_bytes_in %" PRIu64 " (shares: %u)\n", in,
           S_FILE_SIZE + S_BYTES_SIZE);
    //  Both shares came again (and nothing else is uploaded by shared_sum).
    assert_true(in >= S_FILE_SIZE + S_BYTES_SIZE);
    s_cluster_stop(&c);
    s_rm_dir(&c);
}

static void
test_persistent_store_restart_needs_no_reupload_and_keeps_them(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    //  The first broker (temp store) is replaced by one with a store dir.
    s_stop(&c.broker);
    char store[300];
    snprintf(store, sizeof store, "%s/store", c.dir);
    const char *extra[] = {"--store", store, "--store-ttl", "2", NULL};
    s_broker_start_with(&c, extra);
    //  The restarted broker finds the blobs in DIR (unreferenced: their TTL
    //  of 2 s runs) and the client's MapOpen references them again within
    //  a heartbeat expiry or so; 3.5 s later (past the TTL) the new host
    //  fetches them: still there, and nothing was uploaded again.
    uint64_t in = s_run(&c, extra, 3500);
    printf("restarted broker (--store DIR): blob_bytes_in %" PRIu64 "\n", in);
    assert_int_equal(in, 0);
    s_cluster_stop(&c);
    s_rm_dir(&c);
}

//  Submit 4 items of shared_sum (input `name`) and read their results.
static loom_map *
s_map_4(loom_pipeline *p, const char *name)
{
    loom_map *m = loom_map_new(p, "testkit", "shared_sum", NULL);
    assert_non_null(m);
    for (int i = 0; i < 4; i++)
        assert_int_equal(loom_map_submit(m, name, strlen(name)), 0);
    loom_result r;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(loom_map_next(m, &r, 20000), 1);
        assert_int_equal(r.status, 0);
    }
    return m;
}

//  The map fails (no hang) with LOOM_ECONNECT and a message containing
//  both strings.
static void
s_assert_fails(loom_map *m, const char *a, const char *b)
{
    loom_result r;
    int rc;
    int64_t deadline = loom_now_ms() + 20000;
    while ((rc = loom_map_next(m, &r, 500)) == LOOM_EAGAIN && loom_now_ms() < deadline)
        ;
    assert_int_equal(rc, LOOM_ECONNECT);
    assert_non_null(m->error_text);
    assert_non_null(strstr(m->error_text, a));
    assert_non_null(strstr(m->error_text, b));
}

//  A share the client cannot give back to a restarted broker (its file
//  changed; bytes it could keep no copy of) fails the maps that need it,
//  naming it; a pipeline whose shares are fine carries on.
static void
test_share_that_cannot_be_restored_fails_its_maps(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start_with(&c, "2", NULL);
    assert_true(s_wait_workers(&c, 2, 10000));
    char path[300];
    snprintf(path, sizeof path, "%s/changing.txt", c.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("before", f);
    fclose(f);

    loom_client_opts co = s_client_opts(20000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    loom_pipeline *p1 = loom_pipeline_new(cl, "file");
    loom_pipeline *p2 = loom_pipeline_new(cl, "nocopy");
    loom_pipeline *p3 = loom_pipeline_new(cl, "fine");
    assert_int_equal(loom_pipeline_share_file(p1, "file", path), 0);
    //  No temp dir for the private copy: the share works, unrestorable.
    const char *tmp = getenv("TMPDIR");
    char *saved = tmp ? strdup(tmp) : NULL;
    setenv("TMPDIR", "/nonexistent-loom-test", 1);
    assert_int_equal(loom_pipeline_share(p2, "nocopy", "abc", 3), 0);
    if (saved)
        setenv("TMPDIR", saved, 1);
    else
        unsetenv("TMPDIR");
    free(saved);
    assert_int_equal(loom_pipeline_share(p3, "fine", "abcd", 4), 0);
    loom_map *m1 = s_map_4(p1, "file");
    loom_map *m2 = s_map_4(p2, "nocopy");
    loom_map *m3 = s_map_4(p3, "fine");

    f = fopen(path, "w");
    assert_non_null(f);
    fputs("after!", f); //  same size, other bytes
    fclose(f);
    s_kill_broker(c.broker);
    c.broker = 0;
    s_broker_start_with(&c, NULL);

    s_assert_fails(m1, path, "changed");
    s_assert_fails(m2, "'nocopy'", "no copy");
    //  The third pipeline's share was uploaded again: its map carries on.
    assert_int_equal(cl->reconnects, 1);
    assert_int_equal(loom_map_submit(m3, "fine", 4), 0);
    assert_int_equal(loom_map_close(m3), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m3, &r, 20000), 1);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.len, 5);
    assert_memory_equal(r.data, "4 394", 5);
    assert_int_equal(loom_map_next(m3, &r, 20000), 0);
    loom_map_destroy(&m1);
    loom_map_destroy(&m2);
    loom_map_destroy(&m3);
    loom_client_destroy(&cl); //  destroys the pipelines
    s_cluster_stop(&c);
    s_rm_dir(&c);
}

//  Worker processes that exit after 5 tasks (their supervisor starts new
//  ones) lose nothing.
static void
test_max_tasks_recycling_loses_nothing(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start_with(&c, "2", "5");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client_opts co = s_client_opts(20000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    loom_pipeline *p = loom_pipeline_new(cl, "recycle");
    assert_non_null(p);
    loom_map *m = loom_map_new(p, "testkit", "index", NULL);
    assert_non_null(m);
    const uint64_t n = 300;
    s_tally t;
    s_tally_init(&t, n);
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(loom_map_submit(m, "x", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        s_tally_add(&t, &r);
        if (r.status)
            fail_msg("item %" PRIu64 " failed: %s", r.index, r.error ? r.error : "?");
        char want[32];
        snprintf(want, sizeof want, "%" PRIu64, r.index);
        assert_int_equal(r.len, strlen(want));
        assert_memory_equal(r.data, want, r.len);
    }
    assert_int_equal(rc, 0);
    s_assert_exactly_once(&t);
    free(t.seen);
    loom_wire_stats st;
    assert_true(s_stats(&c, &st));
    assert_int_equal(st.items_done, n);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
    s_rm_dir(&c);
}

int
main(void)
{
    (void)s_host_start; //  faults_procs.h's: these hosts need their own caches
    printf("# restart_shares%s\n", loom_test_curve_mode());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_temp_store_restart_reuploads_the_shares, s_teardown),
        cmocka_unit_test_teardown(test_persistent_store_restart_needs_no_reupload_and_keeps_them,
                                  s_teardown),
        cmocka_unit_test_teardown(test_share_that_cannot_be_restored_fails_its_maps, s_teardown),
        cmocka_unit_test_teardown(test_max_tasks_recycling_loses_nothing, s_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc) {
        //  A failed test may leave a client behind: do not wait for it at
        //  exit (so remove the CURVE keys here: _exit runs no atexit
        //  handler). A clean run exits normally, leak checks included.
        s_ltc_cleanup();
        fflush(NULL);
        _exit(rc);
    }
    return 0;
}
