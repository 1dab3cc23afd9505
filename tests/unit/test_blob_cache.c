/*  test_blob_cache: the worker host's blob cache and the download side of
    the blob channel, against a fake broker (a ROUTER in a thread serving
    one blob from memory, able to corrupt the first N fetches), and the
    broker's blob store on its own.  */

#include "loom_test.h"

#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "blob_cache.h"
#include "blob_store.h"
#include "blob_transfer.h"
#include "base.h"
#include "wire.h"

#define S_SIZE (1000 * 1000 + 17) //  several chunks, the last one short

static uint8_t *s_data;
static uint8_t s_hash[LOOM_HASH_SIZE];
static char s_dir[128];
static char s_ep[128];

//  The fake broker's state (read by tests through the pipe).
typedef struct {
    int corrupt; //  fetches (asks at offset 0) still to corrupt
    int missing; //  answer LOOM_ENOENT
    uint64_t bytes_out;
    uint64_t fetches; //  asks at offset 0
} s_fake;

static void
s_fake_actor(zsock_t *pipe, void *args)
{
    s_fake *f = args;
    zsock_t *router = zsock_new_router(s_ep);
    assert_non_null(router);
    zsock_signal(pipe, 0);
    zpoller_t *poller = zpoller_new(pipe, router, NULL);
    uint8_t *buf = malloc(LOOM_BLOB_XFER_CHUNK);
    bool corrupting = false;
    while (true) {
        void *which = zpoller_wait(poller, -1);
        if (which == pipe) {
            char *cmd = zstr_recv(pipe);
            bool term = !cmd || streq(cmd, "$TERM");
            zstr_free(&cmd);
            if (term)
                break;
            continue;
        }
        if (which != router)
            break;
        uint8_t rid[256];
        size_t rid_len;
        loom_msg *m = NULL;
        if (loom_wire_recv(zsock_resolve(router), rid, sizeof rid, &rid_len, &m, 0) != 0)
            continue;
        if (m->type != LOOM_MSG_BLOB_GET) {
            loom_msg_destroy(&m);
            continue;
        }
        uint64_t off = m->u.blob_get.offset, credit = m->u.blob_get.credit;
        if (off == 0) {
            f->fetches++;
            corrupting = f->corrupt > 0;
            if (corrupting)
                f->corrupt--;
        }
        loom_msg out = {.type = LOOM_MSG_BLOB_CHUNK};
        out.u.blob_chunk.hash = (loom_span){s_hash, LOOM_HASH_SIZE};
        if (f->missing) {
            out.u.blob_chunk.status = LOOM_ENOENT;
            loom_wire_send(zsock_resolve(router), rid, rid_len, &out, 0);
        }
        while (!f->missing && credit > 0 && off < S_SIZE) {
            size_t n = credit < LOOM_BLOB_XFER_CHUNK ? (size_t)credit : LOOM_BLOB_XFER_CHUNK;
            if (n > S_SIZE - off)
                n = (size_t)(S_SIZE - off);
            memcpy(buf, s_data + off, n);
            if (corrupting && off + n == S_SIZE)
                buf[n - 1] ^= 0x5a; //  the last chunk of a corrupted fetch
            out.u.blob_chunk.offset = off;
            out.u.blob_chunk.total = S_SIZE;
            out.u.blob_chunk.data = (loom_span){buf, n};
            loom_wire_send(zsock_resolve(router), rid, rid_len, &out, 0);
            f->bytes_out += n;
            off += n;
            credit -= n;
        }
        loom_msg_destroy(&m);
    }
    free(buf);
    zpoller_destroy(&poller);
    zsock_destroy(&router);
}

static s_fake s_f;
static zactor_t *s_server;

static int
s_setup(void **state)
{
    (void)state;
    s_data = malloc(S_SIZE);
    for (size_t i = 0; i < S_SIZE; i++)
        s_data[i] = (uint8_t)(i * 7 + (i >> 9));
    loom_blob_mem mem = {s_data, S_SIZE};
    if (loom__blob_hash(loom__blob_read_mem, &mem, S_SIZE, s_hash) != 0)
        return -1;
    snprintf(s_ep, sizeof s_ep, "inproc://blob-cache-test-%d", (int)getpid());
    s_server = zactor_new(s_fake_actor, &s_f);
    return s_server ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    zactor_destroy(&s_server);
    free(s_data);
    return 0;
}

