/*  broker: routes loom's task channel between clients and worker
    processes (sessions, heartbeats, scheduling, retries, reduce folding),
    as a CZMQ actor. `loom broker` runs one; embedded mode runs one inside
    the client. runtime/wire/PROTOCOL.md is the contract it implements.  */

#ifndef LOOM_BROKER_H
#define LOOM_BROKER_H

#include <czmq.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Options (all optional: zero / NULL means the default, then the
//  environment variable named, then the built-in default).
typedef struct {
    //  CURVE: accept only peers whose public certificates are in curve_dir
    //  (zauth), serving with the broker's own certificate cert_path (both
    //  keys: `loom keygen broker` writes broker and broker_secret). Both or
    //  neither.
    const char *curve_dir;
    const char *cert_path;
    //  Limits. A peer going over gets an Error (or, for frames, libzmq
    //  drops its connection); nobody else is affected.
    uint32_t max_frame;     //  bytes per frame, LOOM_MAX_FRAME (64 MiB)
    uint32_t max_batch;     //  items per TaskBatch, LOOM_MAX_BATCH (1024, also the most)
    uint32_t max_maps;      //  open maps per client, LOOM_MAX_MAPS (1024)
    uint32_t max_pipelines; //  open pipelines per client, LOOM_MAX_PIPELINES (1024)
    //  Bytes one client (one blob-channel connection) may hold in the
    //  blob store, LOOM_BLOB_QUOTA: its stored uploads plus those in
    //  progress. 0 = the store's cap (--store-size, 16 GiB) is the only
    //  limit. An upload over it gets an Error naming the quota.
    uint64_t blob_quota;
} loom_broker_opts;

//  The broker actor (zactor_new(loom_broker_actor, opts): opts NULL or a
//  loom_broker_opts, read before zactor_new returns). Pipe commands:
//  "BIND" task_ep blob_ep  -> replies "OK" bound_task bound_blob | "ERROR" message
//      (blob_ep may be "" = none; `tcp://127.0.0.1:*` allowed: the reply
//      carries the real endpoint; a bad CURVE setup fails here)
//  "BIND-LOCAL" inproc_ep -> replies "OK" | "ERROR": after BIND, a second
//      task endpoint (inproc:// only) for a client in the broker's process,
//      whose messages then skip libzmq's I/O thread (embedded mode)
//  "STATS"   -> replies one frame: an encoded Stats message (loom_wire_encode)
//  "STORE" dir cap ttl_ms [temp] -> replies "OK" | "ERROR": the blob store's
//      directory ("" = a private temp dir), size cap in bytes and time-to-live
//      after its last pipeline closes ("0" = defaults: 16 GiB, 10 min);
//      "temp": remove dir at stop. Send before peers connect.
//  "VERBOSE" -> log every message (no reply)
//  "$TERM"   -> stops
//  Environment: LOOM_HEARTBEAT_MS (default 1000), liveness 3.
void loom_broker_actor(zsock_t *pipe, void *args);

//  Convenience: start an actor and bind. Returns the actor with
//  *bound_task and *bound_blob (malloc'd; *bound_blob "" when blob_ep is
//  NULL or ""), or NULL with *error (malloc'd) on failure. Any of the out
//  pointers may be NULL.
//  Send STORE and wait for the answer. Returns 0 or LOOM_EIO.
int loom_broker_set_store(zactor_t *broker, const char *dir, uint64_t cap, int64_t ttl_ms,
                          bool temporary);

zactor_t *loom_broker_start(const char *task_ep, const char *blob_ep, char **bound_task,
                            char **bound_blob, char **error);

//  The same with options (opts may be NULL). A bad CURVE directory or
//  certificate fails here, before anything binds.
zactor_t *loom_broker_start_opts(const loom_broker_opts *opts, const char *task_ep,
                                 const char *blob_ep, char **bound_task, char **bound_blob,
                                 char **error);

#ifdef __cplusplus
}
#endif

#endif
