//! Tool calling and structured outputs, independent of any one API: the chat route and the
//! Responses route both use it.
//!
//! The pieces, in the order a request meets them:
//! 1. [`Tool::new`] checks one function definition (name, JSON-schema parameters) and
//!    [`ToolSet::new`] a list of them; [`ToolChoice::parse`] reads `tool_choice` and checks a
//!    named tool against the set.
//! 2. [`ToolFormat::for_template`] chooses how the model writes calls (Hermes/Qwen
//!    `<tool_call>`, Llama 3 JSON, Mistral `[TOOL_CALLS]`) from the chat template's source.
//! 3. [`OutputPlan::new`] turns tools, `tool_choice`, `parallel_tool_calls` and
//!    `response_format` ([`OutputRequest`]) into the engine's [`Constraint`] (lazy at the
//!    format's trigger for `auto`, from the first token for `required` and a named tool),
//!    checks that it compiles, and says whether the generated text is to be parsed for calls.
//! 4. [`fallback`] renders tools and tool messages for templates that know nothing of tools.
//! 5. [`parse::ToolCallParser`] turns generated text into content and calls, incrementally
//!    (stream deltas in OpenAI's shape) or all at once ([`parse::parse_output`]).

use serde_json::{Value, json};
use stellarchat_model::ModelError;
use stellarchat_model::constraint::{Constraint, Grammar};
use stellarchat_model::tokenizer::Tokenizer;

use super::error::ApiError;

pub mod fallback;
pub mod format;
pub mod grammar;
pub mod parse;
mod scan;

pub use format::ToolFormat;
pub use parse::{ParsedOutput, ToolCallParser, ToolEvent, parse_output};

/// Longest function name (OpenAI's limit).
pub const MAX_TOOL_NAME: usize = 64;
/// Most tools a request may declare (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema for the arguments object (`{"type":"object","properties":{}}` when the
    /// request gave none).
    pub parameters: Value,
    /// OpenAI's strict mode: objects without `additionalProperties` get `false`.
    pub strict: bool,
}

impl Tool {
    /// Checks a function definition; `param` is where it sits in the request
    /// (`tools[2].function`), for the error's `param`.
    pub fn new(
        name: &str,
        description: Option<String>,
        parameters: Option<Value>,
        strict: bool,
        param: &str,
    ) -> Result<Tool, ApiError> {
        check_tool_name(name, &format!("{param}.name"))?;
        let parameters = match parameters {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(o)) => Value::Object(o),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{param}.parameters"),
                    "`parameters` must be a JSON schema object (e.g. {\"type\": \"object\", \"properties\": {...}}).",
                ));
            }
        };
        Ok(Tool { name: name.to_string(), description, parameters, strict })
    }

    /// The definition as Hugging Face chat templates receive it (and as the fallback prompt
    /// lists it): `{"type":"function","function":{"name","description","parameters"}}`.
    pub fn template_value(&self) -> Value {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), Value::String(self.name.clone()));
        if let Some(d) = &self.description {
            function.insert("description".into(), Value::String(d.clone()));
        }
        function.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": function})
    }
}

/// `^[a-zA-Z0-9_-]{1,64}$`, as OpenAI requires.
pub fn check_tool_name(name: &str, param: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("Invalid function name {name:?}: it must match ^[a-zA-Z0-9_-]{{1,{MAX_TOOL_NAME}}}$."),
        ))
    }
}

/// The functions of one request, with unique names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolSet {
    tools: Vec<Tool>,
}

