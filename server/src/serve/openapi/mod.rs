//! `/openapi.json`: salvo-oapi's description of the router, made exact.
//!
//! The derived description knows the wire types but not what validation accepts: numeric
//! ranges, non-empty lists, the served model's id, limits set on the command line (`--max-n`,
//! `--max-tokens-limit`) and by the model (its vocabulary). [`document`] takes the derived
//! document and states those (see [`requests`]), so that a request valid for the
//! description is one the server serves; schema tests (`tests/python/test_schemathesis.py`)
//! hold the two to that. It also turns salvo's rest-of-path `{**id}` into a plain `{id}`
//! path parameter, documents every path parameter, the SSE events of streaming answers and
//! which routes need the API key, and gives each request body an example.
//!
//! The document is built once, when the router is, and served as fixed JSON.

mod requests;

use std::sync::Arc;

use salvo::oapi::{OpenApi, ToSchema};
use salvo::prelude::*;
use serde_json::{Map, Value, json};

use super::protocol::{ChatCompletionChunk, CompletionChunk, ErrorBody, ResponseStreamEvent};
use super::validate::Limits;

/// What the description states beyond the types: the models and the limits in force (the
/// default model's: other models' context and vocabulary are known once they load).
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Every id and alias a request may name; the first is the default model's.
    pub models: &'a [String],
    pub limits: &'a Limits,
    /// Whether the vocabulary has fill-in-the-middle tokens (`suffix` on `/v1/completions`).
    pub fill_in_the_middle: bool,
    /// `--api-key` given: the API routes need a Bearer key.
    pub api_keys: bool,
    /// `--metrics-api-key`: `/metrics` needs it too.
    pub metrics_api_key: bool,
}

/// The finished document, and the names of the schemas and properties it meant to tighten
/// but did not find (empty unless a wire type lost a field; a unit test checks).
pub fn document(mut doc: OpenApi, served: &Served<'_>) -> (Value, Vec<String>) {
    let reference = |schema: salvo::oapi::RefOr<salvo::oapi::schema::Schema>| {
        serde_json::to_value(schema).unwrap_or_else(|_| json!({}))
    };
    let events = StreamEvents {
        chat: reference(<ChatCompletionChunk as ToSchema>::to_schema(&mut doc.components)),
        completion: reference(<CompletionChunk as ToSchema>::to_schema(&mut doc.components)),
        responses: reference(<ResponseStreamEvent as ToSchema>::to_schema(&mut doc.components)),
        error: reference(<ErrorBody as ToSchema>::to_schema(&mut doc.components)),
    };
    let mut doc = serde_json::to_value(&doc).unwrap_or_else(|_| json!({}));
    plain_path_parameters(&mut doc, served.models);
    stream_content(&mut doc, &events);
    request_examples(&mut doc, served.models.first().map_or("", String::as_str));
    if served.api_keys {
        key_required(&mut doc, served.metrics_api_key);
    }
    let mut tighten = Tightener { doc: &mut doc, missing: Vec::new() };
    requests::tighten(&mut tighten, served);
    let missing = tighten.missing;
    (doc, missing)
}

/// Serves a finished document.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

#[async_trait]
impl Handler for OpenApiJson {
    async fn handle(&self, _req: &mut Request, _depot: &mut Depot, res: &mut Response, _ctrl: &mut FlowCtrl) {
        res.render(Text::Json(self.0.as_str().to_owned()));
    }
}

/// `{**id}` (salvo's rest-of-path segment, so that ids may hold `/`) becomes `{id}`, and
/// every `{name}` in a path gets its parameter: a string (`%2F` stands for `/`), the served
/// model's id on `/v1/models/{id}`.
fn plain_path_parameters(doc: &mut Value, models: &[String]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    let old = std::mem::take(paths);
    for (path, mut item) in old {
        let path = path.replace("{**", "{");
        let names: Vec<String> =
            path.split('{').skip(1).filter_map(|rest| rest.split('}').next()).map(str::to_string).collect();
        for operation in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            let Some(operation) = operation.as_object_mut() else { continue };
            let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
            let Some(parameters) = parameters.as_array_mut() else { continue };
            parameters.retain(|p| p["in"] != "path");
            for name in &names {
                let schema = if path.starts_with("/v1/models/") {
                    json!({"type": "string", "enum": models})
                } else {
                    json!({"type": "string", "minLength": 1})
                };
                let description = if path.starts_with("/v1/models/") {
                    "The model's id (it may contain `/`, sent as `%2F` or as is)."
                } else {
                    "The id the server gave (`resp_…`)."
                };
                parameters.push(json!({
                    "name": name, "in": "path", "required": true, "description": description, "schema": schema,
                }));
            }
            if parameters.is_empty() {
                operation.remove("parameters");
            }
        }
        paths.insert(path, item);
    }
}

/// References to the schemas of stream events.
struct StreamEvents {
    chat: Value,
    completion: Value,
    responses: Value,
    error: Value,
}

