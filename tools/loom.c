/*  loom: the command. Dispatches to one file per subcommand.  */

#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "paths.h"

#include <limits.h>
#include <stdlib.h>

int
main(int argc, char **argv)
{
    //  CZMQ logs to stdout unless told otherwise; loom's stdout is for
    //  results. Set before any CZMQ call; worker processes inherit it.
    setenv("ZSYS_LOGSTREAM", "stderr", 0);
    char self[PATH_MAX];
    if (realpath("/proc/self/exe", self))
        loom__set_exe_path(self);
    if (argc < 2) {
        fprintf(stderr, "usage: loom broker|worker|map|status|plugin|keygen ...\n");
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "broker"))
        return loom_cmd_broker(argc - 1, argv + 1);
    if (!strcmp(cmd, "worker"))
        return loom_cmd_worker(argc - 1, argv + 1);
    if (!strcmp(cmd, "map"))
        return loom_cmd_map(argc - 1, argv + 1);
    if (!strcmp(cmd, "status"))
        return loom_cmd_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "plugin"))
        return loom_cmd_plugin(argc - 1, argv + 1);
    if (!strcmp(cmd, "keygen"))
        return loom_cmd_keygen(argc - 1, argv + 1);
    fprintf(stderr, "loom: unknown command '%s'\n", cmd);
    return 2;
}
