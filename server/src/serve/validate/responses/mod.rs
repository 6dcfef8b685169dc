//! `/v1/responses` validation: a [`ResponsesRequest`] → a [`ValidResponses`] (conversation
//! items, tools, output format, generation spec, and the settings the response echoes).
//!
//! Pure, as the rest of `validate`: the stored conversation of `previous_response_id` is
//! joined by the handler, and [`check_call_outputs`] then checks the whole of it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

mod items;

pub use items::parse_input;

use super::sampling::{SpecFields, build_spec};
use super::{Context, GenerationSpec, Message, Role, check_model, is_set, unsupported};
use crate::serve::error::ApiError;
use crate::serve::protocol::ResponsesRequest;
use crate::serve::tools::{ResponseFormat, Tool, ToolCall, ToolChoice, ToolSet, check_tool_name};

/// Most `metadata` pairs, longest key and value (OpenAI's limits).
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;
pub const MAX_METADATA_VALUE: usize = 512;

/// Built-in tool types of OpenAI's; a request that declares one gets a 400 naming it.
const BUILT_IN_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
    "file_search",
    "computer_use_preview",
    "computer",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
    "namespace",
    "tool_search",
];

/// One turn's worth of conversation, as stored between `previous_response_id` turns.
#[derive(Debug, Clone, PartialEq)]
pub enum ConversationItem {
    Message {
        role: Role,
        text: String,
    },
    /// A call the assistant made.
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// The client's result for a call.
    FunctionCallOutput {
        call_id: String,
        output: String,
    },
}

/// What the response object repeats back from the request.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoedSettings {
    pub instructions: Option<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_output_tokens: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    pub user: Option<String>,
    pub parallel_tool_calls: bool,
    /// `{"format": {...}, "verbosity": ...}`.
    pub text: Value,
    /// The function tools in the flat Responses shape.
    pub tools: Vec<Value>,
    pub tool_choice: Value,
}

#[derive(Debug, Clone)]
pub struct ValidResponses {
    pub model: String,
    pub instructions: Option<String>,
    /// This request's items (the stored ones of `previous_response_id` come first).
    pub input: Vec<ConversationItem>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub tools: Option<ToolSet>,
    pub tool_choice: ToolChoice,
    pub format: ResponseFormat,
    pub spec: GenerationSpec,
    pub echo: EchoedSettings,
}

pub fn validate_responses(req: ResponsesRequest, ctx: &Context<'_>) -> Result<ValidResponses, ApiError> {
    let model = check_model(&req.model, ctx)?;
    check_unsupported(&req)?;
    let input = match req.input {
        Some(input) => parse_input(input)?,
        None => return Err(ApiError::invalid("input", "Missing required parameter: 'input'.")),
    };
    let metadata = check_metadata(req.metadata.unwrap_or_default())?;
    let tools = match &req.tools {
        Some(list) if !list.is_empty() => Some(parse_tools(list)?),
        _ => None,
    };
    let tool_choice = ToolChoice::parse(req.tool_choice.as_ref(), tools.as_ref(), "tool_choice")?;
    let (format, text) = parse_text(req.text.as_ref())?;
    let parallel_tool_calls = req.parallel_tool_calls.unwrap_or(true);

    let spec = build_spec(
        SpecFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            seed: req.seed,
            max_tokens: req.max_output_tokens,
            max_tokens_param: "max_output_tokens",
            stop: None,
            stop_token_ids: None,
            ignore_eos: None,
            skip_special_tokens: None,
            logprobs: None,
            n: None,
            stream: req.stream,
            include_usage: None,
        },
        ctx,
    )?;
    let echo = EchoedSettings {
        instructions: req.instructions.clone(),
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        max_output_tokens: req.max_output_tokens,
        metadata,
        user: req.user,
        parallel_tool_calls,
        text,
        tools: tools.as_ref().map(|t| t.tools().iter().map(flat_tool).collect()).unwrap_or_default(),
        tool_choice: req.tool_choice.filter(|v| !v.is_null()).unwrap_or_else(|| json!("auto")),
    };
    Ok(ValidResponses {
        model,
        instructions: req.instructions.filter(|s| !s.is_empty()),
        input,
        previous_response_id: req.previous_response_id,
        store: req.store.unwrap_or(true),
        tools,
        tool_choice,
        format,
        spec,
        echo,
    })
}

