/*  Tests of the broker: the scheduler's data structures directly, then the
    protocol against a real broker actor bound to an ipc:// endpoint, with
    DEALER sockets playing client, worker processes and supervisor.  */

#include "loom_test.h"

#include <czmq.h>
#include <sys/stat.h>

#include "base.h"
#include "broker.h"
#include "scheduler.h"
#include "wire.h"

//  ---------------------------------------------------------------------
//  Scheduler

static loom_sched_map *
s_map(loom_sched *s, uint32_t chunk, int32_t retries, bool reduce)
{
    loom_sched_def def = {.plugin = "squares",
                          .task = "square",
                          .chunk = chunk,
                          .retries = retries,
                          .reduce = reduce};
    return loom_sched_map_new(s, &def, NULL, 1);
}

static void
s_fill(loom_sched *s, loom_sched_map *m, uint64_t from, uint64_t to)
{
    for (uint64_t i = from; i < to; i++)
        assert_int_equal(loom_sched_submit(s, m, i, &i, sizeof i, NULL, 0), 0);
}

//  Take every item of the batch as if its results came back.
static void
s_complete(loom_sched *s, loom_sched_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        loom_sched_item *it = loom_sched_take(s, b->worker, b->map, b->items[i]->index);
        assert_non_null(it);
        loom_sched_item_free(&it);
    }
}

static void
test_sched_round_robin_between_maps(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *a = s_map(s, 4, 0, false);
    loom_sched_map *b = s_map(s, 4, 0, false);
    s_fill(s, a, 0, 40);
    s_fill(s, b, 0, 40);
    loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch x, y, z;
    size_t from_a = 0, from_b = 0;
    for (int round = 0; round < 10; round++) {
        //  Cap per worker: 2 batches of 4. One from each map, then no room.
        assert_true(loom_sched_next_batch(s, &x));
        assert_true(loom_sched_next_batch(s, &y));
        assert_false(loom_sched_next_batch(s, &z));
        assert_ptr_not_equal(x.map, y.map);
        assert_int_equal(x.n, 4);
        assert_int_equal(y.n, 4);
        from_a += (x.map == a ? x.n : 0) + (y.map == a ? y.n : 0);
        from_b += (x.map == b ? x.n : 0) + (y.map == b ? y.n : 0);
        assert_int_equal(from_a, from_b);
        s_complete(s, &x);
        s_complete(s, &y);
    }
    assert_int_equal(loom_sched_map_done(a), 40);
    assert_int_equal(loom_sched_map_done(b), 40);
    assert_false(loom_sched_next_batch(s, &z));
    loom_sched_destroy(&s);
}

static void
test_sched_batch_bytes_capped(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 10, 0, false);
    size_t big = LOOM_SCHED_MAX_BYTES / 3 + 1;
    char *data = calloc(1, big);
    for (uint64_t i = 0; i < 4; i++)
        assert_int_equal(loom_sched_submit(s, m, i, data, big, NULL, 0), 0);
    loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 2); //  a third would pass the byte cap
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 2);
    free(data);
    loom_sched_destroy(&s);
}

static void
test_sched_first_batch_has_map_open(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 1, 0, false);
    s_fill(s, m, 0, 3);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_true(b.open);
    assert_ptr_equal(b.worker, w);
    assert_true(loom_sched_next_batch(s, &b));
    assert_false(b.open);
    loom_sched_destroy(&s);
}

static void
test_sched_batch_size_from_elapsed(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 0, 0, false);
    assert_int_equal(loom_sched_map_batch_size(m), 1); //  nothing measured yet
    loom_sched_map_observe(m, 1000, 10);               //  100 us per item
    assert_int_equal(loom_sched_map_batch_size(m), 20);
    loom_sched_map_observe(m, 0, 10); //  moving mean: 70 us
    assert_int_equal(loom_sched_map_batch_size(m), 28);
    loom_sched_map *slow = s_map(s, 0, 0, false);
    loom_sched_map_observe(slow, 5000000, 1);
    assert_int_equal(loom_sched_map_batch_size(slow), 1);
    loom_sched_map *fast = s_map(s, 0, 0, false);
    loom_sched_map_observe(fast, 10, 100);
    assert_int_equal(loom_sched_map_batch_size(fast), LOOM_SCHED_MAX_BATCH);

    //  Spread: at most ceil((queued + in flight) / workers) per batch: 10
    //  over 2 gives 5, then the other 5 on the other (less loaded) worker.
    s_fill(s, fast, 0, 10);
    loom_sched_worker_new(s, NULL, 0);
    loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b1, b2, b3;
    assert_true(loom_sched_next_batch(s, &b1));
    assert_int_equal(b1.n, 5);
    assert_true(loom_sched_next_batch(s, &b2));
    assert_int_equal(b2.n, 5);
    assert_ptr_not_equal(b1.worker, b2.worker);
    //  In the steady state (4 more while 10 are out), a batch is not cut
    //  down to what is queued over the workers: 4, not 2.
    s_fill(s, fast, 10, 14);
    assert_true(loom_sched_next_batch(s, &b3));
    assert_int_equal(b3.n, 4);
    loom_sched_destroy(&s);
}

static void
test_sched_dedup(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 0, 0, false);
    s_fill(s, m, 0, 200);
    uint64_t x = 5;
    assert_int_equal(loom_sched_submit(s, m, 5, &x, sizeof x, NULL, 0), LOOM_ESTATE);
    assert_int_equal(loom_sched_submit(s, m, 150, &x, sizeof x, NULL, 0), LOOM_ESTATE);
    assert_int_equal(loom_sched_map_queued(m), 200);
    //  Done items stay refused.
    loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    uint64_t idx = b.items[0]->index;
    s_complete(s, &b);
    assert_int_equal(loom_sched_submit(s, m, idx, &x, sizeof x, NULL, 0), LOOM_ESTATE);
    //  Out of order is fine; too far ahead is refused.
    assert_int_equal(loom_sched_submit(s, m, 1000, &x, sizeof x, NULL, 0), 0);
    assert_int_equal(loom_sched_submit(s, m, 1000, &x, sizeof x, NULL, 0), LOOM_ESTATE);
    assert_int_equal(
        loom_sched_submit(s, m, 200 + LOOM_SCHED_MAX_AHEAD + 64, &x, sizeof x, NULL, 0),
        LOOM_ETOOBIG);
    loom_sched_destroy(&s);
}

static void
test_sched_requeue_runs_alone(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 4, 0, false);
    s_fill(s, m, 0, 6);
    loom_sched_worker *a = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 4);
    assert_ptr_equal(b.worker, a);
    loom_sched_worker_remove(s, &a, "worker process 7 killed by signal 9 (SIGKILL)", true);
    assert_null(a);
    assert_int_equal(loom_sched_map_queued(m), 6);
    assert_int_equal(loom_sched_retried(s), 4);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    //  The 4 requeued items come first, one per batch, attempt 1, in order.
    for (uint64_t i = 0; i < 4; i++) {
        assert_true(loom_sched_next_batch(s, &b));
        assert_ptr_equal(b.worker, w);
        assert_int_equal(b.n, 1);
        assert_int_equal(b.items[0]->index, i);
        assert_int_equal(b.items[0]->attempt, 1);
        assert_string_equal(b.items[0]->reason, "worker process 7 killed by signal 9 (SIGKILL)");
        s_complete(s, &b);
    }
    //  The rest go out as a normal batch.
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 2);
    assert_int_equal(b.items[0]->attempt, 0);
    loom_sched_destroy(&s);
}

//  Only the batch a worker was running can hold the item that killed it:
//  batches sent ahead are requeued uncharged, and a clean exit charges none.
static void
test_sched_death_blames_running_batch(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 2, 0, false);
    s_fill(s, m, 0, 6);
    loom_sched_worker *a = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b)); //  0, 1: running
    assert_true(loom_sched_next_batch(s, &b)); //  2, 3: sent ahead
    assert_int_equal(loom_sched_worker_in_flight(a), 4);
    loom_sched_worker_remove(s, &a, "worker process 7 killed by signal 11 (SIGSEGV)", true);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    for (uint64_t i = 0; i < 2; i++) {
        assert_true(loom_sched_next_batch(s, &b));
        assert_int_equal(b.n, 1);
        assert_int_equal(b.items[0]->index, i);
        assert_int_equal(b.items[0]->attempt, 1);
        s_complete(s, &b);
    }
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 2);
    assert_int_equal(b.items[0]->index, 2);
    assert_int_equal(b.items[0]->attempt, 0);
    assert_int_equal(b.items[1]->attempt, 0);
    //  A clean exit (recycling) charges nothing, not even the running batch.
    loom_sched_worker_remove(s, &w, "worker process 8 exited with status 0", false);
    w = loom_sched_worker_new(s, NULL, 0);
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.items[0]->index, 2);
    assert_int_equal(b.items[0]->attempt, 0);
    assert_false(b.items[0]->solo);
    loom_sched_destroy(&s);
}

