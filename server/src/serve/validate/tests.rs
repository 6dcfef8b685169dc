//! Validation rules, one by one: pure functions, no engine, no model.

use serde_json::json;

use super::*;
use crate::serve::protocol::{ChatCompletionRequest, CompletionRequest};

fn limits() -> Limits {
    Limits { max_model_len: 100, max_tokens_limit: 50, max_n: 4, vocab_size: 1000 }
}

fn chat(body: serde_json::Value) -> Result<ValidChat, ApiError> {
    let limits = limits();
    let ctx = Context { served_model_name: "m", limits: &limits, defaults: Default::default() };
    let req: ChatCompletionRequest = parse_json(body.to_string().as_bytes())?;
    validate_chat(req, &ctx)
}

fn completion(body: serde_json::Value) -> Result<ValidCompletion, ApiError> {
    let limits = limits();
    let ctx = Context { served_model_name: "m", limits: &limits, defaults: Default::default() };
    let req: CompletionRequest = parse_json(body.to_string().as_bytes())?;
    validate_completion(req, &ctx)
}

fn base() -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    v[key] = value;
    v
}

/// Status, kind and param of an error.
fn err(r: Result<impl std::fmt::Debug, ApiError>) -> (u16, &'static str, Option<String>) {
    let e = r.expect_err("expected an error");
    (e.status().as_u16(), e.kind(), e.param())
}

#[test]
fn a_minimal_request_gets_openai_defaults() {
    let v = chat(base()).unwrap();
    assert_eq!(v.model, "m");
    assert_eq!(v.messages, vec![Message::new(Role::User, "hi")]);
    assert_eq!((v.tools, v.tool_choice, v.parallel_tool_calls), (None, ToolChoice::None, true));
    assert_eq!(v.response_format, ResponseFormat::Text);
    let s = v.spec;
    assert_eq!((s.temperature, s.top_p, s.top_k, s.n), (1.0, 1.0, 0, 1));
    assert_eq!(s.max_tokens, None);
    assert!(!s.stream && !s.include_usage && s.skip_special_tokens && !s.ignore_eos);
    assert_eq!(s.logprobs, None);
}

#[test]
fn malformed_bodies_are_400_invalid_json() {
    let limits = limits();
    let _ = Context { served_model_name: "m", limits: &limits, defaults: Default::default() };
    for body in [&b""[..], b"   ", b"{", b"{\"model\": }", b"\xff\xfe{}", b"{} trailing"] {
        let e = parse_json::<ChatCompletionRequest>(body).unwrap_err();
        assert_eq!((e.status().as_u16(), e.kind()), (400, "invalid_json"), "{:?}", String::from_utf8_lossy(body));
        // OpenAI sends no code for an unparsable body.
        assert_eq!(e.code(), None);
    }
}

#[test]
fn wrong_types_name_the_field() {
    assert_eq!(
        err(chat(with(base(), "temperature", json!("hot")))),
        (400, "invalid_request", Some("temperature".into()))
    );
    let bad_role = json!({"model": "m", "messages": [{"role": 5, "content": "x"}]});
    assert_eq!(err(chat(bad_role)).2, Some("messages[0].role".into()));
    assert_eq!(err(chat(json!({"model": "m"}))), (400, "invalid_request", Some("messages".into())));
    assert_eq!(err(chat(json!([1, 2]))).0, 400);
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    assert_eq!(err(chat(with(base(), "frobnicate", json!(1)))), (400, "unknown_parameter", Some("frobnicate".into())));
}

#[test]
fn unknown_model_is_404() {
    let e = chat(with(base(), "model", json!("gpt-4"))).unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (404, Some("model_not_found")));
    assert_eq!(e.param(), Some("model".into()));
}