/// Fields OpenAI has and this server does not implement: a 400 naming each when it asks
/// for something.
fn check_unsupported(req: &ResponsesRequest) -> Result<(), ApiError> {
    if let Some(reasoning) = req.reasoning.as_ref().filter(|v| !v.is_null()) {
        let effort = reasoning.get("effort").filter(|e| !e.is_null());
        if effort.is_some_and(|e| e.as_str() != Some("none")) {
            return Err(unsupported("reasoning.effort", "Reasoning (an `effort` other than \"none\")"));
        }
        if reasoning.get("summary").is_some_and(|s| !s.is_null()) {
            return Err(unsupported("reasoning.summary", "A reasoning summary"));
        }
    }
    if req.background == Some(true) {
        return Err(unsupported("background", "Background responses"));
    }
    if let Some(first) = req.include.as_ref().and_then(|v| v.first()) {
        return Err(unsupported("include", &format!("The include value '{first}'")));
    }
    if req.top_logprobs.is_some_and(|k| k != 0) {
        return Err(unsupported("top_logprobs", "`top_logprobs`"));
    }
    if req.max_tool_calls.is_some() {
        return Err(unsupported("max_tool_calls", "`max_tool_calls`"));
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return Err(unsupported("truncation", "A truncation other than \"disabled\""));
    }
    for (name, value) in [("prompt", &req.prompt), ("conversation", &req.conversation)] {
        if is_set(value) {
            return Err(unsupported(name, &format!("`{name}`")));
        }
    }
    Ok(())
}

fn check_metadata(metadata: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::invalid("metadata", format!("At most {MAX_METADATA_PAIRS} metadata pairs.")));
    }
    for (key, value) in &metadata {
        if key.chars().count() > MAX_METADATA_KEY || value.chars().count() > MAX_METADATA_VALUE {
            return Err(ApiError::invalid(
                format!("metadata.{key}"),
                format!(
                    "Metadata keys are at most {MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}."
                ),
            ));
        }
    }
    Ok(metadata)
}

/// Function tools in the Responses API's flat shape. Built-in tools are unsupported.
fn parse_tools(list: &[Value]) -> Result<ToolSet, ApiError> {
    let mut tools = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let kind = tool.get("type").and_then(Value::as_str);
        match kind {
            Some("function") => {}
            Some(other) if BUILT_IN_TOOLS.contains(&other) => {
                return Err(unsupported(&at("type"), &format!("The built-in tool `{other}`")));
            }
            _ => {
                return Err(ApiError::invalid(at("type"), "Supported tool types are: 'function'."));
            }
        }
        let name = match tool.get("name") {
            Some(Value::String(name)) => name.as_str(),
            // The chat shape (`{"type":"function","function":{...}}`) is a common mistake.
            _ if tool.get("function").is_some() => {
                return Err(ApiError::invalid(
                    at("name"),
                    "Responses API tools are flat: {\"type\": \"function\", \"name\": ..., \"parameters\": ...}.",
                ));
            }
            _ => return Err(ApiError::invalid(at("name"), format!("Missing required parameter: '{}'.", at("name")))),
        };
        check_tool_name(name, &at("name"))?;
        let description = match tool.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(ApiError::invalid(at("description"), "`description` must be a string.")),
        };
        let strict = match tool.get("strict") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid(at("strict"), "`strict` must be a boolean.")),
        };
        tools.push(Tool::new(name, description, tool.get("parameters").cloned(), strict, &format!("tools[{i}]"))?);
    }
    ToolSet::new(tools, "tools")
}

/// A tool as the response echoes it.
fn flat_tool(tool: &Tool) -> Value {
    json!({
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    })
}

/// `text` → the output format and its echo (`{"format": {...}, "verbosity": ...}`).
fn parse_text(text: Option<&Value>) -> Result<(ResponseFormat, Value), ApiError> {
    let text = match text {
        None | Some(Value::Null) => {
            return Ok((ResponseFormat::Text, json!({"format": {"type": "text"}, "verbosity": "medium"})));
        }
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::invalid("text", "`text` must be an object.")),
    };
    if let Some(key) = text.keys().find(|k| !["format", "verbosity"].contains(&k.as_str())) {
        return Err(ApiError::UnknownField(format!("text.{key}")));
    }
    let verbosity = match text.get("verbosity") {
        None | Some(Value::Null) => "medium",
        Some(Value::String(v)) if ["low", "medium", "high"].contains(&v.as_str()) => v.as_str(),
        Some(_) => {
            return Err(ApiError::invalid(
                "text.verbosity",
                "Invalid value. Supported values are: 'low', 'medium' and 'high'.",
            ));
        }
    };
    let (format, echoed) = match text.get("format") {
        None | Some(Value::Null) => (ResponseFormat::Text, json!({"type": "text"})),
        Some(Value::Object(f)) => parse_format(f)?,
        Some(_) => return Err(ApiError::invalid("text.format", "`text.format` must be an object.")),
    };
    Ok((format, json!({"format": echoed, "verbosity": verbosity})))
}

