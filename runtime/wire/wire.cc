/*  wire: the FlatBuffers codec of loom's messages (see wire.h).

    The one C++ file of loom. Encoding builds a Message with a
    FlatBufferBuilder whose allocator is malloc/free, sized up front from an
    upper bound of the message so a batch is built in one allocation; the
    finished buffer is released from the builder and either moved to the
    front for loom_wire_encode (the caller free()s it) or handed to libzmq
    as is by loom_wire_send (zero copy: libzmq frees it when sent).

    Decoding copies the bytes once into a block that starts with the
    loom_msg itself (16-byte aligned, since malloc is), verifies the copy
    with the FlatBuffers verifier, then fills the C structs. Arrays (items,
    results, files) live in one arena, msg->priv_. Every check that can
    refuse a message runs before the message is handed out. The two hot
    messages, when laid out exactly as the fast writer lays them out, are
    read by a fast reader instead (no verifier, records in the message's
    block); received from a socket they are not even copied: the message
    keeps the frame, which loom_wire_forward can send on as it is.  */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <new>
#include <vector>

#include <zmq.h>

#include "loom_generated.h"

extern "C" {
#include "base.h"
}
#include "wire.h"

namespace fb = flatbuffers;
namespace lw = loom::wire;

static_assert((int)LOOM_MSG_BLOB_CHUNK == (int)lw::Body_MAX, "loom_msg_type follows Body");
static_assert((int)LOOM_MSG_COUNT_ == (int)lw::Body_MAX + 1, "loom_msg_type follows Body");
static_assert((int)LOOM_MSG_TASK_BATCH == (int)lw::Body_TaskBatch, "loom_msg_type follows Body");
static_assert((int)LOOM_MSG_RESULT_BATCH == (int)lw::Body_ResultBatch,
              "loom_msg_type follows Body");
static_assert((int)LOOM_ROLE_SUPERVISOR == (int)lw::Role_MAX, "loom_role follows Role");

//  Largest message we build or accept: the verifier asserts below it.
static const size_t s_max_buffer = (size_t)FLATBUFFERS_MAX_BUFFER_SIZE - 1;

//  Smallest buffer the verifier looks at (root offset, vtable, table).
static const size_t s_min_buffer = 2 * sizeof(fb::uoffset_t) + 2 * sizeof(fb::voffset_t);

//  Where the aligned copy of a decoded frame starts in its block.
static const size_t s_buf_offset = (sizeof(loom_msg) + 15) & ~(size_t)15;

//  --------------------------------------------------------------------------
//  Encoding

//  A C enum the caller filled may hold any value, which C++ must not load
//  as the enum type: read its bytes as an integer.
template <typename E>
static inline unsigned
s_enum_value(const E *e)
{
    static_assert(sizeof(E) == sizeof(unsigned), "C enums are int-sized here");
    unsigned v;
    memcpy(&v, e, sizeof v);
    return v;
}

//  The builder's memory comes from malloc so a released buffer can go to
//  free() (caller of loom_wire_encode, or libzmq's free function on any
//  thread). Failure throws, caught in s_encode: LOOM_ENOMEM.
class s_malloc_allocator : public fb::Allocator
{
  public:
    uint8_t *allocate(size_t size) override
    {
        void *p = malloc(size);
        if (!p)
            throw std::bad_alloc();
        return static_cast<uint8_t *>(p);
    }
    void deallocate(uint8_t *p, size_t) override
    {
        free(p);
    }
};

static s_malloc_allocator s_allocator;

//  Offsets of the tables of a vector being built, kept per thread so a
//  batch costs no allocation once the thread has built one of its size.
static thread_local std::vector<fb::Offset<lw::Item>> s_item_offsets;
static thread_local std::vector<fb::Offset<lw::Result>> s_result_offsets;
static thread_local std::vector<fb::Offset<lw::FileRef>> s_file_offsets;

//  Upper bounds of the bytes one object takes in a buffer. A table of at
//  most 6 fields (Item, Result, FileRef): its vtable (4 + 2 per field, if
//  not shared), its fields (4 + at most 32), padding (up to 7), the offset
//  to it and the builder's scratch for it. The body (up to 20 fields, for
//  Stats) and the Message around it fit in s_message_bound. A vector:
//  length, padding, and a NUL for strings. Too small a bound would only
//  cost the builder a reallocation; it is also what LOOM_ETOOBIG checks.
static const size_t s_table_bound = 72;
static const size_t s_message_bound = 512;
static const size_t s_vector_overhead = 8;

static inline size_t
s_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static inline size_t
s_str_bound(const char *s)
{
    return s ? s_add(strlen(s), s_vector_overhead) : 0;
}

static inline size_t
s_span_bound(loom_span sp)
{
    return sp.data ? s_add(sp.len, s_vector_overhead) : 0;
}

static size_t
s_files_bound(const loom_wire_file *files, size_t n)
{
    size_t total = n ? s_vector_overhead + 4 * n : 0;
    for (size_t i = 0; i < n; i++) {
        total = s_add(total, s_table_bound + s_str_bound(files[i].name));
        total = s_add(total, s_span_bound(files[i].hash));
    }
    return total;
}

//  An upper bound of the encoded size of m (SIZE_MAX when it overflows).
static size_t
s_bound(const loom_msg *m)
{
    size_t total = s_message_bound;
    switch (s_enum_value(&m->type)) {
    case LOOM_MSG_HELLO:
        total = s_add(total, s_str_bound(m->u.hello.host));
        total = s_add(total, s_str_bound(m->u.hello.software));
        break;
    case LOOM_MSG_PIPELINE_OPEN:
        total = s_add(total, s_str_bound(m->u.pipeline_open.name));
        break;
    case LOOM_MSG_MAP_OPEN:
        total = s_add(total, s_str_bound(m->u.map_open.plugin));
        total = s_add(total, s_str_bound(m->u.map_open.version));
        total = s_add(total, s_str_bound(m->u.map_open.task));
        total = s_add(total, s_span_bound(m->u.map_open.args));
        total = s_add(total, s_files_bound(m->u.map_open.shares, m->u.map_open.nshares));
        break;
    case LOOM_MSG_WELCOME:
        total = s_add(total, s_str_bound(m->u.welcome.blob_endpoint));
        total = s_add(total, s_str_bound(m->u.welcome.blob_store));
        break;
    case LOOM_MSG_TASK_BATCH: {
        const loom_wire_task_batch *t = &m->u.task_batch;
        total = s_add(total, s_vector_overhead + 4 * t->nitems);
        for (size_t i = 0; i < t->nitems; i++) {
            total = s_add(total, s_table_bound + s_span_bound(t->items[i].data));
            total = s_add(total, s_files_bound(t->items[i].files, t->items[i].nfiles));
        }
        break;
    }
    case LOOM_MSG_RESULT_BATCH: {
        const loom_wire_result_batch *r = &m->u.result_batch;
        total = s_add(total, s_vector_overhead + 4 * r->nresults);
        total = s_add(total, s_span_bound(r->partial));
        for (size_t i = 0; i < r->nresults; i++) {
            total = s_add(total, s_table_bound + s_span_bound(r->results[i].data));
            total = s_add(total, s_str_bound(r->results[i].error));
            total = s_add(total, s_files_bound(r->results[i].files, r->results[i].nfiles));
        }
        break;
    }
    case LOOM_MSG_ERROR:
        total = s_add(total, s_str_bound(m->u.error.message));
        break;
    case LOOM_MSG_BLOB_HAVE:
        total = s_add(total, s_span_bound(m->u.blob_have.hash));
        total = s_add(total, s_str_bound(m->u.blob_have.adopt));
        break;
    case LOOM_MSG_BLOB_PUT:
        total = s_add(total, s_span_bound(m->u.blob_put.hash));
        total = s_add(total, s_span_bound(m->u.blob_put.data));
        break;
    case LOOM_MSG_BLOB_GET:
        total = s_add(total, s_span_bound(m->u.blob_get.hash));
        break;
    case LOOM_MSG_BLOB_CHUNK:
        total = s_add(total, s_span_bound(m->u.blob_chunk.hash));
        total = s_add(total, s_span_bound(m->u.blob_chunk.data));
        break;
    default:
        break;
    }
    return total;
}

//  The checks decode applies, applied before encoding so that whatever we
//  send, we would accept.
static inline bool
s_span_ok(loom_span sp)
{
    return sp.data || sp.len == 0;
}

static inline bool
s_hash_ok(loom_span sp)
{
    return sp.data && sp.len == LOOM_HASH_SIZE;
}

static bool
s_files_ok(const loom_wire_file *files, size_t n, size_t *total)
{
    if (n && !files)
        return false;
    *total += n;
    if (*total > LOOM_WIRE_MAX_ITEMS)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!files[i].name || !s_hash_ok(files[i].hash))
            return false;
    return true;
}

