/*  bench_share: the blob channel's bandwidth beside raw ZeroMQ, in one run.

        bench_share [SHARE_MB [READ_MB [READERS]]]
        defaults:    1024      200       20

    loom: the embedded cluster (a broker in this process, 2 worker
    processes over ipc://, one host cache). A file of SHARE_MB MiB is
    shared: the client is on the broker's host, so it copies the file into
    the broker's store itself (copy_file_range), names it on a second
    thread meanwhile, and the broker adopts the file: "upload same-host" is
    that call's wall time (after a sync(): the writeback of files written
    before is not counted in it). Then one item of testkit "shared" runs in
    a map of that pipeline: the worker fetches the blob broker -> host
    cache (hash checked) before running it: "fetch" is the map's wall time
    (on the broker's host, as here, the host hard-links the store's file
    into its cache and hashes it: no bytes move). The same file shared
    again is known by name: "share again" is the BlobHave round trip. A
    second file of SHARE_MB MiB (other bytes) is shared with
    LOOM_BLOB_LOCAL=0: uploaded client -> broker on the blob channel in
    1 MiB chunks with credit, the broker hashing what it writes to its
    store: "upload channel". Then READERS items of testkit "shared_sum"
    read a READ_MB MiB share (every byte, through the mmap): the wall time
    of the whole map, fetch included, and the blob bytes the broker
    received and sent for it (`loom status` on the embedded broker's
    socket).

    raw-zmq: the same SHARE_MB MiB sent DEALER -> ROUTER over ipc:// in
    256 KiB frames between two threads of this process, with the same 1 MiB
    credit window (the receiver acks every frame), no hashing, no disk.

    Rounds (LOOM_BENCH_SHARE_ROUNDS, default 3) of raw, same-host upload,
    fetch and channel upload, each of new bytes (the files retagged), so
    load from elsewhere falls on both; the figures are medians, the ratios
    the median of the rounds' loom/raw. Each upload follows a plain write
    of as many bytes to a new file, removed just before it (main() says
    why). The readers' case has a baseline too: the same sums on 2 threads
    of this process over one mapping of the file.

    remote (LOOM_BENCH_CURVE=0: not run): the same file through a
    plaintext and a CURVE cluster of processes over tcp://127.0.0.1 (a
    `loom broker`, a `loom worker --procs 2` host, this process the client:
    bench_remote.c), in rounds of their own: each uploads new bytes on the
    blob channel (LOOM_BLOB_LOCAL=0) and runs one item of testkit "shared",
    whose host fetches the blob on the channel (its cache is in /dev/shm,
    another file system than the broker's store, so it cannot hard-link
    the store's file; the brokers' blob_bytes_in/out show what crossed).
    Beside them raw ZeroMQ over tcp://127.0.0.1 as above, without and with
    CURVE keys: what libzmq's encryption alone costs. Ratios: CURVE /
    plaintext throughput, the median of the rounds'.

    Two more bounds: SHA-256 over memory (each of upload and fetch hashes
    every byte once), and that plain write of a new file (each of upload
    and fetch writes or links a new file: the store's, the cache's). Peak
    RSS: this process (client and embedded broker) and the largest worker
    process.

    Needs $LOOM_PLUGIN_PATH to reach testkit (tests/plugins) and $LOOM_EXE.  */

#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <zmq.h>

#include <loom/loom.h>

#include "../plugins/byte_sum.h"
#include "bench_remote.h"

#define S_CHUNK (256 * 1024)
#define S_WINDOW 4

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

