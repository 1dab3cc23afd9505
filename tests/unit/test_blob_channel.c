/*  test_blob_channel: the broker's blob channel through a real broker
    actor, with a DEALER speaking the protocol by hand: uploads under
    credit, held blobs skipped, downloads clamped to what is stored, and
    peers' bad requests refused with a status.  */

#include "loom_test.h"

#include <czmq.h>
#include <fcntl.h>
#include <loom/loom.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "blob_hash.h"
#include "blob_store.h"
#include "client_priv.h"
#include "blob_transfer.h"
#include "broker.h"
#include "wire.h"

static zactor_t *s_broker;
static char *s_blob_ep;
static void *s_dealer;

static int
s_setup(void **state)
{
    (void)state;
    char task[128], blob[128];
    loom_test_ipc(task, sizeof task, "bc-task");
    loom_test_ipc(blob, sizeof blob, "bc-blob");
    char *bt = NULL, *err = NULL;
    s_broker = loom_broker_start(task, blob, &bt, &s_blob_ep, &err);
    free(bt);
    free(err);
    if (!s_broker)
        return -1;
    s_dealer = loom__blob_dealer(zsys_init(), s_blob_ep, NULL, NULL);
    return s_dealer ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    zmq_close(s_dealer);
    zactor_destroy(&s_broker);
    unlink(s_blob_ep + 6);
    free(s_blob_ep);
    char task[128];
    loom_test_ipc(task, sizeof task, "bc-task");
    unlink(task + 6);
    return 0;
}

//  The broker's counters (pipe STATS).
static loom_wire_stats
s_stats(void)
{
    zstr_send(s_broker, "STATS");
    zframe_t *f = zframe_recv(s_broker);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_decode(zframe_data(f), zframe_size(f), &m), 0);
    loom_wire_stats st = m->u.stats;
    loom_msg_destroy(&m);
    zframe_destroy(&f);
    return st;
}

static loom_wire_stats
s_stats_of(zactor_t *broker)
{
    zstr_send(broker, "STATS");
    zframe_t *f = zframe_recv(broker);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_decode(zframe_data(f), zframe_size(f), &m), 0);
    loom_wire_stats st = m->u.stats;
    loom_msg_destroy(&m);
    zframe_destroy(&f);
    return st;
}

//  Next message from the broker within 2 s.
static loom_msg *
s_next(void)
{
    zmq_pollitem_t it = {s_dealer, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 2000), 1);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_recv(s_dealer, NULL, 0, NULL, &m, 0), 0);
    return m;
}

static void
s_send(const loom_msg *m)
{
    assert_int_equal(loom_wire_send(s_dealer, NULL, 0, m, 0), 0);
}

//  A blob of one block (under 4 MiB) is named by the SHA-256 of its
//  block's SHA-256: the FIPS 180-2 test vectors are the block digests,
//  over chunk edges too; the name is one more SHA-256 (OpenSSL's, not the
//  hasher's) of that digest.
static void
test_names_hash_the_block_digest(void **state)
{
    (void)state;
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                    0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                    0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const uint8_t million_a[32] = {0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92,
                                          0x81, 0xa1, 0xc7, 0xe2, 0x84, 0xd7, 0x3e, 0x67,
                                          0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97, 0x20, 0x0e,
                                          0x04, 0x6d, 0x39, 0xcc, 0xc7, 0x11, 0x2c, 0xd0};
    uint8_t hash[LOOM_HASH_SIZE], want[SHA256_DIGEST_LENGTH];
    loom_blob_mem mem = {(const uint8_t *)"abc", 3};
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, 3, hash), 0);
    SHA256(abc, sizeof abc, want);
    assert_memory_equal(hash, want, sizeof want);
    size_t n = 1000000; //  almost 4 chunks: the stream is hashed chunk by chunk
    uint8_t *a = malloc(n);
    memset(a, 'a', n);
    mem = (loom_blob_mem){a, n};
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, n, hash), 0);
    SHA256(million_a, sizeof million_a, want);
    assert_memory_equal(hash, want, sizeof want);
    free(a);
}

