/*  test_block_cache: the per-thread cache of small blocks (block_cache.h).  */

#include "loom_test.h"

#include "block_cache.h"

#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void
test_small_blocks_are_reused_last_in_first_out(void **state)
{
    (void)state;
    void *a = loom__block_alloc(16);
    void *b = loom__block_alloc(LOOM_BLOCK_SIZE);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(malloc_usable_size(a) >= LOOM_BLOCK_SIZE);
    memset(a, 1, LOOM_BLOCK_SIZE);
    memset(b, 2, LOOM_BLOCK_SIZE);
    loom__block_free(a);
    loom__block_free(b);
    assert_ptr_equal(loom__block_alloc(1), b);
    assert_ptr_equal(loom__block_alloc(0), a);
    loom__block_free(a);
    loom__block_free(b);
    loom__block_free(NULL);
}

static void
test_large_and_foreign_blocks_are_not_kept(void **state)
{
    (void)state;
    void *big = loom__block_alloc(LOOM_BLOCK_SIZE + 1);
    assert_non_null(big);
    memset(big, 3, LOOM_BLOCK_SIZE + 1);
    loom__block_free(big);
    //  A block too small for the cache is freed, not handed out later.
    void *tiny = malloc(8);
    loom__block_free(tiny);
    void *next = loom__block_alloc(LOOM_BLOCK_SIZE);
    memset(next, 4, LOOM_BLOCK_SIZE); //  ASan/valgrind: the block really is this big
    loom__block_free(next);
    //  A block from the cache may go to free() like any other.
    free(loom__block_alloc(10));
}

static void *
s_thread(void *arg)
{
    (void)arg;
    void *blocks[64];
    for (int i = 0; i < 64; i++)
        blocks[i] = loom__block_alloc(32);
    for (int i = 0; i < 64; i++)
        loom__block_free(blocks[i]);
    return NULL; //  the thread's cached blocks are freed as it exits (leak checkers see it)
}

static void
test_each_thread_has_its_own_cache(void **state)
{
    (void)state;
    void *mine = loom__block_alloc(32);
    loom__block_free(mine);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    //  The other thread's frees did not land in this thread's cache.
    assert_ptr_equal(loom__block_alloc(32), mine);
    loom__block_free(mine);
}

//  Slabs: their own list, last in first out, at most 64 kept a thread,
//  and a thread's slabs freed as it exits.
static void *
s_slab_thread(void *arg)
{
    (void)arg;
    void *slabs[100];
    for (int i = 0; i < 100; i++) {
        slabs[i] = loom__slab_alloc();
        memset(slabs[i], 5, LOOM_SLAB_SIZE); //  ASan: each really is this big
    }
    for (int i = 0; i < 100; i++)
        loom__slab_free(slabs[i]); //  64 kept, 36 freed
    return NULL;
}

static void
test_slabs_are_reused_and_kept_apart_from_blocks(void **state)
{
    (void)state;
    void *s1 = loom__slab_alloc();
    void *s2 = loom__slab_alloc();
    void *b = loom__block_alloc(16);
    assert_true(malloc_usable_size(s1) >= LOOM_SLAB_SIZE);
    loom__slab_free(s1);
    loom__slab_free(s2);
    loom__block_free(b);
    //  A block request does not get a slab, nor a slab request a block.
    assert_ptr_equal(loom__block_alloc(16), b);
    assert_ptr_equal(loom__slab_alloc(), s2);
    assert_ptr_equal(loom__slab_alloc(), s1);
    loom__block_free(b);
    loom__slab_free(s1);
    free(s2); //  a slab may go to free() too
    loom__slab_free(NULL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_slab_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_ptr_equal(loom__slab_alloc(), s1);
    free(s1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_blocks_are_reused_last_in_first_out),
        cmocka_unit_test(test_large_and_foreign_blocks_are_not_kept),
        cmocka_unit_test(test_each_thread_has_its_own_cache),
        cmocka_unit_test(test_slabs_are_reused_and_kept_apart_from_blocks),
    };
    return cmocka_run_group_tests_name("block_cache", tests, NULL, NULL);
}
