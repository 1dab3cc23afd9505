/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_keygen(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom keygen: not implemented yet\n");
    return 2;
}
