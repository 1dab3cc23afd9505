/*  test_blob_hash: blob names (blob_hash.h): the SHA-256 of the SHA-256
    digests of the blob's 4 MiB blocks. The expected names are computed here
    with OpenSSL's one-shot SHA256 over the blocks, apart from the hasher;
    the streaming hasher, loom__blob_hash over memory and the threaded
    loom__blob_hash_fd over a file must all give them.  */

#include "loom_test.h"

#include <fcntl.h>
#include <openssl/sha.h>

#include "blob_hash.h"
#include "blob_transfer.h"
#include "upload_hasher.h"
#include "wire.h"

#define S_BLOCK ((size_t)LOOM_BLOB_HASH_BLOCK)

//  The edge sizes: none, one byte, a block less one, one block, a block and
//  a byte, three blocks and a short fourth.
static const size_t s_sizes[] = {0, 1, S_BLOCK - 1, S_BLOCK, S_BLOCK + 1, 3 * S_BLOCK + 17};
#define S_NSIZES (sizeof s_sizes / sizeof s_sizes[0])
#define S_MAX (3 * S_BLOCK + 17)

static uint8_t *s_data; //  S_MAX pseudo-random bytes

static int
s_setup(void **state)
{
    (void)state;
    s_data = malloc(S_MAX);
    if (!s_data)
        return -1;
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < S_MAX; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        s_data[i] = (uint8_t)x;
    }
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    free(s_data);
    return 0;
}

//  The name of size bytes, from the rule itself: SHA-256 over the blocks'
//  SHA-256 digests in order.
static void
s_expected(const uint8_t *data, size_t size, uint8_t *name)
{
    size_t blocks = (size + S_BLOCK - 1) / S_BLOCK;
    uint8_t *digests = malloc(blocks * SHA256_DIGEST_LENGTH + 1);
    assert_non_null(digests);
    for (size_t b = 0; b < blocks; b++) {
        size_t len = size - b * S_BLOCK < S_BLOCK ? size - b * S_BLOCK : S_BLOCK;
        SHA256(data + b * S_BLOCK, len, digests + b * SHA256_DIGEST_LENGTH);
    }
    SHA256(digests, blocks * SHA256_DIGEST_LENGTH, name);
    free(digests);
}

//  A temp file holding size bytes of s_data, opened for reading; its path
//  is removed at once (the fd keeps it).
static int
s_temp_file(size_t size)
{
    char path[] = "/tmp/loom-test-blob-hash-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, s_data + done, size - done);
        assert_true(w > 0);
        done += (size_t)w;
    }
    return fd;
}

//  Feed size bytes to a hasher in pieces of random sizes (some empty,
//  some crossing a block edge) from seed, through update.
static void
s_feed_with(void (*update)(void *, const void *, size_t), void *h, const uint8_t *data,
            size_t size, unsigned int seed)
{
    for (size_t off = 0; off < size;) {
        size_t n = (size_t)rand_r(&seed) % (1536 * 1024);
        if (n > size - off)
            n = size - off;
        update(h, data + off, n);
        off += n;
    }
}

static void
s_update_stream(void *h, const void *data, size_t len)
{
    loom__blob_hasher_update(h, data, len);
}

static void
s_update_upload(void *h, const void *data, size_t len)
{
    loom_upload_hasher_update(h, data, len);
}

static void
s_feed(loom__blob_hasher *h, const uint8_t *data, size_t size, unsigned int seed)
{
    s_feed_with(s_update_stream, h, data, size, seed);
}

static void
test_empty_blob_is_sha256_of_nothing(void **state)
{
    (void)state;
    static const uint8_t nothing[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
                                        0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                                        0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
                                        0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    uint8_t name[LOOM_HASH_SIZE];
    loom__blob_hasher *h = loom__blob_hasher_new();
    loom__blob_hasher_final(h, name);
    loom__blob_hasher_destroy(&h);
    assert_null(h);
    assert_memory_equal(name, nothing, sizeof nothing);
    int fd = s_temp_file(0);
    memset(name, 0, sizeof name);
    assert_int_equal(loom__blob_hash_fd(fd, 0, name), 0);
    close(fd);
    assert_memory_equal(name, nothing, sizeof nothing);
}

//  Every edge size: the hasher fed in random pieces, loom__blob_hash over
//  memory and loom__blob_hash_fd over a file give the rule's name; for any
//  bytes at all it is not the plain SHA-256 of the bytes.
static void
test_three_ways_give_the_rule_s_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < S_NSIZES; i++) {
        size_t size = s_sizes[i];
        uint8_t want[LOOM_HASH_SIZE], got[LOOM_HASH_SIZE];
        s_expected(s_data, size, want);

        loom__blob_hasher *h = loom__blob_hasher_new();
        s_feed(h, s_data, size, (unsigned int)(i + 1));
        loom__blob_hasher_final(h, got);
        loom__blob_hasher_destroy(&h);
        assert_memory_equal(got, want, sizeof want);

        loom_blob_mem mem = {s_data, size};
        memset(got, 0, sizeof got);
        assert_int_equal(loom__blob_hash(loom__blob_read_mem, &mem, size, got), 0);
        assert_memory_equal(got, want, sizeof want);

        int fd = s_temp_file(size);
        memset(got, 0, sizeof got);
        assert_int_equal(loom__blob_hash_fd(fd, size, got), 0);
        close(fd);
        assert_memory_equal(got, want, sizeof want);

        uint8_t plain[SHA256_DIGEST_LENGTH];
        SHA256(s_data, size, plain);
        if (size > 0)
            assert_memory_not_equal(got, plain, sizeof plain);
    }
}

