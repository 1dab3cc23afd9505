/*  executor: runs plugin tasks in this process.

    One executor per worker process (and one for `loom map --serial`). It
    finds plugins by name in its plugin path (plugin_loader), calls each
    plugin's init once, on first use, and fini at destroy, and runs items
    and reduce folds, giving back owned outputs. It knows nothing of
    sockets: the worker process and the serial mode drive it.  */

#ifndef LOOM_EXECUTOR_H
#define LOOM_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct loom_executor loom_executor;

//  What one run or fold produced. data is malloc'd and owned by the caller
//  (free it), NULL when len is 0. error is malloc'd too, NULL on success.
typedef struct {
    int status; //  0, LOOM_ETASK (task failed or returned non-zero), LOOM_ETOOBIG, ...
    void *data;
    size_t len;
    char *error;
} loom_exec_out;

//  Free out->data and out->error and zero them.
void loom_exec_out_clear(loom_exec_out *out);

//  Create an executor that loads plugins from plugin_path, a ':'-separated
//  list of directories (NULL: $LOOM_PLUGIN_PATH, then the defaults of
//  loom_plugin_default_path()). worker_id is what loom_worker_id returns.
loom_executor *loom_executor_new(const char *plugin_path, uint32_t worker_id);

//  Run every initialised plugin's fini, dlclose nothing (handles live until
//  exit), free. Sets *self_p to NULL; accepts NULL.
void loom_executor_destroy(loom_executor **self_p);

//  Define map `map_id`: load the plugin (version "" or NULL: any; else must
//  equal the plugin's version, LOOM_EVERSION), find the task (LOOM_ENOENT),
//  check that it has a reduce when reduce is set (LOOM_ENOTSUP), run the
//  plugin's init if not run yet in this process. args are copied. Returns 0,
//  or a negative code with *reason set to a malloc'd message naming the
//  problem (caller frees), e.g. "plugin 'foo' not found in /a:/b".
//  Opening an id that is already open replaces it.
int loom_executor_open_map(loom_executor *self, uint64_t map_id, const char *plugin,
                           const char *version, const char *task, const void *args,
                           size_t args_len, bool reduce, char **reason);

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

//  Fold two outputs with the map's reduce into *out. Same conventions.
int loom_executor_reduce(loom_executor *self, uint64_t map_id, const void *a, size_t an,
                         const void *b, size_t bn, loom_exec_out *out);

//  Largest output an item may produce (LOOM_ETOOBIG beyond). Default 64 MiB.
void loom_executor_set_max_output(loom_executor *self, size_t max);

#endif
