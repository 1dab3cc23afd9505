/*  scheduler_priv: what the scheduler's files share (scheduler.c,
    sched_table.c, sched_credit.c, sched_reduce.c, sched_retry.c): the
    struct definitions and the internal helpers each file lends the
    others. Private to broker/; the interface is scheduler.h.  */

#ifndef LOOM_SCHEDULER_PRIV_H
#define LOOM_SCHEDULER_PRIV_H

#include "scheduler.h"

//  A small uint64 -> pointer hash table (sched_table.c).
typedef struct {
    uint64_t *keys;
    void **vals;
    size_t cap; //  power of two, or 0
    size_t n;
} loom__u64map;

//  A map's items in flight, by index (sched_table.c).
typedef struct {
    loom_sched_item **ring; //  slot index & mask: the item with that index, or NULL
    size_t mask;            //  ring size - 1 (no ring yet: 0)
    loom__u64map spill;     //  index -> item, for items whose slot was taken
    size_t n;               //  items in flight
} loom__flight;

//  An intrusive list of items (sched_table.c).
typedef struct {
    loom_sched_item *head, *tail;
    size_t n;
} loom__list;

struct loom_sched_map {
    uint64_t id;            //  broker-wide id
    void *owner;            //  client session (opaque)
    uint64_t owner_id;      //  client's map id
    loom_sched_def def;     //  strings and args owned
    loom__list queue;       //  FIFO; requeued items go to the front
    loom__flight in_flight; //  index -> item
    loom__list failed;      //  finished with an error, not yet popped
    loom__list waiting;     //  failed, to run again once their retry backoff is over
    int64_t next_due;       //  no waiting item is due before this (a lower bound)
    uint64_t failures;      //  failed items counted for halt_after_failures
    uint64_t *seen;         //  bit i: index seen_base + i was accepted
    size_t seen_words;      //  words allocated
    uint64_t seen_base;     //  every index below it was accepted
    uint64_t done;          //  items finished (result taken or failed)
    uint64_t count;         //  from MapEnd
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
    loom__list items; //  in flight, in dispatch order
    uint64_t batches; //  batches dispatched so far (sequence of the last one)
    uint64_t *opened; //  map ids this worker has had MapOpen for
    size_t nopened, capopened;
    bool paused;
    bool skip; //  loom__pick_for_map: not for the map being served
    //  Plugins whose init failed in this process, and why.
    struct loom__plugin_state {
        char *plugin;
        char *error;
    } * plugins;
    size_t nplugins;
    loom_sched_worker *prev, *next;
};

struct loom_sched_chunk {
    void *msg; //  the batch as it came; NULL once dropped or taken
    void (*destroy)(void *msg);
    size_t n;    //  items in the message
    size_t refs; //  the submitter's, and one per item
};

struct loom_sched {
    struct loom_sched_slab *slab; //  the slab being carved, or NULL
    loom__u64map maps;            //  id -> map
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

//  sched_table.c: the hash table. Get returns NULL when key is absent;
//  put inserts or replaces (val not NULL); free leaves an empty table.
void *loom__u64map_get(const loom__u64map *m, uint64_t key);
void loom__u64map_put(loom__u64map *m, uint64_t key, void *val);
void loom__u64map_del(loom__u64map *m, uint64_t key);
void loom__u64map_free(loom__u64map *m);

//  sched_table.c: the in-flight table. Del takes out it, which is in
//  flight; next returns the first item at or after *pos, or NULL (taking
//  out the item returned and asking again from *pos goes on).
void loom__flight_put(loom__flight *f, loom_sched_item *it);
loom_sched_item *loom__flight_get(const loom__flight *f, uint64_t index);
void loom__flight_del(loom__flight *f, loom_sched_item *it);
loom_sched_item *loom__flight_next(const loom__flight *f, size_t *pos);
void loom__flight_free(loom__flight *f);

//  sched_table.c: intrusive lists. Free frees every item on the list.
void loom__list_push_back(loom__list *l, loom_sched_item *it);
void loom__list_push_front(loom__list *l, loom_sched_item *it);
void loom__list_remove(loom__list *l, loom_sched_item *it);
void loom__list_free(loom__list *l);

//  scheduler.c: take an in-flight item off its worker and out of its
//  map's table.
void loom__unflight(loom_sched *self, loom_sched_item *it);

//  scheduler.c: put it on m's failed list with status (and message, if
//  not NULL, as its reason); the map counts it done.
void loom__fail_item(loom_sched_map *m, loom_sched_item *it, int status, const char *message);

//  sched_reduce.c: free a combine batch and its partials, set *comb_p to
//  NULL; drop a map's partials.
void loom__comb_free(loom_sched_combine **comb_p);
void loom__partials_clear(loom_sched_map *m);

//  sched_reduce.c: fill b with a combine batch of the first folding map
//  that a worker can take. Returns false if there is none.
bool loom__next_combine(loom_sched *self, loom_sched_batch *b);

//  sched_credit.c: the least loaded worker that can run an item of m
//  under limit (0: no item cap), or NULL; see the definition.
loom_sched_worker *loom__pick_for_map(loom_sched *self, loom_sched_map *m, size_t limit,
                                      bool suspect, uint32_t avoid);

//  sched_credit.c: whether w has had MapOpen for map id; with mark, it
//  is remembered as having it from now on.
bool loom__worker_opened(loom_sched *self, loom_sched_worker *w, uint64_t id, bool mark);

#endif
