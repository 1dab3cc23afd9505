/*  test_safe_paths: share/file names and blob paths (safe_paths.h).  */

#include "loom_test.h"

#include "safe_paths.h"

#include <loom/errors.h>

static void
test_file_names(void **state)
{
    (void)state;
    const char *good[] = {"a", "data.csv", "Model-v2.bin", "x_y.tar.gz", "a..b", NULL};
    for (int i = 0; good[i]; i++)
        assert_true(loom_file_name_valid(good[i]));
    const char *bad[] = {"", ".", "..", ".hidden", "../etc/passwd", "a/b", "/abs", "a b",
                         "tab\t", "nl\n", "semi;colon", "star*", "dollar$", "é", NULL};
    for (int i = 0; bad[i]; i++)
        assert_false(loom_file_name_valid(bad[i]));
    assert_false(loom_file_name_valid(NULL));
    char longest[256], too_long[257];
    memset(longest, 'a', 255);
    longest[255] = 0;
    memset(too_long, 'a', 256);
    too_long[256] = 0;
    assert_true(loom_file_name_valid(longest));
    assert_false(loom_file_name_valid(too_long));
}

static void
test_blob_paths(void **state)
{
    (void)state;
    uint8_t h[32];
    for (int i = 0; i < 32; i++)
        h[i] = (uint8_t)(i * 8 + 1);
    char p[256];
    assert_int_equal(loom_blob_path(p, sizeof p, "/store", h, 32), 0);
    assert_string_equal(p, "/store/01/0109111921293139414951596169717981899199a1a9b1b9c1c9d1d9e1e9f1f9");
    //  Only from a whole digest: no short, long or missing hash, no dir.
    assert_int_equal(loom_blob_path(p, sizeof p, "/store", h, 31), LOOM_EINVAL);
    assert_int_equal(loom_blob_path(p, sizeof p, "/store", h, 33), LOOM_EINVAL);
    assert_int_equal(loom_blob_path(p, sizeof p, "/store", NULL, 32), LOOM_EINVAL);
    assert_int_equal(loom_blob_path(p, sizeof p, "", h, 32), LOOM_EINVAL);
    assert_int_equal(loom_blob_path(p, 20, "/store", h, 32), LOOM_ETOOBIG);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_names),
        cmocka_unit_test(test_blob_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
