/*  paths: locate the `loom` executable for embedded mode.  */

#include "paths.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
