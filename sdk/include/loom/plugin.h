/*  loom plugin SDK: the one header a plugin author includes.

    A plugin is a shared object with one exported symbol, the entry function
    that LOOM_PLUGIN(...) defines. It links nothing from loom: every call a
    task makes goes through a table of functions the worker hands it (the
    `host` pointer at the start of every loom_task), wrapped by the inline
    functions below, the way Redis modules and SQLite extensions work.

        #include <loom/plugin.h>
        #include <string.h>

        static int
        s_square(loom_task *t)
        {
            size_t n;
            const void *in = loom_task_input(t, &n);
            int64_t x;
            if (n != sizeof x)
                return loom_task_fail(t, "square: want 8 bytes, got %zu", n);
            memcpy(&x, in, sizeof x);
            x *= x;
            return loom_task_output(t, &x, sizeof x);
        }

        static const loom_task_def s_tasks[] = {
            { .name = "square", .run = s_square, .doc = "x*x for int64 x" },
            { 0 }
        };

        LOOM_PLUGIN(.name = "squares", .version = "1.0.0", .tasks = s_tasks);

    ABI rules: every struct here is append-only. A new field bumps
    LOOM_PLUGIN_ABI_MINOR; any other change bumps the major, and a worker
    refuses a plugin whose major differs from its own.  */

#ifndef LOOM_PLUGIN_H
#define LOOM_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PLUGIN_MAGIC 0x4d4f4f4cu /* "LOOM" read as a little-endian uint32 */
#define LOOM_PLUGIN_ABI_MAJOR 1
#define LOOM_PLUGIN_ABI_MINOR 1 /* 1.1: loom_task_cancelled, loom_worker_fail */
#define LOOM_PLUGIN_ENTRY loom_plugin_entry
#define LOOM_PLUGIN_ENTRY_NAME "loom_plugin_entry"

#if defined(__GNUC__)
#define LOOM_PLUGIN_EXPORT __attribute__((visibility("default")))
#define LOOM_PLUGIN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LOOM_PLUGIN_EXPORT
#define LOOM_PLUGIN_PRINTF(f, a)
#endif

typedef struct loom_host loom_host;
typedef struct loom_task loom_task;
typedef struct loom_worker loom_worker;

//  What a plugin sees of a task and of its worker: the host table only.
//  The runtime's own structs start with this member and add private fields.
struct loom_task {
    const loom_host *host;
};
struct loom_worker {
    const loom_host *host;
};

//  The table of functions the worker fills. Starts with its own size and
//  ABI minor so a plugin can tell which functions a worker has.
struct loom_host {
    uint32_t struct_size;
    uint32_t abi_minor;
    const void *(*input)(loom_task *t, size_t *len);
    const void *(*args)(loom_task *t, size_t *len);
    int (*output)(loom_task *t, const void *data, size_t len);
    int (*vfail)(loom_task *t, const char *fmt, va_list ap);
    void (*vlog)(loom_task *t, const char *fmt, va_list ap);
    void *(*state)(loom_task *t);
    uint32_t (*task_worker_id)(loom_task *t);
    uint32_t (*worker_id)(loom_worker *w);
    uint64_t (*index)(loom_task *t);
    const void *(*shared)(loom_task *t, const char *name, size_t *len);
    const char *(*shared_path)(loom_task *t, const char *name);
    const char *(*file)(loom_task *t, const char *name);
    const char *(*output_file)(loom_task *t, const char *name);
    //  1.1
    int (*cancelled)(loom_task *t);
    int (*worker_vfail)(loom_worker *w, const char *fmt, va_list ap);
};

//  A task: `run` is called once per item. Returns 0, or a negative LOOM_E*
//  code (usually through loom_task_fail); a non-zero return fails the item,
//  never the worker. `reduce` (optional) combines two outputs a and b into
//  one, written with loom_task_output; it must be associative and
//  commutative, since loom combines partial outputs in any order.
typedef int (*loom_run_fn)(loom_task *t);
typedef int (*loom_reduce_fn)(loom_task *t, const void *a, size_t an, const void *b, size_t bn);