static int
s_each_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/loom-test-%d-cache-XXXXXX", (int)getpid());
    if (!mkdtemp(s_dir))
        return -1;
    memset(&s_f, 0, sizeof s_f);
    return 0;
}

static int
s_each_teardown(void **state)
{
    (void)state;
    loom_blob_cache_remove_dir(s_dir);
    return 0;
}

static bool
s_file_equals_data(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    uint8_t *buf = malloc(S_SIZE + 1);
    size_t n = fread(buf, 1, S_SIZE + 1, f);
    fclose(f);
    bool same = n == S_SIZE && memcmp(buf, s_data, S_SIZE) == 0;
    free(buf);
    return same;
}

static int
s_get(loom_blob_cache *c, char **path, char *err, size_t cap)
{
    void *d = loom__blob_dealer(zsys_init(), s_ep, NULL, NULL);
    assert_non_null(d);
    int rc = loom_blob_cache_get(c, d, s_hash, S_SIZE, path, err, cap);
    zmq_close(d);
    return rc;
}

static void
test_fetches_verifies_and_then_hits(void **state)
{
    (void)state;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    assert_true(s_file_equals_data(path));
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0222, 0); //  read-only
    free(path);
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    free(path);
    loom_blob_cache_stats st;
    loom_blob_cache_get_stats(c, &st);
    assert_int_equal(st.fetched, 1);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.bytes_in, S_SIZE);
    assert_int_equal(s_f.fetches, 1);
    loom_blob_cache_destroy(&c);
}

static void
test_corrupted_chunk_is_refused_and_fetched_again(void **state)
{
    (void)state;
    s_f.corrupt = 1;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    assert_true(s_file_equals_data(path));
    loom_blob_cache_stats st;
    loom_blob_cache_get_stats(c, &st);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(s_f.fetches, 2);
    free(path);
    loom_blob_cache_destroy(&c);
}

static void
test_always_corrupted_blob_never_becomes_visible(void **state)
{
    (void)state;
    s_f.corrupt = 100;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), LOOM_EPROTO);
    assert_null(path);
    assert_non_null(strstr(err, "did not match its hash"));
    assert_int_equal(s_f.fetches, LOOM_BLOB_CACHE_TRIES);
    char hex[65], want[512];
    loom_blob_hex(s_hash, hex);
    snprintf(want, sizeof want, "%s/%.2s/%s", s_dir, hex, hex);
    assert_int_equal(access(want, F_OK), -1);
    loom_blob_cache_destroy(&c);
}

static void
test_missing_blob_is_named(void **state)
{
    (void)state;
    s_f.missing = 1;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), LOOM_ENOENT);
    assert_non_null(strstr(err, "not in the broker's store"));
    loom_blob_cache_destroy(&c);
}

static void *
s_thread_get(void *arg)
{
    (void)arg;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    intptr_t rc = s_get(c, &path, err, sizeof err);
    if (rc == 0 && !s_file_equals_data(path))
        rc = -100;
    free(path);
    loom_blob_cache_destroy(&c);
    return (void *)rc;
}

//  A fake broker store beside the cache (same file system) holding the
//  test blob at DIR/ab/<hex>: its bytes (corrupt: one flipped), or a
//  symlink to a file holding them. Returns the store's path in dir.
static void
s_make_store(char *dir, size_t cap, bool corrupt, bool symlinked)
{
    snprintf(dir, cap, "/tmp/loom-test-%d-store-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(dir));
    char hex[65], sub[256], path[512], real[512];
    loom_blob_hex(s_hash, hex);
    snprintf(sub, sizeof sub, "%s/%.2s", dir, hex);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(path, sizeof path, "%s/%s", sub, hex);
    snprintf(real, sizeof real, "%s/%s.real", sub, hex);
    FILE *f = fopen(symlinked ? real : path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s_data, 1, S_SIZE, f), S_SIZE);
    if (corrupt) {
        fseek(f, 4321, SEEK_SET);
        fputc(s_data[4321] ^ 1, f);
    }
    fclose(f);
    if (symlinked)
        assert_int_equal(symlink(real, path), 0);
}

