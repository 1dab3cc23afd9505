/*  blob_cache: a worker host's on-disk cache of blobs, shared by the
    worker processes of one supervisor (and by any process given the same
    directory).

    Layout: DIR/ab/<64 hex> (the blob, read-only, named by its verified
    SHA-256), DIR/ab/<hex>.lock (the fetch lock), DIR/ab/<hex>.<pid>.tmp
    (a fetch in progress). A process that needs a blob takes the blob's
    lock (flock, exclusive), looks again, and only then fetches: when all
    the processes of a host ask at once, one fetches and the others wait
    and find it there. A fetch goes to the temp file and is renamed into
    place only after its hash matched, so a blob is never visible half
    written or wrong. Uses touch the file's mtime; before a fetch, least
    recently used blobs are removed until the new one fits under the cap
    (a process that has one mapped keeps its pages: unlink does not take
    them away).  */

#ifndef LOOM_BLOB_CACHE_H
#define LOOM_BLOB_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_BLOB_CACHE_DEFAULT_SIZE ((uint64_t)8 << 30) //  8 GiB
#define LOOM_BLOB_CACHE_TRIES 3 //  fetches of a blob whose bytes do not match

typedef struct loom_blob_cache loom_blob_cache;

//  A cache in dir (created 0700 if missing), holding at most cap bytes
//  (0: LOOM_BLOB_CACHE_DEFAULT_SIZE). NULL, logged, if dir cannot be made.
loom_blob_cache *loom_blob_cache_new(const char *dir, uint64_t cap);

//  Free (the files stay). Sets *self_p to NULL; accepts NULL.
void loom_blob_cache_destroy(loom_blob_cache **self_p);

//  Make blob `hash` of `size` bytes present, fetching it on the blob
//  channel through dealer (a DEALER to the broker's blob endpoint) when no
//  process of this host has. Returns 0 with *path (malloc'd, caller
//  frees), or a negative code with a message naming the cause in err:
//  LOOM_ENOENT (the broker does not hold it), LOOM_EPROTO (bytes did not
//  match after LOOM_BLOB_CACHE_TRIES fetches), LOOM_ETOOBIG (larger than
//  the cache), LOOM_EIO (disk full or unwritable), LOOM_ETIMEDOUT.
int loom_blob_cache_get(loom_blob_cache *self, void *dealer, const uint8_t *hash, uint64_t size,
                        char **path, char *err, size_t errcap);

//  The broker's blob store directory when this host can see it (from
//  Welcome.blob_store; NULL: none). A blob missing here is then first
//  hard-linked from DIR/ab/<hex> of the store (a path built from the
//  digest only) and its bytes verified; any error (another file system,
//  not permitted, gone, bytes wrong) and it is fetched as usual. Eviction
//  only removes the cache's own link. Returns false, and keeps none, if
//  dir is not an absolute path free of . and .. components.
bool loom_blob_cache_set_store(loom_blob_cache *self, const char *dir);

//  Remove a cache directory with everything in it (a supervisor's
//  private cache at exit).
void loom_blob_cache_remove_dir(const char *dir);

//  Counters of this process: bytes received on the blob channel, blobs
//  fetched, blobs found already there, fetches (or links) refused for a
//  bad hash, blobs linked from the store and their bytes (none of which
//  moved on the blob channel).
typedef struct {
    uint64_t bytes_in;
    uint64_t fetched;
    uint64_t hits;
    uint64_t corrupt;
    uint64_t linked;
    uint64_t bytes_linked;
} loom_blob_cache_stats;
void loom_blob_cache_get_stats(const loom_blob_cache *self, loom_blob_cache_stats *st);

#endif
