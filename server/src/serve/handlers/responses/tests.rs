//! The Responses stream formatter and the response builder, fed driver events directly:
//! event order and sequence numbers, function-call items from tool-call text, incomplete
//! responses, the error event, and what gets stored.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use stellarchat_model::engine::FinishReason;

use super::draft::{ResponseDraft, output_items, response_usage};
use super::stream::ResponsesStream;
use crate::serve::error::ApiError;
use crate::serve::generate::DriverEvent;
use crate::serve::protocol::UsageInfo;
use crate::serve::responses_store::{Owner, ResponseStore};
use crate::serve::sse::StreamFormat;
use crate::serve::tools::{ToolCall, ToolCallParser, ToolFormat};
use crate::serve::validate::Role;
use crate::serve::validate::responses::{ConversationItem, EchoedSettings};

fn draft(store: bool) -> ResponseDraft {
    ResponseDraft {
        id: "resp_test".into(),
        created_at: 1,
        model: "m".into(),
        echo: EchoedSettings {
            instructions: Some("be brief".into()),
            temperature: 0.5,
            top_p: 1.0,
            max_output_tokens: Some(9),
            metadata: Default::default(),
            user: None,
            parallel_tool_calls: true,
            text: json!({"format": {"type": "text"}, "verbosity": "medium"}),
            tools: Vec::new(),
            tool_choice: json!("auto"),
        },
        previous_response_id: None,
        store,
        owner: Owner(None),
        conversation: vec![ConversationItem::Message { role: Role::User, text: "hi".into() }],
    }
}

/// `event: <type>\ndata: {…}\n\n` frames → their data, checking the name is the type.
fn parse(frames: &[Bytes]) -> Vec<Value> {
    frames
        .iter()
        .map(|frame| {
            let text = std::str::from_utf8(frame).unwrap();
            let body = text.strip_suffix("\n\n").expect("a frame ends with a blank line");
            let (event, data) = body.split_once('\n').expect("two lines");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(event.strip_prefix("event: ").unwrap(), data["type"], "{text}");
            data
        })
        .collect()
}

fn run(stream: &mut ResponsesStream, pieces: &[&str], reason: FinishReason) -> Vec<Value> {
    let mut frames = stream.opening();
    for piece in pieces {
        frames.extend(stream.event(&DriverEvent::Delta { index: 0, text: piece.to_string(), logprobs: Vec::new() }));
    }
    frames.extend(stream.event(&DriverEvent::Finish { index: 0, reason }));
    frames.extend(stream.event(&DriverEvent::Done(UsageInfo::new(5, pieces.len(), 0))));
    let events = parse(&frames);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{e}");
    }
    events
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[test]
fn a_text_answer_streams_as_one_message_and_is_stored() {
    let store = Arc::new(ResponseStore::new(4));
    let mut stream = ResponsesStream::new(draft(true), store.clone(), None);
    let events = run(&mut stream, &["Hel", "", "lo"], FinishReason::Stop);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["instructions"], "be brief");
    assert_eq!(events[6]["text"], "Hello");
    let item_id = events[2]["item"]["id"].clone();
    assert!(events[3..9].iter().all(|e| e["item_id"] == item_id || e["item"]["id"] == item_id));
    let response = &events[9]["response"];
    assert_eq!((&response["status"], &response["usage"]["output_tokens"]), (&json!("completed"), &json!(3)));
    assert_eq!(response["output"][0]["content"][0]["text"], "Hello");

    let stored = store.get("resp_test", Owner(None)).expect("stored");
    assert_eq!(serde_json::to_value(&stored.response).unwrap(), *response);
    assert_eq!(
        stored.conversation,
        [
            ConversationItem::Message { role: Role::User, text: "hi".into() },
            ConversationItem::Message { role: Role::Assistant, text: "Hello".into() },
        ]
    );
}

#[test]
fn tool_call_text_streams_as_a_function_call_item() {
    let store = Arc::new(ResponseStore::new(4));
    let parser = ToolCallParser::new(ToolFormat::Hermes);
    let mut stream = ResponsesStream::new(draft(false), store.clone(), Some(parser));
    let pieces =
        ["<tool_", "call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": ", "\"Paris\"}}\n</tool_call>"];
    let events = run(&mut stream, &pieces, FinishReason::Stop);
    let names = types(&events);
    assert_eq!(names[..3], ["response.created", "response.in_progress", "response.output_item.added"]);
    assert_eq!(
        names[names.len() - 3..],
        ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    );
    assert!(names.iter().all(|n| !n.contains("output_text")), "no message for a call-only answer: {names:?}");
    let added = &events[2]["item"];
    assert_eq!(
        (&added["type"], &added["name"], &added["status"]),
        (&json!("function_call"), &json!("get_weather"), &json!("in_progress"))
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let arguments: Value = serde_json::from_str(&deltas).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    let item = &events[events.len() - 1]["response"]["output"][0];
    assert_eq!((&item["call_id"], &item["status"]), (&added["call_id"], &json!("completed")));
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    assert!(store.is_empty(), "store: false keeps nothing");
}

#[test]
fn a_cut_answer_is_incomplete_and_even_an_empty_one_is_a_message() {
    let mut stream = ResponsesStream::new(draft(false), Arc::new(ResponseStore::new(0)), None);
    let events = run(&mut stream, &[], FinishReason::Length);
    assert_eq!(events.last().unwrap()["type"], "response.incomplete");
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(response["output"][0]["type"], "message");
    assert_eq!(response["output"][0]["status"], "incomplete");
    assert_eq!(response["output"][0]["content"][0]["text"], "");
}

#[test]
fn a_failure_after_the_start_is_an_error_event_and_nothing_follows() {
    let mut stream = ResponsesStream::new(draft(false), Arc::new(ResponseStore::new(0)), None);
    let mut frames = stream.opening();
    frames.extend(stream.error(&ApiError::ShuttingDown));
    let events = parse(&frames);
    assert_eq!(events[2]["type"], "error");
    assert_eq!(events[2]["sequence_number"], 2);
    assert_eq!(events[2]["code"], "shutting_down");
    assert!(stream.end().is_none(), "no [DONE] after a Responses stream");
}

#[test]
fn output_items_put_text_before_calls_and_usage_uses_the_responses_names() {
    let call = ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
    let items = output_items("msg_1", "", std::slice::from_ref(&call), FinishReason::Stop);
    assert_eq!(items.len(), 1, "no empty message beside a call");
    let items = output_items("msg_1", "Sure.", &[call], FinishReason::Stop);
    assert_eq!(serde_json::to_value(&items).unwrap()[0]["content"][0]["text"], "Sure.");
    assert_eq!(serde_json::to_value(&items).unwrap()[1]["call_id"], "call_1");
    let usage = serde_json::to_value(response_usage(&UsageInfo::new(7, 3, 2))).unwrap();
    assert_eq!(
        usage,
        json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10})
    );
    let d = draft(false);
    let done = d.finished(Vec::new(), FinishReason::Stop, &UsageInfo::new(1, 1, 0));
    assert_eq!((done.status.as_str(), done.temperature, done.max_output_tokens), ("completed", 0.5, Some(9)));
    assert!(done.completed_at.is_some() && done.incomplete_details.is_none());
}
