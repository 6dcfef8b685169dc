//! One streaming chat request, timed: the body every server gets, and the walk through its
//! SSE reply that yields a [`Sample`] (with the answer's text, which the multi-turn mode
//! sends back in the next turn) or a classified [`RequestError`].

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::sse::{self, Chunk, Data, SseDecoder};
use super::stats::Sample;

/// The request settings shared by every request of a run.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub model: String,
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub ban_tokens: Vec<u32>,
}

/// The chat request body: streaming with usage, greedy, and — for equal output lengths on
/// every server — `ignore_eos` and an EOS ban through `logit_bias` when asked.
pub fn request_body(spec: &RequestSpec, prompt: &str) -> Value {
    chat_body(spec, json!([{"role": "user", "content": prompt}]))
}

/// [`request_body`] for a whole conversation: `messages` is the OpenAI messages array.
pub fn chat_body(spec: &RequestSpec, messages: Value) -> Value {
    let mut body = json!({
        "model": spec.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    });
    if spec.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if !spec.ban_tokens.is_empty() {
        let bias: serde_json::Map<String, Value> =
            spec.ban_tokens.iter().map(|id| (id.to_string(), json!(-100))).collect();
        body["logit_bias"] = Value::Object(bias);
    }
    body
}

/// Why a request did not complete; [`RequestError::kind`] is the key errors are counted by.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("error in the stream: {0}")]
    ErrorEvent(String),
    #[error("malformed stream: {0}")]
    Protocol(String),
    #[error("the stream ended before [DONE]")]
    Incomplete,
    /// An `error` frame on a WebSocket, by its OpenAI error type.
    #[error("WebSocket error ({kind}): {message}")]
    WsError { kind: String, message: String },
    /// Not a failure: the client dropped the connection on purpose (`--disconnect-ratio`).
    #[error("disconnected by the client")]
    Disconnected,
}

impl RequestError {
    pub fn kind(&self) -> String {
        match self {
            RequestError::Status { status, .. } => format!("http_{status}"),
            RequestError::Connect(_) => "connect".into(),
            RequestError::Timeout => "timeout".into(),
            RequestError::Transport(_) => "transport".into(),
            RequestError::ErrorEvent(_) => "error_event".into(),
            RequestError::Protocol(_) => "protocol".into(),
            RequestError::Incomplete => "incomplete".into(),
            RequestError::WsError { kind, .. } => format!("ws_{kind}"),
            RequestError::Disconnected => "disconnected".into(),
        }
    }

    /// The server's fault (a 5xx, or its equivalent inside a stream), as opposed to the
    /// request's (4xx) or the network's.
    pub fn is_server_error(&self) -> bool {
        match self {
            RequestError::Status { status, .. } => *status >= 500,
            RequestError::ErrorEvent(_) => true,
            RequestError::WsError { kind, .. } => kind == "server_error" || kind == "service_unavailable_error",
            _ => false,
        }
    }
}

impl From<reqwest::Error> for RequestError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            RequestError::Timeout
        } else if e.is_connect() {
            RequestError::Connect(error_chain(&e))
        } else {
            RequestError::Transport(error_chain(&e))
        }
    }
}

/// An error with its sources (reqwest's own message rarely says what went wrong).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Timestamps of content chunks, and the answer's text and usage, turned into a [`Sample`]
/// at the end.
#[derive(Debug)]
pub struct Timing {
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    itls: Vec<Duration>,
    content_chunks: u64,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    text: String,
}

impl Timing {
    pub fn new(start: Instant) -> Self {
        Timing {
            start,
            first: None,
            last: None,
            itls: Vec::new(),
            content_chunks: 0,
            completion_tokens: None,
            prompt_tokens: None,
            cached_tokens: None,
            text: String::new(),
        }
    }

    /// Notes one streamed chunk that arrived at `at`: its timing, text and usage.
    pub fn data(&mut self, at: Instant, data: &Data) {
        self.text.push_str(&data.text);
        if let Some(usage) = data.usage {
            self.prompt_tokens = usage.prompt_tokens.or(self.prompt_tokens);
            self.cached_tokens = usage.cached_tokens.or(self.cached_tokens);
        }
        self.chunk(at, data.content, data.usage.and_then(|u| u.completion_tokens));
    }

    /// Notes one chunk that arrived at `at`.
    pub fn chunk(&mut self, at: Instant, content: bool, completion_tokens: Option<u64>) {
        if let Some(n) = completion_tokens {
            self.completion_tokens = Some(n);
        }
        if !content {
            return;
        }
        self.content_chunks += 1;
        self.first.get_or_insert(at);
        if let Some(last) = self.last.replace(at) {
            self.itls.push(at.saturating_duration_since(last));
        }
    }

    pub fn finish(self, end: Instant) -> Sample {
        Sample {
            ttft: self.first.map(|t| t.saturating_duration_since(self.start)),
            itls: self.itls,
            e2e: end.saturating_duration_since(self.start),
            output_tokens: self.completion_tokens.unwrap_or(self.content_chunks),
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            text: self.text,
        }
    }
}

/// Sends one request and times its stream. `timeout` bounds the whole request. With
/// `disconnect_after`, the body is dropped unread after that many content chunks.
pub async fn run_one(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    timeout: Duration,
    disconnect_after: Option<u32>,
) -> Result<Sample, RequestError> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, stream_one(client, url, api_key, body, start, disconnect_after)).await {
        Ok(result) => result,
        Err(_) => Err(RequestError::Timeout),
    }
}

