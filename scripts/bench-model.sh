#!/usr/bin/env bash
# Single-stream model speed: prefill (64-token prompt) and decode (128 tokens) per backend,
# weight format and dtype, beside llama.cpp's llama-bench on the same GGUF, in one run.
# Also the peak RSS of each run. Usage: scripts/bench-model.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/stellarchat}
MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
PEER=scripts/llamacpp-peer.sh
# Exactly 64 tokens with this model's tokenizer (checked below).
PROMPT="The history of astronomy is a long story of patient observation. Ancient people watched the sky to mark the seasons, to guide travel across seas and deserts, and to tell stories about gods and heroes. Later, careful measurements of planets and stars led to new ideas about the shape and size of the universe and our place within it"
DECODE=128

[ -x "$BIN" ] || { echo "missing $BIN: run 'just build' first" >&2; exit 1; }
n=$("$BIN" tokenize --model "$MODEL" "$PROMPT" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$n" = 64 ] || { echo "bench prompt is $n tokens, expected 64" >&2; exit 1; }

echo "llama.cpp: llama-bench -p 64 -n $DECODE ($(nproc) threads) ..." >&2
peer=$("$PEER" bench "$MODEL" -p 64 -n "$DECODE" -r 3 -o json 2>/dev/null)
peer_pp=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(next(x["avg_ts"] for x in r if x["n_prompt"]>0))' "$peer")
peer_tg=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(next(x["avg_ts"] for x in r if x["n_gen"]>0))' "$peer")

printf '\n%-30s %12s %8s %12s %8s %10s\n' "configuration" "prefill t/s" "ratio" "decode t/s" "ratio" "peak RSS"
printf '%-30s %12.1f %8s %12.1f %8s %10s\n' "llama.cpp (Q4_1, $(nproc) threads)" "$peer_pp" "1.00" "$peer_tg" "1.00" "-"
run() { # label, extra generate args...
  local label=$1; shift
  local tmp; tmp=$(mktemp -d)
  for i in 1 2 3; do
    /usr/bin/time -f '%M' -o "$tmp/rss.$i" "$BIN" generate --model "$MODEL" --prompt "$PROMPT" \
      --max-tokens "$DECODE" --ignore-eos --json "$@" > "$tmp/out.$i" 2>/dev/null
  done
  python3 - "$label" "$peer_pp" "$peer_tg" "$tmp" <<'PY'
import json, sys, glob
label, peer_pp, peer_tg, tmp = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
runs = [json.load(open(f)) for f in sorted(glob.glob(tmp + "/out.*"))]
rss = max(int(open(f).read().split()[-1]) for f in glob.glob(tmp + "/rss.*"))
pp = max(r["prefill_tokens_per_s"] for r in runs)
tg = max(r["decode_tokens_per_s"] for r in runs)
print(f"{label:<30} {pp:12.1f} {pp/peer_pp:8.2f} {tg:12.1f} {tg/peer_tg:8.2f} {rss//1024:7d} MB")
PY
  rm -rf "$tmp"
}
for device in flex ndarray; do
  run "stellarchat $device quantized" --device "$device" --weights quantized
  run "stellarchat $device f32" --device "$device" --weights dense --dtype f32
  run "stellarchat $device f16" --device "$device" --weights dense --dtype f16
done
