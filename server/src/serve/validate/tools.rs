//! Validation of the tool-calling and structured-output fields: `tools`, `response_format`,
//! assistant `tool_calls` and `tool` messages. The schemas themselves are compiled later, by
//! the engine's grammar compiler, once the request has passed these checks.

use serde_json::Value;

use super::Message;
use crate::serve::error::ApiError;
use crate::serve::protocol::{ChatMessageIn, ChatTool, ToolCallIn};
use crate::serve::tools::{ResponseFormat, Tool, ToolCall, ToolSet, check_tool_name};

/// `tools` → a [`ToolSet`] (`None` when absent or empty).
pub fn validate_tools(tools: Option<&[ChatTool]>) -> Result<Option<ToolSet>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        if tool.r#type != "function" {
            return Err(ApiError::invalid(
                format!("{at}.type"),
                format!("Invalid tool type '{}': only 'function' tools are supported.", tool.r#type),
            ));
        }
        let Some(function) = &tool.function else {
            return Err(ApiError::invalid(
                format!("{at}.function"),
                "A function tool needs its `function` definition.",
            ));
        };
        out.push(Tool::new(
            &function.name,
            function.description.clone(),
            function.parameters.clone(),
            function.strict.unwrap_or(false),
            &format!("{at}.function"),
        )?);
    }
    ToolSet::new(out, "tools").map(Some)
}

/// `response_format` (or the Responses API's `text.format`, whose `json_schema` fields sit
/// beside `type` rather than under `json_schema`). `param` names the field in errors.
pub fn validate_response_format(value: Option<&Value>, param: &str) -> Result<ResponseFormat, ApiError> {
    let object = match value {
        None | Some(Value::Null) => return Ok(ResponseFormat::Text),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::invalid(param, format!("`{param}` must be an object with a `type`."))),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let (spec, at) = match object.get("json_schema") {
                Some(Value::Object(spec)) => (spec, format!("{param}.json_schema")),
                Some(_) => {
                    return Err(ApiError::invalid(format!("{param}.json_schema"), "`json_schema` must be an object."));
                }
                None if object.contains_key("schema") => (object, param.to_string()),
                None => {
                    return Err(ApiError::invalid(
                        format!("{param}.json_schema"),
                        "A `json_schema` response format needs `json_schema: {\"name\": ..., \"schema\": {...}}`.",
                    ));
                }
            };
            let name = match spec.get("name") {
                Some(Value::String(name)) => {
                    check_tool_name(name, &format!("{at}.name"))?;
                    name.clone()
                }
                None => "response".to_string(),
                Some(_) => return Err(ApiError::invalid(format!("{at}.name"), "`name` must be a string.")),
            };
            let schema = match spec.get("schema") {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                // OpenAI's default: any JSON object.
                None => serde_json::json!({"type": "object"}),
                Some(_) => {
                    return Err(ApiError::invalid(format!("{at}.schema"), "`schema` must be a JSON schema object."));
                }
            };
            let strict = match spec.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid(format!("{at}.strict"), "`strict` must be a boolean.")),
            };
            Ok(ResponseFormat::JsonSchema { name, schema, strict })
        }
        Some(other) => Err(ApiError::invalid(
            format!("{param}.type"),
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
        )),
        None => Err(ApiError::invalid(format!("{param}.type"), format!("`{param}` needs a `type`."))),
    }
}

/// An assistant message's `tool_calls` (message `i`), checked: ids, type, names, and
/// arguments that parse as JSON.
pub(super) fn message_tool_calls(calls: &[ToolCallIn], i: usize) -> Result<Vec<ToolCall>, ApiError> {
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let at = |field: &str| format!("messages[{i}].tool_calls[{j}].{field}");
            if call.id.is_empty() {
                return Err(ApiError::invalid(at("id"), "A tool call needs a non-empty `id`."));
            }
            if call.r#type.as_deref().is_some_and(|t| t != "function") {
                return Err(ApiError::invalid(at("type"), "Only 'function' tool calls are supported."));
            }
            check_tool_name(&call.function.name, &at("function.name"))?;
            if let Err(e) = serde_json::from_str::<Value>(&call.function.arguments) {
                return Err(ApiError::invalid(
                    at("function.arguments"),
                    format!("`arguments` must be a JSON string that parses: {e}"),
                ));
            }
            Ok(ToolCall {
                id: call.id.clone(),
                name: call.function.name.clone(),
                arguments: call.function.arguments.clone(),
            })
        })
        .collect()
}

/// The call a `tool` message (message `i`) answers: its id must be one of an earlier
/// assistant message's calls. Returns the id and the function's name.
pub(super) fn answered_call(
    m: &ChatMessageIn,
    earlier: &[Message],
    i: usize,
) -> Result<(String, Option<String>), ApiError> {
    let param = format!("messages[{i}].tool_call_id");
    let Some(id) = m.tool_call_id.as_deref().filter(|id| !id.is_empty()) else {
        return Err(ApiError::invalid(param, "A tool message needs the `tool_call_id` of the call it answers."));
    };
    let call = earlier.iter().rev().flat_map(|message| message.tool_calls.iter()).find(|call| call.id == id);
    match call {
        Some(call) => Ok((id.to_string(), m.name.clone().or_else(|| Some(call.name.clone())))),
        None => Err(ApiError::invalid(
            param,
            format!("Invalid tool_call_id {id:?}: no earlier assistant message has a tool call with this id."),
        )),
    }
}
