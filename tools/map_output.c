/*  map_output: `loom map --output-files DIR` (see map_output.h).  */

#include "map_output.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

//  mkdir path if missing; 0 or errno.
static int
s_mkdir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST)
        return 0;
    return errno;
}

//  Copy src to dst (created or replaced). 0 or errno.
static int
s_copy(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (out < 0) {
        int err = errno;
        close(in);
        return err;
    }
    int err = 0;
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = n < 0 ? errno : 0;
            break;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                err = errno;
                break;
            }
            done += w;
        }
        if (err)
            break;
    }
    close(in);
    if (close(out) != 0 && !err)
        err = errno;
    return err;
}

int
loom__map_output_save(const char *dir, const loom_result *r, char *err, size_t cap)
{
    if (!r->nfiles)
        return 0;
    int e = s_mkdir(dir);
    if (e) {
        snprintf(err, cap, "--output-files %s: %s", dir, strerror(e));
        return LOOM_EIO;
    }
    for (size_t i = 0; i < r->nfiles; i++) {
        //  Item files: DIR/INDEX/NAME. The combined result's names are
        //  INDEX/NAME already.
        char sub[4096], path[8192];
        const char *name = r->file_names[i];
        const char *slash = strchr(name, '/');
        if (r->index == LOOM_REDUCED_INDEX && slash)
            snprintf(sub, sizeof sub, "%s/%.*s", dir, (int)(slash - name), name);
        else
            snprintf(sub, sizeof sub, "%s/%" PRIu64, dir, r->index);
        const char *base = r->index == LOOM_REDUCED_INDEX && slash ? slash + 1 : name;
        snprintf(path, sizeof path, "%s/%s", sub, base);
        if ((e = s_mkdir(sub)) != 0 || (e = s_copy(r->file_paths[i], path)) != 0) {
            snprintf(err, cap, "output file %s: cannot write %s: %s", name, path, strerror(e));
            return LOOM_EIO;
        }
    }
    return 0;
}
