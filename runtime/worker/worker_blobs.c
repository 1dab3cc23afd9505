/*  worker_blobs: a worker process's side of the blob channel (see
    worker_blobs.h).  */

#include "worker_blobs.h"

#include <czmq.h>

#include "base.h"
#include "blob_cache.h"
#include "blob_transfer.h"
#include "safe_paths.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct loom_worker_blobs {
    loom_blob_cache *cache; //  NULL: no cache
    char *cache_dir;
    char *out_dir;        //  output files of the running item, made at first use
    char *endpoint;       //  blob endpoint, NULL until welcomed
    void *dealer;         //  to it, made at the first fetch
    char *cert_path;      //  CURVE keys for it, or NULL
    char *server_key;
    uint64_t reported_in; //  cache bytes_in already reported
    uint64_t out_bytes;   //  output file bytes sent, not yet reported
};

loom_file_list *
loom_file_list_copy(const loom_wire_file *files, size_t n)
{
    loom_file_list *self = loom_xcalloc(1, sizeof *self);
    self->files = loom_xcalloc(n ? n : 1, sizeof *self->files);
    for (size_t i = 0; i < n; i++) {
        self->files[i].name = loom_xstrdup(files[i].name);
        uint8_t *h = loom_xmalloc(LOOM_HASH_SIZE);
        memcpy(h, files[i].hash.data, LOOM_HASH_SIZE);
        self->files[i].hash = (loom_span){h, LOOM_HASH_SIZE};
        self->files[i].size = files[i].size;
    }
    self->n = n;
    return self;
}

void
loom_file_list_free(loom_file_list **self_p)
{
    loom_file_list *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->n; i++) {
        free((char *)self->files[i].name);
        free((void *)self->files[i].hash.data);
    }
    free(self->files);
    free(self);
    *self_p = NULL;
}

loom_worker_blobs *
loom_worker_blobs_new(const char *cache_dir, uint64_t cache_size, const char *cert_path,
                      const char *server_key)
{
    loom_worker_blobs *self = loom_xcalloc(1, sizeof *self);
    self->cert_path = cert_path ? loom_xstrdup(cert_path) : NULL;
    self->server_key = server_key ? loom_xstrdup(server_key) : NULL;
    if (cache_dir)
        self->cache = loom_blob_cache_new(cache_dir, cache_size);
    if (self->cache)
        self->cache_dir = loom_xstrdup(cache_dir);
    return self;
}

void
loom_worker_blobs_destroy(loom_worker_blobs **self_p)
{
    loom_worker_blobs *self = *self_p;
    if (!self)
        return;
    if (self->cache) {
        loom_blob_cache_stats st;
        loom_blob_cache_get_stats(self->cache, &st);
        if (st.fetched || st.hits || st.linked)
            loom_log_info("worker %d: blob cache: %llu bytes in, %llu fetched, %llu linked from "
                          "the store (%llu bytes, not moved), %llu found, %llu refused (bad hash)",
                          (int)getpid(), (unsigned long long)st.bytes_in,
                          (unsigned long long)st.fetched, (unsigned long long)st.linked,
                          (unsigned long long)st.bytes_linked, (unsigned long long)st.hits,
                          (unsigned long long)st.corrupt);
    }
    if (self->dealer)
        zmq_close(self->dealer);
    loom_blob_cache_destroy(&self->cache);
    if (self->out_dir)
        rmdir(self->out_dir);
    free(self->out_dir);
    free(self->cache_dir);
    free(self->cert_path);
    free(self->server_key);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void
loom_worker_blobs_set_endpoint(loom_worker_blobs *self, const char *welcome_ep, const char *task_ep)
{
    char *ep = loom__blob_endpoint(welcome_ep, task_ep);
    if (self->endpoint && ep && !strcmp(ep, self->endpoint)) {
        free(ep);
        return;
    }
    if (self->dealer)
        zmq_close(self->dealer);
    self->dealer = NULL;
    free(self->endpoint);
    self->endpoint = ep;
}

void
loom_worker_blobs_set_store(loom_worker_blobs *self, const char *store_dir)
{
    if (self->cache && !loom_blob_cache_set_store(self->cache, store_dir))
        loom_log_warning("worker %d: blob store directory from the broker is not a plain "
                         "absolute path: ignored, blobs are fetched",
                         (int)getpid());
}

static char *
s_reason(const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char *r = loom_xmalloc(n);
    snprintf(r, n, fmt, a, b);
    return r;
}

//  The DEALER to the blob channel, made now if needed; NULL if there is none.
static void *
s_dealer(loom_worker_blobs *self)
{
    if (!self->dealer && self->endpoint)
        self->dealer =
            loom__blob_dealer(zsys_init(), self->endpoint, self->cert_path, self->server_key);
    return self->dealer;
}

int
loom_worker_blobs_fetch(loom_worker_blobs *self, const char *what, const loom_wire_file *f,
                        char **path, char **reason)
{
    *path = NULL;
    *reason = NULL;
    //  Share and item file names come from the broker: one check before
    //  anything else (blob paths are built from the hash alone).
    if (!loom_file_name_valid(f->name)) {
        char name[96];
        snprintf(name, sizeof name, "%.80s", f->name ? f->name : "(null)");
        for (char *c = name; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
        *reason = s_reason("name '%s' is invalid (1-255 bytes of A-Z a-z 0-9 . _ -, not "
                           "starting with '.')%s",
                           name, "");
        return LOOM_EINVAL;
    }
    if (!self->cache) {
        *reason = s_reason("%s: this worker has no blob cache%s", what, "");
        return LOOM_ENOTSUP;
    }
    if (!s_dealer(self)) {
        *reason = s_reason("%s: the broker has no blob channel%s", what, "");
        return LOOM_ENOTSUP;
    }
    char err[1024];
    int rc = loom_blob_cache_get(self->cache, self->dealer, f->hash.data, f->size, path, err,
                                 sizeof err);
    if (rc) {
        *reason = s_reason("%s: %s", what, err);
        if (rc == LOOM_ETIMEDOUT) {
            //  Late answers may still come: the next fetch starts clean.
            zmq_close(self->dealer);
            self->dealer = NULL;
        }
    }
    return rc;
}

int
loom_worker_blobs_open_shares(loom_worker_blobs *self, loom_executor *exec, uint64_t map,
                              const loom_file_list *shares, char **reason)
{
    *reason = NULL;
    size_t n = shares->n;
    const char **names = loom_xcalloc(n ? n : 1, sizeof *names);
    char **paths = loom_xcalloc(n ? n : 1, sizeof *paths);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char what[320];
        snprintf(what, sizeof what, "share '%s'", shares->files[i].name);
        names[i] = shares->files[i].name;
        rc = loom_worker_blobs_fetch(self, what, &shares->files[i], &paths[i], reason);
    }
    if (rc == 0)
        rc = loom_executor_set_shares(exec, map, names, (const char *const *)paths, n, reason);
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
    free(names);
    return rc;
}

void
loom_wire_files_free(loom_wire_file *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)files[i].name);
        free((void *)files[i].hash.data);
    }
    free(files);
}

