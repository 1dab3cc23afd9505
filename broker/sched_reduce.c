/*  sched_reduce: a reduce map's folding: its partial results, the
    combine batches that fold them on workers, and its result. See
    scheduler.h. No sockets, no I/O.  */

#include "scheduler_priv.h"

#include "base.h"

#include <string.h>

void
loom__comb_free(loom_sched_combine **comb_p)
{
    loom_sched_combine *c = *comb_p;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->data[i]);
    free(c);
    *comb_p = NULL;
}

void
loom__partials_clear(loom_sched_map *m)
{
    for (size_t i = 0; i < m->np; i++)
        free(m->pdata[i]);
    m->np = 0;
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

const void *
loom_sched_map_result(const loom_sched_map *map, size_t *len)
{
    if (!map->def.reduce || map->is_failed || map->np != 1 || map->combines)
        return NULL;
    *len = map->plen[0];
    return map->pdata[0];
}

int
loom_sched_map_fold_error(const loom_sched_map *map, const char **message)
{
    if (!map->fold_failed)
        return 0;
    *message = map->fail_msg;
    return map->fail_status;
}

bool
loom__next_combine(loom_sched *self, loom_sched_batch *b)
{
    for (loom_sched_map *m = self->head; m; m = m->next) {
        if (!m->def.reduce || m->is_failed || m->np < 2 ||
            loom_sched_map_state(m) != LOOM_SCHED_FOLDING)
            continue;
        loom_sched_worker *w = loom__pick_for_map(self, m, 0, false, 0);
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
        b->open = !loom__worker_opened(self, w, m->id, true);
        return true;
    }
    return false;
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
    loom__comb_free(&c);
    loom_sched_map_add_partial(map, data, len);
    return true;
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
        loom__comb_free(&c);
        n++;
    }
    return n;
}
