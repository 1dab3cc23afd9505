/*  scheduler: maps and their items for the broker: item queues, submit
    (slabs, dedup, the clients' batches), results, and the fail, halt and
    cancel bookkeeping. See scheduler.h. No sockets, no I/O. Workers,
    credit and batch picking are in sched_credit.c, reduce folding in
    sched_reduce.c, retry backoff in sched_retry.c, the containers in
    sched_table.c.

    An item is always in exactly one place: its map's queue, in flight on
    one worker (on that worker's list and in its map's in-flight table), or
    its map's failed list. Every index a map accepted is remembered in its
    `seen` bitmap (a window sliding over dense indices), so duplicates are
    refused whether the item is queued, in flight or finished.  */

#include "scheduler_priv.h"

#include "base.h"
#include "block_cache.h"
#include "failure_policy.h"

#include <czmq.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

//  Items with small inputs are carved front to back from slabs of
//  S_SLAB_SIZE bytes: one malloc for a dozen items or so, not one each
//  (the broker holds up to a window of items per client, more than a
//  per-thread cache of blocks keeps). A slab is freed with its last item
//  once it is no longer the one being carved; a long-lived item keeps its
//  whole slab, which S_SLAB_SIZE bounds.
#define S_SLAB_SIZE LOOM_SLAB_SIZE
#define S_SLAB_HEAD 16 //  the header, rounded up to keep items 16-aligned

typedef struct loom_sched_slab {
    size_t live; //  items carved and not freed, +1 while it is being carved
    size_t used; //  bytes carved so far, header included
} s_slab;

_Static_assert(sizeof(s_slab) <= S_SLAB_HEAD, "slab header fits before the first item");

static s_slab *
s_slab_new(void)
{
    s_slab *slab = loom__slab_alloc();
    slab->live = 1;
    slab->used = S_SLAB_HEAD;
    return slab;
}

static void
s_slab_free(s_slab *slab)
{
    loom__slab_free(slab);
}

static void s_chunk_unref(loom_sched_chunk *c);

void
loom_sched_item_free(loom_sched_item **item_p)
{
    LOOM_ASSERT(item_p);
    loom_sched_item *it = *item_p;
    if (!it)
        return;
    if (it->files) {
        for (size_t i = 0; i < it->nfiles; i++)
            free(it->files[i].name);
        free(it->files);
    }
    if (it->data != (uint8_t *)(it + 1))
        free(it->data);
    if (it->reason)
        free(it->reason);
    if (it->chunk)
        s_chunk_unref(it->chunk);
    s_slab *slab = it->slab;
    if (!slab)
        free(it);
    else if (--slab->live == 0)
        s_slab_free(slab);
    *item_p = NULL;
}

//  Every field zero but the slab, one store each: a memset of the item
//  became `rep stos`, whose start-up cost made it the hottest instruction
//  of the broker thread (perf).
_Static_assert(sizeof(loom_sched_item) == 136, "s_item_clear sets every field of an item");

static inline void
s_item_clear(loom_sched_item *it, s_slab *slab)
{
    it->index = 0;
    it->attempt = 0;
    it->fails = 0;
    it->data = NULL;
    it->len = 0;
    it->nfiles = 0;
    it->files = NULL;
    it->solo = false;
    it->batch = 0;
    it->status = 0;
    it->avoid = 0;
    it->reason = NULL;
    it->map = NULL;
    it->worker = NULL;
    it->prev = it->next = NULL;
    it->slab = slab;
    it->chunk = NULL;
    it->slot = 0;
}

//  A zeroed item with room for len bytes of input after it.
static loom_sched_item *
s_item_alloc(loom_sched *self, size_t len)
{
    size_t need = (sizeof(loom_sched_item) + len + 15) & ~(size_t)15;
    if (need > (S_SLAB_SIZE - S_SLAB_HEAD) / 4) {
        loom_sched_item *it = loom_xmalloc(sizeof *it + len);
        s_item_clear(it, NULL);
        return it;
    }
    s_slab *slab = self->slab;
    if (!slab || slab->used + need > S_SLAB_SIZE) {
        if (slab && --slab->live == 0)
            s_slab_free(slab);
        slab = s_slab_new();
        self->slab = slab;
    }
    loom_sched_item *it = (loom_sched_item *)((uint8_t *)slab + slab->used);
    slab->used += need;
    slab->live++;
    s_item_clear(it, slab);
    return it;
}