fn parse_format(f: &serde_json::Map<String, Value>) -> Result<(ResponseFormat, Value), ApiError> {
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok((ResponseFormat::Text, json!({"type": "text"}))),
        Some("json_object") => Ok((ResponseFormat::JsonObject, json!({"type": "json_object"}))),
        Some("json_schema") => {
            let name = match f.get("name") {
                Some(Value::String(n)) => n.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "text.format.name",
                        "Missing required parameter: 'text.format.name'.",
                    ));
                }
            };
            check_tool_name(&name, "text.format.name")?;
            let schema = match f.get("schema") {
                Some(s @ Value::Object(_)) => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid("text.format.schema", "`schema` must be a JSON schema object."));
                }
                None => {
                    return Err(ApiError::invalid(
                        "text.format.schema",
                        "Missing required parameter: 'text.format.schema'.",
                    ));
                }
            };
            let strict = match f.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid("text.format.strict", "`strict` must be a boolean.")),
            };
            let mut echoed = json!({"type": "json_schema", "name": name, "schema": schema, "strict": strict});
            if let Some(Value::String(d)) = f.get("description") {
                echoed["description"] = json!(d);
            }
            Ok((ResponseFormat::JsonSchema { name, schema, strict }, echoed))
        }
        Some(other) => Err(ApiError::invalid(
            "text.format.type",
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object' and 'json_schema'."),
        )),
        None => Err(ApiError::invalid("text.format.type", "Missing required parameter: 'text.format.type'.")),
    }
}

/// Every `function_call_output` must answer a `function_call` that comes before it (in the
/// stored conversation or this input), and no call id may be answered twice. Errors name
/// the item of this request's `input` at fault.
pub fn check_call_outputs(history: &[ConversationItem], input: &[ConversationItem]) -> Result<(), ApiError> {
    let mut calls: Vec<&str> = Vec::new();
    let mut answered: Vec<&str> = Vec::new();
    let all = history.iter().map(|item| (None, item)).chain(input.iter().enumerate().map(|(i, item)| (Some(i), item)));
    for (index, item) in all {
        let param = || index.map_or_else(|| "previous_response_id".to_string(), |i| format!("input[{i}].call_id"));
        match item {
            ConversationItem::FunctionCall { call_id, .. } => calls.push(call_id),
            ConversationItem::FunctionCallOutput { call_id, .. } => {
                if !calls.contains(&call_id.as_str()) {
                    return Err(ApiError::invalid(
                        param(),
                        format!("No tool call found for function call output with call_id {call_id}."),
                    ));
                }
                if answered.contains(&call_id.as_str()) {
                    return Err(ApiError::invalid(param(), format!("The call {call_id} is answered twice.")));
                }
                answered.push(call_id);
            }
            ConversationItem::Message { .. } => {}
        }
    }
    Ok(())
}

/// `instructions` (a system message, first) and the conversation as chat messages: a
/// function call joins the assistant message right before it (or starts one), and a call's
/// output is a `tool` message that names its call and function.
pub fn chat_messages(instructions: Option<&str>, items: &[ConversationItem]) -> Vec<Message> {
    let mut out: Vec<Message> = instructions.map(|text| Message::new(Role::System, text)).into_iter().collect();
    for item in items {
        match item {
            ConversationItem::Message { role, text } => out.push(Message::new(*role, text.clone())),
            ConversationItem::FunctionCall { call_id, name, arguments } => {
                let call = ToolCall { id: call_id.clone(), name: name.clone(), arguments: arguments.clone() };
                match out.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => out.push(Message { role: Role::Assistant, tool_calls: vec![call], ..Message::default() }),
                }
            }
            ConversationItem::FunctionCallOutput { call_id, output } => {
                let name = items.iter().find_map(|other| match other {
                    ConversationItem::FunctionCall { call_id: id, name, .. } if id == call_id => Some(name.clone()),
                    _ => None,
                });
                out.push(Message {
                    role: Role::Tool,
                    content: output.clone(),
                    tool_call_id: Some(call_id.clone()),
                    name,
                    ..Message::default()
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
