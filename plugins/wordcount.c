/*  wordcount: counts words; reduce merges counts.

    "count_file" does the same for the file attached to the item as "in"
    (`loom map wordcount count_file --files PATH...`).
    "count" reads a text item and writes one line per distinct word,
    "word count\n", sorted by word (byte order). A word is a maximal run of
    ASCII letters, digits and apostrophes, lowercased; bytes >= 0x80 count as
    letters too, so UTF-8 words stay whole (only ASCII is lowercased).
    The reduce merges two such outputs in one pass (a merge-join of the
    sorted lines, summing the counts of equal words), so the result of a
    reduce map reads as the same `word count` lines.  */

#include <loom/plugin.h>

#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *word; //  Into the lowercased copy of the input; NULL: empty slot
    size_t len;
    uint64_t count;
    uint64_t hash;
} s_entry;

typedef struct {
    s_entry *slots;
    size_t cap; //  Power of two
    size_t used;
} s_table;

static bool
s_is_word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '\'' || c >= 0x80;
}

static uint64_t
s_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static bool
s_table_grow(s_table *tab)
{
    size_t cap = tab->cap ? tab->cap * 2 : 64;
    s_entry *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return false;
    for (size_t i = 0; i < tab->cap; i++) {
        s_entry *e = &tab->slots[i];
        if (!e->word)
            continue;
        size_t j = e->hash & (cap - 1);
        while (slots[j].word)
            j = (j + 1) & (cap - 1);
        slots[j] = *e;
    }
    free(tab->slots);
    tab->slots = slots;
    tab->cap = cap;
    return true;
}

static bool
s_table_add(s_table *tab, const char *word, size_t len)
{
    if ((tab->used + 1) * 2 > tab->cap && !s_table_grow(tab))
        return false;
    uint64_t h = s_hash(word, len);
    size_t j = h & (tab->cap - 1);
    for (;; j = (j + 1) & (tab->cap - 1)) {
        s_entry *e = &tab->slots[j];
        if (!e->word) {
            *e = (s_entry){.word = word, .len = len, .count = 1, .hash = h};
            tab->used++;
            return true;
        }
        if (e->hash == h && e->len == len && !memcmp(e->word, word, len)) {
            e->count++;
            return true;
        }
    }
}

//  Byte order of words; a prefix sorts first.
static int
s_word_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c)
        return c;
    return an < bn ? -1 : an > bn;
}

static int
s_entry_cmp(const void *x, const void *y)
{
    const s_entry *a = x, *b = y;
    return s_word_cmp(a->word, a->len, b->word, b->len);
}

//  Append "word count\n" at p; returns the end.
static char *
s_put_line(char *p, const char *word, size_t len, uint64_t count)
{
    memcpy(p, word, len);
    p += len;
    *p++ = ' ';
    char digits[24];
    int n = 0;
    do
        digits[n++] = (char)('0' + count % 10);
    while (count /= 10);
    while (n)
        *p++ = digits[--n];
    *p++ = '\n';
    return p;
}

static int
s_count_bytes(loom_task *t, const char *in, size_t n)
{
    if (n == 0)
        return 0;
    char *low = malloc(n);
    s_table tab = {0};
    s_entry *sorted = NULL;
    char *out = NULL;
    int rc = 0;
    if (!low) {
        rc = loom_task_fail(t, "count: out of memory for a %zu-byte item", n);
        goto done;
    }
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)in[i];
        if (!s_is_word_char(c)) {
            i++;
            continue;
        }
        size_t start = i;
        for (; i < n && s_is_word_char((unsigned char)in[i]); i++) {
            c = (unsigned char)in[i];
            low[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        if (!s_table_add(&tab, low + start, i - start)) {
            rc = loom_task_fail(t, "count: out of memory counting words");
            goto done;
        }
    }
    if (tab.used == 0)
        goto done;
    //  Compact the used slots, sort them, print them: every line is at most
    //  its word, a space, 20 digits and a newline.
    sorted = tab.slots;
    size_t k = 0, total = 0;
    for (size_t i = 0; i < tab.cap; i++)
        if (tab.slots[i].word) {
            sorted[k++] = tab.slots[i];
            total += tab.slots[i].len + 22;
        }
    tab.slots = NULL;
    qsort(sorted, k, sizeof *sorted, s_entry_cmp);
    out = malloc(total);
    if (!out) {
        rc = loom_task_fail(t, "count: out of memory for the output");
        goto done;
    }
    char *p = out;
    for (size_t i = 0; i < k; i++)
        p = s_put_line(p, sorted[i].word, sorted[i].len, sorted[i].count);
    rc = loom_task_output(t, out, (size_t)(p - out));
done:
    free(out);
    free(sorted);
    free(tab.slots);
    free(low);
    return rc;
}