#[test]
fn messages_must_be_well_formed() {
    assert_eq!(err(chat(with(base(), "messages", json!([])))).2, Some("messages".into()));
    let unknown_role = with(base(), "messages", json!([{"role": "wizard", "content": "x"}]));
    assert_eq!(err(chat(unknown_role)), (400, "invalid_request", Some("messages[0].role".into())));
    let tool_role = with(base(), "messages", json!([{"role": "tool", "content": "x", "tool_call_id": "1"}]));
    assert_eq!(err(chat(tool_role)), (400, "invalid_request", Some("messages[0].tool_call_id".into())));
    let function_role = with(base(), "messages", json!([{"role": "function", "content": "x", "name": "f"}]));
    assert_eq!(err(chat(function_role)), (400, "unsupported_parameter", Some("messages[0].role".into())));
    let no_content = with(base(), "messages", json!([{"role": "user"}]));
    assert_eq!(err(chat(no_content)).2, Some("messages[0].content".into()));
    let image = with(
        base(),
        "messages",
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    );
    assert_eq!(err(chat(image)), (400, "unsupported_parameter", Some("messages[0].content[0].type".into())));
}

#[test]
fn content_parts_and_developer_role_are_understood() {
    let parts = with(
        base(),
        "messages",
        json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "refusal": null},
        ]),
    );
    let v = chat(parts).unwrap();
    assert_eq!(v.messages[0], Message::new(Role::System, "be brief"));
    assert_eq!(v.messages[1].content, "a\nb");
    assert_eq!(v.messages[2], Message::new(Role::Assistant, ""));
}

#[test]
fn understood_but_unsupported_fields_are_400_naming_them() {
    for (field, value) in [
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!({"name": "f"})),
        ("audio", json!({"voice": "x"})),
        ("modalities", json!(["text", "audio"])),
    ] {
        assert_eq!(
            err(chat(with(base(), field, value))),
            (400, "unsupported_parameter", Some(field.into())),
            "{field}"
        );
    }
    // Their neutral values pass.
    for (field, value) in [
        ("tools", json!([])),
        ("tool_choice", json!("none")),
        ("tool_choice", json!("auto")),
        ("function_call", json!("none")),
        ("response_format", json!({"type": "text"})),
    ] {
        assert!(chat(with(base(), field, value)).is_ok(), "{field}");
    }
}

#[test]
fn sampling_ranges() {
    let bad = [
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("n", json!(0)),
        ("n", json!(5)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(51)),
        ("max_completion_tokens", json!(-3)),
        ("presence_penalty", json!(2.1)),
        ("frequency_penalty", json!(-2.1)),
        ("top_k", json!(-2)),
        ("min_p", json!(1.5)),
        ("repetition_penalty", json!(0)),
    ];
    for (field, value) in bad {
        assert_eq!(
            err(chat(with(base(), field, value.clone()))),
            (400, "invalid_request", Some(field.into())),
            "{field}={value}"
        );
    }
    let ok = [
        ("temperature", json!(0)),
        ("temperature", json!(2)),
        ("top_p", json!(1)),
        ("n", json!(4)),
        ("max_tokens", json!(50)),
        ("top_k", json!(-1)),
    ];
    for (field, value) in ok {
        assert!(chat(with(base(), field, value.clone())).is_ok(), "{field}={value}");
    }
}

#[test]
fn stop_sequences() {
    let v = chat(with(base(), "stop", json!("\n"))).unwrap();
    assert_eq!(v.spec.stop, vec!["\n"]);
    let v = chat(with(base(), "stop", json!(["a", "b", "c", "d"]))).unwrap();
    assert_eq!(v.spec.stop.len(), 4);
    assert_eq!(err(chat(with(base(), "stop", json!(["a", "b", "c", "d", "e"])))).2, Some("stop".into()));
    assert_eq!(err(chat(with(base(), "stop", json!([""])))).2, Some("stop".into()));
    assert_eq!(err(chat(with(base(), "stop", json!(3)))).2, Some("stop".into()));
}

