/*  blob_cache: a host's on-disk blob cache (see blob_cache.h).  */

#include "blob_cache.h"

#include <czmq.h>

#include "base.h"
#include "blob_hash.h"
#include "blob_transfer.h"
#include "wire.h"


#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_HEX (2 * LOOM_HASH_SIZE)
#define S_FETCH_TIMEOUT_MS 30000

struct loom_blob_cache {
    char *dir;
    char *store; //  the broker's store on this host (blobs linked from it), or NULL
    uint64_t cap;
    loom_blob_cache_stats st;
};

static void
s_hex(const uint8_t *hash, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < LOOM_HASH_SIZE; i++) {
        hex[2 * i] = digits[hash[i] >> 4];
        hex[2 * i + 1] = digits[hash[i] & 15];
    }
    hex[S_HEX] = 0;
}

static int
s_mkdir(const char *dir)
{
    return mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

//  True if the process of a pid in a name is gone (so its files are litter).
static bool
s_pid_gone(const char *digits)
{
    long pid = strtol(digits, NULL, 10);
    return pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

//  Remove what processes killed mid-way left: fetch temp files
//  (ab/<hex>.<pid>.tmp) and output dirs (out-<pid>) of dead pids.
static void
s_sweep_dead(const char *dir)
{
    DIR *top = opendir(dir);
    if (!top)
        return;
    struct dirent *e;
    while ((e = readdir(top))) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        bool out_dir = !strncmp(e->d_name, "out-", 4) && s_pid_gone(e->d_name + 4);
        if (strlen(e->d_name) != 2 && !out_dir)
            continue;
        DIR *d = opendir(sub);
        if (!d)
            continue;
        struct dirent *f;
        while ((f = readdir(d))) {
            const char *dot = strchr(f->d_name, '.');
            bool tmp = dot && dot != f->d_name && strstr(f->d_name, ".tmp") && s_pid_gone(dot + 1);
            if (f->d_name[0] != '.' && (out_dir || tmp)) {
                char path[4096 + 512];
                snprintf(path, sizeof path, "%s/%s", sub, f->d_name);
                unlink(path);
            }
        }
        closedir(d);
        if (out_dir)
            rmdir(sub);
    }
    closedir(top);
}

loom_blob_cache *
loom_blob_cache_new(const char *dir, uint64_t cap)
{
    LOOM_ASSERT(dir);
    if (s_mkdir(dir) != 0) {
        loom_log_error("blob cache: cannot create %s: %s", dir, strerror(errno));
        return NULL;
    }
    s_sweep_dead(dir);
    loom_blob_cache *self = loom_xcalloc(1, sizeof *self);
    self->dir = loom_xstrdup(dir);
    self->cap = cap ? cap : LOOM_BLOB_CACHE_DEFAULT_SIZE;
    return self;
}

void
loom_blob_cache_destroy(loom_blob_cache **self_p)
{
    LOOM_ASSERT(self_p);
    loom_blob_cache *self = *self_p;
    if (!self)
        return;
    free(self->dir);
    free(self->store);
    free(self);
    *self_p = NULL;
}

bool
loom_blob_cache_set_store(loom_blob_cache *self, const char *dir)
{
    free(self->store);
    self->store = NULL;
    if (!dir)
        return true;
    //  The one path from the wire: absolute, no . or .. component, no
    //  control bytes, short enough for DIR/ab/<hex>.
    size_t n = strlen(dir);
    bool ok = n > 1 && n < 3800 && dir[0] == '/';
    for (size_t i = 0; ok && i < n; i++) {
        if ((unsigned char)dir[i] < 0x20 || dir[i] == 0x7f)
            ok = false;
        else if (dir[i] == '/' && dir[i + 1] == '.' &&
                 (dir[i + 2] == '/' || dir[i + 2] == 0 ||
                  (dir[i + 2] == '.' && (dir[i + 3] == '/' || dir[i + 3] == 0))))
            ok = false;
    }
    if (ok)
        self->store = loom_xstrdup(dir);
    return ok;
}

void
loom_blob_cache_get_stats(const loom_blob_cache *self, loom_blob_cache_stats *st)
{
    *st = self->st;
}

//  True if path is a complete blob of size bytes; touches it (LRU).
static bool
s_present(const char *path, uint64_t size)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != size)
        return false;
    utimensat(AT_FDCWD, path, NULL, 0);
    return true;
}