static void
test_sched_retries_exhausted(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *none = s_map(s, 1, -1, false); //  no retries
    loom_sched_map *two = s_map(s, 1, 0, false);   //  default: 2 retries
    s_fill(s, none, 0, 1);
    s_fill(s, two, 0, 1);
    loom_sched_batch b;
    //  The first death blames only the batch that was running (none's
    //  item); two's item, sent ahead, is charged from the second death on.
    for (int death = 1; death <= 4; death++) {
        loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
        while (loom_sched_next_batch(s, &b))
            ;
        assert_int_equal(loom_sched_worker_in_flight(w), death == 1 ? 2 : 1);
        loom_sched_worker_remove(s, &w, "exited with status 3", true);
        if (death == 1) {
            loom_sched_item *it = loom_sched_map_pop_failed(none);
            assert_non_null(it);
            assert_int_equal(it->status, LOOM_ECRASHED);
            assert_string_equal(it->reason, "exited with status 3");
            loom_sched_item_free(&it);
            assert_int_equal(loom_sched_map_done(none), 1);
        }
        loom_sched_item *it = loom_sched_map_pop_failed(two);
        if (death < 4)
            assert_null(it);
        else {
            assert_non_null(it);
            assert_int_equal(it->attempt, 3);
            assert_int_equal(it->status, LOOM_ECRASHED);
            loom_sched_item_free(&it);
        }
    }
    loom_sched_map_set_count(two, 1);
    assert_int_equal(loom_sched_map_state(two), LOOM_SCHED_DONE);
    loom_sched_destroy(&s);
}

static void
test_sched_credit_caps(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 10, 0, false);
    s_fill(s, m, 0, 100);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 3);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 3);
    assert_false(loom_sched_next_batch(s, &b));
    loom_sched_worker_add_credit(w, 2);
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 2);
    assert_false(loom_sched_next_batch(s, &b));
    //  Automatic sizing before any measure: batches of 1, at most 2 ahead.
    loom_sched *s2 = loom_sched_new();
    loom_sched_map *m2 = s_map(s2, 0, 0, false);
    s_fill(s2, m2, 0, 100);
    loom_sched_worker *w2 = loom_sched_worker_new(s2, NULL, 0);
    assert_true(loom_sched_next_batch(s2, &b));
    assert_int_equal(b.n, 1);
    assert_true(loom_sched_next_batch(s2, &b));
    assert_false(loom_sched_next_batch(s2, &b));
    assert_int_equal(loom_sched_worker_in_flight(w2), 2);
    //  A paused worker gets nothing.
    loom_sched_worker_pause(w, true);
    loom_sched_worker_add_credit(w, 100);
    assert_false(loom_sched_next_batch(s, &b));
    loom_sched_destroy(&s);
    loom_sched_destroy(&s2);
}

//  Items in flight whose indices share ring slots (multiples of 512, and
//  more of them than the ring first holds): each is found once, by its
//  own index only, whether it sits in the ring or beside it, through
//  growth, a failed map and a destroyed one.
static void
test_sched_in_flight_colliding_indices(void **state)
{
    (void)state;
    enum { N = 3000 };
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 1000, 0, false);
    loom_sched_map *gone = s_map(s, 1000, 0, false);
    for (uint64_t i = 0; i < N; i++) {
        uint64_t index = (i % 3 == 0) ? i * 512 : i;
        assert_int_equal(loom_sched_submit(s, m, index, &i, sizeof i, NULL, 0), 0);
        assert_int_equal(loom_sched_submit(s, gone, index, &i, sizeof i, NULL, 0), 0);
    }
    enum { NW = 4 }; //  2 x 1000 items each in flight at most
    loom_sched_worker *ws[NW];
    for (int i = 0; i < NW; i++)
        ws[i] = loom_sched_worker_new(s, NULL, 1u << 20);
    loom_sched_batch b;
    size_t out = 0;
    while (loom_sched_next_batch(s, &b))
        out += b.n;
    assert_int_equal(out, 2 * N);
    assert_int_equal(loom_sched_map_in_flight(m), N);
    //  Indices never submitted are not found.
    for (int k = 0; k < NW; k++) {
        assert_null(loom_sched_take(s, ws[k], m, 3));
        assert_null(loom_sched_take(s, ws[k], m, (uint64_t)N * 512 + 512));
    }
    //  Take every other item of m, newest first: one worker holds each.
    size_t taken = 0;
    for (uint64_t i = N; i-- > 0;) {
        uint64_t index = (i % 3 == 0) ? i * 512 : i;
        if (i % 2)
            continue;
        loom_sched_item *it = NULL;
        for (int k = 0; k < NW; k++) {
            loom_sched_item *got = loom_sched_take(s, ws[k], m, index);
            if (got) {
                assert_null(it);
                it = got;
            }
        }
        assert_non_null(it);
        assert_int_equal(it->index, index);
        for (int k = 0; k < NW; k++)
            assert_null(loom_sched_take(s, ws[k], m, index));
        loom_sched_item_free(&it);
        taken++;
    }
    assert_int_equal(loom_sched_map_in_flight(m), N - taken);
    //  Fail m: every item still in flight comes out once.
    size_t flying = loom_sched_map_in_flight(m);
    loom_sched_map_fail(s, m, LOOM_EIO, "gone");
    assert_int_equal(loom_sched_map_in_flight(m), 0);
    size_t failed = 0;
    for (loom_sched_item *it; (it = loom_sched_map_pop_failed(m)); failed++)
        loom_sched_item_free(&it);
    assert_int_equal(failed, flying);
    loom_sched_map_destroy(s, &gone);
    for (int k = 0; k < NW; k++)
        assert_int_equal(loom_sched_worker_in_flight(ws[k]), 0);
    loom_sched_destroy(&s);
}

//  Items of every input size (carved from slabs, or alone when large)
//  keep their input whatever order they are freed in, even after the
//  scheduler is gone.
static void
test_sched_items_keep_their_input(void **state)
{
    (void)state;
    enum { N = 600 };
    static uint8_t input[N];
    for (size_t i = 0; i < N; i++)
        input[i] = (uint8_t)(i * 13);
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 100, 0, false);
    for (uint64_t i = 0; i < N; i++)
        assert_int_equal(loom_sched_submit(s, m, i, input, i, NULL, 0), 0);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 1u << 20);
    loom_sched_item *held[N];
    size_t nheld = 0;
    loom_sched_batch b;
    while (loom_sched_next_batch(s, &b))
        for (size_t i = b.n; i-- > 0;) {
            loom_sched_item *it = loom_sched_take(s, w, m, b.items[i]->index);
            assert_non_null(it);
            if (it->index % 3)
                loom_sched_item_free(&it); //  most go at once, newest first
            else
                held[nheld++] = it;
        }
    assert_true(nheld > 0);
    loom_sched_destroy(&s);
    for (size_t i = 0; i < nheld; i++) {
        assert_int_equal(held[i]->len, held[i]->index);
        assert_memory_equal(held[i]->data, input, held[i]->len);
        loom_sched_item_free(&held[i]);
    }
}

static int s_chunk_msgs_freed;

static void
s_chunk_msg_free(void *msg)
{
    free(msg);
    s_chunk_msgs_freed++;
}

