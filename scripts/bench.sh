#!/usr/bin/env bash
# Serving benchmark: StellarChat beside llama.cpp's server on the same GGUF, one table.
#
# Starts each server in turn on 127.0.0.1 (never both at once: they would share the cores),
# runs `stellarchat bench` against it at each concurrency with identical settings — same
# seeded prompts, greedy, --max-tokens, EOS ignored and banned so every request generates
# exactly max_tokens — stops it, and prints both servers' figures with the ratio ours/theirs.
# Then, on the same server process, the multi-turn scenario: conversations sharing a system
# prompt, each turn sending the whole history (`stellarchat bench --conversations`), in a
# second table per turn — what a prompt cache (llama.cpp's is on by default) changes.
# Every server started here is stopped on exit, however the script ends.
#
# Usage: scripts/bench.sh            (`just bench` builds the binary first)
# Environment (all optional):
#   TARGET               cargo target directory            (default: ./target)
#   BENCH_MODEL          GGUF file                          (default: weights/SmolLM2-135M-Instruct.Q4_1.gguf)
#   BENCH_LEVELS         clients:requests pairs, empty to skip (default: "1:8 4:16 16:32")
#   BENCH_MULTITURN      conversations:turns, empty to skip (default: "8:4")
#   BENCH_SYSTEM_TOKENS  the scenario's system prompt       (default: 300 SmolLM2 tokens)
#   BENCH_MAX_TOKENS     max_tokens per request             (default: 64)
#   BENCH_SEED           prompt order                       (default: 0)
#   BENCH_BAN_TOKENS     token ids banned by logit_bias     (default: 2, SmolLM2's <|im_end|>)
#   BENCH_SERVERS        which servers to run               (default: "stellarchat llamacpp")
#   BENCH_SERVE_ARGS     extra flags for `stellarchat serve` (e.g. "--dtype f16")
#   BENCH_READY_TIMEOUT  seconds to wait for a server       (default: 300)
#   LLAMACPP_PEER        the peer script                    (default: scripts/llamacpp-peer.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$ROOT/target}}
BIN=${BIN:-$TARGET/debug/stellarchat}
MODEL=${BENCH_MODEL:-$ROOT/weights/SmolLM2-135M-Instruct.Q4_1.gguf}
PEER=${LLAMACPP_PEER:-$ROOT/scripts/llamacpp-peer.sh}
LEVELS=${BENCH_LEVELS-"1:8 4:16 16:32"}
MULTITURN=${BENCH_MULTITURN-"8:4"}
SYSTEM_TOKENS=${BENCH_SYSTEM_TOKENS:-300}
MAX_TOKENS=${BENCH_MAX_TOKENS:-64}
SEED=${BENCH_SEED:-0}
BAN_TOKENS=${BENCH_BAN_TOKENS:-2}
SERVERS=${BENCH_SERVERS:-"stellarchat llamacpp"}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-300}
# The llama.cpp server keeps 16 slots; our batch gets the same width.
SLOTS=16

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "missing $BIN: run 'just build' first"
[ -f "$MODEL" ] || die "missing $MODEL: run 'just weights' first"
command -v curl >/dev/null || die "curl is needed to wait for the servers"
command -v python3 >/dev/null || die "python3 is needed to print the table"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stellarchat-bench.XXXXXX")
PGID=""   # the process group of the server now running, if any
CLIENT="" # the `stellarchat bench` now running, if any

# Stops the running server's whole process group: TERM, then KILL after 15 s.
stop_server() {
  [ -n "$PGID" ] || return 0
  kill -TERM -- "-$PGID" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 -- "-$PGID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$PGID" 2>/dev/null || true
  wait "$PGID" 2>/dev/null || true
  PGID=""
}
cleanup() {
  [ -z "$CLIENT" ] || kill -TERM "$CLIENT" 2>/dev/null || true
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port on 127.0.0.1 that nothing listens on, from $1 upwards.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# start_server NAME URL_TO_POLL COMMAND...: runs COMMAND in its own session (setsid, so that
# its pid is its process group id and stop_server reaches every child), then waits until
# URL_TO_POLL answers 200.
start_server() {
  local name=$1 ready_url=$2; shift 2
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  PGID=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  until curl -sf -o /dev/null --max-time 2 "$ready_url"; do
    if ! kill -0 "$PGID" 2>/dev/null; then
      tail -n 20 "$WORK/$name.log" >&2
      PGID=""
      die "$name exited before it was ready (log above)"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 20 "$WORK/$name.log" >&2; die "$name not ready after ${READY_TIMEOUT}s"; }
    sleep 0.5
  done
}

