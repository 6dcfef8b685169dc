//! Grammars for the engine's constrained decoding: the answer of a `response_format`, and
//! tool calls in each [`ToolFormat`] as llguidance Lark text, where each call's arguments are
//! constrained by that function's parameters schema through an embedded `%json { … }`.
//!
//! Embedded schemas go through the engine's [`prepare_json_schema`] (strict mode, and fixed
//! whitespace `", "` / `": "` with no newlines: small models otherwise loop on whitespace), so
//! calls look like the engine's JSON answers; the prompt renders earlier calls the same way
//! ([`to_compact_json`]).
//!
//! Objects that list their `properties` admit no others unless the schema says so
//! ([`close_listed_objects`]), strict or not, as llama.cpp's schema grammars do: JSON
//! Schema's default would let a small model append invented keys until `max_tokens`.
//! `strict` goes further and closes objects without a property list too.

use std::io;

use serde_json::{Map, Value, json};
use stellarchat_model::ModelError;
use stellarchat_model::constraint::{Grammar, prepare_json_schema};

use super::{ResponseFormat, ToolFormat, ToolSet};

/// The engine grammar for a response format (`None` for plain text).
pub fn answer_grammar(format: &ResponseFormat) -> Option<Grammar> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(Grammar::JsonObject),
        ResponseFormat::JsonSchema { schema, strict, .. } => {
            let mut schema = schema.clone();
            close_listed_objects(&mut schema);
            Some(Grammar::JsonSchema { schema, strict: *strict })
        }
    }
}

/// Gives `"additionalProperties": false` to every object schema that lists `properties` and
/// says nothing about others. Walks only the keywords that hold subschemas.
pub fn close_listed_objects(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    if map.contains_key("properties") && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            (
                "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas",
                Value::Object(children),
            ) => children.values_mut().for_each(close_listed_objects),
            ("anyOf" | "oneOf" | "allOf" | "prefixItems" | "items", Value::Array(children)) => {
                children.iter_mut().for_each(close_listed_objects)
            }
            (
                "items" | "additionalProperties" | "additionalItems" | "not" | "if" | "then" | "else" | "contains",
                child,
            ) => close_listed_objects(child),
            _ => {}
        }
    }
}

/// Most calls in one turn with `parallel_tool_calls`. Without a bound, a small model that
/// keeps choosing "another call" over end-of-turn repeats its call until `max_tokens`
/// (SmolLM2-135M does, greedy); capable models stop well before.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// Tool calls in one format: over all tools, or the named one only; one call, or one or more
/// (at most [`MAX_PARALLEL_CALLS`]).
pub struct CallsGrammar<'a> {
    pub format: ToolFormat,
    pub tools: &'a ToolSet,
    /// `tool_choice` named this function: only it may be called.
    pub only: Option<&'a str>,
    /// `parallel_tool_calls`: one or more calls; otherwise exactly one.
    pub parallel: bool,
}

