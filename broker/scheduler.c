/*  scheduler: maps, item queues, in-flight tracking, dedup, batch sizing
    and round robin for the broker. See scheduler.h. No sockets, no I/O.

    An item is always in exactly one place: its map's queue, in flight on
    one worker (on that worker's list and in its map's in-flight table), or
    its map's failed list. Every index a map accepted is remembered in its
    `seen` bitmap (a window sliding over dense indices), so duplicates are
    refused whether the item is queued, in flight or finished.  */

#include "scheduler.h"

#include "base.h"
#include "block_cache.h"
#include "failure_policy.h"

#include <czmq.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

//  ---------------------------------------------------------------------
//  A small uint64 -> pointer hash table (open addressing, linear probing,
//  backward-shift deletion). Values are never NULL.

typedef struct {
    uint64_t *keys;
    void **vals;
    size_t cap; //  power of two, or 0
    size_t n;
} s_u64map;

static size_t
s_hash64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return (size_t)k;
}

static void *
s_u64map_get(const s_u64map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = s_hash64(key) & mask;; i = (i + 1) & mask) {
        if (!m->vals[i])
            return NULL;
        if (m->keys[i] == key)
            return m->vals[i];
    }
}

static void s_u64map_put(s_u64map *m, uint64_t key, void *val);

static void
s_u64map_grow(s_u64map *m)
{
    s_u64map old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->keys = loom_xcalloc(m->cap, sizeof *m->keys);
    m->vals = loom_xcalloc(m->cap, sizeof *m->vals);
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.vals[i])
            s_u64map_put(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
}

//  Insert or replace.
static void
s_u64map_put(s_u64map *m, uint64_t key, void *val)
{
    LOOM_ASSERT(val);
    if ((m->n + 1) * 2 > m->cap)
        s_u64map_grow(m);
    size_t mask = m->cap - 1;
    size_t i = s_hash64(key) & mask;
    while (m->vals[i] && m->keys[i] != key)
        i = (i + 1) & mask;
    if (!m->vals[i])
        m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
}

static void
s_u64map_del(s_u64map *m, uint64_t key)
{
    if (!m->cap)
        return;
    size_t mask = m->cap - 1;
    size_t i = s_hash64(key) & mask;
    while (m->vals[i] && m->keys[i] != key)
        i = (i + 1) & mask;
    if (!m->vals[i])
        return;
    m->vals[i] = NULL;
    m->n--;
    //  Backward shift: move later entries of the run into the hole when
    //  their home slot does not lie cyclically in (hole, j].
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->vals[j])
            break;
        size_t home = s_hash64(m->keys[j]) & mask;
        bool in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (in_range)
            continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        m->vals[j] = NULL;
        i = j;
    }
}

