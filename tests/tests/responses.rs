//! `/v1/responses` against the real binary and the default model: the response object, the
//! typed event stream (order, sequence numbers, the same text as the JSON answer), stored
//! responses (`previous_response_id`, GET, DELETE, `store: false`, eviction, per-key
//! ownership), `text.format` with a JSON schema, function tools with a full round trip, and
//! the 400s that name their `param`.

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, golden_chat, routes, sse_frames};

fn responses_url(server: &Server, id: Option<&str>) -> String {
    match id {
        Some(id) => server.url(&format!("{}/{id}", routes::RESPONSES)),
        None => server.url(routes::RESPONSES),
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

async fn create(server: &Server, body: &Value) -> (u16, Value) {
    send(client().post(responses_url(server, None)).json(body)).await
}

async fn get(server: &Server, id: &str) -> (u16, Value) {
    send(client().get(responses_url(server, Some(id)))).await
}

/// The golden "capital" chat as Responses input, greedy.
fn capital(extra: Value) -> Value {
    let chat = golden_chat("capital");
    let mut body = json!({"model": DEFAULT_MODEL_NAME, "input": chat["messages"], "temperature": 0});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// The text of a response's message items.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

/// `event: <type>` / `data: {…}` frames → (event name, data).
fn events(body: &str) -> Vec<(String, Value)> {
    sse_frames(body)
        .iter()
        .filter(|f| !f.starts_with(':'))
        .map(|frame| {
            let (event, data) = frame.split_once('\n').unwrap_or_else(|| panic!("a two-line frame: {frame:?}"));
            let name = event.strip_prefix("event: ").unwrap_or_else(|| panic!("an event line: {event:?}"));
            let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("a data line: {data:?}"));
            (name.to_string(), serde_json::from_str(data).unwrap_or_else(|e| panic!("bad data {data:?}: {e}")))
        })
        .collect()
}

async fn stream(server: &Server, body: &Value) -> Vec<(String, Value)> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let res = client().post(responses_url(server, None)).json(&body).send().await.expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.expect("body");
    assert!(!text.contains("[DONE]"), "Responses streams end with their last event: {text}");
    events(&text)
}

#[tokio::test]
async fn plain_streamed_stored_and_continued() {
    let server = Server::default_model(&[]).await;
    let golden = golden_chat("capital");
    let expected = golden["reference_greedy_text"].as_str().unwrap();
    let prompt_tokens = golden["ids"].as_array().unwrap().len() as u64;

    // The same chat as /v1/chat/completions: the same greedy text.
    let (status, first) = create(&server, &capital(json!({"metadata": {"run": "1"}}))).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(
        (&first["object"], &first["status"], &first["model"]),
        (&json!("response"), &json!("completed"), &json!(DEFAULT_MODEL_NAME))
    );
    let message = &first["output"][0];
    assert_eq!(
        (&message["type"], &message["role"], &message["status"]),
        (&json!("message"), &json!("assistant"), &json!("completed"))
    );
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["annotations"], json!([]));
    assert_eq!(output_text(&first), expected);
    let usage = &first["usage"];
    assert_eq!(usage["input_tokens"], prompt_tokens);
    let output_tokens = usage["output_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt_tokens + output_tokens);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(
        (&first["store"], &first["metadata"], &first["temperature"]),
        (&json!(true), &json!({"run": "1"}), &json!(0.0))
    );
    assert_eq!(first["text"]["format"]["type"], "text");

    // Streamed: the SDK's event order, consecutive sequence numbers, the same text.
    let events = stream(&server, &capital(json!({}))).await;
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], json!(name), "{data}");
        assert_eq!(data["sequence_number"], i as u64, "{data}");
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "response.output_text.delta").count();
    assert!(deltas >= 2, "{names:?}");
    let mut order =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    order.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    order.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, order);
    let streamed: String = events.iter().filter_map(|(_, d)| d["delta"].as_str()).collect();
    assert_eq!(streamed, expected);
    let item_id = &events[2].1["item"]["id"];
    assert!(events[3..events.len() - 1].iter().all(|(_, d)| d["item_id"] == *item_id || d["item"]["id"] == *item_id));
    assert_eq!(events[2].1["item"]["status"], "in_progress");
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let done = &events.last().unwrap().1["response"];
    assert_eq!(output_text(done), expected);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["input_tokens"], prompt_tokens);
    // A streamed response is stored too.
    assert_eq!(get(&server, done["id"].as_str().unwrap()).await.0, 200);

    // GET returns what POST returned.
    let (status, stored) = get(&server, &id).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored, first);

    // The continuation is the chat with the answer and the new question, as chat renders it.
    let (status, next) =
        create(&server, &json!({"model": DEFAULT_MODEL_NAME, "input": "And of Germany?", "previous_response_id": id, "temperature": 0, "max_output_tokens": 20})).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["previous_response_id"], json!(id));
    let mut messages = golden["messages"].as_array().unwrap().clone();
    messages.push(json!({"role": "assistant", "content": expected}));
    messages.push(json!({"role": "user", "content": "And of Germany?"}));
    let (status, tokens) = send(client().post(server.url(routes::TOKENIZE)).json(&json!({"messages": messages}))).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(next["usage"]["input_tokens"], tokens["count"], "the continuation's prompt is the whole chat");
    let chat = json!({"model": DEFAULT_MODEL_NAME, "messages": messages, "temperature": 0, "max_tokens": 20});
    let (status, answer) = send(client().post(server.url(routes::CHAT_COMPLETIONS)).json(&chat)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(output_text(&next), answer["choices"][0]["message"]["content"].as_str().unwrap());

    // A budget that runs out: incomplete.
    let (status, short) = create(&server, &capital(json!({"max_output_tokens": 3}))).await;
    assert_eq!(status, 200, "{short}");
    assert_eq!(
        (&short["status"], &short["incomplete_details"]["reason"]),
        (&json!("incomplete"), &json!("max_output_tokens"))
    );
    assert_eq!(short["usage"]["output_tokens"], 3);
    assert_eq!(short["output"][0]["status"], "incomplete");
    let events = stream(&server, &capital(json!({"max_output_tokens": 3}))).await;
    assert_eq!(events.last().unwrap().0, "response.incomplete");

    // store: false keeps nothing; unknown ids are 400 for previous_response_id, 404 for GET.
    let (_, unstored) = create(&server, &capital(json!({"store": false, "max_output_tokens": 2}))).await;
    assert_eq!(unstored["store"], false);
    let unstored_id = unstored["id"].as_str().unwrap();
    assert_eq!(get(&server, unstored_id).await.0, 404);
    for missing in [unstored_id, "resp_nope"] {
        let (status, e) =
            create(&server, &json!({"model": DEFAULT_MODEL_NAME, "input": "hi", "previous_response_id": missing}))
                .await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], "previous_response_id");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }

    // DELETE, then it is gone.
    let (status, deleted) = send(client().delete(responses_url(&server, Some(&id)))).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"id": id, "object": "response", "deleted": true}));
    let (status, e) = get(&server, &id).await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(send(client().delete(responses_url(&server, Some(&id)))).await.0, 404);

    // Bad input: 400 naming the field.
    let bad = [
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"reasoning": {"effort": "high"}}), "reasoning.effort"),
        (json!({"background": true}), "background"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0].type",
        ),
        (json!({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}), "input[0].call_id"),
        (json!({"text": {"format": {"type": "json_schema", "name": "x"}}}), "text.format.schema"),
        (json!({"max_output_tokens": 0}), "max_output_tokens"),
        (json!({"frobnicate": 1}), "frobnicate"),
    ];
    for (extra, param) in bad {
        let (status, e) = create(&server, &capital(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {e}");
        assert_eq!(e["error"]["param"], param, "{extra}: {e}");
    }
}

/// A schema the answer must follow.
fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": false
    })
}

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
        "strict": true
    })
}

