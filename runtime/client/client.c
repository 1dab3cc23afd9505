/*  client: a connection to a loom broker (or an embedded local cluster),
    its link, pipelines, and the dispatch of broker messages to maps.

    The link owns the DEALER to the broker, under a mutex: whoever holds it
    uses the socket. The API thread (the user's) takes it to send, and to
    wait for the broker directly on the DEALER, with no thread between it
    and the broker (an inproc pair to an I/O thread cost two thread
    wake-ups per round trip); while it holds it, it also does the session's
    duties when due. A background thread does them while the API thread is
    away (in its own code, or in an on_result callback): it wakes when a
    duty is due, or every S_TICK_MAX_MS, takes the mutex (waiting for the
    API thread to leave its call), moves what the broker sent into a queue
    without decoding it (it only peeks at the message type to swallow the
    broker's heartbeats), sends heartbeats when the connection is idle,
    reconnects to a silent broker and reports one gone too long as lost.
    Only the API thread decodes and dispatches; map.c does the rest. See
    runtime/wire/PROTOCOL.md.  */

#include "client_priv.h"
#include "blob_transfer.h"
#include "cluster.h"
#include "curve.h"
#include "curve_watch.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define S_DEFAULT_TIMEOUT_MS 5000
#define S_DEFAULT_RECONNECT_MS 30000 //  a lost broker may be away this long
#define S_BROKER_HWM 100000
#define S_DRAIN_MAX 256   //  frames taken from the DEALER per look
#define S_TICK_MAX_MS 100 //  the background thread looks at least this often

//  ---------------------------------------------------------------------------
//  Library set-up, once per process

static void
s_library_init_once(void)
{
    //  CZMQ installs SIGINT/SIGTERM handlers when it initialises, unless
    //  told not to: the user's program keeps whatever it has now.
    struct sigaction int_old, term_old;
    sigaction(SIGINT, NULL, &int_old);
    sigaction(SIGTERM, NULL, &term_old);
    zsys_handler_set(NULL);
    sigaction(SIGINT, &int_old, NULL);
    sigaction(SIGTERM, &term_old, NULL);
    //  loom.h promises diagnostics on stderr; CZMQ logs to stdout unless
    //  told otherwise.
    if (!getenv("ZSYS_LOGSTREAM"))
        zsys_set_logstream(stderr);
}

static void
s_library_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, s_library_init_once);
}

//  ---------------------------------------------------------------------------
//  Handshake and frames

typedef struct {
    const char *endpoint;      //  broker
    int timeout_ms;            //  handshake
    loom_curve_watch *watch;   //  the DEALER's handshakes, or NULL
    loom_wire_welcome welcome; //  out: the broker's Welcome
    char blob_ep[512];         //  out: Welcome.blob_endpoint ("" if none)
    char blob_store[4096];     //  out: Welcome.blob_store ("" if none)
} s_io_args;

//  The union type of an encoded Message, read without decoding (the API
//  thread verifies everything): root offset, vtable, field 1 (body_type).
//  FlatBuffers are little-endian, like every host we build for. Returns -1
//  when the bytes do not look like a Message.
static int
s_peek_type(const uint8_t *b, size_t n)
{
    if (n < 8)
        return -1;
    uint32_t root;
    memcpy(&root, b, 4);
    if ((size_t)root + 4 > n)
        return -1;
    int32_t vt_off;
    memcpy(&vt_off, b + root, 4);
    int64_t vt = (int64_t)root - vt_off;
    if (vt < 0 || (size_t)vt + 4 > n)
        return -1;
    uint16_t vt_size;
    memcpy(&vt_size, b + vt, 2);
    if (vt_size < 8 || (size_t)vt + vt_size > n)
        return 0;
    uint16_t fo;
    memcpy(&fo, b + vt + 6, 2);
    if (fo == 0)
        return 0;
    if ((size_t)root + fo >= n)
        return -1;
    return b[root + fo];
}

static void
s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

