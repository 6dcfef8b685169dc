//! Deterministic random-weight models: the shapes of real checkpoints (or a tiny one) with
//! weights drawn from a seed. They exercise every code path without a model file — unit
//! tests use the tiny preset, benchmarks compare backends at realistic sizes, and
//! [`cases`] writes one small GGUF checkpoint per family for comparison with llama.cpp.
//!
//! Which tensors exist and their shapes come from the family's declaration
//! ([`crate::arch::Family::tensors`]); this module only draws their values.

mod blocks;
pub mod cases;

pub use blocks::SyntheticQuant;

use std::collections::HashMap;
use std::str::FromStr;

use crate::arch::{FamilyKind, Role};
use crate::config::{Activation, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, dequantize};
use crate::rng::SplitMix64;
use crate::weights::{RawTensor, WeightSource};

/// Named model shapes (all of the Llama family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticPreset {
    /// 2 layers, hidden 64, vocab 256: milliseconds per step, for unit tests.
    Tiny,
    /// The shapes of SmolLM2-135M.
    Smollm2_135m,
    /// The shapes of Llama-3.2-1B.
    Llama32_1b,
    /// The shapes of Llama-3-8B.
    Llama3_8b,
}

impl FromStr for SyntheticPreset {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(SyntheticPreset::Tiny),
            "smollm2-135m" | "135m" => Ok(SyntheticPreset::Smollm2_135m),
            "llama-3.2-1b" | "1b" => Ok(SyntheticPreset::Llama32_1b),
            "llama-3-8b" | "8b" => Ok(SyntheticPreset::Llama3_8b),
            other => Err(ModelError::InvalidRequest(format!(
                "unknown synthetic preset `{other}` (tiny, smollm2-135m, llama-3.2-1b, llama-3-8b)"
            ))),
        }
    }
}

/// A small configuration of `family` with the common defaults: 2 layers, hidden 64, 4 heads
/// of 16 sharing 2 key/value heads, feed-forward 128, context 512, untied output.
pub fn base_config(family: FamilyKind, vocab_size: usize) -> ModelConfig {
    ModelConfig {
        family,
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_layout: RopeLayout::InterleavedPairs,
        rope_theta: 10_000.0,
        rope_theta_local: None,
        rope_linear_scale: 1.0,
        rope_freq_factors: false,
        context_length: 512,
        sliding_window: None,
        sliding: vec![false; 2],
        attention_scale: 0.25,
        embedding_scale: 1.0,
        activation: Activation::Silu,
        tied_embeddings: false,
        qkv_bias: false,
        fused_qkv: false,
    }
}

impl SyntheticPreset {
    pub fn config(self) -> ModelConfig {
        let base = base_config(FamilyKind::Llama, 256);
        let sized = |vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim: usize| {
            ModelConfig {
                vocab_size,
                hidden_size,
                intermediate_size,
                num_layers,
                num_heads,
                num_kv_heads,
                head_dim,
                sliding: vec![false; num_layers],
                attention_scale: 1.0 / (head_dim as f64).sqrt(),
                context_length: 8192,
                ..base.clone()
            }
        };
        match self {
            SyntheticPreset::Tiny => base,
            SyntheticPreset::Smollm2_135m => {
                ModelConfig { rope_theta: 100_000.0, ..sized(49152, 576, 1536, 30, 9, 3, 64) }
            }
            SyntheticPreset::Llama32_1b => {
                ModelConfig { rope_theta: 500_000.0, ..sized(128_256, 2048, 8192, 16, 32, 8, 64) }
            }
            SyntheticPreset::Llama3_8b => {
                ModelConfig { rope_theta: 500_000.0, ..sized(128_256, 4096, 14336, 32, 32, 8, 128) }
            }
        }
    }
}

/// Weights for a [`ModelConfig`], each tensor drawn from `seed` and its name, so a tensor's
/// values do not depend on the order of requests.
pub struct SyntheticWeights {
    seed: u64,
    /// The family's declaration: name → (ggml dims, role, type).
    tensors: HashMap<String, (Vec<usize>, Role, GgmlType)>,
}

