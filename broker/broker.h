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
//  "VERBOSE" -> log every message (no reply)
//  "$TERM"   -> stops
//  Environment: LOOM_HEARTBEAT_MS (default 1000), liveness 3.
void loom_broker_actor(zsock_t *pipe, void *args);

//  Convenience: start an actor and bind. Returns the actor with
//  *bound_task and *bound_blob (malloc'd; *bound_blob "" when blob_ep is
//  NULL or ""), or NULL with *error (malloc'd) on failure. Any of the out
//  pointers may be NULL.
zactor_t *loom_broker_start(const char *task_ep, const char *blob_ep, char **bound_task,
                            char **bound_blob, char **error);

#ifdef __cplusplus
}
#endif

#endif