typedef struct {
    char path[4096 + 128];
    uint64_t size;
    int64_t mtime_ns;
} s_entry;

static int
s_entry_cmp(const void *a, const void *b)
{
    const s_entry *x = a, *y = b;
    return x->mtime_ns < y->mtime_ns ? -1 : x->mtime_ns > y->mtime_ns;
}

//  Remove least recently used blobs until `need` more bytes fit under the
//  cap (never `keep`).
static void
s_evict(loom_blob_cache *self, uint64_t need, const char *keep)
{
    s_entry *all = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    DIR *top = opendir(self->dir);
    if (!top)
        return;
    struct dirent *e;
    while ((e = readdir(top))) {
        if (strlen(e->d_name) != 2 || e->d_name[0] == '.')
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", self->dir, e->d_name);
        DIR *d = opendir(sub);
        if (!d)
            continue;
        struct dirent *f;
        while ((f = readdir(d))) {
            if (strlen(f->d_name) != S_HEX)
                continue; //  locks, temp files, . and ..
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                all = loom_xrealloc(all, cap * sizeof *all);
            }
            s_entry *en = &all[n];
            snprintf(en->path, sizeof en->path, "%s/%s", sub, f->d_name);
            struct stat sb;
            if (stat(en->path, &sb) != 0)
                continue;
            en->size = (uint64_t)sb.st_size;
            en->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
            total += en->size;
            n++;
        }
        closedir(d);
    }
    closedir(top);
    if (n)
        qsort(all, n, sizeof *all, s_entry_cmp);
    for (size_t i = 0; i < n && total + need > self->cap; i++) {
        if (!strcmp(all[i].path, keep))
            continue;
        if (unlink(all[i].path) == 0)
            total -= all[i].size;
    }
    free(all);
}

//  True if the file at path (not a symlink) is a regular file of size
//  bytes whose blob name is hash. Its blocks are hashed on several threads
//  (loom__blob_hash_fd), each reading through its own small buffer: the
//  process's RSS stays flat.
static bool
s_verify(const char *path, const uint8_t *hash, uint64_t size)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat sb;
    bool ok = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == size;
    uint8_t got[LOOM_HASH_SIZE];
    ok = ok && loom__blob_hash_fd(fd, size, got) == 0 && loom__blob_hash_equal(got, hash);
    close(fd);
    return ok;
}