#[test]
fn logprobs_and_logit_bias() {
    let v = chat(with(with(base(), "logprobs", json!(true)), "top_logprobs", json!(3))).unwrap();
    assert_eq!(v.spec.logprobs, Some(3));
    assert_eq!(chat(with(base(), "logprobs", json!(true))).unwrap().spec.logprobs, Some(0));
    assert_eq!(err(chat(with(base(), "top_logprobs", json!(2)))).2, Some("top_logprobs".into()));
    assert_eq!(
        err(chat(with(with(base(), "logprobs", json!(true)), "top_logprobs", json!(21)))).2,
        Some("top_logprobs".into())
    );
    let v = chat(with(base(), "logit_bias", json!({"5": -100, "7": 2.5}))).unwrap();
    assert_eq!(v.spec.logit_bias, vec![(5, -100.0), (7, 2.5)]);
    assert_eq!(err(chat(with(base(), "logit_bias", json!({"x": 1})))).2, Some("logit_bias.x".into()));
    assert_eq!(err(chat(with(base(), "logit_bias", json!({"5000": 1})))).2, Some("logit_bias.5000".into()));
    assert_eq!(err(chat(with(base(), "logit_bias", json!({"5": 101})))).2, Some("logit_bias.5".into()));
}

#[test]
fn stream_options_need_stream() {
    let opts = json!({"include_usage": true});
    assert_eq!(err(chat(with(base(), "stream_options", opts.clone()))).2, Some("stream_options".into()));
    let v = chat(with(with(base(), "stream", json!(true)), "stream_options", opts)).unwrap();
    assert!(v.spec.stream && v.spec.include_usage);
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    let v = chat(with(with(base(), "max_tokens", json!(5)), "max_completion_tokens", json!(7))).unwrap();
    assert_eq!(v.spec.max_tokens, Some(7));
    assert_eq!(v.spec.max_tokens_param, "max_completion_tokens");
}

#[test]
fn seeds_are_signed_like_openai() {
    assert_eq!(chat(with(base(), "seed", json!(-1))).unwrap().spec.seed, Some(u64::MAX));
    assert_eq!(chat(with(base(), "seed", json!(42))).unwrap().spec.seed, Some(42));
}

#[test]
fn completions_prompt_forms_and_unsupported_fields() {
    let base = json!({"model": "m", "prompt": "Once"});
    let v = completion(base.clone()).unwrap();
    assert_eq!(v.prompts, vec![PromptSource::Text("Once".into())]);
    assert_eq!(v.spec.max_tokens, Some(16), "the legacy default");
    let v = completion(with(base.clone(), "prompt", json!([1, 2, 3]))).unwrap();
    assert_eq!(v.prompts, vec![PromptSource::Tokens(vec![1, 2, 3])]);
    let v = completion(with(base.clone(), "prompt", json!(["a", "b"]))).unwrap();
    assert_eq!(v.prompts.len(), 2);
    let v = completion(with(base.clone(), "prompt", json!([[1], [2, 3]]))).unwrap();
    assert_eq!(v.prompts, vec![PromptSource::Tokens(vec![1]), PromptSource::Tokens(vec![2, 3])]);
    assert_eq!(err(completion(with(base.clone(), "prompt", json!([5000])))).2, Some("prompt".into()));
    assert_eq!(err(completion(with(base.clone(), "prompt", json!("")))).2, Some("prompt".into()));
    assert_eq!(
        err(completion(with(base.clone(), "best_of", json!(3)))),
        (400, "unsupported_parameter", Some("best_of".into()))
    );
    assert!(completion(with(base.clone(), "echo", json!(false))).is_ok());
    assert_eq!(err(completion(with(base.clone(), "logprobs", json!(21)))).2, Some("logprobs".into()));
    assert_eq!(completion(with(base, "logprobs", json!(2))).unwrap().spec.logprobs, Some(2));
}

