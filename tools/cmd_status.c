/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_status(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom status: not implemented yet\n");
    return 2;
}
