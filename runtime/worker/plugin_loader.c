/*  plugin_loader: finds a plugin by name in a plugin path, dlopens it and
    checks its descriptor before anything of it runs but the entry function.

    Names only: a name that is not [a-z0-9_-]{1,64} is refused before any
    file is touched, so a map request can never reach a path of its
    choosing. A library that loaded is never dlclosed (its code may still
    be on some stack, and a plugin's static destructors are not ours to
    run twice); one that failed a check is closed at once.  */

#include "plugin_loader.h"
#include "base.h"
#include "paths.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

//  Size of the 1.0 task definition: the host reads no smaller stride.
#define S_TASK_DEF_SIZE_1_0 (offsetof(loom_task_def, doc) + sizeof(const char *))

//  More tasks than this means the table has no NULL-name terminator.
#define S_MAX_TASKS 4096

struct loom_plugin_lib {
    void *handle;               //  dlopen handle; never dlclosed once accepted
    const loom_plugin_def *def; //  Checked descriptor, owned by the library
    char *file;                 //  Absolute path of the loaded file
};

//  A malloc'd printf-style message.
static LOOM_PRINTF(1, 2) char *s_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    LOOM_ASSERT(n >= 0);
    char *msg = loom_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return msg;
}

//  A printable copy of an untrusted name for messages: at most 100 chars,
//  control and non-ASCII bytes shown as '?'.
static void
s_printable(char *buf, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap && i < 100; i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    buf[i] = 0;
    if (s[i] && i >= 100 && cap > 104)
        strcpy(buf + i, "...");
}

static bool
s_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

//  The i-th task of a descriptor that passed s_check_header, read with the
//  descriptor's stride.
static const loom_task_def *
s_task_at(const loom_plugin_def *def, size_t i)
{
    return (const loom_task_def *)((const char *)def->tasks + i * def->task_size);
}

//  Check a descriptor: 0, or LOOM_EABI with a malloc'd reason. label names
//  the plugin in messages before its own name can be trusted.
static int
s_check(const loom_plugin_def *def, const char *label, const char *file, char **reason)
{
    if (!def || def->magic != LOOM_PLUGIN_MAGIC) {
        *reason = s_printf("plugin '%s' (%s): its entry point returned no loom descriptor "
                           "(bad magic number)",
                           label, file);
        return LOOM_EABI;
    }
    if (def->abi_major != LOOM_PLUGIN_ABI_MAJOR) {
        *reason = s_printf("plugin '%s' (%s) was built for loom plugin ABI %u.%u, "
                           "this worker speaks %d.%d",
                           label, file, def->abi_major, def->abi_minor, LOOM_PLUGIN_ABI_MAJOR,
                           LOOM_PLUGIN_ABI_MINOR);
        return LOOM_EABI;
    }
    if (def->abi_minor > LOOM_PLUGIN_ABI_MINOR) {
        *reason = s_printf("plugin '%s' (%s) needs a newer worker: built for loom plugin ABI "
                           "%u.%u, this worker speaks %d.%d",
                           label, file, def->abi_major, def->abi_minor, LOOM_PLUGIN_ABI_MAJOR,
                           LOOM_PLUGIN_ABI_MINOR);
        return LOOM_EABI;
    }
    if (def->struct_size < LOOM_PLUGIN_SIZE_1_0) {
        *reason = s_printf("plugin '%s' (%s): descriptor is truncated (%u bytes, a 1.0 "
                           "descriptor has %zu)",
                           label, file, def->struct_size, (size_t)LOOM_PLUGIN_SIZE_1_0);
        return LOOM_EABI;
    }
    if (!def->name || !def->version || !def->tasks) {
        *reason = s_printf("plugin '%s' (%s): descriptor has no %s", label, file,
                           !def->name      ? "name"
                           : !def->version ? "version"
                                           : "task table");
        return LOOM_EABI;
    }
    if (!loom_name_valid(def->name)) {
        char shown[128];
        s_printable(shown, sizeof shown, def->name);
        *reason = s_printf("plugin '%s' (%s) names itself '%s', which is not a valid plugin "
                           "name ([a-z0-9_-]{1,64})",
                           label, file, shown);
        return LOOM_EABI;
    }
    size_t vlen = strnlen(def->version, 65);
    if (vlen == 0 || vlen > 64) {
        *reason = s_printf("plugin '%s' (%s): version string is empty or over 64 characters", label,
                           file);
        return LOOM_EABI;
    }
    if (def->task_size < S_TASK_DEF_SIZE_1_0) {
        *reason = s_printf("plugin '%s' (%s): task definitions are truncated (%u bytes, a 1.0 "
                           "task definition has %zu)",
                           label, file, def->task_size, (size_t)S_TASK_DEF_SIZE_1_0);
        return LOOM_EABI;
    }
    size_t i = 0;
    for (; i < S_MAX_TASKS && s_task_at(def, i)->name; i++) {
        const loom_task_def *t = s_task_at(def, i);
        if (!loom_name_valid(t->name)) {
            char shown[128];
            s_printable(shown, sizeof shown, t->name);
            *reason = s_printf("plugin '%s' (%s): task %zu has an invalid name '%s' "
                               "([a-z0-9_-]{1,64})",
                               label, file, i, shown);
            return LOOM_EABI;
        }
        if (!t->run) {
            *reason =
                s_printf("plugin '%s' (%s): task '%s' has no run function", label, file, t->name);
            return LOOM_EABI;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(s_task_at(def, j)->name, t->name)) {
                *reason =
                    s_printf("plugin '%s' (%s): task '%s' is defined twice", label, file, t->name);
                return LOOM_EABI;
            }
    }
    if (i == S_MAX_TASKS) {
        *reason = s_printf("plugin '%s' (%s): task table has no end (an entry with a NULL "
                           "name) within %d entries",
                           label, file, S_MAX_TASKS);
        return LOOM_EABI;
    }
    if (i == 0) {
        *reason = s_printf("plugin '%s' (%s) defines no tasks", label, file);
        return LOOM_EABI;
    }
    return 0;
}

