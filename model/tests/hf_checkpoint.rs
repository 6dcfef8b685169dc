//! Hugging Face checkpoints against the GGUF files they are exported from
//! (`hf::write_checkpoint`, then `ModelLoader::open(dir)`): the default model as F32 (the same
//! weights, so the same logits up to rounding, the golden greedy continuations, the same
//! chat prompts and token ids), as three shards, and as BF16 (close logits); and one small
//! checkpoint of every family of the registry.
//!
//! Tolerances. F32: both sides hold the very same f32 weights (the GGUF side dequantized
//! densely); Llama's q/k rows are permuted on one side and the RoPE layout with them, which
//! changes only the order in which attention sums its products. Measured: logits (up to ~20)
//! of the default model's 30 layers agree within 9.2·10⁻⁵ (~50 ulp), the family checkpoints
//! within 2.4·10⁻⁶ (exactly where no rows move). [`F32_TOLERANCE`] is 5·10⁻⁴: five times the
//! measured difference, and far below what a real mistake moves (exporting q/k rows in GGUF
//! order moves the default model's logits by 19).
//! BF16 keeps 8 bits of each weight's mantissa: measured, the default model's top logits move
//! by up to 0.16 on a chat; [`BF16_TOLERANCE`] is 0.5, and the greedy continuation of that
//! chat must still be equal.

mod common;

use std::path::{Path, PathBuf};

use common::{argmax, ids, read_json, weights_file};
use serde_json::Value;
use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::config::{ModelConfig, RopeLayout};
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::gguf::{GgmlType, GgufFile, GgufWriter};
use stellarchat_model::hf::config::Llama3Scaling;
use stellarchat_model::hf::{HfDtype, HfExport, write_checkpoint};
use stellarchat_model::model::{LoadOptions, ModelLoader};
use stellarchat_model::synthetic::cases::{CASE_SEED, CASES, FamilyCase};
use stellarchat_model::transformer::{ForwardChunk, Transformer};
use stellarchat_model::weights::WeightFormat;

const F32_TOLERANCE: f32 = 5e-4;
/// The family checkpoints are two layers deep: 10⁻⁴, forty times what they measure.
const FAMILY_TOLERANCE: f32 = 1e-4;
const BF16_TOLERANCE: f32 = 0.5;

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("stellarchat-hf-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn default_model() -> PathBuf {
    weights_file("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
}

fn open(path: &Path) -> ModelLoader {
    ModelLoader::open(path.to_str().expect("utf-8 path")).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Dense f32 weights on the flex backend: the GGUF side dequantizes exactly the values the
/// F32 export wrote.
fn load(loader: &ModelLoader) -> Transformer {
    let options = LoadOptions { device: DeviceSpec::Flex, precision: Precision::F32, weights: WeightFormat::Dense, ..Default::default() };
    loader.load(&options, &mut |_, _| {}).expect("load")
}

/// Logits of every position of `prompt`.
fn logits(model: &Transformer, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let logits =
        model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: prompt, all_logits: true }]).expect("forward");
    logits.chunk(0).to_vec()
}

/// The largest difference over the `top` largest logits of `want` at every position.
fn worst_top_difference(got: &[f32], want: &[f32], vocab: usize, top: usize) -> f32 {
    let mut worst = 0f32;
    for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
        let mut order: Vec<usize> = (0..vocab).collect();
        order.select_nth_unstable_by(top, |&a, &b| w[b].total_cmp(&w[a]));
        for &i in &order[..top] {
            worst = worst.max((g[i] - w[i]).abs());
        }
    }
    worst
}

/// Greedy continuation of `prompt`, at most `max` tokens, stopping at a stop id.
fn greedy(model: &Transformer, loader: &ModelLoader, prompt: &[u32], max: usize) -> Vec<u32> {
    let tokenizer = loader.info().tokenizer.clone();
    let mut cache = model.new_cache();
    let first =
        model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: prompt, all_logits: false }]).expect("forward");
    let mut out = vec![argmax(first.last_row(0))];
    while out.len() < max && !tokenizer.is_stop(*out.last().expect("a token")) {
        let last = [*out.last().expect("a token")];
        let step =
            model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &last, all_logits: false }]).expect("decode");
        out.push(argmax(step.last_row(0)));
    }
    out
}

fn golden() -> Value {
    read_json("tests/golden/smollm2-135m-instruct-q4_1.json")
}

