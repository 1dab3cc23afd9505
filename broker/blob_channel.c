/*  blob_channel: the broker's side of the blob channel (see
    blob_channel.h and PROTOCOL.md). One reader on the blob ROUTER; every
    answer is sent with ZMQ_DONTWAIT (a peer that is not reading loses it
    and asks again after its own timeout).  */

#include "blob_channel.h"

#include "base.h"
#include "blob_store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_RID_MAX 256

typedef struct {
    size_t n;
    loom_wire_file *files; //  names and hashes owned
} s_shares;

struct loom_blob_channel {
    zsock_t *router;        //  borrowed
    loom_blob_store *store; //  NULL until first used
    char *dir;              //  store dir
    bool temporary;         //  dir is ours: removed at destroy
    uint64_t cap;
    int64_t ttl_ms;
    bool store_failed; //  opening it failed: answer errors
    zhashx_t *shares;  //  owner -> s_shares
    uint64_t quota;    //  bytes one peer may hold in the store (0: the cap)
    zhashx_t *peers;   //  with a quota: peer hex -> zhashx (blob hex -> its hash) it uploaded
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out, rejected;
    uint64_t bytes_adopted; //  written into the store by same-host clients themselves
};

static void
s_shares_free(void **item)
{
    s_shares *s = *item;
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free((char *)s->files[i].name);
        free((void *)s->files[i].hash.data);
    }
    free(s->files);
    free(s);
    *item = NULL;
}

static void
s_hash_free(void **item)
{
    free(*item);
    *item = NULL;
}

static void
s_peer_free(void **item)
{
    zhashx_t *set = *item;
    zhashx_destroy(&set);
    *item = NULL;
}

loom_blob_channel *
loom_blob_channel_new(zsock_t *router)
{
    loom_blob_channel *self = loom_xcalloc(1, sizeof *self);
    self->router = router;
    self->shares = zhashx_new();
    zhashx_set_destructor(self->shares, s_shares_free);
    self->peers = zhashx_new();
    zhashx_set_destructor(self->peers, s_peer_free);
    return self;
}

void
loom_blob_channel_destroy(loom_blob_channel **self_p)
{
    LOOM_ASSERT(self_p);
    loom_blob_channel *self = *self_p;
    if (!self)
        return;
    loom_blob_store_destroy(&self->store);
    if (self->temporary && self->dir)
        loom_remove_tree(self->dir, 2);
    zhashx_destroy(&self->shares);
    zhashx_destroy(&self->peers);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

int
loom_blob_channel_set_store(loom_blob_channel *self, const char *dir, uint64_t cap, int64_t ttl_ms,
                            bool temporary)
{
    LOOM_ASSERT(!self->store);
    self->cap = cap;
    self->ttl_ms = ttl_ms;
    free(self->dir);
    self->dir = dir ? loom_xstrdup(dir) : NULL;
    self->temporary = dir && temporary;
    if (!dir)
        return 0;
    self->store = loom_blob_store_new(dir, cap, ttl_ms);
    return self->store ? 0 : LOOM_EIO;
}

//  The store, opened now if needed; NULL if it cannot be.
static loom_blob_store *
s_store(loom_blob_channel *self)
{
    if (self->store || self->store_failed)
        return self->store;
    if (!self->dir) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base)
            base = "/tmp";
        char *dir = loom_xmalloc(strlen(base) + 40);
        sprintf(dir, "%s/loom-store-%d-XXXXXX", base, (int)getpid());
        if (!mkdtemp(dir)) {
            loom_log_error("broker: cannot create a blob store in %s: %s", base, strerror(errno));
            free(dir);
            self->store_failed = true;
            return NULL;
        }
        self->dir = dir;
        self->temporary = true;
    }
    self->store = loom_blob_store_new(self->dir, self->cap, self->ttl_ms);
    self->store_failed = !self->store;
    return self->store;
}

const char *
loom_blob_channel_store_dir(loom_blob_channel *self)
{
    return s_store(self) ? self->dir : NULL;
}

static void
s_send(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, const loom_msg *m)
{
    int rc = loom_wire_send(zsock_resolve(self->router), rid, rid_len, m, ZMQ_DONTWAIT);
    if (rc == 0) {
        self->msgs_out++;
        if (m->type == LOOM_MSG_BLOB_CHUNK)
            self->bytes_out += m->u.blob_chunk.data.len;
    }
}