//  A client's batch kept whole: a batch of exactly its items, on their
//  first run, gives its message back (to go out as its bytes); anything
//  else drops the message, and items still run.
static void
test_sched_chunk_goes_whole(void **state)
{
    (void)state;
    s_chunk_msgs_freed = 0;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 0, 0, false);
    loom_sched_map_observe(m, 10, 100); //  fast: batches of up to 1024
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    //  Three client batches of 100: the first goes whole, the second had
    //  a duplicate (not whole), the third is cut by a worker with room
    //  for 50 only while idle.
    uint64_t next = 0;
    loom_sched_chunk *c = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 100);
    for (uint32_t i = 0; i < 100; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c, i, next, &next, 8, NULL, 0), 0);
    loom_sched_chunk_done(&c, true);
    assert_null(c);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 100);
    void *msg = loom_sched_batch_whole(&b);
    assert_non_null(msg);
    free(msg);
    s_complete(s, &b);

    c = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 100);
    for (uint32_t i = 0; i < 99; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c, i, next, &next, 8, NULL, 0), 0);
    assert_int_equal(loom_sched_submit_from(s, m, c, 99, next - 1, &next, 8, NULL, 0), LOOM_ESTATE);
    loom_sched_chunk_done(&c, false);
    assert_int_equal(s_chunk_msgs_freed, 1);
    assert_true(loom_sched_next_batch(s, &b));
    assert_null(loom_sched_batch_whole(&b));
    s_complete(s, &b);

    loom_sched_worker_remove(s, &w, NULL, false);
    w = loom_sched_worker_new(s, NULL, 50);
    uint64_t first = next;
    c = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 100);
    for (uint32_t i = 0; i < 100; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c, i, next, &next, 8, NULL, 0), 0);
    loom_sched_chunk_done(&c, true);
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 50);
    assert_int_equal(b.items[0]->index, first);
    assert_null(loom_sched_batch_whole(&b)); //  dropped: it can never go whole now
    assert_int_equal(s_chunk_msgs_freed, 2);
    s_complete(s, &b);
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 50);
    assert_null(loom_sched_batch_whole(&b));
    s_complete(s, &b);

    //  A busy worker waits for the room to take a whole batch rather than
    //  cut it; given the room, it gets it whole.
    loom_sched_worker_remove(s, &w, NULL, false);
    w = loom_sched_worker_new(s, NULL, 0);
    c = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 1000);
    for (uint32_t i = 0; i < 1000; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c, i, next, &next, 8, NULL, 0), 0);
    loom_sched_chunk_done(&c, true);
    loom_sched_chunk *c2 = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 1000);
    for (uint32_t i = 0; i < 1000; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c2, i, next, &next, 8, NULL, 0), 0);
    loom_sched_chunk_done(&c2, true);
    loom_sched_chunk *c3 = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 1000);
    for (uint32_t i = 0; i < 1000; i++, next++)
        assert_int_equal(loom_sched_submit_from(s, m, c3, i, next, &next, 8, NULL, 0), 0);
    loom_sched_chunk_done(&c3, true);
    loom_sched_batch b1, b2, b3;
    assert_true(loom_sched_next_batch(s, &b1));
    assert_int_equal(b1.n, 1000);
    msg = loom_sched_batch_whole(&b1);
    assert_non_null(msg);
    free(msg);
    assert_true(loom_sched_next_batch(s, &b2));
    assert_int_equal(b2.n, 1000);
    msg = loom_sched_batch_whole(&b2);
    assert_non_null(msg);
    free(msg);
    assert_false(loom_sched_next_batch(s, &b3)); //  2000 out of 2048: waits
    s_complete(s, &b1);
    assert_true(loom_sched_next_batch(s, &b3));
    assert_int_equal(b3.n, 1000);
    msg = loom_sched_batch_whole(&b3);
    assert_non_null(msg);
    free(msg);
    s_complete(s, &b2);
    s_complete(s, &b3);
    assert_int_equal(s_chunk_msgs_freed, 2);

    //  A map with a set chunk gets batches of that size, whatever the
    //  client's batches were.
    loom_sched_map *m2 = s_map(s, 300, 0, false);
    uint64_t k = 0;
    for (int j = 0; j < 2; j++) {
        c = loom_sched_chunk_new(malloc(1), s_chunk_msg_free, 250);
        for (uint32_t i = 0; i < 250; i++, k++)
            assert_int_equal(loom_sched_submit_from(s, m2, c, i, k, &k, 8, NULL, 0), 0);
        loom_sched_chunk_done(&c, true);
    }
    assert_true(loom_sched_next_batch(s, &b));
    assert_int_equal(b.n, 300);
    assert_null(loom_sched_batch_whole(&b));
    s_complete(s, &b);
    assert_int_equal(s_chunk_msgs_freed, 4);
    loom_sched_destroy(&s);
}

static void
test_sched_map_fail(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 2, 0, false);
    s_fill(s, m, 0, 5);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    loom_sched_worker *ws[4];
    assert_int_equal(loom_sched_map_workers(m, ws, 4), 1);
    assert_ptr_equal(ws[0], w);
    loom_sched_map_fail(s, m, LOOM_ENOENT, "plugin 'squares' not found");
    assert_int_equal(loom_sched_in_flight(s), 0);
    assert_int_equal(loom_sched_worker_in_flight(w), 0);
    s_fill(s, m, 5, 7); //  later items fail at once
    loom_sched_map_set_count(m, 7);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_RUNNING); //  failures not sent yet
    bool seen[7] = {0};
    loom_sched_item *it;
    while ((it = loom_sched_map_pop_failed(m))) {
        assert_int_equal(it->status, LOOM_ENOENT);
        assert_string_equal(it->reason, "plugin 'squares' not found");
        assert_false(seen[it->index]);
        seen[it->index] = true;
        loom_sched_item_free(&it);
    }
    for (int i = 0; i < 7; i++)
        assert_true(seen[i]);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_DONE);
    //  A late result for a failed item is not taken.
    assert_null(loom_sched_take(s, w, m, 0));
    loom_sched_destroy(&s);
}

#define S_NPARTIALS (LOOM_SCHED_MAX_BATCH + 44)

static void
test_sched_reduce_folds_partials(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 0, 0, true);
    loom_sched_map_set_count(m, 0);
    for (int64_t i = 0; i < S_NPARTIALS; i++)
        loom_sched_map_add_partial(m, &i, sizeof i);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_FOLDING);
    loom_sched_worker *a = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b1, b2, b3;
    assert_true(loom_sched_next_batch(s, &b1));
    assert_true(b1.combine);
    assert_int_equal(b1.n, LOOM_SCHED_MAX_BATCH);
    assert_true(loom_sched_next_batch(s, &b2));
    assert_int_equal(b2.n, 44);
    assert_false(loom_sched_next_batch(s, &b3));
    //  The worker holding the first combine dies: its partials come back.
    loom_sched_worker_remove(s, &a, "lost", true);
    assert_int_equal(loom_sched_map_partials(m), S_NPARTIALS);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    int64_t total = 0;
    size_t rounds = 0;
    while (loom_sched_map_state(m) == LOOM_SCHED_FOLDING) {
        loom_sched_batch b;
        assert_true(loom_sched_next_batch(s, &b));
        assert_true(b.combine);
        int64_t sum = 0;
        for (size_t i = 0; i < b.n; i++) {
            int64_t v;
            memcpy(&v, b.comb->data[i], sizeof v);
            sum += v;
        }
        assert_true(loom_sched_combine_done(s, w, m, &sum, sizeof sum));
        rounds++;
    }
    assert_int_equal(rounds, 2); //  MAX_BATCH + 44 -> 1 + 44 -> 1
    size_t len = 0;
    const void *fold = loom_sched_map_result(m, &len);
    assert_non_null(fold);
    assert_int_equal(len, sizeof total);
    memcpy(&total, fold, sizeof total);
    assert_int_equal(total, (S_NPARTIALS - 1) * S_NPARTIALS / 2);
    assert_false(loom_sched_combine_done(s, w, m, &total, sizeof total));
    loom_sched_destroy(&s);
}

static void
test_sched_fold_killing_workers_fails(void **state)
{
    (void)state;
    loom_sched *s = loom_sched_new();
    loom_sched_map *m = s_map(s, 0, -1, true); //  no retries
    loom_sched_map_set_count(m, 0);
    for (int64_t i = 0; i < 3; i++)
        loom_sched_map_add_partial(m, &i, sizeof i);
    loom_sched_worker *w = loom_sched_worker_new(s, NULL, 0);
    loom_sched_batch b;
    assert_true(loom_sched_next_batch(s, &b));
    assert_true(b.combine);
    const char *msg = NULL;
    assert_int_equal(loom_sched_map_fold_error(m, &msg), 0);
    loom_sched_worker_remove(s, &w, "worker process 9 killed by signal 11 (SIGSEGV)", true);
    assert_int_equal(loom_sched_map_state(m), LOOM_SCHED_DONE);
    assert_int_equal(loom_sched_map_fold_error(m, &msg), LOOM_ECRASHED);
    assert_string_equal(msg, "reduce failed: worker process 9 killed by signal 11 (SIGSEGV)");
    size_t len;
    assert_null(loom_sched_map_result(m, &len));
    loom_sched_destroy(&s);
}

//  ---------------------------------------------------------------------
//  Protocol against a real broker

#define WAIT_MS 5000

typedef struct {
    zactor_t *broker;
    char ep[256];
} fixture;

static int
s_setup(void **state)
{
    static int counter;
    fixture *f = calloc(1, sizeof *f);
    char tag[32];
    snprintf(tag, sizeof tag, "broker-%d", ++counter);
    loom_test_ipc(f->ep, sizeof f->ep, tag);
    char *bound = NULL, *blob = NULL, *err = NULL;
    f->broker = loom_broker_start(f->ep, NULL, &bound, &blob, &err);
    if (!f->broker) {
        fprintf(stderr, "broker: %s\n", err);
        free(err);
        free(f);
        return -1;
    }
    assert_string_equal(bound, f->ep);
    assert_string_equal(blob, "");
    free(bound);
    free(blob);
    *state = f;
    return 0;
}

static int
s_teardown(void **state)
{
    fixture *f = *state;
    zactor_destroy(&f->broker);
    //  libzmq unlinks an ipc socket file only when its listener closes in
    //  the I/O thread, which may come after the test exits.
    unlink(f->ep + strlen("ipc://"));
    free(f);
    return 0;
}

static loom_wire_stats
s_stats(zactor_t *broker)
{
    zstr_send(broker, "STATS");
    zframe_t *frame = zframe_recv(broker);
    assert_non_null(frame);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_decode(zframe_data(frame), zframe_size(frame), &m), 0);
    assert_int_equal(m->type, LOOM_MSG_STATS);
    loom_wire_stats st = m->u.stats;
    loom_msg_destroy(&m);
    zframe_destroy(&frame);
    return st;
}

