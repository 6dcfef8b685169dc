//! StellarChat's server crate: an OpenAI-compatible LLM inference server in pure Rust.
//!
//! [`serve`] is the HTTP/SSE/WebSocket API ([`serve::run`] takes a bound listener and a
//! shutdown future, in the way of mini-redis's `server::run`); [`commands`] are the other
//! subcommands of the `stellarchat` binary (`generate`, `tokenize`, `bench`,
//! `synthetic-gguf`). The model, tokenizer and batching engine live in the
//! `stellarchat-model` crate; this crate holds no tensors. `fuzzing` holds the fuzz targets'
//! bodies for request bodies and WebSocket frames (`fuzz/`, and the replay tests).

pub mod commands;
#[doc(hidden)]
pub mod fuzzing;
pub mod serve;

/// `CARGO_PKG_VERSION` plus the backends compiled into this build, for `--version`.
pub fn version_with_backends() -> String {
    let backends = stellarchat_model::device::compiled_backends().join(", ");
    format!("{} (backends: {backends})", env!("CARGO_PKG_VERSION"))
}
