/*  worker_process: one loom worker process.

    The main thread does both the talking to the broker and the running of
    plugin code, so that a task and its result cross no thread of ours: it
    polls the DEALER itself, decodes a TaskBatch, runs its items through the
    executor and sends the encoded ResultBatch, zero-copy, from the same
    thread.

    The connection (the DEALER and everything about it, s_conn) belongs to
    whoever holds its mutex. The main thread holds it except while it runs
    plugin code (a batch's items, from the first to the last, a reduce, a
    plugin's init) or fetches and uploads blobs, which may take any time or
    hang. Per item it then takes no lock and reads no clock (unless the map
    has a timeout): the running item is published with atomics, a Cancel or
    a new connection is noticed through an atomic counter, and the lock is
    taken back only to send results. Meanwhile a watchdog thread, which
    wakes every tick and only ever try-locks, takes the connection over:
    it reads what the broker sends (queued for the main thread, a Cancel
    recorded at once), heartbeats, notices a silent or restarted broker and
    reconnects, reports an item past its timeout and ends the process, and
    hands back a running item after a SIGTERM. The mutex is the full memory
    barrier libzmq asks for when a socket changes threads.

    Every connection to the broker has a generation number. A reconnect
    (broker silent for the expiry, a restarted broker, a lost session) starts
    a new one: whatever the main thread was doing for the old one is dropped
    (the broker requeues it), and results tagged with an old generation are
    never sent.

    The DEALER lives in a private ZeroMQ context so that the watchdog can
    flush it (close with linger, terminate that context) before the process
    exits, even while the main thread is stuck in a hung task.  */

#include "worker_process.h"

#include "base.h"
#include "curve.h"
#include "executor.h"
#include "mem_watch.h"
#include "wire.h"
#include "worker_blobs.h"
#include "worker_stop.h"

#include <czmq.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_FLUSH_BYTES (256 * 1024) //  send results early past this much data
#define S_CANCELS 64               //  recently cancelled map ids remembered
#define S_MAX_MAPS 4096            //  map definitions kept (LOOM_WORKER_MAX_MAPS)
#define S_MAX_MAP_BYTES (64 << 20) //  and their bytes (LOOM_WORKER_MAP_BYTES); LRU go first
#define S_TICK_MS 20               //  timer resolution (heartbeats, expiry, timeouts)
#define S_HWM 100000               //  DEALER high-water marks
#define S_EXIT_LINGER_MS 2000      //  time to flush results before exiting
#define S_SMALL_OUTPUT 64          //  outputs up to this size are packed per batch
#define S_STOP_GRACE_MS 250        //  SIGTERM: an item still running after this is handed back
#define S_INBOX_MAX 1000           //  messages queued for the main thread before reads pause
#define S_PARK_TICKS 10            //  ticks finding the main thread idle before the watchdog parks
#define S_TRIM_IDLE_MS 500 //  idle this long after work: freed memory goes back (malloc_trim)

//  What the connection queues for the main thread.
enum { S_IN_WELCOME = 1, S_IN_MSG };

typedef struct {
    int kind;
    uint32_t gen;       //  connection generation this belongs to
    uint32_t worker_id; //  S_IN_WELCOME
    char *endpoint;     //  S_IN_WELCOME: the blob endpoint (owned) or NULL
    char *store;        //  S_IN_WELCOME: the broker's blob store dir (owned) or NULL
    loom_msg *msg;      //  S_IN_MSG: MapOpen, TaskBatch or Cancel (owned)
} s_in;

//  An encoded message the socket did not take yet.
typedef struct {
    void *buf; //  malloc'd
    size_t len;
} s_out;

//  The connection to the broker. Everything but the watchdog's own fields
//  belongs to whoever holds `lock`.
typedef struct {
    pthread_mutex_t lock;
    const loom_worker_process_opts *opts;
    void *ctx;          //  private context of the DEALER
    void *dealer;       //  to the broker
    uint32_t gen;       //  current generation
    bool welcomed;      //  Welcome received on this connection
    bool hello_pending; //  Hello not yet accepted by the socket
    uint64_t epoch;     //  broker epoch of the Welcome
    uint32_t hb_ms;     //  heartbeat interval
    uint32_t liveness;  //  intervals of silence before the broker is dead
    int64_t last_rx;    //  last message from the broker
    int64_t last_tx;    //  last message to the broker
    int64_t hello_at;   //  when Hello went out
    int64_t stop_at;    //  when SIGTERM/SIGINT was first seen, or 0
    int64_t next_tick;  //  when the timers are next due
    zlist_t *pending;   //  s_out * waiting for the socket, in order
    zlist_t *inbox;     //  s_in * for the main thread, in order
    //  The batch whose items the main thread runs while it has let go (for
    //  timeouts), set and cleared holding the lock. Item k of it runs while
    //  run_pos is 2k+1 and is done at 2k+2; the main thread stores run_pos
    //  (release) without the lock, after run_start_ms (relaxed, only set
    //  when the map has a timeout), so whoever holds the lock and loads
    //  run_pos (acquire) sees that item's start or a later one: it never
    //  blames an item that did not run for the timeout (see s_conn_tick).
    const loom_wire_task_batch *run_batch;
    uint32_t item_gen; //  generation of the batch
    uint64_t map;
    uint64_t index; //  the item timed out (s_conn_timeout)
    uint32_t attempt;
    uint32_t timeout_ms; //  its map's timeout, 0: none
    atomic_uint_fast64_t run_pos;
    atomic_int_fast64_t run_start_ms;
    uint64_t cancels[S_CANCELS]; //  recently cancelled maps (this connection)
    size_t ncancels;             //  cancels ever recorded (ring position)
    //  What runs, for a Cancel (the task is told, the process ended after
    //  the grace) and the init timeout (worker_stop.h).
    loom__stopwatch stop;
    //  Bumped holding the lock at each Cancel recorded and each new
    //  connection: the main thread, running a batch without the lock, loads
    //  it per item and takes the lock to look closer only when it moved.
    atomic_uint events;
    //  The watchdog thread; wd_quit is under wd_lock. While the main thread
    //  idles (main_idle: it waits on the socket) the watchdog has nothing to
    //  do and parks (wd_parked) until the main thread next lets go.
    pthread_t watchdog;
    pthread_mutex_t wd_lock;
    pthread_cond_t wd_cond;
    bool wd_quit;
    atomic_bool main_idle;
    atomic_bool wd_parked;
} s_conn;

//  One map the main thread knows.
typedef struct {
    uint64_t id;
    bool reduce;
    uint32_t timeout_ms;
    int status;             //  0, or why the map could not be opened
    char *error;            //  owned; the reason when status != 0
    loom_file_list *shares; //  the pipeline's shares, fetched at the first batch
    bool shares_ready;      //  fetched and given to the executor
    size_t bytes;           //  what its definition holds (args, shares)
    uint64_t last_use;      //  use sequence: the least recently used go first
} s_map;

//  The main thread.
typedef struct {
    const loom_worker_process_opts *opts;
    s_conn conn;
    loom_executor *exec;
    loom_worker_blobs *blobs; //  blob channel and host cache
    bool out_dir_set;         //  the executor has its output dir
    uint32_t worker_id;
    uint32_t gen; //  generation of the maps below
    s_map *maps;
    size_t nmaps, capmaps;
    size_t map_bytes;     //  sum of maps[].bytes
    size_t max_maps;      //  at most this many definitions kept
    size_t max_map_bytes; //  and this many bytes of them
    uint64_t map_use_seq; //  last use stamp given
    long items_run;
    //  Results being collected for one batch.
    uint64_t out_map;
    uint32_t out_gen;
    loom_wire_result *res;
    size_t *res_off; //  per result: offset of its data in `small`, or SIZE_MAX
    size_t nres, capres;
    size_t res_bytes;
    uint8_t *small; //  small outputs of the batch, packed (see s_out_add)
    size_t small_len, small_cap;
    int64_t out_start_us;
    bool has_partial;
    void *partial; //  owned
    size_t partial_len;
} s_worker;

