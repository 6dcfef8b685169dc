//! The real default model against the golden reference (../shared/golden): teacher-forced
//! top-5 logits within 0.02 of a float64 implementation and the exact greedy continuation,
//! on every CPU backend compiled in, with f32 weights and arithmetic.

use std::path::PathBuf;

use serde_json::Value;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::llama::{ForwardChunk, Transformer};
use stellarchat_model::model::{LoadOptions, ModelLoader};

const LOGIT_TOLERANCE: f32 = 0.02;
const EOS: u32 = 2;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden() -> Value {
    let path = repo_root().join("../shared/golden/smollm2-135m-instruct-q4_1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn model_path() -> PathBuf {
    let path = repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run `just weights`", path.display());
    path
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn load(spec: DeviceSpec) -> Transformer {
    let loader = ModelLoader::open(model_path().to_str().expect("utf-8 path")).expect("open model");
    loader.load(&LoadOptions { device: spec, precision: Precision::F32 }, &mut |_, _| {}).expect("load model")
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn check_device(spec: DeviceSpec) {
    let model = load(spec);
    let vocab = model.config().vocab_size;
    for chat in golden()["chats"].as_array().expect("chats") {
        let name = chat["name"].as_str().expect("name");
        let prompt = ids(&chat["ids"]);

        let mut cache = model.new_cache();
        let logits = model
            .forward(&mut [ForwardChunk { cache: &mut cache, tokens: &prompt, all_logits: true }])
            .expect("forward");
        let rows = logits.chunk(0);
        let mut worst = 0f32;
        for (t, top5) in chat["reference_top5"].as_array().expect("top5").iter().enumerate() {
            for pair in top5.as_array().expect("pairs") {
                let id = pair[0].as_u64().expect("id") as usize;
                let expected = pair[1].as_f64().expect("logit") as f32;
                let got = rows[t * vocab + id];
                let diff = (got - expected).abs();
                worst = worst.max(diff);
                assert!(diff <= LOGIT_TOLERANCE, "{spec} {name}: position {t} token {id}: {got} vs reference {expected}");
            }
        }

        let expected = ids(&chat["reference_greedy"]);
        let mut generated = vec![argmax(&rows[(prompt.len() - 1) * vocab..prompt.len() * vocab])];
        while generated.len() < expected.len() && generated.last() != Some(&EOS) {
            let last = *generated.last().expect("one token");
            let step = model
                .forward(&mut [ForwardChunk { cache: &mut cache, tokens: &[last], all_logits: false }])
                .expect("decode");
            generated.push(argmax(step.last_row(0)));
        }
        assert_eq!(generated, expected, "{spec} {name}: greedy continuation differs from the reference");
        eprintln!("{spec} {name}: max logit error {worst:.4}, greedy equal ({} tokens)", expected.len());
    }
}

#[test]
fn golden_logits_and_greedy_on_flex() {
    check_device(DeviceSpec::Flex);
}

#[cfg(feature = "ndarray")]
#[test]
fn golden_logits_and_greedy_on_ndarray() {
    check_device(DeviceSpec::NdArray);
}