static int
s_check(const loom_msg *m)
{
    size_t nfiles = 0;
    switch (s_enum_value(&m->type)) {
    case LOOM_MSG_HELLO:
        return s_enum_value(&m->u.hello.role) <= LOOM_ROLE_SUPERVISOR ? 0 : LOOM_EINVAL;
    case LOOM_MSG_MAP_OPEN: {
        const loom_wire_map_open *o = &m->u.map_open;
        return o->plugin && o->task && s_span_ok(o->args) &&
                       s_files_ok(o->shares, o->nshares, &nfiles)
                   ? 0
                   : LOOM_EINVAL;
    }
    case LOOM_MSG_TASK_BATCH: {
        const loom_wire_task_batch *t = &m->u.task_batch;
        if (t->nitems > LOOM_WIRE_MAX_ITEMS || (t->nitems && !t->items))
            return LOOM_EINVAL;
        for (size_t i = 0; i < t->nitems; i++)
            if (!s_span_ok(t->items[i].data) ||
                !s_files_ok(t->items[i].files, t->items[i].nfiles, &nfiles))
                return LOOM_EINVAL;
        return 0;
    }
    case LOOM_MSG_RESULT_BATCH: {
        const loom_wire_result_batch *r = &m->u.result_batch;
        if (r->nresults > LOOM_WIRE_MAX_ITEMS || (r->nresults && !r->results) ||
            !s_span_ok(r->partial))
            return LOOM_EINVAL;
        for (size_t i = 0; i < r->nresults; i++)
            if (!s_span_ok(r->results[i].data) ||
                !s_files_ok(r->results[i].files, r->results[i].nfiles, &nfiles))
                return LOOM_EINVAL;
        return 0;
    }
    case LOOM_MSG_BLOB_HAVE:
        return s_hash_ok(m->u.blob_have.hash) ? 0 : LOOM_EINVAL;
    case LOOM_MSG_BLOB_PUT:
        return s_hash_ok(m->u.blob_put.hash) && s_span_ok(m->u.blob_put.data) ? 0 : LOOM_EINVAL;
    case LOOM_MSG_BLOB_GET:
        return s_hash_ok(m->u.blob_get.hash) ? 0 : LOOM_EINVAL;
    case LOOM_MSG_BLOB_CHUNK:
        return s_hash_ok(m->u.blob_chunk.hash) && s_span_ok(m->u.blob_chunk.data) ? 0 : LOOM_EINVAL;
    case LOOM_MSG_WELCOME:
    case LOOM_MSG_PIPELINE_OPEN:
    case LOOM_MSG_PIPELINE_CLOSE:
    case LOOM_MSG_MAP_END:
    case LOOM_MSG_CREDIT:
    case LOOM_MSG_CANCEL:
    case LOOM_MSG_HEARTBEAT:
    case LOOM_MSG_ERROR:
    case LOOM_MSG_STATS_REQUEST:
    case LOOM_MSG_STATS:
    case LOOM_MSG_WORKER_EXIT:
        return 0;
    default:
        return LOOM_EINVAL;
    }
}

static inline fb::Offset<fb::String>
s_put_str(fb::FlatBufferBuilder &b, const char *s)
{
    return s ? b.CreateString(s) : 0;
}

static inline fb::Offset<fb::Vector<uint8_t>>
s_put_bytes(fb::FlatBufferBuilder &b, loom_span sp)
{
    return sp.data ? b.CreateVector(sp.data, sp.len) : 0;
}

static fb::Offset<fb::Vector<fb::Offset<lw::FileRef>>>
s_put_files(fb::FlatBufferBuilder &b, const loom_wire_file *files, size_t n)
{
    if (n == 0)
        return 0;
    std::vector<fb::Offset<lw::FileRef>> &offs = s_file_offsets;
    offs.clear();
    for (size_t i = 0; i < n; i++) {
        auto name = b.CreateString(files[i].name);
        auto hash = s_put_bytes(b, files[i].hash);
        offs.push_back(lw::CreateFileRef(b, name, hash, files[i].size));
    }
    return b.CreateVector(offs.data(), offs.size());
}

static fb::Offset<void>
s_put_task_batch(fb::FlatBufferBuilder &b, const loom_wire_task_batch *t)
{
    fb::Offset<fb::Vector<fb::Offset<lw::Item>>> items = 0;
    if (t->nitems) {
        std::vector<fb::Offset<lw::Item>> &offs = s_item_offsets;
        offs.clear();
        offs.reserve(t->nitems);
        for (size_t i = 0; i < t->nitems; i++) {
            const loom_wire_item *it = &t->items[i];
            auto data = s_put_bytes(b, it->data);
            auto files = s_put_files(b, it->files, it->nfiles);
            offs.push_back(lw::CreateItem(b, it->index, it->attempt, data, files));
        }
        items = b.CreateVector(offs.data(), offs.size());
    }
    return lw::CreateTaskBatch(b, t->map, items, t->combine).Union();
}

static fb::Offset<void>
s_put_result_batch(fb::FlatBufferBuilder &b, const loom_wire_result_batch *r)
{
    fb::Offset<fb::Vector<fb::Offset<lw::Result>>> results = 0;
    if (r->nresults) {
        std::vector<fb::Offset<lw::Result>> &offs = s_result_offsets;
        offs.clear();
        offs.reserve(r->nresults);
        for (size_t i = 0; i < r->nresults; i++) {
            const loom_wire_result *res = &r->results[i];
            auto data = s_put_bytes(b, res->data);
            auto error = s_put_str(b, res->error);
            auto files = s_put_files(b, res->files, res->nfiles);
            offs.push_back(
                lw::CreateResult(b, res->index, res->attempt, res->status, data, error, files));
        }
        results = b.CreateVector(offs.data(), offs.size());
    }
    auto partial = s_put_bytes(b, r->partial);
    return lw::CreateResultBatch(b, r->map, results, r->elapsed_us, r->has_partial, partial,
                                 r->blob_bytes_in, r->blob_bytes_out)
        .Union();
}

static fb::Offset<void>
s_put_stats(fb::FlatBufferBuilder &b, const loom_wire_stats *s)
{
    return lw::CreateStats(b, s->epoch, s->uptime_ms, s->clients, s->workers, s->supervisors,
                           s->maps, s->pipelines, s->items_queued, s->items_in_flight,
                           s->items_done, s->items_failed, s->items_retried, s->results_dropped,
                           s->msgs_in, s->msgs_out, s->msgs_rejected, s->blob_bytes_in,
                           s->blob_bytes_out, s->blobs_stored, s->blob_store_bytes,
                           s->workers_blob_bytes_in, s->workers_blob_bytes_out,
                           s->connections_dropped, s->blob_bytes_adopted, s->curve_refused,
                           s->items_cancelling, s->items_cancelled)
        .Union();
}

