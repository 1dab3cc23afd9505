/*  block_cache: see block_cache.h. Each thread keeps at most S_MAX_BLOCKS
    blocks; a thread's blocks are freed when it exits (a pthread key's
    destructor; libloom.so is linked -z nodelete so that the destructor
    stays mapped after a dlclose). Blocks are told apart by malloc_usable_size, so a block
    from anywhere may be given back and any block handed out may go to
    free().  */

#include "block_cache.h"

#include "base.h"

#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>

#define S_MAX_BLOCKS 4096

typedef struct s_block {
    struct s_block *next;
} s_block;

typedef struct {
    s_block *head;
    size_t n;
    bool registered; //  the exit destructor knows this thread
} s_cache;

//  initial-exec: no __tls_get_addr call per use (3% of the client's API
//  thread otherwise); 24 bytes fit the static TLS glibc keeps for dlopen.
static _Thread_local s_cache s_tls __attribute__((tls_model("initial-exec")));
static pthread_key_t s_key;
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
s_key_init(void)
{
    LOOM_ASSERT(pthread_key_create(&s_key, s_drain) == 0);
}

void *
loom__block_alloc(size_t n)
{
    if (n > LOOM_BLOCK_SIZE)
        return loom_xmalloc(n);
    s_cache *c = &s_tls;
    if (c->head) {
        s_block *b = c->head;
        c->head = b->next;
        c->n--;
        return b;
    }
    return loom_xmalloc(LOOM_BLOCK_SIZE);
}

void
loom__block_free(void *p)
{
    if (!p)
        return;
    s_cache *c = &s_tls;
    size_t usable = malloc_usable_size(p);
    if (c->n >= S_MAX_BLOCKS || usable < LOOM_BLOCK_SIZE || usable >= 2 * LOOM_BLOCK_SIZE) {
        free(p);
        return;
    }
    if (!c->registered) {
        pthread_once(&s_once, s_key_init);
        pthread_setspecific(s_key, c);
        c->registered = true;
    }
    s_block *b = p;
    b->next = c->head;
    c->head = b;
    c->n++;
}
