/*  no_entry: a shared object with tasks but no loom entry symbol, as if
    its author forgot LOOM_PLUGIN(...). The loader must refuse it.  */

#include <loom/plugin.h>

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

//  Exported, so the library has symbols, just not the one loom wants.
LOOM_PLUGIN_EXPORT const loom_task_def no_entry_tasks[] = {
    {.name = "echo", .run = s_echo},
    {0},
};