static void
s_send_status(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, loom_span hash,
              uint64_t offset, int status)
{
    loom_msg m = {.type = LOOM_MSG_BLOB_CHUNK};
    m.u.blob_chunk.hash = hash;
    m.u.blob_chunk.offset = offset;
    m.u.blob_chunk.status = status;
    s_send(self, rid, rid_len, &m);
}

static void
s_send_have(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, loom_span hash,
            uint64_t size, bool have)
{
    loom_msg m = {.type = LOOM_MSG_BLOB_HAVE};
    m.u.blob_have.hash = hash;
    m.u.blob_have.size = size;
    m.u.blob_have.have = have;
    s_send(self, rid, rid_len, &m);
}

//  Upload credit: the peer may send bytes up to offset + credit.
static void
s_send_grant(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, loom_span hash,
             uint64_t received, uint64_t total)
{
    uint64_t left = total - received;
    loom_msg m = {.type = LOOM_MSG_BLOB_GET};
    m.u.blob_get.hash = hash;
    m.u.blob_get.offset = received;
    m.u.blob_get.credit = left < LOOM_BLOB_WINDOW ? left : LOOM_BLOB_WINDOW;
    s_send(self, rid, rid_len, &m);
}

//  An Error with a message on the blob channel, before the status: the
//  uploader says why its upload was refused.
static void
s_send_error(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, int code,
             const char *text)
{
    loom_msg m = {.type = LOOM_MSG_ERROR};
    m.u.error.code = code;
    m.u.error.message = text;
    s_send(self, rid, rid_len, &m);
}

//  Bytes peer holds in the store: blobs it uploaded that are still
//  stored, and its uploads in progress (forgotten ones are dropped),
//  except blob skip (may be NULL: one it is starting again).
static uint64_t
s_peer_usage(loom_blob_channel *self, loom_blob_store *st, const char *peer, const uint8_t *skip)
{
    zhashx_t *set = zhashx_lookup(self->peers, peer);
    if (!set)
        return 0;
    uint64_t used = 0;
    zlistx_t *keys = zhashx_keys(set);
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys)) {
        const uint8_t *hash = zhashx_lookup(set, k);
        uint64_t size = 0;
        if (skip && !memcmp(hash, skip, LOOM_HASH_SIZE))
            continue;
        if (loom_blob_store_size(st, hash, &size) ||
            loom_blob_store_upload_total(st, peer, hash, &size, NULL))
            used += size;
        else
            zhashx_delete(set, k);
    }
    zlistx_destroy(&keys);
    if (zhashx_size(set) == 0)
        zhashx_delete(self->peers, peer);
    return used;
}

static void
s_peer_charge(loom_blob_channel *self, const char *peer, const uint8_t *hash)
{
    zhashx_t *set = zhashx_lookup(self->peers, peer);
    if (!self->quota)
        return; //  no quota: nothing to count
    if (!set) {
        set = zhashx_new();
        zhashx_set_destructor(set, s_hash_free);
        zhashx_insert(self->peers, peer, set);
    }
    char hex[2 * LOOM_HASH_SIZE + 1];
    loom_blob_hex(hash, hex);
    if (!zhashx_lookup(set, hex)) {
        uint8_t *h = loom_xmalloc(LOOM_HASH_SIZE);
        memcpy(h, hash, LOOM_HASH_SIZE);
        zhashx_insert(set, hex, h);
    }
}

//  True if peer may add the blob of h to what it holds in the store; else
//  text (may be NULL) says why.
static bool
s_within_quota(loom_blob_channel *self, loom_blob_store *st, const char *peer,
               const loom_wire_blob_have *h, char *text, size_t cap_text)
{
    uint64_t cap = loom_blob_store_cap(st);
    uint64_t quota = self->quota && self->quota < cap ? self->quota : 0;
    if (!quota)
        return true;
    uint64_t used = s_peer_usage(self, st, peer, h->hash.data);
    if (h->size <= quota && used + h->size <= quota)
        return true;
    if (text)
        snprintf(text, cap_text,
                 "blob quota: an upload of %llu bytes would take this client to %llu "
                 "bytes in the store, over its quota of %llu (LOOM_BLOB_QUOTA)",
                 (unsigned long long)h->size, (unsigned long long)(used + h->size),
                 (unsigned long long)quota);
    return false;
}

