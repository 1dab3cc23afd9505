/*  blob_transfer: uploads and downloads on the blob channel (see
    blob_transfer.h). Neither side holds more than its credit window:
    an upload sends only the bytes the broker granted (BlobGet from the
    broker = "send up to offset + credit"); a download asks for a window
    and grants one more chunk per chunk it has written to disk.  */

#include "blob_transfer.h"

#include "base.h"
#include "curve.h"
#include "blob_hash.h"
#include "wire.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <czmq.h>

#define S_RETRY_MS 1000  //  a download with no progress this long asks again
#define S_MISSING_MS 10000 //  a blob the broker does not hold may come back this soon

int
loom__blob_read_mem(void *ctx, uint64_t offset, void *buf, size_t len)
{
    const loom_blob_mem *m = ctx;
    if (offset > m->len || len > m->len - offset)
        return LOOM_EINVAL;
    memcpy(buf, m->data + offset, len);
    return 0;
}

int
loom__blob_read_fd(void *ctx, uint64_t offset, void *buf, size_t len)
{
    int fd = *(const int *)ctx;
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (uint8_t *)buf + got, len - got, (off_t)(offset + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return LOOM_EIO; //  an error, or the file shrank under us
        got += (size_t)r;
    }
    return 0;
}

int
loom__blob_hash(loom_blob_reader rd, void *ctx, uint64_t size, uint8_t *hash)
{
    loom__blob_hasher *h = loom__blob_hasher_new();
    uint8_t *buf = loom_xmalloc(LOOM_BLOB_XFER_CHUNK);
    int rc = 0;
    for (uint64_t off = 0; off < size && rc == 0;) {
        size_t n = size - off < LOOM_BLOB_XFER_CHUNK ? (size_t)(size - off) : LOOM_BLOB_XFER_CHUNK;
        rc = rd(ctx, off, buf, n);
        if (rc == 0)
            loom__blob_hasher_update(h, buf, n);
        off += n;
    }
    free(buf);
    if (rc == 0)
        loom__blob_hasher_final(h, hash);
    loom__blob_hasher_destroy(&h);
    return rc;
}

//  One loom__blob_hash_fd call: its threads take the next block to hash
//  from `next` and store its digest at its index.
typedef struct {
    int fd;
    uint64_t size;
    uint64_t blocks;           //  Blocks of the blob (the last may be short)
    uint8_t *digests;          //  blocks * LOOM_BLOB_HASH_LEN, by block index
    atomic_uint_fast64_t next; //  The next block no thread has taken
    atomic_bool failed;        //  A read failed: the others stop
} s_hash_job;

//  Hash blocks of the job until none is left or a read fails; a thread's
//  body, and the calling thread's share. Returns NULL.
static void *
s_hash_blocks(void *arg)
{
    s_hash_job *job = arg;
    uint8_t *buf = loom_xmalloc(LOOM_BLOB_XFER_CHUNK);
    EVP_MD_CTX *md = loom__blob_sha256_new();
    uint64_t b;
    while (!atomic_load(&job->failed) && (b = atomic_fetch_add(&job->next, 1)) < job->blocks) {
        uint64_t off = b * LOOM_BLOB_HASH_BLOCK;
        uint64_t end =
            job->size - off < LOOM_BLOB_HASH_BLOCK ? job->size : off + LOOM_BLOB_HASH_BLOCK;
        int rc = 0;
        while (off < end && rc == 0) {
            size_t n =
                end - off < LOOM_BLOB_XFER_CHUNK ? (size_t)(end - off) : LOOM_BLOB_XFER_CHUNK;
            rc = loom__blob_read_fd(&job->fd, off, buf, n);
            int ok = rc == 0 ? EVP_DigestUpdate(md, buf, n) : 1;
            LOOM_ASSERT(ok == 1);
            off += n;
        }
        if (rc != 0) {
            atomic_store(&job->failed, true);
            break;
        }
        loom__blob_sha256_final(md, job->digests + b * LOOM_BLOB_HASH_LEN);
    }
    EVP_MD_CTX_free(md);
    free(buf);
    return NULL;
}

int
loom__blob_hash_fd(int fd, uint64_t size, uint8_t *hash)
{
    s_hash_job job = {
        .fd = fd, .size = size, .blocks = (size + LOOM_BLOB_HASH_BLOCK - 1) / LOOM_BLOB_HASH_BLOCK};
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, false);
    job.digests = loom_xmalloc(job.blocks ? job.blocks * LOOM_BLOB_HASH_LEN : 1);
    uint64_t want = (uint64_t)loom__blob_hash_threads();
    if (want > job.blocks)
        want = job.blocks;
    //  The calling thread is one of them; a thread that cannot be started
    //  leaves its blocks to the others. The helpers block every signal:
    //  they stay with the threads the process set up to take them.
    pthread_t threads[LOOM_BLOB_HASH_THREADS];
    size_t started = 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (uint64_t i = 1; i < want; i++)
        if (pthread_create(&threads[started], NULL, s_hash_blocks, &job) == 0)
            started++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    s_hash_blocks(&job);
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    int rc = atomic_load(&job.failed) ? LOOM_EIO : 0;
    if (rc == 0)
        loom__blob_name_of_digests(job.digests, job.blocks, hash);
    free(job.digests);
    return rc;
}