static void
test_blob_in_a_visible_store_is_linked_not_fetched(void **state)
{
    (void)state;
    char store[128];
    s_make_store(store, sizeof store, false, false);
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    assert_true(loom_blob_cache_set_store(c, store));
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    assert_true(s_file_equals_data(path));
    char hex[65], sp[512];
    loom_blob_hex(s_hash, hex);
    snprintf(sp, sizeof sp, "%s/%.2s/%s", store, hex, hex);
    struct stat a, b;
    assert_int_equal(stat(sp, &a), 0);
    assert_int_equal(stat(path, &b), 0);
    assert_true(a.st_ino == b.st_ino && b.st_nlink == 2);
    loom_blob_cache_stats st;
    loom_blob_cache_get_stats(c, &st);
    assert_int_equal(st.linked, 1);
    assert_int_equal(st.bytes_linked, S_SIZE);
    assert_int_equal(st.bytes_in, 0);
    assert_int_equal(s_f.fetches, 0);
    //  The store drops its name: the cache's link keeps the bytes.
    assert_int_equal(unlink(sp), 0);
    assert_true(s_file_equals_data(path));
    free(path);
    loom_blob_cache_destroy(&c);
    loom_blob_cache_remove_dir(store);
}

//  A store file with wrong bytes, or a symlink where the blob should be,
//  is not linked: the blob is fetched and the store's file left alone.
static void
test_store_file_that_is_wrong_or_a_symlink_is_fetched_instead(void **state)
{
    (void)state;
    for (int symlinked = 0; symlinked < 2; symlinked++) {
        char store[128];
        s_make_store(store, sizeof store, !symlinked, symlinked);
        memset(&s_f, 0, sizeof s_f);
        loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
        assert_true(loom_blob_cache_set_store(c, store));
        char *path = NULL, err[512];
        assert_int_equal(s_get(c, &path, err, sizeof err), 0);
        assert_true(s_file_equals_data(path));
        struct stat b;
        assert_int_equal(lstat(path, &b), 0);
        assert_true(S_ISREG(b.st_mode) && b.st_nlink == 1);
        loom_blob_cache_stats st;
        loom_blob_cache_get_stats(c, &st);
        assert_int_equal(st.linked, 0);
        assert_int_equal(st.corrupt, symlinked ? 0 : 1);
        assert_int_equal(st.bytes_in, S_SIZE);
        assert_int_equal(s_f.fetches, 1);
        assert_int_equal(unlink(path), 0);
        free(path);
        loom_blob_cache_destroy(&c);
        loom_blob_cache_remove_dir(store);
    }
}

static void
test_store_dir_must_be_a_plain_absolute_path(void **state)
{
    (void)state;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    assert_true(loom_blob_cache_set_store(c, "/tmp/loom-store-1-abc"));
    assert_true(loom_blob_cache_set_store(c, NULL));
    assert_true(loom_blob_cache_set_store(c, "/a/.b/c.d"));
    assert_false(loom_blob_cache_set_store(c, "relative/store"));
    assert_false(loom_blob_cache_set_store(c, ""));
    assert_false(loom_blob_cache_set_store(c, "/"));
    assert_false(loom_blob_cache_set_store(c, "/tmp/../etc"));
    assert_false(loom_blob_cache_set_store(c, "/tmp/./x"));
    assert_false(loom_blob_cache_set_store(c, "/tmp/x/.."));
    assert_false(loom_blob_cache_set_store(c, "/tmp/a\nb"));
    //  A refused dir leaves none: the blob is fetched.
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    assert_int_equal(s_f.fetches, 1);
    free(path);
    loom_blob_cache_destroy(&c);
}

static void
test_many_asking_at_once_fetch_once(void **state)
{
    (void)state;
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, s_thread_get, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_int_equal((intptr_t)rc, 0);
    }
    assert_int_equal(s_f.fetches, 1);
    assert_int_equal(s_f.bytes_out, S_SIZE);
}

