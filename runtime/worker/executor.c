/*  executor: runs plugin tasks in this process.

    The executor keeps the plugins it loaded (by name; loaded once, never
    dlclosed) and the maps the worker told it about (by id). Running an
    item builds a task context on the stack: a private struct whose first
    member is the public `struct loom_task`, so the `loom_task *` a plugin
    gets back in every host call is cast back to it. Outputs are collected
    in a growing buffer, capped by max_output, and handed to the caller.

    Plugin init runs lazily, at the first open_map naming that plugin, once
    per executor (one executor per worker process). A failed init is not
    retried: the plugin may have half-built its state, and the SDK promises
    that an init failure fails every item sent to that process; restarting
    the worker process is the retry. Each later open_map of that plugin
    fails again with the same message.  */

#include <czmq.h>

#include "base.h"
#include "executor.h"
#include "paths.h"
#include "plugin_loader.h"
#include "safe_paths.h"


#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

#define S_DEFAULT_MAX_OUTPUT ((size_t)64 << 20)
#define S_MAX_MESSAGE 4096
#define S_SCRATCH 256 //  run output first written in the executor (run_keep)

//  A plugin this executor loaded.
typedef struct {
    char *name;           //  Plugin name, as requested
    loom_plugin_lib *lib; //  Loaded and checked library
    bool init_done;       //  init has run (successfully or not)
    int init_rc;          //  What init returned; 0 when it succeeded or there is none
    char *init_reason;    //  Why init failed (owned), or NULL
    void *state;          //  What init stored
} s_plugin;

//  A pipeline share as a task sees it: a read-only mapping of a file in
//  the host's blob cache.
typedef struct {
    char *name;
    char *path;
    void *addr; //  mmap'd, or NULL for an empty share
    size_t len;
} s_share;

//  An open map.
typedef struct {
    uint64_t id;               //  The worker's map id
    s_plugin *plugin;          //  Borrowed from the executor's plugin list
    const loom_task_def *task; //  Borrowed from the plugin's descriptor
    void *args;                //  Owned copy of the map's args, or NULL
    size_t args_len;
    bool reduce; //  The map reduces
    s_share *shares; //  The pipeline's shares (loom_executor_set_shares)
    size_t nshares;
} s_map;

struct loom_executor {
    loom_worker worker; //  First: the loom_worker plugins see in init
    char *path;         //  Plugin path, ':'-separated
    uint32_t worker_id; //  What loom_worker_id returns
    size_t max_output;  //  Largest output of one run or fold
    s_plugin **plugins; //  Loaded plugins
    size_t nplugins;
    s_map **maps; //  Open maps
    size_t nmaps;
    //  The next item's files (loom_executor_set_item_files), borrowed
    const char *const *in_names;
    const char *const *in_paths;
    size_t nin;
    char *out_dir;    //  where loom_task_output_file paths go, NULL: none
    char **out_names; //  output files asked for by the last run (owned)
    char **out_paths;
    size_t nout;
    //  Where a run's output goes first (loom_executor_run_keep): a small
    //  one stays here, lent to the caller, and costs no malloc and free.
    uint8_t scratch[S_SCRATCH];
    const atomic_int *cancelled; //  loom_task_cancelled reads it; NULL: never
    bool in_init;                //  a plugin's init runs (loom_worker_fail is for it)
    char *init_error;            //  what init gave loom_worker_fail, or NULL
};

//  The context of one run or fold; plugins see only its first member.
typedef struct {
    struct loom_task base; //  First: the host pointer
    loom_executor *exec;   //  The executor running it
    s_map *map;            //  The map it belongs to
    const void *input;     //  Item bytes (borrowed)
    size_t input_len;
    uint8_t *out; //  Output so far (owned until handed over)
    size_t out_len;
    size_t out_cap;
    bool scratch;   //  out is the executor's scratch (not owned)
    size_t keep;    //  outputs up to this size stay in the scratch, lent
    bool too_big;   //  An output call went over max_output
    char *error;    //  Message from loom_task_fail, or NULL
    uint64_t index; //  Item index; UINT64_MAX in a fold
} s_ctx;