//  The body of m, built in b (m already checked).
static fb::Offset<void>
s_put_body(fb::FlatBufferBuilder &b, const loom_msg *m)
{
    switch (m->type) {
    case LOOM_MSG_HELLO: {
        const loom_wire_hello *h = &m->u.hello;
        auto host = s_put_str(b, h->host);
        auto software = s_put_str(b, h->software);
        return lw::CreateHello(b, (lw::Role)h->role, host, h->pid, h->credit, h->procs, software)
            .Union();
    }
    case LOOM_MSG_WELCOME: {
        const loom_wire_welcome *w = &m->u.welcome;
        auto blob_ep = s_put_str(b, w->blob_endpoint);
        auto blob_store = s_put_str(b, w->blob_store);
        return lw::CreateWelcome(b, w->epoch, w->session, w->worker_id, w->heartbeat_ms,
                                 w->liveness, w->max_batch, w->max_frame, blob_ep, blob_store)
            .Union();
    }
    case LOOM_MSG_PIPELINE_OPEN: {
        auto name = s_put_str(b, m->u.pipeline_open.name);
        return lw::CreatePipelineOpen(b, m->u.pipeline_open.pipeline, name).Union();
    }
    case LOOM_MSG_PIPELINE_CLOSE:
        return lw::CreatePipelineClose(b, m->u.pipeline_close.pipeline).Union();
    case LOOM_MSG_MAP_OPEN: {
        const loom_wire_map_open *o = &m->u.map_open;
        auto plugin = b.CreateString(o->plugin);
        auto version = s_put_str(b, o->version);
        auto task = b.CreateString(o->task);
        auto args = s_put_bytes(b, o->args);
        auto shares = s_put_files(b, o->shares, o->nshares);
        return lw::CreateMapOpen(b, o->map, o->pipeline, plugin, version, task, args, o->ordered,
                                 o->reduce, o->chunk, o->retries, o->timeout_ms, shares,
                                 o->retry_failed, o->halt_after_failures, o->failures_seen,
                                 o->init_timeout_ms)
            .Union();
    }
    case LOOM_MSG_TASK_BATCH:
        return s_put_task_batch(b, &m->u.task_batch);
    case LOOM_MSG_MAP_END:
        return lw::CreateMapEnd(b, m->u.map_end.map, m->u.map_end.count).Union();
    case LOOM_MSG_CREDIT:
        return lw::CreateCredit(b, m->u.credit).Union();
    case LOOM_MSG_RESULT_BATCH:
        return s_put_result_batch(b, &m->u.result_batch);
    case LOOM_MSG_CANCEL:
        return lw::CreateCancel(b, m->u.cancel_map).Union();
    case LOOM_MSG_HEARTBEAT:
        return lw::CreateHeartbeat(b).Union();
    case LOOM_MSG_ERROR: {
        const loom_wire_error *e = &m->u.error;
        auto message = s_put_str(b, e->message);
        return lw::CreateError(b, e->code, e->map, e->pipeline, message).Union();
    }
    case LOOM_MSG_STATS_REQUEST:
        return lw::CreateStatsRequest(b).Union();
    case LOOM_MSG_STATS:
        return s_put_stats(b, &m->u.stats);
    case LOOM_MSG_WORKER_EXIT: {
        const loom_wire_worker_exit *x = &m->u.worker_exit;
        auto init_error = s_put_str(b, x->init_error);
        return lw::CreateWorkerExit(b, x->pid, x->signal, x->status, x->max_rss, x->rss_limit,
                                    x->oom_kill, x->init_map, init_error)
            .Union();
    }
    case LOOM_MSG_BLOB_HAVE: {
        const loom_wire_blob_have *h = &m->u.blob_have;
        auto hash = s_put_bytes(b, h->hash);
        auto adopt = s_put_str(b, h->adopt);
        return lw::CreateBlobHave(b, hash, h->size, h->have, adopt).Union();
    }
    case LOOM_MSG_BLOB_PUT: {
        const loom_wire_blob_put *p = &m->u.blob_put;
        auto hash = s_put_bytes(b, p->hash);
        auto data = s_put_bytes(b, p->data);
        return lw::CreateBlobPut(b, hash, p->offset, p->total, data).Union();
    }
    case LOOM_MSG_BLOB_GET: {
        const loom_wire_blob_get *g = &m->u.blob_get;
        auto hash = s_put_bytes(b, g->hash);
        return lw::CreateBlobGet(b, hash, g->offset, g->credit).Union();
    }
    case LOOM_MSG_BLOB_CHUNK: {
        const loom_wire_blob_chunk *c = &m->u.blob_chunk;
        auto hash = s_put_bytes(b, c->hash);
        auto data = s_put_bytes(b, c->data);
        return lw::CreateBlobChunk(b, hash, c->offset, c->total, data, c->status).Union();
    }
    default:
        LOOM_ASSERT(!"message type checked before");
        return 0;
    }
}

//  --------------------------------------------------------------------------
//  Fast path: plain TaskBatch and ResultBatch, written front to back

//  The builder spends some 800 instructions per item (ensure_space for
//  every scalar, a vtable search per table): at 16-byte items that was
//  three quarters of the client and broker's time. The two hot messages,
//  when their items carry only index, attempt, status and data (no files,
//  no error text, no partial), are laid out here directly: parents before
//  children so every uoffset points forward as FlatBuffers requires, one
//  shared vtable per item shape, every scalar at its natural alignment
//  from the buffer's start. The result is an ordinary Message that the
//  verifier checks like any other; everything else uses the builder.

static inline void
s_w16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void
s_w32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void
s_w64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}

//  Zero bytes from pos up to the next position that is 4 modulo 8: where a
//  table starts, so that its 8-byte fields (at +4) are aligned.
static inline size_t
s_fw_table_pos(uint8_t *b, size_t pos)
{
    //  Every table written there is at least 12 bytes long: zero the
    //  padding with one 8-byte store, not a byte at a time.
    memset(b + pos, 0, 8);
    return pos + ((4 - pos) & 7);
}

//  A vtable at pos (4-aligned) for a table of table_size bytes whose
//  fields sit at the given offsets (0: absent). Returns the next 4-aligned
//  position.
static size_t
s_fw_vtable(uint8_t *b, size_t pos, uint16_t table_size, const uint16_t *fields, size_t n)
{
    s_w16(b + pos, (uint16_t)(4 + 2 * n));
    s_w16(b + pos + 2, table_size);
    pos += 4;
    for (size_t i = 0; i < n; i++, pos += 2)
        s_w16(b + pos, fields[i]);
    if (pos & 3) {
        s_w16(b + pos, 0);
        pos += 2;
    }
    return pos;
}

//  A table's first word: the signed distance back to its vtable.
static inline void
s_fw_soffset(uint8_t *b, size_t table, size_t vtable)
{
    int32_t so = (int32_t)((int64_t)table - (int64_t)vtable);
    memcpy(b + table, &so, sizeof so);
}

//  A uoffset at pos to target, which lies after it.
static inline void
s_fw_uoffset(uint8_t *b, size_t pos, size_t target)
{
    s_w32(b + pos, (uint32_t)(target - pos));
}

//  A [ubyte] vector at pos (4-aligned). Returns the position after it.
static inline size_t
s_fw_bytes(uint8_t *b, size_t pos, loom_span sp)
{
    s_w32(b + pos, (uint32_t)sp.len);
    loom_copy(b + pos + 4, sp.data, sp.len);
    return pos + 4 + sp.len;
}

//  Root offset, file identifier, Message{proto, body_type, body}. Returns
//  the position where the body table must go, via *body_at (the uoffset to
//  patch) and the next free position.
static size_t
s_fw_message(uint8_t *b, lw::Body type, size_t *body_at)
{
    static const uint16_t fields[] = {4, 6, 8}; //  proto, body_type, body
    memcpy(b + 4, lw::MessageIdentifier(), 4);
    size_t vt = 8;
    size_t pos = s_fw_vtable(b, vt, 12, fields, 3);
    pos = s_fw_table_pos(b, pos);
    s_fw_uoffset(b, 0, pos);
    s_fw_soffset(b, pos, vt);
    s_w16(b + pos + 4, LOOM_PROTO_VERSION);
    b[pos + 6] = (uint8_t)type;
    b[pos + 7] = 0;
    *body_at = pos + 8;
    return pos + 12;
}

//  Whether m is a batch for the fast layout, checked as s_check would
//  (one pass over the items), with the bytes it needs at most in *cap:
//  header, body, vtables, and per item its offset, padding, table, length
//  and data. False sends m to s_check and the builder.
static bool
s_fw_plan(const loom_msg *m, size_t *cap)
{
    size_t n = 256;
    //  The type as an integer: a caller's bad value is refused later by
    //  s_check, never loaded as an enum here (UBSan: invalid enum load).
    auto type = s_enum_value(&m->type);
    if (type == LOOM_MSG_TASK_BATCH) {
        const loom_wire_task_batch *t = &m->u.task_batch;
        if (t->nitems > LOOM_WIRE_MAX_ITEMS || (t->nitems && !t->items))
            return false;
        for (size_t i = 0; i < t->nitems; i++) {
            const loom_wire_item *it = &t->items[i];
            if (it->nfiles || (!it->data.data && it->data.len))
                return false;
            n = s_add(n, s_add(48, it->data.len));
        }
    } else if (type == LOOM_MSG_RESULT_BATCH) {
        const loom_wire_result_batch *r = &m->u.result_batch;
        //  Blob counters are rare: the builder writes them.
        if (r->nresults > LOOM_WIRE_MAX_ITEMS || (r->nresults && !r->results) ||
            r->partial.data || r->partial.len || r->blob_bytes_in || r->blob_bytes_out)
            return false;
        for (size_t i = 0; i < r->nresults; i++) {
            const loom_wire_result *res = &r->results[i];
            if (res->error || res->nfiles || (!res->data.data && res->data.len))
                return false;
            n = s_add(n, s_add(48, res->data.len));
        }
    } else
        return false;
    *cap = n;
    return true;
}