//  Say Hello and wait for Welcome until the deadline. Returns 0 or a code;
//  LOOM_EACCES, logged with the reason, as soon as the broker refuses the
//  connection's handshake (a key it does not list, the wrong mechanism), and
//  LOOM_ETIMEDOUT, logged with the last handshake failure if there was one.
static int
s_io_handshake(void *dealer, s_io_args *a)
{
    int64_t deadline = loom_now_ms() + a->timeout_ms;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    loom_msg hello = {.type = LOOM_MSG_HELLO};
    hello.u.hello.role = LOOM_ROLE_CLIENT;
    hello.u.hello.host = host;
    hello.u.hello.pid = (uint32_t)getpid();
    hello.u.hello.software = loom_version();
    bool sent = false;
    while (true) {
        int64_t left = deadline - loom_now_ms();
        bool refused;
        const char *why = loom_curve_watch_reason(a->watch, &refused);
        if (why && (refused || left <= 0)) {
            loom_log_error("loom: broker at %s: %s", a->endpoint, why);
            return refused ? LOOM_EACCES : LOOM_ETIMEDOUT;
        }
        if (left <= 0) {
            loom_log_error("loom: no answer from broker at %s within %d ms", a->endpoint,
                           a->timeout_ms);
            return LOOM_ETIMEDOUT;
        }
        //  In slices, to see a refused handshake while waiting.
        zmq_pollitem_t item = {dealer, 0, sent ? ZMQ_POLLIN : ZMQ_POLLOUT, 0};
        if (zmq_poll(&item, 1, a->watch && left > 100 ? 100 : (long)left) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return LOOM_EIO;
        }
        if (!sent && (item.revents & ZMQ_POLLOUT)) {
            int rc = loom_wire_send(dealer, NULL, 0, &hello, ZMQ_DONTWAIT);
            if (rc == 0)
                sent = true;
            else if (rc != LOOM_EAGAIN)
                return rc;
        } else if (sent && (item.revents & ZMQ_POLLIN)) {
            loom_msg *msg = NULL;
            int rc = loom_wire_recv(dealer, NULL, 0, NULL, &msg, ZMQ_DONTWAIT);
            if (rc == LOOM_EAGAIN || rc == LOOM_EPROTO)
                continue;
            if (rc < 0)
                return rc;
            if (msg->type == LOOM_MSG_WELCOME) {
                a->welcome = msg->u.welcome;
                snprintf(a->blob_ep, sizeof a->blob_ep, "%s",
                         a->welcome.blob_endpoint ? a->welcome.blob_endpoint : "");
                snprintf(a->blob_store, sizeof a->blob_store, "%s",
                         a->welcome.blob_store ? a->welcome.blob_store : "");
                a->welcome.blob_endpoint = NULL; //  freed with msg
                a->welcome.blob_store = NULL;
                if (a->welcome.heartbeat_ms == 0)
                    a->welcome.heartbeat_ms = 1000;
                if (a->welcome.liveness == 0)
                    a->welcome.liveness = 3;
                loom_msg_destroy(&msg);
                return 0;
            }
            if (msg->type == LOOM_MSG_ERROR) {
                loom_log_error("loom: broker at %s refused us: %s", a->endpoint,
                               msg->u.error.message ? msg->u.error.message : "?");
                rc = msg->u.error.code < 0 ? msg->u.error.code : LOOM_EPROTO;
                loom_msg_destroy(&msg);
                return rc;
            }
            loom_msg_destroy(&msg);
        }
    }
}

//  Receive one frame into *zm (DONTWAIT); drops and reports extra frames.
//  Returns 1 got one, 0 nothing there, -1 socket failure.
static int
s_recv_frame(void *sock, zmq_msg_t *zm)
{
    while (true) {
        if (zmq_msg_recv(zm, sock, ZMQ_DONTWAIT) < 0)
            return zmq_errno() == EAGAIN ? 0 : -1;
        if (!zmq_msg_more(zm))
            return 1;
        //  A message is exactly one frame: drop all of a longer one.
        while (zmq_msg_more(zm)) {
            if (zmq_msg_recv(zm, sock, 0) < 0)
                return -1;
        }
        loom_log_warning("loom: dropped a multi-frame message from the broker");
    }
}

//  ---------------------------------------------------------------------------
//  The link: the DEALER to the broker and the session around it

//  S_UP: frames go both ways. S_CONNECTING: the broker was lost; a new
//  DEALER says Hello and waits for Welcome, frames from the API thread are
//  dropped. S_RESUMING: the Welcome is queued for the API thread, which
//  marks the session resumed and then reopens its pipelines and maps and
//  resubmits what has no result: what it sent before is dropped (it is
//  redone). S_LOST: the broker stayed away too long.
typedef enum { S_UP, S_CONNECTING, S_RESUMING, S_LOST } s_state;

