/*  loom_test.h: what every cmocka test includes, in the order cmocka 1.1.5
    needs, plus small helpers for tests.  */

#ifndef LOOM_TEST_H
#define LOOM_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  A unique ipc:// endpoint under /tmp for this process: "ipc:///tmp/loom-test-PID-TAG".
static inline void
loom_test_ipc(char *buf, size_t cap, const char *tag)
{
    snprintf(buf, cap, "ipc:///tmp/loom-test-%d-%s", (int) getpid(), tag);
}

#endif
