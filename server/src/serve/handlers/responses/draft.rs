//! One response in the making: its ids and echoed settings, the conversation that leads to
//! it, and how it becomes a response object and a stored entry — shared by the JSON answer
//! and the event stream, so both say the same.

use stellarchat_model::engine::FinishReason;

use crate::serve::protocol::{
    IncompleteDetails, InputTokensDetails, OutputContent, OutputItem, OutputTokensDetails, ResponseObject,
    ResponseUsage, UsageInfo, unix_now,
};
use crate::serve::responses_store::{Owner, ResponseStore, StoredResponse};
use crate::serve::tools::ToolCall;
use crate::serve::validate::Role;
use crate::serve::validate::responses::{ConversationItem, EchoedSettings};

/// `{prefix}_` and a fresh ULID in lowercase (`resp_01j…`, `msg_…`, `fc_…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::generate().to_string().to_ascii_lowercase())
}

pub struct ResponseDraft {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: EchoedSettings,
    pub previous_response_id: Option<String>,
    /// Whether the response is kept (`store` asked for it and the store is on).
    pub store: bool,
    pub owner: Owner,
    /// The stored conversation of `previous_response_id`, then this request's input.
    pub conversation: Vec<ConversationItem>,
}

impl ResponseDraft {
    /// The response object with the echoed settings; `status` `in_progress` has no usage.
    pub fn object(&self, status: &str, output: Vec<OutputItem>, usage: Option<ResponseUsage>) -> ResponseObject {
        let echo = &self.echo;
        ResponseObject {
            id: self.id.clone(),
            object: "response".into(),
            created_at: self.created_at,
            completed_at: None,
            status: status.into(),
            error: None,
            incomplete_details: None,
            instructions: echo.instructions.clone(),
            max_output_tokens: echo.max_output_tokens,
            model: self.model.clone(),
            output,
            parallel_tool_calls: echo.parallel_tool_calls,
            previous_response_id: self.previous_response_id.clone(),
            reasoning: serde_json::json!({"effort": null, "summary": null}),
            store: self.store,
            temperature: echo.temperature,
            text: echo.text.clone(),
            tool_choice: echo.tool_choice.clone(),
            tools: echo.tools.clone(),
            top_p: echo.top_p,
            truncation: "disabled".into(),
            usage,
            user: echo.user.clone(),
            metadata: echo.metadata.clone(),
            background: false,
        }
    }

    /// The finished response: `completed`, or `incomplete` when the token budget (or the
    /// context window) ran out.
    pub fn finished(&self, output: Vec<OutputItem>, reason: FinishReason, usage: &UsageInfo) -> ResponseObject {
        let incomplete = reason == FinishReason::Length;
        let mut response =
            self.object(if incomplete { "incomplete" } else { "completed" }, output, Some(response_usage(usage)));
        if incomplete {
            response.incomplete_details = Some(IncompleteDetails { reason: "max_output_tokens".into() });
        }
        response.completed_at = Some(unix_now());
        response
    }

    /// Stores the finished response with its conversation, when it is to be kept.
    pub fn keep(&self, store: &ResponseStore, response: &ResponseObject) {
        if !self.store {
            return;
        }
        let mut conversation = self.conversation.clone();
        conversation.extend(response.output.iter().map(conversation_item));
        store.insert(StoredResponse { owner: self.owner, response: response.clone(), conversation });
    }
}

/// An output item as the next turn sees it.
fn conversation_item(item: &OutputItem) -> ConversationItem {
    match item {
        OutputItem::Message { content, .. } => ConversationItem::Message {
            role: Role::Assistant,
            text: content.iter().map(|OutputContent::OutputText { text, .. }| text.as_str()).collect(),
        },
        OutputItem::FunctionCall { call_id, name, arguments, .. } => ConversationItem::FunctionCall {
            call_id: call_id.clone(),
            name: name.clone(),
            arguments: arguments.clone(),
        },
    }
}

/// An assistant message item with one text part.
pub fn message_item(id: &str, status: &str, text: &str) -> OutputItem {
    OutputItem::Message {
        id: id.to_string(),
        status: status.into(),
        role: "assistant".into(),
        content: vec![OutputContent::text(text)],
    }
}

pub fn function_call_item(call: &ToolCall, status: &str) -> OutputItem {
    OutputItem::FunctionCall {
        id: new_id("fc"),
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        status: status.into(),
    }
}

/// The output of a finished generation: a message with the text (unless the model only
/// called functions), then one item per call.
pub fn output_items(message_id: &str, text: &str, calls: &[ToolCall], reason: FinishReason) -> Vec<OutputItem> {
    let status = if reason == FinishReason::Length { "incomplete" } else { "completed" };
    let mut output = Vec::with_capacity(1 + calls.len());
    if !text.is_empty() || calls.is_empty() {
        output.push(message_item(message_id, status, text));
    }
    output.extend(calls.iter().map(|call| function_call_item(call, "completed")));
    output
}

pub fn response_usage(usage: &UsageInfo) -> ResponseUsage {
    ResponseUsage {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            cache_write_tokens: 0,
        },
        output_tokens: usage.completion_tokens,
        output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
        total_tokens: usage.total_tokens,
    }
}