static const loom_host s_host;

static s_ctx *
s_ctx_of(loom_task *t)
{
    LOOM_ASSERT(t && t->host == &s_host);
    return (s_ctx *)t;
}

//  A malloc'd message, vsnprintf-formatted, truncated at S_MAX_MESSAGE.
static char *
s_vformat(const char *fmt, va_list ap)
{
    char *msg = loom_xmalloc(S_MAX_MESSAGE);
    int n = vsnprintf(msg, S_MAX_MESSAGE, fmt ? fmt : "(no message)", ap);
    if (n < 0)
        snprintf(msg, S_MAX_MESSAGE, "(unprintable message)");
    return loom_xrealloc(msg, strlen(msg) + 1);
}

static LOOM_PRINTF(1, 2) char *s_format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = s_vformat(fmt, ap);
    va_end(ap);
    return msg;
}

//  ---------------------------------------------------------------------
//  The host table

static const void *
s_input(loom_task *t, size_t *len)
{
    s_ctx *ctx = s_ctx_of(t);
    if (len)
        *len = ctx->input_len;
    return ctx->input ? ctx->input : "";
}

static const void *
s_args(loom_task *t, size_t *len)
{
    s_ctx *ctx = s_ctx_of(t);
    if (len)
        *len = ctx->map->args_len;
    return ctx->map->args ? ctx->map->args : "";
}

static int
s_output(loom_task *t, const void *data, size_t len)
{
    s_ctx *ctx = s_ctx_of(t);
    if (len == 0)
        return 0;
    if (!data)
        return LOOM_EINVAL;
    size_t max = ctx->exec->max_output;
    if (ctx->too_big || len > max || ctx->out_len > max - len) {
        ctx->too_big = true;
        return LOOM_ETOOBIG;
    }
    size_t need = ctx->out_len + len;
    if (need > ctx->out_cap) {
        size_t cap = ctx->out_cap ? ctx->out_cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        if (cap > max)
            cap = max;
        uint8_t *out;
        if (ctx->scratch) {
            out = malloc(cap);
            if (out && ctx->out_len)
                memcpy(out, ctx->out, ctx->out_len);
        } else
            out = realloc(ctx->out, cap);
        if (!out)
            return LOOM_ENOMEM;
        ctx->scratch = false;
        ctx->out = out;
        ctx->out_cap = cap;
    }
    loom_copy(ctx->out + ctx->out_len, data, len);
    ctx->out_len += len;
    return 0;
}

static int
s_vfail(loom_task *t, const char *fmt, va_list ap)
{
    s_ctx *ctx = s_ctx_of(t);
    //  The first failure is usually the cause; later ones are kept out.
    if (!ctx->error)
        ctx->error = s_vformat(fmt, ap);
    return LOOM_ETASK;
}

static void
s_vlog(loom_task *t, const char *fmt, va_list ap)
{
    s_ctx *ctx = s_ctx_of(t);
    char line[1024];
    if (vsnprintf(line, sizeof line, fmt ? fmt : "", ap) < 0)
        snprintf(line, sizeof line, "(unprintable message)");
    const char *plugin = ctx->map->plugin->name;
    const char *task = ctx->map->task->name;
    if (ctx->index == UINT64_MAX)
        loom_log_info("plugin %s task %s reduce: %s", plugin, task, line);
    else
        loom_log_info("plugin %s task %s item %llu: %s", plugin, task,
                      (unsigned long long)ctx->index, line);
}

static void *
s_state(loom_task *t)
{
    return s_ctx_of(t)->map->plugin->state;
}

static uint32_t
s_task_worker_id(loom_task *t)
{
    return s_ctx_of(t)->exec->worker_id;
}

static uint32_t
s_worker_id(loom_worker *w)
{
    LOOM_ASSERT(w && w->host == &s_host);
    return ((loom_executor *)w)->worker_id;
}