//  A file of mb MiB in /tmp whose bytes depend on seed. Its path (malloc'd), or NULL.
static char *
s_make_file(long mb, int seed)
{
    char *path = strdup("/tmp/loom-bench-share-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    char *buf = malloc(1 << 20);
    for (long i = 0; i < mb; i++) {
        for (size_t j = 0; j < (1u << 20); j += 64)
            buf[j] = (char)(i + j + (size_t)seed);
        if (write(fd, buf, 1 << 20) != 1 << 20)
            break;
    }
    free(buf);
    close(fd);
    return path;
}

//  Run n items of task over the pipeline; wall seconds, or -1 on failure.
static double
s_map(loom_pipeline *p, const char *task, const char *input, int n)
{
    double t0 = s_now();
    loom_map *m = loom_map_new(p, "testkit", task, NULL);
    if (!m)
        return -1;
    for (int i = 0; i < n; i++)
        loom_map_submit(m, input, strlen(input));
    loom_map_close(m);
    loom_result r;
    int rc, failed = 0;
    while ((rc = loom_map_next(m, &r, 600000)) == 1)
        if (r.status) {
            fprintf(stderr, "bench_share: item failed: %s\n", r.error ? r.error : "?");
            failed++;
        }
    loom_map_destroy(&m);
    return rc == 0 && !failed ? s_now() - t0 : -1;
}

//  The embedded broker's blob_bytes_in, blob_bytes_out and
//  blob_bytes_adopted, read with `$LOOM_EXE status` on its socket (the
//  cluster's dir is $TMPDIR-or-/tmp/loom-PID-*). Returns 0, or -1 if they
//  cannot be read.
static int
s_blob_bytes(uint64_t *in, uint64_t *out, uint64_t *adopted)
{
    const char *exe = getenv("LOOM_EXE");
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char pattern[4096];
    snprintf(pattern, sizeof pattern, "%s/loom-%d-*/tasks", tmp, (int)getpid());
    glob_t g;
    if (!exe || glob(pattern, 0, NULL, &g) != 0)
        return -1;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' status --connect 'ipc://%s'", exe, g.gl_pathv[0]);
    globfree(&g);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[256];
    int found = 0;
    unsigned long long v;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "blob_bytes_in %llu", &v) == 1 && ++found)
            *in = v;
        else if (sscanf(line, "blob_bytes_out %llu", &v) == 1 && ++found)
            *out = v;
        else if (sscanf(line, "blob_bytes_adopted %llu", &v) == 1 && ++found)
            *adopted = v;
    }
    return pclose(f) == 0 && found == 3 ? 0 : -1;
}

//  The raw baseline's transport: ipc://, or tcp://127.0.0.1 in plaintext
//  or under CURVE (a key pair each, made per run: the sender, which binds,
//  is the CURVE server; no ZAP handler, so libzmq lets any key in).
typedef enum { S_IPC, S_TCP, S_TCP_CURVE } s_transport;

typedef struct {
    char ep[128];
    uint64_t bytes;
    bool curve;
    char server_public[41];
    char client_public[41], client_secret[41];
} s_raw_args;

static void *
s_raw_receiver(void *arg)
{
    s_raw_args *a = arg;
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    if (a->curve) {
        zmq_setsockopt(router, ZMQ_CURVE_SERVERKEY, a->server_public, 41);
        zmq_setsockopt(router, ZMQ_CURVE_PUBLICKEY, a->client_public, 41);
        zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, a->client_secret, 41);
    }
    zmq_connect(router, a->ep); //  the sender binds
    uint64_t got = 0;
    char rid[256];
    zmq_msg_t body;
    zmq_msg_init(&body);
    while (got < a->bytes) {
        int rl = zmq_recv(router, rid, sizeof rid, 0);
        if (rl < 0)
            break;
        if (zmq_msg_recv(&body, router, 0) < 0)
            break;
        got += zmq_msg_size(&body);
        zmq_send(router, rid, (size_t)rl, ZMQ_SNDMORE);
        zmq_send(router, "k", 1, 0); //  one more frame of credit
    }
    zmq_msg_close(&body);
    zmq_close(router);
    zmq_ctx_term(ctx);
    return NULL;
}

//  Raw ZeroMQ: seconds to move bytes in 256 KiB frames with a 1 MiB
//  window, or -1.
static double
s_raw(uint64_t bytes, s_transport tr)
{
    s_raw_args a = {.bytes = bytes, .curve = tr == S_TCP_CURVE};
    char server_secret[41];
    if (a.curve && (zmq_curve_keypair(a.server_public, server_secret) != 0 ||
                    zmq_curve_keypair(a.client_public, a.client_secret) != 0))
        return -1;
    if (tr == S_IPC)
        snprintf(a.ep, sizeof a.ep, "ipc:///tmp/loom-bench-raw-%d", (int)getpid());
    else
        snprintf(a.ep, sizeof a.ep, "tcp://127.0.0.1:*");
    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int on = 1;
    if (a.curve) {
        zmq_setsockopt(dealer, ZMQ_CURVE_SERVER, &on, sizeof on);
        zmq_setsockopt(dealer, ZMQ_CURVE_SECRETKEY, server_secret, 41);
    }
    size_t eplen = sizeof a.ep;
    if (zmq_bind(dealer, a.ep) != 0 || zmq_getsockopt(dealer, ZMQ_LAST_ENDPOINT, a.ep, &eplen)) {
        zmq_close(dealer);
        zmq_ctx_term(ctx);
        return -1;
    }
    pthread_t t;
    pthread_create(&t, NULL, s_raw_receiver, &a);
    char *buf = malloc(S_CHUNK);
    memset(buf, 7, S_CHUNK);
    double t0 = s_now();
    uint64_t sent = 0;
    int credit = S_WINDOW;
    char ack[8];
    while (sent < bytes) {
        while (credit == 0) {
            if (zmq_recv(dealer, ack, sizeof ack, 0) < 0)
                goto out;
            credit++;
        }
        size_t n = bytes - sent < S_CHUNK ? (size_t)(bytes - sent) : S_CHUNK;
        //  A copy per frame, as loom's encoder makes one.
        zmq_msg_t msg;
        zmq_msg_init_size(&msg, n);
        memcpy(zmq_msg_data(&msg), buf, n);
        zmq_msg_send(&msg, dealer, 0);
        sent += n;
        credit--;
    }
out:
    pthread_join(t, NULL);
    double secs = s_now() - t0;
    free(buf);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    if (tr == S_IPC)
        unlink(a.ep + 6);
    return secs;
}

