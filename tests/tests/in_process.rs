//! `serve::run` driven in-process, in the way of mini-redis's `tests/server.rs`: the test
//! binds 127.0.0.1:0 itself, hands the listener and a shutdown future to the library, talks
//! to it over HTTP, then triggers the shutdown and expects a clean return.

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use stellarchat::serve::{self, ServeArgs};
use stellarchat_tests::routes;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn args(model: &str) -> ServeArgs {
    let argv = ["stellarchat", "--model", model];
    Cli::try_parse_from(argv).expect("flags").serve
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}{}", routes::READY)).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the in-process server never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_the_given_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(listener, args("synthetic:tiny"), async move {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let body = json!({"model": "synthetic-tiny", "prompt": "hello", "max_tokens": 3, "ignore_eos": true});
    let response = http.post(format!("{base}{}", routes::COMPLETIONS)).json(&body).send().await.expect("post");
    let status = response.status();
    let completion: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["usage"]["completion_tokens"], 3, "{completion}");

    stop.send(()).expect("the server is still running");
    let result = tokio::time::timeout(Duration::from_secs(30), server).await.expect("run returned").expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        http.get(format!("{base}{}", routes::HEALTH)).send().await.is_err(),
        "the listener must be closed after run returns"
    );
}

#[tokio::test]
async fn run_reports_a_missing_model_file_without_serving() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let result = serve::run(listener, args("/nonexistent/model.gguf"), std::future::pending()).await;
    let error = result.expect_err("a missing file is an error");
    assert!(matches!(error, serve::ServeError::Model { .. }), "{error}");
}
