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

#define LOOM_SLAB_SIZE 2048 //  the size of a slab

//  A slab of LOOM_SLAB_SIZE bytes, for code that carves many small records
//  out of one allocation (the broker's queued items): a malloc and free of
//  this size cost some 500 instructions, past glibc's per-thread cache.
//  Free it with loom__slab_free (kept for reuse by this thread, at most 64)
//  or free().
void *loom__slab_alloc(void);
void loom__slab_free(void *p);

#endif