//  SHA-256 (OpenSSL EVP, as blob names are made) alone over bytes in
//  memory: the bound of every pass that hashes.
static double
s_hash_secs(uint64_t bytes)
{
    size_t block = 64u << 20;
    uint8_t *buf = malloc(block);
    memset(buf, 3, block);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    double t0 = s_now();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (uint64_t done = 0; done < bytes; done += block)
        EVP_DigestUpdate(md, buf, bytes - done < block ? bytes - done : block);
    EVP_DigestFinal_ex(md, out, &n);
    double secs = s_now() - t0;
    EVP_MD_CTX_free(md);
    free(buf);
    return secs;
}

#ifdef LOOM_BENCH_SODIUM
#include <sodium.h>

//  CURVE's cipher alone (libsodium's XSalsa20-Poly1305 with a precomputed
//  key, as libzmq seals each message once the handshake is done) over
//  bytes in memory, in 256 KiB messages: the bound of one side of a CURVE
//  stream (the sender seals every byte, the receiver opens it). -1 if
//  libsodium cannot start.
static double
s_box_secs(uint64_t bytes)
{
    unsigned char pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    unsigned char key[crypto_box_BEFORENMBYTES], nonce[crypto_box_NONCEBYTES] = {0};
    if (sodium_init() < 0 || crypto_box_keypair(pk, sk) != 0 ||
        crypto_box_beforenm(key, pk, sk) != 0)
        return -1;
    unsigned char *in = malloc(S_CHUNK), *out = malloc(S_CHUNK + crypto_box_MACBYTES);
    memset(in, 9, S_CHUNK);
    double t0 = s_now();
    for (uint64_t done = 0; done < bytes; done += S_CHUNK) {
        sodium_increment(nonce, sizeof nonce);
        crypto_box_easy_afternm(out, in, S_CHUNK, nonce, key);
    }
    double secs = s_now() - t0;
    free(in);
    free(out);
    return secs;
}
#else
static double
s_box_secs(uint64_t bytes)
{
    (void)bytes;
    return -1;
}
#endif

//  Seconds to write bytes to a new file in $TMPDIR (else /tmp) in 256 KiB
//  writes and close it: the page cache a store or cache file takes.
static double
s_write_secs(uint64_t bytes)
{
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[4096];
    snprintf(path, sizeof path, "%s/loom-bench-write-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    char *buf = malloc(S_CHUNK);
    memset(buf, 5, S_CHUNK);
    double t0 = s_now();
    bool ok = true;
    for (uint64_t done = 0; done < bytes && ok; done += S_CHUNK)
        ok = write(fd, buf, S_CHUNK) == S_CHUNK;
    ok = close(fd) == 0 && ok;
    double secs = s_now() - t0;
    unlink(path);
    free(buf);
    return ok ? secs : -1;
}

//  Give the file at path other bytes (its first 8 become `tag`), so a
//  share of it is a new blob.
static int
s_retag(const char *path, uint64_t tag)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = pwrite(fd, &tag, sizeof tag, 0) == (ssize_t)sizeof tag ? 0 : -1;
    return close(fd) == 0 ? rc : -1;
}

//  The baseline of the readers' case: the same sums in this process, on
//  2 threads, over one mapping of the file (no broker, no worker, no
//  fetch).
typedef struct {
    const unsigned char *data;
    size_t len;
    int n;
    unsigned sum;
} s_sum_job;

