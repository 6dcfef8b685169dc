//! The request schemas as validation (`validate/`) reads them: ranges, non-empty lists, the
//! served model, token ids inside the vocabulary, and the rules between fields
//! (`top_logprobs` needs `logprobs`, `stream_options` needs `stream`) as `if`/`then`.
//!
//! Where validation depends on more than JSON Schema can say (a `tool` message must answer
//! an earlier call; function names must differ; a JSON schema must compile), the description
//! states a narrower shape that is always accepted and says in words what else is.

use serde_json::{Value, json};

use super::{Served, Tightener};
use crate::serve::tools::MAX_TOOL_NAME;
use crate::serve::validate::responses::{MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE};
use crate::serve::validate::{MAX_LOGIT_BIAS, MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS};

const INT64_MIN: i64 = i64::MIN;
const INT64_MAX: i64 = i64::MAX;

pub(super) fn tighten(t: &mut Tightener<'_>, served: &Served<'_>) {
    let limits = served.limits;
    let model = json!({"type": "string", "enum": served.models});
    let token = json!({"type": "integer", "minimum": 0, "maximum": limits.vocab_size.saturating_sub(1)});
    let max_tokens = |min: usize| json!({"minimum": min, "maximum": limits.max_tokens_limit});

    sampling(t, "ChatCompletionRequest", limits.max_n, &token);
    sampling(t, "CompletionRequest", limits.max_n, &token);
    for name in ["ChatCompletionRequest", "CompletionRequest", "ResponsesRequest"] {
        t.replace_property(name, "model", model.clone());
        common_sampling(t, name);
    }

    // Chat.
    let chat = "ChatCompletionRequest";
    t.property(chat, "messages", json!({"minItems": 1}));
    t.property(chat, "max_tokens", max_tokens(1));
    t.property(chat, "max_completion_tokens", max_tokens(1));
    t.property(chat, "top_logprobs", json!({"minimum": 0, "maximum": MAX_TOP_LOGPROBS}));
    t.replace_property(chat, "tools", tools_schema(chat_tool()));
    t.replace_property(chat, "tool_choice", tool_choice());
    t.replace_property(chat, "response_format", response_format());
    for name in ["functions", "audio", "prediction", "reasoning_effort", "web_search_options"] {
        t.replace_property(chat, name, unset());
    }
    t.replace_property(chat, "function_call", json!({"anyOf": [unset(), {"enum": ["none", "auto"]}]}));
    t.replace_property(chat, "modalities", json!({"anyOf": [{"type": "null"}, {"const": ["text"]}]}));
    t.schema_extra(
        chat,
        json!({"allOf": [
            // `top_logprobs` asks for alternatives of the logprobs `logprobs: true` turns on.
            {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
             "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": true}}}},
            stream_options_need_stream(),
            tool_choice_needs_tools(),
        ]}),
    );
    t.replace_schema("ChatMessageIn", chat_message());

    // Completions.
    let completions = "CompletionRequest";
    t.property(completions, "max_tokens", max_tokens(1));
    t.property(completions, "logprobs", json!({"minimum": 0, "maximum": MAX_TOP_LOGPROBS}));
    t.replace_property(completions, "best_of", json!({"type": "null"}));
    if !served.fill_in_the_middle {
        t.property(completions, "suffix", json!({"maxLength": 0}));
    }
    let texts = json!({"type": "array", "minItems": 1, "maxItems": limits.max_n,
                       "items": {"type": "string", "minLength": 1}});
    let tokens = json!({"type": "array", "minItems": 1, "items": token});
    let batches = json!({"type": "array", "minItems": 1, "maxItems": limits.max_n, "items": tokens});
    t.replace_schema("PromptInput", json!({"oneOf": [{"type": "string", "minLength": 1}, texts, tokens, batches]}));
    t.schema_extra(
        completions,
        json!({"allOf": [
            stream_options_need_stream(),
            // `n` choices for each prompt: at most `--max-n` in all, so several prompts
            // take n = 1.
            {"if": {"required": ["n"], "properties": {"n": {"type": "integer", "minimum": 2}}},
             "then": {"properties": {"prompt": {"anyOf": [{"type": "string"}, tokens]}}}},
            // `suffix` (fill-in-the-middle) and `echo` exclude each other.
            {"if": {"required": ["echo"], "properties": {"echo": {"const": true}}},
             "then": {"properties": {"suffix": {"type": ["string", "null"], "maxLength": 0}}}},
        ]}),
    );

    // Responses.
    let responses = "ResponsesRequest";
    t.property(responses, "max_output_tokens", max_tokens(1));
    t.property(
        responses,
        "previous_response_id",
        json!({"description": "Continue the conversation of a stored response (`resp_…`); an id the server does \
                               not hold is a 400 naming `previous_response_id`."}),
    );
    t.replace_property(responses, "input", responses_input());
    t.replace_property(responses, "tools", tools_schema(flat_tool()));
    t.replace_property(responses, "tool_choice", tool_choice());
    t.replace_property(
        responses,
        "text",
        json!({"type": ["object", "null"], "additionalProperties": false, "properties": {
            "format": {"anyOf": [
                {"type": "null"},
                {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
                {"type": "object", "required": ["type", "name", "schema"], "properties": {
                    "type": {"const": "json_schema"},
                    "name": function_name(),
                    "description": {"type": ["string", "null"]},
                    "schema": arguments_schema(),
                    "strict": {"type": ["boolean", "null"]},
                }},
            ]},
            "verbosity": {"enum": [null, "low", "medium", "high"]},
        }}),
    );
    t.replace_property(
        responses,
        "metadata",
        json!({"type": ["object", "null"], "maxProperties": MAX_METADATA_PAIRS,
               "propertyNames": {"maxLength": MAX_METADATA_KEY},
               "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE}}),
    );
    t.replace_property(
        responses,
        "reasoning",
        json!({"type": ["object", "null"], "properties": {
            "effort": {"enum": [null, "none"]}, "summary": {"type": "null"}}}),
    );
    t.replace_property(responses, "background", json!({"enum": [null, false]}));
    t.replace_property(responses, "include", json!({"type": ["array", "null"], "maxItems": 0}));
    t.replace_property(responses, "top_logprobs", json!({"enum": [null, 0]}));
    t.replace_property(responses, "max_tool_calls", json!({"type": "null"}));
    t.replace_property(responses, "truncation", json!({"enum": [null, "disabled"]}));
    t.replace_property(responses, "prompt", unset());
    t.replace_property(responses, "conversation", unset());
    t.schema_extra(responses, json!({"required": ["model", "input"], "allOf": [tool_choice_needs_tools()]}));

    // Tokenize: `prompt` or `messages`, not both.
    t.property("TokenizeRequest", "model", json!({"enum": served.models.iter().map(|m| json!(m)).chain([Value::Null]).collect::<Vec<_>>()}));
    t.property("TokenizeRequest", "messages", json!({"minItems": 1}));
    t.schema_extra(
        "TokenizeRequest",
        json!({"anyOf": [
            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
            {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}},
        ]}),
    );
    t.property("DetokenizeRequest", "model", json!({"enum": served.models.iter().map(|m| json!(m)).chain([Value::Null]).collect::<Vec<_>>()}));
    t.replace_property("DetokenizeRequest", "tokens", json!({"type": "array", "items": token}));
}

/// The fields chat and completions share with the same meaning.
fn sampling(t: &mut Tightener<'_>, name: &str, max_n: usize, token: &Value) {
    t.property(name, "n", json!({"minimum": 1, "maximum": max_n}));
    t.property(name, "presence_penalty", json!({"minimum": -2.0, "maximum": 2.0}));
    t.property(name, "frequency_penalty", json!({"minimum": -2.0, "maximum": 2.0}));
    t.replace_property(
        name,
        "logit_bias",
        json!({"type": ["object", "null"], "maxProperties": MAX_LOGIT_BIAS,
               "propertyNames": {"pattern": format!("^{}$", below(token["maximum"].as_u64().unwrap_or(0)))},
               "additionalProperties": {"type": "number", "minimum": -100.0, "maximum": 100.0},
               "description": "Token id (a decimal string) → bias, −100 to 100."}),
    );
    t.property(name, "stop_token_ids", json!({"maxItems": MAX_STOP_TOKEN_IDS, "items": token}));
    t.replace_property(name, "stop", stop());
}

/// The sampling fields all three generation routes have.
fn common_sampling(t: &mut Tightener<'_>, name: &str) {
    t.property(name, "temperature", json!({"minimum": 0.0, "maximum": 2.0}));
    t.property(name, "top_p", json!({"exclusiveMinimum": 0.0, "maximum": 1.0}));
    t.property(name, "min_p", json!({"minimum": 0.0, "maximum": 1.0}));
    t.property(name, "repetition_penalty", json!({"exclusiveMinimum": 0.0, "maximum": 2.0}));
    t.property(name, "top_k", json!({"minimum": -1, "maximum": INT64_MAX, "description": "-1 or 0: off."}));
    t.property(name, "seed", json!({"minimum": INT64_MIN, "maximum": INT64_MAX}));
}

/// `stop`: one string or up to four, none empty, each at most `MAX_STOP_BYTES` bytes (a
/// character takes up to four).
fn stop() -> Value {
    let one = json!({"type": "string", "minLength": 1, "maxLength": MAX_STOP_BYTES / 4});
    json!({"anyOf": [{"type": "null"}, one, {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": one}],
           "description": format!("Up to {MAX_STOP_STRINGS} sequences, none empty, each at most {MAX_STOP_BYTES} \
                                   bytes.")})
}

/// A field the server understands but does not implement, left unset: null, `[]` or `{}`
/// (anything else is a 400 naming it).
fn unset() -> Value {
    json!({"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}, {"type": "object", "maxProperties": 0}]})
}

fn stream_options_need_stream() -> Value {
    json!({"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
           "then": {"required": ["stream"], "properties": {"stream": {"const": true}}}})
}

/// `required` (or a named function) only when there are tools to call.
fn tool_choice_needs_tools() -> Value {
    json!({"if": {"not": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
           "then": {"properties": {"tool_choice": {"enum": [null, "none", "auto"]}}}})
}

fn tool_choice() -> Value {
    json!({"enum": [null, "none", "auto", "required"],
           "description": "`none`, `auto` (the default with tools) or `required`; the server also takes \
                           `{\"type\": \"function\", \"function\": {\"name\": …}}` naming one of `tools`."})
}

fn function_name() -> Value {
    json!({"type": "string", "pattern": format!("^[a-zA-Z0-9_-]{{1,{MAX_TOOL_NAME}}}$")})
}

/// The JSON schemas (tool parameters, structured output) this description promises to
/// compile: objects of string, integer, number and boolean properties. The server takes
/// most of JSON Schema (docs/structured-output.md); a schema it cannot compile is a 400.
fn arguments_schema() -> Value {
    json!({"type": "object", "required": ["type"], "additionalProperties": false, "properties": {
        "type": {"const": "object"},
        "properties": {"type": "object", "maxProperties": 4,
            "propertyNames": {"pattern": "^[a-z_]{1,16}$"},
            "additionalProperties": {"type": "object", "required": ["type"], "additionalProperties": false,
                "properties": {"type": {"enum": ["string", "integer", "number", "boolean"]}}}},
    }})
}

/// A list of at most one tool: the server takes up to 128 with distinct names, which JSON
/// Schema cannot require.
fn tools_schema(tool: Value) -> Value {
    json!({"type": ["array", "null"], "maxItems": 1, "items": tool,
           "description": "Functions the model may call. The server takes up to 128 with distinct names; this \
                           description lists one, as JSON Schema cannot require distinct names."})
}

fn chat_tool() -> Value {
    json!({"type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {
            "name": function_name(),
            "description": {"type": ["string", "null"]},
            "parameters": {"anyOf": [{"type": "null"}, arguments_schema()]},
            "strict": {"type": ["boolean", "null"]},
        }},
    }})
}

/// The Responses API's flat tool: `{"type": "function", "name", "parameters", …}`.
fn flat_tool() -> Value {
    json!({"type": "object", "required": ["type", "name"], "properties": {
        "type": {"const": "function"},
        "name": function_name(),
        "description": {"type": ["string", "null"]},
        "parameters": {"anyOf": [{"type": "null"}, arguments_schema()]},
        "strict": {"type": ["boolean", "null"]},
    }})
}

fn response_format() -> Value {
    json!({"anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"], "properties": {
            "type": {"const": "json_schema"},
            "json_schema": {"type": "object", "properties": {
                "name": function_name(),
                "schema": arguments_schema(),
                "strict": {"type": ["boolean", "null"]},
            }},
        }},
    ]})
}

