#!/bin/bash
# test_curve: CURVE security end to end with real processes. `loom keygen`
# makes the keys; a `loom broker --curve-dir --cert` lets in only the peers
# whose public certificates are in its directory. A listed client and worker
# run a map; an unlisted client gets no session and runs no task; an
# unlisted worker gets no work. Needs $LOOM_EXE and $LOOM_PLUGIN_PATH.
set -u

LOOM=${LOOM_EXE:?LOOM_EXE must name the loom executable}
TMP=$(mktemp -d "/tmp/loom-test-$$-curve-XXXXXX")
export TMPDIR="$TMP" # what loom makes in $TMPDIR goes with $TMP
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
FAILED=0
EP="ipc://$TMP/broker.sock"
lm() { timeout -k 5 60 "$LOOM" "$@"; }
fail() { echo "not ok - $*"; FAILED=$((FAILED + 1)); }
pass() { echo "ok - $*"; }

# stat NAME [cert args...]: one counter of the broker
bstat() {
    local name=$1
    shift
    lm status --connect "$EP" --timeout 3000 "$@" | awk -v n="$name" '$1 == n { print $2 }'
}

cd "$TMP" || exit 1
mkdir allow
for k in broker client worker stranger; do
    lm keygen "$k" >"$k.z85" 2>/dev/null || { fail "keygen $k"; exit 1; }
done
[[ -f client && -f client_secret ]] || fail "keygen writes NAME and NAME_secret"
[[ $(stat -c %a client_secret) == 600 ]] || fail "the secret file is private (0600)"
lm keygen client 2>/dev/null && fail "keygen overwrites an existing key"
cp client worker allow/
BKEY=$(cat broker.z85)
[[ ${#BKEY} == 40 ]] || fail "keygen prints the 40-character Z85 public key"

# No accidental exposure: a non-loopback TCP bind without CURVE is refused
# (before anything binds), saying why and naming --insecure.
for ep in "--bind tcp://0.0.0.0:5555" "--bind tcp://192.0.2.1:5555" \
          "--bind ipc://$TMP/x.sock --blob-bind tcp://0.0.0.0:5556"; do
    # shellcheck disable=SC2086
    lm broker $ep 2>err && fail "broker $ep started without CURVE"
    grep -q -- "--insecure" err && grep -q "without CURVE" err ||
        fail "broker $ep: the refusal does not explain: $(cat err)"
done
lm broker --help 2>&1 | grep -q "127.0.0.1:5555" || fail "the default endpoint is not loopback"

# The broker refuses half a CURVE setup and a certificate without its secret.
lm broker --bind "$EP" --blob-bind "" --curve-dir allow 2>err && fail "--curve-dir without --cert"
grep -q -- "--cert" err || fail "the message names --cert"
lm broker --bind "$EP" --blob-bind "" --curve-dir allow --cert allow/client 2>err &&
    fail "a public-only certificate is accepted as the broker's"
grep -q "secret" err || fail "the message says the secret key is missing"

"$LOOM" broker --bind "$EP" --blob-bind "" --curve-dir allow --cert broker 2>broker.log &
PIDS+=($!)
CLIENT=(--cert client --server-key "$BKEY")
for _ in $(seq 100); do
    [[ -n $(bstat epoch "${CLIENT[@]}" 2>/dev/null) ]] && break
    sleep 0.1
done
[[ -n $(bstat epoch "${CLIENT[@]}") ]] || { fail "the CURVE broker answers a listed key"; exit 1; }

# Without CURVE, or with an unlisted key, not even a StatsRequest is answered.
[[ -z $(bstat epoch 2>/dev/null) ]] || fail "a plain (NULL) peer is answered"
[[ -z $(bstat epoch --cert stranger --server-key broker 2>/dev/null) ]] ||
    fail "an unlisted key is answered"

# A worker with an unlisted key: it never gets a session.
"$LOOM" worker --connect "$EP" --procs 1 --cert stranger --server-key broker 2>wbad.log &
PIDS+=($!)
BADW=$!

# An unlisted client: no session, no task, no result.
seq 1 20 >in.txt
if lm map echo echo --connect "$EP" --cert stranger --server-key "$BKEY" <in.txt >out.bad 2>err.bad; then
    fail "an unlisted client runs a map"
else
    pass "an unlisted client is refused"
fi
[[ ! -s out.bad ]] || fail "an unlisted client got output"
[[ $(bstat items_done "${CLIENT[@]}") == 0 ]] || fail "a task ran for an unlisted client"
[[ $(bstat clients "${CLIENT[@]}") == 0 && $(bstat workers "${CLIENT[@]}") == 0 &&
    $(bstat supervisors "${CLIENT[@]}") == 0 ]] || fail "an unlisted peer holds a session"
kill "$BADW"; wait "$BADW" 2>/dev/null

# A listed worker and a listed client (server key as a file this time).
"$LOOM" worker --connect "$EP" --procs 2 --cert worker --server-key broker 2>w.log &
PIDS+=($!)
out=$(lm map echo echo --ordered --connect "$EP" --cert client --server-key broker <in.txt 2>err.ok)
if [[ "$out" == "$(seq 1 20)" ]]; then
    pass "a listed client and worker run a map"
else
    fail "a listed client and worker run a map: got [$out] $(cat err.ok)"
fi
[[ $(bstat items_done "${CLIENT[@]}") == 20 ]] || fail "the broker counts 20 items done"

# A bad --server-key or --cert is refused before connecting, with a reason.
lm map echo echo --connect "$EP" --cert client --server-key nonsense <in.txt 2>err && fail "bad key"
grep -q "Z85" err || fail "the bad server key message explains"
lm worker --connect "$EP" --cert nope --server-key broker 2>err && fail "missing cert accepted"
grep -q "no such file" err || fail "the missing certificate message explains"

if ((FAILED)); then
    echo "FAILED: $FAILED" >&2
    exit 1
fi
pass "curve"
