/*  blob_store: the broker's content-addressed blob store (see
    blob_store.h). An index in memory (hex digest -> size, references, last
    use), files on disk under DIR/ab/<hex>, uploads in progress as temp
    files DIR/ab/<hex>.<n>.tmp, named as they arrive (on this thread, or
    on the hashing threads of upload_hasher.c for large ones). Files a
    client on this host wrote itself, DIR/put-<pid>-<seq>.tmp, are
    adopted (renamed into place) when it asks; ones left behind by a
    client that died are removed once stale.  */

#include "blob_store.h"

#include "base.h"
#include "blob_hash.h"
#include "upload_hasher.h"

#include <czmq.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_HEX_LEN (2 * LOOM_BLOB_HASH_SIZE)
#define S_PUT_STALE_S (5 * 60)     //  a client's put file untouched this long is left over
#define S_PUT_SWEEP_MS (60 * 1000) //  look for such files this often
//  An upload of at least this much is named on the hashing threads
//  (upload_hasher.h).
#define S_BG_HASH_MIN (2 * LOOM_BLOB_HASH_BLOCK)

typedef struct {
    uint8_t hash[LOOM_BLOB_HASH_SIZE];
    uint64_t size;
    size_t refs;      //  owners referencing it
    int64_t last_use; //  ms; the TTL counts from here once refs is 0
} s_blob;

typedef struct {
    uint8_t hash[LOOM_BLOB_HASH_SIZE];
    uint64_t total;
    uint64_t received;
    int fd;
    char *tmp;                 //  temp file path (owned)
    loom__blob_hasher *hasher; //  the name of the bytes so far, on this thread; or
    loom_upload_hasher *bg;    //  the name, block by block, on the hashing threads
    int64_t last_use;
} s_upload;

struct loom_blob_store {
    char *dir;
    uint64_t cap;
    int64_t ttl_ms;
    zhashx_t *blobs;   //  hex -> s_blob
    zhashx_t *owners;  //  owner -> zhashx (hex -> s_blob, borrowed)
    zhashx_t *uploads; //  "peer/hex" -> s_upload
    uint64_t bytes;    //  sum of stored sizes
    uint64_t tmp_seq;
    int64_t put_swept; //  ms: when stale put files were last looked for
    char error[512];   //  why the last upload failed on disk, for its client
};

const uint8_t LOOM_BLOB_UNNAMED[LOOM_BLOB_HASH_SIZE] = {0};

bool
loom_blob_unnamed(const uint8_t *hash)
{
    return memcmp(hash, LOOM_BLOB_UNNAMED, LOOM_BLOB_HASH_SIZE) == 0;
}

static uint64_t s_pending(loom_blob_store *self);
static void s_evict(loom_blob_store *self, uint64_t limit);

void
loom_blob_hex(const uint8_t *hash, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < LOOM_BLOB_HASH_SIZE; i++) {
        hex[2 * i] = digits[hash[i] >> 4];
        hex[2 * i + 1] = digits[hash[i] & 15];
    }
    hex[S_HEX_LEN] = 0;
}

static bool
s_unhex(const char *hex, uint8_t *hash)
{
    if (strlen(hex) != S_HEX_LEN)
        return false;
    for (size_t i = 0; i < S_HEX_LEN; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return false;
        if (i % 2 == 0)
            hash[i / 2] = (uint8_t)(v << 4);
        else
            hash[i / 2] |= (uint8_t)v;
    }
    return true;
}

//  DIR/ab/<hex> into path (cap bytes).
static void
s_path(const loom_blob_store *self, const char *hex, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%.2s/%s", self->dir, hex, hex);
}

static void
s_free_item(void **item)
{
    free(*item);
    *item = NULL;
}

