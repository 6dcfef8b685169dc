//! The ways a bench request reaches the server besides SSE (`request`): a plain JSON
//! response and a WebSocket stream, and the per-request [`Plan`] that picks the transport
//! (`--mix`) and whether the client drops the connection part-way (`--disconnect-ratio`).
//!
//! A drop is abrupt on purpose: the socket is closed without a WebSocket close frame or
//! reading the rest of a body, as a crashed client or a cut network would leave it, which
//! is what the server must clean up after.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stellarchat_model::rng::SplitMix64;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::request::{RequestError, Timing};
use super::sse;
use super::stats::Sample;

/// How a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `stream: false`: one JSON response.
    Http,
    /// `stream: true`: Server-Sent Events.
    Sse,
    /// `/v1/chat/ws`: one WebSocket per request.
    Ws,
}

/// What request `i` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub transport: Transport,
    /// Drop the connection after this many content chunks (for plain HTTP: after this many
    /// times [`HTTP_DROP_UNIT`], the response still being generated).
    pub disconnect_after: Option<u32>,
}

/// For plain HTTP there are no chunks to count: the drop comes after `n` of these.
pub const HTTP_DROP_UNIT: Duration = Duration::from_millis(20);

/// Request `i`'s plan: transports in turn from `mix`; a drop with probability `ratio`, after
/// 1 to `max_tokens / 2` chunks, drawn from the seed so that runs repeat.
pub fn plan(seed: u64, i: u64, mix: &[Transport], ratio: f64, max_tokens: u32) -> Plan {
    let transport = mix.get(i as usize % mix.len().max(1)).copied().unwrap_or(Transport::Sse);
    let mut rng = SplitMix64(seed ^ 0xD15C_0AAE ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let disconnect_after = (draw < ratio).then(|| 1 + (rng.next_u64() % u64::from((max_tokens / 2).max(1))) as u32);
    Plan { transport, disconnect_after }
}

/// A `stream: false` request; with `disconnect_after`, it is dropped before the answer.
pub async fn run_http(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    timeout: Duration,
    disconnect_after: Option<u32>,
) -> Result<Sample, RequestError> {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        map.insert("stream".into(), json!(false));
        map.remove("stream_options");
    }
    let start = Instant::now();
    let send = async {
        let mut request = client.post(url).json(&body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(RequestError::Status { status: status.as_u16(), message: sse::error_message(&text) });
        }
        let parsed: Value =
            serde_json::from_str(&text).map_err(|e| RequestError::Protocol(format!("response is not JSON: {e}")))?;
        let tokens = parsed["usage"]["completion_tokens"].as_u64();
        let mut timing = Timing::new(start);
        timing.chunk(Instant::now(), false, tokens);
        Ok(timing.finish(Instant::now()))
    };
    let limit = match disconnect_after {
        Some(n) => HTTP_DROP_UNIT * n,
        None => timeout,
    };
    match tokio::time::timeout(limit, send).await {
        Ok(result) => result,
        Err(_) if disconnect_after.is_some() => Err(RequestError::Disconnected),
        Err(_) => Err(RequestError::Timeout),
    }
}

/// The WebSocket URL of a base URL: `http://host:port/v1` → `ws://host:port/v1/chat/ws`.
pub fn ws_url(base: &str) -> String {
    format!("ws://{}/chat/ws", base.trim_start_matches("http://"))
}

/// One chat request on its own WebSocket, timed like an SSE stream.
pub async fn run_ws(
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    timeout: Duration,
    disconnect_after: Option<u32>,
) -> Result<Sample, RequestError> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, ws_one(url, api_key, body, start, disconnect_after)).await {
        Ok(result) => result,
        Err(_) => Err(RequestError::Timeout),
    }
}

async fn ws_one(
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    start: Instant,
    disconnect_after: Option<u32>,
) -> Result<Sample, RequestError> {
    let transport = |e: tokio_tungstenite::tungstenite::Error| RequestError::Transport(e.to_string());
    let mut request = url.into_client_request().map_err(transport)?;
    if let Some(key) = api_key
        && let Ok(value) = format!("Bearer {key}").parse()
    {
        request.headers_mut().insert("authorization", value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            RequestError::Status { status: response.status().as_u16(), message: sse::error_message(&body) }
        }
        other => RequestError::Connect(other.to_string()),
    })?;
    let mut request = body.clone();
    if let Value::Object(map) = &mut request {
        map.remove("stream");
        map.remove("stream_options");
    }
    let frame = json!({"type": "chat.completion.create", "id": "bench", "request": request});
    ws.send(Message::text(frame.to_string())).await.map_err(transport)?;
    let mut timing = Timing::new(start);
    let mut content_chunks = 0;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message.map_err(transport)? else { continue };
        let at = Instant::now();
        let frame: Value = serde_json::from_str(text.as_str())
            .map_err(|e| RequestError::Protocol(format!("frame is not JSON: {e}")))?;
        match frame["type"].as_str() {
            Some("chat.completion.chunk") => {
                let chunk = sse::SseEvent { event: None, data: frame["chunk"].to_string() };
                if let sse::Chunk::Data(data) = sse::interpret(&chunk).map_err(RequestError::Protocol)? {
                    timing.data(at, &data);
                    content_chunks += u32::from(data.content);
                }
                if disconnect_after.is_some_and(|n| content_chunks >= n) {
                    // Dropped without a close frame: an abrupt end.
                    return Err(RequestError::Disconnected);
                }
            }
            Some("chat.completion.done") => {
                timing.chunk(at, false, frame["usage"]["completion_tokens"].as_u64());
                let _ = ws.close(None).await;
                return Ok(timing.finish(at));
            }
            Some("error") => {
                let kind = frame["error"]["type"].as_str().unwrap_or("unknown").to_string();
                let message = frame["error"]["message"].as_str().unwrap_or_default().to_string();
                let _ = ws.close(None).await;
                return Err(RequestError::WsError { kind, message });
            }
            _ => return Err(RequestError::Protocol(format!("unexpected frame {frame}"))),
        }
    }
    Err(RequestError::Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_take_transports_in_turn_and_drop_about_the_ratio() {
        let mix = [Transport::Http, Transport::Sse, Transport::Ws];
        let plans: Vec<Plan> = (0..3000).map(|i| plan(7, i, &mix, 0.3, 64)).collect();
        assert_eq!(plans[0].transport, Transport::Http);
        assert_eq!(plans[4].transport, Transport::Sse);
        assert_eq!(plans[5].transport, Transport::Ws);
        let drops: Vec<u32> = plans.iter().filter_map(|p| p.disconnect_after).collect();
        assert!((800..1000).contains(&drops.len()), "{} drops of 3000", drops.len());
        assert!(drops.iter().all(|&n| (1..=32).contains(&n)));
        assert_eq!(plan(7, 11, &mix, 0.3, 64), plan(7, 11, &mix, 0.3, 64));
        assert!((0..100).all(|i| plan(7, i, &mix, 0.0, 64).disconnect_after.is_none()));
        assert!((0..100).all(|i| plan(7, i, &mix, 1.0, 1).disconnect_after == Some(1)));
    }

    #[test]
    fn websocket_url() {
        assert_eq!(ws_url("http://127.0.0.1:8080/v1"), "ws://127.0.0.1:8080/v1/chat/ws");
    }
}
