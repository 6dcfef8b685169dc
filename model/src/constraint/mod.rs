//! Constrained decoding: what a request's output must look like (a JSON schema, any JSON
//! object, or a Lark grammar for tool calls), compiled by llguidance into a per-sequence
//! matcher whose token masks the engine applies before sampling.
//!
//! - [`Constraint`] / [`Grammar`]: the request side, part of
//!   [`GenerateRequest`](crate::engine::GenerateRequest).
//! - [`ConstraintCompiler`]: turns a constraint into a ready matcher; it builds llguidance's
//!   token environment (`token_env`) from the model's tokenizer on first use, once, so a
//!   server that never constrains pays nothing.
//! - `state`: one sequence's matcher, lazy trigger and next mask, driven by the engine.
//!
//! JSON grammars use fixed, compact-but-readable whitespace (`{"a": 1, "b": [1, 2]}`): with
//! free whitespace small models tend to loop on spaces and newlines forever.

mod state;
mod token_env;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

pub(crate) use state::{Committed, ConstraintState};
pub(crate) use token_env::{VocabEncoding, token_bytes};

/// What a constrained sequence must produce.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI `response_format: {"type":"json_object"}`).
    JsonObject,
    /// JSON valid for `schema`. `strict`: every object schema without `additionalProperties`
    /// gets `false` (OpenAI strict mode).
    JsonSchema { schema: Value, strict: bool },
    /// A grammar in llguidance's Lark dialect (tool calls; it may embed `%json { ... }`, for
    /// which [`prepare_json_schema`] gives the engine's whitespace settings).
    Lark(String),
}

/// A grammar and when it starts to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub grammar: Grammar,
    /// Lazy constraint: generation is free until the generated text (special tokens' text
    /// included) contains `trigger`; from the trigger's first byte on, the grammar applies,
    /// so the grammar itself starts with the trigger text. Whatever the token that completes
    /// the trigger carries after it must fit the grammar too. `None`: constrained from the
    /// first generated token.
    pub trigger: Option<String>,
}

impl Constraint {
    /// A constraint that applies from the first generated token.
    pub fn new(grammar: Grammar) -> Self {
        Constraint { grammar, trigger: None }
    }
}

/// llguidance's JSON options for every JSON grammar the engine builds: no free whitespace,
/// `", "` between items and `": "` after keys.
fn json_whitespace() -> Value {
    json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
}

/// `schema` as the engine compiles it: with `strict`, every object schema that does not say
/// otherwise gets `additionalProperties: false`; and unless the schema sets its own
/// `x-guidance` options, the engine's fixed JSON whitespace. Server code that embeds a schema
/// in a Lark grammar (`%json { ... }`) uses this so both kinds of output look alike.
pub fn prepare_json_schema(schema: &Value, strict: bool) -> Result<Value> {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Object(_) => schema.clone(),
        Value::Bool(false) => return Err(ModelError::InvalidGrammar("the schema `false` admits no value".into())),
        other => {
            return Err(ModelError::InvalidGrammar(format!(
                "a JSON schema must be an object or a boolean, not {}",
                kind_of(other)
            )));
        }
    };
    if strict {
        close_objects(&mut schema);
    }
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(json_whitespace);
    }
    Ok(schema)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// OpenAI strict mode: objects admit only the properties they list. Walks only the keywords
/// that hold subschemas, so `enum`, `const`, `default` and `examples` values are left alone.
fn close_objects(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    let is_object = match map.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        Some(_) => false,
        None => map.contains_key("properties"),
    };
    if is_object && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(children) = value {
                    children.values_mut().for_each(close_objects);
                }
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                if let Value::Array(children) = value {
                    children.iter_mut().for_each(close_objects);
                }
            }
            "items" => match value {
                Value::Array(children) => children.iter_mut().for_each(close_objects),
                child => close_objects(child),
            },
            "additionalProperties" | "additionalItems" | "unevaluatedProperties" | "not" | "if" | "then" | "else"
            | "contains" | "propertyNames" => close_objects(value),
            _ => {}
        }
    }
}

/// The llguidance grammar for `grammar`.
fn top_level_grammar(grammar: &Grammar) -> Result<TopLevelGrammar> {
    Ok(match grammar {
        Grammar::JsonObject => TopLevelGrammar::from_json_schema(prepare_json_schema(&json!({"type": "object"}), false)?),
        Grammar::JsonSchema { schema, strict } => TopLevelGrammar::from_json_schema(prepare_json_schema(schema, *strict)?),
        Grammar::Lark(text) => {
            if text.trim().is_empty() {
                return Err(ModelError::InvalidGrammar("the grammar is empty".into()));
            }
            TopLevelGrammar::from_lark(text.clone())
        }
    })
}

/// Compiles constraints for one tokenizer. Cheap to create; the token environment and
/// llguidance's factory are built on the first [`ConstraintCompiler::compile`] and shared
/// by every later one (and every clone of the engine handle).
pub struct ConstraintCompiler {
    tokenizer: Arc<Tokenizer>,
    /// The factory, or why it could not be built (kept so every request gets the reason).
    factory: OnceLock<std::result::Result<Arc<ParserFactory>, String>>,
}

impl ConstraintCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        ConstraintCompiler { tokenizer, factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>> {
        let built = self.factory.get_or_init(|| {
            let env = token_env::TokenEnv::build(&self.tokenizer).map_err(|e| e.to_string())?;
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            // Problems reach the client through errors, not through the server's stderr.
            factory.quiet();
            *factory.limits_mut() = ParserLimits { verbose_errors: false, ..ParserLimits::default() };
            Ok(Arc::new(factory))
        });
        built
            .as_ref()
            .map_err(|reason| ModelError::Internal(format!("cannot prepare constrained decoding: {reason}")))
    }

    /// Compiles `constraint` into a fresh matcher. An invalid schema or grammar, or a JSON
    /// schema feature llguidance does not support, is [`ModelError::InvalidGrammar`] with
    /// llguidance's explanation (e.g. `Unimplemented keys: ["uniqueItems"]`).
    pub(crate) fn compile(&self, constraint: &Constraint) -> Result<ConstraintState> {
        if constraint.trigger.as_deref() == Some("") {
            return Err(ModelError::InvalidGrammar("the trigger of a lazy constraint is empty".into()));
        }
        let grammar = top_level_grammar(&constraint.grammar)?;
        let factory = self.factory()?;
        let parser = factory.create_parser(grammar).map_err(|e| ModelError::InvalidGrammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(ModelError::InvalidGrammar(error));
        }
        Ok(ConstraintState::new(matcher, factory.tok_env().clone(), constraint.trigger.clone()))
    }

    /// Builds the token environment and llguidance's factory now (they are otherwise built
    /// by the first compile); a failure is kept and reported by every later compile.
    pub fn prepare(&self) {
        let _ = self.factory();
    }

    /// Compiles `constraint` and throws the result away: for validating a request up front.
    pub fn check(&self, constraint: &Constraint) -> Result<()> {
        self.compile(constraint).map(drop)
    }
}