#[tokio::test]
async fn json_schema_and_a_function_tool_round_trip() {
    let server = Server::default_model(&[]).await;

    // text.format: the output parses and has the schema's keys.
    let format = json!({"format": {"type": "json_schema", "name": "place", "schema": city_schema(), "strict": true}});
    let body = json!({"model": DEFAULT_MODEL_NAME, "input": "Name the capital of France and its country as JSON.",
        "text": format, "temperature": 0, "max_output_tokens": 60});
    let (status, response) = create(&server, &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["text"]["format"]["name"], "place");
    let parsed: Value = serde_json::from_str(&output_text(&response)).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert!(parsed["city"].is_string() && parsed["country"].is_string(), "{parsed}");
    assert_eq!(parsed.as_object().unwrap().len(), 2, "{parsed}");
    let bad_schema = json!({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}});
    let (status, e) = create(&server, &json!({"model": DEFAULT_MODEL_NAME, "input": "x", "text": bad_schema})).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["param"].as_str().unwrap().starts_with("text.format"), "{e}");

    // tool_choice "required", one call: a function_call item whose arguments parse. (With
    // parallel calls this small model calls again and again until the budget runs out.)
    let body = json!({"model": DEFAULT_MODEL_NAME, "input": "What is the weather in Paris?", "tools": [weather_tool()],
        "tool_choice": "required", "parallel_tool_calls": false, "temperature": 0, "max_output_tokens": 60});
    let (status, call) = create(&server, &body).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!((&call["status"], call["output"].as_array().unwrap().len()), (&json!("completed"), 1), "{call}");
    let item = call["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap_or_else(|| panic!("no call: {call}"));
    assert_eq!((&item["name"], &item["status"]), (&json!("get_weather"), &json!("completed")));
    assert!(
        item["id"].as_str().unwrap().starts_with("fc_") && item["call_id"].as_str().unwrap().starts_with("call_"),
        "{item}"
    );
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).expect("arguments parse");
    assert!(arguments["city"].is_string(), "{arguments}");
    assert_eq!(call["tools"][0]["name"], "get_weather");
    assert_eq!(call["tool_choice"], "required");

    // Streamed, each call comes as an item whose argument deltas add up to its arguments,
    // and the calls are those of the JSON answer.
    let events = stream(&server, &body).await;
    let calls: Vec<&Value> = events
        .iter()
        .filter(|(n, d)| n == "response.output_item.added" && d["item"]["type"] == "function_call")
        .map(|(_, d)| &d["item"])
        .collect();
    let json_calls: Vec<&Value> =
        call["output"].as_array().unwrap().iter().filter(|i| i["type"] == "function_call").collect();
    assert_eq!(calls.len(), json_calls.len(), "{events:?}");
    for (streamed_call, json_call) in calls.iter().zip(&json_calls) {
        let of_item =
            |name: &'static str| events.iter().filter(move |(n, d)| n == name && d["item_id"] == streamed_call["id"]);
        let streamed: String =
            of_item("response.function_call_arguments.delta").filter_map(|(_, d)| d["delta"].as_str()).collect();
        let done = of_item("response.function_call_arguments.done").next().expect("arguments done");
        assert_eq!(done.1["arguments"].as_str().unwrap(), streamed);
        assert_eq!(
            (&streamed_call["name"], streamed.as_str()),
            (&json_call["name"], json_call["arguments"].as_str().unwrap())
        );
    }
    assert_eq!(events.last().unwrap().0, "response.completed");

    // The result goes back with previous_response_id: the model answers with a message.
    let result = json!([{"type": "function_call_output", "call_id": item["call_id"], "output": "{\"temperature_c\": 21, \"sky\": \"sunny\"}"}]);
    let body = json!({"model": DEFAULT_MODEL_NAME, "input": result, "previous_response_id": call["id"],
        "tools": [weather_tool()], "temperature": 0, "max_output_tokens": 40});
    let (status, answer) = create(&server, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"][0]["type"], "message", "{answer}");
    assert!(!output_text(&answer).is_empty(), "{answer}");
    assert!(answer["usage"]["input_tokens"].as_u64() > call["usage"]["input_tokens"].as_u64());
    // The same call id cannot be answered twice.
    let body = json!({"model": DEFAULT_MODEL_NAME, "input": result, "previous_response_id": answer["id"], "tools": [weather_tool()]});
    let (status, e) = create(&server, &body).await;
    assert_eq!((status, &e["error"]["param"]), (400, &json!("input[0].call_id")), "{e}");
}

