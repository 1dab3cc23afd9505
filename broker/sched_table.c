/*  sched_table: the containers the scheduler keeps its items and maps in:
    a uint64 -> pointer hash table, a map's in-flight table (a ring by
    index with a hash table beside it) and intrusive item lists. See
    scheduler_priv.h. No sockets, no I/O.  */

#include "scheduler_priv.h"

#include "base.h"

#include <string.h>

//  ---------------------------------------------------------------------
//  A small uint64 -> pointer hash table (open addressing, linear probing,
//  backward-shift deletion). Values are never NULL.

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

void *
loom__u64map_get(const loom__u64map *m, uint64_t key)
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

static void
s_u64map_grow(loom__u64map *m)
{
    loom__u64map old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->keys = loom_xcalloc(m->cap, sizeof *m->keys);
    m->vals = loom_xcalloc(m->cap, sizeof *m->vals);
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.vals[i])
            loom__u64map_put(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
}

//  Insert or replace.
void
loom__u64map_put(loom__u64map *m, uint64_t key, void *val)
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

void
loom__u64map_del(loom__u64map *m, uint64_t key)
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

void
loom__u64map_free(loom__u64map *m)
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

static void
s_flight_grow(loom__flight *f, size_t size)
{
    loom__flight old = *f;
    f->ring = loom_xcalloc(size, sizeof *f->ring);
    f->mask = size - 1;
    memset(&f->spill, 0, sizeof f->spill);
    f->n = 0;
    for (size_t i = 0; old.ring && i <= old.mask; i++)
        if (old.ring[i])
            loom__flight_put(f, old.ring[i]);
    for (size_t i = 0; i < old.spill.cap; i++)
        if (old.spill.vals[i])
            loom__flight_put(f, old.spill.vals[i]);
    free(old.ring);
    loom__u64map_free(&old.spill);
}

void
loom__flight_put(loom__flight *f, loom_sched_item *it)
{
    if (!f->ring)
        s_flight_grow(f, S_RING_MIN);
    loom_sched_item **slot = &f->ring[it->index & f->mask];
    if (!*slot)
        *slot = it;
    else {
        loom__u64map_put(&f->spill, it->index, it);
        if (f->spill.n * 4 > f->mask + 1 && f->mask + 1 < S_RING_MAX) {
            f->n++;
            s_flight_grow(f, 2 * (f->mask + 1));
            return;
        }
    }
    f->n++;
}

loom_sched_item *
loom__flight_get(const loom__flight *f, uint64_t index)
{
    if (!f->ring)
        return NULL;
    loom_sched_item *it = f->ring[index & f->mask];
    if (it && it->index == index)
        return it;
    return f->spill.n ? loom__u64map_get(&f->spill, index) : NULL;
}

//  Take out it, which is in flight.
void
loom__flight_del(loom__flight *f, loom_sched_item *it)
{
    loom_sched_item **slot = &f->ring[it->index & f->mask];
    if (*slot == it)
        *slot = NULL;
    else
        loom__u64map_del(&f->spill, it->index);
    f->n--;
}

//  The first item in flight at or after position *pos (ring slots, then
//  the spill table's), or NULL. Taking out the item returned and asking
//  again from the same *pos goes on with the others.
loom_sched_item *
loom__flight_next(const loom__flight *f, size_t *pos)
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

void
loom__flight_free(loom__flight *f)
{
    free(f->ring);
    loom__u64map_free(&f->spill);
    memset(f, 0, sizeof *f);
}

//  ---------------------------------------------------------------------
//  Intrusive lists

void
loom__list_push_back(loom__list *l, loom_sched_item *it)
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

void
loom__list_push_front(loom__list *l, loom_sched_item *it)
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

void
loom__list_remove(loom__list *l, loom_sched_item *it)
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

void
loom__list_free(loom__list *l)
{
    while (l->head) {
        loom_sched_item *it = l->head;
        loom__list_remove(l, it);
        loom_sched_item_free(&it);
    }
}