static int
s_count(loom_task *t)
{
    size_t n;
    const char *in = loom_task_input(t, &n);
    return s_count_bytes(t, in, n);
}

//  The words of the file attached to the item as "in" (loom map --files),
//  read through a read-only mapping.
static int
s_count_file(loom_task *t)
{
    const char *path = loom_task_file(t, "in");
    if (!path)
        return loom_task_fail(t, "count_file: no file attached as 'in'");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0)
            close(fd);
        return loom_task_fail(t, "count_file: cannot open %s", path);
    }
    size_t n = (size_t)sb.st_size;
    void *p = n ? mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (p == MAP_FAILED)
        return loom_task_fail(t, "count_file: cannot map %s", path);
    int rc = s_count_bytes(t, p, n);
    if (p)
        munmap(p, n);
    return rc;
}

//  A cursor over "word count\n" lines.
typedef struct {
    const char *p, *end;
    const char *word; //  Current line, valid when has is true
    size_t len;
    uint64_t count;
    bool has;
    bool bad; //  A line did not parse, or lines were not sorted
} s_lines;

static void
s_lines_next(s_lines *l)
{
    const char *prev = l->word;
    size_t prev_len = l->len;
    bool had = l->has;
    l->has = false;
    if (l->p >= l->end)
        return;
    const char *nl = memchr(l->p, '\n', (size_t)(l->end - l->p));
    const char *eol = nl ? nl : l->end;
    const char *sp = memchr(l->p, ' ', (size_t)(eol - l->p));
    if (!sp || sp == l->p || sp + 1 == eol) {
        l->bad = true;
        return;
    }
    uint64_t count = 0;
    for (const char *d = sp + 1; d < eol; d++) {
        if (*d < '0' || *d > '9' || __builtin_mul_overflow(count, 10, &count) ||
            __builtin_add_overflow(count, (uint64_t)(*d - '0'), &count)) {
            l->bad = true;
            return;
        }
    }
    l->word = l->p;
    l->len = (size_t)(sp - l->p);
    l->count = count;
    if (had && s_word_cmp(prev, prev_len, l->word, l->len) >= 0) {
        l->bad = true;
        return;
    }
    l->has = true;
    l->p = nl ? nl + 1 : l->end;
}

//  Offset of the first line at or after `lo` (a line start) in big[lo, hi)
//  whose word is >= w; hi if none. Binary search over bytes, each probe
//  moved back to the start of its line.
static size_t
s_seek(const char *big, size_t lo, size_t hi, const char *w, size_t wn)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        while (mid > lo && big[mid - 1] != '\n')
            mid--;
        const char *line = big + mid;
        const char *nl = memchr(line, '\n', hi - mid);
        size_t line_len = nl ? (size_t)(nl - line) + 1 : hi - mid;
        const char *sp = memchr(line, ' ', line_len);
        size_t word_len = sp ? (size_t)(sp - line) : line_len;
        if (s_word_cmp(line, word_len, w, wn) < 0)
            lo = mid + line_len;
        else
            hi = mid;
    }
    return lo;
}

