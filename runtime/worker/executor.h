/*  executor: runs plugin tasks in this process.

    One executor per worker process (and one for `loom map --serial`). It
    finds plugins by name in its plugin path (plugin_loader), calls each
    plugin's init once, on first use, and fini at destroy, and runs items
    and reduce folds, giving back owned outputs. It knows nothing of
    sockets: the worker process and the serial mode drive it.  */

#ifndef LOOM_EXECUTOR_H
#define LOOM_EXECUTOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct loom_executor loom_executor;

//  What one run or fold produced. data is malloc'd and owned by the caller
//  (free it), NULL when len is 0; unless borrowed (loom_executor_run_keep):
//  then it is the executor's, valid until its next run or fold. error is
//  malloc'd too, NULL on success.
typedef struct {
    int status; //  0, LOOM_ETASK (task failed or returned non-zero), LOOM_ETOOBIG, ...
    void *data;
    size_t len;
    char *error;
    bool borrowed; //  data is lent by the executor, not to be freed
} loom_exec_out;

//  Free out->data (unless borrowed) and out->error and zero them.
void loom_exec_out_clear(loom_exec_out *out);

//  Create an executor that loads plugins from plugin_path, a ':'-separated
//  list of directories (NULL: $LOOM_PLUGIN_PATH, then the defaults of
//  loom_plugin_default_path()). worker_id is what loom_worker_id returns.
loom_executor *loom_executor_new(const char *plugin_path, uint32_t worker_id);

//  Run every initialised plugin's fini, dlclose nothing (handles live until
//  exit), free. Sets *self_p to NULL; accepts NULL.
void loom_executor_destroy(loom_executor **self_p);

//  Plugin init runs at the first open_map of that plugin in this executor;
//  if it fails (non-zero, or it called loom_worker_fail), that open_map and
//  every later one of the plugin fail with LOOM_EINIT and "plugin 'x' init
//  failed in worker process PID: REASON" (REASON: what init gave
//  loom_worker_fail, else its return code): init is not retried (a
//  restarted worker process retries it).
//  Define map `map_id`: load the plugin (version "" or NULL: any; else must
//  equal the plugin's version, LOOM_EVERSION), find the task (LOOM_ENOENT),
//  check that it has a reduce when reduce is set (LOOM_ENOTSUP), run the
//  plugin's init if not run yet in this process. args are copied. Returns 0,
//  or a negative code with *reason set to a malloc'd message naming the
//  problem (caller frees), e.g. "plugin 'foo' not found in /a:/b".
//  Opening an id that is already open replaces it.
int loom_executor_open_map(loom_executor *self, uint64_t map_id, const char *plugin,
                           const char *version, const char *task, const void *args, size_t args_len,
                           bool reduce, char **reason);

//  Give map_id its pipeline's shares: n names and the local paths of
//  their files (the host's blob cache), mapped read-only now and unmapped
//  when the map closes; replaces any shares it had. loom_task_shared and
//  loom_task_shared_path answer from them (NULL for any other name).
//  Returns 0; LOOM_ENOENT for an unknown map; LOOM_EIO with *reason
//  (malloc'd) when a file cannot be opened or mapped (no share is set).
int loom_executor_set_shares(loom_executor *self, uint64_t map_id, const char *const *names,
                             const char *const *paths, size_t n, char **reason);

//  The files of the next item(s) run: n names and local read-only paths
//  (borrowed until the next call), answered by loom_task_file; and the
//  directory where loom_task_output_file makes its paths (NULL: that call
//  gives NULL). Clears the output files of the previous run. Call with
//  zeros to clear.
void loom_executor_set_item_files(loom_executor *self, const char *const *names,
                                  const char *const *paths, size_t n, const char *out_dir);

//  The output files the last run asked for (names and paths, borrowed
//  until the next set_item_files): the caller checks which exist.
size_t loom_executor_output_files(loom_executor *self, const char *const **names,
                                  const char *const **paths);

//  Forget map_id. Does nothing for an unknown id.
void loom_executor_close_map(loom_executor *self, uint64_t map_id);

//  True if map_id is open.
bool loom_executor_has_map(loom_executor *self, uint64_t map_id);

//  Run the map's task on one item. Returns out->status (0 or negative) and
//  fills *out; a task that returns non-zero without calling fail gets a
//  message like "task returned -7 (task failed)". LOOM_ENOENT for an unknown
//  map id.
int loom_executor_run(loom_executor *self, uint64_t map_id, uint64_t index, const void *input,
                      size_t len, loom_exec_out *out);

//  The same, but an output of at most `keep` bytes (at most 256 are kept)
//  is lent (out->borrowed): it stays in a buffer of the executor until the
//  next run or fold, sparing a malloc and a free per item for the callers
//  that copy small outputs anyway (the worker process). Larger outputs are
//  the caller's as with loom_executor_run.
int loom_executor_run_keep(loom_executor *self, uint64_t map_id, uint64_t index, const void *input,
                           size_t len, size_t keep, loom_exec_out *out);

//  Fold two outputs with the map's reduce into *out. Same conventions.
int loom_executor_reduce(loom_executor *self, uint64_t map_id, const void *a, size_t an,
                         const void *b, size_t bn, loom_exec_out *out);

//  A fold of many outputs with a map's reduce, combined as a balanced tree
//  (a binary counter: two partials of the same rank at a time), so that
//  folding N outputs whose combination stays large (word counts) costs
//  O(N log N) output bytes instead of the O(N^2) of a left fold. Use it to
//  fold a batch's outputs in a worker and the partials in `loom map
//  --serial`. The reduce must be associative and commutative (the SDK's
//  rule), so the order of combination does not matter.
typedef struct loom_exec_fold loom_exec_fold;

//  Create an empty fold for map_id of exec (borrowed; must outlive it).
loom_exec_fold *loom_exec_fold_new(loom_executor *exec, uint64_t map_id);

//  Free what the fold holds. Sets *self_p to NULL; accepts NULL.
void loom_exec_fold_destroy(loom_exec_fold **self_p);

//  Add an output: takes *data_p (malloc'd or NULL when len is 0) and sets
//  it to NULL; data_p may point at out->data (add a run's output in place). Returns 0, or the
//  failing reduce's status with out->error set (caller clears out); the fold is then empty and the
//  outputs added so far are lost, as a failed reduce fails the whole reduce.
int loom_exec_fold_add(loom_exec_fold *self, void **data_p, size_t len, loom_exec_out *out);

//  Combine everything added into *out (out->data is the caller's) and
//  empty the fold. With one output added, that output; with none, 0 with
//  out->len 0 (check loom_exec_fold_count first). Same error conventions.
int loom_exec_fold_take(loom_exec_fold *self, loom_exec_out *out);

//  How many outputs were added since the fold was created or last taken.
uint64_t loom_exec_fold_count(const loom_exec_fold *self);

//  Largest output an item may produce (LOOM_ETOOBIG beyond). Default 64 MiB.
void loom_executor_set_max_output(loom_executor *self, size_t max);

//  What loom_task_cancelled answers: *flag != 0 (read, never written, by
//  the executor; flag borrowed, NULL: always 0). The worker process sets
//  it when the map of the item running is cancelled.
void loom_executor_set_cancel_flag(loom_executor *self, const atomic_int *flag);

//  True if an open_map of plugin would run code of the plugin first: it
//  is not loaded yet, or its init has not run. The worker process watches
//  such an open_map (init timeout, the init marker for its supervisor).
bool loom_executor_init_pending(loom_executor *self, const char *plugin);

#endif
