//! Gemma 3 270M (a base model whose file has no chat template) served by the real binary:
//! completions work and use llama.cpp's prompt ids; chat is a helpful 400 until
//! `--chat-template` gives a template, and then it works.

use std::path::PathBuf;

use serde_json::{Value, json};
use stellarchat_tests::{Server, repo_root, routes};

const MODEL_NAME: &str = "gemma-3-270m-q4_k_m";
const START_OF_TURN: u64 = 105;
const END_OF_TURN: u64 = 106;
const NEWLINE: u64 = 107;
const BOS: u64 = 2;

/// The Gemma file; a missing file fails the test with the command that fetches it.
fn gemma_model() -> PathBuf {
    let path = repo_root().join("weights/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run `just weights gemma3` (`just test` does)", path.display());
    path
}

fn golden_prompts() -> Vec<Value> {
    let path = repo_root().join("tests/golden/gemma-3-270m-q4_k_m.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let golden: Value = serde_json::from_str(&text).expect("golden JSON");
    golden["prompts"].as_array().expect("prompts").clone()
}

async fn gemma_server(extra: &[&str]) -> Server {
    let model = gemma_model();
    let mut args = vec!["--model", model.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let server = Server::start(&args).await;
    server.wait_ready().await;
    server
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    server.post_json(path, body).await
}

fn hello_chat() -> Value {
    json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
           "max_tokens": 4, "temperature": 0})
}

#[tokio::test]
async fn gemma_completes_and_refuses_chat_without_a_template() {
    let server = gemma_server(&[]).await;
    for prompt in golden_prompts().iter().filter(|p| p["ids"].as_array().unwrap().len() < 100) {
        let body = json!({"model": MODEL_NAME, "prompt": prompt["prompt"], "max_tokens": 3, "temperature": 0});
        let (status, body) = post(&server, routes::COMPLETIONS, &body).await;
        assert_eq!(status, 200, "{body}");
        // The prompt was tokenized exactly as llama.cpp does it (BOS included).
        assert_eq!(body["usage"]["prompt_tokens"], prompt["ids"].as_array().unwrap().len(), "{body}");
        let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=3).contains(&completion_tokens), "{body}");
        assert!(body["choices"][0]["text"].is_string(), "{body}");
    }

    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &hello_chat()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--chat-template") && message.contains("/v1/completions"), "{message}");
    assert!(server.logs().contains("no chat template"), "{}", server.logs());
}

#[tokio::test]
async fn gemma_chats_with_a_chat_template_file() {
    let template = repo_root().join("tests/fixtures/gemma3-chat.jinja");
    let server = gemma_server(&["--chat-template", template.to_str().unwrap()]).await;

    let messages = json!([
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What is the capital of France?"}
    ]);
    let (status, body) = post(&server, routes::TOKENIZE, &json!({"messages": messages})).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<u64> = body["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // One BOS (the template writes it; the tokenizer does not add a second), the turn
    // markers as single control tokens, and the open model turn at the end.
    assert_eq!(&ids[..3], &[BOS, START_OF_TURN, ids[2]]);
    assert_eq!(ids.iter().filter(|&&id| id == BOS).count(), 1, "{ids:?}");
    assert_eq!(&ids[ids.len() - 5..], &[END_OF_TURN, NEWLINE, START_OF_TURN, ids[ids.len() - 2], NEWLINE]);
    let (status, text) = post(&server, routes::DETOKENIZE, &json!({"tokens": ids})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text["prompt"],
        "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );

    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &hello_chat()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=4).contains(&completion_tokens), "{body}");
}

#[test]
fn generate_with_messages_needs_a_template_for_gemma() {
    let model = gemma_model();
    let dir = std::env::temp_dir().join(format!("stellarchat-gemma-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let messages = dir.join("messages.json");
    std::fs::write(&messages, r#"[{"role":"user","content":"Hi"}]"#).expect("write");
    let run = |extra: &[&str]| {
        std::process::Command::new(stellarchat_tests::binary())
            .args(["generate", "--model", model.to_str().unwrap(), "--messages", messages.to_str().unwrap()])
            .args(["--max-tokens", "2", "--json"])
            .args(extra)
            .output()
            .expect("run stellarchat")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--chat-template"), "{stderr}");

    let template = repo_root().join("tests/fixtures/gemma3-chat.jinja");
    let out = run(&["--chat-template", template.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let prompt: Vec<u64> = json["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(&prompt[..2], &[BOS, START_OF_TURN]);
    assert_eq!(prompt[prompt.len() - 3..], [START_OF_TURN, prompt[prompt.len() - 2], NEWLINE]);
    let _ = std::fs::remove_dir_all(&dir);
}