static uint64_t
s_index(loom_task *t)
{
    return s_ctx_of(t)->index;
}

static const s_share *
s_share_find(s_map *map, const char *name)
{
    for (size_t i = 0; name && i < map->nshares; i++)
        if (!strcmp(map->shares[i].name, name))
            return &map->shares[i];
    return NULL;
}

//  A share's bytes (read-only mapping), NULL if the pipeline has no such share.
static const void *
s_shared(loom_task *t, const char *name, size_t *len)
{
    const s_share *sh = s_share_find(s_ctx_of(t)->map, name);
    if (len)
        *len = sh ? sh->len : 0;
    if (!sh)
        return NULL;
    return sh->addr ? sh->addr : "";
}

static const char *
s_shared_path(loom_task *t, const char *name)
{
    const s_share *sh = s_share_find(s_ctx_of(t)->map, name);
    return sh ? sh->path : NULL;
}

//  Local read-only path of a file attached to the running item, or NULL.
static const char *
s_file(loom_task *t, const char *name)
{
    loom_executor *exec = s_ctx_of(t)->exec;
    for (size_t i = 0; name && i < exec->nin; i++)
        if (!strcmp(exec->in_names[i], name))
            return exec->in_paths[i];
    return NULL;
}

//  Output file names: loom_file_name_valid, as everywhere else.
static bool
s_out_name_valid(const char *name)
{
    return loom_file_name_valid(name);
}

//  A writable path for output file `name` of the running item; NULL for an
//  invalid name, in a fold, or when this executor has no output dir.
static const char *
s_output_file(loom_task *t, const char *name)
{
    s_ctx *ctx = s_ctx_of(t);
    loom_executor *exec = ctx->exec;
    if (!exec->out_dir || ctx->index == UINT64_MAX || !s_out_name_valid(name))
        return NULL;
    for (size_t i = 0; i < exec->nout; i++)
        if (!strcmp(exec->out_names[i], name))
            return exec->out_paths[i];
    if (exec->nout >= 1024)
        return NULL;
    exec->out_names = loom_xrealloc(exec->out_names, (exec->nout + 1) * sizeof(char *));
    exec->out_paths = loom_xrealloc(exec->out_paths, (exec->nout + 1) * sizeof(char *));
    exec->out_names[exec->nout] = loom_xstrdup(name);
    exec->out_paths[exec->nout] = s_format("%s/%s", exec->out_dir, name);
    return exec->out_paths[exec->nout++];
}

static int
s_cancelled(loom_task *t)
{
    const atomic_int *flag = s_ctx_of(t)->exec->cancelled;
    return flag && atomic_load_explicit(flag, memory_order_relaxed) ? 1 : 0;
}

static int
s_worker_vfail(loom_worker *w, const char *fmt, va_list ap)
{
    LOOM_ASSERT(w && w->host == &s_host);
    loom_executor *exec = (loom_executor *)w;
    if (!exec->in_init) {
        loom_log_warning("loom_worker_fail called outside init: ignored");
        return LOOM_EINIT;
    }
    //  The first reason is usually the cause; later ones are kept out.
    if (!exec->init_error)
        exec->init_error = s_vformat(fmt, ap);
    return LOOM_EINIT;
}

static const loom_host s_host = {
    .struct_size = sizeof(loom_host),
    .abi_minor = LOOM_PLUGIN_ABI_MINOR,
    .input = s_input,
    .args = s_args,
    .output = s_output,
    .vfail = s_vfail,
    .vlog = s_vlog,
    .state = s_state,
    .task_worker_id = s_task_worker_id,
    .worker_id = s_worker_id,
    .index = s_index,
    .shared = s_shared,
    .shared_path = s_shared_path,
    .file = s_file,
    .output_file = s_output_file,
    .cancelled = s_cancelled,
    .worker_vfail = s_worker_vfail,
};

//  ---------------------------------------------------------------------

