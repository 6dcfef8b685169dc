#!/usr/bin/env bash
# llama.cpp references for the synthetic architecture-family models: for each case of
# `stellarchat synthetic-gguf` (small random F32 weights, the default model's vocabulary),
# write the GGUF to a temporary directory, run llama.cpp on it through our logits tool
# (scripts/llamacpp-peer.sh logits: top 8 logits at every position of 3 fixed prompts, 16
# greedy tokens after each) and write tests/golden/families/<case>.json, with the GGUF's
# sha256 so that a test can tell when the generator changed under the reference.
#
#   scripts/family-references.sh BIN [CASE..]   # BIN: a stellarchat binary; default: every
#                                               # case that `BIN synthetic-gguf --list` prints
#
# Needs the llama.cpp peer (scripts/llamacpp-peer.sh build; built on first use). Never run
# by CI: the JSON files are committed. A case that llama.cpp fails to load is reported with
# llama.cpp's own error text, the other cases still run, and the exit status is 1. Where
# llama.cpp ignores metadata the file has (a sliding window on the `llama` architecture), the
# JSON gets a "caveat" and the prompts it affects "reference_valid": false.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
BIN=$1; shift
[ -x "$BIN" ] || { echo "not an executable: $BIN (build with: just build)" >&2; exit 1; }
PEER=scripts/llamacpp-peer.sh
OUT=tests/golden/families
K=8
N=16
GENERATED_BY="llama.cpp (llama-cpp-python 0.3.36 sdist) via scripts/family-references.sh"

# The same three prompts for every case: short; about 100 words of prose; digits,
# punctuation, a little non-ASCII and newlines.
PROMPTS=(
  "The capital of France is"
  "The history of astronomy is a long story of patient observation. Ancient people watched the sky to mark the seasons, to guide travel across seas and deserts, and to tell stories about gods and heroes. Later, careful measurements of planets and stars led to new ideas about the shape and size of the universe. Telescopes revealed moons around Jupiter, phases of Venus and countless faint stars in the Milky Way. Today, astronomers use radio dishes, space observatories and powerful computers to study distant galaxies, black holes and the faint glow left over from the early universe, yet the questions remain as old as humanity."
  $'Invoice #2024-0917 (draft)\n\n  3 x widget @ $19.99 = $59.97;\n  12% tax -> 7.20, total: 67.17 EUR\n\nCall +44 20 7946 0958, or e-mail: ops@example.com [ref: A7/B-3]!\n\tx = (a + b) * 2 / 3.5 - 1e-3 \xe2\x89\x88 0.999?'
)