void *
loom__blob_dealer(void *ctx, const char *endpoint, const char *cert_path, const char *server_key)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    if (!s)
        return NULL;
    int zero = 0, hwm = 1000, timeout = 30000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    char *curve_err = NULL;
    if (loom_curve_client_setup(s, cert_path, server_key, &curve_err) != 0) {
        loom_log_error("loom: blob channel %s: %s", endpoint, curve_err);
        free(curve_err);
        zmq_close(s);
        return NULL;
    }
    if (zmq_connect(s, endpoint) != 0) {
        loom_log_error("loom: cannot connect to the blob channel %s: %s", endpoint,
                       zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

//  "tcp://HOST:PORT" -> pointer to HOST and its length; false if not tcp.
static bool
s_tcp_host(const char *ep, const char **host, size_t *len)
{
    if (!ep || strncmp(ep, "tcp://", 6) != 0)
        return false;
    *host = ep + 6;
    const char *colon = strrchr(*host, ':');
    if (!colon)
        return false;
    *len = (size_t)(colon - *host);
    return true;
}

char *
loom__blob_endpoint(const char *welcome_ep, const char *task_ep)
{
    if (!welcome_ep || !*welcome_ep)
        return NULL;
    const char *h, *th;
    size_t hl, thl;
    if (s_tcp_host(welcome_ep, &h, &hl) && s_tcp_host(task_ep, &th, &thl)) {
        bool wild = (hl == 1 && *h == '*') || (hl == 7 && !strncmp(h, "0.0.0.0", 7)) ||
                    (hl == 4 && !strncmp(h, "[::]", 4));
        if (wild) {
            char *out = loom_xmalloc(strlen(welcome_ep) + thl + 8);
            sprintf(out, "tcp://%.*s%s", (int)thl, th, h + hl);
            return out;
        }
    }
    return loom_xstrdup(welcome_ep);
}

//  Receive one message within timeout_ms: 0 with *m, LOOM_EAGAIN on timeout.
static int
s_recv(void *dealer, int timeout_ms, loom_msg **m)
{
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, timeout_ms);
    if (rc < 0)
        return zmq_errno() == EINTR ? LOOM_EAGAIN : LOOM_EIO;
    if (rc == 0)
        return LOOM_EAGAIN;
    rc = loom_wire_recv(dealer, NULL, 0, NULL, m, ZMQ_DONTWAIT);
    return rc == LOOM_EPROTO ? LOOM_EAGAIN : rc;
}

static bool
s_same(loom_span h, const uint8_t *hash)
{
    return h.len == LOOM_HASH_SIZE && memcmp(h.data, hash, LOOM_HASH_SIZE) == 0;
}

static const uint8_t s_unnamed[LOOM_HASH_SIZE] = {0};

//  A reader at an offset, as a loom_wire_fill.
typedef struct {
    loom_blob_reader rd;
    void *ctx;
    uint64_t offset;
} s_fill_src;

static int
s_fill(void *ctx, void *buf, size_t len)
{
    s_fill_src *src = ctx;
    return src->rd(src->ctx, src->offset, buf, len);
}

//  Upload under hash (s_unnamed: the broker names the blob, and a
//  BlobHave{have: true} of any name ends the upload, its name in *stored).
static int
s_upload(void *dealer, const uint8_t *hash, uint64_t size, loom_blob_reader rd, void *ctx,
         int timeout_ms, uint64_t *sent_p, uint8_t *stored)
{
    bool unnamed = memcmp(hash, s_unnamed, LOOM_HASH_SIZE) == 0;
    loom_msg m = {.type = LOOM_MSG_BLOB_HAVE};
    m.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    m.u.blob_have.size = size;
    int rc = loom_wire_send(dealer, NULL, 0, &m, 0);
    if (rc)
        return rc == LOOM_EAGAIN ? LOOM_ETIMEDOUT : rc;
    uint64_t sent = 0, limit = 0, moved = 0;
    int64_t last = loom_now_ms(), asked = last;
    bool resync = true; //  the next grant says where the broker is: send from there
    rc = LOOM_ETIMEDOUT;
    for (;;) {
        int64_t now = loom_now_ms();
        if (now - last >= timeout_ms)
            break;
        if (now - last >= S_RETRY_MS && now - asked >= S_RETRY_MS) {
            //  Silence: a broker that restarted knows nothing of this
            //  upload, and one that lost our messages waits for them. Ask
            //  again: a new broker starts the upload, a live one resumes
            //  it, each with a grant from the bytes it holds.
            int e = loom_wire_send(dealer, NULL, 0, &m, ZMQ_DONTWAIT);
            if (e && e != LOOM_EAGAIN) {
                rc = e;
                break;
            }
            asked = now;
        }
        loom_msg *in = NULL;
        int r = s_recv(dealer, S_RETRY_MS / 4, &in);
        if (r == LOOM_EAGAIN)
            continue;
        if (r) {
            rc = r;
            break;
        }
        last = loom_now_ms();
        bool finished = false;
        if (in->type == LOOM_MSG_ERROR && in->u.error.message)
            //  Why the broker refuses (a quota, the store's cap): the status follows.
            loom_log_error("loom: broker: %s", in->u.error.message);
        else if (in->type == LOOM_MSG_BLOB_HAVE && in->u.blob_have.have &&
                 (s_same(in->u.blob_have.hash, hash) || unnamed)) {
            //  Stored (an unnamed upload learns its name; all zeros is none).
            const uint8_t *name = in->u.blob_have.hash.data;
            rc = in->u.blob_have.size != size || !memcmp(name, s_unnamed, LOOM_HASH_SIZE)
                     ? LOOM_EPROTO
                     : 0;
            if (rc == 0 && stored)
                memcpy(stored, name, LOOM_HASH_SIZE);
            finished = true;
        } else if (in->type == LOOM_MSG_BLOB_CHUNK && s_same(in->u.blob_chunk.hash, hash) &&
                   in->u.blob_chunk.status < 0) {
            rc = in->u.blob_chunk.status;
            finished = true;
        } else if (in->type == LOOM_MSG_BLOB_HAVE && !in->u.blob_have.have &&
                   s_same(in->u.blob_have.hash, hash)) {
            resync = true; //  (re)started or resumed: its grant follows
        } else if (in->type == LOOM_MSG_BLOB_GET && s_same(in->u.blob_get.hash, hash)) {
            uint64_t off = in->u.blob_get.offset, credit = in->u.blob_get.credit;
            if (resync && off <= size && credit <= size - off) {
                sent = off;
                limit = off + credit;
                resync = false;
            } else if (off <= size && credit <= size - off && off + credit > limit)
                limit = off + credit;
            while (sent < limit) {
                size_t n = limit - sent < LOOM_BLOB_XFER_CHUNK ? (size_t)(limit - sent)
                                                               : LOOM_BLOB_XFER_CHUNK;
                //  The source is read straight into the frame.
                loom_msg put = {.type = LOOM_MSG_BLOB_PUT};
                put.u.blob_put.hash = (loom_span){hash, LOOM_HASH_SIZE};
                put.u.blob_put.offset = sent;
                put.u.blob_put.total = size;
                put.u.blob_put.data = (loom_span){NULL, n};
                s_fill_src src = {rd, ctx, sent};
                int e = loom_wire_send_filled(dealer, NULL, 0, &put, s_fill, &src, 0);
                if (e) {
                    rc = e == LOOM_EAGAIN ? LOOM_ETIMEDOUT : e;
                    finished = true;
                    break;
                }
                sent += n;
                moved += n;
            }
        }
        loom_msg_destroy(&in);
        if (finished)
            break;
    }
    if (sent_p)
        *sent_p = moved;
    return rc;
}

int
loom__blob_upload(void *dealer, const uint8_t *hash, uint64_t size, loom_blob_reader rd, void *ctx,
                  int timeout_ms, uint64_t *sent_p)
{
    LOOM_ASSERT(memcmp(hash, s_unnamed, LOOM_HASH_SIZE) != 0);
    return s_upload(dealer, hash, size, rd, ctx, timeout_ms, sent_p, NULL);
}

int
loom__blob_upload_unnamed(void *dealer, uint64_t size, loom_blob_reader rd, void *ctx,
                          int timeout_ms, uint64_t *sent_p, uint8_t *hash)
{
    return s_upload(dealer, s_unnamed, size, rd, ctx, timeout_ms, sent_p, hash);
}

int
loom__blob_adopt(void *dealer, const char *name, const uint8_t *hash, uint64_t size, int timeout_ms)
{
    loom_msg m = {.type = LOOM_MSG_BLOB_HAVE};
    m.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    m.u.blob_have.size = size;
    m.u.blob_have.adopt = name;
    int rc = loom_wire_send(dealer, NULL, 0, &m, 0);
    if (rc)
        return rc == LOOM_EAGAIN ? LOOM_ETIMEDOUT : rc;
    for (int64_t end = loom_now_ms() + timeout_ms, left; (left = end - loom_now_ms()) > 0;) {
        loom_msg *in = NULL;
        rc = s_recv(dealer, (int)left, &in);
        if (rc == LOOM_EAGAIN)
            continue;
        if (rc)
            return rc;
        bool answer = in->type == LOOM_MSG_BLOB_HAVE && s_same(in->u.blob_have.hash, hash);
        rc = answer && in->u.blob_have.have && in->u.blob_have.size == size ? 0 : LOOM_EPROTO;
        loom_msg_destroy(&in);
        if (answer)
            return rc;
    }
    return LOOM_ETIMEDOUT;
}

static int
s_ask(void *dealer, const uint8_t *hash, uint64_t offset, uint64_t credit)
{
    loom_msg m = {.type = LOOM_MSG_BLOB_GET};
    m.u.blob_get.hash = (loom_span){hash, LOOM_HASH_SIZE};
    m.u.blob_get.offset = offset;
    m.u.blob_get.credit = credit;
    int rc = loom_wire_send(dealer, NULL, 0, &m, 0);
    return rc == LOOM_EAGAIN ? LOOM_ETIMEDOUT : rc;
}

static int
s_write_all(int fd, const uint8_t *data, size_t len, uint64_t offset)
{
    size_t put = 0;
    while (put < len) {
        ssize_t w = pwrite(fd, data + put, len - put, (off_t)(offset + put));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return LOOM_EIO;
        }
        put += (size_t)w;
    }
    return 0;
}

