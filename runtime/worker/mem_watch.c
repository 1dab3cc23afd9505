/*  mem_watch: resident memory and OOM-kill counts. See mem_watch.h.  */

#include "mem_watch.h"

#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Read a small file whole into buf (NUL-terminated). Returns its length,
//  or -1.
static ssize_t
s_read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = 0;
    return (ssize_t)len;
}

uint64_t
loom__rss_self(void)
{
    char buf[128];
    if (s_read_file("/proc/self/statm", buf, sizeof buf) <= 0)
        return 0;
    unsigned long long size = 0, resident = 0;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    return (uint64_t)resident * (uint64_t)(page > 0 ? page : 4096);
}

bool
loom__rss_over(uint64_t limit, uint64_t *rss)
{
    *rss = limit ? loom__rss_self() : 0;
    if (!limit || *rss <= limit)
        return false;
    //  Freed memory glibc kept in its heaps is not held for good.
    malloc_trim(0);
    *rss = loom__rss_self();
    return *rss > limit;
}

bool
loom__key_value(const char *text, const char *key, uint64_t *value)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, key, klen) && (line[klen] == ' ' || line[klen] == '\t')) {
            char *end;
            unsigned long long v = strtoull(line + klen + 1, &end, 10);
            if (end != line + klen + 1) {
                *value = (uint64_t)v;
                return true;
            }
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

//  This process's cgroup path for the v2 hierarchy (which 1) or the v1
//  memory controller (which 2), from /proc/self/cgroup: "/" when unknown.
static void
s_cgroup(int which, char *path, size_t cap)
{
    snprintf(path, cap, "/");
    char buf[4096];
    if (s_read_file("/proc/self/cgroup", buf, sizeof buf) <= 0)
        return;
    const char *want = which == 1 ? "0::" : NULL;
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char *colon = strchr(line, ':');
        const char *rest = NULL;
        if (want && !strncmp(line, want, 3))
            rest = line + 3;
        else if (!want && colon && !strncmp(colon + 1, "memory:", 7))
            rest = colon + 8;
        if (rest && *rest == '/') {
            snprintf(path, cap, "%s", rest);
            return;
        }
        line = nl ? nl + 1 : NULL;
    }
}

bool
loom__oom_kill_path(int which, char *buf, size_t cap)
{
    if (which == 0) {
        snprintf(buf, cap, "/proc/vmstat");
        return access(buf, R_OK) == 0;
    }
    if (which != 1 && which != 2)
        return false;
    const char *base = which == 1 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    const char *file = which == 1 ? "memory.events" : "memory.oom_control";
    char cg[1024];
    s_cgroup(which, cg, sizeof cg);
    //  In a container the path may be the host's: then the mount's root
    //  is this process's cgroup.
    snprintf(buf, cap, "%s%s/%s", base, strcmp(cg, "/") ? cg : "", file);
    if (access(buf, R_OK) == 0)
        return true;
    snprintf(buf, cap, "%s/%s", base, file);
    return access(buf, R_OK) == 0;
}

uint64_t
loom__oom_kills(void)
{
    uint64_t total = 0;
    for (int which = 0; which < 3; which++) {
        char path[1200], buf[16384];
        uint64_t n = 0;
        if (loom__oom_kill_path(which, path, sizeof path) &&
            s_read_file(path, buf, sizeof buf) > 0 && loom__key_value(buf, "oom_kill", &n))
            total += n;
    }
    return total;
}