struct loom__link {
    pthread_mutex_t mu;       //  guards everything below; its holder owns the DEALER
    pthread_cond_t wake;      //  the background thread sleeps on it
    pthread_t thread;         //  background thread
    bool started;             //  it runs
    bool stop;                //  asks it to end
    zsock_t *dealer;          //  to the broker
    void *dh;                 //  its libzmq handle
    char *endpoint;           //  broker
    char *cert_path;          //  CURVE (for reconnections), or NULL
    char *server_key;         //  its broker key, or NULL
    loom_curve_watch *watch;  //  the first DEALER's handshakes, until Welcome
    int64_t reconnect_ms;     //  how long a lost broker may stay away
    int64_t hb, expiry;       //  heartbeat interval; silence that means lost
    s_state state;            //  see above
    int64_t last_recv;        //  anything from the broker (loom_now_ms)
    int64_t last_send;        //  anything to it
    int64_t lost_at;          //  S_CONNECTING since
    int64_t hello_at;         //  Hello sent (or DEALER made) at
    bool hello_sent;          //  on the current DEALER
    void *hb_buf, *hello_buf; //  encoded Heartbeat and Hello
    size_t hb_len, hello_len;
    zmq_msg_t *q; //  frames for the API thread, in order (owned)
    size_t q_len, q_cap;
};

//  A fresh DEALER to the endpoint, replacing the old one. Returns 0, or a
//  code with the reason logged when `first` (later attempts repeat what
//  worked once).
static int
s_link_dealer(loom__link *l, bool first)
{
    loom_curve_watch_destroy(&l->watch);
    zsock_destroy(&l->dealer);
    l->dealer = zsock_new(ZMQ_DEALER);
    LOOM_ASSERT(l->dealer);
    zsock_set_immediate(l->dealer, 1);
    zsock_set_linger(l->dealer, 0);
    zsock_set_sndhwm(l->dealer, S_BROKER_HWM);
    zsock_set_rcvhwm(l->dealer, S_BROKER_HWM);
    l->dh = zsock_resolve(l->dealer);
    char *curve_err = NULL;
    if (loom_curve_client_setup(l->dh, l->cert_path, l->server_key, first ? &curve_err : NULL) !=
        0) {
        if (first)
            loom_log_error("loom: %s", curve_err ? curve_err : "CURVE set-up failed");
        free(curve_err);
        return LOOM_EINVAL;
    }
    if (first)
        l->watch = loom_curve_watch_new(zsys_init(), l->dh, l->cert_path != NULL);
    if (zmq_connect(l->dh, l->endpoint) != 0) {
        if (first)
            loom_log_error("loom: cannot connect to %s: %s", l->endpoint,
                           zmq_strerror(zmq_errno()));
        return LOOM_EINVAL;
    }
    return 0;
}

