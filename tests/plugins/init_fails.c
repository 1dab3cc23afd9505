/*  init_fails: a plugin whose init returns -1, so every map that uses it
    in a worker process must fail with the plugin's name.  */

#include <loom/plugin.h>

LOOM_PLUGIN_EXPORT int init_fails_calls;

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

static int
s_init(loom_worker *w, void **state)
{
    (void)w;
    (void)state;
    init_fails_calls++;
    return -1;
}

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo},
    {0},
};

LOOM_PLUGIN(.name = "init_fails", .version = "1.0.0", .tasks = s_tasks, .init = s_init);
