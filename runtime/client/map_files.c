/*  map_files: files in and out of a map on the client side.

    loom_map_submit_files uploads each attached file on the blob channel
    (once per content: the broker skips bytes it holds) and submits the
    item with its FileRefs. Output files in results are downloaded when
    the result is delivered, into the map's private directory
    ($TMPDIR/loom-files-PID-XXXXXX/<index>/<name>, read-only), where they
    stay until loom_map_destroy removes them. A reduce map's successful
    items deliver no result of their own: their files are downloaded as
    their acknowledgements arrive and all go with the combined result,
    named "<index>/<name>".  */

#include "client_priv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_DOWNLOAD_TIMEOUT_MS 30000
#define S_MAX_FILES 1024 //  files per item

//  An output file of a reduce map's item, kept for the combined result.
typedef struct {
    uint64_t index;
    const char *name; //  "INDEX/NAME" (owned through `owned`)
    const char *path;
} s_kept;

struct loom__map_files {
    char *dir;    //  made at the first output file
    void **owned; //  names/paths arrays and strings handed out in results
    size_t nowned, capowned;
    s_kept *kept; //  reduce maps: every successful item's output files
    size_t nkept, capkept;
    char *kept_error; //  the first of them that could not be fetched, or NULL
};

static void *
s_keep(struct loom__map_files *f, void *p)
{
    if (f->nowned == f->capowned) {
        f->capowned = f->capowned ? 2 * f->capowned : 64;
        f->owned = loom_xrealloc(f->owned, f->capowned * sizeof *f->owned);
    }
    f->owned[f->nowned++] = p;
    return p;
}

static char *
s_fmt(const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char *s = loom_xmalloc(n);
    snprintf(s, n, fmt, a, b);
    return s;
}

int
loom_map_submit_files(loom_map *m, const void *input, size_t len, const char *const names[],
                      const char *const paths[], size_t n)
{
    if (!m || (n && (!names || !paths)) || n > S_MAX_FILES)
        return LOOM_EINVAL;
    if (m->client->in_callback || m->closed)
        return LOOM_ESTATE;
    if (m->halted) //  before any upload: loom_map_submit would refuse the item
        return LOOM_ECANCELED;
    for (size_t i = 0; i < n; i++) {
        if (!loom__blob_name_valid(names[i])) {
            loom_log_error("loom: file name '%.80s' is invalid (1-255 bytes of A-Z a-z 0-9 . _ "
                           "-, not starting with '.')",
                           names[i] ? names[i] : "(null)");
            return LOOM_EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(names[i], names[j])) {
                loom_log_error("loom: file name '%s' is given twice", names[i]);
                return LOOM_EINVAL;
            }
    }
    loom_wire_file *files = loom_xcalloc(n ? n : 1, sizeof *files);
    int rc = 0;
    size_t k = 0;
    for (; k < n && rc == 0; k++) {
        char what[320];
        snprintf(what, sizeof what, "file '%s'", names[k]);
        int fd;
        uint64_t size = 0;
        uint8_t *hash = loom_xmalloc(LOOM_HASH_SIZE);
        rc = loom__blob_open_file(what, paths[k], &fd, &size);
        if (rc == 0) {
            rc = loom__blob_put_file(m->client, what, fd, size, hash);
            close(fd);
        }
        files[k] = (loom_wire_file){
            .name = loom_xstrdup(names[k]), .hash = {hash, LOOM_HASH_SIZE}, .size = size};
    }
    if (rc == 0) {
        m->next_files = files;
        m->next_nfiles = n;
        rc = loom_map_submit(m, input, len);
        m->next_files = NULL;
        m->next_nfiles = 0;
    }
    for (size_t i = 0; i < k; i++) {
        free((char *)files[i].name);
        free((void *)files[i].hash.data);
    }
    free(files);
    return rc;
}

//  The map's file directory, made now if needed.
static const char *
s_dir(struct loom__map_files *f)
{
    if (f->dir)
        return f->dir;
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    char *dir = loom_xmalloc(strlen(base) + 40);
    sprintf(dir, "%s/loom-files-%d-XXXXXX", base, (int)getpid());
    if (!mkdtemp(dir)) {
        loom_log_error("loom: cannot create a directory in %s: %s", base, strerror(errno));
        free(dir);
        return NULL;
    }
    f->dir = dir;
    return dir;
}

//  Download one output file to path. Returns 0 or a code.
static int
s_download(loom_client *c, const loom_wire_file *wf, const char *path)
{
    void *sock = loom__client_blob(c);
    if (!sock)
        return LOOM_ENOTSUP;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return LOOM_EIO;
    int rc = loom__blob_download(sock, wf->hash.data, wf->size, fd, S_DOWNLOAD_TIMEOUT_MS, NULL);
    if (rc == LOOM_EPROTO) {
        //  Refused: the bytes did not match; fetch once more from the start.
        if (ftruncate(fd, 0) == 0)
            rc =
                loom__blob_download(sock, wf->hash.data, wf->size, fd, S_DOWNLOAD_TIMEOUT_MS, NULL);
    }
    if (close(fd) != 0 && rc == 0)
        rc = LOOM_EIO;
    if (rc == 0)
        chmod(path, 0444);
    else
        unlink(path);
    return rc;
}