static void
s_upload_free(void **item)
{
    s_upload *u = *item;
    if (!u)
        return;
    loom_upload_hasher_destroy(&u->bg);
    if (u->fd >= 0)
        close(u->fd);
    loom__blob_hasher_destroy(&u->hasher);
    if (u->tmp) {
        unlink(u->tmp);
        free(u->tmp);
    }
    free(u);
    *item = NULL;
}

static void
s_owner_free(void **item)
{
    zhashx_t *set = *item;
    zhashx_destroy(&set);
    *item = NULL;
}

static int
s_mkdir(const char *dir)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        return 0;
    loom_log_error("blob store: cannot create %s: %s", dir, strerror(errno));
    return LOOM_EIO;
}

//  True if name is a client's put file: put-<digits>-<digits>.tmp, so
//  no '/' and no "..".
static bool
s_put_name(const char *name)
{
    const char *p = name;
    if (strncmp(p, "put-", 4))
        return false;
    p += 4;
    for (int part = 0; part < 2; part++) {
        const char *digits = p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == digits || p - digits > 20)
            return false;
        if (part == 0 && *p++ != '-')
            return false;
    }
    return strcmp(p, ".tmp") == 0;
}

//  Remove the put files in dir that were not written to for S_PUT_STALE_S
//  (their client died before asking for adoption).
static void
s_put_sweep(loom_blob_store *self)
{
    DIR *top = opendir(self->dir);
    if (!top)
        return;
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(top))) {
        struct stat sb;
        if (s_put_name(e->d_name) &&
            fstatat(dirfd(top), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            now - sb.st_mtime > S_PUT_STALE_S)
            unlinkat(dirfd(top), e->d_name, 0);
    }
    closedir(top);
}

//  Index the blobs under dir/ab/, removing temp files.
static void
s_scan(loom_blob_store *self)
{
    s_put_sweep(self);
    DIR *top = opendir(self->dir);
    if (!top)
        return;
    struct dirent *e;
    while ((e = readdir(top))) {
        if (strlen(e->d_name) != 2 || !isxdigit((unsigned char)e->d_name[0]))
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", self->dir, e->d_name);
        DIR *d = opendir(sub);
        if (!d)
            continue;
        struct dirent *f;
        while ((f = readdir(d))) {
            char path[4096 + 512];
            snprintf(path, sizeof path, "%s/%s", sub, f->d_name);
            uint8_t hash[LOOM_BLOB_HASH_SIZE];
            struct stat sb;
            if (strstr(f->d_name, ".tmp"))
                unlink(path);
            else if (s_unhex(f->d_name, hash) && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                s_blob *b = loom_xcalloc(1, sizeof *b);
                memcpy(b->hash, hash, sizeof hash);
                b->size = (uint64_t)sb.st_size;
                b->last_use = loom_now_ms();
                zhashx_insert(self->blobs, f->d_name, b);
                self->bytes += b->size;
            }
        }
        closedir(d);
    }
    closedir(top);
}

loom_blob_store *
loom_blob_store_new(const char *dir, uint64_t cap_bytes, int64_t ttl_ms)
{
    LOOM_ASSERT(dir);
    if (s_mkdir(dir) != 0)
        return NULL;
    loom_blob_store *self = loom_xcalloc(1, sizeof *self);
    self->dir = loom_xstrdup(dir);
    self->cap = cap_bytes ? cap_bytes : LOOM_BLOB_DEFAULT_CAP;
    self->ttl_ms = ttl_ms > 0 ? ttl_ms : LOOM_BLOB_DEFAULT_TTL_MS;
    self->blobs = zhashx_new();
    zhashx_set_destructor(self->blobs, s_free_item);
    self->owners = zhashx_new();
    zhashx_set_destructor(self->owners, s_owner_free);
    self->uploads = zhashx_new();
    zhashx_set_destructor(self->uploads, s_upload_free);
    s_scan(self);
    self->put_swept = loom_now_ms();
    return self;
}

void
loom_blob_store_destroy(loom_blob_store **self_p)
{
    LOOM_ASSERT(self_p);
    loom_blob_store *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->uploads);
    zhashx_destroy(&self->owners);
    zhashx_destroy(&self->blobs);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

