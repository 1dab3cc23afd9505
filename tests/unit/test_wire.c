/*  test_wire: the FlatBuffers codec (runtime/wire/wire.h).

    Round trips of every message type, refusal of malformed input (prefixes,
    garbage, wrong identifier, bad union types, oversized claims, missing
    required fields), decoding at odd addresses, framing over a real
    ROUTER/DEALER pair, and interop with flatc, the reference implementation
    of FlatBuffers, in both directions.  */

#include "loom_test.h"

#include <errno.h>
#include <inttypes.h>
#include <time.h>

#include <zmq.h>

#include "wire.h"

#ifndef LOOM_FLATC
#define LOOM_FLATC "flatc"
#endif
#ifndef LOOM_FBS_PATH
#define LOOM_FBS_PATH "runtime/wire/loom.fbs"
#endif

//  --------------------------------------------------------------------------
//  Sample messages, every field set to a distinctive value

static uint8_t s_hash_a[LOOM_HASH_SIZE];
static uint8_t s_hash_b[LOOM_HASH_SIZE];
static const uint8_t s_bytes[] = {1, 2, 3, 0, 255};
static const uint8_t s_args[] = {'{', '"', 'k', '"', ':', '1', '}', 0, 7};
static const uint8_t s_empty[1] = {0};
static loom_wire_file s_files[2];
static loom_wire_item s_items[3];
static loom_wire_result s_results[3];

#define BIG64 UINT64_C(0x0123456789abcdef)

static void
s_init_samples(void)
{
    for (int i = 0; i < LOOM_HASH_SIZE; i++) {
        s_hash_a[i] = (uint8_t)i;
        s_hash_b[i] = (uint8_t)(255 - i);
    }
    s_files[0] = (loom_wire_file){"in.txt", {s_hash_a, LOOM_HASH_SIZE}, 12345};
    s_files[1] = (loom_wire_file){"model.bin", {s_hash_b, LOOM_HASH_SIZE}, UINT64_C(1) << 40};
    s_items[0] = (loom_wire_item){0, 1, {s_bytes, sizeof s_bytes}, 2, s_files};
    s_items[1] = (loom_wire_item){1, 0, {s_empty, 0}, 0, NULL};
    s_items[2] = (loom_wire_item){UINT64_MAX - 1, 7, {NULL, 0}, 1, s_files + 1};
    s_results[0] = (loom_wire_result){3, 2, 0, {s_bytes, sizeof s_bytes}, NULL, 1, s_files};
    s_results[1] =
        (loom_wire_result){4, 0, LOOM_ETASK, {NULL, 0}, "task said no: ünïcode", 0, NULL};
    s_results[2] = (loom_wire_result){BIG64, 9, LOOM_ECRASHED, {s_empty, 0}, "", 2, s_files};
}

//  Fill m with a sample of type `type`, all fields set.
static void
s_sample(int type, loom_msg *m)
{
    s_init_samples();
    memset(m, 0, sizeof *m);
    m->type = (loom_msg_type)type;
    switch (type) {
    case LOOM_MSG_HELLO:
        m->u.hello = (loom_wire_hello){LOOM_ROLE_SUPERVISOR, "host-9f3a", 4242, 512, 8, "0.1.0"};
        break;
    case LOOM_MSG_WELCOME:
        m->u.welcome = (loom_wire_welcome){
            BIG64, UINT64_MAX, 17, 1000, 3, 256, 1u << 20, "tcp://*:5556", "/tmp/loom-store-1-abc"};
        break;
    case LOOM_MSG_PIPELINE_OPEN:
        m->u.pipeline_open = (loom_wire_pipeline){BIG64, "my pipeline"};
        break;
    case LOOM_MSG_PIPELINE_CLOSE:
        m->u.pipeline_close = (loom_wire_pipeline){UINT64_MAX - 5, NULL};
        break;
    case LOOM_MSG_MAP_OPEN:
        m->u.map_open = (loom_wire_map_open){
            .map = 99,
            .pipeline = BIG64,
            .plugin = "squares",
            .version = "1.2.3+x",
            .task = "square",
            .args = {s_args, sizeof s_args},
            .ordered = true,
            .reduce = true,
            .chunk = 64,
            .retries = -1,
            .timeout_ms = 30000,
            .nshares = 2,
            .shares = s_files,
            .retry_failed = 3,
            .halt_after_failures = 0x80000001u,
            .failures_seen = 7,
            .init_timeout_ms = 0xfffffffeu,
        };
        break;
    case LOOM_MSG_TASK_BATCH:
        m->u.task_batch = (loom_wire_task_batch){BIG64, true, 3, s_items};
        break;
    case LOOM_MSG_MAP_END:
        m->u.map_end = (loom_wire_map_end){77, UINT64_MAX};
        break;
    case LOOM_MSG_CREDIT:
        m->u.credit = UINT32_MAX;
        break;
    case LOOM_MSG_RESULT_BATCH:
        m->u.result_batch = (loom_wire_result_batch){
            .map = 12,
            .elapsed_us = 987654321,
            .nresults = 3,
            .results = s_results,
            .has_partial = true,
            .partial = {s_args, sizeof s_args},
        };
        break;
    case LOOM_MSG_CANCEL:
        m->u.cancel_map = BIG64;
        break;
    case LOOM_MSG_HEARTBEAT:
    case LOOM_MSG_STATS_REQUEST:
        break;
    case LOOM_MSG_ERROR:
        m->u.error = (loom_wire_error){LOOM_EINVAL, 5, 6, "plugin name 'x/y' is invalid"};
        break;
    case LOOM_MSG_STATS: {
        loom_wire_stats *s = &m->u.stats;
        uint64_t *u64[] = {
            &s->epoch,          &s->uptime_ms,    &s->items_queued,     &s->items_in_flight,
            &s->items_done,     &s->items_failed, &s->items_retried,    &s->results_dropped,
            &s->msgs_in,        &s->msgs_out,     &s->msgs_rejected,    &s->blob_bytes_in,
            &s->blob_bytes_out, &s->blobs_stored, &s->blob_store_bytes, &s->blob_bytes_adopted,
            &s->items_cancelling, &s->items_cancelled};
        uint32_t *u32[] = {&s->clients, &s->workers, &s->supervisors, &s->maps, &s->pipelines};
        for (size_t i = 0; i < sizeof u64 / sizeof u64[0]; i++)
            *u64[i] = BIG64 + i * UINT64_C(0x100000001);
        for (size_t i = 0; i < sizeof u32 / sizeof u32[0]; i++)
            *u32[i] = 0x80000000u + (uint32_t)i;
        break;
    }
    case LOOM_MSG_WORKER_EXIT:
        m->u.worker_exit = (loom_wire_worker_exit){123456, 9, -2, BIG64, 100u << 20, true, BIG64 + 1,
                                                   "plugin 'x' init crashed worker process 1"};
        break;
    case LOOM_MSG_BLOB_HAVE:
        m->u.blob_have =
            (loom_wire_blob_have){{s_hash_a, LOOM_HASH_SIZE}, BIG64, true, "put-4242-7.tmp"};
        break;
    case LOOM_MSG_BLOB_PUT:
        m->u.blob_put = (loom_wire_blob_put){
            {s_hash_b, LOOM_HASH_SIZE}, 65536, 1u << 30, {s_bytes, sizeof s_bytes}};
        break;
    case LOOM_MSG_BLOB_GET:
        m->u.blob_get = (loom_wire_blob_get){{s_hash_a, LOOM_HASH_SIZE}, 7, 1u << 20};
        break;
    case LOOM_MSG_BLOB_CHUNK:
        m->u.blob_chunk = (loom_wire_blob_chunk){
            {s_hash_b, LOOM_HASH_SIZE}, 3, 4, {s_bytes, sizeof s_bytes}, LOOM_ENOENT};
        break;
    default:
        fail_msg("no sample for type %d", type);
    }
}

//  --------------------------------------------------------------------------
//  Field by field comparison

static void
s_assert_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        assert_null(a);
        assert_null(b);
        return;
    }
    assert_string_equal(a, b);
}

static void
s_assert_span(loom_span a, loom_span b)
{
    assert_int_equal(a.len, b.len);
    assert_int_equal(a.data == NULL, b.data == NULL);
    if (a.len)
        assert_memory_equal(a.data, b.data, a.len);
}

static void
s_assert_files(const loom_wire_file *a, size_t na, const loom_wire_file *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        s_assert_str(a[i].name, b[i].name);
        s_assert_span(a[i].hash, b[i].hash);
        assert_true(a[i].size == b[i].size);
    }
}

