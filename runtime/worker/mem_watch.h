/*  mem_watch: what a worker host knows about memory (issue 21: memory
    limits). A worker process reads its own resident size to keep to
    `--max-rss` (recycled when over it after a batch, ended when over it
    while an item runs); the supervisor reads the kernel's OOM-kill counts
    (the cgroup's, and the system's in /proc/vmstat) to tell a death by the
    OOM killer from another SIGKILL.  */

#ifndef LOOM_MEM_WATCH_H
#define LOOM_MEM_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Bytes as whole MiB, rounded up (for messages: a process over a limit
//  of L MiB is said to hold more than L).
static inline unsigned long long
loom__mib(uint64_t bytes)
{
    return (unsigned long long)((bytes >> 20) + ((bytes & ((1u << 20) - 1)) != 0));
}

//  This process's resident memory in bytes (/proc/self/statm), 0 if it
//  cannot be read.
uint64_t loom__rss_self(void);

//  True if this process holds more than limit bytes even after giving
//  freed memory back to the system (malloc_trim, only tried when over);
//  *rss gets what it holds. limit 0: never.
bool loom__rss_over(uint64_t limit, uint64_t *rss);

//  How many processes the kernel's OOM killer has killed, as far as this
//  process can see: the `oom_kill` count of its memory cgroup (v2
//  memory.events, v1 memory.oom_control) plus the system's (/proc/vmstat).
//  Only a change means something. 0 if none can be read.
uint64_t loom__oom_kills(void);

//  The number after `key` on a line "key N" of text (the format of
//  /proc/vmstat and the cgroup files); false if no line has it.
bool loom__key_value(const char *text, const char *key, uint64_t *value);

//  The files loom__oom_kills reads, for this process: into buf (cap
//  bytes) the path of file `which` (0: /proc/vmstat, 1: the cgroup v2
//  memory.events, 2: the cgroup v1 memory.oom_control). False if there is
//  no such file to read.
bool loom__oom_kill_path(int which, char *buf, size_t cap);

#endif
