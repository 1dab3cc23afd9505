/*  loom client API: run a plugin's task over many inputs, in parallel.

        loom_client *c = loom_client_new(NULL, NULL);        //  embedded local cluster
        loom_pipeline *p = loom_pipeline_new(c, "demo");
        loom_map *m = loom_map_new(p, "squares", "square", NULL);
        for (int64_t x = 0; x < 1000; x++)
            loom_map_submit(m, &x, sizeof x);
        loom_map_close(m);
        loom_result r;
        while (loom_map_next(m, &r, -1) == 1)
            ...  r.index, r.status, r.data, r.len, r.error
        loom_map_destroy(&m);
        loom_pipeline_destroy(&p);
        loom_client_destroy(&c);

    Every function returning int returns 0 (or a count or flag where its
    comment says so) or a negative LOOM_E* code; loom_strerror names it.
    Objects are not thread-safe: use each client, and what it made, from one
    thread at a time.  */

#ifndef LOOM_LOOM_H
#define LOOM_LOOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <loom/errors.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LOOM_EXPORT __attribute__((visibility("default")))
#else
#define LOOM_EXPORT
#endif

#define LOOM_VERSION_MAJOR 0
#define LOOM_VERSION_MINOR 1
#define LOOM_VERSION_PATCH 0

//  Index of the one combined result of a reduce map.
#define LOOM_REDUCED_INDEX UINT64_MAX

typedef struct loom_client loom_client;
typedef struct loom_pipeline loom_pipeline;
typedef struct loom_map loom_map;

typedef struct loom_result {
    uint64_t index;         //  submission order, from 0; LOOM_REDUCED_INDEX for a reduce
    int status;             //  0 or a negative LOOM_E* code
    const void *data;       //  the task's output
    size_t len;
    const char *error;      //  message naming the cause, or NULL
    size_t nfiles;          //  output files (loom_task_output_file), as local read-only
    const char *const *file_names; //  paths; the files, names and paths stay valid
    const char *const *file_paths; //  until loom_map_destroy, which removes the files.
    //  A reduce map's combined result (LOOM_REDUCED_INDEX) carries the output
    //  files of every successful item, in index order, each named
    //  "INDEX/NAME" (item INDEX asked loom_task_output_file for NAME), so
    //  names are unique across items. If one could not be fetched, that
    //  result has status LOOM_EIO and an error naming the item and the file
    //  (its data, the fold, is still there). A reduce map whose items
    //  succeeded but whose map failed before they were combined still ends
    //  with a combined result: its status and error say why, with the files.
} loom_result;

typedef struct loom_map_opts {
    const void *args; //  bytes every task reads with loom_task_args
    size_t args_len;
    bool ordered;    //  results in submission order
    int chunk;       //  items per batch; 0: automatic
    int window;      //  items in flight; 0: default (10000)
    int retries;     //  per item after its worker died or timed out; 0: default (2); -1: none
    int timeout_ms;  //  per item; 0: none
    bool reduce;     //  one combined result, made with the task's reduce on the workers
    const char *journal; //  SQLite checkpoint file, or NULL (not implemented yet: LOOM_ENOTSUP)
    //  Called as results arrive (r valid during the call only), from within
    //  submit, next or close; it must not call loom functions of the same
    //  client (they return LOOM_ESTATE).
    void (*on_result)(const loom_result *r, void *user);
    void *user;
    //  Runs more for an item whose task failed (LOOM_ETASK) or ran past
    //  timeout_ms (LOOM_ETIMEDOUT), as GNU parallel's --retries: it runs
    //  again after 0.1 s, doubling each retry up to 30 s, on another worker
    //  process than the one it failed on while there is another. Only its
    //  last run's result is delivered; the failures before are dropped.
    //  These runs do not count in `retries` (crashes). 0: none.
    int retry_failed;
    //  Fail fast, as GNU parallel's --halt now,fail=N: once this many items
    //  have failed (after their retries), the map is cancelled: its workers
    //  drop its batches (items running are stopped as a cancel stops them),
    //  every index submitted and not done yet still yields exactly one
    //  result, status LOOM_ECANCELED and error "not run: map halted after N
    //  failures" (a reduce's combined result too), and loom_map_submit
    //  returns LOOM_ECANCELED from then on. 0: never.
    int halt_after_failures;
    //  How long a plugin's init (and the loading of its library) may take in
    //  a worker process, in ms; 0: default (60000); -1: no limit. An init
    //  that fails (non-zero, or loom_worker_fail) fails the item that met it
    //  with LOOM_EINIT and an error naming the plugin, init and the cause;
    //  that process is sent no more of the plugin's maps, and what else it
    //  had been sent runs on the other workers. An init past
    //  this timeout, or one that kills its process, ends that process (the
    //  map's items there run again elsewhere, uncharged); once processes
    //  died in the map's init more than `retries` times, or no worker can
    //  run it, the rest of the map fails the same way at once.
    int init_timeout_ms;
} loom_map_opts;