//  Every field of a equals the one in b (a: expected, b: decoded).
static void
s_assert_msg_equal(const loom_msg *a, const loom_msg *b)
{
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case LOOM_MSG_HELLO:
        assert_int_equal(a->u.hello.role, b->u.hello.role);
        s_assert_str(a->u.hello.host, b->u.hello.host);
        assert_int_equal(a->u.hello.pid, b->u.hello.pid);
        assert_int_equal(a->u.hello.credit, b->u.hello.credit);
        assert_int_equal(a->u.hello.procs, b->u.hello.procs);
        s_assert_str(a->u.hello.software, b->u.hello.software);
        break;
    case LOOM_MSG_WELCOME:
        assert_true(a->u.welcome.epoch == b->u.welcome.epoch);
        assert_true(a->u.welcome.session == b->u.welcome.session);
        assert_int_equal(a->u.welcome.worker_id, b->u.welcome.worker_id);
        assert_int_equal(a->u.welcome.heartbeat_ms, b->u.welcome.heartbeat_ms);
        assert_int_equal(a->u.welcome.liveness, b->u.welcome.liveness);
        assert_int_equal(a->u.welcome.max_batch, b->u.welcome.max_batch);
        assert_int_equal(a->u.welcome.max_frame, b->u.welcome.max_frame);
        s_assert_str(a->u.welcome.blob_endpoint, b->u.welcome.blob_endpoint);
        s_assert_str(a->u.welcome.blob_store, b->u.welcome.blob_store);
        break;
    case LOOM_MSG_PIPELINE_OPEN:
        assert_true(a->u.pipeline_open.pipeline == b->u.pipeline_open.pipeline);
        s_assert_str(a->u.pipeline_open.name, b->u.pipeline_open.name);
        break;
    case LOOM_MSG_PIPELINE_CLOSE:
        assert_true(a->u.pipeline_close.pipeline == b->u.pipeline_close.pipeline);
        break;
    case LOOM_MSG_MAP_OPEN: {
        const loom_wire_map_open *x = &a->u.map_open, *y = &b->u.map_open;
        assert_true(x->map == y->map);
        assert_true(x->pipeline == y->pipeline);
        s_assert_str(x->plugin, y->plugin);
        s_assert_str(x->version ? x->version : "", y->version);
        s_assert_str(x->task, y->task);
        s_assert_span(x->args, y->args);
        assert_int_equal(x->ordered, y->ordered);
        assert_int_equal(x->reduce, y->reduce);
        assert_int_equal(x->chunk, y->chunk);
        assert_int_equal(x->retries, y->retries);
        assert_int_equal(x->timeout_ms, y->timeout_ms);
        assert_int_equal(x->retry_failed, y->retry_failed);
        assert_int_equal(x->halt_after_failures, y->halt_after_failures);
        assert_int_equal(x->failures_seen, y->failures_seen);
        assert_int_equal(x->init_timeout_ms, y->init_timeout_ms);
        assert_int_equal(x->nshares, y->nshares);
        for (size_t i = 0; i < x->nshares; i++) {
            s_assert_str(x->shares[i].name, y->shares[i].name);
            s_assert_span(x->shares[i].hash, y->shares[i].hash);
            assert_true(x->shares[i].size == y->shares[i].size);
        }
        break;
    }
    case LOOM_MSG_TASK_BATCH: {
        const loom_wire_task_batch *x = &a->u.task_batch, *y = &b->u.task_batch;
        assert_true(x->map == y->map);
        assert_int_equal(x->combine, y->combine);
        assert_int_equal(x->nitems, y->nitems);
        for (size_t i = 0; i < x->nitems; i++) {
            assert_true(x->items[i].index == y->items[i].index);
            assert_int_equal(x->items[i].attempt, y->items[i].attempt);
            s_assert_span(x->items[i].data, y->items[i].data);
            s_assert_files(x->items[i].files, x->items[i].nfiles, y->items[i].files,
                           y->items[i].nfiles);
        }
        break;
    }
    case LOOM_MSG_MAP_END:
        assert_true(a->u.map_end.map == b->u.map_end.map);
        assert_true(a->u.map_end.count == b->u.map_end.count);
        break;
    case LOOM_MSG_CREDIT:
        assert_int_equal(a->u.credit, b->u.credit);
        break;
    case LOOM_MSG_RESULT_BATCH: {
        const loom_wire_result_batch *x = &a->u.result_batch, *y = &b->u.result_batch;
        assert_true(x->map == y->map);
        assert_true(x->elapsed_us == y->elapsed_us);
        assert_int_equal(x->has_partial, y->has_partial);
        s_assert_span(x->partial, y->partial);
        assert_int_equal(x->nresults, y->nresults);
        for (size_t i = 0; i < x->nresults; i++) {
            assert_true(x->results[i].index == y->results[i].index);
            assert_int_equal(x->results[i].attempt, y->results[i].attempt);
            assert_int_equal(x->results[i].status, y->results[i].status);
            s_assert_span(x->results[i].data, y->results[i].data);
            s_assert_str(x->results[i].error, y->results[i].error);
            s_assert_files(x->results[i].files, x->results[i].nfiles, y->results[i].files,
                           y->results[i].nfiles);
        }
        break;
    }
    case LOOM_MSG_CANCEL:
        assert_true(a->u.cancel_map == b->u.cancel_map);
        break;
    case LOOM_MSG_HEARTBEAT:
    case LOOM_MSG_STATS_REQUEST:
        break;
    case LOOM_MSG_ERROR:
        assert_int_equal(a->u.error.code, b->u.error.code);
        assert_true(a->u.error.map == b->u.error.map);
        assert_true(a->u.error.pipeline == b->u.error.pipeline);
        s_assert_str(a->u.error.message, b->u.error.message);
        break;
    case LOOM_MSG_STATS:
        assert_memory_equal(&a->u.stats, &b->u.stats, sizeof a->u.stats);
        break;
    case LOOM_MSG_WORKER_EXIT:
        assert_int_equal(a->u.worker_exit.pid, b->u.worker_exit.pid);
        assert_int_equal(a->u.worker_exit.signal, b->u.worker_exit.signal);
        assert_int_equal(a->u.worker_exit.status, b->u.worker_exit.status);
        assert_true(a->u.worker_exit.max_rss == b->u.worker_exit.max_rss);
        assert_true(a->u.worker_exit.rss_limit == b->u.worker_exit.rss_limit);
        assert_int_equal(a->u.worker_exit.oom_kill, b->u.worker_exit.oom_kill);
        assert_true(a->u.worker_exit.init_map == b->u.worker_exit.init_map);
        s_assert_str(a->u.worker_exit.init_error, b->u.worker_exit.init_error);
        break;
    case LOOM_MSG_BLOB_HAVE:
        s_assert_span(a->u.blob_have.hash, b->u.blob_have.hash);
        assert_true(a->u.blob_have.size == b->u.blob_have.size);
        assert_int_equal(a->u.blob_have.have, b->u.blob_have.have);
        s_assert_str(a->u.blob_have.adopt, b->u.blob_have.adopt);
        break;
    case LOOM_MSG_BLOB_PUT:
        s_assert_span(a->u.blob_put.hash, b->u.blob_put.hash);
        assert_true(a->u.blob_put.offset == b->u.blob_put.offset);
        assert_true(a->u.blob_put.total == b->u.blob_put.total);
        s_assert_span(a->u.blob_put.data, b->u.blob_put.data);
        break;
    case LOOM_MSG_BLOB_GET:
        s_assert_span(a->u.blob_get.hash, b->u.blob_get.hash);
        assert_true(a->u.blob_get.offset == b->u.blob_get.offset);
        assert_true(a->u.blob_get.credit == b->u.blob_get.credit);
        break;
    case LOOM_MSG_BLOB_CHUNK:
        s_assert_span(a->u.blob_chunk.hash, b->u.blob_chunk.hash);
        assert_true(a->u.blob_chunk.offset == b->u.blob_chunk.offset);
        assert_true(a->u.blob_chunk.total == b->u.blob_chunk.total);
        s_assert_span(a->u.blob_chunk.data, b->u.blob_chunk.data);
        assert_int_equal(a->u.blob_chunk.status, b->u.blob_chunk.status);
        break;
    default:
        fail_msg("unexpected type %d", a->type);
    }
}

//  Encode the sample of `type` into a new buffer (free it).
static uint8_t *
s_encode_sample(int type, loom_msg *m, size_t *len)
{
    s_sample(type, m);
    void *buf = NULL;
    assert_int_equal(loom_wire_encode(m, &buf, len), 0);
    assert_non_null(buf);
    return buf;
}

//  --------------------------------------------------------------------------
//  Round trips

static void
s_roundtrip(int type)
{
    loom_msg in;
    size_t len;
    uint8_t *buf = s_encode_sample(type, &in, &len);
    assert_memory_equal(buf + 4, "LOOM", 4);
    loom_msg *out = NULL;
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    assert_non_null(out);
    assert_int_equal(out->proto, LOOM_PROTO_VERSION);
    s_assert_msg_equal(&in, out);
    //  Decoded pointers borrow from the message, not from the input bytes.
    memset(buf, 0xee, len);
    free(buf);
    s_assert_msg_equal(&in, out);

    //  A decoded message encodes to the same message again.
    void *again = NULL;
    size_t again_len;
    assert_int_equal(loom_wire_encode(out, &again, &again_len), 0);
    loom_msg *out2 = NULL;
    assert_int_equal(loom_wire_decode(again, again_len, &out2), 0);
    s_assert_msg_equal(&in, out2);
    free(again);
    loom_msg_destroy(&out2);
    loom_msg_destroy(&out);
    assert_null(out);
    loom_msg_destroy(&out); //  accepts NULL
}

#define ROUNDTRIP(name, type)                                                                      \
    static void test_roundtrip_##name(void **state)                                                \
    {                                                                                              \
        (void)state;                                                                               \
        s_roundtrip(type);                                                                         \
    }
ROUNDTRIP(hello, LOOM_MSG_HELLO)
ROUNDTRIP(welcome, LOOM_MSG_WELCOME)
ROUNDTRIP(pipeline_open, LOOM_MSG_PIPELINE_OPEN)
ROUNDTRIP(pipeline_close, LOOM_MSG_PIPELINE_CLOSE)
ROUNDTRIP(map_open, LOOM_MSG_MAP_OPEN)
ROUNDTRIP(task_batch, LOOM_MSG_TASK_BATCH)
ROUNDTRIP(map_end, LOOM_MSG_MAP_END)
ROUNDTRIP(credit, LOOM_MSG_CREDIT)
ROUNDTRIP(result_batch, LOOM_MSG_RESULT_BATCH)
ROUNDTRIP(cancel, LOOM_MSG_CANCEL)
ROUNDTRIP(heartbeat, LOOM_MSG_HEARTBEAT)
ROUNDTRIP(error, LOOM_MSG_ERROR)
ROUNDTRIP(stats_request, LOOM_MSG_STATS_REQUEST)
ROUNDTRIP(stats, LOOM_MSG_STATS)
ROUNDTRIP(worker_exit, LOOM_MSG_WORKER_EXIT)
ROUNDTRIP(blob_have, LOOM_MSG_BLOB_HAVE)
ROUNDTRIP(blob_put, LOOM_MSG_BLOB_PUT)
ROUNDTRIP(blob_get, LOOM_MSG_BLOB_GET)
ROUNDTRIP(blob_chunk, LOOM_MSG_BLOB_CHUNK)

