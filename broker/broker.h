/*  broker: routes loom's task channel between clients and worker
    processes (sessions, heartbeats, scheduling, retries, reduce folding),
    as a CZMQ actor. `loom broker` runs one; embedded mode runs one inside
    the client. runtime/wire/PROTOCOL.md is the contract it implements.  */

#ifndef LOOM_BROKER_H
#define LOOM_BROKER_H

#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

//  The broker actor (zactor_new(loom_broker_actor, NULL)). Pipe commands:
//  "BIND" task_ep blob_ep  -> replies "OK" bound_task bound_blob | "ERROR" message
//      (blob_ep may be "" = none; `tcp://127.0.0.1:*` allowed: the reply
//      carries the real endpoint)
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

#ifdef __cplusplus
}
#endif

#endif
