/*  loom broker: run the broker until SIGINT or SIGTERM.

    loom broker [--bind tcp://127.0.0.1:5555] [--blob-bind tcp://127.0.0.1:5556]
                [--store DIR] [--curve-dir DIR --cert FILE | --insecure] [--verbose]

    A thin command over the broker actor (broker/broker.h): parse argv,
    refuse a non-loopback TCP bind without CURVE or --insecure, start, wait
    until interrupted, stop.

    CURVE: --cert FILE is the broker's own certificate (`loom keygen
    broker` writes broker and broker_secret); --curve-dir DIR holds the
    public certificates of the clients and workers let in. Both are
    required together: a broker key made up at start would change at every
    restart and every peer would need the new one.  */

#include <czmq.h>
#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "commands.h"

static void
s_usage(void)
{
    fprintf(stderr, "usage: loom broker [--bind EP] [--blob-bind EP] [--store DIR]\n"
                    "                   [--store-size BYTES] [--store-ttl SECONDS] [--blob-quota BYTES]\n"
                    "                   [--curve-dir DIR --cert FILE | --insecure] [--verbose]\n"
                    "defaults: --bind tcp://127.0.0.1:5555 --blob-bind tcp://127.0.0.1:5556\n");
}

//  True if ep is not TCP, or TCP on a loopback address.
static bool
s_loopback(const char *ep)
{
    if (strncmp(ep, "tcp://", 6) != 0)
        return true;
    const char *host = ep + 6;
    const char *loopbacks[] = {"127.0.0.1:", "localhost:", "[::1]:", NULL};
    for (int i = 0; loopbacks[i]; i++)
        if (!strncmp(host, loopbacks[i], strlen(loopbacks[i])))
            return true;
    return false;
}

//  Value of option `name` at argv[*i] ("--name VALUE" or "--name=VALUE"),
//  advancing *i; NULL if argv[*i] is not that option. *missing is set when
//  the option is there without a value.
static const char *
s_opt(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != 0)
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

int
loom_cmd_broker(int argc, char **argv)
{
    const char *bind = "tcp://127.0.0.1:5555";
    const char *blob_bind = "tcp://127.0.0.1:5556";
    const char *store = NULL, *curve_dir = NULL, *store_size = "0", *store_ttl = "0";
    const char *blob_quota = "0";
    const char *cert = NULL;
    bool insecure = false, verbose = false;
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v;
        if ((v = s_opt(argc, argv, &i, "--bind", &missing)))
            bind = v;
        else if ((v = s_opt(argc, argv, &i, "--blob-bind", &missing)))
            blob_bind = v;
        else if ((v = s_opt(argc, argv, &i, "--store", &missing)))
            store = v;
        else if ((v = s_opt(argc, argv, &i, "--store-size", &missing)))
            store_size = v;
        else if ((v = s_opt(argc, argv, &i, "--blob-quota", &missing)))
            blob_quota = v;
        else if ((v = s_opt(argc, argv, &i, "--store-ttl", &missing)))
            store_ttl = v;
        else if ((v = s_opt(argc, argv, &i, "--curve-dir", &missing)))
            curve_dir = v;
        else if ((v = s_opt(argc, argv, &i, "--cert", &missing)))
            cert = v;
        else if (missing) {
            fprintf(stderr, "loom broker: %s needs a value\n", argv[i]);
            return 2;
        } else if (!strcmp(argv[i], "--insecure"))
            insecure = true;
        else if (!strcmp(argv[i], "--verbose") || !strcmp(argv[i], "-v"))
            verbose = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage();
            return 0;
        } else {
            fprintf(stderr, "loom broker: unknown option '%s'\n", argv[i]);
            s_usage();
            return 2;
        }
    }
    if (curve_dir && insecure) {
        fprintf(stderr, "loom broker: --curve-dir and --insecure exclude each other\n");
        return 2;
    }
    if (!curve_dir != !cert) {
        fprintf(stderr, "loom broker: CURVE needs both --curve-dir DIR (the allowed peers' "
                        "public certificates) and --cert FILE (the broker's own, from loom "
                        "keygen)\n");
        return 2;
    }
    if (!insecure && !curve_dir) {
        const char *eps[] = {bind, blob_bind};
        for (int i = 0; i < 2; i++)
            if (*eps[i] && !s_loopback(eps[i])) {
                fprintf(stderr,
                        "loom broker: refusing to bind %s without CURVE: use a loopback "
                        "address, or --insecure on a network you trust\n",
                        eps[i]);
                return 2;
            }
    }
    char *end = NULL;
    unsigned long long cap = strtoull(store_size, &end, 10);
    long long ttl_s = 0;
    if (*end == 0)
        ttl_s = strtoll(store_ttl, &end, 10);
    unsigned long long quota = 0;
    if (*end == 0)
        quota = strtoull(blob_quota, &end, 10);
    if (*end != 0 || ttl_s < 0 || ttl_s > 100LL * 365 * 86400) {
        fprintf(stderr, "loom broker: --store-size, --store-ttl and --blob-quota take a number\n");
        return 2;
    }

    zsys_init();
    zsys_set_logident("loom-broker");
    char *task_ep = NULL, *blob_ep = NULL, *error = NULL;
    loom_broker_opts bo = {.curve_dir = curve_dir, .cert_path = cert, .blob_quota = quota};
    zactor_t *broker = loom_broker_start_opts(&bo, bind, blob_bind, &task_ep, &blob_ep, &error);
    if (!broker) {
        fprintf(stderr, "loom broker: %s\n", error ? error : "cannot start");
        free(error);
        return 1;
    }
    if (loom_broker_set_store(broker, store, cap, ttl_s * 1000, false) != 0) {
        fprintf(stderr, "loom broker: cannot use blob store %s\n", store ? store : "(temp)");
        zactor_destroy(&broker);
        return 1;
    }
    if (verbose)
        zstr_send(broker, "VERBOSE");
    fprintf(stderr, "loom broker: tasks on %s, blobs on %s%s\n", task_ep,
            *blob_ep ? blob_ep : "(none)", curve_dir ? ", CURVE" : "");
    free(task_ep);
    free(blob_ep);

    zpoller_t *poller = zpoller_new(broker, NULL);
    while (!zsys_interrupted) {
        void *which = zpoller_wait(poller, 500);
        if (which == broker) {
            //  The actor says nothing unless asked; drain whatever it is.
            zmsg_t *msg = zmsg_recv(broker);
            zmsg_destroy(&msg);
        } else if (zpoller_terminated(poller))
            break;
    }
    zpoller_destroy(&poller);
    zactor_destroy(&broker);
    fprintf(stderr, "loom broker: stopped\n");
    return 0;
}
