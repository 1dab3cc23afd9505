/*  block_cache: a per-thread cache of small malloc blocks, for the copies
    loom makes per item (the client's in-flight inputs, the broker's queued
    items). Those are allocated a batch at a time and freed a batch at a
    time, which overflows glibc's per-thread cache (7 blocks a size) and
    sends every malloc and free down the slow path (unsorted bin, merging):
    ~200-300 instructions each in callgrind. Here freed blocks of the cache's
    size wait on a per-thread list for the next allocation.  */

#ifndef LOOM_BLOCK_CACHE_H
#define LOOM_BLOCK_CACHE_H

#include <stddef.h>

#define LOOM_BLOCK_SIZE 192 //  requests up to this size get a cached block

//  A block of at least n bytes (aborts when out of memory, as loom_xmalloc
//  does). Free it with loom__block_free or free().
void *loom__block_alloc(size_t n);

//  Free p (any malloc'd block, or NULL): kept for reuse by this thread when
//  it is a block of the cache's size and the cache has room, else free()d.
void loom__block_free(void *p);

#endif
