/*  blob_hash: how blobs are named. A blob is cut into blocks of
    LOOM_BLOB_HASH_BLOCK (4 MiB) bytes, the last one possibly shorter; its
    name (32 bytes, LOOM_HASH_SIZE) is the SHA-256 of the concatenated
    SHA-256 digests of its blocks, in order. The empty blob has no blocks:
    its name is the SHA-256 of nothing. Blocks are hashed independently, so
    a file on disk can be named on several cores at once
    (loom__blob_hash_fd, blob_transfer.c): one SHA-256 pass is about 2 GB/s
    a core, slower than linking a blob from the broker's store. A stream
    (an upload arriving at the broker, a download) is named as it goes with
    the hasher below, at the cost of one small SHA-256 per block.

    SHA-256 is OpenSSL's EVP, which uses the CPU's SHA extensions where it
    has them (BLAKE2b in libsodium did 0.7 GB/s). Broker, client and worker
    all use these few calls, header-only so that the broker's and the
    worker's fuzz builds, which compile their sources alone, get them
    without another file.  */

#ifndef LOOM_BLOB_HASH_H
#define LOOM_BLOB_HASH_H

#include "base.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define LOOM_BLOB_HASH_LEN 32 //  SHA-256; equal to wire.h's LOOM_HASH_SIZE

//  Bytes in a block of a blob's name (the last block may be shorter).
#define LOOM_BLOB_HASH_BLOCK ((uint64_t)4 << 20)

//  At most this many threads hash the blocks of one blob.
#define LOOM_BLOB_HASH_THREADS 4

//  One stream's running name.
typedef struct {
    EVP_MD_CTX *block; //  SHA-256 of the current block's bytes so far
    EVP_MD_CTX *top;   //  SHA-256 of the digests of the finished blocks
    uint64_t in_block; //  Bytes in the current block (< LOOM_BLOB_HASH_BLOCK)
} loom__blob_hasher;

//  A new SHA-256 context at its start; aborts if OpenSSL cannot make one.
static inline EVP_MD_CTX *
loom__blob_sha256_new(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    LOOM_ASSERT(md);
    int ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    LOOM_ASSERT(ok == 1);
    return md;
}

//  md's digest into out (32 bytes); md starts again from nothing.
static inline void
loom__blob_sha256_final(EVP_MD_CTX *md, uint8_t *out)
{
    unsigned int n = 0;
    int ok = EVP_DigestFinal_ex(md, out, &n);
    LOOM_ASSERT(ok == 1 && n == LOOM_BLOB_HASH_LEN);
    ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    LOOM_ASSERT(ok == 1);
}

//  A hasher at its start. Aborts if OpenSSL cannot make one (no memory).
static inline loom__blob_hasher *
loom__blob_hasher_new(void)
{
    loom__blob_hasher *self = loom_xmalloc(sizeof *self);
    self->block = loom__blob_sha256_new();
    self->top = loom__blob_sha256_new();
    self->in_block = 0;
    return self;
}

//  Free the hasher and set *self_p to NULL; accepts NULL.
static inline void
loom__blob_hasher_destroy(loom__blob_hasher **self_p)
{
    LOOM_ASSERT(self_p);
    loom__blob_hasher *self = *self_p;
    if (!self)
        return;
    EVP_MD_CTX_free(self->block);
    EVP_MD_CTX_free(self->top);
    free(self);
    *self_p = NULL;
}

//  Close the current block: its digest goes into the top hash.
static inline void
loom__blob_hasher_end_block(loom__blob_hasher *self)
{
    uint8_t digest[LOOM_BLOB_HASH_LEN];
    loom__blob_sha256_final(self->block, digest);
    int ok = EVP_DigestUpdate(self->top, digest, sizeof digest);
    LOOM_ASSERT(ok == 1);
    self->in_block = 0;
}

//  Hash len more bytes.
static inline void
loom__blob_hasher_update(loom__blob_hasher *self, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        uint64_t room = LOOM_BLOB_HASH_BLOCK - self->in_block;
        size_t n = len < room ? len : (size_t)room;
        int ok = EVP_DigestUpdate(self->block, p, n);
        LOOM_ASSERT(ok == 1);
        self->in_block += n;
        if (self->in_block == LOOM_BLOB_HASH_BLOCK)
            loom__blob_hasher_end_block(self);
        p += n;
        len -= n;
    }
}

//  The name of everything so far into hash (32 bytes); the hasher
//  starts again from nothing.
static inline void
loom__blob_hasher_final(loom__blob_hasher *self, uint8_t *hash)
{
    if (self->in_block > 0)
        loom__blob_hasher_end_block(self);
    loom__blob_sha256_final(self->top, hash);
}

//  Threads worth hashing blocks on: the online CPUs, 1 to
//  LOOM_BLOB_HASH_THREADS.
static inline int
loom__blob_hash_threads(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < 1 ? 1 : cpus > LOOM_BLOB_HASH_THREADS ? LOOM_BLOB_HASH_THREADS : (int)cpus;
}

//  The name of a blob from its blocks' digests (blocks x 32 bytes, in
//  order) into hash.
static inline void
loom__blob_name_of_digests(const uint8_t *digests, uint64_t blocks, uint8_t *hash)
{
    EVP_MD_CTX *top = loom__blob_sha256_new();
    int ok = blocks ? EVP_DigestUpdate(top, digests, blocks * LOOM_BLOB_HASH_LEN) : 1;
    LOOM_ASSERT(ok == 1);
    loom__blob_sha256_final(top, hash);
    EVP_MD_CTX_free(top);
}

//  True if two digests are equal (constant time).
static inline bool
loom__blob_hash_equal(const uint8_t *a, const uint8_t *b)
{
    return CRYPTO_memcmp(a, b, LOOM_BLOB_HASH_LEN) == 0;
}

#endif