static s_blob *
s_find(loom_blob_store *self, const uint8_t *hash)
{
    char hex[S_HEX_LEN + 1];
    loom_blob_hex(hash, hex);
    return zhashx_lookup(self->blobs, hex);
}

bool
loom_blob_store_has(loom_blob_store *self, const uint8_t *hash, uint64_t *size)
{
    s_blob *b = s_find(self, hash);
    if (b) {
        b->last_use = loom_now_ms();
        if (size)
            *size = b->size;
    }
    return b != NULL;
}

int
loom_blob_store_read(loom_blob_store *self, const uint8_t *hash, uint64_t offset, void *buf,
                     size_t cap, size_t *n, uint64_t *total)
{
    *n = 0;
    *total = 0;
    s_blob *b = s_find(self, hash);
    if (!b)
        return LOOM_ENOENT;
    *total = b->size;
    if (offset > b->size)
        return LOOM_EINVAL;
    b->last_use = loom_now_ms();
    uint64_t left = b->size - offset;
    size_t want = left < cap ? (size_t)left : cap;
    if (want == 0)
        return 0;
    char hex[S_HEX_LEN + 1], path[4096];
    loom_blob_hex(hash, hex);
    s_path(self, hex, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        loom_log_error("blob store: cannot open %s: %s", path, strerror(errno));
        return LOOM_EIO;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, (uint8_t *)buf + got, want - got, (off_t)(offset + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != want) {
        loom_log_error("blob store: short read of %s", path);
        return LOOM_EIO;
    }
    *n = got;
    return 0;
}

static void
s_upload_key(const char *peer, const uint8_t *hash, char *key, size_t cap)
{
    char hex[S_HEX_LEN + 1];
    loom_blob_hex(hash, hex);
    snprintf(key, cap, "%s/%s", peer, hex);
}

//  A blob now in place at DIR/ab/<hex>: index it.
static void
s_index(loom_blob_store *self, const char *hex, const uint8_t *hash, uint64_t size)
{
    if (zhashx_lookup(self->blobs, hex))
        return;
    s_blob *b = loom_xcalloc(1, sizeof *b);
    memcpy(b->hash, hash, sizeof b->hash);
    b->size = size;
    b->last_use = loom_now_ms();
    zhashx_insert(self->blobs, hex, b);
    self->bytes += b->size;
}

//  Room for total more bytes: stored blobs, uploads in progress and these
//  within the cap, after dropping unreferenced blobs (least recently used
//  first). Blobs pipelines still use are never dropped for room.
static bool
s_room(loom_blob_store *self, uint64_t total)
{
    if (total > self->cap)
        return false;
    s_evict(self, self->cap - total);
    return self->bytes + s_pending(self) + total <= self->cap;
}

//  The upload is complete: check its hash (an unnamed one takes it as its
//  name), rename into place, index; name (may be NULL) gets the name.
static int
s_finish(loom_blob_store *self, const char *key, s_upload *u, uint8_t *name)
{
    uint8_t got[LOOM_BLOB_HASH_SIZE];
    if (u->bg)
        loom_upload_hasher_final(u->bg, got);
    else
        loom__blob_hasher_final(u->hasher, got);
    if (loom_blob_unnamed(u->hash))
        memcpy(u->hash, got, sizeof got);
    char hex[S_HEX_LEN + 1], path[4096];
    loom_blob_hex(u->hash, hex);
    s_path(self, hex, path, sizeof path);
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%.2s", self->dir, hex);
    int rc = 0;
    if (!loom__blob_hash_equal(got, u->hash)) {
        loom_log_warning("blob store: upload of %.16s... does not match its hash: refused", hex);
        rc = LOOM_EPROTO;
    } else if (zhashx_lookup(self->blobs, hex)) {
        //  Held already (an unnamed upload of bytes the store has): keep
        //  the one there; the temp file goes with the upload.
        s_blob *b = zhashx_lookup(self->blobs, hex);
        b->last_use = loom_now_ms();
    } else if (fchmod(u->fd, 0400) != 0 || close(u->fd) != 0 || (u->fd = -1, s_mkdir(sub) != 0) ||
               rename(u->tmp, path) != 0) {
        //  (Read-only once complete: a host on this machine may take it by
        //  hard link into its cache, sharing the inode: worker_blobs.c.)
        loom_log_error("blob store: cannot store %s: %s", path, strerror(errno));
        rc = LOOM_EIO;
    } else {
        free(u->tmp);
        u->tmp = NULL; //  renamed: nothing to unlink
        s_index(self, hex, u->hash, u->total);
    }
    if (rc == 0 && name)
        memcpy(name, u->hash, LOOM_BLOB_HASH_SIZE);
    zhashx_delete(self->uploads, key);
    return rc;
}

int
loom_blob_store_upload_begin(loom_blob_store *self, const char *peer, const uint8_t *hash,
                             uint64_t total, bool *done, uint8_t *name)
{
    *done = false;
    char key[512];
    s_upload_key(peer, hash, key, sizeof key);
    zhashx_delete(self->uploads, key);
    if (!s_room(self, total))
        return LOOM_ETOOBIG;
    //  An unnamed upload's temp file lives in DIR/00/ (its name is not
    //  known yet); it is renamed into its own subdirectory when it is.
    char hex[S_HEX_LEN + 1], sub[4096];
    loom_blob_hex(hash, hex);
    snprintf(sub, sizeof sub, "%s/%.2s", self->dir, hex);
    if (s_mkdir(sub) != 0)
        return LOOM_EIO;
    s_upload *u = loom_xcalloc(1, sizeof *u);
    memcpy(u->hash, hash, sizeof u->hash);
    u->total = total;
    u->last_use = loom_now_ms();
    u->tmp = loom_xmalloc(strlen(sub) + S_HEX_LEN + 48);
    sprintf(u->tmp, "%s/%s.%llu.tmp", sub, hex, (unsigned long long)++self->tmp_seq);
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (u->fd < 0) {
        snprintf(self->error, sizeof self->error, "blob store: cannot create %s: %s", u->tmp,
                 strerror(errno));
        loom_log_error("%s", self->error);
        free(u->tmp);
        free(u);
        return LOOM_EIO;
    }
    if (total >= S_BG_HASH_MIN)
        u->bg = loom_upload_hasher_new(total);
    else
        u->hasher = loom__blob_hasher_new();
    zhashx_insert(self->uploads, key, u);
    if (total == 0) {
        int rc = s_finish(self, key, u, name);
        *done = rc == 0;
        return rc;
    }
    return 0;
}

int
loom_blob_store_upload_write(loom_blob_store *self, const char *peer, const uint8_t *hash,
                             uint64_t offset, const void *data, size_t len, bool *done,
                             uint64_t *received_p, uint8_t *name)
{
    *done = false;
    char key[512];
    s_upload_key(peer, hash, key, sizeof key);
    s_upload *u = zhashx_lookup(self->uploads, key);
    if (!u)
        return LOOM_ESTATE;
    //  Bytes received already (an uploader that resumed resends what was
    //  in flight when it asked): skipped, the rest written.
    if (offset < u->received && offset + len <= u->total && len > 0) {
        uint64_t skip = u->received - offset < len ? u->received - offset : len;
        data = (const uint8_t *)data + skip;
        len -= (size_t)skip;
        offset += skip;
        if (len == 0) {
            u->last_use = loom_now_ms();
            if (received_p)
                *received_p = u->received;
            return 0;
        }
    }
    if (offset != u->received || len > u->total - u->received || (len == 0 && u->total)) {
        zhashx_delete(self->uploads, key);
        return LOOM_EINVAL;
    }
    //  Named first: a block completed here is hashed while it is written.
    if (u->bg)
        loom_upload_hasher_update(u->bg, data, len);
    else
        loom__blob_hasher_update(u->hasher, data, len);
    size_t put = 0;
    while (put < len) {
        ssize_t w = write(u->fd, (const uint8_t *)data + put, len - put);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(self->error, sizeof self->error, "blob store: cannot write %s: %s", u->tmp,
                     w < 0 ? strerror(errno) : "no space");
            loom_log_error("%s", self->error);
            zhashx_delete(self->uploads, key);
            return LOOM_EIO;
        }
        put += (size_t)w;
    }
    u->received += len;
    u->last_use = loom_now_ms();
    if (received_p)
        *received_p = u->received;
    if (u->received < u->total)
        return 0;
    int rc = s_finish(self, key, u, name);
    *done = rc == 0;
    return rc;
}