int
loom__blob_download(void *dealer, const uint8_t *hash, uint64_t size, int fd, int timeout_ms,
                    uint64_t *received_p)
{
    loom__blob_hasher *h = loom__blob_hasher_new();
    uint64_t got = 0;
    uint64_t asked = size < LOOM_BLOB_XFER_WINDOW ? size : LOOM_BLOB_XFER_WINDOW;
    int rc = s_ask(dealer, hash, 0, asked);
    int64_t progress = loom_now_ms(), asked_at = progress, first_missing = INT64_MAX;
    while (rc == 0) {
        int64_t now = loom_now_ms();
        if (now - progress >= timeout_ms) {
            rc = LOOM_ETIMEDOUT;
            break;
        }
        if (now - asked_at >= S_RETRY_MS) {
            //  A chunk was lost (the broker drops what it cannot send):
            //  ask again from where we are.
            asked = size - got < LOOM_BLOB_XFER_WINDOW ? size : got + LOOM_BLOB_XFER_WINDOW;
            rc = s_ask(dealer, hash, got, asked - got);
            asked_at = now;
            if (rc)
                break;
        }
        loom_msg *in = NULL;
        int r = s_recv(dealer, S_RETRY_MS / 4, &in);
        if (r == LOOM_EAGAIN)
            continue;
        if (r) {
            rc = r;
            break;
        }
        if (in->type != LOOM_MSG_BLOB_CHUNK || !s_same(in->u.blob_chunk.hash, hash)) {
            loom_msg_destroy(&in);
            continue;
        }
        const loom_wire_blob_chunk *c = &in->u.blob_chunk;
        if (c->status == LOOM_ENOENT && loom_now_ms() - first_missing < S_MISSING_MS) {
            //  Not held: a broker that restarted with an empty store gets
            //  the blob again from its client, which uploads its shares
            //  anew when it reconnects. Ask again (from where we are) for
            //  a while before calling it missing.
            if (first_missing == INT64_MAX)
                first_missing = loom_now_ms();
            progress = loom_now_ms();
        } else if (c->status < 0) {
            rc = c->status;
        } else if (c->total != size) {
            rc = LOOM_EPROTO;
        } else if (c->offset == got && c->data.len <= size - got) {
            rc = s_write_all(fd, c->data.data, c->data.len, got);
            if (rc == 0) {
                loom__blob_hasher_update(h, c->data.data, c->data.len);
                got += c->data.len;
                progress = asked_at = loom_now_ms();
                if (got == size) {
                    loom_msg_destroy(&in);
                    break;
                }
                //  One chunk written: grant one more.
                if (asked < size && c->data.len) {
                    uint64_t more = size - asked < c->data.len ? size - asked : c->data.len;
                    rc = s_ask(dealer, hash, asked, more);
                    asked += more;
                }
            }
        } //  else a duplicate or a chunk after a gap: the retry covers it
        loom_msg_destroy(&in);
    }
    if (received_p)
        *received_p = got;
    uint8_t sum[LOOM_HASH_SIZE];
    if (rc == 0) {
        loom__blob_hasher_final(h, sum);
        rc = loom__blob_hash_equal(sum, hash) ? 0 : LOOM_EPROTO;
    }
    loom__blob_hasher_destroy(&h);
    return rc;
}
