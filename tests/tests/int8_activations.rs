//! `--activations q8` through the binary: the flag reaches the model (a server with it answers
//! the golden haiku chat as the float reference does, while its decode steps take the integer
//! kernels), and where it cannot apply — dense weights, or an unknown value — start-up fails
//! with a message that names the flag's values, without a panic.

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use stellarchat_tests::{Server, binary, default_model, repo_root};

/// The golden data's haiku chat: its greedy answer is equal to the float reference's for
/// all 24 tokens with 8-bit activations (`model/tests/golden.rs`).
async fn haiku(server: &Server) -> Value {
    let body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [
            {"role": "system", "content": "You are a poet. Answer in one haiku."},
            {"role": "user", "content": "Describe the sea."}
        ],
        "temperature": 0,
        "max_tokens": 12,
        "logprobs": true
    });
    let (status, reply) = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}\n{}", server.logs());
    reply
}

/// The chosen tokens' log-probabilities.
fn logprobs(reply: &Value) -> Vec<f64> {
    let tokens = reply["choices"][0]["logprobs"]["content"].as_array().expect("logprobs");
    tokens.iter().map(|t| t["logprob"].as_f64().expect("logprob")).collect()
}

#[tokio::test]
async fn a_server_with_q8_activations_answers_like_the_reference() {
    let q8 = haiku(&Server::default_model(&["--activations", "q8"]).await).await;
    let f32 = haiku(&Server::default_model(&[]).await).await;
    let content = q8["choices"][0]["message"]["content"].as_str().expect("content");
    assert!(content.starts_with("The sea is a reflection of the soul."), "{content}");
    assert_eq!(q8["choices"][0]["message"]["content"], f32["choices"][0]["message"]["content"]);
    // The same tokens, but not the same arithmetic: the decode steps' log-probabilities move
    // (by up to ~0.1 here), which shows the flag reached the products.
    let (a, b) = (logprobs(&q8), logprobs(&f32));
    assert_eq!(a.len(), 12);
    let moved = a.iter().zip(&b).skip(1).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-4, "q8 and f32 log-probabilities are identical: {a:?}");
}

/// `serve` with the given extra flags exits non-zero, without a panic; its stderr.
fn serve_fails(extra: &[&str]) -> String {
    let model = default_model();
    let output = Command::new(binary())
        .args(["serve", "--model", model.to_str().expect("utf-8"), "--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve {extra:?} should fail:\n{stderr}");
    assert!(output.status.code().is_some() && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn q8_activations_with_dense_weights_are_refused_at_start_up() {
    let stderr = serve_fails(&["--activations", "q8", "--weights", "dense"]);
    assert!(stderr.contains("q8 activations need quantized weights"), "{stderr}");
}

#[test]
fn an_unknown_activation_format_lists_the_valid_ones() {
    let stderr = serve_fails(&["--activations", "q4"]);
    assert!(stderr.contains("expected f32 or q8"), "{stderr}");
}
