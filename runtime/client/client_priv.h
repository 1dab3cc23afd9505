/*  client_priv: the client's internals, shared by client.c (connection,
    I/O thread, pipelines, dispatch of broker messages) and map.c (maps:
    submission batching, window, reorder buffer, results).

    Threads: the API thread (the user's) owns every struct here; the link
    (client.c) owns the DEALER to the broker under a mutex, shared by the
    API thread, which sends and waits on it directly, and a background
    thread that keeps the session alive while the API thread is away.  */

#ifndef LOOM_CLIENT_PRIV_H
#define LOOM_CLIENT_PRIV_H

#include <czmq.h>
#include <loom/loom.h>

#include "base.h"
#include "wire.h"

typedef struct loom__cluster loom__cluster;
typedef struct loom__link loom__link;

//  A decoded message from the broker, shared by the results that point
//  into it; freed when the last of them has been delivered.
typedef struct {
    loom_msg *msg;
    size_t refs;
} loom__rmsg;

//  One buffered result: where it lives.
typedef struct {
    loom__rmsg *rm;
    const loom_wire_result *res;
} loom__rref;

//  An input kept until its result arrives (for a resubmit after a broker
//  restart): open addressing on index, linear probing.
typedef struct {
    uint64_t index; //  UINT64_MAX: empty slot
    size_t len;
    uint8_t *data; //  owned
} loom__input;

struct loom_client {
    loom__link *link;          //  the DEALER to the broker, its session (client.c)
    char *endpoint;            //  broker endpoint
    loom__cluster *cluster;    //  embedded mode, else NULL
    loom_wire_welcome welcome; //  broker's Welcome (defaults filled in)
    int error;                 //  0, or LOOM_ECONNECT once the broker is lost
    uint64_t next_id;          //  pipeline and map ids, unique in the session
    loom_pipeline *pipelines;  //  open pipelines (list)
    loom_map *maps;            //  every open map (list), for dispatch
    loom_map *last_map;        //  dispatch cache
    bool in_callback;          //  on_result is running: no reentrant calls
    char *blob_ep;             //  blob channel endpoint (Welcome), NULL if none
    char *cert_path;           //  CURVE: this client's certificate, or NULL (curve.h)
    char *server_key;          //  CURVE: the broker's key, or NULL
    void *blob;                //  DEALER to it, made at the first share (share.c)
    char *blob_store;          //  the broker's store dir when on this host (Welcome), or NULL
    uint64_t reconnects;       //  sessions resumed after the broker was lost
};

struct loom_pipeline {
    loom_client *client;
    uint64_t id;
    char *name;
    loom_pipeline *next;
    loom_wire_file *shares; //  name -> blob, sent in every MapOpen (share.c)
    size_t nshares;
    struct loom__share_src *share_src; //  where each share's bytes are kept (share.c)
};

