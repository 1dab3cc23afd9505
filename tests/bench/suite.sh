#!/bin/bash
# The whole benchmark suite: every figure beside a baseline measured in the
# same run, as a table (workload | loom | baseline | ratio).
#   tests/bench/suite.sh
# Environment:
#   BUILD                    build directory (default: build)
#   LOOM_BENCH_ITEMS         throughput items (default 200000)
#   LOOM_BENCH_WORKERS       worker processes for throughput/latency (default 2)
#   LOOM_BENCH_SAMPLES       latency round trips (default 2000)
#   LOOM_BENCH_SCALE_ITEMS   CPU-bound items for scaling (default 50, 20 ms each; 3 pairs of runs)
#   LOOM_BENCH_MEM_ITEMS     items of the memory case (default 1000000; the
#                            issue's full size is 10000000)
#   LOOM_BENCH_SHARE_MB      size of the share of the shares case (default 1024)
#   LOOM_BENCH_CURVE         0: leave out the remote plaintext-vs-CURVE runs
#   LOOM_BENCH_REPEAT        runs of the throughput/latency bench (default 3;
#                            the table shows the run with the median loom
#                            unordered ratio, every run is printed above it)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
[[ -d $BUILD ]] || meson setup "$BUILD" >/dev/null
BUILD=$(cd "$BUILD" && pwd) # relative to the tree, or absolute
ninja -C "$BUILD" tools/loom tests/bench/bench_throughput tests/bench/bench_scaling \
    tests/bench/bench_share plugins/echo.so tests/plugins/testkit.so >/dev/null
