/*  upload_hasher: names a blob as it arrives, on background threads,
    block by block (see upload_hasher.h).

    One pool per process: its threads start with the first upload that
    needs them and wait on a condition variable for the rest of the
    process's life, with every signal blocked (signals are the main
    thread's). A job is one block of one upload, copied into one of the
    upload's S_BUFS block buffers; the pool's one mutex guards the queue,
    the uploads' spare buffers and their counts of blocks in progress (a
    job is ~2.5 ms of hashing, so the lock is never busy).

    The copy costs the writer ~0.05 s a GiB; reading the blocks back from
    the file instead cost the hashing threads ~0.25 s a GiB (page cache
    to user copy), measured on the bench machine.  */

#include "upload_hasher.h"

#include "base.h"
#include "blob_hash.h"

#include <czmq.h>

#include <pthread.h>
#include <signal.h>
#include <string.h>

#define S_BUFS 3 //  block buffers an upload may have: one filling, two hashing

typedef struct s_job {
    loom_upload_hasher *owner;
    uint64_t index;
    uint8_t *buf; //  the block's bytes: one of the owner's buffers
    size_t len;
    struct s_job *next;
} s_job;

struct loom_upload_hasher {
    uint64_t total;
    uint64_t blocks;        //  blocks in the whole blob
    uint64_t queued;        //  blocks queued so far, from the first
    uint8_t *digests;       //  LOOM_BLOB_HASH_LEN bytes a block
    uint8_t *fill;          //  the block being filled, or NULL
    size_t filled;          //  bytes in it
    size_t nbufs;           //  buffers made, at most S_BUFS
    size_t pending;         //  blocks queued or being hashed (under the pool's lock)
    uint8_t *spare[S_BUFS]; //  buffers free again (under the lock)
    size_t nspare;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work; //  a job was queued
    pthread_cond_t done; //  a job ended
    s_job *head, *tail;
} s_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL,
            NULL};

static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void *
s_thread(void *arg)
{
    (void)arg;
    EVP_MD_CTX *md = loom__blob_sha256_new();
    pthread_mutex_lock(&s_pool.lock);
    for (;;) {
        while (!s_pool.head)
            pthread_cond_wait(&s_pool.work, &s_pool.lock);
        s_job *job = s_pool.head;
        s_pool.head = job->next;
        if (!s_pool.head)
            s_pool.tail = NULL;
        loom_upload_hasher *h = job->owner;
        pthread_mutex_unlock(&s_pool.lock);

        int ok = EVP_DigestUpdate(md, job->buf, job->len);
        LOOM_ASSERT(ok == 1);
        loom__blob_sha256_final(md, h->digests + job->index * LOOM_BLOB_HASH_LEN);

        pthread_mutex_lock(&s_pool.lock);
        h->spare[h->nspare++] = job->buf;
        h->pending--;
        free(job);
        pthread_cond_broadcast(&s_pool.done);
    }
    return NULL;
}

static void
s_start(void)
{
    int n = loom__blob_hash_threads();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        int rc = pthread_create(&t, NULL, s_thread, NULL);
        LOOM_ASSERT(rc == 0);
        pthread_detach(t);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

loom_upload_hasher *
loom_upload_hasher_new(uint64_t total)
{
    pthread_once(&s_once, s_start);
    loom_upload_hasher *self = loom_xcalloc(1, sizeof *self);
    self->total = total;
    self->blocks = (total + LOOM_BLOB_HASH_BLOCK - 1) / LOOM_BLOB_HASH_BLOCK;
    self->digests = loom_xmalloc(self->blocks ? self->blocks * LOOM_BLOB_HASH_LEN : 1);
    return self;
}

//  A buffer for the next block: a new one while fewer than S_BUFS exist,
//  else the first one the hashing threads give back.
static uint8_t *
s_buffer(loom_upload_hasher *self)
{
    pthread_mutex_lock(&s_pool.lock);
    while (self->nspare == 0 && self->nbufs == S_BUFS)
        pthread_cond_wait(&s_pool.done, &s_pool.lock);
    uint8_t *buf = self->nspare ? self->spare[--self->nspare] : NULL;
    pthread_mutex_unlock(&s_pool.lock);
    if (!buf) {
        buf = loom_xmalloc(LOOM_BLOB_HASH_BLOCK);
        self->nbufs++;
    }
    return buf;
}

//  Queue the block being filled.
static void
s_queue(loom_upload_hasher *self)
{
    s_job *job = loom_xmalloc(sizeof *job);
    *job = (s_job){self, self->queued++, self->fill, self->filled, NULL};
    self->fill = NULL;
    self->filled = 0;
    pthread_mutex_lock(&s_pool.lock);
    if (s_pool.tail)
        s_pool.tail->next = job;
    else
        s_pool.head = job;
    s_pool.tail = job;
    self->pending++;
    pthread_cond_signal(&s_pool.work);
    pthread_mutex_unlock(&s_pool.lock);
}

void
loom_upload_hasher_update(loom_upload_hasher *self, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t done = self->queued * LOOM_BLOB_HASH_BLOCK + self->filled;
    LOOM_ASSERT(len <= self->total - done);
    while (len > 0) {
        if (!self->fill)
            self->fill = s_buffer(self);
        size_t room = (size_t)LOOM_BLOB_HASH_BLOCK - self->filled;
        size_t n = len < room ? len : room;
        memcpy(self->fill + self->filled, p, n);
        self->filled += n;
        done += n;
        p += n;
        len -= n;
        if (self->filled == LOOM_BLOB_HASH_BLOCK || done == self->total)
            s_queue(self);
    }
}

void
loom_upload_hasher_final(loom_upload_hasher *self, uint8_t *hash)
{
    LOOM_ASSERT(self->queued == self->blocks);
    pthread_mutex_lock(&s_pool.lock);
    while (self->pending > 0)
        pthread_cond_wait(&s_pool.done, &s_pool.lock);
    pthread_mutex_unlock(&s_pool.lock);
    loom__blob_name_of_digests(self->digests, self->blocks, hash);
}

void
loom_upload_hasher_destroy(loom_upload_hasher **self_p)
{
    LOOM_ASSERT(self_p);
    loom_upload_hasher *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock(&s_pool.lock);
    //  Its queued blocks go; the ones being hashed are waited for.
    s_job **link = &s_pool.head;
    s_pool.tail = NULL;
    while (*link) {
        s_job *job = *link;
        if (job->owner == self) {
            *link = job->next;
            self->spare[self->nspare++] = job->buf;
            self->pending--;
            free(job);
        } else {
            s_pool.tail = job;
            link = &job->next;
        }
    }
    while (self->pending > 0)
        pthread_cond_wait(&s_pool.done, &s_pool.lock);
    pthread_mutex_unlock(&s_pool.lock);
    for (size_t i = 0; i < self->nspare; i++)
        free(self->spare[i]);
    free(self->fill);
    free(self->digests);
    free(self);
    *self_p = NULL;
}
