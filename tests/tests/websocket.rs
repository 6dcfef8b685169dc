//! `/v1/chat/ws` against the real binary: two interleaved requests, a cancel, a malformed
//! frame that leaves the socket usable, and a closed socket that frees the engine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::SinkExt;
use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, golden_chat, next_ws_frame, routes};
use tokio_tungstenite::tungstenite::Message;

fn create(id: &str, extra: Value) -> Message {
    let chat = golden_chat("capital");
    let mut request = json!({"model": DEFAULT_MODEL_NAME, "messages": chat["messages"], "temperature": 0});
    if let (Value::Object(r), Value::Object(e)) = (&mut request, extra) {
        r.extend(e);
    }
    Message::text(json!({"type": "chat.completion.create", "id": id, "request": request}).to_string())
}


#[tokio::test]
async fn interleaved_requests_cancel_and_malformed_frames() {
    let server = Server::default_model(&[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(routes::CHAT_WS)).await.expect("connect");
    let expected = golden_chat("capital")["reference_greedy_text"].as_str().unwrap().to_string();

    // Two requests in flight at once; each event names its request.
    ws.send(create("a", json!({}))).await.unwrap();
    ws.send(create("b", json!({}))).await.unwrap();
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut done = 0;
    while done < 2 {
        let frame = next_ws_frame(&mut ws).await;
        let id = frame["id"].as_str().expect("an id").to_string();
        match frame["type"].as_str() {
            Some("chat.completion.chunk") => {
                let chunk = &frame["chunk"];
                assert_eq!(chunk["object"], "chat.completion.chunk");
                if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                    texts.entry(id.clone()).or_default().push_str(piece);
                }
                order.push(id);
            }
            Some("chat.completion.done") => {
                assert!(frame["usage"]["completion_tokens"].as_u64().unwrap() > 0);
                assert!(frame.get("cancelled").is_none());
                done += 1;
            }
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
    assert_eq!(texts["a"], expected);
    assert_eq!(texts["b"], expected);
    // Interleaved: b's chunks do not all come after a's.
    let last_a = order.iter().rposition(|id| id == "a").unwrap();
    let first_b = order.iter().position(|id| id == "b").unwrap();
    assert!(first_b < last_a, "the requests ran one after the other: {order:?}");

    // A long request, cancelled after its first content chunk.
    ws.send(create("long", json!({"max_tokens": 400, "ignore_eos": true}))).await.unwrap();
    let mut cancelled = false;
    loop {
        let frame = next_ws_frame(&mut ws).await;
        assert_eq!(frame["id"], "long");
        match frame["type"].as_str() {
            Some("chat.completion.chunk") if !cancelled => {
                if frame["chunk"]["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                    ws.send(Message::text(json!({"type": "cancel", "id": "long"}).to_string())).await.unwrap();
                    cancelled = true;
                }
            }
            Some("chat.completion.chunk") => {}
            Some("chat.completion.done") => {
                assert!(cancelled);
                assert_eq!(frame["cancelled"], true);
                assert!(frame["usage"]["completion_tokens"].as_u64().unwrap() < 400);
                break;
            }
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }

    // Malformed frames get an error event; the socket stays usable.
    ws.send(Message::text("{not json")).await.unwrap();
    let frame = next_ws_frame(&mut ws).await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["id"], Value::Null);
    assert_eq!(frame["error"]["type"], "invalid_request_error");
    ws.send(Message::text(json!({"type": "dance", "id": "x"}).to_string())).await.unwrap();
    let frame = next_ws_frame(&mut ws).await;
    assert_eq!((frame["type"].as_str(), frame["id"].as_str()), (Some("error"), Some("x")));
    // An invalid request is an error event for its id.
    ws.send(create("bad", json!({"temperature": 9}))).await.unwrap();
    let frame = next_ws_frame(&mut ws).await;
    assert_eq!((frame["type"].as_str(), frame["id"].as_str()), (Some("error"), Some("bad")));
    assert_eq!(frame["error"]["param"], "temperature");
    ws.send(create("after", json!({"max_tokens": 3}))).await.unwrap();
    loop {
        let frame = next_ws_frame(&mut ws).await;
        if frame["type"] == "chat.completion.done" {
            assert_eq!(frame["id"], "after");
            assert_eq!(frame["usage"]["completion_tokens"], 3);
            break;
        }
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn closing_the_socket_cancels_its_requests() {
    let server = Server::default_model(&[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(routes::CHAT_WS)).await.expect("connect");
    ws.send(create("a", json!({"max_tokens": 1000, "ignore_eos": true}))).await.unwrap();
    ws.send(create("b", json!({"max_tokens": 1000, "ignore_eos": true}))).await.unwrap();
    // Wait until both are generating.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let frame = next_ws_frame(&mut ws).await;
        if frame["chunk"]["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            seen.insert(frame["id"].as_str().unwrap().to_string());
        }
    }
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = server.metric("stellarchat:num_requests_running").await;
        if running == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the engine still runs {running:?} sequences after the socket closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
