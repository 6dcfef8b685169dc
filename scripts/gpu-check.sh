#!/usr/bin/env bash
# Backend equivalence and speed on a GPU machine: the same synthetic models (the shapes of
# SmolLM2-135M and Llama-3.2-1B, and Llama-3-8B when memory allows) on wgpu (the real GPU,
# WGSL shaders), on vulkan (SPIR-V shaders) and on flex (the CPU): top-5 logprobs of the
# first generated token must agree, and prefill/decode tokens/s are printed per backend and
# dtype.
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
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
run() { # name preset device dtype decode-tokens
  local file="$OUT/$1.json" bin=$BIN
  if [[ $3 == vulkan* ]]; then
    [ -x "$SPIRV_BIN" ] || { echo "$1: skipped (no $SPIRV_BIN)"; return; }
    bin=$SPIRV_BIN
  fi
  if timeout 150 "$bin" generate --model "synthetic:$2" --device "$3" --dtype "$4" --weights dense --prompt "$PROMPT" \
      --max-tokens "$5" --ignore-eos --logprobs 5 --json > "$file" 2> "$OUT/$1.err"; then
    python3 - "$file" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<28} prefill {d['prefill_tokens_per_s']:9.1f} tok/s   decode {d['decode_tokens_per_s']:8.1f} tok/s")
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
run flex-135m-f32 smollm2-135m flex f32 32
run wgpu-135m-f32 smollm2-135m wgpu f32 128
run wgpu-135m-f16 smollm2-135m wgpu f16 128
run vulkan-135m-f32 smollm2-135m vulkan f32 128
run vulkan-135m-f16 smollm2-135m vulkan f16 128
compare flex-135m-f32 wgpu-135m-f32
compare flex-135m-f32 wgpu-135m-f16
compare flex-135m-f32 vulkan-135m-f32
compare flex-135m-f32 vulkan-135m-f16
run flex-1b-f32 llama-3.2-1b flex f32 8
run wgpu-1b-f32 llama-3.2-1b wgpu f32 128
run wgpu-1b-f16 llama-3.2-1b wgpu f16 128
run vulkan-1b-f32 llama-3.2-1b vulkan f32 128
run vulkan-1b-f16 llama-3.2-1b vulkan f16 128
compare flex-1b-f32 wgpu-1b-f32
compare flex-1b-f32 wgpu-1b-f16
compare flex-1b-f32 vulkan-1b-f32
compare flex-1b-f32 vulkan-1b-f16
run wgpu-8b-f16 llama-3-8b wgpu f16 64
run vulkan-8b-f16 llama-3-8b vulkan f16 64