typedef struct loom_task_def {
    const char *name; //  [a-z0-9_-]{1,64}
    loom_run_fn run;
    loom_reduce_fn reduce; //  NULL: the task cannot be used with reduce
    const char *doc;       //  one line for `loom plugin inspect`
} loom_task_def;

//  Runs once per worker process, when the plugin is first used; whatever it
//  stores in *state is returned by loom_task_state(). Non-zero (or a call
//  of loom_worker_fail) fails the item that met it with LOOM_EINIT and a
//  message naming the plugin, init and the cause (the reason given to
//  loom_worker_fail, else the return code); that process is sent no more
//  of the plugin's maps (a restarted process runs init again), and the
//  other items go to the other worker processes; when none can run them,
//  they all fail that way. init runs
//  under a timeout (loom_map_opts.init_timeout_ms, default 60 s): past it,
//  or if it crashes, the process is ended and restarted and its items run
//  elsewhere; after more such deaths than the map's retries the map's items
//  fail the same way, naming the timeout or the signal.
typedef int (*loom_init_fn)(loom_worker *w, void **state);
typedef void (*loom_fini_fn)(void *state);

//  The descriptor the entry function returns. The first five fields are
//  filled by LOOM_PLUGIN; tasks is an array ended by an entry whose name is
//  NULL, read with a stride of task_size so loom_task_def may grow.
typedef struct loom_plugin_def {
    uint32_t magic;
    uint16_t abi_major;
    uint16_t abi_minor;
    uint32_t struct_size;
    uint32_t task_size;
    uint32_t flags; //  reserved, 0
    const char *name;
    const char *version;
    const loom_task_def *tasks;
    loom_init_fn init;
    loom_fini_fn fini;
} loom_plugin_def;

//  Size of the 1.0 descriptor: a worker accepts no smaller one.
#define LOOM_PLUGIN_SIZE_1_0 (offsetof(loom_plugin_def, fini) + sizeof(loom_fini_fn))
#define LOOM_HOST_SIZE_1_0 (offsetof(loom_host, output_file) + sizeof(void *))
#define LOOM_HOST_SIZE_1_1 (offsetof(loom_host, worker_vfail) + sizeof(void *))

//  True if host table h (of h->struct_size bytes) has the function: a
//  plugin built for this minor may run on an older worker, whose table is
//  shorter (the wrappers below fall back then).
#define LOOM_HOST_HAS(h, field)                                                                    \
    ((h)->struct_size >= offsetof(loom_host, field) + sizeof((h)->field))

//  True if descriptor p (of struct_size bytes) has the field.
#define LOOM_PLUGIN_HAS(p, field)                                                                  \
    ((p)->struct_size >= offsetof(loom_plugin_def, field) + sizeof((p)->field))

typedef const loom_plugin_def *(*loom_plugin_entry_fn)(void);

//  Define the plugin: LOOM_PLUGIN(.name = "x", .version = "1.0.0", .tasks = t,
//  .init = NULL, .fini = NULL); — with the semicolon, exactly once per
//  plugin. (It ends with a declaration so the semicolon is not stray.)
#define LOOM_PLUGIN(...)                                                                           \
    LOOM_PLUGIN_EXPORT const loom_plugin_def *LOOM_PLUGIN_ENTRY(void);                             \
    LOOM_PLUGIN_EXPORT const loom_plugin_def *LOOM_PLUGIN_ENTRY(void)                              \
    {                                                                                              \
        static const loom_plugin_def s_loom_def = {.magic = LOOM_PLUGIN_MAGIC,                     \
                                                   .abi_major = LOOM_PLUGIN_ABI_MAJOR,             \
                                                   .abi_minor = LOOM_PLUGIN_ABI_MINOR,             \
                                                   .struct_size = sizeof(loom_plugin_def),         \
                                                   .task_size = sizeof(loom_task_def),             \
                                                   __VA_ARGS__};                                   \
        return &s_loom_def;                                                                        \
    }                                                                                              \
    LOOM_PLUGIN_EXPORT const loom_plugin_def *LOOM_PLUGIN_ENTRY(void)

