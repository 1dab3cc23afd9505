/*  test_restart_uploads: a broker killed with SIGKILL in the middle of the
    blob channel's work loses nothing. Real `loom broker` and `loom worker`
    processes on ipc:// paths in a private directory (faults_procs.h); the
    client runs in this process, on the channel (LOOM_BLOB_LOCAL=0, as a
    client on another host is), and the worker host's cache is on another
    file system than the broker's store (/dev/shm), so it fetches over the
    channel instead of linking.

    Three moments: during the client's upload of a share, during the
    host's fetch of it, and between the two. Each time the broker is
    restarted at once, and the map must complete with every index once and
    right.

    Part of the test matrix: restart_uploads-curve (LOOM_TEST_CURVE=1).  */

#include "loom_test.h"

#include <glob.h>
#include <pthread.h>

#include "faults_procs.h"

#include "client_priv.h"

#define S_SHARE_SIZE (256u << 20)
#define S_ITEMS 40

//  kill -9 the broker, remove the temporary store it cannot remove itself,
//  and start a new one on the same endpoints at once.
static void
s_restart_broker(s_cluster *c)
{
    pid_t pid = c->broker;
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
    c->broker = 0;
    assert_int_equal(s_broker_start(c), 0);
}

//  A worker host whose blob cache is in /dev/shm (another file system
//  than the store: blobs are fetched over the channel, not linked).
static char s_cache[128];

static pid_t
s_host(s_cluster *c)
{
    snprintf(s_cache, sizeof s_cache, "/dev/shm/loom-test-%d-cache", (int)getpid());
    const char *argv[16] = {s_exe(), "worker", "--connect", c->task_ep, "--procs", "2",
                            "--cache", s_cache, "--quiet"};
    size_t n = loom_test_curve_peer_argv(argv, 9, true);
    argv[n] = NULL;
    pid_t pid = s_spawn(argv);
    assert_true(pid > 0);
    c->hosts[c->nhosts++] = pid;
    return pid;
}

static void
s_rm_cache(void)
{
    if (s_cache[0])
        loom_remove_tree(s_cache, 3);
}

//  Wait until the broker's counter (read by get) reaches at least want.
static bool
s_wait_counter(const s_cluster *c, uint64_t (*get)(const loom_wire_stats *), uint64_t want,
               int timeout_ms)
{
    int64_t deadline = loom_now_ms() + timeout_ms;
    while (loom_now_ms() < deadline) {
        loom_wire_stats st;
        if (s_stats(c, &st) && get(&st) >= want)
            return true;
        zclock_sleep(5); //  the broker tells nobody: ask again
    }
    return false;
}

static uint64_t
s_bytes_in(const loom_wire_stats *st)
{
    return st->blob_bytes_in;
}

static uint64_t
s_bytes_out(const loom_wire_stats *st)
{
    return st->blob_bytes_out;
}

