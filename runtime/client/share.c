/*  share: pipeline shares on the client side (loom_pipeline_share,
    loom_pipeline_share_file). A share is uploaded on the blob channel
    unnamed: the client does not hash it first (that was a whole pass over
    the bytes before the first one was sent); the broker hashes what it
    receives (SHA-256) and answers with the name. The share is recorded in
    the pipeline (name -> hash, size); every MapOpen of the pipeline
    carries the list, so workers fetch what their tasks may read. Runs on
    the API thread with its own DEALER to the blob endpoint (the task
    channel's I/O thread is not involved).

    A file shared again by this process, unchanged since (same device,
    inode, size, mtime and ctime), is known by name: the client asks the
    broker whether it holds it (BlobHave) and sends nothing if it does,
    else uploads it under that name (the broker checks the bytes).

    A client on the broker's host (the Welcome names the store's
    directory) writes the bytes into the store itself, as a put file
    STORE/put-<pid>-<seq>.tmp (copy_file_range from a file), names them
    on a second thread meanwhile, and asks the broker to adopt the file
    (BlobHave with `adopt`): no byte crosses the socket. If that cannot be
    done (the directory is not writable by this user, no space, the broker
    refuses) the file goes and the share is uploaded on the channel; the
    reason is logged once per process. LOOM_BLOB_LOCAL=0 turns it off.

    A broker restarted with a temporary store has lost the shares: on the
    new session the client checks each (BlobHave) and uploads again what
    the broker lacks, from where it kept the bytes: a shared file from its
    path (its hash must still match), shared bytes from a private copy the
    client wrote at share time to an unlinked temp file in $TMPDIR (the
    caller may free its buffer; the copy goes when the pipeline does).  */

#include "blob_transfer.h"
#include "safe_paths.h"
#include "client_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_UPLOAD_TIMEOUT_MS 30000 //  no answer from the broker this long: give up
#define S_KNOWN_FILES 64          //  files whose names this process remembers

//  A file this process shared, as fstat saw it before and after the upload,
//  and the name the broker gave its bytes.
typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    uint8_t hash[LOOM_HASH_SIZE];
} s_known_file;

static atomic_uint_fast64_t s_put_seq; //  the next put file's <seq> (random start)
static pthread_once_t s_put_once = PTHREAD_ONCE_INIT;
static atomic_bool s_local_warned; //  why a same-host upload was not used: said once

static s_known_file s_known[S_KNOWN_FILES];
static size_t s_known_n, s_known_next; //  entries used; the next one to replace
static pthread_mutex_t s_known_lock = PTHREAD_MUTEX_INITIALIZER;

static bool
s_same_file(const s_known_file *k, const struct stat *sb)
{
    return k->dev == sb->st_dev && k->ino == sb->st_ino && k->size == sb->st_size &&
           k->mtime.tv_sec == sb->st_mtim.tv_sec && k->mtime.tv_nsec == sb->st_mtim.tv_nsec &&
           k->ctime.tv_sec == sb->st_ctim.tv_sec && k->ctime.tv_nsec == sb->st_ctim.tv_nsec;
}

//  The name of a file this process shared and that has not changed since.
static bool
s_known_lookup(const struct stat *sb, uint8_t *hash)
{
    bool found = false;
    pthread_mutex_lock(&s_known_lock);
    for (size_t i = 0; i < s_known_n && !found; i++)
        if (s_same_file(&s_known[i], sb)) {
            memcpy(hash, s_known[i].hash, LOOM_HASH_SIZE);
            found = true;
        }
    pthread_mutex_unlock(&s_known_lock);
    return found;
}

//  True if the file behind fd is as before, of the size uploaded, and its
//  last change (ctime) came before start, a coarse clock reading taken
//  before `before` (the clock file times come from): then any write since
//  start would have moved its ctime, so (dev, ino, size, mtime, ctime)
//  names these bytes. A file changed in the same clock tick (git's
//  "racily clean" case) is not remembered: the next share of it uploads it
//  again, unnamed.
static bool
s_settled(int fd, const struct stat *before, uint64_t size, const struct timespec *start)
{
    s_known_file k = {.dev = before->st_dev,
                      .ino = before->st_ino,
                      .size = before->st_size,
                      .mtime = before->st_mtim,
                      .ctime = before->st_ctim};
    struct stat now;
    bool older =
        before->st_ctim.tv_sec < start->tv_sec ||
        (before->st_ctim.tv_sec == start->tv_sec && before->st_ctim.tv_nsec < start->tv_nsec);
    return older && (uint64_t)before->st_size == size && fstat(fd, &now) == 0 &&
           s_same_file(&k, &now);
}