async fn stream_one(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    start: Instant,
    disconnect_after: Option<u32>,
) -> Result<Sample, RequestError> {
    let send = || {
        let request = client.post(url).json(body);
        match api_key {
            Some(key) => request.bearer_auth(key).send(),
            None => request.send(),
        }
    };
    let mut response = send().await;
    for _ in 0..STALE_RETRIES {
        match &response {
            Err(e) if is_stale_connection(e) => response = send().await,
            _ => break,
        }
    }
    let response = response?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(RequestError::Status { status: status.as_u16(), message: sse::error_message(&text) });
    }
    let mut timing = Timing::new(start);
    let mut decoder = SseDecoder::default();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes = bytes?;
        let at = Instant::now();
        for event in decoder.push(&bytes).map_err(|e| RequestError::Protocol(e.to_string()))? {
            if handle(&mut timing, &event, at)? {
                return Ok(timing.finish(Instant::now()));
            }
            if disconnect_after.is_some_and(|n| timing.content_chunks >= u64::from(n)) {
                // Dropping the response closes its connection: an abrupt end.
                return Err(RequestError::Disconnected);
            }
        }
    }
    let at = Instant::now();
    if let Some(event) = decoder.finish().map_err(|e| RequestError::Protocol(e.to_string()))?
        && handle(&mut timing, &event, at)?
    {
        return Ok(timing.finish(at));
    }
    Err(RequestError::Incomplete)
}

/// How many times a request is sent again after it met a connection the server had closed.
const STALE_RETRIES: usize = 2;

/// Whether sending failed because the pooled keep-alive connection it went out on had been
/// closed by the server: llama.cpp's server closes the connection after every streamed
/// reply although it announces `Keep-Alive`, and when the next request follows at once it
/// can leave before the client has seen the close. The server never read that request, so
/// sending it again on a fresh connection is safe (curl does the same). Recognised by
/// hyper's message for it, which reqwest does not expose as a kind.
fn is_stale_connection(e: &reqwest::Error) -> bool {
    e.is_request() && error_chain(e).contains("connection closed before message completed")
}

/// Applies one event; `Ok(true)` at `[DONE]`.
fn handle(timing: &mut Timing, event: &sse::SseEvent, at: Instant) -> Result<bool, RequestError> {
    match sse::interpret(event).map_err(RequestError::Protocol)? {
        Chunk::Done => Ok(true),
        Chunk::Error(message) => Err(RequestError::ErrorEvent(message)),
        Chunk::Data(data) => {
            timing.data(at, &data);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_with_and_without_eos_controls() {
        let mut spec = RequestSpec { model: "m".into(), max_tokens: 64, ignore_eos: false, ban_tokens: vec![] };
        let plain = request_body(&spec, "hi");
        assert_eq!(plain["stream"], true);
        assert_eq!(plain["stream_options"]["include_usage"], true);
        assert_eq!(plain["temperature"], 0);
        assert_eq!(plain["max_tokens"], 64);
        assert_eq!(plain["messages"][0]["content"], "hi");
        assert!(plain.get("ignore_eos").is_none() && plain.get("logit_bias").is_none());
        spec.ignore_eos = true;
        spec.ban_tokens = vec![2, 0];
        let banned = request_body(&spec, "hi");
        assert_eq!(banned["ignore_eos"], true);
        assert_eq!(banned["logit_bias"], json!({"2": -100, "0": -100}));
    }

    #[test]
    fn timing_counts_content_chunks_and_prefers_usage() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Timing::new(t0);
        t.chunk(at(5), false, None); // the role chunk
        t.chunk(at(40), true, None);
        t.chunk(at(50), true, None);
        t.chunk(at(65), true, None);
        let s = Timing::finish(std::mem::replace(&mut t, Timing::new(t0)), at(70));
        assert_eq!(s.ttft, Some(Duration::from_millis(40)));
        assert_eq!(s.itls, vec![Duration::from_millis(10), Duration::from_millis(15)]);
        assert_eq!(s.e2e, Duration::from_millis(70));
        assert_eq!(s.output_tokens, 3);
        t.chunk(at(10), true, None);
        t.chunk(at(20), false, Some(64));
        assert_eq!(t.finish(at(20)).output_tokens, 64);
    }

    #[test]
    fn timing_keeps_the_answer_text_and_the_usage() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        let text = |s: &str| Data { content: true, text: s.into(), usage: None };
        t.data(t0, &Data::default());
        t.data(t0 + Duration::from_millis(30), &text("Hel"));
        t.data(t0 + Duration::from_millis(40), &text("lo!"));
        let usage = sse::Usage { prompt_tokens: Some(120), completion_tokens: Some(2), cached_tokens: Some(64) };
        t.data(t0 + Duration::from_millis(41), &Data { content: false, text: String::new(), usage: Some(usage) });
        let s = t.finish(t0 + Duration::from_millis(42));
        assert_eq!(s.text, "Hello!");
        assert_eq!(s.ttft, Some(Duration::from_millis(30)));
        assert_eq!((s.output_tokens, s.prompt_tokens, s.cached_tokens), (2, Some(120), Some(64)));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(RequestError::Status { status: 429, message: String::new() }.kind(), "http_429");
        assert_eq!(RequestError::Incomplete.kind(), "incomplete");
        assert!(RequestError::Status { status: 503, message: String::new() }.is_server_error());
        assert!(!RequestError::Status { status: 429, message: String::new() }.is_server_error());
        let ws = |kind: &str| RequestError::WsError { kind: kind.into(), message: String::new() };
        assert!(ws("server_error").is_server_error() && !ws("invalid_request_error").is_server_error());
        assert_eq!(ws("rate_limit_error").kind(), "ws_rate_limit_error");
        assert!(!RequestError::Disconnected.is_server_error());
    }
}