static zsock_t *
s_peer(fixture *f)
{
    zsock_t *s = zsock_new(ZMQ_DEALER);
    assert_non_null(s);
    zsock_set_linger(s, 0);
    assert_int_equal(zsock_connect(s, "%s", f->ep), 0);
    return s;
}

static void
s_send(zsock_t *s, const loom_msg *m)
{
    assert_int_equal(loom_wire_send(zsock_resolve(s), NULL, 0, m, 0), 0);
}

//  Next message that is not a Heartbeat, or NULL after timeout_ms.
static loom_msg *
s_recv(zsock_t *s, int timeout_ms)
{
    int64_t until = loom_now_ms() + timeout_ms;
    for (;;) {
        loom_msg *m = NULL;
        int rc = loom_wire_recv(zsock_resolve(s), NULL, 0, NULL, &m, ZMQ_DONTWAIT);
        if (rc == 0 && m->type != LOOM_MSG_HEARTBEAT)
            return m;
        loom_msg_destroy(&m);
        if (rc == 0)
            continue;
        int64_t left = until - loom_now_ms();
        if (left <= 0)
            return NULL;
        zmq_pollitem_t item = {zsock_resolve(s), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, (long)left);
    }
}

static loom_msg *
s_expect(zsock_t *s, loom_msg_type type)
{
    loom_msg *m = s_recv(s, WAIT_MS);
    assert_non_null(m);
    if (m->type != type)
        fprintf(stderr, "expected %s, got %s\n", loom_msg_type_name(type),
                loom_msg_type_name(m->type));
    assert_int_equal(m->type, type);
    return m;
}

static loom_wire_welcome
s_hello(zsock_t *s, loom_role role, const char *host, uint32_t pid, uint32_t credit)
{
    loom_msg m = {.type = LOOM_MSG_HELLO};
    m.u.hello = (loom_wire_hello){
        .role = role, .host = host, .pid = pid, .credit = credit, .software = "test"};
    s_send(s, &m);
    loom_msg *w = s_expect(s, LOOM_MSG_WELCOME);
    loom_wire_welcome welcome = w->u.welcome;
    loom_msg_destroy(&w);
    return welcome;
}

//  Open a pipeline numbered like the map, then the map in it.
static void
s_map_open(zsock_t *c, uint64_t map, const char *plugin, bool reduce, int32_t retries)
{
    loom_msg p = {.type = LOOM_MSG_PIPELINE_OPEN};
    p.u.pipeline_open = (loom_wire_pipeline){.pipeline = map, .name = "p"};
    s_send(c, &p);
    loom_msg m = {.type = LOOM_MSG_MAP_OPEN};
    m.u.map_open = (loom_wire_map_open){.map = map,
                                        .pipeline = map,
                                        .plugin = plugin,
                                        .version = "",
                                        .task = "square",
                                        .reduce = reduce,
                                        .retries = retries};
    s_send(c, &m);
}

//  Submit items from..to-1 of map (data: the int64 index), in batches.
static void
s_submit(zsock_t *c, uint64_t map, uint64_t from, uint64_t to)
{
    loom_wire_item items[100];
    int64_t vals[100];
    while (from < to) {
        size_t n = 0;
        for (; n < 100 && from < to; n++, from++) {
            vals[n] = (int64_t)from;
            items[n] = (loom_wire_item){.index = from, .data = {(uint8_t *)&vals[n], 8}};
        }
        loom_msg m = {.type = LOOM_MSG_TASK_BATCH};
        m.u.task_batch = (loom_wire_task_batch){.map = map, .items = items, .nitems = n};
        s_send(c, &m);
    }
}

static void
s_map_end(zsock_t *c, uint64_t map, uint64_t count)
{
    loom_msg m = {.type = LOOM_MSG_MAP_END};
    m.u.map_end = (loom_wire_map_end){.map = map, .count = count};
    s_send(c, &m);
}

static void
s_heartbeat(zsock_t *s)
{
    loom_msg m = {.type = LOOM_MSG_HEARTBEAT};
    s_send(s, &m);
}

//  A fake worker process.
typedef enum {
    W_NORMAL,    //  answers each batch: data x*2 (reduce: partial sum)
    W_SILENT,    //  never answers anything, never heartbeats
    W_HOLD,      //  keeps items without answering, heartbeats
    W_DUPLICATE, //  answers each batch twice
    W_EXTRA,     //  answers each batch with its first result repeated at the end
    W_FAIL_OPEN  //  cannot load the plugin: Error + failed results
} worker_mode;

typedef struct {
    zsock_t *sock;
    worker_mode mode;
    size_t items; //  items received
    size_t combines;
    size_t cancels;
    uint64_t map; //  last MapOpen's broker map id
    bool reduce;
    uint64_t held[64]; //  W_HOLD: indices of the items it holds (the first 64)
    uint64_t held_map; //  and their map
    size_t nheld;
} fake_worker;

typedef struct {
    size_t n;
    uint8_t *seen;
    size_t results;
    size_t failed;
    bool ended;
    uint64_t end_count;
    bool reduced;
    int64_t reduced_value;
    int last_status;
    char last_error[256];
    bool silent; //  stops heartbeating
} fake_client;

static void
s_worker_handle(fake_worker *w, loom_msg *m)
{
    if (m->type == LOOM_MSG_MAP_OPEN) {
        w->map = m->u.map_open.map;
        w->reduce = m->u.map_open.reduce;
        if (w->mode == W_FAIL_OPEN) {
            loom_msg e = {.type = LOOM_MSG_ERROR};
            e.u.error = (loom_wire_error){
                .code = LOOM_ENOENT, .map = w->map, .message = "plugin 'nope' not found"};
            s_send(w->sock, &e);
        }
        return;
    }
    if (m->type == LOOM_MSG_CANCEL) {
        w->cancels++;
        return;
    }
    if (m->type != LOOM_MSG_TASK_BATCH)
        return;
    const loom_wire_task_batch *tb = &m->u.task_batch;
    if (tb->combine)
        w->combines++;
    else
        w->items += tb->nitems;
    for (size_t i = 0; w->mode == W_HOLD && !tb->combine && i < tb->nitems && w->nheld < 64; i++) {
        w->held_map = tb->map;
        w->held[w->nheld++] = tb->items[i].index;
    }
    if (w->mode == W_SILENT || w->mode == W_HOLD)
        return;
    loom_wire_result res[LOOM_SCHED_MAX_BATCH];
    int64_t outs[LOOM_SCHED_MAX_BATCH];
    int64_t sum = 0;
    for (size_t i = 0; i < tb->nitems; i++) {
        int64_t x = 0;
        if (tb->items[i].data.len == 8)
            memcpy(&x, tb->items[i].data.data, 8);
        sum += x;
        outs[i] = 2 * x;
        res[i] = (loom_wire_result){.index = tb->items[i].index};
        if (w->mode == W_FAIL_OPEN) {
            res[i].status = LOOM_ENOENT;
            res[i].error = "plugin 'nope' not found";
        } else if (!w->reduce)
            res[i].data = (loom_span){(uint8_t *)&outs[i], 8};
    }
    loom_msg r = {.type = LOOM_MSG_RESULT_BATCH};
    r.u.result_batch.map = tb->map;
    r.u.result_batch.elapsed_us = 10 * tb->nitems;
    if (!tb->combine) {
        r.u.result_batch.results = res;
        r.u.result_batch.nresults = tb->nitems;
        if (w->mode == W_EXTRA && tb->nitems < LOOM_SCHED_MAX_BATCH)
            res[r.u.result_batch.nresults++] = res[0];
    }
    if (w->reduce && w->mode != W_FAIL_OPEN) {
        r.u.result_batch.has_partial = true;
        r.u.result_batch.partial = (loom_span){(uint8_t *)&sum, 8};
    }
    s_send(w->sock, &r);
    if (w->mode == W_DUPLICATE)
        s_send(w->sock, &r);
}

static void
s_client_handle(fake_client *c, loom_msg *m)
{
    if (m->type == LOOM_MSG_MAP_END) {
        c->ended = true;
        c->end_count = m->u.map_end.count;
        return;
    }
    if (m->type != LOOM_MSG_RESULT_BATCH)
        return;
    const loom_wire_result_batch *rb = &m->u.result_batch;
    for (size_t i = 0; i < rb->nresults; i++) {
        const loom_wire_result *r = &rb->results[i];
        if (r->index == UINT64_MAX) {
            assert_false(c->reduced);
            assert_int_equal(r->data.len, 8);
            memcpy(&c->reduced_value, r->data.data, 8);
            c->reduced = true;
            continue;
        }
        assert_true(r->index < c->n);
        assert_false(c->seen[r->index]); //  exactly once
        c->seen[r->index] = 1;
        c->results++;
        if (r->status) {
            c->failed++;
            c->last_status = r->status;
            snprintf(c->last_error, sizeof c->last_error, "%s", r->error ? r->error : "");
        } else if (r->data.len) {
            int64_t y;
            assert_int_equal(r->data.len, 8);
            memcpy(&y, r->data.data, 8);
            assert_int_equal(y, 2 * (int64_t)r->index);
        }
    }
}

