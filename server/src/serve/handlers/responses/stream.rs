//! A streamed response: driver events → the Responses API's typed SSE events
//! (`event: <type>` + `data: {…, "sequence_number": n}`), in the order the openai SDK's
//! stream accumulator checks: `response.created`, `response.in_progress`; per output item
//! `response.output_item.added`, its content (`content_part.added`, `output_text.delta`…,
//! `output_text.done`, `content_part.done` for a message; `function_call_arguments.delta`…,
//! `.done` for a call), `response.output_item.done`; last `response.completed` (or
//! `response.incomplete`), after which the response is stored. No `[DONE]` line: OpenAI's
//! Responses streams end with the last event.

use std::sync::Arc;

use bytes::Bytes;
use stellarchat_model::engine::FinishReason;

use super::draft::{ResponseDraft, message_item, new_id};
use crate::serve::error::ApiError;
use crate::serve::generate::DriverEvent;
use crate::serve::protocol::{OutputContent, OutputItem, ResponseEventKind, ResponseStreamEvent};
use crate::serve::responses_store::ResponseStore;
use crate::serve::sse::StreamFormat;
use crate::serve::tools::{ToolCallParser, ToolEvent};

/// The item being streamed.
enum OpenItem {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

pub struct ResponsesStream {
    draft: ResponseDraft,
    store: Arc<ResponseStore>,
    sequence: u64,
    /// Finished items, in output order.
    done: Vec<OutputItem>,
    open: Option<OpenItem>,
    /// Set when the text is to be read for function calls.
    parser: Option<ToolCallParser>,
    reason: FinishReason,
}

/// One SSE frame: `event: <type>` and the JSON data on one line.
pub fn event_frame(event: &ResponseStreamEvent) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing our own plain structs cannot fail; an empty object keeps the framing valid.
    if serde_json::to_writer(&mut out, event).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl ResponsesStream {
    /// `store` keeps the finished response when the draft says so.
    pub fn new(draft: ResponseDraft, store: Arc<ResponseStore>, parser: Option<ToolCallParser>) -> Self {
        ResponsesStream { draft, store, sequence: 0, done: Vec::new(), open: None, parser, reason: FinishReason::Stop }
    }

    fn emit(&mut self, event: ResponseEventKind, out: &mut Vec<Bytes>) {
        out.push(event_frame(&ResponseStreamEvent { event, sequence_number: self.sequence }));
        self.sequence += 1;
    }

    /// The output index of the open item (or of the next one).
    fn index(&self) -> usize {
        self.done.len()
    }

    fn text(&mut self, delta: &str, out: &mut Vec<Bytes>) {
        if delta.is_empty() {
            return;
        }
        if !matches!(self.open, Some(OpenItem::Message { .. })) {
            self.close(out);
            self.open_message(out);
        }
        let output_index = self.index();
        let Some(OpenItem::Message { id, text }) = &mut self.open else { return };
        text.push_str(delta);
        let item_id = id.clone();
        let event = ResponseEventKind::OutputTextDelta {
            item_id,
            output_index,
            content_index: 0,
            delta: delta.to_string(),
            logprobs: Vec::new(),
        };
        self.emit(event, out);
    }

    fn open_message(&mut self, out: &mut Vec<Bytes>) {
        let id = new_id("msg");
        let output_index = self.index();
        let item = OutputItem::Message {
            id: id.clone(),
            status: "in_progress".into(),
            role: "assistant".into(),
            content: Vec::new(),
        };
        self.emit(ResponseEventKind::OutputItemAdded { output_index, item }, out);
        let part = OutputContent::text("");
        self.emit(
            ResponseEventKind::ContentPartAdded { item_id: id.clone(), output_index, content_index: 0, part },
            out,
        );
        self.open = Some(OpenItem::Message { id, text: String::new() });
    }

    fn tool_event(&mut self, event: ToolEvent, out: &mut Vec<Bytes>) {
        match event {
            ToolEvent::Content(text) => self.text(&text, out),
            ToolEvent::CallStart { id: call_id, name, .. } => {
                self.close(out);
                let id = new_id("fc");
                let item = OutputItem::FunctionCall {
                    id: id.clone(),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    status: "in_progress".into(),
                };
                let output_index = self.index();
                self.emit(ResponseEventKind::OutputItemAdded { output_index, item }, out);
                self.open = Some(OpenItem::Call { id, call_id, name, arguments: String::new() });
            }
            ToolEvent::Arguments { fragment, .. } => {
                let output_index = self.index();
                let Some(OpenItem::Call { id, arguments, .. }) = &mut self.open else { return };
                arguments.push_str(&fragment);
                let item_id = id.clone();
                self.emit(
                    ResponseEventKind::FunctionCallArgumentsDelta { item_id, output_index, delta: fragment },
                    out,
                );
            }
        }
    }

    /// Closes the open item with its `.done` events.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        let output_index = self.index();
        let status = if self.reason == FinishReason::Length { "incomplete" } else { "completed" };
        let item = match self.open.take() {
            None => return,
            Some(OpenItem::Message { id, text }) => {
                let done = ResponseEventKind::OutputTextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: Vec::new(),
                };
                self.emit(done, out);
                let part = OutputContent::text(text.clone());
                let item_id = id.clone();
                self.emit(ResponseEventKind::ContentPartDone { item_id, output_index, content_index: 0, part }, out);
                message_item(&id, status, &text)
            }
            Some(OpenItem::Call { id, call_id, name, arguments }) => {
                let done = ResponseEventKind::FunctionCallArgumentsDone {
                    item_id: id.clone(),
                    output_index,
                    name: name.clone(),
                    arguments: arguments.clone(),
                };
                self.emit(done, out);
                // A call the generation cut short is not a call the client can run.
                let complete = serde_json::from_str::<serde_json::Value>(&arguments).is_ok_and(|v| v.is_object());
                let status = if complete { "completed" } else { "incomplete" };
                OutputItem::FunctionCall { id, call_id, name, arguments, status: status.into() }
            }
        };
        self.emit(ResponseEventKind::OutputItemDone { output_index, item: item.clone() }, out);
        self.done.push(item);
    }
}