impl ToolSet {
    /// `param` is the request field that holds the list (`tools`); the duplicate-name error
    /// points at the second definition.
    pub fn new(tools: Vec<Tool>, param: &str) -> Result<ToolSet, ApiError> {
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid(param, format!("At most {MAX_TOOLS} tools per request.")));
        }
        for (i, tool) in tools.iter().enumerate() {
            if tools[..i].iter().any(|t| t.name == tool.name) {
                return Err(ApiError::invalid(
                    format!("{param}[{i}]"),
                    format!("The function name {:?} is declared twice.", tool.name),
                ));
            }
        }
        Ok(ToolSet { tools })
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The list chat templates receive as `tools`.
    pub fn template_value(&self) -> Value {
        Value::Array(self.tools.iter().map(Tool::template_value).collect())
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Tools are shown to the model (as OpenAI does) but never called.
    None,
    /// The model decides: free text, or calls once it writes the format's trigger.
    #[default]
    Auto,
    /// At least one call, constrained from the first token.
    Required,
    /// Exactly this function, constrained from the first token.
    Named(String),
}

impl ToolChoice {
    /// Reads `tool_choice` (`"none"`, `"auto"`, `"required"`, or a named function in the chat
    /// shape `{"type":"function","function":{"name":…}}` or the Responses shape
    /// `{"type":"function","name":…}`) and checks it against `tools`. Without tools only
    /// `none` and `auto` make sense.
    pub fn parse(value: Option<&Value>, tools: Option<&ToolSet>, param: &str) -> Result<ToolChoice, ApiError> {
        let has_tools = tools.is_some_and(|t| !t.is_empty());
        let choice = match value {
            None | Some(Value::Null) => return Ok(if has_tools { ToolChoice::Auto } else { ToolChoice::None }),
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        param,
                        format!("Invalid value: '{other}'. Supported values are: 'none', 'auto' and 'required'."),
                    ));
                }
            },
            Some(Value::Object(o)) => {
                if o.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(ApiError::invalid(
                        format!("{param}.type"),
                        "A named tool choice must have `\"type\": \"function\"`.",
                    ));
                }
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("{param}.function.name"),
                            "A named tool choice needs the function's name: {\"type\": \"function\", \"function\": \
                             {\"name\": \"...\"}}.",
                        )
                    })?;
                ToolChoice::Named(name.to_string())
            }
            Some(_) => {
                return Err(ApiError::invalid(param, "`tool_choice` must be a string or an object."));
            }
        };
        match &choice {
            ToolChoice::Required | ToolChoice::Named(_) if !has_tools => Err(ApiError::invalid(
                param,
                "`tool_choice` asks for a tool call, but the request declares no `tools`.",
            )),
            ToolChoice::Named(name) if tools.and_then(|t| t.get(name)).is_none() => Err(ApiError::invalid(
                param,
                format!("Tool choice {name:?} is not one of the functions declared in `tools`."),
            )),
            _ => Ok(choice),
        }
    }
}

/// `response_format` (chat) / `text.format` (Responses).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

/// A call the model made (or, in a request, made earlier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`, unique.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (always parses).
    pub arguments: String,
}

/// A fresh call id, `call_` and 24 lowercase letters and digits (OpenAI's shape).
pub fn new_call_id() -> String {
    let ulid = ulid::Ulid::generate().to_string().to_ascii_lowercase();
    format!("call_{}", &ulid[ulid.len() - 24..])
}

/// The output fields of one request, and where each sits in it (for errors' `param`).
pub struct OutputRequest<'a> {
    pub tools: Option<&'a ToolSet>,
    pub tool_choice: &'a ToolChoice,
    pub parallel_tool_calls: bool,
    pub response_format: &'a ResponseFormat,
    /// `response_format` (chat) or `text.format` (Responses).
    pub response_format_param: &'a str,
    /// The param of tool `i`'s parameters schema: `tools[i].function.parameters` (chat) or
    /// `tools[i].parameters` (Responses).
    pub tool_parameters_param: &'a dyn Fn(usize) -> String,
}

/// What a request's output must look like and how to read it back.
#[derive(Debug, Clone, Default)]
pub struct OutputPlan {
    /// The grammar for the engine, if any.
    pub constraint: Option<Constraint>,
    /// Set when generated text is to be parsed into tool calls (tools and a choice other
    /// than `none`).
    pub format: Option<ToolFormat>,
    /// The trigger is a special token (Mistral's `[TOOL_CALLS]`): the text must keep special
    /// tokens for the parser to see it.
    pub keep_special_tokens: bool,
}

