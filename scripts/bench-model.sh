#!/usr/bin/env bash
# Single-stream model speed, file by file: prefill (64-token prompt) and decode (128 tokens)
# of stellarchat beside llama.cpp's llama-bench on THAT file, in the same run, with the peak
# RSS of each run (ours and llama-bench's) and the file's size. The files:
#   - the default model, weights/SmolLM2-135M-Instruct.Q4_1.gguf;
#   - the same model re-quantized to Q4_K_M by llama-quantize --allow-requantize (made once
#     into ~/.cache/stellarchat-peers/models/, never committed; SmolLM2's 576-wide rows are
#     not a multiple of 256, so llama-quantize falls back to Q5_0/Q8_0 for many tensors: the
#     row prints the file's tensor types);
#   - Gemma 3 270M, weights/gemma-3-270m-q4_k_m.gguf (`just weights gemma3`; skipped with a
#     note when absent).
# Our rows per file: flex with quantized weights (f32 activations, the default; then
# --activations q8, llama.cpp's scheme), and one dense row (flex, dequantized, f32).
#
# Both programs are measured the same way: warm (llama-bench runs a warm-up first, each of
# our runs passes `generate --warmup`) and best of REPEATS (llama-bench's best repetition,
# our best process). Peak RSS is each program's whole run, warm-up included.
#
# With RELEASE_BIN set (`just bench-model` sets it), each file gains a row for that binary in
# the default configuration: the release build with only `flex`, which is what the CPU Docker
# image ships (its code pages are a third of the dev build's, which shows in the peak RSS).
#
#   scripts/bench-model.sh [BINARY]     # default: ${CARGO_TARGET_DIR:-target}/release/stellarchat
#   BENCH_DECODE=16 BENCH_REPEATS=1 scripts/bench-model.sh BINARY   # a quick check of the script
#   RELEASE_BIN=target/release/stellarchat scripts/bench-model.sh target/debug/stellarchat
#
# Needs the llama.cpp peer (scripts/llamacpp-peer.sh build; built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/stellarchat}
PEER=scripts/llamacpp-peer.sh
CACHE=$HOME/.cache/stellarchat-peers/models
DEFAULT_MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=weights/gemma-3-270m-q4_k_m.gguf
PROMPT_TOKENS=64
DECODE=${BENCH_DECODE:-128}   # smaller values only for a quick check of the script
REPEATS=${BENCH_REPEATS:-3}

# Each prompt is exactly 64 tokens as the engine sees it (BOS included when the model adds
# one), checked below with `stellarchat tokenize` and again with the ids the engine reports.
# SmolLM2 adds no BOS: 64 tokens of text.
PROMPT_SMOLLM2="The history of astronomy is a long story of patient observation. Ancient people watched the sky to mark the seasons, to guide travel across seas and deserts, and to tell stories about gods and heroes. Later, careful measurements of planets and stars led to new ideas about the shape and size of the universe and our place within it"
# Gemma 3 adds BOS: 63 tokens of text (the same text less one word).
PROMPT_GEMMA="The history of astronomy is a story of patient observation. Ancient people watched the sky to mark the seasons, to guide travel across seas and deserts, and to tell stories about gods and heroes. Later, careful measurements of planets and stars led to new ideas about the shape and size of the universe and our place within it"

