/*  block_cache: see block_cache.h. Each thread keeps at most S_MAX_BLOCKS
    blocks and S_MAX_SLABS slabs; a thread's blocks and slabs are freed when it exits (a pthread
   key's destructor; libloom.so is linked -z nodelete so that the destructor stays mapped after a
   dlclose). Blocks are told apart by malloc_usable_size, so a block from anywhere may be given back
   and any block handed out may go to free().  */

#include "block_cache.h"

#include "base.h"

#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>

#define S_MAX_BLOCKS 4096 //  blocks a thread keeps
#define S_MAX_SLABS 64    //  slabs a thread keeps

typedef struct s_block {
    struct s_block *next;
} s_block;

//  One thread's free list of one size.
typedef struct {
    s_block *head;
    size_t n;
    bool registered; //  the exit destructor knows this list
} s_cache;

//  initial-exec: no __tls_get_addr call per use (3% of the client's API
//  thread otherwise); 48 bytes fit the static TLS glibc keeps for dlopen.
static _Thread_local s_cache s_blocks __attribute__((tls_model("initial-exec")));
static _Thread_local s_cache s_slabs __attribute__((tls_model("initial-exec")));
static pthread_key_t s_blocks_key, s_slabs_key;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void
s_drain(void *arg)
{
    s_cache *c = arg;
    while (c->head) {
        s_block *b = c->head;
        c->head = b->next;
        free(b);
    }
    c->n = 0;
}

static void
s_keys_init(void)
{
    LOOM_ASSERT(pthread_key_create(&s_blocks_key, s_drain) == 0);
    LOOM_ASSERT(pthread_key_create(&s_slabs_key, s_drain) == 0);
}

static inline void *
s_pop(s_cache *c, size_t size)
{
    if (!c->head)
        return loom_xmalloc(size);
    s_block *b = c->head;
    c->head = b->next;
    c->n--;
    return b;
}

static inline void
s_push(s_cache *c, pthread_key_t *key, void *p)
{
    if (!c->registered) {
        pthread_once(&s_once, s_keys_init);
        pthread_setspecific(*key, c);
        c->registered = true;
    }
    s_block *b = p;
    b->next = c->head;
    c->head = b;
    c->n++;
}

void *
loom__block_alloc(size_t n)
{
    return n > LOOM_BLOCK_SIZE ? loom_xmalloc(n) : s_pop(&s_blocks, LOOM_BLOCK_SIZE);
}

void
loom__block_free(void *p)
{
    if (!p)
        return;
    size_t usable = malloc_usable_size(p);
    if (s_blocks.n >= S_MAX_BLOCKS || usable < LOOM_BLOCK_SIZE || usable >= 2 * LOOM_BLOCK_SIZE)
        free(p);
    else
        s_push(&s_blocks, &s_blocks_key, p);
}

void *
loom__slab_alloc(void)
{
    return s_pop(&s_slabs, LOOM_SLAB_SIZE);
}

void
loom__slab_free(void *p)
{
    if (!p)
        return;
    if (s_slabs.n >= S_MAX_SLABS)
        free(p);
    else
        s_push(&s_slabs, &s_slabs_key, p);
}
