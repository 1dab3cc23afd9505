/*  loom status: ask a broker for its counters.

    loom status [--connect tcp://127.0.0.1:5555] [--timeout MS]
                [--cert FILE --server-key KEY]

    Sends StatsRequest (no session needed) and prints one `name value`
    line per counter. Exits 1 if no answer comes within the timeout.  */

#include <czmq.h>
#include <stdio.h>
#include <string.h>

#include "base.h"
#include "commands.h"
#include "curve.h"
#include "curve_watch.h"
#include "wire.h"

static void
s_print(const loom_wire_stats *st)
{
    printf("epoch %016llx\n", (unsigned long long)st->epoch);
#define U(f) printf(#f " %llu\n", (unsigned long long)st->f)
    U(uptime_ms);
    U(clients);
    U(workers);
    U(supervisors);
    U(maps);
    U(pipelines);
    U(items_queued);
    U(items_in_flight);
    U(items_cancelling);
    U(items_cancelled);
    U(items_done);
    U(items_failed);
    U(items_retried);
    U(results_dropped);
    U(msgs_in);
    U(msgs_out);
    U(msgs_rejected);
    U(connections_dropped);
    U(blob_bytes_in);
    U(blob_bytes_out);
    U(blob_bytes_adopted);
    U(curve_refused);
    U(blobs_stored);
    U(blob_store_bytes);
    U(workers_blob_bytes_in);
    U(workers_blob_bytes_out);
#undef U
}

int
loom_cmd_status(int argc, char **argv)
{
    const char *ep = "tcp://127.0.0.1:5555";
    const char *cert = NULL, *server_key = NULL;
    long timeout = 2000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--connect") && i + 1 < argc)
            ep = argv[++i];
        else if (!strcmp(argv[i], "--cert") && i + 1 < argc)
            cert = argv[++i];
        else if (!strcmp(argv[i], "--server-key") && i + 1 < argc)
            server_key = argv[++i];
        else if (!strncmp(argv[i], "--connect=", 10))
            ep = argv[i] + 10;
        else if ((!strcmp(argv[i], "--timeout") && i + 1 < argc) ||
                 !strncmp(argv[i], "--timeout=", 10)) {
            const char *v = argv[i][9] == '=' ? argv[i] + 10 : argv[++i];
            char *end;
            timeout = strtol(v, &end, 10);
            if (*end || timeout <= 0 || timeout > 3600000) {
                fprintf(stderr, "loom status: --timeout wants milliseconds, got '%s'\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: loom status [--connect EP] [--timeout MS] "
                            "[--cert FILE --server-key KEY]\n");
            return 2;
        }
    }
    zsys_init();
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    if (!sock) {
        fprintf(stderr, "loom status: cannot create a socket\n");
        return 1;
    }
    zsock_set_linger(sock, 0);
    char *curve_err = NULL;
    if (loom_curve_client_setup(zsock_resolve(sock), cert, server_key, &curve_err) != 0) {
        fprintf(stderr, "loom status: %s\n", curve_err);
        free(curve_err);
        zsock_destroy(&sock);
        return 2;
    }
    //  Says why, if the broker will not let us in (curve_watch.h).
    loom_curve_watch *watch = loom_curve_watch_new(zsys_init(), zsock_resolve(sock), cert != NULL);
    if (zsock_connect(sock, "%s", ep) != 0) {
        fprintf(stderr, "loom status: cannot connect to %s\n", ep);
        loom_curve_watch_destroy(&watch);
        zsock_destroy(&sock);
        return 1;
    }
    loom_msg req = {.type = LOOM_MSG_STATS_REQUEST};
    int rc = loom_wire_send(zsock_resolve(sock), NULL, 0, &req, ZMQ_DONTWAIT);
    int64_t until = loom_now_ms() + timeout;
    int status = 1;
    const char *why = NULL;
    bool refused = false;
    while (rc == 0) {
        int64_t left = until - loom_now_ms();
        why = loom_curve_watch_reason(watch, &refused);
        if (left <= 0 || refused)
            break;
        zmq_pollitem_t item = {zsock_resolve(sock), 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, watch && left > 100 ? 100 : (long)left);
        if (n < 0)
            break;
        if (n == 0)
            continue;
        loom_msg *m = NULL;
        if (loom_wire_recv(zsock_resolve(sock), NULL, 0, NULL, &m, ZMQ_DONTWAIT) != 0)
            continue;
        if (m->type == LOOM_MSG_STATS) {
            s_print(&m->u.stats);
            status = 0;
        }
        loom_msg_destroy(&m);
        if (status == 0)
            break;
    }
    if (status && why)
        fprintf(stderr, "loom status: broker at %s: %s\n", ep, why);
    else if (status)
        fprintf(stderr, "loom status: no answer from %s within %ld ms\n", ep, timeout);
    loom_curve_watch_destroy(&watch);
    zsock_destroy(&sock);
    return status;
}
