#!/bin/sh
# Run every libFuzzer target of a build for a bounded time.
#   tests/fuzz/run.sh BUILD_DIR SECONDS
# BUILD_DIR was configured with -Dfuzz=true (and clang). Each target
# fuzz_NAME starts from tests/fuzz/corpus/NAME and keeps what it finds in
# BUILD_DIR/fuzz-corpus/NAME; crashes go to BUILD_DIR/fuzz-artifacts/NAME/.
# Exits non-zero if any target found a failure.
set -u
if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
status=0
found=0
for exe in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$exe" ] && [ -f "$exe" ] || continue
    found=1
    name=$(basename "$exe" | sed 's/^fuzz_//')
    seeds="$here/corpus/$name"
    work="$build/fuzz-corpus/$name"
    artifacts="$build/fuzz-artifacts/$name/"
    mkdir -p "$work" "$artifacts"
    echo "== fuzz_$name for ${seconds}s"
    if ! "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$artifacts" "$work" "$seeds"; then
        echo "fuzz_$name: FAILED (see $artifacts)" >&2
        status=1
    fi
done
if [ $found -eq 0 ]; then
    echo "$0: no fuzz targets in $build/tests/fuzz (configure with -Dfuzz=true)" >&2
    exit 2
fi
exit $status
