//! `input` of `/v1/responses` → [`ConversationItem`]s.
//!
//! Items come as OpenAI's SDK sends them: messages with or without `"type": "message"`
//! (content a string or `input_text` / `output_text` parts), `function_call` and
//! `function_call_output` items — also output items a client sends back verbatim, with
//! their `id`, `status` and `annotations`, which are ignored. Everything else is rejected
//! with the exact `param` (`input[2].content[0].type`).

use serde_json::{Map, Value};

use super::super::{Role, unsupported};
use super::ConversationItem;
use crate::serve::error::ApiError;
use crate::serve::protocol::ResponsesInput;
use crate::serve::tools::check_tool_name;

/// Item types of OpenAI's that this server does not implement (built-in tools, reasoning,
/// references to stored items).
const UNSUPPORTED_ITEMS: &[&str] = &[
    "reasoning",
    "item_reference",
    "file_search_call",
    "web_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
    "compaction",
];

/// `input` → items. A string is one user message.
pub fn parse_input(input: ResponsesInput) -> Result<Vec<ConversationItem>, ApiError> {
    match input {
        ResponsesInput::Text(text) if text.is_empty() => Err(ApiError::invalid("input", "`input` must not be empty.")),
        ResponsesInput::Text(text) => Ok(vec![ConversationItem::Message { role: Role::User, text }]),
        ResponsesInput::Items(items) if items.is_empty() => {
            Err(ApiError::invalid("input", "`input` must contain at least one item."))
        }
        ResponsesInput::Items(items) => items.iter().enumerate().map(|(i, item)| parse_item(i, item)).collect(),
    }
}

fn parse_item(i: usize, item: &Value) -> Result<ConversationItem, ApiError> {
    let at = |field: &str| format!("input[{i}].{field}");
    let Value::Object(obj) = item else {
        return Err(ApiError::invalid(format!("input[{i}]"), "Each input item must be an object."));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::invalid(at("type"), "`type` must be a string.")),
    };
    match kind {
        "message" => parse_message(i, obj),
        "function_call" => {
            let name = required_str(obj, &at("name"), "name")?;
            check_tool_name(name, &at("name"))?;
            let arguments = required_str(obj, &at("arguments"), "arguments")?;
            if serde_json::from_str::<Value>(arguments).map_or(true, |v| !v.is_object()) {
                return Err(ApiError::invalid(at("arguments"), "`arguments` must be a JSON object, as text."));
            }
            Ok(ConversationItem::FunctionCall {
                call_id: call_id(obj, &at("call_id"))?,
                name: name.to_string(),
                arguments: arguments.to_string(),
            })
        }
        "function_call_output" => {
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => text_parts(parts, &at("output"), &["input_text"])?,
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid(
                        at("output"),
                        format!("Missing required parameter: '{}'.", at("output")),
                    ));
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        at("output"),
                        "`output` must be a string or a list of input_text parts.",
                    ));
                }
            };
            Ok(ConversationItem::FunctionCallOutput { call_id: call_id(obj, &at("call_id"))?, output })
        }
        other if UNSUPPORTED_ITEMS.contains(&other) => {
            Err(unsupported(&at("type"), &format!("Input items of type `{other}`")))
        }
        other => Err(ApiError::invalid(
            at("type"),
            format!(
                "Invalid value: '{other}'. Supported values are: 'message', 'function_call' and 'function_call_output'."
            ),
        )),
    }
}

fn parse_message(i: usize, obj: &Map<String, Value>) -> Result<ConversationItem, ApiError> {
    let at = |field: &str| format!("input[{i}].{field}");
    let role = match required_str(obj, &at("role"), "role")? {
        "user" => Role::User,
        "system" | "developer" => Role::System,
        "assistant" => Role::Assistant,
        other => {
            return Err(ApiError::invalid(
                at("role"),
                format!(
                    "Invalid value: '{other}'. Supported values are: 'user', 'system', 'developer' and 'assistant'."
                ),
            ));
        }
    };
    let text = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(parts, &at("content"), &["input_text", "output_text", "refusal"])?,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(at("content"), format!("Missing required parameter: '{}'.", at("content"))));
        }
        Some(_) => return Err(ApiError::invalid(at("content"), "`content` must be a string or a list of parts.")),
    };
    Ok(ConversationItem::Message { role, text })
}

/// Text parts joined with a newline (as chat content parts are). `allowed`: the part types
/// that carry text here; images, files and audio are unsupported.
fn text_parts(parts: &[Value], param: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = |field: &str| format!("{param}[{j}].{field}");
        let Value::Object(obj) = part else {
            return Err(ApiError::invalid(format!("{param}[{j}]"), "Each content part must be an object."));
        };
        let kind = required_str(obj, &at("type"), "type")?;
        match kind {
            // A refusal round-tripped from an output message carries its text as `refusal`.
            "refusal" if allowed.contains(&kind) => texts.push(required_str(obj, &at("refusal"), "refusal")?),
            _ if allowed.contains(&kind) => texts.push(required_str(obj, &at("text"), "text")?),
            "input_image" | "input_file" | "input_audio" => {
                return Err(unsupported(&at("type"), &format!("Content of type `{kind}`")));
            }
            other => {
                return Err(ApiError::invalid(
                    at("type"),
                    format!("Invalid value: '{other}'. Supported values are: '{}'.", allowed.join("', '")),
                ));
            }
        }
    }
    Ok(texts.join("\n"))
}

fn required_str<'a>(obj: &'a Map<String, Value>, param: &str, key: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::invalid(param, format!("Missing required parameter: '{param}'."))),
        Some(_) => Err(ApiError::invalid(param, format!("`{key}` must be a string."))),
    }
}

fn call_id(obj: &Map<String, Value>, param: &str) -> Result<String, ApiError> {
    let id = required_str(obj, param, "call_id")?;
    if id.is_empty() {
        return Err(ApiError::invalid(param, "`call_id` must not be empty."));
    }
    Ok(id.to_string())
}
