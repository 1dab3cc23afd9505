/*  blob_store: the broker's content-addressed store of blobs (shares and
    files), on disk under one directory.

    A blob is named by the SHA-256 of its bytes and lives at
    DIR/ab/<64 hex>, a path built only from a digest the store verified
    itself: uploads go to a temp file, are hashed as they arrive, and are
    renamed into place only when the hash of the bytes received equals the
    name they were announced under. An unnamed upload (announced under
    LOOM_BLOB_UNNAMED, all zero bytes, which no SHA-256 output is) is
    stored under the hash of the bytes received, whatever they are.
    Nothing here touches sockets: the broker drives uploads and reads
    chunk by chunk.

    Lifetime: pipelines reference blobs (owner strings chosen by the
    broker, e.g. "session/pipeline"). A blob no owner references is kept
    for `ttl_ms` after its last use, then removed; when the store is over
    its size cap, unreferenced blobs go first, least recently used first.  */

#ifndef LOOM_BLOB_STORE_H
#define LOOM_BLOB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_BLOB_HASH_SIZE 32
#define LOOM_BLOB_DEFAULT_CAP ((uint64_t)16 << 30) //  16 GiB
#define LOOM_BLOB_DEFAULT_TTL_MS (10 * 60 * 1000)  //  10 minutes
#define LOOM_BLOB_UPLOAD_IDLE_MS (60 * 1000)       //  an upload silent this long is dropped

//  The name of an upload the store names itself (32 zero bytes).
extern const uint8_t LOOM_BLOB_UNNAMED[LOOM_BLOB_HASH_SIZE];

//  True if hash is LOOM_BLOB_UNNAMED.
bool loom_blob_unnamed(const uint8_t *hash);

typedef struct loom_blob_store loom_blob_store;

//  Open (creating it 0700 if needed) the store at dir; blobs already
//  there are indexed (temp files left by a crash are removed). cap_bytes
//  0: LOOM_BLOB_DEFAULT_CAP; ttl_ms 0: LOOM_BLOB_DEFAULT_TTL_MS. Returns
//  NULL, with a message logged, if dir cannot be created or read.
loom_blob_store *loom_blob_store_new(const char *dir, uint64_t cap_bytes, int64_t ttl_ms);

//  Close uploads in progress (their temp files removed), free. Blobs stay
//  on disk. Sets *self_p to NULL; accepts NULL.
void loom_blob_store_destroy(loom_blob_store **self_p);

//  True if the blob is stored; *size (may be NULL) its size. Counts as a use.
bool loom_blob_store_has(loom_blob_store *self, const uint8_t *hash, uint64_t *size);

//  Read up to cap bytes of a stored blob at offset into buf; *n the bytes
//  read, *total the blob's size. Returns 0, LOOM_ENOENT (not stored),
//  LOOM_EINVAL (offset past the end), LOOM_EIO.
int loom_blob_store_read(loom_blob_store *self, const uint8_t *hash, uint64_t offset, void *buf,
                         size_t cap, size_t *n, uint64_t *total);

//  Start (or restart from 0) the upload by `peer` of blob `hash` of `total`
//  bytes. Returns 0; LOOM_ETOOBIG when stored blobs, uploads in progress
//  and this one would go over the store's cap even after dropping every
//  unreferenced blob (blobs pipelines use are kept); LOOM_EIO. A blob
//  of 0 bytes is checked and stored at once (*done true). hash
//  LOOM_BLOB_UNNAMED: the blob is named by its bytes (one such upload per
//  peer at a time). name (may be NULL) gets the stored name when *done.
int loom_blob_store_upload_begin(loom_blob_store *self, const char *peer, const uint8_t *hash,
                                 uint64_t total, bool *done, uint8_t *name);

//  Append a chunk to peer's upload of hash. offset must be at most the
//  bytes received so far (bytes received already are skipped: a resumed
//  uploader may send them again) and the chunk must not go past total. When the last
//  byte arrives the blob is verified and stored (*done true; name, may be
//  NULL, gets its name: hash, or for an unnamed upload the hash of the
//  bytes). Returns 0; LOOM_ESTATE (no such upload); LOOM_EINVAL (wrong
//  offset or size: the upload is dropped); LOOM_EPROTO (hash mismatch:
//  dropped); LOOM_EIO (disk: dropped). *received_p (may be NULL): bytes
//  received so far.
int loom_blob_store_upload_write(loom_blob_store *self, const char *peer, const uint8_t *hash,
                                 uint64_t offset, const void *data, size_t len, bool *done,
                                 uint64_t *received_p, uint8_t *name);

//  Why the last upload or upload_begin that returned LOOM_EIO failed
//  ("blob store: cannot write PATH: No space left on device"), for the
//  client to be told.
const char *loom_blob_store_error(const loom_blob_store *self);

//  Adopt the file DIR/name that a client on this host wrote itself as blob
//  hash of size bytes: name must be put-<digits>-<digits>.tmp; the file a
//  regular one (not a symlink) of the store's user, with one link and
//  exactly size bytes; room for it as for an upload (LOOM_ETOOBIG). The
//  bytes are not hashed again: see PROTOCOL.md, "Same-host upload". It is
//  made read-only and renamed into place (if the blob is held already the
//  file is removed). Returns 0 once the store holds the blob; LOOM_EINVAL,
//  LOOM_ETOOBIG, LOOM_EIO when refused: the file is removed if it was a
//  regular file of the store's user, else left alone.
int loom_blob_store_adopt(loom_blob_store *self, const char *name, const uint8_t *hash,
                          uint64_t size);

//  Total of peer's upload of hash, or 0 with false if there is none;
//  *received (may be NULL): the bytes it has written so far.
bool loom_blob_store_upload_total(loom_blob_store *self, const char *peer, const uint8_t *hash,
                                  uint64_t *total, uint64_t *received);

//  owner references hash (once, however many calls). Returns false if the
//  blob is not stored.
bool loom_blob_store_ref(loom_blob_store *self, const char *owner, const uint8_t *hash);

//  Drop every reference of owner; its blobs start their time-to-live.
void loom_blob_store_release(loom_blob_store *self, const char *owner);
void loom_blob_store_release_prefix(loom_blob_store *self, const char *prefix);

//  Remove idle uploads, blobs past their time-to-live, and unreferenced
//  blobs while over the cap. now_ms from loom_now_ms().
void loom_blob_store_sweep(loom_blob_store *self, int64_t now_ms);

//  The cap; bytes announced by uploads in progress; the size of a stored
//  blob (false if not stored; not counted as a use).
uint64_t loom_blob_store_cap(const loom_blob_store *self);
uint64_t loom_blob_store_pending(loom_blob_store *self);
bool loom_blob_store_size(const loom_blob_store *self, const uint8_t *hash, uint64_t *size);

//  Blobs stored and their bytes.
uint64_t loom_blob_store_count(const loom_blob_store *self);
uint64_t loom_blob_store_bytes(const loom_blob_store *self);

//  Lower-case hex of a hash into hex (2 * LOOM_BLOB_HASH_SIZE + 1 bytes).
void loom_blob_hex(const uint8_t *hash, char *hex);

#endif