# run_levels NAME PORT: one `stellarchat bench --json` per level into $WORK/NAME-CLIENTS.json.
run_levels() {
  local name=$1 port=$2 level clients requests
  local ban=()
  for t in $BAN_TOKENS; do ban+=(--ban-token "$t"); done
  for level in $LEVELS; do
    clients=${level%%:*}
    requests=${level##*:}
    echo "bench: $name: concurrency $clients, $requests requests ..." >&2
    # In the background and waited for, so that a TERM/INT trap runs at once rather than
    # after the client finishes. A run where every request failed still writes its JSON
    # (exit status 1): keep going.
    "$BIN" bench --base-url "http://127.0.0.1:$port/v1" --concurrency "$clients" --requests "$requests" \
      --max-tokens "$MAX_TOKENS" --seed "$SEED" --ignore-eos "${ban[@]}" --warmup 1 --json \
      >"$WORK/$name-$clients.json" &
    CLIENT=$!
    wait "$CLIENT" || echo "bench: $name at $clients clients had failures" >&2
    CLIENT=""
  done
}

# run_multiturn NAME PORT: the multi-turn scenario into $WORK/NAME-multiturn.json. It runs
# on the server that just ran the levels rather than a fresh one: the levels' prompts share
# only the chat template's first tokens with the scenario (they have no system prompt of
# their own), so neither server's cache holds anything the scenario can reuse, and a
# restart would cost each server its load time again.
run_multiturn() {
  local name=$1 port=$2
  [ -n "$MULTITURN" ] || return 0
  local conversations=${MULTITURN%%:*} turns=${MULTITURN##*:}
  local ban=()
  for t in $BAN_TOKENS; do ban+=(--ban-token "$t"); done
  echo "bench: $name: $conversations conversations of $turns turns ..." >&2
  "$BIN" bench --base-url "http://127.0.0.1:$port/v1" --conversations "$conversations" --turns "$turns" \
    --system-prompt-tokens "$SYSTEM_TOKENS" --max-tokens "$MAX_TOKENS" --seed "$SEED" --ignore-eos "${ban[@]}" \
    --warmup 1 --json >"$WORK/$name-multiturn.json" &
  CLIENT=$!
  wait "$CLIENT" || echo "bench: $name: the multi-turn scenario had failures" >&2
  CLIENT=""
}

for server in $SERVERS; do
  case $server in
    stellarchat)
      port=$(free_port 18080)
      # shellcheck disable=SC2086 # BENCH_SERVE_ARGS is a list of flags
      start_server stellarchat "http://127.0.0.1:$port/ready" \
        "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$port" --max-num-seqs "$SLOTS" ${BENCH_SERVE_ARGS:-}
      run_levels stellarchat "$port"
      run_multiturn stellarchat "$port"
      stop_server
      ;;
    llamacpp)
      # Building llama.cpp takes 10-20 minutes: never start that from here.
      if ! bin_dir=$("$PEER" path 2>/dev/null) || [ ! -x "$bin_dir/llama-server" ]; then
        echo "bench: llama.cpp's server is not built; run '$PEER build' once to compare (skipped)" >&2
        continue
      fi
      port=$(free_port 18180)
      start_server llamacpp "http://127.0.0.1:$port/health" "$PEER" server "$MODEL" "$port" "$SLOTS"
      run_levels llamacpp "$port"
      run_multiturn llamacpp "$port"
      stop_server
      ;;
    *) die "unknown server '$server' in BENCH_SERVERS (stellarchat, llamacpp)" ;;
  esac
done

echo >&2
echo "model $(basename "$MODEL"), max_tokens $MAX_TOKENS, EOS banned, greedy, seed $SEED, $(nproc) cores"
python3 - "$WORK" "$LEVELS" "$MULTITURN" "$SYSTEM_TOKENS" <<'PY'
import json, os, sys

