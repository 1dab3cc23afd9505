/*  paths: where loom finds its own executable (to start worker processes)
    and its plugins, in an installed tree or in the build tree.  */

#ifndef LOOM_PATHS_H
#define LOOM_PATHS_H

//  Path of the `loom` executable: $LOOM_EXE if set, else the build tree's
//  tools/loom if it exists, else the installed one. Static string.
const char *loom__exe_path(void);

//  The default plugin path: $LOOM_PLUGIN_PATH if set, else the installed
//  plugin directory, then the build tree's plugins/ directory. Static string.
const char *loom_plugin_default_path(void);

//  Remember the running `loom` executable so embedded mode starts workers
//  from the same binary (called by the `loom` command's main).
void loom__set_exe_path(const char *path);

#endif
