use salvo::oapi::OpenApi;
use salvo::prelude::*;
use serde_json::Value;

use super::requests::below;
use super::{Served, document};
use crate::serve::handlers;
use crate::serve::validate::Limits;

const MODEL: &str = "org/some-model";

fn limits() -> Limits {
    Limits { max_model_len: 512, max_tokens_limit: 8, max_n: 3, vocab_size: 49152 }
}

/// The document of the routes whose schemas [`super::requests`] tightens.
fn doc() -> (Value, Vec<String>) {
    doc_with_keys(false)
}

fn doc_with_keys(api_keys: bool) -> (Value, Vec<String>) {
    let router = Router::new()
        .push(Router::with_path("v1/models/{**id}").get(handlers::models::get_model))
        .push(Router::with_path("v1/chat/completions").post(handlers::chat::chat_completions))
        .push(Router::with_path("v1/completions").post(handlers::completions::completions))
        .push(Router::with_path("v1/responses").post(handlers::responses::create_response))
        .push(Router::with_path("tokenize").post(handlers::tokenize::tokenize))
        .push(Router::with_path("detokenize").post(handlers::tokenize::detokenize))
        .push(Router::with_path("health").get(handlers::health::health));
    let openapi = OpenApi::new("test", "0").merge_router(&router);
    let limits = limits();
    document(
        openapi,
        &Served { models: &[MODEL.to_string()], limits: &limits, fill_in_the_middle: true, api_keys, metrics_api_key: false },
    )
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    schemas.iter().find(|(k, _)| k.ends_with(&format!(".{name}"))).map(|(_, v)| v).expect(name)
}

#[test]
fn every_field_to_tighten_exists() {
    let (_, missing) = doc();
    assert!(missing.is_empty(), "not found: {missing:?}");
}

#[test]
fn limits_and_the_served_model_are_stated() {
    let (doc, _) = doc();
    let chat = &schema(&doc, "ChatCompletionRequest")["properties"];
    assert_eq!(chat["model"]["enum"], serde_json::json!([MODEL]));
    assert_eq!(chat["n"]["maximum"], 3);
    assert_eq!(chat["n"]["minimum"], 1);
    assert_eq!(chat["max_tokens"]["maximum"], 8);
    assert_eq!(chat["messages"]["minItems"], 1);
    assert_eq!(chat["top_logprobs"]["maximum"], 20);
    assert_eq!(chat["stop_token_ids"]["items"]["maximum"], 49151);
    let detokenize = &schema(&doc, "DetokenizeRequest")["properties"];
    assert_eq!(detokenize["tokens"]["items"]["maximum"], 49151);
    assert_eq!(schema(&doc, "ResponsesRequest")["required"], serde_json::json!(["model", "input"]));
}

#[test]
fn the_model_route_has_a_plain_path_parameter() {
    let (doc, _) = doc();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| !p.contains("{**")), "{:?}", paths.keys());
    let parameters = &paths["/v1/models/{id}"]["get"]["parameters"];
    assert_eq!(parameters[0]["name"], "id");
    assert_eq!(parameters[0]["in"], "path");
    assert_eq!(parameters[0]["schema"]["enum"], serde_json::json!([MODEL]));
}

#[test]
fn streaming_routes_document_event_streams() {
    let (doc, _) = doc();
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/responses"] {
        let content = &doc["paths"][path]["post"]["responses"]["200"]["content"];
        let event = &content["text/event-stream"]["schema"];
        assert!(event.to_string().contains("contentSchema"), "{path}: events have no data schema: {event}");
    }
}

#[test]
fn request_bodies_have_examples_with_the_served_model() {
    let (doc, _) = doc();
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize"] {
        let example = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"];
        assert_eq!(example["model"], MODEL, "{path}: {example}");
    }
}

#[test]
fn api_keys_are_required_where_the_server_checks_them() {
    let (open, _) = doc();
    assert!(open["paths"]["/v1/chat/completions"]["post"].get("security").is_none());
    let (keyed, _) = doc_with_keys(true);
    assert_eq!(keyed["paths"]["/v1/chat/completions"]["post"]["security"], serde_json::json!([{"bearer": []}]));
    assert!(keyed["paths"]["/health"]["get"].get("security").is_none(), "probes stay open");
}

#[test]
fn token_id_patterns_cover_exactly_zero_to_max() {
    assert_eq!(below(0), "(0)");
    assert_eq!(below(7), "(0|[1-6]|7)");
    assert_eq!(below(10), "(0|[1-9][0-9]{0,0}|10)");
    assert_eq!(below(255), "(0|[1-9][0-9]{0,1}|[1-1][0-9]{2}|2[0-4][0-9]{1}|25[0-4]|255)");
    // Brute force over a small range, with a matcher for exactly these shapes.
    for max in [1u64, 9, 10, 99, 100, 255, 1000, 49151] {
        let pattern = below(max);
        for n in 0..=max + 20 {
            assert_eq!(matches(&pattern, &n.to_string()), n <= max, "{n} against {pattern} (max {max})");
        }
        assert!(!matches(&pattern, "01"), "leading zero accepted by {pattern}");
    }
}

/// Whether `s` matches one alternative of `(a|b|…)` built from literal digits, `[x-y]`
/// classes and `{n}` / `{m,n}` repeats of the class before — the shapes [`below`] emits.
fn matches(pattern: &str, s: &str) -> bool {
    let inner = pattern.trim_start_matches('(').trim_end_matches(')');
    inner.split('|').any(|alternative| {
        // Parse into (class lo, class hi, min repeat, max repeat).
        let mut atoms: Vec<(u8, u8, usize, usize)> = Vec::new();
        let b = alternative.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'[' => {
                    atoms.push((b[i + 1], b[i + 3], 1, 1));
                    i += 5;
                }
                b'{' => {
                    let end = alternative[i..].find('}').expect("}") + i;
                    let body = &alternative[i + 1..end];
                    let (lo, hi) = body.split_once(',').unwrap_or((body, body));
                    let last = atoms.last_mut().expect("a class before a repeat");
                    (last.2, last.3) = (lo.parse().expect("min"), hi.parse().expect("max"));
                    i = end + 1;
                }
                d => {
                    atoms.push((d, d, 1, 1));
                    i += 1;
                }
            }
        }
        fn go(atoms: &[(u8, u8, usize, usize)], s: &[u8]) -> bool {
            let Some(&(lo, hi, min, max)) = atoms.first() else { return s.is_empty() };
            (min..=max)
                .any(|k| k <= s.len() && s[..k].iter().all(|c| (lo..=hi).contains(c)) && go(&atoms[1..], &s[k..]))
        }
        go(&atoms, s.as_bytes())
    })
}