static loom__link *
s_link_new(const char *endpoint, const char *cert_path, const char *server_key,
           int64_t reconnect_ms)
{
    loom__link *l = loom_xcalloc(1, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    loom_cond_init_monotonic(&l->wake);
    l->endpoint = loom_xstrdup(endpoint);
    l->cert_path = cert_path ? loom_xstrdup(cert_path) : NULL;
    l->server_key = server_key ? loom_xstrdup(server_key) : NULL;
    l->reconnect_ms = reconnect_ms;
    loom_msg hbm = {.type = LOOM_MSG_HEARTBEAT};
    LOOM_ASSERT(loom_wire_encode(&hbm, &l->hb_buf, &l->hb_len) == 0);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    loom_msg hello = {.type = LOOM_MSG_HELLO};
    hello.u.hello.role = LOOM_ROLE_CLIENT;
    hello.u.hello.host = host;
    hello.u.hello.pid = (uint32_t)getpid();
    hello.u.hello.software = loom_version();
    LOOM_ASSERT(loom_wire_encode(&hello, &l->hello_buf, &l->hello_len) == 0);
    return l;
}

static void
s_link_destroy(loom__link **l_p)
{
    loom__link *l = *l_p;
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_signal(&l->wake);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    for (size_t i = 0; i < l->q_len; i++)
        zmq_msg_close(&l->q[i]);
    free(l->q);
    loom_curve_watch_destroy(&l->watch);
    zsock_destroy(&l->dealer);
    free(l->hb_buf);
    free(l->hello_buf);
    free(l->endpoint);
    free(l->cert_path);
    free(l->server_key);
    pthread_cond_destroy(&l->wake);
    pthread_mutex_destroy(&l->mu);
    free(l);
    *l_p = NULL;
}

//  Send a copy of an encoded message we keep (Hello, Heartbeat).
static int
s_link_send_copy(loom__link *l, const void *buf, size_t len)
{
    zmq_msg_t zm;
    zmq_msg_init_size(&zm, len);
    memcpy(zmq_msg_data(&zm), buf, len);
    if (zmq_msg_send(&zm, l->dh, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&zm);
        return -1;
    }
    return 0;
}

//  One frame from the broker, in *zm: true to keep it for the API thread.
//  Sets *reconnect when the broker has lost our session.
static bool
s_link_frame(loom__link *l, zmq_msg_t *zm, bool *reconnect)
{
    const uint8_t *b = zmq_msg_data(zm);
    size_t len = zmq_msg_size(zm);
    int type = s_peek_type(b, len);
    if (type == LOOM_MSG_HEARTBEAT || len == 0)
        return false;
    if (type == LOOM_MSG_ERROR || type == LOOM_MSG_WELCOME) {
        //  Rare: decode them here, the session depends on them.
        loom_msg *m = NULL;
        if (loom_wire_decode(b, len, &m) == 0) {
            if (m->type == LOOM_MSG_ERROR && m->u.error.code == LOOM_ESTATE &&
                m->u.error.map == 0 && m->u.error.pipeline == 0)
                type = -2; //  the broker has no session for us
            else if (m->type == LOOM_MSG_WELCOME) {
                if (m->u.welcome.heartbeat_ms)
                    l->hb = m->u.welcome.heartbeat_ms;
                l->expiry = l->hb * (m->u.welcome.liveness ? m->u.welcome.liveness : 3);
            }
        }
        loom_msg_destroy(&m);
    }
    if (l->state == S_CONNECTING) {
        if (type == LOOM_MSG_WELCOME) {
            loom_log_notice("loom: reconnected to the broker at %s after %d ms: resubmitting",
                            l->endpoint, (int)(loom_now_ms() - l->lost_at));
            l->state = S_RESUMING;
            return true; //  the Welcome tells the API thread to resume
        }
        return false; //  anything else belongs to the session that is gone
    }
    if (type == -2) {
        loom_log_notice("loom: the broker at %s lost our session: reconnecting", l->endpoint);
        *reconnect = true;
        return false;
    }
    return true;
}

//  The session's duties, by whichever thread holds the lock: move the
//  frames the broker sent into the queue, detect a silent broker and
//  reconnect, say Hello again, send heartbeats. Returns how many ms until
//  something is due.
static int64_t
s_link_service(loom__link *l)
{
    bool reconnect = false;
    for (int n = 0; n < S_DRAIN_MAX && l->state != S_LOST && !reconnect; n++) {
        if (l->q_len == l->q_cap) {
            size_t cap = l->q_cap ? l->q_cap * 2 : 64;
            zmq_msg_t *q = loom_xmalloc(cap * sizeof *q);
            for (size_t i = 0; i < l->q_len; i++) {
                zmq_msg_init(&q[i]);
                zmq_msg_move(&q[i], &l->q[i]);
                zmq_msg_close(&l->q[i]);
            }
            free(l->q);
            l->q = q;
            l->q_cap = cap;
        }
        zmq_msg_t *zm = &l->q[l->q_len];
        zmq_msg_init(zm);
        if (s_recv_frame(l->dh, zm) <= 0) {
            zmq_msg_close(zm);
            break;
        }
        l->last_recv = loom_now_ms();
        if (s_link_frame(l, zm, &reconnect))
            l->q_len++;
        else
            zmq_msg_close(zm);
    }
    int64_t now = loom_now_ms();
    bool up = l->state == S_UP || l->state == S_RESUMING;
    if (!reconnect && up && now - l->last_recv > l->expiry) {
        loom_log_warning("loom: broker at %s silent for %d ms: reconnecting", l->endpoint,
                         (int)(now - l->last_recv));
        reconnect = true;
    }
    if (reconnect) {
        if (up)
            l->lost_at = now;
        l->state = S_CONNECTING;
        l->hello_sent = false;
        l->hello_at = now;
        s_link_dealer(l, false);
    }
    if (l->state == S_CONNECTING) {
        if (now - l->lost_at > l->reconnect_ms) {
            loom_log_error("loom: broker at %s gone for %d ms: lost", l->endpoint,
                           (int)(now - l->lost_at));
            l->state = S_LOST;
        } else if (!l->hello_sent) {
            if (s_link_send_copy(l, l->hello_buf, l->hello_len) == 0) {
                l->hello_sent = true;
                l->hello_at = now;
            }
        } else if (now - l->hello_at > l->expiry) {
            //  No Welcome: try a fresh connection.
            l->hello_sent = false;
            l->hello_at = now;
            s_link_dealer(l, false);
        }
    }
    up = l->state == S_UP || l->state == S_RESUMING;
    if (up && now - l->last_send >= l->hb) {
        s_link_send_copy(l, l->hb_buf, l->hb_len);
        l->last_send = now;
    }
    if (l->state == S_LOST)
        return S_TICK_MAX_MS;
    if (l->state == S_CONNECTING)
        return 10;
    int64_t wait = l->last_send + l->hb - now;
    if (l->last_recv + l->expiry - now < wait)
        wait = l->last_recv + l->expiry - now;
    return wait > 0 ? wait : 0;
}

//  The background thread: while the API thread is away, does the session's
//  duties when they are due (and at least every S_TICK_MAX_MS, to keep the
//  DEALER's queue short). Sleeping on the condition releases the lock;
//  waking takes it back, waiting for the API thread to leave its call.
static void *
s_link_thread(void *arg)
{
    loom__link *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        int64_t wait = s_link_service(l);
        if (wait > S_TICK_MAX_MS)
            wait = S_TICK_MAX_MS;
        if (wait < 1)
            wait = 1;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += wait / 1000;
        ts.tv_nsec += (long)(wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!l->stop)
            pthread_cond_timedwait(&l->wake, &l->mu, &ts);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

//  Start the background thread, with every signal blocked: they go to the
//  user's threads, where loom_map_next sees EINTR. Returns 0 or LOOM_EIO.
static int
s_link_start(loom__link *l)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&l->thread, NULL, s_link_thread, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        loom_log_error("loom: cannot start the client's thread: %s", strerror(rc));
        return LOOM_EIO;
    }
    l->started = true;
    return 0;
}

