//! Hugging Face checkpoints against the real binary: `stellarchat export-hf` writes one from
//! the default model, `serve --model DIR` serves it, and a chat completion at temperature 0
//! is the GGUF server's, word for word. A directory that is not a checkpoint makes `serve`
//! exit non-zero with a message naming the file at fault.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use stellarchat_tests::{Server, binary, client, default_model, golden_chat, repo_root, routes};

/// A directory under the target directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The id `/v1/models` lists first.
async fn served_name(server: &Server) -> String {
    let models: Value =
        client().get(server.url(routes::MODELS)).send().await.expect("models").json().await.expect("json");
    models["data"][0]["id"].as_str().expect("a model id").to_string()
}

async fn capital(server: &Server) -> Value {
    let chat = golden_chat("capital");
    let body =
        json!({"model": served_name(server).await, "messages": chat["messages"], "temperature": 0, "max_tokens": 24});
    let (status, answer) = server.post_json(routes::CHAT_COMPLETIONS, &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn an_exported_checkpoint_serves_what_the_gguf_file_serves() {
    let dir = TempDir::new("smollm2");
    let model = default_model();
    let status = Command::new(binary())
        .args(["export-hf", "--model", model.to_str().expect("utf-8"), "--out", dir.path()])
        .current_dir(repo_root())
        .status()
        .expect("run export-hf");
    assert!(status.success(), "export-hf failed: {status}");
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    {
        assert!(dir.0.join(file).is_file(), "{file} was not written");
    }

    let hf = Server::start(&["--model", dir.path()]).await;
    hf.wait_ready().await;
    assert_eq!(served_name(&hf).await, dir.0.file_name().expect("name").to_string_lossy());
    let from_hf = capital(&hf).await;
    drop(hf);
    let gguf = Server::default_model(&[]).await;
    let from_gguf = capital(&gguf).await;
    let choice = |v: &Value| (v["choices"][0]["message"]["content"].clone(), v["choices"][0]["finish_reason"].clone());
    assert_eq!(choice(&from_hf), choice(&from_gguf));
    assert_eq!(from_hf["usage"], from_gguf["usage"]);
    assert_eq!(from_gguf["choices"][0]["message"]["content"], golden_chat("capital")["reference_greedy_text"]);
}

/// `serve --model DIR` exits non-zero; its stderr is returned.
fn serve_fails(dir: &TempDir) -> String {
    let output = Command::new(binary())
        .args(["serve", "--model", dir.path(), "--host", "127.0.0.1", "--port", "0"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve should fail on {}:\n{stderr}", dir.path());
    assert!(output.status.code().is_some(), "killed by a signal:\n{stderr}");
    assert!(!stderr.contains("panicked"), "serve panicked:\n{stderr}");
    stderr
}

#[test]
fn a_directory_that_is_not_a_checkpoint_fails_naming_the_file() {
    let dir = TempDir::new("incomplete");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    std::fs::write(dir.0.join("config.json"), "{}").expect("write");
    let stderr = serve_fails(&dir);
    for needle in ["tokenizer.json", "model.safetensors", "neither a GGUF file nor a complete Hugging Face checkpoint"]
    {
        assert!(stderr.contains(needle), "stderr should mention `{needle}`:\n{stderr}");
    }

    // Complete in name, but config.json is not JSON.
    std::fs::write(dir.0.join("config.json"), "{\"model_type\": ").expect("write");
    std::fs::write(dir.0.join("tokenizer.json"), "{}").expect("write");
    std::fs::write(dir.0.join("model.safetensors"), "").expect("write");
    let stderr = serve_fails(&dir);
    assert!(stderr.contains("config.json") && stderr.contains("not valid JSON"), "{stderr}");
}
