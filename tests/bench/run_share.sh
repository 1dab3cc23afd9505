#!/bin/bash
# Build and run the share benchmark: the blob channel beside raw ZeroMQ.
#   tests/bench/run_share.sh [SHARE_MB [READ_MB [READERS]]]   (defaults 1024 200 20)
# With the remote plaintext-vs-CURVE runs (LOOM_BENCH_CURVE=0 leaves them out).
# BUILD names the build directory (default: build).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
[[ -d $BUILD ]] || meson setup "$BUILD" >/dev/null
BUILD=$(cd "$BUILD" && pwd) # relative to the tree, or absolute
ninja -C "$BUILD" tools/loom tests/bench/bench_share tests/plugins/testkit.so >/dev/null
export LOOM_EXE="$BUILD/tools/loom"
export LOOM_PLUGIN_PATH="$BUILD/plugins:$BUILD/tests/plugins"
exec "$BUILD/tests/bench/bench_share" "$@"