//  Send an encoded message (lock held), taking *zm. While the DEALER has no
//  room, keeps doing the session's duties. Between sessions the message is
//  dropped: the API thread redoes everything once resumed. Returns 0, or
//  LOOM_ECONNECT once the broker is lost.
static int
s_link_send(loom__link *l, zmq_msg_t *zm)
{
    while (true) {
        if (l->state != S_UP) {
            zmq_msg_close(zm);
            return l->state == S_LOST ? LOOM_ECONNECT : 0;
        }
        if (zmq_msg_send(zm, l->dh, ZMQ_DONTWAIT) >= 0) {
            l->last_send = loom_now_ms();
            return 0;
        }
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) {
            zmq_msg_close(zm);
            l->state = S_LOST;
            return LOOM_ECONNECT;
        }
        //  Full, or not connected yet: wait for room, taking what comes.
        int64_t wait = s_link_service(l);
        if (l->state != S_UP)
            continue;
        zmq_pollitem_t item = {l->dh, 0, ZMQ_POLLIN | ZMQ_POLLOUT, 0};
        if (zmq_poll(&item, 1, (long)wait) < 0 && zmq_errno() != EINTR) {
            zmq_msg_close(zm);
            l->state = S_LOST;
            return LOOM_ECONNECT;
        }
    }
}

//  ---------------------------------------------------------------------------
//  Client

