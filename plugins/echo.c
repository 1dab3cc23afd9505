/*  echo: the smallest useful plugin. "echo" gives back its input (the
    task the benchmarks run, so they measure loom and not the task), and
    "fail" always fails, naming its input, to show how failures travel.  */

#include <loom/plugin.h>

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

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo, .doc = "output = input, unchanged"},
    {.name = "fail", .run = s_fail, .doc = "always fails, with the input in the message"},
    {0},
};

LOOM_PLUGIN(.name = "echo", .version = "1.0.0", .tasks = s_tasks);