void
loom_exec_out_clear(loom_exec_out *out)
{
    if (!out)
        return;
    if (!out->borrowed)
        free(out->data);
    free(out->error);
    memset(out, 0, sizeof *out);
}

loom_executor *
loom_executor_new(const char *plugin_path, uint32_t worker_id)
{
    loom_executor *self = loom_xcalloc(1, sizeof *self);
    self->worker.host = &s_host;
    self->path = loom_xstrdup(plugin_path ? plugin_path : loom_plugin_default_path());
    self->worker_id = worker_id;
    self->max_output = S_DEFAULT_MAX_OUTPUT;
    return self;
}

static void
s_shares_clear(s_map *map)
{
    for (size_t i = 0; i < map->nshares; i++) {
        if (map->shares[i].addr)
            munmap(map->shares[i].addr, map->shares[i].len);
        free(map->shares[i].name);
        free(map->shares[i].path);
    }
    free(map->shares);
    map->shares = NULL;
    map->nshares = 0;
}

static void
s_map_destroy(s_map **map_p)
{
    s_map *map = *map_p;
    if (!map)
        return;
    s_shares_clear(map);
    free(map->args);
    free(map);
    *map_p = NULL;
}

void
loom_executor_destroy(loom_executor **self_p)
{
    LOOM_ASSERT(self_p);
    loom_executor *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->nmaps; i++)
        s_map_destroy(&self->maps[i]);
    free(self->maps);
    //  fini in reverse order of loading, for plugins whose init succeeded.
    for (size_t i = self->nplugins; i-- > 0;) {
        s_plugin *p = self->plugins[i];
        const loom_plugin_def *def = loom_plugin_lib_def(p->lib);
        if (p->init_done && p->init_rc == 0 && def->fini)
            def->fini(p->state);
        loom_plugin_lib_destroy(&p->lib);
        free(p->init_reason);
        free(p->name);
        free(p);
    }
    free(self->plugins);
    free(self->init_error);
    loom_executor_set_item_files(self, NULL, NULL, 0, NULL);
    free(self->path);
    free(self);
    *self_p = NULL;
}

//  The plugin named `name`, loaded now if needed; NULL with *reason set.
static s_plugin *
s_plugin_get(loom_executor *self, const char *name, int *rc, char **reason)
{
    for (size_t i = 0; i < self->nplugins; i++)
        if (!strcmp(self->plugins[i]->name, name))
            return self->plugins[i];
    loom_plugin_lib *lib;
    *rc = loom_plugin_lib_open(name, self->path, &lib, reason);
    if (*rc)
        return NULL;
    s_plugin *p = loom_xcalloc(1, sizeof *p);
    p->name = loom_xstrdup(name);
    p->lib = lib;
    self->plugins = loom_xrealloc(self->plugins, (self->nplugins + 1) * sizeof *self->plugins);
    self->plugins[self->nplugins++] = p;
    return p;
}

//  Run the plugin's init if it has not run yet; 0 or LOOM_EINIT + reason
//  (the one init gave loom_worker_fail, else its return code), the same
//  reason every time for a failed init.
static int
s_plugin_init(loom_executor *self, s_plugin *p, char **reason)
{
    const loom_plugin_def *def = loom_plugin_lib_def(p->lib);
    if (!p->init_done) {
        p->init_done = true;
        if (def->init) {
            self->in_init = true;
            free(self->init_error);
            self->init_error = NULL;
            p->init_rc = def->init(&self->worker, &p->state);
            self->in_init = false;
            if (self->init_error) {
                p->init_reason = self->init_error;
                self->init_error = NULL;
                if (p->init_rc == 0)
                    p->init_rc = LOOM_EINIT;
            } else if (p->init_rc)
                p->init_reason = s_format("init returned %d, giving no reason (the plugin "
                                          "may give one with loom_worker_fail)",
                                          p->init_rc);
            if (p->init_rc)
                loom_log_error("plugin %s: init failed: %s", p->name, p->init_reason);
        }
    }
    if (p->init_rc == 0)
        return 0;
    *reason = s_format("plugin '%s' init failed in worker process %d: %s", p->name, (int)getpid(),
                       p->init_reason);
    return LOOM_EINIT;
}