loom_client *
loom_client_new(const char *endpoint, const loom_client_opts *opts)
{
    static const loom_client_opts no_opts = {0};
    if (!opts)
        opts = &no_opts;
    char *curve_err = NULL;
    if (loom_curve_client_check(opts->cert_path, opts->server_key, &curve_err) != 0) {
        loom_log_error("loom: %s", curve_err);
        free(curve_err);
        return NULL;
    }
    if (opts->timeout_ms < 0 || opts->local_workers < 0) {
        loom_log_error("loom: invalid client options");
        return NULL;
    }
    bool bad_tasks = opts->max_tasks < 0 || (endpoint && opts->max_tasks);
    if (bad_tasks || opts->max_rss_mb < 0 || (endpoint && opts->max_rss_mb)) {
        //  The limits are the worker hosts': a remote broker's have their own.
        loom_log_error("loom: %s %d: %s", bad_tasks ? "max_tasks" : "max_rss_mb",
                       bad_tasks ? opts->max_tasks : opts->max_rss_mb,
                       endpoint ? "only for the embedded cluster (`loom worker` takes "
                                  "--max-tasks and --max-rss)"
                                : "is negative (0: no limit)");
        return NULL;
    }
    if (!endpoint && (opts->cert_path || opts->server_key)) {
        loom_log_error("loom: CURVE (cert_path, server_key) is for a remote broker, not the "
                       "embedded one");
        return NULL;
    }
    s_library_init();

    loom_client *self = loom_xcalloc(1, sizeof *self);
    self->next_id = 1;
    if (!endpoint) {
        self->cluster = loom__cluster_new(opts);
        if (!self->cluster)
            goto fail;
        endpoint = loom__cluster_endpoint(self->cluster);
    }
    self->endpoint = loom_xstrdup(endpoint);
    self->cert_path = opts->cert_path ? loom_xstrdup(opts->cert_path) : NULL;
    self->server_key = opts->server_key ? loom_xstrdup(opts->server_key) : NULL;

    int timeout_ms = opts->timeout_ms ? opts->timeout_ms : S_DEFAULT_TIMEOUT_MS;
    self->link = s_link_new(self->endpoint, opts->cert_path, opts->server_key,
                            opts->timeout_ms ? opts->timeout_ms : S_DEFAULT_RECONNECT_MS);
    if (s_link_dealer(self->link, true) != 0)
        goto fail;
    s_io_args args = {.endpoint = self->endpoint, .timeout_ms = timeout_ms,
                      .watch = self->link->watch};
    int rc = s_io_handshake(self->link->dh, &args);
    loom_curve_watch_destroy(&self->link->watch);
    if (rc != 0)
        goto fail;
    loom__link *l = self->link;
    l->hb = args.welcome.heartbeat_ms;
    l->expiry = l->hb * args.welcome.liveness;
    l->last_recv = l->last_send = loom_now_ms();
    l->state = S_UP;
    if (s_link_start(l) != 0)
        goto fail;

    self->welcome = args.welcome;
    self->blob_ep = loom__blob_endpoint(args.blob_ep, self->endpoint);
    self->blob_store = *args.blob_store ? loom_xstrdup(args.blob_store) : NULL;
    if (self->welcome.heartbeat_ms == 0)
        self->welcome.heartbeat_ms = 1000;
    if (self->welcome.liveness == 0)
        self->welcome.liveness = 3;
    if (self->welcome.max_batch == 0)
        self->welcome.max_batch = 256;
    if (self->welcome.max_frame == 0)
        self->welcome.max_frame = 1 << 20;
    return self;

fail:
    loom_client_destroy(&self);
    return NULL;
}

void
loom_client_destroy(loom_client **self_p)
{
    LOOM_ASSERT(self_p);
    loom_client *self = *self_p;
    if (!self)
        return;
    while (self->pipelines) {
        loom_pipeline *p = self->pipelines;
        loom_pipeline_destroy(&p);
    }
    loom__maps_destroy(self, NULL);
    loom__client_blob_close(self);
    s_link_destroy(&self->link);
    loom__cluster_destroy(&self->cluster);
    free(self->endpoint);
    free(self->cert_path);
    free(self->server_key);
    free(self);
    *self_p = NULL;
}

loom__cluster *
loom__client_cluster(loom_client *c)
{
    return c->cluster;
}

//  ---------------------------------------------------------------------------
//  Pipelines

