//! Bad model files against the real binary: `generate` and `serve` must both exit non-zero
//! with a message naming the key or tensor at fault, and never panic (nor serve 503 for a
//! model that can never load).
//!
//! The files are written with the model crate's `GgufWriter`: a minimal llama model (one
//! block, hidden size 64, the default model's tokenizer) that loads and generates, then
//! variants of it that are truncated, corrupt, of an unknown architecture, missing a tensor
//! or with a tensor of the wrong shape.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use stellarchat_model::gguf::{GgufFile, GgufWriter};
use stellarchat_tests::{binary, default_model, repo_root};

const HIDDEN: usize = 64;
const KV_DIM: usize = 32; // 2 key/value heads of 16
const FF: usize = 128;

/// The minimal llama model: every key and tensor a llama checkpoint needs, F32 weights.
fn minimal_llama() -> GgufWriter {
    let vocabulary = GgufFile::open(default_model()).expect("open the default model");
    let vocab = vocabulary.metadata.opt_array("tokenizer.ggml.tokens").expect("tokens").expect("a token list").len();
    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "llama").unwrap();
    w.add_string("general.name", "bad-files-test").unwrap();
    w.add_u32("llama.embedding_length", HIDDEN as u32).unwrap();
    w.add_u32("llama.feed_forward_length", FF as u32).unwrap();
    w.add_u32("llama.block_count", 1).unwrap();
    w.add_u32("llama.attention.head_count", 4).unwrap();
    w.add_u32("llama.attention.head_count_kv", 2).unwrap();
    w.add_u32("llama.context_length", 256).unwrap();
    w.add_u32("llama.rope.dimension_count", 16).unwrap();
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5).unwrap();
    w.copy_metadata_with_prefix(&vocabulary.metadata, "tokenizer.").expect("copy the tokenizer");
    let mut tensor = |name: &str, dims: &[usize]| {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect();
        w.add_f32_tensor(name, dims, &values).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    tensor("token_embd.weight", &[HIDDEN, vocab]);
    tensor("output_norm.weight", &[HIDDEN]);
    tensor("blk.0.attn_norm.weight", &[HIDDEN]);
    tensor("blk.0.attn_q.weight", &[HIDDEN, HIDDEN]);
    tensor("blk.0.attn_k.weight", &[HIDDEN, KV_DIM]);
    tensor("blk.0.attn_v.weight", &[HIDDEN, KV_DIM]);
    tensor("blk.0.attn_output.weight", &[HIDDEN, HIDDEN]);
    tensor("blk.0.ffn_norm.weight", &[HIDDEN]);
    tensor("blk.0.ffn_gate.weight", &[HIDDEN, FF]);
    tensor("blk.0.ffn_up.weight", &[HIDDEN, FF]);
    tensor("blk.0.ffn_down.weight", &[FF, HIDDEN]);
    w
}

/// A file under the target directory, removed when dropped.
struct TempModel(PathBuf);

impl TempModel {
    fn new(tag: &str, bytes: &[u8]) -> TempModel {
        let path =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bad-file-{}-{tag}.gguf", std::process::id()));
        std::fs::write(&path, bytes).expect("write the model file");
        TempModel(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the binary to its end (killing it after 120 s): exit status and stderr.
fn run(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`stellarchat {}` was still running after 120 s: {}",
                args.join(" "),
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap_or_default())
}

/// `generate` and `serve` on `model` both fail cleanly, saying every one of `needles`.
fn assert_both_fail(model: &TempModel, needles: &[&str]) {
    let generate = ["generate", "--model", model.path(), "--prompt", "hi", "--max-tokens", "2"];
    let serve = ["serve", "--model", model.path(), "--host", "127.0.0.1", "--port", "0"];
    for args in [&generate[..], &serve[..]] {
        let (status, stderr) = run(args);
        let command = args[0];
        assert!(!status.success(), "{command}: expected a failure, got success; stderr:\n{stderr}");
        assert!(status.code().is_some(), "{command}: killed by a signal ({status}); stderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{command} panicked:\n{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{command}: stderr should mention `{needle}`:\n{stderr}");
        }
    }
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{needle:?} not in the file"))
}

#[test]
fn the_minimal_llama_model_generates() {
    // The control: every variant below differs from this file in one thing only.
    let model = TempModel::new("valid", &minimal_llama().to_bytes());
    let (status, stderr) =
        run(&["generate", "--model", model.path(), "--prompt", "hi", "--max-tokens", "2", "--ignore-eos"]);
    assert!(status.success(), "the minimal model should load and generate:\n{stderr}");
}

#[test]
fn a_truncated_file_names_what_was_cut() {
    let bytes = minimal_llama().to_bytes();
    let in_merges = find(&bytes, b"tokenizer.ggml.merges") + 5000;
    assert_both_fail(&TempModel::new("cut-metadata", &bytes[..in_merges]), &["tokenizer.ggml.merges", "truncated"]);
    assert_both_fail(&TempModel::new("cut-data", &bytes[..bytes.len() - 100]), &["blk.0.ffn_down.weight", "truncated"]);
}

#[test]
fn an_absurd_string_length_names_the_key() {
    let mut bytes = minimal_llama().to_bytes();
    let key = b"tokenizer.chat_template";
    let length = find(&bytes, key) + key.len() + 4;
    bytes[length..length + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_both_fail(&TempModel::new("string", &bytes), &["tokenizer.chat_template", "4611686018427387904"]);
}

#[test]
fn an_unknown_architecture_lists_the_supported_ones() {
    let mut w = minimal_llama();
    w.add_string("general.architecture", "mamba").unwrap();
    // The registry lists the families it knows; only llama is certain to be among them.
    assert_both_fail(&TempModel::new("mamba", &w.to_bytes()), &["mamba", "llama"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let mut w = minimal_llama();
    assert!(w.remove_tensor("blk.0.ffn_gate.weight"));
    assert_both_fail(&TempModel::new("missing", &w.to_bytes()), &["blk.0.ffn_gate.weight"]);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let mut w = minimal_llama();
    w.add_f32_tensor("blk.0.attn_k.weight", &[HIDDEN, HIDDEN], &vec![0.0; HIDDEN * HIDDEN]).unwrap();
    assert_both_fail(&TempModel::new("shape", &w.to_bytes()), &["blk.0.attn_k.weight"]);
}

#[test]
fn absurd_dimensions_are_refused_before_anything_is_allocated() {
    // 2^40 layers would be a 2^40-entry per-layer vector; 2^40 wide, a 2^40-element matrix.
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.context_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.key_length",
    ] {
        let mut w = minimal_llama();
        w.add_u64(key, 1 << 40).unwrap();
        assert_both_fail(&TempModel::new("absurd", &w.to_bytes()), &[key]);
    }
}
