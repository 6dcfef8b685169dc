//! Server-Sent Events, client side: bytes in, events out, and what an OpenAI streaming
//! chunk tells the benchmark (content or not, the answer text, token usage, an error).
//!
//! Written by hand rather than taken from a crate: the benchmark needs only the `data:` and
//! `event:` fields, and it must not trust the server's framing (a chunk boundary may fall
//! anywhere, even inside a UTF-8 character).

use serde::Deserialize;

/// One dispatched event: the `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// A malformed stream: a line that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an SSE line is not valid UTF-8")]
pub struct SseError;

/// Incremental SSE decoder: feed it the body's byte chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Decodes `bytes`, returning the events completed by them (an event ends at a blank line).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| SseError)?;
            if let Some(event) = self.line_done(&line) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The event left over when the body ends without its final blank line.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        let rest = std::mem::take(&mut self.line);
        if !rest.is_empty() {
            let line = String::from_utf8(rest).map_err(|_| SseError)?;
            let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
            if let Some(event) = self.line_done(&line) {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment, e.g. `: keep-alive`
        }
        let (field, value) = parse_field(line);
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {} // `id`, `retry` and unknown fields do not matter here
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        Some(SseEvent { event, data: std::mem::take(&mut self.data).join("\n") })
    }
}

/// Splits `field: value` (one optional space after the colon; a line without a colon is a
/// field with an empty value), as the SSE specification says.
pub fn parse_field(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

/// What one streamed event means to the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream is complete.
    Done,
    /// A completion chunk.
    Data(Data),
    /// An error reported inside the stream.
    Error(String),
}

/// What a completion chunk carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    /// Whether it carried generated output (answer or reasoning text).
    pub content: bool,
    /// The answer text it carried (not the reasoning): the multi-turn mode sends it back.
    pub text: String,
    /// The usage figures, when this was the usage chunk.
    pub usage: Option<Usage>,
}

/// The token counts of a usage chunk; each `None` when the server left it out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`: the prompt tokens the server's cache reused.
    pub cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ChunkBody {
    #[serde(default)]
    choices: Vec<ChoiceBody>,
    #[serde(default)]
    usage: Option<UsageBody>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceBody {
    /// Chat completions.
    #[serde(default)]
    delta: Option<DeltaBody>,
    /// Legacy completions.
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct DeltaBody {
    #[serde(default)]
    content: Option<String>,
    /// Reasoning models stream their thinking here; it is generated output too.
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsBody>,
}

#[derive(Deserialize)]
struct PromptDetailsBody {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// Interprets one event; `Err` holds a description when its data is not a chunk.
pub fn interpret(event: &SseEvent) -> Result<Chunk, String> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    if event.event.as_deref() == Some("error") {
        return Ok(Chunk::Error(error_message(data)));
    }
    let body: ChunkBody = serde_json::from_str(data).map_err(|e| format!("chunk is not JSON: {e}"))?;
    if let Some(error) = body.error {
        return Ok(Chunk::Error(error_message(&error.to_string())));
    }
    let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    let content = body.choices.iter().any(|c| {
        non_empty(&c.text) || c.delta.as_ref().is_some_and(|d| non_empty(&d.content) || non_empty(&d.reasoning_content))
    });
    let mut text = String::new();
    for choice in &body.choices {
        let answer = choice.delta.as_ref().and_then(|d| d.content.as_deref()).or(choice.text.as_deref());
        text.push_str(answer.unwrap_or_default());
    }
    let usage = body.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
    });
    Ok(Chunk::Data(Data { content, text, usage }))
}

/// The `message` of an OpenAI error body (`{"error":{"message":…}}` or `{"message":…}`),
/// else the text itself, shortened.
pub fn error_message(text: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let message = parsed.as_ref().and_then(|v| {
        let inner = v.get("error").unwrap_or(v);
        inner.get("message").and_then(|m| m.as_str()).or_else(|| inner.as_str())
    });
    let text = message.unwrap_or(text).trim();
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> SseEvent {
        SseEvent { event: None, data: s.to_string() }
    }

    #[test]
    fn events_split_across_chunks_and_comments_skipped() {
        let mut d = SseDecoder::default();
        assert!(d.push(b": keep-alive\n\nda").unwrap().is_empty());
        assert!(d.push(b"ta: {\"a\":1}\r").unwrap().is_empty());
        assert_eq!(d.push(b"\n\r\ndata: [DONE]\n\n").unwrap(), vec![data("{\"a\":1}"), data("[DONE]")]);
        assert_eq!(d.finish().unwrap(), None);
    }

    #[test]
    fn multi_line_data_event_names_and_a_missing_final_blank_line() {
        let mut d = SseDecoder::default();
        let events = d.push(b"event: error\ndata: a\ndata:b\nid: 3\n\n").unwrap();
        assert_eq!(events, vec![SseEvent { event: Some("error".into()), data: "a\nb".into() }]);
        assert!(d.push(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(d.finish().unwrap(), Some(data("[DONE]")));
    }

    #[test]
    fn utf8_split_inside_a_character_is_fine_but_invalid_utf8_is_an_error() {
        let bytes = "data: é\n\n".as_bytes();
        let mut d = SseDecoder::default();
        assert!(d.push(&bytes[..7]).unwrap().is_empty());
        assert_eq!(d.push(&bytes[7..]).unwrap(), vec![data("é")]);
        assert_eq!(SseDecoder::default().push(b"data: \xff\n"), Err(SseError));
    }

    #[test]
    fn fields() {
        assert_eq!(parse_field("data: x"), ("data", "x"));
        assert_eq!(parse_field("data:x"), ("data", "x"));
        assert_eq!(parse_field("data:  x"), ("data", " x"));
        assert_eq!(parse_field("data"), ("data", ""));
    }

    #[test]
    fn chunks() {
        let chunk = |content: bool, text: &str, usage: Option<Usage>| {
            Ok(Chunk::Data(Data { content, text: text.to_string(), usage }))
        };
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(interpret(&data(role)), chunk(false, "", None));
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#;
        assert_eq!(interpret(&data(text)), chunk(true, "Hi", None));
        let legacy = r#"{"choices":[{"index":0,"text":" there"}]}"#;
        assert_eq!(interpret(&data(legacy)), chunk(true, " there", None));
        let thinking = r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Hmm"}}]}"#;
        assert_eq!(interpret(&data(thinking)), chunk(true, "", None));
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":64,"total_tokens":73}}"#;
        let counts = Usage { prompt_tokens: Some(9), completion_tokens: Some(64), cached_tokens: None };
        assert_eq!(interpret(&data(usage)), chunk(false, "", Some(counts)));
        let cached = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":64,
            "prompt_tokens_details":{"cached_tokens":4}}}"#;
        let counts = Usage { cached_tokens: Some(4), ..counts };
        assert_eq!(interpret(&data(cached)), chunk(false, "", Some(counts)));
        assert_eq!(interpret(&data(" [DONE] ")), Ok(Chunk::Done));
        assert!(interpret(&data("not json")).is_err());
    }

    #[test]
    fn errors_in_the_stream() {
        let body = r#"{"error":{"message":"context too long","type":"invalid_request_error"}}"#;
        assert_eq!(interpret(&data(body)), Ok(Chunk::Error("context too long".into())));
        let named = SseEvent { event: Some("error".into()), data: "boom".into() };
        assert_eq!(interpret(&named), Ok(Chunk::Error("boom".into())));
        assert_eq!(error_message(r#"{"message":"m"}"#), "m");
        assert_eq!(error_message(&"x".repeat(300)).chars().count(), 201);
    }
}