impl OutputPlan {
    /// Plans the output of `request` for a model whose template writes calls in `format`
    /// ([`ToolFormat::for_template`]), and compiles the constraint with `check` (the
    /// engine's compiler), so that a schema the compiler refuses is a 400 naming the field at
    /// fault, with the compiler's explanation.
    pub fn new(
        request: &OutputRequest<'_>,
        format: ToolFormat,
        tokenizer: &Tokenizer,
        check: &dyn Fn(&Constraint) -> Result<(), ModelError>,
    ) -> Result<OutputPlan, ApiError> {
        let plan = Self::build(request, format, tokenizer).map_err(|e| blame(request, check, e))?;
        if let Some(constraint) = &plan.constraint {
            check(constraint).map_err(|e| blame(request, check, e))?;
        }
        Ok(plan)
    }

    fn build(request: &OutputRequest<'_>, format: ToolFormat, tokenizer: &Tokenizer) -> Result<OutputPlan, ModelError> {
        let special = |text: &str| tokenizer.token_id(text).filter(|&id| tokenizer.is_special(id));
        let answer = grammar::answer_grammar(request.response_format);
        let tools = request.tools.filter(|t| !t.is_empty());
        let (Some(tools), false) = (tools, *request.tool_choice == ToolChoice::None) else {
            let constraint = answer.map(Constraint::new);
            return Ok(OutputPlan { constraint, format: None, keep_special_tokens: false });
        };
        let only = match request.tool_choice {
            ToolChoice::Named(name) => Some(name.as_str()),
            _ => None,
        };
        let forced = matches!(request.tool_choice, ToolChoice::Required | ToolChoice::Named(_));
        let calls = grammar::CallsGrammar { format, tools, only, parallel: request.parallel_tool_calls };
        let constraint = if forced {
            Constraint::new(Grammar::Lark(calls.lark(&special)?))
        } else if let Some(answer) = &answer {
            // `auto` with a response format: from the first token, either the answer or calls.
            Constraint::new(Grammar::Lark(calls.lark_or_answer(answer, &special)?))
        } else {
            // Lazy: the engine hands the trigger over as text, so the grammar spells it out.
            Constraint { grammar: Grammar::Lark(calls.lark(&|_| None)?), trigger: Some(format.trigger().to_string()) }
        };
        Ok(OutputPlan {
            constraint: Some(constraint),
            format: Some(format),
            keep_special_tokens: special(format.trigger()).is_some(),
        })
    }

    /// A parser for one choice's text, when calls are to be parsed.
    pub fn parser(&self) -> Option<ToolCallParser> {
        self.format.map(ToolCallParser::new)
    }
}

/// A refused grammar as a 400 naming the schema at fault: the response format's, or the
/// first function's whose parameters do not compile on their own, else `tools`.
fn blame(
    request: &OutputRequest<'_>,
    check: &dyn Fn(&Constraint) -> Result<(), ModelError>,
    error: ModelError,
) -> ApiError {
    let message = match error {
        ModelError::InvalidGrammar(message) => format!("Invalid JSON schema: {message}"),
        other => return other.into(),
    };
    if let Some(answer) = grammar::answer_grammar(request.response_format)
        && check(&Constraint::new(answer)).is_err()
    {
        return ApiError::invalid(request.response_format_param, message);
    }
    for (i, tool) in request.tools.map(ToolSet::tools).unwrap_or_default().iter().enumerate() {
        let alone = Constraint::new(Grammar::JsonSchema { schema: tool.parameters.clone(), strict: tool.strict });
        if check(&alone).is_err() {
            return ApiError::invalid((request.tool_parameters_param)(i), message);
        }
    }
    ApiError::invalid("tools", message)
}

#[cfg(test)]
mod tests;