/// Tool-call arguments as text: a flat JSON object (the server takes any JSON text).
fn arguments_text() -> Value {
    let value = r#"("[a-z ]{0,16}"|0|[1-9][0-9]{0,5}|true|false|null)"#;
    let pair = format!(r#""[a-z_]{{1,16}}": ?{value}"#);
    json!({"type": "string", "pattern": format!(r#"^\{{({pair}(, ?{pair}){{0,3}})?\}}$"#)})
}

fn content_parts() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
        "type": {"const": "text"}, "text": {"type": "string"}}}})
}

/// A chat message: system, developer and user messages carry content; assistant messages
/// may carry calls instead. `tool` messages are described in words (see the description).
fn chat_message() -> Value {
    let content = json!({"anyOf": [{"type": "string"}, content_parts()]});
    let call = json!({"type": "object", "required": ["id", "function"], "properties": {
        "id": {"type": "string", "minLength": 1},
        "type": {"enum": [null, "function"]},
        "function": {"type": "object", "required": ["name", "arguments"], "properties": {
            "name": function_name(), "arguments": arguments_text()}},
    }});
    json!({
        "description": "A message: `system`, `developer` and `user` messages need `content` (a string or \
            `text` parts); `assistant` messages may have null content and `tool_calls`. The server also takes \
            `{\"role\": \"tool\", \"tool_call_id\", \"content\"}` answering a call of an earlier assistant \
            message, which JSON Schema cannot state.",
        "anyOf": [
            {"type": "object", "required": ["role", "content"], "properties": {
                "role": {"enum": ["system", "developer", "user"]},
                "content": content,
                "name": {"type": ["string", "null"]},
                "tool_calls": {"type": ["array", "null"], "maxItems": 0},
                "tool_call_id": {"type": ["string", "null"]},
                "function_call": {"type": "null"},
            }},
            {"type": "object", "required": ["role"], "properties": {
                "role": {"const": "assistant"},
                "content": {"anyOf": [{"type": "null"}, content]},
                "name": {"type": ["string", "null"]},
                "tool_calls": {"type": ["array", "null"], "items": call},
                "tool_call_id": {"type": ["string", "null"]},
                "function_call": {"type": "null"},
            }},
        ],
    })
}

