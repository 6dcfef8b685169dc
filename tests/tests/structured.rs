//! Structured outputs (`response_format`) against the real binary and the default model:
//! a strict JSON schema (the answer parses and has exactly the schema's fields), JSON mode,
//! streamed and over the WebSocket, an answer cut by `max_tokens`, and schemas refused with
//! a 400 that names `response_format`.

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, routes, sse_json};

fn person_format() -> Value {
    json!({"type": "json_schema", "json_schema": {
        "name": "person",
        "strict": true,
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 30},
                "age": {"type": "integer"},
                "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
            },
            "required": ["name", "age", "hobbies"],
        },
    }})
}

fn request(extra: Value) -> Value {
    let mut body = json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": "Describe a person called Ada who is 36 and likes chess, as JSON."}],
        "temperature": 0,
        "max_tokens": 120,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn post(server: &Server, body: &Value) -> (u16, Value) {
    server.post_json(routes::CHAT_COMPLETIONS, body).await
}

/// The content parses and matches the person schema exactly.
fn check_person(content: &str) -> Value {
    let value: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?} is not JSON: {e}"));
    let object = value.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["age", "hobbies", "name"], "strict: exactly the schema's fields: {content}");
    assert!(value["name"].as_str().is_some_and(|n| n.chars().count() <= 30), "{content}");
    assert!(value["age"].is_i64(), "{content}");
    let hobbies = value["hobbies"].as_array().expect("hobbies");
    assert!(hobbies.len() <= 3 && hobbies.iter().all(Value::is_string), "{content}");
    value
}

#[tokio::test]
async fn structured_outputs_on_the_default_model() {
    let server = Server::default_model(&[]).await;

    // A strict schema.
    let (status, body) = post(&server, &request(json!({"response_format": person_format()}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    check_person(&content);

    // Streamed: the same text, in pieces.
    let mut streamed_request = request(json!({"response_format": person_format(), "stream": true}));
    let res = client().post(server.url(routes::CHAT_COMPLETIONS)).json(&streamed_request).send().await.unwrap();
    let chunks = sse_json(&res.text().await.unwrap());
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)).filter_map(|c| c["delta"]["content"].as_str()).collect();
    assert_eq!(text, content);

    // JSON mode: any object.
    let question = json!([{"role": "user", "content": "Reply in JSON: what is the capital of France?"}]);
    let (status, body) =
        post(&server, &request(json!({"messages": question, "response_format": {"type": "json_object"}}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let value: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?} is not JSON: {e}"));
    assert!(value.is_object(), "{content}");

    // Too few tokens for the schema: `length`, as for any text.
    let (status, body) = post(&server, &request(json!({"response_format": person_format(), "max_tokens": 4}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    // Schemas the compiler refuses, and malformed formats: 400 naming the field.
    for (format, param) in [
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}, "required": ["a"]}}}),
            "response_format",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}),
            "response_format",
        ),
        (json!({"type": "json_schema"}), "response_format.json_schema"),
        (json!({"type": "xml"}), "response_format.type"),
    ] {
        let (status, body) = post(&server, &request(json!({"response_format": format}))).await;
        assert_eq!(status, 400, "{format}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{format}: {body}");
    }

    // The WebSocket gets the same formats.
    streamed_request.as_object_mut().unwrap().remove("stream");
    let text: String = server
        .ws_chat_chunks(&streamed_request)
        .await
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    check_person(&text);
}
