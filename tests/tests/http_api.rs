//! The HTTP API against the real binary and the default model: golden greedy output,
//! SSE framing byte for byte, completions, errors, and the metrics that count it all.

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, golden_chat, routes, sse_frames};

fn capital_request(extra: Value) -> Value {
    let chat = golden_chat("capital");
    let mut body = json!({"model": DEFAULT_MODEL_NAME, "messages": chat["messages"], "temperature": 0});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    server.post_json(path, body).await
}

/// The expected bytes of a chat chunk, in OpenAI's key order.
fn chunk_frame(id: &str, created: u64, choice: &str, usage: bool) -> String {
    let usage = if usage { ",\"usage\":null" } else { "" };
    format!(
        "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"{DEFAULT_MODEL_NAME}\",\"system_fingerprint\":null,\"choices\":[{choice}]{usage}}}"
    )
}

#[tokio::test]
async fn golden_chat_json_sse_and_completions() {
    let server = Server::default_model(&[]).await;
    let golden = golden_chat("capital");
    let expected = golden["reference_greedy_text"].as_str().unwrap();
    assert_eq!(expected, "The capital of France is Paris.");
    let prompt_tokens = golden["ids"].as_array().unwrap().len() as u64;

    // Non-streaming.
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], DEFAULT_MODEL_NAME);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens);
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((7..=8).contains(&completion_tokens), "{body}");

    // Streaming, byte for byte.
    let res = client()
        .post(server.url(routes::CHAT_COMPLETIONS))
        .json(&capital_request(json!({"stream": true, "stream_options": {"include_usage": true}})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let text = res.text().await.unwrap();
    let frames = sse_frames(&text);
    assert_eq!(frames.last().unwrap(), "data: [DONE]", "{text}");
    let first: Value = serde_json::from_str(&frames[0]["data: ".len()..]).unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("chatcmpl-"));
    let created = first["created"].as_u64().unwrap();
    let choice = |delta: &str, finish: &str| {
        format!("{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}")
    };
    assert_eq!(frames[0], chunk_frame(&id, created, &choice(r#"{"role":"assistant","content":""}"#, "null"), true));
    let n = frames.len();
    // Content chunks: each exactly one content delta; together the golden text.
    let mut content = String::new();
    for frame in &frames[1..n - 3] {
        let v: Value = serde_json::from_str(&frame["data: ".len()..]).unwrap();
        let piece = v["choices"][0]["delta"]["content"].as_str().expect("a content delta").to_string();
        let delta = format!("{{\"content\":{}}}", serde_json::to_string(&piece).unwrap());
        assert_eq!(*frame, chunk_frame(&id, created, &choice(&delta, "null"), true));
        content.push_str(&piece);
    }
    assert_eq!(content, expected);
    assert_eq!(frames[n - 3], chunk_frame(&id, created, &choice("{}", "\"stop\""), true));
    let usage = format!(
        "{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":",
        prompt_tokens + completion_tokens
    );
    let usage_prefix = format!(
        "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"{DEFAULT_MODEL_NAME}\",\"system_fingerprint\":null,\"choices\":[],\"usage\":{usage}"
    );
    assert!(frames[n - 2].starts_with(&usage_prefix), "{}\nvs\n{usage_prefix}", frames[n - 2]);
    assert!(frames[n - 2].ends_with("}}}"));

    // The legacy API on the rendered prompt gives the same text.
    let body = json!({
        "model": DEFAULT_MODEL_NAME,
        "prompt": golden["prompt"],
        "max_tokens": 20,
        "temperature": 0,
    });
    let (status, out) = post(&server, routes::COMPLETIONS, &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["choices"][0]["text"], expected);
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], prompt_tokens);

    // Legacy streaming: same text, finish chunk, [DONE].
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let text = client().post(server.url(routes::COMPLETIONS)).json(&stream).send().await.unwrap().text().await.unwrap();
    let chunks = stellarchat_tests::sse_json(&text);
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(joined, expected);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn sampling_controls_and_errors() {
    let server = Server::default_model(&["--max-body-bytes", "100000"]).await;

    // max_tokens → finish_reason "length".
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"max_tokens": 3}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["message"]["content"], "The capital of");

    // stop: the text ends before it, finish_reason "stop".
    let (_, body) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"stop": [" Paris"]}))).await;
    assert_eq!(body["choices"][0]["message"]["content"], "The capital of France is");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // seed: same seed, same sample.
    let sampled = capital_request(json!({"temperature": 1.0, "seed": 1234, "max_tokens": 12}));
    let (_, a) = post(&server, routes::CHAT_COMPLETIONS, &sampled).await;
    let (_, b) = post(&server, routes::CHAT_COMPLETIONS, &sampled).await;
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);

    // n and logprobs.
    let (_, body) = post(
        &server,
        routes::CHAT_COMPLETIONS,
        &capital_request(json!({"n": 2, "max_tokens": 4, "logprobs": true, "top_logprobs": 2})),
    )
    .await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let lp = choices[0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 4);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(lp[0]["logprob"].as_f64().unwrap() <= 0.0);

    // Errors: OpenAI's object, with the statuses of DESIGN.md.
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"temperature": 5}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "temperature");
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"model": "gpt-4o"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (status, body) = post(
        &server,
        routes::CHAT_COMPLETIONS,
        &capital_request(json!({"max_tokens": 10, "messages": [{"role": "user", "content": "hi ".repeat(9000)}]})),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{body}");
    let big = json!({"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    let (status, body) = post(&server, routes::CHAT_COMPLETIONS, &big).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let res = client()
        .post(server.url(routes::CHAT_COMPLETIONS))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = client().get(server.url("/v1/unknown")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.json::<Value>().await.unwrap()["error"]["message"].is_string());

    // Tokenize / detokenize round trip on the golden chat.
    let golden = golden_chat("capital");
    let (status, out) =
        post(&server, routes::TOKENIZE, &json!({"model": DEFAULT_MODEL_NAME, "messages": golden["messages"]})).await;
    assert_eq!(status, 200);
    assert_eq!(out["tokens"], golden["ids"]);
    assert_eq!(out["count"], golden["ids"].as_array().unwrap().len());
    let (_, out) =
        post(&server, routes::DETOKENIZE, &json!({"model": DEFAULT_MODEL_NAME, "tokens": golden["ids"]})).await;
    assert_eq!(out["prompt"], golden["prompt"]);
}

#[tokio::test]
async fn metrics_count_what_was_done() {
    let server = Server::default_model(&[]).await;
    let chat = r#"stellarchat:requests_total{route="/v1/chat/completions",status="200"}"#;
    assert_eq!(server.metric(chat).await, None, "nothing counted yet");
    for _ in 0..2 {
        let (status, _) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"max_tokens": 4}))).await;
        assert_eq!(status, 200);
    }
    let (status, _) = post(&server, routes::CHAT_COMPLETIONS, &capital_request(json!({"top_p": 0}))).await;
    assert_eq!(status, 400);
    assert_eq!(server.metric(chat).await, Some(2.0));
    assert_eq!(
        server.metric(r#"stellarchat:requests_total{route="/v1/chat/completions",status="400"}"#).await,
        Some(1.0)
    );
    assert_eq!(server.metric("stellarchat:generation_tokens_total").await, Some(8.0));
    let success = format!(r#"stellarchat:request_success_total{{finished_reason="length",model="{DEFAULT_MODEL_NAME}"}}"#);
    assert_eq!(server.metric(&success).await, Some(2.0));
    // The engine updates its running count just after it sends the last event.
    for _ in 0..100 {
        if server.metric("stellarchat:num_requests_running").await == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("stellarchat:num_requests_running").await, Some(0.0));
    assert_eq!(server.metric("stellarchat:time_to_first_token_seconds_count").await, Some(2.0));
    assert!(server.metric("stellarchat:prompt_tokens_total").await.unwrap() >= 2.0 * 37.0);
    assert!(server.metric("process_resident_memory_bytes").await.unwrap() > 0.0);
}
