//! `GET /v1/chat/ws`: chat completions over one WebSocket (protocol in DESIGN.md).
//!
//! One reader loop per socket parses client frames; each `chat.completion.create` runs in
//! its own task, so several requests stream interleaved, each event tagged with the
//! client's `id`. A `cancel` stops one request (it answers `chat.completion.done` with
//! `cancelled: true`); closing the socket aborts them all, which drops their engine
//! streams and so cancels the sequences. A malformed frame gets an `error` event and the
//! socket stays usable. All writes go through one writer task, so frames never interleave.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use salvo::prelude::*;
use salvo::websocket::{Message, WebSocket, WebSocketUpgrade};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::generate::{DriverEvent, Generation};
use super::handlers::chat::{ChatChunker, prepare_chat};
use super::middleware::{RequestId, RequestLog};
use super::protocol::ChatCompletionRequest;
use super::protocol::ws::{TYPE_CANCEL, TYPE_CREATE, WsServerFrame};
use super::routes;
use super::state::AppState;
use super::validate::validate_chat;

/// Requests one socket may have in flight.
pub const MAX_IN_FLIGHT: usize = 16;
/// Frames queued for the writer before request tasks wait (back-pressure from a slow reader).
const OUTBOX: usize = 256;

/// Close code for a message over `--ws-max-message-bytes` (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for an idle socket (RFC 6455 "normal closure").
pub const CLOSE_IDLE: u16 = 1000;

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

/// Upgrades to a WebSocket (auth already checked by the router's hoop); a foreign browser
/// `Origin` gets 403 before the upgrade.
#[handler]
pub async fn chat_ws(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    let conn_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let host = req.headers().get(salvo::http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let cors_origins = state.cors_origins.clone();
    let limit = state.ws_max_message_bytes;
    let upgrade = WebSocketUpgrade::new()
        .max_message_size(limit)
        .max_frame_size(limit)
        .check_origin(move |origin| origin_allowed(origin, host.as_deref(), &cors_origins));
    if let Err(e) = upgrade.upgrade(req, res, move |ws| session(ws, state, conn_id)).await {
        // A failed handshake is the client's error; the catcher renders salvo's brief.
        res.render(e);
    }
    Ok(())
}

pub enum ClientFrame {
    Create { id: String, request: Value },
    Cancel { id: String },
}

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
        other => Err((
            Some(id),
            ApiError::invalid(
                "type",
                format!("Unknown frame type {other:?}; expected \"{TYPE_CREATE}\" or \"{TYPE_CANCEL}\"."),
            ),
        )),
    }
}

fn error_frame(id: Option<String>, error: &ApiError) -> WsServerFrame {
    WsServerFrame::Error { id, error: error.to_body().error }
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

async fn session(ws: WebSocket, state: Arc<AppState>, conn_id: String) {
    state.metrics.websocket_connections.inc();
    let (mut sink, mut stream) = ws.split();
    let (outbox, mut outbox_rx) = mpsc::channel::<WsServerFrame>(OUTBOX);
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
            message = stream.next() => message,
            Some((id, ended_seq)) = ended_rx.recv() => {
                // A cancelled request may end after the client reused its id.
                if in_flight.get(&id).is_some_and(|r| r.seq == ended_seq) {
                    in_flight.remove(&id);
                }
                idle_since = tokio::time::Instant::now();
                continue;
            }
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
            Ok(ClientFrame::Create { id, request }) => {
                let refusal = if in_flight.contains_key(&id) {
                    Some(ApiError::invalid("id", format!("A request with id {id:?} is already in flight.")))
                } else if in_flight.len() >= MAX_IN_FLIGHT {
                    Some(ApiError::Overloaded(format!("at most {MAX_IN_FLIGHT} requests in flight per socket")))
                } else {
                    None
                };
                if let Some(e) = refusal {
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
                    request,
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

/// One `chat.completion.create`: validate, generate, stream chunks, finish with `done`.
async fn run_request(
    state: Arc<AppState>,
    log_id: String,
    (id, seq): (String, u64),
    request: Value,
    outbox: mpsc::Sender<WsServerFrame>,
    cancel: CancellationToken,
    ended: mpsc::UnboundedSender<(String, u64)>,
) {
    let mut log = RequestLog::new(state.clone(), log_id.clone(), "WS", routes::CHAT_WS).into_stream();
    let outcome = stream_request(&state, &id, request, &outbox, &cancel, &mut log, &log_id).await;
    if let Err(e) = outcome {
        log.status = e.status().as_u16();
        log.error_kind = Some(e.kind());
        let _ = outbox.send(error_frame(Some(id.clone()), &e)).await;
    }
    log.mark_completed();
    let _ = ended.send((id, seq));
}

async fn stream_request(
    state: &Arc<AppState>,
    id: &str,
    request: Value,
    outbox: &mpsc::Sender<WsServerFrame>,
    cancel: &CancellationToken,
    log: &mut RequestLog,
    log_id: &str,
) -> Result<(), ApiError> {
    let request: ChatCompletionRequest = serde_json::to_vec(&request)
        .map_err(|e| ApiError::Internal(e.to_string()))
        .and_then(|bytes| super::validate::parse_json(&bytes))?;
    let mut valid = validate_chat(request, &state.validation_context())?;
    // The same tools and response formats as over HTTP.
    let (prompt_text, prompt, plan) = prepare_chat(state, &mut valid)?;
    let mut generation = Generation::start(state, &valid.spec, std::slice::from_ref(&prompt))?;
    if log.log_content() {
        log.prompt = Some(prompt_text);
    }
    log.prompt_tokens = prompt.ids.len();

    let mut chunker = ChatChunker::new(format!("chatcmpl-{log_id}"), valid.model.clone(), valid.spec.include_usage);
    chunker.choices = generation.choices();
    chunker.parse_tool_calls(&plan);
    let send = |frame: WsServerFrame| async move { outbox.send(frame).await.is_ok() };
    for chunk in chunker.role_chunks() {
        if !send(WsServerFrame::Chunk { id: id.to_string(), chunk }).await {
            return Ok(());
        }
    }
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let usage = generation.usage_so_far();
                log.completion_tokens = usage.completion_tokens;
                send(WsServerFrame::Done { id: id.to_string(), usage, cancelled: true }).await;
                return Ok(());
            }
            event = generation.next() => event,
        };
        let Some(event) = event else { return Ok(()) };
        if let DriverEvent::Error(e) = event {
            return Err(e);
        }
        if let DriverEvent::Delta { text, .. } = &event
            && log.log_content()
        {
            log.completion.get_or_insert_with(String::new).push_str(text);
        }
        for chunk in chunker.chunks(&event) {
            if !send(WsServerFrame::Chunk { id: id.to_string(), chunk }).await {
                return Ok(());
            }
        }
        if let DriverEvent::Done(usage) = event {
            log.completion_tokens = usage.completion_tokens;
            send(WsServerFrame::Done { id: id.to_string(), usage, cancelled: false }).await;
            return Ok(());
        }
    }
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
