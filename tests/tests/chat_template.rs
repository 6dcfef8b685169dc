//! `--chat-template FILE` on the default model: the file's template replaces the model's own
//! (seen through `/tokenize` and a chat), and a missing or broken file stops `serve` and
//! `generate` at start-up with a clear error and a non-zero exit code.

use std::process::{Command, Output};

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, binary, default_model, repo_root, routes};

fn fixture() -> String {
    repo_root().join("tests/fixtures/gemma3-chat.jinja").to_string_lossy().into_owned()
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    server.post_json(path, body).await
}

#[tokio::test]
async fn a_template_file_replaces_the_models_own() {
    let template = fixture();
    let server = Server::default_model(&["--chat-template", &template]).await;
    let messages = json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Bye"}]);
    let (status, body) = post(&server, routes::TOKENIZE, &json!({"messages": messages})).await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = post(&server, routes::DETOKENIZE, &json!({"tokens": body["tokens"]})).await;
    assert_eq!(status, 200, "{text}");
    // SmolLM2's BOS is <|im_start|>; the turns are Gemma's, not SmolLM2's ChatML.
    assert_eq!(
        text["prompt"],
        "<|im_start|><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    // The template's own raise_exception is a 400 that carries its words.
    let bad = json!({"messages": [{"role": "assistant", "content": "first"}]});
    let (status, body) = post(&server, routes::TOKENIZE, &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("must alternate"), "{body}");

    let chat = json!({"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 3, "temperature": 0});
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &chat).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    assert!(server.logs().contains("--chat-template"), "{}", server.logs());
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()))
}

fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"), "serve started: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr should mention `{needle}`: {stderr}");
    }
}

#[test]
fn a_missing_or_broken_template_file_stops_start_up() {
    let model = default_model();
    let model = model.to_str().expect("utf-8 path");
    let dir = std::env::temp_dir().join(format!("stellarchat-chat-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = dir.join("broken.jinja");
    std::fs::write(&broken, "{% for m in messages %}{{ m.content }}").expect("write");
    let broken = broken.to_str().expect("utf-8 path");
    let missing = "/nonexistent/template.jinja";

    let serve = |template: &str| run(&["serve", "--model", model, "--port", "0", "--chat-template", template]);
    assert_clean_failure(&serve(missing), &["--chat-template", missing]);
    assert_clean_failure(&serve(broken), &["--chat-template", "broken.jinja", "syntax error"]);

    let generate = |template: &str| {
        run(&["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1", "--chat-template", template])
    };
    assert_clean_failure(&generate(missing), &["--chat-template", missing]);
    assert_clean_failure(&generate(broken), &["--chat-template", "syntax error"]);
    let _ = std::fs::remove_dir_all(&dir);
}