static void
s_known_add(const struct stat *sb, const uint8_t *hash)
{
    pthread_mutex_lock(&s_known_lock);
    size_t i = 0;
    while (i < s_known_n && !s_same_file(&s_known[i], sb))
        i++;
    if (i == s_known_n) {
        i = s_known_next;
        s_known_next = (s_known_next + 1) % S_KNOWN_FILES;
        if (s_known_n < S_KNOWN_FILES)
            s_known_n++;
    }
    s_known[i] = (s_known_file){.dev = sb->st_dev,
                                .ino = sb->st_ino,
                                .size = sb->st_size,
                                .mtime = sb->st_mtim,
                                .ctime = sb->st_ctim};
    memcpy(s_known[i].hash, hash, LOOM_HASH_SIZE);
    pthread_mutex_unlock(&s_known_lock);
}

bool
loom__blob_name_valid(const char *name)
{
    //  The one check, the same the broker and the workers apply.
    return loom_file_name_valid(name);
}

//  Where a share's bytes can be read again after a broker restart; both
//  unset: nowhere (the private copy could not be written).
struct loom__share_src {
    char *path; //  a shared file (absolute when it could be resolved), or NULL
    int fd;     //  the private copy of shared bytes, or -1
};

static void
s_src_free(struct loom__share_src *src)
{
    free(src->path);
    src->path = NULL;
    if (src->fd >= 0)
        close(src->fd);
    src->fd = -1;
}

void
loom__pipeline_shares_free(loom_pipeline *p)
{
    for (size_t i = 0; i < p->nshares; i++) {
        free((char *)p->shares[i].name);
        free((void *)p->shares[i].hash.data);
        s_src_free(&p->share_src[i]);
    }
    free(p->shares);
    free(p->share_src);
    p->shares = NULL;
    p->share_src = NULL;
    p->nshares = 0;
}

void
loom__client_blob_close(loom_client *c)
{
    if (c->blob)
        zmq_close(c->blob);
    c->blob = NULL;
    free(c->blob_ep);
    c->blob_ep = NULL;
    free(c->blob_store);
    c->blob_store = NULL;
}

//  The client's DEALER to the blob channel, made now if needed.
void *
loom__client_blob(loom_client *c)
{
    if (!c->blob && c->blob_ep)
        c->blob = loom__blob_dealer(zsys_init(), c->blob_ep, c->cert_path, c->server_key);
    return c->blob;
}

//  Record a share; the pipeline owns src from now on.
static void
s_record(loom_pipeline *p, const char *name, const uint8_t *hash, uint64_t size,
         struct loom__share_src src)
{
    size_t i = 0;
    while (i < p->nshares && strcmp(p->shares[i].name, name))
        i++;
    if (i == p->nshares) {
        p->shares = loom_xrealloc(p->shares, (p->nshares + 1) * sizeof *p->shares);
        p->share_src = loom_xrealloc(p->share_src, (p->nshares + 1) * sizeof *p->share_src);
        p->nshares++;
        p->shares[i].name = loom_xstrdup(name);
    } else {
        free((void *)p->shares[i].hash.data);
        s_src_free(&p->share_src[i]);
    }
    p->share_src[i] = src;
    uint8_t *h = loom_xmalloc(LOOM_HASH_SIZE);
    memcpy(h, hash, LOOM_HASH_SIZE);
    p->shares[i].hash = (loom_span){h, LOOM_HASH_SIZE};
    p->shares[i].size = size;
}

//  Upload a source under hash, or unnamed (hash NULL: the broker's name
//  for the bytes goes to *name). Returns 0 or a code (logged).
static int
s_put(loom_client *c, const char *what, const uint8_t *hash, uint64_t size, loom_blob_reader rd,
      void *ctx, uint8_t *name)
{
    void *sock = loom__client_blob(c);
    if (!sock) {
        loom_log_error("loom: %s: the broker has no blob channel", what);
        return LOOM_ENOTSUP;
    }
    int rc = hash ? loom__blob_upload(sock, hash, size, rd, ctx, S_UPLOAD_TIMEOUT_MS, NULL)
                  : loom__blob_upload_unnamed(sock, size, rd, ctx, S_UPLOAD_TIMEOUT_MS, NULL, name);
    if (rc) {
        loom_log_error("loom: %s: upload failed: %s", what, loom_strerror(rc));
        //  Answers may still come for it, and the broker may hold its bytes
        //  (an upload asked for again resumes: PROTOCOL.md): the next
        //  upload starts on a new connection.
        zmq_close(c->blob);
        c->blob = NULL;
    }
    return rc;
}

