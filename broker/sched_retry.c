/*  sched_retry: items that failed with a retryable status wait out
    their backoff on their map's waiting list, then go back to the front
    of its queue. See scheduler.h. No sockets, no I/O.  */

#include "scheduler_priv.h"

#include "failure_policy.h"

#include <stdint.h>

bool
loom_sched_retry_failed(loom_sched *self, loom_sched_worker *w, loom_sched_map *map, uint64_t index,
                        int status, int64_t now_ms)
{
    if (!loom_retry_status(status) || map->is_failed)
        return false;
    loom_sched_item *it = loom__flight_get(&map->in_flight, index);
    if (!it || it->worker != w || it->fails >= map->def.retry_failed)
        return false;
    loom__unflight(self, it);
    it->attempt++;
    it->fails++;
    it->avoid = w->seq;
    it->due_ms = now_ms + loom_retry_backoff_ms(it->fails);
    if (!map->waiting.n || it->due_ms < map->next_due)
        map->next_due = it->due_ms;
    if (!self->waiting || it->due_ms < self->next_due)
        self->next_due = it->due_ms;
    loom__list_push_back(&map->waiting, it);
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
            loom__list_remove(&m->waiting, it);
            self->waiting--;
            it->batch = 0;
            loom__list_push_front(&m->queue, it);
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