//  Run client and workers until `done` says so or WAIT_MS passes;
//  returns done's last answer. Non-silent peers heartbeat every 30 ms.
static bool
s_pump(zsock_t *client, fake_client *c, fake_worker *ws, size_t nw, zsock_t *extra,
       bool (*done)(fake_client *c, fake_worker *ws, size_t nw))
{
    int64_t until = loom_now_ms() + WAIT_MS;
    int64_t next_hb = 0;
    while (!done(c, ws, nw)) {
        int64_t now = loom_now_ms();
        if (now > until)
            return false;
        if (now >= next_hb) {
            if (client && !c->silent)
                s_heartbeat(client);
            for (size_t i = 0; i < nw; i++)
                if (ws[i].mode != W_SILENT)
                    s_heartbeat(ws[i].sock);
            if (extra)
                s_heartbeat(extra);
            next_hb = now + 30;
        }
        zmq_pollitem_t items[8];
        size_t n = 0;
        if (client)
            items[n++] = (zmq_pollitem_t){zsock_resolve(client), 0, ZMQ_POLLIN, 0};
        for (size_t i = 0; i < nw; i++)
            items[n++] = (zmq_pollitem_t){zsock_resolve(ws[i].sock), 0, ZMQ_POLLIN, 0};
        zmq_poll(items, (int)n, 10);
        loom_msg *m = NULL;
        while (client &&
               loom_wire_recv(zsock_resolve(client), NULL, 0, NULL, &m, ZMQ_DONTWAIT) == 0) {
            s_client_handle(c, m);
            loom_msg_destroy(&m);
        }
        for (size_t i = 0; i < nw; i++)
            while (loom_wire_recv(zsock_resolve(ws[i].sock), NULL, 0, NULL, &m, ZMQ_DONTWAIT) ==
                   0) {
                s_worker_handle(&ws[i], m);
                loom_msg_destroy(&m);
            }
        if (extra)
            while (loom_wire_recv(zsock_resolve(extra), NULL, 0, NULL, &m, ZMQ_DONTWAIT) == 0)
                loom_msg_destroy(&m);
    }
    return true;
}

static bool
s_until_ended(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)ws;
    (void)nw;
    return c->ended;
}

static void
s_client_init(fake_client *c, size_t n)
{
    memset(c, 0, sizeof *c);
    c->n = n;
    c->seen = calloc(n ? n : 1, 1);
}

static void
s_worker_init(fixture *f, fake_worker *w, worker_mode mode, const char *host, uint32_t pid,
              uint32_t credit)
{
    memset(w, 0, sizeof *w);
    w->sock = s_peer(f);
    w->mode = mode;
    s_hello(w->sock, LOOM_ROLE_WORKER, host, pid, credit);
}

static void
test_hello_welcome(void **state)
{
    fixture *f = *state;
    zsock_t *c = s_peer(f);
    zsock_t *w1 = s_peer(f);
    zsock_t *w2 = s_peer(f);
    loom_wire_welcome wc = s_hello(c, LOOM_ROLE_CLIENT, "", 1, 0);
    loom_wire_welcome a = s_hello(w1, LOOM_ROLE_WORKER, "h", 2, 8);
    loom_wire_welcome b = s_hello(w2, LOOM_ROLE_WORKER, "h", 3, 8);
    assert_int_equal(wc.heartbeat_ms, 100); //  LOOM_HEARTBEAT_MS from tests/meson.build
    assert_int_equal(wc.liveness, 3);
    assert_int_equal(wc.max_batch, LOOM_SCHED_MAX_BATCH);
    assert_true(wc.max_frame >= 1024 * 1024);
    assert_true(wc.epoch != 0);
    assert_int_equal(a.epoch, wc.epoch);
    assert_true(a.session != wc.session && b.session != a.session);
    assert_int_equal(a.worker_id, 0);
    assert_int_equal(b.worker_id, 1);
    //  A second Hello starts a new session; worker ids are reused.
    zsock_destroy(&w1);
    zsock_t *w3 = s_peer(f);
    loom_wire_welcome b2 = s_hello(w2, LOOM_ROLE_WORKER, "h", 3, 8);
    assert_true(b2.session != b.session);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.clients, 1);
    assert_int_equal(st.epoch, wc.epoch);
    (void)w3;
    zsock_destroy(&w3);
    zsock_destroy(&w2);
    zsock_destroy(&c);
}

static void
test_message_before_hello_refused(void **state)
{
    fixture *f = *state;
    zsock_t *s = s_peer(f);
    s_map_open(s, 1, "squares", false, 0);
    loom_msg *e = s_expect(s, LOOM_MSG_ERROR);
    assert_int_equal(e->u.error.code, LOOM_ESTATE);
    loom_msg_destroy(&e);
    //  Rate-limited: a second one within a second gets no answer.
    s_submit(s, 1, 0, 1);
    assert_null(s_recv(s, 200));
    //  A malformed frame is refused and counted too.
    zstr_send(s, "not a flatbuffer");
    loom_wire_stats st = s_stats(f->broker);
    //  PipelineOpen, MapOpen, TaskBatch, the malformed frame.
    for (int i = 0; i < 100 && st.msgs_rejected < 4; i++) {
        zmq_poll(NULL, 0, 10);
        st = s_stats(f->broker);
    }
    assert_int_equal(st.msgs_rejected, 4);
    assert_int_equal(st.maps, 0);
    assert_int_equal(st.items_queued, 0);
    //  The peer can still say Hello afterwards.
    s_hello(s, LOOM_ROLE_CLIENT, "", 1, 0);
    zsock_destroy(&s);
}

static void
test_wrong_proto_refused(void **state)
{
    fixture *f = *state;
    //  Encode a Hello, then find the bytes of its proto field (1) and make
    //  it 2: the one patch that still decodes, with proto 2.
    loom_msg hello = {.type = LOOM_MSG_HELLO};
    hello.u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "", .software = "t"};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(loom_wire_encode(&hello, &buf, &len), 0);
    uint8_t *bytes = buf;
    bool patched = false;
    for (size_t i = 0; i + 1 < len && !patched; i++) {
        if (bytes[i] != 1 || bytes[i + 1] != 0)
            continue;
        bytes[i] = 2;
        loom_msg *m = NULL;
        if (loom_wire_decode(bytes, len, &m) == 0 && m->proto == 2 && m->type == LOOM_MSG_HELLO)
            patched = true;
        else
            bytes[i] = 1;
        loom_msg_destroy(&m);
    }
    assert_true(patched);
    zsock_t *s = s_peer(f);
    zframe_t *frame = zframe_new(bytes, len);
    assert_int_equal(zframe_send(&frame, s, 0), 0);
    free(buf);
    loom_msg *e = s_expect(s, LOOM_MSG_ERROR);
    assert_int_equal(e->u.error.code, LOOM_EPROTO);
    assert_string_equal(e->u.error.message, "protocol version 2, broker speaks 1");
    loom_msg_destroy(&e);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.clients, 0);
    assert_int_equal(st.msgs_rejected, 1);
    zsock_destroy(&s);
}

static void
test_stats_request_without_session(void **state)
{
    fixture *f = *state;
    zsock_t *c = s_peer(f);
    loom_wire_welcome wc = s_hello(c, LOOM_ROLE_CLIENT, "", 1, 0);
    zsock_t *s = s_peer(f);
    loom_msg req = {.type = LOOM_MSG_STATS_REQUEST};
    s_send(s, &req);
    loom_msg *m = s_expect(s, LOOM_MSG_STATS);
    assert_int_equal(m->u.stats.epoch, wc.epoch);
    assert_int_equal(m->u.stats.clients, 1);
    assert_true(m->u.stats.msgs_in >= 2);
    loom_msg_destroy(&m);
    //  and from a session
    s_send(c, &req);
    m = s_expect(c, LOOM_MSG_STATS);
    assert_int_equal(m->u.stats.epoch, wc.epoch);
    loom_msg_destroy(&m);
    zsock_destroy(&s);
    zsock_destroy(&c);
}

