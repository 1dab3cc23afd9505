/*  test_cluster: the client API (loom.h only) against real clusters.

    - embedded mode: loom_client_new(NULL, {.local_workers = 2}) starts a
      broker in this process and two worker processes;
    - remote mode: `loom broker` and `loom worker --procs 2` started here as
      real processes ($LOOM_EXE) over tcp:// on a free loopback port, and over
      ipc:// paths unique to this process; clients connect to them, several
      at once from threads. Every process started is stopped by pid in the
      group teardown (and gets SIGTERM from the kernel if this test dies:
      PR_SET_PDEATHSIG). A share and an item file go over the broker's
      blob channel, not through the store's directory (LOOM_BLOB_LOCAL=0).

    Under CURVE (LOOM_TEST_CURVE=1, the cluster-curve run), the remote
    broker has an allow-list and the worker and every client the listed
    keys (tests/loom_test_curve.h); embedded mode is the same in both runs.

    Plugins: testkit (tests/plugins) and squares (plugins/), found through
    $LOOM_PLUGIN_PATH, which the meson test environment sets.  */

#include "loom_test.h"
#include "loom_test_curve.h"
#include "plugins/byte_sum.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include <loom/loom.h>

#define S_ITEMS 2000

//  ---------------------------------------------------------------------------
//  Helpers

//  Counts of results per index, to check that each index yields exactly one.
typedef struct {
    uint64_t n;
    uint8_t *seen;
    uint64_t dups;     //  results for an index seen before
    uint64_t bad;      //  results for an index out of range, or wrong data
    uint64_t failed;   //  results with a non-zero status
    uint64_t received; //  every result
} s_tally;

static void
s_tally_init(s_tally *t, uint64_t n)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    t->seen = calloc(n ? n : 1, 1);
}

//  Record a result of an echo-like map whose item i has input "i".
static void
s_tally_add(s_tally *t, const loom_result *r)
{
    t->received++;
    if (r->index >= t->n) {
        t->bad++;
        return;
    }
    if (t->seen[r->index]++)
        t->dups++;
    if (r->status != 0) {
        t->failed++;
        return;
    }
    char want[32];
    int k = snprintf(want, sizeof want, "%" PRIu64, r->index);
    if (r->len != (size_t)k || memcmp(r->data, want, (size_t)k) != 0)
        t->bad++;
}

static uint64_t
s_tally_missing(const s_tally *t)
{
    uint64_t missing = 0;
    for (uint64_t i = 0; i < t->n; i++)
        if (t->seen[i] == 0)
            missing++;
    return missing;
}

static void
s_tally_free(s_tally *t)
{
    free(t->seen);
    t->seen = NULL;
}

static int
s_submit_text(loom_map *m, uint64_t i)
{
    char buf[32];
    int k = snprintf(buf, sizeof buf, "%" PRIu64, i);
    return loom_map_submit(m, buf, (size_t)k);
}

//  Run testkit echo over "0".."n-1" on client c and tally the results.
//  Returns 0, or a negative code from the API. No cmocka asserts: threads.
static int
s_run_echo(loom_client *c, uint64_t n, bool ordered, s_tally *t)
{
    int rc = 0;
    loom_pipeline *p = loom_pipeline_new(c, "echo");
    if (!p)
        return LOOM_ECONNECT;
    loom_map_opts o = {.ordered = ordered};
    loom_map *m = loom_map_new(p, "testkit", "echo", &o);
    if (!m) {
        loom_pipeline_destroy(&p);
        return LOOM_ECONNECT;
    }
    s_tally_init(t, n);
    for (uint64_t i = 0; i < n && rc == 0; i++)
        rc = s_submit_text(m, i);
    if (rc == 0)
        rc = loom_map_close(m);
    uint64_t expect_next = 0;
    loom_result r;
    while (rc == 0) {
        int nrc = loom_map_next(m, &r, 30000);
        if (nrc == 0)
            break;
        if (nrc < 0) {
            rc = nrc;
            break;
        }
        if (ordered && r.index != expect_next)
            t->bad++;
        expect_next = r.index + 1;
        s_tally_add(t, &r);
    }
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    return rc;
}