static void
test_absent_fields_decode_as_null(void **state)
{
    (void)state;
    loom_msg in = {.type = LOOM_MSG_MAP_OPEN};
    in.u.map_open.plugin = "p";
    in.u.map_open.task = "t";
    void *buf;
    size_t len;
    assert_int_equal(loom_wire_encode(&in, &buf, &len), 0);
    loom_msg *out;
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    assert_string_equal(out->u.map_open.version, ""); //  not pinned
    assert_null(out->u.map_open.args.data);
    assert_int_equal(out->u.map_open.args.len, 0);
    assert_false(out->u.map_open.ordered);
    free(buf);
    loom_msg_destroy(&out);

    loom_msg h = {.type = LOOM_MSG_HELLO};
    assert_int_equal(loom_wire_encode(&h, &buf, &len), 0);
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    assert_int_equal(out->u.hello.role, LOOM_ROLE_CLIENT);
    assert_null(out->u.hello.host);
    assert_null(out->u.hello.software);
    free(buf);
    loom_msg_destroy(&out);

    loom_msg t = {.type = LOOM_MSG_TASK_BATCH};
    t.u.task_batch.map = 1;
    assert_int_equal(loom_wire_encode(&t, &buf, &len), 0);
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    assert_int_equal(out->u.task_batch.nitems, 0);
    assert_null(out->u.task_batch.items);
    free(buf);
    loom_msg_destroy(&out);
}

static void
test_encode_refuses_what_decode_would(void **state)
{
    (void)state;
    void *buf = (void *)1;
    size_t len = 1;
    loom_msg m = {.type = LOOM_MSG_NONE};
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    assert_null(buf);
    assert_int_equal(len, 0);
    m.type = LOOM_MSG_COUNT_;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    m.type = (loom_msg_type)-3;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);

    s_sample(LOOM_MSG_MAP_OPEN, &m);
    m.u.map_open.plugin = NULL;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    s_sample(LOOM_MSG_MAP_OPEN, &m);
    m.u.map_open.task = NULL;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    s_sample(LOOM_MSG_MAP_OPEN, &m);
    m.u.map_open.args.data = NULL; //  with a length
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);

    s_sample(LOOM_MSG_HELLO, &m);
    m.u.hello.role = (loom_role)3;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);

    s_sample(LOOM_MSG_BLOB_GET, &m);
    m.u.blob_get.hash.len = LOOM_HASH_SIZE - 1;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    m.u.blob_get.hash.data = NULL;
    m.u.blob_get.hash.len = 0;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);

    s_sample(LOOM_MSG_TASK_BATCH, &m);
    loom_wire_file bad_file = {"f", {s_hash_a, 16}, 1};
    loom_wire_item item = {0, 0, {NULL, 0}, 1, &bad_file};
    m.u.task_batch.items = &item;
    m.u.task_batch.nitems = 1;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    bad_file.hash.len = LOOM_HASH_SIZE;
    bad_file.name = NULL;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    bad_file.name = "f";
    assert_int_equal(loom_wire_encode(&m, &buf, &len), 0); //  now good
    free(buf);
    m.u.task_batch.items = NULL;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);

    //  One item over the limit: refused before anything is read from items.
    loom_wire_item *many = calloc(LOOM_WIRE_MAX_ITEMS + 1, sizeof *many);
    assert_non_null(many);
    m.u.task_batch.items = many;
    m.u.task_batch.nitems = LOOM_WIRE_MAX_ITEMS + 1;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
    m.u.task_batch.nitems = LOOM_WIRE_MAX_ITEMS;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), 0);
    loom_msg *out;
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    assert_int_equal(out->u.task_batch.nitems, LOOM_WIRE_MAX_ITEMS);
    loom_msg_destroy(&out);
    free(buf);
    free(many);

    s_sample(LOOM_MSG_RESULT_BATCH, &m);
    m.u.result_batch.partial.data = NULL;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), LOOM_EINVAL);
}

static void
test_type_names(void **state)
{
    (void)state;
    assert_string_equal(loom_msg_type_name(LOOM_MSG_TASK_BATCH), "TaskBatch");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_HELLO), "Hello");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_BLOB_CHUNK), "BlobChunk");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_COUNT_), "?");
    assert_string_equal(loom_msg_type_name(-1), "?");
    assert_string_equal(loom_msg_type_name(1000), "?");
    for (int t = 1; t < LOOM_MSG_COUNT_; t++)
        assert_string_not_equal(loom_msg_type_name(t), "?");
}

//  --------------------------------------------------------------------------
//  Malformed input

//  Decode must refuse with LOOM_EPROTO and hand out nothing.
static void
s_assert_refused(const void *data, size_t len)
{
    loom_msg *out = (loom_msg *)1;
    assert_int_equal(loom_wire_decode(data, len, &out), LOOM_EPROTO);
    assert_null(out);
}

static bool
s_all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void
test_truncated_prefixes_are_refused(void **state)
{
    (void)state;
    size_t refused = 0;
    for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
        loom_msg in;
        size_t len;
        uint8_t *buf = s_encode_sample(type, &in, &len);
        for (size_t n = 0; n < len; n++) {
            //  Each prefix in a buffer of its own size, so ASan sees any
            //  read past it.
            uint8_t *copy = malloc(n ? n : 1);
            memcpy(copy, buf, n);
            loom_msg *out = NULL;
            int rc = loom_wire_decode(copy, n, &out);
            if (rc == 0) {
                //  Only the builder's trailing alignment padding (zeros,
                //  less than 8 bytes) may be cut without losing data.
                assert_true(len - n < 8);
                assert_true(s_all_zero(buf + n, len - n));
                s_assert_msg_equal(&in, out);
                loom_msg_destroy(&out);
            } else {
                assert_int_equal(rc, LOOM_EPROTO);
                assert_null(out);
                refused++;
            }
            free(copy);
        }
        free(buf);
    }
    print_message("refused %zu truncated buffers\n", refused);
    assert_true(refused > 1000);
}

static void
test_empty_and_null_are_refused(void **state)
{
    (void)state;
    s_assert_refused(NULL, 0);
    s_assert_refused(NULL, 64);
    s_assert_refused("", 0);
    uint8_t zeros[64] = {0};
    s_assert_refused(zeros, sizeof zeros);
    uint8_t ident[8] = {8, 0, 0, 0, 'L', 'O', 'O', 'M'};
    s_assert_refused(ident, sizeof ident);
}

//  xorshift64*: reproducible garbage.
static uint64_t
s_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

static void
test_random_garbage_is_refused(void **state)
{
    (void)state;
    uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);
    for (int i = 0; i < 20000; i++) {
        size_t len = s_rand(&seed) % 600;
        uint8_t *buf = malloc(len ? len : 1);
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)s_rand(&seed);
        //  Half of them get the identifier and a small root offset, to go
        //  past the first check.
        if (len >= 8 && (i & 1)) {
            uint32_t root = (uint32_t)(s_rand(&seed) % len) & ~3u;
            memcpy(buf, &root, 4);
            memcpy(buf + 4, "LOOM", 4);
        }
        s_assert_refused(buf, len);
        free(buf);
    }
}

//  Valid messages with random bytes changed: decoded (and then re-encoded
//  and decoded again) or refused, never anything else.
static void
test_mutated_messages_decode_or_are_refused(void **state)
{
    (void)state;
    uint64_t seed = 42;
    size_t decoded = 0, refused = 0;
    for (int round = 0; round < 400; round++) {
        for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
            loom_msg in;
            size_t len;
            uint8_t *buf = s_encode_sample(type, &in, &len);
            int flips = 1 + (int)(s_rand(&seed) % 4);
            for (int f = 0; f < flips; f++)
                buf[s_rand(&seed) % len] = (uint8_t)s_rand(&seed);
            loom_msg *out = NULL;
            int rc = loom_wire_decode(buf, len, &out);
            if (rc == 0) {
                void *again;
                size_t again_len;
                assert_int_equal(loom_wire_encode(out, &again, &again_len), 0);
                loom_msg *out2 = NULL;
                assert_int_equal(loom_wire_decode(again, again_len, &out2), 0);
                s_assert_msg_equal(out, out2);
                free(again);
                loom_msg_destroy(&out2);
                loom_msg_destroy(&out);
                decoded++;
            } else {
                assert_int_equal(rc, LOOM_EPROTO);
                refused++;
            }
            free(buf);
        }
    }
    print_message("mutated: %zu decoded, %zu refused\n", decoded, refused);
    assert_true(refused > 0);
}

static void
test_wrong_identifier_is_refused(void **state)
{
    (void)state;
    loom_msg in;
    size_t len;
    uint8_t *buf = s_encode_sample(LOOM_MSG_HELLO, &in, &len);
    memcpy(buf + 4, "LOOm", 4);
    s_assert_refused(buf, len);
    memcpy(buf + 4, "MOOL", 4);
    s_assert_refused(buf, len);
    memcpy(buf + 4, "LOOM", 4);
    loom_msg *out;
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    loom_msg_destroy(&out);
    free(buf);
}

//  A little FlatBuffers reader, to aim at one field of an encoded message.
static uint32_t
s_u32(const uint8_t *b, size_t pos)
{
    uint32_t v;
    memcpy(&v, b + pos, 4);
    return v;
}

//  Position of the vtable entry of field `index` of the table at `table`.
static size_t
s_vt_entry(const uint8_t *b, size_t table, int index)
{
    int32_t soff;
    memcpy(&soff, b + table, 4);
    size_t vt = (size_t)((int64_t)table - soff);
    uint16_t vsize;
    memcpy(&vsize, b + vt, 2);
    assert_true(4 + 2 * (size_t)index < vsize);
    return vt + 4 + 2 * (size_t)index;
}

//  Position of field `index` of the table at `table` (the field must be set).
static size_t
s_field(const uint8_t *b, size_t table, int index)
{
    uint16_t off;
    memcpy(&off, b + s_vt_entry(b, table, index), 2);
    assert_true(off != 0);
    return table + off;
}

//  Position of what the offset field `index` of `table` points to.
static size_t
s_deref(const uint8_t *b, size_t table, int index)
{
    size_t f = s_field(b, table, index);
    return f + s_u32(b, f);
}

enum { F_MESSAGE_PROTO = 0, F_MESSAGE_BODY_TYPE = 1, F_MESSAGE_BODY = 2 };

static size_t
s_body(const uint8_t *b)
{
    return s_deref(b, s_u32(b, 0), F_MESSAGE_BODY);
}