//  An upload of size bytes, the same again (held: nothing sent), a
//  download back, reads past the end.
static void
s_upload_download(size_t size)
{
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 13);
    loom_blob_mem mem = {data, size};
    uint8_t hash[LOOM_HASH_SIZE];
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, hash), 0);
    loom_wire_stats before = s_stats();
    uint64_t sent = 0;
    assert_int_equal(
        loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent), 0);
    assert_int_equal(sent, size);
    loom_wire_stats after = s_stats();
    assert_int_equal(after.blob_bytes_in - before.blob_bytes_in, size);
    assert_int_equal(after.blobs_stored, before.blobs_stored + 1);
    //  Held already: nothing sent.
    assert_int_equal(
        loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent), 0);
    assert_int_equal(sent, 0);
    //  Download it back into a file.
    char path[] = "/tmp/loom-test-bc-XXXXXX";
    int fd = mkstemp(path);
    uint64_t got = 0;
    assert_int_equal(loom__blob_download(s_dealer, hash, size, fd, 5000, &got), 0);
    assert_int_equal(got, size);
    uint8_t *back = malloc(size);
    assert_int_equal(pread(fd, back, size, 0), (ssize_t)size);
    assert_memory_equal(back, data, size);
    close(fd);
    unlink(path);

    //  Past the end: refused with LOOM_EINVAL. A huge credit is clamped.
    loom_msg get = {.type = LOOM_MSG_BLOB_GET};
    get.u.blob_get.hash = (loom_span){hash, LOOM_HASH_SIZE};
    get.u.blob_get.offset = size + 1;
    get.u.blob_get.credit = 10;
    s_send(&get);
    loom_msg *m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_CHUNK);
    assert_int_equal(m->u.blob_chunk.status, LOOM_EINVAL);
    loom_msg_destroy(&m);
    get.u.blob_get.offset = size - 5;
    get.u.blob_get.credit = UINT64_MAX;
    s_send(&get);
    m = s_next();
    assert_int_equal(m->u.blob_chunk.status, 0);
    assert_int_equal(m->u.blob_chunk.data.len, 5);
    assert_true(m->u.blob_chunk.total == size);
    loom_msg_destroy(&m);
    free(back);
    free(data);
}

//  An uploader that asks again (BlobHave) in the middle of its upload, as
//  one that heard nothing for a while does, resumes it: the broker answers
//  have:false and a grant from the bytes it received, keeps what it had,
//  and skips bytes it receives twice; the blob is stored whole.
static void
test_asking_again_resumes_an_upload(void **state)
{
    (void)state;
    size_t size = 3 * LOOM_BLOB_XFER_CHUNK + 11;
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    loom_blob_mem mem = {data, size};
    uint8_t hash[LOOM_HASH_SIZE];
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, hash), 0);
    loom_msg have = {.type = LOOM_MSG_BLOB_HAVE};
    have.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    have.u.blob_have.size = size;
    s_send(&have);
    loom_msg *m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
    assert_false(m->u.blob_have.have);
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    assert_int_equal(m->u.blob_get.offset, 0);
    loom_msg_destroy(&m);
    //  One chunk, then the question again: resumed at the chunk's end.
    loom_msg put = {.type = LOOM_MSG_BLOB_PUT};
    put.u.blob_put.hash = (loom_span){hash, LOOM_HASH_SIZE};
    put.u.blob_put.total = size;
    put.u.blob_put.offset = 0;
    put.u.blob_put.data = (loom_span){data, LOOM_BLOB_XFER_CHUNK};
    s_send(&put);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    assert_int_equal(m->u.blob_get.offset, LOOM_BLOB_XFER_CHUNK);
    loom_msg_destroy(&m);
    s_send(&have);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
    assert_false(m->u.blob_have.have);
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    assert_int_equal(m->u.blob_get.offset, LOOM_BLOB_XFER_CHUNK);
    loom_msg_destroy(&m);
    //  The first chunk again (a duplicate) and one that overlaps: skipped
    //  where received, written where new.
    s_send(&put);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    assert_int_equal(m->u.blob_get.offset, LOOM_BLOB_XFER_CHUNK);
    loom_msg_destroy(&m);
    put.u.blob_put.offset = LOOM_BLOB_XFER_CHUNK / 2;
    put.u.blob_put.data = (loom_span){data + LOOM_BLOB_XFER_CHUNK / 2, LOOM_BLOB_XFER_CHUNK};
    s_send(&put);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    assert_int_equal(m->u.blob_get.offset, LOOM_BLOB_XFER_CHUNK * 3 / 2);
    loom_msg_destroy(&m);
    //  The rest, from where the broker is.
    uint64_t off = LOOM_BLOB_XFER_CHUNK * 3 / 2;
    while (off < size) {
        size_t n = size - off < LOOM_BLOB_XFER_CHUNK ? size - off : LOOM_BLOB_XFER_CHUNK;
        put.u.blob_put.offset = off;
        put.u.blob_put.data = (loom_span){data + off, n};
        s_send(&put);
        off += n;
        m = s_next();
        if (off < size) {
            assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
            assert_int_equal(m->u.blob_get.offset, off);
        } else {
            assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
            assert_true(m->u.blob_have.have);
        }
        loom_msg_destroy(&m);
    }
    //  Stored whole: downloaded back equal.
    char path[] = "/tmp/loom-test-bc-XXXXXX";
    int fd = mkstemp(path);
    uint64_t got = 0;
    assert_int_equal(loom__blob_download(s_dealer, hash, size, fd, 5000, &got), 0);
    uint8_t *back = malloc(size);
    assert_int_equal(pread(fd, back, size, 0), (ssize_t)size);
    assert_memory_equal(back, data, size);
    close(fd);
    unlink(path);
    free(back);
    free(data);
}

