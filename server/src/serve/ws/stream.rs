//! One request task of the WebSocket: a `chat.completion.create` or a conversation turn,
//! validated, generated and streamed as chunk frames, ending with `done` (or `error`).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Outbox, Outgoing, conversation, error_frame};
use crate::serve::error::ApiError;
use crate::serve::generate::{DriverEvent, Generation, PlannedPrompt};
use crate::serve::handlers::chat::{ChatChunker, prepare_chat};
use crate::serve::middleware::RequestLog;
use crate::serve::prompt::off_worker;
use crate::serve::protocol::ChatCompletionRequest;
use crate::serve::protocol::ws::WsServerFrame;
use crate::serve::registry::ModelLease;
use crate::serve::routes;
use crate::serve::state::AppState;
use crate::serve::tools::OutputPlan;
use crate::serve::validate::{ValidChat, validate_chat};

/// What a request task runs: a `chat.completion.create`, or a conversation's turn.
pub(super) enum Job {
    Request(Value),
    Turn(conversation::Turn),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Finished,
    Cancelled,
    /// The socket's writer is gone.
    Disconnected,
}

/// One job: validate, generate, stream chunks, finish with `done` (or an `error` event).
pub(super) async fn run_request(
    state: Arc<AppState>,
    log_id: String,
    (id, seq): (String, u64),
    job: Job,
    outbox: Outbox,
    cancel: CancellationToken,
    ended: mpsc::UnboundedSender<(String, u64)>,
) {
    let mut log = RequestLog::new(state.clone(), log_id.clone(), "WS", routes::CHAT_WS).into_stream();
    let stream = Stream { state: &state, id: &id, outbox: &outbox, cancel: &cancel, log_id: &log_id };
    let outcome = match job {
        // Validation, rendering and tokenizing run off the async workers, as over HTTP.
        Job::Request(request) => match model_of(&state, &request).await {
            Ok(model) => match off_worker({
                let state = state.clone();
                move || prepare(&state, &model, request)
            })
            .await
            {
                Ok(prepared) => stream.run(prepared, &mut log, &mut String::new()).await.map(|(_, last)| last),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        // The turn is in the conversation when this returns.
        Job::Turn(turn) => turn.run(&stream, &mut log).await,
    };
    let last = match outcome {
        Ok(last) => last.map(Outgoing::from),
        Err(e) => {
            log.status = e.status().as_u16();
            log.error_kind = Some(e.kind());
            Some(error_frame(Some(id.clone()), &e))
        }
    };
    log.mark_completed();
    // The end is reported before the last frame goes out (see the session's loop).
    let _ = ended.send((id, seq));
    if let Some(last) = last {
        let _ = outbox.send(last).await;
    }
}

/// The model a request's `model` names (a missing or non-string one fails validation later,
/// against the default model), loaded if need be.
pub(super) async fn model_of(state: &AppState, request: &Value) -> Result<ModelLease, ApiError> {
    let name = request.get("model").and_then(Value::as_str).unwrap_or(state.models.default_id());
    state.model(name).await
}

/// A request validated and tokenized, ready to generate.
pub(super) struct Prepared {
    model: ModelLease,
    valid: ValidChat,
    prompt_text: String,
    pub(super) prompt: PlannedPrompt,
    plan: OutputPlan,
}

/// Validates a chat request and plans its prompt (the same tools and response formats as
/// over HTTP).
pub(super) fn prepare(state: &Arc<AppState>, model: &ModelLease, request: Value) -> Result<Prepared, ApiError> {
    let mut request: ChatCompletionRequest = serde_json::to_vec(&request)
        .map_err(|e| ApiError::Internal(e.to_string()))
        .and_then(|bytes| crate::serve::validate::parse_json(&bytes))?;
    if state.models.resolve(&request.model).is_some() {
        // `model` was acquired by this name: an alias is answered under the id, as over HTTP.
        request.model = model.id.clone();
    }
    let mut valid = validate_chat(request, &model.validation_context())?;
    let (prompt_text, prompt, plan) = prepare_chat(state, model, &mut valid)?;
    Ok(Prepared { model: model.clone(), valid, prompt_text, prompt, plan })
}

/// Where one job's events go.
pub(super) struct Stream<'a> {
    pub(super) state: &'a Arc<AppState>,
    id: &'a str,
    outbox: &'a Outbox,
    cancel: &'a CancellationToken,
    log_id: &'a str,
}

impl Stream<'_> {
    async fn send(&self, frame: WsServerFrame) -> bool {
        self.outbox.send(frame.into()).await.is_ok()
    }

    /// Generates and streams chunks; the text of choice 0 is appended to `transcript` as it
    /// streams. Returns how it ended and the `done` frame, which the caller sends last.
    pub(super) async fn run(
        &self,
        prepared: Prepared,
        log: &mut RequestLog,
        transcript: &mut String,
    ) -> Result<(Outcome, Option<WsServerFrame>), ApiError> {
        let Prepared { model, valid, prompt_text, prompt, plan } = prepared;
        let id = self.id;
        let mut generation = Generation::start(self.state, &model, &valid.spec, std::slice::from_ref(&prompt))?;
        if log.log_content() {
            log.prompt = Some(prompt_text);
        }
        log.prompt_tokens = prompt.ids.len();

        let mut chunker =
            ChatChunker::new(format!("chatcmpl-{}", self.log_id), valid.model.clone(), valid.spec.include_usage);
        chunker.choices = generation.choices();
        chunker.parse_tool_calls(&plan);
        for chunk in chunker.role_chunks() {
            if !self.send(WsServerFrame::Chunk { id: id.to_string(), chunk }).await {
                return Ok((Outcome::Disconnected, None));
            }
        }
        loop {
            let event = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    let usage = generation.usage_so_far();
                    log.completion_tokens = usage.completion_tokens;
                    return Ok((Outcome::Cancelled, Some(WsServerFrame::Done { id: id.to_string(), usage, cancelled: true })));
                }
                event = generation.next() => event,
            };
            let Some(event) = event else { return Ok((Outcome::Finished, None)) };
            if let DriverEvent::Error(e) = event {
                return Err(e);
            }
            if let DriverEvent::Delta { index, text, .. } = &event {
                if *index == 0 {
                    transcript.push_str(text);
                }
                if log.log_content() {
                    log.completion.get_or_insert_with(String::new).push_str(text);
                }
            }
            for chunk in chunker.chunks(&event) {
                if !self.send(WsServerFrame::Chunk { id: id.to_string(), chunk }).await {
                    return Ok((Outcome::Disconnected, None));
                }
            }
            if let DriverEvent::Done(usage) = event {
                log.completion_tokens = usage.completion_tokens;
                return Ok((Outcome::Finished, Some(WsServerFrame::Done { id: id.to_string(), usage, cancelled: false })));
            }
        }
    }
}

