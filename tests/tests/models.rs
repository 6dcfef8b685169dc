//! Several models in one server, on the real binary: `/v1/models` lists them all with
//! whether each is loaded; a request naming an unloaded model loads it (and `/ready` stays
//! 200); `--max-loaded-models` unloads the least recently used idle model, `--keep-alive`
//! idle ones, `--pin` keeps one; the admin routes load and unload; metrics carry a `model`
//! label; a model that cannot load is a clear OpenAI error while the others serve; a failed
//! engine is unloaded instead of ending the process. Random-weight `synthetic:tiny` models
//! load in milliseconds, so each test takes about a second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stellarchat_tests::{Server, binary, client, repo_root, routes};

const KEY: &str = "sk-models-test";

fn completion(model: &str) -> Value {
    json!({"model": model, "prompt": "Hello", "max_tokens": 4, "ignore_eos": true, "temperature": 0})
}

async fn send(server: &Server, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = client().request(method, server.url(path)).bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(body);
    } else if path.ends_with("/load") || path.ends_with("/unload") {
        request = request.json(&json!({}));
    }
    let res = request.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    send(server, reqwest::Method::POST, path, Some(body)).await
}

/// `(id, state)` of every model `/v1/models` lists.
async fn listed(server: &Server) -> Vec<(String, String)> {
    let (status, body) = send(server, reqwest::Method::GET, routes::MODELS, None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            assert_eq!(m["loaded"], m["state"] == "loaded", "{m}");
            (m["id"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string())
        })
        .collect()
}

async fn state_of(server: &Server, id: &str) -> String {
    listed(server).await.into_iter().find(|(m, _)| m == id).map(|(_, s)| s).expect("listed")
}

async fn ready(server: &Server) -> u16 {
    client().get(server.url(routes::READY)).send().await.expect("ready").status().as_u16()
}

async fn metric(server: &Server, sample: &str) -> Option<f64> {
    let res = client().get(server.url(routes::METRICS)).send().await.expect("metrics");
    stellarchat_tests::metric_value(&res.text().await.expect("text"), sample)
}

