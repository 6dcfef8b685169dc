#!/usr/bin/env bash
# The GPU check (issue 10): on a machine with a GPU, for wgpu (WGSL shaders) and vulkan (SPIR-V),
#  1. the golden greedy check of the default model on the GPU with its Q4_1 blocks on the
#     device (when weights/SmolLM2-135M-Instruct.Q4_1.gguf is there: it is too big to carry
#     to our GPU machines, which have no network), against tests/golden/;
#  2. equivalence: top-5 logprobs of the first generated token against flex (the CPU), for
#     dense synthetic models and for a device-quantized synthetic Q4_K_M one;
#  3. speed and memory: prefill/decode tokens/s at 1 and 16 sequences, and the model's device
#     memory (weights, workspace, KV budget, the device's capacity), for the default model and
#     for synthetic Llama-3-8B in Q4_K_M and Q4_0 (`synthetic:8b@q4_k_m`: random blocks typed as
#     llama.cpp types such a file) with device-quantized weights; at 1 sequence it prints the
#     weight bytes read per second (weights × decode tok/s), to set against the GPU's bandwidth.
#
#   scripts/gpu-check.sh [BINARY [SPIRV_BINARY]]
#     BINARY        default .gl/stellarchat: the test build (flex, ndarray, wgpu)
#     SPIRV_BINARY  default .gl/stellarchat-spirv: a `flex,vulkan` build (skipped if absent)
#
# Meant for a machine with the NVIDIA driver but no Rust toolchain: `just gpu-bundle` puts
# the binary and the Vulkan loader under .gl/, which travels with the tree.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.gl/stellarchat}
SPIRV_BIN=${2:-.gl/stellarchat-spirv}
for b in "$BIN" "$SPIRV_BIN"; do
  if [ ! -x "$b" ] && [ -f "$b.xz" ]; then xz -dkf "$b.xz" && chmod +x "$b"; fi
done
# The NVIDIA Vulkan driver needs the loader and the GL vendor-neutral dispatch libraries.
if ! ldconfig -p | grep -q libGLdispatch.so.0 && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
  [ -e "$icd" ] && export VK_DRIVER_FILES=$icd && break
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$BIN" --version
[ -x "$SPIRV_BIN" ] && "$SPIRV_BIN" --version

# 64 bytes = 64 tokens with the synthetic byte tokenizer.
PROMPT=$(printf 'The quick brown fox jumps over the lazy dog while the sun sets. %.0s' 1 | head -c 64)
DEFAULT_MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
binary_for() { if [[ $1 == vulkan* ]]; then echo "$SPIRV_BIN"; else echo "$BIN"; fi; }

