//! StellarChat's model crate: everything with tensors in it, and nothing with HTTP.
//!
//! - [`gguf`]: GGUF files (metadata, tensor directory, memory-mapped data) and dequantization.
//! - [`config`]: hyper-parameters from metadata; [`llama`]: the transformer, with
//!   [`kv_cache`] and [`rope`]; [`weights`]: how parameters are sourced and stored;
//!   [`quant_matmul`]: fused dequantize-and-multiply of GGUF blocks for CPU devices;
//!   `host_attention`: attention over a host KV cache, for CPU devices at f32.
//! - [`device`]: `--device`/`--dtype` and the burn backends compiled in.
//! - [`tokenizer`], [`chat_template`]: text in and out, as the model's authors do it.
//! - [`sampler`], [`stop`]: choosing the next token and stopping.
//! - [`synthetic`]: deterministic random-weight models for tests and benchmarks; [`rng`]: the
//!   one seeded generator (SplitMix64) behind them, the sampler's seeding and test data.
//! - [`model`]: opening a model and loading it onto a device.
//! - [`engine`]: the batching engine thread: `submit(request) -> stream of events`.

pub mod chat_template;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kv_cache;
mod host_attention;
pub mod llama;
pub mod model;
pub mod quant_matmul;
pub mod rng;
pub mod rope;
pub mod sampler;
pub mod stop;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};
