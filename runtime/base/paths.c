/*  paths: locate the `loom` executable for embedded mode, and the plugins.  */

#include "paths.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LOOM_PLUGIN_DIR
#define LOOM_PLUGIN_DIR "/usr/local/lib/loom/plugins"
#endif
#ifndef LOOM_BUILD_PLUGIN_DIR
#define LOOM_BUILD_PLUGIN_DIR "plugins"
#endif

static char s_exe[PATH_MAX];

void
loom__set_exe_path(const char *path)
{
    if (path && strlen(path) < sizeof s_exe)
        strcpy(s_exe, path);
}

const char *
loom__exe_path(void)
{
    const char *env = getenv("LOOM_EXE");
    if (env && *env)
        return env;
    if (s_exe[0])
        return s_exe;
    if (access(LOOM_BUILD_EXE, X_OK) == 0)
        return LOOM_BUILD_EXE;
    return LOOM_INSTALL_EXE;
}

const char *
loom_plugin_default_path(void)
{
    const char *env = getenv("LOOM_PLUGIN_PATH");
    if (env && *env)
        return env;
    return LOOM_PLUGIN_DIR ":" LOOM_BUILD_PLUGIN_DIR;
}
