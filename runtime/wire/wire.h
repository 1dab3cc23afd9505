/*  wire: the FlatBuffers codec of loom's messages, behind a C API.

    The schema is runtime/wire/loom.fbs; flatc generates C++ from it at build
    time and wire.cc is the one C++ file that uses it. C code sees plain
    structs: fill a loom_msg and encode it, or decode bytes into a loom_msg
    whose pointers (strings, byte spans, arrays) borrow from the message's
    own aligned copy of the frame and live until loom_msg_destroy.

    Decoding is for untrusted bytes: the buffer is copied once into the
    message's own 16-byte-aligned block (so any alignment of the input is
    fine and the frame can be closed), checked with the FlatBuffers verifier
    (depth and table limits), and every field is checked (union type known,
    required strings present) before anything is returned. A message that
    fails any check is refused with LOOM_EPROTO and never half-read.
    TaskBatch and ResultBatch in the plain layout that encode writes for
    batches without files, errors, partial or blob counters are read by a
    cheaper reader that accepts only that exact layout (so only buffers the
    verifier accepts) and leaves everything else to the verifier;
    loom_wire_recv keeps such a frame instead of copying it.

    What decode requires (encode refuses to write anything else, with
    LOOM_EINVAL, so whatever we send we accept):
    - the identifier "LOOM", a body of a known type (not NONE), present;
    - Hello.role one of loom_role;
    - MapOpen.plugin and MapOpen.task present (their names are checked by
      the broker, not here); an absent MapOpen.version decodes as "";
    - FileRef.name present and FileRef.hash exactly LOOM_HASH_SIZE bytes;
    - Blob*.hash present and exactly LOOM_HASH_SIZE bytes;
    - at most LOOM_WIRE_MAX_ITEMS items (results) per batch, and at most
      LOOM_WIRE_MAX_ITEMS files in all the items (results) of one batch.
    Every other field is optional: absent strings decode as NULL, absent
    byte vectors as {NULL, 0}, absent vectors of tables as 0 and NULL,
    absent scalars as 0 / false. `proto` is returned as sent.  */

#ifndef LOOM_WIRE_H
#define LOOM_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <loom/errors.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PROTO_VERSION 1
#define LOOM_HASH_SIZE 32

//  Values equal the FlatBuffers union tags (Body_* in loom_generated.h).
typedef enum {
    LOOM_MSG_NONE = 0,
    LOOM_MSG_HELLO = 1,
    LOOM_MSG_WELCOME = 2,
    LOOM_MSG_PIPELINE_OPEN = 3,
    LOOM_MSG_PIPELINE_CLOSE = 4,
    LOOM_MSG_MAP_OPEN = 5,
    LOOM_MSG_TASK_BATCH = 6,
    LOOM_MSG_MAP_END = 7,
    LOOM_MSG_CREDIT = 8,
    LOOM_MSG_RESULT_BATCH = 9,
    LOOM_MSG_CANCEL = 10,
    LOOM_MSG_HEARTBEAT = 11,
    LOOM_MSG_ERROR = 12,
    LOOM_MSG_STATS_REQUEST = 13,
    LOOM_MSG_STATS = 14,
    LOOM_MSG_WORKER_EXIT = 15,
    LOOM_MSG_BLOB_HAVE = 16,
    LOOM_MSG_BLOB_PUT = 17,
    LOOM_MSG_BLOB_GET = 18,
    LOOM_MSG_BLOB_CHUNK = 19,
    LOOM_MSG_COUNT_ = 20
} loom_msg_type;

typedef enum { LOOM_ROLE_CLIENT = 0, LOOM_ROLE_WORKER = 1, LOOM_ROLE_SUPERVISOR = 2 } loom_role;

//  A borrowed run of bytes. Not aligned: memcpy before reading scalars.
//  Encoding: data NULL (len 0) leaves the field out; data set with len 0
//  writes an empty vector.
typedef struct {
    const uint8_t *data;
    size_t len;
} loom_span;

typedef struct {
    const char *name;
    loom_span hash; //  LOOM_HASH_SIZE bytes
    uint64_t size;
} loom_wire_file;

