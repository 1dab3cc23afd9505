/*  failure_policy: what the broker makes of failures, as pure functions
    the scheduler and the broker share: which failed results a map retries
    (retry_failed) and after how long, what the items of a map halted after
    its failures (halt_after_failures) say, and what a worker process's end
    means for the items it held (a crash, a clean exit, running out of
    memory).  */

#ifndef LOOM_FAILURE_POLICY_H
#define LOOM_FAILURE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define LOOM_RETRY_BACKOFF_MS 100       //  before the first retry of a failed item
#define LOOM_RETRY_BACKOFF_MAX_MS 30000 //  doubling each time up to this

//  Whether a result with this status is a failure retry_failed retries:
//  the task failed (LOOM_ETASK) or ran past its timeout (LOOM_ETIMEDOUT).
bool loom_retry_status(int status);

//  How long a failed item waits before its retry number `retry` (from 1):
//  LOOM_RETRY_BACKOFF_MS, doubling each time, at most LOOM_RETRY_BACKOFF_MAX_MS.
int64_t loom_retry_backoff_ms(uint32_t retry);

//  The error of the items of a map halted after n failures:
//  "not run: map halted after N failure(s)".
void loom_halt_message(char *buf, size_t cap, uint32_t n);

//  What a worker process's end (a supervisor's WorkerExit) means for the
//  batch it was running: the reason its items keep ("worker process P
//  killed by signal 9 (SIGKILL)", "... ran out of memory: it held 312 MiB,
//  over its limit of 100 MiB (--max-rss)"), the status they fail with
//  when out of retries (LOOM_ECRASHED, or LOOM_ENOMEM when it ran out of
//  memory), and whether the exit was clean (recycled, stopped, or 124
//  after answering its own timed-out item: nothing is charged).
int loom_worker_exit_reason(const loom_wire_worker_exit *we, char *buf, size_t cap, bool *clean);

#endif