//  Load and check one file. label names the plugin in messages.
static int
s_open(const char *file, const char *label, loom_plugin_lib **lib_p, char **reason)
{
    char abs[PATH_MAX];
    if (!realpath(file, abs)) {
        int err = errno;
        *reason = s_printf("plugin '%s' (%s): %s", label, file, strerror(err));
        return err == ENOENT || err == ENOTDIR ? LOOM_ENOENT : LOOM_EIO;
    }
    if (!s_is_file(abs)) {
        *reason = s_printf("plugin '%s' (%s): not a regular file", label, abs);
        return LOOM_ENOENT;
    }
    void *handle = dlopen(abs, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *err = dlerror();
        *reason = s_printf("plugin '%s' (%s) cannot be loaded: %s", label, abs,
                           err ? err : "unknown dlopen error");
        return LOOM_EABI;
    }
    dlerror();
    loom_plugin_entry_fn entry;
    *(void **)&entry = dlsym(handle, LOOM_PLUGIN_ENTRY_NAME);
    if (!entry) {
        *reason = s_printf("plugin '%s' (%s) exports no %s: not a loom plugin (define it with "
                           "LOOM_PLUGIN(...))",
                           label, abs, LOOM_PLUGIN_ENTRY_NAME);
        dlclose(handle);
        return LOOM_EABI;
    }
    const loom_plugin_def *def = entry();
    int rc = s_check(def, label, abs, reason);
    if (rc) {
        dlclose(handle);
        return rc;
    }
    loom_plugin_lib *lib = loom_xcalloc(1, sizeof *lib);
    lib->handle = handle;
    lib->def = def;
    lib->file = loom_xstrdup(abs);
    *lib_p = lib;
    return 0;
}