if [ $# -gt 0 ]; then
  cases=("$@")
else
  list=$("$BIN" synthetic-gguf --list) || { echo "'$BIN synthetic-gguf --list' failed" >&2; exit 1; }
  # One case per line; the name is the first word (anything after it is a description).
  mapfile -t cases < <(printf '%s\n' "$list" | awk 'NF { print $1 }')
  [ ${#cases[@]} -gt 0 ] || { echo "'$BIN synthetic-gguf --list' printed no cases" >&2; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"
failed=()
for case in "${cases[@]}"; do
  [[ $case =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad case name: $case" >&2; exit 1; }
  gguf=$tmp/$case.gguf
  echo "== $case" >&2
  if ! "$BIN" synthetic-gguf --case "$case" --out "$gguf" 2> "$tmp/gen.err"; then
    echo "FAILED $case: stellarchat synthetic-gguf:" >&2; cat "$tmp/gen.err" >&2
    failed+=("$case"); continue
  fi
  sha=$(sha256sum "$gguf" | cut -d' ' -f1)
  if ! "$PEER" logits "$gguf" "$K" "$N" "${PROMPTS[@]}" > "$tmp/out.json" 2> "$tmp/peer.err"; then
    echo "FAILED $case: llama.cpp:" >&2; cat "$tmp/peer.err" >&2
    failed+=("$case"); rm -f "$gguf"; continue
  fi
  [ -s "$tmp/peer.err" ] && { echo "llama.cpp warnings for $case:" >&2; cat "$tmp/peer.err" >&2; }
  python3 - "$tmp/out.json" "$OUT/$case.json" "$case" "$sha" "$gguf" "$K" "$N" "$GENERATED_BY" <<'PY'
import json, math, os, struct, sys
src, dst, case, sha, gguf, k, n, by = sys.argv[1:]
d = json.load(open(src))

def gguf_metadata(path):  # scalar and string values; arrays skipped
    f = open(path, "rb")
    def u(fmt): return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]
    def s(): return f.read(u("Q")).decode("utf-8", "replace")
    fmts = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def value(t):
        if t == 8: return s()
        if t == 9:
            et, count = u("I"), u("Q")
            for _ in range(count): value(et)
            return None
        return u(fmts[t])
    assert f.read(4) == b"GGUF", f"{path} is not a GGUF file"
    u("I"); u("Q"); n_kv = u("Q")
    return {s(): value(u("I")) for _ in range(n_kv)}

# Metadata that llama.cpp reads no further than the file: its `llama` architecture has no
# sliding window (src/models/llama.cpp reads no `llama.attention.sliding_window`), so beyond
# the window its logits are full causal attention. Such prompts are kept but marked.
meta = gguf_metadata(gguf)
caveat, window = None, None
if meta.get("general.architecture") == "llama" and "llama.attention.sliding_window" in meta:
    window = meta["llama.attention.sliding_window"]
    caveat = (f"llama.cpp's llama architecture ignores llama.attention.sliding_window = {window}: "
              f"its logits are full causal attention, so a prompt whose ids plus {n} greedy tokens "
              f"exceed {window} positions has \"reference_valid\": false")
for p in d["prompts"]:
    if window is not None:
        p["reference_valid"] = len(p["ids"]) + int(n) <= window
for p in d["prompts"]:
    for row in p["top"]:
        assert len(row) == int(k) and all(v is not None and math.isfinite(v) for _, v in row), \
            f"{case}: non-finite or missing logits in llama.cpp's output"
    assert len(p["greedy"]) == int(n)
head = {"case": case, "model": d["model"], "sha256": sha, "bytes": os.path.getsize(gguf),
        "generated_by": by, "k": int(k), "n": int(n), "kv_cache": d["kv_cache"], "flash_attn": d["flash_attn"]}
if caveat:
    head["caveat"] = caveat
# One line per position of `top`, so that diffs stay readable.
dump = lambda x: json.dumps(x, ensure_ascii=False)
lines = ["{"] + [f"  {dump(key)}: {dump(v)}," for key, v in head.items()] + ['  "prompts": [']
for i, p in enumerate(d["prompts"]):
    lines.append(f'    {{"prompt": {dump(p["prompt"])},')
    lines.append(f'     "ids": {dump(p["ids"])},')
    if "reference_valid" in p:
        lines.append(f'     "reference_valid": {dump(p["reference_valid"])},')
    lines.append('     "top": [')
    lines += [f"       {dump(r)}{',' if j + 1 < len(p['top']) else ''}" for j, r in enumerate(p["top"])]
    lines.append("     ],")
    lines.append(f'     "greedy": {dump(p["greedy"])}}}{"," if i + 1 < len(d["prompts"]) else ""}')
lines += ["  ]", "}"]
text = "\n".join(lines) + "\n"
assert json.loads(text)["prompts"][0]["top"] == d["prompts"][0]["top"]
open(dst, "w").write(text)
print(f"wrote {dst}: {[len(p['ids']) for p in d['prompts']]} prompt tokens", file=sys.stderr)
PY
  rm -f "$gguf"
done
if [ ${#failed[@]} -gt 0 ]; then echo "failed cases: ${failed[*]}" >&2; exit 1; fi
