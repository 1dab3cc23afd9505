/*  base: assertions, aborting allocation, clocks and name checks shared by
    every part of loom.  */

#include "base.h"

#include <czmq.h>
#include <dirent.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void
loom__assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "loom: assertion failed: %s (%s:%d)\n", what, file, line);
    fflush(stderr);
    abort();
}

static LOOM_NORETURN void
s_out_of_memory(size_t n, const char *file, int line)
{
    fprintf(stderr, "loom: out of memory allocating %zu bytes (%s:%d)\n", n, file, line);
    fflush(stderr);
    abort();
}

void *
loom__xmalloc(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        s_out_of_memory(n, file, line);
    return p;
}

void *
loom__xcalloc(size_t k, size_t n, const char *file, int line)
{
    void *p = calloc(k ? k : 1, n ? n : 1);
    if (!p)
        s_out_of_memory(k * n, file, line);
    return p;
}

void *
loom__xrealloc(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        s_out_of_memory(n, file, line);
    return q;
}

char *
loom__xstrdup(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = loom__xmalloc(n, file, line);
    memcpy(p, s, n);
    return p;
}

int64_t
loom_now_ms(void)
{
    return loom_now_us() / 1000;
}

int64_t
loom_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool
loom_name_valid(const char *name)
{
    if (!name)
        return false;
    size_t n = 0;
    for (const char *c = name; *c; c++, n++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-';
        if (!ok || n >= 64)
            return false;
    }
    return n > 0;
}

long
loom_env_long(const char *var, long dflt, long min, long max)
{
    const char *s = getenv(var);
    if (!s || !*s)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return dflt;
    return v;
}

bool
loom__log_quiet(void)
{
    const char *q = getenv("LOOM_QUIET");
    return q && *q && strcmp(q, "0") != 0;
}

int
loom_remove_tree(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
                continue;
            struct stat sb;
            if (depth > 0 && lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
                loom_remove_tree(path, depth - 1);
            else
                unlink(path);
        }
        closedir(d);
    }
    return rmdir(dir);
}

void
loom_cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    LOOM_ASSERT(pthread_condattr_init(&attr) == 0);
    LOOM_ASSERT(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0);
    LOOM_ASSERT(pthread_cond_init(cond, &attr) == 0);
    pthread_condattr_destroy(&attr);
}

int
loom_wake_open(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0)
        return 0;
    int err = errno;
    fds[0] = fds[1] = -1;
    return err;
}

void
loom_wake_signal(const int fds[2])
{
    if (fds[1] < 0)
        return;
    int saved = errno;
    ssize_t n = write(fds[1], "", 1);
    (void)n;
    errno = saved;
}

void
loom_wake_drain(const int fds[2])
{
    char buf[16];
    while (fds[0] >= 0 && read(fds[0], buf, sizeof buf) > 0)
        ;
}

int64_t
loom_session_due(int64_t last_tx, int64_t last_rx, uint32_t hb_ms, uint32_t liveness)
{
    int64_t beat = last_tx + hb_ms;
    int64_t silent = last_rx + (int64_t)hb_ms * liveness + 1;
    return beat < silent ? beat : silent;
}
