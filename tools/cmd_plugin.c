/*  loom plugin: build a plugin with the right flags, or inspect one.

        loom plugin build SRC... -o NAME.so [CFLAGS...]
        loom plugin inspect FILE|NAME [--plugin-path DIR]

    build runs the C compiler ($CC, else cc) with fork/execvp, no shell:
    `cc -std=c11 -O2 -fPIC -shared -Wall -I<sdk include> ARGS... -o NAME.so`,
    where ARGS are the sources and extra flags in the order given, then
    loads the result with the worker's own loader, so a plugin that builds
    but that no worker would accept fails here, with the loader's reason.
    inspect prints the descriptor: name, version, ABI and tasks.  */

#include "commands.h"
#include "base.h"
#include "plugin_loader.h"

#include <loom/errors.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef LOOM_PLUGIN_CFLAGS
#define LOOM_PLUGIN_CFLAGS ""
#endif
#ifndef LOOM_INSTALL_INCLUDEDIR
#define LOOM_INSTALL_INCLUDEDIR "/usr/local/include"
#endif

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: loom plugin build SRC... -o NAME.so [CFLAGS...]\n"
                 "       loom plugin inspect FILE.so|NAME [--plugin-path DIR]\n");
}

//  The directory holding loom/plugin.h: the build tree's sdk/include when
//  this loom runs from a build tree that still exists, else the installed
//  include directory.
static const char *
s_sdk_include_dir(void)
{
    const char *build = LOOM_PLUGIN_CFLAGS;
    if (!strncmp(build, "-I", 2))
        build += 2;
    char header[4096];
    struct stat st;
    snprintf(header, sizeof header, "%s/loom/plugin.h", build);
    if (*build && stat(header, &st) == 0)
        return build;
    return LOOM_INSTALL_INCLUDEDIR;
}

static bool
s_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

//  The stem of a plugin file name: NAME.so -> NAME, into buf. False if the
//  file name does not end in .so or its stem is no valid name, read either
//  as NAME.so or as libNAME.so (the two forms the loader looks for).
static bool
s_stem_of_file(const char *file, char *buf, size_t cap)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (!s_ends_with(base, ".so"))
        return false;
    size_t n = strlen(base) - 3;
    if (n == 0 || n >= cap)
        return false;
    memcpy(buf, base, n);
    buf[n] = 0;
    return loom_name_valid(buf) || (!strncmp(buf, "lib", 3) && loom_name_valid(buf + 3));
}

//  True if a worker asking for plugin `name` would find it in a file
//  with this stem.
static bool
s_stem_fits(const char *stem, const char *name)
{
    return !strcmp(stem, name) || (!strncmp(stem, "lib", 3) && !strcmp(stem + 3, name));
}

//  Run argv, wait for it; returns its exit status, or -1 if it could not
//  be started or was killed (with a message on stderr).
static int
s_run(char *const argv[])
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "loom plugin build: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "loom plugin build: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            fprintf(stderr, "loom plugin build: waitpid: %s\n", strerror(errno));
            return -1;
        }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "loom plugin build: %s killed by signal %d\n", argv[0], WTERMSIG(status));
    return -1;
}

//  Print the plugin's descriptor.
static void
s_print(const loom_plugin_lib *lib)
{
    const loom_plugin_def *def = loom_plugin_lib_def(lib);
    printf("name     %s\n", def->name);
    printf("version  %s\n", def->version);
    printf("abi      %u.%u\n", def->abi_major, def->abi_minor);
    printf("file     %s\n", loom_plugin_lib_file(lib));
    printf("init     %s\n", def->init ? "yes" : "no");
    const loom_task_def *t;
    size_t width = 4;
    for (size_t i = 0; (t = loom_plugin_lib_task_at(lib, i)); i++)
        if (strlen(t->name) > width)
            width = strlen(t->name);
    for (size_t i = 0; (t = loom_plugin_lib_task_at(lib, i)); i++)
        printf("task     %-*s  %-8s  %s\n", (int)width, t->name, t->reduce ? "reduce" : "-",
               t->doc ? t->doc : "");
}

