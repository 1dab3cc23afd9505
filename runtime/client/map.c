/*  map: one map of a plugin's task over a stream of inputs.

    Submission copies each input once, into the map's table of in-flight
    inputs (kept until its result comes, so that a later version can
    resubmit them after a broker restart), and queues it in the pending
    TaskBatch, which is encoded and sent to the broker when it holds
    256 items or 256 KiB, or when the caller is about to wait. At most
    `window` items are out without an answer (ordered maps: counted from the
    oldest result not yet released in order, which bounds the reorder ring);
    submit waits for room, taking results meanwhile. Results keep pointing
    into the decoded ResultBatch they came in (shared, reference-counted)
    until they have been delivered.  */

#include "client_priv.h"

#include "block_cache.h"

#include <string.h>

#define S_DEFAULT_WINDOW 10000
#define S_BATCH_ITEMS 1024
#define S_BATCH_BYTES (256 * 1024)
#define S_ITEM_OVERHEAD 48    //  encoded bytes per item beyond its data, roughly
#define S_FRAME_HEADROOM 4096 //  encoded bytes of a batch beyond its items
#define S_EMPTY UINT64_MAX

//  ---------------------------------------------------------------------------
//  Shared decoded messages

void
loom__rmsg_unref(loom__rmsg **rm_p)
{
    loom__rmsg *rm = *rm_p;
    if (!rm)
        return;
    LOOM_ASSERT(rm->refs > 0);
    if (--rm->refs == 0) {
        loom_msg_destroy(&rm->msg);
        free(rm);
    }
    *rm_p = NULL;
}

static void
s_rref_clear(loom__rref *ref)
{
    loom__rmsg_unref(&ref->rm);
    ref->res = NULL;
}

//  ---------------------------------------------------------------------------
//  In-flight inputs: open addressing on a hash of the index. Dense indices
//  must be scattered: slots taken by index & mask would form one cluster as
//  long as the window, and backward-shift deletion scans to the end of the
//  cluster (this cost 70% of the client's time at 10,000 items in flight).

static size_t
s_inputs_home(uint64_t index, size_t mask)
{
    return (size_t)((index * 0x9e3779b97f4a7c15ULL) >> 32) & mask;
}

static void s_inputs_put(loom_map *m, uint64_t index, uint8_t *data, size_t len);

static void
s_inputs_grow(loom_map *m)
{
    loom__input *old = m->inputs;
    size_t old_cap = m->inputs_cap;
    m->inputs_cap = old_cap ? old_cap * 2 : 1024;
    m->inputs = loom_xmalloc(m->inputs_cap * sizeof *m->inputs);
    for (size_t i = 0; i < m->inputs_cap; i++)
        m->inputs[i].index = S_EMPTY;
    m->inputs_count = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].index != S_EMPTY)
            s_inputs_put(m, old[i].index, old[i].data, old[i].len);
    }
    free(old);
}

static void
s_inputs_put(loom_map *m, uint64_t index, uint8_t *data, size_t len)
{
    if ((m->inputs_count + 1) * 4 > m->inputs_cap * 3)
        s_inputs_grow(m);
    size_t mask = m->inputs_cap - 1;
    size_t i = s_inputs_home(index, mask);
    while (m->inputs[i].index != S_EMPTY)
        i = (i + 1) & mask;
    m->inputs[i] = (loom__input){.index = index, .len = len, .data = data};
    m->inputs_count++;
}

static void
s_inputs_drop(loom_map *m, uint64_t index)
{
    if (!m->inputs_cap)
        return;
    size_t mask = m->inputs_cap - 1;
    size_t i = s_inputs_home(index, mask);
    while (m->inputs[i].index != index) {
        if (m->inputs[i].index == S_EMPTY)
            return;
        i = (i + 1) & mask;
    }
    loom__block_free(m->inputs[i].data);
    m->inputs_count--;
    //  Backward-shift deletion: pull later entries of the cluster into the
    //  hole when their home slot allows it.
    size_t j = i;
    while (true) {
        j = (j + 1) & mask;
        if (m->inputs[j].index == S_EMPTY)
            break;
        size_t k = s_inputs_home(m->inputs[j].index, mask);
        bool movable = (j > i) ? (k <= i || k > j) : (k <= i && k > j);
        if (movable) {
            m->inputs[i] = m->inputs[j];
            i = j;
        }
    }
    m->inputs[i].index = S_EMPTY;
}

