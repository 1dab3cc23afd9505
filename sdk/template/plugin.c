/*  A loom plugin template: copy this file, rename the plugin and its
    tasks, and build it with

        loom plugin build plugin.c -o myplugin.so

    or with the Makefile next to this file (pkg-config loom-plugin). Put
    myplugin.so in a directory of the workers' plugin path
    (--plugin-path or $LOOM_PLUGIN_PATH), then run it over inputs:

        seq 1 100 | loom map myplugin upper --plugin-path .

    A plugin includes <loom/plugin.h> only and links nothing from loom:
    every call below goes through a table the worker hands the task.  */

#include <loom/plugin.h>

#include <stdlib.h>
#include <string.h>

//  What init prepares once per worker process and every task reads: here a
//  counter of the items this process ran; in real plugins a loaded model,
//  an open database, a big lookup table.
typedef struct {
    unsigned long items;
} my_state;

//  Runs once per worker process, the first time a map uses this plugin.
//  Return non-zero to refuse to work (every item then fails with a message
//  naming the plugin).
static int
s_init(loom_worker *w, void **state)
{
    (void)w; //  loom_worker_id(w) tells which worker this is
    my_state *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    *state = s;
    return 0;
}

//  Runs when the worker process stops: free what init made.
static void
s_fini(void *state)
{
    free(state);
}

//  A task: called once per input item. `loom map` gives each input line,
//  without its newline, as the item's bytes. No alignment and no NUL
//  terminator are promised: copy before treating the bytes as a string.
static int
s_upper(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    if (n > 1 << 20)
        return loom_task_fail(t, "upper: item of %zu bytes is over 1 MiB", n);
    char *out = malloc(n ? n : 1);
    if (!out)
        return loom_task_fail(t, "upper: out of memory");
    for (size_t i = 0; i < n; i++)
        out[i] = (in[i] >= 'a' && in[i] <= 'z') ? (char)(in[i] - 'a' + 'A') : in[i];

    my_state *s = loom_task_state(t);
    s->items++;

    //  The worker copies the output: free yours afterwards. Output may be
    //  written in pieces, by calling loom_task_output several times.
    int rc = loom_task_output(t, out, n);
    free(out);
    return rc;
}

//  A task with a reduce: outputs the input's length in bytes as text, and
//  adds two such outputs. A reduce must be associative and commutative:
//  loom combines partial results in any order, on any worker.
static int
s_length(loom_task *t)
{
    size_t n;
    (void)loom_task_input(t, &n);
    char text[32];
    size_t len = 0;
    do
        text[sizeof text - 1 - len++] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    return loom_task_output(t, text + sizeof text - len, len);
}

static int
s_parse(const char *p, size_t n, unsigned long long *v)
{
    *v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        *v = *v * 10 + (unsigned)(p[i] - '0');
    }
    return 0;
}

static int
s_add(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    unsigned long long x, y;
    if (s_parse(a, an, &x) || s_parse(b, bn, &y))
        return loom_task_fail(t, "length: reduce wants two decimal numbers");
    char text[32];
    size_t len = 0;
    unsigned long long sum = x + y;
    do
        text[sizeof text - 1 - len++] = (char)('0' + sum % 10);
    while ((sum /= 10) > 0);
    return loom_task_output(t, text + sizeof text - len, len);
}

//  The task table: names are [a-z0-9_-]{1,64}; doc is the line
//  `loom plugin inspect` shows. It ends with an all-zero entry.
static const loom_task_def s_tasks[] = {
    {.name = "upper", .run = s_upper, .doc = "the item, in upper case (ASCII)"},
    {.name = "length", .run = s_length, .reduce = s_add, .doc = "byte count; reduce: sum"},
    {0},
};

//  The plugin: its name must be the file's name (myplugin -> myplugin.so),
//  since workers find plugins by name. A map may pin the version
//  ("myplugin@1.0.0"), so bump it when the results would change.
LOOM_PLUGIN(.name = "myplugin", .version = "1.0.0", .tasks = s_tasks, .init = s_init,
            .fini = s_fini);