int
loom_blob_store_adopt(loom_blob_store *self, const char *name, const uint8_t *hash, uint64_t size)
{
    if (!name || !s_put_name(name) || loom_blob_unnamed(hash))
        return LOOM_EINVAL;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/%s", self->dir, name);
    int fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_uid != geteuid()) {
        //  Not a file of ours (a symlink, a directory, another user's):
        //  leave it alone.
        if (fd >= 0)
            close(fd);
        return LOOM_EINVAL;
    }
    //  Ours from here on: unless renamed into place, the put file goes.
    char hex[S_HEX_LEN + 1], path[4096], sub[4096];
    loom_blob_hex(hash, hex);
    s_path(self, hex, path, sizeof path);
    snprintf(sub, sizeof sub, "%s/%.2s", self->dir, hex);
    s_blob *held = zhashx_lookup(self->blobs, hex);
    int rc = 0;
    bool renamed = false;
    if (sb.st_nlink != 1 || (uint64_t)sb.st_size != size)
        rc = LOOM_EINVAL;
    else if (held)
        held->last_use = loom_now_ms();
    else if (!s_room(self, size))
        rc = LOOM_ETOOBIG;
    else if (fchmod(fd, 0400) != 0 || s_mkdir(sub) != 0 || rename(tmp, path) != 0) {
        //  (Read-only, as an upload's file: hosts may hard-link it.)
        loom_log_error("blob store: cannot adopt %s as %s: %s", tmp, path, strerror(errno));
        rc = LOOM_EIO;
    } else {
        renamed = true;
        s_index(self, hex, hash, size);
    }
    close(fd);
    if (!renamed)
        unlink(tmp);
    return rc;
}