const char *
loom_worker_blobs_out_dir(loom_worker_blobs *self)
{
    if (!self->out_dir && self->cache_dir) {
        size_t n = strlen(self->cache_dir) + 32;
        char *dir = loom_xmalloc(n);
        snprintf(dir, n, "%s/out-%d", self->cache_dir, (int)getpid());
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            loom_log_error("worker %d: cannot create %s: %s", (int)getpid(), dir, strerror(errno));
            free(dir);
            return NULL;
        }
        self->out_dir = dir;
    }
    return self->out_dir;
}

int
loom_worker_blobs_put_outputs(loom_worker_blobs *self, const char *const *names,
                              const char *const *paths, size_t n, loom_wire_file **files_p,
                              size_t *n_p, char **reason)
{
    *files_p = NULL;
    *n_p = 0;
    *reason = NULL;
    loom_wire_file *files = loom_xcalloc(n ? n : 1, sizeof *files);
    size_t k = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (lstat(paths[i], &sb) != 0)
            continue; //  asked for a path, wrote nothing there
        char what[320];
        snprintf(what, sizeof what, "output file '%s'", names[i]);
        int fd = -1;
        uint64_t size = 0;
        uint8_t hash[LOOM_HASH_SIZE];
        if (rc == 0 && !S_ISREG(sb.st_mode)) {
            *reason = s_reason("%s: %s is not a regular file", what, paths[i]);
            rc = LOOM_EINVAL;
        }
        if (rc == 0 && (rc = loom__blob_open_file(what, paths[i], &fd, &size)) != 0)
            *reason = s_reason("%s: cannot read %s", what, paths[i]);
        if (rc == 0) {
            //  Unnamed: the broker hashes the bytes as they arrive and
            //  answers with their name (no pass over the file first).
            uint64_t sent = 0;
            rc = s_dealer(self) ? loom__blob_upload_unnamed(self->dealer, size, loom__blob_read_fd,
                                                          &fd, 30000, &sent, hash)
                              : LOOM_ENOTSUP;
            self->out_bytes += sent;
            if (rc)
                *reason = s_reason("%s: upload failed: %s", what, loom_strerror(rc));
            if (rc && self->dealer) {
                //  Late answers may come, and the broker may hold a part
                //  (an upload asked for again resumes): start clean.
                zmq_close(self->dealer);
                self->dealer = NULL;
            }
        }
        if (fd >= 0)
            close(fd);
        unlink(paths[i]);
        if (rc == 0) {
            files[k].name = loom_xstrdup(names[i]);
            uint8_t *h = loom_xmalloc(LOOM_HASH_SIZE);
            memcpy(h, hash, LOOM_HASH_SIZE);
            files[k].hash = (loom_span){h, LOOM_HASH_SIZE};
            files[k].size = size;
            k++;
        }
    }
    if (rc) {
        loom_wire_files_free(files, k);
        return rc;
    }
    *files_p = files;
    *n_p = k;
    return 0;
}

void
loom_worker_blobs_take_counts(loom_worker_blobs *self, uint64_t *in, uint64_t *out)
{
    *in = *out = 0;
    if (self->cache) {
        loom_blob_cache_stats st;
        loom_blob_cache_get_stats(self->cache, &st);
        *in = st.bytes_in - self->reported_in;
        self->reported_in = st.bytes_in;
    }
    *out = self->out_bytes;
    self->out_bytes = 0;
}
