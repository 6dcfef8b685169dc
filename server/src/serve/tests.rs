//! In-process tests of the whole service (routing, validation statuses, auth, CORS,
//! request ids, metrics, SSE framing) with salvo's `TestClient`, on a real engine running
//! the `synthetic:tiny` model (random weights, milliseconds per step, no file needed).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use serde_json::{Value, json};
use super::state::AppState;
use super::{ServeArgs, build_state, open_models, routes};

const BASE: &str = "http://127.0.0.1:8080";
const MODEL: &str = "synthetic-tiny";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

struct App {
    service: Service,
    state: Arc<AppState>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.state.models.shutdown();
    }
}

async fn app(extra: &[&str]) -> App {
    let mut argv = vec!["stellarchat", "--model", "synthetic:tiny"];
    argv.extend_from_slice(extra);
    let args = Cli::try_parse_from(argv).expect("flags").serve;
    let metrics = Arc::new(super::metrics::Metrics::new().expect("metrics"));
    let (models, _events) = open_models(&args, metrics.clone()).expect("synthetic model");
    for _ in 0..600 {
        if models.check_ready().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    models.check_ready().expect("the synthetic engine did not load in time");
    let keys = args.load_api_keys().expect("keys");
    let state = build_state(&args, models, metrics, keys);
    App { service: super::router::service(state.clone(), &args.cors_origins), state }
}

fn url(path: &str) -> String {
    format!("{BASE}{path}")
}

async fn json_of(res: &mut Response) -> Value {
    res.take_json::<Value>().await.expect("a JSON body")
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 5,
        "temperature": 0,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// Asserts an OpenAI error object with this status, code and param.
async fn assert_error(res: &mut Response, status: u16, code: Option<&str>, param: Option<&str>) -> Value {
    assert_eq!(res.status_code.map(|s| s.as_u16()), Some(status));
    let body = json_of(res).await;
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"].as_str(), code, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    body
}

/// Slow and hostile clients: content types, auth challenges, the metrics key, WebSocket
/// origins.
mod hostile;

#[tokio::test]
async fn health_ready_and_models() {
    let app = app(&[]).await;
    let mut res = TestClient::get(url(routes::HEALTH)).send(&app.service).await;
    assert_eq!(json_of(&mut res).await, json!({"status": "ok"}));
    let mut res = TestClient::get(url(routes::READY)).send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(json_of(&mut res).await["status"], "ready");

    let mut res = TestClient::get(url(routes::MODELS)).send(&app.service).await;
    let body = json_of(&mut res).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL);
    assert_eq!(body["data"][0]["object"], "model");

    let mut res = TestClient::get(url(&format!("/v1/models/{MODEL}"))).send(&app.service).await;
    assert_eq!(json_of(&mut res).await["id"], MODEL);
    let mut res = TestClient::get(url("/v1/models/org/other")).send(&app.service).await;
    assert_error(&mut res, 404, Some("model_not_found"), Some("model")).await;
}

#[tokio::test]
async fn ready_is_503_while_draining() {
    let app = app(&[]).await;
    app.state.lifecycle.begin_drain();
    let mut res = TestClient::get(url(routes::READY)).send(&app.service).await;
    assert_error(&mut res, 503, Some("shutting_down"), None).await;
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&chat_body(json!({}))).send(&app.service).await;
    assert_error(&mut res, 503, Some("shutting_down"), None).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_openai_errors() {
    let app = app(&[]).await;
    let mut res = TestClient::get(url("/v1/nope")).send(&app.service).await;
    assert_error(&mut res, 404, Some("route_not_found"), None).await;
    let mut res = TestClient::get(url(routes::CHAT_COMPLETIONS)).send(&app.service).await;
    assert_error(&mut res, 405, Some("method_not_allowed"), None).await;
}

#[tokio::test]
async fn chat_completion_json() {
    let app = app(&[]).await;
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&chat_body(json!({}))).send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let body = json_of(&mut res).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert!(matches!(choice["finish_reason"].as_str(), Some("stop" | "length")));
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 5);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
}