static void
test_map_through_one_worker(void **state)
{
    fixture *f = *state;
    const size_t n = 1000;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_NORMAL, "h", 10, 64);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 7, "squares", false, 0);
    s_submit(client, 7, 0, n);
    s_submit(client, 7, 10, 20); //  duplicates: ignored
    s_map_end(client, 7, n);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.end_count, n);
    assert_int_equal(w.items, n);
    assert_int_equal(w.map, 1);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.items_done, n);
    assert_int_equal(st.maps, 0);
    assert_int_equal(st.items_in_flight, 0);
    assert_int_equal(st.results_dropped, 10);
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static void
test_two_workers_share(void **state)
{
    fixture *f = *state;
    const size_t n = 3000;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w[2];
    s_worker_init(f, &w[0], W_NORMAL, "h", 10, 0);
    s_worker_init(f, &w[1], W_NORMAL, "h", 11, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, n);
    s_map_end(client, 1, n);
    assert_true(s_pump(client, &c, w, 2, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_true(w[0].items > 0);
    assert_true(w[1].items > 0);
    assert_int_equal(w[0].items + w[1].items, n);
    free(c.seen);
    zsock_destroy(&w[0].sock);
    zsock_destroy(&w[1].sock);
    zsock_destroy(&client);
}

static void
test_silent_worker_expired(void **state)
{
    fixture *f = *state;
    const size_t n = 200;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w[2];
    s_worker_init(f, &w[0], W_SILENT, "h", 10, 0);
    s_worker_init(f, &w[1], W_NORMAL, "h", 11, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, n);
    s_map_end(client, 1, n);
    assert_true(s_pump(client, &c, w, 2, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_int_equal(c.failed, 0);
    assert_true(w[0].items > 0); //  it did get items, and lost them
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.workers, 1);
    assert_int_equal(st.items_retried, w[0].items);
    //  Its late results are dropped and counted.
    loom_wire_result r = {.index = 0};
    loom_msg m = {.type = LOOM_MSG_RESULT_BATCH};
    m.u.result_batch = (loom_wire_result_batch){.map = w[0].map, .results = &r, .nresults = 1};
    s_send(w[0].sock, &m);
    loom_msg *e = s_expect(w[0].sock, LOOM_MSG_ERROR);
    assert_int_equal(e->u.error.code, LOOM_ESTATE);
    loom_msg_destroy(&e);
    free(c.seen);
    zsock_destroy(&w[0].sock);
    zsock_destroy(&w[1].sock);
    zsock_destroy(&client);
}

static void
test_duplicate_results_dropped(void **state)
{
    fixture *f = *state;
    const size_t n = 300;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_DUPLICATE, "h", 10, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, n);
    s_map_end(client, 1, n);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    //  The duplicates of the last batch may still be on their way.
    loom_wire_stats st = s_stats(f->broker);
    for (int i = 0; i < 200 && st.results_dropped < n; i++) {
        zmq_poll(NULL, 0, 10);
        st = s_stats(f->broker);
    }
    assert_int_equal(st.results_dropped, n);
    assert_int_equal(st.items_done, n);
    //  No more results reach the client.
    assert_null(s_recv(client, 100));
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

//  A batch with one result the broker must drop (a repeat within the
//  batch) is not forwarded whole: the client gets every other result
//  exactly once, and the repeat is counted.
static void
test_partly_dropped_batch_reencoded(void **state)
{
    fixture *f = *state;
    const size_t n = 500;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_EXTRA, "h", 10, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 3, "squares", false, 0);
    s_submit(client, 3, 0, n);
    s_map_end(client, 3, n);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_int_equal(c.failed, 0);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.items_done, n);
    assert_true(st.results_dropped > 0 && st.results_dropped < n); //  one per batch
    assert_null(s_recv(client, 100));
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

//  BIND-LOCAL: a second task endpoint, inproc only and only once bound,
//  where a client in the broker's process is served like any other.
static void
test_local_endpoint(void **state)
{
    fixture *f = *state;
    zstr_sendx(f->broker, "BIND-LOCAL", "ipc:///tmp/not-inproc", NULL);
    char *reply = zstr_recv(f->broker);
    assert_string_equal(reply, "ERROR");
    zstr_free(&reply);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://test-broker-local-%d", (int)getpid());
    zstr_sendx(f->broker, "BIND-LOCAL", ep, NULL);
    reply = zstr_recv(f->broker);
    assert_string_equal(reply, "OK");
    zstr_free(&reply);

    const size_t n = 300;
    zsock_t *client = zsock_new(ZMQ_DEALER);
    zsock_set_linger(client, 0);
    assert_int_equal(zsock_connect(client, "%s", ep), 0);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_NORMAL, "h", 10, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, n);
    s_map_end(client, 1, n);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_int_equal(c.failed, 0);
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static bool
s_until_held(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)c;
    (void)nw;
    return ws[0].items > 0;
}

static void
test_worker_exit_requeues_at_once(void **state)
{
    fixture *f = *state;
    zsock_t *sup = s_peer(f);
    s_hello(sup, LOOM_ROLE_SUPERVISOR, "host-a", 100, 0);
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w[2];
    s_worker_init(f, &w[0], W_HOLD, "host-a", 4242, 0);
    fake_client c;
    s_client_init(&c, 3);
    //  Map 1: no retries, so the item the dead process held fails with
    //  the reason. Map 2: default retries, runs elsewhere.
    s_map_open(client, 1, "squares", false, -1);
    s_submit(client, 1, 0, 1);
    s_map_end(client, 1, 1);
    assert_true(s_pump(client, &c, w, 1, sup, s_until_held));
    loom_msg m = {.type = LOOM_MSG_WORKER_EXIT};
    m.u.worker_exit = (loom_wire_worker_exit){.pid = 4242, .signal = 9};
    s_send(sup, &m);
    assert_true(s_pump(client, &c, w, 1, sup, s_until_ended));
    assert_int_equal(c.failed, 1);
    assert_int_equal(c.last_status, LOOM_ECRASHED);
    assert_string_equal(c.last_error, "worker process 4242 killed by signal 9 (SIGKILL)");

    //  A held item with retries left goes to another worker at once,
    //  long before the holder (which still heartbeats) could expire.
    zsock_destroy(&w[0].sock);
    s_worker_init(f, &w[0], W_HOLD, "host-a", 4243, 0);
    fake_client c2;
    s_client_init(&c2, 1);
    s_map_open(client, 2, "squares", false, 0);
    s_submit(client, 2, 0, 1);
    s_map_end(client, 2, 1);
    assert_true(s_pump(client, &c2, w, 1, sup, s_until_held));
    s_worker_init(f, &w[1], W_NORMAL, "host-b", 4243, 0); //  same pid, other host
    m.u.worker_exit = (loom_wire_worker_exit){.pid = 4243, .status = 3};
    s_send(sup, &m);
    assert_true(s_pump(client, &c2, w, 2, sup, s_until_ended));
    assert_int_equal(c2.failed, 0);
    assert_int_equal(w[1].items, 1);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.items_retried, 1);
    assert_int_equal(st.workers, 1); //  host-b's process is untouched
    assert_int_equal(st.supervisors, 1);
    free(c.seen);
    free(c2.seen);
    zsock_destroy(&w[0].sock);
    zsock_destroy(&w[1].sock);
    zsock_destroy(&client);
    zsock_destroy(&sup);
}

static int64_t s_pump_until_ms; //  for s_until_time

static bool
s_until_time(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)c;
    (void)ws;
    (void)nw;
    return loom_now_ms() >= s_pump_until_ms;
}

//  A worker process whose connection is gone (a send to it fails) waits
//  for its supervisor to say why (WorkerExit: out of memory here), rather
//  than failing its items as "peer disconnected"; without that word it is
//  ended so after the expiry.
static void
test_gone_worker_waits_for_its_supervisor(void **state)
{
    fixture *f = *state;
    zsock_t *sup = s_peer(f);
    s_hello(sup, LOOM_ROLE_SUPERVISOR, "host-m", 100, 0);
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    for (int round = 0; round < 2; round++) {
        fake_worker w;
        s_worker_init(f, &w, W_HOLD, "host-m", 4250 + round, 0);
        fake_client c;
        s_client_init(&c, 1);
        s_map_open(client, 1 + round, "squares", false, -1);
        s_submit(client, 1 + round, 0, 1);
        s_map_end(client, 1 + round, 1);
        assert_true(s_pump(client, &c, &w, 1, sup, s_until_held));
        zsock_destroy(&w.sock);
        //  Past a heartbeat (its send fails), within the expiry.
        s_pump_until_ms = loom_now_ms() + 200;
        assert_true(s_pump(client, &c, NULL, 0, sup, s_until_time));
        assert_false(c.ended);
        if (round == 0) {
            loom_msg m = {.type = LOOM_MSG_WORKER_EXIT};
            m.u.worker_exit = (loom_wire_worker_exit){
                .pid = 4250, .status = 125, .max_rss = 300u << 20, .rss_limit = 100u << 20};
            s_send(sup, &m);
        }
        assert_true(s_pump(client, &c, NULL, 0, sup, s_until_ended));
        assert_int_equal(c.failed, 1);
        if (round == 0) {
            assert_int_equal(c.last_status, LOOM_ENOMEM);
            assert_string_equal(c.last_error, "worker process 4250 ran out of memory: it held "
                                              "300 MiB, over its limit of 100 MiB (--max-rss)");
        } else {
            assert_int_equal(c.last_status, LOOM_ECRASHED);
            assert_string_equal(c.last_error, "peer disconnected");
        }
        free(c.seen);
    }
    zsock_destroy(&client);
    zsock_destroy(&sup);
}

static bool
s_until_some_results(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)ws;
    (void)nw;
    return c->results >= 10;
}

