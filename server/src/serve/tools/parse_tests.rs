//! The call parser: whole texts, the same texts fed in every possible split, and the
//! cases that must not be taken for calls.

use serde_json::{Value, json};

use super::*;

fn call(name: &str, arguments: Value) -> (String, Value) {
    (name.to_string(), arguments)
}

/// Name and parsed arguments of each call (ids are random).
fn calls_of(out: &ParsedOutput) -> Vec<(String, Value)> {
    out.calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str(&c.arguments)
                .unwrap_or_else(|e| panic!("arguments {:?} do not parse: {e}", c.arguments));
            (c.name.clone(), arguments)
        })
        .collect()
}

/// Feeds `text` in pieces of `size` bytes (on char boundaries) and reassembles the events
/// the way an OpenAI client does.
fn streamed(format: ToolFormat, text: &str, size: usize) -> (ParsedOutput, Outcome, Vec<ToolEvent>) {
    let mut parser = ToolCallParser::new(format);
    let mut events = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        events.extend(parser.push(&rest[..cut]));
        rest = &rest[cut..];
    }
    let (tail, outcome) = parser.finish();
    events.extend(tail);
    let mut out = ParsedOutput::default();
    let mut content = String::new();
    for event in &events {
        match event {
            ToolEvent::Content(t) => content.push_str(t),
            ToolEvent::CallStart { index, id, name } => {
                assert_eq!(*index, out.calls.len(), "calls start in order");
                assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                out.calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new() });
            }
            ToolEvent::Arguments { index, fragment } => {
                assert!(!fragment.is_empty());
                out.calls[*index].arguments.push_str(fragment);
            }
        }
    }
    out.content = (!content.trim().is_empty()).then_some(content);
    (out, outcome, events)
}

/// Every piece size gives the same content and calls as the whole text.
fn check_all_splits(format: ToolFormat, text: &str) -> ParsedOutput {
    let whole = parse_output(format, text);
    for size in 1..=text.len().min(40) {
        let (pieces, outcome, _) = streamed(format, text, size);
        if outcome.has_calls() {
            assert_eq!(pieces.content, whole.content, "piece size {size}");
            assert_eq!(calls_of(&pieces), calls_of(&whole), "piece size {size}");
        }
    }
    whole
}

#[test]
fn hermes_text_then_a_call() {
    let text =
        "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let out = check_all_splits(ToolFormat::Hermes, text);
    assert_eq!(out.content.as_deref(), Some("Let me look.\n"));
    assert_eq!(calls_of(&out), vec![call("get_weather", json!({"city": "Paris"}))]);
    // The arguments are the model's JSON text as written.
    assert_eq!(out.calls[0].arguments, "{\"city\": \"Paris\"}");
}

#[test]
fn a_closing_tag_inside_a_string_argument_does_not_end_the_call() {
    let text =
        "<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"s\": \"a</tool_call>b \\\"q\\\" ]}\"}}\n</tool_call>";
    let out = check_all_splits(ToolFormat::Hermes, text);
    assert_eq!(out.content, None);
    assert_eq!(calls_of(&out), vec![call("echo", json!({"s": "a</tool_call>b \"q\" ]}"}))]);
}

#[test]
fn several_calls_and_whitespace_between() {
    let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"arguments\": {\"x\": [1, {\"y\": null}]}, \"name\": \"b\"}\n</tool_call>\n";
    let out = check_all_splits(ToolFormat::Hermes, text);
    assert_eq!(out.content, None);
    assert_eq!(calls_of(&out), vec![call("a", json!({})), call("b", json!({"x": [1, {"y": null}]}))]);
    let ids: Vec<&str> = out.calls.iter().map(|c| c.id.as_str()).collect();
    assert_ne!(ids[0], ids[1], "call ids are unique");
}

#[test]
fn an_unfinished_call_claims_nothing() {
    for text in [
        "Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
        "Sure. <tool_call>\n{\"name\": \"get_wea",
        "Sure. <tool_call>",
    ] {
        let out = parse_output(ToolFormat::Hermes, text);
        assert_eq!(out, ParsedOutput { content: Some(text.into()), calls: vec![] }, "{text}");
        let (_, outcome, _) = streamed(ToolFormat::Hermes, text, 3);
        assert!(outcome.incomplete_call && !outcome.has_calls(), "{text}");
    }
    // Complete JSON whose closing tag was cut short is a call.
    let out = parse_output(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_");
    assert_eq!(calls_of(&out), vec![call("f", json!({}))]);
}

#[test]
fn text_that_only_looks_like_a_trigger_is_content() {
    let out = parse_output(ToolFormat::Hermes, "a <tool and <tool_cal");
    assert_eq!(out, ParsedOutput { content: Some("a <tool and <tool_cal".into()), calls: vec![] });
    // Malformed after the trigger: text, and the rest stays text.
    let text = "x <tool_call> not json </tool_call> <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    let out = parse_output(ToolFormat::Hermes, text);
    assert_eq!(out, ParsedOutput { content: Some(text.into()), calls: vec![] });
}

#[test]
fn streaming_holds_back_a_possible_trigger_and_sends_name_before_arguments() {
    let mut parser = ToolCallParser::new(ToolFormat::Hermes);
    assert_eq!(parser.push("Hello <tool"), vec![ToolEvent::Content("Hello ".into())]);
    assert_eq!(parser.push("kit"), vec![ToolEvent::Content("<toolkit".into())]);
    assert_eq!(parser.push(" <tool_call>\n{\"name\": \"f"), vec![ToolEvent::Content(" ".into())]);
    let events = parser.push("\", \"arguments\": {\"a\"");
    assert!(matches!(&events[0], ToolEvent::CallStart { index: 0, name, .. } if name == "f"), "{events:?}");
    assert_eq!(events[1], ToolEvent::Arguments { index: 0, fragment: "{\"a\"".into() });
    assert_eq!(parser.push(": 1}}\n</tool_call>"), vec![ToolEvent::Arguments { index: 0, fragment: ": 1}".into() }]);
    let (events, outcome) = parser.finish();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(outcome, Outcome { complete_calls: 1, incomplete_call: false });
}

#[test]
fn mistral_calls_in_one_array() {
    let text = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": \"],[\"}}, {\"name\": \"b\", \"arguments\": {}}]";
    let out = check_all_splits(ToolFormat::Mistral, text);
    assert_eq!(out.content, None);
    assert_eq!(calls_of(&out), vec![call("a", json!({"q": "],["})), call("b", json!({}))]);
}

#[test]
fn llama3_json_calls() {
    let text = "{\"name\": \"a\", \"parameters\": {\"n\": 2}}; {\"name\": \"b\", \"parameters\": {\"s\": \"x\"}}";
    let out = check_all_splits(ToolFormat::Llama3Json, text);
    assert_eq!(out.content, None);
    assert_eq!(calls_of(&out), vec![call("a", json!({"n": 2})), call("b", json!({"s": "x"}))]);
    // A JSON answer that is not a call stays text.
    let out = parse_output(ToolFormat::Llama3Json, "{\"answer\": 4}");
    assert_eq!(out, ParsedOutput { content: Some("{\"answer\": 4}".into()), calls: vec![] });
}

#[test]
fn text_after_the_calls_is_content() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nDone.";
    let out = check_all_splits(ToolFormat::Hermes, text);
    assert_eq!(out.content.as_deref(), Some("\nDone."));
    assert_eq!(calls_of(&out), vec![call("f", json!({}))]);
}
