#!/bin/bash
# test_curve: CURVE security end to end with real processes, as a user sets
# it up. `loom keygen` makes the keys; a `loom broker --curve-dir --cert`
# lets in only the peers whose public certificates are in its directory. A
# listed client and worker run maps with shares, attached files and output
# files over the secured blob channel (the host fetching each blob once);
# an unlisted client gets no session and runs no task; an unlisted worker
# gets no work; each refused peer is told why at once (loom map, loom
# status, loom worker), and the broker logs a refused key once a minute.
# Needs $LOOM_EXE and $LOOM_PLUGIN_PATH.
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

"$LOOM" broker --bind "$EP" --blob-bind "ipc://$TMP/blob.sock" --store "$TMP/store" \
    --curve-dir allow --cert broker 2>broker.log &
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

# A worker with an unlisted key: it never gets a session, and says why.
"$LOOM" worker --connect "$EP" --procs 1 --cert stranger --server-key broker 2>wbad.log &
PIDS+=($!)
BADW=$!
for _ in $(seq 50); do
    grep -q "refused this key" wbad.log && break
    sleep 0.1
done
grep -q "refused this key" wbad.log || fail "loom worker does not say its key was refused"

# An unlisted client: no session, no task, no result, and it is told why
# at once (not after the 5 s connect timeout).
seq 1 20 >in.txt
t0=$(date +%s%N)
if lm map echo echo --connect "$EP" --cert stranger --server-key "$BKEY" <in.txt >out.bad 2>err.bad; then
    fail "an unlisted client runs a map"
else
    pass "an unlisted client is refused"
fi
ms=$((($(date +%s%N) - t0) / 1000000))
[[ ! -s out.bad ]] || fail "an unlisted client got output"
grep -q "refused this key" err.bad && grep -q "allow-list" err.bad ||
    fail "loom map does not say the key was refused: $(cat err.bad)"
((ms < 4000)) || fail "the refusal took $ms ms (the connect timeout is 5000)"
# The same for loom status, a plaintext client and a wrong broker key.
lm status --connect "$EP" --timeout 3000 --cert stranger --server-key "$BKEY" >/dev/null 2>err &&
    fail "loom status answered an unlisted key"
grep -q "refused this key" err || fail "loom status does not say the key was refused: $(cat err)"
lm map echo echo --connect "$EP" <in.txt >/dev/null 2>err && fail "a plaintext client runs a map"
grep -q "requires CURVE" err || fail "a plaintext client is not told CURVE is needed: $(cat err)"
lm map echo echo --connect "$EP" --cert client --server-key "$(cat stranger.z85)" <in.txt \
    >/dev/null 2>err && fail "a client with a wrong broker key runs a map"
grep -q "public key does not match" err ||
    fail "a wrong --server-key is not named: $(cat err)"
[[ $(bstat items_done "${CLIENT[@]}") == 0 ]] || fail "a task ran for an unlisted client"
[[ $(bstat clients "${CLIENT[@]}") == 0 && $(bstat workers "${CLIENT[@]}") == 0 &&
    $(bstat supervisors "${CLIENT[@]}") == 0 ]] || fail "an unlisted peer holds a session"
kill "$BADW"; wait "$BADW" 2>/dev/null
# The broker logged the stranger's key, with its Z85 text, once (within a
# minute), though the stranger was refused many times.
SKEY=$(cat stranger.z85)
n=$(grep -cF "refused CURVE key $SKEY" broker.log)
[[ $n == 1 ]] || fail "the broker logged the refused key $n times (want 1): $(cat broker.log)"
(($(bstat curve_refused "${CLIENT[@]}") >= 4)) || fail "the broker counts fewer than 4 refusals"

# A listed worker and a listed client (server key as a file this time).
"$LOOM" worker --connect "$EP" --procs 2 --cache "$TMP/cache" --cert worker --server-key broker \
    2>w.log &
PIDS+=($!)
out=$(lm map echo echo --ordered --connect "$EP" --cert client --server-key broker <in.txt 2>err.ok)
if [[ "$out" == "$(seq 1 20)" ]]; then
    pass "a listed client and worker run a map"
else
    fail "a listed client and worker run a map: got [$out] $(cat err.ok)"
fi
[[ $(bstat items_done "${CLIENT[@]}") == 20 ]] || fail "the broker counts 20 items done"

# Shares and attached files over the secured blob channel: the client
# uploads through the channel (LOOM_BLOB_LOCAL=0, as a client on another
# host does) and through the same-host store; the worker host fetches each
# blob into its cache once.
head -c 1000000 /dev/urandom >share.bin
want="$(stat -c %s share.bin) $(od -An -v -tu1 share.bin | tr -s ' ' '\n' | awk '{s += $1} END {print s}')"
for local in 0 1; do
    out=$(seq 1 10 | sed 's/.*/x/' | LOOM_BLOB_LOCAL=$local lm map testkit shared_sum \
        --connect "$EP" "${CLIENT[@]}" --share x=share.bin 2>err.share | sort -u)
    [[ "$out" == "$want" ]] ||
        fail "share under CURVE (LOOM_BLOB_LOCAL=$local): got [$out] want [$want] $(cat err.share)"
done
printf 'one two two\n' >words.txt
out=$(LOOM_BLOB_LOCAL=0 lm map wordcount count_file --connect "$EP" "${CLIENT[@]}" \
    --files words.txt 2>err.files)
[[ "$out" == "$(printf 'one 1\ntwo 2')" ]] || fail "attached file under CURVE: [$out] $(cat err.files)"
# share.bin (uploaded twice, stored once) and words.txt: each fetched into
# the host's cache once. (Output files under CURVE: integration/blob-curve.)
cached=$(find cache -type f -name '????????????????????????????????????????????????????????????????' | wc -l)
[[ $cached == 2 ]] || fail "the host cache holds $cached blobs (want 2)"

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
