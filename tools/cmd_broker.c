/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_broker(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom broker: not implemented yet\n");
    return 2;
}