impl SyntheticWeights {
    /// f32 weights.
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        SyntheticWeights::quantized(config, seed, None)
    }

    /// Weight matrices in the GGUF types of `quant` (see [`SyntheticQuant`]), f32 without.
    pub fn quantized(config: ModelConfig, seed: u64, quant: Option<SyntheticQuant>) -> Self {
        let layers = config.num_layers;
        let tensors = config
            .family
            .family()
            .tensors(&config)
            .into_iter()
            .map(|d| {
                let ggml_type = quant.map_or(GgmlType::F32, |q| q.tensor_type(d.role, d.layer, layers, &d.dims));
                (d.name, (d.dims, d.role, ggml_type))
            })
            .collect();
        SyntheticWeights { seed, tensors }
    }

    /// The GGUF type tensor `name` is drawn in, if the model has it.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlType> {
        self.tensors.get(name).map(|(_, _, t)| *t)
    }

    fn rng(&self, name: &str) -> SplitMix64 {
        SplitMix64(self.seed ^ fnv1a(name.as_bytes()))
    }

    /// The spread of a weight matrix's values: like a trained model's, so activations stay
    /// in a sane range at any size.
    fn matrix_scale(dims: &[usize]) -> f32 {
        let fan_in = dims.first().copied().unwrap_or(1).max(1) as f32;
        1.7 / fan_in.sqrt()
    }

    fn values(&self, name: &str, dims: &[usize], role: Role) -> Vec<f32> {
        let n: usize = dims.iter().product();
        let mut rng = self.rng(name);
        match role {
            // Norm gains near 1, as trained models have them.
            _ if role.is_norm() => (0..n).map(|_| 1.0 + 0.1 * uniform(&mut rng)).collect(),
            // Llama 3's divisors: 1 for the fastest rotations up to 8 for the slowest.
            Role::RopeFreqs => (0..n).map(|i| 1.0 + 7.0 * i as f32 / (n.max(2) - 1) as f32).collect(),
            Role::AttnQBias | Role::AttnKBias | Role::AttnVBias => (0..n).map(|_| 0.1 * uniform(&mut rng)).collect(),
            Role::TokenEmbedding => (0..n).map(|_| uniform(&mut rng)).collect(),
            _ => {
                let scale = Self::matrix_scale(dims);
                (0..n).map(|_| scale * uniform(&mut rng)).collect()
            }
        }
    }
}

impl WeightSource for SyntheticWeights {
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dims, role, ggml_type) =
            self.tensors.get(name).ok_or_else(|| ModelError::tensor(name, "missing from the synthetic model"))?;
        if *ggml_type == GgmlType::F32 {
            return Ok((dims.clone(), self.values(name, dims, *role)));
        }
        let raw = self.raw_tensor(name)?;
        let mut values = vec![0f32; dims.iter().product()];
        dequantize(*ggml_type, &raw.bytes, &mut values).map_err(|e| ModelError::tensor(name, e.to_string()))?;
        Ok((raw.dims, values))
    }

    fn raw_tensor(&self, name: &str) -> Result<RawTensor> {
        let (dims, role, ggml_type) =
            self.tensors.get(name).ok_or_else(|| ModelError::tensor(name, "missing from the synthetic model"))?;
        let bytes = if *ggml_type == GgmlType::F32 {
            self.values(name, dims, *role).iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            // The embedding spreads over [-1, 1] like its f32 form; matrices by fan-in.
            let scale = if *role == Role::TokenEmbedding { 1.0 } else { Self::matrix_scale(dims) };
            let bytes = blocks::random_blocks(*ggml_type, dims.iter().product(), scale, &mut self.rng(name))
                .map_err(|e| ModelError::tensor(name, e.to_string()))?;
            bytes.into()
        };
        Ok(RawTensor { dims: dims.clone(), ggml_type: *ggml_type, bytes })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The next SplitMix64 value mapped to a float in [-1, 1).
fn uniform(rng: &mut SplitMix64) -> f32 {
    rng.next_unit_f32() * 2.0 - 1.0
}
