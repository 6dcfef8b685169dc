//! Fuzz target bodies for the server's untrusted inputs: request bodies of the JSON
//! endpoints (bytes → serde → validation → the error body a client would get), the
//! client frames of the chat WebSocket, and generated text through the tool-call parser (a
//! prompt can make the model write anything).
//!
//! Each body takes raw bytes and must never panic, whatever the bytes. They run under the
//! coverage-guided `cargo fuzz` targets in `fuzz/` (`just fuzz`) and under the stable
//! replay tests of `just test` (committed corpus, regressions and seeded mutations; see
//! `stellarchat_model::fuzzing::replay`). The model crate's bodies (GGUF, chat templates,
//! tokenizer) are in `stellarchat_model::fuzzing`.

use serde::de::DeserializeOwned;

use crate::serve::error::ApiError;
use crate::serve::tools::format::ToolFormat;
use crate::serve::tools::parse::{ToolCallParser, ToolEvent, parse_output};
use crate::serve::protocol::{ChatCompletionRequest, CompletionRequest, ResponsesRequest, TokenizeRequest};
use crate::serve::validate::responses::validate_responses;
use crate::serve::validate::{Context, Limits, parse_json, validate_chat, validate_completion};
use crate::serve::ws::{ClientFrame, parse_frame};

/// Limits like a small model's: a vocabulary the size of SmolLM2's.
const LIMITS: Limits = Limits { max_model_len: 8192, max_tokens_limit: 4096, max_n: 8, vocab_size: 49152 };

/// A `POST /v1/chat/completions` body.
pub fn chat_request(bytes: &[u8]) {
    let _ = parse(bytes).and_then(|req: ChatCompletionRequest| {
        let model = req.model.clone();
        validate_chat(req, &context(&model))
    });
}

/// A `POST /v1/completions` body.
pub fn completion_request(bytes: &[u8]) {
    let _ = parse(bytes).and_then(|req: CompletionRequest| {
        let model = req.model.clone();
        validate_completion(req, &context(&model))
    });
}

/// A `POST /v1/responses` body.
pub fn responses_request(bytes: &[u8]) {
    let _ = parse(bytes).and_then(|req: ResponsesRequest| {
        let model = req.model.clone();
        validate_responses(req, &context(&model))
    });
}

/// A `POST /tokenize` body (parsing only: the rest is the tokenizer's, fuzzed on its own).
pub fn tokenize_request(bytes: &[u8]) {
    let _ = parse::<TokenizeRequest>(bytes);
}

/// A text frame of `GET /v1/chat/ws` (the transport hands over only valid UTF-8); a
/// `chat.completion.create` goes on through chat validation, as the session does.
pub fn ws_frame(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match parse_frame(text) {
        Ok(ClientFrame::Create { id, request }) => {
            assert!(!id.is_empty());
            let body = serde_json::to_vec(&request).expect("a JSON value serializes");
            chat_request(&body);
        }
        Err((_, error)) => error_body(&error),
        // Cancels and the conversation frames: parsing is all there is to them.
        Ok(_) => {}
    }
}

/// Generated text through the tool-call parser of each format, streamed in chunks (a NUL
/// byte in the input ends a chunk) and whole: every call's arguments must be JSON, and a
/// stream that ends with calls must agree with the whole text on the content and calls.
pub fn tool_output(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let chunks: Vec<&str> = text.split('\0').collect();
    let whole_text = chunks.concat();
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Mistral] {
        let whole = parse_output(format, &whole_text);
        for call in &whole.calls {
            serde_json::from_str::<serde_json::Value>(&call.arguments)
                .unwrap_or_else(|e| panic!("{format:?}: arguments {:?} are not JSON: {e}", call.arguments));
        }
        let mut parser = ToolCallParser::new(format);
        let mut events: Vec<ToolEvent> = chunks.iter().flat_map(|chunk| parser.push(chunk)).collect();
        let (rest, outcome) = parser.finish();
        events.extend(rest);
        // A stream cannot take back a call it announced before the text broke; when it ends
        // with calls (finish_reason `tool_calls`), it must agree with the whole text.
        if !outcome.has_calls() {
            continue;
        }
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for event in events {
            match event {
                ToolEvent::Content(text) => content.push_str(&text),
                ToolEvent::CallStart { index, name, .. } => {
                    assert_eq!(index, calls.len(), "{format:?}: call indexes in order");
                    calls.push((name, String::new()));
                }
                ToolEvent::Arguments { index, fragment } => calls[index].1.push_str(&fragment),
            }
        }
        let whole_calls: Vec<(String, String)> =
            whole.calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
        assert_eq!(calls, whole_calls, "{format:?}: streamed calls differ from the whole text's");
        // Up to whitespace: a stream drops whitespace held after a call when a trigger
        // follows it, which the whole text may keep (a known, cosmetic difference).
        let words = |text: Option<&str>| text.unwrap_or_default().split_whitespace().collect::<String>();
        assert_eq!(
            words(Some(&content)),
            words(whole.content.as_deref()),
            "{format:?}: streamed content differs from the whole text's"
        );
    }
}