static void
test_map_error_fails_all_items(void **state)
{
    fixture *f = *state;
    const size_t n = 50;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_FAIL_OPEN, "h", 10, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 3, "nope", false, 0);
    s_submit(client, 3, 0, 10);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_some_results));
    s_submit(client, 3, 10, n); //  after the failure: failed at once
    s_map_end(client, 3, n);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_ended));
    assert_int_equal(c.results, n);
    assert_int_equal(c.failed, n);
    assert_int_equal(c.last_status, LOOM_ENOENT);
    assert_string_equal(c.last_error, "plugin 'nope' not found");
    assert_true(w.items < n);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.items_failed, n);
    assert_int_equal(st.maps, 0);
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static void
test_bad_names_refused(void **state)
{
    fixture *f = *state;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    s_map_open(client, 4, "x/y", false, 0);
    loom_msg *e = s_expect(client, LOOM_MSG_ERROR);
    assert_int_equal(e->u.error.code, LOOM_EINVAL);
    assert_int_equal(e->u.error.map, 4);
    assert_string_equal(e->u.error.message, "plugin name 'x/y' is invalid");
    loom_msg_destroy(&e);
    s_submit(client, 4, 0, 5);
    //  The bad MapOpen and the batch for the map never opened.
    loom_wire_stats st = s_stats(f->broker);
    for (int i = 0; i < 100 && st.msgs_rejected < 2; i++) {
        zmq_poll(NULL, 0, 10);
        st = s_stats(f->broker);
    }
    assert_int_equal(st.msgs_rejected, 2);
    assert_int_equal(st.maps, 0);
    zsock_destroy(&client);
}

static void
test_reduce_folds_partials(void **state)
{
    fixture *f = *state;
    const size_t n = 2000;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w[2];
    s_worker_init(f, &w[0], W_NORMAL, "h", 10, 0);
    s_worker_init(f, &w[1], W_NORMAL, "h", 11, 0);
    fake_client c;
    s_client_init(&c, n);
    s_map_open(client, 5, "squares", true, 0);
    s_submit(client, 5, 0, n);
    s_map_end(client, 5, n);
    assert_true(s_pump(client, &c, w, 2, NULL, s_until_ended));
    assert_int_equal(c.results, n); //  status only, each index once
    assert_int_equal(c.failed, 0);
    assert_true(c.reduced);
    assert_int_equal(c.reduced_value, (int64_t)(n * (n - 1) / 2));
    assert_true(w[0].combines + w[1].combines > 0);
    free(c.seen);
    zsock_destroy(&w[0].sock);
    zsock_destroy(&w[1].sock);
    zsock_destroy(&client);
}

static bool
s_until_cancelled(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)c;
    (void)nw;
    return ws[0].cancels > 0;
}

static void
test_client_expiry_cancels_map(void **state)
{
    fixture *f = *state;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_HOLD, "h", 10, 0);
    fake_client c;
    s_client_init(&c, 100);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, 100);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_held));
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.maps, 1);
    c.silent = true;
    int64_t t0 = loom_now_ms();
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_cancelled));
    assert_true(loom_now_ms() - t0 >= 250); //  expiry is 3 x 100 ms
    st = s_stats(f->broker);
    assert_int_equal(st.clients, 0);
    assert_int_equal(st.maps, 0);
    assert_int_equal(st.items_queued, 0);
    //  What the worker holds still runs there (it never answers): counted.
    assert_int_equal(st.items_in_flight, w.items);
    assert_int_equal(st.items_cancelling, w.items);
    assert_int_equal(st.workers, 1);
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static void
test_client_cancel(void **state)
{
    fixture *f = *state;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_HOLD, "h", 10, 0);
    fake_client c;
    s_client_init(&c, 100);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, 100);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_held));
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = 1;
    s_send(client, &m);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_cancelled));
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.clients, 1);
    assert_int_equal(st.maps, 0);
    assert_int_equal(st.items_queued, 0);
    assert_int_equal(st.items_in_flight, w.items); //  the worker still runs them
    assert_int_equal(st.items_cancelling, w.items);
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static bool
s_until_items_2(fake_client *c, fake_worker *ws, size_t nw)
{
    (void)c;
    (void)nw;
    return ws[0].items >= 2;
}

static int64_t s_quiet_until;

static bool
s_until_items_2_or_quiet(fake_client *c, fake_worker *ws, size_t nw)
{
    return s_until_items_2(c, ws, nw) || loom_now_ms() >= s_quiet_until;
}

//  Items of a cancelled map hold their worker until it answers them: it
//  gets no new work meanwhile (it may still be running one), and gets the
//  next map's items at once after.
static void
test_cancelled_items_hold_their_worker_until_answered(void **state)
{
    fixture *f = *state;
    zsock_t *client = s_peer(f);
    s_hello(client, LOOM_ROLE_CLIENT, "", 1, 0);
    fake_worker w;
    s_worker_init(f, &w, W_HOLD, "h", 10, 0);
    fake_client c;
    s_client_init(&c, 100);
    s_map_open(client, 1, "squares", false, 0);
    s_submit(client, 1, 0, 1);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_held));
    assert_int_equal(w.nheld, 1);
    loom_msg m = {.type = LOOM_MSG_CANCEL};
    m.u.cancel_map = 1;
    s_send(client, &m);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_cancelled));
    //  A second map: its item waits, the worker still runs the first.
    s_map_open(client, 2, "squares", false, 0);
    s_submit(client, 2, 0, 1);
    s_quiet_until = loom_now_ms() + 400;
    s_pump(client, &c, &w, 1, NULL, s_until_items_2_or_quiet); //  it stays queued
    assert_int_equal(w.items, 1);
    loom_wire_stats st = s_stats(f->broker);
    assert_int_equal(st.items_queued, 1);
    assert_int_equal(st.items_in_flight, 1);
    assert_int_equal(st.items_cancelling, 1);
    //  The worker stops it and says so: the next item goes out at once.
    loom_wire_result r = {.index = w.held[0], .status = LOOM_ECANCELED};
    loom_msg rb = {.type = LOOM_MSG_RESULT_BATCH};
    rb.u.result_batch = (loom_wire_result_batch){.map = w.held_map, .results = &r, .nresults = 1};
    s_send(w.sock, &rb);
    assert_true(s_pump(client, &c, &w, 1, NULL, s_until_items_2));
    st = s_stats(f->broker);
    assert_int_equal(st.items_cancelling, 0);
    assert_int_equal(st.items_cancelled, 1);
    assert_int_equal(st.items_in_flight, 1);
    assert_int_equal(c.results, 0); //  nothing of the cancelled map reached the client
    free(c.seen);
    zsock_destroy(&w.sock);
    zsock_destroy(&client);
}

static void
test_bind_errors(void **state)
{
    (void)state;
    char *err = NULL;
    zactor_t *b = loom_broker_start("bogus://nowhere", NULL, NULL, NULL, &err);
    assert_null(b);
    assert_non_null(err);
    assert_non_null(strstr(err, "bogus://nowhere"));
    free(err);
    char *task = NULL, *blob = NULL;
    b = loom_broker_start("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", &task, &blob, &err);
    assert_non_null(b);
    assert_non_null(strstr(task, "tcp://127.0.0.1:"));
    assert_null(strchr(task, '*'));
    assert_null(strchr(blob, '*'));
    assert_string_not_equal(task, blob);
    free(task);
    free(blob);
    zactor_destroy(&b);
}

//  Worker processes and clients of this host (blob endpoint on loopback)
//  are told the store's directory, so workers may link its files and
//  clients write shares into it for the broker to adopt; supervisors are
//  not.
static void
test_welcome_tells_local_workers_the_store(void **state)
{
    (void)state;
    char *task = NULL, *blob = NULL, *err = NULL;
    zactor_t *b = loom_broker_start("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", &task, &blob, &err);
    assert_non_null(b);
    char dir[] = "/tmp/loom-test-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(loom_broker_set_store(b, dir, 0, 0, true), 0);
    const loom_role roles[] = {LOOM_ROLE_WORKER, LOOM_ROLE_CLIENT, LOOM_ROLE_SUPERVISOR};
    for (int i = 0; i < 3; i++) {
        zsock_t *s = zsock_new(ZMQ_DEALER);
        assert_non_null(s);
        zsock_set_linger(s, 0);
        assert_int_equal(zsock_connect(s, "%s", task), 0);
        loom_msg m = {.type = LOOM_MSG_HELLO};
        m.u.hello = (loom_wire_hello){
            .role = roles[i], .host = "h", .pid = 7, .credit = 4, .software = "test"};
        s_send(s, &m);
        loom_msg *w = s_expect(s, LOOM_MSG_WELCOME);
        assert_non_null(w->u.welcome.blob_endpoint);
        if (roles[i] != LOOM_ROLE_SUPERVISOR) {
            assert_non_null(w->u.welcome.blob_store);
            assert_string_equal(w->u.welcome.blob_store, dir);
        } else
            assert_null(w->u.welcome.blob_store);
        loom_msg_destroy(&w);
        zsock_destroy(&s);
    }
    zactor_destroy(&b); //  the temporary store goes with it
    struct stat sb;
    assert_int_not_equal(stat(dir, &sb), 0);
    free(task);
    free(blob);
}

