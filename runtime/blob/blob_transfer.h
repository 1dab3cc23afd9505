/*  blob_transfer: the peers' side of the blob channel (PROTOCOL.md, "Blob
    channel"): hashing a source as a stream, uploading it to the broker
    with the credit the broker grants, downloading a blob into a file with
    the credit the downloader grants. Blocking calls on a DEALER the caller
    owns and uses from one thread (the client's API thread, the worker's
    main thread); the task channel's heartbeats run elsewhere.  */

#ifndef LOOM_BLOB_TRANSFER_H
#define LOOM_BLOB_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_BLOB_XFER_CHUNK (1024 * 1024)
#define LOOM_BLOB_XFER_WINDOW (4 * LOOM_BLOB_XFER_CHUNK)

//  Read exactly len bytes at offset into buf. Returns 0 or a negative code.
typedef int (*loom_blob_reader)(void *ctx, uint64_t offset, void *buf, size_t len);

//  A source in memory (ctx: a loom_blob_mem) or in a file (ctx: int *fd).
typedef struct {
    const uint8_t *data;
    size_t len;
} loom_blob_mem;
int loom__blob_read_mem(void *ctx, uint64_t offset, void *buf, size_t len);
int loom__blob_read_fd(void *ctx, uint64_t offset, void *buf, size_t len);

//  The blob name (blob_hash.h) of size bytes of a source, read chunk by
//  chunk on the calling thread.
int loom__blob_hash(loom_blob_reader rd, void *ctx, uint64_t size, uint8_t *hash);

//  The blob name of the first size bytes of the open file fd, its blocks
//  hashed on min(online CPUs, 4, blocks) threads, the caller's one of them
//  (no thread started for one block or none), each reading with pread into
//  its own LOOM_BLOB_XFER_CHUNK buffer (the offset is not moved). Returns 0, or LOOM_EIO
//  (hash untouched) if the file could not be read or is shorter than size.
int loom__blob_hash_fd(int fd, uint64_t size, uint8_t *hash);

//  A DEALER connected to endpoint (its own socket options set), or NULL.
//  Free it with zmq_close. ctx: a libzmq context. cert_path and server_key:
//  the peer's CURVE keys (curve.h), the same as its task channel's; both
//  NULL for a plaintext broker. Every caller says which: a blob socket of
//  a secured peer left plaintext cannot talk to a CURVE broker at all.
void *loom__blob_dealer(void *ctx, const char *endpoint, const char *cert_path,
                        const char *server_key);

//  The blob endpoint to connect to: the Welcome's, with a wildcard host
//  ("*", "0.0.0.0", "[::]") replaced by the host of the task endpoint the
//  peer used. malloc'd; NULL when the broker has no blob channel.
char *loom__blob_endpoint(const char *welcome_ep, const char *task_ep);

//  Upload size bytes of a source under hash unless the broker has them.
//  Returns 0 once the broker holds the blob; LOOM_ETIMEDOUT after
//  timeout_ms without an answer; the broker's status (LOOM_ETOOBIG,
//  LOOM_EPROTO, LOOM_EIO) or the reader's error. *sent (may be NULL): bytes sent.
int loom__blob_upload(void *dealer, const uint8_t *hash, uint64_t size, loom_blob_reader rd,
                      void *ctx, int timeout_ms, uint64_t *sent);

//  Upload size bytes of a source without hashing them first: the broker
//  hashes what it receives and stores the blob under that name, which it
//  sends back into hash (32 bytes). Always sends every byte (the broker
//  keeps one copy if it held them already). Returns as loom__blob_upload;
//  LOOM_EPROTO if the broker's answer is not a name for size bytes.
int loom__blob_upload_unnamed(void *dealer, uint64_t size, loom_blob_reader rd, void *ctx,
                              int timeout_ms, uint64_t *sent, uint8_t *hash);

//  Ask the broker to adopt the put file `name` that this host wrote into
//  its store as blob hash of size bytes (BlobHave with adopt; PROTOCOL.md,
//  "Same-host upload"). Returns 0 once the broker holds the blob;
//  LOOM_EPROTO if it refused; LOOM_ETIMEDOUT after timeout_ms without an
//  answer (a late one may still come: the caller should not reuse dealer).
int loom__blob_adopt(void *dealer, const char *name, const uint8_t *hash, uint64_t size,
                     int timeout_ms);

//  Download blob hash of size bytes into fd (written at offsets from 0)
//  and check its hash. Returns 0; LOOM_EPROTO when the bytes do not match
//  the hash or the broker's size differs (the caller may try again);
//  LOOM_ENOENT (the broker does not hold it); LOOM_EIO (writing fd failed:
//  errno kept); LOOM_ETIMEDOUT after timeout_ms without progress.
//  *received (may be NULL) counts the bytes received.
int loom__blob_download(void *dealer, const uint8_t *hash, uint64_t size, int fd, int timeout_ms,
                        uint64_t *received);

//  A share or file name: loom_file_name_valid (safe_paths.h), the one
//  check the client, broker and workers apply. (share.c)
bool loom__blob_name_valid(const char *name);

//  Upload size bytes of an open file from the client c's blob channel: under
//  the name it had if this process uploaded it unchanged before (nothing
//  sent if the broker holds it), else unnamed. hash gets the blob's name.
//  Returns 0 or a code (logged). (share.c)
struct loom_client;
int loom__blob_put_file(struct loom_client *c, const char *what, int fd, uint64_t size,
                        uint8_t *hash);

//  Open path for reading: a regular file, or an error naming it (logged,
//  prefixed with `what`): LOOM_ENOENT, LOOM_EINVAL (not a regular file),
//  LOOM_EIO. (share.c)
int loom__blob_open_file(const char *what, const char *path, int *fd_p, uint64_t *size);

#endif