static size_t
s_fw_task_batch(uint8_t *b, size_t pos, size_t body_at, const loom_wire_task_batch *t)
{
    //  TaskBatch{map +4, items +12, combine +16}, 20 bytes.
    static const uint16_t tb_fields[] = {4, 12, 16};
    //  Item{index +4, attempt +12, data +16}, 20 bytes; or without data.
    static const uint16_t it_fields[] = {4, 12, 16};
    static const uint16_t it_nodata[] = {4, 12, 0};
    size_t tb_vt = pos;
    pos = s_fw_vtable(b, pos, 20, tb_fields, 3);
    size_t it_vt = pos;
    pos = s_fw_vtable(b, pos, 20, it_fields, 3);
    size_t it_vt_nodata = pos;
    pos = s_fw_vtable(b, pos, 20, it_nodata, 3);
    pos = s_fw_table_pos(b, pos);
    size_t tb = pos;
    s_fw_uoffset(b, body_at, tb);
    s_fw_soffset(b, tb, tb_vt);
    s_w64(b + tb + 4, t->map);
    b[tb + 16] = t->combine ? 1 : 0;
    memset(b + tb + 17, 0, 3);
    pos = tb + 20;
    if (!t->nitems) {
        s_w32(b + tb + 12, 0);
        static const uint16_t no_items[] = {4, 0, 16};
        s_fw_vtable(b, tb_vt, 20, no_items, 3);
        return pos;
    }
    size_t vec = pos;
    s_fw_uoffset(b, tb + 12, vec);
    s_w32(b + vec, (uint32_t)t->nitems);
    pos = vec + 4 + 4 * t->nitems;
    for (size_t i = 0; i < t->nitems; i++) {
        const loom_wire_item *it = &t->items[i];
        pos = s_fw_table_pos(b, pos);
        size_t tab = pos;
        s_fw_uoffset(b, vec + 4 + 4 * i, tab);
        s_fw_soffset(b, tab, it->data.data ? it_vt : it_vt_nodata);
        s_w64(b + tab + 4, it->index);
        s_w32(b + tab + 12, it->attempt);
        s_w32(b + tab + 16, 0);
        pos = tab + 20;
        if (it->data.data) {
            s_fw_uoffset(b, tab + 16, pos);
            pos = s_fw_bytes(b, pos, it->data);
        }
    }
    return pos;
}

static size_t
s_fw_result_batch(uint8_t *b, size_t pos, size_t body_at, const loom_wire_result_batch *r)
{
    //  ResultBatch{map +4, results +20, elapsed_us +12, has_partial +24}, 28 bytes.
    static const uint16_t rb_fields[] = {4, 20, 12, 24};
    static const uint16_t rb_empty[] = {4, 0, 12, 24};
    //  Result{index +4, attempt +12, status +16, data +20}, 24 bytes; or without data.
    static const uint16_t r_fields[] = {4, 12, 16, 20};
    static const uint16_t r_nodata[] = {4, 12, 16, 0};
    size_t rb_vt = pos;
    pos = s_fw_vtable(b, pos, 28, r->nresults ? rb_fields : rb_empty, 4);
    size_t r_vt = pos;
    pos = s_fw_vtable(b, pos, 24, r_fields, 4);
    size_t r_vt_nodata = pos;
    pos = s_fw_vtable(b, pos, 24, r_nodata, 4);
    pos = s_fw_table_pos(b, pos);
    size_t rb = pos;
    s_fw_uoffset(b, body_at, rb);
    s_fw_soffset(b, rb, rb_vt);
    s_w64(b + rb + 4, r->map);
    s_w64(b + rb + 12, r->elapsed_us);
    s_w32(b + rb + 20, 0);
    b[rb + 24] = r->has_partial ? 1 : 0;
    memset(b + rb + 25, 0, 3);
    pos = rb + 28;
    if (!r->nresults)
        return pos;
    size_t vec = pos;
    s_fw_uoffset(b, rb + 20, vec);
    s_w32(b + vec, (uint32_t)r->nresults);
    pos = vec + 4 + 4 * r->nresults;
    for (size_t i = 0; i < r->nresults; i++) {
        const loom_wire_result *res = &r->results[i];
        pos = s_fw_table_pos(b, pos);
        size_t tab = pos;
        s_fw_uoffset(b, vec + 4 + 4 * i, tab);
        s_fw_soffset(b, tab, res->data.data ? r_vt : r_vt_nodata);
        s_w64(b + tab + 4, res->index);
        s_w32(b + tab + 12, res->attempt);
        int32_t status = res->status;
        memcpy(b + tab + 16, &status, sizeof status);
        s_w32(b + tab + 20, 0);
        pos = tab + 24;
        if (res->data.data) {
            s_fw_uoffset(b, tab + 20, pos);
            pos = s_fw_bytes(b, pos, res->data);
        }
    }
    return pos;
}

//  Returns 1 with the message built (offset 0), 0 when m is not for the
//  fast path (s_check has not run), or LOOM_ENOMEM.
static int
s_fast_encode(const loom_msg *m, uint8_t **raw_p, size_t *offset_p, size_t *size_p)
{
    size_t cap;
    if (!s_fw_plan(m, &cap) || cap > s_max_buffer)
        return 0;
    bool task = m->type == LOOM_MSG_TASK_BATCH;
    uint8_t *b = static_cast<uint8_t *>(malloc(cap));
    if (!b)
        return LOOM_ENOMEM;
    size_t body_at;
    size_t pos = s_fw_message(b, task ? lw::Body_TaskBatch : lw::Body_ResultBatch, &body_at);
    pos = task ? s_fw_task_batch(b, pos, body_at, &m->u.task_batch)
               : s_fw_result_batch(b, pos, body_at, &m->u.result_batch);
    LOOM_ASSERT(pos <= cap);
    //  End on an 8-byte boundary, as the builder's buffers do.
    while (pos & 7)
        b[pos++] = 0;
    *raw_p = b;
    *offset_p = 0;
    *size_p = pos;
    return 1;
}

//  --------------------------------------------------------------------------
//  Fast path: reading what the fast writer wrote

//  The verifier and the generated accessors cost some 300 instructions per
//  item of a batch, on every hop. A TaskBatch or ResultBatch laid out
//  exactly as s_fw_task_batch / s_fw_result_batch write it (the fixed
//  header, vtables and body byte for byte, then each item where the writer
//  would put it) is read here instead, with bounds checks and unaligned
//  loads only. Every buffer this reader accepts has the writer's structure,
//  so the verifier would accept it too (the tests check that); anything
//  else, including any layout another FlatBuffers writer might choose, goes
//  to the verifier as before. It never refuses: it only declines.

//  Positions in the writer's layout (checked against a written batch by
//  s_fr_templates).
enum {
    s_fr_proto = 24,     //  Message.proto, the one variable header field
    s_fr_body = 68,      //  the batch table
    s_fr_map = 72,       //  TaskBatch.map / ResultBatch.map
    s_fr_item_vt = 44,   //  vtable of an Item / Result with data
    s_fr_nodata_vt = 56, //  and without
    s_fr_tb_items = 80,  //  TaskBatch.items (uoffset)
    s_fr_tb_combine = 84,
    s_fr_tb_vec = 88, //  its vector: length, then offsets
    s_fr_rb_elapsed = 80,
    s_fr_rb_results = 88, //  ResultBatch.results (uoffset)
    s_fr_rb_partial = 92, //  has_partial
    s_fr_rb_vec = 96,
};

static inline uint32_t
s_r32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t
s_r64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

//  The header and body of a one-item batch of each kind as the writer
//  lays them out: the bytes before the first item that do not depend on
//  the batch's contents must match these.
struct s_fr_template {
    uint8_t task[s_fr_tb_vec];
    uint8_t result[s_fr_rb_vec];
};

static const s_fr_template &
s_fr_templates()
{
    static const s_fr_template t = [] {
        s_fr_template out;
        static const uint8_t one[1] = {0};
        loom_wire_item it = {};
        it.data = {one, 1};
        loom_wire_result res = {};
        res.data = {one, 1};
        loom_msg m = {};
        m.type = LOOM_MSG_TASK_BATCH;
        m.u.task_batch.nitems = 1;
        m.u.task_batch.items = &it;
        uint8_t *raw;
        size_t offset, size;
        LOOM_ASSERT(s_fast_encode(&m, &raw, &offset, &size) == 1 && size > s_fr_tb_vec);
        memcpy(out.task, raw, sizeof out.task);
        free(raw);
        m = {};
        m.type = LOOM_MSG_RESULT_BATCH;
        m.u.result_batch.nresults = 1;
        m.u.result_batch.results = &res;
        LOOM_ASSERT(s_fast_encode(&m, &raw, &offset, &size) == 1 && size > s_fr_rb_vec);
        memcpy(out.result, raw, sizeof out.result);
        free(raw);
        //  The positions above are the writer's.
        LOOM_ASSERT(s_r32(out.task) + 8 == s_fr_proto + 4 && out.task[s_fr_proto + 2] ==
                    lw::Body_TaskBatch);
        LOOM_ASSERT(s_r32(out.task + s_fr_proto + 4) + s_fr_proto + 4 == s_fr_body);
        LOOM_ASSERT(s_r32(out.task + s_fr_tb_items) + s_fr_tb_items == s_fr_tb_vec);
        LOOM_ASSERT(s_r32(out.result + s_fr_rb_results) + s_fr_rb_results == s_fr_rb_vec);
        return out;
    }();
    return t;
}

//  The fixed bytes of a batch before its items (everything but the proto,
//  the map, the elapsed time and the flags) match the writer's.
static bool
s_fr_header_ok(const uint8_t *b, const uint8_t *tpl, size_t items_at)
{
    return memcmp(b, tpl, s_fr_proto) == 0 &&
           memcmp(b + s_fr_proto + 2, tpl + s_fr_proto + 2, s_fr_map - s_fr_proto - 2) == 0 &&
           memcmp(b + items_at, tpl + items_at, 4) == 0;
}

