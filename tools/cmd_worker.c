/* placeholder */
#include <stdio.h>
#include "commands.h"
int
loom_cmd_worker(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "loom worker: not implemented yet\n");
    return 2;
}