static void
s_inputs_clear(loom_map *m)
{
    for (size_t i = 0; i < m->inputs_cap; i++) {
        if (m->inputs[i].index != S_EMPTY) {
            loom__block_free(m->inputs[i].data);
            m->inputs[i].index = S_EMPTY;
        }
    }
    m->inputs_count = 0;
}

//  ---------------------------------------------------------------------------
//  Ready queue

static void
s_ready_push(loom_map *m, loom__rmsg *rm, const loom_wire_result *res)
{
    if (m->ready_count == m->ready_cap) {
        size_t cap = m->ready_cap ? m->ready_cap * 2 : 256;
        loom__rref *q = loom_xmalloc(cap * sizeof *q);
        for (size_t i = 0; i < m->ready_count; i++)
            q[i] = m->ready[(m->ready_head + i) & (m->ready_cap - 1)];
        free(m->ready);
        m->ready = q;
        m->ready_cap = cap;
        m->ready_head = 0;
    }
    rm->refs++;
    m->ready[(m->ready_head + m->ready_count) & (m->ready_cap - 1)] =
        (loom__rref){.rm = rm, .res = res};
    m->ready_count++;
}

static loom__rref
s_ready_pop(loom_map *m)
{
    LOOM_ASSERT(m->ready_count > 0);
    loom__rref ref = m->ready[m->ready_head];
    m->ready_head = (m->ready_head + 1) & (m->ready_cap - 1);
    m->ready_count--;
    return ref;
}

//  ---------------------------------------------------------------------------
//  Delivery

static void
s_fill(loom_result *r, const loom_wire_result *res)
{
    memset(r, 0, sizeof *r);
    r->index = res->index;
    r->status = res->status;
    r->data = res->data.data;
    r->len = res->data.len;
    r->error = res->error;
}

static void
s_count(loom_map *m, const loom_wire_result *res)
{
    if (res->index != LOOM_REDUCED_INDEX)
        m->delivered++;
    if (res->status == 0) {
        if (!m->reduce || res->index != LOOM_REDUCED_INDEX)
            m->done++;
    } else
        m->failed++;
}

//  Hand one result to on_result, or queue it for next.
static void
s_deliver(loom_map *m, loom__rmsg *rm, const loom_wire_result *res)
{
    if (m->on_result) {
        loom_result r;
        s_fill(&r, res);
        loom__map_result_files(m, res, &r);
        s_count(m, res);
        m->client->in_callback = true;
        m->on_result(&r, m->user);
        m->client->in_callback = false;
    } else
        s_ready_push(m, rm, res);
}

//  Ordered maps: release the results now in index order. With `force`
//  (the broker ended the map), skip the indices that never came.
static void
s_release(loom_map *m, bool force)
{
    while (m->released < m->submitted) {
        loom__rref *slot = &m->ring[m->released % m->window];
        if (!slot->rm && !force)
            break;
        m->released++;
        if (slot->rm) {
            loom__rref ref = *slot;
            slot->rm = NULL;
            slot->res = NULL;
            s_deliver(m, ref.rm, ref.res);
            s_rref_clear(&ref);
        }
    }
}

static bool
s_seen_test_and_set(loom_map *m, uint64_t index)
{
    uint64_t bit = (uint64_t)1 << (index & 63);
    uint64_t *w = &m->seen[index >> 6];
    bool was = (*w & bit) != 0;
    *w |= bit;
    return was;
}

void
loom__map_result(loom_map *m, loom__rmsg *rm, const loom_wire_result *res)
{
    if (res->index == LOOM_REDUCED_INDEX) {
        if (!m->reduce || m->reduced_seen) {
            m->dropped++;
            return;
        }
        m->reduced_seen = true;
        s_deliver(m, rm, res);
        return;
    }
    if (res->index >= m->submitted || s_seen_test_and_set(m, res->index)) {
        m->dropped++; //  never submitted, or a duplicate: the first one won
        return;
    }
    m->answered++;
    s_inputs_drop(m, res->index);
    //  The broker halts the map at its halt_after-th failure, as counted here.
    if (res->status != 0 && ++m->failures >= m->halt_after && m->halt_after)
        m->halted = true;
    if (m->reduce) {
        //  A reduce map's successful items come as acknowledgements (status
        //  0, no data: their outputs are in the fold): they free the window
        //  and count, but only failed ones are delivered. Their output
        //  files are fetched now and go with the combined result.
        if (res->status == 0) {
            m->done++;
            loom__map_keep_files(m, res);
        } else {
            if (!m->first_error) {
                m->first_status = res->status;
                m->first_error = loom_xstrdup(res->error ? res->error : loom_strerror(res->status));
            }
            s_deliver(m, rm, res);
        }
    } else if (m->ordered && res->index >= m->released) {
        loom__rref *slot = &m->ring[res->index % m->window];
        LOOM_ASSERT(!slot->rm);
        rm->refs++;
        *slot = (loom__rref){.rm = rm, .res = res};
        s_release(m, false);
    } else
        s_deliver(m, rm, res);
}