//  How many items (results) the fast reader would read from b: 0 if b is
//  not a plain batch (then the verifier decides). Sets *type.
static size_t
s_fr_count(const uint8_t *b, size_t len, loom_msg_type *type)
{
    const s_fr_template &t = s_fr_templates();
    size_t vec;
    if (len >= s_fr_rb_vec + 4 && b[s_fr_proto + 2] == lw::Body_ResultBatch &&
        s_fr_header_ok(b, t.result, s_fr_rb_results)) {
        *type = LOOM_MSG_RESULT_BATCH;
        vec = s_fr_rb_vec;
    } else if (len >= s_fr_tb_vec + 4 && b[s_fr_proto + 2] == lw::Body_TaskBatch &&
               s_fr_header_ok(b, t.task, s_fr_tb_items)) {
        *type = LOOM_MSG_TASK_BATCH;
        vec = s_fr_tb_vec;
    } else
        return 0;
    size_t n = s_r32(b + vec);
    if (n == 0 || n > LOOM_WIRE_MAX_ITEMS || 4 * n > len - vec - 4)
        return 0;
    return n;
}

//  The next table position after pos: 4 modulo 8, as s_fw_table_pos.
static inline size_t
s_fr_table(size_t pos)
{
    return pos + ((4 - pos) & 7);
}

//  One item's table at tab, `fixed` bytes long with its data uoffset at
//  tab + fixed - 4. Returns the position after it (and its data), or 0.
static inline size_t
s_fr_item(const uint8_t *b, size_t len, size_t slot, size_t tab, size_t fixed, loom_span *data)
{
    if (tab + fixed > len || s_r32(b + slot) != tab - slot)
        return 0;
    uint32_t vt = s_r32(b + tab);
    if (vt == tab - s_fr_nodata_vt) {
        *data = loom_span{NULL, 0};
        return tab + fixed;
    }
    if (vt != tab - s_fr_item_vt || s_r32(b + tab + fixed - 4) != 4 || tab + fixed + 4 > len)
        return 0;
    size_t dlen = s_r32(b + tab + fixed);
    if (dlen > len - tab - fixed - 4)
        return 0;
    *data = loom_span{b + tab + fixed + 4, dlen};
    return tab + fixed + 4 + dlen;
}

//  Fill m from the plain batch b of n items (s_fr_count), its records in
//  arena. Pointers borrow from b. Returns false (m half-filled: the caller
//  starts again with the verifier) if b is not laid out as the writer does.
static bool
s_fr_decode(const uint8_t *b, size_t len, loom_msg_type type, size_t n, void *arena, loom_msg *m)
{
    uint16_t proto;
    memcpy(&proto, b + s_fr_proto, sizeof proto);
    m->type = type;
    m->proto = proto;
    size_t pos;
    if (type == LOOM_MSG_TASK_BATCH) {
        loom_wire_task_batch *out = &m->u.task_batch;
        loom_wire_item *arr = static_cast<loom_wire_item *>(arena);
        out->map = s_r64(b + s_fr_map);
        out->combine = b[s_fr_tb_combine] != 0;
        size_t slots = s_fr_tb_vec + 4;
        pos = slots + 4 * n;
        for (size_t i = 0; i < n; i++) {
            size_t tab = s_fr_table(pos);
            loom_wire_item *it = &arr[i];
            pos = s_fr_item(b, len, slots + 4 * i, tab, 20, &it->data);
            if (!pos)
                return false;
            it->index = s_r64(b + tab + 4);
            it->attempt = s_r32(b + tab + 12);
            it->nfiles = 0;
            it->files = NULL;
        }
        out->nitems = n;
        out->items = arr;
    } else {
        loom_wire_result_batch *out = &m->u.result_batch;
        loom_wire_result *arr = static_cast<loom_wire_result *>(arena);
        out->map = s_r64(b + s_fr_map);
        out->elapsed_us = s_r64(b + s_fr_rb_elapsed);
        out->has_partial = b[s_fr_rb_partial] != 0;
        size_t slots = s_fr_rb_vec + 4;
        pos = slots + 4 * n;
        for (size_t i = 0; i < n; i++) {
            size_t tab = s_fr_table(pos);
            loom_wire_result *r = &arr[i];
            pos = s_fr_item(b, len, slots + 4 * i, tab, 24, &r->data);
            if (!pos)
                return false;
            r->index = s_r64(b + tab + 4);
            r->attempt = s_r32(b + tab + 12);
            memcpy(&r->status, b + tab + 16, sizeof r->status);
            r->error = NULL;
            r->nfiles = 0;
            r->files = NULL;
        }
        out->nresults = n;
        out->results = arr;
    }
    //  The writer ends on an 8-byte boundary.
    return ((pos + 7) & ~(size_t)7) == len;
}

//  Size of one record of the arena of a batch of this type.
static inline size_t
s_fr_rec_size(loom_msg_type type)
{
    return type == LOOM_MSG_TASK_BATCH ? sizeof(loom_wire_item) : sizeof(loom_wire_result);
}

//  Build m. On success *raw_p is a malloc'd block holding the message at
//  *offset_p, *size_p bytes long.
static int
s_encode(const loom_msg *m, uint8_t **raw_p, size_t *offset_p, size_t *size_p)
{
    LOOM_ASSERT(m && raw_p && offset_p && size_p);
    int rc = s_fast_encode(m, raw_p, offset_p, size_p);
    if (rc)
        return rc < 0 ? rc : 0;
    rc = s_check(m);
    if (rc)
        return rc;
    size_t bound = s_bound(m);
    if (bound > s_max_buffer)
        return LOOM_ETOOBIG;
    try {
        fb::FlatBufferBuilder b(bound, &s_allocator, false, 8);
        auto body = s_put_body(b, m);
        auto root = lw::CreateMessage(b, LOOM_PROTO_VERSION, (lw::Body)m->type, body);
        lw::FinishMessageBuffer(b, root);
        size_t allocated, offset;
        uint8_t *raw = b.ReleaseRaw(allocated, offset);
        *raw_p = raw;
        *offset_p = offset;
        *size_p = allocated - offset;
        return 0;
    } catch (const std::bad_alloc &) {
        return LOOM_ENOMEM;
    }
}

int
loom_wire_encode(const loom_msg *m, void **buf_p, size_t *len_p)
{
    LOOM_ASSERT(m && buf_p && len_p);
    *buf_p = NULL;
    *len_p = 0;
    uint8_t *raw;
    size_t offset, size;
    int rc = s_encode(m, &raw, &offset, &size);
    if (rc)
        return rc;
    //  The builder writes from the end of its block: slide the message to
    //  the front so the caller's free() gets the block's own address, and
    //  give back the room the size bound left unused.
    memmove(raw, raw + offset, size);
    if (offset > 256) {
        void *smaller = realloc(raw, size);
        if (smaller)
            raw = static_cast<uint8_t *>(smaller);
    }
    *buf_p = raw;
    *len_p = size;
    return 0;
}

//  --------------------------------------------------------------------------
//  Decoding

static inline loom_span
s_get_bytes(const fb::Vector<uint8_t> *v)
{
    loom_span sp = {NULL, 0};
    if (v) {
        sp.data = v->data();
        sp.len = v->size();
    }
    return sp;
}

static inline const char *
s_get_str(const fb::String *s)
{
    return s ? s->c_str() : NULL;
}

//  A hash is present and LOOM_HASH_SIZE bytes long.
static inline bool
s_get_hash(const fb::Vector<uint8_t> *v, loom_span *hash)
{
    *hash = s_get_bytes(v);
    return v && v->size() == LOOM_HASH_SIZE;
}

typedef const fb::Vector<fb::Offset<lw::FileRef>> s_file_vector;

//  Count the files of a batch, refusing more than LOOM_WIRE_MAX_ITEMS.
static inline bool
s_count_files(s_file_vector *v, size_t *total)
{
    if (v)
        *total += v->size();
    return *total <= LOOM_WIRE_MAX_ITEMS;
}

//  Fill files from v into the arena at *cursor.
static bool
s_get_files(s_file_vector *v, loom_wire_file **cursor, size_t *n_p, const loom_wire_file **files_p)
{
    *n_p = 0;
    *files_p = NULL;
    if (!v || v->size() == 0)
        return true;
    loom_wire_file *files = *cursor;
    for (fb::uoffset_t i = 0; i < v->size(); i++) {
        const lw::FileRef *f = v->Get(i);
        files[i].name = s_get_str(f->name());
        files[i].size = f->size();
        if (!files[i].name || !s_get_hash(f->hash(), &files[i].hash))
            return false;
    }
    *cursor = files + v->size();
    *n_p = v->size();
    *files_p = files;
    return true;
}

