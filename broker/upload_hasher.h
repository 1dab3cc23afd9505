/*  upload_hasher: names a blob as it arrives, on background threads,
    block by block.

    A blob's name is the SHA-256 of its 4 MiB blocks' SHA-256 digests
    (blob_hash.h), so its blocks can be hashed at the same time on
    different cores. An upload to the broker's store arrives in order,
    chunk by chunk, on the broker's thread; each chunk is copied into a
    block buffer, and each block, once whole (or the last one, once the
    blob is complete), is hashed by a small pool of threads shared by
    every upload of the process (at most 4, not more than the CPUs). The
    broker's thread then only writes and copies: a hash of 1 GiB costs
    about 0.6 s of one core, which would otherwise be taken from routing
    tasks, and blocks are hashed two or more at a time.

    An upload has at most 3 block buffers (12 MiB): the writer waits for
    one to come back when the hashing is behind, so a fast sender cannot
    queue a whole file of work, and the final wait is short.  */

#ifndef LOOM_UPLOAD_HASHER_H
#define LOOM_UPLOAD_HASHER_H

#include <stddef.h>
#include <stdint.h>

typedef struct loom_upload_hasher loom_upload_hasher;

//  A namer for a blob of total bytes.
loom_upload_hasher *loom_upload_hasher_new(uint64_t total);

//  The next len bytes of the blob (no more than total in all): copied,
//  each block queued once whole. May wait for a block buffer.
void loom_upload_hasher_update(loom_upload_hasher *self, const void *data, size_t len);

//  Once all total bytes are in: wait for every block, then the blob's
//  name into hash (32 bytes).
void loom_upload_hasher_final(loom_upload_hasher *self, uint8_t *hash);

//  Wait for this upload's blocks in progress (queued ones are dropped),
//  free, set *self_p to NULL. Accepts NULL.
void loom_upload_hasher_destroy(loom_upload_hasher **self_p);

#endif
