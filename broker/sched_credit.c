/*  sched_credit: the scheduler's workers and what they get: credit,
    pausing, workers lost (their items requeued or failed), which plugins
    failed to init where, and picking the next batch (least loaded
    worker, round robin over maps, automatic batch sizing). See
    scheduler.h. No sockets, no I/O.  */

#include "scheduler_priv.h"

#include "base.h"

#include <stdio.h>
#include <string.h>

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
        loom__unflight(self, it);
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
            loom__fail_item(m, it, it->status ? it->status : LOOM_ECRASHED, NULL);
        else {
            loom__list_push_front(&m->queue, it);
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
            loom__comb_free(&c);
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

bool
loom__worker_opened(loom_sched *self, loom_sched_worker *w, uint64_t id, bool mark)
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
            if (loom__u64map_get(&self->maps, w->opened[i]))
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

static struct loom__plugin_state *
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
loom_sched_worker *
loom__pick_for_map(loom_sched *self, loom_sched_map *m, size_t limit, bool suspect, uint32_t avoid)
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
    if (loom__next_combine(self, b))
        return true;
    loom_sched_map *start = self->rr ? self->rr : self->head;
    loom_sched_map *m = start;
    do {
        if (m->queue.n) {
            size_t bs = loom_sched_map_batch_size(m);
            loom_sched_worker *w =
                loom__pick_for_map(self, m, 2 * bs, m->queue.head->solo, m->queue.head->avoid);
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
                    loom__list_remove(&m->queue, it);
                    self->queued--;
                    it->worker = w;
                    it->batch = w->batches;
                    loom__list_push_back(&w->items, it);
                    loom__flight_put(&m->in_flight, it);
                    self->in_flight++;
                    b->items[b->n++] = it;
                }
                b->open = !loom__worker_opened(self, w, m->id, true);
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
            loom__comb_free(&b->comb);
        }
    } else {
        for (size_t i = b->n; i-- > 0;) {
            loom_sched_item *it = b->items[i];
            loom__unflight(self, it);
            loom__list_push_front(&m->queue, it);
            self->queued++;
        }
    }
    memset(b, 0, offsetof(loom_sched_batch, items));
    b->comb = NULL;
}

//  ---------------------------------------------------------------------
//  Automatic batch sizing

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

//  ---------------------------------------------------------------------
//  Plugin init failures

void
loom_sched_worker_plugin_failed(loom_sched *self, loom_sched_worker *w, const char *plugin,
                                const char *error)
{
    if (s_plugin_state(w, plugin))
        return; //  the first reason is kept
    w->plugins = loom_xrealloc(w->plugins, (w->nplugins + 1) * sizeof *w->plugins);
    struct loom__plugin_state *st = &w->plugins[w->nplugins++];
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
        const struct loom__plugin_state *st =
            w->nplugins ? s_plugin_state(w, map->def.plugin) : NULL;
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
        loom__unflight(self, it);
        loom__list_push_front(&map->queue, it);
        self->queued++;
        n++;
    }
    return n;
}
