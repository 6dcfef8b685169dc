//! The supervised engine on the real binary, with the hidden test-only `--fault-injection`
//! flag: a step that panics answers its request with a 500 `internal_error` and the server
//! serves on (counted in `engine_failures_total`); steps that keep failing make the process
//! exit non-zero, so that an orchestrator restarts it.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, routes};

fn chat(stream: bool) -> Value {
    json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "max_tokens": 8,
        "ignore_eos": true,
        "stream": stream,
    })
}

fn assert_engine_fault(status: u16, body: &Value) {
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    // The panic's text stays in the log.
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("fault injection"), "internal detail leaked: {message}");
}

#[tokio::test]
async fn a_step_that_panics_fails_its_request_with_a_500_and_the_server_serves_on() {
    // Step 0 is the first request's prefill.
    let server = Server::default_model(&["--fault-injection", "panic-at-step=0"]).await;
    let (status, body) = server.post_json(routes::CHAT_COMPLETIONS, &chat(false)).await;
    assert_engine_fault(status, &body);

    let (status, body) = server.post_json(routes::CHAT_COMPLETIONS, &chat(false)).await;
    assert_eq!(status, 200, "the request after the fault: {body}");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let ready = client().get(server.url(routes::READY)).send().await.expect("ready");
    assert_eq!(ready.status(), 200);
    assert_eq!(server.metric("stellarchat:engine_failures_total").await, Some(1.0));
    assert_eq!(server.metric("stellarchat:num_requests_running").await, Some(0.0));
    assert!(server.logs().contains("an engine step panicked"), "{}", server.logs());
}

#[tokio::test]
async fn steps_that_keep_failing_end_the_process_with_a_non_zero_status() {
    // Step 0 (the prefill) works and streams a first token; every later step panics.
    let mut server = Server::default_model(&["--fault-injection", "panic-from-step=1"]).await;

    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&chat(true)).send().await.expect("stream");
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    // A first token, then the failure as an error chunk, then the end of the stream.
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.contains("\"code\":\"internal_error\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Two more failed steps in a row: the engine gives up and the server exits.
    // The third failure stops the engine and starts the server's shutdown; its own request
    // still gets the step's 500 (the shutdown waits for it: it counts as running from before
    // its submission, see `Generation::start`).
    for attempt in 0..2 {
        let (status, body) = server.post_json(routes::CHAT_COMPLETIONS, &chat(false)).await;
        assert_eq!(status, 500, "attempt {attempt}: {body}");
        assert_engine_fault(status, &body);
    }
    let status = server.wait_exit(Duration::from_secs(30)).await.expect("the server exits after the engine fails");
    assert!(!status.success(), "exit status {status:?}");
    let logs = server.logs();
    assert!(logs.contains("the engine failed; shutting down"), "{logs}");
}
