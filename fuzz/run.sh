#!/usr/bin/env bash
# `just fuzz [SECONDS] [TARGET...]`: coverage-guided fuzzing of every target (or the named
# ones) for SECONDS each, with cargo-fuzz on nightly. New inputs go to fuzz/work/<target>/
# (git-ignored) so the committed seeds in fuzz/corpus/<target>/ stay curated; crashes go to
# fuzz/artifacts/<target>/. A crash is fixed in the code, its input committed under
# fuzz/regressions/<target>/ (replayed by the target's test in `just test`), and named in
# a regression test. FUZZ_SANITIZER=address for ASan (a second, slower build; default none:
# the code is safe Rust, and panics, hangs and runaway memory are what we look for).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(gguf chat_template tokenizer chat_request completion_request responses_request tokenize_request ws_frame tool_output)
fi
sanitizer="${FUZZ_SANITIZER:-none}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build --sanitizer "$sanitizer" -O
summary=()
failed=0
for target in "${targets[@]}"; do
    mkdir -p "work/$target" "regressions/$target"
    log="work/$target.log"
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    status=ok
    # -timeout: an input that takes over 10 s is a hang; -rss_limit_mb: one over 4 GiB a leak
    # or an unbounded allocation. Both are findings, like panics.
    if ! cargo +nightly fuzz run --sanitizer "$sanitizer" -O "$target" "work/$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        status="FAILED (see fuzz/$log and fuzz/artifacts/$target/)"
        failed=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    summary+=("$target: ${execs:-?} executions, ${cov:-cov: ?}, $status")
done
printf '%s\n' "${summary[@]}"
exit "$failed"