//  ---------------------------------------------------------------------------
//  Child processes: loom broker, loom worker

typedef struct {
    char task_ep[256];
    char blob_ep[256];
    pid_t broker;
    pid_t worker;
    char ipc_dir[128]; //  ipc mode: the private directory of the sockets
} s_remote;

static s_remote s_tcp;
static s_remote s_ipc;

static const char *
s_loom_exe(void)
{
    const char *exe = getenv("LOOM_EXE");
    return exe && *exe ? exe : "loom";
}

//  Start argv[] as a child that dies with us. Returns its pid or -1.
static pid_t
s_spawn(char *const argv[])
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        execv(argv[0], argv);
        fprintf(stderr, "test_cluster: cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

//  Wait up to timeout_ms for pid to exit (a pidfd, so no sleeping). True if
//  it has exited and been reaped.
static bool
s_wait_exit(pid_t pid, int timeout_ms)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        poll(&pfd, 1, timeout_ms);
        close(fd);
    }
    int status;
    return waitpid(pid, &status, WNOHANG) == pid;
}

//  Stop a child: SIGTERM, then SIGKILL after 5 s. Sets *pid to 0.
static void
s_stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    if (!s_wait_exit(*pid, 5000)) {
        fprintf(stderr, "test_cluster: pid %d ignored SIGTERM, killing it\n", (int)*pid);
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

//  A TCP port on 127.0.0.1 that was free a moment ago.
static int
s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int
s_remote_start(s_remote *r, bool ipc)
{
    memset(r, 0, sizeof *r);
    const char *exe = s_loom_exe();
    //  A port found free may be taken before the broker binds it: if the
    //  broker exits at once, try another.
    for (int attempt = 0; attempt < 5; attempt++) {
        if (ipc) {
            snprintf(r->ipc_dir, sizeof r->ipc_dir, "/tmp/loom-test-%d-cluster-XXXXXX",
                     (int)getpid());
            if (!mkdtemp(r->ipc_dir))
                return -1;
            snprintf(r->task_ep, sizeof r->task_ep, "ipc://%s/task", r->ipc_dir);
            snprintf(r->blob_ep, sizeof r->blob_ep, "ipc://%s/blob", r->ipc_dir);
        } else {
            int p1 = s_free_port(), p2 = s_free_port();
            if (p1 < 0 || p2 < 0 || p1 == p2)
                continue;
            snprintf(r->task_ep, sizeof r->task_ep, "tcp://127.0.0.1:%d", p1);
            snprintf(r->blob_ep, sizeof r->blob_ep, "tcp://127.0.0.1:%d", p2);
        }
        const char *bargv[12] = {exe, "broker", "--bind", r->task_ep, "--blob-bind", r->blob_ep};
        bargv[loom_test_curve_broker_argv(bargv, 6)] = NULL;
        r->broker = s_spawn((char *const *)bargv);
        if (r->broker < 0)
            return -1;
        //  Bound or failed: a broker that cannot bind exits within a moment.
        if (s_wait_exit(r->broker, 300)) {
            fprintf(stderr, "test_cluster: broker on %s exited at once, retrying\n", r->task_ep);
            r->broker = 0;
            if (ipc)
                rmdir(r->ipc_dir);
            continue;
        }
        const char *wargv[12] = {exe, "worker", "--connect", r->task_ep, "--procs", "2"};
        wargv[loom_test_curve_peer_argv(wargv, 6, true)] = NULL;
        r->worker = s_spawn((char *const *)wargv);
        if (r->worker < 0) {
            s_stop(&r->broker);
            return -1;
        }
        return 0;
    }
    return -1;
}

static void
s_remote_stop(s_remote *r)
{
    s_stop(&r->worker);
    s_stop(&r->broker);
    if (r->ipc_dir[0]) {
        char path[300];
        snprintf(path, sizeof path, "%s/task", r->ipc_dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/blob", r->ipc_dir);
        unlink(path);
        rmdir(r->ipc_dir);
        r->ipc_dir[0] = 0;
    }
}

//  ---------------------------------------------------------------------------
//  Embedded mode: a fresh 2-worker cluster per test (private ipc:// in a
//  0700 directory, nothing on a network: no keys, also in the CURVE run)

static int
s_embedded_setup(void **state)
{
    loom_client_opts o = {.local_workers = 2};
    loom_client *c = loom_client_new(NULL, &o);
    if (!c)
        return -1;
    *state = c;
    return 0;
}

static int
s_embedded_teardown(void **state)
{
    loom_client *c = *state;
    loom_client_destroy(&c);
    return 0;
}

static void
test_each_item_yields_one_result(void **state)
{
    s_tally t;
    assert_int_equal(s_run_echo(*state, S_ITEMS, false, &t), 0);
    assert_int_equal(t.received, S_ITEMS);
    assert_int_equal(t.dups, 0);
    assert_int_equal(t.bad, 0);
    assert_int_equal(t.failed, 0);
    assert_int_equal(s_tally_missing(&t), 0);
    s_tally_free(&t);
}

static void
test_ordered_yields_submission_order(void **state)
{
    s_tally t;
    assert_int_equal(s_run_echo(*state, S_ITEMS, true, &t), 0);
    assert_int_equal(t.received, S_ITEMS);
    assert_int_equal(t.bad, 0); //  includes any result out of order
    assert_int_equal(t.dups, 0);
    assert_int_equal(s_tally_missing(&t), 0);
    s_tally_free(&t);
}

static void
test_failing_item_is_a_result_and_map_continues(void **state)
{
    loom_pipeline *p = loom_pipeline_new(*state, "fail");
    assert_non_null(p);
    loom_map *m = loom_map_new(p, "testkit", "sum", NULL);
    assert_non_null(m);
    const uint64_t n = 200, bad = 57;
    for (uint64_t i = 0; i < n; i++) {
        if (i == bad)
            assert_int_equal(loom_map_submit(m, "bad", 3), 0);
        else
            assert_int_equal(s_submit_text(m, i), 0);
    }
    assert_int_equal(loom_map_close(m), 0);
    s_tally t;
    s_tally_init(&t, n);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        if (r.index == bad) {
            assert_int_equal(r.status, LOOM_ETASK);
            assert_non_null(r.error);
            assert_non_null(strstr(r.error, "sum: want a non-negative decimal"));
        }
        s_tally_add(&t, &r);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(t.received, n);
    assert_int_equal(t.failed, 1);
    assert_int_equal(t.bad, 0);
    assert_int_equal(t.dups, 0);
    loom_stats st;
    loom_map_stats(m, &st);
    assert_int_equal(st.submitted, n);
    assert_int_equal(st.done, n - 1);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.in_flight, 0);
    s_tally_free(&t);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

static void
test_args_reach_the_task(void **state)
{
    loom_pipeline *p = loom_pipeline_new(*state, "args");
    assert_non_null(p);
    static const char args[] = "alpha=1 beta=\"two\"";
    loom_map_opts o = {.args = args, .args_len = sizeof args - 1};
    loom_map *m = loom_map_new(p, "testkit", "args", &o);
    assert_non_null(m);
    for (int i = 0; i < 50; i++)
        assert_int_equal(loom_map_submit(m, "x", 1), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc, got = 0;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        assert_int_equal(r.status, 0);
        assert_int_equal(r.len, sizeof args - 1);
        assert_memory_equal(r.data, args, sizeof args - 1);
        got++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(got, 50);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

//  Submitting far more than the window before reading anything must not
//  deadlock: submit keeps receiving (and buffering) results while it waits.
static void
test_window_blocks_and_completes(void **state)
{
    loom_pipeline *p = loom_pipeline_new(*state, "window");
    assert_non_null(p);
    loom_map_opts o = {.window = 8};
    loom_map *m = loom_map_new(p, "testkit", "echo", &o);
    assert_non_null(m);
    const uint64_t n = 500;
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(s_submit_text(m, i), 0);
    assert_int_equal(loom_map_close(m), 0);
    s_tally t;
    s_tally_init(&t, n);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 30000)) == 1)
        s_tally_add(&t, &r);
    assert_int_equal(rc, 0);
    assert_int_equal(t.received, n);
    assert_int_equal(s_tally_missing(&t), 0);
    assert_int_equal(t.dups + t.bad + t.failed, 0);
    s_tally_free(&t);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

typedef struct {
    s_tally tally;
    uint64_t max_in_flight; //  largest in_flight seen from the callback
} s_window_probe;

static void
s_window_collect(const loom_result *r, void *user)
{
    s_window_probe *w = user;
    s_tally_add(&w->tally, r);
}

//  With results delivered as they arrive (on_result), nothing waits in a
//  buffer, so in_flight is what the window bounds: never more than 8.
static void
test_window_bounds_items_in_flight(void **state)
{
    loom_pipeline *p = loom_pipeline_new(*state, "window-bound");
    assert_non_null(p);
    s_window_probe w;
    memset(&w, 0, sizeof w);
    const uint64_t n = 500;
    s_tally_init(&w.tally, n);
    loom_map_opts o = {.window = 8, .on_result = s_window_collect, .user = &w};
    loom_map *m = loom_map_new(p, "testkit", "echo", &o);
    assert_non_null(m);
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(s_submit_text(m, i), 0);
        loom_stats st;
        loom_map_stats(m, &st);
        if (st.in_flight > w.max_in_flight)
            w.max_in_flight = st.in_flight;
    }
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    assert_int_equal(loom_map_next(m, &r, 30000), 0);
    assert_true(w.max_in_flight <= 8);
    assert_true(w.max_in_flight >= 1);
    assert_int_equal(w.tally.received, n);
    assert_int_equal(s_tally_missing(&w.tally), 0);
    assert_int_equal(w.tally.dups + w.tally.bad + w.tally.failed, 0);
    s_tally_free(&w.tally);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

static void
s_collect(const loom_result *r, void *user)
{
    s_tally_add((s_tally *)user, r);
}

static void
test_on_result_sees_every_result(void **state)
{
    loom_pipeline *p = loom_pipeline_new(*state, "callback");
    assert_non_null(p);
    s_tally t;
    s_tally_init(&t, S_ITEMS);
    loom_map_opts o = {.on_result = s_collect, .user = &t, .window = 100};
    loom_map *m = loom_map_new(p, "testkit", "echo", &o);
    assert_non_null(m);
    for (uint64_t i = 0; i < S_ITEMS; i++)
        assert_int_equal(s_submit_text(m, i), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    //  With on_result, next yields nothing but the end.
    assert_int_equal(loom_map_next(m, &r, 30000), 0);
    assert_int_equal(t.received, S_ITEMS);
    assert_int_equal(s_tally_missing(&t), 0);
    assert_int_equal(t.dups + t.bad + t.failed, 0);
    s_tally_free(&t);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
}

//  Reduce map over the decimal texts 1..n; returns the one reduced value.
static long long
s_reduce_total(loom_client *c, const char *plugin, const char *task, int n)
{
    loom_pipeline *p = loom_pipeline_new(c, "reduce");
    assert_non_null(p);
    loom_map_opts o = {.reduce = true};
    loom_map *m = loom_map_new(p, plugin, task, &o);
    assert_non_null(m);
    for (int i = 1; i <= n; i++)
        assert_int_equal(s_submit_text(m, (uint64_t)i), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int rc, results = 0;
    long long total = -1;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        results++;
        assert_int_equal(r.status, 0);
        assert_true(r.index == LOOM_REDUCED_INDEX);
        char buf[32];
        assert_true(r.len > 0 && r.len < sizeof buf);
        memcpy(buf, r.data, r.len);
        buf[r.len] = 0;
        total = atoll(buf);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(results, 1);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    return total;
}

static void
test_reduce_sum_gives_the_total(void **state)
{
    assert_int_equal(s_reduce_total(*state, "testkit", "sum", 1000), 500500);
}

static void
test_reduce_sum_of_squares(void **state)
{
    assert_int_equal(s_reduce_total(*state, "squares", "square_text", 1000), 333833500);
}

//  ---------------------------------------------------------------------------
//  Remote mode: real `loom broker` and `loom worker` processes

static int
s_tcp_setup(void **state)
{
    (void)state;
    return s_remote_start(&s_tcp, false);
}

static int
s_tcp_teardown(void **state)
{
    (void)state;
    s_remote_stop(&s_tcp);
    return 0;
}

static int
s_ipc_setup(void **state)
{
    (void)state;
    return s_remote_start(&s_ipc, true);
}

static int
s_ipc_teardown(void **state)
{
    (void)state;
    s_remote_stop(&s_ipc);
    return 0;
}

//  A client of a remote broker; under CURVE with the listed client's key.
static loom_client *
s_remote_client(const char *endpoint)
{
    loom_client_opts o = {.timeout_ms = 10000};
    loom_test_curve_client_opts(&o);
    return loom_client_new(endpoint, &o);
}

static void
s_remote_map(const s_remote *remote)
{
    loom_client *c = s_remote_client(remote->task_ep);
    assert_non_null(c);
    s_tally t;
    int rc = s_run_echo(c, S_ITEMS, false, &t);
    loom_client_destroy(&c);
    assert_int_equal(rc, 0);
    assert_int_equal(t.received, S_ITEMS);
    assert_int_equal(s_tally_missing(&t), 0);
    assert_int_equal(t.dups + t.bad + t.failed, 0);
    s_tally_free(&t);
}

typedef struct {
    const char *endpoint;
    bool ordered;
    int rc;
    s_tally tally;
} s_job;

static void *
s_client_thread(void *arg)
{
    s_job *job = arg;
    loom_client *c = s_remote_client(job->endpoint);
    if (!c) {
        job->rc = LOOM_ECONNECT;
        return NULL;
    }
    job->rc = s_run_echo(c, S_ITEMS, job->ordered, &job->tally);
    loom_client_destroy(&c);
    return NULL;
}

static void
s_concurrent_clients(const s_remote *remote)
{
    enum { CLIENTS = 4 };
    s_job jobs[CLIENTS];
    pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].endpoint = remote->task_ep;
        jobs[i].ordered = i % 2 == 1;
        assert_int_equal(pthread_create(&threads[i], NULL, s_client_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < CLIENTS; i++) {
        s_tally *t = &jobs[i].tally;
        print_message("client %d: rc %d, %" PRIu64 " results, %" PRIu64 " missing\n", i, jobs[i].rc,
                      t->received, t->seen ? s_tally_missing(t) : 0);
        assert_int_equal(jobs[i].rc, 0);
        assert_int_equal(t->received, S_ITEMS);
        assert_int_equal(s_tally_missing(t), 0);
        assert_int_equal(t->dups + t->bad + t->failed, 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        s_tally_free(&jobs[i].tally);
}

static void
test_tcp_map_completes(void **state)
{
    (void)state;
    s_remote_map(&s_tcp);
}

static void
test_tcp_concurrent_clients_complete_exactly_once(void **state)
{
    (void)state;
    s_concurrent_clients(&s_tcp);
}

static void
test_tcp_reduce_sum_of_squares(void **state)
{
    (void)state;
    loom_client *c = s_remote_client(s_tcp.task_ep);
    assert_non_null(c);
    long long total = s_reduce_total(c, "squares", "square_text", 1000);
    loom_client_destroy(&c);
    assert_int_equal(total, 333833500);
}

//  A share and an item file over the blob channel (LOOM_BLOB_LOCAL=0: a
//  client on the broker's host would otherwise write them into the store
//  itself): the worker host fetches the share, the item's file and sends
//  the output file back, all on the channel.
static void
test_tcp_share_and_files_cross_the_blob_channel(void **state)
{
    (void)state;
    enum { SHARE = 300 * 1024, ITEMS = 8 };
    unsigned char *data = malloc(SHARE);
    assert_non_null(data);
    for (size_t i = 0; i < SHARE; i++)
        data[i] = (unsigned char)(i * 31 + 7);
    char want[64];
    snprintf(want, sizeof want, "%d %u", SHARE, loom_test_byte_sum(data, SHARE));
    char path[] = "/tmp/loom-test-cluster-in-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "hello file\n", 11), 11);
    close(fd);

    setenv("LOOM_BLOB_LOCAL", "0", 1);
    loom_client *c = s_remote_client(s_tcp.task_ep);
    assert_non_null(c);
    loom_pipeline *p = loom_pipeline_new(c, "blobs");
    assert_non_null(p);
    int rc = loom_pipeline_share(p, "data", data, SHARE);
    if (rc)
        fail_msg("share%s: %s", loom_test_curve_mode(), loom_strerror(rc));
    free(data);

    loom_map *m = loom_map_new(p, "testkit", "shared_sum", NULL);
    assert_non_null(m);
    for (int i = 0; i < ITEMS; i++)
        assert_int_equal(loom_map_submit(m, "data", 4), 0);
    assert_int_equal(loom_map_close(m), 0);
    loom_result r;
    int got = 0;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        if (r.status)
            fail_msg("shared_sum item %llu%s: %s", (unsigned long long)r.index,
                     loom_test_curve_mode(), r.error ? r.error : "?");
        assert_int_equal(r.len, strlen(want));
        assert_memory_equal(r.data, want, r.len);
        got++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(got, ITEMS);
    loom_map_destroy(&m);

    m = loom_map_new(p, "testkit", "file_copy", NULL);
    assert_non_null(m);
    const char *names[] = {"in"};
    const char *paths[] = {path};
    rc = loom_map_submit_files(m, "", 0, names, paths, 1);
    if (rc)
        fail_msg("file%s: %s", loom_test_curve_mode(), loom_strerror(rc));
    assert_int_equal(loom_map_close(m), 0);
    got = 0;
    while ((rc = loom_map_next(m, &r, 30000)) == 1) {
        if (r.status)
            fail_msg("file_copy%s: %s", loom_test_curve_mode(), r.error ? r.error : "?");
        assert_int_equal(r.len, 2);
        assert_memory_equal(r.data, "11", 2);
        assert_int_equal(r.nfiles, 1);
        assert_string_equal(r.file_names[0], "out");
        FILE *f = fopen(r.file_paths[0], "r");
        assert_non_null(f);
        char line[64] = "";
        assert_non_null(fgets(line, sizeof line, f));
        fclose(f);
        assert_string_equal(line, "HELLO FILE\n");
        got++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(got, 1);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
    unsetenv("LOOM_BLOB_LOCAL");
    unlink(path);
}

static void
test_ipc_map_completes(void **state)
{
    (void)state;
    s_remote_map(&s_ipc);
}

static void
test_ipc_concurrent_clients_complete_exactly_once(void **state)
{
    (void)state;
    s_concurrent_clients(&s_ipc);
}

int
main(void)
{
    //  Children are reaped by s_stop; a crash of theirs must not kill us.
    signal(SIGPIPE, SIG_IGN);

    const struct CMUnitTest embedded[] = {
        cmocka_unit_test_setup_teardown(test_each_item_yields_one_result, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_ordered_yields_submission_order, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_failing_item_is_a_result_and_map_continues,
                                        s_embedded_setup, s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_args_reach_the_task, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_window_blocks_and_completes, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_window_bounds_items_in_flight, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_on_result_sees_every_result, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_reduce_sum_gives_the_total, s_embedded_setup,
                                        s_embedded_teardown),
        cmocka_unit_test_setup_teardown(test_reduce_sum_of_squares, s_embedded_setup,
                                        s_embedded_teardown),
    };
    const struct CMUnitTest tcp[] = {
        cmocka_unit_test(test_tcp_map_completes),
        cmocka_unit_test(test_tcp_concurrent_clients_complete_exactly_once),
        cmocka_unit_test(test_tcp_reduce_sum_of_squares),
        cmocka_unit_test(test_tcp_share_and_files_cross_the_blob_channel),
    };
    const struct CMUnitTest ipc[] = {
        cmocka_unit_test(test_ipc_map_completes),
        cmocka_unit_test(test_ipc_concurrent_clients_complete_exactly_once),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("embedded", embedded, NULL, NULL);
    failed += cmocka_run_group_tests_name("remote_tcp", tcp, s_tcp_setup, s_tcp_teardown);
    failed += cmocka_run_group_tests_name("remote_ipc", ipc, s_ipc_setup, s_ipc_teardown);
    return failed ? 1 : 0;
}
