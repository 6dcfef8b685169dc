//! Start-up, disconnects, API keys and shutdown, against the real binary.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, default_model, golden_chat, routes};

fn long_stream(max_tokens: u32) -> Value {
    json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": golden_chat("capital")["messages"],
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": true,
    })
}

async fn wait_running_zero(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = server.metric("stellarchat:num_requests_running").await;
        if running == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "still {running:?} running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_is_503_until_the_model_is_loaded() {
    let model = default_model();
    // Dense weights, so the load takes long enough to be seen (~1.7 s: every block is
    // dequantized); quantized weights are used in place from the file's map and load in ~20 ms.
    let server = Server::start(&["--model", model.to_str().unwrap(), "--weights", "dense"]).await;
    // The port opens before loading ends: liveness answers at once, readiness says 503.
    let health = client().get(server.url(routes::HEALTH)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let first = client().get(server.url(routes::READY)).send().await.unwrap();
    assert_eq!(first.status(), 503, "the model loaded before the first /ready (too fast to observe)");
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
    server.wait_ready().await;
    let ready = client().get(server.url(routes::READY)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_the_engine() {
    let server = Server::default_model(&[]).await;
    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&long_stream(2000)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut received = 0;
    while received < 5 {
        let chunk = body.next().await.expect("more of the stream").unwrap();
        received += chunk.iter().filter(|&&b| b == b'\n').count() / 2;
    }
    assert_eq!(server.metric("stellarchat:num_requests_running").await, Some(1.0));
    drop(body);
    wait_running_zero(&server).await;
    // The next request is served.
    let res = client()
        .post(server.url(routes::CHAT_COMPLETIONS))
        .json(&json!({"model": DEFAULT_MODEL_NAME, "messages": golden_chat("capital")["messages"], "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "The capital of France is Paris.");
    assert!(server.logs().contains("disconnected=true"), "the access log should record the disconnect");
}

#[tokio::test]
async fn api_keys_protect_the_api_but_not_health() {
    let server = Server::default_model(&["--api-key", "sk-test-1"]).await;
    let res = client().get(server.url(routes::MODELS)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let res = client().get(server.url(routes::MODELS)).bearer_auth("sk-test-1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], DEFAULT_MODEL_NAME);
    for open in [routes::HEALTH, routes::READY, routes::METRICS] {
        assert_eq!(client().get(server.url(open)).send().await.unwrap().status(), 200, "{open}");
    }
    // Keys never reach the log.
    assert!(!server.logs().contains("sk-test-1"));
}

#[tokio::test]
async fn sigterm_lets_running_streams_finish() {
    let mut server = Server::default_model(&["--shutdown-timeout", "60"]).await;
    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&long_stream(24)).send().await.unwrap();
    let mut body = res.bytes_stream();
    let first = body.next().await.expect("a first chunk").unwrap();
    assert!(first.starts_with(b"data: "));
    server.terminate();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("the stream finishes cleanly"));
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"));
    let status = server.wait_exit(Duration::from_secs(30)).await.expect("the server exits");
    assert!(status.success(), "exit status {status:?}\n{}", server.logs());
}

#[tokio::test]
async fn shutdown_timeout_cuts_streams_that_run_too_long() {
    let mut server = Server::default_model(&["--shutdown-timeout", "1"]).await;
    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&long_stream(4000)).send().await.unwrap();
    let mut body = res.bytes_stream();
    body.next().await.expect("a first chunk").unwrap();
    let started = Instant::now();
    server.terminate();
    let mut rest = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        rest.extend_from_slice(&chunk);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let rest = String::from_utf8_lossy(&rest);
    // Cut at the timeout: an error event, then [DONE].
    assert!(rest.contains("\"code\":\"shutting_down\""), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let status = server.wait_exit(Duration::from_secs(30)).await.expect("the server exits");
    assert!(status.success(), "{}", server.logs());
}