//  Take the blob from the broker's store on this host by hard link (no
//  bytes move): link DIR/ab/<hex> of the store, a path built here from the
//  digest, to tmp, verify its bytes, rename into place. True when path
//  holds the verified blob; false, nothing left behind, on any error
//  (another file system, not permitted, not there: the caller fetches).
static bool
s_link(loom_blob_cache *self, const uint8_t *hash, const char *hex, uint64_t size, const char *tmp,
       const char *path)
{
    if (!self->store)
        return false;
    char src[4096 + 128];
    snprintf(src, sizeof src, "%s/%.2s/%s", self->store, hex, hex);
    unlink(tmp);
    if (link(src, tmp) != 0)
        return false;
    //  Not a regular file of the size (a symlink is linked as itself):
    //  not the store's blob, fetched without a word.
    struct stat sb;
    if (lstat(tmp, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != size) {
        unlink(tmp);
        return false;
    }
    bool ok = s_verify(tmp, hash, size);
    if (!ok) {
        self->st.corrupt++;
        loom_log_warning("blob cache: %s in the broker's store does not match its hash: not "
                         "linked, fetching",
                         src);
    }
    if (ok && rename(tmp, path) != 0)
        ok = false;
    if (!ok)
        unlink(tmp);
    else {
        self->st.linked++;
        self->st.bytes_linked += size;
    }
    return ok;
}

//  Fetch into tmp, then rename to path. Returns 0 or a code with err set.
static int
s_fetch(loom_blob_cache *self, void *dealer, const uint8_t *hash, uint64_t size, const char *tmp,
        const char *path, char *err, size_t errcap)
{
    int rc = LOOM_EPROTO;
    for (int attempt = 0; attempt < LOOM_BLOB_CACHE_TRIES && rc == LOOM_EPROTO; attempt++) {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(err, errcap, "blob cache: cannot create %s: %s", tmp, strerror(errno));
            return LOOM_EIO;
        }
        uint64_t got = 0;
        rc = loom__blob_download(dealer, hash, size, fd, S_FETCH_TIMEOUT_MS, &got);
        int werr = errno;
        self->st.bytes_in += got;
        if (rc == 0 && close(fd) != 0) {
            werr = errno;
            rc = LOOM_EIO;
        } else if (rc != 0)
            close(fd);
        if (rc == LOOM_EPROTO) {
            self->st.corrupt++;
            loom_log_warning("blob cache: %s: bytes received do not match the hash: refused, "
                             "fetching again",
                             path);
        }
        if (rc == LOOM_EIO)
            snprintf(err, errcap, "blob cache: cannot write %s (%llu bytes): %s", tmp,
                     (unsigned long long)size, strerror(werr));
    }
    if (rc == 0 && (chmod(tmp, 0444) != 0 || rename(tmp, path) != 0)) {
        snprintf(err, errcap, "blob cache: cannot store %s: %s", path, strerror(errno));
        rc = LOOM_EIO;
    }
    if (rc)
        unlink(tmp);
    if (rc == LOOM_EPROTO)
        snprintf(err, errcap, "blob cache: blob %.16s... did not match its hash in %d fetches",
                 path + strlen(path) - S_HEX, LOOM_BLOB_CACHE_TRIES);
    else if (rc == LOOM_ENOENT)
        snprintf(err, errcap, "blob %.16s... is not in the broker's store",
                 path + strlen(path) - S_HEX);
    else if (rc && rc != LOOM_EIO)
        snprintf(err, errcap, "blob cache: fetching %s: %s", path, loom_strerror(rc));
    if (rc == 0)
        self->st.fetched++;
    return rc;
}

int
loom_blob_cache_get(loom_blob_cache *self, void *dealer, const uint8_t *hash, uint64_t size,
                    char **path_p, char *err, size_t errcap)
{
    *path_p = NULL;
    err[0] = 0;
    char hex[S_HEX + 1];
    s_hex(hash, hex);
    size_t plen = strlen(self->dir) + S_HEX + 64;
    char *path = loom_xmalloc(plen);
    snprintf(path, plen, "%s/%.2s/%s", self->dir, hex, hex);
    if (s_present(path, size)) {
        self->st.hits++;
        *path_p = path;
        return 0;
    }
    if (size > self->cap) {
        snprintf(err, errcap,
                 "blob cache: blob of %llu bytes is larger than the cache (%llu bytes)",
                 (unsigned long long)size, (unsigned long long)self->cap);
        free(path);
        return LOOM_ETOOBIG;
    }
    char sub[4096], lock[4096 + 128], tmp[4096 + 128];
    snprintf(sub, sizeof sub, "%s/%.2s", self->dir, hex);
    snprintf(lock, sizeof lock, "%s/%s.lock", sub, hex);
    snprintf(tmp, sizeof tmp, "%s/%s.%d.tmp", sub, hex, (int)getpid());
    int lfd = -1;
    if (s_mkdir(sub) != 0 || (lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
        snprintf(err, errcap, "blob cache: cannot use %s: %s", sub, strerror(errno));
        free(path);
        return LOOM_EIO;
    }
    while (flock(lfd, LOCK_EX) != 0 && errno == EINTR)
        ;
    int rc = 0;
    if (s_present(path, size))
        self->st.hits++; //  another process of this host fetched it meanwhile
    else {
        s_evict(self, size, path);
        if (!s_link(self, hash, hex, size, tmp, path))
            rc = s_fetch(self, dealer, hash, size, tmp, path, err, errcap);
    }
    flock(lfd, LOCK_UN);
    close(lfd);
    if (rc) {
        free(path);
        return rc;
    }
    *path_p = path;
    return 0;
}

void
loom_blob_cache_remove_dir(const char *dir)
{
    loom_remove_tree(dir, 2);
}