typedef struct {
    uint64_t index;
    uint32_t attempt;
    loom_span data;
    size_t nfiles;
    const loom_wire_file *files;
} loom_wire_item;

typedef struct {
    uint64_t index;
    uint32_t attempt;
    int32_t status;
    loom_span data;
    const char *error; //  NULL when absent
    size_t nfiles;
    const loom_wire_file *files;
} loom_wire_result;

typedef struct {
    loom_role role;
    const char *host;
    uint32_t pid;
    uint32_t credit;
    uint32_t procs;
    const char *software;
} loom_wire_hello;

typedef struct {
    uint64_t epoch;
    uint64_t session;
    uint32_t worker_id;
    uint32_t heartbeat_ms;
    uint32_t liveness;
    uint32_t max_batch;
    uint32_t max_frame;
    const char *blob_endpoint; //  NULL when absent
    const char *blob_store;    //  the broker's blob store directory, NULL when absent
} loom_wire_welcome;

typedef struct {
    uint64_t pipeline;
    const char *name;
} loom_wire_pipeline;

typedef struct {
    uint64_t map;
    uint64_t pipeline;
    const char *plugin;
    const char *version; //  "" when not pinned
    const char *task;
    loom_span args;
    bool ordered;
    bool reduce;
    uint32_t chunk;
    int32_t retries;
    uint32_t timeout_ms;
    size_t nshares; //  the pipeline's shares
    const loom_wire_file *shares;
    uint32_t retry_failed;        //  client -> broker only (as the next two)
    uint32_t halt_after_failures; //  0: never
    uint32_t failures_seen;       //  failed items the client had before (a reopened map)
    uint32_t init_timeout_ms;     //  plugin init; 0: default (60 s), UINT32_MAX: none
} loom_wire_map_open;

typedef struct {
    uint64_t map;
    bool combine;
    size_t nitems;
    const loom_wire_item *items;
} loom_wire_task_batch;

typedef struct {
    uint64_t map;
    uint64_t count;
} loom_wire_map_end;

typedef struct {
    uint64_t map;
    uint64_t elapsed_us;
    size_t nresults;
    const loom_wire_result *results;
    bool has_partial;
    loom_span partial;
    uint64_t blob_bytes_in, blob_bytes_out; //  the worker's blob bytes since its last batch
} loom_wire_result_batch;

typedef struct {
    int32_t code;
    uint64_t map;
    uint64_t pipeline;
    const char *message;
} loom_wire_error;

typedef struct {
    uint64_t epoch, uptime_ms;
    uint32_t clients, workers, supervisors, maps, pipelines;
    uint64_t items_queued, items_in_flight, items_done, items_failed, items_retried;
    uint64_t results_dropped, msgs_in, msgs_out, msgs_rejected;
    uint64_t blob_bytes_in, blob_bytes_out, blobs_stored, blob_store_bytes;
    uint64_t workers_blob_bytes_in, workers_blob_bytes_out; //  sums of the workers' reports
    uint64_t connections_dropped; //  task-channel disconnections (peer gone, or a protocol error)
    uint64_t blob_bytes_adopted;  //  blob bytes same-host clients wrote into the store
    uint64_t curve_refused;       //  connections the CURVE allow-list refused
    uint64_t items_cancelling;    //  of items_in_flight: items of cancelled maps still running
    uint64_t items_cancelled;     //  items of cancelled maps answered after the cancel
} loom_wire_stats;

typedef struct {
    uint32_t pid;
    int32_t signal;
    int32_t status;
    uint64_t max_rss;       //  peak resident memory in bytes, 0: unknown
    uint64_t rss_limit;     //  its --max-rss in bytes, 0: none
    bool oom_kill;          //  the kernel's OOM killer was seen at work then
    uint64_t init_map;      //  it died in a plugin's init for this broker map; 0: not in an init
    const char *init_error; //  then: what happened, or NULL
} loom_wire_worker_exit;

