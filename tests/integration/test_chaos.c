/*  test_chaos: maps run one after another while worker processes are
    killed (SIGKILL) and stopped (SIGSTOP, then SIGCONT a moment later) at
    random, whole worker hosts are stopped, and the broker is killed (-9)
    and started again on the same endpoints; every map must still yield
    each index exactly once, all successes.

    A second run does it under memory kills: hosts keep to --max-rss,
    items leak (processes replaced or ended), hogs go over the limit on
    every run (they fail LOOM_ENOMEM, the one failure allowed), and
    processes holding memory are killed by SIGKILL as the OOM killer would.

    Fixed seed (LOOM_CHAOS_SEED, default 42) and bounded time: 20 s by
    default, LOOM_CHAOS_SECONDS for longer. Prints the faults survived.

    Part of the test matrix: chaos-curve (LOOM_TEST_CURVE=1) runs it with
    the broker under CURVE and the hosts and the client keyed, so every
    reconnection after a broker restart makes a new CURVE handshake.  */

#include "loom_test.h"

#include "faults_procs.h"

#define S_HOSTS 2
#define S_ITEMS 3000

static uint64_t s_rng;

static uint64_t
s_rand(uint64_t n)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng % n;
}

typedef struct {
    s_cluster *c;
    int64_t next_at;             //  next fault
    pid_t stopped[S_MAX_PIDS];   //  processes stopped, to continue at wake[i]
    int64_t wake[S_MAX_PIDS];
    size_t nstopped;
    unsigned kills, stops, host_stops, restarts;
} s_chaos;

static void
s_chaos_wake(s_chaos *x, bool all)
{
    int64_t now = loom_now_ms();
    for (size_t i = 0; i < x->nstopped;) {
        if (all || now >= x->wake[i]) {
            kill(x->stopped[i], SIGCONT);
            x->stopped[i] = x->stopped[--x->nstopped];
            x->wake[i] = x->wake[x->nstopped];
        } else
            i++;
    }
}

static void
s_chaos_stop(s_chaos *x, pid_t pid, int64_t ms)
{
    if (x->nstopped == S_MAX_PIDS || kill(pid, SIGSTOP) != 0)
        return;
    x->stopped[x->nstopped] = pid;
    x->wake[x->nstopped++] = loom_now_ms() + ms;
}

//  Inflict the next fault if it is due.
static void
s_chaos_tick(s_chaos *x)
{
    s_chaos_wake(x, false);
    int64_t now = loom_now_ms();
    if (now < x->next_at)
        return;
    x->next_at = now + 100 + (int64_t)s_rand(400);
    pid_t host = x->c->hosts[s_rand(x->c->nhosts)];
    pid_t procs[S_MAX_PIDS];
    size_t n = s_children(host, procs, S_MAX_PIDS);
    uint64_t kind = s_rand(20);
    if (kind < 10) {
        if (n && kill(procs[s_rand(n)], SIGKILL) == 0)
            x->kills++;
    } else if (kind < 16) {
        if (n) {
            s_chaos_stop(x, procs[s_rand(n)], 50 + (int64_t)s_rand(950));
            x->stops++;
        }
    } else if (kind < 18) {
        int64_t ms = 200 + (int64_t)s_rand(1000);
        s_chaos_stop(x, host, ms);
        for (size_t i = 0; i < n; i++)
            s_chaos_stop(x, procs[i], ms);
        x->host_stops++;
    } else {
        kill(x->c->broker, SIGKILL);
        assert_true(s_wait_exit(x->c->broker, 5000) != -1);
        x->c->broker = 0;
        assert_int_equal(s_broker_start(x->c), 0);
        x->restarts++;
    }
}