struct loom_map {
    loom_client *client;
    loom_pipeline *pipeline;
    uint64_t id;
    loom_map *next; //  in the client's list
    //  Options (and the definition, to open the map again on a new session)
    char *plugin, *version, *task;
    void *args;
    size_t args_len;
    uint32_t chunk;
    int32_t retries;
    uint32_t timeout_ms;
    uint32_t retry_failed;    //  runs more for a failed item (the broker retries)
    uint32_t halt_after;      //  halt_after_failures; 0: never
    uint32_t init_timeout_ms; //  as sent: 0 default, UINT32_MAX none
    bool ordered;
    bool reduce;
    uint64_t window;
    void (*on_result)(const loom_result *r, void *user);
    void *user;
    //  State
    bool closed;           //  loom_map_close called
    bool ended;            //  broker's MapEnd received
    int error;             //  Error{map} from the broker, or 0
    char *error_text;      //  its message
    uint64_t submitted;    //  next index
    uint64_t answered;     //  distinct indices with a result received
    uint64_t delivered;    //  item results given to the user
    uint64_t done, failed; //  delivered, by status
    uint64_t dropped;      //  duplicate or unknown results
    uint64_t failures;     //  distinct indices with a failed result received
    bool halted;           //  failures reached halt_after: submit refuses more
    bool reduced_seen;     //  the LOOM_REDUCED_INDEX result came
    int first_status;      //  reduce maps: the first failure delivered, or 0
    char *first_error;     //  its message (owned)
    //  Done bitmap, one bit per index
    uint64_t *seen;
    size_t seen_words;
    //  In-flight inputs
    loom__input *inputs;
    size_t inputs_cap; //  power of two
    size_t inputs_count;
    //  Pending TaskBatch
    loom_wire_item *pending;
    size_t npending;
    size_t pending_bytes;
    size_t batch_items; //  flush at this many items
    size_t batch_bytes; //  or this many bytes
    size_t max_item;    //  larger items: LOOM_ETOOBIG
    //  Ordered mode: reorder ring of `window` slots, by index % window
    loom__rref *ring;
    uint64_t released; //  next index to release
    //  Results ready for next (a growable ring)
    loom__rref *ready;
    size_t ready_cap, ready_head, ready_count;
    //  The result last returned by next, alive until the next call
    loom__rref cur;
    //  Files (map_files.c): the next item's FileRefs during submit_files,
    //  and the results' output files, downloaded, alive until destroy
    const loom_wire_file *next_files;
    size_t next_nfiles;
    struct loom__map_files *files;
};

//  Encode m and send it to the broker. While the DEALER is full, keeps
//  receiving from the broker. Returns 0 or a negative code.
int loom__client_send(loom_client *c, const loom_msg *m);

//  Wait up to timeout_ms (-1: forever, 0: just look) for messages from the
//  broker and dispatch every one already there. Returns 1 if something
//  came, 0 on timeout, or c->error.
int loom__client_pump(loom_client *c, int timeout_ms);

//  The embedded cluster, for tests; NULL with a remote broker.
loom__cluster *loom__client_cluster(loom_client *c);

//  Map side of dispatch (map.c).
void loom__map_result(loom_map *m, loom__rmsg *rm, const loom_wire_result *r);
void loom__map_end(loom_map *m, uint64_t count);
void loom__map_error(loom_map *m, int code, const char *message);

//  On a new broker session: open the map again and resubmit every input
//  without a result (and MapEnd if closed). Returns 0 or a negative code.
int loom__map_resume(loom_map *m);

void loom__rmsg_unref(loom__rmsg **rm_p);

//  Free a pipeline's share list / the client's blob socket (share.c).
void loom__pipeline_shares_free(loom_pipeline *p);
void loom__client_blob_close(loom_client *c);

//  On a new broker session: make sure the broker holds every share of p
//  (BlobHave; re-upload what it lacks from the kept source). Returns 0, or
//  LOOM_ECONNECT with err naming the share that cannot be restored.
int loom__pipeline_shares_restore(loom_pipeline *p, char *err, size_t err_len);

//  Upload a hashed source to the broker (share.c). `what` names it in
//  the error logged on failure. Returns 0 once the broker holds it.
#include "blob_transfer.h"
void *loom__client_blob(loom_client *c); //  the blob DEALER, NULL if none
int loom__blob_put(loom_client *c, const char *what, const uint8_t *hash, uint64_t size,
                   loom_blob_reader rd, void *ctx);

//  Fill r's output files from res, downloading them into the map's
//  directory; a failed download turns r into a failure (map_files.c).
//  The combined result of a reduce map gets the files kept below instead.
void loom__map_result_files(loom_map *m, const loom_wire_result *res, loom_result *r);
//  A reduce map's successful item: download its output files now and keep
//  them for the combined result (a failure is named in that result).
void loom__map_keep_files(loom_map *m, const loom_wire_result *res);
void loom__map_files_free(loom_map *m);

//  Destroy every map of pipeline p (NULL: all of the client's).
void loom__maps_destroy(loom_client *c, loom_pipeline *p);

#endif