static void *
s_sum_thread(void *arg)
{
    s_sum_job *j = arg;
    for (int i = 0; i < j->n; i++)
        j->sum += loom_test_byte_sum(j->data, j->len);
    return NULL;
}

static double
s_read_local(const char *path, int readers)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return -1;
    double t0 = s_now();
    s_sum_job jobs[2] = {{map, (size_t)sb.st_size, readers / 2, 0},
                         {map, (size_t)sb.st_size, readers - readers / 2, 0}};
    pthread_t t;
    pthread_create(&t, NULL, s_sum_thread, &jobs[1]);
    s_sum_thread(&jobs[0]);
    pthread_join(t, NULL);
    double secs = s_now() - t0;
    munmap(map, (size_t)sb.st_size);
    return secs;
}

static int
s_dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

//  The median of n values (n >= 1; sorts them).
static double
s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_dbl_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define S_ROUNDS_MAX 15

//  ---------------------------------------------------------------------------
//  Remote: the blob channel between processes over tcp://127.0.0.1, in
//  plaintext and under CURVE ([0] and [1] below)

typedef struct {
    double raw[2][S_ROUNDS_MAX];   //  raw bulk over tcp, seconds
    double up[2][S_ROUNDS_MAX];    //  the channel upload (LOOM_BLOB_LOCAL=0)
    double fetch[2][S_ROUNDS_MAX]; //  the map of one item: the host's fetch
    double r_raw[S_ROUNDS_MAX], r_up[S_ROUNDS_MAX], r_fetch[S_ROUNDS_MAX]; //  CURVE/plaintext
    bool other_fs;          //  the host's cache on another file system than the store
    bool counted;           //  in and out read from both brokers
    uint64_t in[2], out[2]; //  blob bytes into and out of each broker
} s_remote_run;

//  Upload and fetch of one new version of the file at path through
//  client: seconds into *up and *fetch. Returns 0, or -1 if either failed.
static int
s_remote_round(loom_client *client, const char *path, uint64_t bytes, uint64_t tag, double *up,
               double *fetch)
{
    loom_pipeline *p = loom_pipeline_new(client, "bench");
    bool ok = p && s_retag(path, tag) == 0;
    //  As for the uploads in main: no dirty pages of the steps before,
    //  and memory this VM has just had in use.
    sync();
    ok = ok && s_write_secs(bytes) >= 0;
    double t0 = s_now();
    ok = ok && loom_pipeline_share_file(p, "big", path) == 0;
    *up = s_now() - t0;
    sync();
    ok = ok && s_write_secs(bytes) >= 0;
    *fetch = ok ? s_map(p, "shared", "", 1) : -1;
    loom_pipeline_destroy(&p);
    return ok && *fetch >= 0 ? 0 : -1;
}

static int
s_remote_bytes(bench_remote *rem, uint64_t *in, uint64_t *out)
{
    const char *names[] = {"blob_bytes_in", "blob_bytes_out"};
    uint64_t v[2];
    if (bench_remote_counters(rem, names, v, 2) != 0)
        return -1;
    *in = v[0];
    *out = v[1];
    return 0;
}

