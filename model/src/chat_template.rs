//! The model's own Jinja chat template, rendered the way Hugging Face's
//! `apply_chat_template` renders it, so that prompts match the ones the model was tuned on.
//!
//! The template is compiled once with `minijinja` configured like HF's environment
//! (`trim_blocks`, `lstrip_blocks`, loop controls), `minijinja-contrib`'s Python string and
//! dict methods (`.strip()`, `.items()`, …) and HF's extras: `raise_exception`,
//! `strftime_now`, a `tojson` that writes like Python's `json.dumps`, and the variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `tools` (none, or the
//! function definitions of a tool-calling request).
//!
//! Messages are passed the way `transformers` passes OpenAI messages: `content` may be null
//! (an assistant turn that only calls tools), assistant turns carry `tool_calls` (with
//! `function.arguments` as an object, not a JSON string), tool results carry `tool_call_id`
//! and `name`. Keys a message does not have are absent, so templates' `is defined` tests work.

/// [`ChatTemplate::render_parts`]: which parts of a rendering came from the request.
mod content_parts;

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, context};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::gguf::Metadata;
use crate::tokenizer::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// The ChatML template (as in Hugging Face's docs), for models that bring none of their own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One message of a conversation, OpenAI style.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// Null for an assistant turn that only calls tools.
    pub content: Option<String>,
    /// An assistant turn's calls: `{"id", "type": "function", "function": {"name",
    /// "arguments": {…}}}` (arguments as an object, as Hugging Face templates expect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool result's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool result's function name (or a participant's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: Some(content.into()), ..ChatMessage::default() }
    }
}

/// A compiled chat template. Cheap to share between threads; rendering takes `&self`.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`. A syntax error is a [`ModelError::ChatTemplate`] with minijinja's
    /// message (which names the line).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // Replaces the built-in, which escapes `<`, `>`, `&` and `'` for HTML.
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The Jinja source (callers look for what a template supports, e.g. `tools`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template in a GGUF file's `tokenizer.chat_template`, if it has one.
    pub fn from_gguf(metadata: &Metadata, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let Some(source) = metadata.opt_str("tokenizer.chat_template")? else { return Ok(None) };
        Self::with_tokenizer(source, tokenizer).map(Some)
    }

    /// The template in a Hugging Face `tokenizer_config.json` (`chat_template`, either a
    /// string or a list of named templates, of which "default" is used), if it has one.
    pub fn from_tokenizer_config(path: &Path, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::ChatTemplate(format!("{} is not valid JSON: {e}", path.display())))?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(source)) => Some(source.as_str()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str()),
            _ => None,
        };
        source.map(|source| Self::with_tokenizer(source, tokenizer)).transpose()
    }

    /// A Jinja template from a file (`--chat-template`), which replaces whatever template the
    /// model brings. Besides compiling it, renders a one-message conversation once, so that a
    /// template that cannot render at all (an unknown filter or function, say) fails now,
    /// at start-up, rather than on every chat request. Errors name the file.
    pub fn from_file(path: &Path, tokenizer: &Tokenizer) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let in_file = |err: ModelError| match err {
            ModelError::ChatTemplate(message) => ModelError::ChatTemplate(format!("{}: {message}", path.display())),
            other => other,
        };
        let template = Self::with_tokenizer(&source, tokenizer).map_err(in_file)?;
        template.render(&[ChatMessage::new("user", "Hello")], true).map_err(in_file)?;
        Ok(template)
    }

    fn with_tokenizer(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        Self::new(source, tokenizer.bos_token_text().unwrap_or(""), tokenizer.eos_token_text().unwrap_or(""))
    }

    /// Renders the conversation. With `add_generation_prompt`, the prompt ends with the
    /// opening of an assistant turn. A failure while rendering (including the template's
    /// own `raise_exception`) is a [`ModelError::ChatTemplate`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with `tools`: the list of function definitions
    /// (`[{"type": "function", "function": {"name", "description", "parameters"}}]`), or
    /// `None` for a template's `tools` to be none.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                tools => tools.map(|t| Value::from(Serde(t))),
            })
            .map_err(template_error)
    }
}

/// A template's own `raise_exception` message, carried as the source of minijinja's error
/// so that the client sees the template author's words without engine decoration.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn template_error(err: Error) -> ModelError {
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<RaisedException>() {
            return ModelError::ChatTemplate(raised.0.clone());
        }
        source = cause.source();
    }
    ModelError::ChatTemplate(err.to_string())
}

/// HF's `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, "the template raised an exception")
        .with_source(RaisedException(message)))
}

/// HF's `strftime_now(format)`: the current time (UTC here) formatted strftime-style.
fn strftime_now(state: &State, format: String) -> std::result::Result<String, Error> {
    let kwargs = Kwargs::from_iter([("format", Value::from(format))]);
    minijinja_contrib::filters::datetimeformat(state, minijinja_contrib::globals::now(), kwargs)
}

