/*  base: what every loom source file uses — assertions, allocation that
    aborts on exhaustion, logging over CZMQ's zsys, and small helpers.  */

#ifndef LOOM_BASE_H
#define LOOM_BASE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <loom/errors.h>

#if defined(__GNUC__)
#define LOOM_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define LOOM_NORETURN __attribute__((noreturn))
#define LOOM_INTERNAL_EXPORT __attribute__((visibility("default")))
#else
#define LOOM_PRINTF(f, a)
#define LOOM_NORETURN
#define LOOM_INTERNAL_EXPORT
#endif

//  The name of a LOOM_E* code, and loom's version: loom.h declares them for
//  users (errors.c defines them); here for the parts that do not use the
//  client API.
const char *loom_strerror(int err);
const char *loom_version(void);

//  Programmer errors: log the location and abort, in every build.
#define LOOM_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            loom__assert_fail(#cond, __FILE__, __LINE__);                                          \
    } while (0)

LOOM_NORETURN void loom__assert_fail(const char *what, const char *file, int line);

//  Small internal allocations: abort with file:line when memory runs out.
#define loom_xmalloc(n) loom__xmalloc((n), __FILE__, __LINE__)
#define loom_xcalloc(k, n) loom__xcalloc((k), (n), __FILE__, __LINE__)
#define loom_xrealloc(p, n) loom__xrealloc((p), (n), __FILE__, __LINE__)
#define loom_xstrdup(s) loom__xstrdup((s), __FILE__, __LINE__)
void *loom__xmalloc(size_t n, const char *file, int line);
void *loom__xcalloc(size_t k, size_t n, const char *file, int line);
void *loom__xrealloc(void *p, size_t n, const char *file, int line);
char *loom__xstrdup(const char *s, const char *file, int line);

//  Logging, over zsys_error/warning/notice/info/debug: lower case, no
//  trailing period or newline, name the object.
#define loom_log_error(...) zsys_error(__VA_ARGS__)
#define loom_log_warning(...) zsys_warning(__VA_ARGS__)
//  Notices, info and debug lines are left out when $LOOM_QUIET is set
//  (`loom worker --quiet`, as embedded mode runs it).
#define loom_log_notice(...)                                                                       \
    do {                                                                                           \
        if (!loom__log_quiet())                                                                    \
            zsys_notice(__VA_ARGS__);                                                              \
    } while (0)
#define loom_log_info(...)                                                                         \
    do {                                                                                           \
        if (!loom__log_quiet())                                                                    \
            zsys_info(__VA_ARGS__);                                                                \
    } while (0)
#define loom_log_debug(...)                                                                        \
    do {                                                                                           \
        if (!loom__log_quiet())                                                                    \
            zsys_debug(__VA_ARGS__);                                                               \
    } while (0)

//  True when $LOOM_QUIET is set to anything but "" or "0".
bool loom__log_quiet(void);

//  Monotonic clock in milliseconds and microseconds.
int64_t loom_now_ms(void);
int64_t loom_now_us(void);

//  True if name matches [a-z0-9_-]{1,64}: plugin, task and share names.
bool loom_name_valid(const char *name);

//  Remove dir and everything under it, down to `depth` levels of
//  subdirectories, never following a symbolic link. Returns 0, or -1 with
//  errno set by the last rmdir (dir itself not removed).
int loom_remove_tree(const char *dir, int depth);

//  An integer from the environment, or dflt when unset or not a number
//  within [min, max].
long loom_env_long(const char *var, long dflt, long min, long max);

//  Initialise a condition variable whose timed waits count on
//  CLOCK_MONOTONIC (deadlines from loom_now_ms, unmoved by clock changes).
void loom_cond_init_monotonic(pthread_cond_t *cond);

//  A wake-up pipe (fds: read end, write end; {-1, -1} until opened) that a
//  signal handler writes a byte to, so that a loop polling its read end
//  sees the signal at once however long it waits. open: 0 or an errno
//  (the pipe stays closed). signal: async-signal-safe, errno kept; a full
//  pipe already holds a wake-up. drain: read what is there.
int loom_wake_open(int fds[2]);
void loom_wake_signal(const int fds[2]);
void loom_wake_drain(const int fds[2]);

//  When a session with a broker next needs its timer: the next heartbeat
//  to send (last_tx + hb_ms) or the moment the broker counts as silent
//  (last_rx past hb_ms * liveness), whichever is first.
int64_t loom_session_due(int64_t last_tx, int64_t last_rx, uint32_t hb_ms, uint32_t liveness);

//  memcpy for the small per-item copies (inputs, outputs): sizes up to 16
//  are copied with fixed-size moves the compiler inlines, instead of a call
//  through the PLT (~30 instructions for 16 bytes, several per item).
static inline void
loom_copy(void *dst, const void *src, size_t n)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (n >= 8 && n <= 16) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n < 4) {
        for (size_t i = 0; i < n; i++)
            d[i] = s[i];
    } else
        memcpy(d, s, n);
}

#endif