work, levels = sys.argv[1], [l.split(":")[0] for l in sys.argv[2].split()]
multiturn, system_tokens = sys.argv[3], sys.argv[4]

def load(name, clients):
    path = os.path.join(work, f"{name}-{clients}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def ms(v):
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"

def pct(key, p):
    return lambda r: (r.get(key) or {}).get(p)

# (label, value getter, formatter); ↑ higher is better, ↓ lower is better.
rows = [
    ("requests/s ↑", lambda r: r["requests_per_s"], lambda v: f"{v:.2f}"),
    ("output tok/s ↑", lambda r: r["output_tokens_per_s"], lambda v: f"{v:.1f}"),
    ("TTFT p50 ↓", pct("ttft_ms", "p50"), ms),
    ("TTFT p95 ↓", pct("ttft_ms", "p95"), ms),
    ("TTFT p99 ↓", pct("ttft_ms", "p99"), ms),
    ("ITL p50 ↓", pct("itl_ms", "p50"), ms),
    ("ITL p95 ↓", pct("itl_ms", "p95"), ms),
    ("ITL p99 ↓", pct("itl_ms", "p99"), ms),
    ("e2e p50 ↓", pct("e2e_ms", "p50"), ms),
    ("errors ↓", lambda r: r["errors"], lambda v: f"{v}"),
]

def row(key, label, get, fmt, ours, theirs, ratio=True):
    a = get(ours) if ours else None
    b = get(theirs) if theirs else None
    r = f"{a / b:.2f}" if ratio and a is not None and b else "—"
    print(f"{key:>7}  {label:<16}{fmt(a) if a is not None else '—':>12}"
          f"{fmt(b) if b is not None else '—':>12}{r:>13}")

def error_lines(key, ours, theirs):
    for name, r in (("StellarChat", ours), ("llama.cpp", theirs)):
        for kind, msg in ((r or {}).get("error_examples") or {}).items():
            print(f"{key:>7}  {name} error {kind}: {msg}")

if levels:
    print(f"{'clients':>7}  {'figure':<16}{'StellarChat':>12}{'llama.cpp':>12}{'ours/theirs':>13}")
for clients in levels:
    ours, theirs = load("stellarchat", clients), load("llamacpp", clients)
    for label, get, fmt in rows:
        row(clients, label, get, fmt, ours, theirs)
    error_lines("", ours, theirs)
    print()

if multiturn:
    conversations, turns = (int(n) for n in multiturn.split(":"))
    ours, theirs = load("stellarchat", "multiturn"), load("llamacpp", "multiturn")
    print(f"multi-turn: {conversations} conversations × {turns} turns at once, a shared system prompt of "
          f"~{system_tokens} tokens, each turn sending the whole history")
    print(f"{'turn':>7}  {'figure':<16}{'StellarChat':>12}{'llama.cpp':>12}{'ours/theirs':>13}")

    def turn(k, key):
        return lambda r: next((t for t in r.get("turns") or [] if t["turn"] == k), {}).get(key)

    tokens = lambda v: f"{v:.0f}"
    for k in range(1, turns + 1):
        ttft = turn(k, "ttft_ms")
        row(k, "TTFT p50 ↓", lambda r: (ttft(r) or {}).get("p50"), ms, ours, theirs)
        row(k, "TTFT p95 ↓", lambda r: (ttft(r) or {}).get("p95"), ms, ours, theirs)
        row(k, "prompt tokens", turn(k, "prompt_tokens_mean"), tokens, ours, theirs, ratio=False)
        row(k, "cached tokens", turn(k, "cached_tokens_mean"), tokens, ours, theirs, ratio=False)
    if turns > 2:  # with 2 turns these rows would repeat turn 2's
        later = f"2–{turns}"
        row(later, "TTFT p50 ↓", pct("later_turns_ttft_ms", "p50"), ms, ours, theirs)
        row(later, "TTFT p95 ↓", pct("later_turns_ttft_ms", "p95"), ms, ours, theirs)
    row("all", "output tok/s ↑", lambda r: r["output_tokens_per_s"], lambda v: f"{v:.1f}", ours, theirs)
    row("all", "errors ↓", lambda r: r["errors"], lambda v: f"{v}", ours, theirs)
    error_lines("", ours, theirs)
PY
