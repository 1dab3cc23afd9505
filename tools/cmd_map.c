/*  loom map: run a plugin's task over the lines of an input, print the outputs.

    One item per input line (the line without its newline), one output per
    line on stdout. Runs on the embedded local cluster (a broker in this
    process and --procs worker processes), on a remote broker (--connect), or
    in this process with no broker and no sockets (--serial: for gdb and
    valgrind; same output as the cluster, failures and reduce included).

    Input is read line by line with getline and submitted as it is read; the
    client's window bounds how much is in flight, and results are printed as
    they arrive (through on_result), so an endless input runs in bounded
    memory. Failures go to stderr as "loom map: item N: message" (N is the
    0-based line number), at most 10 lines per distinct message. Exit status:
    0, 1 if any item failed (or the map could not run), 2 for usage errors,
    130 after SIGINT.  */

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <loom/loom.h>

#include "base.h"
#include "commands.h"
#include "executor.h"
#include "map_output.h"
#include "failure_policy.h"

#define S_DEFAULT_WINDOW 10000     //  loom.h's default, used to pace submissions
#define S_ERROR_LINES 10           //  lines printed per distinct error message
#define S_ERROR_KINDS_MAX 10000    //  distinct messages tracked for collapsing
#define S_PROGRESS_EVERY_US 100000 //  progress bar: at most 10 updates a second

typedef struct {
    const char *plugin;
    const char *task;
    const char *connect;
    const char *input;
    const char *plugin_path;
    const char *args;
    const char *cert, *server_key; //  CURVE, with --connect
    bool ordered;
    bool reduce;
    bool serial;
    bool stats;
    int chunk;
    int window;
    int timeout_ms;
    int retries;
    int procs;
    int retry_failed;   //  --retry-failed N
    int halt;           //  --halt N: stop after N failed items; 0: never
    int max_tasks;      //  embedded cluster: --max-tasks N per worker process
    int max_rss_mb;     //  embedded cluster: --max-rss MB per worker process
    int init_timeout_ms;    //  --init-timeout MS: 0 default, -1 none
    const char *files_dir; //  --output-files DIR: where results' output files go, or NULL
    const char **files; //  --files: one item per path, attached as "in"
    size_t nfiles;
    const char **shares; //  --share NAME=FILE
    size_t nshares;
} s_opts;

//  What the run prints and counts, shared by the cluster and serial modes.
typedef struct {
    uint64_t submitted; //  items read and submitted
    uint64_t results;   //  results printed or reported (reduce: failures only)
    uint64_t failed;    //  items that failed
    uint64_t processed; //  serial mode: items run (a reduce prints none of them)
    loom_map *map;      //  cluster mode: the map, for its counters
    bool pumping;       //  cluster mode: loom_map_next(0) before close works
    zhash_t *kinds;     //  error message -> count of that message (uint64_t *)
    bool progress;      //  stderr is a terminal: draw a progress bar
    bool bar_shown;     //  a progress bar is on the screen now
    int64_t start_us;   //  when the run started
    int64_t bar_us;     //  last progress bar update
    bool write_failed;  //  stdout is gone (EPIPE) or full
    int write_errno;    //  errno of that failure
    int halt;           //  --halt N, or 0
    uint64_t not_run;   //  --halt: items reported "not run" (counted in failed)
    bool input_left;    //  --halt stopped reading the input
    const char *files_dir; //  --output-files, or NULL: output files are counted, not kept
    uint64_t files_kept;   //  output files copied to files_dir
    uint64_t files_left;   //  output files of results with no --output-files
} s_run;

static volatile sig_atomic_t s_interrupted = 0;

//  Where outputs go: the original stdout. fd 1 itself is pointed at stderr
//  for the run, so nothing else (worker processes started by the embedded
//  cluster, a plugin's printf in --serial mode, library logs) can mix lines
//  into the outputs.
static FILE *s_out = NULL;

static void
s_on_sigint(int sig)
{
    (void)sig;
    if (s_interrupted) {
        //  Second Ctrl-C: the map did not stop in time; leave now.
        static const char msg[] = "\nloom map: interrupted\n";
        ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)rc;
        _exit(130);
    }
    s_interrupted = 1;
}