static void
test_full_disk_fails_with_a_clear_error(void **state)
{
    (void)state;
    //  A file size limit makes writes fail (EFBIG) the way a full disk does.
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 100 * 1000;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    char *path = NULL, err[512];
    int rc = s_get(c, &path, err, sizeof err);
    setrlimit(RLIMIT_FSIZE, &old);
    assert_int_equal(rc, LOOM_EIO);
    assert_non_null(strstr(err, "cannot write"));
    //  And the cache works again once there is room.
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    free(path);
    loom_blob_cache_destroy(&c);
}

static void
test_blob_larger_than_the_cache_is_refused(void **state)
{
    (void)state;
    loom_blob_cache *c = loom_blob_cache_new(s_dir, S_SIZE - 1);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), LOOM_ETOOBIG);
    assert_non_null(strstr(err, "larger than the cache"));
    assert_int_equal(s_f.fetches, 0);
    loom_blob_cache_destroy(&c);
}

static void
test_least_recently_used_blobs_are_evicted(void **state)
{
    (void)state;
    //  Three old blobs of 400 KB in a cache of 2 MB: the new 1 MB blob
    //  needs the two oldest gone, not the one used last.
    char *olds[3];
    for (int i = 0; i < 3; i++) {
        char sub[256], path[512];
        snprintf(sub, sizeof sub, "%s/0%d", s_dir, i);
        mkdir(sub, 0700);
        snprintf(path, sizeof path, "%s/0%d%062d", sub, i, 0);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(ftruncate(fileno(f), 400 * 1000), 0);
        fclose(f);
        struct timespec ts[2] = {{.tv_sec = 1000 + i}, {.tv_sec = 1000 + i}};
        if (i == 0)
            ts[0].tv_sec = ts[1].tv_sec = 5000; //  used last
        utimensat(AT_FDCWD, path, ts, 0);
        olds[i] = strdup(path);
    }
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 2 * 1000 * 1000);
    char *path = NULL, err[512];
    assert_int_equal(s_get(c, &path, err, sizeof err), 0);
    free(path);
    assert_int_equal(access(olds[0], F_OK), 0);
    assert_int_equal(access(olds[1], F_OK), -1);
    assert_int_equal(access(olds[2], F_OK), 0);
    for (int i = 0; i < 3; i++)
        free(olds[i]);
    loom_blob_cache_destroy(&c);
}

static void
test_litter_of_dead_processes_is_swept(void **state)
{
    (void)state;
    //  A pid that cannot be alive (beyond pid_max) and this process's own.
    char sub[256], dead_tmp[512], live_tmp[512], out[256], out_file[512];
    snprintf(sub, sizeof sub, "%s/ab", s_dir);
    mkdir(sub, 0700);
    snprintf(dead_tmp, sizeof dead_tmp, "%s/ab%062d.99999999.tmp", sub, 0);
    snprintf(live_tmp, sizeof live_tmp, "%s/ab%062d.%d.tmp", sub, 0, (int)getpid());
    snprintf(out, sizeof out, "%s/out-99999999", s_dir);
    mkdir(out, 0700);
    snprintf(out_file, sizeof out_file, "%s/result.txt", out);
    const char *files[] = {dead_tmp, live_tmp, out_file};
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(files[i], "w");
        assert_non_null(f);
        fclose(f);
    }
    loom_blob_cache *c = loom_blob_cache_new(s_dir, 0);
    assert_int_equal(access(dead_tmp, F_OK), -1);
    assert_int_equal(access(live_tmp, F_OK), 0);
    assert_int_equal(access(out, F_OK), -1);
    loom_blob_cache_destroy(&c);
}

