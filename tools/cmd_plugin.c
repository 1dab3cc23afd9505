/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_plugin(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom plugin: not implemented yet\n");
    return 2;
}