#[test]
fn completions_echo_scoring_and_suffix() {
    let base = json!({"model": "m", "prompt": "Once"});
    let plain = completion(base.clone()).unwrap();
    assert_eq!((plain.echo, plain.suffix.clone(), plain.prompt_logprobs), (false, None, None));
    // echo + logprobs scores the prompt with as many alternatives.
    let v = completion(with(with(base.clone(), "echo", json!(true)), "logprobs", json!(3))).unwrap();
    assert_eq!((v.echo, v.prompt_logprobs, v.spec.logprobs, v.spec.max_tokens), (true, Some(3), Some(3), Some(16)));
    // max_tokens 0 only with echo: the prompt is scored, nothing generated.
    let v = completion(with(with(base.clone(), "echo", json!(true)), "max_tokens", json!(0))).unwrap();
    assert_eq!((v.spec.max_tokens, v.prompt_logprobs), (Some(0), Some(0)));
    assert_eq!(err(completion(with(base.clone(), "max_tokens", json!(0)))).2, Some("max_tokens".into()));
    assert_eq!(completion(with(base.clone(), "echo", json!(true))).unwrap().prompt_logprobs, None);
    // suffix: kept for the handler (which knows the vocabulary); never with echo.
    assert_eq!(completion(with(base.clone(), "suffix", json!("end"))).unwrap().suffix.as_deref(), Some("end"));
    assert_eq!(completion(with(base.clone(), "suffix", json!(""))).unwrap().suffix, None);
    let both = with(with(base, "echo", json!(true)), "suffix", json!("end"));
    assert_eq!(err(completion(both)), (400, "invalid_request", Some("suffix".into())));
}

#[test]
fn context_length() {
    let l = limits();
    assert_eq!(resolve_max_tokens(10, Some(20), &l, "messages").unwrap(), 20);
    // No max_tokens: the rest of the context, capped by the limit.
    assert_eq!(resolve_max_tokens(10, None, &l, "messages").unwrap(), 50);
    assert_eq!(resolve_max_tokens(80, None, &l, "messages").unwrap(), 20);
    let e = resolve_max_tokens(90, Some(20), &l, "messages").unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (400, Some("context_length_exceeded")));
    assert_eq!(e.param(), Some("messages".into()));
    let e = resolve_max_tokens(100, None, &l, "prompt").unwrap_err();
    assert_eq!(e.kind(), "context_length_exceeded");
    assert_eq!(resolve_max_tokens(0, None, &l, "prompt").unwrap_err().kind(), "invalid_request");
}

#[test]
fn error_bodies_are_openai_shaped_and_internal_errors_do_not_leak() {
    let body = serde_json::to_value(ApiError::invalid("temperature", "bad").to_body()).unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature", "code": null}})
    );
    let internal = ApiError::Internal("/secret/path exploded".into());
    assert_eq!(internal.status().as_u16(), 500);
    assert!(!internal.to_body().error.message.contains("secret"));
    assert_eq!(ApiError::InvalidApiKey.to_body().error.code.as_deref(), Some("invalid_api_key"));
    assert_eq!(ApiError::InvalidApiKey.status().as_u16(), 401);
    assert_eq!(ApiError::Overloaded("x".into()).status().as_u16(), 429);
    assert_eq!(ApiError::NotReady.status().as_u16(), 503);
    assert_eq!(ApiError::PayloadTooLarge { limit: 1 }.status().as_u16(), 413);
}

fn weather_tool() -> serde_json::Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": true,
    }})
}

