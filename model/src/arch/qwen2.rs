//! Qwen2 and Qwen2.5 (`general.architecture` `qwen2`): Llama's block with biases on the q, k
//! and v projections and RoPE on rotated halves (ggml's NEOX layout).

use serde_json::json;

use super::{Family, FamilyKind, TensorDecl, hf_name, llama, llama_block, outer_tensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap, common_json, read_common};

pub struct Qwen2;

impl Family for Qwen2 {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Qwen2
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = ModelConfig::read_common(FamilyKind::Qwen2, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::Halves;
        c.qkv_bias = true;
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        c.common_metadata("qwen2")
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let mut out = outer_tensors(c);
        out.extend((0..c.num_layers).flat_map(|i| llama_block(c, i)));
        out
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    /// `use_sliding_window` is refused: the GGUF path attends to everything too, and a
    /// window applied on some layers only (`max_window_layers`) is not modelled.
    fn hf_config(&self, json: &ConfigJson, _has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        if json.opt_bool("use_sliding_window")? == Some(true) {
            return Err(json.error("use_sliding_window", "sliding-window Qwen2 checkpoints are not supported"));
        }
        let mut c = read_common(FamilyKind::Qwen2, json, false)?;
        c.qkv_bias = true;
        Ok(c)
    }

    fn hf_config_json(&self, c: &ModelConfig) -> Result<JsonMap> {
        let mut map = common_json(c, "qwen2", "Qwen2ForCausalLM")?;
        map.insert("use_sliding_window".into(), json!(false));
        Ok(map)
    }

    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String> {
        hf_name(gguf_name, &[llama::HF_NAMES])
    }
}
