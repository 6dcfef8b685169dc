//! A Hugging Face `config.json` as the families read it ([`ConfigJson`]: typed keys whose
//! errors name the file and the key), the keys every family shares ([`read_common`],
//! [`common_json`]), and `rope_scaling`: linear position scaling, or Llama 3's per-frequency
//! divisors, which GGUF files store as `rope_freqs.weight` and `config.json` as four numbers
//! ([`Llama3Scaling`]).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::arch::FamilyKind;
use crate::config::{Activation, MAX_COUNT, MAX_DIMENSION, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};

/// A JSON object, as `config.json` and friends are written.
pub type JsonMap = serde_json::Map<String, Value>;

/// The keys of a `config.json` (or of its `text_config`), with the file they came from.
#[derive(Debug, Clone)]
pub struct ConfigJson {
    path: PathBuf,
    /// `text_config.` when these keys are nested there, for error messages.
    prefix: &'static str,
    keys: JsonMap,
}

impl ConfigJson {
    /// Parses `text`, the contents of `path`; anything but a JSON object is an error naming it.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigJson> {
        match serde_json::from_str(text) {
            Ok(Value::Object(keys)) => Ok(ConfigJson { path: path.to_path_buf(), prefix: "", keys }),
            Ok(_) => Err(ModelError::checkpoint(path, "is not a JSON object")),
            Err(e) => Err(ModelError::checkpoint(path, format!("is not valid JSON: {e}"))),
        }
    }

    /// The text model's keys: `text_config` where a multimodal checkpoint (Gemma 3) nests
    /// them, else these.
    pub fn text_model(self) -> ConfigJson {
        match self.keys.get("text_config") {
            Some(Value::Object(text)) => ConfigJson { path: self.path, prefix: "text_config.", keys: text.clone() },
            _ => self,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// These keys, plus `defaults` for those absent: what `transformers` assumes for a
    /// config class's missing keys, which multimodal checkpoints rely on in `text_config`.
    pub fn with_defaults(&self, defaults: &[(&str, Value)]) -> ConfigJson {
        let mut merged = self.clone();
        for (key, value) in defaults {
            if merged.get(key).is_none() {
                merged.keys.insert(key.to_string(), value.clone());
            }
        }
        merged
    }

    /// An error about `key` of this file.
    pub fn error(&self, key: &str, problem: impl std::fmt::Display) -> ModelError {
        ModelError::checkpoint(&self.path, format!("`{}{key}`: {problem}", self.prefix))
    }

    /// A key's value; `null` counts as absent, as `transformers` treats it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).filter(|v| !v.is_null())
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.error(key, format!("{v} is not a count")))
            })
            .transpose()
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.error(key, "missing"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.error(key, format!("{v} is not a number")))).transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.error(key, format!("{v} is not a boolean")))).transpose()
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| self.error(key, format!("{v} is not a string")))).transpose()
    }

    /// `model_type`, or else the first of `architectures` in the same spelling
    /// (`Qwen2ForCausalLM` → `qwen2`).
    pub fn model_type(&self) -> Result<String> {
        if let Some(model_type) = self.opt_str("model_type")? {
            return Ok(model_type.to_string());
        }
        let first = self.get("architectures").and_then(|a| a.as_array()?.first()?.as_str());
        let Some(architecture) = first else { return Err(self.error("model_type", "missing, and no `architectures`")) };
        let base = ["ForCausalLM", "ForConditionalGeneration"].iter().find_map(|s| architecture.strip_suffix(s));
        Ok(base.unwrap_or(architecture).to_lowercase())
    }

    /// The RoPE settings of full-attention layers: `rope_scaling`, or `rope_parameters`
    /// (`transformers` 5), which Gemma 3 splits by layer type (`full_attention`,
    /// `sliding_attention`).
    fn rope_parameters(&self) -> Option<&JsonMap> {
        if let Some(scaling) = self.get("rope_scaling") {
            return scaling.as_object();
        }
        let parameters = self.get("rope_parameters")?.as_object()?;
        parameters.get("full_attention").and_then(Value::as_object).or(Some(parameters))
    }

    /// `rope_theta`, top-level or in `rope_parameters`.
    fn rope_theta(&self) -> Result<Option<f64>> {
        if let Some(theta) = self.opt_f64("rope_theta")? {
            return Ok(Some(theta));
        }
        let nested = self
            .get("rope_parameters")
            .and_then(Value::as_object)
            .and_then(|p| p.get("full_attention").and_then(|f| f.get("rope_theta")).or_else(|| p.get("rope_theta")));
        nested
            .map(|v| v.as_f64().ok_or_else(|| self.error("rope_parameters.rope_theta", "is not a number")))
            .transpose()
    }

    /// The RoPE base of sliding-window layers (Gemma 3): `rope_local_base_freq`, or
    /// `rope_parameters.sliding_attention.rope_theta` (`transformers` 5).
    pub fn local_rope_theta(&self) -> Result<Option<f64>> {
        if let Some(theta) = self.opt_f64("rope_local_base_freq")? {
            return Ok(Some(theta));
        }
        let nested = self.get("rope_parameters").and_then(|p| p.get("sliding_attention")?.get("rope_theta"));
        nested
            .map(|v| {
                v.as_f64().ok_or_else(|| self.error("rope_parameters.sliding_attention.rope_theta", "is not a number"))
            })
            .transpose()
    }
}

