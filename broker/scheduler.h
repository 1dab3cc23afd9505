/*  scheduler: the broker's pure data structures — maps, their item queues,
    per-worker in-flight tracking, duplicate detection, batch sizing and
    round robin between maps. No sockets: broker.c feeds it events and sends
    what it decides, and tests drive it directly.

    Items are owned by the scheduler from submit until the broker takes
    them back (a result arrived: loom_sched_take; a failure: the map's
    failed list, loom_sched_map_pop_failed).  */

#ifndef LOOM_SCHEDULER_H
#define LOOM_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_SCHED_MAX_BATCH 1024 //  items per batch at most
#define LOOM_SCHED_TARGET_US 2000 //  automatic batches aim at this much work
#define LOOM_SCHED_DEFAULT_CREDIT 2048
#define LOOM_SCHED_MAX_AHEAD 16777216          //  indices accepted beyond the lowest not yet seen
#define LOOM_SCHED_MAX_BYTES (4 * 1024 * 1024) //  input bytes per batch (at least one item)

typedef struct loom_sched loom_sched;
typedef struct loom_sched_map loom_sched_map;
typedef struct loom_sched_worker loom_sched_worker;
typedef struct loom_sched_item loom_sched_item;
typedef struct loom_sched_chunk loom_sched_chunk;

//  A file attached to an item (by content hash; the blob channel moves it).
typedef struct {
    char *name;
    uint8_t hash[32];
    size_t hash_len;
    uint64_t size;
} loom_sched_file;

//  One item of a map. Fields are read-only for users of the scheduler.
struct loom_sched_item {
    uint64_t index;
    uint32_t attempt; //  0 on the first run, +1 per requeue
    uint32_t fails;   //  of those requeues, retries after a failed result (retry_failed)
    uint8_t *data;    //  copy of the input (in the same block as the item)
    size_t len;
    size_t nfiles;
    loom_sched_file *files; //  owned
    bool solo;              //  requeued after a crash: runs in a batch of one
    union {
        uint64_t batch; //  in flight: the worker's dispatch sequence of its batch
        int64_t due_ms; //  waiting to be retried: when it may be queued again
    };
    int status;     //  failed items: the status to report
    uint32_t avoid; //  the worker (loom_sched_worker_seq) its last failed run was on, 0: none
    char *reason;   //  why it was last requeued, or the failure message
    loom_sched_map *map;
    loom_sched_worker *worker;    //  while in flight
    loom_sched_item *prev, *next; //  queue, worker's in-flight list or failed list
    struct loom_sched_slab *slab; //  the slab the item was carved from, or NULL
    loom_sched_chunk *chunk;      //  the client batch it came in (a reference), or NULL
    uint32_t slot;                //  its place in that batch
};

//  A map's definition, as the client opened it (strings are copied).
typedef struct {
    uint64_t pipeline;
    const char *plugin;
    const char *version;
    const char *task;
    const void *args;
    size_t args_len;
    bool ordered;
    bool reduce;
    uint32_t chunk;  //  0: automatic
    int32_t retries; //  as sent: 0 means 2, negative means none
    uint32_t timeout_ms;
    uint32_t retry_failed;        //  runs more after a failed result (LOOM_ETASK, ETIMEDOUT)
    uint32_t halt_after_failures; //  halt the map after this many failed items; 0: never
    uint32_t failures_seen;       //  failed items its client had before this broker
    uint32_t init_timeout_ms;     //  plugin init, passed to workers: 0 default, UINT32_MAX none
} loom_sched_def;

//  What loom_sched_next_batch decided: send `items` (or, for a combine
//  batch, `partials`) of `map` to `worker`, after a MapOpen if `open`.
typedef struct {
    loom_sched_map *map;
    loom_sched_worker *worker;
    bool open;    //  the worker has not seen this map yet: send MapOpen first
    bool combine; //  a reduce fold: partials, not items
    size_t n;
    loom_sched_item *items[LOOM_SCHED_MAX_BATCH];
    struct loom_sched_combine *comb; //  combine batches only
} loom_sched_batch;

//  Partial outputs of a combine batch (reduce folding).
typedef struct loom_sched_combine {
    size_t n;
    uint8_t *data[LOOM_SCHED_MAX_BATCH];
    size_t len[LOOM_SCHED_MAX_BATCH];
    loom_sched_map *map;
    loom_sched_worker *worker;
    struct loom_sched_combine *next;
} loom_sched_combine;