static void
test_bad_union_type_is_refused(void **state)
{
    (void)state;
    loom_msg in;
    size_t len;
    uint8_t *buf = s_encode_sample(LOOM_MSG_HELLO, &in, &len);
    size_t type_pos = s_field(buf, s_u32(buf, 0), F_MESSAGE_BODY_TYPE);
    assert_int_equal(buf[type_pos], LOOM_MSG_HELLO);
    const uint8_t bad[] = {0, LOOM_MSG_COUNT_, 21, 100, 255};
    for (size_t i = 0; i < sizeof bad; i++) {
        buf[type_pos] = bad[i];
        s_assert_refused(buf, len);
    }
    //  Another known type over a Hello table: refused or read as that
    //  type, but never read out of bounds.
    for (int t = 1; t < LOOM_MSG_COUNT_; t++) {
        buf[type_pos] = (uint8_t)t;
        loom_msg *out = NULL;
        int rc = loom_wire_decode(buf, len, &out);
        assert_true(rc == 0 || rc == LOOM_EPROTO);
        loom_msg_destroy(&out);
    }
    //  A body type with no body.
    buf[type_pos] = LOOM_MSG_HELLO;
    size_t entry = s_vt_entry(buf, s_u32(buf, 0), F_MESSAGE_BODY);
    memset(buf + entry, 0, 2);
    s_assert_refused(buf, len);
    free(buf);
}

//  Find needle in b; returns its position (it must be there).
static size_t
s_find(const uint8_t *b, size_t len, const void *needle, size_t n)
{
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(b + i, needle, n) == 0)
            return i;
    fail_msg("pattern not found");
    return 0;
}

//  Overwrite the length at `at` with each claim that goes past the end of
//  the buffer (elements of elem_size bytes, plus a NUL for strings).
static void
s_assert_claims_refused(const uint8_t *orig, size_t len, size_t at, size_t elem_size, bool string)
{
    size_t room = (len - at - 4) / elem_size;
    const uint32_t claims[] = {(uint32_t)room + (string ? 0 : 1),
                               (uint32_t)room + 1,
                               1u << 20,
                               0x7fffffff,
                               0x80000000u,
                               0xfffffffeu,
                               0xffffffffu};
    uint8_t *buf = malloc(len);
    for (size_t c = 0; c < sizeof claims / sizeof claims[0]; c++) {
        memcpy(buf, orig, len);
        memcpy(buf + at, &claims[c], 4);
        s_assert_refused(buf, len);
    }
    free(buf);
}

static void
test_oversized_claims_are_refused(void **state)
{
    (void)state;
    //  The length of a byte vector (item data).
    loom_msg in;
    size_t len;
    uint8_t *buf = s_encode_sample(LOOM_MSG_TASK_BATCH, &in, &len);
    size_t at = s_find(buf, len, s_bytes, sizeof s_bytes) - 4;
    assert_int_equal(s_u32(buf, at), sizeof s_bytes);
    s_assert_claims_refused(buf, len, at, 1, false);

    //  The number of items of a batch.
    at = s_deref(buf, s_body(buf), 1); //  TaskBatch.items
    assert_int_equal(s_u32(buf, at), 3);
    s_assert_claims_refused(buf, len, at, 4, false);
    free(buf);

    //  The length of a string.
    buf = s_encode_sample(LOOM_MSG_MAP_OPEN, &in, &len);
    at = s_find(buf, len, "squares", 8) - 4;
    assert_int_equal(s_u32(buf, at), 7);
    s_assert_claims_refused(buf, len, at, 1, true);
    free(buf);

    //  The number of results of a batch.
    buf = s_encode_sample(LOOM_MSG_RESULT_BATCH, &in, &len);
    at = s_deref(buf, s_body(buf), 1); //  ResultBatch.results
    assert_int_equal(s_u32(buf, at), 3);
    s_assert_claims_refused(buf, len, at, 4, false);
    free(buf);
}

static void
test_missing_required_fields_are_refused(void **state)
{
    (void)state;
    //  field index of each required field in its table
    struct {
        int type;
        int field;
    } cases[] = {
        {LOOM_MSG_MAP_OPEN, 2},   //  plugin
        {LOOM_MSG_MAP_OPEN, 4},   //  task
        {LOOM_MSG_BLOB_HAVE, 0},  //  hash
        {LOOM_MSG_BLOB_PUT, 0},   //  hash
        {LOOM_MSG_BLOB_GET, 0},   //  hash
        {LOOM_MSG_BLOB_CHUNK, 0}, //  hash
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loom_msg in;
        size_t len;
        uint8_t *buf = s_encode_sample(cases[i].type, &in, &len);
        memset(buf + s_vt_entry(buf, s_body(buf), cases[i].field), 0, 2);
        s_assert_refused(buf, len);
        free(buf);
    }
    //  A hash one byte short (length claim 31: the data is still inside).
    const int blob_types[] = {LOOM_MSG_BLOB_HAVE, LOOM_MSG_BLOB_PUT, LOOM_MSG_BLOB_GET,
                              LOOM_MSG_BLOB_CHUNK};
    for (size_t i = 0; i < 4; i++) {
        loom_msg in;
        size_t len;
        uint8_t *buf = s_encode_sample(blob_types[i], &in, &len);
        size_t at = s_deref(buf, s_body(buf), 0);
        assert_int_equal(s_u32(buf, at), LOOM_HASH_SIZE);
        uint32_t short_len = LOOM_HASH_SIZE - 1;
        memcpy(buf + at, &short_len, 4);
        s_assert_refused(buf, len);
        free(buf);
    }
    //  A file of an item without its name, and one with a short hash.
    for (int which = 0; which < 2; which++) {
        loom_msg in;
        size_t len;
        uint8_t *buf = s_encode_sample(LOOM_MSG_TASK_BATCH, &in, &len);
        size_t items = s_deref(buf, s_body(buf), 1);
        size_t item0 = items + 4 + s_u32(buf, items + 4);
        size_t files = s_deref(buf, item0, 3);
        size_t file0 = files + 4 + s_u32(buf, files + 4);
        if (which == 0) {
            memset(buf + s_vt_entry(buf, file0, 0), 0, 2);
        } else {
            uint32_t short_len = 8;
            memcpy(buf + s_deref(buf, file0, 1), &short_len, 4);
        }
        s_assert_refused(buf, len);
        free(buf);
    }
}

static void
test_misaligned_buffer_decodes(void **state)
{
    (void)state;
    for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
        loom_msg in;
        size_t len;
        uint8_t *buf = s_encode_sample(type, &in, &len);
        for (size_t shift = 1; shift < 8; shift++) {
            uint8_t *odd = malloc(len + shift);
            memcpy(odd + shift, buf, len);
            loom_msg *out = NULL;
            assert_int_equal(loom_wire_decode(odd + shift, len, &out), 0);
            memset(odd, 0, len + shift); //  the message keeps its own copy
            free(odd);
            s_assert_msg_equal(&in, out);
            loom_msg_destroy(&out);
        }
        free(buf);
    }
}

//  --------------------------------------------------------------------------
//  Over ZeroMQ

typedef struct {
    void *ctx;
    void *router;
    void *dealer;
} s_pair;

static void
s_pair_open(s_pair *p, const char *tag)
{
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "inproc://wire-%d-%s", (int)getpid(), tag);
    p->ctx = zmq_ctx_new();
    assert_non_null(p->ctx);
    p->router = zmq_socket(p->ctx, ZMQ_ROUTER);
    p->dealer = zmq_socket(p->ctx, ZMQ_DEALER);
    int one = 1, zero = 0, timeout = 5000;
    assert_int_equal(zmq_setsockopt(p->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one), 0);
    void *socks[] = {p->router, p->dealer};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(zmq_setsockopt(socks[i], ZMQ_LINGER, &zero, sizeof zero), 0);
        assert_int_equal(zmq_setsockopt(socks[i], ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    }
    assert_int_equal(zmq_bind(p->router, endpoint), 0);
    assert_int_equal(zmq_connect(p->dealer, endpoint), 0);
}

static void
s_pair_close(s_pair *p)
{
    zmq_close(p->dealer);
    zmq_close(p->router);
    zmq_ctx_term(p->ctx);
}

//  Receive on the router and check it is the sample of `type`.
static void
s_router_expect(s_pair *p, int type, uint8_t *rid, size_t *rid_len)
{
    loom_msg expected;
    s_sample(type, &expected);
    loom_msg *got = NULL;
    assert_int_equal(loom_wire_recv(p->router, rid, 256, rid_len, &got, 0), 0);
    assert_non_null(got);
    assert_true(*rid_len > 0);
    s_assert_msg_equal(&expected, got);
    loom_msg_destroy(&got);
}

static void
test_zmq_roundtrip_with_routing_id(void **state)
{
    (void)state;
    s_pair p;
    s_pair_open(&p, "rt");
    loom_msg m;
    uint8_t rid[256];
    size_t rid_len = 0;
    loom_msg *got = NULL;

    //  Nothing there yet.
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, ZMQ_DONTWAIT),
                     LOOM_EAGAIN);
    assert_null(got);

    for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
        s_sample(type, &m);
        assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
        s_router_expect(&p, type, rid, &rid_len);

        //  And back, addressed by the routing id we got.
        assert_int_equal(loom_wire_send(p.router, rid, rid_len, &m, ZMQ_DONTWAIT), 0);
        assert_int_equal(loom_wire_recv(p.dealer, NULL, 0, NULL, &got, 0), 0);
        s_assert_msg_equal(&m, got);
        loom_msg_destroy(&got);
    }

    //  A routing id nobody has: ROUTER_MANDATORY says so.
    s_sample(LOOM_MSG_HEARTBEAT, &m);
    assert_int_equal(loom_wire_send(p.router, "nobody", 6, &m, ZMQ_DONTWAIT), LOOM_ECONNECT);
    //  A message we would not decode is not sent.
    m.type = LOOM_MSG_NONE;
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), LOOM_EINVAL);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, ZMQ_DONTWAIT),
                     LOOM_EAGAIN);
    s_pair_close(&p);
}

