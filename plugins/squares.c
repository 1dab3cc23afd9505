/*  squares: x*x, for binary and for text inputs, with a sum as reduce.

    "square" reads one int64 (8 bytes, little-endian, as a C program on
    x86_64 or arm64 lays it out) and writes its square the same way;
    "square_text" reads a decimal integer as text ("12", the form
    `loom map` gives one input line) and writes the square as decimal text.
    Both reduce by summing, and refuse to overflow int64 silently.  */

#include <loom/plugin.h>

#include <stdbool.h>
#include <string.h>

//  Parse a decimal int64 from n bytes: optional blanks around, optional
//  sign. Returns false for anything else, or on overflow.
static bool
s_parse(const char *s, size_t n, int64_t *value)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    bool negative = false;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        negative = s[i++] == '-';
    if (i == n)
        return false;
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        int d = s[i] - '0';
        //  Accumulate negatively so INT64_MIN parses too.
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_sub_overflow(v, d, &v))
            return false;
    }
    if (!negative && __builtin_mul_overflow(v, -1, &v))
        return false;
    *value = v;
    return true;
}

//  Output v as decimal text.
static int
s_output_text(loom_task *t, int64_t v)
{
    char buf[24];
    char *p = buf + sizeof buf;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do
        *--p = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    return loom_task_output(t, p, (size_t)(buf + sizeof buf - p));
}

static int
s_square(loom_task *t)
{
    size_t n;
    const void *in = loom_task_input(t, &n);
    int64_t x;
    if (n != sizeof x)
        return loom_task_fail(t, "square: want 8 bytes (an int64), got %zu", n);
    memcpy(&x, in, sizeof x);
    int64_t y;
    if (__builtin_mul_overflow(x, x, &y))
        return loom_task_fail(t, "square: %lld squared overflows int64", (long long)x);
    return loom_task_output(t, &y, sizeof y);
}

static int
s_sum(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    int64_t x, y, z;
    if (an != sizeof x || bn != sizeof y)
        return loom_task_fail(t, "square: reduce wants two 8-byte int64, got %zu and %zu bytes", an,
                              bn);
    memcpy(&x, a, sizeof x);
    memcpy(&y, b, sizeof y);
    if (__builtin_add_overflow(x, y, &z))
        return loom_task_fail(t, "square: sum %lld + %lld overflows int64", (long long)x,
                              (long long)y);
    return loom_task_output(t, &z, sizeof z);
}

static int
s_square_text(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    int64_t x, y;
    int shown = n > 40 ? 40 : (int)n;
    if (!s_parse(in, n, &x))
        return loom_task_fail(t, "square_text: '%.*s%s' is not a decimal int64", shown, in,
                              n > 40 ? "..." : "");
    if (__builtin_mul_overflow(x, x, &y))
        return loom_task_fail(t, "square_text: %lld squared overflows int64", (long long)x);
    return s_output_text(t, y);
}

static int
s_sum_text(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    int64_t x, y, z;
    if (!s_parse(a, an, &x) || !s_parse(b, bn, &y))
        return loom_task_fail(t, "square_text: reduce wants two decimal int64 texts");
    if (__builtin_add_overflow(x, y, &z))
        return loom_task_fail(t, "square_text: sum %lld + %lld overflows int64", (long long)x,
                              (long long)y);
    return s_output_text(t, z);
}

static const loom_task_def s_tasks[] = {
    {.name = "square",
     .run = s_square,
     .reduce = s_sum,
     .doc = "int64 (8 bytes, little-endian) -> its square; reduce: sum"},
    {.name = "square_text",
     .run = s_square_text,
     .reduce = s_sum_text,
     .doc = "decimal integer text -> its square as text; reduce: sum"},
    {0},
};

LOOM_PLUGIN(.name = "squares", .version = "1.0.0", .tasks = s_tasks);