static void
s_catch_sigint(void)
{
    //  Installed after the client exists: CZMQ installs its own handler when
    //  it initialises, and ours must win so the map is cancelled cleanly.
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void
s_usage(FILE *out)
{
    fprintf(
        out,
        "usage: loom map PLUGIN TASK [options]\n"
        "  --connect EP        run on the broker at EP (default: an embedded local cluster)\n"
        "  --input FILE|-      read items from FILE, one per line (default: stdin)\n"
        "  --ordered           print outputs in input order\n"
        "  --reduce            combine all outputs with the task's reduce; print one result\n"
        "  --chunk N           items per batch (default: automatic)\n"
        "  --window N          items in flight (default: 10000)\n"
        "  --timeout MS        per-item timeout (default: none)\n"
        "  --retries N         attempts after a worker died or timed out (-1: none)\n"
        "  --retry-failed N    run an item whose task failed or timed out up to N more\n"
        "                      times, on another worker process if there is one (waits\n"
        "                      0.1 s, doubling each time; GNU parallel's --retries)\n"
        "  --halt N            after N failed items, stop: the running items are cancelled,\n"
        "                      the rest not run, the input not read further (exit status\n"
        "                      1); also spelled now,fail=N as in GNU parallel\n"
        "  --procs N           local worker processes (default: one per core)\n"
        "  --max-tasks N       a local worker process runs N items, then a new one takes\n"
        "                      its place (as loom worker --max-tasks)\n"
        "  --max-rss MB        a local worker process over MB MiB after a batch is replaced;\n"
        "                      one going over it while an item runs is ended, the item run\n"
        "                      again alone, failing 'out of memory' if it goes over again\n"
        "                      (as loom worker --max-rss)\n"
        "  --serial            run in this process, no broker (for gdb and valgrind)\n"
        "  --plugin-path DIR   where plugins are found (':'-separated)\n"
        "  --args STRING       bytes every task reads with loom_task_args\n"
        "  --stats             print a summary line on stderr at the end\n"
        "  --files PATH...     one item per file, attached as 'in' (after PLUGIN TASK)\n"
        "  --share NAME=FILE   share FILE with every task as NAME (repeatable)\n"
        "  --cert FILE --server-key KEY\n"
        "                      CURVE with --connect: this client's certificate (loom keygen)\n"
        "                      and the broker's public key (Z85 text or its certificate file)\n"
        "  --init-timeout MS   how long the plugin's init may take in a worker process\n"
        "                      (default: 60000; -1: no limit); past it, or if init fails\n"
        "                      or crashes, the items there fail naming init and the cause\n"
        "  --output-files DIR  keep the output files of results (loom_task_output_file)\n"
        "                      as DIR/INDEX/NAME (--reduce: every item's, the same way)\n"
        "  --journal FILE      not implemented yet\n");
}

//  Parse a decimal int in [min, max]. Returns 0 or -1.
static int
s_parse_int(const char *name, const char *text, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, "loom map: %s wants a number in [%ld, %ld], got '%s'\n", name, min, max,
                text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

enum {
    S_OPT_CONNECT = 256,
    S_OPT_INPUT,
    S_OPT_FILES,
    S_OPT_SHARE,
    S_OPT_ORDERED,
    S_OPT_REDUCE,
    S_OPT_CHUNK,
    S_OPT_WINDOW,
    S_OPT_TIMEOUT,
    S_OPT_RETRIES,
    S_OPT_JOURNAL,
    S_OPT_PROCS,
    S_OPT_SERIAL,
    S_OPT_PLUGIN_PATH,
    S_OPT_ARGS,
    S_OPT_STATS,
    S_OPT_CERT,
    S_OPT_SERVER_KEY,
    S_OPT_HELP,
    S_OPT_RETRY_FAILED,
    S_OPT_HALT,
    S_OPT_MAX_TASKS,
    S_OPT_MAX_RSS,
    S_OPT_INIT_TIMEOUT,
    S_OPT_OUTPUT_FILES,
};

//  --halt N or GNU parallel's now,fail=N. Returns 0 or -1.
static int
s_parse_halt(const char *text, int *out)
{
    const char *n = strncmp(text, "now,fail=", 9) ? text : text + 9;
    char *end;
    errno = 0;
    long v = strtol(n, &end, 10);
    if (errno || end == n || *end || v < 1 || v > INT_MAX) {
        fprintf(stderr,
                "loom map: --halt wants N or now,fail=N (stop after N failed items, N >= 1), "
                "not '%s'\n",
                text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

//  Returns 0 to run, 2 for a usage error, 1 for --help (exit 0).
static int
s_parse(int argc, char **argv, s_opts *o)
{
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, S_OPT_CONNECT},
        {"input", required_argument, NULL, S_OPT_INPUT},
        {"files", required_argument, NULL, S_OPT_FILES},
        {"share", required_argument, NULL, S_OPT_SHARE},
        {"ordered", no_argument, NULL, S_OPT_ORDERED},
        {"reduce", no_argument, NULL, S_OPT_REDUCE},
        {"chunk", required_argument, NULL, S_OPT_CHUNK},
        {"window", required_argument, NULL, S_OPT_WINDOW},
        {"timeout", required_argument, NULL, S_OPT_TIMEOUT},
        {"retries", required_argument, NULL, S_OPT_RETRIES},
        {"journal", required_argument, NULL, S_OPT_JOURNAL},
        {"procs", required_argument, NULL, S_OPT_PROCS},
        {"serial", no_argument, NULL, S_OPT_SERIAL},
        {"plugin-path", required_argument, NULL, S_OPT_PLUGIN_PATH},
        {"args", required_argument, NULL, S_OPT_ARGS},
        {"stats", no_argument, NULL, S_OPT_STATS},
        {"cert", required_argument, NULL, S_OPT_CERT},
        {"server-key", required_argument, NULL, S_OPT_SERVER_KEY},
        {"help", no_argument, NULL, S_OPT_HELP},
        {"retry-failed", required_argument, NULL, S_OPT_RETRY_FAILED},
        {"halt", required_argument, NULL, S_OPT_HALT},
        {"max-tasks", required_argument, NULL, S_OPT_MAX_TASKS},
        {"max-rss", required_argument, NULL, S_OPT_MAX_RSS},
        {"init-timeout", required_argument, NULL, S_OPT_INIT_TIMEOUT},
        {"output-files", required_argument, NULL, S_OPT_OUTPUT_FILES},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    opterr = 0;
    optind = 1;
    const char *later = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1 || optind < argc) {
        if (c == -1) {
            //  A positional argument: PLUGIN, then TASK; options may follow.
            const char *arg = argv[optind++];
            if (!o->plugin)
                o->plugin = arg;
            else if (!o->task)
                o->task = arg;
            else {
                fprintf(stderr, "loom map: unexpected argument '%s'\n", arg);
                return 2;
            }
            continue;
        }
        switch (c) {
        case S_OPT_CONNECT:
            o->connect = optarg;
            break;
        case S_OPT_INPUT:
            o->input = optarg;
            break;
        case S_OPT_ORDERED:
            o->ordered = true;
            break;
        case S_OPT_REDUCE:
            o->reduce = true;
            break;
        case S_OPT_SERIAL:
            o->serial = true;
            break;
        case S_OPT_STATS:
            o->stats = true;
            break;
        case S_OPT_PLUGIN_PATH:
            o->plugin_path = optarg;
            break;
        case S_OPT_ARGS:
            o->args = optarg;
            break;
        case S_OPT_CHUNK:
            if (s_parse_int("--chunk", optarg, 1, INT_MAX, &o->chunk))
                return 2;
            break;
        case S_OPT_WINDOW:
            if (s_parse_int("--window", optarg, 1, INT_MAX, &o->window))
                return 2;
            break;
        case S_OPT_TIMEOUT:
            if (s_parse_int("--timeout", optarg, 1, INT_MAX, &o->timeout_ms))
                return 2;
            break;
        case S_OPT_RETRIES:
            if (s_parse_int("--retries", optarg, -1, 1000, &o->retries))
                return 2;
            break;
        case S_OPT_PROCS:
            if (s_parse_int("--procs", optarg, 1, 4096, &o->procs))
                return 2;
            break;
        case S_OPT_RETRY_FAILED:
            if (s_parse_int("--retry-failed", optarg, 0, 1000, &o->retry_failed))
                return 2;
            break;
        case S_OPT_HALT:
            if (s_parse_halt(optarg, &o->halt))
                return 2;
            break;
        case S_OPT_MAX_TASKS:
            if (s_parse_int("--max-tasks", optarg, 1, INT_MAX, &o->max_tasks))
                return 2;
            break;
        case S_OPT_MAX_RSS:
            if (s_parse_int("--max-rss", optarg, 1, INT_MAX, &o->max_rss_mb))
                return 2;
            break;
        case S_OPT_INIT_TIMEOUT:
            if (s_parse_int("--init-timeout", optarg, -1, INT_MAX, &o->init_timeout_ms))
                return 2;
            break;
        case S_OPT_OUTPUT_FILES:
            if (!*optarg) {
                fprintf(stderr, "loom map: --output-files wants a directory\n");
                return 2;
            }
            o->files_dir = optarg;
            break;
        case S_OPT_FILES:
            //  --files takes every argument up to the next option.
            o->files = loom_xrealloc(o->files, (size_t)argc * sizeof *o->files);
            o->files[o->nfiles++] = optarg;
            while (optind < argc && argv[optind][0] != '-')
                o->files[o->nfiles++] = argv[optind++];
            break;
        case S_OPT_SHARE:
            if (!strchr(optarg, '=') || optarg[0] == '=') {
                fprintf(stderr, "loom map: --share wants NAME=FILE, not '%s'\n", optarg);
                return 2;
            }
            o->shares = loom_xrealloc(o->shares, (size_t)argc * sizeof *o->shares);
            o->shares[o->nshares++] = optarg;
            break;
        case S_OPT_JOURNAL:
            later = "--journal (the journal is issue 6)";
            break;
        case S_OPT_CERT:
            o->cert = optarg;
            break;
        case S_OPT_SERVER_KEY:
            o->server_key = optarg;
            break;
        case 'h':
        case S_OPT_HELP:
            s_usage(stdout);
            return 1;
        case ':':
            fprintf(stderr, "loom map: option '%s' needs a value\n", argv[optind - 1]);
            return 2;
        default:
            if (optopt)
                fprintf(stderr, "loom map: unknown option '-%c'\n", optopt);
            else
                fprintf(stderr, "loom map: unknown option '%s'\n", argv[optind - 1]);
            s_usage(stderr);
            return 2;
        }
    }
    if (!o->plugin || !o->task) {
        fprintf(stderr, "loom map: missing %s\n", o->plugin ? "TASK" : "PLUGIN and TASK");
        s_usage(stderr);
        return 2;
    }
    if (later) {
        fprintf(stderr, "loom map: %s: not implemented yet\n", later);
        return 2;
    }
    if ((o->cert || o->server_key) && !o->connect) {
        fprintf(stderr, "loom map: --cert/--server-key need --connect (the embedded broker is "
                        "private to this process)\n");
        return 2;
    }
    //  The broker refuses bad names before any item; refuse them here, the
    //  same way in every mode.
    const char *at = strchr(o->plugin, '@');
    size_t nlen = at ? (size_t)(at - o->plugin) : strlen(o->plugin);
    char name[72];
    snprintf(name, sizeof name, "%.*s", (int)(nlen < 70 ? nlen : 70), o->plugin);
    if (nlen > 64 || !loom_name_valid(name)) {
        fprintf(stderr, "loom map: invalid plugin name '%s' (want [a-z0-9_-]{1,64})\n", o->plugin);
        return 2;
    }
    if (!loom_name_valid(o->task)) {
        fprintf(stderr, "loom map: invalid task name '%s' (want [a-z0-9_-]{1,64})\n", o->task);
        return 2;
    }
    if ((o->max_tasks || o->max_rss_mb) && (o->connect || o->serial)) {
        fprintf(stderr, "loom map: --max-tasks and --max-rss are for the local worker processes: "
                        "with --connect give them to loom worker; --serial has none\n");
        return 2;
    }
    if (o->serial && o->connect) {
        fprintf(stderr, "loom map: --serial runs in this process: it takes no --connect\n");
        return 2;
    }
    if (o->nfiles && o->input) {
        fprintf(stderr, "loom map: --files makes the items: it takes no --input\n");
        return 2;
    }
    return 0;
}

//  ---------------------------------------------------------------------------
//  Printing results, errors and progress

static void
s_bar_erase(s_run *run)
{
    if (run->bar_shown) {
        fputs("\r\033[K", stderr);
        run->bar_shown = false;
    }
}

static void
s_bar_update(s_run *run, bool force)
{
    if (!run->progress)
        return;
    int64_t now = loom_now_us();
    if (!force && now - run->bar_us < S_PROGRESS_EVERY_US)
        return;
    run->bar_us = now;
    double secs = (double)(now - run->start_us) / 1e6;
    uint64_t done = run->processed;
    if (run->map) {
        loom_stats st;
        loom_map_stats(run->map, &st);
        done = st.done + st.failed;
    }
    double rate = secs > 0 ? (double)done / secs : 0;
    fprintf(stderr,
            "\r\033[Kloom map: %" PRIu64 "/%" PRIu64 " done, %" PRIu64 " failed, %.0f items/s",
            done, run->submitted, run->failed, rate);
    run->bar_shown = true;
}

static void
s_write_output(s_run *run, const void *data, size_t len)
{
    if (run->write_failed)
        return;
    if (len)
        fwrite(data, 1, len, s_out);
    if (len == 0 || ((const char *)data)[len - 1] != '\n')
        fputc('\n', s_out);
    if (ferror(s_out)) {
        run->write_failed = true;
        run->write_errno = errno;
    }
}

static void
s_report_failure(s_run *run, uint64_t index, int status, const char *error)
{
    const char *msg = error && *error ? error : loom_strerror(status);
    run->failed++;
    uint64_t *count = (uint64_t *)zhash_lookup(run->kinds, msg);
    if (!count && zhash_size(run->kinds) < S_ERROR_KINDS_MAX) {
        count = (uint64_t *)loom_xcalloc(1, sizeof *count);
        zhash_insert(run->kinds, msg, count);
        zhash_freefn(run->kinds, msg, free);
    }
    if (count)
        (*count)++;
    if (!count || *count <= S_ERROR_LINES) {
        s_bar_erase(run);
        if (index == LOOM_REDUCED_INDEX)
            fprintf(stderr, "loom map: reduce: %s\n", msg);
        else
            fprintf(stderr, "loom map: item %" PRIu64 ": %s\n", index, msg);
    }
}

//  One result from the cluster or the serial executor.
static void
s_handle_result(s_run *run, uint64_t index, int status, const void *data, size_t len,
                const char *error)
{
    run->results++;
    if (status == 0)
        s_write_output(run, data, len);
    else if (status == LOOM_ECANCELED && run->halt && index != LOOM_REDUCED_INDEX) {
        run->failed++; //  not run after --halt: one line for all of them at the end
        run->not_run++;
    } else
        s_report_failure(run, index, status, error);
    s_bar_update(run, false);
}

static void
s_on_result(const loom_result *r, void *user)
{
    s_run *run = user;
    s_handle_result(run, r->index, r->status, r->data, r->len, r->error);
    if (!r->nfiles)
        return;
    if (!run->files_dir) {
        run->files_left += r->nfiles; //  said at the end: never dropped in silence
        return;
    }
    char err[512];
    if (loom__map_output_save(run->files_dir, r, err, sizeof err) == 0)
        run->files_kept += r->nfiles;
    else
        s_report_failure(run, r->index, LOOM_EIO, err);
}

static void
s_finish_report(s_run *run, bool stats)
{
    s_bar_erase(run);
    fflush(s_out);
    for (uint64_t *count = (uint64_t *)zhash_first(run->kinds); count;
         count = (uint64_t *)zhash_next(run->kinds)) {
        if (*count > S_ERROR_LINES)
            fprintf(stderr,
                    "loom map: ... and %" PRIu64 " more items failed with the same error: %s\n",
                    *count - S_ERROR_LINES, zhash_cursor(run->kinds));
    }
    if (run->files_left)
        fprintf(stderr,
                "loom map: results carried %" PRIu64 " output file%s, not kept: give "
                "--output-files DIR to keep them\n",
                run->files_left, run->files_left == 1 ? "" : "s");
    if (run->halt && run->failed - run->not_run >= (uint64_t)run->halt)
        fprintf(stderr, "loom map: halted after %d failed item%s: %" PRIu64 " item%s not run%s\n",
                run->halt, run->halt == 1 ? "" : "s", run->not_run, run->not_run == 1 ? "" : "s",
                run->input_left ? ", the rest of the input not read" : "");
    if (stats) {
        double secs = (double)(loom_now_us() - run->start_us) / 1e6;
        double rate = secs > 0 ? (double)run->submitted / secs : 0;
        fprintf(stderr, "loom map: %" PRIu64 " items, %" PRIu64 " failed, %.2f s, %.0f items/s\n",
                run->submitted, run->failed, secs, rate);
    }
}

//  ---------------------------------------------------------------------------
//  Reading input

//  Lines are read from the file descriptor into a buffer that grows to the
//  longest line (plus one read), never to the whole input. When no input is
//  ready, the reader calls its idle hook every 100 ms while it waits, so
//  results of a slow stream (tail -f | loom map) are printed as they come,
//  not when the next line arrives.
typedef void(s_idle_fn)(void *arg);

typedef struct {
    int fd;     //  input; not ours to close when it is stdin
    bool owned; //  we opened fd
    char *buf;  //  [start, end) holds unread bytes
    size_t cap, start, end;
    bool eof;        //  no more bytes to read
    s_idle_fn *idle; //  called while waiting for input, or NULL
    void *idle_arg;
} s_reader;

#define S_READ_CHUNK 65536

static int
s_reader_open(s_reader *rd, const char *path)
{
    memset(rd, 0, sizeof *rd);
    if (!path || !strcmp(path, "-")) {
        rd->fd = STDIN_FILENO;
        return 0;
    }
    rd->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (rd->fd < 0) {
        fprintf(stderr, "loom map: cannot read '%s': %s\n", path, strerror(errno));
        return -1;
    }
    rd->owned = true;
    return 0;
}

//  Wait until fd is readable, calling the idle hook every 100 ms. Returns
//  false if interrupted.
static bool
s_reader_wait(s_reader *rd)
{
    struct pollfd pfd = {.fd = rd->fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) > 0)
        return true;
    while (!s_interrupted) {
        if (rd->idle)
            rd->idle(rd->idle_arg);
        int n = poll(&pfd, 1, 100);
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            return true; //  let read() report it
    }
    return false;
}

//  Next line without its newline: 1 with *data/*len (valid until the next
//  call), 0 at the end (or after Ctrl-C), -1 on a read error.
static int
s_reader_next(s_reader *rd, const char **data, size_t *len)
{
    size_t scanned = rd->start;
    for (;;) {
        char *nl = rd->end > scanned ? memchr(rd->buf + scanned, '\n', rd->end - scanned) : NULL;
        if (nl) {
            *data = rd->buf + rd->start;
            *len = (size_t)(nl - (rd->buf + rd->start));
            rd->start = (size_t)(nl - rd->buf) + 1;
            return 1;
        }
        if (rd->eof) {
            if (rd->start == rd->end)
                return 0;
            *data = rd->buf + rd->start; //  a last line without a newline
            *len = rd->end - rd->start;
            rd->start = rd->end;
            return 1;
        }
        //  Keep the partial line, make room for one more read.
        size_t partial = rd->end - rd->start;
        if (rd->start > 0) {
            memmove(rd->buf, rd->buf + rd->start, partial);
            rd->start = 0;
            rd->end = partial;
        }
        scanned = rd->end;
        if (rd->cap - rd->end < S_READ_CHUNK) {
            rd->cap = rd->end + S_READ_CHUNK;
            rd->buf = loom_xrealloc(rd->buf, rd->cap);
        }
        if (!s_reader_wait(rd))
            return 0;
        ssize_t n = read(rd->fd, rd->buf + rd->end, rd->cap - rd->end);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                if (s_interrupted)
                    return 0; //  Ctrl-C while waiting for input: not a read error
                continue;
            }
            fprintf(stderr, "loom map: reading input: %s\n", strerror(errno));
            return -1;
        }
        if (n == 0)
            rd->eof = true;
        rd->end += (size_t)n;
    }
}

