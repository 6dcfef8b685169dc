//! How a model family writes tool calls, chosen from its chat template's source.
//!
//! - [`ToolFormat::Hermes`]: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one
//!   block per call (Hermes, Qwen 2/2.5/3, SmolLM3). Also the format of the fallback prompt
//!   for templates that know nothing of tools.
//! - [`ToolFormat::Llama3Json`]: a bare `{"name": …, "parameters": {…}}` object, several
//!   joined by `; ` (Llama 3.1–3.3's JSON tool calling; an optional `<|python_tag|>` first).
//! - [`ToolFormat::Mistral`]: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

impl ToolFormat {
    /// The format a template's model was tuned on: Mistral's `[TOOL_CALLS]`, Llama 3's
    /// `<|python_tag|>` / `ipython` role, otherwise Hermes (also for templates that do not
    /// mention tools at all: the fallback prompt teaches Hermes).
    pub fn for_template(source: &str) -> ToolFormat {
        if !mentions_tools(source) {
            ToolFormat::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// The text that announces calls. For `auto`, generation is free until the model writes
    /// it; the grammar then starts with it.
    pub fn trigger(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "<tool_call>",
            // The object's first key, as the grammar writes it (fixed whitespace).
            ToolFormat::Llama3Json => "{\"name\"",
            ToolFormat::Mistral => "[TOOL_CALLS]",
        }
    }

    /// The key of the arguments object in one call.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
        }
    }

    /// One call as the model would write it (`arguments` is JSON text; it is embedded as
    /// is when it parses, as `{}` otherwise). Used to render earlier calls back into a
    /// prompt whose template cannot take `tool_calls`.
    pub fn call_text(self, name: &str, arguments: &str) -> String {
        let arguments = serde_json::from_str::<Value>(arguments)
            .map(|v| crate::serve::tools::grammar::to_compact_json(&v))
            .unwrap_or_else(|_| "{}".into());
        let name = Value::String(name.to_string()).to_string();
        let object = format!("{{\"name\": {name}, \"{}\": {arguments}}}", self.arguments_key());
        match self {
            ToolFormat::Hermes => format!("<tool_call>\n{object}\n</tool_call>"),
            ToolFormat::Llama3Json => object,
            ToolFormat::Mistral => format!("[TOOL_CALLS][{object}]"),
        }
    }
}

/// Whether a template can render tools itself: its source uses the `tools` variable.
pub fn mentions_tools(source: &str) -> bool {
    source.contains("tools")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_template() {
        assert_eq!(ToolFormat::for_template("{% for m in messages %}{{ m.content }}{% endfor %}"), ToolFormat::Hermes);
        assert_eq!(
            ToolFormat::for_template("{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<tool_call>"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::for_template("{% if tools %}{{ '<|start_header_id|>ipython' }}{% endif %}"),
            ToolFormat::Llama3Json
        );
        assert_eq!(
            ToolFormat::for_template("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"),
            ToolFormat::Mistral
        );
        // `[TOOL_CALLS]` without the tools variable: the template cannot render tools.
        assert_eq!(ToolFormat::for_template("[TOOL_CALLS]"), ToolFormat::Hermes);
    }

    #[test]
    fn call_text_per_format() {
        assert_eq!(
            ToolFormat::Hermes.call_text("get_weather", r#"{"city":"Paris"}"#),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        );
        assert_eq!(ToolFormat::Llama3Json.call_text("f", "not json"), "{\"name\": \"f\", \"parameters\": {}}");
        assert_eq!(ToolFormat::Mistral.call_text("f", "{}"), "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]");
    }
}