[ -x "$BIN" ] || { echo "missing $BIN: run 'just build' first" >&2; exit 1; }
[ -z "${RELEASE_BIN:-}" ] || [ -x "$RELEASE_BIN" ] || { echo "missing RELEASE_BIN=$RELEASE_BIN" >&2; exit 1; }
[ -f "$DEFAULT_MODEL" ] || { echo "missing $DEFAULT_MODEL: run 'just weights' first" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The default model re-quantized to Q4_K_M, keyed by the source's sha256.
requantized() {
  local sha; sha=$(sha256sum "$DEFAULT_MODEL" | cut -c1-12)
  local out=$CACHE/SmolLM2-135M-Instruct.Q4_K_M.$sha.gguf
  if [ ! -s "$out" ]; then
    mkdir -p "$CACHE"
    echo "re-quantizing $DEFAULT_MODEL to Q4_K_M (once) ..." >&2
    "$PEER" quantize "$DEFAULT_MODEL" "$out.tmp" Q4_K_M > "$tmp/quantize.log" 2>&1 \
      || { cat "$tmp/quantize.log" >&2; echo "llama-quantize failed" >&2; return 1; }
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# Tensor types of a GGUF file with their counts, e.g. "Q4_K x91, Q5_0 x30, F32 x61".
tensor_types() {
  python3 - "$1" <<'PY'
import struct, sys, collections
names = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
         10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16"}
f = open(sys.argv[1], "rb")
def u(fmt): return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]
def s(): return f.read(u("Q"))
sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def value(t):
    if t == 8: s()
    elif t == 9:
        et, n = u("I"), u("Q")
        for _ in range(n): value(et)
    else: f.read(sizes[t])
assert f.read(4) == b"GGUF"
u("I"); n_tensors, n_kv = u("Q"), u("Q")
for _ in range(n_kv):
    s(); value(u("I"))
count = collections.Counter()
for _ in range(n_tensors):
    s(); dims = u("I"); f.read(8 * dims); t = u("I"); count[names.get(t, f"type {t}")] += 1; u("Q")
print(", ".join(f"{k} x{v}" for k, v in count.most_common()))
PY
}

# One file's block: header, llama-bench, our rows.
bench_file() { # label, file, prompt, expected `tokenize` count (text only, no BOS)
  local label=$1 model=$2 prompt=$3 text_tokens=$4
  local n; n=$("$BIN" tokenize --model "$model" --parse-special "$prompt" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$n" = "$text_tokens" ] || { echo "bench prompt for $model is $n tokens of text, expected $text_tokens" >&2; exit 1; }
  local size_mb; size_mb=$(python3 -c 'import os,sys; print(f"{os.path.getsize(sys.argv[1])/1e6:.1f}")' "$model")

  printf '\n== %s: %s, %s MB (%s)\n' "$label" "$(basename "$model")" "$size_mb" "$(tensor_types "$model")"
  echo "llama.cpp: llama-bench -p $PROMPT_TOKENS -n $DECODE -r $REPEATS ($(nproc) threads) ..." >&2
  local peer peer_pp=0 peer_tg=0
  if peer=$(/usr/bin/time -f '%M' -o "$tmp/peer.rss" "$PEER" bench "$model" -p "$PROMPT_TOKENS" -n "$DECODE" -r "$REPEATS" -o json 2> "$tmp/peer.err"); then
    # Best of its repetitions, as ours are best of REPEATS runs.
    peer_pp=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(next(max(x["samples_ts"]) for x in r if x["n_prompt"]>0))' "$peer")
    peer_tg=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(next(max(x["samples_ts"]) for x in r if x["n_gen"]>0))' "$peer")
  else
    echo "llama-bench failed on $model:" >&2; tail -5 "$tmp/peer.err" >&2
  fi
  printf '%-34s %12s %8s %12s %8s %10s\n' "configuration" "prefill t/s" "ratio" "decode t/s" "ratio" "peak RSS"
  if [ "$peer_pp" = 0 ]; then
    printf '%-34s %12s\n' "llama.cpp ($(nproc) threads)" "failed"
  else
    # llama-bench's own peak RSS (all its runs in one process, context of prompt + decode).
    local peer_rss; peer_rss="$(( $(tail -1 "$tmp/peer.rss") / 1024 )) MB"
    printf '%-34s %12.1f %8s %12.1f %8s %10s\n' "llama.cpp ($(nproc) threads)" "$peer_pp" "1.00" "$peer_tg" "1.00" "$peer_rss"
  fi
  run "$model" "$prompt" "$peer_pp" "$peer_tg" "stellarchat flex quantized" --device flex --weights quantized
  if [ -n "${RELEASE_BIN:-}" ]; then
    BIN=$RELEASE_BIN run "$model" "$prompt" "$peer_pp" "$peer_tg" "  the same, release build (Docker cpu)" \
      --device flex --weights quantized
  fi
  run "$model" "$prompt" "$peer_pp" "$peer_tg" "stellarchat flex quantized, q8 act." --device flex --weights quantized --activations q8
  run "$model" "$prompt" "$peer_pp" "$peer_tg" "stellarchat flex f32 (dense)" --device flex --weights dense --dtype f32
}

run() { # model, prompt, peer prefill t/s, peer decode t/s, label, extra generate args...
  local model=$1 prompt=$2 peer_pp=$3 peer_tg=$4 label=$5; shift 5
  local dir=$tmp/run; rm -rf "$dir"; mkdir -p "$dir"
  for i in $(seq "$REPEATS"); do
    if ! /usr/bin/time -f '%M' -o "$dir/rss.$i" "$BIN" generate --model "$model" --prompt "$prompt" \
      --max-tokens "$DECODE" --ignore-eos --json --warmup "$@" > "$dir/out.$i" 2> "$dir/err.$i"; then
      printf '%-34s failed: %s\n' "$label" "$(grep -v '^Command exited' "$dir/err.$i" | tail -1)"
      return 0
    fi
  done
  python3 - "$label" "$peer_pp" "$peer_tg" "$dir" "$PROMPT_TOKENS" "$DECODE" <<'PY'
import json, sys, glob
label, peer_pp, peer_tg, d, n_prompt, n_decode = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
runs = [json.load(open(f)) for f in sorted(glob.glob(d + "/out.*"))]
for r in runs:
    if len(r["prompt_ids"]) != n_prompt or len(r["ids"]) != n_decode:
        sys.exit(f"{label}: the engine saw {len(r['prompt_ids'])} prompt tokens and made {len(r['ids'])}, expected {n_prompt} and {n_decode}")
rss = max(int(open(f).read().split()[-1]) for f in glob.glob(d + "/rss.*"))
pp = max(r["prefill_tokens_per_s"] for r in runs)
tg = max(r["decode_tokens_per_s"] for r in runs)
ratio = lambda ours, peer: f"{ours / peer:8.2f}" if peer > 0 else f"{'-':>8}"
print(f"{label:<34} {pp:12.1f} {ratio(pp, peer_pp)} {tg:12.1f} {ratio(tg, peer_tg)} {rss//1024:7d} MB")
PY
}

bench_file "SmolLM2-135M-Instruct Q4_1" "$DEFAULT_MODEL" "$PROMPT_SMOLLM2" 64
q4km=$(requantized)
bench_file "SmolLM2-135M-Instruct re-quantized Q4_K_M" "$q4km" "$PROMPT_SMOLLM2" 64
if [ -f "$GEMMA" ]; then
  bench_file "Gemma 3 270M Q4_K_M" "$GEMMA" "$PROMPT_GEMMA" 63
else
  printf '\n== Gemma 3 270M Q4_K_M: skipped, %s is absent (just weights gemma3)\n' "$GEMMA"
fi