static void
test_zmq_bad_framing_is_refused_and_drained(void **state)
{
    (void)state;
    s_pair p;
    s_pair_open(&p, "frames");
    loom_msg m;
    void *good;
    size_t good_len;
    uint8_t rid[256];
    size_t rid_len;
    loom_msg *got = NULL;
    s_sample(LOOM_MSG_TASK_BATCH, &m);
    assert_int_equal(loom_wire_encode(&m, &good, &good_len), 0);

    //  Two body frames, each a valid message on its own.
    assert_int_equal(zmq_send(p.dealer, good, good_len, ZMQ_SNDMORE), (int)good_len);
    assert_int_equal(zmq_send(p.dealer, good, good_len, 0), (int)good_len);
    s_sample(LOOM_MSG_HELLO, &m);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), LOOM_EPROTO);
    assert_null(got);
    //  The refused message still says who sent it.
    uint8_t bad_rid[256];
    size_t bad_rid_len = rid_len;
    assert_true(bad_rid_len > 0);
    memcpy(bad_rid, rid, rid_len);
    s_router_expect(&p, LOOM_MSG_HELLO, rid, &rid_len);
    assert_int_equal(rid_len, bad_rid_len);
    assert_memory_equal(rid, bad_rid, rid_len);

    //  Five frames.
    for (int i = 0; i < 4; i++)
        assert_int_equal(zmq_send(p.dealer, "x", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(p.dealer, good, good_len, 0), (int)good_len);
    s_sample(LOOM_MSG_CREDIT, &m);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), LOOM_EPROTO);
    s_router_expect(&p, LOOM_MSG_CREDIT, rid, &rid_len);

    //  An empty body.
    assert_int_equal(zmq_send(p.dealer, "", 0, 0), 0);
    s_sample(LOOM_MSG_MAP_END, &m);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), LOOM_EPROTO);
    s_router_expect(&p, LOOM_MSG_MAP_END, rid, &rid_len);

    //  Garbage in one frame.
    assert_int_equal(zmq_send(p.dealer, "garbage, not a flatbuffer", 25, 0), 25);
    s_sample(LOOM_MSG_TASK_BATCH, &m);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), LOOM_EPROTO);
    s_router_expect(&p, LOOM_MSG_TASK_BATCH, rid, &rid_len);

    //  Towards a DEALER: two frames after the routing id are refused too.
    assert_int_equal(zmq_send(p.router, rid, rid_len, ZMQ_SNDMORE), (int)rid_len);
    assert_int_equal(zmq_send(p.router, good, good_len, ZMQ_SNDMORE), (int)good_len);
    assert_int_equal(zmq_send(p.router, good, good_len, 0), (int)good_len);
    s_sample(LOOM_MSG_WELCOME, &m);
    assert_int_equal(loom_wire_send(p.router, rid, rid_len, &m, 0), 0);
    assert_int_equal(loom_wire_recv(p.dealer, NULL, 0, NULL, &got, 0), LOOM_EPROTO);
    assert_int_equal(loom_wire_recv(p.dealer, NULL, 0, NULL, &got, 0), 0);
    s_assert_msg_equal(&m, got);
    loom_msg_destroy(&got);

    //  Nothing left over.
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, ZMQ_DONTWAIT),
                     LOOM_EAGAIN);
    assert_int_equal(loom_wire_recv(p.dealer, NULL, 0, NULL, &got, ZMQ_DONTWAIT), LOOM_EAGAIN);
    free(good);
    s_pair_close(&p);
}

//  --------------------------------------------------------------------------
//  Interop with flatc

static char s_tmpdir[64];

//  Setup and teardown of the flatc tests: a scratch folder, removed even
//  when a test fails.
static int
s_tmp_open(void **state)
{
    (void)state;
    snprintf(s_tmpdir, sizeof s_tmpdir, "/tmp/loom-wire-XXXXXX");
    return mkdtemp(s_tmpdir) ? 0 : -1;
}

static int
s_tmp_close(void **state)
{
    (void)state;
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void
s_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *
s_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return buf;
}

//  JSON text -> binary with flatc; returns the bytes (free them).
static uint8_t *
s_flatc_binary(const char *name, const char *json, size_t *len)
{
    char path[256], cmd[1024];
    snprintf(path, sizeof path, "%s/%s.json", s_tmpdir, name);
    s_write_file(path, json, strlen(json));
    snprintf(cmd, sizeof cmd, "'%s' -b -o '%s' '%s' '%s'", LOOM_FLATC, s_tmpdir, LOOM_FBS_PATH,
             path);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/%s.loom", s_tmpdir, name);
    return s_read_file(path, len);
}

//  Binary -> JSON with flatc, all whitespace removed (free it).
static char *
s_flatc_json(const char *name, const void *bin, size_t len)
{
    char path[256], cmd[1024];
    snprintf(path, sizeof path, "%s/%s.loom", s_tmpdir, name);
    s_write_file(path, bin, len);
    snprintf(cmd, sizeof cmd,
             "'%s' --json --raw-binary --strict-json --defaults-json -o '%s' '%s' -- '%s'",
             LOOM_FLATC, s_tmpdir, LOOM_FBS_PATH, path);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/%s.json", s_tmpdir, name);
    size_t n;
    char *text = (char *)s_read_file(path, &n);
    size_t j = 0;
    for (size_t i = 0; i < n; i++)
        if (text[i] != ' ' && text[i] != '\n' && text[i] != '\r' && text[i] != '\t')
            text[j++] = text[i];
    text[j] = 0;
    return text;
}

static void
s_assert_contains(const char *text, const char *what)
{
    if (!strstr(text, what))
        print_error("flatc json lacks %s in: %s\n", what, text);
    assert_non_null(strstr(text, what));
}

//  "[0,1,...]" for a hash-like run of bytes.
static void
s_json_bytes(char *out, size_t cap, const uint8_t *b, size_t n)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%u", i ? "," : "", b[i]);
    snprintf(out + at, cap - at, "]");
}

static void
test_flatc_json_decodes(void **state)
{
    (void)state;
    size_t len;
    loom_msg *out = NULL;

    uint8_t *bin = s_flatc_binary("hello",
                                  "{\"proto\": 1, \"body_type\": \"Hello\", \"body\": {\"role\": "
                                  "\"Worker\", \"host\": \"h-1\", \"pid\": 4242, \"credit\": 512, "
                                  "\"procs\": 3, \"software\": \"0.1.0\"}}",
                                  &len);
    assert_int_equal(loom_wire_decode(bin, len, &out), 0);
    assert_int_equal(out->type, LOOM_MSG_HELLO);
    assert_int_equal(out->proto, 1);
    assert_int_equal(out->u.hello.role, LOOM_ROLE_WORKER);
    assert_string_equal(out->u.hello.host, "h-1");
    assert_int_equal(out->u.hello.pid, 4242);
    assert_int_equal(out->u.hello.credit, 512);
    assert_int_equal(out->u.hello.procs, 3);
    assert_string_equal(out->u.hello.software, "0.1.0");
    loom_msg_destroy(&out);
    free(bin);

    char hash[256], json[2048];
    s_init_samples();
    s_json_bytes(hash, sizeof hash, s_hash_b, LOOM_HASH_SIZE);
    snprintf(
        json, sizeof json,
        "{\"proto\": 7, \"body_type\": \"TaskBatch\", \"body\": {\"map\": "
        "18446744073709551615, \"combine\": true, \"items\": ["
        "{\"index\": 5, \"attempt\": 2, \"data\": [1, 2, 3], \"files\": [{\"name\": \"a.txt\", "
        "\"hash\": %s, \"size\": 9}]}, {\"index\": 6, \"data\": []}, {}]}}",
        hash);
    bin = s_flatc_binary("batch", json, &len);
    assert_int_equal(loom_wire_decode(bin, len, &out), 0);
    assert_int_equal(out->type, LOOM_MSG_TASK_BATCH);
    assert_int_equal(out->proto, 7); //  returned as sent; the broker checks it
    const loom_wire_task_batch *t = &out->u.task_batch;
    assert_true(t->map == UINT64_MAX);
    assert_true(t->combine);
    assert_int_equal(t->nitems, 3);
    assert_int_equal(t->items[0].index, 5);
    assert_int_equal(t->items[0].attempt, 2);
    assert_int_equal(t->items[0].data.len, 3);
    assert_memory_equal(t->items[0].data.data, "\1\2\3", 3);
    assert_int_equal(t->items[0].nfiles, 1);
    assert_string_equal(t->items[0].files[0].name, "a.txt");
    assert_int_equal(t->items[0].files[0].hash.len, LOOM_HASH_SIZE);
    assert_memory_equal(t->items[0].files[0].hash.data, s_hash_b, LOOM_HASH_SIZE);
    assert_int_equal(t->items[0].files[0].size, 9);
    assert_int_equal(t->items[1].index, 6);
    assert_non_null(t->items[1].data.data);
    assert_int_equal(t->items[1].data.len, 0);
    assert_int_equal(t->items[1].nfiles, 0);
    assert_int_equal(t->items[2].index, 0);
    assert_null(t->items[2].data.data);
    loom_msg_destroy(&out);
    free(bin);

    //  Valid FlatBuffers that break our rules.
    const char *refused[] = {
        "{\"body_type\": \"MapOpen\", \"body\": {\"plugin\": \"p\"}}",
        "{\"body_type\": \"MapOpen\", \"body\": {\"task\": \"t\"}}",
        "{\"body_type\": \"BlobGet\", \"body\": {\"offset\": 1}}",
        "{\"body_type\": \"BlobHave\", \"body\": {\"hash\": [1, 2, 3]}}",
        "{\"body_type\": \"TaskBatch\", \"body\": {\"items\": [{\"files\": [{\"name\": \"x\"}]}]}}",
        "{\"body_type\": \"Hello\", \"body\": {\"role\": 9}}",
        "{\"proto\": 1}",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "bad%zu", i);
        bin = s_flatc_binary(name, refused[i], &len);
        s_assert_refused(bin, len);
        free(bin);
    }
}

//  A batch of n empty items, as flatc writes it.
static uint8_t *
s_flatc_batch_of(const char *name, size_t n, size_t *len)
{
    size_t cap = 128 + 3 * n;
    char *json = malloc(cap);
    size_t at = (size_t)snprintf(json, cap, "{\"body_type\":\"TaskBatch\",\"body\":{\"items\":[");
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(json + at, cap - at, "%s{}", i ? "," : "");
    snprintf(json + at, cap - at, "]}}");
    uint8_t *bin = s_flatc_binary(name, json, len);
    free(json);
    return bin;
}