int
loom_plugin_lib_open(const char *name, const char *path, loom_plugin_lib **lib_p, char **reason)
{
    LOOM_ASSERT(lib_p);
    LOOM_ASSERT(reason);
    *lib_p = NULL;
    *reason = NULL;
    if (!name) {
        *reason = loom_xstrdup("no plugin name given");
        return LOOM_EINVAL;
    }
    if (!loom_name_valid(name)) {
        char shown[128];
        s_printable(shown, sizeof shown, name);
        *reason = s_printf("invalid plugin name '%s': a plugin name is 1 to 64 characters of "
                           "[a-z0-9_-]",
                           shown);
        return LOOM_EINVAL;
    }
    if (!path)
        path = loom_plugin_default_path();

    //  Each directory of the path, NAME.so first, then libNAME.so; the
    //  first file that exists is the plugin, good or bad.
    const char *dir = path;
    while (*dir) {
        const char *end = strchr(dir, ':');
        size_t dlen = end ? (size_t)(end - dir) : strlen(dir);
        if (dlen > 0 && dlen < PATH_MAX - 80) {
            static const char *const forms[] = {"%.*s/%s.so", "%.*s/lib%s.so"};
            for (size_t f = 0; f < 2; f++) {
                char file[PATH_MAX];
                snprintf(file, sizeof file, forms[f], (int)dlen, dir, name);
                if (!s_is_file(file))
                    continue;
                int rc = s_open(file, name, lib_p, reason);
                if (rc)
                    return rc;
                const char *own = (*lib_p)->def->name;
                if (strcmp(own, name)) {
                    *reason = s_printf("plugin file %s holds plugin '%s', not '%s'", (*lib_p)->file,
                                       own, name);
                    //  Nothing of it ran but its entry function: safe to close.
                    dlclose((*lib_p)->handle);
                    loom_plugin_lib_destroy(lib_p);
                    return LOOM_EABI;
                }
                return 0;
            }
        }
        dir += dlen;
        if (*dir == ':')
            dir++;
    }
    *reason = s_printf("plugin '%s' not found in %s (looked for %s.so and lib%s.so)", name,
                       *path ? path : "(empty plugin path)", name, name);
    return LOOM_ENOENT;
}

int
loom_plugin_lib_open_file(const char *file, loom_plugin_lib **lib_p, char **reason)
{
    LOOM_ASSERT(file);
    LOOM_ASSERT(lib_p);
    LOOM_ASSERT(reason);
    *lib_p = NULL;
    *reason = NULL;
    //  Label: the file's base name without lib prefix and .so suffix.
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (!strncmp(base, "lib", 3) && strlen(base) > 6)
        base += 3;
    char label[128];
    s_printable(label, sizeof label, base);
    size_t n = strlen(label);
    if (n > 3 && !strcmp(label + n - 3, ".so"))
        label[n - 3] = 0;
    return s_open(file, label, lib_p, reason);
}

void
loom_plugin_lib_destroy(loom_plugin_lib **lib_p)
{
    LOOM_ASSERT(lib_p);
    loom_plugin_lib *lib = *lib_p;
    if (!lib)
        return;
    free(lib->file);
    free(lib);
    *lib_p = NULL;
}

const loom_plugin_def *
loom_plugin_lib_def(const loom_plugin_lib *lib)
{
    LOOM_ASSERT(lib);
    return lib->def;
}

const char *
loom_plugin_lib_file(const loom_plugin_lib *lib)
{
    LOOM_ASSERT(lib);
    return lib->file;
}

const loom_task_def *
loom_plugin_lib_task(const loom_plugin_lib *lib, const char *task)
{
    LOOM_ASSERT(lib);
    if (!task)
        return NULL;
    for (size_t i = 0; s_task_at(lib->def, i)->name; i++)
        if (!strcmp(s_task_at(lib->def, i)->name, task))
            return s_task_at(lib->def, i);
    return NULL;
}

const loom_task_def *
loom_plugin_lib_task_at(const loom_plugin_lib *lib, size_t i)
{
    LOOM_ASSERT(lib);
    for (size_t k = 0; k < i; k++)
        if (!s_task_at(lib->def, k)->name)
            return NULL;
    const loom_task_def *t = s_task_at(lib->def, i);
    return t->name ? t : NULL;
}