/// Llama 3's RoPE scaling: frequencies whose wavelength exceeds
/// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those under
/// `… / high_freq_factor` kept, and the ones between interpolated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

impl Llama3Scaling {
    /// Llama 3.1's (and 3.2's, with `factor` 32) values, the ones export tries.
    pub const LLAMA_3_1: Llama3Scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };

    /// The divisor of each of the `head_dim / 2` frequencies of base `theta`, as llama.cpp's
    /// converter computes `rope_freqs.weight`.
    pub fn divisors(&self, theta: f64, head_dim: usize) -> Vec<f32> {
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let divisor = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                };
                divisor as f32
            })
            .collect()
    }

    /// The scaling that gives `divisors` (a GGUF file's `rope_freqs.weight`), if one of the
    /// published settings does: the file keeps the divisors, not the numbers behind them.
    pub fn fit(divisors: &[f32], theta: f64, head_dim: usize) -> Option<Llama3Scaling> {
        let factor = divisors.iter().copied().fold(1f32, f32::max) as f64;
        let candidate = Llama3Scaling { factor, ..Self::LLAMA_3_1 };
        let computed = candidate.divisors(theta, head_dim);
        let close = computed.len() == divisors.len()
            && computed.iter().zip(divisors).all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0));
        close.then_some(candidate)
    }

    fn json(&self) -> Value {
        json!({
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings as u64,
        })
    }
}

/// What `rope_scaling` asks for.
enum RopeScaling {
    None,
    Linear(f64),
    Llama3(Llama3Scaling),
}