/// `input`: a non-empty string, or messages (`function_call` and `function_call_output`
/// items are taken too, when each output answers an earlier call).
fn responses_input() -> Value {
    let part = json!({"type": "object", "required": ["type", "text"], "properties": {
        "type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}}});
    let message = json!({"type": "object", "required": ["role", "content"], "properties": {
        "type": {"enum": [null, "message"]},
        "role": {"enum": ["user", "system", "developer", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]},
    }});
    json!({"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": message}],
           "description": "A string (one user message) or input items. Messages are described here; the server \
                           also takes `function_call` items and `function_call_output` items that answer an \
                           earlier call."})
}

/// A regular expression for the decimal numbers 0..=max, without leading zeros.
pub(super) fn below(max: u64) -> String {
    let digits: Vec<u32> = max.to_string().chars().filter_map(|c| c.to_digit(10)).collect();
    let len = digits.len();
    let mut alternatives = vec!["0".to_string()];
    // Every number with fewer digits than `max` (and at least one).
    if len >= 2 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", len - 2));
    }
    // Numbers of `max`'s length: equal to it up to position i, smaller at i, anything after.
    for (i, &digit) in digits.iter().enumerate() {
        let low = if i == 0 { 1 } else { 0 };
        if digit > low {
            let prefix: String = digits[..i].iter().map(|d| d.to_string()).collect();
            let rest = if i + 1 < len { format!("[0-9]{{{}}}", len - i - 1) } else { String::new() };
            alternatives.push(format!("{prefix}[{low}-{}]{rest}", digit - 1));
        }
    }
    if max > 0 {
        alternatives.push(max.to_string());
    }
    format!("({})", alternatives.join("|"))
}