static s_map *
s_map_find(loom_executor *self, uint64_t map_id, size_t *at)
{
    for (size_t i = 0; i < self->nmaps; i++)
        if (self->maps[i]->id == map_id) {
            if (at)
                *at = i;
            return self->maps[i];
        }
    return NULL;
}

//  A malloc'd list of the plugin's task names, comma-separated.
static char *
s_task_list(const loom_plugin_lib *lib)
{
    size_t len = 1;
    const loom_task_def *t;
    for (size_t i = 0; (t = loom_plugin_lib_task_at(lib, i)); i++)
        len += strlen(t->name) + 2;
    char *list = loom_xmalloc(len);
    list[0] = 0;
    for (size_t i = 0; (t = loom_plugin_lib_task_at(lib, i)); i++) {
        if (i)
            strcat(list, ", ");
        strcat(list, t->name);
    }
    return list;
}

int
loom_executor_open_map(loom_executor *self, uint64_t map_id, const char *plugin,
                       const char *version, const char *task, const void *args, size_t args_len,
                       bool reduce, char **reason)
{
    LOOM_ASSERT(self);
    LOOM_ASSERT(reason);
    *reason = NULL;
    int rc = 0;
    s_plugin *p = s_plugin_get(self, plugin, &rc, reason);
    if (!p)
        return rc;
    const loom_plugin_def *def = loom_plugin_lib_def(p->lib);
    if (version && *version && strcmp(version, def->version)) {
        *reason = s_format("plugin '%s' is version %s here, the map wants %s (%s)", p->name,
                           def->version, version, loom_plugin_lib_file(p->lib));
        return LOOM_EVERSION;
    }
    const loom_task_def *t = loom_plugin_lib_task(p->lib, task);
    if (!t) {
        char *list = s_task_list(p->lib);
        if (loom_name_valid(task))
            *reason = s_format("plugin '%s' %s has no task '%s' (its tasks: %s)", p->name,
                               def->version, task, list);
        else
            *reason = s_format("invalid task name for plugin '%s' (its tasks: %s)", p->name, list);
        free(list);
        return LOOM_ENOENT;
    }
    if (reduce && !t->reduce) {
        *reason = s_format("task '%s' of plugin '%s' has no reduce function", t->name, p->name);
        return LOOM_ENOTSUP;
    }
    rc = s_plugin_init(self, p, reason);
    if (rc)
        return rc;
    if (args_len > 0 && !args) {
        *reason = loom_xstrdup("map args: NULL pointer with a non-zero length");
        return LOOM_EINVAL;
    }

    s_map *map = loom_xcalloc(1, sizeof *map);
    map->id = map_id;
    map->plugin = p;
    map->task = t;
    map->reduce = reduce;
    if (args_len > 0) {
        map->args = malloc(args_len);
        if (!map->args) {
            free(map);
            *reason = s_format("map args of %zu bytes: out of memory", args_len);
            return LOOM_ENOMEM;
        }
        memcpy(map->args, args, args_len);
        map->args_len = args_len;
    }
    size_t at;
    if (s_map_find(self, map_id, &at)) {
        s_map_destroy(&self->maps[at]);
        self->maps[at] = map;
    } else {
        self->maps = loom_xrealloc(self->maps, (self->nmaps + 1) * sizeof *self->maps);
        self->maps[self->nmaps++] = map;
    }
    return 0;
}

void
loom_executor_close_map(loom_executor *self, uint64_t map_id)
{
    LOOM_ASSERT(self);
    size_t at;
    if (!s_map_find(self, map_id, &at))
        return;
    s_map_destroy(&self->maps[at]);
    self->maps[at] = self->maps[--self->nmaps];
}

