/*  worker_blobs: a worker process's side of the blob channel (see
    worker_blobs.h).  */

#include "worker_blobs.h"

#include <czmq.h>

#include "base.h"
#include "blob_cache.h"
#include "blob_transfer.h"

#include <loom/loom.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct loom_worker_blobs {
    loom_blob_cache *cache; //  NULL: no cache
    char *endpoint;         //  blob endpoint, NULL until welcomed
    void *dealer;           //  to it, made at the first fetch
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
loom_worker_blobs_new(const char *cache_dir, uint64_t cache_size)
{
    loom_worker_blobs *self = loom_xcalloc(1, sizeof *self);
    if (cache_dir)
        self->cache = loom_blob_cache_new(cache_dir, cache_size);
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
        if (st.fetched || st.hits)
            loom_log_info("worker %d: blob cache: %llu bytes in, %llu fetched, %llu found, "
                          "%llu refused (bad hash)",
                          (int)getpid(), (unsigned long long)st.bytes_in,
                          (unsigned long long)st.fetched, (unsigned long long)st.hits,
                          (unsigned long long)st.corrupt);
    }
    if (self->dealer)
        zmq_close(self->dealer);
    loom_blob_cache_destroy(&self->cache);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void
loom_worker_blobs_set_endpoint(loom_worker_blobs *self, const char *welcome_ep,
                               const char *task_ep)
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

static char *
s_reason(const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char *r = loom_xmalloc(n);
    snprintf(r, n, fmt, a, b);
    return r;
}

int
loom_worker_blobs_fetch(loom_worker_blobs *self, const char *what, const loom_wire_file *f,
                        char **path, char **reason)
{
    *path = NULL;
    *reason = NULL;
    if (!self->cache) {
        *reason = s_reason("%s: this worker has no blob cache%s", what, "");
        return LOOM_ENOTSUP;
    }
    if (!self->dealer && self->endpoint)
        self->dealer = loom__blob_dealer(zsys_init(), self->endpoint);
    if (!self->dealer) {
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