#[tokio::test]
async fn greedy_is_deterministic_and_n_gives_indexed_choices() {
    let app = app(&[]).await;
    let body = chat_body(json!({"n": 2, "max_tokens": 4}));
    let mut a = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&body).send(&app.service).await;
    let a = json_of(&mut a).await;
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    // Temperature 0: both choices are the argmax path.
    assert_eq!(choices[0]["message"], choices[1]["message"]);
}

#[tokio::test]
async fn chat_stream_is_framed_like_openai() {
    let app = app(&[]).await;
    let body = chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 3, "ignore_eos": true}),
    );
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&body).send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert_eq!(res.headers().get("content-type").unwrap(), "text/event-stream");
    assert_eq!(res.headers().get("x-accel-buffering").unwrap(), "no");
    let text = res.take_string().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(frames.iter().all(|f| f.starts_with("data: ")), "{text}");
    let chunks: Vec<Value> =
        frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(&f["data: ".len()..]).unwrap()).collect();
    // Role chunk first, with usage null (include_usage).
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert!(chunks[0].as_object().unwrap().contains_key("usage"));
    // The finishing chunk: empty delta, finish_reason "length" (ignore_eos, 3 tokens).
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    // The usage chunk: no choices.
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 3);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_field() {
    let app = app(&[]).await;
    let body = chat_body(json!({"stream": true, "max_tokens": 2}));
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&body).send(&app.service).await;
    let text = res.take_string().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn completions_json_and_stream() {
    let app = app(&[]).await;
    let body = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 3, "temperature": 0, "ignore_eos": true, "logprobs": 2});
    let mut res = TestClient::post(url(routes::COMPLETIONS)).json(&body).send(&app.service).await;
    let out = json_of(&mut res).await;
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 3);
    let lp = &out["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), lp["token_logprobs"].as_array().unwrap().len());

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let mut res = TestClient::post(url(routes::COMPLETIONS)).json(&stream).send(&app.service).await;
    let text = res.take_string().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"finish_reason\":\"length\""));
}

#[tokio::test]
async fn validation_statuses() {
    let app = app(&["--max-body-bytes", "2000", "--max-model-len", "40"]).await;
    let post = |body: Vec<u8>| {
        TestClient::post(url(routes::CHAT_COMPLETIONS)).add_header("content-type", "application/json", true).bytes(body)
    };
    let mut res = post(b"{not json".to_vec()).send(&app.service).await;
    assert_error(&mut res, 400, None, None).await;
    let mut res = post(b"\xff\xfe".to_vec()).send(&app.service).await;
    assert_error(&mut res, 400, None, None).await;
    let mut res = post(vec![b' '; 5000]).send(&app.service).await;
    assert_error(&mut res, 413, Some("payload_too_large"), None).await;
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS))
        .json(&chat_body(json!({"temperature": 3})))
        .send(&app.service)
        .await;
    assert_error(&mut res, 400, None, Some("temperature")).await;
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS))
        .json(&chat_body(json!({"functions": [{"name": "f"}]})))
        .send(&app.service)
        .await;
    assert_error(&mut res, 400, Some("unsupported_parameter"), Some("functions")).await;
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS))
        .json(&chat_body(json!({"model": "nope"})))
        .send(&app.service)
        .await;
    assert_error(&mut res, 404, Some("model_not_found"), Some("model")).await;
    let long = "word ".repeat(60);
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS))
        .json(&chat_body(json!({"messages": [{"role": "user", "content": long}]})))
        .send(&app.service)
        .await;
    assert_error(&mut res, 400, Some("context_length_exceeded"), Some("messages")).await;
    let mut res = TestClient::post(url(routes::COMPLETIONS))
        .json(&json!({"model": MODEL, "prompt": "x", "suffix": "y"}))
        .send(&app.service)
        .await;
    // The synthetic vocabulary has no fill-in-the-middle tokens.
    assert_error(&mut res, 400, Some("unsupported_parameter"), Some("suffix")).await;
}