//  ---------------------------------------------------------------------

loom_sched *
loom_sched_new(void)
{
    loom_sched *self = loom_xcalloc(1, sizeof *self);
    self->next_id = 1;
    return self;
}

void
loom_sched_destroy(loom_sched **self_p)
{
    LOOM_ASSERT(self_p);
    loom_sched *self = *self_p;
    if (!self)
        return;
    while (self->head) {
        loom_sched_map *m = self->head;
        loom_sched_map_destroy(self, &m);
    }
    while (self->workers) {
        loom_sched_worker *w = self->workers;
        loom_sched_worker_remove(self, &w, "broker stopped", false);
    }
    //  Removing workers may have put items back on maps already gone: none,
    //  since maps went first; the failed lists are empty too.
    loom__u64map_free(&self->maps);
    if (self->slab && --self->slab->live == 0)
        s_slab_free(self->slab);
    free(self);
    *self_p = NULL;
}

size_t
loom_sched_map_count(const loom_sched *self)
{
    return self->nmaps - self->ncancelled;
}

uint64_t
loom_sched_cancelling(const loom_sched *self)
{
    return self->cancelling;
}

uint64_t
loom_sched_queued(const loom_sched *self)
{
    return self->queued + self->waiting;
}

uint64_t
loom_sched_in_flight(const loom_sched *self)
{
    return self->in_flight;
}

uint64_t
loom_sched_retried(const loom_sched *self)
{
    return self->retried;
}

//  ---------------------------------------------------------------------
//  Maps

static char *
s_dup_or_empty(const char *s)
{
    return loom_xstrdup(s ? s : "");
}

loom_sched_map *
loom_sched_map_new(loom_sched *self, const loom_sched_def *def, void *owner, uint64_t owner_id)
{
    LOOM_ASSERT(self && def);
    loom_sched_map *m = loom_xcalloc(1, sizeof *m);
    m->id = self->next_id++;
    m->owner = owner;
    m->owner_id = owner_id;
    m->def = *def;
    m->def.plugin = s_dup_or_empty(def->plugin);
    m->def.version = s_dup_or_empty(def->version);
    m->def.task = s_dup_or_empty(def->task);
    void *args = loom_xmalloc(def->args_len);
    if (def->args_len)
        memcpy(args, def->args, def->args_len);
    m->def.args = args;
    m->def.retries = def->retries == 0 ? 2 : def->retries < 0 ? 0 : def->retries;
    if (m->def.chunk > LOOM_SCHED_MAX_BATCH)
        m->def.chunk = LOOM_SCHED_MAX_BATCH;
    m->prev = self->tail;
    if (self->tail)
        self->tail->next = m;
    else
        self->head = m;
    self->tail = m;
    loom__u64map_put(&self->maps, m->id, m);
    self->nmaps++;
    return m;
}

//  Take an in-flight item off its worker and out of its map's table.
void
loom__unflight(loom_sched *self, loom_sched_item *it)
{
    LOOM_ASSERT(it->worker);
    loom__list_remove(&it->worker->items, it);
    loom__flight_del(&it->map->in_flight, it);
    it->worker = NULL;
    self->in_flight--;
    if (it->map->cancelled)
        self->cancelling--;
}