#[tokio::test]
async fn stored_responses_belong_to_their_key_and_are_evicted() {
    let server =
        Server::default_model(&["--api-key", "sk-a", "--api-key", "sk-b", "--responses-store-size", "2"]).await;
    let post = |key: &'static str, body: Value| {
        let server = &server;
        async move { send(client().post(responses_url(server, None)).bearer_auth(key).json(&body)).await }
    };
    let body = json!({"model": DEFAULT_MODEL_NAME, "input": "Hello", "max_output_tokens": 2});
    let (status, mine) = post("sk-a", body.clone()).await;
    assert_eq!(status, 200, "{mine}");
    let id = mine["id"].as_str().unwrap();
    let read = |key: &'static str, id: String| {
        let server = &server;
        async move { send(client().get(responses_url(server, Some(&id))).bearer_auth(key)).await.0 }
    };
    assert_eq!(read("sk-a", id.to_string()).await, 200);
    assert_eq!(read("sk-b", id.to_string()).await, 404);
    assert_eq!(send(client().delete(responses_url(&server, Some(id))).bearer_auth("sk-b")).await.0, 404);
    let mut next = body.clone();
    next["previous_response_id"] = json!(id);
    assert_eq!(post("sk-b", next.clone()).await.0, 400);
    assert_eq!(post("sk-a", next).await.0, 200);
    // Without a key: 401, as every /v1 route.
    assert_eq!(client().get(responses_url(&server, Some(id))).send().await.unwrap().status(), 401);

    // Two more responses push the first out of a store of two.
    post("sk-a", body.clone()).await;
    assert_eq!(read("sk-a", id.to_string()).await, 404, "the least recently used response is evicted");
}