bool
loom_blob_store_upload_total(loom_blob_store *self, const char *peer, const uint8_t *hash,
                             uint64_t *total, uint64_t *received)
{
    char key[512];
    s_upload_key(peer, hash, key, sizeof key);
    s_upload *u = zhashx_lookup(self->uploads, key);
    *total = u ? u->total : 0;
    if (received)
        *received = u ? u->received : 0;
    return u != NULL;
}

bool
loom_blob_store_ref(loom_blob_store *self, const char *owner, const uint8_t *hash)
{
    char hex[S_HEX_LEN + 1];
    loom_blob_hex(hash, hex);
    s_blob *b = zhashx_lookup(self->blobs, hex);
    if (!b)
        return false;
    zhashx_t *set = zhashx_lookup(self->owners, owner);
    if (!set) {
        set = zhashx_new();
        zhashx_insert(self->owners, owner, set);
    }
    if (!zhashx_lookup(set, hex)) {
        zhashx_insert(set, hex, b);
        b->refs++;
    }
    b->last_use = loom_now_ms();
    return true;
}

void
loom_blob_store_release(loom_blob_store *self, const char *owner)
{
    zhashx_t *set = zhashx_lookup(self->owners, owner);
    if (!set)
        return;
    int64_t now = loom_now_ms();
    for (s_blob *b = zhashx_first(set); b; b = zhashx_next(set)) {
        if (b->refs)
            b->refs--;
        b->last_use = now;
    }
    zhashx_delete(self->owners, owner);
}