loom_pipeline *
loom_pipeline_new(loom_client *c, const char *name)
{
    if (!c) {
        loom_log_error("loom: loom_pipeline_new: no client");
        return NULL;
    }
    if (!name)
        name = "";
    if (strlen(name) > 255) {
        loom_log_error("loom: pipeline name longer than 255 bytes");
        return NULL;
    }
    if (c->error) {
        loom_log_error("loom: pipeline '%s': %s", name, loom_strerror(c->error));
        return NULL;
    }
    loom_pipeline *self = loom_xcalloc(1, sizeof *self);
    self->client = c;
    self->id = c->next_id++;
    self->name = loom_xstrdup(name);
    loom_msg m = {.type = LOOM_MSG_PIPELINE_OPEN};
    m.u.pipeline_open.pipeline = self->id;
    m.u.pipeline_open.name = self->name;
    int rc = loom__client_send(c, &m);
    if (rc < 0) {
        loom_log_error("loom: pipeline '%s': %s", name, loom_strerror(rc));
        free(self->name);
        free(self);
        return NULL;
    }
    self->next = c->pipelines;
    c->pipelines = self;
    return self;
}

void
loom_pipeline_destroy(loom_pipeline **self_p)
{
    LOOM_ASSERT(self_p);
    loom_pipeline *self = *self_p;
    if (!self)
        return;
    loom_client *c = self->client;
    loom__maps_destroy(c, self);
    if (!c->error) {
        loom_msg m = {.type = LOOM_MSG_PIPELINE_CLOSE};
        m.u.pipeline_close.pipeline = self->id;
        loom__client_send(c, &m);
    }
    for (loom_pipeline **pp = &c->pipelines; *pp; pp = &(*pp)->next) {
        if (*pp == self) {
            *pp = self->next;
            break;
        }
    }
    loom__pipeline_shares_free(self);
    free(self->name);
    free(self);
    *self_p = NULL;
}

//  ---------------------------------------------------------------------------
//  Talking to the broker

static void
s_lost(loom_client *c)
{
    if (!c->error)
        c->error = LOOM_ECONNECT;
}

//  A new session with the broker: mark it resumed (the link dropped what
//  we sent since it was lost), then reopen every pipeline and map and
//  resubmit every input that has no result yet.
static void
s_resume(loom_client *c, const loom_wire_welcome *w)
{
    c->welcome.epoch = w->epoch;
    c->welcome.session = w->session;
    c->reconnects++;
    pthread_mutex_lock(&c->link->mu);
    if (c->link->state == S_RESUMING)
        c->link->state = S_UP;
    pthread_mutex_unlock(&c->link->mu);
    //  The blob DEALER may hold answers of the old broker: start clean, on
    //  the endpoint the new one gives.
    if (c->blob)
        zmq_close(c->blob);
    c->blob = NULL;
    if (w->blob_endpoint && *w->blob_endpoint) {
        free(c->blob_ep);
        c->blob_ep = loom__blob_endpoint(w->blob_endpoint, c->endpoint);
    }
    free(c->blob_store);
    c->blob_store = w->blob_store && *w->blob_store ? loom_xstrdup(w->blob_store) : NULL;
    for (loom_pipeline *p = c->pipelines; p; p = p->next) {
        loom_msg m = {.type = LOOM_MSG_PIPELINE_OPEN};
        m.u.pipeline_open.pipeline = p->id;
        m.u.pipeline_open.name = p->name;
        if (loom__client_send(c, &m) < 0)
            return;
        //  The broker's store may have gone with it: its maps cannot run
        //  without every share, so fail them rather than let them hang.
        char err[600];
        if (p->nshares && loom__pipeline_shares_restore(p, err, sizeof err) != 0) {
            for (loom_map *mp = c->maps; mp; mp = mp->next)
                if (mp->pipeline == p && !mp->ended) //  an ended map has every result
                    loom__map_error(mp, LOOM_ECONNECT, err);
        }
    }
    for (loom_map *m = c->maps; m; m = m->next)
        if (loom__map_resume(m) < 0)
            return;
}

static loom_map *
s_find_map(loom_client *c, uint64_t id)
{
    if (c->last_map && c->last_map->id == id)
        return c->last_map;
    for (loom_map *m = c->maps; m; m = m->next) {
        if (m->id == id) {
            c->last_map = m;
            return m;
        }
    }
    return NULL;
}

