/*  testkit: a plugin for tests, with one task per behaviour a test needs:
    tasks that fail, crash, sleep, print their args, worker id and init
    state, make big outputs, and sum with a reduce.

    init counts its calls in a static and stores the count as the state;
    fini counts its calls too. Both counts are exported (testkit_init_calls,
    testkit_fini_calls) so an in-process test can dlsym them.  */

#include <loom/plugin.h>

#include "byte_sum.h"
#include "testkit_faults.h"

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

LOOM_PLUGIN_EXPORT int testkit_init_calls;
LOOM_PLUGIN_EXPORT int testkit_fini_calls;

//  A non-negative decimal from text input; false if it is not one.
static bool
s_number(loom_task *t, long long *value)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, in, n);
    buf[n] = 0;
    char *end;
    *value = strtoll(buf, &end, 10);
    return *end == 0 && *value >= 0;
}

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

//  The input twice, in two output calls (an output that grows).
static int
s_twice(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    int rc = loom_task_output(t, in, n);
    return rc ? rc : loom_task_output(t, in, n);
}

static int
s_fail(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    return loom_task_fail(t, "testkit fail: input was '%.*s'", (int)n, in);
}

static int
s_crash(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    if (n == 5 && !memcmp(in, "crash", 5)) {
        raise(SIGSEGV);
        abort(); //  Should SIGSEGV be caught or ignored.
    }
    return loom_task_output(t, in, n);
}

static int
s_sleep(loom_task *t)
{
    long long ms;
    if (!s_number(t, &ms))
        return loom_task_fail(t, "sleep: want milliseconds as text");
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    return loom_task_output(t, "slept", 5);
}

//  As sleep, in 5 ms steps, returning early once the map is cancelled
//  (output "stopped" then, which the worker must drop).
static int
s_sleep_coop(loom_task *t)
{
    long long ms;
    if (!s_number(t, &ms))
        return loom_task_fail(t, "sleep_coop: want milliseconds as text");
    for (long long left = ms; left > 0; left -= 5) {
        if (loom_task_cancelled(t))
            return loom_task_output(t, "stopped", 7);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 5000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    return loom_task_output(t, "slept", 5);
}

//  The wall clock when it ran, in ms since the epoch (CLOCK_REALTIME).
static int
s_clock(loom_task *t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld",
                     (long long)ts.tv_sec * 1000 + (long long)(ts.tv_nsec / 1000000));
    return loom_task_output(t, buf, (size_t)n);
}

//  The worker process's pid.
static int
s_pid(loom_task *t)
{
    char buf[16];
    int n = snprintf(buf, sizeof buf, "%d", (int)getpid());
    return loom_task_output(t, buf, (size_t)n);
}

static int
s_args(loom_task *t)
{
    size_t n;
    const void *args = loom_task_args(t, &n);
    return loom_task_output(t, args, n);
}

static int
s_workerid(loom_task *t)
{
    char buf[16];
    int n = snprintf(buf, sizeof buf, "%u", (unsigned)loom_task_worker_id(t));
    return loom_task_output(t, buf, (size_t)n);
}

static int
s_state(loom_task *t)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d", (int)(intptr_t)loom_task_state(t));
    return loom_task_output(t, buf, (size_t)n);
}

//  N bytes, N from the text input, byte i = i % 251, written in pieces so
//  the output buffer has to grow.
static int
s_big(loom_task *t)
{
    long long want;
    if (!s_number(t, &want))
        return loom_task_fail(t, "big: want a byte count as text");
    unsigned char piece[4096];
    for (long long done = 0; done < want;) {
        size_t k = want - done < (long long)sizeof piece ? (size_t)(want - done) : sizeof piece;
        for (size_t i = 0; i < k; i++)
            piece[i] = (unsigned char)((done + (long long)i) % 251);
        int rc = loom_task_output(t, piece, k);
        if (rc)
            return rc;
        done += (long long)k;
    }
    return 0;
}

static int
s_index(loom_task *t)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)loom_task_index(t));
    return loom_task_output(t, buf, (size_t)n);
}

//  Returns the (possibly negative) number in its input without calling
//  fail: the executor must turn it into a failure with a message.
static int
s_ret(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    char buf[32];
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, in, n);
    buf[n] = 0;
    return atoi(buf);
}

static int
s_log(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    loom_task_log(t, "logging '%.*s'", (int)n, in);
    return loom_task_output(t, in, n);
}

//  Shares and files are not wired yet: reports what the host gives back.
static int
s_shared(loom_task *t)
{
    size_t n = 99;
    const void *p = loom_task_shared(t, "x", &n);
    const char *path = loom_task_shared_path(t, "x");
    const char *file = loom_task_file(t, "x");
    const char *out = loom_task_output_file(t, "x");
    char buf[64];
    int k = snprintf(buf, sizeof buf, "%s %zu %s %s %s", p ? "p" : "null", n, path ? "p" : "null",
                     file ? "p" : "null", out ? "p" : "null");
    return loom_task_output(t, buf, (size_t)k);
}

//  Input: a share name. Output: "LEN SUM" (the bytes' sum mod 2^32), or
//  "null" when the pipeline has no such share.
static int
s_shared_sum(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    char name[256];
    if (n >= sizeof name)
        return loom_task_fail(t, "shared_sum: name too long");
    memcpy(name, in, n);
    name[n] = 0;
    size_t len = 0;
    const unsigned char *p = loom_task_shared(t, name, &len);
    char buf[64];
    int k;
    if (!p)
        k = snprintf(buf, sizeof buf, "null");
    else
        k = snprintf(buf, sizeof buf, "%zu %u", len, loom_test_byte_sum(p, len));
    return loom_task_output(t, buf, (size_t)k);
}

