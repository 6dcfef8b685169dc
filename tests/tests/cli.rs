//! The `stellarchat` binary from the command line: generation on the default model, and
//! bad input ending in a clear error and a non-zero exit code, never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STELLARCHAT_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/stellarchat")
}

fn default_model() -> String {
    repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf").to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()))
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(stderr.contains(needle), "stderr should mention `{needle}`: {stderr}");
}

#[test]
fn generate_answers_the_capital_question() {
    let dir = std::env::temp_dir().join(format!("stellarchat-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let messages = dir.join("messages.json");
    std::fs::write(&messages, r#"[{"role":"user","content":"What is the capital of France?"}]"#).expect("write");
    let model = default_model();
    let out = run(&["generate", "--model", &model, "--messages", messages.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["text"], "The capital of France is Paris.");
    assert_eq!(json["finish_reason"], "stop");
    assert_eq!(json["prompt_ids"].as_array().map(Vec::len), Some(37));
    assert!(json["decode_tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0);

    let out = run(&["generate", "--model", &model, "--messages", messages.to_str().expect("utf-8")]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "The capital of France is Paris.");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_stops_at_max_tokens() {
    let model = default_model();
    let out = run(&["generate", "--model", &model, "--prompt", "Once upon a time", "--max-tokens", "5", "--ignore-eos", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["ids"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["finish_reason"], "length");
}

#[test]
fn tokenize_prints_llama_cpp_ids() {
    let model = default_model();
    let out = run(&["tokenize", "--model", &model, "Hello world"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[19556,905]");
    let out = run(&["tokenize", "--model", &model, "--parse-special", "<|im_start|>"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[1]");
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let out = run(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"]);
    assert_clean_failure(&out, "/nonexistent/model.gguf");
}

#[test]
fn a_file_that_is_not_gguf_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("stellarchat-not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, b"this is not a model file at all").expect("write");
    let out = run(&["generate", "--model", path.to_str().expect("utf-8"), "--prompt", "hi"]);
    assert_clean_failure(&out, "not a GGUF file");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unknown_device_lists_the_compiled_backends() {
    let out = run(&["generate", "--model", &default_model(), "--device", "tpu", "--prompt", "hi"]);
    assert_clean_failure(&out, "flex");
    let out = run(&["generate", "--model", &default_model(), "--device", "cuda", "--prompt", "hi"]);
    // CI builds never include CUDA (its build needs network access).
    assert_clean_failure(&out, "not compiled into this build");
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    // A minimal GGUF v3 header with one metadata key: general.architecture = "mamba".
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"GGUF");
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(b"mamba");
    let path = std::env::temp_dir().join(format!("stellarchat-mamba-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).expect("write");
    let out = run(&["generate", "--model", path.to_str().expect("utf-8"), "--prompt", "hi"]);
    assert_clean_failure(&out, "mamba");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn version_lists_the_compiled_backends() {
    let out = run(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("backends: flex"));
}