//  The exit statuses of a worker process that ended on purpose, as a
//  WorkerExit reports them (PROTOCOL.md): a cancelled map's item (or init)
//  still running after the grace, a clean exit charging nothing; a plugin
//  init past its timeout; an item past its timeout; over --max-rss while an
//  item ran (its batch charged as for a crash, its items LOOM_ENOMEM).
#define LOOM_WORKER_EXIT_CANCELLED 122
#define LOOM_WORKER_EXIT_INIT 123
#define LOOM_WORKER_EXIT_TIMEDOUT 124
#define LOOM_WORKER_EXIT_MEMORY 125

typedef struct {
    loom_span hash;
    uint64_t size;
    bool have;
    const char *adopt; //  a temp file in the store to adopt (same host), or NULL
} loom_wire_blob_have;

typedef struct {
    loom_span hash;
    uint64_t offset;
    uint64_t total;
    loom_span data;
} loom_wire_blob_put;

typedef struct {
    loom_span hash;
    uint64_t offset;
    uint64_t credit;
} loom_wire_blob_get;

typedef struct {
    loom_span hash;
    uint64_t offset;
    uint64_t total;
    loom_span data;
    int32_t status;
} loom_wire_blob_chunk;

//  One message. To encode, zero it, set `type` and the member of that type
//  (pointers borrowed, only read during the call). A decoded message owns
//  everything its pointers reach.
typedef struct loom_msg {
    loom_msg_type type;
    uint16_t proto; //  set by decode; encode always writes LOOM_PROTO_VERSION
    union {
        loom_wire_hello hello;
        loom_wire_welcome welcome;
        loom_wire_pipeline pipeline_open;
        loom_wire_pipeline pipeline_close; //  name unused
        loom_wire_map_open map_open;
        loom_wire_task_batch task_batch;
        loom_wire_map_end map_end;
        uint32_t credit;
        loom_wire_result_batch result_batch;
        uint64_t cancel_map;
        loom_wire_error error;
        loom_wire_stats stats;
        loom_wire_worker_exit worker_exit;
        loom_wire_blob_have blob_have;
        loom_wire_blob_put blob_put;
        loom_wire_blob_get blob_get;
        loom_wire_blob_chunk blob_chunk;
    } u;
    void *priv_;  //  decoder-owned storage; do not touch
    void *frame_; //  decoder-owned: the received frame the message borrows from
    bool plain_;  //  decoder-owned: frame_ is a plain batch's (loom_wire_forwardable)
} loom_msg;

//  Limits applied by decode, beyond the verifier's own.
#define LOOM_WIRE_MAX_DEPTH 64
#define LOOM_WIRE_MAX_TABLES 1000000
#define LOOM_WIRE_MAX_ITEMS 65536 //  items or results per batch

//  Encode m into a new heap buffer (*buf_p, owned by the caller, free()
//  it) of *len_p bytes. Returns 0; LOOM_EINVAL for an unknown type or a
//  message decode would refuse (see the top of this file: missing required
//  field, bad hash length, too many items, a NULL array or span with a
//  count); LOOM_ETOOBIG over 2 GiB; LOOM_ENOMEM.
int loom_wire_encode(const loom_msg *m, void **buf_p, size_t *len_p);

//  Decode untrusted bytes (any alignment; always copied). Returns
//  0 with *msg_p owned by the caller, or LOOM_EPROTO / LOOM_ENOMEM with
//  *msg_p NULL.
int loom_wire_decode(const void *data, size_t len, loom_msg **msg_p);

//  Decode a received frame (a zmq_msg_t *): as loom_wire_decode, except
//  that a plain batch, and any frame of at least loom__wire_in_place_min
//  bytes that is 8-byte aligned, takes the frame itself instead of a copy
//  (the frame is left empty, or as it was on failure; the caller closes
//  it), as loom_wire_recv does.
int loom_wire_decode_frame(void *frame, loom_msg **msg_p);

//  8192: smaller frames are copied (cheap, and libzmq may carve them out
//  of a shared receive buffer). Tests and fuzz targets lower it to reach
//  the in-place path with small messages.
extern size_t loom__wire_in_place_min;

