//! Server-Sent Events exactly as OpenAI frames them: `data: {json}\n\n` per chunk,
//! `: keep-alive\n\n` while idle, `data: [DONE]\n\n` last. An error after the stream has
//! started is sent as `data: {"error":{…}}\n\n` before `[DONE]` (the status is already 200).
//!
//! The body stream owns the [`Generation`]: when hyper drops it (client disconnected), the
//! engine's streams are dropped and the sequences are cancelled at the next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use salvo::http::HeaderValue;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use salvo::prelude::*;
use serde::Serialize;

use super::error::ApiError;
use super::generate::{DriverEvent, Generation};
use super::middleware::RequestLog;

pub const DONE: &[u8] = b"data: [DONE]\n\n";
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One `data:` frame. serde_json escapes newlines, so the JSON is a single line.
pub fn data_frame<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing our own plain structs cannot fail; an empty object keeps the framing valid.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Turns driver events into the frames of one API's stream.
pub trait StreamFormat: Send + 'static {
    /// Frames sent before any event (the chat role chunks).
    fn opening(&mut self) -> Vec<Bytes>;
    /// Frames for one event (`Error` is handled by the writer).
    fn event(&mut self, event: &DriverEvent) -> Vec<Bytes>;
    /// Frames reporting a failure after the stream started (default: OpenAI's
    /// `data: {"error":…}` chunk).
    fn error(&mut self, error: &ApiError) -> Vec<Bytes> {
        vec![data_frame(&error.to_body())]
    }
    /// The stream's last frame (default `data: [DONE]`; the Responses API sends none).
    fn end(&mut self) -> Option<Bytes> {
        Some(Bytes::from_static(DONE))
    }
}

struct SseState<F> {
    generation: Generation,
    format: F,
    pending: VecDeque<Bytes>,
    done: bool,
    keepalive: Duration,
    log: RequestLog,
}

/// Sets the SSE headers and a body that drives `generation` through `format`.
pub fn respond<F: StreamFormat>(
    res: &mut Response,
    generation: Generation,
    mut format: F,
    keepalive: Duration,
    log: RequestLog,
) {
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and similar proxies must not buffer the stream.
    res.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    let pending: VecDeque<Bytes> = format.opening().into();
    let state = SseState { generation, format, pending, done: false, keepalive, log: log.into_stream() };
    let body = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(frame), st));
            }
            if st.done {
                // Dropping `st` writes the access-log line.
                st.log.mark_completed();
                return None;
            }
            let event = match tokio::time::timeout(st.keepalive, st.generation.next()).await {
                Err(_) => return Some((Ok(Bytes::from_static(KEEP_ALIVE)), st)),
                Ok(event) => event,
            };
            match event {
                None => {
                    st.pending.extend(st.format.end());
                    st.done = true;
                }
                Some(DriverEvent::Error(error)) => {
                    st.log.error_kind = Some(error.kind());
                    if let super::error::ApiError::Internal(detail) | super::error::ApiError::EngineFault(detail) = &error {
                        tracing::error!(request_id = %st.log.request_id, error = %detail, "stream failed");
                    }
                    let frames = st.format.error(&error);
                    st.pending.extend(frames);
                    st.pending.extend(st.format.end());
                    st.done = true;
                }
                Some(event) => {
                    match &event {
                        DriverEvent::Done(usage) => {
                            st.log.prompt_tokens = usage.prompt_tokens;
                            st.log.completion_tokens = usage.completion_tokens;
                        }
                        DriverEvent::Delta { text, .. } if st.log.log_content() => {
                            st.log.completion.get_or_insert_with(String::new).push_str(text);
                        }
                        _ => {}
                    }
                    st.pending.extend(st.format.event(&event));
                }
            }
        }
    });
    res.stream(body);
}