bool
loom_executor_has_map(loom_executor *self, uint64_t map_id)
{
    LOOM_ASSERT(self);
    return s_map_find(self, map_id, NULL) != NULL;
}

//  Turn a finished context and the task's return code into *out.
static int
s_finish(s_ctx *ctx, int rc, loom_exec_out *out)
{
    if (ctx->error) {
        out->status = LOOM_ETASK;
        out->error = ctx->error;
        ctx->error = NULL;
    } else if (ctx->too_big) {
        out->status = LOOM_ETOOBIG;
        out->error = s_format("task '%s' output is over the limit of %zu bytes",
                              ctx->map->task->name, ctx->exec->max_output);
    } else if (rc) {
        out->status = LOOM_ETASK;
        out->error =
            s_format("task returned %d (%s)", rc, rc < 0 ? loom_strerror(rc) : strerror(rc));
    }
    if (out->status == 0 && ctx->out_len > 0 && ctx->scratch) {
        //  Lend a small output; copy one the caller wants to own.
        if (ctx->out_len <= ctx->keep) {
            out->data = ctx->out;
            out->borrowed = true;
        } else {
            out->data = loom_xmalloc(ctx->out_len);
            memcpy(out->data, ctx->out, ctx->out_len);
        }
        out->len = ctx->out_len;
    } else if (ctx->scratch) {
        //  Nothing of ours to free.
    } else if (out->status == 0 && ctx->out_len > 0) {
        //  Hand the buffer over; give back the slack of a large one.
        out->data = ctx->out_cap - ctx->out_len > 4096 ? realloc(ctx->out, ctx->out_len) : NULL;
        if (!out->data)
            out->data = ctx->out;
        out->len = ctx->out_len;
    } else
        free(ctx->out);
    ctx->out = NULL;
    return out->status;
}

static void
s_ctx_init(s_ctx *ctx, loom_executor *self, s_map *map, uint64_t index)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->base.host = &s_host;
    ctx->exec = self;
    ctx->map = map;
    ctx->index = index;
}

int
loom_executor_run(loom_executor *self, uint64_t map_id, uint64_t index, const void *input,
                  size_t len, loom_exec_out *out)
{
    return loom_executor_run_keep(self, map_id, index, input, len, 0, out);
}

int
loom_executor_run_keep(loom_executor *self, uint64_t map_id, uint64_t index, const void *input,
                       size_t len, size_t keep, loom_exec_out *out)
{
    LOOM_ASSERT(self);
    LOOM_ASSERT(out);
    LOOM_ASSERT(input || len == 0);
    memset(out, 0, sizeof *out);
    s_map *map = s_map_find(self, map_id, NULL);
    if (!map) {
        out->status = LOOM_ENOENT;
        out->error = s_format("map %llu is not open in this worker", (unsigned long long)map_id);
        return out->status;
    }
    s_ctx ctx;
    s_ctx_init(&ctx, self, map, index);
    ctx.input = input;
    ctx.input_len = len;
    if (keep > 0) {
        ctx.out = self->scratch;
        ctx.out_cap = sizeof self->scratch;
        ctx.scratch = true;
        ctx.keep = keep < sizeof self->scratch ? keep : sizeof self->scratch;
    }
    int rc = map->task->run(&ctx.base);
    return s_finish(&ctx, rc, out);
}

int
loom_executor_reduce(loom_executor *self, uint64_t map_id, const void *a, size_t an, const void *b,
                     size_t bn, loom_exec_out *out)
{
    LOOM_ASSERT(self);
    LOOM_ASSERT(out);
    LOOM_ASSERT(a || an == 0);
    LOOM_ASSERT(b || bn == 0);
    memset(out, 0, sizeof *out);
    s_map *map = s_map_find(self, map_id, NULL);
    if (!map) {
        out->status = LOOM_ENOENT;
        out->error = s_format("map %llu is not open in this worker", (unsigned long long)map_id);
        return out->status;
    }
    if (!map->task->reduce) {
        out->status = LOOM_ENOTSUP;
        out->error = s_format("task '%s' of plugin '%s' has no reduce function", map->task->name,
                              map->plugin->name);
        return out->status;
    }
    s_ctx ctx;
    s_ctx_init(&ctx, self, map, UINT64_MAX);
    int rc = map->task->reduce(&ctx.base, a ? a : "", an, b ? b : "", bn);
    return s_finish(&ctx, rc, out);
}