//  The same as loom_wire_decode, always through the FlatBuffers verifier (never the fast
//  reader of plain batches): for tests that compare the two.
int loom__wire_decode_verified(const void *data, size_t len, loom_msg **msg_p);

//  Free a decoded message and set *msg_p to NULL. Accepts NULL.
void loom_msg_destroy(loom_msg **msg_p);

//  Name of a message type ("TaskBatch"), for logs; "?" if unknown.
const char *loom_msg_type_name(int type);

//  Socket helpers (sock is a libzmq socket handle: zsock_resolve(zsock)).
//
//  Send m as one frame, preceded by the routing id `rid` of `rid_len`
//  bytes when rid is not NULL (ROUTER sockets). flags: 0 or ZMQ_DONTWAIT.
//  The encoded buffer is handed to libzmq without a copy. Returns 0,
//  LOOM_EAGAIN (would block), LOOM_ECONNECT (EHOSTUNREACH: unknown peer),
//  the codes of loom_wire_encode (nothing sent), LOOM_EIO for any other
//  failure.
int loom_wire_send(void *sock, const void *rid, size_t rid_len, const loom_msg *m, int flags);

//  Writes len bytes at buf; returns 0 or a loom error code.
typedef int (*loom_wire_fill)(void *ctx, void *buf, size_t len);

//  As loom_wire_send, for a BlobPut or BlobChunk whose bytes fill writes
//  straight into the encoded frame (m's data span gives their length; its
//  pointer is not read): the same frame, without a copy of the bytes. A
//  fill error is returned as is, and nothing is sent.
int loom_wire_send_filled(void *sock, const void *rid, size_t rid_len, const loom_msg *m,
                          loom_wire_fill fill, void *ctx, int flags);

//  Receive one whole message (all its frames, always drained). With a
//  ROUTER (rid not NULL) the first frame is the routing id, copied to rid
//  (rid_cap bytes, at least 256) with its length in *rid_len. Then exactly
//  one body frame must follow: none or more than one is LOOM_EPROTO. The
//  body is decoded as loom_wire_decode does. flags: 0 or ZMQ_DONTWAIT.
//  Returns 0 with *msg_p set; LOOM_EAGAIN if nothing was there;
//  LOOM_EPROTO (message consumed and refused, *msg_p NULL); LOOM_EIO when
//  the socket failed (e.g. interrupted: ETERM/EINTR); LOOM_ENOMEM. A
//  routing id longer than rid_cap is refused as LOOM_EPROTO. A refused
//  message still leaves its sender's routing id in rid / *rid_len (0 if
//  none was read), so the caller can answer it with an Error. With rid
//  NULL on a ROUTER, messages arrive as two frames and are all refused.
int loom_wire_recv(void *sock, void *rid, size_t rid_cap, size_t *rid_len, loom_msg **msg_p,
                   int flags);

//  The same, with the sender's ZAP User-Id (with CURVE and zauth: the Z85
//  text of its public key) copied into user (user_cap bytes; "" when the
//  connection has none, or it does not fit).
int loom_wire_recv_user(void *sock, void *rid, size_t rid_cap, size_t *rid_len, loom_msg **msg_p,
                        int flags, char *user, size_t user_cap);

//  True if m is a TaskBatch or ResultBatch that loom_wire_recv read in
//  the plain layout (as encode writes a batch without files, errors,
//  partial or blob counters) and still holds its frame: it can go on as
//  the same bytes.
bool loom_wire_forwardable(const loom_msg *m);

//  Send a forwardable message on as the frame it came in, with its map id
//  replaced by `map` (no encoding, no copy), preceded by the routing id
//  when rid is not NULL. Takes *msg_p whatever happens (sets it NULL): the
//  spans it held are gone. Returns 0 or the codes of loom_wire_send. The
//  map id is written into the frame's bytes: fine for a frame received
//  over ipc or tcp, and over inproc when its sender let go of its bytes
//  (loom's senders all do: nothing sends the same bytes twice).
int loom_wire_forward(void *sock, const void *rid, size_t rid_len, loom_msg **msg_p, uint64_t map,
                      int flags);

#ifdef __cplusplus
}
#endif

#endif
