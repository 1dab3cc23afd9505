/*  loom worker: run worker processes for a broker.

    loom worker --connect EP [--procs N] [--plugin-path DIR] [--cache DIR]
                [--max-tasks N] [--max-rss MB] [--cert FILE --server-key KEY] [--parent PID]

    The supervisor form starts N worker processes, each of them the hidden
    child form of this command:

    loom worker --child --host HOSTID --connect EP --plugin-path DIR
                [--max-tasks N] [--max-rss MB] [--credit N] [--cert FILE --server-key KEY]  */

#include "commands.h"

#include "base.h"
#include "curve.h"
#include "worker.h"
#include "worker_process.h"

#include <errno.h>
#include <limits.h>
#include <loom/loom.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
s_usage(void)
{
    fprintf(stderr,
            "usage: loom worker --connect ENDPOINT [--procs N] [--plugin-path DIR]\n"
            "                   [--cache DIR] [--cache-size BYTES] [--max-tasks N] [--parent PID]\n"
            "                   [--max-rss MB] [--cert FILE --server-key KEY] [--quiet]\n"
            "  --max-tasks N   a worker process runs N items, then a new one takes its place\n"
            "  --max-rss MB    a worker process holding more than MB MiB after a batch is\n"
            "                  replaced; one going over it while an item runs is ended, and\n"
            "                  its items run again alone (--retries), failing 'out of memory'\n"
            "                  (LOOM_ENOMEM) if they go over it again\n");
}

//  Parse a whole decimal number in [min, max]. Returns 0 or -1.
static int
s_number(const char *opt, const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, "loom worker: %s wants a number from %ld to %ld, not '%s'\n", opt, min, max,
                text);
        return -1;
    }
    *out = v;
    return 0;
}

int
loom_cmd_worker(int argc, char **argv)
{
    const char *endpoint = NULL, *plugin_path = NULL, *cache = NULL, *host = NULL;
    const char *cert = NULL, *server_key = NULL;
    long procs = 0, max_tasks = 0, parent = 0, credit = 0, cache_size = 0, max_rss = 0;
    bool child = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--child")) {
            child = true;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            //  Only warnings and errors (embedded mode); children inherit it.
            setenv("LOOM_QUIET", "1", 1);
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage();
            return 0;
        }
        if (a[0] != '-' || a[1] != '-') {
            fprintf(stderr, "loom worker: unexpected argument '%s'\n", a);
            s_usage();
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loom worker: %s needs a value\n", a);
            s_usage();
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--connect"))
            endpoint = v;
        else if (!strcmp(a, "--procs"))
            rc = s_number(a, v, 1, 4096, &procs);
        else if (!strcmp(a, "--plugin-path"))
            plugin_path = v;
        else if (!strcmp(a, "--cache"))
            cache = v;
        else if (!strcmp(a, "--cache-size"))
            rc = s_number(a, v, 0, LONG_MAX, &cache_size);
        else if (!strcmp(a, "--max-tasks"))
            rc = s_number(a, v, 1, LONG_MAX, &max_tasks);
        else if (!strcmp(a, "--max-rss"))
            rc = s_number(a, v, 1, 1L << 30, &max_rss); //  MiB, up to 1 PiB
        else if (!strcmp(a, "--parent"))
            rc = s_number(a, v, 1, INT_MAX, &parent);
        else if (!strcmp(a, "--cert"))
            cert = v;
        else if (!strcmp(a, "--server-key"))
            server_key = v;
        else if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--credit"))
            rc = s_number(a, v, 1, 1000000, &credit);
        else {
            fprintf(stderr, "loom worker: unknown option '%s'\n", a);
            s_usage();
            return 2;
        }
        if (rc)
            return 2;
    }
    if (!endpoint || !*endpoint) {
        fprintf(stderr, "loom worker: --connect ENDPOINT is required\n");
        s_usage();
        return 2;
    }
    char *curve_err = NULL;
    if (loom_curve_client_check(cert, server_key, &curve_err) != 0) {
        fprintf(stderr, "loom worker: %s\n", curve_err);
        free(curve_err);
        return 2;
    }
    if (child) {
        if (!host || !*host) {
            fprintf(stderr, "loom worker: --child needs --host\n");
            return 2;
        }
        loom_worker_process_opts po = {.endpoint = endpoint,
                                       .host = host,
                                       .plugin_path = plugin_path,
                                       .max_tasks = max_tasks,
                                       .credit = (uint32_t)credit,
                                       .cache_dir = cache,
                                       .cache_size = (uint64_t)cache_size,
                                       .cert_path = cert,
                                       .server_key = server_key,
                                       .max_rss = (uint64_t)max_rss << 20};
        return loom_worker_process_run(&po);
    }
    loom_worker_opts o = {.endpoint = endpoint,
                          .procs = (int)procs,
                          .plugin_path = plugin_path,
                          .cache_dir = cache,
                          .max_tasks = max_tasks,
                          .credit = (uint32_t)credit,
                          .parent = (pid_t)parent,
                          .cache_size = (uint64_t)cache_size,
                          .cert_path = cert,
                          .server_key = server_key,
                          .max_rss = (uint64_t)max_rss << 20};
    int rc = loom_worker_run(&o);
    if (rc < 0) {
        fprintf(stderr, "loom worker: cannot start: %s\n", loom_strerror(rc));
        return 1;
    }
    return 0;
}