//  Rounds of: raw bulk over tcp in plaintext and under CURVE, then for
//  each of a plaintext and a CURVE remote (which goes first alternates)
//  an upload of new bytes on the blob channel and a worker host's fetch
//  of them. The host's cache is in /dev/shm when that is another file
//  system than the broker's store: it cannot hard-link the store's file
//  and fetches on the channel, as a host on another machine does. Returns
//  0, or -1 (said why) when a step failed.
static int
s_remote_shares(const char *path, uint64_t bytes, int rounds, s_remote_run *res)
{
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    struct stat st_tmp, st_shm;
    res->other_fs = stat(tmp, &st_tmp) == 0 && stat("/dev/shm", &st_shm) == 0 &&
                    S_ISDIR(st_shm.st_mode) && st_tmp.st_dev != st_shm.st_dev &&
                    access("/dev/shm", W_OK) == 0;
    bench_remote *rem[2] = {NULL, NULL};
    loom_client *cl[2] = {NULL, NULL};
    int rc = -1;
    char cache[2][64];
    uint64_t in0[2], out0[2];
    for (int m = 0; m < 2; m++) {
        snprintf(cache[m], sizeof cache[m], "/dev/shm/loom-bench-cache-%d-%d", (int)getpid(), m);
        bench_remote_opts o = {.curve = m == 1,
                               .procs = 2,
                               .cache_dir = res->other_fs ? cache[m] : NULL,
                               .cache_size = bytes + bytes / 2};
        rem[m] = bench_remote_new(&o);
        cl[m] = rem[m] ? bench_remote_client(rem[m]) : NULL;
        if (!cl[m])
            goto done;
    }
    res->counted = s_remote_bytes(rem[0], &in0[0], &out0[0]) == 0 &&
                   s_remote_bytes(rem[1], &in0[1], &out0[1]) == 0;
    setenv("LOOM_BLOB_LOCAL", "0", 1);
    for (int r = 0; r < rounds; r++) {
        res->raw[0][r] = s_raw(bytes, S_TCP);
        res->raw[1][r] = s_raw(bytes, S_TCP_CURVE);
        if (res->raw[0][r] < 0 || res->raw[1][r] < 0) {
            fprintf(stderr, "bench_share: the raw bulk over tcp failed\n");
            goto done;
        }
        for (int k = 0; k < 2; k++) {
            int m = r % 2 ? 1 - k : k;
            if (s_remote_round(cl[m], path, bytes, 1000 + (uint64_t)(2 * r + m), &res->up[m][r],
                               &res->fetch[m][r]) != 0) {
                fprintf(stderr, "bench_share: remote %s: the upload or the fetch failed\n",
                        bench_remote_mode(rem[m]));
                goto done;
            }
        }
        res->r_raw[r] = res->raw[0][r] / res->raw[1][r];
        res->r_up[r] = res->up[0][r] / res->up[1][r];
        res->r_fetch[r] = res->fetch[0][r] / res->fetch[1][r];
        printf("remote round %d: raw tcp %.3f s, CURVE %.3f s (%.2f); upload channel %.3f s, "
               "CURVE %.3f s (%.2f); fetch %.3f s, CURVE %.3f s (%.2f)\n",
               r + 1, res->raw[0][r], res->raw[1][r], res->r_raw[r], res->up[0][r], res->up[1][r],
               res->r_up[r], res->fetch[0][r], res->fetch[1][r], res->r_fetch[r]);
        fflush(stdout);
    }
    for (int m = 0; m < 2 && res->counted; m++) {
        res->counted = s_remote_bytes(rem[m], &res->in[m], &res->out[m]) == 0;
        res->in[m] -= in0[m];
        res->out[m] -= out0[m];
    }
    rc = 0;
done:
    unsetenv("LOOM_BLOB_LOCAL");
    for (int m = 0; m < 2; m++) {
        loom_client_destroy(&cl[m]);
        bench_remote_destroy(&rem[m]);
    }
    return rc;
}

//  Print the remote figures (medians; ratios CURVE/plaintext).
static void
s_remote_print(s_remote_run *res, long share_mb, int rounds, bool machine)
{
    double gb = (double)share_mb / 1024;
    double raw0 = s_median(res->raw[0], rounds), raw1 = s_median(res->raw[1], rounds);
    double up0 = s_median(res->up[0], rounds), up1 = s_median(res->up[1], rounds);
    double f0 = s_median(res->fetch[0], rounds), f1 = s_median(res->fetch[1], rounds);
    double r_raw = s_median(res->r_raw, rounds), r_up = s_median(res->r_up, rounds);
    double r_fetch = s_median(res->r_fetch, rounds);
    printf("remote, tcp://127.0.0.1: a loom broker process, a loom worker host of 2 processes "
           "(its cache %s), this process the client with LOOM_BLOB_LOCAL=0; plaintext, then CURVE "
           "(loom keygen keys); medians of %d rounds (ratio: the median of the rounds' "
           "CURVE/plaintext)\n",
           res->other_fs ? "in /dev/shm, another file system than the store: no hard link"
                         : "beside the store: it may hard-link instead of fetching",
           rounds);
    printf("loom upload channel:        plaintext %7.3f s %6.2f GB/s  CURVE %7.3f s %6.2f GB/s  "
           "ratio %.2f\n",
           up0, gb / up0, up1, gb / up1, r_up);
    printf("loom fetch (broker->host):  plaintext %7.3f s %6.2f GB/s  CURVE %7.3f s %6.2f GB/s  "
           "ratio %.2f\n",
           f0, gb / f0, f1, gb / f1, r_fetch);
    printf("raw-zmq bulk over tcp:      plaintext %7.3f s %6.2f GB/s  CURVE %7.3f s %6.2f GB/s  "
           "ratio %.2f\n",
           raw0, gb / raw0, raw1, gb / raw1, r_raw);
    double want = (double)rounds * (double)share_mb;
    if (res->counted)
        printf("  bytes moved: into / out of the plaintext broker %.0f / %.0f MiB, the CURVE "
               "broker %.0f / %.0f MiB (%.0f each if every upload and fetch crossed the "
               "channel)\n",
               (double)res->in[0] / (1 << 20), (double)res->out[0] / (1 << 20),
               (double)res->in[1] / (1 << 20), (double)res->out[1] / (1 << 20), want);
    else
        printf("  bytes moved: not known (loom status failed)\n");
    if (!machine)
        return;
    printf("share_remote_upload_plain_gbs %.4f\nshare_remote_upload_curve_gbs %.4f\n", gb / up0,
           gb / up1);
    printf("share_remote_fetch_plain_gbs %.4f\nshare_remote_fetch_curve_gbs %.4f\n", gb / f0,
           gb / f1);
    printf("share_rawtcp_plain_gbs %.4f\nshare_rawtcp_curve_gbs %.4f\n", gb / raw0, gb / raw1);
    printf("share_remote_upload_ratio %.4f\nshare_remote_fetch_ratio %.4f\n"
           "share_rawtcp_ratio %.4f\n",
           r_up, r_fetch, r_raw);
}

