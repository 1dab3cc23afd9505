/*  blob_channel: the broker's side of the blob channel (the second
    ROUTER): uploads into the blob store with byte-counted credit, chunked
    downloads, and the pipelines' shares (name -> blob) that the broker
    forwards to workers in MapOpen. PROTOCOL.md, "Blob channel", is the
    contract. The channel has no sessions of its own: any peer that can
    reach the socket may ask (CURVE guards the socket itself); every size
    and offset a peer sends is checked against what the store holds.  */

#ifndef LOOM_BLOB_CHANNEL_H
#define LOOM_BLOB_CHANNEL_H

#include <czmq.h>

#include "wire.h"

#define LOOM_BLOB_CHUNK (1024 * 1024)               //  bytes per BlobPut / BlobChunk at most
#define LOOM_BLOB_WINDOW (4 * LOOM_BLOB_CHUNK)     //  upload credit the broker grants ahead
#define LOOM_BLOB_MAX_CREDIT (4 * LOOM_BLOB_CHUNK) //  download bytes served per BlobGet

typedef struct loom_blob_channel loom_blob_channel;

//  A channel answering on router (borrowed). The store is opened at the
//  first use: the directory given by set_store, else a private temp dir.
loom_blob_channel *loom_blob_channel_new(zsock_t *router);

//  Close the store (a temporary one is removed with its files), free.
void loom_blob_channel_destroy(loom_blob_channel **self_p);

//  Where the store lives (dir NULL: a private temp dir, removed at
//  destroy), its cap (0: default) and time-to-live (0: default);
//  temporary: remove dir with its blobs at destroy. Returns 0, or LOOM_EIO
//  if dir cannot be used. Call before any peer talks.
int loom_blob_channel_set_store(loom_blob_channel *self, const char *dir, uint64_t cap,
                                int64_t ttl_ms, bool temporary);

//  The store's directory (the store opened now if it was not), or NULL
//  if it cannot be opened. Borrowed. Told to workers of this host, who
//  may hard-link its files (DIR/ab/<hex>) instead of fetching them.
const char *loom_blob_channel_store_dir(loom_blob_channel *self);

//  The bytes one peer (one blob-channel connection) may hold in the
//  store: blobs it uploaded still stored plus its uploads in progress.
//  0, or more than the store's cap: the cap alone limits. Going over: the
//  uploader gets an Error naming the quota and a status LOOM_ETOOBIG.
void loom_blob_channel_set_quota(loom_blob_channel *self, uint64_t quota);

//  Drain up to `budget` messages from the router and answer them.
void loom_blob_channel_on_readable(loom_blob_channel *self, int budget);

//  The shares of a pipeline (owner: the broker's "session/pipeline"), as
//  sent in the client's MapOpen: replaces what was there, references the
//  blobs so the store keeps them while the pipeline lives.
void loom_blob_channel_set_shares(loom_blob_channel *self, const char *owner,
                                  const loom_wire_file *shares, size_t n);

//  owner (a pipeline) references blob hash: kept while it lives (item files).
void loom_blob_channel_ref(loom_blob_channel *self, const char *owner, const uint8_t *hash);

//  The shares of owner (borrowed until the next set/release), *n count.
const loom_wire_file *loom_blob_channel_shares(loom_blob_channel *self, const char *owner,
                                               size_t *n);

//  The pipeline closed (or its client is gone: every owner starting with
//  prefix): forget its shares; its blobs start their time-to-live.
void loom_blob_channel_release(loom_blob_channel *self, const char *owner);
void loom_blob_channel_release_prefix(loom_blob_channel *self, const char *prefix);

//  Expire uploads and blobs (call now and then).
void loom_blob_channel_tick(loom_blob_channel *self, int64_t now_ms);

//  Add the channel's counters to st (blob_bytes_in/out/adopted, blobs_stored,
//  blob_store_bytes) and its messages to msgs_in/out/rejected.
void loom_blob_channel_stats(loom_blob_channel *self, loom_wire_stats *st);

#endif