static void
test_flatc_batch_over_the_limit_is_refused(void **state)
{
    (void)state;
    size_t len;
    uint8_t *bin = s_flatc_batch_of("max", LOOM_WIRE_MAX_ITEMS, &len);
    loom_msg *out = NULL;
    assert_int_equal(loom_wire_decode(bin, len, &out), 0);
    assert_int_equal(out->u.task_batch.nitems, LOOM_WIRE_MAX_ITEMS);
    loom_msg_destroy(&out);
    free(bin);
    bin = s_flatc_batch_of("over", LOOM_WIRE_MAX_ITEMS + 1, &len);
    s_assert_refused(bin, len);
    free(bin);
}

static void
test_our_encoding_reads_back_in_flatc(void **state)
{
    (void)state;
    loom_msg m;
    size_t len;
    uint8_t *buf = s_encode_sample(LOOM_MSG_TASK_BATCH, &m, &len);
    char *json = s_flatc_json("batch", buf, len);
    s_assert_contains(json, "\"proto\":1,");
    s_assert_contains(json, "\"body_type\":\"TaskBatch\"");
    s_assert_contains(json, "\"map\":81985529216486895,");
    s_assert_contains(json, "\"combine\":true");
    s_assert_contains(json, "{\"index\":0,\"attempt\":1,\"data\":[1,2,3,0,255],\"files\":[{"
                            "\"name\":\"in.txt\",\"hash\":[0,1,2,3,4,5,6,7,8,9,10,");
    s_assert_contains(json, "\"size\":12345}");
    s_assert_contains(json, "{\"name\":\"model.bin\",\"hash\":[255,254,253,");
    s_assert_contains(json, "\"size\":1099511627776}");
    s_assert_contains(json, "{\"index\":1,\"attempt\":0,\"data\":[]");
    s_assert_contains(json, "{\"index\":18446744073709551614,\"attempt\":7,");
    free(json);
    free(buf);

    buf = s_encode_sample(LOOM_MSG_HELLO, &m, &len);
    json = s_flatc_json("hello", buf, len);
    s_assert_contains(json, "\"body_type\":\"Hello\"");
    s_assert_contains(json, "\"role\":\"Supervisor\"");
    s_assert_contains(json, "\"host\":\"host-9f3a\"");
    s_assert_contains(json, "\"pid\":4242");
    s_assert_contains(json, "\"credit\":512");
    s_assert_contains(json, "\"procs\":8");
    s_assert_contains(json, "\"software\":\"0.1.0\"");
    free(json);
    free(buf);

    buf = s_encode_sample(LOOM_MSG_RESULT_BATCH, &m, &len);
    json = s_flatc_json("results", buf, len);
    s_assert_contains(json, "\"body_type\":\"ResultBatch\"");
    s_assert_contains(json, "\"elapsed_us\":987654321");
    s_assert_contains(json, "\"has_partial\":true");
    s_assert_contains(json, "\"status\":-7");
    s_assert_contains(json, "\"error\":\"tasksaidno:");
    free(json);
    free(buf);
}

//  --------------------------------------------------------------------------
//  The encoder's fast path (plain TaskBatch / ResultBatch, written without
//  the builder): every shape of item round-trips, verifies, and reads back
//  in flatc, at every data length and from a misaligned copy.

static void
s_fast_roundtrip(const loom_msg *in)
{
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(loom_wire_encode(in, &buf, &len), 0);
    assert_memory_equal((uint8_t *)buf + 4, "LOOM", 4);
    loom_msg *out = NULL;
    assert_int_equal(loom_wire_decode(buf, len, &out), 0);
    s_assert_msg_equal(in, out);
    loom_msg_destroy(&out);
    //  From an odd address too (decode copies to aligned memory).
    uint8_t *odd = malloc(len + 1);
    memcpy(odd + 1, buf, len);
    assert_int_equal(loom_wire_decode(odd + 1, len, &out), 0);
    s_assert_msg_equal(in, out);
    loom_msg_destroy(&out);
    free(odd);
    //  A truncated copy is refused, unless only the trailing padding went.
    for (size_t cut = 0; cut < len; cut += 1 + cut / 8) {
        loom_msg *cut_msg = NULL;
        if (loom_wire_decode(buf, cut, &cut_msg) == 0) {
            assert_true(cut + 8 > len);
            s_assert_msg_equal(in, cut_msg);
            loom_msg_destroy(&cut_msg);
        }
        assert_null(cut_msg);
    }
    free(buf);
}

static void
test_fast_path_shapes_roundtrip(void **state)
{
    (void)state;
    enum { N = 40 };
    static uint8_t data[N][N];
    loom_wire_item items[N];
    loom_wire_result results[N];
    for (int i = 0; i < N; i++) {
        memset(data[i], 0x30 + i, sizeof data[i]);
        //  Lengths 0..N-1 (every alignment), some absent, some empty.
        loom_span sp = {data[i], (size_t)i};
        if (i % 7 == 3)
            sp = (loom_span){NULL, 0};
        else if (i % 7 == 5)
            sp = (loom_span){s_empty, 0};
        items[i] = (loom_wire_item){UINT64_MAX - (uint64_t)i * 977, (uint32_t)i * 3, sp, 0, NULL};
        results[i] = (loom_wire_result){
            .index = (uint64_t)i << 40, .attempt = (uint32_t)i, .status = -i, .data = sp};
    }
    for (size_t n = 0; n <= N; n += (n < 3 ? 1 : 9)) {
        loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
        m.u.task_batch = (loom_wire_task_batch){BIG64 + n, n % 2 == 1, n, n ? items : NULL};
        s_fast_roundtrip(&m);
        loom_msg r = {.type = LOOM_MSG_RESULT_BATCH};
        r.u.result_batch = (loom_wire_result_batch){
            .map = BIG64 - n,
            .elapsed_us = 1000 + n,
            .nresults = n,
            .results = n ? results : NULL,
            .has_partial = n % 2 == 0,
        };
        s_fast_roundtrip(&r);
    }
}

static void
test_fast_path_reads_back_in_flatc(void **state)
{
    (void)state;
    static const uint8_t d[3] = {7, 8, 9};
    loom_wire_item items[2] = {{5, 2, {d, 3}, 0, NULL}, {6, 0, {NULL, 0}, 0, NULL}};
    loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
    m.u.task_batch = (loom_wire_task_batch){42, false, 2, items};
    void *buf;
    size_t len;
    assert_int_equal(loom_wire_encode(&m, &buf, &len), 0);
    char *json = s_flatc_json("fast-batch", buf, len);
    s_assert_contains(json, "\"body_type\":\"TaskBatch\"");
    s_assert_contains(json, "\"map\":42");
    s_assert_contains(json, "{\"index\":5,\"attempt\":2,\"data\":[7,8,9]}");
    s_assert_contains(json, "{\"index\":6,\"attempt\":0}");
    free(json);
    free(buf);

    loom_wire_result res[1] = {{.index = 9, .attempt = 1, .status = -3, .data = {d, 2}}};
    loom_msg r = {.type = LOOM_MSG_RESULT_BATCH};
    r.u.result_batch =
        (loom_wire_result_batch){.map = 11, .elapsed_us = 77, .nresults = 1, .results = res};
    assert_int_equal(loom_wire_encode(&r, &buf, &len), 0);
    json = s_flatc_json("fast-results", buf, len);
    s_assert_contains(json, "\"body_type\":\"ResultBatch\"");
    s_assert_contains(json, "\"elapsed_us\":77");
    s_assert_contains(json, "{\"index\":9,\"attempt\":1,\"status\":-3,\"data\":[7,8]}");
    free(json);
    free(buf);
}

//  A random plain batch (what the fast writer lays out): n items or
//  results of random lengths, some absent, some empty; data from pool.
static void
s_random_plain(uint64_t *seed, int type, size_t n, const uint8_t *pool, loom_wire_item *items,
               loom_wire_result *results, loom_msg *m)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = s_rand(seed) % 40;
        loom_span sp = {pool + s_rand(seed) % 64, len};
        if (s_rand(seed) % 9 == 0)
            sp = (loom_span){NULL, 0};
        items[i] = (loom_wire_item){s_rand(seed), (uint32_t)s_rand(seed), sp, 0, NULL};
        results[i] = (loom_wire_result){.index = s_rand(seed),
                                        .attempt = (uint32_t)s_rand(seed),
                                        .status = -(int32_t)(s_rand(seed) % 20),
                                        .data = sp};
    }
    memset(m, 0, sizeof *m);
    m->type = type;
    if (type == LOOM_MSG_TASK_BATCH)
        m->u.task_batch = (loom_wire_task_batch){s_rand(seed), s_rand(seed) % 2, n, items};
    else
        m->u.result_batch = (loom_wire_result_batch){.map = s_rand(seed),
                                                     .elapsed_us = s_rand(seed),
                                                     .nresults = n,
                                                     .results = results,
                                                     .has_partial = s_rand(seed) % 2};
}

//  Decode buf both ways: the fast reader of plain batches must agree with
//  the FlatBuffers verifier on every input (accept the same, read the
//  same). Returns whether it decoded.
static bool
s_assert_readers_agree(const uint8_t *buf, size_t len)
{
    loom_msg *fast = NULL, *verified = NULL;
    int rc = loom_wire_decode(buf, len, &fast);
    assert_int_equal(rc, loom__wire_decode_verified(buf, len, &verified));
    if (rc == 0)
        s_assert_msg_equal(verified, fast);
    loom_msg_destroy(&fast);
    loom_msg_destroy(&verified);
    return rc == 0;
}