/// With `"stream": true` the 200 answer is `text/event-stream`. The schema describes one
/// event (as OpenAPI 3.2's `itemSchema` would, and as schemathesis reads it): chat and
/// completions send `data:` chunk objects (or an error object, if generation fails after the
/// 200) and `data: [DONE]` last; the Responses API sends `event: <type>` with typed objects.
fn stream_content(doc: &mut Value, events: &StreamEvents) {
    let chunks = |chunk: &Value| {
        json!({
            "type": "object", "required": ["data"],
            "properties": {"data": {"type": "string"}},
            "if": {"properties": {"data": {"const": "[DONE]"}}},
            "else": {"properties": {"data": {
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [chunk, events.error]},
            }}},
            "description": "One Server-Sent Event, with `\"stream\": true`: a chunk as JSON, or `[DONE]` last.",
        })
    };
    let typed = json!({
        "type": "object", "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": events.responses},
        },
        "description": "One Server-Sent Event, with `\"stream\": true`: `event:` names the `type` of the JSON data.",
    });
    for (path, schema) in [
        ("/v1/chat/completions", chunks(&events.chat)),
        ("/v1/completions", chunks(&events.completion)),
        ("/v1/responses", typed),
    ] {
        if let Some(content) = doc.pointer_mut(&format!("/paths/{}/post/responses/200/content", escape(path)))
            && let Some(content) = content.as_object_mut()
        {
            content.insert("text/event-stream".into(), json!({"schema": schema}));
        }
    }
}

/// One small request per body, with the served model: Swagger UI's "Try it out" starts from
/// it, and schemathesis' examples phase sends it.
fn request_examples(doc: &mut Value, model: &str) {
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    for (path, example) in [
        ("/v1/chat/completions", json!({"model": model, "messages": messages, "max_tokens": 8})),
        ("/v1/completions", json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8})),
        ("/v1/responses", json!({"model": model, "input": "Say hello.", "max_output_tokens": 8})),
        ("/tokenize", json!({"model": model, "prompt": "Hello world"})),
        ("/detokenize", json!({"model": model, "tokens": [1, 2, 3]})),
    ] {
        if let Some(media) =
            doc.pointer_mut(&format!("/paths/{}/post/requestBody/content/application~1json", escape(path)))
            && let Some(media) = media.as_object_mut()
        {
            media.insert("example".into(), example);
        }
    }
}

/// With `--api-key`, every route but the probes (and `/metrics` unless
/// `--metrics-api-key`) needs `Authorization: Bearer <key>`.
fn key_required(doc: &mut Value, metrics_api_key: bool) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let open = ["/health", "/ready"].contains(&path.as_str()) || (path == "/metrics" && !metrics_api_key);
        if open {
            continue;
        }
        for operation in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            if let Some(operation) = operation.as_object_mut() {
                operation.insert("security".into(), json!([{"bearer": []}]));
            }
        }
    }
}

/// A JSON pointer token (`/` → `~1`).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Edits component schemas by their short name (`ChatCompletionRequest`), recording what
/// it did not find.
pub(crate) struct Tightener<'a> {
    doc: &'a mut Value,
    missing: Vec<String>,
}

impl Tightener<'_> {
    fn schema(&mut self, name: &str) -> Option<&mut Map<String, Value>> {
        let suffix = format!(".{name}");
        let found = self
            .doc
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
            .and_then(|schemas| schemas.iter_mut().find(|(k, _)| k.ends_with(&suffix) || *k == name))
            .and_then(|(_, v)| v.as_object_mut());
        if found.is_none() {
            self.missing.push(name.to_string());
        }
        found
    }

    /// Merges `extra` into property `property` of schema `name` (keys in `extra` win; a
    /// `description` already there stays unless `extra` has one).
    pub(crate) fn property(&mut self, name: &str, property: &str, extra: Value) {
        let Some(schema) = self.schema(name) else { return };
        let Some(target) = schema.get_mut("properties").and_then(|p| p.get_mut(property)) else {
            self.missing.push(format!("{name}.{property}"));
            return;
        };
        merge(target, extra);
    }

    /// Replaces property `property` of schema `name`, keeping its description.
    pub(crate) fn replace_property(&mut self, name: &str, property: &str, mut with: Value) {
        let Some(schema) = self.schema(name) else { return };
        let Some(target) = schema.get_mut("properties").and_then(|p| p.get_mut(property)) else {
            self.missing.push(format!("{name}.{property}"));
            return;
        };
        if let (Some(d), Some(w)) = (target.get("description").cloned(), with.as_object_mut()) {
            w.entry("description").or_insert(d);
        }
        *target = with;
    }

    /// Merges `extra` into schema `name` itself (`allOf` conditions, `anyOf` shapes).
    pub(crate) fn schema_extra(&mut self, name: &str, extra: Value) {
        if let Some(schema) = self.schema(name) {
            let mut value = Value::Object(std::mem::take(schema));
            merge(&mut value, extra);
            if let Value::Object(o) = value {
                *schema = o;
            }
        }
    }

    /// Replaces schema `name`, keeping its description.
    pub(crate) fn replace_schema(&mut self, name: &str, with: Value) {
        if let Some(schema) = self.schema(name) {
            let description = schema.get("description").cloned();
            let Value::Object(mut with) = with else { return };
            if let Some(d) = description {
                with.entry("description").or_insert(d);
            }
            *schema = with;
        }
    }
}

fn merge(target: &mut Value, extra: Value) {
    match (target.as_object_mut(), extra) {
        (Some(t), Value::Object(e)) => {
            for (k, v) in e {
                t.insert(k, v);
            }
        }
        (_, extra) => *target = extra,
    }
}

#[cfg(test)]
mod tests;
