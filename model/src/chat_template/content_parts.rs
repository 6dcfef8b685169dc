//! Which parts of a rendered chat prompt came from the request, so that only the template's
//! own text can become control tokens (see `tokenizer::rendered`).
//!
//! Every non-empty string of the request (message content, names, tool call ids, tool call
//! names and arguments, tool results, the strings of tool definitions) is replaced by a
//! marker `EDGE OPEN index " CLOSE EDGE` before rendering, where OPEN and CLOSE are
//! private-use characters that occur nowhere in the request and EDGE is U+2028 (a line
//! separator, which strip/trim remove). The rendered string is then split at the markers and
//! the original strings put back. The marker shows what the template did to the string:
//! - a missing EDGE on a side: the template stripped that side (`.strip()`, `| trim`);
//! - the quote written as `\"` (or `\\\"`): the string went through `tojson` once (twice).
//!
//! The result is trusted only if putting the strings back gives exactly the string the
//! template renders from the real request. When it does not (a template that slices,
//! upper-cases or tests the content, say), the safe fallback marks as content every
//! occurrence in the rendered prompt of a request string (as is, stripped, or JSON-escaped):
//! such text never becomes a control token, even where the template's own text happens to
//! equal it. Nothing falls back to parsing control tokens in content.

use std::collections::HashSet;

use serde_json::Value as Json;

use super::{ChatMessage, ChatTemplate, write_json_string};
use crate::error::{ModelError, Result};
use crate::tokenizer::{PartKind, RenderedPrompt};

/// Most bytes the fallback may scan (request strings × prompt length), about a second's work;
/// a request that needs more is refused.
const SEARCH_BUDGET: usize = 1 << 30;

impl ChatTemplate {
    /// [`ChatTemplate::render_with_tools`], split into the template's own text and the text
    /// that came from the request, for [`crate::tokenizer::Tokenizer::encode_rendered`]:
    /// content never becomes control tokens. A request whose text cannot be told apart from
    /// the template's (it uses every private-use character, or needs too long a search) is a
    /// [`ModelError::ChatTemplate`].
    pub fn render_parts(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<RenderedPrompt> {
        let plain = self.render_with_tools(messages, tools, add_generation_prompt)?;
        split_rendered(messages, tools, plain, |messages, tools| {
            self.render_with_tools(messages, tools, add_generation_prompt)
        })
    }
}

/// Stands on both sides of a marker; a side the template stripped loses it.
const EDGE: char = '\u{2028}';
/// The quote inside a marker; JSON-escaping it shows that the template used `tojson`.
const QUOTE: &str = "\"";
/// How many nested `tojson`s are recognised.
const MAX_JSON_DEPTH: usize = 3;

/// The delimiters of one rendering's markers: two private-use characters that the request
/// does not contain.
#[derive(Clone, Copy)]
struct Markers {
    open: char,
    close: char,
}

impl Markers {
    /// The first pair of private-use characters absent from `request` (its strings, as JSON).
    fn absent_from(request: &str) -> Option<Markers> {
        let used: HashSet<char> = request.chars().filter(|c| ('\u{E000}'..='\u{F8FF}').contains(c)).collect();
        let mut free = ('\u{E000}'..='\u{F8FF}').filter(|c| !used.contains(c));
        Some(Markers { open: free.next()?, close: free.next()? })
    }

    fn marker(self, index: usize) -> String {
        format!("{EDGE}{}{index}{QUOTE}{}{EDGE}", self.open, self.close)
    }
}

/// Replaces the request's strings with markers, remembering the originals.
struct Marking {
    markers: Markers,
    originals: Vec<String>,
}

impl Marking {
    fn string(&mut self, s: &str) -> String {
        if s.is_empty() {
            return String::new();
        }
        self.originals.push(s.to_owned());
        self.markers.marker(self.originals.len() - 1)
    }

