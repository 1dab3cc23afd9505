/*  worker_blobs: a worker process's side of the blob channel. It owns
    the process's DEALER to the broker's blob endpoint (used from the main
    thread only, between items) and its handle on the host's blob cache
    (blob_cache.c), and turns a map's shares and an item's files into
    local read-only paths.  */

#ifndef LOOM_WORKER_BLOBS_H
#define LOOM_WORKER_BLOBS_H

#include "executor.h"
#include "wire.h"

typedef struct loom_worker_blobs loom_worker_blobs;

//  A copy of a list of FileRefs (names and hashes owned).
typedef struct {
    size_t n;
    loom_wire_file *files;
} loom_file_list;
loom_file_list *loom_file_list_copy(const loom_wire_file *files, size_t n);
void loom_file_list_free(loom_file_list **self_p);

//  cache_dir NULL: shares and files are unavailable (fetches fail with
//  LOOM_ENOTSUP). cert_path and server_key: the process's CURVE keys for
//  the blob channel (both NULL: plaintext), copied. Never returns NULL.
loom_worker_blobs *loom_worker_blobs_new(const char *cache_dir, uint64_t cache_size,
                                         const char *cert_path, const char *server_key);

//  Log the counters, close the socket, free. Accepts NULL.
void loom_worker_blobs_destroy(loom_worker_blobs **self_p);

//  The broker's blob endpoint from a Welcome (NULL: none), resolved
//  against the task endpoint (a wildcard host becomes the broker's host).
void loom_worker_blobs_set_endpoint(loom_worker_blobs *self, const char *welcome_ep,
                                    const char *task_ep);

//  The broker's blob store directory from a Welcome (NULL: none, or the
//  broker is not on this host's loopback): blobs are hard-linked from it
//  when this host can, fetched otherwise (see loom_blob_cache_set_store).
void loom_worker_blobs_set_store(loom_worker_blobs *self, const char *store_dir);

//  Fetch (if this host has not) one blob; *path malloc'd. Returns 0 or a
//  code with *reason (malloc'd) naming `what` and the cause.
int loom_worker_blobs_fetch(loom_worker_blobs *self, const char *what, const loom_wire_file *f,
                            char **path, char **reason);

//  Fetch every share of a map and hand them to the executor. Returns 0
//  or a code with *reason (malloc'd).
int loom_worker_blobs_open_shares(loom_worker_blobs *self, loom_executor *exec, uint64_t map,
                                  const loom_file_list *shares, char **reason);

//  Blob bytes received and sent since the last call (for ResultBatch).
void loom_worker_blobs_take_counts(loom_worker_blobs *self, uint64_t *in, uint64_t *out);

//  Free n FileRefs whose names and hashes are malloc'd.
void loom_wire_files_free(loom_wire_file *files, size_t n);

//  This process's directory for output files (made at the first call,
//  under the cache dir), or NULL when there is no cache.
const char *loom_worker_blobs_out_dir(loom_worker_blobs *self);

//  Upload the output files of an item that exist (regular files) and
//  remove them; *files_p (malloc'd, loom_wire_files_free) and *n_p the
//  FileRefs to put in its Result. Returns 0 or a code with *reason.
int loom_worker_blobs_put_outputs(loom_worker_blobs *self, const char *const *names,
                                  const char *const *paths, size_t n, loom_wire_file **files_p,
                                  size_t *n_p, char **reason);

#endif
