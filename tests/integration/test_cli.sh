#!/bin/bash
# test_cli: `loom map` end to end, as a user runs it: real processes, real
# pipes, exit statuses and stderr. Needs $LOOM_EXE and $LOOM_PLUGIN_PATH
# (the meson test environment sets both). Prints one "ok"/"not ok" line per
# case and exits non-zero if any case failed.
set -u

LOOM=${LOOM_EXE:?LOOM_EXE must name the loom executable}
TMP=$(mktemp -d "/tmp/loom-test-$$-cli-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
PASSED=0
FAILED=0

# Every command gets a time limit, so a hang fails the case instead of the suite.
lm() { timeout -k 5 120 "$LOOM" "$@"; }

fail() {
    echo "    $*" >&2
    return 1
}

# expect_eq WHAT GOT WANT
expect_eq() {
    if [[ "$2" != "$3" ]]; then
        fail "$1: got [$(head -c 400 <<<"$2")] want [$(head -c 400 <<<"$3")]"
        return 1
    fi
}

run_case() {
    local name=$1 rc
    # Not inside an `if` or `||`: there bash would ignore set -e in the subshell.
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

squares_of() { seq 1 "$1" | awk '{ print $1 * $1 }'; }

case_reduce_gives_sum_of_squares() {
    local out
    out=$(seq 1 1000 | lm map squares square_text --reduce --procs 2)
    expect_eq "reduce" "$out" "333833500"
}

case_ordered_output_is_the_expected_list() {
    local out
    out=$(seq 1 500 | lm map squares square_text --ordered --procs 2)
    expect_eq "ordered" "$out" "$(squares_of 500)"
}

case_unordered_output_has_every_item_once() {
    local out
    out=$(seq 1 2000 | lm map squares square_text --procs 2 | sort -n)
    expect_eq "unordered" "$out" "$(squares_of 2000 | sort -n)"
}

case_serial_gives_identical_output() {
    local a b
    a=$(seq 1 300 | lm map squares square_text --ordered --procs 2)
    b=$(seq 1 300 | lm map squares square_text --ordered --serial)
    expect_eq "ordered serial" "$b" "$a"
    a=$(seq 1 300 | lm map squares square_text --reduce --procs 2)
    b=$(seq 1 300 | lm map squares square_text --reduce --serial)
    expect_eq "reduce serial" "$b" "$a"
    a=$(printf 'b a\na c\nc c c\n' | lm map wordcount count --reduce --procs 2)
    b=$(printf 'b a\na c\nc c c\n' | lm map wordcount count --reduce --serial)
    expect_eq "wordcount cluster" "$a" "$(printf 'a 2\nb 1\nc 4')"
    expect_eq "wordcount serial" "$b" "$a"
}

# A failing item: its index and message on stderr, the others still printed,
# exit status 1; the same in serial mode.
case_failing_item_exits_1_and_names_it() {
    local mode rc
    for mode in --procs=2 --serial; do
        rc=0
        printf '1\n2\nbad\n4\n' | lm map squares square_text --ordered "$mode" \
            >"$TMP/out" 2>"$TMP/err" || rc=$?
        expect_eq "exit status ($mode)" "$rc" "1"
        expect_eq "stdout ($mode)" "$(cat "$TMP/out")" "$(printf '1\n4\n16')"
        grep -q "^loom map: item 2: square_text: 'bad'" "$TMP/err" ||
            fail "stderr ($mode) lacks 'item 2:': $(cat "$TMP/err")"
        [[ $(grep -c "item " "$TMP/err") == 1 ]] || fail "more than one failure: $(cat "$TMP/err")"
    done
}

# The same message is printed 10 times, then counted.
case_identical_errors_collapse_after_10() {
    local rc=0
    yes x | head -n 25 | lm map testkit fail --procs 2 >"$TMP/out" 2>"$TMP/err" || rc=$?
    expect_eq "exit status" "$rc" "1"
    expect_eq "item lines" "$(grep -c '^loom map: item [0-9]*: testkit fail: input was' "$TMP/err")" "10"
    grep -qx "loom map: ... and 15 more items failed with the same error: testkit fail: input was 'x'" \
        "$TMP/err" || fail "no collapse line: $(cat "$TMP/err")"
    [[ ! -s "$TMP/out" ]] || fail "stdout not empty"
}

case_unknown_plugin_is_named() {
    local mode rc
    for mode in --procs=1 --serial; do
        rc=0
        echo 1 | lm map nosuchplugin echo "$mode" >"$TMP/out" 2>"$TMP/err" || rc=$?
        expect_eq "exit status ($mode)" "$rc" "1"
        grep -q "nosuchplugin" "$TMP/err" || fail "stderr ($mode) does not name it: $(cat "$TMP/err")"
    done
    rc=0
    echo 1 | lm map testkit nosuchtask --procs 1 >"$TMP/out" 2>"$TMP/err" || rc=$?
    expect_eq "unknown task exit status" "$rc" "1"
    grep -q "nosuchtask" "$TMP/err" || fail "stderr does not name the task: $(cat "$TMP/err")"
}

case_usage_errors_exit_2() {
    local args rc
    while IFS= read -r args; do
        rc=0
        # shellcheck disable=SC2086
        lm $args </dev/null >/dev/null 2>"$TMP/err" || rc=$?
        expect_eq "exit status of 'loom $args'" "$rc" "2"
        [[ -s "$TMP/err" ]] || fail "'loom $args' printed no reason"
    done <<'EOF'
map
map squares
map squares square_text extra
map squares square_text --bogus
map squares square_text --chunk abc
map squares square_text --procs 0
map squares square_text --window -3
map squares square_text --timeout
map Bad/Name square_text
map squares square_text --input x.txt --files a.txt
map squares square_text --share noequals
map squares square_text --journal j.db
map squares square_text --serial --connect tcp://127.0.0.1:1
keygen
keygen a b
broker --curve-dir /nonexistent
EOF
    rc=0
    lm map squares square_text --journal j.db </dev/null 2>"$TMP/err" || rc=$?
    grep -q "not implemented yet" "$TMP/err" || fail "--journal does not say it is not implemented"
}

case_stats_line() {
    local rc=0
    seq 1 100 | lm map squares square_text --stats --procs 2 >"$TMP/out" 2>"$TMP/err" || rc=$?
    expect_eq "exit status" "$rc" "0"
    grep -Eqx 'loom map: 100 items, 0 failed, [0-9]+\.[0-9]{2} s, [0-9]+ items/s' "$TMP/err" ||
        fail "no stats line: $(cat "$TMP/err")"
    expect_eq "lines" "$(wc -l <"$TMP/out")" "100"
}

case_input_file_and_dash() {
    seq 1 50 >"$TMP/in"
    local a b
    a=$(lm map squares square_text --ordered --input "$TMP/in" --procs 2)
    b=$(lm map squares square_text --ordered --input - --procs 2 <"$TMP/in")
    expect_eq "--input FILE" "$a" "$(squares_of 50)"
    expect_eq "--input -" "$b" "$a"
    local rc=0
    lm map squares square_text --input "$TMP/missing" --procs 2 2>"$TMP/err" || rc=$?
    expect_eq "missing input exit status" "$rc" "1"
    grep -q "missing" "$TMP/err" || fail "missing input not named: $(cat "$TMP/err")"
}

# One output per line: a newline is added unless the output has one, empty
# lines are items too, and a last line without a newline is an item.
case_lines_in_lines_out() {
    local got
    got=$(printf 'a\n\nb c\nlast' | lm map testkit echo --ordered --procs 2 | od -c)
    expect_eq "echo" "$got" "$(printf 'a\n\nb c\nlast\n' | od -c)"
    got=$(printf 'a\n\nb c\nlast' | lm map testkit echo --serial | od -c)
    expect_eq "echo serial" "$got" "$(printf 'a\n\nb c\nlast\n' | od -c)"
    # wordcount outputs end with a newline already: no blank lines added.
    got=$(printf 'x y\n' | lm map wordcount count --procs 1)
    expect_eq "wordcount" "$got" "$(printf 'x 1\ny 1')"
}

case_args_reach_the_task() {
    local out
    out=$(printf '1\n2\n' | lm map testkit args --args 'hello world' --procs 2)
    expect_eq "args" "$out" "$(printf 'hello world\nhello world')"
    out=$(printf '1\n' | lm map testkit args --args 'hello world' --serial)
    expect_eq "args serial" "$out" "hello world"
}

case_empty_input() {
    local out rc=0
    out=$(lm map squares square_text --procs 1 </dev/null) || rc=$?
    expect_eq "exit status" "$rc" "0"
    expect_eq "output" "$out" ""
}

# Ctrl-C while the map waits for input: the cluster is stopped, exit 130.
case_sigint_exits_130() {
    mkfifo "$TMP/sigint.in" "$TMP/sigint.out"
    "$LOOM" map testkit echo --procs 1 <"$TMP/sigint.in" >"$TMP/sigint.out" 2>"$TMP/err" &
    local pid=$! line rc=0
    exec 7>"$TMP/sigint.in" 8<"$TMP/sigint.out"
    echo hello >&7
    # Its output proves the cluster is up and the map running.
    read -r -t 60 line <&8 || fail "no output"
    expect_eq "output" "$line" "hello"
    kill -INT "$pid"
    timeout 30 tail --pid="$pid" -f /dev/null || {
        kill -KILL "$pid"
        fail "loom map did not stop after SIGINT"
    }
    wait "$pid" || rc=$?
    exec 7>&- 8<&-
    expect_eq "exit status" "$rc" "130"
    grep -q "interrupted" "$TMP/err" || fail "no 'interrupted' on stderr: $(cat "$TMP/err")"
    if grep -q "reading input" "$TMP/err"; then fail "spurious read error: $(cat "$TMP/err")"; fi
}

case_remote_broker_and_worker() {
    local dir ep out rc=0
    dir=$(mktemp -d "/tmp/loom-test-$$-remote-XXXXXX")
    ep="ipc://$dir/task"
    "$LOOM" broker --bind "$ep" --blob-bind "ipc://$dir/blob" 2>"$TMP/broker.err" &
    local broker=$!
    "$LOOM" worker --connect "$ep" --procs 2 2>"$TMP/worker.err" &
    local worker=$!
    out=$(seq 1 1000 | lm map squares square_text --reduce --connect "$ep") || rc=$?
    kill "$worker" "$broker" 2>/dev/null || true
    wait "$worker" "$broker" 2>/dev/null || true
    rm -rf "$dir"
    expect_eq "exit status" "$rc" "0"
    expect_eq "remote reduce" "$out" "333833500"
}

case_progress_bar_only_on_a_terminal() {
    local out
    # script(1) gives loom map a pseudo-terminal for stdout and stderr: the
    # bar is drawn with carriage returns and erased at the end.
    seq 1 40 | sed 's/.*/25/' >"$TMP/sleeps"
    out=$(script -qec "$LOOM map testkit sleep --procs 2 --input $TMP/sleeps" /dev/null)
    grep -q $'\r.*loom map: [0-9]*/40 done, 0 failed, [0-9]* items/s' <<<"$out" ||
        fail "no progress bar on a terminal: [$(head -c 300 <<<"$out" | od -c | head)]"
    # Not a terminal: no bar, no carriage return anywhere.
    lm map testkit sleep --procs 2 --input "$TMP/sleeps" >/dev/null 2>"$TMP/bar.err"
    if grep -q $'\r' "$TMP/bar.err"; then fail "progress bar drawn on a pipe"; fi
}

# A real broker (its store in --store) and a real worker host (its cache in
# --cache): a share and attached files go through the blob channel.
case_remote_share_and_files() {
    local dir ep out rc=0
    dir=$(mktemp -d "/tmp/loom-test-$$-rblob-XXXXXX")
    ep="ipc://$dir/task"
    "$LOOM" broker --bind "$ep" --blob-bind "ipc://$dir/blob" --store "$dir/store" \
        2>"$TMP/rbroker.err" &
    local broker=$!
    "$LOOM" worker --connect "$ep" --procs 2 --cache "$dir/cache" 2>"$TMP/rworker.err" &
    local worker=$!
    printf 'abc' >"$TMP/r.bin"
    printf 'one two two\n' >"$TMP/r.txt"
    out=$(printf 'x\n' | lm map testkit shared_sum --connect "$ep" --share "x=$TMP/r.bin") || rc=$?
    local out2
    out2=$(lm map wordcount count_file --connect "$ep" --files "$TMP/r.txt") || rc=$?
    local stored cached
    stored=$(find "$dir/store" -type f | wc -l)
    cached=$(find "$dir/cache" -type f -name '????????????????????????????????????????????????????????????????' | wc -l)
    kill "$worker" "$broker" 2>/dev/null || true
    wait "$worker" "$broker" 2>/dev/null || true
    rm -rf "$dir"
    expect_eq "exit status" "$rc" "0"
    expect_eq "share" "$out" "3 294"
    expect_eq "file" "$out2" "$(printf 'one 1\ntwo 2')"
    expect_eq "blobs in the store" "$stored" "2"
    expect_eq "blobs in the host cache" "$cached" "2"
}

# --files: one item per file, attached as "in"; wordcount counts each file.
case_files_wordcount() {
    local out rc=0
    printf 'the cat and the dog\nThe end\n' >"$TMP/a.txt"
    printf 'a dog a cat\n' >"$TMP/b.txt"
    out=$(lm map wordcount count_file --procs 2 --reduce --files "$TMP/a.txt" "$TMP/b.txt") || rc=$?
    expect_eq "exit status" "$rc" "0"
    expect_eq "counts" "$out" "$(printf 'a 2\nand 1\ncat 2\ndog 2\nend 1\nthe 3')"
    out=$(lm map wordcount count_file --serial --reduce --files "$TMP/a.txt" "$TMP/b.txt")
    expect_eq "serial counts" "$out" "$(printf 'a 2\nand 1\ncat 2\ndog 2\nend 1\nthe 3')"
    rc=0
    lm map wordcount count_file --procs 1 --files "$TMP/missing.txt" 2>"$TMP/err" || rc=$?
    expect_eq "missing file exit status" "$rc" "1"
    grep -q "missing.txt" "$TMP/err" || fail "error does not name the file: $(cat "$TMP/err")"
}

# --share NAME=FILE: every task reads the file as share NAME.
case_share_file() {
    local out rc=0
    printf 'abc' >"$TMP/s.bin"
    out=$(printf 'x\ny\n' | lm map testkit shared_sum --procs 2 --ordered --share "x=$TMP/s.bin") ||
        rc=$?
    expect_eq "exit status" "$rc" "0"
    expect_eq "outputs" "$out" "$(printf '3 294\nnull')"
    rc=0
    lm map testkit shared_sum --procs 1 --share "x=$TMP/nope" </dev/null 2>"$TMP/err" || rc=$?
    expect_eq "missing share exit status" "$rc" "1"
    grep -q "nope" "$TMP/err" || fail "error does not name the file: $(cat "$TMP/err")"
}

# --retry-failed N: a task that fails once succeeds on its second run; without
# it the failure is final. The same in serial mode.
case_retry_failed_runs_failed_items_again() {
    local mode rc dir
    for mode in --procs=2 --serial; do
        dir="$TMP/flaky$mode"
        mkdir -p "$dir"
        rc=0
        printf '1\n1\n1\n' | lm map testkit flaky --args "$dir" --retry-failed 1 --ordered "$mode" \
            >"$TMP/out" 2>"$TMP/err" || rc=$?
        expect_eq "exit status ($mode)" "$rc" "0"
        expect_eq "two runs each ($mode)" "$(wc -l <"$TMP/out")" "6"
        rm -f "$dir"/*
        rc=0
        printf '1\n1\n1\n' | lm map testkit flaky --args "$dir" "$mode" >"$TMP/out" 2>"$TMP/err" ||
            rc=$?
        expect_eq "exit status without --retry-failed ($mode)" "$rc" "1"
        expect_eq "failures ($mode)" \
            "$(grep -c '^loom map: item [0-2]: flaky: run 1 of item [0-2] fails$' "$TMP/err")" "3"
    done
}

# --halt N: after N failures the rest is not run, and an endless input ends.
case_halt_ends_an_endless_input() {
    local mode rc
    for mode in --procs=2 --serial; do
        rc=0
        yes x | lm map testkit fail --halt 2 "$mode" >"$TMP/out" 2>"$TMP/err" || rc=$?
        expect_eq "exit status ($mode)" "$rc" "1"
        grep -Eq '^loom map: halted after 2 failed items: [0-9]+ items? not run, the rest of the input not read$' \
            "$TMP/err" || fail "no halt line ($mode): $(tail -n 3 "$TMP/err")"
        grep -q "^loom map: item [0-9]*: testkit fail: input was 'x'$" "$TMP/err" ||
            fail "the failures are not named ($mode): $(head -n 3 "$TMP/err")"
    done
}

# Every input line is accounted for: printed, failed, or counted as not run.
case_halt_accounts_for_every_item() {
    local rc=0 ok not_run
    mkdir -p "$TMP/halt"
    { printf '99\n99\n'; yes '0 30' | head -n 200; } |
        lm map testkit flaky --args "$TMP/halt" --halt now,fail=2 --procs 1 --chunk 1 \
            >"$TMP/out" 2>"$TMP/err" || rc=$?
    expect_eq "exit status" "$rc" "1"
    expect_eq "failures" "$(grep -c '^loom map: item [01]: flaky: run 1 of item [01] fails$' "$TMP/err")" "2"
    not_run=$(sed -n 's/^loom map: halted after 2 failed items: \([0-9]*\) items\{0,1\} not run$/\1/p' "$TMP/err")
    [[ -n "$not_run" && "$not_run" -gt 0 ]] || fail "no items not run: $(cat "$TMP/err")"
    ok=$(wc -l <"$TMP/out")
    expect_eq "printed + failed + not run" "$((ok + 2 + not_run))" "202"
}

case_retry_and_halt_refuse_bad_values() {
    local args rc
    while IFS= read -r args; do
        rc=0
        # shellcheck disable=SC2086
        lm $args </dev/null >/dev/null 2>"$TMP/err" || rc=$?
        expect_eq "exit status of 'loom $args'" "$rc" "2"
        grep -Eq -- "--(halt|retry-failed)" "$TMP/err" || fail "'loom $args' does not name the option"
    done <<'EOF'
map testkit fail --halt 0
map testkit fail --halt soon,fail=2
map testkit fail --halt now,fail=10%
map testkit fail --halt x
map testkit fail --retry-failed -1
map testkit fail --retry-failed many
EOF
}

# --max-rss MB: an item over the limit fails naming memory and how much it
# held; the other items are printed.
case_max_rss_names_out_of_memory() {
    local rc=0
    # 250 ms heartbeats: the error is the supervisor's word on how the process
    # ended, which must come before the broker takes it for silent.
    printf '300\n10\n' | LOOM_HEARTBEAT_MS=250 lm map testkit alloc --max-rss 100 --procs 2 \
        >"$TMP/out" 2>"$TMP/err" || rc=$?
    expect_eq "exit status" "$rc" "1"
    expect_eq "stdout" "$(cat "$TMP/out")" "10"
    grep -Eq '^loom map: item 0: worker process [0-9]+ ran out of memory: it held [0-9]+ MiB, over its limit of 100 MiB \(--max-rss\)$' \
        "$TMP/err" || fail "no out-of-memory error: $(grep 'item 0' "$TMP/err")"
}

# --max-tasks N on the local worker processes: each runs at most N items.
case_max_tasks_recycles_local_workers() {
    local out
    out=$(yes 0 | head -n 12 | lm map testkit leak --max-tasks 3 --procs 1 --chunk 1)
    expect_eq "outputs" "$(wc -l <<<"$out")" "12"
    [[ $(cut -d' ' -f1 <<<"$out" | sort -u | wc -l) -ge 4 ]] ||
        fail "fewer than 4 processes: $(cut -d' ' -f1 <<<"$out" | sort | uniq -c)"
    [[ $(cut -d' ' -f1 <<<"$out" | sort | uniq -c | awk '$1 > 3' | wc -l) == 0 ]] ||
        fail "a process ran more than 3 items: $(cut -d' ' -f1 <<<"$out" | sort | uniq -c)"
}

case_memory_limits_refuse_bad_values() {
    local args rc
    while IFS= read -r args; do
        rc=0
        # shellcheck disable=SC2086
        lm $args </dev/null >/dev/null 2>"$TMP/err" || rc=$?
        expect_eq "exit status of 'loom $args'" "$rc" "2"
        grep -Eq -- "--max-(rss|tasks)" "$TMP/err" || fail "'loom $args' does not name the option"
    done <<'EOF'
map testkit alloc --max-rss 0
map testkit alloc --max-rss lots
map testkit alloc --max-tasks 0
map testkit alloc --max-rss 100 --connect tcp://127.0.0.1:1
map testkit alloc --max-tasks 5 --serial
worker --connect tcp://127.0.0.1:1 --max-rss 0
worker --connect tcp://127.0.0.1:1 --max-rss 12x
EOF
}

for c in $(declare -F | awk '{ print $3 }' | grep '^case_'); do
    run_case "$c"
done
echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