fn rope_scaling(json: &ConfigJson) -> Result<RopeScaling> {
    let Some(params) = json.rope_parameters() else { return Ok(RopeScaling::None) };
    let key = if json.get("rope_scaling").is_some() { "rope_scaling" } else { "rope_parameters" };
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |name: &str| -> Result<f64> {
        params
            .get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| json.error(&format!("{key}.{name}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(number("factor")?)),
        "llama3" => Ok(RopeScaling::Llama3(Llama3Scaling {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        })),
        other => Err(json.error(key, format!("RoPE scaling `{other}` is not supported (default, linear, llama3)"))),
    }
}

/// Llama 3's divisors if `config.json` asks for them (for the checkpoint to serve as
/// `rope_freqs.weight`).
pub fn rope_freq_divisors(json: &ConfigJson, config: &ModelConfig) -> Result<Option<Vec<f32>>> {
    Ok(match rope_scaling(json)? {
        RopeScaling::Llama3(scaling) => Some(scaling.divisors(config.rope_theta, config.head_dim)),
        _ => None,
    })
}

/// The keys every family shares, with the common defaults for the rest (no window, SiLU,
/// no biases, `1/√head_dim`, rotate-half RoPE — the layout of every HF checkpoint);
/// `tied_default`: whether the family ties its output to the embedding unless told.
pub fn read_common(family: FamilyKind, json: &ConfigJson, tied_default: bool) -> Result<ModelConfig> {
    let bounded = |key: &str, max: usize| -> Result<usize> {
        let value = json.usize(key)?;
        if value > max {
            return Err(json.error(key, format!("{value} is beyond any real model (at most {max})")));
        }
        Ok(value)
    };
    let hidden_size = bounded("hidden_size", MAX_DIMENSION)?;
    let num_heads = bounded("num_attention_heads", MAX_COUNT)?;
    if num_heads == 0 {
        return Err(json.error("num_attention_heads", "must be positive"));
    }
    let num_kv_heads =
        if json.get("num_key_value_heads").is_some() { bounded("num_key_value_heads", MAX_COUNT)? } else { num_heads };
    let head_dim =
        if json.get("head_dim").is_some() { bounded("head_dim", MAX_DIMENSION)? } else { hidden_size / num_heads };
    let nested_factor = json.rope_parameters().and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64);
    if let Some(factor) = json.opt_f64("partial_rotary_factor")?.or(nested_factor)
        && factor != 1.0
    {
        return Err(
            json.error("partial_rotary_factor", format!("{factor}: partial rotary embeddings are not supported"))
        );
    }
    let num_layers = bounded("num_hidden_layers", MAX_COUNT)?;
    let context_length = if json.get("max_position_embeddings").is_some() {
        bounded("max_position_embeddings", MAX_DIMENSION)?
    } else {
        2048
    };
    let (rope_linear_scale, rope_freq_factors) = match rope_scaling(json)? {
        RopeScaling::None => (1.0, false),
        RopeScaling::Linear(factor) => (factor, false),
        RopeScaling::Llama3(_) => (1.0, true),
    };
    Ok(ModelConfig {
        family,
        vocab_size: bounded("vocab_size", MAX_DIMENSION)?,
        hidden_size,
        intermediate_size: bounded("intermediate_size", MAX_DIMENSION)?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: json.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_layout: RopeLayout::Halves,
        rope_theta: json.rope_theta()?.unwrap_or(10_000.0),
        rope_theta_local: None,
        rope_linear_scale,
        rope_freq_factors,
        context_length,
        sliding_window: None,
        sliding: vec![false; num_layers],
        attention_scale: 1.0 / (head_dim.max(1) as f64).sqrt(),
        embedding_scale: 1.0,
        activation: Activation::Silu,
        tied_embeddings: json.opt_bool("tie_word_embeddings")?.unwrap_or(tied_default),
        qkv_bias: false,
        fused_qkv: false,
    })
}

/// The keys [`read_common`] reads, for a checkpoint of `model_type` whose `transformers`
/// class is `architecture`. An attention scale other than `1/√head_dim` has no key outside
/// Gemma's, so it is refused here and Gemma writes its own over it.
pub fn common_json(c: &ModelConfig, model_type: &str, architecture: &str) -> Result<JsonMap> {
    let default_scale = 1.0 / (c.head_dim.max(1) as f64).sqrt();
    if c.family != FamilyKind::Gemma3 && (c.attention_scale - default_scale).abs() > 1e-9 * default_scale {
        return Err(ModelError::metadata(
            "attention.scale",
            format!("{} (not 1/√head_dim) has no config.json key for {model_type}", c.attention_scale),
        ));
    }
    let map = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": c.tied_embeddings,
        "hidden_act": match c.activation { Activation::Silu => "silu", Activation::GeluTanh => "gelu_pytorch_tanh" },
    });
    let Value::Object(mut map) = map else { return Err(ModelError::Internal("config.json is not an object".into())) };
    if c.rope_linear_scale != 1.0 {
        map.insert("rope_scaling".into(), json!({ "rope_type": "linear", "factor": c.rope_linear_scale }));
    }
    Ok(map)
}

/// Adds Llama 3's `rope_scaling` for the divisors of a GGUF file's `rope_freqs.weight`, or
/// says why it cannot.
pub fn add_llama3_scaling(map: &mut JsonMap, divisors: &[f32], c: &ModelConfig) -> Result<()> {
    let scaling = Llama3Scaling::fit(divisors, c.rope_theta, c.head_dim).ok_or_else(|| {
        ModelError::tensor(
            "rope_freqs.weight",
            "its divisors match no Llama 3 rope_scaling (factor, low 1, high 4, original context 8192), \
             and config.json can express no other",
        )
    })?;
    map.insert("rope_scaling".into(), scaling.json());
    Ok(())
}
