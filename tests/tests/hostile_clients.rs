//! Hostile and slow clients against the real binary, at the socket level: a body that
//! never finishes (408 after `--body-timeout`), a WebSocket message over
//! `--ws-max-message-bytes` (close 1009), an idle WebSocket (closed after
//! `--ws-idle-timeout`), and the WebSocket `Origin` check on a real upgrade.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use stellarchat_tests::{Server, routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn synthetic(args: &[&str]) -> Server {
    let mut all = vec!["--model", "synthetic:tiny"];
    all.extend_from_slice(args);
    let server = Server::start(&all).await;
    server.wait_ready().await;
    server
}

/// The close frame the server sends next (skipping other frames), within a minute.
async fn close_code<S>(ws: &mut S) -> Option<CloseCode>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let wait = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.expect("the server closes the socket")
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let server = synthetic(&["--body-timeout", "1"]).await;
    let mut socket = tokio::net::TcpStream::connect(&server.addr).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
        routes::TOKENIZE,
        server.addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_with_1009() {
    let server = synthetic(&["--ws-max-message-bytes", "1000"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(routes::CHAT_WS)).await.expect("connect");
    // Under the limit: an error event, the socket stays open.
    ws.send(Message::text("not json")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.expect("a reply").expect("open");
    assert!(matches!(reply, Ok(Message::Text(_))), "{reply:?}");
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn an_idle_websocket_is_closed() {
    let server = synthetic(&["--ws-idle-timeout", "1"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(routes::CHAT_WS)).await.expect("connect");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Normal));
}

#[tokio::test]
async fn a_busy_websocket_is_not_idle() {
    let server = synthetic(&["--ws-idle-timeout", "2"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(routes::CHAT_WS)).await.expect("connect");
    // Frames keep it alive past the timeout; each gets an error event back.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ws.send(Message::text("not json")).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.expect("a reply").expect("open");
        assert!(matches!(reply, Ok(Message::Text(_))), "closed while in use: {reply:?}");
    }
}

#[tokio::test]
async fn websocket_origins_other_than_ours_are_refused() {
    let server = synthetic(&["--cors-origin", "https://app.example"]).await;
    let with_origin = |origin: &str| {
        let mut request = server.ws_url(routes::CHAT_WS).into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(with_origin("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a foreign origin was not refused: {other:?}"),
    }
    for origin in ["https://app.example".to_string(), format!("http://{}", server.addr)] {
        let connected = tokio_tungstenite::connect_async(with_origin(&origin)).await;
        assert!(connected.is_ok(), "{origin}: {:?}", connected.err());
    }
}
