//! The transformer's hyper-parameters, read from GGUF metadata (`{arch}.*` keys).

use crate::error::{ModelError, Result};
use crate::gguf::Metadata;

/// Model families this crate runs. Both are decoder-only Llama-style transformers; Qwen2
/// adds biases to the q/k/v projections and rotates halves instead of interleaved pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn from_name(name: &str) -> Result<Architecture> {
        match name {
            "llama" | "mistral" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// GGUF llama checkpoints store q/k permuted for rotation of adjacent pairs (ggml's
    /// "normal" RoPE); Qwen2 uses the rotate-half ("neox") layout of the HF checkpoint.
    pub fn rope_layout(self) -> RopeLayout {
        match self {
            Architecture::Llama => RopeLayout::InterleavedPairs,
            Architecture::Qwen2 => RopeLayout::Halves,
        }
    }
}

/// Which elements of a head are rotated together by RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// `(x[2i], x[2i+1])`
    InterleavedPairs,
    /// `(x[i], x[i + d/2])`
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear position scaling (`rope.scaling.type = linear`): positions are divided by it.
    pub rope_linear_scale: f64,
    pub context_length: usize,
}

impl ModelConfig {
    pub fn from_gguf(metadata: &Metadata) -> Result<ModelConfig> {
        let arch_name = metadata.str("general.architecture")?;
        let architecture = Architecture::from_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = metadata.usize(&key("embedding_length"))?;
        let num_heads = metadata.usize(&key("attention.head_count"))?;
        let num_kv_heads = metadata.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        let head_dim = match metadata.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => return Err(ModelError::metadata(&key("attention.head_count"), "must be positive")),
        };
        let vocab_size = match metadata.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => metadata
                .opt_array("tokenizer.ggml.tokens")?
                .map(<[_]>::len)
                .ok_or_else(|| ModelError::metadata(&key("vocab_size"), "missing, and no token list"))?,
        };
        let rope_linear_scale = match metadata.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => metadata.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            Some(other) => {
                return Err(ModelError::metadata(&key("rope.scaling.type"), format!("`{other}` is not supported")));
            }
        };
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: metadata.usize(&key("feed_forward_length"))?,
            num_layers: metadata.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: metadata.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: metadata.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_linear_scale,
            context_length: metadata.opt_usize(&key("context_length"))?.unwrap_or(2048),
        };
        config.validate()?;
        Ok(config)
    }

    /// Shape checks that would otherwise surface as a panic deep inside a tensor op.
    pub fn validate(&self) -> Result<()> {
        let bad = |problem: String| Err(ModelError::metadata("model configuration", problem));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad(format!("{} heads cannot share {} key/value heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.num_layers == 0 {
            return bad("vocabulary, hidden, feed-forward and layer counts must be positive".into());
        }
        if self.context_length == 0 {
            return bad("context length must be positive".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