impl CallsGrammar<'_> {
    /// Lark text whose `start` is the calls. `special(text)` returns the id of `text` when it
    /// is one special token of the model's vocabulary: the grammar then asks for that token
    /// (`<[id]>`) rather than the text spelt out.
    pub fn lark(&self, special: &dyn Fn(&str) -> Option<u32>) -> Result<String, ModelError> {
        let mut out = String::from("start: calls\n");
        self.rules(&mut out, special)?;
        Ok(out)
    }

    /// Lark text whose `start` is either the answer of `answer` or the calls (`tool_choice`
    /// `auto` together with a `response_format`).
    pub fn lark_or_answer(
        &self,
        answer: &Grammar,
        special: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<String, ModelError> {
        let answer = match answer {
            Grammar::JsonSchema { schema, strict } => prepare_json_schema(schema, *strict)?,
            _ => prepare_json_schema(&json!({"type": "object"}), false)?,
        };
        let mut out = String::from("start: answer | calls\n");
        out.push_str(&format!("answer: %json {answer}\n"));
        self.rules(&mut out, special)?;
        Ok(out)
    }

    fn rules(&self, out: &mut String, special: &dyn Fn(&str) -> Option<u32>) -> Result<(), ModelError> {
        let repeat = |one: &str, separator: &str| {
            if self.parallel {
                format!("{one} ({} {one}){{0,{}}}", lark_literal(separator), MAX_PARALLEL_CALLS - 1)
            } else {
                one.to_string()
            }
        };
        match self.format {
            ToolFormat::Hermes => {
                out.push_str(&format!("calls: {}\n", repeat("call", "\n")));
                out.push_str(&format!(
                    "call: {} \"\\n\" body \"\\n\" {}\n",
                    token_or_text("<tool_call>", special),
                    token_or_text("</tool_call>", special)
                ));
                out.push_str(&format!("body: %json {}\n", self.call_object_schema()?));
            }
            ToolFormat::Llama3Json => {
                out.push_str(&format!("calls: {}\n", repeat("body", "; ")));
                out.push_str(&format!("body: %json {}\n", self.call_object_schema()?));
            }
            ToolFormat::Mistral => {
                out.push_str(&format!("calls: {} body\n", token_or_text("[TOOL_CALLS]", special)));
                let mut items = self.call_schema_value()?;
                let defs = items.as_object_mut().and_then(|o| o.remove("$defs"));
                let most = if self.parallel { MAX_PARALLEL_CALLS } else { 1 };
                let mut array = json!({"type": "array", "items": items, "minItems": 1, "maxItems": most});
                if let Some(defs) = defs {
                    array["$defs"] = defs;
                }
                out.push_str(&format!("body: %json {}\n", prepare_json_schema(&array, false)?));
            }
        }
        Ok(())
    }

    /// The schema of one call object, anyOf over the callable functions, with the
    /// functions' definitions (`$defs`) gathered at its top.
    fn call_schema_value(&self) -> Result<Value, ModelError> {
        let key = self.format.arguments_key();
        let mut defs = Map::new();
        let alternatives = self
            .tools
            .tools()
            .iter()
            .enumerate()
            .filter(|(_, t)| self.only.is_none_or(|name| t.name == name))
            .map(|(i, tool)| {
                let mut parameters = tool.parameters.clone();
                close_listed_objects(&mut parameters);
                let mut parameters = prepare_json_schema(&parameters, tool.strict)?;
                // The whitespace options belong at the top of the embedded schema only.
                if let Value::Object(map) = &mut parameters {
                    map.remove("x-guidance");
                }
                hoist_definitions(&mut parameters, &format!("tool{i}_"), &mut defs);
                let mut properties = Map::new();
                properties.insert("name".into(), json!({"const": tool.name}));
                properties.insert(key.into(), parameters);
                Ok(json!({
                    "type": "object",
                    "properties": properties,
                    "required": ["name", key],
                    "additionalProperties": false,
                }))
            })
            .collect::<Result<Vec<Value>, ModelError>>()?;
        let mut schema = match <[Value; 1]>::try_from(alternatives) {
            Ok([one]) => one,
            Err(many) => json!({"anyOf": many}),
        };
        if !defs.is_empty() {
            schema["$defs"] = Value::Object(defs);
        }
        Ok(schema)
    }

    /// One call object's schema with the engine's JSON options.
    fn call_object_schema(&self) -> Result<Value, ModelError> {
        prepare_json_schema(&self.call_schema_value()?, false)
    }
}

/// Moves a schema's `$defs` / `definitions` into `defs` under `prefix`ed names and points
/// its local references (`#/$defs/X`, `#/definitions/X`) there: once the schema is embedded
/// in a call object, `#` is the call object, and two functions may use the same names.
fn hoist_definitions(schema: &mut Value, prefix: &str, defs: &mut Map<String, Value>) {
    let Value::Object(map) = schema else { return };
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(found)) = map.remove(key) {
            for (name, definition) in found {
                defs.insert(format!("{prefix}{name}"), definition);
            }
        }
    }
    fn relink(value: &mut Value, prefix: &str) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get_mut("$ref") {
                    for local in ["#/$defs/", "#/definitions/"] {
                        if let Some(name) = reference.strip_prefix(local) {
                            *reference = format!("#/$defs/{prefix}{name}");
                            break;
                        }
                    }
                }
                map.values_mut().for_each(|v| relink(v, prefix));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| relink(v, prefix)),
            _ => {}
        }
    }
    relink(schema, prefix);
    for (name, definition) in defs.iter_mut() {
        if name.starts_with(prefix) {
            relink(definition, prefix);
        }
    }
}

/// `text` as a Lark string literal, or as its special token when it is one.
fn token_or_text(text: &str, special: &dyn Fn(&str) -> Option<u32>) -> String {
    match special(text) {
        Some(id) => format!("<[{id}]>"),
        None => lark_literal(text),
    }
}

/// A Lark string literal (llguidance decodes them as JSON strings).
pub fn lark_literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// JSON with `", "` and `": "` separators on one line, as the grammar writes it.
pub fn to_compact_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Writing a Value to memory cannot fail.
    let _ = serde::Serialize::serialize(value, &mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact formatter with a space after `,` and `:`.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}