/// HF's `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`, so `", "` and
/// `": "` separators (`","` at line ends when indenting) and no HTML escaping.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    // Accepted for compatibility; keys are written in the order the value has them.
    let _: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(out: &mut String, value: &Value, indent: Option<usize>, depth: usize) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match value.as_i64() {
            Some(i) if value.is_integer() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(value.clone())?;
                if f.is_finite() {
                    out.push_str(&format!("{f:?}"));
                } else {
                    // Python writes NaN/Infinity, which is not JSON; null is what parsers accept.
                    out.push_str("null");
                }
            }
        },
        ValueKind::String | ValueKind::Plain => write_json_string(out, &value.to_string()),
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('{', '}'), keys.len(), indent, depth, |out, i| {
                let key = &keys[i];
                write_json_string(out, &key.to_string());
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, depth + 1)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Bytes => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), indent, depth, |out, i| {
                write_json(out, &items[i], indent, depth + 1)
            })?;
        }
        _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("cannot serialize {} to JSON", value.kind()))),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    indent: Option<usize>,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), Error>,
) -> std::result::Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, for when the weights (which carry it) are absent.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", " Be brief. "),
            ChatMessage::new("user", "What's 2+2?"),
            ChatMessage::new("assistant", "4."),
            ChatMessage::new("user", "And ü?"),
        ]
    }

    fn render(source: &str, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(messages, add_generation_prompt)
    }

    #[test]
    fn golden_prompts_render_byte_equal() {
        let template = match crate::tokenizer::tests::smollm() {
            Some((metadata, tokenizer)) => ChatTemplate::from_gguf(metadata, tokenizer).unwrap().expect("template"),
            None => ChatTemplate::new(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap(),
        };
        let chats = crate::tokenizer::tests::golden()["chats"].as_array().expect("chats");
        assert!(!chats.is_empty());
        for chat in chats {
            let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
            assert_eq!(template.render(&messages, true).unwrap(), chat["prompt"].as_str().unwrap());
        }
        if let Some((metadata, _)) = crate::tokenizer::tests::smollm() {
            assert_eq!(metadata.opt_str("tokenizer.chat_template").unwrap(), Some(SMOLLM2_TEMPLATE));
        }
    }

    // The expected strings of the following tests are Python Jinja2 3.1.6's renderings with
    // HF's environment (trim_blocks, lstrip_blocks, loopcontrols, HF's tojson).

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let source = "{% for message in messages %}\n  {% if message.role == 'system' %}\nSystem: {{ message.content.strip() }}\n  {% else %}\n{{ message.role | upper }}: {{ message.content }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nASSISTANT:\n{% endif %}\n";
        assert_eq!(
            render(source, &conversation(), true).unwrap(),
            "System: Be brief.\nUSER: What's 2+2?\nASSISTANT: 4.\nUSER: And ü?\nASSISTANT:\n"
        );
        assert_eq!(
            render(source, &[ChatMessage::new("user", "  Hi there!  ")], false).unwrap(),
            "USER:   Hi there!  \n"
        );
    }

    #[test]
    fn python_methods_tojson_namespace_and_loop_controls() {
        let source = "{% set ns = namespace(n=0) %}\n{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if loop.index > 2 %}{% break %}{% endif %}[{{ m.content | length }}]{% endfor %}\n{{ ns.n }} {{ {\"a\": \"<&>'\", \"b\": [1, 2.5, none, true], \"c\": \"é\\n\\\"q\\\"\"} | tojson }}\n{{ {\"x\": {\"y\": [1, {}], \"z\": []}} | tojson(indent=2) }}\n{% for k, v in {\"k\": \"v\"}.items() %}{{ k }}={{ v }}{% endfor %} {{ \"A,B\".split(\",\") | join(\"|\") }} {{ \"abc\".startswith(\"a\") }} {{ messages[-1]['content'].upper() }} {{ tools is none }}\n";
        assert_eq!(
            render(source, &conversation(), true).unwrap(),
            "[11][11]3 {\"a\": \"<&>'\", \"b\": [1, 2.5, null, true], \"c\": \"é\\n\\\"q\\\"\"}\n{\n  \"x\": {\n    \"y\": [\n      1,\n      {}\n    ],\n    \"z\": []\n  }\n}\nk=v A|B True AND Ü? True"
        );
    }

    const MISTRAL: &str = "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- endif %}\n{%- endfor %}\n";

    #[test]
    fn bos_eos_slicing_and_raise_exception() {
        assert_eq!(
            render(MISTRAL, &conversation(), true).unwrap(),
            "<s> [INST]  Be brief. \n\nWhat's 2+2? [/INST] 4.</s> [INST] And ü? [/INST]"
        );
        let err = render(MISTRAL, &[ChatMessage::new("assistant", "first")], true).unwrap_err();
        match err {
            ModelError::ChatTemplate(message) => assert_eq!(
                message,
                "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
            ),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn broken_templates_are_chat_template_errors() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
        assert!(matches!(&err, ModelError::ChatTemplate(m) if m.contains("syntax error")), "{err}");
        let err = render("{{ no_such_function() }}", &conversation(), true).unwrap_err();
        assert!(matches!(&err, ModelError::ChatTemplate(m) if m.contains("unknown function")), "{err}");
    }

    #[test]
    fn strftime_now_formats_the_current_date() {
        let rendered = render("{{ strftime_now('%Y-%m-%d') }}", &[], false).unwrap();
        assert_eq!(rendered.len(), 10, "{rendered}");
        assert!(rendered.starts_with("20") && rendered.as_bytes()[4] == b'-', "{rendered}");
    }

    #[test]
    fn chat_messages_round_trip_through_serde() {
        let message: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(message, ChatMessage::new("user", "hi"));
        assert_eq!(serde_json::to_string(&message).unwrap(), r#"{"role":"user","content":"hi"}"#);
    }

    #[test]
    fn template_from_tokenizer_config() {
        let Some((_, tokenizer)) = crate::tokenizer::tests::smollm() else { return };
        let dir = std::env::temp_dir().join(format!("stellarchat-chat-template-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer_config.json");
        let config =
            serde_json::json!({"chat_template": [{"name": "default", "template": "{{ bos_token }}|{{ eos_token }}"}]});
        std::fs::write(&path, config.to_string()).unwrap();
        let template = ChatTemplate::from_tokenizer_config(&path, tokenizer).unwrap().expect("template");
        std::fs::write(&path, "{}").unwrap();
        assert!(ChatTemplate::from_tokenizer_config(&path, tokenizer).unwrap().is_none());
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(template.render(&[], false).unwrap(), "<|im_start|>|<|im_end|>");
    }

    #[test]
    fn chatml_template_matches_smollm2_without_its_system_prompt() {
        let template = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let messages = [ChatMessage::new("system", "S"), ChatMessage::new("user", "U")];
        let expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(template.render(&messages, true).unwrap(), expected);
        let smollm2 = ChatTemplate::new(SMOLLM2_TEMPLATE, "", "").unwrap();
        assert_eq!(smollm2.render(&messages, true).unwrap(), expected);
    }

    #[test]
    fn template_from_file_replaces_the_models() {
        let tokenizer = Tokenizer::synthetic(300).unwrap();
        let dir = std::env::temp_dir().join(format!("stellarchat-chat-template-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jinja");
        // Like Jinja2, the file's single trailing newline is not part of the output.
        std::fs::write(&good, "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}\n")
            .unwrap();
        let template = ChatTemplate::from_file(&good, &tokenizer).unwrap();
        assert_eq!(template.render(&[ChatMessage::new("user", "hi")], true).unwrap(), "<|im_start|>[user]hi");

        let broken = dir.join("broken.jinja");
        std::fs::write(&broken, "{% for m in messages %}{{ m.content }}").unwrap();
        let err = ChatTemplate::from_file(&broken, &tokenizer).unwrap_err();
        assert!(
            matches!(&err, ModelError::ChatTemplate(m) if m.contains("broken.jinja") && m.contains("syntax error")),
            "{err}"
        );
        // Compiles, but cannot render any conversation: refused up front too.
        let unrenderable = dir.join("unrenderable.jinja");
        std::fs::write(&unrenderable, "{{ messages | no_such_filter }}").unwrap();
        let err = ChatTemplate::from_file(&unrenderable, &tokenizer).unwrap_err();
        assert!(matches!(&err, ModelError::ChatTemplate(m) if m.contains("unrenderable.jinja")), "{err}");
        let err = ChatTemplate::from_file(&dir.join("missing.jinja"), &tokenizer).unwrap_err();
        assert!(matches!(&err, ModelError::Io { path, .. } if path.ends_with("missing.jinja")), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tools_tool_calls_and_null_content_reach_the_template() {
        let source = "{% if tools %}[{% for t in tools %}{{ t.function.name }}{% endfor %}]{% endif %}{% for m in messages %}<{{ m.role }}>{% if m.content is none %}(null){% else %}{{ m.content }}{% endif %}{% if m.tool_calls is defined %}{% for c in m.tool_calls %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}{% endif %}{% if m.tool_call_id is defined %}#{{ m.tool_call_id }}{% endif %}{% endfor %}";
        let template = ChatTemplate::new(source, "", "").unwrap();
        let call =
            serde_json::json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}});
        let messages = [
            ChatMessage::new("user", "u"),
            ChatMessage { role: "assistant".into(), content: None, tool_calls: Some(vec![call]), ..Default::default() },
            ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "r") },
        ];
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        assert_eq!(
            template.render_with_tools(&messages, Some(&tools), false).unwrap(),
            "[f]<user>u<assistant>(null)f{\"x\": 1}<tool>r#c1"
        );
        // Without tools, `tools` is none and absent keys stay undefined.
        assert_eq!(template.render(&messages[..1], false).unwrap(), "<user>u");
        // A message from JSON without the optional keys.
        let message: ChatMessage = serde_json::from_str(r#"{"role":"assistant","content":null}"#).unwrap();
        assert_eq!(message, ChatMessage { role: "assistant".into(), ..Default::default() });
    }

    #[test]
    fn chat_template_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
