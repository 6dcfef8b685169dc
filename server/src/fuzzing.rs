//! Fuzz target bodies for the server's untrusted inputs: request bodies of the JSON
//! endpoints (bytes → serde → validation → the error body a client would get) and the
//! client frames of the chat WebSocket.
//!
//! Each body takes raw bytes and must never panic, whatever the bytes. They run under the
//! coverage-guided `cargo fuzz` targets in `fuzz/` (`just fuzz`) and under the stable
//! replay tests of `just test` (committed corpus, regressions and seeded mutations; see
//! `stellarchat_model::fuzzing::replay`). The model crate's bodies (GGUF, chat templates,
//! tokenizer) are in `stellarchat_model::fuzzing`.

use serde::de::DeserializeOwned;

use crate::serve::error::ApiError;
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

/// Parses a body as the handlers do; a failure is rendered as the client would get it.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json(bytes).inspect_err(error_body)
}

/// The served model name is the request's own, so that inputs get past the model check to
/// the validation behind it (a wrong name is one early, well-tested error).
fn context(model: &str) -> Context<'_> {
    Context { served_model_name: model, limits: &LIMITS }
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
        assert!(counts.committed > 0 && counts.mutated == MUTATIONS, "{counts:?}");
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
}
