/*  plugin_loader: finds a plugin by name in a plugin path, dlopens it and
    checks its descriptor. Names only, never paths: a name that is not
    [a-z0-9_-]{1,64} is refused before any file is touched.  */

#ifndef LOOM_PLUGIN_LOADER_H
#define LOOM_PLUGIN_LOADER_H

#include <loom/plugin.h>

typedef struct loom_plugin_lib loom_plugin_lib;

//  The default plugin path is loom_plugin_default_path (paths.h).

//  Find NAME.so or libNAME.so in path (':'-separated; NULL: the default),
//  dlopen it (RTLD_NOW | RTLD_LOCAL), check magic, ABI major and minor,
//  size and fields. Returns 0 with *lib_p, or LOOM_EINVAL (bad name),
//  LOOM_ENOENT (not found), LOOM_EABI (no entry symbol, wrong ABI,
//  truncated descriptor), with *reason a malloc'd message naming the plugin,
//  the path and the cause (caller frees).
int loom_plugin_lib_open(const char *name, const char *path, loom_plugin_lib **lib_p,
                         char **reason);

//  Open a plugin file by path (for `loom plugin inspect FILE`), same checks.
int loom_plugin_lib_open_file(const char *file, loom_plugin_lib **lib_p, char **reason);

//  Free the loader's record; the library stays loaded (never dlclose code
//  that may still run). Sets *lib_p to NULL; accepts NULL.
void loom_plugin_lib_destroy(loom_plugin_lib **lib_p);

//  The checked descriptor (borrowed) and the file it came from.
const loom_plugin_def *loom_plugin_lib_def(const loom_plugin_lib *lib);
const char *loom_plugin_lib_file(const loom_plugin_lib *lib);

//  The task named `task`, or NULL. Reads tasks with the descriptor's stride.
const loom_task_def *loom_plugin_lib_task(const loom_plugin_lib *lib, const char *task);

//  The i-th task (0-based), or NULL past the end.
const loom_task_def *loom_plugin_lib_task_at(const loom_plugin_lib *lib, size_t i);

#endif
