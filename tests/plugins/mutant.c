/*  mutant: one plugin, many descriptors. The entry function reads
    $LOOM_MUTANT and returns a descriptor broken (or stretched) that way, so
    the ABI tests can check each of the loader's refusals and acceptances
    without a fixture file per case. The loader calls the entry again at
    every load, and dlcloses a refused library, so each load sees the
    current value.  */

#include <loom/plugin.h>

#include <stdlib.h>
#include <string.h>

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

static int
s_twice(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    int rc = loom_task_output(t, in, n);
    return rc ? rc : loom_task_output(t, in, n);
}

static const loom_task_def s_good[] = {{.name = "echo", .run = s_echo}, {0}};
static const loom_task_def s_bad_name[] = {{.name = "Echo", .run = s_echo}, {0}};
static const loom_task_def s_no_run[] = {{.name = "echo"}, {0}};
static const loom_task_def s_none[] = {{0}};
static const loom_task_def s_dup[] = {
    {.name = "echo", .run = s_echo}, {.name = "echo", .run = s_twice}, {0}};

//  A task definition from a future minor: bigger, read with its stride.
typedef struct {
    loom_task_def base;
    void *future[3];
} s_wide_task;

static const s_wide_task s_wide[] = {
    {.base = {.name = "echo", .run = s_echo}},
    {.base = {.name = "twice", .run = s_twice}},
    {{0}, {0}},
};

//  A descriptor from a future minor with the same major: bigger.
typedef struct {
    loom_plugin_def base;
    void *future[4];
} s_wide_def;

LOOM_PLUGIN_EXPORT const loom_plugin_def *LOOM_PLUGIN_ENTRY(void);

LOOM_PLUGIN_EXPORT const loom_plugin_def *
LOOM_PLUGIN_ENTRY(void)
{
    static loom_plugin_def def;
    static s_wide_def wide;
    static const uint32_t not_loom = 0x12345678;
    const char *how = getenv("LOOM_MUTANT");
    how = how ? how : "";
    def = (loom_plugin_def){.magic = LOOM_PLUGIN_MAGIC,
                            .abi_major = LOOM_PLUGIN_ABI_MAJOR,
                            .abi_minor = LOOM_PLUGIN_ABI_MINOR,
                            .struct_size = sizeof(loom_plugin_def),
                            .task_size = sizeof(loom_task_def),
                            .name = "mutant",
                            .version = "1.0.0",
                            .tasks = s_good};
    if (!strcmp(how, "null"))
        return NULL;
    if (!strcmp(how, "not_loom"))
        return (const loom_plugin_def *)(const void *)&not_loom;
    if (!strcmp(how, "bad_magic"))
        def.magic = 0x4c4f4f4du;
    else if (!strcmp(how, "truncated"))
        def.struct_size = (uint32_t)offsetof(loom_plugin_def, fini);
    else if (!strcmp(how, "no_name"))
        def.name = NULL;
    else if (!strcmp(how, "no_version"))
        def.version = NULL;
    else if (!strcmp(how, "no_tasks"))
        def.tasks = NULL;
    else if (!strcmp(how, "bad_plugin_name"))
        def.name = "Mutant";
    else if (!strcmp(how, "other_name"))
        def.name = "someone_else";
    else if (!strcmp(how, "small_task_size"))
        def.task_size = (uint32_t)offsetof(loom_task_def, doc);
    else if (!strcmp(how, "bad_task_name"))
        def.tasks = s_bad_name;
    else if (!strcmp(how, "no_run"))
        def.tasks = s_no_run;
    else if (!strcmp(how, "zero_tasks"))
        def.tasks = s_none;
    else if (!strcmp(how, "dup_task"))
        def.tasks = s_dup;
    else if (!strcmp(how, "minor0")) {
        //  Built for ABI 1.0: a 1.1 worker still loads it.
        def.abi_minor = 0;
        def.struct_size = (uint32_t)LOOM_PLUGIN_SIZE_1_0;
    } else if (!strcmp(how, "wide")) {
        wide.base = def;
        wide.base.struct_size = sizeof wide;
        wide.base.task_size = sizeof(s_wide_task);
        wide.base.tasks = &s_wide[0].base;
        return &wide.base;
    }
    return &def;
}