static void
test_fast_reader_agrees_with_verifier(void **state)
{
    (void)state;
    enum { N = 70 };
    static uint8_t pool[128];
    for (size_t i = 0; i < sizeof pool; i++)
        pool[i] = (uint8_t)(i * 7);
    loom_wire_item items[N];
    loom_wire_result results[N];
    uint64_t seed = 7;
    size_t fast = 0, mutated_ok = 0, mutated_refused = 0;
    for (int round = 0; round < 300; round++) {
        int type = round % 2 ? LOOM_MSG_RESULT_BATCH : LOOM_MSG_TASK_BATCH;
        size_t n = 1 + s_rand(&seed) % N;
        loom_msg m;
        s_random_plain(&seed, type, n, pool, items, results, &m);
        void *enc;
        size_t len;
        assert_int_equal(loom_wire_encode(&m, &enc, &len), 0);
        uint8_t *buf = enc;
        //  As written: the fast reader takes it (its records live in the
        //  message's own block, no separate arena) and reads it right.
        loom_msg *out = NULL;
        assert_int_equal(loom_wire_decode(buf, len, &out), 0);
        assert_null(out->priv_);
        s_assert_msg_equal(&m, out);
        loom_msg_destroy(&out);
        assert_true(s_assert_readers_agree(buf, len));
        fast++;
        //  Changed bytes, cut or grown: both readers still agree.
        uint8_t *copy = malloc(len + 16);
        for (int k = 0; k < 40; k++) {
            memcpy(copy, buf, len);
            size_t clen = len;
            int what = (int)(s_rand(&seed) % 4);
            if (what == 0)
                clen = s_rand(&seed) % len;
            else if (what == 1) {
                clen = len + 8;
                memset(copy + len, 0, 8);
            } else {
                int flips = 1 + (int)(s_rand(&seed) % 3);
                for (int f = 0; f < flips; f++) {
                    //  Mostly the structure (header and first items), where
                    //  a random flip matters most.
                    size_t at = s_rand(&seed) % (what == 2 && len > 200 ? 200 : len);
                    copy[at] = (uint8_t)s_rand(&seed);
                }
            }
            if (s_assert_readers_agree(copy, clen))
                mutated_ok++;
            else
                mutated_refused++;
        }
        free(copy);
        free(buf);
    }
    print_message("fast reader: %zu batches, mutated %zu decoded %zu refused\n", fast, mutated_ok,
                  mutated_refused);
    assert_true(mutated_ok > 0 && mutated_refused > 0);
}

//  A plain batch received on a ROUTER keeps its frame and goes on to
//  another peer as the same bytes with only the map replaced; anything
//  else is not forwardable.
static void
test_forward_sends_the_same_bytes(void **state)
{
    (void)state;
    s_pair p;
    s_pair_open(&p, "fwd");
    void *other = zmq_socket(p.ctx, ZMQ_DEALER);
    int zero = 0, timeout = 5000;
    zmq_setsockopt(other, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(other, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(other, ZMQ_ROUTING_ID, "other", 5);
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "inproc://wire-%d-fwd", (int)getpid());
    assert_int_equal(zmq_connect(other, endpoint), 0);
    //  The router knows `other` once it has said something.
    loom_msg hb = {.type = LOOM_MSG_HEARTBEAT};
    assert_int_equal(loom_wire_send(other, NULL, 0, &hb, 0), 0);
    uint8_t rid[256];
    size_t rid_len;
    loom_msg *got = NULL;
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), 0);
    assert_false(loom_wire_forwardable(got));
    loom_msg_destroy(&got);

    static uint8_t pool[128];
    loom_wire_item items[20];
    loom_wire_result results[20];
    uint64_t seed = 99;
    for (int round = 0; round < 20; round++) {
        int type = round % 2 ? LOOM_MSG_RESULT_BATCH : LOOM_MSG_TASK_BATCH;
        loom_msg m;
        s_random_plain(&seed, type, 1 + (size_t)round, pool, items, results, &m);
        assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
        assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), 0);
        s_assert_msg_equal(&m, got);
        assert_true(loom_wire_forwardable(got));
        assert_int_equal(loom_wire_forward(p.router, "other", 5, &got, BIG64 + 3, ZMQ_DONTWAIT), 0);
        assert_null(got);
        assert_int_equal(loom_wire_recv(other, NULL, 0, NULL, &got, 0), 0);
        if (type == LOOM_MSG_TASK_BATCH)
            m.u.task_batch.map = BIG64 + 3;
        else
            m.u.result_batch.map = BIG64 + 3;
        s_assert_msg_equal(&m, got);
        loom_msg_destroy(&got);
    }
    //  A batch the fast writer does not lay out (an error text) is decoded
    //  as before, and is not forwardable.
    loom_msg r;
    s_sample(LOOM_MSG_RESULT_BATCH, &r);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &r, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), 0);
    s_assert_msg_equal(&r, got);
    assert_false(loom_wire_forwardable(got));
    loom_msg_destroy(&got);
    //  Forwarding to a peer that is gone: an error, and the message is gone.
    s_random_plain(&seed, LOOM_MSG_RESULT_BATCH, 3, pool, items, results, &r);
    assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &r, 0), 0);
    assert_int_equal(loom_wire_recv(p.router, rid, sizeof rid, &rid_len, &got, 0), 0);
    assert_int_equal(loom_wire_forward(p.router, "nobody", 6, &got, 1, ZMQ_DONTWAIT),
                     LOOM_ECONNECT);
    assert_null(got);
    zmq_close(other);
    s_pair_close(&p);
}

//  A large received frame that is 8-byte aligned is verified where it is
//  and kept by the message: a blob chunk's bytes are not copied, over inproc
//  (the sender's buffer) and over ipc (libzmq's decoder allocates a large
//  message on its own). Lowering the threshold sends every sample type that
//  way; a batch the fast reader does not take is read in place too, but
//  only a plain batch is forwardable. A misaligned frame is copied; a corrupted
//  one is refused.
static void
test_large_frames_decode_in_place(void **state)
{
    (void)state;
    enum { CHUNK = 1 << 20 };
    uint8_t *bytes = malloc(CHUNK);
    assert_non_null(bytes);
    for (size_t i = 0; i < CHUNK; i++)
        bytes[i] = (uint8_t)(i * 7 + (i >> 12));
    static const uint8_t hash[LOOM_HASH_SIZE] = {1, 2, 3};
    loom_msg put = {.type = LOOM_MSG_BLOB_PUT};
    put.u.blob_put.hash = (loom_span){hash, LOOM_HASH_SIZE};
    put.u.blob_put.offset = BIG64;
    put.u.blob_put.total = BIG64 + CHUNK;
    put.u.blob_put.data = (loom_span){bytes, CHUNK};

    char path[64], endpoint[96];
    snprintf(path, sizeof path, "/tmp/loom-wire-%d.ipc", (int)getpid());
    snprintf(endpoint, sizeof endpoint, "ipc://%s", path);
    s_pair p;
    s_pair_open(&p, "inplace");
    void *in = zmq_socket(p.ctx, ZMQ_PULL), *out = zmq_socket(p.ctx, ZMQ_PUSH);
    int zero = 0, timeout = 5000;
    zmq_setsockopt(in, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(in, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(out, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(in, endpoint), 0);
    assert_int_equal(zmq_connect(out, endpoint), 0);
    void *senders[] = {p.dealer, out}, *receivers[] = {p.router, in};
    uint8_t rid[256];
    size_t rid_len;
    loom_msg *got = NULL;
    for (int t = 0; t < 2; t++) {
        assert_int_equal(loom_wire_send(senders[t], NULL, 0, &put, 0), 0);
        assert_int_equal(loom_wire_recv(receivers[t], t ? NULL : rid, t ? 0 : sizeof rid,
                                        t ? NULL : &rid_len, &got, 0),
                         0);
        s_assert_msg_equal(&put, got);
        assert_non_null(got->frame_); //  in place: the frame is the message's
        assert_false(loom_wire_forwardable(got));
        loom_msg_destroy(&got);
    }
    zmq_close(in);
    zmq_close(out);
    unlink(path);

    //  Every sample type, as a frame of libzmq's, with the threshold
    //  lowered: in place when aligned (a few bytes live inside the
    //  zmq_msg_t, maybe not); the samples' batches are not plain (error
    //  texts, files): read in place too, but not forwardable.
    size_t saved = loom__wire_in_place_min;
    loom__wire_in_place_min = 0;
    int in_place = 0;
    for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
        loom_msg m;
        s_sample(type, &m);
        void *e = NULL;
        size_t elen = 0;
        assert_int_equal(loom_wire_encode(&m, &e, &elen), 0);
        zmq_msg_t f;
        assert_int_equal(zmq_msg_init_size(&f, elen), 0);
        memcpy(zmq_msg_data(&f), e, elen);
        bool aligned = ((uintptr_t)zmq_msg_data(&f) & 7) == 0;
        free(e);
        assert_int_equal(loom_wire_decode_frame(&f, &got), 0);
        zmq_msg_close(&f);
        s_assert_msg_equal(&m, got);
        assert_true((got->frame_ != NULL) == aligned);
        in_place += got->frame_ != NULL;
        assert_false(loom_wire_forwardable(got));
        loom_msg_destroy(&got);
    }
    assert_true(in_place >= LOOM_MSG_COUNT_ - 2);
    loom__wire_in_place_min = saved;

    //  Misaligned: copied. Corrupted: refused.
    void *enc = NULL;
    size_t len = 0;
    assert_int_equal(loom_wire_encode(&put, &enc, &len), 0);
    uint8_t *odd = malloc(len + 1);
    assert_non_null(odd);
    memcpy(odd + 1, enc, len);
    zmq_msg_t frame;
    assert_int_equal(zmq_msg_init_data(&frame, odd + 1, len, NULL, NULL), 0);
    assert_int_equal(loom_wire_decode_frame(&frame, &got), 0);
    zmq_msg_close(&frame);
    s_assert_msg_equal(&put, got);
    assert_null(got->frame_);
    loom_msg_destroy(&got);
    assert_int_equal(zmq_msg_init_size(&frame, len), 0);
    memcpy(zmq_msg_data(&frame), enc, len);
    memset(zmq_msg_data(&frame), 0xff, 4); //  the root offset, past the end
    assert_int_equal(loom_wire_decode_frame(&frame, &got), LOOM_EPROTO);
    assert_null(got);
    zmq_msg_close(&frame);
    free(odd);
    free(enc);
    free(bytes);
    s_pair_close(&p);
}

//  loom_wire_send_filled: the bytes written by the fill callback in place
//  give the very frame loom_wire_send gives for the same message; a fill
//  error is returned and nothing is sent; a bad hash is refused.
typedef struct {
    const uint8_t *from;
    int calls;
    int fail;
} s_filler;

static int
s_fill_test(void *ctx, void *buf, size_t len)
{
    s_filler *f = ctx;
    f->calls++;
    if (f->fail)
        return f->fail;
    memcpy(buf, f->from, len);
    return 0;
}

//  The next frame on the router (after its routing id), as a copy.
static uint8_t *
s_raw_frame(s_pair *p, size_t *len)
{
    zmq_msg_t f;
    zmq_msg_init(&f);
    assert_true(zmq_msg_recv(&f, p->router, 0) >= 0); //  routing id
    assert_true(zmq_msg_more(&f));
    assert_true(zmq_msg_recv(&f, p->router, 0) >= 0);
    *len = zmq_msg_size(&f);
    uint8_t *copy = malloc(*len ? *len : 1);
    memcpy(copy, zmq_msg_data(&f), *len);
    zmq_msg_close(&f);
    return copy;
}

static void
test_send_filled_is_the_same_frame(void **state)
{
    (void)state;
    s_pair p;
    s_pair_open(&p, "filled");
    enum { LEN = 300001 };
    uint8_t *bytes = malloc(LEN);
    for (size_t i = 0; i < LEN; i++)
        bytes[i] = (uint8_t)(i * 13 + 5);
    static const uint8_t hash[LOOM_HASH_SIZE] = {9, 8, 7};
    size_t lens[] = {LEN, 1, 0};
    for (int t = 0; t < 2; t++) {
        for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
            loom_msg m = {.type = t ? LOOM_MSG_BLOB_CHUNK : LOOM_MSG_BLOB_PUT};
            loom_span data = {lens[k] ? bytes : NULL, lens[k]};
            if (t) {
                m.u.blob_chunk = (loom_wire_blob_chunk){.hash = {hash, LOOM_HASH_SIZE},
                                                        .offset = BIG64,
                                                        .total = BIG64 + LEN,
                                                        .data = data,
                                                        .status = -3};
            } else {
                m.u.blob_put = (loom_wire_blob_put){
                    .hash = {hash, LOOM_HASH_SIZE}, .offset = 7, .total = LEN + 7, .data = data};
            }
            size_t alen, blen;
            assert_int_equal(loom_wire_send(p.dealer, NULL, 0, &m, 0), 0);
            uint8_t *a = s_raw_frame(&p, &alen);
            s_filler f = {bytes, 0, 0};
            if (t)
                m.u.blob_chunk.data.data = NULL;
            else
                m.u.blob_put.data.data = NULL;
            assert_int_equal(loom_wire_send_filled(p.dealer, NULL, 0, &m, s_fill_test, &f, 0), 0);
            assert_int_equal(f.calls, lens[k] ? 1 : 0);
            uint8_t *b = s_raw_frame(&p, &blen);
            assert_int_equal(alen, blen);
            assert_memory_equal(a, b, alen);
            free(a);
            free(b);
        }
    }
    //  A failing fill: its code back, nothing sent.
    loom_msg m = {.type = LOOM_MSG_BLOB_PUT};
    m.u.blob_put = (loom_wire_blob_put){
        .hash = {hash, LOOM_HASH_SIZE}, .offset = 0, .total = LEN, .data = {NULL, LEN}};
    s_filler f = {bytes, 0, LOOM_EIO};
    assert_int_equal(loom_wire_send_filled(p.dealer, NULL, 0, &m, s_fill_test, &f, 0), LOOM_EIO);
    assert_int_equal(f.calls, 1);
    //  A hash of the wrong length: refused before any fill.
    m.u.blob_put.hash.len = 5;
    f.fail = 0;
    assert_int_equal(loom_wire_send_filled(p.dealer, NULL, 0, &m, s_fill_test, &f, 0),
                     LOOM_EINVAL);
    assert_int_equal(f.calls, 1);
    zmq_msg_t none;
    zmq_msg_init(&none);
    assert_int_equal(zmq_msg_recv(&none, p.router, ZMQ_DONTWAIT), -1);
    zmq_msg_close(&none);
    free(bytes);
    s_pair_close(&p);
}

