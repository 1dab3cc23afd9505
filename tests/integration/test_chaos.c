/*  test_chaos: maps run one after another while worker processes are
    killed (SIGKILL) and stopped (SIGSTOP, then SIGCONT a moment later) at
    random, whole worker hosts are stopped, and the broker is killed (-9)
    and started again on the same endpoints; every map must still yield
    each index exactly once, all successes.

    Fixed seed (LOOM_CHAOS_SEED, default 42) and bounded time: 20 s by
    default, LOOM_CHAOS_SECONDS for longer. Prints the faults survived.  */

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
    loom_client_opts co = {.timeout_ms = 30000};
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

int
main(void)
{
    zsys_init();
    zsys_handler_set(NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_exactly_once_under_chaos, s_teardown),
    };
    int rc = cmocka_run_group_tests_name("chaos", tests, NULL, NULL);
    fflush(NULL);
    _exit(rc);
}