//  The arena of a batch: n records of rec_size bytes, then nfiles files.
static int
s_arena(loom_msg *m, size_t n, size_t rec_size, size_t nfiles, loom_wire_file **files_p)
{
    *files_p = NULL;
    size_t size = n * rec_size + nfiles * sizeof(loom_wire_file);
    if (size == 0)
        return 0;
    m->priv_ = malloc(size);
    if (!m->priv_)
        return LOOM_ENOMEM;
    *files_p = (loom_wire_file *)((uint8_t *)m->priv_ + n * rec_size);
    return 0;
}

static int
s_get_task_batch(const lw::TaskBatch *t, loom_msg *m)
{
    loom_wire_task_batch *out = &m->u.task_batch;
    out->map = t->map();
    out->combine = t->combine();
    const fb::Vector<fb::Offset<lw::Item>> *items = t->items();
    size_t n = items ? items->size() : 0;
    if (n > LOOM_WIRE_MAX_ITEMS)
        return LOOM_EPROTO;
    size_t nfiles = 0;
    for (size_t i = 0; i < n; i++)
        if (!s_count_files(items->Get(i)->files(), &nfiles))
            return LOOM_EPROTO;
    loom_wire_file *cursor;
    int rc = s_arena(m, n, sizeof(loom_wire_item), nfiles, &cursor);
    if (rc)
        return rc;
    loom_wire_item *arr = (loom_wire_item *)m->priv_;
    for (size_t i = 0; i < n; i++) {
        const lw::Item *it = items->Get(i);
        arr[i].index = it->index();
        arr[i].attempt = it->attempt();
        arr[i].data = s_get_bytes(it->data());
        if (!s_get_files(it->files(), &cursor, &arr[i].nfiles, &arr[i].files))
            return LOOM_EPROTO;
    }
    out->nitems = n;
    out->items = n ? arr : NULL;
    return 0;
}

static int
s_get_result_batch(const lw::ResultBatch *r, loom_msg *m)
{
    loom_wire_result_batch *out = &m->u.result_batch;
    out->map = r->map();
    out->elapsed_us = r->elapsed_us();
    out->has_partial = r->has_partial();
    out->partial = s_get_bytes(r->partial());
    out->blob_bytes_in = r->blob_bytes_in();
    out->blob_bytes_out = r->blob_bytes_out();
    const fb::Vector<fb::Offset<lw::Result>> *results = r->results();
    size_t n = results ? results->size() : 0;
    if (n > LOOM_WIRE_MAX_ITEMS)
        return LOOM_EPROTO;
    size_t nfiles = 0;
    for (size_t i = 0; i < n; i++)
        if (!s_count_files(results->Get(i)->files(), &nfiles))
            return LOOM_EPROTO;
    loom_wire_file *cursor;
    int rc = s_arena(m, n, sizeof(loom_wire_result), nfiles, &cursor);
    if (rc)
        return rc;
    loom_wire_result *arr = (loom_wire_result *)m->priv_;
    for (size_t i = 0; i < n; i++) {
        const lw::Result *res = results->Get(i);
        arr[i].index = res->index();
        arr[i].attempt = res->attempt();
        arr[i].status = res->status();
        arr[i].data = s_get_bytes(res->data());
        arr[i].error = s_get_str(res->error());
        if (!s_get_files(res->files(), &cursor, &arr[i].nfiles, &arr[i].files))
            return LOOM_EPROTO;
    }
    out->nresults = n;
    out->results = n ? arr : NULL;
    return 0;
}

static void
s_get_stats(const lw::Stats *s, loom_wire_stats *out)
{
    out->epoch = s->epoch();
    out->uptime_ms = s->uptime_ms();
    out->clients = s->clients();
    out->workers = s->workers();
    out->supervisors = s->supervisors();
    out->maps = s->maps();
    out->pipelines = s->pipelines();
    out->items_queued = s->items_queued();
    out->items_in_flight = s->items_in_flight();
    out->items_done = s->items_done();
    out->items_failed = s->items_failed();
    out->items_retried = s->items_retried();
    out->results_dropped = s->results_dropped();
    out->msgs_in = s->msgs_in();
    out->msgs_out = s->msgs_out();
    out->msgs_rejected = s->msgs_rejected();
    out->blob_bytes_in = s->blob_bytes_in();
    out->blob_bytes_out = s->blob_bytes_out();
    out->blobs_stored = s->blobs_stored();
    out->blob_store_bytes = s->blob_store_bytes();
    out->workers_blob_bytes_in = s->workers_blob_bytes_in();
    out->workers_blob_bytes_out = s->workers_blob_bytes_out();
    out->connections_dropped = s->connections_dropped();
    out->blob_bytes_adopted = s->blob_bytes_adopted();
    out->curve_refused = s->curve_refused();
    out->items_cancelling = s->items_cancelling();
    out->items_cancelled = s->items_cancelled();
}

//  Verify the aligned copy buf and fill m from it. On failure m->priv_
//  may hold an arena for the caller to free.
static int
s_decode(const uint8_t *buf, size_t len, loom_msg *m)
{
    fb::Verifier verifier(buf, len, LOOM_WIRE_MAX_DEPTH, LOOM_WIRE_MAX_TABLES);
    if (!lw::VerifyMessageBuffer(verifier))
        return LOOM_EPROTO;
    const lw::Message *msg = lw::GetMessage(buf);
    const void *body = msg->body();
    unsigned type = msg->body_type();
    if (type == lw::Body_NONE || type > lw::Body_MAX || !body)
        return LOOM_EPROTO;
    m->type = (loom_msg_type)type;
    m->proto = msg->proto();

    switch (type) {
    case lw::Body_Hello: {
        const lw::Hello *h = msg->body_as_Hello();
        unsigned role = (unsigned)h->role();
        if (role > lw::Role_MAX)
            return LOOM_EPROTO;
        m->u.hello.role = (loom_role)role;
        m->u.hello.host = s_get_str(h->host());
        m->u.hello.pid = h->pid();
        m->u.hello.credit = h->credit();
        m->u.hello.procs = h->procs();
        m->u.hello.software = s_get_str(h->software());
        return 0;
    }
    case lw::Body_Welcome: {
        const lw::Welcome *w = msg->body_as_Welcome();
        m->u.welcome.epoch = w->epoch();
        m->u.welcome.session = w->session();
        m->u.welcome.worker_id = w->worker_id();
        m->u.welcome.heartbeat_ms = w->heartbeat_ms();
        m->u.welcome.liveness = w->liveness();
        m->u.welcome.max_batch = w->max_batch();
        m->u.welcome.max_frame = w->max_frame();
        m->u.welcome.blob_endpoint = s_get_str(w->blob_endpoint());
        m->u.welcome.blob_store = s_get_str(w->blob_store());
        return 0;
    }
    case lw::Body_PipelineOpen: {
        const lw::PipelineOpen *p = msg->body_as_PipelineOpen();
        m->u.pipeline_open.pipeline = p->pipeline();
        m->u.pipeline_open.name = s_get_str(p->name());
        return 0;
    }
    case lw::Body_PipelineClose:
        m->u.pipeline_close.pipeline = msg->body_as_PipelineClose()->pipeline();
        return 0;
    case lw::Body_MapOpen: {
        const lw::MapOpen *o = msg->body_as_MapOpen();
        loom_wire_map_open *out = &m->u.map_open;
        out->map = o->map();
        out->pipeline = o->pipeline();
        out->plugin = s_get_str(o->plugin());
        out->version = o->version() ? o->version()->c_str() : "";
        out->task = s_get_str(o->task());
        out->args = s_get_bytes(o->args());
        out->ordered = o->ordered();
        out->reduce = o->reduce();
        out->chunk = o->chunk();
        out->retries = o->retries();
        out->timeout_ms = o->timeout_ms();
        out->retry_failed = o->retry_failed();
        out->halt_after_failures = o->halt_after_failures();
        out->failures_seen = o->failures_seen();
        out->init_timeout_ms = o->init_timeout_ms();
        if (!out->plugin || !out->task)
            return LOOM_EPROTO;
        size_t nshares = 0;
        if (!s_count_files(o->shares(), &nshares))
            return LOOM_EPROTO;
        loom_wire_file *cursor;
        int rc = s_arena(m, 0, 1, nshares, &cursor);
        if (rc)
            return rc;
        return s_get_files(o->shares(), &cursor, &out->nshares, &out->shares) ? 0 : LOOM_EPROTO;
    }
    case lw::Body_TaskBatch:
        return s_get_task_batch(msg->body_as_TaskBatch(), m);
    case lw::Body_MapEnd: {
        const lw::MapEnd *e = msg->body_as_MapEnd();
        m->u.map_end.map = e->map();
        m->u.map_end.count = e->count();
        return 0;
    }
    case lw::Body_Credit:
        m->u.credit = msg->body_as_Credit()->credit();
        return 0;
    case lw::Body_ResultBatch:
        return s_get_result_batch(msg->body_as_ResultBatch(), m);
    case lw::Body_Cancel:
        m->u.cancel_map = msg->body_as_Cancel()->map();
        return 0;
    case lw::Body_Heartbeat:
    case lw::Body_StatsRequest:
        return 0;
    case lw::Body_Error: {
        const lw::Error *e = msg->body_as_Error();
        m->u.error.code = e->code();
        m->u.error.map = e->map();
        m->u.error.pipeline = e->pipeline();
        m->u.error.message = s_get_str(e->message());
        return 0;
    }
    case lw::Body_Stats:
        s_get_stats(msg->body_as_Stats(), &m->u.stats);
        return 0;
    case lw::Body_WorkerExit: {
        const lw::WorkerExit *x = msg->body_as_WorkerExit();
        m->u.worker_exit.pid = x->pid();
        m->u.worker_exit.signal = x->signal();
        m->u.worker_exit.status = x->status();
        m->u.worker_exit.max_rss = x->max_rss();
        m->u.worker_exit.rss_limit = x->rss_limit();
        m->u.worker_exit.oom_kill = x->oom_kill();
        m->u.worker_exit.init_map = x->init_map();
        m->u.worker_exit.init_error = s_get_str(x->init_error());
        return 0;
    }
    case lw::Body_BlobHave: {
        const lw::BlobHave *h = msg->body_as_BlobHave();
        m->u.blob_have.size = h->size();
        m->u.blob_have.have = h->have();
        m->u.blob_have.adopt = s_get_str(h->adopt());
        return s_get_hash(h->hash(), &m->u.blob_have.hash) ? 0 : LOOM_EPROTO;
    }
    case lw::Body_BlobPut: {
        const lw::BlobPut *p = msg->body_as_BlobPut();
        m->u.blob_put.offset = p->offset();
        m->u.blob_put.total = p->total();
        m->u.blob_put.data = s_get_bytes(p->data());
        return s_get_hash(p->hash(), &m->u.blob_put.hash) ? 0 : LOOM_EPROTO;
    }
    case lw::Body_BlobGet: {
        const lw::BlobGet *g = msg->body_as_BlobGet();
        m->u.blob_get.offset = g->offset();
        m->u.blob_get.credit = g->credit();
        return s_get_hash(g->hash(), &m->u.blob_get.hash) ? 0 : LOOM_EPROTO;
    }
    case lw::Body_BlobChunk: {
        const lw::BlobChunk *c = msg->body_as_BlobChunk();
        m->u.blob_chunk.offset = c->offset();
        m->u.blob_chunk.total = c->total();
        m->u.blob_chunk.data = s_get_bytes(c->data());
        m->u.blob_chunk.status = c->status();
        return s_get_hash(c->hash(), &m->u.blob_chunk.hash) ? 0 : LOOM_EPROTO;
    }
    default:
        return LOOM_EPROTO;
    }
}

