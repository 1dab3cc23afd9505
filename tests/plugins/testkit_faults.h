/*  testkit_faults.h: the testkit tasks for retries and memory limits
    (included once, by testkit.c).

    flaky  args: a directory. Input "K" or "K MS": appends "WORKER_ID T\n"
           (T: CLOCK_MONOTONIC ms) to DIR/INDEX, sleeps MS ms, and fails
           its first K runs ("flaky: run N of item I fails"); a later run
           outputs the whole file, one line per run so far.
    alloc  Input "MB" or "MB MS": allocates MB MiB, touches every page,
           holds it MS ms, frees it; output "MB". A failed allocation
           (RLIMIT_AS) fails the task: "alloc: cannot allocate MB MiB".
    leak   Input "MB": as alloc, but never frees it; output "PID TOTAL",
           TOTAL the MiB leaked by this process so far.
    oom    Input "MB": allocates and touches MB MiB, then dies by SIGKILL,
           as the kernel's OOM killer would kill it.  */

#ifndef TESTKIT_FAULTS_H
#define TESTKIT_FAULTS_H

#include <loom/plugin.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

//  "A" or "A B" (non-negative decimals) from the input; false otherwise.
static bool
s_two_numbers(loom_task *t, long long *a, long long *b)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    char buf[48];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, in, n);
    buf[n] = 0;
    *b = 0;
    int k = sscanf(buf, "%lld %lld", a, b);
    return k >= 1 && *a >= 0 && *b >= 0;
}

static void
s_sleep_ms(long long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int
s_flaky(loom_task *t)
{
    long long fails, ms;
    if (!s_two_numbers(t, &fails, &ms))
        return loom_task_fail(t, "flaky: want 'K' or 'K MS' as text");
    size_t dn;
    const char *dir = loom_task_args(t, &dn);
    char path[4096];
    if (dn == 0 || dn > 3000)
        return loom_task_fail(t, "flaky: want a directory as args");
    snprintf(path, sizeof path, "%.*s/%llu", (int)dn, dir, (unsigned long long)loom_task_index(t));
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    FILE *f = fopen(path, "a+");
    if (!f)
        return loom_task_fail(t, "flaky: cannot open %s", path);
    fprintf(f, "%u %lld\n", (unsigned)loom_task_worker_id(t),
            (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
    fflush(f);
    rewind(f);
    char log[4096];
    size_t len = fread(log, 1, sizeof log, f);
    fclose(f);
    long long runs = 0;
    for (size_t i = 0; i < len; i++)
        runs += log[i] == '\n';
    if (ms)
        s_sleep_ms(ms);
    if (runs <= fails)
        return loom_task_fail(t, "flaky: run %lld of item %llu fails", runs,
                              (unsigned long long)loom_task_index(t));
    return loom_task_output(t, log, len);
}

//  MB MiB of fresh pages, every one written, or NULL; s_untouch gives
//  them back. mmap, not malloc: MALLOC_PERTURB_ (meson test sets it)
//  would fill a malloc'd block inside malloc, holding its lock.
static char *
s_touched(long long mb)
{
    size_t size = ((size_t)mb << 20) + 1;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    volatile char *v = p; //  writes the compiler may not drop, though p is never read
    for (size_t i = 0; i < size; i += (size_t)(page > 0 ? page : 4096))
        v[i] = (char)(i >> 12 | 1);
    return p;
}

static void
s_untouch(char *p, long long mb)
{
    munmap(p, ((size_t)mb << 20) + 1);
}

static int
s_alloc(loom_task *t)
{
    long long mb, ms;
    if (!s_two_numbers(t, &mb, &ms) || mb > 65536)
        return loom_task_fail(t, "alloc: want 'MB' or 'MB MS' as text");
    char *p = s_touched(mb);
    if (!p)
        return loom_task_fail(t, "alloc: cannot allocate %lld MiB", mb);
    if (ms)
        s_sleep_ms(ms);
    s_untouch(p, mb);
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", mb);
    return loom_task_output(t, buf, (size_t)n);
}

static long long s_leaked_mb; //  this process's leak so far

static int
s_leak(loom_task *t)
{
    long long mb, ms;
    if (!s_two_numbers(t, &mb, &ms) || mb > 65536)
        return loom_task_fail(t, "leak: want 'MB' as text");
    char *p = s_touched(mb);
    if (!p)
        return loom_task_fail(t, "leak: cannot allocate %lld MiB", mb);
    s_leaked_mb += mb; //  p is never freed: that is the point
    char buf[48];
    int n = snprintf(buf, sizeof buf, "%d %lld", (int)getpid(), s_leaked_mb);
    return loom_task_output(t, buf, (size_t)n);
}

static int
s_oom(loom_task *t)
{
    long long mb, ms;
    if (!s_two_numbers(t, &mb, &ms) || mb > 65536)
        return loom_task_fail(t, "oom: want 'MB' as text");
    char *p = s_touched(mb);
    if (!p)
        return loom_task_fail(t, "oom: cannot allocate %lld MiB", mb);
    raise(SIGKILL);
    s_untouch(p, mb);
    return loom_task_fail(t, "oom: still alive after SIGKILL");
}

#define TESTKIT_FAULT_TASKS                                                                        \
    {.name = "flaky", .run = s_flaky, .doc = "fails its first K runs per item (args: a dir)"},     \
        {.name = "alloc", .run = s_alloc, .doc = "allocates and touches MB MiB, then frees it"},   \
        {.name = "leak", .run = s_leak, .doc = "allocates and touches MB MiB, never freed"},       \
    {                                                                                              \
        .name = "oom", .run = s_oom, .doc = "allocates and touches MB MiB, then SIGKILL"           \
    }

#endif