/// Parses a body as the handlers do; a failure is rendered as the client would get it.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json(bytes).inspect_err(error_body)
}

/// The served model name is the request's own, so that inputs get past the model check to
/// the validation behind it (a wrong name is one early, well-tested error).
fn context(model: &str) -> Context<'_> {
    Context { served_model_name: model, limits: &LIMITS, defaults: Default::default() }
}

/// What a client gets for an error: its status, kind and JSON body.
fn error_body(error: &ApiError) {
    let _ = (error.status(), error.kind());
    serde_json::to_string(&error.to_body()).expect("an error body serializes");
}

#[cfg(test)]
mod tests {
    use stellarchat_model::fuzzing::replay::{ReplayCounts, replay};

    use super::*;

    /// Mutated inputs per target: a fraction of a second each (most mutations are refused
    /// early, as malformed JSON).
    const MUTATIONS: usize = 5000;

    fn assert_ran(counts: ReplayCounts) {
        assert!(counts.committed > 0 && counts.mutated >= MUTATIONS, "{counts:?}");
    }

    #[test]
    fn fuzz_chat_request_corpus_and_mutations() {
        assert_ran(replay("chat_request", chat_request, MUTATIONS));
    }

    #[test]
    fn fuzz_completion_request_corpus_and_mutations() {
        assert_ran(replay("completion_request", completion_request, MUTATIONS));
    }

    #[test]
    fn fuzz_responses_request_corpus_and_mutations() {
        assert_ran(replay("responses_request", responses_request, MUTATIONS));
    }

    #[test]
    fn fuzz_tokenize_request_corpus_and_mutations() {
        assert_ran(replay("tokenize_request", tokenize_request, MUTATIONS));
    }

    #[test]
    fn fuzz_ws_frame_corpus_and_mutations() {
        assert_ran(replay("ws_frame", ws_frame, MUTATIONS));
    }

    #[test]
    fn fuzz_tool_output_corpus_and_mutations() {
        assert_ran(replay("tool_output", tool_output, MUTATIONS));
    }

    /// Found by the first long replay: in Llama 3 JSON, a second call that breaks after its
    /// name was streamed. The stream then ends without calls while the whole text keeps the
    /// first one; what must hold (JSON arguments, agreement when the stream has calls) holds.
    #[test]
    fn regression_a_call_broken_after_its_name_was_streamed() {
        let dir = stellarchat_model::fuzzing::replay::fuzz_dir().join("regressions/tool_output");
        tool_output(&std::fs::read(dir.join("llama3-split-key.txt")).unwrap());
    }

    /// Found by the long replay: a Hermes call whose JSON closed at a chunk's end, then a
    /// wrong closing tag. The stream had counted the call and ended as `tool_calls`, while
    /// the whole text (non-streaming) has no calls; now neither has.
    #[test]
    fn regression_a_wrong_closing_tag_after_a_chunk_uncounts_the_call() {
        let mut parser = ToolCallParser::new(ToolFormat::Hermes);
        parser.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_");
        parser.push("all>\nmore");
        let (_, outcome) = parser.finish();
        assert!(!outcome.has_calls(), "{outcome:?}");
        let whole = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_all>\nmore";
        assert!(parse_output(ToolFormat::Hermes, whole).calls.is_empty());
        let dir = stellarchat_model::fuzzing::replay::fuzz_dir().join("regressions/tool_output");
        tool_output(&std::fs::read(dir.join("hermes-closing-tag-broken-after-chunk.txt")).unwrap());
    }

    /// Found by the long replay: a call object with its arguments key twice. The stream
    /// sent the first value and then bytes of the second as if they continued it (not JSON);
    /// the whole text kept the second. A repeated name or arguments key is now malformed.
    #[test]
    fn regression_a_repeated_arguments_key_is_not_a_call() {
        for text in [
            "{\"name\": \"f\", \"arguments\": \"x\", \"arguments\": {\"a\": 1}}",
            "{\"name\": \"f\", \"name\": \"g\", \"parameters\": {}}",
        ] {
            assert!(parse_output(ToolFormat::Llama3Json, text).calls.is_empty(), "{text}");
        }
        let dir = stellarchat_model::fuzzing::replay::fuzz_dir().join("regressions/tool_output");
        tool_output(&std::fs::read(dir.join("llama3-repeated-arguments-key.txt")).unwrap());
    }
}