//  Set by the signal handler (on the watchdog thread), read by both
//  threads: a lock-free atomic, which a handler may store to.
static atomic_int s_stop;

//  The handler's wake-up pipe (loom_wake_open): the main thread, blocked
//  in its poll for as long as nothing is due (a heartbeat away when idle),
//  sees a stop at once.
static int s_wake[2] = {-1, -1};

static void
s_on_signal(int sig)
{
    (void)sig;
    atomic_store(&s_stop, 1);
    loom_wake_signal(s_wake);
}

//  ---------------------------------------------------------------------
//  The connection (called with its lock held)

static void
s_in_destroy(s_in **self_p)
{
    s_in *self = *self_p;
    if (!self)
        return;
    free(self->endpoint);
    free(self->store);
    loom_msg_destroy(&self->msg);
    free(self);
    *self_p = NULL;
}

static void
s_conn_drop_pending(s_conn *self)
{
    s_out *out;
    while ((out = (s_out *)zlist_pop(self->pending))) {
        free(out->buf);
        free(out);
    }
}

static void
s_conn_connect(s_conn *self)
{
    if (self->dealer) {
        int zero = 0;
        zmq_setsockopt(self->dealer, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(self->dealer);
    }
    s_conn_drop_pending(self);
    self->dealer = zmq_socket(self->ctx, ZMQ_DEALER);
    LOOM_ASSERT(self->dealer);
    int one = 1, zero = 0, hwm = S_HWM;
    int64_t maxmsg = 64 * 1024 * 1024 + 1024 * 1024;
    zmq_setsockopt(self->dealer, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(self->dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->dealer, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->dealer, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->dealer, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    char *curve_err = NULL;
    if (loom_curve_client_setup(self->dealer, self->opts->cert_path, self->opts->server_key,
                                &curve_err) != 0) {
        loom_log_error("worker %d: %s", (int)getpid(), curve_err); //  checked at start
        free(curve_err);
    }
    if (zmq_connect(self->dealer, self->opts->endpoint) != 0)
        loom_log_error("worker %d: cannot connect to %s: %s", (int)getpid(), self->opts->endpoint,
                       zmq_strerror(zmq_errno()));
    self->ncancels = 0;
    self->gen++;
    atomic_fetch_add_explicit(&self->events, 1, memory_order_relaxed);
    self->welcomed = false;
    self->hello_pending = true;
    int64_t now = loom_now_ms();
    self->hello_at = now;
    self->last_rx = now;
    self->last_tx = now;
}

static int
s_conn_send(s_conn *self, const loom_msg *m)
{
    int rc = loom_wire_send(self->dealer, NULL, 0, m, ZMQ_DONTWAIT);
    if (rc == 0)
        self->last_tx = loom_now_ms();
    return rc;
}

//  libzmq's free function for our buffers. *keep set: a failed send is
//  closing the message and the buffer stays ours.
static void
s_free_unless_kept(void *data, void *hint)
{
    bool *keep = (bool *)hint;
    if (*keep)
        return;
    free(data);
    free(keep);
}

//  Send an encoded message without a copy. Returns 0 (the buffer is
//  libzmq's now), LOOM_EAGAIN (not sent, still the caller's), or LOOM_EIO
//  (not sent, freed).
static int
s_conn_send_raw(s_conn *self, void *buf, size_t len)
{
    bool *keep = (bool *)loom_xmalloc(sizeof *keep);
    *keep = false;
    zmq_msg_t msg;
    if (zmq_msg_init_data(&msg, buf, len, s_free_unless_kept, keep) != 0) {
        free(keep);
        return LOOM_EAGAIN;
    }
    if (zmq_msg_send(&msg, self->dealer, ZMQ_DONTWAIT) >= 0) {
        self->last_tx = loom_now_ms();
        return 0;
    }
    int err = zmq_errno();
    if (err == EAGAIN || err == EINTR) {
        *keep = true;
        zmq_msg_close(&msg);
        free(keep);
        return LOOM_EAGAIN;
    }
    zmq_msg_close(&msg);
    loom_log_warning("worker %d: send to broker failed: %s", (int)getpid(), zmq_strerror(err));
    return LOOM_EIO;
}

//  Send what waits, in order; stops at the first that would block.
static void
s_conn_flush_pending(s_conn *self)
{
    s_out *out;
    while ((out = (s_out *)zlist_first(self->pending))) {
        if (s_conn_send_raw(self, out->buf, out->len) == LOOM_EAGAIN)
            return;
        zlist_pop(self->pending);
        free(out);
    }
}

//  Send an encoded message (buf is taken) for generation gen: dropped
//  when that connection is gone (the broker requeued its work), held in
//  order when the socket is full.
static void
s_conn_send_buf(s_conn *self, uint32_t gen, void *buf, size_t len)
{
    if (gen != self->gen || !self->welcomed) {
        free(buf);
        return;
    }
    if (zlist_size(self->pending) == 0 && s_conn_send_raw(self, buf, len) != LOOM_EAGAIN)
        return;
    s_out *out = (s_out *)loom_xmalloc(sizeof *out);
    out->buf = buf;
    out->len = len;
    zlist_append(self->pending, out);
    s_conn_flush_pending(self);
}

static void
s_conn_hello(s_conn *self)
{
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_HELLO;
    m.u.hello.role = LOOM_ROLE_WORKER;
    m.u.hello.host = self->opts->host;
    m.u.hello.pid = (uint32_t)getpid();
    m.u.hello.credit = self->opts->credit ? self->opts->credit : LOOM_WORKER_DEFAULT_CREDIT;
    m.u.hello.software = loom_version();
    if (s_conn_send(self, &m) == 0) {
        self->hello_pending = false;
        self->hello_at = loom_now_ms();
    }
}

static void
s_conn_to_main(s_conn *self, int kind, loom_msg **msg_p, uint32_t worker_id, char *endpoint)
{
    s_in *in = (s_in *)loom_xcalloc(1, sizeof *in);
    in->kind = kind;
    in->gen = self->gen;
    in->worker_id = worker_id;
    in->endpoint = endpoint;
    if (msg_p) {
        in->msg = *msg_p;
        *msg_p = NULL;
    }
    zlist_append(self->inbox, in);
}

static void
s_conn_on_message(s_conn *self, loom_msg **msg_p)
{
    loom_msg *m = *msg_p;
    switch (m->type) {
    case LOOM_MSG_WELCOME: {
        const loom_wire_welcome *w = &m->u.welcome;
        if (self->welcomed) {
            if (w->epoch != self->epoch) {
                loom_log_notice("worker %d: broker restarted (new epoch): saying hello again",
                                (int)getpid());
                s_conn_connect(self);
            }
            break;
        }
        self->welcomed = true;
        self->epoch = w->epoch;
        self->hb_ms = w->heartbeat_ms ? w->heartbeat_ms : self->hb_ms;
        self->liveness = w->liveness ? w->liveness : self->liveness;
        loom_log_info("worker %d: welcome as worker %u, heartbeat %u ms", (int)getpid(),
                      w->worker_id, self->hb_ms);
        s_conn_to_main(self, S_IN_WELCOME, NULL, w->worker_id,
                       w->blob_endpoint ? loom_xstrdup(w->blob_endpoint) : NULL);
        ((s_in *)zlist_tail(self->inbox))->store =
            w->blob_store ? loom_xstrdup(w->blob_store) : NULL;
        break;
    }
    case LOOM_MSG_CANCEL:
        //  Recorded now, so that a running batch stops at its next item; the
        //  main thread closes the map.
        if (self->welcomed) {
            self->cancels[self->ncancels++ % S_CANCELS] = m->u.cancel_map;
            atomic_fetch_add_explicit(&self->events, 1, memory_order_relaxed);
            //  Its item (or init) running now learns it at once, and has
            //  LOOM_CANCEL_GRACE_MS to return (s_conn_tick).
            if (loom__stopwatch_cancel(&self->stop, m->u.cancel_map, loom_now_ms()))
                loom_log_info("worker %d: map %" PRIu64 " cancelled while it runs here",
                              (int)getpid(), m->u.cancel_map);
        }
        /* fall through */
    case LOOM_MSG_MAP_OPEN:
    case LOOM_MSG_TASK_BATCH:
        if (self->welcomed)
            s_conn_to_main(self, S_IN_MSG, msg_p, 0, NULL);
        break;
    case LOOM_MSG_ERROR:
        if (m->u.error.code == LOOM_ESTATE) {
            loom_log_notice("worker %d: broker lost our session (%s): saying hello again",
                            (int)getpid(), m->u.error.message ? m->u.error.message : "");
            s_conn_connect(self);
        } else
            loom_log_warning("worker %d: broker error %d: %s", (int)getpid(), m->u.error.code,
                             m->u.error.message ? m->u.error.message : "");
        break;
    default:
        break; //  Heartbeat and anything else: counted as traffic only
    }
}

//  Read what the broker sent. With the main thread's queue full, read
//  nothing more (libzmq holds it), but count the traffic as a sign of life.
static void
s_conn_on_broker(s_conn *self)
{
    for (int n = 0; n < 1000; n++) {
        void *sock = self->dealer;
        if (zlist_size(self->inbox) >= S_INBOX_MAX) {
            int events = 0;
            size_t size = sizeof events;
            if (zmq_getsockopt(sock, ZMQ_EVENTS, &events, &size) == 0 && (events & ZMQ_POLLIN))
                self->last_rx = loom_now_ms();
            return;
        }
        loom_msg *m = NULL;
        int rc = loom_wire_recv(sock, NULL, 0, NULL, &m, ZMQ_DONTWAIT);
        if (rc == LOOM_EAGAIN || rc == LOOM_EIO)
            return;
        self->last_rx = loom_now_ms();
        if (rc == LOOM_EPROTO) {
            loom_log_warning("worker %d: malformed message from broker dropped", (int)getpid());
            continue;
        }
        s_conn_on_message(self, &m);
        loom_msg_destroy(&m);
        if (sock != self->dealer)
            return; //  reconnected: the new socket is read next time
    }
}

//  The running item is past its timeout: report it, flush, and end the
//  process (the main thread is stuck in plugin code).
static LOOM_NORETURN void
s_conn_timeout(s_conn *self)
{
    loom_log_warning("worker %d: item %" PRIu64 " of map %" PRIu64 " timed out after %u ms",
                     (int)getpid(), self->index, self->map, self->timeout_ms);
    if (self->item_gen == self->gen && self->welcomed) {
        s_conn_flush_pending(self);
        char error[80];
        snprintf(error, sizeof error, "item timed out after %u ms", self->timeout_ms);
        loom_wire_result r;
        memset(&r, 0, sizeof r);
        r.index = self->index;
        r.attempt = self->attempt;
        r.status = LOOM_ETIMEDOUT;
        r.error = error;
        loom_msg m;
        memset(&m, 0, sizeof m);
        m.type = LOOM_MSG_RESULT_BATCH;
        m.u.result_batch.map = self->map;
        m.u.result_batch.results = &r;
        m.u.result_batch.nresults = 1;
        m.u.result_batch.elapsed_us = (uint64_t)self->timeout_ms * 1000;
        int sndtimeo = S_EXIT_LINGER_MS;
        zmq_setsockopt(self->dealer, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
        loom_wire_send(self->dealer, NULL, 0, &m, 0);
    }
    int linger = S_EXIT_LINGER_MS;
    zmq_setsockopt(self->dealer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(self->dealer);
    zmq_ctx_term(self->ctx); //  returns once flushed, or after the linger
    _exit(LOOM_WORKER_EXIT_TIMEDOUT);
}

//  Leave: send what waits, close with a linger so it reaches the broker.
static void
s_conn_finish(s_conn *self)
{
    if (self->welcomed)
        s_conn_flush_pending(self);
    s_conn_drop_pending(self);
    int linger = S_EXIT_LINGER_MS;
    zmq_setsockopt(self->dealer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(self->dealer);
    self->dealer = NULL;
    zmq_ctx_term(self->ctx);
    self->ctx = NULL;
}

//  Stopping (SIGTERM/SIGINT) while an item still runs past the grace
//  period: hand it back. Send the results already made (the main thread
//  sends each at once while stopping), and exit cleanly (status 0): the
//  broker requeues what we held without charging it.
static LOOM_NORETURN void
s_conn_hand_back(s_conn *self)
{
    loom_log_info("worker %d: stopping: handing back the running item", (int)getpid());
    s_conn_finish(self);
    _exit(0);
}

//  A cancelled map's item (or init) still runs LOOM_CANCEL_GRACE_MS after
//  the Cancel came, or a plugin's init ran past its timeout: the main
//  thread is stuck in plugin code, so end the process (what waits to be
//  sent goes first). The supervisor starts a new one at once and tells the
//  broker, which charges nothing for a cancel, and for an init timeout
//  fails the map's items here naming init (the main thread left the init
//  marker, worker_stop.h).
static LOOM_NORETURN void
s_conn_stop_exit(s_conn *self, int status)
{
    const loom__stopwatch *sw = &self->stop;
    if (status == LOOM_WORKER_EXIT_INIT)
        loom_log_warning("worker %d: plugin %s init for map %" PRIu64 " still runs after %u ms, "
                         "its init timeout: ending this process",
                         (int)getpid(), sw->plugin, sw->map, sw->init_timeout_ms);
    else
        loom_log_warning("worker %d: map %" PRIu64 " was cancelled %d ms ago and its %s still "
                         "runs: ending this process (a new one takes its place)",
                         (int)getpid(), sw->map, LOOM_CANCEL_GRACE_MS,
                         sw->init ? "plugin init" : "item");
    s_conn_finish(self);
    _exit(status);
}

//  The process holds more than its --max-rss while an item runs: the main
//  thread is in plugin code that keeps it (and may take more), so end the
//  process at once. Its batch's results die with it, as in a crash, and
//  the socket is left to the kernel, as in a crash: closing it first would
//  let the broker see the connection go (and blame "peer disconnected")
//  while the exit frees the memory, before the supervisor's WorkerExit
//  tells why. That reports the exit with the peak it held; the broker
//  charges the running batch as for a crash (its items run again alone,
//  on fresh processes), and fails an item with LOOM_ENOMEM when out of
//  retries.
static LOOM_NORETURN void
s_conn_memory_exit(s_conn *self, uint64_t rss)
{
    loom_log_warning("worker %d: holds %llu MiB while an item of map %" PRIu64
                     " runs, over its --max-rss of %llu MiB: ending this process",
                     (int)getpid(), loom__mib(rss), self->map, loom__mib(self->opts->max_rss));
    _exit(LOOM_WORKER_EXIT_MEMORY);
}

//  The timers: Hello, a silent broker, heartbeats, the running item's
//  timeout, a cancelled item's grace, the init timeout and the stop grace.
static void
s_conn_tick(s_conn *self)
{
    int64_t now = loom_now_ms();
    //  (s_conn_next_tick moves it later when nothing needs the tick.)
    self->next_tick = now + S_TICK_MS;
    if (s_stop && !self->stop_at)
        self->stop_at = now;
    int64_t expiry = (int64_t)self->hb_ms * self->liveness;
    if (self->hello_pending)
        s_conn_hello(self);
    else if (!self->welcomed && now - self->hello_at > expiry) {
        loom_log_notice("worker %d: no welcome from %s after %" PRId64 " ms: retrying",
                        (int)getpid(), self->opts->endpoint, now - self->hello_at);
        s_conn_connect(self);
        s_conn_hello(self);
    } else if (self->welcomed && now - self->last_rx > expiry) {
        loom_log_notice("worker %d: broker silent for %" PRId64 " ms: reconnecting", (int)getpid(),
                        now - self->last_rx);
        s_conn_connect(self);
        s_conn_hello(self);
    }
    if (self->welcomed) {
        if (zlist_size(self->pending))
            s_conn_flush_pending(self);
        if (now - self->last_tx >= self->hb_ms) {
            loom_msg m;
            memset(&m, 0, sizeof m);
            m.type = LOOM_MSG_HEARTBEAT;
            s_conn_send(self, &m);
            self->last_tx = now; //  do not retry every tick when the send failed
        }
    }
    //  An item runs (odd run_pos) only while the main thread has let go.
    uint64_t pos = self->run_batch ? atomic_load_explicit(&self->run_pos, memory_order_acquire) : 0;
    int stop = loom__stopwatch_due(&self->stop, now, (pos & 1) != 0);
    if (stop)
        s_conn_stop_exit(self, stop);
    if (!(pos & 1))
        return;
    uint64_t rss;
    if (self->opts->max_rss && loom__rss_over(self->opts->max_rss, &rss))
        s_conn_memory_exit(self, rss);
    if (self->timeout_ms > 0 &&
        now - atomic_load_explicit(&self->run_start_ms, memory_order_relaxed) >= self->timeout_ms) {
        const loom_wire_item *item = &self->run_batch->items[pos / 2];
        self->index = item->index;
        self->attempt = item->attempt;
        s_conn_timeout(self);
    }
    if (self->stop_at && now - self->stop_at >= S_STOP_GRACE_MS)
        s_conn_hand_back(self);
}

//  When the timers are next due, for a main thread about to wait with
//  nothing to do: the tick while anything needs it (no welcome yet,
//  results waiting for the socket, stopping); else the next heartbeat to
//  send or the moment the broker would count as silent, so an idle worker
//  wakes about once a heartbeat, not every tick.
static int64_t
s_conn_next_tick(s_conn *self)
{
    if (!self->welcomed || self->hello_pending || zlist_size(self->pending) || self->stop_at ||
        atomic_load(&s_stop))
        return self->next_tick;
    int64_t due = loom_session_due(self->last_tx, self->last_rx, self->hb_ms, self->liveness);
    return due > self->next_tick ? due : self->next_tick;
}

//  Read what arrived and run the timers when due.
static void
s_conn_service(s_conn *self)
{
    s_conn_on_broker(self);
    if (loom_now_ms() >= self->next_tick)
        s_conn_tick(self);
}

//  The watchdog: every tick, take the connection if the main thread has
//  let go of it (it runs plugin code) and do its work. Never waits for the
//  lock: when the main thread holds it, the main thread does that work.
static void *
s_watchdog(void *arg)
{
    s_conn *self = (s_conn *)arg;
    //  Signals go to this thread, never to the one running plugin code.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    pthread_mutex_lock(&self->wd_lock);
    int idle_ticks = 0;
    while (!self->wd_quit) {
        if (idle_ticks >= S_PARK_TICKS) {
            //  Park, unless the main thread is busy again. Both sides store
            //  then load (seq_cst): if it was still idle when we looked, its
            //  next s_conn_let_go sees wd_parked and wakes us (under
            //  wd_lock, so not before we wait).
            idle_ticks = 0;
            atomic_store(&self->wd_parked, true);
            while (atomic_load(&self->main_idle) && atomic_load(&self->wd_parked) && !self->wd_quit)
                pthread_cond_wait(&self->wd_cond, &self->wd_lock);
            //  A main thread that is busy but never lets go services the
            //  connection itself: no need to wake for it.
            atomic_store(&self->wd_parked, false);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += S_TICK_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&self->wd_cond, &self->wd_lock, &until);
        if (self->wd_quit)
            break;
        pthread_mutex_unlock(&self->wd_lock);
        idle_ticks = atomic_load(&self->main_idle) ? idle_ticks + 1 : 0;
        if (pthread_mutex_trylock(&self->lock) == 0) {
            s_conn_on_broker(self);
            s_conn_tick(self); //  may end the process
            pthread_mutex_unlock(&self->lock);
        }
        pthread_mutex_lock(&self->wd_lock);
    }
    pthread_mutex_unlock(&self->wd_lock);
    return NULL;
}

//  Connect, and start the watchdog. The caller holds the connection
//  from here on.
static void
s_conn_start(s_conn *self, const loom_worker_process_opts *opts)
{
    memset(self, 0, sizeof *self);
    atomic_init(&self->main_idle, false);
    atomic_init(&self->wd_parked, false);
    atomic_init(&self->run_pos, 0);
    atomic_init(&self->run_start_ms, 0);
    atomic_init(&self->events, 0);
    atomic_init(&self->stop.cancelled, 0);
    self->opts = opts;
    self->hb_ms = (uint32_t)loom_env_long("LOOM_HEARTBEAT_MS", 1000, 10, 600000);
    self->liveness = 3;
    self->pending = zlist_new();
    self->inbox = zlist_new();
    self->ctx = zmq_ctx_new();
    LOOM_ASSERT(self->pending && self->inbox && self->ctx);
    pthread_mutex_init(&self->lock, NULL);
    pthread_mutex_init(&self->wd_lock, NULL);
    loom_cond_init_monotonic(&self->wd_cond);
    pthread_mutex_lock(&self->lock);
    s_conn_connect(self);
    s_conn_tick(self);
    int rc = pthread_create(&self->watchdog, NULL, s_watchdog, self);
    LOOM_ASSERT(rc == 0);
}

//  Stop the watchdog, flush what waits, close; drop what the main thread
//  did not take (the broker requeues it). Called holding the connection.
static void
s_conn_stop(s_conn *self)
{
    pthread_mutex_lock(&self->wd_lock);
    self->wd_quit = true;
    pthread_cond_signal(&self->wd_cond);
    pthread_mutex_unlock(&self->wd_lock);
    pthread_join(self->watchdog, NULL);
    s_conn_finish(self);
    s_in *in;
    while ((in = (s_in *)zlist_pop(self->inbox)))
        s_in_destroy(&in);
    zlist_destroy(&self->inbox);
    zlist_destroy(&self->pending);
    pthread_mutex_unlock(&self->lock);
    pthread_mutex_destroy(&self->lock);
    pthread_mutex_destroy(&self->wd_lock);
    pthread_cond_destroy(&self->wd_cond);
}

//  The main thread lets go of the connection for plugin code or blob
//  transfers, and takes it back after.
static void
s_conn_let_go(s_conn *self)
{
    pthread_mutex_unlock(&self->lock);
    if (atomic_load(&self->wd_parked)) {
        pthread_mutex_lock(&self->wd_lock);
        atomic_store(&self->wd_parked, false);
        pthread_cond_signal(&self->wd_cond);
        pthread_mutex_unlock(&self->wd_lock);
    }
}

static void
s_conn_take(s_conn *self)
{
    pthread_mutex_lock(&self->lock);
}

//  ---------------------------------------------------------------------
//  Main thread

static s_map *
s_map_find(s_worker *self, uint64_t id)
{
    for (size_t i = 0; i < self->nmaps; i++)
        if (self->maps[i].id == id) {
            self->maps[i].last_use = ++self->map_use_seq;
            return &self->maps[i];
        }
    return NULL;
}

static void
s_map_forget(s_worker *self, uint64_t id)
{
    for (size_t i = 0; i < self->nmaps; i++)
        if (self->maps[i].id == id) {
            free(self->maps[i].error);
            loom_file_list_free(&self->maps[i].shares);
            loom_executor_close_map(self->exec, id);
            self->map_bytes -= self->maps[i].bytes;
            memmove(&self->maps[i], &self->maps[i + 1],
                    (self->nmaps - i - 1) * sizeof self->maps[0]);
            self->nmaps--;
            return;
        }
}

static void
s_map_forget_all(s_worker *self)
{
    while (self->nmaps)
        s_map_forget(self, self->maps[0].id);
}

//  A new definition of map id holding bytes: room is made by forgetting
//  the least recently used ones (a broker opening maps without end, or
//  with huge args, cannot make this process hold more than the limits).
static s_map *
s_map_add(s_worker *self, uint64_t id, size_t bytes)
{
    s_map_forget(self, id);
    while (self->nmaps &&
           (self->nmaps >= self->max_maps || self->map_bytes + bytes > self->max_map_bytes)) {
        size_t lru = 0;
        for (size_t i = 1; i < self->nmaps; i++)
            if (self->maps[i].last_use < self->maps[lru].last_use)
                lru = i;
        s_map_forget(self, self->maps[lru].id);
    }
    if (self->nmaps == self->capmaps) {
        self->capmaps = self->capmaps ? self->capmaps * 2 : 16;
        self->maps = (s_map *)loom_xrealloc(self->maps, self->capmaps * sizeof *self->maps);
    }
    s_map *mp = &self->maps[self->nmaps++];
    memset(mp, 0, sizeof *mp);
    mp->id = id;
    mp->last_use = ++self->map_use_seq;
    return mp;
}

static bool
s_cancelled(s_worker *self, uint64_t map)
{
    s_conn *c = &self->conn;
    size_t n = c->ncancels < S_CANCELS ? c->ncancels : S_CANCELS;
    for (size_t i = 0; i < n; i++)
        if (c->cancels[i] == map)
            return true;
    return false;
}

//  Our work belongs to a connection that is gone.
static bool
s_stale(s_worker *self, uint32_t gen)
{
    return self->conn.gen != gen;
}

//  Encode and send (the connection drops it if generation gen is gone).
static void
s_to_io(s_worker *self, uint32_t gen, const loom_msg *m)
{
    void *buf = NULL;
    size_t len = 0;
    if (loom_wire_encode(m, &buf, &len) != 0) {
        loom_log_error("worker %d: cannot encode %s", (int)getpid(), loom_msg_type_name(m->type));
        return;
    }
    s_conn_send_buf(&self->conn, gen, buf, len);
}

static void
s_send_error(s_worker *self, int code, uint64_t map, const char *message)
{
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_ERROR;
    m.u.error.code = code;
    m.u.error.map = map;
    m.u.error.message = message;
    s_to_io(self, self->gen, &m);
}

static void
s_out_clear(s_worker *self)
{
    //  Most results own nothing (a packed small output, no error, no
    //  files): no calls for them.
    for (size_t i = 0; i < self->nres; i++) {
        loom_wire_result *r = &self->res[i];
        if (self->res_off[i] == SIZE_MAX && r->data.data)
            free((void *)r->data.data);
        if (r->error)
            free((void *)r->error);
        if (r->files)
            loom_wire_files_free((loom_wire_file *)r->files, r->nfiles);
    }
    self->nres = 0;
    self->res_bytes = 0;
    self->small_len = 0;
}

static void
s_out_begin(s_worker *self, uint64_t map)
{
    s_out_clear(self);
    free(self->partial);
    self->partial = NULL;
    self->partial_len = 0;
    self->has_partial = false;
    self->out_map = map;
    self->out_gen = self->gen;
    self->out_start_us = loom_now_us();
}

//  Add a result; takes data and error (malloc'd or NULL). lent: data is
//  the executor's (loom_executor_run_keep, small), copied and not freed.
static void
s_out_add(s_worker *self, const loom_wire_item *item, int status, void *data, size_t len,
          char *error, bool lent)
{
    if (self->nres == self->capres) {
        self->capres = self->capres ? self->capres * 2 : 64;
        self->res = (loom_wire_result *)loom_xrealloc(self->res, self->capres * sizeof *self->res);
        self->res_off =
            (size_t *)loom_xrealloc(self->res_off, self->capres * sizeof *self->res_off);
    }
    size_t off = SIZE_MAX;
    LOOM_ASSERT(!lent || len <= S_SMALL_OUTPUT);
    if (data && len > 0 && len <= S_SMALL_OUTPUT) {
        //  Small outputs are packed into one buffer and their blocks freed
        //  at once: freeing a whole batch of small blocks together sent
        //  glibc's free and malloc down their slow paths (callgrind: ~350
        //  instructions per item); a block freed right away is reused.
        if (self->small_len + len > self->small_cap) {
            self->small_cap = self->small_cap ? self->small_cap * 2 : 16384;
            self->small = (uint8_t *)loom_xrealloc(self->small, self->small_cap);
        }
        off = self->small_len;
        loom_copy(self->small + off, data, len);
        self->small_len += len;
        if (!lent)
            free(data);
        data = NULL;
    }
    self->res_off[self->nres] = off;
    loom_wire_result *r = &self->res[self->nres++];
    memset(r, 0, sizeof *r);
    r->index = item->index;
    r->attempt = item->attempt;
    r->status = status;
    r->data.data = (const uint8_t *)data;
    r->data.len = len;
    r->error = error;
    self->res_bytes += len + (error ? strlen(error) : 0) + 32;
}

//  Send the results collected (and the partial when final).
static void
s_out_flush(s_worker *self, bool final)
{
    bool partial = final && self->has_partial;
    if (self->nres == 0 && !partial)
        return;
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_RESULT_BATCH;
    m.u.result_batch.map = self->out_map;
    for (size_t i = 0; i < self->nres; i++)
        if (self->res_off[i] != SIZE_MAX)
            self->res[i].data.data = self->small + self->res_off[i];
    m.u.result_batch.results = self->res;
    m.u.result_batch.nresults = self->nres;
    int64_t now = loom_now_us();
    m.u.result_batch.elapsed_us = (uint64_t)(now - self->out_start_us);
    if (partial) {
        m.u.result_batch.has_partial = true;
        m.u.result_batch.partial.data = (const uint8_t *)self->partial;
        m.u.result_batch.partial.len = self->partial_len;
    }
    loom_worker_blobs_take_counts(self->blobs, &m.u.result_batch.blob_bytes_in,
                                  &m.u.result_batch.blob_bytes_out);
    if (!s_stale(self, self->out_gen))
        s_to_io(self, self->out_gen, &m);
    s_out_clear(self);
    self->out_start_us = now;
    if (partial) {
        free(self->partial);
        self->partial = NULL;
        self->partial_len = 0;
        self->has_partial = false;
    }
}

//  Fold an output (taken) into the batch's partial. Returns 0, or the
//  fold's error with *error set (malloc'd). Called with the connection
//  let go (the reduce is plugin code).
static int
s_fold(s_worker *self, uint64_t map, void *data, size_t len, char **error)
{
    if (!self->has_partial) {
        self->partial = data;
        self->partial_len = len;
        self->has_partial = true;
        return 0;
    }
    loom_exec_out out;
    memset(&out, 0, sizeof out);
    int rc =
        loom_executor_reduce(self->exec, map, self->partial, self->partial_len, data, len, &out);
    free(data);
    if (rc != 0) {
        *error = out.error ? out.error : loom_xstrdup(loom_strerror(rc));
        out.error = NULL;
        loom_exec_out_clear(&out);
        return rc;
    }
    free(self->partial);
    self->partial = out.data;
    self->partial_len = out.len;
    free(out.error);
    return 0;
}

//  Run item k of the batch the connection has published (s_run_batch),
//  with the connection let go: published for its timeout without a lock,
//  and without a clock read when the map has no timeout.
static int
s_run_item(s_worker *self, const loom_wire_task_batch *tb, size_t k, uint32_t timeout_ms,
           loom_exec_out *out)
{
    s_conn *c = &self->conn;
    const loom_wire_item *item = &tb->items[k];
    if (timeout_ms > 0)
        atomic_store_explicit(&c->run_start_ms, loom_now_ms(), memory_order_relaxed);
    atomic_store_explicit(&c->run_pos, 2 * (uint64_t)k + 1, memory_order_release);
    int rc = loom_executor_run_keep(self->exec, tb->map, item->index, item->data.data,
                                    item->data.len, S_SMALL_OUTPUT, out);
    atomic_store_explicit(&c->run_pos, 2 * (uint64_t)k + 2, memory_order_release);
    return rc;
}

//  TaskBatch{combine}: fold every item's data into one partial.
static void
s_run_combine(s_worker *self, const loom_wire_task_batch *tb, s_map *mp)
{
    int status = 0;
    char *error = NULL;
    if (!mp) {
        status = LOOM_EPROTO;
        error = loom_xstrdup("unknown map");
    } else if (mp->status) {
        status = mp->status;
        error = loom_xstrdup(mp->error);
    }
    for (size_t i = 0; i < tb->nitems && status == 0; i++) {
        size_t len = tb->items[i].data.len;
        void *copy = loom_xmalloc(len);
        if (len)
            memcpy(copy, tb->items[i].data.data, len);
        s_conn_let_go(&self->conn);
        status = s_fold(self, tb->map, copy, len, &error);
        s_conn_take(&self->conn);
    }
    if (status != 0) {
        loom_log_warning("worker %d: combine for map %" PRIu64 " failed: %s", (int)getpid(),
                         tb->map, error);
        s_send_error(self, status, tb->map, error);
        free(error);
        free(self->partial);
        self->partial = NULL;
        self->has_partial = false;
    } else if (!self->has_partial) {
        self->has_partial = true; //  no items: an empty fold
    }
    //  Always answer, so the broker never waits for a combine forever.
    loom_msg m;
    memset(&m, 0, sizeof m);
    m.type = LOOM_MSG_RESULT_BATCH;
    m.u.result_batch.map = tb->map;
    m.u.result_batch.elapsed_us = (uint64_t)(loom_now_us() - self->out_start_us);
    m.u.result_batch.has_partial = self->has_partial;
    m.u.result_batch.partial.data = (const uint8_t *)self->partial;
    m.u.result_batch.partial.len = self->partial_len;
    if (!s_stale(self, self->out_gen))
        s_to_io(self, self->out_gen, &m);
    free(self->partial);
    self->partial = NULL;
    self->partial_len = 0;
    self->has_partial = false;
}

//  Fetch an item's files (once per host) and give them, with the output
//  directory, to the executor. Returns 0, or a code with *error set.
//  Called with the connection let go (a fetch may take any time).
static int
s_item_files_begin(s_worker *self, const loom_wire_item *item, char ***paths_p, char **error)
{
    *paths_p = NULL;
    *error = NULL;
    size_t n = item->nfiles;
    if (n == 0) {
        //  Once: the dir stays set (s_item_files_end passes it again).
        if (!self->out_dir_set)
            loom_executor_set_item_files(self->exec, NULL, NULL, 0,
                                         loom_worker_blobs_out_dir(self->blobs));
        self->out_dir_set = true;
        return 0;
    }
    const char **names = loom_xcalloc(n, sizeof *names);
    char **paths = loom_xcalloc(n, sizeof *paths);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char what[320];
        snprintf(what, sizeof what, "file '%s'", item->files[i].name);
        names[i] = item->files[i].name;
        rc = loom_worker_blobs_fetch(self->blobs, what, &item->files[i], &paths[i], error);
    }
    if (rc) {
        for (size_t i = 0; i < n; i++)
            free(paths[i]);
        free(paths);
        free(names);
        return rc;
    }
    //  names borrow from the item; the array itself rides after the paths.
    paths = loom_xrealloc(paths, (2 * n + 1) * sizeof *paths);
    memcpy(paths + n + 1, names, n * sizeof *names);
    paths[n] = NULL;
    free(names);
    loom_executor_set_item_files(self->exec, (const char *const *)(paths + n + 1),
                                 (const char *const *)paths, n,
                                 loom_worker_blobs_out_dir(self->blobs));
    *paths_p = paths;
    return 0;
}

//  After the run: upload its output files (a failure fails the item),
//  free the input paths, clear the executor's item files. Called with the
//  connection let go.
static void
s_item_files_end(s_worker *self, const loom_wire_item *item, char **paths, int *rc,
                 loom_exec_out *out, loom_wire_file **files, size_t *nfiles)
{
    const char *const *names, *const *opaths;
    size_t n = loom_executor_output_files(self->exec, &names, &opaths);
    if (n) {
        char *reason = NULL;
        int urc =
            loom_worker_blobs_put_outputs(self->blobs, names, opaths, n, files, nfiles, &reason);
        if (urc && *rc == 0) {
            *rc = urc;
            if (!out->borrowed)
                free(out->data);
            out->data = NULL;
            out->borrowed = false;
            out->len = 0;
            free(out->error);
            out->error = reason;
            reason = NULL;
        }
        free(reason);
        if (*files && *nfiles == 0) {
            free(*files);
            *files = NULL;
        }
    }
    if (n || item->nfiles) //  the output dir stays: it is the same for every item
        loom_executor_set_item_files(self->exec, NULL, NULL, 0,
                                     loom_worker_blobs_out_dir(self->blobs));
    for (size_t i = 0; paths && i < item->nfiles; i++)
        free(paths[i]);
    free(paths);
}

//  Fetch the map's shares (once per host) before its first item. On
//  failure every item of the batch fails with the reason and 1 is returned.
static int
s_shares_open(s_worker *self, s_map *mp, const loom_wire_task_batch *tb)
{
    if (!mp->shares || mp->shares_ready)
        return 0;
    char *reason = NULL;
    s_conn_let_go(&self->conn);
    int rc = loom_worker_blobs_open_shares(self->blobs, self->exec, mp->id, mp->shares, &reason);
    s_conn_take(&self->conn);
    if (rc == 0) {
        mp->shares_ready = true;
        return 0;
    }
    loom_log_warning("worker %d: map %" PRIu64 ": %s", (int)getpid(), mp->id,
                     reason ? reason : loom_strerror(rc));
    for (size_t i = 0; i < tb->nitems; i++)
        s_out_add(self, &tb->items[i], rc, NULL, 0,
                  loom_xstrdup(reason ? reason : loom_strerror(rc)), false);
    s_out_flush(self, true);
    free(reason);
    return 1;
}

//  The map was cancelled: answer items from.. of the batch (after what was
//  collected) as cancelled, so that the broker knows this process is done
//  with every one of them (it counts them running until then).
static void
s_answer_cancelled(s_worker *self, const loom_wire_task_batch *tb, size_t from)
{
    for (size_t i = from; i < tb->nitems; i++)
        s_out_add(self, &tb->items[i], LOOM_ECANCELED, NULL, 0,
                  loom_xstrdup("the map was cancelled: not run"), false);
    s_out_flush(self, true);
}

//  After a run whose map was cancelled meanwhile: no output file is sent
//  (they are removed), the input paths are freed.
static void
s_item_files_drop(s_worker *self, const loom_wire_item *item, char **paths)
{
    const char *const *names, *const *opaths;
    size_t n = loom_executor_output_files(self->exec, &names, &opaths);
    for (size_t i = 0; i < n; i++)
        unlink(opaths[i]);
    loom_executor_set_item_files(self->exec, NULL, NULL, 0, loom_worker_blobs_out_dir(self->blobs));
    for (size_t i = 0; paths && i < item->nfiles; i++)
        free(paths[i]);
    free(paths);
}

static void
s_run_batch(s_worker *self, const loom_wire_task_batch *tb)
{
    s_map *mp = s_map_find(self, tb->map);
    s_out_begin(self, tb->map);
    if (tb->combine) {
        s_run_combine(self, tb, mp);
        return;
    }
    if (s_cancelled(self, tb->map)) {
        s_answer_cancelled(self, tb, 0);
        return;
    }
    if (mp && !mp->status && s_shares_open(self, mp, tb) != 0)
        return; //  every item failed with the reason; the map may fetch again next batch
    if (!mp || mp->status) {
        int status = mp ? mp->status : LOOM_EPROTO;
        for (size_t i = 0; i < tb->nitems; i++) {
            char *error;
            if (mp)
                error = loom_xstrdup(mp->error);
            else {
                error = (char *)loom_xmalloc(64);
                snprintf(error, 64, "unknown map %" PRIu64, tb->map);
            }
            s_out_add(self, &tb->items[i], status, NULL, 0, error, false);
        }
        s_out_flush(self, true);
        return;
    }
    //  The items run with the connection let go for the whole batch (the
    //  watchdog reads, heartbeats and watches the timeout meanwhile): per
    //  item no lock and no clock read, but an atomic load to notice a
    //  Cancel or a new connection. The lock is taken back only to send.
    s_conn *c = &self->conn;
    c->run_batch = tb;
    c->item_gen = self->gen;
    c->map = tb->map;
    c->timeout_ms = mp->timeout_ms;
    loom__stopwatch_items(&c->stop, tb->map);
    atomic_store_explicit(&c->run_pos, 0, memory_order_relaxed);
    unsigned events = atomic_load_explicit(&c->events, memory_order_relaxed);
    s_conn_let_go(c);
    for (size_t i = 0; i < tb->nitems; i++) {
        const loom_wire_item *item = &tb->items[i];
        if (atomic_load_explicit(&c->events, memory_order_relaxed) != events) {
            s_conn_take(c);
            events = atomic_load_explicit(&c->events, memory_order_relaxed);
            if (s_stale(self, self->out_gen)) {
                c->run_batch = NULL;
                loom__stopwatch_clear(&c->stop);
                s_out_begin(self, tb->map); //  drop: nobody wants these now
                return;
            }
            if (s_cancelled(self, tb->map)) {
                c->run_batch = NULL;
                loom__stopwatch_clear(&c->stop);
                s_answer_cancelled(self, tb, i);
                return;
            }
            s_conn_let_go(c);
        }
        loom_exec_out out;
        memset(&out, 0, sizeof out);
        char **fpaths = NULL;
        char *ferr = NULL;
        int frc = s_item_files_begin(self, item, &fpaths, &ferr);
        if (frc) {
            s_out_add(self, item, frc, NULL, 0, ferr, false);
            continue;
        }
        int rc = s_run_item(self, tb, i, mp->timeout_ms, &out);
        self->items_run++;
        if (atomic_load_explicit(&c->stop.cancelled, memory_order_relaxed)) {
            //  Cancelled while it ran: what it returned (maybe cut short
            //  by loom_task_cancelled) is dropped, never sent as a result.
            loom_exec_out_clear(&out);
            s_item_files_drop(self, item, fpaths);
            s_out_add(self, item, LOOM_ECANCELED, NULL, 0,
                      loom_xstrdup("the map was cancelled while the item ran"), false);
            continue;
        }
        loom_wire_file *ofiles = NULL;
        size_t nofiles = 0;
        s_item_files_end(self, item, fpaths, &rc, &out, &ofiles, &nofiles);
        if (rc == 0 && mp->reduce) {
            char *error = NULL;
            void *data = out.data;
            if (out.borrowed) { //  the fold keeps it
                data = loom_xmalloc(out.len);
                memcpy(data, out.data, out.len);
            }
            rc = s_fold(self, tb->map, data, out.len, &error);
            out.data = NULL;
            s_out_add(self, item, rc, NULL, 0, error, false);
            free(out.error);
        } else
            s_out_add(self, item, rc, out.data, out.len, out.error, out.borrowed);
        if (ofiles) {
            //  A reduce map's item too: its output is in the fold, its
            //  files ride on its status-only result to the client.
            self->res[self->nres - 1].files = ofiles;
            self->res[self->nres - 1].nfiles = nofiles;
        }
        //  Stopping: send each result at once, the watchdog may hand the
        //  rest back any moment (reduce partials go only with the batch).
        if (self->res_bytes >= S_FLUSH_BYTES || self->nres >= LOOM_WIRE_MAX_ITEMS ||
            (s_stop && !mp->reduce)) {
            s_conn_take(c);
            s_out_flush(self, false);
            s_conn_let_go(c);
        }
    }
    s_conn_take(c);
    c->run_batch = NULL;
    loom__stopwatch_clear(&c->stop);
    s_out_flush(self, true);
}

//  Open the map in the executor. The plugin's library may be loaded and
//  its init run here, for any time: then it runs watched (its init
//  timeout, a Cancel of the map: worker_stop.h) and with the init marker
//  left for the supervisor, in case it dies there.
static int
s_open_watched(s_worker *self, const loom_wire_map_open *mo, char **reason)
{
    s_conn *c = &self->conn;
    if (s_cancelled(self, mo->map)) {
        *reason = loom_xstrdup("the map was cancelled: not run");
        return LOOM_ECANCELED;
    }
    bool watched = loom_executor_init_pending(self->exec, mo->plugin);
    if (watched) {
        uint32_t ms = mo->init_timeout_ms == 0            ? LOOM_INIT_TIMEOUT_DEFAULT_MS
                      : mo->init_timeout_ms == UINT32_MAX ? 0
                                                          : mo->init_timeout_ms;
        loom__stopwatch_init(&c->stop, mo->map, mo->plugin, ms, loom_now_ms());
        loom__init_mark(self->opts->cache_dir, mo->map, mo->plugin, ms);
    }
    s_conn_let_go(c);
    int rc = loom_executor_open_map(self->exec, mo->map, mo->plugin, mo->version, mo->task,
                                    mo->args.data, mo->args.len, mo->reduce, reason);
    s_conn_take(c);
    if (watched) {
        loom__stopwatch_clear(&c->stop);
        loom__init_unmark(self->opts->cache_dir);
    }
    return rc;
}

static void
s_on_map_open(s_worker *self, const loom_wire_map_open *mo)
{
    size_t bytes = sizeof(s_map) + mo->args.len;
    for (size_t i = 0; i < mo->nshares; i++)
        bytes += sizeof(loom_wire_file) + LOOM_HASH_SIZE + strlen(mo->shares[i].name) + 1;
    bool too_big = bytes > self->max_map_bytes;
    s_map *mp = s_map_add(self, mo->map, too_big ? 0 : bytes);
    mp->reduce = mo->reduce;
    mp->timeout_ms = mo->timeout_ms;
    char *reason = NULL;
    int rc;
    if (too_big) {
        //  Refused: its items fail with this reason.
        rc = LOOM_ETOOBIG;
        reason = loom_xmalloc(256);
        snprintf(reason, 256,
                 "map definition of %zu bytes (args and shares) is over this worker's limit "
                 "of %zu (LOOM_WORKER_MAP_BYTES)",
                 bytes, self->max_map_bytes);
    } else {
        mp->bytes = bytes;
        self->map_bytes += bytes;
        rc = s_open_watched(self, mo, &reason);
    }
    if (rc != 0) {
        mp->status = rc;
        mp->error = reason ? reason : loom_xstrdup(loom_strerror(rc));
        loom_log_warning("worker %d: map %" PRIu64 " (%s/%s): %s", (int)getpid(), mo->map,
                         mo->plugin ? mo->plugin : "?", mo->task ? mo->task : "?", mp->error);
        s_send_error(self, rc, mo->map, mp->error);
    } else {
        free(reason);
        if (mo->nshares)
            mp->shares = loom_file_list_copy(mo->shares, mo->nshares);
    }
}

//  A message from the broker, as the connection queued it.
static void
s_on_message(s_worker *self, uint32_t gen, loom_msg *m)
{
    if (s_stale(self, gen))
        return;
    if (gen != self->gen) {
        //  A new connection: the broker will define its maps again.
        s_map_forget_all(self);
        self->gen = gen;
    }
    switch (m->type) {
    case LOOM_MSG_MAP_OPEN:
        s_on_map_open(self, &m->u.map_open);
        break;
    case LOOM_MSG_TASK_BATCH:
        s_run_batch(self, &m->u.task_batch);
        break;
    case LOOM_MSG_CANCEL:
        s_map_forget(self, m->u.cancel_map);
        break;
    default:
        break;
    }
}

//  What the connection queued: a Welcome (the executor is made at the
//  first), or a message. Returns 0, or 1 when the process cannot go on.
static int
s_on_in(s_worker *self, s_in *in)
{
    if (in->kind == S_IN_WELCOME) {
        self->worker_id = in->worker_id;
        loom_worker_blobs_set_endpoint(self->blobs, in->endpoint, self->opts->endpoint);
        loom_worker_blobs_set_store(self->blobs, in->store);
        if (!self->exec) {
            self->exec = loom_executor_new(self->opts->plugin_path, in->worker_id);
            if (!self->exec) {
                loom_log_error("worker %d: cannot create the executor", (int)getpid());
                return 1;
            }
            loom_executor_set_cancel_flag(self->exec, &self->conn.stop.cancelled);
        }
    } else if (in->kind == S_IN_MSG && self->exec)
        s_on_message(self, in->gen, in->msg);
    return 0;
}

int
loom_worker_process_run(const loom_worker_process_opts *opts)
{
    LOOM_ASSERT(opts && opts->endpoint && opts->host);
    //  Plugin code runs on this thread: keep SIGTERM/SIGINT off it, and off
    //  every thread started from here, so a signal does not cut a task's
    //  sleep or read. Only the watchdog unblocks them. Blocking before
    //  zsys_init also means no signal is lost while handlers change.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    zsys_init();
    zsys_set_logident("loom-worker");
    zsys_handler_set(NULL);
    int err = s_wake[0] < 0 ? loom_wake_open(s_wake) : 0;
    if (err)
        loom_log_warning("worker %d: no wake-up pipe (%s): a stop is seen within %d ms",
                         (int)getpid(), strerror(err), S_TICK_MS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    s_worker self;
    memset(&self, 0, sizeof self);
    self.opts = opts;
    self.max_maps = (size_t)loom_env_long("LOOM_WORKER_MAX_MAPS", S_MAX_MAPS, 1, 1L << 20);
    self.max_map_bytes =
        (size_t)loom_env_long("LOOM_WORKER_MAP_BYTES", S_MAX_MAP_BYTES, 4096, LONG_MAX);
    self.blobs =
        loom_worker_blobs_new(opts->cache_dir, opts->cache_size, opts->cert_path, opts->server_key);
    loom__init_unmark(opts->cache_dir); //  a stale one of a process that had our pid
    s_conn *c = &self.conn;
    s_conn_start(c, opts); //  held from here on, but while plugin code runs
    int status = 0;
    //  A burst of large messages (batches, map definitions) leaves the
    //  heaps of this thread and of libzmq's I/O thread as large as the
    //  burst was, though all of it is freed: glibc returns a heap's top,
    //  not the free pages inside it. Once idle for S_TRIM_IDLE_MS after
    //  work, the worker gives them back, once per idle spell.
    bool trim_due = false;
    int64_t idle_since = 0;
    long rss_checked = 0; //  items run when the resident size was last checked (--max-rss)

    while (!s_stop) {
        if (opts->max_tasks > 0 && self.items_run >= opts->max_tasks) {
            loom_log_info("worker %d: ran %ld items (--max-tasks): exiting", (int)getpid(),
                          self.items_run);
            break;
        }
        uint64_t rss;
        if (self.items_run != rss_checked && loom__rss_over(opts->max_rss, &rss)) {
            loom_log_info("worker %d: holds %llu MiB after a batch, over its --max-rss of %llu "
                          "MiB: exiting (a new process takes its place)",
                          (int)getpid(), loom__mib(rss), loom__mib(opts->max_rss));
            break;
        }
        rss_checked = self.items_run;
        s_in *in = (s_in *)zlist_pop(c->inbox);
        if (in) {
            status = s_on_in(&self, in);
            s_in_destroy(&in);
            trim_due = true;
            idle_since = 0;
            if (status)
                break;
            s_conn_service(c); //  the timers, when a stream of messages keeps us busy
            continue;
        }
        //  Nothing to run: wait for the broker, a signal or the next timer.
        int64_t now = loom_now_ms();
        int64_t due = s_conn_next_tick(c);
        if (trim_due && !idle_since)
            idle_since = now;
        if (trim_due && idle_since + S_TRIM_IDLE_MS < due)
            due = idle_since + S_TRIM_IDLE_MS;
        int64_t wait = due - now;
        if (s_wake[0] < 0 && wait > S_TICK_MS)
            wait = S_TICK_MS; //  no pipe: look at s_stop every tick
        zmq_pollitem_t items[] = {{c->dealer, 0, ZMQ_POLLIN, 0}, {NULL, s_wake[0], ZMQ_POLLIN, 0}};
        atomic_store(&c->main_idle, true);
        int rc = zmq_poll(items, s_wake[0] >= 0 ? 2 : 1, wait < 0 ? 0 : (long)wait);
        atomic_store(&c->main_idle, false); //  before any let-go (see s_watchdog)
        if (rc < 0 && zmq_errno() != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            loom_wake_drain(s_wake);
        s_conn_service(c);
        if (trim_due && zlist_size(c->inbox) == 0 && loom_now_ms() - idle_since >= S_TRIM_IDLE_MS) {
            malloc_trim(0);
            trim_due = false;
        }
    }
    //  Send the last results, close with a linger; batches queued and not
    //  run are freed (the broker requeues them when we are gone).
    s_conn_stop(c);
    s_map_forget_all(&self);
    s_out_clear(&self);
    free(self.res);
    free(self.res_off);
    free(self.small);
    free(self.maps);
    free(self.partial);
    loom_executor_destroy(&self.exec);
    loom_worker_blobs_destroy(&self.blobs);
    return status;
}