//  A small upload is named on the broker's thread, one of more than two
//  blocks on its hashing threads (upload_hasher.c): both are stored under
//  their name and read back. A large one whose bytes are not its name's
//  is refused, as a small one is (test_bad_requests_get_a_status).
static void
test_upload_then_download_and_skip_when_held(void **state)
{
    (void)state;
    s_upload_download(3 * LOOM_BLOB_XFER_CHUNK + 5);
    size_t size = 2 * LOOM_BLOB_HASH_BLOCK + 3 * LOOM_BLOB_XFER_CHUNK + 5;
    s_upload_download(size);

    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    loom_blob_mem mem = {data, size};
    uint8_t hash[LOOM_HASH_SIZE];
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, hash), 0);
    data[size - 1] ^= 1; //  the last byte of the last block
    uint64_t sent = 0;
    assert_int_equal(
        loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent),
        LOOM_EPROTO);
    assert_int_equal(sent, size);
    data[size - 1] ^= 1; //  and the right bytes are taken after that
    assert_int_equal(
        loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent), 0);
    assert_int_equal(sent, size);
    free(data);
}

//  A store that cannot write (a file size limit makes writes fail as a
//  full disk does): an upload small enough to be named on the broker's
//  thread and one named on the hashing threads both end at once with
//  LOOM_EIO, and the broker stores the same bytes once there is room. The
//  client is told why.
static void
test_full_disk_fails_uploads_with_eio(void **state)
{
    (void)state;
    size_t sizes[] = {3 * LOOM_BLOB_XFER_CHUNK + 5, 3 * LOOM_BLOB_HASH_BLOCK + 5};
    for (size_t k = 0; k < 2; k++) {
        size_t size = sizes[k];
        uint8_t *data = malloc(size);
        for (size_t i = 0; i < size; i++)
            data[i] = (uint8_t)(i * 11 + k);
        loom_blob_mem mem = {data, size};
        uint8_t hash[LOOM_HASH_SIZE];
        assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, hash), 0);
        struct rlimit old, lim;
        getrlimit(RLIMIT_FSIZE, &old);
        lim = old;
        lim.rlim_cur = 2 * LOOM_BLOB_XFER_CHUNK;
        signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
        uint64_t sent = 0;
        int rc = loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent);
        setrlimit(RLIMIT_FSIZE, &old);
        assert_int_equal(rc, LOOM_EIO);
        if (size > LOOM_BLOB_XFER_WINDOW)
            assert_true(sent < size); //  no more credit after the failure
        assert_int_equal(
            loom__blob_upload(s_dealer, hash, size, loom__blob_read_mem, &mem, 5000, &sent), 0);
        assert_int_equal(sent, size);
        free(data);
    }

    //  What the client is told: an Error naming the write that failed and
    //  why, then the upload's status.
    size_t size = 3 * LOOM_BLOB_XFER_CHUNK;
    uint8_t *data = calloc(1, size), hash[LOOM_HASH_SIZE];
    memset(hash, 0x5a, sizeof hash);
    loom_msg have = {.type = LOOM_MSG_BLOB_HAVE};
    have.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    have.u.blob_have.size = size;
    s_send(&have);
    loom_msg *m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
    loom_msg_destroy(&m);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = LOOM_BLOB_XFER_CHUNK;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    loom_msg put = {.type = LOOM_MSG_BLOB_PUT};
    put.u.blob_put.hash = (loom_span){hash, LOOM_HASH_SIZE};
    put.u.blob_put.total = size;
    put.u.blob_put.data = (loom_span){data, size};
    s_send(&put);
    m = s_next();
    setrlimit(RLIMIT_FSIZE, &old);
    assert_int_equal(m->type, LOOM_MSG_ERROR);
    assert_int_equal(m->u.error.code, LOOM_EIO);
    assert_non_null(strstr(m->u.error.message, "blob store: cannot write"));
    assert_non_null(strstr(m->u.error.message, strerror(EFBIG)));
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_CHUNK);
    assert_int_equal(m->u.blob_chunk.status, LOOM_EIO);
    loom_msg_destroy(&m);
    free(data);
}

