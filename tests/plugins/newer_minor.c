/*  newer_minor: a descriptor built by hand for plugin ABI 1.99, which a 1.0
    worker must refuse: the plugin may call host functions it lacks.  */

#include <loom/plugin.h>

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo},
    {0},
};

LOOM_PLUGIN_EXPORT const loom_plugin_def *LOOM_PLUGIN_ENTRY(void);

LOOM_PLUGIN_EXPORT const loom_plugin_def *
LOOM_PLUGIN_ENTRY(void)
{
    static const loom_plugin_def def = {
        .magic = LOOM_PLUGIN_MAGIC,
        .abi_major = LOOM_PLUGIN_ABI_MAJOR,
        .abi_minor = 99,
        .struct_size = sizeof(loom_plugin_def),
        .task_size = sizeof(loom_task_def),
        .name = "newer_minor",
        .version = "1.0.0",
        .tasks = s_tasks,
    };
    return &def;
}
