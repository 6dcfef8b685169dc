//! One small random-weight checkpoint per family, written as a GGUF file with the family's
//! real metadata keys and tensor names and a real vocabulary (another file's `tokenizer.*`
//! keys, the default model's in tests), deterministically from a seed.
//!
//! llama.cpp runs the same files (`scripts/family-references.sh`), and its logits are
//! committed under `tests/golden/families/`; the family tests regenerate each file, check
//! that its bytes hash the same, and compare our logits with llama.cpp's — so CI never builds
//! llama.cpp. Every weight is F32, so both sides compute in float and differ only by
//! rounding. Each case's sizes make the family's peculiarities matter: a head size other than
//! `hidden / heads`, grouped-query heads, a window shorter than the longer prompts.

use crate::arch::FamilyKind;
use crate::config::{Activation, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufWriter, Metadata};
use crate::synthetic::{SyntheticWeights, base_config};
use crate::weights::WeightSource;

/// The seed every committed reference was made with.
pub const CASE_SEED: u64 = 2026;

/// A named family configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyCase {
    pub name: &'static str,
    pub family: FamilyKind,
    pub about: &'static str,
}

pub const CASES: [FamilyCase; 6] = [
    FamilyCase { name: "llama3", family: FamilyKind::Llama, about: "Llama 3: RoPE frequency factors, GQA, untied output" },
    FamilyCase { name: "mistral", family: FamilyKind::Llama, about: "Mistral: a 48-position sliding window on every layer" },
    FamilyCase { name: "qwen2", family: FamilyKind::Qwen2, about: "Qwen2: q/k/v biases, NEOX RoPE, tied output" },
    FamilyCase { name: "qwen3", family: FamilyKind::Qwen3, about: "Qwen3: per-head q/k norms, head size 32 ≠ hidden/heads" },
    FamilyCase { name: "phi3", family: FamilyKind::Phi3, about: "Phi-3: fused attn_qkv and gate‖up ffn_up, no GQA" },
    FamilyCase {
        name: "gemma3",
        family: FamilyKind::Gemma3,
        about: "Gemma 3: embedding scale, q/k norms, post-norms, GELU, 16-position window on layers 0 and 2, local RoPE base",
    },
];

impl FamilyCase {
    pub fn by_name(name: &str) -> Result<FamilyCase> {
        CASES.iter().copied().find(|c| c.name == name).ok_or_else(|| {
            let names: Vec<_> = CASES.iter().map(|c| c.name).collect();
            ModelError::InvalidRequest(format!("unknown family case `{name}` (one of: {})", names.join(", ")))
        })
    }

    /// The case's configuration for a vocabulary of `vocab_size` tokens.
    pub fn config(&self, vocab_size: usize) -> ModelConfig {
        let base = base_config(self.family, vocab_size);
        match self.name {
            "llama3" => ModelConfig { rope_theta: 500_000.0, rope_freq_factors: true, ..base },
            "mistral" => ModelConfig { sliding_window: Some(48), sliding: vec![true; 2], ..base },
            "qwen2" => ModelConfig {
                rope_layout: RopeLayout::Halves,
                rope_theta: 1_000_000.0,
                qkv_bias: true,
                tied_embeddings: true,
                rms_norm_eps: 1e-6,
                ..base
            },
            "qwen3" => ModelConfig {
                rope_layout: RopeLayout::Halves,
                rope_theta: 1_000_000.0,
                head_dim: 32,
                attention_scale: 1.0 / 32f64.sqrt(),
                rms_norm_eps: 1e-6,
                ..base
            },
            "phi3" => ModelConfig {
                rope_layout: RopeLayout::Halves,
                num_kv_heads: 4,
                fused_qkv: true,
                ..base
            },
            "gemma3" => ModelConfig {
                rope_layout: RopeLayout::Halves,
                num_layers: 3,
                num_kv_heads: 1,
                head_dim: 32,
                attention_scale: 1.0 / 32f64.sqrt(),
                rope_theta: 1_000_000.0,
                rope_theta_local: Some(10_000.0),
                sliding_window: Some(16),
                sliding: vec![true, false, true],
                embedding_scale: 8.0, // √64
                activation: Activation::GeluTanh,
                tied_embeddings: true,
                rms_norm_eps: 1e-6,
                ..base
            },
            _ => base,
        }
    }

    /// The case's GGUF file: the family's metadata for [`FamilyCase::config`], every
    /// `tokenizer.*` key of `vocabulary` (whose token count sets the vocabulary size), and
    /// F32 weights drawn from `seed`.
    pub fn gguf(&self, vocabulary: &Metadata, seed: u64) -> Result<Vec<u8>> {
        let tokens = vocabulary
            .opt_array_len("tokenizer.ggml.tokens")?
            .ok_or_else(|| ModelError::metadata("tokenizer.ggml.tokens", "missing: the case needs a vocabulary"))?;
        let config = self.config(tokens);
        config.validate()?;
        let family = config.family.family();
        let mut writer = GgufWriter::new();
        // Not the case's name: llama.cpp special-cases the vocabulary of any model whose name
        // mentions "phi3", which this vocabulary does not have the tokens for.
        writer.add_string("general.name", "stellarchat synthetic checkpoint")?;
        for (key, value) in family.metadata(&config) {
            writer.add(key, value)?;
        }
        writer.copy_metadata_with_prefix(vocabulary, "tokenizer.")?;
        let weights = SyntheticWeights::new(config.clone(), seed);
        for decl in family.tensors(&config) {
            let raw = weights.raw_tensor(&decl.name)?;
            writer.add_tensor(&decl.name, &raw.dims, GgmlType::F32, raw.bytes.to_vec())?;
        }
        Ok(writer.to_bytes())
    }
}