void
loom_sched_map_destroy(loom_sched *self, loom_sched_map **map_p)
{
    LOOM_ASSERT(self && map_p);
    loom_sched_map *m = *map_p;
    if (!m)
        return;
    self->queued -= m->queue.n;
    loom__list_free(&m->queue);
    //  In-flight items live on their workers' lists: walk the table.
    size_t pos = 0;
    for (loom_sched_item *it; (it = loom__flight_next(&m->in_flight, &pos)); pos++) {
        loom__list_remove(&it->worker->items, it);
        self->in_flight--;
        if (m->cancelled)
            self->cancelling--;
        loom_sched_item_free(&it);
    }
    if (m->cancelled)
        self->ncancelled--;
    loom__flight_free(&m->in_flight);
    loom__list_free(&m->failed);
    self->waiting -= m->waiting.n;
    loom__list_free(&m->waiting);
    while (m->combines) {
        loom_sched_combine *c = m->combines;
        m->combines = c->next;
        loom__comb_free(&c);
    }
    loom__partials_clear(m);
    free(m->pdata);
    free(m->plen);
    free(m->seen);
    free(m->fail_msg);
    free((char *)m->def.plugin);
    free((char *)m->def.version);
    free((char *)m->def.task);
    free((void *)m->def.args);
    if (self->rr == m)
        self->rr = m->next;
    if (m->prev)
        m->prev->next = m->next;
    else
        self->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        self->tail = m->prev;
    loom__u64map_del(&self->maps, m->id);
    self->nmaps--;
    free(m);
    *map_p = NULL;
}

loom_sched_map *
loom_sched_map_find(loom_sched *self, uint64_t id)
{
    return loom__u64map_get(&self->maps, id);
}

loom_sched_map *
loom_sched_map_first(loom_sched *self)
{
    return self->head;
}

loom_sched_map *
loom_sched_map_next(loom_sched_map *map)
{
    return map->next;
}

uint64_t
loom_sched_map_id(const loom_sched_map *map)
{
    return map->id;
}

void *
loom_sched_map_owner(const loom_sched_map *map)
{
    return map->owner;
}

uint64_t
loom_sched_map_owner_id(const loom_sched_map *map)
{
    return map->owner_id;
}

const loom_sched_def *
loom_sched_map_def(const loom_sched_map *map)
{
    return &map->def;
}

size_t
loom_sched_map_queued(const loom_sched_map *map)
{
    return map->queue.n;
}

size_t
loom_sched_map_in_flight(const loom_sched_map *map)
{
    return map->in_flight.n;
}

uint64_t
loom_sched_map_done(const loom_sched_map *map)
{
    return map->done;
}

//  Mark index seen. Returns 0, LOOM_ESTATE if it was already, LOOM_ETOOBIG
//  if it lies too far beyond the window.
static int
s_seen_mark(loom_sched_map *m, uint64_t index)
{
    if (index < m->seen_base)
        return LOOM_ESTATE;
    uint64_t off = index - m->seen_base;
    if (off >= LOOM_SCHED_MAX_AHEAD)
        return LOOM_ETOOBIG;
    size_t word = (size_t)(off / 64);
    uint64_t bit = 1ULL << (off % 64);
    if (word >= m->seen_words) {
        size_t n = m->seen_words ? m->seen_words : 4;
        while (n <= word)
            n *= 2;
        m->seen = loom_xrealloc(m->seen, n * sizeof *m->seen);
        memset(m->seen + m->seen_words, 0, (n - m->seen_words) * sizeof *m->seen);
        m->seen_words = n;
    }
    if (m->seen[word] & bit)
        return LOOM_ESTATE;
    m->seen[word] |= bit;
    //  Slide the window past full leading words, which can only start
    //  when the first word fills up.
    if (word != 0 || m->seen[0] != UINT64_MAX)
        return 0;
    size_t full = 0;
    while (full < m->seen_words && m->seen[full] == UINT64_MAX)
        full++;
    if (full) {
        memmove(m->seen, m->seen + full, (m->seen_words - full) * sizeof *m->seen);
        memset(m->seen + m->seen_words - full, 0, full * sizeof *m->seen);
        m->seen_base += 64 * (uint64_t)full;
    }
    return 0;
}

void
loom__fail_item(loom_sched_map *m, loom_sched_item *it, int status, const char *message)
{
    it->status = status;
    if (message) {
        free(it->reason);
        it->reason = loom_xstrdup(message);
    }
    loom__list_push_back(&m->failed, it);
    m->done++;
}