//  A reduce map ended with successful items but no combined result (the
//  map failed before they were combined): say so in the combined result's
//  place, with their output files, instead of dropping them in silence.
static void
s_reduced_missing(loom_map *m)
{
    char text[1024];
    snprintf(text, sizeof text,
             "reduce: the outputs of %llu successful items were not combined: the map failed "
             "(%s)",
             (unsigned long long)m->done, m->first_error ? m->first_error : "no reason given");
    loom_wire_result r = {.index = LOOM_REDUCED_INDEX,
                          .status = m->first_status ? m->first_status : LOOM_ECANCELED,
                          .error = text};
    loom_msg msg = {.type = LOOM_MSG_RESULT_BATCH};
    msg.u.result_batch.map = m->id;
    msg.u.result_batch.results = &r;
    msg.u.result_batch.nresults = 1;
    void *buf = NULL;
    size_t len = 0;
    loom_msg *copy = NULL;
    if (loom_wire_encode(&msg, &buf, &len) != 0 || loom_wire_decode(buf, len, &copy) != 0) {
        free(buf);
        loom__map_error(m, LOOM_ENOMEM, text);
        return;
    }
    free(buf);
    loom__rmsg *rm = loom_xmalloc(sizeof *rm);
    rm->msg = copy;
    rm->refs = 1;
    m->reduced_seen = true;
    s_deliver(m, rm, &copy->u.result_batch.results[0]);
    loom__rmsg_unref(&rm);
}

void
loom__map_end(loom_map *m, uint64_t count)
{
    (void)count;
    if (m->ended)
        return;
    m->ended = true;
    if (m->ordered && !m->reduce)
        s_release(m, true);
    if (m->reduce && !m->reduced_seen && m->done > 0)
        s_reduced_missing(m);
    if (m->reduce && m->answered < m->submitted) {
        //  Successful items the broker did not report one by one.
        m->done += m->submitted - m->answered;
        m->answered = m->submitted;
    }
    s_inputs_clear(m);
}

void
loom__map_error(loom_map *m, int code, const char *message)
{
    if (m->error)
        return;
    m->error = code;
    m->error_text = loom_xstrdup(message ? message : "");
    loom_log_error("loom: map %llu: %s (%s)", (unsigned long long)m->id, m->error_text,
                   loom_strerror(code));
}

//  ---------------------------------------------------------------------------
//  Sending

static int
s_flush(loom_map *m)
{
    if (m->npending == 0)
        return 0;
    loom_msg msg = {.type = LOOM_MSG_TASK_BATCH};
    msg.u.task_batch.map = m->id;
    msg.u.task_batch.nitems = m->npending;
    msg.u.task_batch.items = m->pending;
    m->npending = 0;
    m->pending_bytes = 0;
    return loom__client_send(m->client, &msg);
}

static bool
s_window_full(const loom_map *m)
{
    uint64_t out = m->submitted - (m->ring ? m->released : m->answered);
    return out >= m->window;
}

static bool
s_finished(const loom_map *m)
{
    return m->closed && m->ready_count == 0 &&
           (m->ended || (!m->reduce && m->delivered == m->submitted));
}

static int
s_send_open(loom_map *m)
{
    loom_msg msg = {.type = LOOM_MSG_MAP_OPEN};
    loom_wire_map_open *mo = &msg.u.map_open;
    mo->map = m->id;
    mo->pipeline = m->pipeline->id;
    mo->plugin = m->plugin;
    mo->version = m->version;
    mo->task = m->task;
    mo->args = (loom_span){m->args, m->args_len};
    mo->ordered = m->ordered;
    mo->reduce = m->reduce;
    mo->chunk = m->chunk;
    mo->retries = m->retries;
    mo->timeout_ms = m->timeout_ms;
    mo->retry_failed = m->retry_failed;
    mo->halt_after_failures = m->halt_after;
    mo->failures_seen = m->failures > UINT32_MAX ? UINT32_MAX : (uint32_t)m->failures;
    mo->init_timeout_ms = m->init_timeout_ms;
    mo->shares = m->pipeline->shares;
    mo->nshares = m->pipeline->nshares;
    return loom__client_send(m->client, &msg);
}

