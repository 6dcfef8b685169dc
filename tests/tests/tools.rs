//! Tool calling against the real binary and the default model (SmolLM2, whose ChatML template
//! knows nothing of tools, so the fallback prompt is used), and against a template with tool
//! support (`tests/fixtures/hermes-tools.jinja`): `required`, named, `parallel_tool_calls:
//! false`, streamed over SSE and the WebSocket and reassembled, a full round trip, a call
//! cut by `max_tokens`, a literal `</tool_call>` inside an argument, and the 400s.

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, repo_root, routes, sse_json};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
        "strict": true,
    }})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time",
        "description": "Get the local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
        },
    }})
}

fn question() -> Value {
    json!([{"role": "user", "content": "What is the weather like in Paris today?"}])
}

fn request(extra: Value) -> Value {
    let mut body = json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": question(),
        "tools": [weather_tool(), time_tool()],
        "temperature": 0,
        "max_tokens": 60,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn post(server: &Server, body: &Value) -> (u16, Value) {
    server.post_json(routes::CHAT_COMPLETIONS, body).await
}

/// The calls of a non-streamed response, checked for OpenAI's shape: (name, parsed arguments).
fn calls(body: &Value) -> Vec<(String, Value)> {
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {body}"));
    assert!(!calls.is_empty(), "{body}");
    calls
        .iter()
        .map(|call| {
            assert_eq!(call["type"], "function", "{call}");
            let id = call["id"].as_str().expect("an id");
            assert!(id.starts_with("call_") && id.len() > 10, "{id}");
            let arguments = call["function"]["arguments"].as_str().expect("arguments are a string");
            let parsed: Value =
                serde_json::from_str(arguments).unwrap_or_else(|e| panic!("arguments {arguments:?} do not parse: {e}"));
            (call["function"]["name"].as_str().unwrap().to_string(), parsed)
        })
        .collect()
}

/// Reassembles streamed chat chunks as the OpenAI SDK does: (content, calls with ids, finish reasons).
fn reassemble(chunks: &[Value]) -> (String, Vec<(String, String, String)>, Vec<String>) {
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finishes = Vec::new();
    for chunk in chunks {
        let Some(choice) = chunk["choices"].get(0) else { continue };
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().expect("every call delta has an index") as usize;
            if index == calls.len() {
                // The first delta of a call: id, type and name, and empty arguments.
                assert_eq!(call["type"], "function", "{call}");
                assert_eq!(call["function"]["arguments"], "", "{call}");
                let id = call["id"].as_str().expect("the first delta has the id").to_string();
                let name = call["function"]["name"].as_str().expect("and the name").to_string();
                calls.push((id, name, String::new()));
            } else {
                assert!(call.get("id").is_none() && call["function"].get("name").is_none(), "{call}");
                calls[index].2.push_str(call["function"]["arguments"].as_str().expect("a fragment"));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finishes.push(reason.to_string());
        }
    }
    (content, calls, finishes)
}

async fn stream(server: &Server, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    sse_json(&res.text().await.unwrap())
}

fn assert_error(status: u16, body: &Value, param: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
}

#[tokio::test]
async fn tool_calls_on_the_default_model() {
    let server = Server::default_model(&[]).await;

    // `required`: constrained from the first token, so a call comes out whatever the model.
    let (status, body) = post(&server, &request(json!({"tool_choice": "required"}))).await;
    assert_eq!(status, 200, "{body}");
    let required = calls(&body);
    assert!(["get_weather", "get_time"].contains(&required[0].0.as_str()), "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null, "{body}");
    let ids: Vec<&str> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "call ids are unique: {ids:?}");

    // Parallel calls are bounded: a model that keeps calling stops after 8 calls.
    let (status, body) = post(&server, &request(json!({"tool_choice": "required", "max_tokens": 600}))).await;
    assert_eq!(status, 200, "{body}");
    let count = calls(&body).len();
    assert!((1..=8).contains(&count), "{count} calls: {body}");

    // Named: only that function, with arguments valid for its schema.
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let (status, body) = post(&server, &request(named.clone())).await;
    assert_eq!(status, 200, "{body}");
    for (name, arguments) in calls(&body) {
        assert_eq!(name, "get_time");
        assert!(["UTC", "CET", "PST"].contains(&arguments["zone"].as_str().unwrap()), "{arguments}");
        assert_eq!(arguments.as_object().unwrap().len(), 1, "{arguments}");
    }

    // `parallel_tool_calls: false`: exactly one call.
    let single = json!({"tool_choice": "required", "parallel_tool_calls": false});
    let (status, body) = post(&server, &request(single.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls(&body).len(), 1, "{body}");

    // Streamed: id, type and name first, then argument fragments; the same calls as above.
    let chunks = stream(&server, &request(named.clone())).await;
    let (content, streamed, finishes) = reassemble(&chunks);
    assert_eq!(content, "");
    assert_eq!(finishes, ["tool_calls"]);
    let (_, body) = post(&server, &request(named)).await;
    let expected: Vec<(String, String)> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["function"]["name"].as_str().unwrap().into(), c["function"]["arguments"].as_str().unwrap().into()))
        .collect();
    let got: Vec<(String, String)> = streamed.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect();
    assert_eq!(got, expected, "streamed and non-streamed calls agree");
    assert!(streamed.iter().all(|(id, _, _)| id.starts_with("call_")));

    // The full round trip: call → tool result → an answer in words.
    let (_, first) = post(&server, &request(single)).await;
    let assistant = first["choices"][0]["message"].clone();
    let call_id = assistant["tool_calls"][0]["id"].as_str().unwrap().to_string();
    let mut messages = question().as_array().unwrap().clone();
    messages.push(assistant);
    messages.push(
        json!({"role": "tool", "tool_call_id": call_id, "content": "{\"temperature_c\": 21, \"sky\": \"sunny\"}"}),
    );
    let (status, answer) = post(&server, &request(json!({"messages": messages, "max_tokens": 40}))).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{answer}");
    assert!(choice["message"].get("tool_calls").is_none(), "{answer}");
    assert!(!choice["message"]["content"].as_str().unwrap().trim().is_empty(), "{answer}");

    // Cut by max_tokens inside the call: `length`, no call claimed, the raw text as content.
    let (status, body) = post(&server, &request(json!({"tool_choice": "required", "max_tokens": 6}))).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{body}");
    assert!(choice["message"].get("tool_calls").is_none(), "{body}");
    assert!(choice["message"]["content"].as_str().unwrap().starts_with("<tool_call>"), "{body}");

    // A literal `</tool_call>` inside a string argument (forced by the schema) does not end the call.
    let tricky = json!({"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object",
        "properties": {"text": {"const": "a</tool_call>b"}},
        "required": ["text"],
    }}});
    let one_echo = json!({"tools": [tricky], "tool_choice": "required", "parallel_tool_calls": false});
    let (status, body) = post(&server, &request(one_echo)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls(&body)[0], ("echo".to_string(), json!({"text": "a</tool_call>b"})), "{body}");

    bad_requests(&server).await;
    websocket(&server).await;
}