export LOOM_EXE="$BUILD/tools/loom"
export LOOM_PLUGIN_PATH="$BUILD/plugins:$BUILD/tests/plugins"
export LOOM_BENCH_MACHINE=1
ITEMS=${LOOM_BENCH_ITEMS:-200000}
WORKERS=${LOOM_BENCH_WORKERS:-2}
SAMPLES=${LOOM_BENCH_SAMPLES:-2000}
REPEAT=${LOOM_BENCH_REPEAT:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for ((i = 1; i <= REPEAT; i++)); do
    "$BUILD/tests/bench/bench_throughput" "$ITEMS" "$WORKERS" "$SAMPLES" >"$tmp/tp$i"
    grep -v '^[a-z_0-9]* [0-9.]* ' "$tmp/tp$i" | sed "s/^/run $i: /" >&2
    awk -v f="$tmp/tp$i" '/^tp_unordered /{u=$2} /^tp_raw /{r=$2} END{printf "%.6f %s\n", u/r, f}' \
        "$tmp/tp$i" >>"$tmp/ratios"
done
#  The run with the median loom/raw ratio (machines are noisy: the ratio of
#  one run holds better than absolute figures across runs).
median=$(sort -n "$tmp/ratios" | awk '{f[NR]=$2} END{print f[int((NR+1)/2)]}')
"$BUILD/tests/bench/bench_scaling" scaling "${LOOM_BENCH_SCALE_ITEMS:-50}" 20 >"$tmp/scale"
"$BUILD/tests/bench/bench_scaling" memory "${LOOM_BENCH_MEM_ITEMS:-1000000}" >"$tmp/mem"
"$BUILD/tests/bench/bench_share" "${LOOM_BENCH_SHARE_MB:-1024}" 200 20 >"$tmp/share"
cat "$median" "$tmp/scale" "$tmp/mem" "$tmp/share" >"$tmp/all"

awk -v items="$ITEMS" -v workers="$WORKERS" '
    { v[$1] = $2 }
    function row(w, l, b, r) { printf "| %-46s | %-18s | %-18s | %-7s |\n", w, l, b, r }
    END {
        printf "| %-46s | %-18s | %-18s | %-7s |\n", "workload", "loom", "baseline", "ratio"
        printf "|%s|%s|%s|%s|\n", "------------------------------------------------", \
            "--------------------", "--------------------", "---------"
        row(sprintf("throughput unordered (%d x 16 B, %d procs)", items, workers),
            sprintf("%.0f items/s", v["tp_unordered"]), sprintf("%.0f items/s", v["tp_raw"]),
            sprintf("%.3f", v["tp_unordered"] / v["tp_raw"]))
        row(sprintf("throughput ordered (%d x 16 B, %d procs)", items, workers),
            sprintf("%.0f items/s", v["tp_ordered"]), sprintf("%.0f items/s", v["tp_raw"]),
            sprintf("%.3f", v["tp_ordered"] / v["tp_raw"]))
        row("latency p50 (one item; relay, echo threads)", sprintf("%.0f us", v["lat_p50"]),
            sprintf("%.0f us", v["lat_raw_p50"]), sprintf("%.2f", v["lat_p50"] / v["lat_raw_p50"]))
        row("latency p99 (one item; relay, echo threads)", sprintf("%.0f us", v["lat_p99"]),
            sprintf("%.0f us", v["lat_raw_p99"]), sprintf("%.2f", v["lat_p99"] / v["lat_raw_p99"]))
        row("latency p50 (one item; relay, echo procs)", sprintf("%.0f us", v["lat_p50"]),
            sprintf("%.0f us", v["lat_rawproc_p50"]), sprintf("%.2f", v["lat_p50"] / v["lat_rawproc_p50"]))
        row("latency p99 (one item; relay, echo procs)", sprintf("%.0f us", v["lat_p99"]),
            sprintf("%.0f us", v["lat_rawproc_p99"]), sprintf("%.2f", v["lat_p99"] / v["lat_rawproc_p99"]))
        row(sprintf("scaling: %d x %d ms CPU, 2 procs vs 1", v["scaling_items"], v["scaling_task_ms"]),
            sprintf("%.1f items/s", v["scaling_2"]), sprintf("%.1f items/s", v["scaling_1"]),
            sprintf("%.2f", v["scaling_speedup"]))
        row(sprintf("memory: client peak RSS, %d items", v["memory_items"]),
            sprintf("%d KiB", v["memory_client_rss"]), "-", "-")
        row(sprintf("memory: worker peak RSS, %d items", v["memory_items"]),
            sprintf("%d KiB", v["memory_worker_rss"]), "-", "-")
        row(sprintf("shares: upload %d MiB (same host: adopted)", v["share_mb"]),
            sprintf("%.2f GB/s", v["share_upload_gbs"]), sprintf("%.2f GB/s", v["share_raw_gbs"]),
            sprintf("%.3f", v["share_upload_ratio"]))
        row(sprintf("shares: upload %d MiB (blob channel)", v["share_mb"]),
            sprintf("%.2f GB/s", v["share_upload_channel_gbs"]), sprintf("%.2f GB/s", v["share_raw_gbs"]),
            sprintf("%.3f", v["share_upload_channel_ratio"]))
        row(sprintf("shares: fetch %d MiB (broker->host cache)", v["share_mb"]),
            sprintf("%.2f GB/s", v["share_fetch_gbs"]), sprintf("%.2f GB/s", v["share_raw_gbs"]),
            sprintf("%.3f", v["share_fetch_ratio"]))
        row(sprintf("shares: %d tasks reading a %d MiB share", v["share_readers"], v["share_read_mb"]),
            sprintf("%.2f s wall", v["share_read_wall_s"]), sprintf("%.2f s in-process", v["share_read_local_s"]),
            sprintf("%.2f", v["share_read_local_s"] / v["share_read_wall_s"]))
        row(sprintf("shares: MiB into / out of the broker, %d tasks", v["share_readers"]),
            sprintf("%.0f / %.0f MiB", v["share_read_bytes_in"] / 1048576,
                    v["share_read_bytes_out"] / 1048576),
            sprintf("%d MiB read", v["share_readers"] * v["share_read_mb"]), "-")
        row("memory: client peak RSS, shares case", sprintf("%d KiB", v["share_client_rss"]), "-", "-")
        row("memory: worker peak RSS, shares case", sprintf("%d KiB", v["share_worker_rss"]), "-", "-")
        if ("tp_remote_curve" in v) {
            row(sprintf("CURVE: throughput unordered (remote, %d procs)", workers),
                sprintf("%.0f items/s", v["tp_remote_curve"]), sprintf("%.0f items/s", v["tp_remote_plain"]),
                sprintf("%.3f", v["tp_remote_curve"] / v["tp_remote_plain"]))
            row("CURVE: latency p50 (remote)", sprintf("%.0f us", v["lat_remote_curve_p50"]),
                sprintf("%.0f us", v["lat_remote_plain_p50"]),
                sprintf("%.2f", v["lat_remote_curve_p50"] / v["lat_remote_plain_p50"]))
            row("CURVE: latency p99 (remote)", sprintf("%.0f us", v["lat_remote_curve_p99"]),
                sprintf("%.0f us", v["lat_remote_plain_p99"]),
                sprintf("%.2f", v["lat_remote_curve_p99"] / v["lat_remote_plain_p99"]))
            row("CURVE: raw relay throughput (tcp)",
                sprintf("%.0f items/s", v["tp_rawtcp_curve"]), sprintf("%.0f items/s", v["tp_rawtcp_plain"]),
                sprintf("%.3f", v["tp_rawtcp_curve"] / v["tp_rawtcp_plain"]))
            row("CURVE: raw relay latency p50 (tcp)", sprintf("%.0f us", v["lat_rawtcp_curve_p50"]),
                sprintf("%.0f us", v["lat_rawtcp_plain_p50"]),
                sprintf("%.2f", v["lat_rawtcp_curve_p50"] / v["lat_rawtcp_plain_p50"]))
        }
        if ("share_remote_upload_curve_gbs" in v) {
            row(sprintf("CURVE: upload %d MiB (blob channel, remote)", v["share_mb"]),
                sprintf("%.2f GB/s", v["share_remote_upload_curve_gbs"]),
                sprintf("%.2f GB/s", v["share_remote_upload_plain_gbs"]),
                sprintf("%.3f", v["share_remote_upload_ratio"]))
            row(sprintf("CURVE: fetch %d MiB (broker->remote host)", v["share_mb"]),
                sprintf("%.2f GB/s", v["share_remote_fetch_curve_gbs"]),
                sprintf("%.2f GB/s", v["share_remote_fetch_plain_gbs"]),
                sprintf("%.3f", v["share_remote_fetch_ratio"]))
            row(sprintf("CURVE: raw bulk %d MiB (tcp)", v["share_mb"]),
                sprintf("%.2f GB/s", v["share_rawtcp_curve_gbs"]),
                sprintf("%.2f GB/s", v["share_rawtcp_plain_gbs"]),
                sprintf("%.3f", v["share_rawtcp_ratio"]))
        }
    }' "$tmp/all"
echo "baselines: raw libzmq relay (DEALER->ROUTER|ROUTER->DEALER, 100 items/msg, 10,000 in flight);"
echo "latency: one item's round trip through the same relay, its echo workers threads of the bench process"
echo "(echo threads) or processes of their own as loom's are (echo procs), alternating with loom; scaling: the same task on 1 process;"
echo "shares: raw libzmq DEALER->ROUTER of the same bytes, 256 KiB frames, 1 MiB window; $(awk '/^share_rounds/{print $2}' "$tmp/all") rounds"
echo "alternating raw and loom, the median of the rounds' ratios; tasks reading: the same sums on 2 threads of one"
echo "process over one mapping of the file. SHA-256 here: $(awk '/^share_hash_gbs/{printf "%.2f", $2}' "$tmp/all") GB/s a core; a plain write of a new"
echo "file: $(awk '/^share_write_gbs/{printf "%.2f", $2}' "$tmp/all") GB/s (share_write_gbs: into memory this VM had handed back to its host; each"
echo "upload reuses the pages of such a write, see bench_share.c). The client's peak RSS includes the embedded broker."
if grep -q '^tp_remote_curve ' "$tmp/all"; then
    echo "CURVE rows: loom = under CURVE, baseline = the same in plaintext, measured alternately in the same run:"
    echo "a loom broker process and a loom worker host on tcp://127.0.0.1, this process the client (keys by loom"
    echo "keygen); shares: the client with LOOM_BLOB_LOCAL=0, the host's cache on another file system (no hard"
    echo "link), so both cross the blob channel; raw: the same relay / bulk sender over tcp without and with CURVE keys."
    echo "CURVE's cipher here (XSalsa20-Poly1305, libsodium, what each end's I/O thread does per byte): $(awk '/^share_box_gbs/{printf "%.2f", $2}' "$tmp/all") GB/s a core."
fi