//  An unnamed upload (announced under 32 zero bytes): the broker hashes
//  what it receives and answers with that name; the same bytes again are
//  sent again and stored once; the zero name itself is never stored.
static void
test_unnamed_upload_is_named_by_its_bytes(void **state)
{
    (void)state;
    size_t size = 2 * LOOM_BLOB_XFER_CHUNK + 99;
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 5 + 1);
    loom_blob_mem mem = {data, size};
    uint8_t want[LOOM_HASH_SIZE], name[LOOM_HASH_SIZE];
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, want), 0);
    loom_wire_stats before = s_stats();
    uint64_t sent = 0;
    assert_int_equal(
        loom__blob_upload_unnamed(s_dealer, size, loom__blob_read_mem, &mem, 5000, &sent, name), 0);
    assert_int_equal(sent, size);
    assert_memory_equal(name, want, sizeof want);
    loom_wire_stats after = s_stats();
    assert_int_equal(after.blobs_stored, before.blobs_stored + 1);
    memset(name, 0, sizeof name);
    assert_int_equal(
        loom__blob_upload_unnamed(s_dealer, size, loom__blob_read_mem, &mem, 5000, &sent, name), 0);
    assert_int_equal(sent, size);
    assert_memory_equal(name, want, sizeof want);
    loom_wire_stats again = s_stats();
    assert_int_equal(again.blobs_stored, after.blobs_stored);
    assert_int_equal(again.blob_store_bytes, after.blob_store_bytes);
    //  Stored under its name: it downloads, and a named upload finds it.
    char path[] = "/tmp/loom-test-bc-XXXXXX";
    int fd = mkstemp(path);
    assert_int_equal(loom__blob_download(s_dealer, want, size, fd, 5000, NULL), 0);
    close(fd);
    unlink(path);
    assert_int_equal(
        loom__blob_upload(s_dealer, want, size, loom__blob_read_mem, &mem, 5000, &sent), 0);
    assert_int_equal(sent, 0);
    //  Nothing at all: the name of no bytes.
    static const uint8_t empty[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
                                      0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                                      0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
                                      0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    assert_int_equal(
        loom__blob_upload_unnamed(s_dealer, 0, loom__blob_read_mem, &mem, 5000, &sent, name), 0);
    assert_memory_equal(name, empty, sizeof empty);
    //  The zero name is not a blob.
    uint8_t zero[LOOM_HASH_SIZE] = {0};
    loom_msg get = {.type = LOOM_MSG_BLOB_GET};
    get.u.blob_get.hash = (loom_span){zero, LOOM_HASH_SIZE};
    get.u.blob_get.credit = 100;
    s_send(&get);
    loom_msg *m = s_next();
    assert_int_equal(m->u.blob_chunk.status, LOOM_ENOENT);
    loom_msg_destroy(&m);
    free(data);
}

static void
test_bad_requests_get_a_status(void **state)
{
    (void)state;
    uint8_t hash[LOOM_HASH_SIZE];
    memset(hash, 0xab, sizeof hash);
    //  Unknown blob.
    loom_msg get = {.type = LOOM_MSG_BLOB_GET};
    get.u.blob_get.hash = (loom_span){hash, LOOM_HASH_SIZE};
    get.u.blob_get.credit = 100;
    s_send(&get);
    loom_msg *m = s_next();
    assert_int_equal(m->u.blob_chunk.status, LOOM_ENOENT);
    loom_msg_destroy(&m);
    //  A chunk out of order drops the upload; bytes that do not match are refused.
    loom_msg have = {.type = LOOM_MSG_BLOB_HAVE};
    have.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    have.u.blob_have.size = 10;
    s_send(&have);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
    assert_false(m->u.blob_have.have);
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_GET); //  the credit
    assert_true(m->u.blob_get.credit == 10);
    loom_msg_destroy(&m);
    loom_msg put = {.type = LOOM_MSG_BLOB_PUT};
    put.u.blob_put.hash = (loom_span){hash, LOOM_HASH_SIZE};
    put.u.blob_put.total = 10;
    put.u.blob_put.offset = 0;
    put.u.blob_put.data = (loom_span){(const uint8_t *)"0123456789", 10};
    s_send(&put);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_CHUNK);
    assert_int_equal(m->u.blob_chunk.status, LOOM_EPROTO); //  not the hash's bytes
    loom_msg_destroy(&m);
    //  A put with no upload started is dropped and counted.
    loom_wire_stats before = s_stats();
    s_send(&put);
    loom_msg ask = get; //  then something that is answered, to sync
    s_send(&ask);
    m = s_next();
    assert_int_equal(m->u.blob_chunk.status, LOOM_ENOENT);
    loom_msg_destroy(&m);
    loom_wire_stats after = s_stats();
    assert_true(after.msgs_rejected > before.msgs_rejected);
    //  Over the store's cap (16 GiB by default): refused at once, with an
    //  Error that names the cap, then the status.
    have.u.blob_have.size = UINT64_MAX;
    s_send(&have);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_ERROR);
    assert_int_equal(m->u.error.code, LOOM_ETOOBIG);
    assert_non_null(strstr(m->u.error.message, "--store-size"));
    loom_msg_destroy(&m);
    m = s_next();
    assert_int_equal(m->type, LOOM_MSG_BLOB_CHUNK);
    assert_int_equal(m->u.blob_chunk.status, LOOM_ETOOBIG);
    loom_msg_destroy(&m);
}

//  A source of size bytes filled from seed, and its hash.
static uint8_t *
s_source(size_t size, int seed, uint8_t *hash)
{
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 7 + seed);
    loom_blob_mem mem = {data, size};
    assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, hash), 0);
    return data;
}

static int
s_put(void *dealer, size_t size, int seed)
{
    uint8_t hash[LOOM_HASH_SIZE];
    uint8_t *data = s_source(size, seed, hash);
    loom_blob_mem mem = {data, size};
    int rc = loom__blob_upload(dealer, hash, size, loom__blob_read_mem, &mem, 5000, NULL);
    free(data);
    return rc;
}

//  Next message on dealer within 2 s.
static loom_msg *
s_next_on(void *dealer)
{
    zmq_pollitem_t it = {dealer, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 2000), 1);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_recv(dealer, NULL, 0, NULL, &m, 0), 0);
    return m;
}