//  Create / destroy a scheduler. Destroy frees every map, item and worker.
loom_sched *loom_sched_new(void);
void loom_sched_destroy(loom_sched **self_p);

//  Totals, for Stats.
size_t loom_sched_map_count(const loom_sched *self);
uint64_t loom_sched_queued(const loom_sched *self);
uint64_t loom_sched_in_flight(const loom_sched *self);
uint64_t loom_sched_retried(const loom_sched *self);

//  ---------------------------------------------------------------------
//  Maps

//  Open a map with a new broker-wide id (from 1). owner/owner_id: opaque
//  for the broker (client session, client's map id).
loom_sched_map *loom_sched_map_new(loom_sched *self, const loom_sched_def *def, void *owner,
                                   uint64_t owner_id);

//  Forget a map: free its queued, in-flight and failed items and partials
//  (in-flight ones are taken off their workers), set *map_p to NULL.
void loom_sched_map_destroy(loom_sched *self, loom_sched_map **map_p);

//  Find a map by broker id; NULL if none.
loom_sched_map *loom_sched_map_find(loom_sched *self, uint64_t id);

//  Iterate over every map (order of creation). Do not destroy while iterating.
loom_sched_map *loom_sched_map_first(loom_sched *self);
loom_sched_map *loom_sched_map_next(loom_sched_map *map);

uint64_t loom_sched_map_id(const loom_sched_map *map);
void *loom_sched_map_owner(const loom_sched_map *map);
uint64_t loom_sched_map_owner_id(const loom_sched_map *map);
//  The stored definition (strings owned by the map; retries already made
//  effective: 0..n).
const loom_sched_def *loom_sched_map_def(const loom_sched_map *map);
size_t loom_sched_map_queued(const loom_sched_map *map);
size_t loom_sched_map_in_flight(const loom_sched_map *map);
uint64_t loom_sched_map_done(const loom_sched_map *map);

//  Add an item (data and files copied). Returns 0 when queued (or, for a
//  failed map, put straight on its failed list), LOOM_ESTATE for an index
//  already held or finished, LOOM_ETOOBIG for an index too far ahead.
int loom_sched_submit(loom_sched *self, loom_sched_map *map, uint64_t index, const void *data,
                      size_t len, const loom_sched_file *files, size_t nfiles);

//  A client's batch kept as it came (the broker's received message) while
//  none of its items has gone to a worker: a batch of exactly its items,
//  in order, can then go out as those bytes (loom_wire_forward) instead of
//  being encoded again. The items still own copies of their inputs (for
//  retries): the message is dropped when any of them is first dispatched,
//  so it is kept only while its items are queued.
//
//  A chunk of the n items of msg (owned by the chunk: destroy(msg) frees
//  it), with one reference for the caller.
loom_sched_chunk *loom_sched_chunk_new(void *msg, void (*destroy)(void *msg), size_t n);

//  loom_sched_submit of item `slot` of chunk (which the item references).
int loom_sched_submit_from(loom_sched *self, loom_sched_map *map, loom_sched_chunk *chunk,
                           uint32_t slot, uint64_t index, const void *data, size_t len,
                           const loom_sched_file *files, size_t nfiles);

//  Done submitting from the chunk: `whole` if every one of its n items was
//  accepted (else its message is dropped at once). Drops the caller's
//  reference and sets *chunk_p NULL.
void loom_sched_chunk_done(loom_sched_chunk **chunk_p, bool whole);

//  After loom_sched_next_batch: the message whose items are exactly b's,
//  in order (owned by the caller now), or NULL; then the messages of the
//  chunks of b's items are dropped, since they can never go out whole.
void *loom_sched_batch_whole(loom_sched_batch *b);

//  The client's MapEnd: `count` items in total.
void loom_sched_map_set_count(loom_sched_map *map, uint64_t count);

//  Fail the map: every queued and in-flight item, and every item
//  submitted later, goes to the failed list with this status and message.
//  Partials are discarded. Does nothing if the map already failed.
void loom_sched_map_fail(loom_sched *self, loom_sched_map *map, int status, const char *message);
bool loom_sched_map_failed(const loom_sched_map *map);

//  Next failed item of the map (counted done), owned by the caller
//  (loom_sched_item_free), or NULL.
loom_sched_item *loom_sched_map_pop_failed(loom_sched_map *map);