static void
s_u64map_free(s_u64map *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

//  ---------------------------------------------------------------------
//  A map's items in flight, by index. Indices are dense and the items in
//  flight at once lie close together, so most sit in a ring indexed by
//  `index & mask` (no hashing, no probing, no shifting on removal); an
//  item whose slot is taken goes to a hash table beside it, and the ring
//  doubles when that table holds more than a quarter of the ring's size.

#define S_RING_MIN 512
#define S_RING_MAX 65536

typedef struct {
    loom_sched_item **ring; //  slot index & mask: the item with that index, or NULL
    size_t mask;            //  ring size - 1 (no ring yet: 0)
    s_u64map spill;         //  index -> item, for items whose slot was taken
    size_t n;               //  items in flight
} s_flight;

static void s_flight_put(s_flight *f, loom_sched_item *it);

static void
s_flight_grow(s_flight *f, size_t size)
{
    s_flight old = *f;
    f->ring = loom_xcalloc(size, sizeof *f->ring);
    f->mask = size - 1;
    memset(&f->spill, 0, sizeof f->spill);
    f->n = 0;
    for (size_t i = 0; old.ring && i <= old.mask; i++)
        if (old.ring[i])
            s_flight_put(f, old.ring[i]);
    for (size_t i = 0; i < old.spill.cap; i++)
        if (old.spill.vals[i])
            s_flight_put(f, old.spill.vals[i]);
    free(old.ring);
    s_u64map_free(&old.spill);
}

static void
s_flight_put(s_flight *f, loom_sched_item *it)
{
    if (!f->ring)
        s_flight_grow(f, S_RING_MIN);
    loom_sched_item **slot = &f->ring[it->index & f->mask];
    if (!*slot)
        *slot = it;
    else {
        s_u64map_put(&f->spill, it->index, it);
        if (f->spill.n * 4 > f->mask + 1 && f->mask + 1 < S_RING_MAX) {
            f->n++;
            s_flight_grow(f, 2 * (f->mask + 1));
            return;
        }
    }
    f->n++;
}

static loom_sched_item *
s_flight_get(const s_flight *f, uint64_t index)
{
    if (!f->ring)
        return NULL;
    loom_sched_item *it = f->ring[index & f->mask];
    if (it && it->index == index)
        return it;
    return f->spill.n ? s_u64map_get(&f->spill, index) : NULL;
}

//  Take out it, which is in flight.
static void
s_flight_del(s_flight *f, loom_sched_item *it)
{
    loom_sched_item **slot = &f->ring[it->index & f->mask];
    if (*slot == it)
        *slot = NULL;
    else
        s_u64map_del(&f->spill, it->index);
    f->n--;
}

//  The first item in flight at or after position *pos (ring slots, then
//  the spill table's), or NULL. Taking out the item returned and asking
//  again from the same *pos goes on with the others.
static loom_sched_item *
s_flight_next(const s_flight *f, size_t *pos)
{
    size_t ring = f->ring ? f->mask + 1 : 0;
    for (; *pos < ring; (*pos)++)
        if (f->ring[*pos])
            return f->ring[*pos];
    for (; *pos - ring < f->spill.cap; (*pos)++)
        if (f->spill.vals[*pos - ring])
            return f->spill.vals[*pos - ring];
    return NULL;
}

static void
s_flight_free(s_flight *f)
{
    free(f->ring);
    s_u64map_free(&f->spill);
    memset(f, 0, sizeof *f);
}

//  ---------------------------------------------------------------------

typedef struct {
    loom_sched_item *head, *tail;
    size_t n;
} s_list;

struct loom_sched_map {
    uint64_t id;        //  broker-wide id
    void *owner;        //  client session (opaque)
    uint64_t owner_id;  //  client's map id
    loom_sched_def def; //  strings and args owned
    s_list queue;       //  FIFO; requeued items go to the front
    s_flight in_flight; //  index -> item
    s_list failed;      //  finished with an error, not yet popped
    s_list waiting;     //  failed, to run again once their retry backoff is over
    int64_t next_due;   //  no waiting item is due before this (a lower bound)
    uint64_t failures;  //  failed items counted for halt_after_failures
    uint64_t *seen;     //  bit i: index seen_base + i was accepted
    size_t seen_words;  //  words allocated
    uint64_t seen_base; //  every index below it was accepted
    uint64_t done;      //  items finished (result taken or failed)
    uint64_t count;     //  from MapEnd
    bool count_known;
    bool is_failed;
    int fail_status;
    char *fail_msg;
    double item_us; //  moving mean time per item
    bool measured;
    uint8_t **pdata; //  reduce partials
    size_t *plen;
    size_t np, pcap;
    loom_sched_combine *combines; //  combine batches in flight
    uint32_t comb_losses;         //  combine batches whose worker died
    bool fold_failed;             //  the map failed while folding
    bool cancelled;               //  loom_sched_map_cancel: only its items in flight are left
    uint32_t init_deaths;         //  worker processes that died in its plugin init
    loom_sched_map *prev, *next;
};

struct loom_sched_worker {
    void *handle;
    uint32_t credit;
    uint32_t seq;     //  unique in the scheduler, from 1 (what items avoid)
    s_list items;     //  in flight, in dispatch order
    uint64_t batches; //  batches dispatched so far (sequence of the last one)
    uint64_t *opened; //  map ids this worker has had MapOpen for
    size_t nopened, capopened;
    bool paused;
    bool skip; //  s_pick_for_map: not for the map being served
    //  Plugins whose init failed in this process, and why.
    struct s_plugin_state {
        char *plugin;
        char *error;
    } *plugins;
    size_t nplugins;
    loom_sched_worker *prev, *next;
};

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

struct loom_sched {
    s_slab *slab;  //  the slab being carved, or NULL
    s_u64map maps; //  id -> map
    loom_sched_map *head, *tail;
    loom_sched_map *rr; //  next map to serve; NULL: head
    size_t nmaps;
    loom_sched_worker *workers;
    size_t nworkers;
    uint64_t next_id;
    uint64_t queued, in_flight, retried;
    uint64_t cancelling;      //  items in flight of cancelled maps (still running on their workers)
    size_t ncancelled;        //  cancelled maps not destroyed yet
    uint64_t init_failures;   //  plugin inits that failed in live workers (their plugins lists)
    uint64_t waiting;         //  items on the maps' waiting lists
    int64_t next_due;         //  none of them is due before this (a lower bound)
    uint32_t next_worker_seq; //  last loom_sched_worker_seq given
};

//  ---------------------------------------------------------------------
//  Intrusive lists

static void
s_list_push_back(s_list *l, loom_sched_item *it)
{
    it->next = NULL;
    it->prev = l->tail;
    if (l->tail)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    l->n++;
}

static void
s_list_push_front(s_list *l, loom_sched_item *it)
{
    it->prev = NULL;
    it->next = l->head;
    if (l->head)
        l->head->prev = it;
    else
        l->tail = it;
    l->head = it;
    l->n++;
}

static void
s_list_remove(s_list *l, loom_sched_item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        l->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        l->tail = it->prev;
    it->prev = it->next = NULL;
    l->n--;
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

static void
s_list_free(s_list *l)
{
    while (l->head) {
        loom_sched_item *it = l->head;
        s_list_remove(l, it);
        loom_sched_item_free(&it);
    }
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
    s_u64map_free(&self->maps);
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
    s_u64map_put(&self->maps, m->id, m);
    self->nmaps++;
    return m;
}

static void
s_comb_free(loom_sched_combine **comb_p)
{
    loom_sched_combine *c = *comb_p;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->data[i]);
    free(c);
    *comb_p = NULL;
}

static void
s_partials_clear(loom_sched_map *m)
{
    for (size_t i = 0; i < m->np; i++)
        free(m->pdata[i]);
    m->np = 0;
}

//  Take an in-flight item off its worker and out of its map's table.
static void
s_unflight(loom_sched *self, loom_sched_item *it)
{
    LOOM_ASSERT(it->worker);
    s_list_remove(&it->worker->items, it);
    s_flight_del(&it->map->in_flight, it);
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
    s_list_free(&m->queue);
    //  In-flight items live on their workers' lists: walk the table.
    size_t pos = 0;
    for (loom_sched_item *it; (it = s_flight_next(&m->in_flight, &pos)); pos++) {
        s_list_remove(&it->worker->items, it);
        self->in_flight--;
        if (m->cancelled)
            self->cancelling--;
        loom_sched_item_free(&it);
    }
    if (m->cancelled)
        self->ncancelled--;
    s_flight_free(&m->in_flight);
    s_list_free(&m->failed);
    self->waiting -= m->waiting.n;
    s_list_free(&m->waiting);
    while (m->combines) {
        loom_sched_combine *c = m->combines;
        m->combines = c->next;
        s_comb_free(&c);
    }
    s_partials_clear(m);
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
    s_u64map_del(&self->maps, m->id);
    self->nmaps--;
    free(m);
    *map_p = NULL;
}

loom_sched_map *
loom_sched_map_find(loom_sched *self, uint64_t id)
{
    return s_u64map_get(&self->maps, id);
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

static void
s_fail_item(loom_sched_map *m, loom_sched_item *it, int status, const char *message)
{
    it->status = status;
    if (message) {
        free(it->reason);
        it->reason = loom_xstrdup(message);
    }
    s_list_push_back(&m->failed, it);
    m->done++;
}

struct loom_sched_chunk {
    void *msg; //  the batch as it came; NULL once dropped or taken
    void (*destroy)(void *msg);
    size_t n;    //  items in the message
    size_t refs; //  the submitter's, and one per item
};

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
        s_fail_item(map, it, map->fail_status, map->fail_msg);
    else {
        s_list_push_back(&map->queue, it);
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
        s_list_remove(&map->queue, it);
        self->queued--;
        s_fail_item(map, it, status, map->fail_msg);
    }
    size_t pos = 0;
    for (loom_sched_item *it; (it = s_flight_next(&map->in_flight, &pos));) {
        s_unflight(self, it);
        s_fail_item(map, it, status, map->fail_msg);
    }
    while (map->waiting.head) {
        loom_sched_item *it = map->waiting.head;
        s_list_remove(&map->waiting, it);
        self->waiting--;
        s_fail_item(map, it, status, map->fail_msg);
    }
    while (map->combines) {
        loom_sched_combine *c = map->combines;
        map->combines = c->next;
        s_comb_free(&c);
    }
    s_partials_clear(map);
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
        s_list_remove(&map->failed, it);
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
    for (loom_sched_item *it; (it = s_flight_next(&map->in_flight, &pos)); pos++)
        n = s_add_worker(out, n, cap, it->worker);
    for (loom_sched_combine *c = map->combines; c; c = c->next)
        n = s_add_worker(out, n, cap, c->worker);
    return n;
}

double
loom_sched_map_item_us(const loom_sched_map *map)
{
    return map->measured ? map->item_us : 0;
}

size_t
loom_sched_map_batch_size(const loom_sched_map *map)
{
    if (map->def.chunk)
        return map->def.chunk;
    if (!map->measured)
        return 1;
    if (map->item_us * LOOM_SCHED_MAX_BATCH <= LOOM_SCHED_TARGET_US)
        return LOOM_SCHED_MAX_BATCH;
    double n = LOOM_SCHED_TARGET_US / map->item_us;
    return n < 1 ? 1 : (size_t)n;
}

void
loom_sched_map_observe(loom_sched_map *map, uint64_t elapsed_us, size_t n)
{
    if (n == 0)
        return;
    double per = (double)elapsed_us / (double)n;
    if (!map->measured) {
        map->item_us = per;
        map->measured = true;
    } else
        map->item_us = 0.7 * map->item_us + 0.3 * per;
}

void
loom_sched_map_add_partial(loom_sched_map *map, const void *data, size_t len)
{
    if (map->is_failed)
        return;
    if (map->np == map->pcap) {
        map->pcap = map->pcap ? map->pcap * 2 : 16;
        map->pdata = loom_xrealloc(map->pdata, map->pcap * sizeof *map->pdata);
        map->plen = loom_xrealloc(map->plen, map->pcap * sizeof *map->plen);
    }
    map->pdata[map->np] = loom_xmalloc(len);
    if (len)
        memcpy(map->pdata[map->np], data, len);
    map->plen[map->np] = len;
    map->np++;
}

size_t
loom_sched_map_partials(const loom_sched_map *map)
{
    return map->np;
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

const void *
loom_sched_map_result(const loom_sched_map *map, size_t *len)
{
    if (!map->def.reduce || map->is_failed || map->np != 1 || map->combines)
        return NULL;
    *len = map->plen[0];
    return map->pdata[0];
}

uint64_t
loom_sched_map_count_expected(const loom_sched_map *map)
{
    return map->count;
}

int
loom_sched_map_fold_error(const loom_sched_map *map, const char **message)
{
    if (!map->fold_failed)
        return 0;
    *message = map->fail_msg;
    return map->fail_status;
}

//  ---------------------------------------------------------------------
//  Workers

loom_sched_worker *
loom_sched_worker_new(loom_sched *self, void *handle, uint32_t credit)
{
    loom_sched_worker *w = loom_xcalloc(1, sizeof *w);
    w->handle = handle;
    w->credit = credit ? credit : LOOM_SCHED_DEFAULT_CREDIT;
    w->seq = ++self->next_worker_seq;
    if (!w->seq) //  wrapped: 0 means none
        w->seq = ++self->next_worker_seq;
    w->next = self->workers;
    if (self->workers)
        self->workers->prev = w;
    self->workers = w;
    self->nworkers++;
    return w;
}

void
loom_sched_worker_remove(loom_sched *self, loom_sched_worker **w_p, const char *reason,
                         bool blame)
{
    loom_sched_worker_remove_as(self, w_p, reason, blame, LOOM_ECRASHED);
}

void
loom_sched_worker_remove_as(loom_sched *self, loom_sched_worker **w_p, const char *reason,
                            bool blame, int status)
{
    LOOM_ASSERT(self && w_p);
    loom_sched_worker *w = *w_p;
    if (!w)
        return;
    uint64_t running = w->items.head ? w->items.head->batch : 0;
    //  Requeue from the last dispatched to the first, each at the front,
    //  so the items keep their order at the head of their queues.
    while (w->items.tail) {
        loom_sched_item *it = w->items.tail;
        loom_sched_map *m = it->map;
        s_unflight(self, it);
        if (m->cancelled) {
            loom_sched_item_free(&it); //  it stopped with its worker: nobody wants it
            continue;
        }
        if (blame && it->batch == running) {
            it->attempt++;
            free(it->reason);
            it->reason = loom_xstrdup(reason ? reason : "worker lost");
            it->solo = true;
            it->status = status; //  what it fails with when out of retries
        }
        if ((int64_t)(it->attempt - it->fails) > (int64_t)m->def.retries)
            s_fail_item(m, it, it->status ? it->status : LOOM_ECRASHED, NULL);
        else {
            s_list_push_front(&m->queue, it);
            self->queued++;
            self->retried++;
        }
    }
    for (loom_sched_map *m = self->head; m; m = m->next) {
        loom_sched_combine **cp = &m->combines;
        while (*cp) {
            loom_sched_combine *c = *cp;
            if (c->worker != w) {
                cp = &c->next;
                continue;
            }
            *cp = c->next;
            for (size_t i = 0; i < c->n; i++)
                loom_sched_map_add_partial(m, c->data[i], c->len[i]);
            s_comb_free(&c);
            m->comb_losses++;
        }
        //  A fold that keeps killing workers fails like a poison item.
        if (m->comb_losses > (uint32_t)m->def.retries && !m->is_failed) {
            char text[512];
            snprintf(text, sizeof text, "reduce failed: %s", reason ? reason : "worker lost");
            loom_sched_map_fail(self, m, LOOM_ECRASHED, text);
        }
    }
    if (w->prev)
        w->prev->next = w->next;
    else
        self->workers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    self->nworkers--;
    free(w->opened);
    self->init_failures -= w->nplugins;
    for (size_t i = 0; i < w->nplugins; i++) {
        free(w->plugins[i].plugin);
        free(w->plugins[i].error);
    }
    free(w->plugins);
    free(w);
    *w_p = NULL;
}

void *
loom_sched_worker_handle(const loom_sched_worker *w)
{
    return w->handle;
}

uint32_t
loom_sched_worker_seq(const loom_sched_worker *w)
{
    return w->seq;
}

void
loom_sched_worker_add_credit(loom_sched_worker *w, uint32_t n)
{
    uint64_t c = (uint64_t)w->credit + n;
    w->credit = c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
}

uint32_t
loom_sched_worker_credit(const loom_sched_worker *w)
{
    return w->credit;
}

size_t
loom_sched_worker_in_flight(const loom_sched_worker *w)
{
    return w->items.n;
}

void
loom_sched_worker_pause(loom_sched_worker *w, bool paused)
{
    w->paused = paused;
}

size_t
loom_sched_worker_count(const loom_sched *self)
{
    return self->nworkers;
}

//  ---------------------------------------------------------------------
//  Dispatch

static bool
s_worker_opened(loom_sched *self, loom_sched_worker *w, uint64_t id, bool mark)
{
    for (size_t i = 0; i < w->nopened; i++)
        if (w->opened[i] == id)
            return true;
    if (!mark)
        return false;
    if (w->nopened == w->capopened) {
        //  Forget maps that are gone before growing.
        size_t k = 0;
        for (size_t i = 0; i < w->nopened; i++)
            if (s_u64map_get(&self->maps, w->opened[i]))
                w->opened[k++] = w->opened[i];
        w->nopened = k;
        if (w->nopened == w->capopened) {
            w->capopened = w->capopened ? w->capopened * 2 : 8;
            w->opened = loom_xrealloc(w->opened, w->capopened * sizeof *w->opened);
        }
    }
    w->opened[w->nopened++] = id;
    return false;
}

static void
s_worker_unopen(loom_sched_worker *w, uint64_t id)
{
    for (size_t i = 0; i < w->nopened; i++)
        if (w->opened[i] == id) {
            w->opened[i] = w->opened[--w->nopened];
            return;
        }
}

//  Least loaded unpaused worker whose in-flight count is below its cap
//  (min(credit, limit)); limit 0: no item cap (combine batches). A suspect
//  item (requeued after a crash) goes only to an idle worker, and nothing
//  goes to a worker running one: when a process dies, the results it made
//  just before may die with it, so a suspect must not share its fate with
//  innocent items, or they would be blamed for its crashes.
static loom_sched_worker *
s_pick_worker(loom_sched *self, size_t limit, bool suspect)
{
    loom_sched_worker *best = NULL;
    for (loom_sched_worker *w = self->workers; w; w = w->next) {
        if (w->paused || w->skip)
            continue;
        //  Still running an item of a cancelled map (its oldest): it takes
        //  nothing until that stops (answered, or the process ended).
        if (w->items.head && w->items.head->map->cancelled)
            continue;
        if (limit && w->items.n && (suspect || w->items.tail->solo))
            continue;
        if (limit) {
            size_t cap = w->credit < limit ? w->credit : limit;
            if (w->items.n >= cap)
                continue;
        }
        if (!best || w->items.n < best->items.n)
            best = w;
    }
    return best;
}

//  s_pick_worker for an item that failed on the worker `avoid` names (0:
//  none): never that one while there is another, even a busy or paused
//  one (the item then waits for it).
static loom_sched_worker *
s_pick_avoiding(loom_sched *self, size_t limit, bool suspect, uint32_t avoid)
{
    loom_sched_worker *shunned = NULL;
    for (loom_sched_worker *w = self->workers; avoid && w && !shunned; w = w->next)
        if (w->seq == avoid)
            shunned = w;
    if (!shunned || self->nworkers < 2)
        return s_pick_worker(self, limit, suspect);
    bool paused = shunned->paused;
    shunned->paused = true;
    loom_sched_worker *w = s_pick_worker(self, limit, suspect);
    shunned->paused = paused;
    return w;
}

static struct s_plugin_state *
s_plugin_state(const loom_sched_worker *w, const char *plugin)
{
    for (size_t i = 0; i < w->nplugins; i++)
        if (!strcmp(w->plugins[i].plugin, plugin))
            return &w->plugins[i];
    return NULL;
}

//  The plugin's init failed in w: none of its maps go there.
static bool
s_excluded(const loom_sched_map *m, const loom_sched_worker *w)
{
    return w->nplugins && s_plugin_state(w, m->def.plugin);
}

//  s_pick_avoiding among the workers that can run map m: not one whose
//  init of m's plugin failed.
static loom_sched_worker *
s_pick_for_map(loom_sched *self, loom_sched_map *m, size_t limit, bool suspect, uint32_t avoid)
{
    if (!self->init_failures)
        return s_pick_avoiding(self, limit, suspect, avoid);
    for (loom_sched_worker *w = self->workers; w; w = w->next)
        w->skip = s_excluded(m, w);
    loom_sched_worker *w = s_pick_avoiding(self, limit, suspect, avoid);
    for (loom_sched_worker *o = self->workers; o; o = o->next)
        o->skip = false;
    return w;
}

static bool
s_next_combine(loom_sched *self, loom_sched_batch *b)
{
    for (loom_sched_map *m = self->head; m; m = m->next) {
        if (!m->def.reduce || m->is_failed || m->np < 2 ||
            loom_sched_map_state(m) != LOOM_SCHED_FOLDING)
            continue;
        loom_sched_worker *w = s_pick_for_map(self, m, 0, false, 0);
        if (!w)
            return false;
        loom_sched_combine *c = loom_xcalloc(1, sizeof *c);
        size_t max = m->np < LOOM_SCHED_MAX_BATCH ? m->np : LOOM_SCHED_MAX_BATCH;
        size_t bytes = 0;
        //  At least two partials, so every combine makes progress.
        while (c->n < max && (c->n < 2 || bytes + m->plen[m->np - 1] <= LOOM_SCHED_MAX_BYTES)) {
            m->np--;
            c->data[c->n] = m->pdata[m->np];
            c->len[c->n] = m->plen[m->np];
            bytes += c->len[c->n];
            c->n++;
        }
        c->map = m;
        c->worker = w;
        //  Append, so results (which come back in order per worker) match
        //  the oldest batch first.
        loom_sched_combine **cp = &m->combines;
        while (*cp)
            cp = &(*cp)->next;
        *cp = c;
        b->map = m;
        b->worker = w;
        b->combine = true;
        b->comb = c;
        b->n = c->n;
        b->open = !s_worker_opened(self, w, m->id, true);
        return true;
    }
    return false;
}

//  Whether w, busy with at least a client's batch worth of items, should
//  wait for the room to take the whole batch at the head of m's queue
//  (which it will have once enough results are back) rather than get a
//  cut of it now: a whole batch goes as its own bytes.
static bool
s_wait_for_room(const loom_sched_map *m, const loom_sched_worker *w, size_t bs)
{
    const loom_sched_item *head = m->queue.head;
    const loom_sched_chunk *c = head->chunk;
    if (m->def.chunk || !c || !c->msg || head->slot != 0)
        return false; //  a map with a set chunk gets batches of that size
    size_t cap = w->credit < 2 * bs ? w->credit : 2 * bs;
    return c->n <= cap && w->items.n >= c->n && cap - w->items.n < c->n;
}

bool
loom_sched_next_batch(loom_sched *self, loom_sched_batch *b)
{
    LOOM_ASSERT(self && b);
    memset(b, 0, offsetof(loom_sched_batch, items));
    b->comb = NULL;
    if (!self->workers || !self->head)
        return false;
    if (s_next_combine(self, b))
        return true;
    loom_sched_map *start = self->rr ? self->rr : self->head;
    loom_sched_map *m = start;
    do {
        if (m->queue.n) {
            size_t bs = loom_sched_map_batch_size(m);
            loom_sched_worker *w =
                s_pick_for_map(self, m, 2 * bs, m->queue.head->solo, m->queue.head->avoid);
            if (w && s_wait_for_room(m, w, bs))
                w = NULL;
            if (w) {
                size_t cap = w->credit < 2 * bs ? w->credit : 2 * bs;
                size_t n = bs;
                if (n > cap - w->items.n)
                    n = cap - w->items.n;
                if (!m->def.chunk) {
                    //  An even share of the map's items per worker: a short
                    //  map spreads over all of them, and in the steady state
                    //  a client's batch is not cut in two.
                    size_t spread =
                        (m->queue.n + m->in_flight.n + self->nworkers - 1) / self->nworkers;
                    if (n > spread)
                        n = spread;
                }
                if (n < 1)
                    n = 1;
                //  A client's batch at the head that fits and is not much
                //  smaller goes out alone, so it can go as its own bytes.
                loom_sched_chunk *c = m->def.chunk ? NULL : m->queue.head->chunk;
                if (c && c->msg && m->queue.head->slot == 0 && c->n <= n && 2 * c->n >= n)
                    n = c->n;
                if (m->queue.head->solo)
                    n = 1;
                b->map = m;
                b->worker = w;
                w->batches++;
                size_t bytes = 0;
                while (b->n < n && m->queue.head && (b->n == 0 || !m->queue.head->solo)) {
                    loom_sched_item *it = m->queue.head;
                    if (b->n && it->avoid == w->seq)
                        break; //  it failed there: it waits for another worker

                    if (b->n && bytes + it->len > LOOM_SCHED_MAX_BYTES)
                        break;
                    //  End before a client's batch that could go whole
                    //  next time (once the batch is half full, or when
                    //  that one is big): batches keep to the clients'.
                    loom_sched_chunk *ic = m->def.chunk ? NULL : it->chunk;
                    if (b->n && ic && it->slot == 0 && ic->msg &&
                        (2 * b->n >= n || 2 * ic->n >= n))
                        break;
                    bytes += it->len;
                    s_list_remove(&m->queue, it);
                    self->queued--;
                    it->worker = w;
                    it->batch = w->batches;
                    s_list_push_back(&w->items, it);
                    s_flight_put(&m->in_flight, it);
                    self->in_flight++;
                    b->items[b->n++] = it;
                }
                b->open = !s_worker_opened(self, w, m->id, true);
                self->rr = m->next;
                return true;
            }
        }
        m = m->next ? m->next : self->head;
    } while (m != start);
    return false;
}

void
loom_sched_batch_undo(loom_sched *self, loom_sched_batch *b)
{
    loom_sched_map *m = b->map;
    if (!m)
        return;
    if (b->open)
        s_worker_unopen(b->worker, m->id);
    if (b->combine) {
        loom_sched_combine **cp = &m->combines;
        while (*cp && *cp != b->comb)
            cp = &(*cp)->next;
        if (*cp) {
            *cp = b->comb->next;
            for (size_t i = 0; i < b->comb->n; i++)
                loom_sched_map_add_partial(m, b->comb->data[i], b->comb->len[i]);
            s_comb_free(&b->comb);
        }
    } else {
        for (size_t i = b->n; i-- > 0;) {
            loom_sched_item *it = b->items[i];
            s_unflight(self, it);
            s_list_push_front(&m->queue, it);
            self->queued++;
        }
    }
    memset(b, 0, offsetof(loom_sched_batch, items));
    b->comb = NULL;
}

loom_sched_item *
loom_sched_take(loom_sched *self, loom_sched_worker *w, loom_sched_map *map, uint64_t index)
{
    loom_sched_item *it = s_flight_get(&map->in_flight, index);
    if (!it || it->worker != w)
        return NULL;
    s_unflight(self, it);
    map->done++;
    return it;
}

bool
loom_sched_retry_failed(loom_sched *self, loom_sched_worker *w, loom_sched_map *map, uint64_t index,
                        int status, int64_t now_ms)
{
    if (!loom_retry_status(status) || map->is_failed)
        return false;
    loom_sched_item *it = s_flight_get(&map->in_flight, index);
    if (!it || it->worker != w || it->fails >= map->def.retry_failed)
        return false;
    s_unflight(self, it);
    it->attempt++;
    it->fails++;
    it->avoid = w->seq;
    it->due_ms = now_ms + loom_retry_backoff_ms(it->fails);
    if (!map->waiting.n || it->due_ms < map->next_due)
        map->next_due = it->due_ms;
    if (!self->waiting || it->due_ms < self->next_due)
        self->next_due = it->due_ms;
    s_list_push_back(&map->waiting, it);
    self->waiting++;
    self->retried++;
    return true;
}

int64_t
loom_sched_release_due(loom_sched *self, int64_t now_ms)
{
    int64_t next = INT64_MAX;
    if (!self->waiting)
        return next;
    if (now_ms < self->next_due) //  called at every settle: mostly this
        return self->next_due;
    for (loom_sched_map *m = self->head; m; m = m->next) {
        if (!m->waiting.n)
            continue;
        if (now_ms < m->next_due) {
            next = m->next_due < next ? m->next_due : next;
            continue;
        }
        //  From the back, each to the front: the queue keeps their order.
        int64_t map_next = INT64_MAX;
        for (loom_sched_item *it = m->waiting.tail, *prev; it; it = prev) {
            prev = it->prev;
            if (it->due_ms > now_ms) {
                if (it->due_ms < map_next)
                    map_next = it->due_ms;
                continue;
            }
            s_list_remove(&m->waiting, it);
            self->waiting--;
            it->batch = 0;
            s_list_push_front(&m->queue, it);
            self->queued++;
        }
        m->next_due = map_next;
        next = map_next < next ? map_next : next;
    }
    self->next_due = next;
    return next;
}

size_t
loom_sched_map_waiting(const loom_sched_map *map)
{
    return map->waiting.n;
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

bool
loom_sched_combine_done(loom_sched *self, loom_sched_worker *w, loom_sched_map *map,
                        const void *data, size_t len)
{
    (void)self;
    loom_sched_combine **cp = &map->combines;
    while (*cp && (*cp)->worker != w)
        cp = &(*cp)->next;
    if (!*cp)
        return false;
    loom_sched_combine *c = *cp;
    *cp = c->next;
    s_comb_free(&c);
    loom_sched_map_add_partial(map, data, len);
    return true;
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
        s_list_free(&m->queue);
        self->waiting -= m->waiting.n;
        s_list_free(&m->waiting);
        s_list_free(&m->failed);
        while (m->combines) {
            loom_sched_combine *c = m->combines;
            m->combines = c->next;
            s_comb_free(&c);
        }
        s_partials_clear(m);
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

void
loom_sched_worker_plugin_failed(loom_sched *self, loom_sched_worker *w, const char *plugin,
                                const char *error)
{
    if (s_plugin_state(w, plugin))
        return; //  the first reason is kept
    w->plugins = loom_xrealloc(w->plugins, (w->nplugins + 1) * sizeof *w->plugins);
    struct s_plugin_state *st = &w->plugins[w->nplugins++];
    st->plugin = loom_xstrdup(plugin);
    st->error = loom_xstrdup(error && *error ? error : "plugin init failed");
    self->init_failures++;
}

size_t
loom_sched_map_runnable(const loom_sched *self, const loom_sched_map *map, const char **message)
{
    *message = NULL;
    size_t n = 0;
    for (loom_sched_worker *w = self->workers; w; w = w->next) {
        const struct s_plugin_state *st = w->nplugins ? s_plugin_state(w, map->def.plugin) : NULL;
        if (!st)
            n++;
        else if (!*message)
            *message = st->error;
    }
    return n;
}

uint32_t
loom_sched_map_init_died(loom_sched_map *map)
{
    return ++map->init_deaths;
}

size_t
loom_sched_worker_return_combines(loom_sched_worker *w, loom_sched_map *map)
{
    size_t n = 0;
    loom_sched_combine **cp = &map->combines;
    while (*cp) {
        loom_sched_combine *c = *cp;
        if (c->worker != w) {
            cp = &c->next;
            continue;
        }
        *cp = c->next;
        for (size_t i = 0; i < c->n; i++)
            loom_sched_map_add_partial(map, c->data[i], c->len[i]);
        s_comb_free(&c);
        n++;
    }
    return n;
}

size_t
loom_sched_worker_requeue_map(loom_sched *self, loom_sched_worker *w, loom_sched_map *map)
{
    loom_sched_item *first = NULL;
    for (loom_sched_item *it = w->items.head; it && !first; it = it->next)
        if (it->map == map)
            first = it;
    size_t n = 0;
    //  From the last dispatched back, each to the front: the queue keeps
    //  their order.
    for (loom_sched_item *it = w->items.tail, *prev; it; it = prev) {
        prev = it->prev;
        if (it->map != map || it == first)
            continue;
        s_unflight(self, it);
        s_list_push_front(&map->queue, it);
        self->queued++;
        n++;
    }
    return n;
}
