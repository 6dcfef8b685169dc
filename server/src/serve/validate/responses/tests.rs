//! `/v1/responses` validation, rule by rule.

use serde_json::json;

use super::*;
use crate::serve::protocol::ResponsesRequest;
use crate::serve::validate::{Limits, parse_json};

fn limits() -> Limits {
    Limits { max_model_len: 100, max_tokens_limit: 50, max_n: 4, vocab_size: 1000 }
}

fn responses(body: Value) -> Result<ValidResponses, ApiError> {
    let limits = limits();
    let ctx = Context { served_model_name: "m", limits: &limits, defaults: Default::default() };
    let req: ResponsesRequest = parse_json(body.to_string().as_bytes())?;
    validate_responses(req, &ctx)
}

fn with(key: &str, value: Value) -> Value {
    let mut v = json!({"model": "m", "input": "hi"});
    v[key] = value;
    v
}

/// Kind and param of an error.
fn err(r: Result<ValidResponses, ApiError>) -> (&'static str, Option<String>) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.status().as_u16(), 400, "{e}");
    (e.kind(), e.param())
}

fn invalid(param: &str) -> (&'static str, Option<String>) {
    ("invalid_request", Some(param.to_string()))
}

fn unsupported(param: &str) -> (&'static str, Option<String>) {
    ("unsupported_parameter", Some(param.to_string()))
}

#[test]
fn a_string_input_is_one_user_message_with_openai_defaults() {
    let v = responses(json!({"model": "m", "input": "hi"})).unwrap();
    assert_eq!(v.input, vec![ConversationItem::Message { role: Role::User, text: "hi".into() }]);
    assert!(v.store && v.tools.is_none() && v.previous_response_id.is_none());
    assert_eq!(v.tool_choice, ToolChoice::None);
    assert_eq!(v.format, ResponseFormat::Text);
    assert_eq!(v.spec.max_tokens, None);
    assert_eq!(v.spec.max_tokens_param, "max_output_tokens");
    assert_eq!(v.echo.text, json!({"format": {"type": "text"}, "verbosity": "medium"}));
    assert_eq!((v.echo.temperature, v.echo.top_p, v.echo.tool_choice.clone()), (1.0, 1.0, json!("auto")));
}

#[test]
fn items_become_conversation_items() {
    let input = json!([
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{\"x\": 1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    ]);
    let v = responses(with("input", input)).unwrap();
    assert_eq!(
        v.input,
        vec![
            ConversationItem::Message { role: Role::System, text: "be brief".into() },
            ConversationItem::Message { role: Role::User, text: "a\nb".into() },
            ConversationItem::Message { role: Role::Assistant, text: "ok".into() },
            ConversationItem::FunctionCall {
                call_id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"x\": 1}".into()
            },
            ConversationItem::FunctionCallOutput { call_id: "call_1".into(), output: "42".into() },
        ]
    );
    assert!(check_call_outputs(&[], &v.input).is_ok());
}

#[test]
fn bad_items_name_their_param() {
    let cases = [
        (json!(""), invalid("input")),
        (json!([]), invalid("input")),
        (json!([5]), invalid("input[0]")),
        (json!([{"role": "tool", "content": "x"}]), invalid("input[0].role")),
        (json!([{"role": "user"}]), invalid("input[0].content")),
        (
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
            unsupported("input[0].content[0].type"),
        ),
        (json!([{"role": "user", "content": [{"type": "input_text"}]}]), invalid("input[0].content[0].text")),
        (json!([{"type": "reasoning", "summary": []}]), unsupported("input[0].type")),
        (json!([{"type": "frobnicate"}]), invalid("input[0].type")),
        (
            json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]),
            invalid("input[0].arguments"),
        ),
        (
            json!([{"type": "function_call", "call_id": "c", "name": "bad name", "arguments": "{}"}]),
            invalid("input[0].name"),
        ),
        (json!([{"type": "function_call_output", "output": "x"}]), invalid("input[0].call_id")),
    ];
    for (input, expected) in cases {
        assert_eq!(err(responses(with("input", input.clone()))), expected, "{input}");
    }
    assert_eq!(err(responses(json!({"model": "m"}))), invalid("input"));
}

#[test]
fn unsupported_fields_are_rejected_by_name() {
    let cases = [
        ("reasoning", json!({"effort": "high"}), unsupported("reasoning.effort")),
        ("background", json!(true), unsupported("background")),
        ("include", json!(["message.output_text.logprobs"]), unsupported("include")),
        ("top_logprobs", json!(3), unsupported("top_logprobs")),
        ("truncation", json!("auto"), unsupported("truncation")),
        ("conversation", json!("conv_1"), unsupported("conversation")),
        ("tools", json!([{"type": "web_search"}]), unsupported("tools[0].type")),
        ("frobnicate", json!(1), ("unknown_parameter", Some("frobnicate".into()))),
    ];
    for (key, value, expected) in cases {
        assert_eq!(err(responses(with(key, value))), expected, "{key}");
    }
    for (key, value) in [("reasoning", json!({"effort": "none"})), ("background", json!(false)), ("include", json!([]))]
    {
        assert!(responses(with(key, value)).is_ok(), "{key}");
    }
}

#[test]
fn text_format_becomes_the_output_format_and_is_echoed() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    let text = json!({"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": true}});
    let v = responses(with("text", text)).unwrap();
    assert_eq!(v.format, ResponseFormat::JsonSchema { name: "thing".into(), schema: schema.clone(), strict: true });
    assert_eq!(v.echo.text["format"]["name"], "thing");
    assert_eq!(v.echo.text["verbosity"], "medium");
    let v = responses(with("text", json!({"format": {"type": "json_object"}, "verbosity": "low"}))).unwrap();
    assert_eq!(v.format, ResponseFormat::JsonObject);
    assert_eq!(v.echo.text, json!({"format": {"type": "json_object"}, "verbosity": "low"}));

    let cases = [
        (json!({"format": {"type": "yaml"}}), invalid("text.format.type")),
        (json!({"format": {"type": "json_schema", "schema": {}}}), invalid("text.format.name")),
        (json!({"format": {"type": "json_schema", "name": "x"}}), invalid("text.format.schema")),
        (json!({"format": {"type": "json_schema", "name": "x", "schema": []}}), invalid("text.format.schema")),
        (json!({"verbosity": "loud"}), invalid("text.verbosity")),
        (json!({"colour": 1}), ("unknown_parameter", Some("text.colour".into()))),
    ];
    for (text, expected) in cases {
        assert_eq!(err(responses(with("text", text.clone()))), expected, "{text}");
    }
}

