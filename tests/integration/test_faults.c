/*  test_faults: nothing lost, nothing doubled, shown by inflicting each
    fault on real processes: `loom broker`, `loom worker` hosts and `loom
    map` ($LOOM_EXE) started here, and clients in this process (loom.h).

    Each test starts its own broker on ipc:// paths in a private directory
    (so a restarted broker binds the same endpoints), its worker hosts, and
    stops every process it started by pid. Heartbeats are 100 ms x 3
    (LOOM_HEARTBEAT_MS from the meson test environment). Worker processes
    are found by scanning /proc for the children of their supervisor.

    Part of the test matrix: faults-curve (LOOM_TEST_CURVE=1) runs the
    same tests with the broker under CURVE and every host, client and
    `loom map --connect` keyed (faults_procs.h, loom_test_curve.h).  */

#include "loom_test.h"

#include "faults_procs.h"

#include "client_priv.h"

//  Hook called between results (to inflict faults); `got` results so far.
typedef void (*s_hook)(void *arg, uint64_t got);

//  Run task over n items of `input` (or the index as text if NULL) and
//  tally; calls hook after each result. Returns 0 or the API's code.
static int
s_run(loom_client *cl, const char *task, const char *input, uint64_t n,
      const loom_map_opts *opts, s_tally *t, s_hook hook, void *arg)
{
    loom_pipeline *p = loom_pipeline_new(cl, "faults");
    if (!p)
        return LOOM_ECONNECT;
    loom_map *m = loom_map_new(p, "testkit", task, opts);
    if (!m) {
        loom_pipeline_destroy(&p);
        return LOOM_ECONNECT;
    }
    s_tally_init(t, n);
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        char buf[32];
        const char *in = input;
        if (!in) {
            snprintf(buf, sizeof buf, "%" PRIu64, i);
            in = buf;
        }
        rc = loom_map_submit(m, in, strlen(in));
    }
    if (rc == 0)
        rc = loom_map_close(m);
    loom_result r;
    while (rc == 0) {
        int nrc = loom_map_next(m, &r, 60000);
        if (nrc <= 0) {
            rc = nrc;
            break;
        }
        s_tally_add(t, &r);
        if (hook)
            hook(arg, t->received);
    }
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    return rc;
}

static loom_client *
s_client(const s_cluster *c)
{
    loom_client_opts o = s_client_opts(10000);
    loom_client *cl = loom_client_new(c->task_ep, &o);
    assert_non_null(cl);
    return cl;
}

//  ---------------------------------------------------------------------------
//  Worker processes die, hang, poison

typedef struct {
    pid_t sup;
    uint64_t at[4]; //  kill a worker process when this many results came
    size_t nat, done;
    int kills;
} s_killer;

static void
s_kill_hook(void *arg, uint64_t got)
{
    s_killer *k = arg;
    if (k->done < k->nat && got >= k->at[k->done]) {
        pid_t pids[S_MAX_PIDS];
        size_t n = s_children(k->sup, pids, S_MAX_PIDS);
        if (n > 0 && kill(pids[k->done % n], SIGKILL) == 0)
            k->kills++;
        k->done++;
    }
}