//  Refuse the upload of total bytes if peer would go over its quota or
//  the store over its cap: the uploader gets an Error naming the limit.
static bool
s_admit(loom_blob_channel *self, loom_blob_store *st, const uint8_t *rid, size_t rid_len,
        const char *peer, const loom_wire_blob_have *h)
{
    char text[256];
    if (s_within_quota(self, st, peer, h, text, sizeof text))
        return true;
    loom_log_warning("broker: %s", text);
    self->rejected++;
    s_send_error(self, rid, rid_len, LOOM_ETOOBIG, text);
    s_send_status(self, rid, rid_len, h->hash, 0, LOOM_ETOOBIG);
    return false;
}

//  An upload is stored under name: tell the uploader (an unnamed upload
//  learns its name here) and count it against the peer's quota.
static void
s_send_stored(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, const char *peer,
              const uint8_t *announced, const uint8_t *name, uint64_t size)
{
    if (loom_blob_unnamed(announced))
        s_peer_charge(self, peer, name);
    s_send_have(self, rid, rid_len, (loom_span){name, LOOM_HASH_SIZE}, size, true);
}

//  A same-host client wrote the blob into the store itself (h->adopt):
//  take the file if it passes the store's checks and the peer's quota,
//  answer have; else have=false and the client uploads on the channel
//  (which then says why, if a limit refuses it).
static void
s_on_adopt(loom_blob_channel *self, loom_blob_store *st, const uint8_t *rid, size_t rid_len,
           const char *peer, const loom_wire_blob_have *h)
{
    bool held = loom_blob_store_size(st, h->hash.data, NULL);
    int rc = held || s_within_quota(self, st, peer, h, NULL, 0)
                 ? loom_blob_store_adopt(st, h->adopt, h->hash.data, h->size)
                 : LOOM_ETOOBIG;
    if (rc == LOOM_EINVAL)
        self->rejected++;
    if (rc == 0 && !held) {
        self->bytes_adopted += h->size;
        s_peer_charge(self, peer, h->hash.data);
    }
    s_send_have(self, rid, rid_len, h->hash, h->size, rc == 0);
}

static void
s_on_have(loom_blob_channel *self, loom_blob_store *st, const uint8_t *rid, size_t rid_len,
          const char *peer, const loom_wire_blob_have *h)
{
    if (h->adopt) {
        s_on_adopt(self, st, rid, rid_len, peer, h);
        return;
    }
    uint64_t size = 0, total = 0, received = 0;
    if (loom_blob_store_has(st, h->hash.data, &size)) {
        s_send_have(self, rid, rid_len, h->hash, size, true);
        return;
    }
    //  Asked again while uploading (the uploader heard nothing for a
    //  while): resume, with a grant from what was received. Every chunk it
    //  sent before asking came before the question, so none is missing.
    if (loom_blob_store_upload_total(st, peer, h->hash.data, &total, &received) &&
        total == h->size) {
        s_send_have(self, rid, rid_len, h->hash, h->size, false);
        s_send_grant(self, rid, rid_len, h->hash, received, total);
        return;
    }
    if (!s_admit(self, st, rid, rid_len, peer, h))
        return;
    bool done = false;
    uint8_t name[LOOM_HASH_SIZE];
    int rc = loom_blob_store_upload_begin(st, peer, h->hash.data, h->size, &done, name);
    if (rc == LOOM_ETOOBIG) {
        char text[256];
        snprintf(text, sizeof text,
                 "blob store full: an upload of %llu bytes does not fit: %llu bytes stored "
                 "(kept for open pipelines) and %llu being uploaded, cap %llu (loom broker "
                 "--store-size)",
                 (unsigned long long)h->size, (unsigned long long)loom_blob_store_bytes(st),
                 (unsigned long long)loom_blob_store_pending(st),
                 (unsigned long long)loom_blob_store_cap(st));
        loom_log_warning("broker: %s", text);
        s_send_error(self, rid, rid_len, rc, text);
    }
    if (rc == LOOM_EIO)
        s_send_error(self, rid, rid_len, rc, loom_blob_store_error(st));
    if (rc == 0)
        s_peer_charge(self, peer, h->hash.data);
    if (rc)
        s_send_status(self, rid, rid_len, h->hash, 0, rc);
    else if (done)
        s_send_stored(self, rid, rid_len, peer, h->hash.data, name, h->size);
    else {
        s_send_have(self, rid, rid_len, h->hash, h->size, false);
        s_send_grant(self, rid, rid_len, h->hash, 0, h->size);
    }
}

