#!/usr/bin/env bash
# Soak test: the server under a long mixed load with abrupt disconnects, then a leak check.
#
# Starts `stellarchat serve` on a free port, runs `stellarchat bench` against it for
# MINUTES: CLIENTS concurrent clients over plain HTTP, SSE and WebSocket in turn, 30 % of
# them dropping the connection after a random number of chunks. The server's RSS is printed
# every minute. The run fails (exit 1) on any 5xx, if after the load the server is not idle
# with nothing held (requests, generations, WebSockets, KV blocks outside the prefix cache),
# or if its RSS grew 5 % or more after the warm-up. The server is stopped on exit.
#
# Usage: scripts/soak.sh BIN [MINUTES] [CLIENTS]    (`just soak` builds the binary first)
# Environment: SOAK_MODEL (GGUF, default SmolLM2), SOAK_MAX_TOKENS (default 32),
#              SOAK_WARMUP (seconds before RSS growth is measured, default 600),
#              SOAK_SERVE_ARGS (flags for `serve`, default "--kv-cache-tokens 16384").
#
# The KV cache grows block by block up to --kv-cache-tokens and the prefix cache keeps
# finished prompts' blocks up to that budget, so the RSS rises until the budget is in use:
# that is not a leak. The soak's budget (16384 positions, ~0.75 GB for SmolLM2 in f32; the
# default 65536 is ~3 GB) fills within the warm-up even on a slow machine, so the growth
# measured after it is what the server keeps for no reason. The warm-up is 10 minutes: on
# the 2-core machine under other load (8 output tok/s) the RSS rose until ~11 minutes
# (KV blocks, then the allocator's per-thread arenas of the blocking pool) and stayed flat
# for the 19 minutes after (963.7 MiB at 5 min, 1025.6 at 11, 1013.4 from 17 to 29).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${1:?usage: scripts/soak.sh BIN [MINUTES] [CLIENTS]}
MINUTES=${2:-30}
CLIENTS=${3:-64}
MODEL=${SOAK_MODEL:-$ROOT/weights/SmolLM2-135M-Instruct.Q4_1.gguf}
MAX_TOKENS=${SOAK_MAX_TOKENS:-32}
WARMUP=${SOAK_WARMUP:-600}
read -r -a SERVE_ARGS <<<"${SOAK_SERVE_ARGS:---kv-cache-tokens 16384}"

die() { echo "soak: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "missing $BIN: run 'just build' first"
[ -f "$MODEL" ] || die "missing $MODEL: run 'just weights' first"

LOG=$(mktemp -t stellarchat-soak.XXXXXX)
SERVER=""
cleanup() {
  [ -z "$SERVER" ] || kill -TERM "$SERVER" 2>/dev/null || true
  [ -z "$SERVER" ] || wait "$SERVER" 2>/dev/null || true
  rm -f "$LOG" "$LOG.err"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The server's stdout carries only the `listening on` line; its log goes to stderr.
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 "${SERVE_ARGS[@]}" >"$LOG" 2>"$LOG.err" &
SERVER=$!
for _ in $(seq 1 600); do
  ADDR=$(sed -n 's/^listening on http:\/\///p' "$LOG")
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER" 2>/dev/null || die "the server exited: $(tail -5 "$LOG.err")"
  sleep 0.5
done
[ -n "${ADDR:-}" ] || die "the server did not report its address"
for _ in $(seq 1 600); do
  curl -fs "http://$ADDR/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
echo "soak: server pid $SERVER on $ADDR; $MINUTES min, $CLIENTS clients, mixed http,sse,ws, 30 % disconnects" >&2

status=0
"$BIN" bench --base-url "http://$ADDR/v1" --concurrency "$CLIENTS" --duration $((MINUTES * 60)) \
  --mix http,sse,ws --disconnect-ratio 0.3 --max-tokens "$MAX_TOKENS" \
  --rss-pid "$SERVER" --sample-interval 60 --rss-warmup "$WARMUP" --max-rss-growth 5 \
  --check-leaks --settle 120 --request-timeout 1800 || status=$?
if [ "$status" -ne 0 ]; then
  echo "soak: failed; the server's last log lines:" >&2
  tail -20 "$LOG.err" >&2
fi
exit "$status"
