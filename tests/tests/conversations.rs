//! Server-side conversations over `/v1/chat/ws` against the real binary (SmolLM2, a few
//! tokens per turn): create, turns that carry the history, get/list/truncate/delete, a
//! cancelled answer kept as cut, the prompt budget dropping the oldest exchange, the count
//! bound per key, keys that cannot see each other's conversations (the key as a header or
//! as the browser's subprotocol), and the idle TTL. Also the chat page's HTTP side.

use std::time::Duration;

use futures::SinkExt;
use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, next_ws_frame, routes};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a client presents its key.
enum Key<'a> {
    None,
    Header(&'a str),
    Subprotocol(&'a str),
}

async fn connect(server: &Server, key: Key<'_>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = server.ws_url(routes::CHAT_WS).into_client_request().expect("request");
    let headers = request.headers_mut();
    match key {
        Key::None => {}
        Key::Header(k) => {
            headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {k}")).expect("header"));
        }
        Key::Subprotocol(k) => {
            let offer = format!("stellarchat, bearer.{k}");
            headers.insert("sec-websocket-protocol", HeaderValue::from_str(&offer).expect("header"));
        }
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    if let Key::Subprotocol(_) = key {
        // A browser drops a socket whose server selected no offered subprotocol.
        assert_eq!(response.headers()["sec-websocket-protocol"], "stellarchat");
    }
    Ok(ws)
}


/// Sends a frame and returns the next frame (for frames answered by one).
async fn ask(ws: &mut Ws, frame: Value) -> Value {
    ws.send(Message::text(frame.to_string())).await.expect("send");
    next_ws_frame(ws).await
}

async fn create(ws: &mut Ws, extra: Value) -> String {
    let mut frame = json!({"type": "conversation.create", "id": "c", "system": "You are brief."});
    if let (Value::Object(f), Value::Object(e)) = (&mut frame, extra) {
        f.extend(e);
    }
    let created = ask(ws, frame).await;
    assert_eq!(created["type"], "conversation.created", "{created}");
    assert_eq!(created["model"], DEFAULT_MODEL_NAME);
    let id = created["conversation_id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("conv_"), "{id}");
    id
}

/// One turn: the streamed text and the `done` frame (or the `error` frame, with no text).
async fn turn(ws: &mut Ws, conversation_id: &str, content: &str, max_tokens: u32) -> (String, Value) {
    let frame = json!({"type": "conversation.message", "id": "t", "conversation_id": conversation_id,
        "content": content, "max_tokens": max_tokens, "temperature": 0});
    ws.send(Message::text(frame.to_string())).await.expect("send");
    let mut text = String::new();
    loop {
        let frame = next_ws_frame(ws).await;
        assert_eq!(frame["id"], "t", "{frame}");
        match frame["type"].as_str() {
            Some("chat.completion.chunk") => {
                text.push_str(frame["chunk"]["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            }
            Some("chat.completion.done") | Some("error") => return (text, frame),
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
}

async fn messages(ws: &mut Ws, conversation_id: &str) -> Vec<Value> {
    let got = ask(ws, json!({"type": "conversation.get", "id": "g", "conversation_id": conversation_id})).await;
    assert_eq!(got["type"], "conversation", "{got}");
    got["messages"].as_array().expect("messages").clone()
}

fn error_param(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["error"]["type"], "invalid_request_error", "{frame}");
    frame["error"]["param"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn conversations_keep_history_per_key_within_bounds() {
    let server = Server::default_model(&[
        "--api-key",
        "sk-alice",
        "--api-key",
        "sk-bob",
        "--conversation-max-tokens",
        "120",
        "--max-conversations-per-key",
        "2",
    ])
    .await;
    let mut alice = connect(&server, Key::Header("sk-alice")).await.expect("alice connects");

    // Two turns: the second prompt renders the first exchange too.
    let id = create(&mut alice, json!({"defaults": {"temperature": 0}})).await;
    let (first, done) = turn(&mut alice, &id, "Name a colour.", 6).await;
    assert_eq!(done["type"], "chat.completion.done", "{done}");
    assert!(!first.is_empty());
    let first_prompt = done["usage"]["prompt_tokens"].as_u64().expect("usage");
    let (_, done) = turn(&mut alice, &id, "Another one.", 6).await;
    let second_prompt = done["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(second_prompt > first_prompt + 6, "the history is in the prompt: {first_prompt} then {second_prompt}");
    let history = messages(&mut alice, &id).await;
    let roles: Vec<&str> = history.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(history[0]["content"], "Name a colour.");
    assert_eq!(history[1]["content"], first.as_str());
    assert!(history.iter().all(|m| m.get("cut").is_none()));

    // Past 120 prompt tokens the oldest exchange goes, and the prompt stays within budget.
    let long = "Tell me more about that colour: where it is found in nature, what it means in art, which \
                flowers and birds carry it, and how painters mixed it before modern pigments existed.";
    let (_, done) = turn(&mut alice, &id, long, 6).await;
    assert_eq!(done["type"], "chat.completion.done", "{done}");
    assert!(done["usage"]["prompt_tokens"].as_u64().unwrap() <= 120, "{done}");
    let (_, done) = turn(&mut alice, &id, long, 6).await;
    assert!(done["usage"]["prompt_tokens"].as_u64().is_some_and(|p| p <= 120), "{done}");
    let history = messages(&mut alice, &id).await;
    assert_ne!(history[0]["content"], "Name a colour.", "the oldest exchange was dropped: {history:?}");
    assert_eq!(history.last().unwrap()["role"], "assistant");
    // A message that alone exceeds the budget is refused and adds nothing.
    let (text, refused) = turn(&mut alice, &id, &"word ".repeat(200), 4).await;
    assert!(text.is_empty());
    assert_eq!(refused["error"]["code"], "context_length_exceeded", "{refused}");
    assert_eq!(messages(&mut alice, &id).await.len(), history.len());

    // Cancelled mid-answer: what streamed is kept, marked cut.
    let frame = json!({"type": "conversation.message", "id": "long", "conversation_id": id,
        "content": "Count from one to a hundred in words.", "max_tokens": 100});
    let truncated = ask(&mut alice, json!({"type": "conversation.truncate", "id": "tr", "conversation_id": id, "keep": 0})).await;
    assert_eq!(truncated["messages"], 0, "{truncated}");
    alice.send(Message::text(frame.to_string())).await.unwrap();
    let mut streamed = String::new();
    loop {
        let frame = next_ws_frame(&mut alice).await;
        match frame["type"].as_str() {
            Some("chat.completion.chunk") => {
                let piece = frame["chunk"]["choices"][0]["delta"]["content"].as_str().unwrap_or_default();
                if streamed.is_empty() && !piece.is_empty() {
                    alice.send(Message::text(json!({"type": "cancel", "id": "long"}).to_string())).await.unwrap();
                }
                streamed.push_str(piece);
            }
            Some("chat.completion.done") => {
                assert_eq!(frame["cancelled"], true, "{frame}");
                break;
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    let history = messages(&mut alice, &id).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1]["cut"], true);
    assert_eq!(history[1]["content"], streamed.as_str());

    // Bob (his key as the browser sends it) sees none of Alice's conversations.
    let mut bob = connect(&server, Key::Subprotocol("sk-bob")).await.expect("bob connects");
    let hidden = ask(&mut bob, json!({"type": "conversation.get", "id": "g", "conversation_id": id})).await;
    assert_eq!(error_param(&hidden), "conversation_id");
    let (_, hidden) = turn(&mut bob, &id, "hi", 2).await;
    assert_eq!(error_param(&hidden), "conversation_id");
    let listed = ask(&mut bob, json!({"type": "conversation.list", "id": "l"})).await;
    assert_eq!(listed["conversations"], json!([]));
    let refused = ask(&mut bob, json!({"type": "conversation.delete", "id": "d", "conversation_id": id})).await;
    assert_eq!(error_param(&refused), "conversation_id");
    assert!(connect(&server, Key::None).await.is_err(), "no key: 401");
    assert!(connect(&server, Key::Subprotocol("sk-wrong")).await.is_err(), "a wrong key: 401");

    // Two conversations per key: a third forgets the least recently used.
    let second = create(&mut alice, json!({})).await;
    let listed = ask(&mut alice, json!({"type": "conversation.list", "id": "l"})).await;
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["conversations"][0]["conversation_id"], second.as_str(), "most recent first");
    let third = create(&mut alice, json!({})).await;
    let gone = ask(&mut alice, json!({"type": "conversation.get", "id": "g", "conversation_id": id})).await;
    assert_eq!(error_param(&gone), "conversation_id");
    let deleted = ask(&mut alice, json!({"type": "conversation.delete", "id": "d", "conversation_id": third})).await;
    assert_eq!(deleted, json!({"type": "conversation.deleted", "id": "d", "conversation_id": third}));

    // Malformed conversation frames answer errors and leave the socket usable.
    let bad = ask(&mut alice, json!({"type": "conversation.create", "id": "x", "model": "nope"})).await;
    assert_eq!(bad["error"]["code"], "model_not_found", "{bad}");
    let bad = ask(&mut alice, json!({"type": "conversation.create", "id": "x", "defaults": {"temperature": 9}})).await;
    assert_eq!(bad["type"], "error", "{bad}");
    let bad = ask(&mut alice, json!({"type": "conversation.message", "id": "x", "conversation_id": second, "content": "x", "tools": []})).await;
    assert_eq!(bad["error"]["code"], "unknown_parameter", "{bad}");
    // Restoring a conversation the server forgot: seeded with its messages.
    let seeded = create(&mut alice, json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})).await;
    assert_eq!(messages(&mut alice, &seeded).await.len(), 2);
}

#[tokio::test]
async fn idle_conversations_expire() {
    // Creating needs no loaded weights (only the tokenizer), so the server need not be ready.
    let model = stellarchat_tests::default_model();
    let server = Server::start(&["--model", model.to_str().unwrap(), "--conversation-ttl", "1"]).await;
    let mut ws = connect(&server, Key::None).await.expect("connect");
    let id = create(&mut ws, json!({})).await;
    assert_eq!(messages(&mut ws, &id).await.len(), 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gone = ask(&mut ws, json!({"type": "conversation.get", "id": "g", "conversation_id": id})).await;
    assert_eq!(error_param(&gone), "conversation_id");
}

#[tokio::test]
async fn the_chat_page_is_served_with_a_strict_policy_unless_turned_off() {
    let model = stellarchat_tests::default_model();
    let model = model.to_str().unwrap();
    let server = Server::start(&["--model", model, "--api-key", "sk-x"]).await;
    // The page and its files load without a key (the API behind them needs one).
    let page = client().get(server.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/ui/app.js"));
    for (file, kind) in [("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css"), ("/ui/vendor/purify.min.js", "text/javascript")] {
        let res = client().get(server.url(file)).send().await.expect("asset");
        assert_eq!(res.status(), 200, "{file}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind), "{file}");
    }
    assert_eq!(client().get(server.url("/ui/nope.js")).send().await.unwrap().status(), 404);
    assert_eq!(client().get(server.url(routes::MODELS)).send().await.unwrap().status(), 401);

    let off = Server::start(&["--model", model, "--no-ui"]).await;
    assert_eq!(client().get(off.url("/")).send().await.unwrap().status(), 404);
    assert_eq!(client().get(off.url("/ui/app.js")).send().await.unwrap().status(), 404);
}