static void
s_on_put(loom_blob_channel *self, loom_blob_store *st, const uint8_t *rid, size_t rid_len,
         const char *peer, const loom_wire_blob_put *p)
{
    uint64_t total = 0;
    bool known = loom_blob_store_upload_total(st, peer, p->hash.data, &total, NULL);
    bool done = false;
    uint64_t received = 0;
    uint8_t name[LOOM_HASH_SIZE];
    self->bytes_in += p->data.len;
    int rc = loom_blob_store_upload_write(st, peer, p->hash.data, p->offset, p->data.data,
                                          p->data.len, &done, &received, name);
    if (rc) {
        //  A late chunk of an upload that already failed: say nothing more.
        if (known && rc == LOOM_EIO)
            s_send_error(self, rid, rid_len, rc, loom_blob_store_error(st));
        if (known)
            s_send_status(self, rid, rid_len, p->hash, p->offset, rc);
        else
            self->rejected++;
    } else if (done)
        s_send_stored(self, rid, rid_len, peer, p->hash.data, name, total);
    else
        s_send_grant(self, rid, rid_len, p->hash, received, total);
}

//  A stored blob's bytes at an offset, as a loom_wire_fill; err keeps a
//  read's failure apart from the send's.
typedef struct {
    loom_blob_store *st;
    const uint8_t *hash;
    uint64_t offset;
    int err;
} s_store_src;

static int
s_fill_store(void *ctx, void *buf, size_t len)
{
    s_store_src *src = ctx;
    size_t n = 0;
    uint64_t total = 0;
    int rc = loom_blob_store_read(src->st, src->hash, src->offset, buf, len, &n, &total);
    src->err = rc ? rc : n == len ? 0 : LOOM_EIO;
    return src->err;
}

static void
s_on_get(loom_blob_channel *self, loom_blob_store *st, const uint8_t *rid, size_t rid_len,
         const loom_wire_blob_get *g)
{
    uint64_t credit = g->credit < LOOM_BLOB_MAX_CREDIT ? g->credit : LOOM_BLOB_MAX_CREDIT;
    uint64_t offset = g->offset;
    bool first = true;
    for (;;) {
        uint64_t total = 0;
        if (!loom_blob_store_size(st, g->hash.data, &total)) {
            s_send_status(self, rid, rid_len, g->hash, offset, LOOM_ENOENT);
            return;
        }
        if (offset > total) {
            s_send_status(self, rid, rid_len, g->hash, offset, LOOM_EINVAL);
            return;
        }
        size_t want = credit < LOOM_BLOB_CHUNK ? (size_t)credit : LOOM_BLOB_CHUNK;
        size_t n = total - offset < want ? (size_t)(total - offset) : want;
        if (n == 0 && !first)
            return; //  credit used up, or the end reached
        //  The store's file is read straight into the frame.
        loom_msg m = {.type = LOOM_MSG_BLOB_CHUNK};
        m.u.blob_chunk.hash = g->hash;
        m.u.blob_chunk.offset = offset;
        m.u.blob_chunk.total = total;
        m.u.blob_chunk.data = (loom_span){NULL, n};
        s_store_src src = {st, g->hash.data, offset, 0};
        int rc = loom_wire_send_filled(zsock_resolve(self->router), rid, rid_len, &m,
                                       s_fill_store, &src, ZMQ_DONTWAIT);
        if (src.err) {
            s_send_status(self, rid, rid_len, g->hash, offset, src.err);
            return;
        }
        if (rc == 0) {
            self->msgs_out++;
            self->bytes_out += n;
        }
        offset += n;
        credit -= n;
        first = false;
        if (n == 0 || credit == 0 || offset >= total)
            return;
    }
}

static void
s_on_msg(loom_blob_channel *self, const uint8_t *rid, size_t rid_len, const loom_msg *m)
{
    char peer[2 * S_RID_MAX + 1];
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < rid_len; i++) {
        peer[2 * i] = digits[rid[i] >> 4];
        peer[2 * i + 1] = digits[rid[i] & 15];
    }
    peer[2 * rid_len] = 0;
    if (m->proto != LOOM_PROTO_VERSION) {
        self->rejected++;
        return;
    }
    loom_blob_store *st = NULL;
    loom_span hash = {0};
    switch (m->type) {
    case LOOM_MSG_BLOB_HAVE:
        hash = m->u.blob_have.hash;
        break;
    case LOOM_MSG_BLOB_PUT:
        hash = m->u.blob_put.hash;
        break;
    case LOOM_MSG_BLOB_GET:
        hash = m->u.blob_get.hash;
        break;
    default:
        self->rejected++;
        return;
    }
    if (!(st = s_store(self))) {
        s_send_status(self, rid, rid_len, hash, 0, LOOM_EIO);
        return;
    }
    if (m->type == LOOM_MSG_BLOB_HAVE)
        s_on_have(self, st, rid, rid_len, peer, &m->u.blob_have);
    else if (m->type == LOOM_MSG_BLOB_PUT)
        s_on_put(self, st, rid, rid_len, peer, &m->u.blob_put);
    else
        s_on_get(self, st, rid, rid_len, &m->u.blob_get);
}