#[test]
fn tools_and_tool_choice() {
    let v = chat(with(with(base(), "tools", json!([weather_tool()])), "parallel_tool_calls", json!(false))).unwrap();
    let tools = v.tools.expect("tools");
    assert_eq!(tools.tools()[0].name, "get_weather");
    assert!(tools.tools()[0].strict);
    assert_eq!((v.tool_choice, v.parallel_tool_calls), (ToolChoice::Auto, false));
    let named = with(
        with(base(), "tools", json!([weather_tool()])),
        "tool_choice",
        json!({"type": "function", "function": {"name": "get_weather"}}),
    );
    assert_eq!(chat(named).unwrap().tool_choice, ToolChoice::Named("get_weather".into()));

    for (body, param) in [
        (
            with(
                with(base(), "tools", json!([weather_tool()])),
                "tool_choice",
                json!({"type": "function", "function": {"name": "nope"}}),
            ),
            "tool_choice",
        ),
        (with(base(), "tool_choice", json!("required")), "tool_choice"),
        (with(base(), "tools", json!([{"type": "code_interpreter"}])), "tools[0].type"),
        (with(base(), "tools", json!([{"type": "function"}])), "tools[0].function"),
        (with(base(), "tools", json!([{"type": "function", "function": {"name": "a b"}}])), "tools[0].function.name"),
        (
            with(base(), "tools", json!([{"type": "function", "function": {"name": "f", "parameters": [1]}}])),
            "tools[0].function.parameters",
        ),
        (with(base(), "tools", json!([weather_tool(), weather_tool()])), "tools[1]"),
        (with(base(), "tools", json!([{"function": {"name": "f"}}])), "tools[0].type"),
    ] {
        let (status, _, got) = err(chat(body.clone()));
        assert_eq!((status, got.as_deref()), (400, Some(param)), "{body}");
    }
}

#[test]
fn response_formats() {
    let format = |v: serde_json::Value| chat(with(base(), "response_format", v)).map(|c| c.response_format);
    assert_eq!(format(json!({"type": "json_object"})).unwrap(), ResponseFormat::JsonObject);
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert_eq!(
        format(json!({"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": true}})).unwrap(),
        ResponseFormat::JsonSchema { name: "A".into(), schema, strict: true }
    );
    // OpenAI's defaults: no strict, any object.
    assert_eq!(
        format(json!({"type": "json_schema", "json_schema": {"name": "B"}})).unwrap(),
        ResponseFormat::JsonSchema { name: "B".into(), schema: json!({"type": "object"}), strict: false }
    );
    for (value, param) in [
        (json!({"type": "yaml"}), "response_format.type"),
        (json!({}), "response_format.type"),
        (json!("json"), "response_format"),
        (json!({"type": "json_schema"}), "response_format.json_schema"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}),
            "response_format.json_schema.strict",
        ),
    ] {
        let (status, _, got) = err(format(value.clone()));
        assert_eq!((status, got.as_deref()), (400, Some(param)), "{value}");
    }
    // The Responses API's flat `text.format`.
    assert_eq!(
        validate_response_format(
            Some(&json!({"type": "json_schema", "name": "C", "schema": {"type": "object"}})),
            "text.format"
        )
        .unwrap(),
        ResponseFormat::JsonSchema { name: "C".into(), schema: json!({"type": "object"}), strict: false }
    );
}

