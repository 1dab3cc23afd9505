/*  loom keygen: make a CURVE certificate for a broker, worker or client.

    CURVE security is issue 5; until then this command says so and fails,
    rather than writing keys nothing would check.  */

#include <stdio.h>

#include "commands.h"

int
loom_cmd_keygen(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom keygen: not implemented yet (CURVE is issue 5)\n");
    return 2;
}
