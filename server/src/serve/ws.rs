//! `GET /v1/chat/ws`: chat completions over one WebSocket (protocol in DESIGN.md and the
//! README), and server-side conversations on the same socket ([`conversation`]).
//!
//! One reader loop per socket parses client frames; each `chat.completion.create` runs in
//! its own task, so several requests stream interleaved, each event tagged with the
//! client's `id`. A `cancel` stops one request (it answers `chat.completion.done` with
//! `cancelled: true`); closing the socket aborts them all, which drops their engine
//! streams and so cancels the sequences. A malformed frame gets an `error` event and the
//! socket stays usable. All writes go through one writer task, so frames never interleave.
//!
//! The key: `Authorization: Bearer` like every route, or, since a browser cannot set headers
//! on a WebSocket, the subprotocol `bearer.<key>` offered next to [`SUBPROTOCOL`]
//! (`new WebSocket(url, ["stellarchat", "bearer." + key])`).

pub mod conversation;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use salvo::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use salvo::prelude::*;
use salvo::websocket::{Message, WebSocket, WebSocketUpgrade};
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::conversations::Owner;
use super::error::ApiError;
use super::middleware::RequestId;
use super::protocol::ws::{TYPE_CANCEL, TYPE_CREATE, WsServerFrame};
use super::state::AppState;
use stream::{Job, run_request};

/// Requests one socket may have in flight.
pub const MAX_IN_FLIGHT: usize = 16;
/// Frames queued for the writer before request tasks wait (back-pressure from a slow reader).
const OUTBOX: usize = 256;

/// Close code for a message over `--ws-max-message-bytes` (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for an idle socket (RFC 6455 "normal closure").
pub const CLOSE_IDLE: u16 = 1000;

/// The subprotocol the server selects when a client offers it (browsers that offer any
/// subprotocol need one selected).
pub const SUBPROTOCOL: &str = "stellarchat";
/// A subprotocol `bearer.<key>` carries the API key of a client that cannot set headers.
pub const KEY_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// The key a client presented: its `Authorization: Bearer` header, else a `bearer.<key>`
/// subprotocol.
fn presented_key(req: &Request) -> Option<&str> {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(value) = header
        && let Some(scheme) = value.get(..7)
        && scheme.eq_ignore_ascii_case("bearer ")
    {
        return Some(value[7..].trim());
    }
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(KEY_SUBPROTOCOL_PREFIX))
}

/// Whose socket this is: the index of the matching key (every key compared, in constant
/// time each, as the key hoop does), the key-less owner on an open server, or `None`: refused.
pub fn owner_of(presented: Option<&str>, keys: &[String]) -> Option<Owner> {
    if keys.is_empty() {
        return Some(Owner(None));
    }
    let presented = presented?.as_bytes();
    let mut owner = None;
    for (i, key) in keys.iter().enumerate() {
        if bool::from(presented.ct_eq(key.as_bytes())) {
            owner = Some(i);
        }
    }
    owner.map(|i| Owner(Some(i)))
}

/// Whether a browser `Origin` may open a socket: none (not a browser), the same origin
/// as the request (its host:port equals `Host`), or one of `--cors-origin` (`*` = any).
/// Without this any web page could drive the API with the user's network position
/// (cross-site WebSocket hijacking): browsers do not preflight WebSockets.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, cors_origins: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if cors_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    host.is_some_and(|host| !authority.is_empty() && authority.eq_ignore_ascii_case(host))
}

/// Checks the key (401 without a valid one), then upgrades to a WebSocket; a foreign browser
/// `Origin` gets 403 before the upgrade.
#[handler]
pub async fn chat_ws(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    let owner = owner_of(presented_key(req), &state.api_keys).ok_or(ApiError::InvalidApiKey)?;
    let conn_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let host = req.headers().get(salvo::http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let cors_origins = state.cors_origins.clone();
    let limit = state.ws_max_message_bytes;
    let upgrade = WebSocketUpgrade::new()
        .max_message_size(limit)
        .max_frame_size(limit)
        .protocols(&[SUBPROTOCOL])
        .check_origin(move |origin| origin_allowed(origin, host.as_deref(), &cors_origins));
    if let Err(e) = upgrade.upgrade(req, res, move |ws| session(ws, state, conn_id, owner)).await {
        // A failed handshake is the client's error; the catcher renders salvo's brief.
        res.render(e);
    }
    Ok(())
}

pub enum ClientFrame {
    Create { id: String, request: Value },
    Cancel { id: String },
    Conversation(conversation::ConversationRequest),
}

/// What the writer sends: the request protocol's frames and the conversations'.
#[derive(Serialize)]
#[serde(untagged)]
enum Outgoing {
    Request(WsServerFrame),
    Conversation(conversation::ConversationFrame),
}

impl From<WsServerFrame> for Outgoing {
    fn from(frame: WsServerFrame) -> Self {
        Outgoing::Request(frame)
    }
}

type Outbox = mpsc::Sender<Outgoing>;

/// Parses a client frame; on failure, the id (when one could be read) and the error.
/// Public for the fuzz target (`crate::fuzzing::ws_frame`).
pub fn parse_frame(text: &str) -> Result<ClientFrame, (Option<String>, ApiError)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (None, ApiError::InvalidJson(format!("The frame is not valid JSON: {e}"))))?;
    let Value::Object(mut obj) = value else {
        return Err((None, ApiError::invalid_no_param("A frame must be a JSON object.")));
    };
    let id = match obj.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err((None, ApiError::invalid("id", "Every frame needs a non-empty string `id`."))),
    };
    match obj.get("type").and_then(Value::as_str) {
        Some(TYPE_CREATE) => match obj.remove("request") {
            Some(Value::Object(mut request)) => {
                // Over a WebSocket every request streams.
                request.insert("stream".into(), Value::Bool(true));
                Ok(ClientFrame::Create { id, request: Value::Object(request) })
            }
            _ => Err((Some(id), ApiError::invalid("request", "`request` must be a chat completion request object."))),
        },
        Some(TYPE_CANCEL) => Ok(ClientFrame::Cancel { id }),
        Some(kind) if kind.starts_with(conversation::TYPE_PREFIX) => {
            let kind = kind.to_string();
            conversation::parse(&kind, id.clone(), obj).map(ClientFrame::Conversation).map_err(|e| (Some(id), e))
        }
        other => Err((
            Some(id),
            ApiError::invalid(
                "type",
                format!(
                    "Unknown frame type {other:?}; expected \"{TYPE_CREATE}\", \"{TYPE_CANCEL}\" or one of {:?}.",
                    conversation::TYPES
                ),
            ),
        )),
    }
}

