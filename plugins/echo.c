/*  echo: the smallest useful plugin. "echo" gives back its input (the
    task the benchmarks run, so they measure loom and not the task), and
    "fail" always fails, naming its input, to show how failures travel.
    "hash" is the benchmarks' CPU-bound task: its input is a uint64 round
    count; it runs that many rounds of FNV-1a over a 64-byte block and
    returns the 8-byte digest (tests/bench/bench_scaling.c runs the same loop
    in-process to calibrate 20 ms).  */

#include <loom/plugin.h>
#include <string.h>

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

static int
s_fail(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    int shown = n > 200 ? 200 : (int)n;
    return loom_task_fail(t, "echo: failing on purpose on input '%.*s'%s", shown, in,
                          n > 200 ? "..." : "");
}

static int
s_hash(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    uint64_t rounds;
    if (n != sizeof rounds)
        return loom_task_fail(t, "hash: want 8 bytes (a round count), got %zu", n);
    memcpy(&rounds, in, sizeof rounds);
    unsigned char block[64];
    memset(block, 0x5a, sizeof block);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t r = 0; r < rounds; r++) {
        for (size_t i = 0; i < sizeof block; i++) {
            h ^= block[i];
            h *= 0x100000001b3ULL;
        }
        block[r & 63] = (unsigned char)h;
    }
    return loom_task_output(t, &h, sizeof h);
}

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo, .doc = "output = input, unchanged"},
    {.name = "fail", .run = s_fail, .doc = "always fails, with the input in the message"},
    {.name = "hash", .run = s_hash, .doc = "CPU-bound: input uint64 N, N rounds of FNV-1a"},
    {0},
};

LOOM_PLUGIN(.name = "echo", .version = "1.0.0", .tasks = s_tasks);