fn messages(chat: &Value) -> Vec<ChatMessage> {
    chat["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().expect("role"), m["content"].as_str().expect("content")))
        .collect()
}

#[test]
fn default_model_as_f32_checkpoint_is_the_same_model() {
    let dir = TempDir::new("f32");
    write_checkpoint(&default_model(), &dir.0, HfExport { dtype: HfDtype::F32, shards: 1 }).expect("export");
    let (gguf, hf) = (open(&default_model()), open(&dir.0));
    let (gguf_info, hf_info) = (gguf.info(), hf.info());
    assert_eq!(hf_info.name, dir.0.file_name().expect("name").to_string_lossy());
    assert_eq!(hf_info.config, as_hf(&gguf_info.config), "configuration");
    assert_eq!(hf_info.context_length, gguf_info.context_length);

    // Tokenizer: the golden texts and a few harder ones, with and without special tokens.
    let (gt, ht) = (&gguf_info.tokenizer, &hf_info.tokenizer);
    assert_eq!(
        (gt.bos_id(), gt.eos_id(), gt.add_bos(), gt.stop_ids()),
        (ht.bos_id(), ht.eos_id(), ht.add_bos(), ht.stop_ids())
    );
    assert_eq!(gt.vocab_size(), ht.vocab_size());
    let golden = golden();
    let mut corpus: Vec<String> = golden["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t["text"].as_str().expect("text").to_string())
        .collect();
    corpus.extend(
        golden["chats"].as_array().expect("chats").iter().map(|c| c["prompt"].as_str().expect("prompt").to_string()),
    );
    corpus.extend(
        ["<|im_start|>user\n hi<|im_end|>", "  \n\n\t x", "ÀÉÎ õü 𝔘𝔫𝔦", "<|endoftext|><unk>"].map(String::from),
    );
    for text in &corpus {
        for special in [false, true] {
            let ids = gt.encode(text, special).expect("encode");
            assert_eq!(ht.encode(text, special).expect("encode"), ids, "{text:?} (special {special})");
            assert_eq!(ht.decode(&ids, false).expect("decode"), gt.decode(&ids, false).expect("decode"));
        }
    }

    // Chat template: the golden conversations and a few more, byte for byte.
    let (gtpl, htpl) =
        (gguf_info.chat_template.as_ref().expect("template"), hf_info.chat_template.as_ref().expect("template"));
    assert_eq!(gtpl.source(), htpl.source());
    let mut conversations: Vec<Vec<ChatMessage>> =
        golden["chats"].as_array().expect("chats").iter().map(messages).collect();
    conversations.push(vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")]);
    conversations.push(vec![
        ChatMessage::new("user", "1"),
        ChatMessage::new("assistant", "2"),
        ChatMessage::new("user", "3"),
    ]);
    for conversation in &conversations {
        for generation_prompt in [true, false] {
            assert_eq!(
                htpl.render(conversation, generation_prompt).expect("render"),
                gtpl.render(conversation, generation_prompt).expect("render")
            );
        }
    }

    // Logits and the golden greedy continuations.
    let (gguf_model, hf_model) = (load(&gguf), load(&hf));
    let vocab = gguf_info.config.vocab_size;
    // Two of the four golden chats (37 and 63 tokens; continuations of 8 and 21) keep the
    // test short; the other two are rendered and tokenized above.
    let compared = ["capital", "multi_turn"];
    let chats = golden["chats"].as_array().expect("chats");
    for chat in chats.iter().filter(|c| compared.contains(&c["name"].as_str().unwrap_or(""))) {
        let name = chat["name"].as_str().expect("name");
        let prompt = ids(&chat["ids"]);
        assert_eq!(
            ht.encode_prompt(chat["prompt"].as_str().expect("prompt")).expect("encode"),
            prompt,
            "{name}: prompt ids"
        );
        let worst = worst_top_difference(&logits(&hf_model, &prompt), &logits(&gguf_model, &prompt), vocab, 10);
        eprintln!("f32 {name}: worst top-10 |Δlogit| {worst:.2e}");
        assert!(worst <= F32_TOLERANCE, "{name}: logits differ by {worst}");
        let expected = ids(&chat["reference_greedy"]);
        assert_eq!(greedy(&hf_model, &hf, &prompt, expected.len()), expected, "{name}: greedy continuation");
    }
}

/// The GGUF configuration as a Hugging Face checkpoint has it: the same, except that
/// checkpoints keep q/k rows unpermuted and rotate halves.
fn as_hf(c: &ModelConfig) -> ModelConfig {
    ModelConfig { rope_layout: RopeLayout::Halves, ..c.clone() }
}

#[test]
fn default_model_in_three_shards_gives_the_same_logits() {
    let dir = TempDir::new("shards");
    write_checkpoint(&default_model(), &dir.0, HfExport { dtype: HfDtype::F32, shards: 3 }).expect("export");
    for n in 1..=3 {
        assert!(dir.0.join(format!("model-0000{n}-of-00003.safetensors")).is_file(), "shard {n}");
    }
    assert!(!dir.0.join("model.safetensors").exists());
    let (gguf, hf) = (open(&default_model()), open(&dir.0));
    let chat = &golden()["chats"][0];
    let prompt = ids(&chat["ids"]);
    let vocab = gguf.info().config.vocab_size;
    let worst = worst_top_difference(&logits(&load(&hf), &prompt), &logits(&load(&gguf), &prompt), vocab, 10);
    eprintln!("3 shards: worst top-10 |Δlogit| {worst:.2e}");
    assert!(worst <= F32_TOLERANCE, "logits differ by {worst}");
}

#[test]
fn default_model_as_bf16_checkpoint_is_close() {
    let dir = TempDir::new("bf16");
    write_checkpoint(&default_model(), &dir.0, HfExport { dtype: HfDtype::BF16, shards: 1 }).expect("export");
    let (gguf, hf) = (open(&default_model()), open(&dir.0));
    let (gguf_model, hf_model) = (load(&gguf), load(&hf));
    let chat = &golden()["chats"][0];
    let prompt = ids(&chat["ids"]);
    let vocab = gguf.info().config.vocab_size;
    let worst = worst_top_difference(&logits(&hf_model, &prompt), &logits(&gguf_model, &prompt), vocab, 10);
    eprintln!("bf16: worst top-10 |Δlogit| {worst:.3}");
    assert!(worst <= BF16_TOLERANCE, "logits differ by {worst}");
    assert!(worst > 0.0, "a BF16 checkpoint cannot be bit-identical to the Q4_1 weights");
    let expected = ids(&chat["reference_greedy"]);
    assert_eq!(greedy(&hf_model, &hf, &prompt, expected.len()), expected, "greedy continuation");
}

/// A family case's GGUF file. The llama3 case's divisors are a linear ramp that no
/// `config.json` can express, so its export is refused (checked here); the checkpoint
/// compared instead carries the divisors Llama 3.1's `rope_scaling` implies.
fn case_file(case: &FamilyCase, dir: &Path) -> PathBuf {
    let vocabulary = GgufFile::open(default_model()).expect("default model");
    let bytes = case.gguf(&vocabulary.metadata, CASE_SEED).expect("write case");
    let path = dir.join(format!("{}.gguf", case.name));
    std::fs::create_dir_all(dir).expect("temp dir");
    std::fs::write(&path, &bytes).expect("write case");
    if case.name != "llama3" {
        return path;
    }
    let refused = write_checkpoint(&path, &dir.join("refused"), HfExport::default()).expect_err("a ramp of divisors");
    assert!(refused.to_string().contains("rope_freqs.weight"), "{refused}");
    let file = GgufFile::from_bytes(bytes).expect("parse case");
    let mut writer = GgufWriter::new();
    writer.copy_metadata(&file.metadata, |_| true).expect("metadata");
    let theta = file.metadata.get("llama.rope.freq_base").and_then(|v| v.as_f64()).expect("rope base");
    let head_dim = file.metadata.get("llama.attention.key_length").and_then(|v| v.as_u64()).expect("head dim") as usize;
    for info in file.tensors() {
        if info.name == "rope_freqs.weight" {
            let divisors = Llama3Scaling::LLAMA_3_1.divisors(theta, head_dim);
            assert!(divisors.iter().any(|&d| d > 1.0 && d < 8.0), "the smooth band is exercised: {divisors:?}");
            writer.add_f32_tensor(&info.name, &info.dims, &divisors).expect("tensor");
        } else {
            let bytes = file.tensor_bytes(info).expect("bytes").to_vec();
            writer.add_tensor(&info.name, &info.dims, GgmlType::F32, bytes).expect("tensor");
        }
    }
    writer.write_to(&path).expect("write llama3.1 case");
    path
}

#[test]
fn every_family_exports_and_loads_with_the_same_logits() {
    let dir = TempDir::new("families");
    for case in CASES {
        let gguf_path = case_file(&case, &dir.0);
        let out = dir.0.join(case.name);
        write_checkpoint(&gguf_path, &out, HfExport::default())
            .unwrap_or_else(|e| panic!("{}: export: {e}", case.name));
        let (gguf, hf) = (open(&gguf_path), open(&out));
        assert_eq!(hf.info().config, as_hf(&gguf.info().config), "{}: configuration", case.name);
        let prompt = gguf
            .info()
            .tokenizer
            .encode_prompt("The quick brown fox jumps over the lazy dog, again and again.")
            .expect("encode");
        let vocab = gguf.info().config.vocab_size;
        let (want, got) = (logits(&load(&gguf), &prompt), logits(&load(&hf), &prompt));
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        eprintln!("{}: worst |Δlogit| over {} positions × {vocab} {worst:.2e}", case.name, prompt.len());
        assert!(worst <= FAMILY_TOLERANCE, "{}: logits differ by {worst}", case.name);
    }
}