//  Download res's output files into DIR/<index>/: names[i] and paths[i]
//  (kept) for the *k fetched. Returns 0, or a code with *error (kept) set.
static int
s_fetch(loom_map *m, const loom_wire_result *res, const char **names, const char **paths, size_t *k,
        const char **error)
{
    struct loom__map_files *f = m->files;
    const char *dir = s_dir(f);
    char sub[4096];
    char index[32];
    snprintf(index, sizeof index, "%llu", (unsigned long long)res->index);
    snprintf(sub, sizeof sub, "%s/%s", dir ? dir : "", index);
    *k = 0;
    *error = "output files: cannot create a directory";
    if (!dir || (mkdir(sub, 0700) != 0 && errno != EEXIST))
        return LOOM_EIO;
    for (size_t i = 0; i < res->nfiles; i++) {
        const loom_wire_file *wf = &res->files[i];
        if (!loom__blob_name_valid(wf->name)) {
            *error = s_keep(f, s_fmt("output file name '%.80s' is invalid%s", wf->name, ""));
            return LOOM_EPROTO;
        }
        char *path = s_keep(f, s_fmt("%s/%s", sub, wf->name));
        int rc = s_download(m->client, wf, path);
        if (rc) {
            *error = s_keep(
                f, s_fmt("output file '%s': download failed: %s", wf->name, loom_strerror(rc)));
            return rc;
        }
        names[*k] = s_keep(f, loom_xstrdup(wf->name));
        paths[*k] = path;
        (*k)++;
    }
    *error = NULL;
    return 0;
}

static int
s_kept_cmp(const void *a, const void *b)
{
    const s_kept *x = a, *y = b;
    if (x->index != y->index)
        return x->index < y->index ? -1 : 1;
    return strcmp(x->name, y->name);
}

//  The combined result of a reduce map: every output file kept, in index
//  order; if one could not be fetched, the result says so.
static void
s_attach_kept(loom_map *m, loom_result *r)
{
    struct loom__map_files *f = m->files;
    if (!f || (!f->nkept && !f->kept_error))
        return;
    if (f->kept_error && r->status == 0) {
        r->status = LOOM_EIO;
        r->error = f->kept_error;
    }
    if (!f->nkept)
        return;
    qsort(f->kept, f->nkept, sizeof *f->kept, s_kept_cmp);
    const char **names = s_keep(f, loom_xcalloc(f->nkept, sizeof *names));
    const char **paths = s_keep(f, loom_xcalloc(f->nkept, sizeof *paths));
    for (size_t i = 0; i < f->nkept; i++) {
        names[i] = f->kept[i].name;
        paths[i] = f->kept[i].path;
    }
    r->nfiles = f->nkept;
    r->file_names = names;
    r->file_paths = paths;
}

void
loom__map_keep_files(loom_map *m, const loom_wire_result *res)
{
    if (res->nfiles == 0)
        return;
    if (!m->files)
        m->files = loom_xcalloc(1, sizeof *m->files);
    struct loom__map_files *f = m->files;
    const char **names = loom_xcalloc(res->nfiles, sizeof *names);
    const char **paths = loom_xcalloc(res->nfiles, sizeof *paths);
    size_t k = 0;
    const char *error = NULL;
    int rc = s_fetch(m, res, names, paths, &k, &error);
    if (f->nkept + k > f->capkept) {
        f->capkept = f->capkept ? 2 * f->capkept : 64;
        while (f->capkept < f->nkept + k)
            f->capkept *= 2;
        f->kept = loom_xrealloc(f->kept, f->capkept * sizeof *f->kept);
    }
    char index[32];
    snprintf(index, sizeof index, "%llu", (unsigned long long)res->index);
    for (size_t i = 0; i < k; i++)
        f->kept[f->nkept++] = (s_kept){.index = res->index,
                                       .name = s_keep(f, s_fmt("%s/%s", index, names[i])),
                                       .path = paths[i]};
    if (rc && !f->kept_error) {
        f->kept_error = s_keep(f, s_fmt("item %s: %s", index, error));
        loom_log_error("loom: map %llu: %s", (unsigned long long)m->id, f->kept_error);
    }
    free(names);
    free(paths);
}

void
loom__map_result_files(loom_map *m, const loom_wire_result *res, loom_result *r)
{
    if (m->reduce && res->index == LOOM_REDUCED_INDEX) {
        s_attach_kept(m, r);
        return;
    }
    if (res->nfiles == 0)
        return;
    if (!m->files)
        m->files = loom_xcalloc(1, sizeof *m->files);
    struct loom__map_files *f = m->files;
    size_t n = res->nfiles;
    const char **names = s_keep(f, loom_xcalloc(n, sizeof *names));
    const char **paths = s_keep(f, loom_xcalloc(n, sizeof *paths));
    size_t k = 0;
    const char *error = NULL;
    int rc = s_fetch(m, res, names, paths, &k, &error);
    if (rc) {
        r->status = rc;
        r->error = error;
    }
    r->nfiles = k;
    r->file_names = k ? names : NULL;
    r->file_paths = k ? paths : NULL;
}

void
loom__map_files_free(loom_map *m)
{
    struct loom__map_files *f = m->files;
    if (!f)
        return;
    if (f->dir) {
        loom_remove_tree(f->dir, 2);
        free(f->dir);
    }
    for (size_t i = 0; i < f->nowned; i++)
        free(f->owned[i]);
    free(f->owned);
    free(f->kept);
    free(f);
    m->files = NULL;
}
