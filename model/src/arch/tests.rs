//! The registry without weights: every family's configuration survives being written as
//! metadata and read back, declarations are consistent, and unknown architectures are a
//! clear error.

use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::synthetic::SyntheticPreset;
use crate::synthetic::cases::CASES;

/// Reads `config` back through its family's metadata and tensor names.
fn round_trip(config: &ModelConfig) -> ModelConfig {
    let family = config.family.family();
    let entries: BTreeMap<String, MetadataValue> = family.metadata(config).into_iter().collect();
    let names: HashSet<String> = family.tensors(config).into_iter().map(|d| d.name).collect();
    config_from_gguf(&Metadata::new(entries), &|name| names.contains(name)).expect("read back")
}

#[test]
fn every_case_and_preset_round_trips_through_metadata() {
    let mut configs: Vec<ModelConfig> = CASES.iter().map(|c| c.config(49152)).collect();
    configs.extend([SyntheticPreset::Tiny, SyntheticPreset::Smollm2_135m].map(SyntheticPreset::config));
    for config in configs {
        config.validate().expect("valid");
        let back = round_trip(&config);
        // Metadata stores f32: compare the floats at that precision, the rest exactly.
        let f32_eq = |a: f64, b: f64| (a as f32) == (b as f32);
        assert!(f32_eq(back.rms_norm_eps, config.rms_norm_eps), "{:?}", config.family);
        assert!(f32_eq(back.attention_scale, config.attention_scale), "{:?}", config.family);
        let normalize = |c: &ModelConfig| ModelConfig { rms_norm_eps: 0.0, attention_scale: 0.0, ..c.clone() };
        assert_eq!(normalize(&back), normalize(&config));
    }
}

#[test]
fn declarations_have_unique_names_and_one_block_of_each_kind_per_layer() {
    for case in CASES {
        let config = case.config(1000);
        let decls = config.family.family().tensors(&config);
        let names: HashSet<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), decls.len(), "{}: duplicate tensor names", case.name);
        for layer in 0..config.num_layers {
            let roles: Vec<Role> = decls.iter().filter(|d| d.layer == Some(layer)).map(|d| d.role).collect();
            let distinct: HashSet<Role> = roles.iter().copied().collect();
            assert_eq!(distinct.len(), roles.len(), "{} layer {layer}: a role declared twice", case.name);
            assert!(distinct.contains(&Role::AttnNorm) && distinct.contains(&Role::FfnDown), "{}", case.name);
        }
        assert_eq!(decls.iter().any(|d| d.role == Role::Output), !config.tied_embeddings, "{}", case.name);
    }
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let entries = BTreeMap::from([("general.architecture".to_string(), MetadataValue::String("mamba".into()))]);
    let err = config_from_gguf(&Metadata::new(entries), &|_| false).expect_err("mamba is not supported");
    let message = err.to_string();
    for name in ["mamba", "llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"] {
        assert!(message.contains(name), "{message}");
    }
    assert_eq!(err.kind(), "unsupported_architecture");
}

#[test]
fn gemma3_reads_its_window_pattern_and_local_base() {
    let mut config = crate::synthetic::base_config(FamilyKind::Gemma3, 300);
    config.num_layers = 7;
    config.sliding = vec![false; 7];
    let family = FamilyKind::Gemma3.family();
    let mut entries: BTreeMap<String, MetadataValue> = family.metadata(&config).into_iter().collect();
    entries.insert("gemma3.attention.sliding_window".into(), MetadataValue::U32(512));
    let read = |entries: &BTreeMap<String, MetadataValue>| {
        config_from_gguf(&Metadata::new(entries.clone()), &|name| name != "output.weight").expect("config")
    };
    // Without a pattern key: five of every six layers slide; the local base defaults to 10 000.
    let c = read(&entries);
    assert_eq!(c.sliding, [true, true, true, true, true, false, true]);
    assert_eq!((c.sliding_window, c.rope_theta_local), (Some(512), Some(10_000.0)));
    assert!(c.tied_embeddings);
    assert_eq!(c.embedding_scale, 8.0);
    entries.insert("gemma3.attention.sliding_window_pattern".into(), MetadataValue::U32(3));
    assert_eq!(read(&entries).sliding, [true, true, false, true, true, false, true]);
    let flags = (0..7).map(|i| MetadataValue::Bool(i == 2)).collect();
    entries.insert("gemma3.attention.sliding_window_pattern".into(), MetadataValue::Array(flags));
    assert_eq!(read(&entries).sliding, [false, false, true, false, false, false, false]);
    entries.insert("gemma3.attention.sliding_window_pattern".into(), MetadataValue::Array(vec![]));
    assert!(config_from_gguf(&Metadata::new(entries), &|_| true).is_err(), "a flag per layer or a period");
}

#[test]
fn absurd_dimensions_name_the_key() {
    let config = crate::synthetic::base_config(FamilyKind::Llama, 300);
    let family = FamilyKind::Llama.family();
    for (key, value) in [
        ("llama.embedding_length", 1u64 << 40),
        ("llama.block_count", 1 << 40),
        ("llama.feed_forward_length", 1 << 33),
        ("llama.attention.head_count", 1 << 20),
        ("llama.vocab_size", 1 << 30),
    ] {
        let mut entries: BTreeMap<String, MetadataValue> = family.metadata(&config).into_iter().collect();
        entries.insert(key.into(), MetadataValue::U64(value));
        let err = config_from_gguf(&Metadata::new(entries), &|_| true).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let mut entries: BTreeMap<String, MetadataValue> = family.metadata(&config).into_iter().collect();
    entries.insert("llama.rope.dimension_count".into(), MetadataValue::U64(1 << 40));
    let err = config_from_gguf(&Metadata::new(entries), &|_| true).expect_err("n_rot");
    assert!(err.to_string().contains("llama.rope.dimension_count"), "{err}");
    // Each dimension plausible, their product not: refused before any allocation.
    let mut entries: BTreeMap<String, MetadataValue> = family.metadata(&config).into_iter().collect();
    entries.insert("llama.embedding_length".into(), MetadataValue::U64(1 << 23));
    entries.insert("llama.feed_forward_length".into(), MetadataValue::U64(1 << 23));
    let err = config_from_gguf(&Metadata::new(entries), &|_| true).expect_err("too large");
    assert!(err.to_string().contains("too large"), "{err}");
}