#[tokio::test]
async fn full_queue_is_429_with_retry_after() {
    // Room for one sequence: the second choice of n = 2 finds the engine full. The first runs
    // 400 tokens, so it still holds its slot however long this thread waits between the two
    // submits on a loaded machine (5 tokens of the tiny model took a few milliseconds).
    let app = app(&["--max-num-seqs", "1", "--max-queue", "0"]).await;
    let body = chat_body(json!({"n": 2, "max_tokens": 400, "ignore_eos": true}));
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).json(&body).send(&app.service).await;
    if res.headers().get("retry-after").is_none() {
        let status = res.status_code;
        panic!("no Retry-After: {status:?} {:?}", res.take_string().await);
    }
    assert_error(&mut res, 429, Some("overloaded"), None).await;
}

#[tokio::test]
async fn api_keys_guard_the_api_only() {
    let app = app(&["--api-key", "sk-a", "--api-key", "sk-b"]).await;
    let mut res = TestClient::get(url(routes::MODELS)).send(&app.service).await;
    let body = assert_error(&mut res, 401, Some("invalid_api_key"), None).await;
    assert_eq!(body["error"]["type"], "authentication_error");
    let mut res = TestClient::get(url(routes::MODELS)).bearer_auth("sk-wrong").send(&app.service).await;
    assert_error(&mut res, 401, Some("invalid_api_key"), None).await;
    let res = TestClient::get(url(routes::MODELS)).bearer_auth("sk-b").send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let res = TestClient::post(url(routes::TOKENIZE)).json(&json!({"prompt": "x"})).send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    let res = TestClient::get(url(routes::CHAT_WS)).send(&app.service).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    for open in [routes::HEALTH, routes::READY, routes::METRICS] {
        let res = TestClient::get(url(open)).send(&app.service).await;
        assert_eq!(res.status_code, Some(StatusCode::OK), "{open}");
    }
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let app = app(&["--cors-origin", "http://app.example"]).await;
    let res = TestClient::options(url(routes::CHAT_COMPLETIONS))
        .add_header("origin", "http://app.example", true)
        .add_header("access-control-request-method", "POST", true)
        .add_header("access-control-request-headers", "authorization,content-type", true)
        .send(&app.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::NO_CONTENT));
    assert_eq!(res.headers().get("access-control-allow-origin").unwrap(), "http://app.example");
    assert!(res.headers().get("access-control-allow-methods").unwrap().to_str().unwrap().contains("POST"));
    let res =
        TestClient::get(url(routes::MODELS)).add_header("origin", "http://app.example", true).send(&app.service).await;
    assert_eq!(res.headers().get("access-control-allow-origin").unwrap(), "http://app.example");
    let res =
        TestClient::get(url(routes::MODELS)).add_header("origin", "http://evil.example", true).send(&app.service).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = app(&[]).await;
    let res = TestClient::get(url(routes::HEALTH)).add_header("x-request-id", "my-id-1", true).send(&app.service).await;
    assert_eq!(res.headers().get("x-request-id").unwrap(), "my-id-1");
    let res = TestClient::get(url(routes::HEALTH)).send(&app.service).await;
    let made = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_string();
    assert!(made.len() >= 16, "{made}");
    // Errors carry it too, and the chat id is derived from it.
    let res = TestClient::get(url("/nope")).add_header("x-request-id", "e-1", true).send(&app.service).await;
    assert_eq!(res.headers().get("x-request-id").unwrap(), "e-1");
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS))
        .add_header("x-request-id", "r-7", true)
        .json(&chat_body(json!({})))
        .send(&app.service)
        .await;
    assert_eq!(json_of(&mut res).await["id"], "chatcmpl-r-7");
}