int
loom__map_resume(loom_map *m)
{
    if (m->ended || m->error)
        return 0;
    if (m->reduce && m->answered > 0) {
        //  The partial folds of the answered items were the broker's.
        loom__map_error(m, LOOM_ECONNECT,
                        "the broker was lost with the partial results of this reduce map");
        return 0;
    }
    int rc = s_send_open(m);
    //  The pending batch is in the table of inputs too: send it from there.
    m->npending = 0;
    m->pending_bytes = 0;
    for (size_t i = 0; i < m->inputs_cap && rc == 0; i++) {
        loom__input *in = &m->inputs[i];
        if (in->index == S_EMPTY)
            continue;
        if (m->npending && m->pending_bytes + in->len + S_ITEM_OVERHEAD > m->batch_bytes)
            rc = s_flush(m);
        m->pending[m->npending++] =
            (loom_wire_item){.index = in->index, .data = {in->len ? in->data : NULL, in->len}};
        m->pending_bytes += in->len + S_ITEM_OVERHEAD;
        if (m->npending == m->batch_items || m->pending_bytes >= m->batch_bytes)
            rc = s_flush(m);
    }
    if (rc == 0)
        rc = s_flush(m);
    if (rc == 0 && m->closed) {
        loom_msg msg = {.type = LOOM_MSG_MAP_END};
        msg.u.map_end.map = m->id;
        msg.u.map_end.count = m->submitted;
        rc = loom__client_send(m->client, &msg);
    }
    return rc;
}

//  ---------------------------------------------------------------------------
//  Public API

static bool
s_version_valid(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++) {
        char ch = v[n];
        bool ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= 'A' && ch <= 'Z') || ch == '.' || ch == '+' || ch == '-';
        if (!ok || n >= 64)
            return false;
    }
    return true;
}