//  The share: S_SHARE_SIZE pseudo-random bytes in a file; its "LEN SUM"
//  as the testkit's shared_sum task reports it.
static void
s_make_share(const s_cluster *c, char *path, size_t cap, char *want, size_t want_cap)
{
    snprintf(path, cap, "%s/share.bin", c->dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint8_t *buf = malloc(1 << 20);
    uint32_t x = 7;
    unsigned sum = 0;
    for (size_t done = 0; done < S_SHARE_SIZE; done += 1 << 20) {
        for (size_t i = 0; i < 1 << 20; i++) {
            x = x * 1664525u + 1013904223u;
            buf[i] = (uint8_t)(x >> 24);
            sum += buf[i];
        }
        assert_int_equal(fwrite(buf, 1, 1 << 20, f), 1 << 20);
    }
    free(buf);
    assert_int_equal(fclose(f), 0);
    snprintf(want, want_cap, "%u %u", S_SHARE_SIZE, sum);
}

typedef struct {
    loom_pipeline *p;
    const char *path;
    int rc;
} s_share_job;

static void *
s_share_run(void *arg)
{
    s_share_job *j = arg;
    j->rc = loom_pipeline_share_file(j->p, "big", j->path);
    return NULL;
}

//  A map of shared_sum over the share, all its items submitted and closed.
static loom_map *
s_map_open(loom_pipeline *p)
{
    loom_map_opts o = {.chunk = 1};
    loom_map *m = loom_map_new(p, "testkit", "shared_sum", &o);
    assert_non_null(m);
    for (int i = 0; i < S_ITEMS; i++)
        assert_int_equal(loom_map_submit(m, "big", 3), 0);
    assert_int_equal(loom_map_close(m), 0);
    return m;
}

//  Its results: every index once, every one right; then destroyed.
static void
s_map_check(loom_map **m_p, const char *want)
{
    s_tally t;
    s_tally_init(&t, S_ITEMS);
    uint64_t wrong = 0;
    loom_result r;
    int rc;
    while ((rc = loom_map_next(*m_p, &r, 60000)) == 1) {
        s_tally_add(&t, &r);
        if (r.status != 0)
            fprintf(stderr, "item %" PRIu64 ": %s\n", r.index, r.error ? r.error : "");
        wrong += r.status == 0 && (r.len != strlen(want) || memcmp(r.data, want, r.len) != 0);
    }
    assert_int_equal(rc, 0);
    s_assert_exactly_once(&t);
    assert_int_equal(wrong, 0);
    free(t.seen);
    loom_map_destroy(m_p);
}

typedef enum { S_DURING_UPLOAD, S_BETWEEN, S_DURING_FETCH } s_moment;

static void
s_run(s_moment when)
{
    static s_cluster c; //  the teardown stops it after a failed assertion too
    s_cluster_init(&c);
    setenv("LOOM_BLOB_LOCAL", "0", 1);
    char path[300], want[64];
    s_make_share(&c, path, sizeof path, want, sizeof want);
    if (when != S_BETWEEN) {
        s_host(&c);
        assert_true(s_wait_workers(&c, 2, 10000));
    }
    loom_client_opts co = s_client_opts(20000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    loom_pipeline *p = loom_pipeline_new(cl, "restart-uploads");
    assert_non_null(p);

    if (when == S_DURING_UPLOAD) {
        //  The upload runs on its own thread; the broker dies when it
        //  has received a tenth of the bytes.
        s_share_job j = {.p = p, .path = path, .rc = 1};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, s_share_run, &j), 0);
        bool midway = s_wait_counter(&c, s_bytes_in, S_SHARE_SIZE / 10, 20000);
        loom_wire_stats st;
        bool done = s_stats(&c, &st) && st.blobs_stored > 0;
        s_restart_broker(&c);
        pthread_join(th, NULL);
        assert_true(midway);
        assert_false(done); //  it was killed while the upload ran
        assert_int_equal(j.rc, 0);
    } else
        assert_int_equal(loom_pipeline_share_file(p, "big", path), 0);

    if (when == S_BETWEEN) {
        s_restart_broker(&c);
        s_host(&c);
    }
    if (when == S_DURING_FETCH) {
        //  The items wait for the share on the host; the broker dies once
        //  the host has fetched a tenth of it.
        loom_map *m = s_map_open(p);
        bool midway = s_wait_counter(&c, s_bytes_out, S_SHARE_SIZE / 10, 20000);
        loom_wire_stats st;
        assert_true(s_stats(&c, &st));
        s_restart_broker(&c);
        assert_true(midway);
        assert_true(st.items_done == 0); //  killed before the share was whole on the host
        s_map_check(&m, want);
    } else {
        loom_map *m = s_map_open(p);
        s_map_check(&m, want);
    }

    printf("# broker restarted %s%s: %d items, every one once and right, %d reconnect(s)\n",
           when == S_DURING_UPLOAD ? "during the upload"
           : when == S_BETWEEN     ? "between the upload and the fetch"
                                   : "during the host's fetch",
           loom_test_curve_mode(), S_ITEMS, (int)cl->reconnects);
    assert_true(cl->reconnects >= 1);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    unsetenv("LOOM_BLOB_LOCAL");
    unlink(path);
    s_cluster_stop(&c);
    s_rm_cache();
}

static void
test_broker_killed_during_an_upload(void **state)
{
    (void)state;
    s_run(S_DURING_UPLOAD);
}

static void
test_broker_killed_between_upload_and_fetch(void **state)
{
    (void)state;
    s_run(S_BETWEEN);
}

static void
test_broker_killed_during_a_hosts_fetch(void **state)
{
    (void)state;
    s_run(S_DURING_FETCH);
}

//  faults_procs.h's teardown, and the host's cache in /dev/shm.
static int
s_teardown_all(void **state)
{
    int rc = s_teardown(state);
    s_rm_cache();
    unsetenv("LOOM_BLOB_LOCAL");
    return rc;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_broker_killed_during_an_upload, s_teardown_all),
        cmocka_unit_test_teardown(test_broker_killed_between_upload_and_fetch, s_teardown_all),
        cmocka_unit_test_teardown(test_broker_killed_during_a_hosts_fetch, s_teardown_all),
    };
    return cmocka_run_group_tests_name("restart_uploads", tests, NULL, NULL);
}
