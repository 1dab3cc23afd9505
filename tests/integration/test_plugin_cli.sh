#!/bin/bash
# test_plugin_cli: `loom plugin build` and `loom plugin inspect` as a user
# runs them: the SDK template compiled with the real compiler, loaded and
# checked, inspected by file and by name; refusals exit 1 with the loader's
# reason. Needs $LOOM_EXE (the meson test environment sets it; or pass the
# loom executable as $1). Prints one "ok"/"not ok" line per case.
set -u

LOOM=${LOOM_EXE:-${1:-}}
[[ -x "$LOOM" ]] || { echo "test_plugin_cli: set LOOM_EXE to the loom executable" >&2; exit 2; }
SRC=$(cd "$(dirname "$0")/../.." && pwd)
TEMPLATE=$SRC/sdk/template/plugin.c
TMP=$(mktemp -d "/tmp/loom-test-$$-plugin-cli-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
PASSED=0
FAILED=0

lm() { timeout -k 5 120 "$LOOM" "$@"; }

fail() {
    echo "    $*" >&2
    return 1
}

# expect_has WHAT TEXT NEEDLE
expect_has() {
    if [[ "$2" != *"$3"* ]]; then
        fail "$1: [$(head -c 600 <<<"$2")] lacks [$3]"
    fi
}

# run CMD...: sets OUT, ERR and RC
run() {
    RC=0
    OUT=$("$@" 2>"$TMP/stderr") || RC=$?
    ERR=$(cat "$TMP/stderr")
}

run_case() {
    local name=$1 rc
    (
        set -e
        "$name"
    )
    rc=$?
    if [[ $rc == 0 ]]; then
        echo "ok - $name"
        PASSED=$((PASSED + 1))
    else
        echo "not ok - $name"
        FAILED=$((FAILED + 1))
    fi
}

builds_the_template() {
    run lm plugin build "$TEMPLATE" -o "$TMP/myplugin.so"
    [[ $RC == 0 ]] || fail "build exited $RC: $ERR"
    expect_has "build output" "$OUT" "built myplugin 1.0.0"
    expect_has "build output" "$OUT" "2 tasks, loom plugin ABI 1.1"
    [[ -f "$TMP/myplugin.so" ]] || fail "no myplugin.so"
}

inspects_by_file() {
    [[ -f "$TMP/myplugin.so" ]] || lm plugin build "$TEMPLATE" -o "$TMP/myplugin.so" >/dev/null
    run lm plugin inspect "$TMP/myplugin.so"
    [[ $RC == 0 ]] || fail "inspect exited $RC: $ERR"
    expect_has inspect "$OUT" "name     myplugin"
    expect_has inspect "$OUT" "version  1.0.0"
    expect_has inspect "$OUT" "abi      1.1"
    expect_has inspect "$OUT" "file     $TMP/myplugin.so"
    expect_has inspect "$OUT" "init     yes"
    [[ $(grep -c '^task ' <<<"$OUT") == 2 ]] || fail "want 2 task lines: $OUT"
    grep -Eq '^task +upper +- +the item, in upper case' <<<"$OUT" || fail "upper line: $OUT"
    grep -Eq '^task +length +reduce +byte count' <<<"$OUT" || fail "length line: $OUT"
}

inspects_by_name_in_plugin_path() {
    [[ -f "$TMP/myplugin.so" ]] || lm plugin build "$TEMPLATE" -o "$TMP/myplugin.so" >/dev/null
    run lm plugin inspect myplugin --plugin-path "/nonexistent:$TMP"
    [[ $RC == 0 ]] || fail "inspect exited $RC: $ERR"
    expect_has inspect "$OUT" "name     myplugin"
    run lm plugin inspect nosuchplugin --plugin-path "$TMP"
    [[ $RC == 1 ]] || fail "missing plugin exited $RC"
    expect_has "missing plugin" "$ERR" "plugin 'nosuchplugin' not found in $TMP"
}

built_plugin_runs() {
    [[ -f "$TMP/myplugin.so" ]] || lm plugin build "$TEMPLATE" -o "$TMP/myplugin.so" >/dev/null
    run bash -c "printf 'abc\nHello 1\n' | timeout -k 5 120 '$LOOM' map myplugin upper \
        --serial --ordered --plugin-path '$TMP'"
    [[ $RC == 0 ]] || fail "map exited $RC: $ERR"
    [[ "$OUT" == $'ABC\nHELLO 1' ]] || fail "map output [$OUT]"
}

passes_extra_cflags() {
    cat >"$TMP/flagged.c" <<'C'
#include <loom/plugin.h>
#ifndef GREETING
#error GREETING not defined
#endif
static int s_hi(loom_task *t) { return loom_task_output(t, GREETING, sizeof GREETING - 1); }
static const loom_task_def s_tasks[] = {{.name = "hi", .run = s_hi, .doc = GREETING}, {0}};
LOOM_PLUGIN(.name = "flagged", .version = "0.1.0", .tasks = s_tasks);
C
    run lm plugin build "$TMP/flagged.c" -o "$TMP/flagged.so"
    [[ $RC == 1 ]] || fail "build without the flag exited $RC"
    expect_has "missing flag" "$ERR" "GREETING not defined"
    run lm plugin build "$TMP/flagged.c" -o "$TMP/flagged.so" '-DGREETING="hello"'
    [[ $RC == 0 ]] || fail "build exited $RC: $ERR"
    run lm plugin inspect "$TMP/flagged.so"
    grep -Eq '^task +hi +- +hello$' <<<"$OUT" || fail "inspect: $OUT"
}

refuses_compile_errors() {
    echo 'int x = ;' >"$TMP/broken.c"
    run lm plugin build "$TMP/broken.c" -o "$TMP/broken.so"
    [[ $RC == 1 ]] || fail "exited $RC"
    expect_has stderr "$ERR" "compiler failed"
    expect_has stderr "$ERR" "broken.c"
    [[ ! -e "$TMP/broken.so" ]] || fail "broken.so exists"
}

refuses_file_name_not_matching_plugin() {
    run lm plugin build "$TEMPLATE" -o "$TMP/other.so"
    [[ $RC == 1 ]] || fail "exited $RC"
    expect_has stderr "$ERR" "defines plugin 'myplugin'"
    run lm plugin build "$TEMPLATE" -o "$TMP/libmyplugin.so"
    [[ $RC == 0 ]] || fail "libNAME.so exited $RC: $ERR"
}

refuses_bad_output_names() {
    for out in "$TMP/Bad.so" "$TMP/x.dylib" "$TMP/a.b.so"; do
        run lm plugin build "$TEMPLATE" -o "$out"
        [[ $RC == 2 ]] || fail "$out: exited $RC"
        expect_has stderr "$ERR" "must be NAME.so"
    done
    run lm plugin build "$TEMPLATE"
    [[ $RC == 2 ]] || fail "no -o: exited $RC"
    run lm plugin build -o "$TMP/x.so"
    [[ $RC == 2 ]] || fail "no source: exited $RC"
}

refuses_non_plugins() {
    cat >"$TMP/plain.c" <<'C'
int plain_function(void);
int plain_function(void) { return 1; }
C
    run lm plugin build "$TMP/plain.c" -o "$TMP/plain.so"
    [[ $RC == 1 ]] || fail "exited $RC"
    expect_has stderr "$ERR" "exports no loom_plugin_entry"
    run lm plugin inspect "$TMP/plain.so"
    [[ $RC == 1 ]] || fail "inspect exited $RC"
    expect_has stderr "$ERR" "exports no loom_plugin_entry"
}

inspect_refuses_other_abi() {
    local file=""
    IFS=: read -ra dirs <<<"${LOOM_PLUGIN_PATH:-}"
    for d in "${dirs[@]}"; do
        [[ -f "$d/wrong_major.so" ]] && file=$d/wrong_major.so
    done
    [[ -n "$file" ]] || fail "wrong_major.so not in LOOM_PLUGIN_PATH"
    run lm plugin inspect "$file"
    [[ $RC == 1 ]] || fail "exited $RC"
    expect_has stderr "$ERR" "built for loom plugin ABI 2.0, this worker speaks 1.1"
}

usage_errors() {
    run lm plugin
    [[ $RC == 2 ]] || fail "no action: exited $RC"
    run lm plugin frobnicate
    [[ $RC == 2 ]] || fail "unknown action: exited $RC"
    expect_has stderr "$ERR" "unknown action 'frobnicate'"
    run lm plugin inspect
    [[ $RC == 2 ]] || fail "inspect without file: exited $RC"
}

for c in builds_the_template inspects_by_file inspects_by_name_in_plugin_path built_plugin_runs \
    passes_extra_cflags refuses_compile_errors refuses_file_name_not_matching_plugin \
    refuses_bad_output_names refuses_non_plugins inspect_refuses_other_abi usage_errors; do
    run_case "$c"
done
echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
