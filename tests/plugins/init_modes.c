/*  init_modes: a plugin whose init misbehaves as $LOOM_TEST_INIT says, for
    the tests of bounded, self-explaining inits (issue 21, point 3):

      (unset), ok   init succeeds
      spin          init spins forever on the CPU
      sleep         init sleeps 30 s
      crash         init dies by SIGSEGV
      fail          init fails with a reason (loom_worker_fail)
      fail_id0      init fails with a reason in the worker whose id is 0 only
      slow_ok       init sleeps 300 ms, then succeeds
      chaos         init fails with a reason in the worker whose id is 0, and
                    takes 200 ms elsewhere (for test_chaos: cancels in inits)

    Tasks: echo (output = input) and pid (the worker process's pid).  */

#include <loom/plugin.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int
s_echo(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    return loom_task_output(t, in, n);
}

static int
s_pid(loom_task *t)
{
    char buf[16];
    int n = snprintf(buf, sizeof buf, "%d", (int)getpid());
    return loom_task_output(t, buf, (size_t)n);
}

static void
s_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int
s_init(loom_worker *w, void **state)
{
    (void)state;
    const char *mode = getenv("LOOM_TEST_INIT");
    mode = mode ? mode : "ok";
    if (!strcmp(mode, "spin")) {
        volatile unsigned long spin = 0;
        for (;;)
            spin++;
    }
    if (!strcmp(mode, "sleep"))
        s_sleep_ms(30000);
    if (!strcmp(mode, "crash")) {
        raise(SIGSEGV);
        abort();
    }
    bool chaos = !strcmp(mode, "chaos");
    if (!strcmp(mode, "fail") || ((!strcmp(mode, "fail_id0") || chaos) && loom_worker_id(w) == 0))
        return loom_worker_fail(w, "cannot open model %s: %s", "/nonexistent/model.bin",
                                "No such file or directory");
    if (!strcmp(mode, "slow_ok"))
        s_sleep_ms(300);
    if (chaos)
        s_sleep_ms(200);
    return 0;
}

static const loom_task_def s_tasks[] = {
    {.name = "echo", .run = s_echo, .doc = "output = input"},
    {.name = "pid", .run = s_pid, .doc = "output = the worker process's pid"},
    {0},
};

LOOM_PLUGIN(.name = "init_modes", .version = "1.0.0", .tasks = s_tasks, .init = s_init);