//  A file shorter than the size asked for (in its first block, or in a
//  later block while several threads hash) is LOOM_EIO, and no name is
//  written; so is a descriptor that cannot be read.
static void
test_short_file_is_eio(void **state)
{
    (void)state;
    const size_t have[] = {1, S_BLOCK + 1, 3 * S_BLOCK + 17};
    for (size_t i = 0; i < sizeof have / sizeof have[0]; i++) {
        int fd = s_temp_file(have[i]);
        uint8_t got[LOOM_HASH_SIZE], untouched[LOOM_HASH_SIZE];
        memset(got, 0xee, sizeof got);
        memcpy(untouched, got, sizeof got);
        assert_int_equal(loom__blob_hash_fd(fd, have[i] + 1, got), LOOM_EIO);
        assert_memory_equal(got, untouched, sizeof got);
        //  The whole file is fine: the same descriptor names it.
        assert_int_equal(loom__blob_hash_fd(fd, have[i], got), 0);
        close(fd);
    }
    uint8_t got[LOOM_HASH_SIZE];
    assert_int_equal(loom__blob_hash_fd(-1, 3 * S_BLOCK, got), LOOM_EIO);
}

//  final() starts the hasher again: the same bytes hashed twice with one
//  hasher give the same name, whether they end inside a block or on its edge.
static void
test_final_restarts(void **state)
{
    (void)state;
    const size_t sizes[] = {S_BLOCK + 5, S_BLOCK, 17};
    loom__blob_hasher *h = loom__blob_hasher_new();
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t want[LOOM_HASH_SIZE], first[LOOM_HASH_SIZE], second[LOOM_HASH_SIZE];
        s_expected(s_data, sizes[i], want);
        s_feed(h, s_data, sizes[i], 7);
        loom__blob_hasher_final(h, first);
        s_feed(h, s_data, sizes[i], 8);
        loom__blob_hasher_final(h, second);
        assert_memory_equal(first, want, sizeof want);
        assert_memory_equal(second, want, sizeof want);
    }
    loom__blob_hasher_destroy(&h);
    loom__blob_hasher_destroy(&h); //  accepts NULL
}

//  The broker's upload hasher (broker/upload_hasher.c: blocks hashed on a
//  pool of threads) gives the rule's name for every edge size fed in
//  random pieces; so do three uploads fed at once, their blocks mixed in
//  the pool's queue; one destroyed half way (blocks queued, one being
//  filled) frees everything and does not hang.
static void
test_upload_hasher_gives_the_rule_s_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < S_NSIZES; i++) {
        uint8_t want[LOOM_HASH_SIZE], got[LOOM_HASH_SIZE];
        s_expected(s_data, s_sizes[i], want);
        loom_upload_hasher *u = loom_upload_hasher_new(s_sizes[i]);
        s_feed_with(s_update_upload, u, s_data, s_sizes[i], (unsigned int)(i + 11));
        memset(got, 0, sizeof got);
        loom_upload_hasher_final(u, got);
        loom_upload_hasher_destroy(&u);
        assert_null(u);
        assert_memory_equal(got, want, sizeof want);
    }

    enum { N = 3 };
    loom_upload_hasher *u[N];
    size_t off[N] = {0};
    unsigned int seed = 5;
    for (int k = 0; k < N; k++)
        u[k] = loom_upload_hasher_new(S_MAX);
    for (bool more = true; more;) {
        more = false;
        for (int k = 0; k < N; k++) {
            size_t n = (size_t)rand_r(&seed) % (3 * S_BLOCK / 2);
            if (n > S_MAX - off[k])
                n = S_MAX - off[k];
            loom_upload_hasher_update(u[k], s_data + off[k], n);
            off[k] += n;
            more |= off[k] < S_MAX;
        }
    }
    uint8_t want[LOOM_HASH_SIZE];
    s_expected(s_data, S_MAX, want);
    for (int k = 0; k < N; k++) {
        uint8_t got[LOOM_HASH_SIZE];
        loom_upload_hasher_final(u[k], got);
        loom_upload_hasher_destroy(&u[k]);
        assert_memory_equal(got, want, sizeof want);
    }

    loom_upload_hasher *half = loom_upload_hasher_new(S_MAX);
    loom_upload_hasher_update(half, s_data, 2 * S_BLOCK + 100);
    loom_upload_hasher_destroy(&half);
    assert_null(half);
    loom_upload_hasher_destroy(&half); //  accepts NULL
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_blob_is_sha256_of_nothing),
        cmocka_unit_test(test_three_ways_give_the_rule_s_name),
        cmocka_unit_test(test_short_file_is_eio),
        cmocka_unit_test(test_final_restarts),
        cmocka_unit_test(test_upload_hasher_gives_the_rule_s_name),
    };
    return cmocka_run_group_tests_name("blob_hash", tests, s_setup, s_teardown);
}