//  The store's cap (--store-size) and a per-client quota (LOOM_BLOB_QUOTA):
//  the one going over gets an Error naming the limit and the sizes, and
//  a status LOOM_ETOOBIG; other clients' uploads go on; unreferenced
//  blobs make room rather than refuse.
static void
test_store_cap_and_client_quota(void **state)
{
    (void)state;
    char task[128], blob[128], dir[256];
    loom_test_ipc(task, sizeof task, "bq-task");
    loom_test_ipc(blob, sizeof blob, "bq-blob");
    snprintf(dir, sizeof dir, "%s/loom-bq-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    loom_broker_opts o = {.blob_quota = 3000};
    char *bt = NULL, *bb = NULL, *err = NULL;
    zactor_t *broker = loom_broker_start_opts(&o, task, blob, &bt, &bb, &err);
    assert_non_null(broker);
    assert_int_equal(loom_broker_set_store(broker, dir, 5000, 0, true), 0);
    void *a = loom__blob_dealer(zsys_init(), bb, NULL, NULL);
    void *b = loom__blob_dealer(zsys_init(), bb, NULL, NULL);
    void *c = loom__blob_dealer(zsys_init(), bb, NULL, NULL);
    void *d = loom__blob_dealer(zsys_init(), bb, NULL, NULL);

    //  a: 2000 bytes stored, then 1500 more would be 3500 > its quota 3000.
    assert_int_equal(s_put(a, 2000, 1), 0);
    uint8_t hash[LOOM_HASH_SIZE];
    uint8_t *data = s_source(1500, 2, hash);
    loom_msg have = {.type = LOOM_MSG_BLOB_HAVE};
    have.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    have.u.blob_have.size = 1500;
    assert_int_equal(loom_wire_send(a, NULL, 0, &have, 0), 0);
    loom_msg *m = s_next_on(a);
    assert_int_equal(m->type, LOOM_MSG_ERROR);
    assert_int_equal(m->u.error.code, LOOM_ETOOBIG);
    assert_non_null(strstr(m->u.error.message, "quota of 3000"));
    assert_non_null(strstr(m->u.error.message, "1500 bytes"));
    assert_non_null(strstr(m->u.error.message, "3500"));
    loom_msg_destroy(&m);
    m = s_next_on(a);
    assert_int_equal(m->type, LOOM_MSG_BLOB_CHUNK);
    assert_int_equal(m->u.blob_chunk.status, LOOM_ETOOBIG);
    loom_msg_destroy(&m);
    free(data);
    //  The same through the upload call: the status comes back.
    assert_int_equal(s_put(a, 1500, 2), LOOM_ETOOBIG);
    //  b is not a: its upload goes on.
    assert_int_equal(s_put(b, 1500, 3), 0);
    //  The blob a already stored costs nothing more.
    assert_int_equal(s_put(a, 2000, 1), 0);

    //  The store's cap: c and d announce 2500 bytes each and send nothing
    //  yet (uploads in progress: 5000 pending); the 3500 bytes stored are
    //  unreferenced, so dropped to make room.
    uint8_t hd[LOOM_HASH_SIZE];
    uint8_t *dd = s_source(2500, 6, hd);
    data = s_source(2500, 4, hash);
    have.u.blob_have.size = 2500;
    for (int i = 0; i < 2; i++) {
        void *who = i ? d : c;
        have.u.blob_have.hash = (loom_span){i ? hd : hash, LOOM_HASH_SIZE};
        assert_int_equal(loom_wire_send(who, NULL, 0, &have, 0), 0);
        m = s_next_on(who);
        assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
        assert_false(m->u.blob_have.have);
        loom_msg_destroy(&m);
        m = s_next_on(who); //  the grant
        assert_int_equal(m->type, LOOM_MSG_BLOB_GET);
        loom_msg_destroy(&m);
    }
    loom_wire_stats st = s_stats_of(broker);
    assert_int_equal(st.blob_store_bytes, 0);
    //  Now b's 1500 bytes do not fit beside 5000 in progress: refused
    //  with an Error naming the cap and the sizes.
    uint8_t h2[LOOM_HASH_SIZE];
    uint8_t *d2 = s_source(1500, 5, h2);
    have.u.blob_have.hash = (loom_span){h2, LOOM_HASH_SIZE};
    have.u.blob_have.size = 1500;
    assert_int_equal(loom_wire_send(b, NULL, 0, &have, 0), 0);
    m = s_next_on(b);
    assert_int_equal(m->type, LOOM_MSG_ERROR);
    assert_non_null(strstr(m->u.error.message, "cap 5000"));
    assert_non_null(strstr(m->u.error.message, "5000 being uploaded"));
    loom_msg_destroy(&m);
    m = s_next_on(b);
    assert_int_equal(m->u.blob_chunk.status, LOOM_ETOOBIG);
    loom_msg_destroy(&m);
    free(d2);
    //  c's upload, in progress, completes (restarted: same total).
    loom_blob_mem mem = {data, 2500};
    assert_int_equal(loom__blob_upload(c, hash, 2500, loom__blob_read_mem, &mem, 5000, NULL), 0);
    free(data);
    free(dd);
    zmq_close(d);

    zmq_close(a);
    zmq_close(b);
    zmq_close(c);
    zactor_destroy(&broker);
    free(bt);
    free(bb);
    free(err);
    unlink(task + 6);
    unlink(blob + 6);
}

//  An unnamed upload counts against its uploader's quota while it runs and,
//  once stored, under the name the broker gave it.
static void
test_unnamed_uploads_count_against_the_quota(void **state)
{
    (void)state;
    char task[128], blob[128];
    loom_test_ipc(task, sizeof task, "bu-task");
    loom_test_ipc(blob, sizeof blob, "bu-blob");
    loom_broker_opts o = {.blob_quota = 3000};
    char *bt = NULL, *bb = NULL, *err = NULL;
    zactor_t *broker = loom_broker_start_opts(&o, task, blob, &bt, &bb, &err);
    assert_non_null(broker);
    void *a = loom__blob_dealer(zsys_init(), bb, NULL, NULL);
    void *b = loom__blob_dealer(zsys_init(), bb, NULL, NULL);
    uint8_t hash[LOOM_HASH_SIZE], name[LOOM_HASH_SIZE];
    uint8_t *d1 = s_source(2000, 11, hash);
    uint8_t *d2 = s_source(1500, 12, hash);
    loom_blob_mem m1 = {d1, 2000}, m2 = {d2, 1500};
    //  Over the quota at once: refused before a byte is sent.
    uint8_t *big = s_source(3500, 13, hash);
    loom_blob_mem mb = {big, 3500};
    assert_int_equal(loom__blob_upload_unnamed(a, 3500, loom__blob_read_mem, &mb, 5000, NULL, name),
                     LOOM_ETOOBIG);
    //  2000 stored, named by the broker: 1500 more would be 3500.
    assert_int_equal(loom__blob_upload_unnamed(a, 2000, loom__blob_read_mem, &m1, 5000, NULL, name),
                     0);
    assert_int_equal(loom__blob_upload_unnamed(a, 1500, loom__blob_read_mem, &m2, 5000, NULL, name),
                     LOOM_ETOOBIG);
    //  Another client is not charged for it.
    assert_int_equal(loom__blob_upload_unnamed(b, 1500, loom__blob_read_mem, &m2, 5000, NULL, name),
                     0);
    free(big);
    free(d2);
    free(d1);
    zmq_close(a);
    zmq_close(b);
    zactor_destroy(&broker);
    free(bt);
    free(bb);
    free(err);
    unlink(task + 6);
    unlink(blob + 6);
}

//  A broker of a test's own, its store in dir (cap bytes, temporary).
typedef struct {
    char task[128], blob[128];
    char *bt, *bb, *err; //  its endpoints, its error
    zactor_t *actor;
} s_own_broker;

static void
s_own_start(s_own_broker *b, const char *name, const char *dir, uint64_t cap)
{
    memset(b, 0, sizeof *b);
    char ep[64];
    snprintf(ep, sizeof ep, "%s-task", name);
    loom_test_ipc(b->task, sizeof b->task, ep);
    snprintf(ep, sizeof ep, "%s-blob", name);
    loom_test_ipc(b->blob, sizeof b->blob, ep);
    b->actor = loom_broker_start(b->task, b->blob, &b->bt, &b->bb, &b->err);
    assert_non_null(b->actor);
    assert_int_equal(loom_broker_set_store(b->actor, dir, cap, 0, true), 0);
}

static void
s_own_stop(s_own_broker *b)
{
    zactor_destroy(&b->actor);
    free(b->bt);
    free(b->bb);
    free(b->err);
    unlink(b->task + 6);
    unlink(b->blob + 6);
}

//  Write len bytes of data into dir/name (mode 0600). Returns the path.
static char *
s_write_file(const char *dir, const char *name, const uint8_t *data, size_t len)
{
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(path, "%s/%s", dir, name);
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

//  Ask the broker to adopt dir's put file `name` as blob hash of size
//  bytes; its answer (have).
static bool
s_adopt(void *dealer, const char *name, const uint8_t *hash, uint64_t size)
{
    loom_msg have = {.type = LOOM_MSG_BLOB_HAVE};
    have.u.blob_have.hash = (loom_span){hash, LOOM_HASH_SIZE};
    have.u.blob_have.size = size;
    have.u.blob_have.adopt = name;
    assert_int_equal(loom_wire_send(dealer, NULL, 0, &have, 0), 0);
    loom_msg *m = s_next_on(dealer);
    assert_int_equal(m->type, LOOM_MSG_BLOB_HAVE);
    assert_memory_equal(m->u.blob_have.hash.data, hash, LOOM_HASH_SIZE);
    bool got = m->u.blob_have.have;
    loom_msg_destroy(&m);
    return got;
}

static bool
s_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

//  DIR/ab/<hex> of hash.
static void
s_store_path(const char *dir, const uint8_t *hash, char *path, size_t cap)
{
    char hex[2 * LOOM_HASH_SIZE + 1];
    loom_blob_hex(hash, hex);
    snprintf(path, cap, "%s/%.2s/%s", dir, hex, hex);
}

//  A same-host peer's put file is adopted only if it is what it claims:
//  a plain file of the store's user, one link, the announced size, within
//  the cap, named put-<n>-<n>.tmp in the store itself. A refused regular
//  file is removed; a symlink or a file outside the store is left alone.
//  After a refusal the channel upload still works.
static void
test_adoption_takes_checked_files_only(void **state)
{
    (void)state;
    char dir[256], outside[300];
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/loom-ba-%d", tmp, (int)getpid());
    //  Put files left by clients that died: a stale one goes when the
    //  store opens, a recent one (a client still writing) stays.
    assert_int_equal(mkdir(dir, 0700), 0);
    char *stale = s_write_file(dir, "put-9-1.tmp", (const uint8_t *)"old", 3);
    char *recent = s_write_file(dir, "put-9-2.tmp", (const uint8_t *)"new", 3);
    struct timespec past[2] = {{time(NULL) - 600, 0}, {time(NULL) - 600, 0}};
    assert_int_equal(utimensat(AT_FDCWD, stale, past, 0), 0);
    s_own_broker ob;
    s_own_start(&ob, "ba", dir, 100000);
    zactor_t *broker = ob.actor;
    assert_false(s_exists(stale));
    assert_true(s_exists(recent));
    unlink(recent);
    free(stale);
    free(recent);
    void *a = loom__blob_dealer(zsys_init(), ob.bb, NULL, NULL);
    uint8_t hash[LOOM_HASH_SIZE], other[LOOM_HASH_SIZE], big[LOOM_HASH_SIZE];
    uint8_t *data = s_source(3000, 21, hash);
    uint8_t *data2 = s_source(2000, 22, other);
    uint8_t *data3 = s_source(150000, 23, big);
    //  No such file: refused.
    assert_false(s_adopt(a, "put-1-0.tmp", hash, 3000));
    loom_wire_stats before = s_stats_of(broker);

    //  Good: renamed into place, read-only, counted as adopted, not as in.
    char *p1 = s_write_file(dir, "put-1-1.tmp", data, 3000);
    assert_true(s_adopt(a, "put-1-1.tmp", hash, 3000));
    char sp[512];
    s_store_path(dir, hash, sp, sizeof sp);
    struct stat sb;
    assert_int_equal(stat(sp, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0400);
    assert_int_equal(sb.st_size, 3000);
    assert_false(s_exists(p1));
    loom_wire_stats after = s_stats_of(broker);
    assert_int_equal(after.blob_bytes_adopted - before.blob_bytes_adopted, 3000);
    assert_int_equal(after.blob_bytes_in, before.blob_bytes_in);
    assert_int_equal(after.blobs_stored, before.blobs_stored + 1);
    //  Held already: the put file goes, nothing counted twice.
    char *p1b = s_write_file(dir, "put-1-9.tmp", data, 3000);
    assert_true(s_adopt(a, "put-1-9.tmp", hash, 3000));
    assert_false(s_exists(p1b));
    assert_int_equal(s_stats_of(broker).blob_bytes_adopted, after.blob_bytes_adopted);

    //  Wrong size: refused, and the file (ours) removed.
    char *p2 = s_write_file(dir, "put-1-2.tmp", data2, 2000);
    assert_false(s_adopt(a, "put-1-2.tmp", other, 2001));
    assert_false(s_exists(p2));
    s_store_path(dir, other, sp, sizeof sp);
    assert_false(s_exists(sp));

    //  A symlink to a file outside the store: refused, both left alone.
    snprintf(outside, sizeof outside, "%s/loom-ba-out-%d", tmp, (int)getpid());
    int fd = open(outside, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_int_equal(write(fd, data2, 2000), 2000);
    close(fd);
    char link_path[512];
    snprintf(link_path, sizeof link_path, "%s/put-1-3.tmp", dir);
    assert_int_equal(symlink(outside, link_path), 0);
    assert_false(s_adopt(a, "put-1-3.tmp", other, 2000));
    assert_true(s_exists(link_path));
    assert_true(s_exists(outside));
    assert_false(s_exists(sp));

    //  Names that leave the store, or are not put files: refused; the file
    //  outside is not touched.
    char *p4 = s_write_file(tmp, "put-7-4.tmp", data2, 2000);
    assert_false(s_adopt(a, "../put-7-4.tmp", other, 2000));
    assert_false(s_adopt(a, "ab/put-7-4.tmp", other, 2000));
    assert_false(s_adopt(a, "put-7-4.tmp/", other, 2000));
    assert_false(s_adopt(a, "put-x-4.tmp", other, 2000));
    assert_true(s_exists(p4));
    unlink(p4);

    //  Hard-linked (nlink 2): refused, the put file removed.
    char *p5 = s_write_file(dir, "put-1-5.tmp", data2, 2000);
    char alias[512];
    snprintf(alias, sizeof alias, "%s/alias-%d", tmp, (int)getpid());
    assert_int_equal(link(p5, alias), 0);
    assert_false(s_adopt(a, "put-1-5.tmp", other, 2000));
    assert_false(s_exists(p5));
    assert_false(s_exists(sp));
    unlink(alias);

    //  Over the store's cap (100000): refused, removed.
    char *p6 = s_write_file(dir, "put-1-6.tmp", data3, 150000);
    assert_false(s_adopt(a, "put-1-6.tmp", big, 150000));
    assert_false(s_exists(p6));

    //  After the refusals the channel still takes the bytes.
    loom_wire_stats mid = s_stats_of(broker);
    uint8_t name[LOOM_HASH_SIZE];
    loom_blob_mem mem = {data2, 2000};
    assert_int_equal(
        loom__blob_upload_unnamed(a, 2000, loom__blob_read_mem, &mem, 5000, NULL, name), 0);
    assert_memory_equal(name, other, LOOM_HASH_SIZE);
    assert_true(s_exists(sp));
    loom_wire_stats end = s_stats_of(broker);
    assert_int_equal(end.blob_bytes_in - mid.blob_bytes_in, 2000);
    assert_int_equal(end.blob_bytes_adopted, after.blob_bytes_adopted);

    unlink(link_path);
    unlink(outside);
    free(p1);
    free(p1b);
    free(p2);
    free(p4);
    free(p5);
    free(p6);
    free(data);
    free(data2);
    free(data3);
    zmq_close(a);
    s_own_stop(&ob);
}

//  A client on the broker's host that cannot write its put file into the
//  store, or whose put file the broker refuses, uploads the share on the
//  channel instead, and the share works; it leaves no put file behind.
//  (The store directory the client was told is swapped under it: one that
//  does not exist, then one that is not the broker's store.)
static void
test_client_falls_back_to_the_channel(void **state)
{
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/loom-bf-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    s_own_broker ob;
    s_own_start(&ob, "bf", dir, 0);
    zactor_t *broker = ob.actor;
    loom_client *c = loom_client_new(ob.bt, NULL);
    assert_non_null(c);
    loom_pipeline *p = loom_pipeline_new(c, "fallback");
    assert_non_null(p);
    uint8_t hash[LOOM_HASH_SIZE];
    uint8_t *data = s_source(5000, 31, hash);
    //  Adopted when nothing is in the way.
    loom_wire_stats before = s_stats_of(broker);
    assert_int_equal(loom_pipeline_share(p, "one", data, 1000), 0);
    loom_wire_stats mid = s_stats_of(broker);
    assert_int_equal(mid.blob_bytes_adopted - before.blob_bytes_adopted, 1000);
    //  Cannot create the put file.
    char *told = c->blob_store;
    char gone[300], other[300];
    snprintf(gone, sizeof gone, "%s/no-such-dir", dir);
    c->blob_store = gone;
    assert_int_equal(loom_pipeline_share(p, "two", data, 5000), 0);
    loom_wire_stats after = s_stats_of(broker);
    assert_int_equal(after.blob_bytes_adopted, mid.blob_bytes_adopted);
    assert_int_equal(after.blob_bytes_in - mid.blob_bytes_in, 5000);
    char sp[512];
    s_store_path(dir, hash, sp, sizeof sp);
    assert_true(s_exists(sp));
    //  The broker refuses the adoption (the put file is not in its store).
    snprintf(other, sizeof other, "%s-other", dir);
    assert_int_equal(mkdir(other, 0700), 0);
    c->blob_store = other;
    uint8_t h3[LOOM_HASH_SIZE];
    uint8_t *d3 = s_source(3000, 32, h3);
    assert_int_equal(loom_pipeline_share(p, "three", d3, 3000), 0);
    loom_wire_stats last = s_stats_of(broker);
    assert_int_equal(last.blob_bytes_adopted, mid.blob_bytes_adopted);
    assert_int_equal(last.blob_bytes_in - after.blob_bytes_in, 3000);
    s_store_path(dir, h3, sp, sizeof sp);
    assert_true(s_exists(sp));
    assert_int_equal(rmdir(other), 0); //  empty: the client removed its put file
    c->blob_store = told;
    free(d3);
    free(data);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
    s_own_stop(&ob);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_hash_the_block_digest),
        cmocka_unit_test(test_upload_then_download_and_skip_when_held),
        cmocka_unit_test(test_asking_again_resumes_an_upload),
        cmocka_unit_test(test_full_disk_fails_uploads_with_eio),
        cmocka_unit_test(test_unnamed_upload_is_named_by_its_bytes),
        cmocka_unit_test(test_bad_requests_get_a_status),
        cmocka_unit_test(test_store_cap_and_client_quota),
        cmocka_unit_test(test_unnamed_uploads_count_against_the_quota),
        cmocka_unit_test(test_adoption_takes_checked_files_only),
        cmocka_unit_test(test_client_falls_back_to_the_channel),
    };
    return cmocka_run_group_tests_name("blob_channel", tests, s_setup, s_teardown);
}
