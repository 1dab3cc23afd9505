/*  client: a connection to a loom broker (or an embedded local cluster),
    its I/O thread, pipelines, and the dispatch of broker messages to maps.

    The I/O thread (a zactor) owns the DEALER: it says Hello, waits for
    Welcome, forwards encoded frames between the broker and the API thread
    over an inproc PAIR without decoding them (it only peeks at the message
    type to swallow the broker's heartbeats), sends heartbeats when the
    connection is idle and reports a silent broker as lost. The API thread
    encodes what it sends and decodes what it receives; map.c does the rest.
    See runtime/wire/PROTOCOL.md.  */

#include "client_priv.h"
#include "blob_transfer.h"
#include "cluster.h"
#include "curve.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define S_DEFAULT_TIMEOUT_MS 5000
#define S_DEFAULT_RECONNECT_MS 30000 //  a lost broker may be away this long
#define S_PIPE_HWM 100000 //  frames (batches) each way on the inproc pair
#define S_BROKER_HWM 100000
#define S_DRAIN_MAX 256 //  frames moved per direction per wake-up

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
//  I/O thread

typedef struct {
    const char *endpoint;      //  broker
    char data_ep[64];          //  inproc pair
    int timeout_ms;            //  handshake
    int reconnect_ms;          //  how long a lost broker may stay away
    const char *cert_path;     //  CURVE, or NULL
    const char *server_key;
    loom_wire_welcome welcome; //  out: the broker's Welcome
    int status;                //  out: 0, or a negative code
    char blob_ep[512];         //  out: Welcome.blob_endpoint ("" if none)
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

//  Say Hello and wait for Welcome until the deadline. Returns 0 or a code.
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
        if (left <= 0)
            return LOOM_ETIMEDOUT;
        zmq_pollitem_t item = {dealer, 0, sent ? ZMQ_POLLIN : ZMQ_POLLOUT, 0};
        if (zmq_poll(&item, 1, (long)left) < 0) {
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
                a->welcome.blob_endpoint = NULL; //  freed with msg
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

static void
s_io_actor(zsock_t *pipe, void *args)
{
    s_io_args *a = args;
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    zsock_t *data = zsock_new(ZMQ_PAIR);
    LOOM_ASSERT(dealer && data);
    zsock_set_immediate(dealer, 1);
    zsock_set_linger(dealer, 0);
    zsock_set_sndhwm(dealer, S_BROKER_HWM);
    zsock_set_rcvhwm(dealer, S_BROKER_HWM);
    zsock_set_sndhwm(data, S_PIPE_HWM);
    zsock_set_rcvhwm(data, S_PIPE_HWM);
    zsock_set_linger(data, 0);
    void *dh = zsock_resolve(dealer);
    void *ph = zsock_resolve(data);

    a->status = 0;
    char *curve_err = NULL;
    if (zsock_connect(data, "%s", a->data_ep) != 0)
        a->status = LOOM_EIO;
    else if (loom_curve_client_setup(dh, a->cert_path, a->server_key, &curve_err) != 0) {
        loom_log_error("loom: %s", curve_err);
        free(curve_err);
        a->status = LOOM_EINVAL;
    } else if (zmq_connect(dh, a->endpoint) != 0) {
        loom_log_error("loom: cannot connect to %s: %s", a->endpoint, zmq_strerror(zmq_errno()));
        a->status = LOOM_EINVAL;
    } else {
        a->status = s_io_handshake(dh, a);
        if (a->status == LOOM_ETIMEDOUT)
            loom_log_error("loom: no answer from broker at %s within %d ms", a->endpoint,
                           a->timeout_ms);
    }
    //  `a` lives on the API thread's stack until zactor_new returns: copy
    //  what we need before we signal.
    const char *endpoint = a->endpoint;
    int64_t reconnect_ms = a->reconnect_ms;
    //  CURVE keys for the reconnections (the options are the caller's).
    char *cert_path = a->cert_path ? loom_xstrdup(a->cert_path) : NULL;
    char *server_key = a->server_key ? loom_xstrdup(a->server_key) : NULL;
    int64_t hb = a->welcome.heartbeat_ms;
    int64_t expiry = hb * a->welcome.liveness;
    bool failed = a->status != 0;
    zsock_signal(pipe, 0);
    if (failed) {
        //  Wait for $TERM all the same, as zactor_destroy expects.
        while (true) {
            char *cmd = zstr_recv(pipe);
            bool term = !cmd || streq(cmd, "$TERM");
            zstr_free(&cmd);
            if (term)
                break;
        }
        free(cert_path);
        free(server_key);
        zsock_destroy(&data);
        zsock_destroy(&dealer);
        return;
    }

    int64_t last_recv = loom_now_ms(), last_send = last_recv;
    void *hb_buf = NULL;
    size_t hb_len = 0;
    loom_msg hbm = {.type = LOOM_MSG_HEARTBEAT};
    LOOM_ASSERT(loom_wire_encode(&hbm, &hb_buf, &hb_len) == 0);
    void *hello_buf = NULL;
    size_t hello_len = 0;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    loom_msg hello = {.type = LOOM_MSG_HELLO};
    hello.u.hello.role = LOOM_ROLE_CLIENT;
    hello.u.hello.host = host;
    hello.u.hello.pid = (uint32_t)getpid();
    hello.u.hello.software = loom_version();
    LOOM_ASSERT(loom_wire_encode(&hello, &hello_buf, &hello_len) == 0);

    //  S_UP: forwarding both ways. S_CONNECTING: the broker was lost; a new
    //  DEALER says Hello and waits for Welcome, frames from the API thread
    //  are dropped. S_RESUMING: the Welcome went to the API thread, which
    //  answers with a resume marker and then reopens its pipelines and maps
    //  and resubmits what has no result: everything before the marker is
    //  dropped (it is redone). S_LOST: the broker stayed away too long.
    enum { S_UP, S_CONNECTING, S_RESUMING, S_LOST } state = S_UP;
    int64_t lost_at = 0, hello_at = 0;
    bool hello_sent = false;

    zmq_msg_t in, out; //  pending frames: broker -> API, API -> broker
    zmq_msg_init(&in);
    zmq_msg_init(&out);
    bool has_in = false, has_out = false;
    bool lost_told = true;
    bool terminated = false;
    while (!terminated) {
        int64_t now = loom_now_ms();
        bool up = state == S_UP || state == S_RESUMING;
        int64_t wait = up ? last_send + hb - now : 10;
        if (up && last_recv + expiry - now < wait)
            wait = last_recv + expiry - now;
        if (!lost_told || (state == S_CONNECTING && !hello_sent))
            wait = 10;
        if (wait < 0)
            wait = 0;
        short dev = (short)(has_in ? 0 : ZMQ_POLLIN);
        if (has_out && state == S_UP)
            dev |= ZMQ_POLLOUT;
        zmq_pollitem_t items[3] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {dh, 0, state == S_LOST ? 0 : dev, 0},
            {ph, 0,
             (short)((has_out && state == S_UP ? 0 : ZMQ_POLLIN) | (has_in ? ZMQ_POLLOUT : 0)),
             0},
        };
        if (zmq_poll(items, 3, (long)wait) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            char *cmd = zstr_recv(pipe);
            if (!cmd || streq(cmd, "$TERM"))
                terminated = true;
            zstr_free(&cmd);
        }
        bool reconnect = false;
        //  Broker -> API
        for (int n = 0; n < S_DRAIN_MAX && state != S_LOST; n++) {
            if (has_in) {
                if (zmq_msg_send(&in, ph, ZMQ_DONTWAIT) < 0)
                    break;
                has_in = false;
            }
            int rc = s_recv_frame(dh, &in);
            if (rc <= 0)
                break;
            last_recv = loom_now_ms();
            const uint8_t *b = zmq_msg_data(&in);
            size_t len = zmq_msg_size(&in);
            int type = s_peek_type(b, len);
            if (type == LOOM_MSG_HEARTBEAT || len == 0)
                continue;
            if (type == LOOM_MSG_ERROR || type == LOOM_MSG_WELCOME) {
                //  Rare: decode them here, the session depends on them.
                loom_msg *m = NULL;
                if (loom_wire_decode(b, len, &m) == 0) {
                    if (m->type == LOOM_MSG_ERROR && m->u.error.code == LOOM_ESTATE &&
                        m->u.error.map == 0 && m->u.error.pipeline == 0)
                        type = -2; //  the broker has no session for us
                    else if (m->type == LOOM_MSG_WELCOME) {
                        if (m->u.welcome.heartbeat_ms)
                            hb = m->u.welcome.heartbeat_ms;
                        expiry = hb * (m->u.welcome.liveness ? m->u.welcome.liveness : 3);
                    }
                }
                loom_msg_destroy(&m);
            }
            if (state == S_CONNECTING) {
                if (type == LOOM_MSG_WELCOME) {
                    loom_log_notice("loom: reconnected to the broker at %s after %d ms: "
                                    "resubmitting",
                                    endpoint, (int)(loom_now_ms() - lost_at));
                    state = S_RESUMING;
                    has_in = true; //  the Welcome tells the API thread to resume
                }
                continue; //  anything else belongs to the session that is gone
            }
            if (type == -2) {
                loom_log_notice("loom: the broker at %s lost our session: reconnecting",
                                endpoint);
                reconnect = true;
                break;
            }
            has_in = true;
        }
        //  API -> broker
        for (int n = 0; n < S_DRAIN_MAX && !reconnect; n++) {
            if (has_out) {
                if (state != S_UP) {
                    zmq_msg_close(&out);
                    zmq_msg_init(&out);
                } else if (zmq_msg_send(&out, dh, ZMQ_DONTWAIT) < 0)
                    break;
                has_out = false;
                last_send = loom_now_ms();
            }
            int rc = s_recv_frame(ph, &out);
            if (rc <= 0)
                break;
            if (zmq_msg_size(&out) == 1 && *(const char *)zmq_msg_data(&out) == 'R') {
                //  The resume marker: what follows is for this session.
                if (state == S_RESUMING)
                    state = S_UP;
                continue;
            }
            has_out = true;
        }
        now = loom_now_ms();
        if (!reconnect && (state == S_UP || state == S_RESUMING) && now - last_recv > expiry) {
            loom_log_warning("loom: broker at %s silent for %d ms: reconnecting", endpoint,
                             (int)(now - last_recv));
            reconnect = true;
        }
        if (reconnect) {
            if (state == S_UP || state == S_RESUMING)
                lost_at = now;
            state = S_CONNECTING;
            hello_sent = false;
            hello_at = now;
            zsock_destroy(&dealer);
            dealer = zsock_new(ZMQ_DEALER);
            LOOM_ASSERT(dealer);
            zsock_set_immediate(dealer, 1);
            zsock_set_linger(dealer, 0);
            zsock_set_sndhwm(dealer, S_BROKER_HWM);
            zsock_set_rcvhwm(dealer, S_BROKER_HWM);
            dh = zsock_resolve(dealer);
            loom_curve_client_setup(dh, cert_path, server_key, NULL); //  checked at start
            zmq_connect(dh, endpoint);
        }
        if (state == S_CONNECTING) {
            if (now - lost_at > reconnect_ms) {
                loom_log_error("loom: broker at %s gone for %d ms: lost", endpoint,
                               (int)(now - lost_at));
                state = S_LOST;
                lost_told = false;
            } else if (!hello_sent) {
                zmq_msg_t zm;
                zmq_msg_init_size(&zm, hello_len);
                memcpy(zmq_msg_data(&zm), hello_buf, hello_len);
                if (zmq_msg_send(&zm, dh, ZMQ_DONTWAIT) < 0)
                    zmq_msg_close(&zm);
                else {
                    hello_sent = true;
                    hello_at = now;
                }
            } else if (now - hello_at > expiry) {
                //  No Welcome: try a fresh connection.
                hello_sent = false;
                zsock_destroy(&dealer);
                dealer = zsock_new(ZMQ_DEALER);
                LOOM_ASSERT(dealer);
                zsock_set_immediate(dealer, 1);
                zsock_set_linger(dealer, 0);
                zsock_set_sndhwm(dealer, S_BROKER_HWM);
                zsock_set_rcvhwm(dealer, S_BROKER_HWM);
                dh = zsock_resolve(dealer);
                loom_curve_client_setup(dh, cert_path, server_key, NULL);
                zmq_connect(dh, endpoint);
            }
        }
        if ((state == S_UP || state == S_RESUMING) && now - last_send >= hb &&
            !(has_out && state == S_UP)) {
            zmq_msg_t zm;
            zmq_msg_init_size(&zm, hb_len);
            memcpy(zmq_msg_data(&zm), hb_buf, hb_len);
            if (zmq_msg_send(&zm, dh, ZMQ_DONTWAIT) < 0)
                zmq_msg_close(&zm);
            last_send = now;
        }
        if (!lost_told && !has_in) {
            zmq_msg_t zm;
            zmq_msg_init(&zm);
            if (zmq_msg_send(&zm, ph, ZMQ_DONTWAIT) < 0)
                zmq_msg_close(&zm);
            else
                lost_told = true;
        }
    }
    free(hello_buf);
    //  Forward what the API thread sent last (Cancel, PipelineClose), if the
    //  connection takes it now.
    for (int n = 0; n < S_DRAIN_MAX && state == S_UP; n++) {
        if (has_out) {
            if (zmq_msg_send(&out, dh, ZMQ_DONTWAIT) < 0)
                break;
            has_out = false;
        }
        if (s_recv_frame(ph, &out) <= 0)
            break;
        has_out = true;
    }
    zmq_msg_close(&in);
    zmq_msg_close(&out);
    free(hb_buf);
    free(cert_path);
    free(server_key);
    zsock_destroy(&data);
    zsock_destroy(&dealer);
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
    if (!endpoint && (opts->cert_path || opts->server_key)) {
        loom_log_error("loom: CURVE (cert_path, server_key) is for a remote broker, not the "
                       "embedded one");
        return NULL;
    }
    s_library_init();

    loom_client *self = loom_xcalloc(1, sizeof *self);
    self->next_id = 1;
    if (!endpoint) {
        self->cluster = loom__cluster_new(opts->local_workers, opts->plugin_path);
        if (!self->cluster)
            goto fail;
        endpoint = loom__cluster_endpoint(self->cluster);
    }
    self->endpoint = loom_xstrdup(endpoint);

    s_io_args args = {.endpoint = self->endpoint,
                      .timeout_ms = opts->timeout_ms ? opts->timeout_ms : S_DEFAULT_TIMEOUT_MS,
                      .reconnect_ms =
                          opts->timeout_ms ? opts->timeout_ms : S_DEFAULT_RECONNECT_MS,
                      .cert_path = opts->cert_path,
                      .server_key = opts->server_key};
    //  A counter too: a destroyed client's endpoint may still be bound
    //  (libzmq closes sockets asynchronously) when malloc reuses its address.
    static atomic_uint seq;
    snprintf(args.data_ep, sizeof args.data_ep, "inproc://loom-client-%p-%u", (void *)self,
             atomic_fetch_add(&seq, 1));
    self->data = zsock_new(ZMQ_PAIR);
    LOOM_ASSERT(self->data);
    zsock_set_sndhwm(self->data, S_PIPE_HWM);
    zsock_set_rcvhwm(self->data, S_PIPE_HWM);
    zsock_set_linger(self->data, 0);
    if (zsock_bind(self->data, "%s", args.data_ep) != 0) {
        loom_log_error("loom: cannot bind %s", args.data_ep);
        goto fail;
    }
    self->data_handle = zsock_resolve(self->data);
    self->io = zactor_new(s_io_actor, &args);
    LOOM_ASSERT(self->io);
    if (args.status != 0)
        goto fail;

    self->welcome = args.welcome;
    self->blob_ep = loom__blob_endpoint(args.blob_ep, self->endpoint);
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
    zactor_destroy(&self->io);
    zsock_destroy(&self->data);
    loom__cluster_destroy(&self->cluster);
    free(self->endpoint);
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
//  Talking to the I/O thread

static void
s_lost(loom_client *c)
{
    if (!c->error)
        c->error = LOOM_ECONNECT;
}

//  A new session with the broker: send the resume marker (the I/O thread
//  drops what we sent before it), then reopen every pipeline and map and
//  resubmit every input that has no result yet.
static void
s_resume(loom_client *c, const loom_wire_welcome *w)
{
    c->welcome.epoch = w->epoch;
    c->welcome.session = w->session;
    c->reconnects++;
    zmq_msg_t zm;
    zmq_msg_init_size(&zm, 1);
    *(char *)zmq_msg_data(&zm) = 'R';
    while (zmq_msg_send(&zm, c->data_handle, 0) < 0) {
        if (zmq_errno() != EINTR) {
            zmq_msg_close(&zm);
            s_lost(c);
            return;
        }
    }
    //  The blob DEALER may hold answers of the old broker: start clean, on
    //  the endpoint the new one gives.
    if (c->blob)
        zmq_close(c->blob);
    c->blob = NULL;
    if (w->blob_endpoint && *w->blob_endpoint) {
        free(c->blob_ep);
        c->blob_ep = loom__blob_endpoint(w->blob_endpoint, c->endpoint);
    }
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
        //  The I/O thread reconnected (the broker restarted, or lost us).
        s_resume(c, &msg->u.welcome);
        break;
    default:
        break; //  Heartbeat, Stats: nothing to do
    }
    loom_msg_destroy(&msg);
}

//  Receive and dispatch every frame already on the pair. Returns how many.
static int
s_drain(loom_client *c)
{
    int n = 0;
    zmq_msg_t zm;
    zmq_msg_init(&zm);
    while (true) {
        int rc = s_recv_frame(c->data_handle, &zm);
        if (rc < 0) {
            s_lost(c);
            break;
        }
        if (rc == 0)
            break;
        n++;
        if (zmq_msg_size(&zm) == 0) {
            s_lost(c);
            continue;
        }
        loom_msg *msg = NULL;
        if (loom_wire_decode_frame(&zm, &msg) != 0) {
            loom_log_warning("loom: dropped a malformed message from the broker");
            continue;
        }
        s_dispatch(c, msg);
    }
    zmq_msg_close(&zm);
    return n;
}

int
loom__client_pump(loom_client *c, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : loom_now_ms() + timeout_ms;
    while (true) {
        if (s_drain(c) > 0)
            return c->error ? c->error : 1;
        if (c->error)
            return c->error;
        long wait = -1;
        if (deadline >= 0) {
            wait = (long)(deadline - loom_now_ms());
            if (wait <= 0)
                return 0;
        }
        zmq_pollitem_t item = {c->data_handle, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) < 0) {
            if (zmq_errno() == EINTR)
                return 0; //  a signal: let the caller look at its flags
            s_lost(c);
            return c->error;
        }
    }
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
    while (zmq_msg_send(&zm, c->data_handle, ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() != EAGAIN) {
            zmq_msg_close(&zm);
            s_lost(c);
            return c->error;
        }
        //  The pipe is full: keep taking results while the I/O thread
        //  catches up, so neither side waits for the other.
        zmq_pollitem_t item = {c->data_handle, 0, ZMQ_POLLIN | ZMQ_POLLOUT, 0};
        if (zmq_poll(&item, 1, -1) < 0 && zmq_errno() != EINTR) {
            zmq_msg_close(&zm);
            s_lost(c);
            return c->error;
        }
        if (item.revents & ZMQ_POLLIN)
            s_drain(c);
        if (c->error) {
            zmq_msg_close(&zm);
            return c->error;
        }
    }
    return 0;
}