loom_sched_chunk *
loom_sched_chunk_new(void *msg, void (*destroy)(void *msg), size_t n)
{
    LOOM_ASSERT(msg && destroy);
    loom_sched_chunk *c = loom_xcalloc(1, sizeof *c);
    c->msg = msg;
    c->destroy = destroy;
    c->n = n;
    c->refs = 1;
    return c;
}

static void
s_chunk_drop_msg(loom_sched_chunk *c)
{
    if (c->msg) {
        c->destroy(c->msg);
        c->msg = NULL;
    }
}

static void
s_chunk_unref(loom_sched_chunk *c)
{
    if (--c->refs == 0) {
        s_chunk_drop_msg(c);
        free(c);
    }
}

void
loom_sched_chunk_done(loom_sched_chunk **chunk_p, bool whole)
{
    LOOM_ASSERT(chunk_p);
    loom_sched_chunk *c = *chunk_p;
    if (!c)
        return;
    if (!whole)
        s_chunk_drop_msg(c);
    s_chunk_unref(c);
    *chunk_p = NULL;
}

void *
loom_sched_batch_whole(loom_sched_batch *b)
{
    LOOM_ASSERT(b);
    if (b->combine || b->n == 0)
        return NULL;
    //  A chunk still holding its message has had no item dispatched: its
    //  items are on their first run, in submission order in the queue.
    loom_sched_chunk *c = b->items[0]->chunk;
    bool whole = c && c->msg && c->n == b->n;
    for (size_t i = 0; whole && i < b->n; i++)
        whole = b->items[i]->chunk == c && b->items[i]->slot == i;
    if (whole) {
        void *msg = c->msg;
        c->msg = NULL;
        return msg;
    }
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i]->chunk)
            s_chunk_drop_msg(b->items[i]->chunk);
    return NULL;
}

int
loom_sched_submit(loom_sched *self, loom_sched_map *map, uint64_t index, const void *data,
                  size_t len, const loom_sched_file *files, size_t nfiles)
{
    return loom_sched_submit_from(self, map, NULL, 0, index, data, len, files, nfiles);
}

int
loom_sched_submit_from(loom_sched *self, loom_sched_map *map, loom_sched_chunk *chunk,
                       uint32_t slot, uint64_t index, const void *data, size_t len,
                       const loom_sched_file *files, size_t nfiles)
{
    LOOM_ASSERT(self && map);
    int rc = s_seen_mark(map, index);
    if (rc)
        return rc;
    //  One allocation: the input lives right after the item.
    loom_sched_item *it = s_item_alloc(self, len);
    if (chunk) {
        it->chunk = chunk;
        it->slot = slot;
        chunk->refs++;
    }
    it->index = index;
    it->map = map;
    it->len = len;
    it->data = (uint8_t *)(it + 1);
    loom_copy(it->data, data, len);
    if (nfiles) {
        it->files = loom_xcalloc(nfiles, sizeof *it->files);
        it->nfiles = nfiles;
        for (size_t i = 0; i < nfiles; i++) {
            it->files[i] = files[i];
            it->files[i].name = s_dup_or_empty(files[i].name);
            if (it->files[i].hash_len > sizeof it->files[i].hash)
                it->files[i].hash_len = sizeof it->files[i].hash;
        }
    }
    if (map->is_failed)
        loom__fail_item(map, it, map->fail_status, map->fail_msg);
    else {
        loom__list_push_back(&map->queue, it);
        self->queued++;
    }
    return 0;
}

void
loom_sched_map_set_count(loom_sched_map *map, uint64_t count)
{
    map->count = count;
    map->count_known = true;
}

void
loom_sched_map_fail(loom_sched *self, loom_sched_map *map, int status, const char *message)
{
    if (map->is_failed)
        return;
    map->fold_failed = loom_sched_map_state(map) == LOOM_SCHED_FOLDING;
    map->is_failed = true;
    map->fail_status = status;
    map->fail_msg = loom_xstrdup(message ? message : "");
    while (map->queue.head) {
        loom_sched_item *it = map->queue.head;
        loom__list_remove(&map->queue, it);
        self->queued--;
        loom__fail_item(map, it, status, map->fail_msg);
    }
    size_t pos = 0;
    for (loom_sched_item *it; (it = loom__flight_next(&map->in_flight, &pos));) {
        loom__unflight(self, it);
        loom__fail_item(map, it, status, map->fail_msg);
    }
    while (map->waiting.head) {
        loom_sched_item *it = map->waiting.head;
        loom__list_remove(&map->waiting, it);
        self->waiting--;
        loom__fail_item(map, it, status, map->fail_msg);
    }
    while (map->combines) {
        loom_sched_combine *c = map->combines;
        map->combines = c->next;
        loom__comb_free(&c);
    }
    loom__partials_clear(map);
}

