/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_map(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom map: not implemented yet\n");
    return 2;
}