static void
s_dispatch(loom_client *c, loom_msg *msg)
{
    switch (msg->type) {
    case LOOM_MSG_RESULT_BATCH: {
        loom_map *m = s_find_map(c, msg->u.result_batch.map);
        if (!m)
            break; //  a map we destroyed: late results
        loom__rmsg *rm = loom_xmalloc(sizeof *rm);
        rm->msg = msg;
        rm->refs = 1;
        const loom_wire_result_batch *rb = &msg->u.result_batch;
        for (size_t i = 0; i < rb->nresults; i++)
            loom__map_result(m, rm, &rb->results[i]);
        loom__rmsg_unref(&rm);
        return; //  msg belongs to rm now
    }
    case LOOM_MSG_MAP_END: {
        loom_map *m = s_find_map(c, msg->u.map_end.map);
        if (m)
            loom__map_end(m, msg->u.map_end.count);
        break;
    }
    case LOOM_MSG_ERROR: {
        const loom_wire_error *e = &msg->u.error;
        const char *text = e->message ? e->message : "";
        int code = e->code < 0 ? e->code : LOOM_EPROTO;
        loom_map *m = e->map ? s_find_map(c, e->map) : NULL;
        if (m)
            loom__map_error(m, code, text);
        else
            loom_log_warning("loom: broker at %s: %s (%s)", c->endpoint, text, loom_strerror(code));
        break;
    }
    case LOOM_MSG_WELCOME:
        //  The link reconnected (the broker restarted, or lost us).
        s_resume(c, &msg->u.welcome);
        break;
    default:
        break; //  Heartbeat, Stats: nothing to do
    }
    loom_msg_destroy(&msg);
}

//  Receive and dispatch the frames taken from the link. Returns how many.
static size_t
s_dispatch_frames(loom_client *c, zmq_msg_t *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        loom_msg *msg = NULL;
        if (loom_wire_decode_frame(&q[i], &msg) != 0)
            loom_log_warning("loom: dropped a malformed message from the broker");
        else
            s_dispatch(c, msg);
        zmq_msg_close(&q[i]);
    }
    free(q);
    return n;
}

int
loom__client_pump(loom_client *c, int timeout_ms)
{
    if (c->error)
        return c->error;
    loom__link *l = c->link;
    int64_t deadline = timeout_ms < 0 ? -1 : loom_now_ms() + timeout_ms;
    pthread_mutex_lock(&l->mu);
    while (true) {
        int64_t due = s_link_service(l);
        if (l->q_len || l->state == S_LOST)
            break;
        long wait = (long)due;
        if (deadline >= 0) {
            int64_t left = deadline - loom_now_ms();
            if (left <= 0)
                break;
            if (left < wait)
                wait = (long)left;
        }
        //  This thread owns the DEALER now: wait on it directly, no hop.
        zmq_pollitem_t item = {l->dh, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) < 0) {
            //  A signal: let the caller look at its flags.
            if (zmq_errno() != EINTR)
                l->state = S_LOST;
            break;
        }
    }
    //  Take the queue; dispatch without the lock (on_result may take long,
    //  and may call loom_map_* which sends).
    zmq_msg_t *q = l->q;
    size_t n = l->q_len;
    l->q = NULL;
    l->q_len = l->q_cap = 0;
    bool lost = l->state == S_LOST;
    pthread_mutex_unlock(&l->mu);
    s_dispatch_frames(c, q, n);
    if (lost)
        s_lost(c);
    if (n > 0)
        return c->error ? c->error : 1;
    return c->error;
}

int
loom__client_send(loom_client *c, const loom_msg *m)
{
    if (c->error)
        return c->error;
    void *buf;
    size_t len;
    int rc = loom_wire_encode(m, &buf, &len);
    if (rc < 0)
        return rc;
    zmq_msg_t zm;
    if (zmq_msg_init_data(&zm, buf, len, s_free_buf, NULL) != 0) {
        free(buf);
        return LOOM_ENOMEM;
    }
    pthread_mutex_lock(&c->link->mu);
    rc = s_link_send(c->link, &zm);
    pthread_mutex_unlock(&c->link->mu);
    if (rc < 0) {
        s_lost(c);
        return c->error;
    }
    return 0;
}