#[test]
fn tool_calls_and_tool_results_in_messages() {
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    let messages = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]);
    let v = chat(with(base(), "messages", messages.clone())).unwrap();
    assert_eq!(v.messages[1].tool_calls[0].name, "get_weather");
    assert_eq!(v.messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}");
    assert_eq!(v.messages[2].role, Role::Tool);
    assert_eq!(v.messages[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(v.messages[2].name.as_deref(), Some("get_weather"), "the name comes from the call");

    let bad = |path: &[&str], value: serde_json::Value| {
        let mut m = messages.clone();
        let mut slot = &mut m;
        for key in path {
            slot = match key.parse::<usize>() {
                Ok(i) => &mut slot[i],
                Err(_) => &mut slot[*key],
            };
        }
        *slot = value;
        chat(with(base(), "messages", m))
    };
    for (path, value, param) in [
        (&["2", "tool_call_id"][..], json!("call_2"), "messages[2].tool_call_id"),
        (&["2", "tool_call_id"][..], json!(null), "messages[2].tool_call_id"),
        (&["2", "content"][..], json!(null), "messages[2].content"),
        (
            &["1", "tool_calls", "0", "function", "arguments"][..],
            json!("{not json"),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            &["1", "tool_calls", "0", "function", "arguments"][..],
            json!({"city": "Paris"}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (&["1", "tool_calls", "0", "id"][..], json!(""), "messages[1].tool_calls[0].id"),
        (&["1", "tool_calls", "0", "type"][..], json!("retrieval"), "messages[1].tool_calls[0].type"),
        (&["1", "tool_calls", "0", "function", "name"][..], json!("a b"), "messages[1].tool_calls[0].function.name"),
        (&["1", "tool_calls"][..], json!("call"), "messages[1].tool_calls"),
        (&["0", "tool_calls"][..], json!([call]), "messages[0].tool_calls"),
    ] {
        let (status, _, got) = err(bad(path, value.clone()));
        assert_eq!((status, got.as_deref()), (400, Some(param)), "{path:?} = {value}");
    }
    // A result before its call does not count.
    let early = json!([{"role": "tool", "tool_call_id": "call_1", "content": "x"}, messages[1].clone()]);
    assert_eq!(err(chat(with(base(), "messages", early))).2.as_deref(), Some("messages[0].tool_call_id"));
}

#[test]
fn integral_floats_are_integers() {
    // JSON Schema counts 2.0 as an integer, so /openapi.json allows it (schemathesis sent
    // `"top_logprobs": -6951.0` and got "expected i64").
    let valid = chat(with(with(with(base(), "n", json!(2.0)), "logprobs", json!(true)), "top_logprobs", json!(3.0)))
        .expect("valid");
    assert_eq!((valid.spec.n, valid.spec.logprobs), (2, Some(3)));
    assert_eq!(err(chat(with(base(), "n", json!(1.5)))), (400, "invalid_request", Some("n".into())));
    let valid = completion(json!({"model": "m", "prompt": [1.0, 2], "max_tokens": 4.0})).expect("valid");
    assert_eq!(valid.prompts, vec![PromptSource::Tokens(vec![1, 2])]);
}

#[test]
fn the_legacy_default_max_tokens_respects_a_lower_limit() {
    // `--max-tokens-limit 8` and a completion that asks for no `max_tokens`: it gets 8, not
    // a 400 about the 16 it never asked for (found by schemathesis).
    let limits = Limits { max_tokens_limit: 8, ..limits() };
    let ctx = Context { served_model_name: "m", limits: &limits, defaults: Default::default() };
    let req: CompletionRequest = parse_json(br#"{"model": "m", "prompt": "hi"}"#).expect("parses");
    assert_eq!(validate_completion(req, &ctx).expect("valid").spec.max_tokens, Some(8));
    assert_eq!(completion(json!({"model": "m", "prompt": "hi"})).expect("valid").spec.max_tokens, Some(16));
}

#[test]
fn fields_left_out_take_the_checkpoints_recommended_sampling() {
    let limits = limits();
    let defaults = GenerationDefaults { temperature: Some(0.6), top_p: Some(0.95), top_k: Some(20), repetition_penalty: None };
    let ctx = Context { served_model_name: "m", limits: &limits, defaults };
    let parse = |body: serde_json::Value| -> ChatCompletionRequest { parse_json(body.to_string().as_bytes()).unwrap() };
    let spec = validate_chat(parse(base()), &ctx).unwrap().spec;
    assert_eq!((spec.temperature, spec.top_p, spec.top_k, spec.repetition_penalty), (0.6, 0.95, 20, 1.0));
    let own = with(with(base(), "temperature", json!(0)), "top_k", json!(-1));
    let spec = validate_chat(parse(own), &ctx).unwrap().spec;
    assert_eq!((spec.temperature, spec.top_k), (0.0, 0), "the request's own values win");
    // Without a recommendation: OpenAI's defaults.
    let spec = chat(base()).unwrap().spec;
    assert_eq!((spec.temperature, spec.top_p, spec.top_k), (1.0, 1.0, 0));
}