//  The broker's store: verified uploads only, refs and time-to-live.
static void
test_store_keeps_only_verified_uploads(void **state)
{
    (void)state;
    char dir[300];
    snprintf(dir, sizeof dir, "%s-store", s_dir);
    loom_blob_store *st = loom_blob_store_new(dir, 0, 50);
    assert_non_null(st);
    bool done = false;
    assert_int_equal(loom_blob_store_upload_begin(st, "peer", s_hash, S_SIZE, &done, NULL), 0);
    //  A chunk out of order drops the upload.
    assert_int_equal(
        loom_blob_store_upload_write(st, "peer", s_hash, 10, s_data, 10, &done, NULL, NULL),
        LOOM_EINVAL);
    assert_int_equal(
        loom_blob_store_upload_write(st, "peer", s_hash, 0, s_data, 10, &done, NULL, NULL),
        LOOM_ESTATE);
    //  Bytes that do not match the hash are refused.
    uint8_t *bad = malloc(S_SIZE);
    memcpy(bad, s_data, S_SIZE);
    bad[5] ^= 1;
    assert_int_equal(loom_blob_store_upload_begin(st, "peer", s_hash, S_SIZE, &done, NULL), 0);
    assert_int_equal(
        loom_blob_store_upload_write(st, "peer", s_hash, 0, bad, S_SIZE, &done, NULL, NULL),
        LOOM_EPROTO);
    free(bad);
    assert_false(loom_blob_store_has(st, s_hash, NULL));
    //  Too big for the cap, or past the end: refused.
    uint64_t total = 0;
    assert_false(loom_blob_store_upload_total(st, "peer", s_hash, &total, NULL));
    //  The right bytes are stored; a second store on the dir finds them.
    assert_int_equal(loom_blob_store_upload_begin(st, "peer", s_hash, S_SIZE, &done, NULL), 0);
    assert_int_equal(
        loom_blob_store_upload_write(st, "peer", s_hash, 0, s_data, S_SIZE, &done, NULL, NULL), 0);
    assert_true(done);
    uint64_t size = 0;
    assert_true(loom_blob_store_has(st, s_hash, &size));
    assert_int_equal(size, S_SIZE);
    uint8_t buf[16];
    size_t n;
    assert_int_equal(loom_blob_store_read(st, s_hash, S_SIZE + 1, buf, 16, &n, &total),
                     LOOM_EINVAL);
    assert_int_equal(loom_blob_store_read(st, s_hash, 3, buf, 16, &n, &total), 0);
    assert_int_equal(n, 16);
    assert_memory_equal(buf, s_data + 3, 16);
    loom_blob_store *st2 = loom_blob_store_new(dir, 0, 0);
    assert_int_equal(loom_blob_store_count(st2), 1);
    loom_blob_store_destroy(&st2);
    //  Referenced: kept past the time-to-live; released: removed after it.
    assert_true(loom_blob_store_ref(st, "1/1", s_hash));
    loom_blob_store_sweep(st, loom_now_ms() + 1000);
    assert_int_equal(loom_blob_store_count(st), 1);
    loom_blob_store_release(st, "1/1");
    loom_blob_store_sweep(st, loom_now_ms() + 1000);
    assert_int_equal(loom_blob_store_count(st), 0);
    assert_int_equal(loom_blob_store_bytes(st), 0);
    loom_blob_store_destroy(&st);
    loom_blob_cache_remove_dir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fetches_verifies_and_then_hits, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_corrupted_chunk_is_refused_and_fetched_again,
                                        s_each_setup, s_each_teardown),
        cmocka_unit_test_setup_teardown(test_always_corrupted_blob_never_becomes_visible,
                                        s_each_setup, s_each_teardown),
        cmocka_unit_test_setup_teardown(test_missing_blob_is_named, s_each_setup, s_each_teardown),
        cmocka_unit_test_setup_teardown(test_blob_in_a_visible_store_is_linked_not_fetched,
                                        s_each_setup, s_each_teardown),
        cmocka_unit_test_setup_teardown(
            test_store_file_that_is_wrong_or_a_symlink_is_fetched_instead, s_each_setup,
            s_each_teardown),
        cmocka_unit_test_setup_teardown(test_store_dir_must_be_a_plain_absolute_path, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_many_asking_at_once_fetch_once, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_full_disk_fails_with_a_clear_error, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_blob_larger_than_the_cache_is_refused, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_least_recently_used_blobs_are_evicted, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_litter_of_dead_processes_is_swept, s_each_setup,
                                        s_each_teardown),
        cmocka_unit_test_setup_teardown(test_store_keeps_only_verified_uploads, s_each_setup,
                                        s_each_teardown),
    };
    return cmocka_run_group_tests_name("blob_cache", tests, s_setup, s_teardown);
}