#[tokio::test]
async fn a_request_loads_its_model_and_admins_load_and_unload() {
    let server = Server::start(&[
        "--model", "synthetic:tiny", "--model", "synthetic:tiny:7",
        "--served-model-name", "first", "--served-model-name", "second", "--api-key", KEY,
    ])
    .await;
    server.wait_ready().await;
    assert_eq!(listed(&server).await, vec![("first".into(), "loaded".into()), ("second".into(), "unloaded".into())]);

    let (status, body) = post(&server, routes::COMPLETIONS, &completion("second")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "second");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(ready(&server).await, 200);
    assert_eq!(state_of(&server, "second").await, "loaded");
    assert_eq!(metric(&server, r#"stellarchat:generation_tokens_total{model="second"}"#).await, Some(4.0));
    assert_eq!(metric(&server, r#"stellarchat:model_loads_total{model="second",outcome="loaded"}"#).await, Some(1.0));
    assert_eq!(metric(&server, "stellarchat:models_loaded").await, Some(2.0));

    // The admin routes are behind the API key and need a JSON content type.
    let unauthorized = client().post(server.url("/v1/models/second/unload")).json(&json!({})).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let plain = client().post(server.url("/v1/models/second/unload")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(plain.status(), 415, "a body-less cross-site POST cannot unload a model");
    let (status, card) = send(&server, reqwest::Method::POST, "/v1/models/second/unload", None).await;
    assert_eq!((status, card["loaded"].clone(), card["state"].clone()), (200, json!(false), json!("unloaded")), "{card}");
    assert_eq!(metric(&server, r#"stellarchat:model_unloads_total{model="second",reason="admin"}"#).await, Some(1.0));
    let (status, card) = send(&server, reqwest::Method::POST, "/v1/models/second/load", None).await;
    assert_eq!((status, card["loaded"].clone()), (200, json!(true)), "{card}");
    assert_eq!(card["max_model_len"], 512, "{card}");

    let (status, body) = send(&server, reqwest::Method::POST, "/v1/models/nope/load", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("model_not_found")), "{body}");
    let (status, _) = post(&server, "/v1/models/second/explode", &json!({})).await;
    assert_eq!(status, 405, "a model's own path takes only GET");
    let (status, body) = post(&server, routes::COMPLETIONS, &completion("third")).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("model_not_found")), "{body}");
}

#[tokio::test]
async fn the_least_recently_used_idle_model_makes_room_and_keep_alive_unloads_idle_ones() {
    let server = Server::start(&[
        "--model", "synthetic:tiny", "--model", "synthetic:tiny:2", "--model", "synthetic:tiny:3",
        "--served-model-name", "a,b,c", "--max-loaded-models", "2", "--keep-alive", "8", "--pin", "a",
        "--api-key", KEY,
    ])
    .await;
    server.wait_ready().await;
    assert_eq!(post(&server, routes::COMPLETIONS, &completion("b")).await.0, 200);
    assert_eq!(post(&server, routes::COMPLETIONS, &completion("c")).await.0, 200);
    // `a` is pinned: `b`, the least recently used of the others, made room for `c`.
    let states: Vec<String> = listed(&server).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, vec!["loaded", "unloaded", "loaded"]);
    assert_eq!(metric(&server, r#"stellarchat:model_unloads_total{model="b",reason="capacity"}"#).await, Some(1.0));

    // Idle for the keep-alive: `c` goes, the pinned `a` stays. (8 s: long enough that `b`
    // leaves for `c`'s room, not its own idleness, however slow the machine is between the
    // requests above.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(&server, "c").await != "unloaded" {
        assert!(Instant::now() < deadline, "keep-alive did not unload c: {:?}", listed(&server).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state_of(&server, "a").await, "loaded");
    assert_eq!(metric(&server, r#"stellarchat:model_unloads_total{model="c",reason="keep_alive"}"#).await, Some(1.0));
    assert_eq!(metric(&server, "stellarchat:models_loaded").await, Some(1.0));
}

#[tokio::test]
async fn pinned_models_are_not_unloaded_for_room_so_a_full_server_says_429() {
    let server = Server::start(&[
        "--model", "synthetic:tiny", "--model", "synthetic:tiny:2", "--served-model-name", "a,b",
        "--max-loaded-models", "1", "--pin", "a", "--api-key", KEY,
    ])
    .await;
    server.wait_ready().await;
    let (status, body) = post(&server, routes::COMPLETIONS, &completion("b")).await;
    assert_eq!((status, body["error"]["code"].clone()), (429, json!("overloaded")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-loaded-models"), "{body}");
    assert_eq!(post(&server, routes::COMPLETIONS, &completion("a")).await.0, 200);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stellarchat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn a_models_dir_and_a_config_file_and_a_model_that_cannot_load() {
    let dir = temp_dir("models-dir");
    let models = dir.join("models");
    std::fs::create_dir_all(models.join("broken")).unwrap();
    // A folder that claims to be a checkpoint but is not a complete one.
    std::fs::write(models.join("broken/config.json"), "{}").unwrap();
    let written = std::process::Command::new(binary())
        .args(["synthetic-gguf", "--case", "qwen3", "--out"])
        .arg(models.join("qwen3.gguf"))
        .current_dir(repo_root())
        .status()
        .expect("synthetic-gguf");
    assert!(written.success());
    let config = dir.join("models.toml");
    std::fs::write(
        &config,
        "[[models]]\npath = \"synthetic:tiny:5\"\nid = \"cfg\"\naliases = [\"alias-one\"]\nmax_model_len = 64\n",
    )
    .unwrap();

    let server = Server::start(&[
        "--model", "synthetic:tiny", "--served-model-name", "main", "--api-key", KEY,
        "--models-config", config.to_str().unwrap(), "--models-dir", models.to_str().unwrap(),
    ])
    .await;
    server.wait_ready().await;
    let ids: Vec<String> = listed(&server).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec!["main", "cfg", "broken", "qwen3"]);

    let (status, body) = post(&server, routes::COMPLETIONS, &completion("alias-one")).await;
    assert_eq!((status, body["model"].clone()), (200, json!("cfg")), "{body}");
    let (_, card) = send(&server, reqwest::Method::GET, "/v1/models/cfg", None).await;
    assert_eq!((card["max_model_len"].clone(), card["aliases"].clone()), (json!(64), json!(["alias-one"])), "{card}");
    let (status, body) = post(&server, routes::COMPLETIONS, &completion("qwen3")).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = post(&server, routes::COMPLETIONS, &completion("broken")).await;
    assert_eq!((status, body["error"]["code"].clone()), (500, json!("model_load_failed")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("broken") && message.contains("missing tokenizer.json"), "{message}");
    assert_eq!(state_of(&server, "broken").await, "unloaded");
    assert_eq!(ready(&server).await, 200, "a model loaded on demand does not make the server unready");
    assert_eq!(post(&server, routes::COMPLETIONS, &completion("main")).await.0, 200, "the others serve on");
    assert_eq!(metric(&server, r#"stellarchat:model_loads_total{model="broken",outcome="failed"}"#).await, Some(1.0));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn with_several_models_a_failed_engine_is_unloaded_and_the_process_serves_on() {
    let mut server = Server::start(&[
        "--model", "synthetic:tiny", "--model", "synthetic:tiny:2", "--served-model-name", "a,b",
        "--fault-injection", "panic-from-step=0", "--api-key", KEY,
    ])
    .await;
    server.wait_ready().await;
    for _ in 0..3 {
        let (status, body) = post(&server, routes::COMPLETIONS, &completion("b")).await;
        assert_eq!((status, body["error"]["code"].clone()), (500, json!("internal_error")), "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&server, "b").await != "unloaded" {
        assert!(Instant::now() < deadline, "the failed engine was not unloaded: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.wait_exit(Duration::from_millis(500)).await.is_none(), "the process must serve on");
    assert_eq!(ready(&server).await, 200);
    assert!(server.logs().contains("the engine failed; the model is unloaded"), "{}", server.logs());
}