bool
loom_sched_map_failed(const loom_sched_map *map)
{
    return map->is_failed;
}

loom_sched_item *
loom_sched_map_pop_failed(loom_sched_map *map)
{
    loom_sched_item *it = map->failed.head;
    if (it)
        loom__list_remove(&map->failed, it);
    return it;
}

static size_t
s_add_worker(loom_sched_worker **out, size_t n, size_t cap, loom_sched_worker *w)
{
    for (size_t i = 0; i < n; i++)
        if (out[i] == w)
            return n;
    if (n < cap)
        out[n++] = w;
    return n;
}

size_t
loom_sched_map_workers(loom_sched_map *map, loom_sched_worker **out, size_t cap)
{
    size_t n = 0;
    size_t pos = 0;
    for (loom_sched_item *it; (it = loom__flight_next(&map->in_flight, &pos)); pos++)
        n = s_add_worker(out, n, cap, it->worker);
    for (loom_sched_combine *c = map->combines; c; c = c->next)
        n = s_add_worker(out, n, cap, c->worker);
    return n;
}

loom_sched_state
loom_sched_map_state(const loom_sched_map *map)
{
    if (!map->count_known || map->done < map->count || map->queue.n || map->in_flight.n ||
        map->failed.n || map->waiting.n)
        return LOOM_SCHED_RUNNING;
    if (map->def.reduce && !map->is_failed && (map->np > 1 || map->combines))
        return LOOM_SCHED_FOLDING;
    return LOOM_SCHED_DONE;
}

uint64_t
loom_sched_map_count_expected(const loom_sched_map *map)
{
    return map->count;
}

loom_sched_item *
loom_sched_take(loom_sched *self, loom_sched_worker *w, loom_sched_map *map, uint64_t index)
{
    loom_sched_item *it = loom__flight_get(&map->in_flight, index);
    if (!it || it->worker != w)
        return NULL;
    loom__unflight(self, it);
    map->done++;
    return it;
}

bool
loom_sched_map_count_failures(loom_sched_map *map, size_t n)
{
    if (map->is_failed || !n)
        return false;
    map->failures += n;
    uint32_t halt = map->def.halt_after_failures;
    return halt && map->failures + map->def.failures_seen >= halt;
}

void
loom_sched_map_halt(loom_sched *self, loom_sched_map *map)
{
    if (map->is_failed)
        return;
    char text[96];
    loom_halt_message(text, sizeof text, map->def.halt_after_failures);
    loom_sched_map_fail(self, map, LOOM_ECANCELED, text);
    //  A reduce's result would be the fold of whatever was done: it fails.
    if (map->def.reduce)
        map->fold_failed = true;
}

void
loom_sched_map_cancel(loom_sched *self, loom_sched_map **map_p)
{
    LOOM_ASSERT(self && map_p);
    loom_sched_map *m = *map_p;
    if (!m)
        return;
    if (!m->cancelled) {
        m->cancelled = true;
        self->ncancelled++;
        self->queued -= m->queue.n;
        loom__list_free(&m->queue);
        self->waiting -= m->waiting.n;
        loom__list_free(&m->waiting);
        loom__list_free(&m->failed);
        while (m->combines) {
            loom_sched_combine *c = m->combines;
            m->combines = c->next;
            loom__comb_free(&c);
        }
        loom__partials_clear(m);
        self->cancelling += m->in_flight.n;
    }
    if (m->in_flight.n == 0)
        loom_sched_map_destroy(self, map_p);
}

bool
loom_sched_map_cancelled(const loom_sched_map *map)
{
    return map->cancelled;
}