typedef struct loom_client_opts {
    int local_workers;       //  embedded mode: worker processes; 0: one per core
    const char *plugin_path; //  embedded mode; NULL: $LOOM_PLUGIN_PATH, then the defaults
    int timeout_ms;          //  connect and handshake; 0: default (5000). Also how long
                             //  a lost broker may stay away before LOOM_ECONNECT (the
                             //  client reconnects and resubmits); 0: 30000
    const char *cert_path;   //  CURVE: this peer's certificate (loom keygen NAME: NAME or NAME_secret)
    const char *server_key;  //  CURVE: the broker's public key, Z85 text or its certificate file
    //  Embedded mode, as `loom worker --max-tasks`: a worker process runs
    //  this many items (whole batches), then a new one takes its place
    //  (plugins that leak or creep). 0: never.
    int max_tasks;
    //  Embedded mode, as `loom worker --max-rss`: a worker process holding
    //  more than this many MiB after a batch is replaced by a new one; one
    //  going over it while an item runs is ended at once, and its batch
    //  runs again, each item alone on a fresh process (counted in
    //  `retries`); an item still going over it fails with LOOM_ENOMEM and
    //  "worker process PID ran out of memory: it held N MiB, over its
    //  limit of M MiB (--max-rss)". Without a limit, an item whose process
    //  the kernel's OOM killer killed fails the same way ("killed by the
    //  kernel's OOM killer (SIGKILL) holding N MiB") when the supervisor
    //  saw the kill counted (cgroup or /proc/vmstat), else as a crash
    //  ("killed by signal 9 (SIGKILL) holding N MiB"). 0: no limit.
    int max_rss_mb;
} loom_client_opts;

typedef struct loom_stats {
    uint64_t submitted; //  items submitted
    uint64_t done;      //  results delivered with status 0
    uint64_t failed;    //  results delivered with an error
    uint64_t in_flight; //  submitted, not yet delivered
} loom_stats;

//  Connect to the broker at endpoint ("tcp://host:5555", "ipc://path"), or,
//  with endpoint NULL, start an embedded broker in this process and
//  opts->local_workers worker processes over ipc:// in a private 0700
//  directory; all stopped by loom_client_destroy. opts may be NULL.
//  Returns NULL on failure (the reason is logged on stderr).
LOOM_EXPORT loom_client *loom_client_new(const char *endpoint, const loom_client_opts *opts);

//  Close the connection (and the embedded cluster); destroys any pipeline
//  and map still open. Sets *self_p to NULL; accepts NULL.
LOOM_EXPORT void loom_client_destroy(loom_client **self_p);

//  Open a pipeline: a scope for maps and their shares. NULL on failure.
LOOM_EXPORT loom_pipeline *loom_pipeline_new(loom_client *c, const char *name);