loom_map *
loom_map_new(loom_pipeline *p, const char *plugin, const char *task, const loom_map_opts *opts)
{
    static const loom_map_opts no_opts = {0};
    if (!opts)
        opts = &no_opts;
    if (!p || !plugin || !task) {
        loom_log_error("loom: loom_map_new: %s is NULL", !p        ? "pipeline"
                                                         : !plugin ? "plugin"
                                                                   : "task");
        return NULL;
    }
    loom_client *c = p->client;
    char name[80];
    const char *at = strchr(plugin, '@');
    size_t nlen = at ? (size_t)(at - plugin) : strlen(plugin);
    const char *version = at ? at + 1 : "";
    if (nlen >= sizeof name) {
        loom_log_error("loom: plugin name '%.70s...' is invalid", plugin);
        return NULL;
    }
    memcpy(name, plugin, nlen);
    name[nlen] = '\0';
    if (!loom_name_valid(name)) {
        loom_log_error("loom: plugin name '%s' is invalid (want [a-z0-9_-]{1,64})", name);
        return NULL;
    }
    if (!s_version_valid(version)) {
        loom_log_error("loom: plugin version '%s' is invalid (want [0-9A-Za-z.+-]{0,64})", version);
        return NULL;
    }
    if (!loom_name_valid(task)) {
        loom_log_error("loom: task name '%s' is invalid (want [a-z0-9_-]{1,64})", task);
        return NULL;
    }
    if (!opts->args && opts->args_len) {
        loom_log_error("loom: map %s/%s: args is NULL with args_len %zu", name, task,
                       opts->args_len);
        return NULL;
    }
    if (opts->window < 0 || opts->chunk < 0 || opts->timeout_ms < 0 || opts->retries < -1) {
        loom_log_error("loom: map %s/%s: negative window, chunk, timeout or retries", name, task);
        return NULL;
    }
    if (opts->retry_failed < 0 || opts->halt_after_failures < 0) {
        loom_log_error("loom: map %s/%s: %s %d is negative (0: %s)", name, task,
                       opts->retry_failed < 0 ? "retry_failed" : "halt_after_failures",
                       opts->retry_failed < 0 ? opts->retry_failed : opts->halt_after_failures,
                       opts->retry_failed < 0 ? "no retries" : "never halt");
        return NULL;
    }
    if (opts->init_timeout_ms < -1) {
        loom_log_error("loom: map %s/%s: init_timeout_ms %d is invalid (0: default, -1: none)",
                       name, task, opts->init_timeout_ms);
        return NULL;
    }
    if (opts->journal) {
        loom_log_error("loom: map %s/%s: journal: %s", name, task, loom_strerror(LOOM_ENOTSUP));
        return NULL;
    }
    if (c->error) {
        loom_log_error("loom: map %s/%s: %s", name, task, loom_strerror(c->error));
        return NULL;
    }
    size_t max_frame = c->welcome.max_frame;
    if (opts->args_len + S_FRAME_HEADROOM > max_frame) {
        loom_log_error("loom: map %s/%s: args of %zu bytes over the frame limit", name, task,
                       opts->args_len);
        return NULL;
    }

    loom_map *self = loom_xcalloc(1, sizeof *self);
    self->client = c;
    self->pipeline = p;
    self->id = c->next_id++;
    self->plugin = loom_xstrdup(name);
    self->version = loom_xstrdup(version);
    self->task = loom_xstrdup(task);
    if (opts->args_len) {
        self->args = loom_xmalloc(opts->args_len);
        memcpy(self->args, opts->args, opts->args_len);
        self->args_len = opts->args_len;
    }
    self->chunk = (uint32_t)opts->chunk;
    self->retries = opts->retries;
    self->timeout_ms = (uint32_t)opts->timeout_ms;
    self->retry_failed = (uint32_t)opts->retry_failed;
    self->halt_after = (uint32_t)opts->halt_after_failures;
    self->init_timeout_ms =
        opts->init_timeout_ms < 0 ? UINT32_MAX : (uint32_t)opts->init_timeout_ms;
    self->ordered = opts->ordered;
    self->reduce = opts->reduce;
    self->window = opts->window ? (uint64_t)opts->window : S_DEFAULT_WINDOW;
    self->on_result = opts->on_result;
    self->user = opts->user;
    self->batch_items = S_BATCH_ITEMS < c->welcome.max_batch ? S_BATCH_ITEMS : c->welcome.max_batch;
    self->max_item =
        max_frame > 2 * S_FRAME_HEADROOM ? max_frame - S_FRAME_HEADROOM : max_frame / 2;
    self->batch_bytes = S_BATCH_BYTES < self->max_item ? S_BATCH_BYTES : self->max_item;
    self->pending = loom_xmalloc(self->batch_items * sizeof *self->pending);
    if (self->ordered && !self->reduce)
        self->ring = loom_xcalloc(self->window, sizeof *self->ring);

    int rc = s_send_open(self);
    self->next = c->maps;
    c->maps = self;
    if (rc < 0) {
        loom_log_error("loom: map %s/%s: %s", name, task, loom_strerror(rc));
        loom_map_destroy(&self);
    }
    return self;
}