//  Copies attached file "in" to output file "out", upper-cased; output:
//  its size. Input "names": "A B" for output_file("../x") and ("a/b"),
//  each "null" when refused.
static int
s_file_copy(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    if (n == 5 && !memcmp(in, "names", 5)) {
        const char *a = loom_task_output_file(t, "../x");
        const char *b = loom_task_output_file(t, "a/b");
        char buf[32];
        int k = snprintf(buf, sizeof buf, "%s %s", a ? "p" : "null", b ? "p" : "null");
        return loom_task_output(t, buf, (size_t)k);
    }
    const char *src = loom_task_file(t, "in");
    if (!src)
        return loom_task_fail(t, "file_copy: no file 'in'");
    const char *dst = loom_task_output_file(t, "out");
    if (!dst)
        return loom_task_fail(t, "file_copy: no output path");
    FILE *f = fopen(src, "rb");
    FILE *g = fopen(dst, "wb");
    if (!f || !g) {
        if (f)
            fclose(f);
        if (g)
            fclose(g);
        return loom_task_fail(t, "file_copy: cannot open %s or %s", src, dst);
    }
    long size = 0;
    int c;
    while ((c = fgetc(f)) != EOF) {
        fputc(c >= 'a' && c <= 'z' ? c - 32 : c, g);
        size++;
    }
    fclose(f);
    fclose(g);
    char buf[32];
    int k = snprintf(buf, sizeof buf, "%ld", size);
    return loom_task_output(t, buf, (size_t)k);
}

static int
s_sum(loom_task *t)
{
    long long v;
    if (!s_number(t, &v))
        return loom_task_fail(t, "sum: want a non-negative decimal");
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", v);
    return loom_task_output(t, buf, (size_t)n);
}

//  As sum, and writes its input to output file "out"; an attached file
//  "in", if any, must hold the same text.
static int
s_sum_file(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    const char *src = loom_task_file(t, "in");
    if (src) {
        char buf[64];
        FILE *f = fopen(src, "rb");
        size_t k = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f)
            fclose(f);
        if (k != n || memcmp(buf, in, n) != 0)
            return loom_task_fail(t, "sum_file: file 'in' does not hold the input");
    }
    const char *dst = loom_task_output_file(t, "out");
    FILE *g = dst ? fopen(dst, "wb") : NULL;
    if (!g)
        return loom_task_fail(t, "sum_file: no output file");
    fwrite(in, 1, n, g);
    if (fclose(g) != 0)
        return loom_task_fail(t, "sum_file: cannot write %s", dst);
    return s_sum(t);
}

static int
s_sum_reduce(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    char x[24], y[24];
    if (an == 0 || an >= sizeof x || bn == 0 || bn >= sizeof y)
        return loom_task_fail(t, "sum reduce: want two decimal texts");
    memcpy(x, a, an);
    x[an] = 0;
    memcpy(y, b, bn);
    y[bn] = 0;
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", atoll(x) + atoll(y));
    return loom_task_output(t, buf, (size_t)n);
}

//  Reduce that fails, to see fold failures travel.
static int
s_fail_reduce(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    (void)a;
    (void)b;
    return loom_task_fail(t, "failing reduce of %zu and %zu bytes", an, bn);
}

static int
s_init(loom_worker *w, void **state)
{
    (void)w;
    testkit_init_calls++;
    *state = (void *)(intptr_t)testkit_init_calls;
    return 0;
}

static void
s_fini(void *state)
{
    (void)state;
    testkit_fini_calls++;
}

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo, .doc = "output = input"},
    {.name = "twice", .run = s_twice, .doc = "output = input twice, in two calls"},
    {.name = "fail", .run = s_fail, .reduce = s_fail_reduce, .doc = "fails, naming the input"},
    {.name = "crash", .run = s_crash, .doc = "SIGSEGV on input 'crash', else echo"},
    {.name = "sleep", .run = s_sleep, .doc = "sleeps the input's milliseconds"},
    {.name = "sleep_coop", .run = s_sleep_coop, .doc = "as sleep, stops when cancelled"},
    {.name = "clock", .run = s_clock, .doc = "output = the wall clock in ms (CLOCK_REALTIME)"},
    {.name = "pid", .run = s_pid, .doc = "output = the worker process's pid"},
    {.name = "args", .run = s_args, .doc = "output = the map's args"},
    {.name = "workerid", .run = s_workerid, .doc = "output = the worker id as text"},
    {.name = "state", .run = s_state, .doc = "output = the init call count init stored"},
    {.name = "big", .run = s_big, .doc = "output = N bytes (N from the input text)"},
    {.name = "index", .run = s_index, .doc = "output = the item index as text"},
    {.name = "ret", .run = s_ret, .doc = "returns the input number without calling fail"},
    {.name = "log", .run = s_log, .doc = "logs the input, then echoes it"},
    {.name = "shared", .run = s_shared, .doc = "reports what the share/file calls give"},
    {.name = "sum", .run = s_sum, .reduce = s_sum_reduce, .doc = "decimal text; reduce: sum"},
    {.name = "sum_file",
     .run = s_sum_file,
     .reduce = s_sum_reduce,
     .doc = "as sum, and the input in output file 'out'"},
    {.name = "file_copy", .run = s_file_copy, .doc = "attached 'in' upper-cased to output 'out'"},
    {.name = "shared_sum", .run = s_shared_sum, .doc = "'LEN SUM' of the share named by the input"},
    TESTKIT_FAULT_TASKS,
    {0},
};

LOOM_PLUGIN(.name = "testkit", .version = "1.2.3", .tasks = s_tasks, .init = s_init,
            .fini = s_fini);
