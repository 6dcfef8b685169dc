//! Hugging Face checkpoints that are incomplete or wrong: each must fail at open with a
//! [`ModelError`] naming the file and the key or tensor at fault, never a panic. The
//! checkpoint they spoil is written here by hand (the tiny synthetic Llama, its weights under
//! their HF names, the synthetic tokenizer), so the reader is tested apart from the exporter.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};

use super::{CONFIG, GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::arch::Family;
use crate::arch::llama::Llama;
use crate::error::ModelError;
use crate::model::{GenerationDefaults, ModelLoader};
use crate::synthetic::{SyntheticPreset, SyntheticWeights};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;

struct Checkpoint(PathBuf);

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Checkpoint {
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).expect("write");
    }

    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(self.path(CONFIG)).expect("read")).expect("json");
        edit(config.as_object_mut().expect("object"));
        self.write(CONFIG, &config.to_string());
    }

    fn open_err(&self) -> ModelError {
        match ModelLoader::open(self.0.to_str().expect("utf-8")) {
            Ok(_) => panic!("{} opened", self.0.display()),
            Err(e) => e,
        }
    }
}

/// `(name, dtype, shape, bytes)` of every tensor of the tiny Llama, by HF name, as F32.
fn tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let config = SyntheticPreset::Tiny.config();
    let weights = SyntheticWeights::new(config.clone(), 7);
    Llama
        .tensors(&config)
        .into_iter()
        .map(|decl| {
            let (dims, values) = weights.f32_tensor(&decl.name).expect("tensor");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (Llama.hf_tensor_name(&decl.name).expect("hf name"), Dtype::F32, dims.into_iter().rev().collect(), bytes)
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// A complete checkpoint of the tiny Llama in a fresh directory.
fn checkpoint(label: &str) -> Checkpoint {
    let dir = std::env::temp_dir().join(format!("stellarchat-hf-unit-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let c = Checkpoint(dir);
    let config = SyntheticPreset::Tiny.config();
    c.write(CONFIG, &Value::Object(Llama.hf_config_json(&config).expect("config")).to_string());
    write_safetensors(&c.path(WEIGHTS), &tensors());
    c.write(TOKENIZER, &Tokenizer::synthetic(config.vocab_size).expect("tokenizer").to_hf_json().expect("json"));
    c
}

fn assert_names(err: &ModelError, words: &[&str]) {
    let text = err.to_string();
    for word in words {
        assert!(text.contains(word), "`{word}` is not in: {text}");
    }
}

#[test]
fn a_complete_checkpoint_opens_and_loads() {
    let c = checkpoint("complete");
    c.write(
        GENERATION_CONFIG,
        r#"{"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1, "eos_token_id": [5, 3]}"#,
    );
    let loader = ModelLoader::open(c.0.to_str().expect("utf-8")).expect("open");
    let info = loader.info();
    assert_eq!(info.name, c.0.file_name().expect("name").to_string_lossy());
    assert_eq!(
        info.generation,
        GenerationDefaults { temperature: Some(0.6), top_p: Some(0.9), top_k: Some(20), repetition_penalty: Some(1.1) }
    );
    assert!(info.tokenizer.is_stop(3) && info.tokenizer.is_stop(5), "{:?}", info.tokenizer.stop_ids());
    assert!(info.chat_template.is_none());
    loader.load(&Default::default(), &mut |_, _| {}).expect("load");
}

#[test]
fn chat_template_comes_from_tokenizer_config_a_string_or_the_default_of_a_list() {
    let c = checkpoint("template");
    c.write(TOKENIZER_CONFIG, &json!({ "chat_template": "A{{ messages[0]['content'] }}" }).to_string());
    let render = |c: &Checkpoint| {
        let info = ModelLoader::open(c.0.to_str().expect("utf-8")).expect("open").info();
        info.chat_template
            .as_ref()
            .expect("template")
            .render(&[crate::chat_template::ChatMessage::new("user", "x")], false)
            .expect("render")
    };
    assert_eq!(render(&c), "Ax");
    let named = json!({ "chat_template": [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D{{ messages[0]['content'] }}"},
    ] });
    c.write(TOKENIZER_CONFIG, &named.to_string());
    assert_eq!(render(&c), "Dx");
    // `do_sample: false` is greedy decoding.
    c.write(GENERATION_CONFIG, r#"{"do_sample": false, "temperature": 0.7}"#);
    let info = ModelLoader::open(c.0.to_str().expect("utf-8")).expect("open").info();
    assert_eq!(info.generation.temperature, Some(0.0));
}

#[test]
fn a_directory_without_the_checkpoint_files_says_what_is_missing() {
    let c = checkpoint("empty");
    std::fs::remove_file(c.path(WEIGHTS)).expect("rm");
    std::fs::remove_file(c.path(TOKENIZER)).expect("rm");
    let err = c.open_err();
    assert!(matches!(err, ModelError::Checkpoint { .. }), "{err:?}");
    assert_names(
        &err,
        &["neither a GGUF file nor a complete Hugging Face checkpoint", "tokenizer.json", "model.safetensors"],
    );
}

#[test]
fn a_shard_the_index_lists_but_that_is_missing_is_named() {
    let c = checkpoint("shards");
    std::fs::remove_file(c.path(WEIGHTS)).expect("rm");
    let all = tensors();
    let (first, second) = all.split_at(all.len() / 2);
    write_safetensors(&c.path("model-00001-of-00002.safetensors"), first);
    let mut map = serde_json::Map::new();
    for (name, ..) in first {
        map.insert(name.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for (name, ..) in second {
        map.insert(name.clone(), json!("model-00002-of-00002.safetensors"));
    }
    c.write(WEIGHTS_INDEX, &json!({ "weight_map": map }).to_string());
    assert_names(&c.open_err(), &[WEIGHTS_INDEX, "model-00002-of-00002.safetensors", "missing"]);

    // With the second shard written, the same index opens.
    write_safetensors(&c.path("model-00002-of-00002.safetensors"), second);
    ModelLoader::open(c.0.to_str().expect("utf-8")).expect("both shards");

    c.write(WEIGHTS_INDEX, &json!({ "weight_map": { "lm_head.weight": "../elsewhere.safetensors" } }).to_string());
    assert_names(&c.open_err(), &[WEIGHTS_INDEX, "is not a file name"]);
}

#[test]
fn a_tensor_of_another_dtype_is_named_with_its_file() {
    let c = checkpoint("dtype");
    let mut all = tensors();
    let entry = all.iter_mut().find(|t| t.0 == "model.layers.1.mlp.up_proj.weight").expect("tensor");
    entry.1 = Dtype::I32;
    write_safetensors(&c.path(WEIGHTS), &all);
    assert_names(&c.open_err(), &[WEIGHTS, "model.layers.1.mlp.up_proj.weight", "I32", "F32, F16 and BF16"]);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_its_file() {
    let c = checkpoint("shape");
    let mut all = tensors();
    let entry = all.iter_mut().find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight").expect("tensor");
    entry.2.reverse();
    write_safetensors(&c.path(WEIGHTS), &all);
    assert_names(&c.open_err(), &[WEIGHTS, "model.layers.0.self_attn.k_proj.weight", "has shape [64, 32]", "[32, 64]"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let c = checkpoint("missing");
    let all: Vec<_> = tensors().into_iter().filter(|t| t.0 != "model.norm.weight").collect();
    write_safetensors(&c.path(WEIGHTS), &all);
    assert_names(&c.open_err(), &["model.norm.weight", "is missing", WEIGHTS]);
}

#[test]
fn an_untied_model_without_lm_head_is_a_missing_tensor_and_a_tied_one_loads() {
    let c = checkpoint("tied");
    let all: Vec<_> = tensors().into_iter().filter(|t| t.0 != "lm_head.weight").collect();
    write_safetensors(&c.path(WEIGHTS), &all);
    assert_names(&c.open_err(), &["lm_head.weight", "is missing"]);
    c.edit_config(|m| {
        m.insert("tie_word_embeddings".into(), json!(true));
    });
    let loader = ModelLoader::open(c.0.to_str().expect("utf-8")).expect("tied");
    assert!(loader.info().config.tied_embeddings);
    loader.load(&Default::default(), &mut |_, _| {}).expect("load tied");
}

#[test]
fn an_unknown_architecture_lists_the_supported_ones() {
    let c = checkpoint("arch");
    c.edit_config(|m| {
        m.insert("model_type".into(), json!("mamba"));
    });
    let err = c.open_err();
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }), "{err:?}");
    assert_names(&err, &["mamba", "llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"]);
    // Without model_type, the class name tells.
    c.edit_config(|m| {
        m.remove("model_type");
        m.insert("architectures".into(), json!(["FalconForCausalLM"]));
    });
    assert_names(&c.open_err(), &["falcon"]);
}

#[test]
fn malformed_json_names_its_file() {
    let c = checkpoint("json");
    c.write(CONFIG, "{\"hidden_size\": 64,");
    assert_names(&c.open_err(), &[CONFIG, "is not valid JSON"]);

    let c = checkpoint("json-index");
    std::fs::remove_file(c.path(WEIGHTS)).expect("rm");
    c.write(WEIGHTS_INDEX, "[1, 2");
    assert_names(&c.open_err(), &[WEIGHTS_INDEX, "is not valid JSON"]);

    let c = checkpoint("json-generation");
    c.write(GENERATION_CONFIG, "{temperature: 1}");
    assert_names(&c.open_err(), &[GENERATION_CONFIG, "not valid JSON"]);

    let c = checkpoint("json-weights");
    c.write(WEIGHTS, "not a safetensors file");
    assert_names(&c.open_err(), &[WEIGHTS, "is not a valid safetensors file"]);
}

#[test]
fn bad_config_values_name_the_key() {
    let c = checkpoint("keys");
    c.edit_config(|m| {
        m.remove("hidden_size");
    });
    assert_names(&c.open_err(), &[CONFIG, "`hidden_size`", "missing"]);

    let c = checkpoint("keys-type");
    c.edit_config(|m| {
        m.insert("num_attention_heads".into(), json!("four"));
    });
    assert_names(&c.open_err(), &[CONFIG, "`num_attention_heads`", "not a count"]);

    let c = checkpoint("keys-rope");
    c.edit_config(|m| {
        m.insert("rope_scaling".into(), json!({"rope_type": "yarn", "factor": 4.0}));
    });
    assert_names(&c.open_err(), &[CONFIG, "`rope_scaling`", "yarn", "not supported"]);

    let c = checkpoint("keys-heads");
    c.edit_config(|m| {
        m.insert("num_key_value_heads".into(), json!(3));
    });
    assert_names(&c.open_err(), &[CONFIG, "key/value heads"]);
}

#[test]
fn llama3_rope_scaling_gives_the_divisors_llama_cpp_stores() {
    use super::config::Llama3Scaling;
    // Llama 3.1 8B: head_dim 128, base 500 000; llama.cpp's converter writes these divisors.
    let divisors = Llama3Scaling::LLAMA_3_1.divisors(500_000.0, 128);
    assert_eq!(divisors.len(), 64);
    assert_eq!(divisors[0], 1.0);
    assert_eq!(divisors[63], 8.0);
    let smooth: Vec<_> = divisors.iter().filter(|&&d| d > 1.0 && d < 8.0).collect();
    assert!(!smooth.is_empty() && divisors.windows(2).all(|w| w[0] <= w[1]), "{divisors:?}");
    assert_eq!(Llama3Scaling::fit(&divisors, 500_000.0, 128), Some(Llama3Scaling::LLAMA_3_1));
    let ramp: Vec<f32> = (0..64).map(|i| 1.0 + 7.0 * i as f32 / 63.0).collect();
    assert_eq!(Llama3Scaling::fit(&ramp, 500_000.0, 128), None);
}

#[test]
fn transformers_5_configs_with_rope_parameters_read_the_same() {
    use super::config::ConfigJson;
    use crate::arch::{gemma3::Gemma3, phi3::Phi3};
    // As `transformers` 5 saves Gemma 3: RoPE settings by layer type.
    let text = json!({
        "model_type": "gemma3_text", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
        "query_pre_attn_scalar": 32, "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
        }
    });
    let json = ConfigJson::parse(Path::new("config.json"), &text.to_string()).expect("parse");
    let c = Gemma3.hf_config(&json, &|_| true).expect("config");
    assert_eq!((c.rope_theta, c.rope_theta_local, c.rope_linear_scale), (1e6, Some(1e4), 8.0));
    assert_eq!(c.sliding, vec![true, false, true]);
    assert_eq!(c.attention_scale, 1.0 / 32f64.sqrt());
    assert!(c.tied_embeddings, "Gemma ties its output unless told otherwise");

    // Phi-4-mini's partial rotary factor, inside rope_parameters, is refused.
    let text = json!({
        "model_type": "phi3", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
    });
    let json = ConfigJson::parse(Path::new("config.json"), &text.to_string()).expect("parse");
    let err = Phi3.hf_config(&json, &|_| true).expect_err("partial rotary");
    assert_names(&err, &["config.json", "partial_rotary_factor", "0.75"]);
}

#[test]
fn a_multimodal_gemma3_config_reads_its_text_config_with_the_class_defaults() {
    use super::config::ConfigJson;
    use crate::arch::gemma3::Gemma3;
    // As Gemma 3 4B's config.json has it: most text keys left to Gemma3TextConfig's defaults.
    let text = json!({
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {
            "model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024
        },
        "vision_config": {"model_type": "siglip_vision_model"}
    });
    let json = ConfigJson::parse(Path::new("config.json"), &text.to_string()).expect("parse").text_model();
    assert_eq!(json.model_type().expect("model_type"), "gemma3_text");
    let c = Gemma3.hf_config(&json, &|_| true).expect("config");
    assert_eq!((c.vocab_size, c.num_heads, c.num_kv_heads, c.head_dim), (262_208, 8, 4, 256));
    assert_eq!((c.rope_theta, c.rope_theta_local, c.rope_linear_scale), (1e6, Some(1e4), 8.0));
    assert_eq!((c.sliding_window, c.context_length), (Some(1024), 131_072));
    assert_eq!(c.sliding.iter().filter(|&&s| !s).count(), 5, "one full-attention layer in six: {:?}", c.sliding);
    assert!(!c.sliding[5] && c.sliding[4]);
}