fn error_frame(id: Option<String>, error: &ApiError) -> Outgoing {
    Outgoing::Request(WsServerFrame::Error { id, error: error.to_body().error })
}

struct InFlight {
    /// Distinguishes a request from a later one that reuses its id.
    seq: u64,
    cancel: CancellationToken,
    abort: AbortHandle,
}

/// Why the server ends a session itself; the writer sends it as the close frame.
type CloseReason = Arc<std::sync::OnceLock<(u16, &'static str)>>;

/// Whether a read error is tungstenite's capacity error (a message or frame over the
/// limit). salvo boxes the error, so its text is all there is to tell.
fn is_too_big(error: &salvo::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("Message too long")
}

/// Why a request with this id cannot start now, if it cannot.
fn refusal(in_flight: &HashMap<String, InFlight>, id: &str) -> Option<ApiError> {
    if in_flight.contains_key(id) {
        Some(ApiError::invalid("id", format!("A request with id {id:?} is already in flight.")))
    } else if in_flight.len() >= MAX_IN_FLIGHT {
        Some(ApiError::Overloaded(format!("at most {MAX_IN_FLIGHT} requests in flight per socket")))
    } else {
        None
    }
}

async fn session(ws: WebSocket, state: Arc<AppState>, conn_id: String, owner: Owner) {
    state.metrics.websocket_connections.inc();
    let (mut sink, mut stream) = ws.split();
    let (outbox, mut outbox_rx) = mpsc::channel::<Outgoing>(OUTBOX);
    let close_reason: CloseReason = Arc::default();
    let writer_close = close_reason.clone();
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox_rx.recv().await {
            let Ok(text) = serde_json::to_string(&frame) else { continue };
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        if let Some((code, reason)) = writer_close.get() {
            let _ = sink.send(Message::close_with(*code, *reason)).await;
        }
        let _ = sink.close().await;
    });

    let mut in_flight: HashMap<String, InFlight> = HashMap::new();
    // Request tasks report their id and sequence number here when they end.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let cut = state.lifecycle.cut_token();
    let mut seq = 0u64;
    // Idle: nothing received and nothing in flight since this instant.
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let idle_deadline = idle_since + state.ws_idle_timeout;
        let message = tokio::select! {
            // Ends first: a request reports its end before its last frame goes out, so a
            // client that reuses the id (or starts the next turn) after `done` is not refused.
            biased;
            Some((id, ended_seq)) = ended_rx.recv() => {
                // A cancelled request may end after the client reused its id.
                if in_flight.get(&id).is_some_and(|r| r.seq == ended_seq) {
                    in_flight.remove(&id);
                }
                idle_since = tokio::time::Instant::now();
                continue;
            }
            message = stream.next() => message,
            _ = tokio::time::sleep_until(idle_deadline), if in_flight.is_empty() => {
                let _ = close_reason.set((CLOSE_IDLE, "idle timeout"));
                break;
            }
            _ = cut.cancelled() => break,
        };
        idle_since = tokio::time::Instant::now();
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) if is_too_big(&e) => {
                let _ = close_reason.set((CLOSE_TOO_BIG, "message too big"));
                break;
            }
            // Closed or broken: stop everything.
            _ => break,
        };
        if message.is_close() {
            break;
        }
        if message.is_ping() || message.is_pong() {
            continue;
        }
        let Ok(text) = message.as_str() else {
            let e = ApiError::invalid_no_param("Frames must be JSON text frames.");
            if outbox.send(error_frame(None, &e)).await.is_err() {
                break;
            }
            continue;
        };
        match parse_frame(text) {
            Err((id, e)) => {
                if outbox.send(error_frame(id, &e)).await.is_err() {
                    break;
                }
            }
            Ok(ClientFrame::Cancel { id }) => match in_flight.remove(&id) {
                Some(request) => request.cancel.cancel(),
                None => {
                    let e = ApiError::invalid("id", format!("No request with id {id:?} is in flight."));
                    if outbox.send(error_frame(Some(id), &e)).await.is_err() {
                        break;
                    }
                }
            },
            Ok(ClientFrame::Conversation(request)) => {
                let job = match request.into_job(&state, owner) {
                    Ok(conversation::Step::Reply(frame)) => {
                        if outbox.send(Outgoing::Conversation(frame)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(conversation::Step::Turn(id, turn)) => match refusal(&in_flight, &id) {
                        // Frees the conversation again (the guard ends the turn).
                        Some(e) => Err((Some(id), e)),
                        None => Ok((id, Job::Turn(turn))),
                    },
                    Err(refused) => Err(refused),
                };
                match job {
                    Err((id, e)) => {
                        if outbox.send(error_frame(id, &e)).await.is_err() {
                            break;
                        }
                    }
                    Ok((id, job)) => {
                        seq += 1;
                        let cancel = CancellationToken::new();
                        let task = tokio::spawn(run_request(
                            state.clone(),
                            format!("{conn_id}.{seq}"),
                            (id.clone(), seq),
                            job,
                            outbox.clone(),
                            cancel.clone(),
                            ended_tx.clone(),
                        ));
                        in_flight.insert(id, InFlight { seq, cancel, abort: task.abort_handle() });
                    }
                }
            }
            Ok(ClientFrame::Create { id, request }) => {
                if let Some(e) = refusal(&in_flight, &id) {
                    if outbox.send(error_frame(Some(id), &e)).await.is_err() {
                        break;
                    }
                    continue;
                }
                seq += 1;
                let cancel = CancellationToken::new();
                let task = tokio::spawn(run_request(
                    state.clone(),
                    format!("{conn_id}.{seq}"),
                    (id.clone(), seq),
                    Job::Request(request),
                    outbox.clone(),
                    cancel.clone(),
                    ended_tx.clone(),
                ));
                in_flight.insert(id, InFlight { seq, cancel, abort: task.abort_handle() });
            }
        }
    }
    // Socket closed (or the server is cutting streams): abort every request; dropping their
    // generations cancels the engine's sequences.
    for (_, request) in in_flight.drain() {
        request.abort.abort();
    }
    drop(outbox);
    let _ = writer.await;
    state.metrics.websocket_connections.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_explain() {
        assert!(matches!(
            parse_frame(r#"{"type":"cancel","id":"a"}"#),
            Ok(ClientFrame::Cancel { id }) if id == "a"
        ));
        match parse_frame(r#"{"type":"chat.completion.create","id":"b","request":{"model":"m"}}"#) {
            Ok(ClientFrame::Create { id, request }) => {
                assert_eq!(id, "b");
                assert_eq!(request["stream"], Value::Bool(true));
            }
            _ => panic!("create frame"),
        }
        assert!(matches!(parse_frame("not json"), Err((None, ApiError::InvalidJson(_)))));
    }

    #[test]
    fn sockets_belong_to_the_key_that_opened_them() {
        let keys = vec!["sk-a".to_string(), "sk-b".to_string()];
        assert_eq!(owner_of(Some("sk-b"), &keys), Some(Owner(Some(1))));
        assert_eq!(owner_of(Some("sk-c"), &keys), None);
        assert_eq!(owner_of(None, &keys), None);
        assert_eq!(owner_of(None, &[]), Some(Owner(None)), "an open server has one shared owner");
        assert_eq!(owner_of(Some("anything"), &[]), Some(Owner(None)));
    }

    #[test]
    fn origins_are_same_origin_configured_or_absent() {
        let none: Vec<String> = vec![];
        let host = Some("127.0.0.1:8080");
        assert!(origin_allowed(None, host, &none), "no Origin: not a browser");
        assert!(origin_allowed(Some("http://127.0.0.1:8080"), host, &none));
        assert!(!origin_allowed(Some("http://evil.example"), host, &none));
        assert!(!origin_allowed(Some("http://127.0.0.1:9999"), host, &none));
        assert!(!origin_allowed(Some("null"), host, &none));
        assert!(!origin_allowed(Some("http://127.0.0.1:8080"), None, &none));
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(Some("https://app.example"), host, &listed));
        assert!(!origin_allowed(Some("https://other.example"), host, &listed));
        assert!(origin_allowed(Some("https://other.example"), host, &["*".to_string()]));
        assert!(matches!(parse_frame("[1]"), Err((None, _))));
        assert!(matches!(parse_frame(r#"{"type":"cancel"}"#), Err((None, _))));
        assert!(matches!(parse_frame(r#"{"type":"nope","id":"c"}"#), Err((Some(id), _)) if id == "c"));
        assert!(matches!(
            parse_frame(r#"{"type":"chat.completion.create","id":"d","request":3}"#),
            Err((Some(id), _)) if id == "d"
        ));
    }
}