    /// Every string of a JSON value, keys included (tool call arguments).
    fn json(&mut self, value: &Json) -> Json {
        match value {
            Json::String(s) => Json::String(self.string(s)),
            Json::Array(items) => Json::Array(items.iter().map(|v| self.json(v)).collect()),
            Json::Object(map) => Json::Object(map.iter().map(|(k, v)| (self.string(k), self.json(v))).collect()),
            other => other.clone(),
        }
    }

    /// The strings of tool definitions, except the structural ones templates test or look
    /// up: identifier-like keys, and identifier-like `type` values (`"function"`,
    /// `"string"`). Property names are the request's own and always marked. (No special
    /// token's text is a bare identifier, so what stays unmarked cannot spell one.)
    fn tool_json(&mut self, value: &Json, key: Option<&str>) -> Json {
        match value {
            Json::String(s) if key == Some("type") && is_identifier(s) => Json::String(s.clone()),
            Json::String(s) => Json::String(self.string(s)),
            Json::Array(items) => Json::Array(items.iter().map(|v| self.tool_json(v, key)).collect()),
            Json::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let marked_key =
                        if key == Some("properties") || !is_identifier(k) { self.string(k) } else { k.clone() };
                    (marked_key, self.tool_json(v, Some(k)))
                })
                .collect(),
            other => other.clone(),
        }
    }

    fn message(&mut self, m: &ChatMessage) -> ChatMessage {
        let tool_calls = m.tool_calls.as_ref().map(|calls| calls.iter().map(|c| self.tool_call(c)).collect());
        ChatMessage {
            role: m.role.clone(),
            content: m.content.as_deref().map(|c| self.string(c)),
            tool_calls,
            tool_call_id: m.tool_call_id.as_deref().map(|id| self.string(id)),
            name: m.name.as_deref().map(|n| self.string(n)),
        }
    }

    /// `{"id", "type", "function": {"name", "arguments"}}`: all but `type` is the request's.
    fn tool_call(&mut self, call: &Json) -> Json {
        let Json::Object(map) = call else { return self.json(call) };
        let mut out = serde_json::Map::new();
        for (key, value) in map {
            let key = if is_identifier(key) { key.clone() } else { self.string(key) };
            let marked = match (key.as_str(), value) {
                ("type", Json::String(t)) if is_identifier(t) => value.clone(),
                ("function", Json::Object(function)) => Json::Object(
                    function
                        .iter()
                        .map(|(k, v)| {
                            (k.clone(), if k == "arguments" { self.json(v) } else { self.tool_json(v, Some(k)) })
                        })
                        .collect(),
                ),
                _ => self.json(value),
            };
            out.insert(key, marked);
        }
        Json::Object(out)
    }
}

/// Whether `s` looks like a JSON key or type name a template may test, not free text.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
}

/// The rendered prompt `plain` (the template's rendering of the real request) split into
/// template and content parts. `render` renders the template with other messages and tools.
/// When the template's output cannot be split by the markers, the parts are found by search
/// and carry the marked rendering as scaffolding (see [`RenderedPrompt::with_scaffolding`]).
pub(super) fn split_rendered(
    messages: &[ChatMessage],
    tools: Option<&Json>,
    plain: String,
    render: impl FnOnce(&[ChatMessage], Option<&Json>) -> Result<String>,
) -> Result<RenderedPrompt> {
    let request = serde_json::to_string(&(messages, tools)).unwrap_or_default();
    let Some(markers) = Markers::absent_from(&request) else {
        return Err(ModelError::ChatTemplate(
            "The request uses every private-use character (U+E000 to U+F8FF); the server needs two of them to \
             tell message text from the chat template's own text."
                .into(),
        ));
    };
    let mut marking = Marking { markers, originals: Vec::new() };
    let marked_messages: Vec<ChatMessage> = messages.iter().map(|m| marking.message(m)).collect();
    let marked_tools = tools.map(|t| marking.tool_json(t, None));
    let marked = render(&marked_messages, marked_tools.as_ref()).ok();
    let parts = marked
        .as_deref()
        .and_then(|marked| put_back(marked, markers, &marking.originals))
        .filter(|parts| parts.text() == plain);
    match parts {
        Some(parts) => Ok(parts),
        None => {
            tracing::warn!(
                "the chat template transforms request text in a way its markers cannot follow: request text is \
                 found by search instead, and control tokens are allowed only as many as the template writes itself"
            );
            // The marked rendering holds the template's own control tokens and none of the
            // request's (markers spell none).
            Ok(by_search(&plain, &marking.originals)?.with_scaffolding(marked))
        }
    }
}