static void
test_sigkilled_worker_processes_lose_nothing(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    pid_t sup = s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client *cl = s_client(&c);
    s_killer k = {.sup = sup, .at = {40, 120, 200}, .nat = 3};
    loom_map_opts o = {.chunk = 4};
    s_tally t;
    assert_int_equal(s_run(cl, "sleep", "3", 300, &o, &t, s_kill_hook, &k), 0);
    assert_int_equal(k.kills, 3);
    s_assert_exactly_once(&t);
    loom_wire_stats st;
    assert_true(s_stats(&c, &st));
    assert_true(st.items_retried > 0);
    free(t.seen);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

static void
test_poison_item_fails_alone_naming_the_signal(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client *cl = s_client(&c);
    loom_pipeline *p = loom_pipeline_new(cl, "poison");
    loom_map_opts o = {.chunk = 16};
    loom_map *m = loom_map_new(p, "testkit", "crash", &o);
    assert_non_null(m);
    const uint64_t n = 200, poison = 37;
    for (uint64_t i = 0; i < n; i++) {
        char buf[32];
        int len = i == poison ? snprintf(buf, sizeof buf, "crash")
                              : snprintf(buf, sizeof buf, "%" PRIu64, i);
        assert_int_equal(loom_map_submit(m, buf, (size_t)len), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    s_tally t;
    s_tally_init(&t, n);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        s_tally_add(&t, &r);
        if (r.index == poison) {
            assert_int_equal(r.status, LOOM_ECRASHED);
            assert_non_null(r.error);
            assert_non_null(strstr(r.error, "SIGSEGV"));
        } else {
            char want[32];
            int len = snprintf(want, sizeof want, "%" PRIu64, r.index);
            assert_int_equal(r.status, 0);
            assert_int_equal(r.len, (size_t)len);
            assert_memory_equal(r.data, want, (size_t)len);
        }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(t.failed, 1);
    assert_int_equal(t.dups, 0);
    assert_int_equal(s_tally_missing(&t), 0);
    assert_int_equal(t.received, n);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

static void
test_hung_item_times_out_without_holding_up_the_map(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client *cl = s_client(&c);
    loom_pipeline *p = loom_pipeline_new(cl, "hung");
    loom_map_opts o = {.timeout_ms = 300, .chunk = 8};
    loom_map *m = loom_map_new(p, "testkit", "sleep", &o);
    assert_non_null(m);
    const uint64_t n = 400, hung = 5;
    int64_t start = loom_now_ms();
    for (uint64_t i = 0; i < n; i++) {
        const char *in = i == hung ? "600000" : "1";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    s_tally t;
    s_tally_init(&t, n);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        s_tally_add(&t, &r);
        if (r.index == hung) {
            assert_int_equal(r.status, LOOM_ETIMEDOUT);
            assert_non_null(strstr(r.error, "timed out"));
        } else
            assert_int_equal(r.status, 0);
    }
    int64_t took = loom_now_ms() - start;
    assert_int_equal(rc, 0);
    assert_int_equal(t.failed, 1);
    assert_int_equal(t.dups, 0);
    assert_int_equal(s_tally_missing(&t), 0);
    //  400 items of 1 ms on 2 processes, one of them killed once: a few
    //  hundred ms, nowhere near the hung item's 10 minutes.
    assert_true(took < 5000);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  ---------------------------------------------------------------------------
//  A whole host goes silent (SIGSTOP), then wakes up

typedef struct {
    pid_t sup;
    pid_t stopped[S_MAX_PIDS];
    size_t nstopped;
    uint64_t at;
} s_freezer;

static void
s_freeze_hook(void *arg, uint64_t got)
{
    s_freezer *f = arg;
    if (f->nstopped || got < f->at)
        return;
    f->stopped[0] = f->sup;
    f->nstopped = 1 + s_children(f->sup, f->stopped + 1, S_MAX_PIDS - 1);
    for (size_t i = 0; i < f->nstopped; i++)
        kill(f->stopped[i], SIGSTOP);
}

static void
test_stopped_host_is_declared_dead_and_its_late_results_dropped(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    pid_t a = s_host_start(&c, "1");
    assert_true(s_wait_workers(&c, 1, 10000));
    s_host_start(&c, "1");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client *cl = s_client(&c);
    s_freezer f = {.sup = a, .at = 3};
    loom_map_opts o = {.chunk = 1};
    s_tally t;
    int64_t start = loom_now_ms();
    assert_int_equal(s_run(cl, "sleep", "150", 16, &o, &t, s_freeze_hook, &f), 0);
    int64_t took = loom_now_ms() - start;
    assert_true(f.nstopped >= 2);
    s_assert_exactly_once(&t);
    //  16 x 150 ms mostly on one process, after an expiry of 300 ms.
    assert_true(took < 10000);
    loom_wire_stats before;
    assert_true(s_stats(&c, &before));
    assert_int_equal(before.workers, 1);
    assert_true(before.items_retried >= 1);
    //  Wake the host: it joins again, and its late result is dropped: by
    //  the broker (a ResultBatch from a session it ended: results_dropped)
    //  when it gets there before the worker hears it lost its session, or
    //  by the worker itself (results of an old connection are never sent).
    for (size_t i = 0; i < f.nstopped; i++)
        kill(f.stopped[i], SIGCONT);
    assert_true(s_wait_workers(&c, 2, 5000));
    loom_wire_stats after;
    assert_true(s_stats(&c, &after));
    fprintf(stderr, "test_faults: late results dropped by the broker: %llu\n",
            (unsigned long long)(after.results_dropped - before.results_dropped));
    assert_int_equal(after.items_done, before.items_done);
    assert_int_equal(after.items_in_flight, 0);
    //  And it takes work again: a second map runs exactly once on both.
    s_tally t2;
    assert_int_equal(s_run(cl, "workerid", NULL, 200, NULL, &t2, NULL, NULL), 0);
    assert_int_equal(t2.dups, 0);
    assert_int_equal(t2.failed, 0);
    assert_int_equal(s_tally_missing(&t2), 0);
    free(t2.seen);
    free(t.seen);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  ---------------------------------------------------------------------------
//  A client dies

static void
test_killed_client_is_cancelled_and_others_continue(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    const char *argv[16] = {s_exe(), "map", "testkit", "sleep", "--connect", c.task_ep};
    argv[loom_test_curve_peer_argv(argv, 6, false)] = NULL;
    pid_t client = s_spawn_io(argv, fds[0]);
    s_extra[0] = client;
    close(fds[0]);
    for (int i = 0; i < 500; i++)
        assert_int_equal(write(fds[1], "50\n", 3), 3);
    //  Its items are running.
    loom_wire_stats st;
    int64_t deadline = loom_now_ms() + 10000;
    while (!(s_stats(&c, &st) && st.items_in_flight > 0 && st.items_queued > 0)) {
        assert_true(loom_now_ms() < deadline);
        zclock_sleep(20);
    }
    kill(client, SIGKILL);
    assert_true(s_wait_exit(client, 2000) != -1);
    s_extra[0] = 0;
    close(fds[1]);
    int64_t killed = loom_now_ms();
    //  Within the expiry (300 ms) and a running item (50 ms): forgotten.
    deadline = killed + 2000;
    while (!(s_stats(&c, &st) && st.clients == 0 && st.maps == 0 && st.items_queued == 0 &&
             st.items_in_flight == 0)) {
        assert_true(loom_now_ms() < deadline);
        zclock_sleep(20);
    }
    int64_t took = loom_now_ms() - killed;
    fprintf(stderr, "test_faults: killed client forgotten after %lld ms\n", (long long)took);
    assert_true(took < 1500);
    loom_client *cl = s_client(&c);
    s_tally t;
    int64_t start = loom_now_ms();
    assert_int_equal(s_run(cl, "echo", NULL, 1000, NULL, &t, NULL, NULL), 0);
    s_assert_exactly_once(&t);
    //  The workers are free: 1000 echoes do not wait behind 500 x 50 ms.
    assert_true(loom_now_ms() - start < 5000);
    free(t.seen);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  ---------------------------------------------------------------------------
//  Shutdown

typedef struct {
    pid_t host;
    uint64_t at;
    bool done;
    int status;
} s_terminator;

static void
s_term_hook(void *arg, uint64_t got)
{
    s_terminator *x = arg;
    if (x->done || got < x->at)
        return;
    x->done = true;
    kill(x->host, SIGTERM);
}

static void
test_sigterm_to_a_worker_host_loses_nothing(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    pid_t a = s_host_start(&c, "2");
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 4, 10000));
    loom_client *cl = s_client(&c);
    s_terminator x = {.host = a, .at = 50};
    loom_map_opts o = {.chunk = 8};
    s_tally t;
    assert_int_equal(s_run(cl, "sleep", "5", 400, &o, &t, s_term_hook, &x), 0);
    assert_true(x.done);
    s_assert_exactly_once(&t);
    int status = s_wait_exit(a, 5000);
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    c.hosts[0] = 0;
    free(t.seen);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

static void
s_broker_signal_exits_cleanly(int sig)
{
    static s_cluster c; //  static: the teardown may stop it after a failure
    s_cluster_init(&c);
    s_host_start(&c, "1");
    assert_true(s_wait_workers(&c, 1, 10000));
    loom_client *cl = s_client(&c);
    int64_t start = loom_now_ms();
    kill(c.broker, sig);
    int status = s_wait_exit(c.broker, 3000);
    int64_t took = loom_now_ms() - start;
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(took < 1000);
    c.broker = 0;
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

static void
test_broker_exits_cleanly_on_sigint(void **state)
{
    (void)state;
    s_broker_signal_exits_cleanly(SIGINT);
}

static void
test_broker_exits_cleanly_on_sigterm(void **state)
{
    (void)state;
    s_broker_signal_exits_cleanly(SIGTERM);
}

//  A process's threads: is one of them sleeping in nanosleep (a task)?
static bool
s_in_nanosleep(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char wpath[512], buf[64] = "";
        snprintf(wpath, sizeof wpath, "/proc/%d/task/%s/wchan", (int)pid, e->d_name);
        FILE *f = fopen(wpath, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        found = strstr(buf, "nanosleep") != NULL;
    }
    closedir(d);
    return found;
}

static void
test_ctrl_c_on_embedded_map_exits_at_once_leaving_nothing(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    //  The embedded cluster: no network, no keys, in either mode.
    const char *argv[] = {s_exe(), "map", "testkit", "sleep", "--procs", "2", NULL};
    pid_t map = s_spawn_io(argv, fds[0]);
    s_extra[0] = map;
    close(fds[0]);
    for (int i = 0; i < 20; i++)
        assert_int_equal(write(fds[1], "60000\n", 6), 6);
    //  Wait until both worker processes run a 60 s item.
    pid_t pids[S_MAX_PIDS];
    size_t n = 0;
    int64_t deadline = loom_now_ms() + 10000;
    while (true) {
        n = s_descendants(map, pids, S_MAX_PIDS);
        size_t sleeping = 0;
        for (size_t i = 0; i < n; i++)
            sleeping += s_in_nanosleep(pids[i]);
        if (n == 3 && sleeping == 2)
            break;
        assert_true(loom_now_ms() < deadline);
        zclock_sleep(20);
    }
    int64_t start = loom_now_ms();
    kill(map, SIGINT);
    int status = s_wait_exit(map, 5000);
    int64_t took = loom_now_ms() - start;
    if (status != -1)
        s_extra[0] = 0;
    close(fds[1]);
    fprintf(stderr, "test_faults: loom map exited %lld ms after SIGINT\n", (long long)took);
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_true(WEXITSTATUS(status) != 0);
    assert_true(took < 1000);
    //  Nothing left behind (reparented processes are reaped by init).
    deadline = loom_now_ms() + 1000;
    for (size_t i = 0; i < n; i++) {
        while (s_alive(pids[i]) && loom_now_ms() < deadline)
            zclock_sleep(10);
        if (s_alive(pids[i]))
            kill(pids[i], SIGKILL);
        assert_false(s_alive(pids[i]));
    }
}

//  ---------------------------------------------------------------------------
//  The broker restarts

//  kill -9 the broker and start it again on the same endpoints.
static void
s_broker_restart(s_cluster *c)
{
    kill(c->broker, SIGKILL);
    assert_true(s_wait_exit(c->broker, 5000) != -1);
    c->broker = 0;
    assert_int_equal(s_broker_start(c), 0);
}

//  Run sleep over n items, restarting the broker once `at` items have
//  been submitted (during submission, with a window) or `at` - n results
//  have come (while reading).
static void
s_restart_run(s_cluster *c, loom_client *cl, uint64_t n, uint64_t at, const loom_map_opts *o)
{
    loom_pipeline *p = loom_pipeline_new(cl, "restart");
    assert_non_null(p);
    loom_map *m = loom_map_new(p, "testkit", "sleep", o);
    assert_non_null(m);
    s_tally t;
    s_tally_init(&t, n);
    bool restarted = false;
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(loom_map_submit(m, "2", 1), 0);
        if (!restarted && i + 1 == at) {
            s_broker_restart(c);
            restarted = true;
        }
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc;
    uint64_t next = 0;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        if (o && o->ordered)
            assert_int_equal(r.index, next++);
        s_tally_add(&t, &r);
        if (!restarted && n + t.received >= at) {
            s_broker_restart(c);
            restarted = true;
        }
    }
    assert_int_equal(rc, 0);
    assert_true(restarted);
    s_assert_exactly_once(&t);
    free(t.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

static void
test_broker_restart_mid_map_loses_nothing(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    loom_client *cl = s_client(&c);
    loom_map_opts o = {.chunk = 4};
    //  While reading results (everything submitted).
    s_restart_run(&c, cl, 600, 600 + 150, &o);
    assert_int_equal(cl->reconnects, 1);
    //  The worker processes and their supervisor came back on their own.
    assert_true(s_wait_workers(&c, 2, 5000));
    loom_wire_stats st;
    assert_true(s_stats(&c, &st));
    assert_int_equal(st.supervisors, 1);
    assert_true(st.items_done < 600);
    //  While submitting, ordered, with a window smaller than the map.
    loom_map_opts o2 = {.chunk = 4, .window = 64, .ordered = true};
    s_restart_run(&c, cl, 600, 300, &o2);
    assert_int_equal(cl->reconnects, 2);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

static void
test_broker_gone_for_good_is_lost_after_the_timeout(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start(&c, "1");
    assert_true(s_wait_workers(&c, 1, 10000));
    loom_client_opts co = s_client_opts(1000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    loom_pipeline *p = loom_pipeline_new(cl, "gone");
    loom_map *m = loom_map_new(p, "testkit", "sleep", NULL);
    assert_non_null(m);
    for (int i = 0; i < 20; i++)
        assert_int_equal(loom_map_submit(m, "50", 2), 0);
    assert_int_equal(loom_map_close(m), 0);
    kill(c.broker, SIGKILL);
    assert_true(s_wait_exit(c.broker, 5000) != -1);
    c.broker = 0;
    int64_t start = loom_now_ms();
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 10000)) == 1)
        ;
    int64_t took = loom_now_ms() - start;
    assert_int_equal(rc, LOOM_ECONNECT);
    //  Silence (300 ms) plus the client's timeout (1 s), not sooner.
    assert_true(took >= 1000);
    assert_true(took < 5000);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  ---------------------------------------------------------------------------
//  Bounded memory

//  VmRSS of a process in KiB (0 if unknown).
static long
s_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

typedef struct {
    uint64_t got, bad;
    uint8_t *seen;
} s_stream;

static void
s_stream_result(const loom_result *r, void *user)
{
    s_stream *st = user;
    if (r->status != 0 || (st->seen[r->index >> 3] & (1u << (r->index & 7))))
        st->bad++;
    st->seen[r->index >> 3] |= (uint8_t)(1u << (r->index & 7));
    st->got++;
}

//  A client streaming many items with a window keeps a flat RSS, and so
//  does the broker. LOOM_MEMORY_ITEMS sets the count (default 1 M; the
//  issue's figure is 10 M).
static void
test_streaming_client_and_broker_keep_a_flat_rss(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    //  AddressSanitizer keeps freed memory in quarantine: RSS says nothing.
    fprintf(stderr, "test_faults: RSS not measured under AddressSanitizer\n");
    skip();
#endif
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    uint64_t n = 1000000;
    if (getenv("LOOM_MEMORY_ITEMS"))
        n = strtoull(getenv("LOOM_MEMORY_ITEMS"), NULL, 10);
    loom_client *cl = s_client(&c);
    loom_pipeline *p = loom_pipeline_new(cl, "stream");
    s_stream st = {.seen = calloc(n / 8 + 1, 1)};
    loom_map_opts o = {.window = 10000, .on_result = s_stream_result, .user = &st};
    loom_map *m = loom_map_new(p, "testkit", "echo", &o);
    assert_non_null(m);
    long me_10 = 0, broker_10 = 0;
    int64_t start = loom_now_ms();
    char buf[32];
    for (uint64_t i = 0; i < n; i++) {
        int len = snprintf(buf, sizeof buf, "item %" PRIu64, i);
        assert_int_equal(loom_map_submit(m, buf, (size_t)len), 0);
        if (i + 1 == n / 10) {
            me_10 = s_rss_kib(getpid());
            broker_10 = s_rss_kib(c.broker);
        }
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 120000), 0);
    long me_100 = s_rss_kib(getpid()), broker_100 = s_rss_kib(c.broker);
    int64_t took = loom_now_ms() - start;
    fprintf(stderr,
            "test_faults: %" PRIu64 " items in %lld ms (%.0f/s); RSS at 10%% / 100%%: "
            "client %ld / %ld KiB, broker %ld / %ld KiB\n",
            n, (long long)took, n * 1000.0 / (double)(took ? took : 1), me_10, me_100,
            broker_10, broker_100);
    assert_int_equal(st.got, n);
    assert_int_equal(st.bad, 0);
    //  Flat: what grows with n is the client's done bitmap (n / 8 bytes,
    //  125 KiB per million) and the broker's (the same, per map).
    long slack = 8 * 1024 + (long)(n / 8 / 1024);
    assert_true(me_100 - me_10 < slack);
    assert_true(broker_100 - broker_10 < slack);
    free(st.seen);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  A client that stops reading its results (loom map with a stdout pipe
//  nobody reads) stalls its own map: the broker holds at most the window
//  of its items and its memory stays flat, and the map completes once the
//  client reads again.
static void
test_client_not_reading_stalls_without_growing_the_broker(void **state)
{
    (void)state;
    static s_cluster c;
    s_cluster_init(&c);
    s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2, 10000));
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    const char *argv[16] = {s_exe(),     "map",     "testkit",  "echo",
                            "--connect", c.task_ep, "--window", "2000"};
    argv[loom_test_curve_peer_argv(argv, 8, false)] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    s_extra[0] = pid;
    close(in[0]);
    close(out[1]);
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    //  Feed it until its stdin is full, without reading its stdout: each
    //  output line is ~100 bytes, the stdout pipe holds 64 KiB.
    const uint64_t total = 200000;
    char line[128];
    memset(line, 'x', sizeof line);
    uint64_t fed = 0;
    size_t part = 0; //  bytes of the current line already written
    loom_wire_stats st, prev = {0};
    long rss_first = 0, rss_last = 0;
    int stalls = 0;
    int64_t deadline = loom_now_ms() + 30000;
    while (stalls < 10) {
        assert_true(loom_now_ms() < deadline);
        while (fed < total) {
            line[99] = '\n';
            ssize_t k = write(in[1], line + part, 100 - part);
            if (k <= 0)
                break;
            part += (size_t)k;
            if (part == 100) {
                part = 0;
                fed++;
            }
        }
        zclock_sleep(100); //  sample the broker every 100 ms
        assert_true(s_stats(&c, &st));
        assert_true(st.items_queued + st.items_in_flight <= 2000);
        if (st.items_done == prev.items_done && st.items_done > 0) {
            if (!stalls++)
                rss_first = s_rss_kib(c.broker);
        } else
            stalls = 0;
        prev = st;
    }
    rss_last = s_rss_kib(c.broker);
    fprintf(stderr,
            "test_faults: client not reading: broker stalled at %llu done, %llu queued, "
            "%llu in flight, RSS %ld -> %ld KiB over 1 s\n",
            (unsigned long long)st.items_done, (unsigned long long)st.items_queued,
            (unsigned long long)st.items_in_flight, rss_first, rss_last);
    assert_true(st.items_done < total);
#if defined(__SANITIZE_ADDRESS__)
    //  AddressSanitizer keeps freed memory in quarantine (more of it under
    //  CURVE, which allocates for every message): RSS says nothing here.
    fprintf(stderr, "test_faults: broker RSS not checked under AddressSanitizer\n");
#else
    assert_true(rss_last - rss_first < 1024);
#endif
    //  Read again: everything comes out.
    fcntl(in[1], F_SETFL, 0);
    fcntl(out[0], F_SETFL, 0);
    uint64_t lines = 0;
    char buf[65536];
    while (true) {
        while (fed < total) {
            struct pollfd pf[2] = {{.fd = in[1], .events = POLLOUT}, {.fd = out[0], .events = POLLIN}};
            poll(pf, 2, 1000);
            if (pf[0].revents & POLLOUT) {
                fcntl(in[1], F_SETFL, O_NONBLOCK);
                ssize_t k = write(in[1], line + part, 100 - part);
                fcntl(in[1], F_SETFL, 0);
                if (k > 0 && (part += (size_t)k) == 100) {
                    part = 0;
                    fed++;
                }
            }
            if (pf[1].revents & POLLIN) {
                ssize_t k = read(out[0], buf, sizeof buf);
                for (ssize_t i = 0; i < k; i++)
                    lines += buf[i] == '\n';
            }
        }
        if (in[1] >= 0) {
            close(in[1]);
            in[1] = -1;
        }
        ssize_t k = read(out[0], buf, sizeof buf);
        if (k <= 0)
            break;
        for (ssize_t i = 0; i < k; i++)
            lines += buf[i] == '\n';
    }
    close(out[0]);
    int status = s_wait_exit(pid, 10000);
    s_extra[0] = 0;
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(lines, total);
    s_cluster_stop(&c);
}

//  The most voluntary context switches a second of any thread of pid named
//  "loom" (the process's own threads; libzmq's are named ZMQbg/...) over
//  ms, or -1 if it could not be read.
static double
s_loom_thread_wakeups(pid_t pid, int ms)
{
    enum { MAXT = 16 };
    long tid[MAXT], before[MAXT];
    int n = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            zclock_sleep(ms);
        char path[96];
        snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
        DIR *d = opendir(path);
        if (!d)
            return -1;
        struct dirent *e;
        double most = 0;
        while ((e = readdir(d))) {
            long t = strtol(e->d_name, NULL, 10);
            if (t <= 0)
                continue;
            char file[160], line[256], comm[64] = "";
            snprintf(file, sizeof file, "/proc/%d/task/%ld/status", (int)pid, t);
            FILE *f = fopen(file, "r");
            if (!f)
                continue;
            long vol = -1;
            while (fgets(line, sizeof line, f)) {
                sscanf(line, "Name: %63s", comm);
                sscanf(line, "voluntary_ctxt_switches: %ld", &vol);
            }
            fclose(f);
            if (strcmp(comm, "loom") != 0 || vol < 0)
                continue;
            if (!pass && n < MAXT) {
                tid[n] = t;
                before[n++] = vol;
            }
            for (int i = 0; pass && i < n; i++)
                if (tid[i] == t && (vol - before[i]) * 1000.0 / ms > most)
                    most = (vol - before[i]) * 1000.0 / ms;
        }
        closedir(d);
        if (pass)
            return most;
    }
    return -1;
}

//  An idle worker host sleeps until its next heartbeat instead of waking
//  every 20 ms tick (50 times a second, before): with 1 s heartbeats no
//  thread of the supervisor or of its worker process wakes more than 15
//  times a second. Sleeping that long must not make it slow to act: a
//  worker process killed while idle is started again, and a SIGTERM ends
//  the host, within a second.
static void
test_idle_host_sleeps_between_heartbeats(void **state)
{
    (void)state;
    static s_cluster c; //  static: the teardown may stop it after a failure
    char *saved = getenv("LOOM_HEARTBEAT_MS") ? strdup(getenv("LOOM_HEARTBEAT_MS")) : NULL;
    setenv("LOOM_HEARTBEAT_MS", "1000", 1);
    s_cluster_init(&c);
    pid_t host = s_host_start(&c, "1");
    bool up = s_wait_workers(&c, 1, 10000);
    if (saved) {
        setenv("LOOM_HEARTBEAT_MS", saved, 1);
        free(saved);
    } else
        unsetenv("LOOM_HEARTBEAT_MS");
    assert_true(up);
    pid_t kids[4];
    assert_int_equal(s_children(host, kids, 4), 1);
    double sup = s_loom_thread_wakeups(host, 2000);
    double proc = s_loom_thread_wakeups(kids[0], 2000);
    print_message("idle wake-ups a second, busiest thread: supervisor %.1f, worker process %.1f\n",
                  sup, proc);
    assert_true(sup >= 0 && sup < 15);
    assert_true(proc >= 0 && proc < 15);

    kill(kids[0], SIGKILL);
    int64_t until = loom_now_ms() + 1000;
    pid_t now[4];
    size_t n = 0;
    while (loom_now_ms() < until && !(n == 1 && now[0] != kids[0])) {
        zclock_sleep(10);
        n = s_children(host, now, 4);
    }
    assert_true(n == 1 && now[0] != kids[0]);

    kill(host, SIGTERM);
    int status = s_wait_exit(host, 1000);
    assert_true(status != -1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    c.hosts[0] = 0;
    s_cluster_stop(&c);
}

int
main(void)
{
    zsys_init();
    zsys_handler_set(NULL);
    printf("# faults%s\n", loom_test_curve_mode());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sigkilled_worker_processes_lose_nothing, s_teardown),
        cmocka_unit_test_teardown(test_poison_item_fails_alone_naming_the_signal, s_teardown),
        cmocka_unit_test_teardown(test_hung_item_times_out_without_holding_up_the_map, s_teardown),
        cmocka_unit_test_teardown(test_stopped_host_is_declared_dead_and_its_late_results_dropped, s_teardown),
        cmocka_unit_test_teardown(test_killed_client_is_cancelled_and_others_continue, s_teardown),
        cmocka_unit_test_teardown(test_sigterm_to_a_worker_host_loses_nothing, s_teardown),
        cmocka_unit_test_teardown(test_broker_exits_cleanly_on_sigint, s_teardown),
        cmocka_unit_test_teardown(test_broker_exits_cleanly_on_sigterm, s_teardown),
        cmocka_unit_test_teardown(test_ctrl_c_on_embedded_map_exits_at_once_leaving_nothing, s_teardown),
        cmocka_unit_test_teardown(test_broker_restart_mid_map_loses_nothing, s_teardown),
        cmocka_unit_test_teardown(test_broker_gone_for_good_is_lost_after_the_timeout, s_teardown),
        cmocka_unit_test_teardown(test_streaming_client_and_broker_keep_a_flat_rss, s_teardown),
        cmocka_unit_test_teardown(test_client_not_reading_stalls_without_growing_the_broker,
                                  s_teardown),
        cmocka_unit_test_teardown(test_idle_host_sleeps_between_heartbeats, s_teardown),
    };
    if (getenv("LOOM_TEST_FILTER")) //  run only the tests matching this pattern
        cmocka_set_test_filter(getenv("LOOM_TEST_FILTER"));
    int rc = cmocka_run_group_tests_name("faults", tests, NULL, NULL);
    //  A failed test may leave a client behind: do not wait for it at exit
    //  (so remove the CURVE keys here: _exit runs no atexit handler).
    s_ltc_cleanup();
    fflush(NULL);
    _exit(rc);
}