//  Decode a copy of data: one block holds the loom_msg, the arena of a
//  plain batch (the fast reader's records), then the frame's copy, which
//  is 8-byte aligned for the verifier.
static int
s_decode_copy(const uint8_t *data, size_t len, bool verify_only, loom_msg **msg_p)
{
    loom_msg_type type = LOOM_MSG_NONE;
    size_t n = verify_only ? 0 : s_fr_count(data, len, &type);
    size_t arena = n * s_fr_rec_size(type);
    uint8_t *block = static_cast<uint8_t *>(malloc(s_buf_offset + arena + len));
    if (!block)
        return LOOM_ENOMEM;
    uint8_t *buf = block + s_buf_offset + arena;
    LOOM_ASSERT(((uintptr_t)buf & 7) == 0);
    memcpy(buf, data, len);
    loom_msg *m = reinterpret_cast<loom_msg *>(block);
    memset(m, 0, sizeof *m);
    if (n && s_fr_decode(buf, len, type, n, block + s_buf_offset, m)) {
        *msg_p = m;
        return 0;
    }
    memset(m, 0, sizeof *m);
    int rc = s_decode(buf, len, m);
    if (rc) {
        free(m->priv_);
        free(block);
        return rc;
    }
    *msg_p = m;
    return 0;
}

int
loom_wire_decode(const void *data, size_t len, loom_msg **msg_p)
{
    LOOM_ASSERT(msg_p);
    *msg_p = NULL;
    if (!data || len < s_min_buffer || len > s_max_buffer)
        return LOOM_EPROTO;
    return s_decode_copy(static_cast<const uint8_t *>(data), len, false, msg_p);
}

int
loom__wire_decode_verified(const void *data, size_t len, loom_msg **msg_p)
{
    LOOM_ASSERT(msg_p);
    *msg_p = NULL;
    if (!data || len < s_min_buffer || len > s_max_buffer)
        return LOOM_EPROTO;
    return s_decode_copy(static_cast<const uint8_t *>(data), len, true, msg_p);
}

size_t loom__wire_in_place_min = 8192;

//  A message that keeps frame: one block holds the loom_msg (zeroed), an
//  arena of `arena` bytes at s_buf_offset, then the frame, moved there;
//  *kept points to it. NULL (frame untouched) without memory.
static loom_msg *
s_keep_frame(zmq_msg_t *frame, size_t arena, zmq_msg_t **kept)
{
    uint8_t *block = static_cast<uint8_t *>(malloc(s_buf_offset + arena + sizeof(zmq_msg_t)));
    if (!block)
        return NULL;
    *kept = reinterpret_cast<zmq_msg_t *>(block + s_buf_offset + arena);
    zmq_msg_init(*kept);
    zmq_msg_move(*kept, frame);
    loom_msg *m = reinterpret_cast<loom_msg *>(block);
    memset(m, 0, sizeof *m);
    return m;
}

//  Undo s_keep_frame after a failed decode: the frame back, the block freed.
static void
s_unkeep_frame(loom_msg *m, zmq_msg_t *kept, zmq_msg_t *frame)
{
    free(m->priv_);
    zmq_msg_move(frame, kept);
    zmq_msg_close(kept);
    free(m);
}

//  Decode a received frame. A plain batch keeps the frame itself and
//  borrows from it: no copy, and loom_wire_forward can send it on
//  (plain_). So does any other frame of at least loom__wire_in_place_min
//  bytes that is 8-byte aligned, as the verifier wants: a blob chunk's
//  bytes, a large batch with files are not copied (libzmq allocates a
//  message larger than its 8 KiB receive batch on its own, so keeping such
//  a frame keeps no one else's bytes alive). Anything else is copied as
//  loom_wire_decode does. The frame is left empty, or as it was on
//  failure: the caller closes it. Read from kept, not data: a very small
//  message lives inside its zmq_msg_t.
static int
s_decode_frame(zmq_msg_t *frame, loom_msg **msg_p)
{
    const uint8_t *data = static_cast<const uint8_t *>(zmq_msg_data(frame));
    size_t len = zmq_msg_size(frame);
    if (!data || len < s_min_buffer || len > s_max_buffer)
        return LOOM_EPROTO;
    loom_msg_type type = LOOM_MSG_NONE;
    size_t n = s_fr_count(data, len, &type);
    zmq_msg_t *kept;
    if (n) {
        loom_msg *m = s_keep_frame(frame, n * s_fr_rec_size(type), &kept);
        if (!m)
            return LOOM_ENOMEM;
        if (s_fr_decode(static_cast<const uint8_t *>(zmq_msg_data(kept)), len, type, n,
                        reinterpret_cast<uint8_t *>(m) + s_buf_offset, m)) {
            m->frame_ = kept;
            m->plain_ = true;
            *msg_p = m;
            return 0;
        }
        s_unkeep_frame(m, kept, frame);
        data = static_cast<const uint8_t *>(zmq_msg_data(frame));
    }
    if (len < loom__wire_in_place_min || ((uintptr_t)data & 7) != 0)
        return s_decode_copy(data, len, true, msg_p);
    loom_msg *m = s_keep_frame(frame, 0, &kept);
    if (!m)
        return LOOM_ENOMEM;
    int rc = s_decode(static_cast<const uint8_t *>(zmq_msg_data(kept)), len, m);
    if (rc) {
        s_unkeep_frame(m, kept, frame);
        return rc;
    }
    m->frame_ = kept;
    *msg_p = m;
    return 0;
}

int
loom_wire_decode_frame(void *frame, loom_msg **msg_p)
{
    LOOM_ASSERT(frame && msg_p);
    *msg_p = NULL;
    return s_decode_frame(static_cast<zmq_msg_t *>(frame), msg_p);
}

void
loom_msg_destroy(loom_msg **msg_p)
{
    LOOM_ASSERT(msg_p);
    loom_msg *m = *msg_p;
    if (!m)
        return;
    if (m->frame_)
        zmq_msg_close(static_cast<zmq_msg_t *>(m->frame_));
    free(m->priv_);
    free(m);
    *msg_p = NULL;
}