//  --------------------------------------------------------------------------
//  Speed (printed, not asserted)

static double
s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void
test_batch_speed(void **state)
{
    (void)state;
    enum { N = 256, ROUNDS = 2000 };
    static uint8_t data[N][16];
    static loom_wire_item items[N];
    for (int i = 0; i < N; i++) {
        memset(data[i], i, 16);
        items[i] = (loom_wire_item){(uint64_t)i, 0, {data[i], 16}, 0, NULL};
    }
    loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
    m.u.task_batch = (loom_wire_task_batch){1, false, N, items};
    double enc = 0, dec = 0;
    size_t len = 0;
    for (int r = 0; r < ROUNDS; r++) {
        void *buf;
        double t0 = s_now_ns();
        assert_int_equal(loom_wire_encode(&m, &buf, &len), 0);
        double t1 = s_now_ns();
        loom_msg *out;
        assert_int_equal(loom_wire_decode(buf, len, &out), 0);
        double t2 = s_now_ns();
        assert_int_equal(out->u.task_batch.nitems, N);
        loom_msg_destroy(&out);
        free(buf);
        enc += t1 - t0;
        dec += t2 - t1;
    }
    print_message("TaskBatch %d x 16 B (%zu bytes): encode %.1f ns/item, decode %.1f ns/item, "
                  "both %.1f ns/item\n",
                  N, len, enc / ROUNDS / N, dec / ROUNDS / N, (enc + dec) / ROUNDS / N);
}

//  With LOOM_WIRE_CORPUS=DIR, only write one sample of each type there:
//  that is how the seed corpus tests/fuzz/corpus/wire was made.
static int
s_write_corpus(const char *dir)
{
    for (int type = 1; type < LOOM_MSG_COUNT_; type++) {
        loom_msg m;
        size_t len;
        uint8_t *buf = s_encode_sample(type, &m, &len);
        char path[512];
        snprintf(path, sizeof path, "%s/%s.loom", dir, loom_msg_type_name(type));
        s_write_file(path, buf, len);
        free(buf);
    }
    //  An adoption asking for a file outside the store.
    uint8_t hash[LOOM_HASH_SIZE];
    memset(hash, 0xab, sizeof hash);
    loom_msg adopt = {.type = LOOM_MSG_BLOB_HAVE};
    adopt.u.blob_have =
        (loom_wire_blob_have){{hash, LOOM_HASH_SIZE}, 4096, false, "../put-1-1.tmp"};
    void *abuf;
    size_t alen;
    assert_int_equal(loom_wire_encode(&adopt, &abuf, &alen), 0);
    char apath[512];
    snprintf(apath, sizeof apath, "%s/AdoptBlobHave.loom", dir);
    s_write_file(apath, abuf, alen);
    free(abuf);
    //  Plain batches, for the fast reader.
    static uint8_t pool[128];
    loom_wire_item items[5];
    loom_wire_result results[5];
    uint64_t seed = 3;
    for (int type = LOOM_MSG_TASK_BATCH; type <= LOOM_MSG_RESULT_BATCH; type++) {
        if (type != LOOM_MSG_TASK_BATCH && type != LOOM_MSG_RESULT_BATCH)
            continue;
        loom_msg m;
        s_random_plain(&seed, type, 5, pool, items, results, &m);
        void *buf;
        size_t len;
        assert_int_equal(loom_wire_encode(&m, &buf, &len), 0);
        char path[512];
        snprintf(path, sizeof path, "%s/Plain%s.loom", dir, loom_msg_type_name(type));
        s_write_file(path, buf, len);
        free(buf);
    }
    return 0;
}

int
main(void)
{
    if (getenv("LOOM_WIRE_CORPUS"))
        return s_write_corpus(getenv("LOOM_WIRE_CORPUS"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_hello),
        cmocka_unit_test(test_roundtrip_welcome),
        cmocka_unit_test(test_roundtrip_pipeline_open),
        cmocka_unit_test(test_roundtrip_pipeline_close),
        cmocka_unit_test(test_roundtrip_map_open),
        cmocka_unit_test(test_roundtrip_task_batch),
        cmocka_unit_test(test_roundtrip_map_end),
        cmocka_unit_test(test_roundtrip_credit),
        cmocka_unit_test(test_roundtrip_result_batch),
        cmocka_unit_test(test_roundtrip_cancel),
        cmocka_unit_test(test_roundtrip_heartbeat),
        cmocka_unit_test(test_roundtrip_error),
        cmocka_unit_test(test_roundtrip_stats_request),
        cmocka_unit_test(test_roundtrip_stats),
        cmocka_unit_test(test_roundtrip_worker_exit),
        cmocka_unit_test(test_roundtrip_blob_have),
        cmocka_unit_test(test_roundtrip_blob_put),
        cmocka_unit_test(test_roundtrip_blob_get),
        cmocka_unit_test(test_roundtrip_blob_chunk),
        cmocka_unit_test(test_absent_fields_decode_as_null),
        cmocka_unit_test(test_encode_refuses_what_decode_would),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_truncated_prefixes_are_refused),
        cmocka_unit_test(test_empty_and_null_are_refused),
        cmocka_unit_test(test_random_garbage_is_refused),
        cmocka_unit_test(test_mutated_messages_decode_or_are_refused),
        cmocka_unit_test(test_wrong_identifier_is_refused),
        cmocka_unit_test(test_bad_union_type_is_refused),
        cmocka_unit_test(test_oversized_claims_are_refused),
        cmocka_unit_test(test_missing_required_fields_are_refused),
        cmocka_unit_test(test_misaligned_buffer_decodes),
        cmocka_unit_test(test_zmq_roundtrip_with_routing_id),
        cmocka_unit_test(test_zmq_bad_framing_is_refused_and_drained),
        cmocka_unit_test_setup_teardown(test_flatc_json_decodes, s_tmp_open, s_tmp_close),
        cmocka_unit_test_setup_teardown(test_flatc_batch_over_the_limit_is_refused, s_tmp_open,
                                        s_tmp_close),
        cmocka_unit_test_setup_teardown(test_our_encoding_reads_back_in_flatc, s_tmp_open,
                                        s_tmp_close),
        cmocka_unit_test(test_fast_path_shapes_roundtrip),
        cmocka_unit_test_setup_teardown(test_fast_path_reads_back_in_flatc, s_tmp_open,
                                        s_tmp_close),
        cmocka_unit_test(test_fast_reader_agrees_with_verifier),
        cmocka_unit_test(test_forward_sends_the_same_bytes),
        cmocka_unit_test(test_large_frames_decode_in_place),
        cmocka_unit_test(test_send_filled_is_the_same_frame),
        cmocka_unit_test(test_batch_speed),
    };
    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
