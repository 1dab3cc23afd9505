#include <stdio.h>
int
main(void)
{
    fprintf(stderr, "loom: not built yet\n");
    return 1;
}