/// The marked rendering with the original strings put back, or `None` when a marker was
/// mangled (cut, escaped in an unknown way) so that the rendering cannot be trusted.
fn put_back(marked: &str, markers: Markers, originals: &[String]) -> Option<RenderedPrompt> {
    let quotes: Vec<String> =
        std::iter::successors(Some(QUOTE.to_string()), |q| Some(json_escaped(q))).take(MAX_JSON_DEPTH + 1).collect();
    let mut prompt = RenderedPrompt::new();
    let mut rest = marked;
    while let Some(open) = rest.find(markers.open) {
        let (mut before, after) = rest.split_at(open);
        let after = &after[markers.open.len_utf8()..];
        let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
        let index: usize = after[..digits].parse().ok()?;
        let after = &after[digits..];
        let close = after.find(markers.close)?;
        let depth = quotes.iter().position(|q| *q == after[..close])?;
        let mut after = &after[close + markers.close.len_utf8()..];
        let left_kept = before.ends_with(EDGE);
        if left_kept {
            before = &before[..before.len() - EDGE.len_utf8()];
        }
        let right_kept = after.starts_with(EDGE);
        if right_kept {
            after = &after[EDGE.len_utf8()..];
        }
        if before.contains(markers.close) {
            return None;
        }
        let mut text = originals.get(index)?.as_str();
        if !left_kept {
            text = text.trim_start();
        }
        if !right_kept {
            text = text.trim_end();
        }
        let mut text = text.to_string();
        for _ in 0..depth {
            text = json_escaped(&text);
        }
        prompt.push(before, PartKind::Template);
        prompt.push(text, PartKind::Content);
        rest = after;
    }
    if rest.contains(markers.close) {
        return None;
    }
    prompt.push(rest, PartKind::Template);
    Some(prompt)
}

/// `s` as it stands inside a JSON string (`tojson` without the quotes).
fn json_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_json_string(&mut out, s);
    out[1..out.len() - 1].to_string()
}

/// The safe fallback: every occurrence in `rendered` of a request string (as is, stripped,
/// JSON-escaped) is content; the rest is template text.
fn by_search(rendered: &str, originals: &[String]) -> Result<RenderedPrompt> {
    let mut needles: Vec<String> = originals
        .iter()
        .flat_map(|s| [s.clone(), s.trim().to_string(), json_escaped(s), json_escaped(s.trim())])
        .filter(|s| !s.is_empty())
        .collect();
    needles.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    needles.dedup();
    if needles.len().saturating_mul(rendered.len()) > SEARCH_BUDGET {
        return Err(ModelError::ChatTemplate(
            "The chat template transforms message text, and this request has too much of it to tell message text \
             from the template's own text."
                .into(),
        ));
    }
    let mut is_content = vec![false; rendered.len()];
    for needle in &needles {
        for (start, found) in rendered.match_indices(needle.as_str()) {
            is_content[start..start + found.len()].iter_mut().for_each(|b| *b = true);
        }
    }
    let mut prompt = RenderedPrompt::new();
    let mut start = 0;
    for end in 1..=rendered.len() {
        if end == rendered.len() || (is_content[end] != is_content[start] && rendered.is_char_boundary(end)) {
            let kind = if is_content[start] { PartKind::Content } else { PartKind::Template };
            prompt.push(&rendered[start..end], kind);
            start = end;
        }
    }
    Ok(prompt)
}
