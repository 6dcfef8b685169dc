//! The prompt for templates that know nothing of tools (their source never uses `tools`:
//! SmolLM2's ChatML, Gemma 3's).
//!
//! Such a template would drop the tool definitions, print assistant calls as empty turns
//! and either reject the `tool` role or show the model a role it was never tuned on. So the
//! conversation is rewritten, before the template sees it, into roles every template takes:
//! - the tools are described in a system block (appended to the first system message, or a
//!   new first system message) that lists each definition as JSON inside `<tools></tools>`
//!   and asks for the Hermes format, `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`;
//! - an assistant turn's calls are written back in that format after its text;
//! - tool results become a user turn with one `<tool_response>…</tool_response>` per result
//!   (consecutive results share the turn, and a user message right after joins it too, so
//!   templates that insist on alternating roles still accept the conversation).

use serde_json::Value;
use stellarchat_model::chat_template::ChatMessage;

use super::grammar::to_compact_json;
use super::{ToolFormat, ToolSet};

/// The system block that teaches the Hermes format.
pub fn tools_block(tools: &ToolSet) -> String {
    let mut block = String::from(
        "# Tools\n\nYou can call functions to help with the request. The functions you can call are \
         described, one JSON object per line, inside <tools></tools>:\n<tools>\n",
    );
    for tool in tools.tools() {
        block.push_str(&to_compact_json(&tool.template_value()));
        block.push('\n');
    }
    block.push_str(
        "</tools>\n\nTo call a function, answer with its name and its arguments as JSON inside \
         <tool_call></tool_call>, one block per call:\n<tool_call>\n{\"name\": \"function name\", \"arguments\": \
         {\"argument name\": \"value\"}}\n</tool_call>\nThe results come back inside <tool_response></tool_response>.",
    );
    block
}

/// Rewrites `messages` (as they would go to a tool-aware template) for a template without
/// tool support; `tools` adds the system block.
pub fn rewrite(messages: Vec<ChatMessage>, tools: Option<&ToolSet>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    // Whether the last message in `out` holds tool results (so results and a following user
    // message join it).
    let mut last_holds_results = false;
    for message in messages {
        match message.role.as_str() {
            "tool" => {
                let result = format!("<tool_response>\n{}\n</tool_response>", message.content.unwrap_or_default());
                match out.last_mut() {
                    Some(last) if last_holds_results => append(last, &result),
                    _ => out.push(ChatMessage::new("user", result)),
                }
                last_holds_results = true;
            }
            "user" if last_holds_results => {
                let last = out.last_mut().expect("results were pushed");
                append(last, message.content.as_deref().unwrap_or_default());
                last_holds_results = false;
            }
            "assistant" if message.tool_calls.is_some() => {
                let mut text = message.content.unwrap_or_default();
                for call in message.tool_calls.iter().flatten() {
                    let function = &call["function"];
                    let name = function["name"].as_str().unwrap_or_default();
                    let arguments = match &function["arguments"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&ToolFormat::Hermes.call_text(name, &arguments));
                }
                out.push(ChatMessage::new("assistant", text));
                last_holds_results = false;
            }
            _ => {
                out.push(ChatMessage {
                    content: Some(message.content.unwrap_or_default()),
                    tool_calls: None,
                    tool_call_id: None,
                    ..message
                });
                last_holds_results = false;
            }
        }
    }
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let block = tools_block(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                let content = first.content.get_or_insert_with(String::new);
                if !content.is_empty() {
                    content.push_str("\n\n");
                }
                content.push_str(&block);
            }
            _ => out.insert(0, ChatMessage::new("system", block)),
        }
    }
    out
}

fn append(message: &mut ChatMessage, text: &str) {
    let content = message.content.get_or_insert_with(String::new);
    content.push('\n');
    content.push_str(text);
}