void
loom_blob_store_release_prefix(loom_blob_store *self, const char *prefix)
{
    size_t len = strlen(prefix);
    zlistx_t *keys = zhashx_keys(self->owners);
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys))
        if (!strncmp(k, prefix, len))
            loom_blob_store_release(self, k);
    zlistx_destroy(&keys);
}

static void
s_remove(loom_blob_store *self, const char *hex, s_blob *b)
{
    char path[4096];
    s_path(self, hex, path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
        loom_log_warning("blob store: cannot remove %s: %s", path, strerror(errno));
    self->bytes -= b->size < self->bytes ? b->size : self->bytes;
    zhashx_delete(self->blobs, hex);
}

//  Bytes announced by the uploads in progress.
static uint64_t
s_pending(loom_blob_store *self)
{
    uint64_t n = 0;
    for (s_upload *u = zhashx_first(self->uploads); u; u = zhashx_next(self->uploads))
        n += u->total;
    return n;
}

//  Remove unreferenced blobs, least recently used first, while stored
//  bytes and uploads in progress are over limit.
static void
s_evict(loom_blob_store *self, uint64_t limit)
{
    uint64_t pending = s_pending(self);
    while (self->bytes + pending > limit) {
        const char *victim = NULL;
        s_blob *vb = NULL;
        for (s_blob *b = zhashx_first(self->blobs); b; b = zhashx_next(self->blobs))
            if (!b->refs && (!vb || b->last_use < vb->last_use)) {
                vb = b;
                victim = zhashx_cursor(self->blobs);
            }
        if (!vb)
            break;
        char hex[S_HEX_LEN + 1];
        snprintf(hex, sizeof hex, "%s", victim);
        s_remove(self, hex, vb);
    }
}

void
loom_blob_store_sweep(loom_blob_store *self, int64_t now_ms)
{
    zlistx_t *keys = zhashx_keys(self->uploads);
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys)) {
        s_upload *u = zhashx_lookup(self->uploads, k);
        if (u && now_ms - u->last_use > LOOM_BLOB_UPLOAD_IDLE_MS)
            zhashx_delete(self->uploads, k);
    }
    zlistx_destroy(&keys);
    keys = zhashx_keys(self->blobs);
    for (const char *k = zlistx_first(keys); k; k = zlistx_next(keys)) {
        s_blob *b = zhashx_lookup(self->blobs, k);
        if (b && !b->refs && now_ms - b->last_use > self->ttl_ms)
            s_remove(self, k, b);
    }
    zlistx_destroy(&keys);
    if (now_ms - self->put_swept >= S_PUT_SWEEP_MS) {
        s_put_sweep(self);
        self->put_swept = now_ms;
    }
    //  Over the cap: unreferenced blobs, least recently used first.
    s_evict(self, self->cap);
}

uint64_t
loom_blob_store_cap(const loom_blob_store *self)
{
    return self->cap;
}

uint64_t
loom_blob_store_pending(loom_blob_store *self)
{
    return s_pending(self);
}

bool
loom_blob_store_size(const loom_blob_store *self, const uint8_t *hash, uint64_t *size)
{
    char hex[S_HEX_LEN + 1];
    loom_blob_hex(hash, hex);
    s_blob *b = zhashx_lookup(self->blobs, hex);
    if (b && size)
        *size = b->size;
    return b != NULL;
}

const char *
loom_blob_store_error(const loom_blob_store *self)
{
    return self->error[0] ? self->error : "blob store: input/output error";
}

uint64_t
loom_blob_store_count(const loom_blob_store *self)
{
    return zhashx_size(self->blobs);
}

uint64_t
loom_blob_store_bytes(const loom_blob_store *self)
{
    return self->bytes;
}