#define PT(t) cmocka_unit_test_setup_teardown(t, s_setup, s_teardown)

//  ---------------------------------------------------------------------
//  CURVE: a session belongs to the key it said Hello with

static loom_wire_stats
s_stats_of(zactor_t *broker)
{
    zstr_send(broker, "STATS");
    zframe_t *f = zframe_recv(broker);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_decode(zframe_data(f), zframe_size(f), &m), 0);
    loom_wire_stats st = m->u.stats;
    loom_msg_destroy(&m);
    zframe_destroy(&f);
    return st;
}

//  A DEALER with cert's keys, CURVE client of server, routing id rid.
static void *
s_curve_dealer(zcert_t *cert, zcert_t *server, const char *rid, const char *ep)
{
    zsock_t *d = zsock_new(ZMQ_DEALER);
    assert_non_null(d);
    zcert_apply(cert, d);
    zsock_set_curve_serverkey(d, zcert_public_txt(server));
    zsock_set_identity(d, rid);
    zsock_set_linger(d, 0);
    assert_int_equal(zsock_connect(d, "%s", ep), 0);
    return d;
}

//  Two listed keys. A says Hello with routing id "victim", then goes away;
//  its session lives on until it expires. B (the other listed key) connects
//  with the same routing id: its messages are dropped and counted, never
//  answered within A's session, and its Hello does not end A's session.
static void
test_session_bound_to_its_curve_key(void **state)
{
    (void)state;
    char dir[256], bcert[300], task[128];
    snprintf(dir, sizeof dir, "%s/loom-keys-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    assert_int_equal(mkdir(dir, 0700), 0);
    char allow[300];
    snprintf(allow, sizeof allow, "%s/allow", dir);
    assert_int_equal(mkdir(allow, 0700), 0);
    zcert_t *server = zcert_new(), *a = zcert_new(), *b = zcert_new();
    snprintf(bcert, sizeof bcert, "%s/broker", dir);
    assert_int_equal(zcert_save(server, bcert), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/a", allow);
    assert_int_equal(zcert_save_public(a, path), 0);
    snprintf(path, sizeof path, "%s/b", allow);
    assert_int_equal(zcert_save_public(b, path), 0);
    const char *hb = getenv("LOOM_HEARTBEAT_MS");
    char *hb_saved = hb ? strdup(hb) : NULL;
    setenv("LOOM_HEARTBEAT_MS", "60000", 1); //  A's session must outlive the test
    loom_test_ipc(task, sizeof task, "curvekey");
    loom_broker_opts o = {.curve_dir = allow, .cert_path = bcert};
    char *bt = NULL, *err = NULL;
    zactor_t *broker = loom_broker_start_opts(&o, task, NULL, &bt, NULL, &err);
    if (hb_saved)
        setenv("LOOM_HEARTBEAT_MS", hb_saved, 1);
    else
        unsetenv("LOOM_HEARTBEAT_MS");
    free(hb_saved);
    assert_non_null(broker);

    loom_msg hello = {.type = LOOM_MSG_HELLO};
    hello.u.hello = (loom_wire_hello){.role = LOOM_ROLE_CLIENT, .host = "a", .pid = 1};
    zsock_t *da = s_curve_dealer(a, server, "victim", bt);
    assert_int_equal(loom_wire_send(zsock_resolve(da), NULL, 0, &hello, 0), 0);
    zmq_pollitem_t it = {zsock_resolve(da), 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    loom_msg *m = NULL;
    assert_int_equal(loom_wire_recv(zsock_resolve(da), NULL, 0, NULL, &m, 0), 0);
    assert_int_equal(m->type, LOOM_MSG_WELCOME);
    uint64_t session = m->u.welcome.session;
    loom_msg_destroy(&m);
    zsock_destroy(&da);

    //  B takes the routing id once the broker has let A's connection go
    //  (until then libzmq refuses the id and B reconnects): it keeps
    //  sending a MapOpen of a pipeline never opened, which A's session
    //  would answer with an Error, until the broker has dropped some.
    //  A connection that came too early stays refused: B starts again.
    loom_msg mo = {.type = LOOM_MSG_MAP_OPEN};
    mo.u.map_open = (loom_wire_map_open){
        .map = 1, .pipeline = 7, .plugin = "echo", .version = "", .task = "echo"};
    uint64_t base = s_stats_of(broker).msgs_rejected;
    int64_t until = loom_now_ms() + 10000;
    bool dropped = false;
    zsock_t *db = NULL;
    while (!dropped && loom_now_ms() < until) {
        zsock_destroy(&db);
        db = s_curve_dealer(b, server, "victim", bt);
        assert_int_equal(loom_wire_send(zsock_resolve(db), NULL, 0, &mo, 0), 0);
        zmq_pollitem_t ib = {zsock_resolve(db), 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&ib, 1, 200), 0); //  never an answer
        dropped = s_stats_of(broker).msgs_rejected > base;
    }
    assert_true(dropped);
    //  B's Hello on that routing id neither ends A's session nor gets one.
    hello.u.hello.host = "b";
    assert_int_equal(loom_wire_send(zsock_resolve(db), NULL, 0, &hello, 0), 0);
    zmq_pollitem_t ib = {zsock_resolve(db), 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&ib, 1, 300), 0);
    loom_wire_stats st = s_stats_of(broker);
    assert_int_equal(st.clients, 1);
    (void)session;
    zsock_destroy(&db);

    //  B on its own routing id is served.
    db = s_curve_dealer(b, server, "b-own", bt);
    assert_int_equal(loom_wire_send(zsock_resolve(db), NULL, 0, &hello, 0), 0);
    zmq_pollitem_t ic = {zsock_resolve(db), 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&ic, 1, 5000), 1);
    assert_int_equal(loom_wire_recv(zsock_resolve(db), NULL, 0, NULL, &m, 0), 0);
    assert_int_equal(m->type, LOOM_MSG_WELCOME);
    assert_int_not_equal(m->u.welcome.session, session);
    loom_msg_destroy(&m);
    zsock_destroy(&db);

    zactor_destroy(&broker);
    zcert_destroy(&server);
    zcert_destroy(&a);
    zcert_destroy(&b);
    free(bt);
    free(err);
    unlink(task + 6);
    snprintf(path, sizeof path, "%s/a", allow);
    unlink(path);
    snprintf(path, sizeof path, "%s/b", allow);
    unlink(path);
    rmdir(allow);
    unlink(bcert);
    snprintf(path, sizeof path, "%s_secret", bcert);
    unlink(path);
    rmdir(dir);
}

int
main(void)
{
    zsys_init();
    zsys_set_logstream(stderr);
    const struct CMUnitTest sched[] = {
        cmocka_unit_test(test_sched_round_robin_between_maps),
        cmocka_unit_test(test_sched_first_batch_has_map_open),
        cmocka_unit_test(test_sched_batch_bytes_capped),
        cmocka_unit_test(test_sched_batch_size_from_elapsed),
        cmocka_unit_test(test_sched_dedup),
        cmocka_unit_test(test_sched_requeue_runs_alone),
        cmocka_unit_test(test_sched_death_blames_running_batch),
        cmocka_unit_test(test_sched_retries_exhausted),
        cmocka_unit_test(test_sched_credit_caps),
        cmocka_unit_test(test_sched_map_fail),
        cmocka_unit_test(test_sched_chunk_goes_whole),
        cmocka_unit_test(test_sched_items_keep_their_input),
        cmocka_unit_test(test_sched_in_flight_colliding_indices),
        cmocka_unit_test(test_sched_reduce_folds_partials),
        cmocka_unit_test(test_sched_fold_killing_workers_fails),
    };
    const struct CMUnitTest proto[] = {
        PT(test_hello_welcome),
        PT(test_message_before_hello_refused),
        PT(test_wrong_proto_refused),
        PT(test_stats_request_without_session),
        PT(test_map_through_one_worker),
        PT(test_two_workers_share),
        PT(test_silent_worker_expired),
        PT(test_duplicate_results_dropped),
        PT(test_partly_dropped_batch_reencoded),
        PT(test_local_endpoint),
        PT(test_worker_exit_requeues_at_once),
        PT(test_gone_worker_waits_for_its_supervisor),
        PT(test_map_error_fails_all_items),
        PT(test_bad_names_refused),
        PT(test_reduce_folds_partials),
        PT(test_client_expiry_cancels_map),
        PT(test_client_cancel),
        PT(test_cancelled_items_hold_their_worker_until_answered),
        cmocka_unit_test(test_bind_errors),
        cmocka_unit_test(test_welcome_tells_local_workers_the_store),
        cmocka_unit_test(test_session_bound_to_its_curve_key),
    };
    int rc = cmocka_run_group_tests_name("scheduler", sched, NULL, NULL);
    rc |= cmocka_run_group_tests_name("broker protocol", proto, NULL, NULL);
    return rc;
}