impl StreamFormat for ResponsesStream {
    fn opening(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        let response = Box::new(self.draft.object("in_progress", Vec::new(), None));
        self.emit(ResponseEventKind::Created { response: response.clone() }, &mut out);
        self.emit(ResponseEventKind::InProgress { response }, &mut out);
        out
    }

    fn event(&mut self, event: &DriverEvent) -> Vec<Bytes> {
        let mut out = Vec::new();
        match event {
            DriverEvent::Delta { text, .. } => match self.parser.as_mut() {
                Some(parser) => {
                    for e in parser.push(text) {
                        self.tool_event(e, &mut out);
                    }
                }
                None => self.text(text, &mut out),
            },
            DriverEvent::Finish { reason, .. } => {
                self.reason = *reason;
                if let Some(parser) = self.parser.as_mut() {
                    let (events, _) = parser.finish();
                    for e in events {
                        self.tool_event(e, &mut out);
                    }
                }
                if self.done.is_empty() && self.open.is_none() {
                    // Even an empty answer is a message.
                    self.open_message(&mut out);
                }
                self.close(&mut out);
            }
            DriverEvent::Done(usage) => {
                let response = self.draft.finished(std::mem::take(&mut self.done), self.reason, usage);
                self.draft.keep(&self.store, &response);
                let response = Box::new(response);
                let last = if self.reason == FinishReason::Length {
                    ResponseEventKind::Incomplete { response }
                } else {
                    ResponseEventKind::Completed { response }
                };
                self.emit(last, &mut out);
            }
            DriverEvent::Error(_) => {}
        }
        out
    }

    /// A failure after the stream started: an `error` event, the stream's last.
    fn error(&mut self, error: &ApiError) -> Vec<Bytes> {
        let mut out = Vec::new();
        let body = error.to_body().error;
        self.emit(ResponseEventKind::Error { code: body.code, message: body.message, param: body.param }, &mut out);
        out
    }

    fn end(&mut self) -> Option<Bytes> {
        None
    }
}
