//! Helpers the model crate's integration tests share: where the repository's data is, JSON
//! reference files, token-id arrays and greedy choice.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use serde_json::Value;
use stellarchat_model::kv_cache::SequenceCache;
use stellarchat_model::transformer::{ForwardChunk, Transformer};

/// The repository root (tests read `tests/golden/` and `weights/` under it, nothing outside).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A JSON file under the repository root.
pub fn read_json(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model file under `weights/`, which `fetch` (a `just weights` argument) brings.
pub fn weights_file(name: &str, fetch: &str) -> PathBuf {
    let path = repo_root().join("weights").join(name);
    assert!(path.is_file(), "{} is missing: run `just weights {fetch}`", path.display());
    path
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The id of the largest logit (the first of equals).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The golden README's check for reduced precision and quantized activations, on
/// teacher-forced logits `rows` (`[positions × vocab]`): every `reference_top5` logit within
/// `tolerance`, and the reference's top-1 on top wherever it leads its top-2 by more than
/// 0.5. Returns the largest logit error.
pub fn check_loose_tolerance(what: &str, rows: &[f32], vocab: usize, reference_top5: &Value, tolerance: f32) -> f32 {
    let mut worst = 0f32;
    for (t, top5) in reference_top5.as_array().expect("top5").iter().enumerate() {
        let top5 = top5.as_array().expect("pairs");
        let row = &rows[t * vocab..(t + 1) * vocab];
        for pair in top5 {
            let id = pair[0].as_u64().expect("id") as usize;
            let expected = pair[1].as_f64().expect("logit") as f32;
            worst = worst.max((row[id] - expected).abs());
            assert!((row[id] - expected).abs() <= tolerance, "{what}: position {t} token {id}: {} vs {expected}", row[id]);
        }
        let lead = top5[0][1].as_f64().expect("top1") - top5[1][1].as_f64().expect("top2");
        if lead > 0.5 {
            assert_eq!(argmax(row) as u64, top5[0][0].as_u64().expect("id"), "{what}: top-1 at position {t}");
        }
    }
    worst
}

/// Teacher-forced logits of `prompt` fed one token per forward pass, as decode steps (where
/// 8-bit activations apply): the cache that then holds the prompt, and `[prompt.len() ×
/// vocab]` logits.
pub fn teacher_forced_stepwise(model: &Transformer, prompt: &[u32]) -> (SequenceCache, Vec<f32>) {
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    for token in prompt {
        let step = model
            .forward(&mut [ForwardChunk { cache: &mut cache, tokens: std::slice::from_ref(token), all_logits: true }])
            .expect("forward");
        rows.extend_from_slice(step.chunk(0));
    }
    (cache, rows)
}
