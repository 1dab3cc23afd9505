/*  worker_stop: the cancel grace, the init timeout and the init marker
    (see worker_stop.h).  */

#include "worker_stop.h"

#include <czmq.h>

#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <loom/plugin.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void
loom__stopwatch_clear(loom__stopwatch *self)
{
    self->map = 0;
    self->init = false;
    self->plugin[0] = 0;
    self->init_start_ms = 0;
    self->init_timeout_ms = 0;
    self->cancel_at_ms = 0;
    atomic_store_explicit(&self->cancelled, 0, memory_order_relaxed);
}

void
loom__stopwatch_items(loom__stopwatch *self, uint64_t map)
{
    loom__stopwatch_clear(self);
    self->map = map;
}

void
loom__stopwatch_init(loom__stopwatch *self, uint64_t map, const char *plugin, uint32_t timeout_ms,
                     int64_t now_ms)
{
    loom__stopwatch_clear(self);
    self->map = map;
    self->init = true;
    snprintf(self->plugin, sizeof self->plugin, "%s", plugin ? plugin : "?");
    self->init_start_ms = now_ms;
    self->init_timeout_ms = timeout_ms;
}

bool
loom__stopwatch_cancel(loom__stopwatch *self, uint64_t map, int64_t now_ms)
{
    if (!self->map || self->map != map)
        return false;
    if (!self->cancel_at_ms)
        self->cancel_at_ms = now_ms ? now_ms : 1;
    atomic_store_explicit(&self->cancelled, 1, memory_order_relaxed);
    return true;
}

int
loom__stopwatch_due(const loom__stopwatch *self, int64_t now_ms, bool item_running)
{
    if (!self->map)
        return 0;
    if (self->init && self->init_timeout_ms &&
        now_ms - self->init_start_ms >= (int64_t)self->init_timeout_ms)
        return LOOM_WORKER_EXIT_INIT;
    if (self->cancel_at_ms && now_ms - self->cancel_at_ms >= LOOM_CANCEL_GRACE_MS &&
        (self->init || item_running))
        return LOOM_WORKER_EXIT_CANCELLED;
    return 0;
}

int64_t
loom__stopwatch_next(const loom__stopwatch *self)
{
    int64_t next = INT64_MAX;
    if (!self->map)
        return next;
    if (self->init && self->init_timeout_ms)
        next = self->init_start_ms + self->init_timeout_ms;
    if (self->cancel_at_ms && self->cancel_at_ms + LOOM_CANCEL_GRACE_MS < next)
        next = self->cancel_at_ms + LOOM_CANCEL_GRACE_MS;
    return next;
}

//  ---------------------------------------------------------------------
//  The init marker

static bool
s_marker_path(const char *cache_dir, pid_t pid, char *path, size_t cap)
{
    if (!cache_dir || !*cache_dir)
        return false;
    int n = snprintf(path, cap, "%s/init-%d", cache_dir, (int)pid);
    return n > 0 && (size_t)n < cap;
}

int
loom__init_mark(const char *cache_dir, uint64_t map, const char *plugin, uint32_t timeout_ms)
{
    char path[4096];
    if (!s_marker_path(cache_dir, getpid(), path, sizeof path))
        return LOOM_EIO;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        loom_log_warning("worker %d: cannot write %s: %s (an init that dies will not be named)",
                         (int)getpid(), path, strerror(errno));
        return LOOM_EIO;
    }
    char text[160];
    int n = snprintf(text, sizeof text, "%" PRIu64 " %u %.80s\n", map, timeout_ms,
                     plugin ? plugin : "?");
    bool ok = n > 0 && write(fd, text, (size_t)n) == (ssize_t)n;
    close(fd);
    return ok ? 0 : LOOM_EIO;
}

void
loom__init_unmark(const char *cache_dir)
{
    char path[4096];
    if (s_marker_path(cache_dir, getpid(), path, sizeof path))
        unlink(path);
}

bool
loom__init_marker_take(const char *cache_dir, pid_t pid, int wstatus, uint64_t *map, char *error,
                       size_t cap)
{
    char path[4096];
    if (!s_marker_path(cache_dir, pid, path, sizeof path))
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    char text[160];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    unlink(path);
    if (n <= 0)
        return false;
    text[n] = 0;
    unsigned long long id = 0;
    unsigned timeout_ms = 0;
    char plugin[81] = "";
    if (sscanf(text, "%llu %u %80s", &id, &timeout_ms, plugin) != 3 || id == 0)
        return false;
    *map = id;
    if (WIFSIGNALED(wstatus)) {
        int sig = WTERMSIG(wstatus);
        const char *name = sigabbrev_np(sig);
        snprintf(error, cap,
                 "plugin '%s' init crashed worker process %d: killed by signal %d (SIG%s)", plugin,
                 (int)pid, sig, name ? name : "?");
    } else if (WEXITSTATUS(wstatus) == LOOM_WORKER_EXIT_INIT)
        snprintf(error, cap,
                 "plugin '%s' init timed out after %u ms in worker process %d (init_timeout_ms, "
                 "loom map --init-timeout)",
                 plugin, timeout_ms, (int)pid);
    else if (WEXITSTATUS(wstatus) == LOOM_WORKER_EXIT_CANCELLED)
        snprintf(error, cap, "plugin '%s' init was stopped: its map was cancelled", plugin);
    else
        snprintf(error, cap, "plugin '%s' init ended worker process %d with exit status %d", plugin,
                 (int)pid, WEXITSTATUS(wstatus));
    return true;
}