async fn bad_requests(server: &Server) {
    let cases = [
        (json!({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}), "tool_choice"),
        (json!({"tools": [], "tool_choice": "required"}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools[0].function.name"),
        (
            json!({"tools": [weather_tool(), {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}]}),
            "tools[1].function.parameters",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]}),
            "messages[1].tool_call_id",
        ),
        (
            json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]},
            ]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
            "messages[0].tool_calls[0].id",
        ),
    ];
    for (extra, param) in cases {
        let (status, body) = post(server, &request(extra.clone())).await;
        assert_error(status, &body, param);
    }
    // The compiler's explanation reaches the client.
    let (_, body) = post(server, &request(cases_missing_ref())).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Invalid JSON schema: ") && message.contains("Missing"), "{message}");
}

fn cases_missing_ref() -> Value {
    json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}]})
}

/// The WebSocket gets the same tools: a named call streamed as chunk frames.
async fn websocket(server: &Server) {
    let body = request(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    let chunks = server.ws_chat_chunks(&body).await;
    let (_, calls, finishes) = reassemble(&chunks);
    assert_eq!(finishes, ["tool_calls"]);
    assert!(!calls.is_empty(), "{chunks:?}");
    for (id, name, arguments) in &calls {
        assert!(id.starts_with("call_"));
        assert_eq!(name, "get_weather");
        let arguments: Value = serde_json::from_str(arguments).unwrap();
        assert!(arguments["city"].is_string(), "{arguments}");
    }
}

/// A template that renders tools itself (Qwen-style), given with `--chat-template`: the
/// model gets the definitions and its earlier calls through the template.
#[tokio::test]
async fn tool_calls_through_a_template_with_tool_support() {
    let template = repo_root().join("tests/fixtures/hermes-tools.jinja");
    let server = Server::default_model(&["--chat-template", template.to_str().unwrap()]).await;
    let (status, body) =
        post(&server, &request(json!({"tool_choice": "required", "parallel_tool_calls": false}))).await;
    assert_eq!(status, 200, "{body}");
    let first = calls(&body);
    assert_eq!(first.len(), 1);
    let assistant = body["choices"][0]["message"].clone();
    let call_id = assistant["tool_calls"][0]["id"].as_str().unwrap().to_string();
    let mut messages = question().as_array().unwrap().clone();
    messages.push(assistant);
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"}));
    let (status, answer) = post(&server, &request(json!({"messages": messages, "tool_choice": "none"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none(), "{answer}");
    assert!(["stop", "length"].contains(&answer["choices"][0]["finish_reason"].as_str().unwrap()), "{answer}");
}
