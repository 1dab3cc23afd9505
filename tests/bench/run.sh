#!/bin/bash
# Build and run the throughput benchmark: loom beside a raw ZeroMQ relay.
#   tests/bench/run.sh [ITEMS [WORKERS [LATENCY_SAMPLES]]]   (defaults 200000 2 2000)
# With the remote plaintext-vs-CURVE runs (LOOM_BENCH_CURVE=0 leaves them out).
# BUILD names the build directory (default: build).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
[[ -d $BUILD ]] || meson setup "$BUILD" >/dev/null
BUILD=$(cd "$BUILD" && pwd) # relative to the tree, or absolute
ninja -C "$BUILD" tools/loom tests/bench/bench_throughput plugins/echo.so >/dev/null
export LOOM_EXE="$BUILD/tools/loom"
export LOOM_PLUGIN_PATH="$BUILD/plugins"
exec "$BUILD/tests/bench/bench_throughput" "$@"