//  Workers currently holding items or combine batches of the map: fills
//  out with up to cap distinct workers, returns how many.
size_t loom_sched_map_workers(loom_sched_map *map, loom_sched_worker **out, size_t cap);

//  Mean time per item measured so far (us, 0: none) and the automatic
//  batch size it gives (without the queue/worker cap).
double loom_sched_map_item_us(const loom_sched_map *map);
size_t loom_sched_map_batch_size(const loom_sched_map *map);

//  A ResultBatch came back: `n` results took `elapsed_us`.
void loom_sched_map_observe(loom_sched_map *map, uint64_t elapsed_us, size_t n);

//  Keep a reduce partial (copied).
void loom_sched_map_add_partial(loom_sched_map *map, const void *data, size_t len);
size_t loom_sched_map_partials(const loom_sched_map *map);

typedef enum {
    LOOM_SCHED_RUNNING, //  items still to come, queued or in flight
    LOOM_SCHED_FOLDING, //  every item done; reduce partials being combined
    LOOM_SCHED_DONE     //  every item done (and folded): send the end
} loom_sched_state;

//  Where the map is. DONE also requires that no failed item waits.
loom_sched_state loom_sched_map_state(const loom_sched_map *map);

//  The single remaining partial of a DONE reduce map (borrowed), or NULL.
const void *loom_sched_map_result(const loom_sched_map *map, size_t *len);

//  The count from MapEnd (0 until then).
uint64_t loom_sched_map_count_expected(const loom_sched_map *map);

//  A reduce map whose fold failed (a combine batch's worker died more
//  than `retries` times, or the map failed while folding): the status,
//  with the message in *message (borrowed). 0 if the fold did not fail.
int loom_sched_map_fold_error(const loom_sched_map *map, const char **message);

//  ---------------------------------------------------------------------
//  Workers

//  A worker process joined with `credit` items it accepts (0: default).
loom_sched_worker *loom_sched_worker_new(loom_sched *self, void *handle, uint32_t credit);

//  The worker is gone: its items are requeued at the front of their maps.
//  A worker runs its batches in order, so only the oldest batch it had not
//  answered can hold the item that killed it: with `blame`, those items get
//  attempt+1 and run alone, remembering `reason`, and those past their map's
//  retries go to the failed list with LOOM_ECRASHED and the reason. Items of
//  later batches never started: they are requeued as they were. Without
//  blame (a clean exit) nothing is charged. Combine batches go back to their
//  maps. Frees the worker, sets *w_p NULL.
void loom_sched_worker_remove(loom_sched *self, loom_sched_worker **w_p, const char *reason,
                              bool blame);

//  loom_sched_worker_remove, the blamed items failing with `status` when
//  out of retries (LOOM_ECRASHED, or LOOM_ENOMEM for a process that ran
//  out of memory) instead of LOOM_ECRASHED.
void loom_sched_worker_remove_as(loom_sched *self, loom_sched_worker **w_p, const char *reason,
                                 bool blame, int status);

void *loom_sched_worker_handle(const loom_sched_worker *w);
uint32_t loom_sched_worker_seq(const loom_sched_worker *w); //  unique per scheduler, from 1
void loom_sched_worker_add_credit(loom_sched_worker *w, uint32_t n);
size_t loom_sched_worker_in_flight(const loom_sched_worker *w);
uint32_t loom_sched_worker_credit(const loom_sched_worker *w); //  unused credit
//  A paused worker gets nothing (its socket would block) until unpaused.
void loom_sched_worker_pause(loom_sched_worker *w, bool paused);
size_t loom_sched_worker_count(const loom_sched *self);

//  ---------------------------------------------------------------------
//  Dispatch and results

//  Decide the next batch: a combine batch of a folding map, or items of
//  the next map in round robin that has queued items, for the least loaded
//  worker with room (in flight < min(credit, 2 * batch size)). Moves the
//  items in flight. Returns false when nothing can go out.
bool loom_sched_next_batch(loom_sched *self, loom_sched_batch *b);

//  The batch could not be sent: put everything back as it was.
void loom_sched_batch_undo(loom_sched *self, loom_sched_batch *b);