void
loom_blob_channel_on_readable(loom_blob_channel *self, int budget)
{
    void *sock = zsock_resolve(self->router);
    for (int n = 0; n < budget; n++) {
        uint8_t rid[S_RID_MAX];
        size_t rid_len = 0;
        loom_msg *msg = NULL;
        int rc = loom_wire_recv(sock, rid, sizeof rid, &rid_len, &msg, ZMQ_DONTWAIT);
        if (rc == LOOM_EAGAIN || rc == LOOM_EIO)
            break;
        self->msgs_in++;
        if (rc == 0 && rid_len > 0 && rid_len <= S_RID_MAX)
            s_on_msg(self, rid, rid_len, msg);
        else
            self->rejected++;
        loom_msg_destroy(&msg);
    }
}

void
loom_blob_channel_set_shares(loom_blob_channel *self, const char *owner,
                             const loom_wire_file *shares, size_t n)
{
    loom_blob_store *st = s_store(self);
    s_shares *s = loom_xcalloc(1, sizeof *s);
    s->files = loom_xcalloc(n ? n : 1, sizeof *s->files);
    for (size_t i = 0; i < n; i++) {
        s->files[i].name = loom_xstrdup(shares[i].name);
        uint8_t *h = loom_xmalloc(LOOM_HASH_SIZE);
        memcpy(h, shares[i].hash.data, LOOM_HASH_SIZE);
        s->files[i].hash = (loom_span){h, LOOM_HASH_SIZE};
        s->files[i].size = shares[i].size;
        if (st)
            loom_blob_store_ref(st, owner, h);
    }
    s->n = n;
    zhashx_update(self->shares, owner, s);
}

void
loom_blob_channel_ref(loom_blob_channel *self, const char *owner, const uint8_t *hash)
{
    loom_blob_store *st = s_store(self);
    if (st)
        loom_blob_store_ref(st, owner, hash);
}

const loom_wire_file *
loom_blob_channel_shares(loom_blob_channel *self, const char *owner, size_t *n)
{
    s_shares *s = zhashx_lookup(self->shares, owner);
    *n = s ? s->n : 0;
    return s && s->n ? s->files : NULL;
}

void
loom_blob_channel_release(loom_blob_channel *self, const char *owner)
{
    zhashx_delete(self->shares, owner);
    if (self->store)
        loom_blob_store_release(self->store, owner);
}

void
loom_blob_channel_release_prefix(loom_blob_channel *self, const char *prefix)
{
    size_t len = strlen(prefix);
    zlistx_t *keys = zhashx_keys(self->shares);
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys))
        if (!strncmp(k, prefix, len))
            loom_blob_channel_release(self, k);
    zlistx_destroy(&keys);
    if (self->store)
        loom_blob_store_release_prefix(self->store, prefix);
}

void
loom_blob_channel_tick(loom_blob_channel *self, int64_t now_ms)
{
    if (self->store) {
        loom_blob_store_sweep(self->store, now_ms);
        //  Forget peers none of whose uploads are left.
        zlistx_t *keys = zhashx_keys(self->peers);
        for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys))
            s_peer_usage(self, self->store, k, NULL);
        zlistx_destroy(&keys);
    }
}

void
loom_blob_channel_set_quota(loom_blob_channel *self, uint64_t quota)
{
    LOOM_ASSERT(zhashx_size(self->peers) == 0); //  before any upload
    self->quota = quota;
}

void
loom_blob_channel_stats(loom_blob_channel *self, loom_wire_stats *st)
{
    st->blob_bytes_in += self->bytes_in;
    st->blob_bytes_out += self->bytes_out;
    st->msgs_in += self->msgs_in;
    st->msgs_out += self->msgs_out;
    st->msgs_rejected += self->rejected;
    st->blob_bytes_adopted += self->bytes_adopted;
    if (self->store) {
        st->blobs_stored += loom_blob_store_count(self->store);
        st->blob_store_bytes += loom_blob_store_bytes(self->store);
    }
}