run() { # name model device dtype weights decode-tokens [sequences]
  local file="$OUT/$1.json" bin model=$2
  bin=$(binary_for "$3")
  [ -x "$bin" ] || { echo "$1: skipped (no $bin)"; return; }
  [[ $model == synthetic:* || -f $model ]] || { echo "$1: skipped (no $model)"; return; }
  if timeout 400 "$bin" generate --model "$model" --device "$3" --dtype "$4" --weights "$5" --prompt "$PROMPT" \
      --max-tokens "$6" --parallel "${7:-1}" --ignore-eos --logprobs 5 --json > "$file" 2> "$OUT/$1.err"; then
    python3 - "$file" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
line = (f"{sys.argv[2]:<34} x{d['sequences']:<3} prefill {d['prefill_tokens_per_s']:9.1f} tok/s"
        f"   decode {d['decode_tokens_per_s']:8.1f} tok/s")
m = d.get("device_memory")
if m:
    gib = lambda b: f"{b / 2**30:.2f} GiB" if b is not None else "?"
    line += (f"   weights {gib(m['weights_bytes'])} workspace {gib(m['workspace_bytes'])}"
             f" kv {gib(m['kv_cache_bytes'])} ({m['kv_cache_tokens']} tok) of {gib(m['capacity_bytes'])}")
    if d["sequences"] == 1:
        line += f"   weights read {m['weights_bytes'] * d['decode_tokens_per_s'] / 1e9:.0f} GB/s"
print(line)
PY
  else
    echo "$1: FAILED ($(tail -c 300 "$OUT/$1.err" | tr '\n' ' '))"; rm -f "$file"
  fi
}
compare() { # a b
  [ -f "$OUT/$1.json" ] && [ -f "$OUT/$2.json" ] || { echo "compare $1 $2: missing run"; return; }
  python3 - "$OUT/$1.json" "$OUT/$2.json" "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p))["logprobs"][0] for p in sys.argv[1:3])
ta, tb = dict(map(tuple, a["top"])), dict(map(tuple, b["top"]))
common = set(ta) & set(tb)
diff = max((abs(ta[k] - tb[k]) for k in common), default=float("inf"))
print(f"equivalence {sys.argv[3]} vs {sys.argv[4]}: first token {a['id']} vs {b['id']}, "
      f"{len(common)}/5 of the top-5 shared, max |logprob diff| {diff:.4f}")
PY
}
golden() { # device dtype weights: greedy ids of every golden chat against the reference
  local bin; bin=$(binary_for "$1")
  [ -x "$bin" ] || { echo "golden $1: skipped (no $bin)"; return; }
  [ -f "$DEFAULT_MODEL" ] || { echo "golden $1 $2 $3: skipped (no $DEFAULT_MODEL)"; return; }
  python3 - "$bin" "$1" "$2" "$3" "$DEFAULT_MODEL" <<'PY'
import json, subprocess, sys
bin, device, dtype, weights, model = sys.argv[1:6]
chats = json.load(open("tests/golden/smollm2-135m-instruct-q4_1.json"))["chats"]
for chat in chats:
    want = chat["reference_greedy"]
    cmd = [bin, "generate", "--model", model, "--device", device, "--dtype", dtype, "--weights", weights,
           "--prompt", chat["prompt"], "--max-tokens", str(len(want)), "--ignore-eos", "--json"]
    try:
        got = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)["ids"]
    except Exception as e:  # a failed run is a failed check, with its reason
        print(f"golden {device} {dtype} {weights} {chat['name']}: FAILED ({str(e)[-200:]})")
        continue
    same = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
    verdict = "greedy equal" if same is None and len(got) == len(want) else f"DIFFERS at token {same}"
    print(f"golden {device} {dtype} {weights} {chat['name']}: {verdict} ({len(got)} tokens)")
PY
}

for dev in wgpu vulkan; do
  golden $dev f32 quantized
  golden $dev f16 quantized
done

run flex-135m-f32 synthetic:smollm2-135m flex f32 dense 32
for dev in wgpu vulkan; do
  for dt in f32 f16; do run $dev-135m-$dt synthetic:smollm2-135m $dev $dt dense 128; done
  compare flex-135m-f32 $dev-135m-f32
  compare flex-135m-f32 $dev-135m-f16
done
run flex-1b-q4km synthetic:llama-3.2-1b@q4_k_m flex f32 quantized 8
run flex-1b-f32 synthetic:llama-3.2-1b flex f32 dense 8
for dev in wgpu vulkan; do
  run $dev-1b-q4km-f32 synthetic:llama-3.2-1b@q4_k_m $dev f32 quantized 128
  run $dev-1b-f16 synthetic:llama-3.2-1b $dev f16 dense 128
  compare flex-1b-q4km $dev-1b-q4km-f32
  compare flex-1b-f32 $dev-1b-f16
done

for dev in wgpu vulkan; do
  for seqs in 1 16; do
    run $dev-default-q4_1-f16-x$seqs "$DEFAULT_MODEL" $dev f16 quantized 128 $seqs
    run $dev-8b-q4km-f16-x$seqs synthetic:llama-3-8b@q4_k_m $dev f16 quantized 64 $seqs
    run $dev-8b-q4_0-f16-x$seqs synthetic:llama-3-8b@q4_0 $dev f16 quantized 64 $seqs
  done
  run $dev-8b-f16-dense synthetic:llama-3-8b $dev f16 dense 64
done
