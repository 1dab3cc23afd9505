/*  blob_hash: how blobs are named. A blob's name is the SHA-256 of its
    bytes (32 bytes, LOOM_HASH_SIZE), computed with OpenSSL's EVP, which
    uses the CPU's SHA extensions where it has them (about 2 GB/s a core on
    the machines we measure; BLAKE2b in libsodium did 0.7). Broker, client
    and worker all use these few calls, header-only so that the broker's and
    the worker's fuzz builds, which compile their sources alone, get them
    without another file.  */

#ifndef LOOM_BLOB_HASH_H
#define LOOM_BLOB_HASH_H

#include "base.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_BLOB_HASH_LEN 32 //  SHA-256; equal to wire.h's LOOM_HASH_SIZE

//  One stream's running SHA-256 (an EVP_MD_CTX).
typedef EVP_MD_CTX loom__blob_hasher;

//  A hasher at its start. Aborts if OpenSSL cannot make one (no memory).
static inline loom__blob_hasher *
loom__blob_hasher_new(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    LOOM_ASSERT(md);
    int ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    LOOM_ASSERT(ok == 1);
    return md;
}

//  Free the hasher and set *self_p to NULL; accepts NULL.
static inline void
loom__blob_hasher_destroy(loom__blob_hasher **self_p)
{
    LOOM_ASSERT(self_p);
    EVP_MD_CTX_free(*self_p);
    *self_p = NULL;
}

//  Hash len more bytes.
static inline void
loom__blob_hasher_update(loom__blob_hasher *self, const void *data, size_t len)
{
    int ok = len ? EVP_DigestUpdate(self, data, len) : 1;
    LOOM_ASSERT(ok == 1);
}

//  The digest of everything so far into hash (32 bytes); the hasher
//  starts again from nothing.
static inline void
loom__blob_hasher_final(loom__blob_hasher *self, uint8_t *hash)
{
    unsigned int n = 0;
    int ok = EVP_DigestFinal_ex(self, hash, &n);
    LOOM_ASSERT(ok == 1 && n == LOOM_BLOB_HASH_LEN);
    ok = EVP_DigestInit_ex(self, EVP_sha256(), NULL);
    LOOM_ASSERT(ok == 1);
}

//  True if two digests are equal (constant time).
static inline bool
loom__blob_hash_equal(const uint8_t *a, const uint8_t *b)
{
    return CRYPTO_memcmp(a, b, LOOM_BLOB_HASH_LEN) == 0;
}

#endif