#[tokio::test]
async fn metrics_count_requests_and_tokens() {
    let app = app(&[]).await;
    TestClient::post(url(routes::CHAT_COMPLETIONS))
        .json(&chat_body(json!({"ignore_eos": true})))
        .send(&app.service)
        .await;
    TestClient::get(url("/v1/missing")).send(&app.service).await;
    TestClient::get(url("/v1/models/org/x")).send(&app.service).await;
    // The engine updates its running count just after it sends the last event.
    let mut text = String::new();
    for _ in 0..100 {
        let mut res = TestClient::get(url(routes::METRICS)).send(&app.service).await;
        text = res.take_string().await.unwrap();
        if text.contains(r#"stellarchat:num_requests_running{model="synthetic-tiny"} 0"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.contains(r#"stellarchat:requests_total{route="/v1/chat/completions",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"stellarchat:requests_total{route="unmatched",status="404"} 1"#), "{text}");
    // Parametrized routes are labelled by their pattern, not the raw path.
    assert!(text.contains(r#"stellarchat:requests_total{route="/v1/models/{**id}",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"stellarchat:errors_total{kind="model_not_found"} 1"#), "{text}");
    // Generation and engine figures are labelled by model.
    assert!(text.contains(r#"stellarchat:generation_tokens_total{model="synthetic-tiny"} 5"#), "{text}");
    assert!(text.contains(r#"stellarchat:num_requests_running{model="synthetic-tiny"} 0"#), "{text}");
    assert!(
        text.contains(r#"stellarchat:request_success_total{finished_reason="length",model="synthetic-tiny"} 1"#),
        "{text}"
    );
    assert!(text.contains("stellarchat:models_loaded 1"), "{text}");
    assert!(text.contains(r#"stellarchat:model_loads_total{model="synthetic-tiny",outcome="loaded"} 1"#), "{text}");
    for name in [
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "num_requests_waiting",
        "prompt_tokens_total",
        "kv_cache_usage_perc",
        "request_duration_seconds",
    ] {
        assert!(text.contains(&format!("stellarchat:{name}")), "{name} missing");
    }
}

#[tokio::test]
async fn tokenize_and_detokenize() {
    let app = app(&[]).await;
    let mut res = TestClient::post(url(routes::TOKENIZE))
        .json(&json!({"model": MODEL, "prompt": "hello", "add_special_tokens": false}))
        .send(&app.service)
        .await;
    let out = json_of(&mut res).await;
    let tokens = out["tokens"].clone();
    assert_eq!(out["count"].as_u64(), Some(tokens.as_array().unwrap().len() as u64));
    assert!(out["max_model_len"].as_u64().unwrap() > 0);
    let mut res = TestClient::post(url(routes::DETOKENIZE)).json(&json!({"tokens": tokens})).send(&app.service).await;
    assert_eq!(json_of(&mut res).await["prompt"], "hello");
    let mut res = TestClient::post(url(routes::TOKENIZE))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send(&app.service)
        .await;
    assert!(json_of(&mut res).await["count"].as_u64().unwrap() > 1);
    let mut res = TestClient::post(url(routes::DETOKENIZE)).json(&json!({"tokens": [999999]})).send(&app.service).await;
    assert_error(&mut res, 400, None, Some("tokens")).await;
}

#[tokio::test]
async fn openapi_document_describes_the_real_types() {
    let app = app(&[]).await;
    let mut res = TestClient::get(url(routes::OPENAPI)).send(&app.service).await;
    let doc = json_of(&mut res).await;
    for path in [routes::CHAT_COMPLETIONS, routes::COMPLETIONS, routes::MODELS, routes::TOKENIZE] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.keys().any(|k| k.contains("ChatCompletionRequest")), "{:?}", schemas.keys());
    let res = TestClient::get(url(routes::DOCS)).send(&app.service).await;
    assert!(res.status_code.is_some_and(|s| s.is_success() || s.is_redirection()));
}