//  A result for `index` of `map` from worker w: if that item is in flight
//  on w, it is done: returns it (owned by the caller, loom_sched_item_free).
//  Else NULL (a late or duplicate result).
loom_sched_item *loom_sched_take(loom_sched *self, loom_sched_worker *w, loom_sched_map *map,
                                 uint64_t index);

//  A failed result (`status`) for `index` of map from w. If the item is in
//  flight on w, its map retries failures (retry_failed: LOOM_ETASK and
//  LOOM_ETIMEDOUT) and it has runs left, it waits out a backoff
//  (loom_retry_backoff_ms from now_ms; loom_sched_release_due), then runs
//  again, on another worker than w while another one is there: returns
//  true. Else false and nothing changed (take it as any other result).
bool loom_sched_retry_failed(loom_sched *self, loom_sched_worker *w, loom_sched_map *map,
                             uint64_t index, int status, int64_t now_ms);

//  Queue again, at the front of their maps, the items whose wait is over
//  at now_ms. Returns when the next one is due, or INT64_MAX if none waits.
int64_t loom_sched_release_due(loom_sched *self, int64_t now_ms);

//  Items waiting out a retry backoff (counted in loom_sched_queued too).
size_t loom_sched_map_waiting(const loom_sched_map *map);

//  Count n failed items of map going to its client. True when they bring
//  it (with failures_seen) to halt_after_failures, unless it has failed
//  already: the caller then halts it.
bool loom_sched_map_count_failures(loom_sched_map *map, size_t n);

//  Halt the map after its failures: loom_sched_map_fail with LOOM_ECANCELED
//  and "not run: map halted after N failures" (loom_halt_message), and a
//  reduce's fold fails with it. The caller cancels the workers' batches.
void loom_sched_map_halt(loom_sched *self, loom_sched_map *map);

//  A combine batch of map came back from w with its fold. Returns true if
//  w had one in flight (the partials are replaced by the fold).
bool loom_sched_combine_done(loom_sched *self, loom_sched_worker *w, loom_sched_map *map,
                             const void *data, size_t len);

void loom_sched_item_free(loom_sched_item **item_p);

//  ---------------------------------------------------------------------
//  Cancelling (issue 21: stop means stop)

//  Cancel the map (its client cancelled it or is gone): its queued,
//  waiting and failed items and its partials are freed now. Its items in
//  flight stay on their workers, which still run them: they count in
//  loom_sched_in_flight and loom_sched_cancelling, and a worker whose
//  oldest item is one of them gets nothing new, until each is answered
//  (loom_sched_take, whose item the caller frees) or its worker is removed
//  (the item is freed). The broker tells those workers (Cancel), which stop
//  them within LOOM_CANCEL_GRACE_MS. The map is destroyed at once when
//  nothing of it is in flight (*map_p set NULL), else by the caller once
//  loom_sched_map_in_flight is 0. Not counted in loom_sched_map_count.
void loom_sched_map_cancel(loom_sched *self, loom_sched_map **map_p);
bool loom_sched_map_cancelled(const loom_sched_map *map);

//  Items in flight of cancelled maps, still running on their workers.
uint64_t loom_sched_cancelling(const loom_sched *self);

//  The plugin's init failed in worker w (a result, not a death), saying
//  error (the first is kept): none of the plugin's maps go to w any more
//  (nor their combine batches). w runs the plugin's init once: it would
//  fail every map of it the same way.
void loom_sched_worker_plugin_failed(loom_sched *self, loom_sched_worker *w, const char *plugin,
                                    const char *error);

//  Put map's combine batches held by w back among its partials (w cannot
//  run them: its init of the plugin failed). Returns how many.
size_t loom_sched_worker_return_combines(loom_sched_worker *w, loom_sched_map *map);

//  w's items in flight of map, but the first it was sent, go back to the
//  front of map's queue as they were (w's init of the plugin failed: it
//  fails the first, which met the failure, and never ran the others).
//  Returns how many.
size_t loom_sched_worker_requeue_map(loom_sched *self, loom_sched_worker *w, loom_sched_map *map);

//  How many live workers can run map (its plugin's init did not fail
//  there), and an init failure's message (borrowed, NULL if none failed).
size_t loom_sched_map_runnable(const loom_sched *self, const loom_sched_map *map,
                               const char **message);

//  A worker process died in map's plugin init (crash, init timeout):
//  returns how many have so far.
uint32_t loom_sched_map_init_died(loom_sched_map *map);

#endif
