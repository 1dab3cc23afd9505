/*  failure_policy: retries of failed items, halting, what a worker
    process's end means. See failure_policy.h.  */

#include "failure_policy.h"

#include <loom/errors.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

bool
loom_retry_status(int status)
{
    return status == LOOM_ETASK || status == LOOM_ETIMEDOUT;
}

int64_t
loom_retry_backoff_ms(uint32_t retry)
{
    int64_t ms = LOOM_RETRY_BACKOFF_MS;
    for (uint32_t i = 1; i < retry && ms < LOOM_RETRY_BACKOFF_MAX_MS; i++)
        ms *= 2;
    return ms < LOOM_RETRY_BACKOFF_MAX_MS ? ms : LOOM_RETRY_BACKOFF_MAX_MS;
}

void
loom_halt_message(char *buf, size_t cap, uint32_t n)
{
    snprintf(buf, cap, "not run: map halted after %u failure%s", n, n == 1 ? "" : "s");
}

//  Bytes as whole MiB, rounded up (a process holding 1 byte held "1 MiB").
static unsigned long long
s_mib(uint64_t bytes)
{
    return (unsigned long long)((bytes + (1 << 20) - 1) >> 20);
}

int
loom_worker_exit_reason(const loom_wire_worker_exit *we, char *buf, size_t cap, bool *clean)
{
    *clean = false;
    unsigned pid = we->pid;
    bool over = we->rss_limit && we->max_rss >= we->rss_limit;
    if (we->signal > 0) {
        const char *name = sigabbrev_np(we->signal);
        if (we->signal == SIGKILL && we->oom_kill) {
            snprintf(buf, cap,
                     "worker process %u ran out of memory: killed by the kernel's OOM killer "
                     "(SIGKILL) holding %llu MiB",
                     pid, s_mib(we->max_rss));
            return LOOM_ENOMEM;
        }
        if (we->signal == SIGKILL && over) {
            snprintf(buf, cap,
                     "worker process %u ran out of memory: killed by signal 9 (SIGKILL) "
                     "holding %llu MiB, over its limit of %llu MiB (--max-rss)",
                     pid, s_mib(we->max_rss), s_mib(we->rss_limit));
            return LOOM_ENOMEM;
        }
        int n = snprintf(buf, cap, "worker process %u killed by signal %d (SIG%s)", pid, we->signal,
                         name ? name : "?");
        //  SIGKILL is what the kernel's OOM killer sends: say how much it held.
        if (we->signal == SIGKILL && we->max_rss && n > 0 && (size_t)n < cap)
            snprintf(buf + n, cap - (size_t)n, " holding %llu MiB", s_mib(we->max_rss));
        return LOOM_ECRASHED;
    }
    if (we->status == LOOM_WORKER_EXIT_MEMORY && we->rss_limit) {
        snprintf(buf, cap,
                 "worker process %u ran out of memory: it held %llu MiB, over its limit of "
                 "%llu MiB (--max-rss)",
                 pid, s_mib(we->max_rss), s_mib(we->rss_limit));
        return LOOM_ENOMEM;
    }
    snprintf(buf, cap, "worker process %u exited with status %d", pid, we->status);
    //  Status 0 is a recycled or stopped process; 124 one that answered
    //  its timed-out item itself: neither is the fault of the items it held.
    *clean = we->status == 0 || we->status == 124;
    return LOOM_ECRASHED;
}