const char *
loom_msg_type_name(int type)
{
    static const char *const names[LOOM_MSG_COUNT_] = {
        "NONE",       "Hello",     "Welcome", "PipelineOpen", "PipelineClose",
        "MapOpen",    "TaskBatch", "MapEnd",  "Credit",       "ResultBatch",
        "Cancel",     "Heartbeat", "Error",   "StatsRequest", "Stats",
        "WorkerExit", "BlobHave",  "BlobPut", "BlobGet",      "BlobChunk",
    };
    if (type < 0 || type >= LOOM_MSG_COUNT_)
        return "?";
    return names[type];
}

//  --------------------------------------------------------------------------
//  Sockets

//  libzmq's free function for a sent buffer; may run on its I/O thread.
static void
s_free_raw(void *data, void *hint)
{
    (void)data;
    free(hint);
}

static int
s_send_error(int err)
{
    if (err == EAGAIN)
        return LOOM_EAGAIN;
    if (err == EHOSTUNREACH)
        return LOOM_ECONNECT;
    return LOOM_EIO;
}

//  Send the encoded message at raw + offset (size bytes; raw is freed
//  once libzmq is done with it, or now on failure).
static int
s_send_raw(void *sock, const void *rid, size_t rid_len, uint8_t *raw, size_t offset, size_t size,
           int flags)
{
    if (rid && zmq_send(sock, rid, rid_len, flags | ZMQ_SNDMORE) == -1) {
        int err = zmq_errno();
        free(raw);
        return s_send_error(err);
    }
    //  Once the routing id is accepted a ROUTER takes the body too (its
    //  checks happen on the first frame), so no half message is left.
    zmq_msg_t frame;
    if (zmq_msg_init_data(&frame, raw + offset, size, s_free_raw, raw) != 0) {
        free(raw);
        return LOOM_ENOMEM;
    }
    if (zmq_msg_send(&frame, sock, flags) == -1) {
        int err = zmq_errno();
        zmq_msg_close(&frame); //  frees raw
        return s_send_error(err);
    }
    return 0;
}

int
loom_wire_send(void *sock, const void *rid, size_t rid_len, const loom_msg *m, int flags)
{
    LOOM_ASSERT(sock && m);
    LOOM_ASSERT((flags & ~ZMQ_DONTWAIT) == 0);
    uint8_t *raw;
    size_t offset, size;
    int rc = s_encode(m, &raw, &offset, &size);
    if (rc)
        return rc;
    return s_send_raw(sock, rid, rid_len, raw, offset, size, flags);
}

int
loom_wire_send_filled(void *sock, const void *rid, size_t rid_len, const loom_msg *m,
                      loom_wire_fill fill, void *ctx, int flags)
{
    LOOM_ASSERT(sock && m && fill);
    LOOM_ASSERT((flags & ~ZMQ_DONTWAIT) == 0);
    LOOM_ASSERT(m->type == LOOM_MSG_BLOB_PUT || m->type == LOOM_MSG_BLOB_CHUNK);
    //  c: m with its data span pointing somewhere (never read), so that the
    //  checks and the size bound see the bytes that fill will write.
    loom_msg c = *m;
    bool put = m->type == LOOM_MSG_BLOB_PUT;
    loom_span *data = put ? &c.u.blob_put.data : &c.u.blob_chunk.data;
    if (data->len == 0)
        return loom_wire_send(sock, rid, rid_len, m, flags);
    data->data = reinterpret_cast<const uint8_t *>(&c);
    int rc = s_check(&c);
    if (rc)
        return rc;
    size_t bound = s_bound(&c);
    if (bound > s_max_buffer)
        return LOOM_ETOOBIG;
    uint8_t *raw;
    size_t offset, size;
    try {
        //  Built as s_put_body builds it (the same bytes as loom_wire_send
        //  once filled), the data written in place.
        fb::FlatBufferBuilder b(bound, &s_allocator, false, 8);
        fb::Offset<void> body;
        uint8_t *dst = nullptr;
        if (put) {
            const loom_wire_blob_put *p = &c.u.blob_put;
            auto hash = s_put_bytes(b, p->hash);
            auto bytes = b.CreateUninitializedVector(p->data.len, &dst);
            rc = fill(ctx, dst, p->data.len);
            body = lw::CreateBlobPut(b, hash, p->offset, p->total, bytes).Union();
        } else {
            const loom_wire_blob_chunk *k = &c.u.blob_chunk;
            auto hash = s_put_bytes(b, k->hash);
            auto bytes = b.CreateUninitializedVector(k->data.len, &dst);
            rc = fill(ctx, dst, k->data.len);
            body = lw::CreateBlobChunk(b, hash, k->offset, k->total, bytes, k->status).Union();
        }
        if (rc)
            return rc;
        auto root = lw::CreateMessage(b, LOOM_PROTO_VERSION, (lw::Body)c.type, body);
        lw::FinishMessageBuffer(b, root);
        size_t allocated;
        raw = b.ReleaseRaw(allocated, offset);
        size = allocated - offset;
    } catch (const std::bad_alloc &) {
        return LOOM_ENOMEM;
    }
    return s_send_raw(sock, rid, rid_len, raw, offset, size, flags);
}

//  Receive the remaining frames of a message into nothing. Returns 0, or
//  LOOM_EIO when the socket failed meanwhile.
static int
s_drain(void *sock, zmq_msg_t *frame)
{
    while (zmq_msg_more(frame)) {
        zmq_msg_close(frame);
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, sock, 0) == -1)
            return LOOM_EIO;
    }
    return 0;
}

//  Refuse the message frame belongs to: drain it, close frame.
static int
s_refuse(void *sock, zmq_msg_t *frame)
{
    int rc = s_drain(sock, frame);
    zmq_msg_close(frame);
    return rc ? rc : LOOM_EPROTO;
}

int
loom_wire_recv(void *sock, void *rid, size_t rid_cap, size_t *rid_len, loom_msg **msg_p, int flags)
{
    return loom_wire_recv_user(sock, rid, rid_cap, rid_len, msg_p, flags, NULL, 0);
}

int
loom_wire_recv_user(void *sock, void *rid, size_t rid_cap, size_t *rid_len, loom_msg **msg_p,
                    int flags, char *user, size_t user_cap)
{
    if (user && user_cap)
        user[0] = 0;
    LOOM_ASSERT(sock && msg_p);
    LOOM_ASSERT(!rid || rid_len);
    LOOM_ASSERT((flags & ~ZMQ_DONTWAIT) == 0);
    *msg_p = NULL;
    if (rid_len)
        *rid_len = 0;

    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, sock, flags) == -1) {
        int err = zmq_errno();
        zmq_msg_close(&frame);
        return err == EAGAIN ? LOOM_EAGAIN : LOOM_EIO;
    }
    if (rid) {
        size_t n = zmq_msg_size(&frame);
        if (n > rid_cap || !zmq_msg_more(&frame))
            return s_refuse(sock, &frame);
        memcpy(rid, zmq_msg_data(&frame), n);
        *rid_len = n;
        //  The rest of a message is there once its first frame is.
        zmq_msg_close(&frame);
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, sock, 0) == -1) {
            zmq_msg_close(&frame);
            return LOOM_EIO;
        }
    }
    if (zmq_msg_more(&frame))
        return s_refuse(sock, &frame);
    if (user && user_cap) {
        const char *u = zmq_msg_gets(&frame, "User-Id");
        if (u && strlen(u) < user_cap)
            memcpy(user, u, strlen(u) + 1);
    }
    int rc = s_decode_frame(&frame, msg_p);
    zmq_msg_close(&frame);
    return rc;
}

bool
loom_wire_forwardable(const loom_msg *m)
{
    //  (A batch the fast reader did not take may hold its frame too, read
    //  where it is; loom_wire_forward relies on the plain layout.)
    return m && m->frame_ && m->plain_ &&
           (m->type == LOOM_MSG_TASK_BATCH || m->type == LOOM_MSG_RESULT_BATCH);
}

int
loom_wire_forward(void *sock, const void *rid, size_t rid_len, loom_msg **msg_p, uint64_t map,
                  int flags)
{
    LOOM_ASSERT(sock && msg_p && loom_wire_forwardable(*msg_p));
    LOOM_ASSERT((flags & ~ZMQ_DONTWAIT) == 0);
    loom_msg *m = *msg_p;
    zmq_msg_t *frame = static_cast<zmq_msg_t *>(m->frame_);
    int rc = 0;
    if (rid && zmq_send(sock, rid, rid_len, flags | ZMQ_SNDMORE) == -1)
        rc = s_send_error(zmq_errno());
    else {
        //  The map id sits at the same place in both batches (s_fr_map).
        memcpy(static_cast<uint8_t *>(zmq_msg_data(frame)) + s_fr_map, &map, sizeof map);
        if (zmq_msg_send(frame, sock, flags) == -1)
            rc = s_send_error(zmq_errno());
    }
    loom_msg_destroy(msg_p);
    return rc;
}
