//! StellarChat's model crate: everything with tensors in it, and nothing with HTTP.
//!
//! - [`gguf`]: GGUF files (metadata, tensor directory, memory-mapped data) and dequantization.
//! - [`arch`]: the architecture registry, one file a family (config from metadata, tensors
//!   by the checkpoint's names); [`config`]: the hyper-parameters they fill in.
//! - [`transformer`]: the decoder every family runs, from the shared [`layers`], with
//!   [`attention`], [`kv_cache`] and [`rope`]; [`weights`]: how parameters are sourced and stored;
//!   [`quant_matmul`]: fused dequantize-and-multiply of GGUF blocks for CPU devices;
//!   `gpu_quant`: the same for GPU devices, our own `#[cube]` kernels (GPU builds only), and
//!   `gpu_attention`: grouped-query attention reading the device cache in place;
//!   `host_attention`: attention over a host KV cache, for CPU devices at f32;
//!   [`host_ops`]: vectorised elementwise kernels (gated activations, RMSNorm) on host rows.
//! - [`device`]: `--device`/`--dtype` and the burn backends compiled in.
//! - [`tokenizer`], [`chat_template`]: text in and out, as the model's authors do it.
//! - [`sampler`], [`stop`]: choosing the next token and stopping; [`constraint`]: masks that
//!   keep the output inside a JSON schema or grammar (llguidance).
//! - [`synthetic`]: deterministic random-weight models for tests and benchmarks; [`rng`]: the
//!   one seeded generator (SplitMix64) behind them, the sampler's seeding and test data.
//! - [`hf`]: Hugging Face checkpoints (config.json, safetensors, tokenizer.json), read and
//!   exported from GGUF.
//! - [`model`]: opening a model and loading it onto a device.
//! - [`engine`]: the batching engine thread: `submit(request) -> stream of events`.
//! - `fuzzing`: the fuzz targets' bodies (GGUF bytes, chat templates, tokenizer), for `fuzz/`
//!   and the short replay runs of the tests.

pub mod arch;
pub mod attention;
pub mod chat_template;
pub mod config;
pub mod constraint;
pub mod device;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
mod heap;
#[cfg(feature = "gpu-kernels")]
pub mod gpu_attention;
#[cfg(feature = "gpu-kernels")]
pub mod gpu_quant;
pub mod hf;
pub mod kv_cache;
pub mod host_attention;
pub mod host_ops;
pub mod layers;
pub mod model;
pub mod quant_matmul;
pub mod rng;
pub mod rope;
pub mod sampler;
mod spin_pool;
pub mod stop;
pub mod synthetic;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use error::{ModelError, Result};