static void
s_reader_close(s_reader *rd)
{
    if (rd->owned)
        close(rd->fd);
    free(rd->buf);
    memset(rd, 0, sizeof *rd);
}

//  ---------------------------------------------------------------------------
//  Cluster mode: embedded or remote broker

//  Pump results (through on_result) for up to timeout_ms. Returns the
//  result of loom_map_next: 0 at the end, LOOM_EAGAIN, or an error.
static int
s_pump(loom_map *m, s_run *run, int timeout_ms)
{
    loom_result r;
    int rc = loom_map_next(m, &r, timeout_ms);
    if (rc == 1) {
        //  on_result is set, so this should not happen; print it all the same.
        s_on_result(&r, run);
        return LOOM_EAGAIN;
    }
    s_bar_update(run, false);
    return rc;
}

//  While waiting for input: print what has arrived.
static void
s_cluster_idle(void *arg)
{
    s_run *run = arg;
    if (run->map && run->pumping && s_pump(run->map, run, 0) != LOOM_EAGAIN)
        run->pumping = false;
    fflush(s_out);
}

static int
s_run_cluster(const s_opts *o, s_reader *rd, s_run *run)
{
    loom_client_opts copts = {.local_workers = o->procs,
                              .plugin_path = o->plugin_path,
                              .cert_path = o->cert,
                              .server_key = o->server_key,
                              .max_tasks = o->max_tasks,
                              .max_rss_mb = o->max_rss_mb};
    loom_client *client = loom_client_new(o->connect, &copts);
    if (!client) {
        if (o->connect)
            fprintf(stderr, "loom map: cannot connect to the broker at %s\n", o->connect);
        else
            fprintf(stderr, "loom map: cannot start the embedded cluster\n");
        return 1;
    }
    s_catch_sigint();

    int status = 0;
    loom_pipeline *pipeline = loom_pipeline_new(client, "loom-map");
    loom_map *m = NULL;
    if (!pipeline) {
        fprintf(stderr, "loom map: cannot open a pipeline\n");
        status = 1;
        goto done;
    }
    for (size_t i = 0; i < o->nshares; i++) {
        char name[256];
        const char *eq = strchr(o->shares[i], '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - o->shares[i]), o->shares[i]);
        int src = loom_pipeline_share_file(pipeline, name, eq + 1);
        if (src < 0) {
            fprintf(stderr, "loom map: --share %s: %s\n", o->shares[i], loom_strerror(src));
            status = 1;
            goto done;
        }
    }
    loom_map_opts mopts = {
        .args = o->args,
        .args_len = o->args ? strlen(o->args) : 0,
        .ordered = o->ordered,
        .chunk = o->chunk,
        .window = o->window,
        .retries = o->retries,
        .timeout_ms = o->timeout_ms,
        .reduce = o->reduce,
        .on_result = s_on_result,
        .user = run,
        .retry_failed = o->retry_failed,
        .halt_after_failures = o->halt,
        .init_timeout_ms = o->init_timeout_ms,
    };
    m = loom_map_new(pipeline, o->plugin, o->task, &mopts);
    if (!m) {
        fprintf(stderr, "loom map: cannot start a map of %s/%s (invalid name, or not connected)\n",
                o->plugin, o->task);
        status = 1;
        goto done;
    }

    run->map = m;
    const uint64_t window = o->window ? (uint64_t)o->window : S_DEFAULT_WINDOW;
    run->pumping = true;
    rd->idle = s_cluster_idle;
    rd->idle_arg = run;
    const char *data = NULL;
    size_t len = 0;
    int rc = 0;
    size_t next_file = 0;
    while (!s_interrupted && !run->write_failed &&
           (rc = o->nfiles ? (next_file < o->nfiles) : s_reader_next(rd, &data, &len)) > 0) {
        //  Wait for room in the window here rather than inside submit, so
        //  Ctrl-C and the progress bar keep working while tasks are slow.
        while (run->pumping && !s_interrupted) {
            loom_stats st;
            loom_map_stats(m, &st);
            if (st.in_flight < window)
                break;
            int prc = s_pump(m, run, 100);
            if (prc != LOOM_EAGAIN)
                run->pumping = false;
        }
        if (s_interrupted)
            break;
        int src;
        if (o->nfiles) {
            //  One item per file: its path as the input, the file as "in".
            const char *path = o->files[next_file++];
            const char *in_name[] = {"in"};
            src = loom_map_submit_files(m, path, strlen(path), in_name, &path, 1);
        } else
            src = loom_map_submit(m, data, len);
        if (src == LOOM_ECANCELED && o->halt) {
            run->input_left = true; //  halted: what was submitted still reports
            break;
        }
        if (src < 0) {
            s_bar_erase(run);
            fprintf(stderr, "loom map: submit: %s\n", loom_strerror(src));
            status = 1;
            goto done;
        }
        run->submitted++;
        if (run->pumping && (run->submitted & 255) == 0 && s_pump(m, run, 0) != LOOM_EAGAIN)
            run->pumping = false;
    }
    if (rc < 0) {
        status = 1;
        goto done;
    }
    if (s_interrupted || run->write_failed)
        goto done;
    rc = loom_map_close(m);
    if (rc < 0) {
        fprintf(stderr, "loom map: close: %s\n", loom_strerror(rc));
        status = 1;
        goto done;
    }
    while (!s_interrupted && !run->write_failed) {
        rc = s_pump(m, run, 100);
        if (rc == 0)
            break;
        if (rc == LOOM_EAGAIN)
            fflush(s_out); //  nothing for 100 ms: let the reader see what came
        else {
            s_bar_erase(run);
            fprintf(stderr, "loom map: %s\n", loom_strerror(rc));
            status = 1;
            break;
        }
    }
done:
    run->map = NULL;
    rd->idle = NULL;
    //  Destroying the map cancels whatever is still running; destroying the
    //  client stops the embedded broker and its worker processes.
    loom_map_destroy(&m);
    loom_pipeline_destroy(&pipeline);
    loom_client_destroy(&client);
    return status;
}

//  ---------------------------------------------------------------------------
//  Serial mode: the executor in this process

//  Split "NAME@VERSION" into a malloc'd name and a pointer to the version.
static char *
s_split_plugin(const char *spec, const char **version)
{
    char *name = loom_xstrdup(spec);
    char *at = strchr(name, '@');
    *version = NULL;
    if (at) {
        *at = '\0';
        *version = spec + (at - name) + 1;
    }
    return name;
}

static void
s_serial_idle(void *arg)
{
    s_bar_update((s_run *)arg, false);
    fflush(s_out);
}

//  --share in serial mode: the files are mapped where they are.
static int
s_serial_shares(const s_opts *o, loom_executor *ex)
{
    const char **names = loom_xcalloc(o->nshares, sizeof *names);
    const char **paths = loom_xcalloc(o->nshares, sizeof *paths);
    for (size_t i = 0; i < o->nshares; i++) {
        const char *eq = strchr(o->shares[i], '=');
        names[i] = loom_xstrdup(o->shares[i]);
        ((char *)names[i])[eq - o->shares[i]] = 0;
        paths[i] = eq + 1;
    }
    char *why = NULL;
    int rc = loom_executor_set_shares(ex, 1, names, paths, o->nshares, &why);
    if (rc)
        fprintf(stderr, "loom map: --share: %s\n", why ? why : loom_strerror(rc));
    free(why);
    for (size_t i = 0; i < o->nshares; i++)
        free((char *)names[i]);
    free(names);
    free(paths);
    return rc;
}

static int
s_run_serial(const s_opts *o, s_reader *rd, s_run *run)
{
    rd->idle = s_serial_idle;
    rd->idle_arg = run;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    loom_executor *ex = loom_executor_new(o->plugin_path, 0);
    if (!ex) {
        fprintf(stderr, "loom map: cannot create the executor\n");
        return 1;
    }
    const char *version;
    char *name = s_split_plugin(o->plugin, &version);
    char *reason = NULL;
    int open_rc = loom_executor_open_map(ex, 1, name, version, o->task, o->args,
                                         o->args ? strlen(o->args) : 0, o->reduce, &reason);
    if (open_rc == 0 && o->nshares && s_serial_shares(o, ex) != 0) {
        free(reason);
        free(name);
        loom_executor_destroy(&ex);
        return 1;
    }

    loom_exec_out acc = {0}; //  reduce: the fold so far
    bool have_acc = false;
    int status = 0;
    const char *data = NULL;
    size_t len = 0;
    int rc = 0;
    size_t next_file = 0;
    while (!s_interrupted && !run->write_failed && !(o->halt && run->failed >= (uint64_t)o->halt) &&
           (rc = o->nfiles ? (next_file < o->nfiles) : s_reader_next(rd, &data, &len)) > 0) {
        const char *in_name = "in", *in_path = NULL;
        if (o->nfiles) {
            //  As on the cluster: the path is the input, the file is "in"
            //  (read in place: serial mode copies nothing).
            in_path = data = o->files[next_file++];
            len = strlen(in_path);
            struct stat sb;
            if (stat(in_path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
                fprintf(stderr, "loom map: file 'in': %s is missing or not a regular file\n",
                        in_path);
                status = 1;
                break;
            }
            loom_executor_set_item_files(ex, &in_name, &in_path, 1, NULL);
        }
        uint64_t index = run->submitted++;
        run->processed++;
        if (open_rc < 0) {
            //  As on the cluster: a plugin that cannot be used fails every item.
            run->results++;
            s_report_failure(run, index, open_rc, reason);
            continue;
        }
        loom_exec_out out = {0};
        int xrc = loom_executor_run(ex, 1, index, data, len, &out);
        for (int retry = 1; retry <= o->retry_failed && loom_retry_status(xrc) && !s_interrupted;
             retry++) {
            //  As the broker does it: the same backoff, the last run's result.
            loom_exec_out_clear(&out);
            zclock_sleep((int)loom_retry_backoff_ms((uint32_t)retry));
            xrc = loom_executor_run(ex, 1, index, data, len, &out);
        }
        if (xrc < 0) {
            run->results++;
            s_report_failure(run, index, xrc, out.error);
        } else if (o->reduce) {
            if (!have_acc) {
                acc = out;
                memset(&out, 0, sizeof out);
                have_acc = true;
            } else {
                loom_exec_out folded = {0};
                int frc =
                    loom_executor_reduce(ex, 1, acc.data, acc.len, out.data, out.len, &folded);
                loom_exec_out_clear(&acc);
                if (frc < 0) {
                    s_report_failure(run, LOOM_REDUCED_INDEX, frc, folded.error);
                    loom_exec_out_clear(&folded);
                    have_acc = false;
                    status = 1;
                    break;
                }
                acc = folded;
            }
        } else
            s_handle_result(run, index, 0, out.data, out.len, NULL);
        loom_exec_out_clear(&out);
        s_bar_update(run, false);
    }
    if (rc < 0)
        status = 1;
    if (o->halt && run->failed >= (uint64_t)o->halt) {
        run->input_left = o->nfiles ? next_file < o->nfiles : !(rd->eof && rd->start == rd->end);
        if (o->reduce) {
            //  As on the cluster: a halted map's combined result is not made.
            char text[96];
            loom_halt_message(text, sizeof text, (uint32_t)o->halt);
            s_report_failure(run, LOOM_REDUCED_INDEX, LOOM_ECANCELED, text);
            have_acc = false;
        }
    }
    if (have_acc && !s_interrupted && status == 0)
        s_write_output(run, acc.data, acc.len);
    loom_exec_out_clear(&acc);
    free(reason);
    free(name);
    loom_executor_destroy(&ex);
    return status;
}

//  ---------------------------------------------------------------------------

int
loom_cmd_map(int argc, char **argv)
{
    s_opts o;
    int prc = s_parse(argc, argv, &o);
    if (prc == 1)
        return 0;
    if (prc) {
        free(o.files);
        free(o.shares);
        return prc;
    }

    s_reader rd;
    if (s_reader_open(&rd, o.input) < 0)
        return 1;
    //  A closed pipe on stdout ends the run quietly (see below), not by signal,
    //  so the embedded cluster is still stopped cleanly.
    signal(SIGPIPE, SIG_IGN);
    fflush(stdout);
    int out_fd = dup(STDOUT_FILENO);
    s_out = out_fd >= 0 ? fdopen(out_fd, "w") : NULL;
    if (!s_out || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
        fprintf(stderr, "loom map: cannot set up stdout: %s\n", strerror(errno));
        if (s_out)
            fclose(s_out);
        else if (out_fd >= 0)
            close(out_fd);
        s_reader_close(&rd);
        return 1;
    }

    s_run run;
    memset(&run, 0, sizeof run);
    run.kinds = zhash_new();
    run.progress = isatty(STDERR_FILENO);
    run.halt = o.halt;
    run.files_dir = o.files_dir;
    run.start_us = loom_now_us();
    run.bar_us = run.start_us;

    int status = o.serial ? s_run_serial(&o, &rd, &run) : s_run_cluster(&o, &rd, &run);
    free(o.files);
    free(o.shares);
    s_finish_report(&run, o.stats);
    if (!run.write_failed && (fflush(s_out) != 0 || ferror(s_out))) {
        run.write_failed = true;
        run.write_errno = errno;
    }
    if (fclose(s_out) != 0 && !run.write_failed) {
        run.write_failed = true;
        run.write_errno = errno;
    }
    s_out = NULL;
    zhash_destroy(&run.kinds);
    s_reader_close(&rd);

    if (s_interrupted) {
        fprintf(stderr, "loom map: interrupted\n");
        return 130;
    }
    if (run.write_failed) {
        if (run.write_errno != EPIPE)
            fprintf(stderr, "loom map: writing output: %s\n", strerror(run.write_errno));
        return 1;
    }
    if (status)
        return status;
    return run.failed ? 1 : 0;
}