//  Share bytes or a file with every task of the pipeline, under `name`
//  (1-255 bytes, no '/'; a name shared again is replaced). Returns once the
//  broker holds them (uploaded in chunks, or skipped: the broker has those
//  bytes already), so the caller may free them; a file is streamed, never
//  read whole. Tasks of maps opened afterwards read it with
//  loom_task_shared / loom_task_shared_path; each worker host fetches it
//  once. Returns 0; LOOM_EINVAL (bad name; path not a regular file),
//  LOOM_ENOENT (no such path), LOOM_EIO, LOOM_ETIMEDOUT, LOOM_ETOOBIG
//  (over the broker's store cap), LOOM_ENOTSUP (no blob channel); the
//  error is logged with the name and path.
//  If the broker restarts and lost them (no --store), the client uploads
//  them again before its maps resume: a file from its path (so keep it
//  unchanged while the pipeline lives), bytes from a private copy that
//  loom_pipeline_share writes to an unlinked temp file in $TMPDIR (else
//  /tmp) and keeps until the pipeline is destroyed (disk, not memory; no
//  copy with the embedded cluster). If that copy cannot be written the
//  call still succeeds (a warning is logged). A share that cannot be
//  restored fails the pipeline's open maps with LOOM_ECONNECT and a
//  message naming it.
LOOM_EXPORT int loom_pipeline_share(loom_pipeline *p, const char *name, const void *data,
                                    size_t len);
LOOM_EXPORT int loom_pipeline_share_file(loom_pipeline *p, const char *name, const char *path);

//  Close the pipeline and destroy its maps. Sets *self_p to NULL.
LOOM_EXPORT void loom_pipeline_destroy(loom_pipeline **self_p);

//  Start a map of plugin's task ("NAME" or "NAME@VERSION" to pin the plugin
//  version). opts may be NULL. The plugin is looked up by the workers:
//  an unknown plugin or task makes every item fail with a message naming it.
//  NULL if the names are invalid or the client is not connected.
LOOM_EXPORT loom_map *loom_map_new(loom_pipeline *p, const char *plugin, const char *task,
                                   const loom_map_opts *opts);

//  Submit one item (the bytes are copied). Blocks while `window` items are
//  in flight, receiving results meanwhile (buffered for next, or given to
//  on_result). Returns 0 or LOOM_ESTATE after close, LOOM_ETOOBIG,
//  LOOM_ECONNECT, LOOM_EINVAL (input NULL with len > 0), or the error the
//  broker reported for the map.
LOOM_EXPORT int loom_map_submit(loom_map *m, const void *input, size_t len);

//  Submit one item with n files attached: names[i] (1-255 bytes, no '/',
//  distinct) is what the task asks loom_task_file for, paths[i] a regular
//  file here. Each file is uploaded before the item is submitted (once per
//  content: bytes the broker holds are not sent again). A missing path, a
//  directory or an unreadable file is refused (LOOM_ENOENT, LOOM_EINVAL,
//  LOOM_EIO, logged with the path) and nothing is submitted. Otherwise as
//  loom_map_submit.
LOOM_EXPORT int loom_map_submit_files(loom_map *m, const void *input, size_t len,
                                      const char *const names[], const char *const paths[],
                                      size_t n);

//  No more inputs. Returns 0 or a LOOM_E* code.
LOOM_EXPORT int loom_map_close(loom_map *m);

//  Wait up to timeout_ms (-1: forever) for the next result. Returns 1 with
//  *r filled (valid until the next call on the map), 0 when every result has
//  been delivered (after close), LOOM_EAGAIN if none came in time (or a
//  signal handler ran meanwhile), or another negative code. With on_result
//  set, results go to the callback and next only returns 0 at the end.
LOOM_EXPORT int loom_map_next(loom_map *m, loom_result *r, int timeout_ms);

//  Counters of the map so far.
LOOM_EXPORT void loom_map_stats(loom_map *m, loom_stats *s);

//  Cancel the map if it is still running and free it. Sets *self_p to NULL.
//  Its items running on workers stop: a task that checks
//  loom_task_cancelled returns at once; one still running
//  LOOM_CANCEL_GRACE_MS (1 s, plugin.h) after the cancel reached its
//  worker has that worker process ended and restarted, so the workers
//  take other maps' work within about a second. The same happens when a
//  client dies (once the broker notices) or `loom map` gets Ctrl-C.
LOOM_EXPORT void loom_map_destroy(loom_map **self_p);

//  A static string naming a LOOM_E* code.
LOOM_EXPORT const char *loom_strerror(int err);

//  The library version as "MAJOR.MINOR.PATCH".
LOOM_EXPORT const char *loom_version(void);

#ifdef __cplusplus
}
#endif

#endif