static void
test_exactly_once_under_chaos(void **state)
{
    (void)state;
    long seconds = 20;
    if (getenv("LOOM_CHAOS_SECONDS"))
        seconds = strtol(getenv("LOOM_CHAOS_SECONDS"), NULL, 10);
    s_rng = 42;
    if (getenv("LOOM_CHAOS_SEED"))
        s_rng = strtoull(getenv("LOOM_CHAOS_SEED"), NULL, 10);
    if (!s_rng)
        s_rng = 42;
    static s_cluster c;
    s_cluster_init(&c);
    for (int i = 0; i < S_HOSTS; i++)
        s_host_start(&c, "2");
    assert_true(s_wait_workers(&c, 2 * S_HOSTS, 10000));
    //  The client waits out broker restarts for up to 30 s.
    loom_client_opts co = s_client_opts(30000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    s_chaos x = {.c = &c, .next_at = loom_now_ms() + 200};
    int64_t end = loom_now_ms() + seconds * 1000;
    unsigned maps = 0;
    uint64_t items = 0;
    while (loom_now_ms() < end) {
        loom_pipeline *p = loom_pipeline_new(cl, "chaos");
        assert_non_null(p);
        //  Retries enough that random kills cannot fail an item by chance.
        loom_map_opts o = {.retries = 20, .ordered = maps % 2 == 1,
                           .window = maps % 3 == 2 ? 200 : 0};
        loom_map *m = loom_map_new(p, "testkit", "sleep", &o);
        assert_non_null(m);
        s_tally t;
        s_tally_init(&t, S_ITEMS);
        for (uint64_t i = 0; i < S_ITEMS; i++) {
            assert_int_equal(loom_map_submit(m, i % 7 ? "0" : "2", 1), 0);
            if (i % 64 == 0)
                s_chaos_tick(&x);
        }
        assert_int_equal(loom_map_close(m), 0);
        int64_t deadline = loom_now_ms() + 120000;
        uint64_t next = 0;
        loom_result r;
        int rc;
        while ((rc = loom_map_next(m, &r, 50)) != 0) {
            assert_true(loom_now_ms() < deadline);
            if (rc == LOOM_EAGAIN) {
                s_chaos_tick(&x);
                continue;
            }
            assert_int_equal(rc, 1);
            if (r.status != 0)
                fprintf(stderr, "test_chaos: item %" PRIu64 " failed: %s\n", r.index,
                        r.error ? r.error : "?");
            if (o.ordered)
                assert_int_equal(r.index, next++);
            s_tally_add(&t, &r);
            if (t.received % 64 == 0)
                s_chaos_tick(&x);
        }
        s_assert_exactly_once(&t);
        free(t.seen);
        loom_map_destroy(&m);
        loom_pipeline_destroy(&p);
        maps++;
        items += S_ITEMS;
    }
    s_chaos_wake(&x, true);
    fprintf(stderr,
            "test_chaos: %u maps, %" PRIu64 " items exactly once through %u faults: "
            "%u worker processes killed, %u stopped, %u hosts stopped, %u broker restarts "
            "(seed %s, %ld s)\n",
            maps, items, x.kills + x.stops + x.host_stops + x.restarts, x.kills, x.stops,
            x.host_stops, x.restarts, getenv("LOOM_CHAOS_SEED") ? getenv("LOOM_CHAOS_SEED") : "42",
            seconds);
    assert_true(maps > 0);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

//  ---------------------------------------------------------------------------
//  Memory kills

#define S_MEM_ITEMS 1000
#define S_MEM_LIMIT "150" //  MiB per worker process (--max-rss)

//  A worker host of `procs` processes keeping to --max-rss S_MEM_LIMIT.
static pid_t
s_host_start_rss(s_cluster *c, const char *procs)
{
    const char *argv[16] = {s_exe(),   "worker", "--connect", c->task_ep,
                            "--procs", procs,    "--max-rss", S_MEM_LIMIT};
    size_t n = 8;
    if (!getenv("LOOM_TEST_VERBOSE"))
        argv[n++] = "--quiet";
    n = loom_test_curve_peer_argv(argv, n, true);
    argv[n] = NULL;
    pid_t pid = s_spawn(argv);
    if (pid > 0)
        c->hosts[c->nhosts++] = pid;
    return pid;
}

//  What item i of a memory map asks the leak task to keep: mostly
//  nothing; in maps without hogs every 50th 20 MiB (the processes fill up
//  and are replaced, or ended during the item that goes over, which runs
//  again alone); in hog maps two items 400 MiB, over the limit each run.
static const char *
s_mem_input(uint64_t i, bool hogs)
{
    if (hogs)
        return i == 100 || i == 700 ? "400" : "0";
    return i % 50 == 7 ? "20" : "0";
}

//  Maps run while worker processes run out of memory (hosts under
//  --max-rss) and, in maps without hogs, are killed by SIGKILL at random
//  while they hold what leaked, as the kernel's OOM killer kills. Every
//  index still yields exactly one result: a hog LOOM_ENOMEM saying it ran
//  out of memory, every other item a success.
static void
test_exactly_once_under_memory_kills(void **state)
{
    (void)state;
    //  What a hog's items are told is the supervisor's word on how its
    //  process ended, which must come before the broker takes the process
    //  for silent: on a loaded machine 3 x 100 ms (the tests' heartbeat) can
    //  pass while a process pages in 150 MiB. Its processes get 250 ms.
    char *hb = getenv("LOOM_HEARTBEAT_MS") ? strdup(getenv("LOOM_HEARTBEAT_MS")) : NULL;
    setenv("LOOM_HEARTBEAT_MS", "250", 1);
    long seconds = 12;
    if (getenv("LOOM_CHAOS_SECONDS"))
        seconds = strtol(getenv("LOOM_CHAOS_SECONDS"), NULL, 10);
    s_rng = 4242;
    if (getenv("LOOM_CHAOS_SEED"))
        s_rng = strtoull(getenv("LOOM_CHAOS_SEED"), NULL, 10) + 1;
    static s_cluster c;
    s_cluster_init(&c);
    for (int i = 0; i < S_HOSTS; i++)
        s_host_start_rss(&c, "2");
    assert_true(s_wait_workers(&c, 2 * S_HOSTS, 10000));
    loom_client_opts co = s_client_opts(30000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    int64_t end = loom_now_ms() + seconds * 1000;
    int64_t next_kill = loom_now_ms() + 300;
    unsigned maps = 0, kills = 0, hogs_failed = 0;
    uint64_t items = 0;
    while (loom_now_ms() < end || maps < 2) {
        bool hogs = maps % 2 == 1;
        loom_pipeline *p = loom_pipeline_new(cl, "memory");
        assert_non_null(p);
        //  Random kills need many retries; a hog's runs are few (each ends
        //  a process), and an item shares a hog's fate at most once.
        loom_map_opts o = {
            .retries = hogs ? 2 : 20, .ordered = maps % 4 == 2, .chunk = maps % 3 == 0 ? 16 : 0};
        loom_map *m = loom_map_new(p, "testkit", "leak", &o);
        assert_non_null(m);
        s_tally t;
        s_tally_init(&t, S_MEM_ITEMS);
        for (uint64_t i = 0; i < S_MEM_ITEMS; i++) {
            const char *in = s_mem_input(i, hogs);
            assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
        }
        assert_int_equal(loom_map_close(m), 0);
        int64_t deadline = loom_now_ms() + 120000;
        uint64_t next = 0;
        loom_result r;
        int rc;
        while ((rc = loom_map_next(m, &r, 50)) != 0) {
            assert_true(loom_now_ms() < deadline);
            if (!hogs && loom_now_ms() >= next_kill) {
                next_kill = loom_now_ms() + 300 + (int64_t)s_rand(500);
                pid_t procs[S_MAX_PIDS];
                size_t n = s_children(c.hosts[s_rand(c.nhosts)], procs, S_MAX_PIDS);
                if (n && kill(procs[s_rand(n)], SIGKILL) == 0)
                    kills++;
            }
            if (rc == LOOM_EAGAIN)
                continue;
            assert_int_equal(rc, 1);
            if (o.ordered)
                assert_int_equal(r.index, next++);
            s_tally_add(&t, &r);
            bool hog = r.index < S_MEM_ITEMS && !strcmp(s_mem_input(r.index, hogs), "400");
            if (hog) {
                if (r.status != LOOM_ENOMEM)
                    fprintf(stderr, "test_chaos: hog %" PRIu64 ": %d %s\n", r.index, r.status,
                            r.error ? r.error : "");
                assert_int_equal(r.status, LOOM_ENOMEM);
                assert_non_null(strstr(r.error, "ran out of memory"));
                hogs_failed++;
                t.failed--; //  the failure asked for
            } else if (r.status != 0)
                fprintf(stderr, "test_chaos: item %" PRIu64 " failed: %s\n", r.index,
                        r.error ? r.error : "?");
        }
        s_assert_exactly_once(&t);
        free(t.seen);
        loom_map_destroy(&m);
        loom_pipeline_destroy(&p);
        maps++;
        items += S_MEM_ITEMS;
    }
    fprintf(stderr,
            "test_chaos: %u maps, %" PRIu64 " items exactly once under --max-rss %s MiB: %u hogs "
            "failed out of memory, %u worker processes killed holding memory (seed %s, %ld s)\n",
            maps, items, S_MEM_LIMIT, hogs_failed, kills,
            getenv("LOOM_CHAOS_SEED") ? getenv("LOOM_CHAOS_SEED") : "42", seconds);
    assert_true(hogs_failed >= 2);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
    if (hb)
        setenv("LOOM_HEARTBEAT_MS", hb, 1);
    else
        unsetenv("LOOM_HEARTBEAT_MS");
    free(hb);
}

//  ---------------------------------------------------------------------------
//  Cancellations and init failures

#define S_CX_ITEMS 1000

//  A map cancelled (destroyed) a moment into it, its long items running:
//  what came before must be each index at most once, every one a success.
static void
s_cancelled_map(loom_client *cl, s_chaos *x, unsigned n, unsigned *cancelled)
{
    loom_pipeline *p = loom_pipeline_new(cl, "chaos-cancel");
    assert_non_null(p);
    const char *plugin = n % 3 == 2 ? "init_modes" : "testkit";
    const char *task = n % 3 == 0 ? "sleep" : n % 3 == 1 ? "sleep_coop" : "echo";
    loom_map_opts o = {.retries = 20};
    loom_map *m = loom_map_new(p, plugin, task, &o);
    assert_non_null(m);
    for (uint64_t i = 0; i < 200; i++) {
        const char *in = i % 9 == 4 ? "3000" : "5";
        assert_int_equal(loom_map_submit(m, in, strlen(in)), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    uint8_t seen[200] = {0};
    int64_t cancel_at = loom_now_ms() + 100 + (int64_t)s_rand(600);
    loom_result r;
    int rc;
    while (loom_now_ms() < cancel_at && (rc = loom_map_next(m, &r, 20)) != 0) {
        if (rc == LOOM_EAGAIN) {
            s_chaos_tick(x);
            continue;
        }
        assert_int_equal(rc, 1);
        assert_true(r.index < 200);
        assert_int_equal(seen[r.index]++, 0);
        if (r.status != 0 && r.status != LOOM_EINIT)
            fail_msg("cancelled map, item %" PRIu64 " before the cancel: %s", r.index,
                     r.error ? r.error : loom_strerror(r.status));
    }
    loom_map_destroy(&m); //  its items running now must stop
    loom_pipeline_destroy(&p);
    (*cancelled)++;
}

//  Maps run while others are cancelled with their items running (tasks
//  that stop when told and tasks that do not, whose processes are ended
//  and replaced), while init_modes' init fails (with its reason) in the
//  worker whose id is 0 and takes 200 ms elsewhere, so cancels also come
//  during inits, and while the faults of the first test go on. Every index
//  of every map that is not cancelled yields exactly one result: a
//  success, or LOOM_EINIT naming init (an item sent to the worker whose
//  init failed, the failure allowed). Afterwards nothing is left counted
//  as running.
static void
test_exactly_once_under_cancels_and_init_failures(void **state)
{
    (void)state;
    long seconds = 12;
    if (getenv("LOOM_CHAOS_SECONDS"))
        seconds = strtol(getenv("LOOM_CHAOS_SECONDS"), NULL, 10);
    s_rng = 4343;
    if (getenv("LOOM_CHAOS_SEED"))
        s_rng = strtoull(getenv("LOOM_CHAOS_SEED"), NULL, 10) + 2;
    static s_cluster c;
    s_cluster_init(&c);
    setenv("LOOM_TEST_INIT", "chaos", 1); //  the hosts' worker processes read it
    for (int i = 0; i < S_HOSTS; i++)
        s_host_start(&c, "2");
    unsetenv("LOOM_TEST_INIT");
    assert_true(s_wait_workers(&c, 2 * S_HOSTS, 10000));
    loom_client_opts co = s_client_opts(30000);
    loom_client *cl = loom_client_new(c.task_ep, &co);
    assert_non_null(cl);
    s_chaos x = {.c = &c, .next_at = loom_now_ms() + 200};
    int64_t end = loom_now_ms() + seconds * 1000;
    unsigned maps = 0, cancelled = 0, init_failed = 0;
    uint64_t items = 0;
    while (loom_now_ms() < end || maps < 2) {
        s_cancelled_map(cl, &x, maps + cancelled, &cancelled);
        bool init = maps % 2 == 1;
        loom_pipeline *p = loom_pipeline_new(cl, "chaos-survive");
        assert_non_null(p);
        loom_map_opts o = {.retries = 20, .ordered = maps % 4 == 3};
        loom_map *m = loom_map_new(p, init ? "init_modes" : "testkit", init ? "echo" : "sleep", &o);
        assert_non_null(m);
        s_tally t;
        s_tally_init(&t, S_CX_ITEMS);
        for (uint64_t i = 0; i < S_CX_ITEMS; i++) {
            const char *in = i % 7 ? "0" : "2";
            assert_int_equal(loom_map_submit(m, in, 1), 0);
            if (i % 64 == 0)
                s_chaos_tick(&x);
        }
        assert_int_equal(loom_map_close(m), 0);
        int64_t deadline = loom_now_ms() + 120000;
        uint64_t next = 0;
        loom_result r;
        int rc;
        while ((rc = loom_map_next(m, &r, 50)) != 0) {
            assert_true(loom_now_ms() < deadline);
            if (rc == LOOM_EAGAIN) {
                s_chaos_tick(&x);
                continue;
            }
            assert_int_equal(rc, 1);
            if (o.ordered)
                assert_int_equal(r.index, next++);
            s_tally_add(&t, &r);
            if (r.status == LOOM_EINIT && init) {
                assert_non_null(strstr(r.error, "plugin 'init_modes' init failed"));
                assert_non_null(strstr(r.error, "cannot open model"));
                init_failed++;
                t.failed--; //  the failure allowed
            } else if (r.status != 0)
                fprintf(stderr, "test_chaos: item %" PRIu64 " failed: %s\n", r.index,
                        r.error ? r.error : "?");
            if (t.received % 64 == 0)
                s_chaos_tick(&x);
        }
        s_assert_exactly_once(&t);
        free(t.seen);
        loom_map_destroy(&m);
        loom_pipeline_destroy(&p);
        maps++;
        items += S_CX_ITEMS;
    }
    s_chaos_wake(&x, true);
    //  Every cancelled item stopped: nothing is left counted as running.
    int64_t deadline = loom_now_ms() + 10000;
    loom_wire_stats st;
    memset(&st, 0, sizeof st);
    while (loom_now_ms() < deadline &&
           !(s_stats(&c, &st) && st.items_in_flight == 0 && st.items_cancelling == 0))
        zclock_sleep(50); //  the broker tells nobody: ask again
    assert_int_equal(st.items_cancelling, 0);
    assert_int_equal(st.items_in_flight, 0);
    fprintf(stderr,
            "test_chaos: %u maps, %" PRIu64 " items exactly once beside %u cancelled maps "
            "(%" PRIu64 " items answered after their cancel since the last broker start), %u items "
            "failed in init, "
            "through %u faults (seed %s, %ld s)\n",
            maps, items, cancelled, st.items_cancelled, init_failed,
            x.kills + x.stops + x.host_stops + x.restarts,
            getenv("LOOM_CHAOS_SEED") ? getenv("LOOM_CHAOS_SEED") : "42", seconds);
    assert_true(cancelled >= 2);
    loom_client_destroy(&cl);
    s_cluster_stop(&c);
}

int
main(void)
{
    zsys_init();
    zsys_handler_set(NULL);
    printf("# chaos%s\n", loom_test_curve_mode());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_exactly_once_under_chaos, s_teardown),
        cmocka_unit_test_teardown(test_exactly_once_under_memory_kills, s_teardown),
        cmocka_unit_test_teardown(test_exactly_once_under_cancels_and_init_failures, s_teardown),
    };
    int rc = cmocka_run_group_tests_name("chaos", tests, NULL, NULL);
    s_ltc_cleanup(); //  _exit runs no atexit handler
    fflush(NULL);
    _exit(rc);
}