//  ---------------------------------------------------------------------
//  Folds

#define S_FOLD_RANKS 64

struct loom_exec_fold {
    loom_executor *exec; //  Borrowed
    uint64_t map_id;     //  The map whose reduce combines
    uint64_t count;      //  Outputs added since the last take
    struct {
        void *data; //  Owned; the combination of 2^rank outputs
        size_t len;
        bool used;
    } rank[S_FOLD_RANKS];
};

loom_exec_fold *
loom_exec_fold_new(loom_executor *exec, uint64_t map_id)
{
    LOOM_ASSERT(exec);
    loom_exec_fold *self = loom_xcalloc(1, sizeof *self);
    self->exec = exec;
    self->map_id = map_id;
    return self;
}

static void
s_fold_clear(loom_exec_fold *self)
{
    for (size_t k = 0; k < S_FOLD_RANKS; k++) {
        free(self->rank[k].data);
        self->rank[k].data = NULL;
        self->rank[k].len = 0;
        self->rank[k].used = false;
    }
    self->count = 0;
}

void
loom_exec_fold_destroy(loom_exec_fold **self_p)
{
    LOOM_ASSERT(self_p);
    loom_exec_fold *self = *self_p;
    if (!self)
        return;
    s_fold_clear(self);
    free(self);
    *self_p = NULL;
}

//  Combine a and b (both taken) into *c; on failure frees both and
//  empties the fold.
static int
s_fold_pair(loom_exec_fold *self, void *a, size_t an, void *b, size_t bn, void **c, size_t *cn,
            loom_exec_out *out)
{
    int rc = loom_executor_reduce(self->exec, self->map_id, a, an, b, bn, out);
    free(a);
    free(b);
    if (rc) {
        s_fold_clear(self);
        return rc;
    }
    *c = out->data;
    *cn = out->len;
    out->data = NULL;
    out->len = 0;
    return 0;
}

int
loom_exec_fold_add(loom_exec_fold *self, void **data_p, size_t len, loom_exec_out *out)
{
    LOOM_ASSERT(self);
    LOOM_ASSERT(data_p);
    LOOM_ASSERT(out);
    void *carry = *data_p;
    size_t carry_len = len;
    *data_p = NULL;
    //  After taking *data_p: it may be out->data itself.
    memset(out, 0, sizeof *out);
    self->count++;
    for (size_t k = 0; k < S_FOLD_RANKS; k++) {
        if (!self->rank[k].used) {
            self->rank[k].data = carry;
            self->rank[k].len = carry_len;
            self->rank[k].used = true;
            return 0;
        }
        void *a = self->rank[k].data;
        size_t an = self->rank[k].len;
        self->rank[k].data = NULL;
        self->rank[k].len = 0;
        self->rank[k].used = false;
        int rc = s_fold_pair(self, a, an, carry, carry_len, &carry, &carry_len, out);
        if (rc)
            return rc;
    }
    LOOM_ASSERT(false); //  2^64 outputs
    return LOOM_ENOMEM;
}

