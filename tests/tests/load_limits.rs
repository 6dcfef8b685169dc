//! Limits under load, against the real binary: `--max-connections` (more connections wait
//! until one closes), big tokenizations that leave the async workers free (`/health` still
//! answers), and a prompt far over the context refused before it is tokenized.

use std::time::{Duration, Instant};

use serde_json::json;
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A keep-alive connection that has been served once (so the server holds it open).
async fn held_connection(server: &Server) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(&server.addr).await.expect("connect");
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", routes::HEALTH, server.addr);
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(60), socket.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    socket
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_one() {
    let server = Server::start(&["--model", "synthetic:tiny", "--max-connections", "2"]).await;
    server.wait_ready().await;
    let first = held_connection(&server).await;
    let _second = held_connection(&server).await;

    let url = server.url(routes::HEALTH);
    let third = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "a third connection was served while two were held");
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(60), third)
        .await
        .expect("the third connection is served once one closes")
        .unwrap()
        .expect("request");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn big_tokenizations_leave_health_answering() {
    let server = Server::default_model(&[]).await;
    // Four calls (as many as the CI machine's async workers, twice over), 2 MB each.
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(2_000_000 / 45);
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (url, prompt) = (server.url(routes::TOKENIZE), prompt.clone());
        calls.push(tokio::spawn(async move {
            let res = client().post(url).json(&json!({"prompt": prompt})).send().await.expect("request");
            assert_eq!(res.status(), 200);
            let _ = res.bytes().await;
            Instant::now()
        }));
    }
    // Let the bodies arrive and the tokenizations start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = client().get(server.url(routes::HEALTH)).send().await.expect("health");
    assert_eq!(res.status(), 200);
    let health_done = Instant::now();
    for call in calls {
        let done = call.await.expect("tokenize call");
        assert!(health_done < done, "/health waited for a big tokenization to finish");
    }
}

#[tokio::test]
async fn a_4_mb_chat_is_refused_before_it_is_tokenized() {
    let server = Server::default_model(&[]).await;
    let content = "word ".repeat(3_900_000 / 5);
    let body = json!({"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": content}]});
    let (status, answer) = server.post_json(routes::CHAT_COMPLETIONS, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "context_length_exceeded", "{answer}");
    // "at least": the length alone decided (the exact count would be the full tokenization).
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at least"), "{message}");
}