int
loom_map_submit(loom_map *m, const void *input, size_t len)
{
    if (!m || (!input && len))
        return LOOM_EINVAL;
    loom_client *c = m->client;
    if (c->in_callback || m->closed)
        return LOOM_ESTATE;
    if (m->error)
        return m->error;
    if (c->error)
        return c->error;
    if (m->halted)
        return LOOM_ECANCELED;
    if (len > m->max_item)
        return LOOM_ETOOBIG;
    while (s_window_full(m)) {
        int rc = s_flush(m);
        if (rc == 0)
            rc = loom__client_pump(c, -1);
        if (rc < 0)
            return rc;
        if (m->error)
            return m->error;
        if (m->halted)
            return LOOM_ECANCELED;
    }
    if (m->npending && m->pending_bytes + len + S_ITEM_OVERHEAD > m->batch_bytes) {
        int rc = s_flush(m);
        if (rc < 0)
            return rc;
    }
    uint64_t index = m->submitted;
    if ((index >> 6) >= m->seen_words) {
        size_t words = m->seen_words ? m->seen_words * 2 : 64;
        m->seen = loom_xrealloc(m->seen, words * sizeof *m->seen);
        memset(m->seen + m->seen_words, 0, (words - m->seen_words) * sizeof *m->seen);
        m->seen_words = words;
    }
    uint8_t *copy = loom__block_alloc(len);
    loom_copy(copy, input, len);
    s_inputs_put(m, index, copy, len);
    m->pending[m->npending++] = (loom_wire_item){.index = index,
                                                 .data = {len ? copy : NULL, len},
                                                 .files = m->next_files,
                                                 .nfiles = m->next_nfiles};
    m->pending_bytes += len + S_ITEM_OVERHEAD;
    m->submitted++;
    //  An item with files goes at once: its FileRefs are the caller's.
    if (m->npending == m->batch_items || m->pending_bytes >= m->batch_bytes || m->next_nfiles) {
        int rc = s_flush(m);
        if (rc < 0)
            return rc;
        //  Take what has come meanwhile (and run on_result), without waiting.
        rc = loom__client_pump(c, 0);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int
loom_map_close(loom_map *m)
{
    if (!m)
        return LOOM_EINVAL;
    loom_client *c = m->client;
    if (c->in_callback)
        return LOOM_ESTATE;
    if (m->closed)
        return 0;
    int rc = s_flush(m);
    m->closed = true;
    if (rc < 0)
        return rc;
    loom_msg msg = {.type = LOOM_MSG_MAP_END};
    msg.u.map_end.map = m->id;
    msg.u.map_end.count = m->submitted;
    rc = loom__client_send(c, &msg);
    if (rc < 0)
        return rc;
    rc = loom__client_pump(c, 0);
    return rc < 0 ? rc : 0;
}

int
loom_map_next(loom_map *m, loom_result *r, int timeout_ms)
{
    if (!m || !r)
        return LOOM_EINVAL;
    loom_client *c = m->client;
    if (c->in_callback)
        return LOOM_ESTATE;
    s_rref_clear(&m->cur);
    int rc = s_flush(m);
    if (rc < 0 && rc != c->error)
        return rc;
    int64_t deadline = timeout_ms < 0 ? -1 : loom_now_ms() + timeout_ms;
    while (true) {
        if (m->ready_count) {
            m->cur = s_ready_pop(m);
            s_fill(r, m->cur.res);
            loom__map_result_files(m, m->cur.res, r);
            s_count(m, m->cur.res);
            return 1;
        }
        if (s_finished(m))
            return 0;
        if (m->error)
            return m->error;
        if (c->error)
            return c->error;
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - loom_now_ms();
            wait = left > 0 ? (int)left : 0;
        }
        rc = loom__client_pump(c, wait);
        if (rc == 0)
            return LOOM_EAGAIN;
    }
}

void
loom_map_stats(loom_map *m, loom_stats *s)
{
    if (!s)
        return;
    memset(s, 0, sizeof *s);
    if (!m)
        return;
    s->submitted = m->submitted;
    s->done = m->done;
    s->failed = m->failed;
    s->in_flight = m->submitted - (m->reduce ? m->answered : m->delivered);
}

void
loom_map_destroy(loom_map **self_p)
{
    LOOM_ASSERT(self_p);
    loom_map *self = *self_p;
    if (!self)
        return;
    loom_client *c = self->client;
    if (!self->ended && !c->error) {
        loom_msg msg = {.type = LOOM_MSG_CANCEL};
        msg.u.cancel_map = self->id;
        loom__client_send(c, &msg);
    }
    for (loom_map **mp = &c->maps; *mp; mp = &(*mp)->next) {
        if (*mp == self) {
            *mp = self->next;
            break;
        }
    }
    if (c->last_map == self)
        c->last_map = NULL;
    s_rref_clear(&self->cur);
    while (self->ready_count) {
        loom__rref ref = s_ready_pop(self);
        s_rref_clear(&ref);
    }
    if (self->ring) {
        for (uint64_t i = 0; i < self->window; i++)
            s_rref_clear(&self->ring[i]);
    }
    s_inputs_clear(self);
    free(self->inputs);
    free(self->ring);
    free(self->ready);
    free(self->seen);
    free(self->pending);
    free(self->error_text);
    free(self->first_error);
    loom__map_files_free(self);
    free(self->plugin);
    free(self->version);
    free(self->task);
    free(self->args);
    free(self);
    *self_p = NULL;
}

void
loom__maps_destroy(loom_client *c, loom_pipeline *p)
{
    loom_map **mp = &c->maps;
    while (*mp) {
        if (!p || (*mp)->pipeline == p) {
            loom_map *m = *mp;
            loom_map_destroy(&m); //  unlinks it: *mp is now the next one
        } else
            mp = &(*mp)->next;
    }
}