//  ---------------------------------------------------------------------------
//  Same-host upload: a put file in the broker's store, adopted

//  What the naming thread reads: a file (fd >= 0) or memory.
typedef struct {
    int fd;
    const loom_blob_mem *mem;
    uint64_t size;
    uint8_t hash[LOOM_HASH_SIZE];
    int rc;
} s_namer;

static void *
s_namer_main(void *arg)
{
    s_namer *n = arg;
    n->rc = n->fd >= 0 ? loom__blob_hash_fd(n->fd, n->size, n->hash)
                       : loom__blob_hash(loom__blob_read_mem, (void *)n->mem, n->size, n->hash);
    return NULL;
}

static int
s_write_all(int fd, const uint8_t *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        off += (size_t)w;
    }
    return 0;
}

//  Copy size bytes of the file src (from offset 0; its offset is not
//  moved) to dst: in the kernel where it can, else read and write.
//  Returns 0 or an errno.
static int
s_copy_file(int dst, int src, uint64_t size)
{
    loff_t in = 0;
    bool kernel = true;
    uint8_t *buf = NULL;
    int err = 0;
    while ((uint64_t)in < size && !err) {
        size_t want = size - (uint64_t)in < (1u << 30) ? (size_t)(size - (uint64_t)in) : 1u << 30;
        if (kernel) {
            ssize_t n = copy_file_range(src, &in, dst, NULL, want, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 &&
                (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
                kernel = false;
                continue;
            }
            if (n <= 0)
                err = n < 0 ? errno : EIO; //  an error, or the file shrank
            continue;
        }
        if (!buf)
            buf = loom_xmalloc(LOOM_BLOB_XFER_CHUNK);
        if (want > LOOM_BLOB_XFER_CHUNK)
            want = LOOM_BLOB_XFER_CHUNK;
        err = loom__blob_read_fd(&src, (uint64_t)in, buf, want) ? EIO : s_write_all(dst, buf, want);
        in += (loff_t)want;
    }
    free(buf);
    return err;
}

//  Put file names start their <seq> at a random number: another user of
//  the host cannot list the store (0700), so cannot learn a name to ask
//  the broker to adopt under a name of its choosing before this client does.
static void
s_put_seq_init(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid() << 32;
    atomic_store(&s_put_seq, v >> 2); //  room to count up within 20 digits
}

//  The next put file name of this process into name.
static void
s_put_name(char *name, size_t cap)
{
    pthread_once(&s_put_once, s_put_seq_init);
    snprintf(name, cap, "put-%ld-%llu.tmp", (long)getpid(),
             (unsigned long long)atomic_fetch_add(&s_put_seq, 1));
}

//  True if a file's fstat b is a's: nothing wrote it in between (as far
//  as size, mtime and ctime tell).
static bool
s_unchanged(const struct stat *a, const struct stat *b)
{
    s_known_file k = {.dev = a->st_dev,
                      .ino = a->st_ino,
                      .size = a->st_size,
                      .mtime = a->st_mtim,
                      .ctime = a->st_ctim};
    return s_same_file(&k, b);
}

//  Why the same-host upload was not used, once per process.
static void
s_local_off(const char *what, const char *why, const char *detail)
{
    if (!atomic_exchange(&s_local_warned, true))
        loom_log_warning("loom: %s: not written into the broker's store (%s%s%s): uploading it on "
                         "the blob channel (said once)",
                         what, why, detail ? ": " : "", detail ? detail : "");
}

//  Write a source (the file fd, or mem when fd < 0) into the broker's store
//  as a put file, name it meanwhile, and have the broker adopt it. Returns
//  0 with the name in hash; anything else: not done (nothing left behind),
//  upload on the channel.
static int
s_put_local(loom_client *c, const char *what, int fd, const loom_blob_mem *mem, uint64_t size,
            uint8_t *hash)
{
    const char *env = getenv("LOOM_BLOB_LOCAL");
    if (!c->blob_store || (env && !strcmp(env, "0")))
        return LOOM_ENOTSUP;
    void *sock = loom__client_blob(c);
    if (!sock)
        return LOOM_ENOTSUP;
    char name[64], path[PATH_MAX];
    s_put_name(name, sizeof name);
    struct stat before, after;
    if (fd >= 0 && fstat(fd, &before) != 0)
        return LOOM_EIO;
    if (snprintf(path, sizeof path, "%s/%s", c->blob_store, name) >= (int)sizeof path)
        return LOOM_ENOTSUP;
    int out = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (out < 0) {
        s_local_off(what, "cannot create a file there", strerror(errno));
        return LOOM_EIO;
    }
    s_namer namer = {.fd = fd, .mem = mem, .size = size};
    pthread_t tid;
    bool threaded = pthread_create(&tid, NULL, s_namer_main, &namer) == 0;
    int err = fd >= 0 ? s_copy_file(out, fd, size) : s_write_all(out, mem->data, mem->len);
    if (threaded)
        pthread_join(tid, NULL);
    else
        s_namer_main(&namer);
    if (close(out) != 0 && !err)
        err = errno;
    int rc = LOOM_EIO;
    if (err)
        s_local_off(what, "cannot write it there", strerror(err));
    else if (namer.rc)
        rc = namer.rc; //  the source cannot be read: the channel path says so
    else if (fd >= 0 && (fstat(fd, &after) != 0 || !s_unchanged(&before, &after)))
        //  Written meanwhile: the copy and the name may be of other bytes.
        //  The channel names what it receives.
        s_local_off(what, "the file changed while it was copied", NULL);
    else if ((rc = loom__blob_adopt(sock, name, namer.hash, size, S_UPLOAD_TIMEOUT_MS)) != 0) {
        if (rc == LOOM_ETIMEDOUT) {
            //  A late answer must not meet the next upload.
            zmq_close(c->blob);
            c->blob = NULL;
        }
        s_local_off(what, "the broker did not adopt it",
                    rc == LOOM_EPROTO ? "refused" : loom_strerror(rc));
    } else
        memcpy(hash, namer.hash, LOOM_HASH_SIZE);
    if (rc)
        unlink(path);
    return rc;
}

//  Upload a source once it is hashed. Returns 0 or a code (logged).
int
loom__blob_put(loom_client *c, const char *what, const uint8_t *hash, uint64_t size,
               loom_blob_reader rd, void *ctx)
{
    return s_put(c, what, hash, size, rd, ctx, NULL);
}

static int
s_check(loom_pipeline *p, const char *name)
{
    if (!p || !p->client)
        return LOOM_EINVAL;
    if (!loom__blob_name_valid(name)) {
        loom_log_error("loom: share name '%.80s' is invalid (1-255 bytes of A-Z a-z 0-9 . _ -, "
                       "not starting with '.')",
                       name ? name : "(null)");
        return LOOM_EINVAL;
    }
    if (p->nshares >= LOOM_WIRE_MAX_ITEMS)
        return LOOM_ETOOBIG;
    return p->client->error;
}

//  The private copy of shared bytes: an unlinked temp file in $TMPDIR
//  (else /tmp), written from the caller's buffer. Returns its fd, or -1
//  (logged: the share then cannot be restored after a broker restart).
static int
s_private_copy(const char *what, const void *data, size_t len)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/loom-share-XXXXXX", dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    int err = fd < 0 ? errno : 0;
    for (size_t off = 0; fd >= 0 && off < len;) {
        ssize_t w = write(fd, (const uint8_t *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : ENOSPC;
            close(fd);
            fd = -1;
            break;
        }
        off += (size_t)w;
    }
    if (fd < 0)
        loom_log_warning("loom: %s: cannot keep a copy in %s (%s): it cannot be restored "
                         "if the broker restarts without it",
                         what, dir, strerror(err));
    return fd;
}

int
loom_pipeline_share(loom_pipeline *p, const char *name, const void *data, size_t len)
{
    int rc = s_check(p, name);
    if (rc)
        return rc;
    if (!data && len)
        return LOOM_EINVAL;
    loom_blob_mem mem = {data, len};
    uint8_t hash[LOOM_HASH_SIZE];
    char what[320];
    snprintf(what, sizeof what, "share '%s'", name);
    if (s_put_local(p->client, what, -1, &mem, len, hash) != 0)
        rc = s_put(p->client, what, NULL, len, loom__blob_read_mem, &mem, hash);
    if (rc == 0) {
        //  An embedded cluster's broker never restarts alone: no copy.
        struct loom__share_src src = {NULL, -1};
        if (!p->client->cluster)
            src.fd = s_private_copy(what, data, len);
        s_record(p, name, hash, len, src);
    }
    return rc;
}

int
loom__blob_open_file(const char *what, const char *path, int *fd_p, uint64_t *size)
{
    *fd_p = -1;
    if (!path) {
        loom_log_error("loom: %s: no path", what);
        return LOOM_EINVAL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        loom_log_error("loom: %s: cannot open %s: %s", what, path, strerror(err));
        return err == ENOENT || err == ENOTDIR ? LOOM_ENOENT : LOOM_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        loom_log_error("loom: %s: %s is not a regular file", what, path);
        close(fd);
        return LOOM_EINVAL;
    }
    *fd_p = fd;
    *size = (uint64_t)sb.st_size;
    return 0;
}

int
loom__blob_put_file(loom_client *c, const char *what, int fd, uint64_t size, uint8_t *hash)
{
    //  Shared before and unchanged: the broker may hold it (named upload,
    //  nothing sent if it does). Else, or if its bytes no longer match
    //  that name after all: written into the broker's store if it is on
    //  this host, else unnamed; remembered if the file did not change
    //  meanwhile.
    struct stat before;
    struct timespec start;
    clock_gettime(CLOCK_REALTIME_COARSE, &start);
    bool stat_ok = fstat(fd, &before) == 0;
    int rc = LOOM_EPROTO;
    if (stat_ok && s_known_lookup(&before, hash))
        rc = s_put(c, what, hash, size, loom__blob_read_fd, &fd, NULL);
    if (rc == LOOM_EPROTO) {
        rc = s_put_local(c, what, fd, NULL, size, hash);
        if (rc)
            rc = s_put(c, what, NULL, size, loom__blob_read_fd, &fd, hash);
        if (rc == 0 && stat_ok && s_settled(fd, &before, size, &start))
            s_known_add(&before, hash);
    }
    return rc;
}

int
loom_pipeline_share_file(loom_pipeline *p, const char *name, const char *path)
{
    int rc = s_check(p, name);
    if (rc)
        return rc;
    char what[320];
    snprintf(what, sizeof what, "share '%s'", name);
    int fd;
    uint64_t size = 0;
    rc = loom__blob_open_file(what, path, &fd, &size);
    if (rc)
        return rc;
    uint8_t hash[LOOM_HASH_SIZE];
    rc = loom__blob_put_file(p->client, what, fd, size, hash);
    if (rc == LOOM_EIO)
        loom_log_error("loom: %s: cannot read %s", what, path);
    close(fd);
    if (rc == 0) {
        char *abs = realpath(path, NULL); //  the cwd may change before a restart
        s_record(p, name, hash, size, (struct loom__share_src){abs ? abs : loom_xstrdup(path), -1});
    }
    return rc;
}

int
loom__pipeline_shares_restore(loom_pipeline *p, char *err, size_t err_len)
{
    for (size_t i = 0; i < p->nshares; i++) {
        const loom_wire_file *sh = &p->shares[i];
        struct loom__share_src *src = &p->share_src[i];
        char what[320];
        snprintf(what, sizeof what, "share '%s'", sh->name);
        //  A file that cannot be opened now still passes if the broker has
        //  the blob: the reader is only called for what it lacks.
        int fd = src->fd;
        if (src->path)
            fd = open(src->path, O_RDONLY | O_CLOEXEC);
        int rc = loom__blob_put(p->client, what, sh->hash.data, sh->size, loom__blob_read_fd, &fd);
        if (src->path && fd >= 0)
            close(fd);
        if (rc == 0)
            continue;
        if (src->path && fd < 0)
            snprintf(err, err_len, "share '%s' lost by the restarted broker: cannot open %s",
                     sh->name, src->path);
        else if (src->path && (rc == LOOM_EPROTO || rc == LOOM_EIO))
            snprintf(err, err_len,
                     "share '%s' lost by the restarted broker: file %s changed since it "
                     "was shared (its hash no longer matches)",
                     sh->name, src->path);
        else if (!src->path && src->fd < 0)
            snprintf(err, err_len,
                     "share '%s' lost by the restarted broker: the client kept no copy", sh->name);
        else
            snprintf(err, err_len, "share '%s' lost by the restarted broker: upload failed: %s",
                     sh->name, loom_strerror(rc));
        return LOOM_ECONNECT;
    }
    return 0;
}