//  Merge a small output into a much bigger one: the big one's lines
//  between the small one's words are copied as they are, found by binary
//  search, so folding one item into a large partial costs a copy, not a
//  parse of every line. The small side is checked; the big side is
//  trusted to be an earlier output of this task.
static int
s_merge_skewed(loom_task *t, const char *big, size_t bign, const char *small, size_t smalln)
{
    char *out = malloc(bign + smalln + 2);
    if (!out)
        return loom_task_fail(t, "count: out of memory merging %zu and %zu bytes", bign, smalln);
    s_lines y = {.p = small, .end = small + smalln};
    s_lines_next(&y);
    char *p = out;
    size_t at = 0;
    int rc = 0;
    for (; y.has; s_lines_next(&y)) {
        size_t next = s_seek(big, at, bign, y.word, y.len);
        memcpy(p, big + at, next - at);
        p += next - at;
        if (next > at && big[next - 1] != '\n')
            *p++ = '\n';
        at = next;
        s_lines z = {.p = big + at, .end = big + bign};
        s_lines_next(&z);
        if (z.has && s_word_cmp(z.word, z.len, y.word, y.len) == 0) {
            uint64_t sum;
            if (__builtin_add_overflow(z.count, y.count, &sum)) {
                rc = loom_task_fail(t, "count: count of '%.*s' overflows", (int)y.len, y.word);
                break;
            }
            p = s_put_line(p, y.word, y.len, sum);
            at = (size_t)(z.p - big);
        } else if (z.bad) {
            rc = loom_task_fail(t, "count: reduce input is not sorted 'word count' lines");
            break;
        } else
            p = s_put_line(p, y.word, y.len, y.count);
    }
    if (!rc && y.bad)
        rc = loom_task_fail(t, "count: reduce input is not sorted 'word count' lines");
    if (!rc) {
        memcpy(p, big + at, bign - at);
        p += bign - at;
        if (p > out && p[-1] != '\n')
            *p++ = '\n';
        rc = loom_task_output(t, out, (size_t)(p - out));
    }
    free(out);
    return rc;
}

static int
s_merge(loom_task *t, const void *a, size_t an, const void *b, size_t bn)
{
    if (an >= 16 * bn && an > 4096)
        return s_merge_skewed(t, a, an, b, bn);
    if (bn >= 16 * an && bn > 4096)
        return s_merge_skewed(t, b, bn, a, an);

    //  Merging lines never makes one longer than the two it replaces, and
    //  a missing final newline adds one byte per side.
    char *out = malloc(an + bn + 2);
    if (!out)
        return loom_task_fail(t, "count: out of memory merging %zu and %zu bytes", an, bn);
    s_lines x = {.p = a, .end = (const char *)a + an};
    s_lines y = {.p = b, .end = (const char *)b + bn};
    s_lines_next(&x);
    s_lines_next(&y);
    char *p = out;
    int rc = 0;
    while (x.has || y.has) {
        int c = !x.has ? 1 : !y.has ? -1 : s_word_cmp(x.word, x.len, y.word, y.len);
        if (c < 0) {
            p = s_put_line(p, x.word, x.len, x.count);
            s_lines_next(&x);
        } else if (c > 0) {
            p = s_put_line(p, y.word, y.len, y.count);
            s_lines_next(&y);
        } else {
            uint64_t sum;
            if (__builtin_add_overflow(x.count, y.count, &sum)) {
                rc = loom_task_fail(t, "count: count of '%.*s' overflows", (int)x.len, x.word);
                break;
            }
            p = s_put_line(p, x.word, x.len, sum);
            s_lines_next(&x);
            s_lines_next(&y);
        }
    }
    if (!rc && (x.bad || y.bad))
        rc = loom_task_fail(t, "count: reduce input is not sorted 'word count' lines");
    if (!rc)
        rc = loom_task_output(t, out, (size_t)(p - out));
    free(out);
    return rc;
}

static const loom_task_def s_tasks[] = {
    {.name = "count",
     .run = s_count,
     .reduce = s_merge,
     .doc = "text -> sorted 'word count' lines; reduce: merge and sum"},
    {.name = "count_file",
     .run = s_count_file,
     .reduce = s_merge,
     .doc = "the attached file 'in' -> sorted 'word count' lines; reduce: merge and sum"},
    {0},
};

LOOM_PLUGIN(.name = "wordcount", .version = "1.0.0", .tasks = s_tasks);
