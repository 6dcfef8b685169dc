//! The API's paths, as constants shared by the router ([`super::router`]), the metrics'
//! `route` label and the tests. The bottom layer of `serve/`: it imports nothing.

pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
pub const MODELS: &str = "/v1/models";
/// A model id may contain `/` (`org/name`), hence the rest-of-path parameter.
pub const MODEL: &str = "/v1/models/{**id}";
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";
pub const CHAT_WS: &str = "/v1/chat/ws";
pub const RESPONSES: &str = "/v1/responses";
/// One stored response (`GET`, `DELETE`).
pub const RESPONSE: &str = "/v1/responses/{id}";
pub const TOKENIZE: &str = "/tokenize";
pub const DETOKENIZE: &str = "/detokenize";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";
pub const DOCS: &str = "/docs";
/// The chat page (off with `--no-ui`) and its embedded scripts and styles.
pub const UI: &str = "/";
pub const UI_ASSET: &str = "/ui/{**file}";

/// Every route, for the metrics label.
pub const ALL: &[&str] = &[
    HEALTH,
    READY,
    MODELS,
    MODEL,
    CHAT_COMPLETIONS,
    COMPLETIONS,
    CHAT_WS,
    RESPONSES,
    RESPONSE,
    TOKENIZE,
    DETOKENIZE,
    METRICS,
    OPENAPI,
    DOCS,
    UI_ASSET,
];

/// The label for a request's route: one of [`ALL`] or `unmatched` (never the raw path,
/// which would make the label's cardinality unbounded).
pub fn route_label(matched_path: &str) -> &'static str {
    let matched = matched_path.trim_start_matches('/');
    if matched.is_empty() {
        return "unmatched";
    }
    ALL.iter()
        .copied()
        .find(|r| r.trim_start_matches('/') == matched || (*r == DOCS && matched.starts_with("docs")))
        .unwrap_or("unmatched")
}
