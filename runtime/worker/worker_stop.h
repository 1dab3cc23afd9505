/*  worker_stop: when a worker process must stop what its main thread runs,
    and how it says why (issue 21: cancel stops running work, init is
    bounded and explains itself).

    - A cancelled map's item still running: loom_task_cancelled answers 1 at
      once (cooperative tasks return), and LOOM_CANCEL_GRACE_MS after the
      Cancel reached the process it ends itself with
      LOOM_WORKER_EXIT_CANCELLED; the supervisor starts a new one.
    - A plugin's init (with the loading of its library) past its timeout:
      the process ends with LOOM_WORKER_EXIT_INIT. The same for a cancelled
      map's init after the grace.
    - The init marker: before running a plugin's init the main thread
      writes CACHE/init-PID (map id, plugin, timeout) and removes it after.
      A process that dies meanwhile (crash, timeout, OOM) leaves it; its
      supervisor reads it when it reaps the process and tells the broker
      in WorkerExit (init_map, init_error), so the items fail with a
      message naming init and the cause.

    The watch itself (loom__stopwatch) is plain data: the worker process
    keeps one in its connection, changed and read under the connection's
    lock (the main thread before and after plugin code, the watchdog thread
    at each tick), except `cancelled`, which the executor reads from the
    task.  */

#ifndef LOOM_WORKER_STOP_H
#define LOOM_WORKER_STOP_H

#include "wire.h"              //  LOOM_WORKER_EXIT_*
#include <loom/plugin.h> //  LOOM_CANCEL_GRACE_MS
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

//  The exit statuses it ends a process with (LOOM_WORKER_EXIT_CANCELLED,
//  LOOM_WORKER_EXIT_INIT) are the protocol's: wire.h.

//  Default plugin init timeout (loom_map_opts.init_timeout_ms 0).
#define LOOM_INIT_TIMEOUT_DEFAULT_MS 60000

typedef struct {
    atomic_int cancelled;     //  what loom_task_cancelled answers
    uint64_t map;             //  the map whose item or init runs; 0: nothing watched
    bool init;                //  it is a plugin's init (else a batch's items)
    char plugin[72];          //  init: the plugin's name
    int64_t init_start_ms;    //  init: when it started
    uint32_t init_timeout_ms; //  init: its timeout, 0: none
    int64_t cancel_at_ms;     //  when a Cancel of `map` came; 0: none
} loom__stopwatch;

//  Nothing runs.
void loom__stopwatch_clear(loom__stopwatch *self);

//  A batch of map starts (its items run until clear).
void loom__stopwatch_items(loom__stopwatch *self, uint64_t map);

//  The plugin's init starts for map, with timeout_ms (0: none).
void loom__stopwatch_init(loom__stopwatch *self, uint64_t map, const char *plugin,
                          uint32_t timeout_ms, int64_t now_ms);

//  A Cancel of map came: if map's item or init runs, the task is told and
//  the grace starts. Returns true if it concerned what runs.
bool loom__stopwatch_cancel(loom__stopwatch *self, uint64_t map, int64_t now_ms);

//  What to do at now_ms: 0 (nothing), LOOM_WORKER_EXIT_CANCELLED (the
//  grace is over and the cancelled item or init still runs; item_running:
//  an item of the batch is running now, not between two), or
//  LOOM_WORKER_EXIT_INIT (init past its timeout).
int loom__stopwatch_due(const loom__stopwatch *self, int64_t now_ms, bool item_running);

//  The next moment loom__stopwatch_due may change its answer, or INT64_MAX.
int64_t loom__stopwatch_next(const loom__stopwatch *self);

//  ---------------------------------------------------------------------
//  The init marker (cache_dir NULL: none is kept)

//  Write cache_dir/init-PID for this process. Returns 0 or LOOM_EIO.
int loom__init_mark(const char *cache_dir, uint64_t map, const char *plugin, uint32_t timeout_ms);

//  Remove this process's marker (after init returned; at start, a stale
//  one of a process that had this pid).
void loom__init_unmark(const char *cache_dir);

//  The supervisor, reaping pid with wait status wstatus: if pid left a
//  marker, remove it, set *map and write into error (cap bytes) what
//  happened ("plugin 'x' init crashed the worker process: killed by
//  signal 11 (SIGSEGV)", "plugin 'x' init timed out after 5000 ms
//  (init_timeout_ms)") and return true; else false.
bool loom__init_marker_take(const char *cache_dir, pid_t pid, int wstatus, uint64_t *map,
                            char *error, size_t cap);

#endif