//  The item's input bytes. No alignment is promised: memcpy before use.
static inline const void *
loom_task_input(loom_task *t, size_t *len)
{
    return t->host->input(t, len);
}

//  The map's args bytes (loom_map_opts.args), the same for every item.
static inline const void *
loom_task_args(loom_task *t, size_t *len)
{
    return t->host->args(t, len);
}

//  Append bytes to the item's output; may be called repeatedly. The worker
//  copies them. Returns 0, or LOOM_ENOMEM / LOOM_ETOOBIG.
static inline int
loom_task_output(loom_task *t, const void *data, size_t len)
{
    return t->host->output(t, data, len);
}

//  Fail the item with a printf-style message; returns LOOM_ETASK, so a task
//  may `return loom_task_fail(t, ...)`.
static inline LOOM_PLUGIN_PRINTF(2, 3) int loom_task_fail(loom_task *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = t->host->vfail(t, fmt, ap);
    va_end(ap);
    return rc;
}

//  Log a line on the worker's log, tagged with plugin, task and item.
static inline LOOM_PLUGIN_PRINTF(2, 3) void loom_task_log(loom_task *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    t->host->vlog(t, fmt, ap);
    va_end(ap);
}

//  What the plugin's init stored for this worker process, or NULL.
static inline void *
loom_task_state(loom_task *t)
{
    return t->host->state(t);
}

//  A small integer, unique among the live worker processes of a broker.
static inline uint32_t
loom_task_worker_id(loom_task *t)
{
    return t->host->task_worker_id(t);
}

static inline uint32_t
loom_worker_id(loom_worker *w)
{
    return w->host->worker_id(w);
}

//  The item's index in its map (submission order, from 0).
static inline uint64_t
loom_task_index(loom_task *t)
{
    return t->host->index(t);
}

//  Read-only bytes of a pipeline share, or NULL if there is no such share.
static inline const void *
loom_task_shared(loom_task *t, const char *name, size_t *len)
{
    return t->host->shared(t, name, len);
}

//  Local read-only path of a pipeline share, or NULL.
static inline const char *
loom_task_shared_path(loom_task *t, const char *name)
{
    return t->host->shared_path(t, name);
}

//  Local read-only path of a file attached to this item, or NULL.
static inline const char *
loom_task_file(loom_task *t, const char *name)
{
    return t->host->file(t, name);
}

//  A writable local path; the file written there goes back to the client
//  under `name`. NULL if the name is invalid or files are not available.
static inline const char *
loom_task_output_file(loom_task *t, const char *name)
{
    return t->host->output_file(t, name);
}

//  1 once the item's map was cancelled (loom_map_destroy, Ctrl-C in `loom
//  map`, its client gone, a fail-fast halt), else 0. A long task may check
//  it now and then and return early: whatever it returns once cancelled is
//  dropped (the item is reported cancelled, never as a success). A task
//  still running LOOM_CANCEL_GRACE_MS after the cancel reached its worker
//  process has that process ended and restarted, so checking is optional.
//  Always 0 on a worker older than ABI 1.1.
#define LOOM_CANCEL_GRACE_MS 1000

static inline int
loom_task_cancelled(loom_task *t)
{
    return LOOM_HOST_HAS(t->host, cancelled) ? t->host->cancelled(t) : 0;
}

//  From init only: fail init with a printf-style reason, which the map's
//  items then report ("plugin 'x' init failed: REASON"). Returns LOOM_EINIT,
//  so init may `return loom_worker_fail(w, ...)`. Init fails once this is
//  called, whatever it returns after. On a worker older than ABI 1.1 the
//  reason is lost (init still fails if it returns non-zero).
static inline LOOM_PLUGIN_PRINTF(2, 3) int loom_worker_fail(loom_worker *w, const char *fmt, ...)
{
    if (!LOOM_HOST_HAS(w->host, worker_vfail))
        return LOOM_EINIT;
    va_list ap;
    va_start(ap, fmt);
    int rc = w->host->worker_vfail(w, fmt, ap);
    va_end(ap);
    return rc;
}

#ifdef __cplusplus
}
#endif

#endif