int
loom_exec_fold_take(loom_exec_fold *self, loom_exec_out *out)
{
    LOOM_ASSERT(self);
    LOOM_ASSERT(out);
    memset(out, 0, sizeof *out);
    void *acc = NULL;
    size_t acc_len = 0;
    bool have = false;
    //  Smallest ranks first, so the large partials meet last.
    for (size_t k = 0; k < S_FOLD_RANKS; k++) {
        if (!self->rank[k].used)
            continue;
        void *d = self->rank[k].data;
        size_t dn = self->rank[k].len;
        self->rank[k].data = NULL;
        self->rank[k].len = 0;
        self->rank[k].used = false;
        if (!have) {
            acc = d;
            acc_len = dn;
            have = true;
            continue;
        }
        int rc = s_fold_pair(self, d, dn, acc, acc_len, &acc, &acc_len, out);
        if (rc)
            return rc;
    }
    self->count = 0;
    if (acc_len == 0) {
        free(acc);
        acc = NULL;
    }
    out->data = acc;
    out->len = acc_len;
    return 0;
}

uint64_t
loom_exec_fold_count(const loom_exec_fold *self)
{
    LOOM_ASSERT(self);
    return self->count;
}

void
loom_executor_set_max_output(loom_executor *self, size_t max)
{
    LOOM_ASSERT(self);
    self->max_output = max;
}

int
loom_executor_set_shares(loom_executor *self, uint64_t map_id, const char *const *names,
                         const char *const *paths, size_t n, char **reason)
{
    *reason = NULL;
    s_map *map = NULL;
    for (size_t i = 0; i < self->nmaps && !map; i++)
        if (self->maps[i]->id == map_id)
            map = self->maps[i];
    if (!map)
        return LOOM_ENOENT;
    s_shares_clear(map);
    map->shares = loom_xcalloc(n ? n : 1, sizeof *map->shares);
    for (size_t i = 0; i < n; i++) {
        s_share *sh = &map->shares[map->nshares];
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0) {
            *reason =
                s_format("share '%s': cannot open %s: %s", names[i], paths[i], strerror(errno));
            if (fd >= 0)
                close(fd);
            s_shares_clear(map);
            return LOOM_EIO;
        }
        sh->len = (size_t)sb.st_size;
        if (sh->len) {
            sh->addr = mmap(NULL, sh->len, PROT_READ, MAP_SHARED, fd, 0);
            if (sh->addr == MAP_FAILED) {
                sh->addr = NULL;
                *reason =
                    s_format("share '%s': cannot map %s: %s", names[i], paths[i], strerror(errno));
                close(fd);
                s_shares_clear(map);
                return LOOM_EIO;
            }
        }
        close(fd);
        sh->name = loom_xstrdup(names[i]);
        sh->path = loom_xstrdup(paths[i]);
        map->nshares++;
    }
    return 0;
}

void
loom_executor_set_item_files(loom_executor *self, const char *const *names,
                             const char *const *paths, size_t n, const char *out_dir)
{
    self->in_names = names;
    self->in_paths = paths;
    self->nin = n;
    if (self->nout) {
        for (size_t i = 0; i < self->nout; i++) {
            free(self->out_names[i]);
            free(self->out_paths[i]);
        }
        free(self->out_names);
        free(self->out_paths);
        self->out_names = self->out_paths = NULL;
        self->nout = 0;
    }
    //  Called around every item: copy the dir only when it changes.
    if (out_dir && self->out_dir && !strcmp(out_dir, self->out_dir))
        return;
    free(self->out_dir);
    self->out_dir = out_dir ? loom_xstrdup(out_dir) : NULL;
}

size_t
loom_executor_output_files(loom_executor *self, const char *const **names,
                           const char *const **paths)
{
    *names = (const char *const *)self->out_names;
    *paths = (const char *const *)self->out_paths;
    return self->nout;
}

void
loom_executor_set_cancel_flag(loom_executor *self, const atomic_int *flag)
{
    LOOM_ASSERT(self);
    self->cancelled = flag;
}

bool
loom_executor_init_pending(loom_executor *self, const char *plugin)
{
    LOOM_ASSERT(self);
    for (size_t i = 0; plugin && i < self->nplugins; i++)
        if (!strcmp(self->plugins[i]->name, plugin))
            return !self->plugins[i]->init_done &&
                   loom_plugin_lib_def(self->plugins[i]->lib)->init != NULL;
    return true; //  not loaded yet: loading it is part of the wait
}