#[test]
fn function_tools_are_flat_and_checked_against_tool_choice() {
    let tool = json!({"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let mut body = with("tools", json!([tool]));
    body["tool_choice"] = json!("required");
    let v = responses(body.clone()).unwrap();
    assert_eq!(v.tools.as_ref().unwrap().tools()[0].name, "get_weather");
    assert_eq!(v.tool_choice, ToolChoice::Required);
    assert_eq!(v.echo.tools[0]["name"], "get_weather");
    assert_eq!(v.echo.tools[0]["strict"], true, "Responses tools are strict by default");
    body["tool_choice"] = json!({"type": "function", "name": "get_weather"});
    assert_eq!(responses(body.clone()).unwrap().tool_choice, ToolChoice::Named("get_weather".into()));
    body["tool_choice"] = json!({"type": "function", "name": "nope"});
    assert_eq!(err(responses(body)), invalid("tool_choice"));

    let nested = json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(err(responses(with("tools", nested))), invalid("tools[0].name"));
    assert_eq!(err(responses(with("tool_choice", json!("required")))), invalid("tool_choice"));
}

#[test]
fn sampling_fields_use_the_responses_names() {
    assert_eq!(err(responses(with("max_output_tokens", json!(0)))), invalid("max_output_tokens"));
    assert_eq!(err(responses(with("max_output_tokens", json!(51)))), invalid("max_output_tokens"));
    assert_eq!(err(responses(with("temperature", json!(3.0)))), invalid("temperature"));
    let v = responses(with("max_output_tokens", json!(7))).unwrap();
    assert_eq!((v.spec.max_tokens, v.echo.max_output_tokens), (Some(7), Some(7)));
    let many: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(err(responses(with("metadata", Value::Object(many)))), invalid("metadata"));
}

#[test]
fn call_outputs_must_answer_an_earlier_call_once() {
    let call = ConversationItem::FunctionCall { call_id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
    let output = ConversationItem::FunctionCallOutput { call_id: "call_1".into(), output: "x".into() };
    let user = ConversationItem::Message { role: Role::User, text: "hi".into() };
    assert!(check_call_outputs(std::slice::from_ref(&call), std::slice::from_ref(&output)).is_ok());
    let e = check_call_outputs(&[], &[user, output.clone()]).unwrap_err();
    assert_eq!(e.param().as_deref(), Some("input[1].call_id"));
    let e = check_call_outputs(&[call, output.clone()], &[output]).unwrap_err();
    assert_eq!(e.param().as_deref(), Some("input[0].call_id"));
}

#[test]
fn calls_join_the_assistant_turn_and_outputs_become_tool_messages() {
    let items = [
        ConversationItem::Message { role: Role::User, text: "weather?".into() },
        ConversationItem::Message { role: Role::Assistant, text: "Let me look.".into() },
        ConversationItem::FunctionCall { call_id: "call_1".into(), name: "f".into(), arguments: "{}".into() },
        ConversationItem::FunctionCall { call_id: "call_2".into(), name: "g".into(), arguments: "{}".into() },
        ConversationItem::FunctionCallOutput { call_id: "call_2".into(), output: "2".into() },
        ConversationItem::FunctionCallOutput { call_id: "call_1".into(), output: "1".into() },
    ];
    let messages = chat_messages(Some("be brief"), &items);
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Tool]);
    assert_eq!(messages[2].content, "Let me look.");
    let calls: Vec<&str> = messages[2].tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(calls, ["call_1", "call_2"]);
    assert_eq!((messages[3].tool_call_id.as_deref(), messages[3].name.as_deref()), (Some("call_2"), Some("g")));
    // A call right after a tool result starts a new assistant turn.
    let more = [items[5].clone(), items[2].clone()];
    let messages = chat_messages(None, &[items[2].clone(), more[0].clone(), more[1].clone()]);
    assert_eq!(messages.iter().map(|m| m.role).collect::<Vec<_>>(), [Role::Assistant, Role::Tool, Role::Assistant]);
    assert!(messages[2].content.is_empty());
}