static int
s_build(int argc, char **argv)
{
    const char *out = NULL;
    int nsrc = 0;
    //  cc words + base flags + -I + args + -o OUT + NULL
    char **cmd = calloc((size_t)argc + 32, sizeof *cmd);
    if (!cmd)
        return 1;
    int n = 0;
    char *cc_copy = strdup(getenv("CC") && *getenv("CC") ? getenv("CC") : "cc");
    char *save = NULL;
    for (char *w = strtok_r(cc_copy, " \t", &save); w && n < 8; w = strtok_r(NULL, " \t", &save))
        cmd[n++] = w;
    if (n == 0)
        cmd[n++] = "cc";
    static const char *const base[] = {"-std=c11", "-O2", "-fPIC", "-shared", "-Wall"};
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
        cmd[n++] = (char *)base[i];
    char include[4200];
    snprintf(include, sizeof include, "-I%s", s_sdk_include_dir());
    cmd[n++] = include;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-o")) {
            if (i + 1 >= argc || out) {
                fprintf(stderr, "loom plugin build: -o needs one NAME.so\n");
                goto usage;
            }
            out = argv[++i];
            continue;
        }
        if (!strncmp(argv[i], "-o", 2) && !out) {
            out = argv[i] + 2;
            continue;
        }
        if (argv[i][0] != '-' && s_ends_with(argv[i], ".c"))
            nsrc++;
        cmd[n++] = argv[i];
    }
    if (nsrc == 0 || !out) {
        fprintf(stderr, "loom plugin build: %s\n",
                nsrc == 0 ? "no C source given" : "no output given (-o NAME.so)");
        goto usage;
    }
    char stem[128];
    if (!s_stem_of_file(out, stem, sizeof stem)) {
        fprintf(stderr,
                "loom plugin build: output '%s' must be NAME.so or libNAME.so, with NAME "
                "[a-z0-9_-]{1,64}: workers find plugins by that name\n",
                out);
        goto usage;
    }
    cmd[n++] = "-o";
    cmd[n++] = (char *)out;
    cmd[n] = NULL;

    int status = s_run(cmd);
    if (status != 0) {
        fprintf(stderr, "loom plugin build: compiler failed (%s%d):", status < 0 ? "" : "exit ",
                status);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %s", cmd[i]);
        fprintf(stderr, "\n");
        free(cc_copy);
        free(cmd);
        return 1;
    }
    free(cc_copy);
    free(cmd);

    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    int rc = loom_plugin_lib_open_file(out, &lib, &reason);
    if (rc) {
        fprintf(stderr, "loom plugin build: %s: %s\n", out, reason);
        free(reason);
        return 1;
    }
    const loom_plugin_def *def = loom_plugin_lib_def(lib);
    if (!s_stem_fits(stem, def->name)) {
        fprintf(stderr,
                "loom plugin build: %s defines plugin '%s': name the file %s.so, since workers "
                "look for NAME.so\n",
                out, def->name, def->name);
        loom_plugin_lib_destroy(&lib);
        return 1;
    }
    size_t ntasks = 0;
    while (loom_plugin_lib_task_at(lib, ntasks))
        ntasks++;
    printf("built %s %s (%s): %zu task%s, loom plugin ABI %u.%u\n", def->name, def->version,
           loom_plugin_lib_file(lib), ntasks, ntasks == 1 ? "" : "s", def->abi_major,
           def->abi_minor);
    loom_plugin_lib_destroy(&lib);
    return 0;

usage:
    free(cc_copy);
    free(cmd);
    s_usage(stderr);
    return 2;
}

static int
s_inspect(int argc, char **argv)
{
    const char *what = NULL, *path = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--plugin-path") && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(argv[i], "--plugin-path=", 14))
            path = argv[i] + 14;
        else if (argv[i][0] != '-' && !what)
            what = argv[i];
        else {
            s_usage(stderr);
            return 2;
        }
    }
    if (!what) {
        s_usage(stderr);
        return 2;
    }
    loom_plugin_lib *lib = NULL;
    char *reason = NULL;
    //  A path (has a '/' or names a file here) is opened as a file; a bare
    //  name is looked up in the plugin path, the way a worker would.
    struct stat st;
    int rc;
    if (strchr(what, '/') || s_ends_with(what, ".so") || stat(what, &st) == 0)
        rc = loom_plugin_lib_open_file(what, &lib, &reason);
    else
        rc = loom_plugin_lib_open(what, path, &lib, &reason);
    if (rc) {
        fprintf(stderr, "loom plugin inspect: %s\n", reason);
        free(reason);
        return 1;
    }
    s_print(lib);
    loom_plugin_lib_destroy(&lib);
    return 0;
}

int
loom_cmd_plugin(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "build"))
        return s_build(argc, argv);
    if (!strcmp(argv[1], "inspect"))
        return s_inspect(argc, argv);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        s_usage(stdout);
        return 0;
    }
    fprintf(stderr, "loom plugin: unknown action '%s'\n", argv[1]);
    s_usage(stderr);
    return 2;
}
