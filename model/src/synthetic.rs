//! Deterministic random-weight models: the shapes of real checkpoints (or a tiny one) with
//! weights drawn from a seed. They exercise every code path without a model file — unit
//! tests use the tiny preset, and benchmarks compare backends at realistic sizes.

use std::str::FromStr;

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::rng::SplitMix64;
use crate::weights::{RawTensor, WeightSource};

/// Named model shapes.
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

impl SyntheticPreset {
    pub fn config(self) -> ModelConfig {
        let base = ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_linear_scale: 1.0,
            context_length: 512,
        };
        match self {
            SyntheticPreset::Tiny => base,
            SyntheticPreset::Smollm2_135m => ModelConfig {
                vocab_size: 49152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                rope_theta: 100_000.0,
                context_length: 8192,
                ..base
            },
            SyntheticPreset::Llama32_1b => ModelConfig {
                vocab_size: 128_256,
                hidden_size: 2048,
                intermediate_size: 8192,
                num_layers: 16,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 64,
                rope_theta: 500_000.0,
                context_length: 8192,
                ..base
            },
            SyntheticPreset::Llama3_8b => ModelConfig {
                vocab_size: 128_256,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                rope_theta: 500_000.0,
                context_length: 8192,
                ..base
            },
        }
    }
}

/// Weights for a [`ModelConfig`], each tensor drawn from `seed` and its name, so a tensor's
/// values do not depend on the order of requests.
pub struct SyntheticWeights {
    config: ModelConfig,
    seed: u64,
}

impl SyntheticWeights {
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        SyntheticWeights { config, seed }
    }

    /// ggml dims of a tensor name, or `None` if the model has no such tensor.
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        if name == "token_embd.weight" {
            return Some(vec![h, c.vocab_size]);
        }
        if name == "output_norm.weight" {
            return Some(vec![h]);
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, tensor) = rest.split_once('.')?;
        if layer.parse::<usize>().ok()? >= c.num_layers {
            return None;
        }
        Some(match tensor {
            "attn_norm.weight" | "ffn_norm.weight" => vec![h],
            "attn_q.weight" => vec![h, q],
            "attn_k.weight" | "attn_v.weight" => vec![h, kv],
            "attn_output.weight" => vec![q, h],
            "ffn_gate.weight" | "ffn_up.weight" => vec![h, ff],
            "ffn_down.weight" => vec![ff, h],
            "attn_q.bias" if c.architecture == Architecture::Qwen2 => vec![q],
            "attn_k.bias" | "attn_v.bias" if c.architecture == Architecture::Qwen2 => vec![kv],
            _ => return None,
        })
    }

    fn values(&self, name: &str, dims: &[usize]) -> Vec<f32> {
        let n: usize = dims.iter().product();
        let mut rng = SplitMix64(self.seed ^ fnv1a(name.as_bytes()));
        if name.ends_with("norm.weight") {
            // Norm gains near 1, as trained models have them.
            return (0..n).map(|_| 1.0 + 0.1 * uniform(&mut rng)).collect();
        }
        // Scaled like a trained model's so activations stay in a sane range at any size.
        let fan_in = dims.first().copied().unwrap_or(1).max(1) as f32;
        let scale = if name == "token_embd.weight" { 1.0 } else { 1.7 / fan_in.sqrt() };
        (0..n).map(|_| scale * uniform(&mut rng)).collect()
    }
}

impl WeightSource for SyntheticWeights {
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let dims = self.dims(name).ok_or_else(|| ModelError::tensor(name, "missing from the synthetic model"))?;
        let values = self.values(name, &dims);
        Ok((dims, values))
    }

    fn raw_tensor(&self, name: &str) -> Result<RawTensor> {
        let (dims, values) = self.f32_tensor(name)?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(RawTensor { dims, ggml_type: GgmlType::F32, bytes })
    }

    fn contains(&self, name: &str) -> bool {
        self.dims(name).is_some()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The next SplitMix64 value mapped to a float in [-1, 1).
fn uniform(rng: &mut SplitMix64) -> f32 {
    rng.next_unit_f32() * 2.0 - 1.0
}