int
main(int argc, char **argv)
{
    long share_mb = argc > 1 ? atol(argv[1]) : 1024;
    long read_mb = argc > 2 ? atol(argv[2]) : 200;
    int readers = argc > 3 ? atoi(argv[3]) : 20;
    const char *env = getenv("LOOM_BENCH_SHARE_ROUNDS");
    int rounds = env ? atoi(env) : 3;
    if (share_mb <= 0 || read_mb <= 0 || readers <= 0 || rounds < 1 || rounds > S_ROUNDS_MAX) {
        fprintf(stderr, "usage: bench_share [SHARE_MB [READ_MB [READERS]]]\n"
                        "  LOOM_BENCH_SHARE_ROUNDS 1-15 (default 3)\n");
        return 2;
    }
    char *big = s_make_file(share_mb, 0);
    char *big2 = s_make_file(share_mb, 1);
    char *small = s_make_file(read_mb, 2);
    if (!big || !big2 || !small) {
        fprintf(stderr, "bench_share: cannot write the test files in /tmp\n");
        return 1;
    }
    loom_client_opts o = {.local_workers = 2};
    loom_client *c = loom_client_new(NULL, &o);
    if (!c) {
        fprintf(stderr, "bench_share: cannot start the embedded cluster\n");
        return 1;
    }
    double gb = (double)share_mb / 1024;
    uint64_t bytes = (uint64_t)share_mb << 20;
    double raw[S_ROUNDS_MAX], upload[S_ROUNDS_MAX], fetch[S_ROUNDS_MAX], chan[S_ROUNDS_MAX];
    double r_up[S_ROUNDS_MAX], r_fetch[S_ROUNDS_MAX], r_chan[S_ROUNDS_MAX];
    double disk[S_ROUNDS_MAX], disk2[S_ROUNDS_MAX];
    uint64_t in0 = 0, out0 = 0, in1 = 0, out1 = 0, ad0 = 0, ad1 = 0, ad2 = 0, cin = 0;
    int counted = s_blob_bytes(&in0, &out0, &ad0);
    bool adopted = counted == 0, failed = false;
    double again = -1;
    //  Rounds of: raw, the same-host upload and its fetch, the channel
    //  upload, each of new bytes (the files retagged), so load from
    //  elsewhere falls on the baseline and on loom alike. Each upload
    //  follows a plain write of as many bytes to a new file, removed just
    //  before it ("new file write alone"): this VM gives memory freed more
    //  than ~2 s ago back to its host, and the first write to such memory
    //  runs at 0.5-0.7 GB/s (`dd` of 1 GiB: 1.5-2.2 s, against 0.22-0.26 s
    //  into memory just freed). The plain write takes that cost and the
    //  upload's store file reuses its pages, as on a machine whose page
    //  cache recycles memory; the write's figure shows what it was.
    for (int r = 0; r < rounds && !failed; r++) {
        raw[r] = s_raw(bytes, S_IPC);
        loom_pipeline *p = loom_pipeline_new(c, "bench");
        //  Each upload starts with no dirty pages left by the steps
        //  before it (the test files just written or retagged, the other
        //  upload's store file): the kernel's writeback of those is not
        //  the upload's cost.
        failed = !p || raw[r] < 0 || s_retag(big, (uint64_t)r + 1) != 0 ||
                 s_retag(big2, (uint64_t)r + 1) != 0;
        sync();
        disk[r] = s_write_secs(bytes);
        double t0 = s_now();
        failed = failed || disk[r] < 0 || loom_pipeline_share_file(p, "big", big) != 0;
        upload[r] = s_now() - t0;
        if (counted == 0)
            counted = s_blob_bytes(&in1, &out1, &ad1);
        fetch[r] = failed ? -1 : s_map(p, "shared", "", 1);
        if (r == 0 && !failed) {
            t0 = s_now();
            failed = loom_pipeline_share_file(p, "big", big) != 0; //  held already: skipped
            again = s_now() - t0;
        }
        //  The same size of other bytes, on the blob channel.
        setenv("LOOM_BLOB_LOCAL", "0", 1);
        sync();
        disk2[r] = s_write_secs(bytes);
        t0 = s_now();
        failed = failed || fetch[r] < 0 || disk2[r] < 0 ||
                 loom_pipeline_share_file(p, "big2", big2) != 0;
        chan[r] = s_now() - t0;
        unsetenv("LOOM_BLOB_LOCAL");
        if (counted == 0)
            counted = s_blob_bytes(&cin, &out1, &ad2);
        adopted = adopted && counted == 0 && ad1 - ad0 == bytes && in1 == in0 &&
                  cin - in1 == bytes && ad2 == ad1;
        in0 = cin;
        ad0 = ad2;
        loom_pipeline_destroy(&p);
        r_up[r] = raw[r] / upload[r];
        r_fetch[r] = raw[r] / fetch[r];
        r_chan[r] = raw[r] / chan[r];
        printf("round %d: raw %.3f s; write alone %.3f s, upload same-host %.3f s (%.2f of raw), "
               "fetch %.3f s (%.2f); write alone %.3f s, upload channel %.3f s (%.2f)\n",
               r + 1, raw[r], disk[r], upload[r], r_up[r], fetch[r], r_fetch[r], disk2[r], chan[r],
               r_chan[r]);
    }

    if (counted == 0)
        counted = s_blob_bytes(&in0, &out0, &ad0);
    loom_pipeline *p = loom_pipeline_new(c, "readers");
    double read_wall = -1;
    if (!failed && loom_pipeline_share_file(p, "data", small) == 0)
        read_wall = s_map(p, "shared_sum", "data", readers);
    loom_pipeline_destroy(&p);
    if (counted == 0)
        counted = s_blob_bytes(&in1, &out1, &ad1);
    loom_client_destroy(&c);
    //  Peak RSS now, before the baselines allocate: this process (client
    //  and embedded broker) and the largest worker process (reaped by
    //  loom_client_destroy, so RUSAGE_CHILDREN counts it).
    struct rusage self_ru, children_ru;
    getrusage(RUSAGE_SELF, &self_ru);
    getrusage(RUSAGE_CHILDREN, &children_ru);

    //  The blob channel between processes, plaintext and CURVE
    //  (LOOM_BENCH_CURVE=0: not run).
    const char *curve_env = getenv("LOOM_BENCH_CURVE");
    bool remote = !curve_env || strcmp(curve_env, "0") != 0;
    s_remote_run rres;
    memset(&rres, 0, sizeof rres);
    bool remote_failed = !failed && remote && s_remote_shares(big, bytes, rounds, &rres) != 0;

    double read_local = s_read_local(small, readers);
    double hash = s_hash_secs(bytes);
    double box = remote ? s_box_secs(bytes) : -1;
    double disk_m = s_median(disk, rounds);
    unlink(big);
    unlink(big2);
    unlink(small);
    free(big);
    free(big2);
    free(small);
    if (failed || read_wall < 0 || read_local < 0) {
        fprintf(stderr, "bench_share: a step failed\n");
        return 1;
    }
    double raw_m = s_median(raw, rounds), up_m = s_median(upload, rounds);
    double fetch_m = s_median(fetch, rounds), chan_m = s_median(chan, rounds);
    double r_up_m = s_median(r_up, rounds), r_fetch_m = s_median(r_fetch, rounds);
    double r_chan_m = s_median(r_chan, rounds);
    printf("share %ld MiB, 2 worker processes, embedded cluster over ipc://; medians of %d "
           "rounds (ratio: the median of the rounds' loom/raw)\n",
           share_mb, rounds);
    printf("loom upload same-host (adopted):        %7.3f s  %6.2f GB/s  %.2f of raw\n", up_m,
           gb / up_m, r_up_m);
    printf("loom upload channel (LOOM_BLOB_LOCAL=0):%7.3f s  %6.2f GB/s  %.2f of raw\n", chan_m,
           gb / chan_m, r_chan_m);
    if (!adopted)
        printf("  (the counters do not show the same-host uploads adopted and the others on the "
               "channel)\n");
    printf("loom fetch   (broker->host cache):      %7.3f s  %6.2f GB/s  %.2f of raw\n", fetch_m,
           gb / fetch_m, r_fetch_m);
    printf("loom share again (known, held):         %7.3f s\n", again);
    printf("raw-zmq bulk (same bytes, 1 MiB win):   %7.3f s  %6.2f GB/s\n", raw_m, gb / raw_m);
    printf("SHA-256 alone (memory, one core):       %7.3f s  %6.2f GB/s\n", hash, gb / hash);
    if (box > 0)
        printf("CURVE's cipher alone (memory, one core): %6.3f s  %6.2f GB/s  (XSalsa20-Poly1305, "
               "libsodium: what the sender's and the receiver's I/O thread each do per byte)\n",
               box, gb / box);
    printf("new file write alone (same bytes):      %7.3f s  %6.2f GB/s  (just before each "
           "upload; its pages are reused by the upload)\n",
           disk_m, gb / disk_m);
    printf("%d tasks reading a %ld MiB share:       %7.3f s wall (fetch included)\n", readers,
           read_mb, read_wall);
    printf("  the same sums in this process, 2 threads, one mapping: %.3f s (%.2f of loom)\n",
           read_local, read_local / read_wall);
    if (counted == 0)
        printf("  bytes moved: client->broker %.1f MiB (%.1f MiB adopted from the store), "
               "broker->host %.1f MiB (tasks read %.1f MiB)\n",
               (double)(in1 - in0) / (1 << 20), (double)(ad1 - ad0) / (1 << 20),
               (double)(out1 - out0) / (1 << 20), (double)readers * (double)read_mb);
    if (counted == 0 && out1 == out0)
        printf("  (broker->host 0: the host linked the store's file into its cache, verified)\n");
    else if (counted == 0)
        printf("  (broker->host > 0: the host fetched the blob over the blob channel)\n");
    if (counted != 0)
        printf("  bytes moved: not known (loom status failed)\n");
    printf("peak RSS: client+broker %ld KiB, largest worker process %ld KiB\n", self_ru.ru_maxrss,
           children_ru.ru_maxrss);
    if (remote && !remote_failed)
        s_remote_print(&rres, share_mb, rounds, getenv("LOOM_BENCH_MACHINE") != NULL);
    if (getenv("LOOM_BENCH_MACHINE")) {
        //  For tests/bench/suite.sh: one "key value" per line.
        printf("share_mb %ld\nshare_read_mb %ld\nshare_readers %d\nshare_rounds %d\n", share_mb,
               read_mb, readers, rounds);
        printf("share_upload_gbs %.4f\nshare_fetch_gbs %.4f\nshare_raw_gbs %.4f\n", gb / up_m,
               gb / fetch_m, gb / raw_m);
        printf("share_upload_channel_gbs %.4f\n", gb / chan_m);
        printf("share_upload_ratio %.4f\nshare_fetch_ratio %.4f\nshare_upload_channel_ratio %.4f\n",
               r_up_m, r_fetch_m, r_chan_m);
        printf("share_hash_gbs %.4f\nshare_read_wall_s %.4f\nshare_read_local_s %.4f\n", gb / hash,
               read_wall, read_local);
        printf("share_write_gbs %.4f\n", gb / disk_m);
        if (box > 0)
            printf("share_box_gbs %.4f\n", gb / box);
        if (counted == 0)
            printf("share_read_bytes_in %" PRIu64 "\nshare_read_bytes_out %" PRIu64 "\n", in1 - in0,
                   out1 - out0);
        printf("share_client_rss %ld\nshare_worker_rss %ld\n", self_ru.ru_maxrss,
               children_ru.ru_maxrss);
    }
    if (remote_failed)
        fprintf(stderr, "bench_share: the remote (plaintext and CURVE) part failed\n");
    return remote_failed ? 1 : 0;
}
