//! Tool definitions, `tool_choice`, output plans compiled by the engine's real grammar
//! compiler (SmolLM2's tokenizer from `weights/`), and prompts with tools for a template
//! without tool support (ChatML fallback) and for a Qwen-style one (`tests/fixtures`).

use std::sync::{Arc, OnceLock};

use serde_json::json;
use stellarchat_model::chat_template::{ChatMessage, ChatTemplate};
use stellarchat_model::constraint::ConstraintCompiler;
use stellarchat_model::model::{ModelInfo, ModelLoader};

use super::*;

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// SmolLM2's tokenizer and template (metadata only; no weights are loaded).
fn smollm2() -> Arc<ModelInfo> {
    static INFO: OnceLock<Arc<ModelInfo>> = OnceLock::new();
    INFO.get_or_init(|| {
        let path = repo_file("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "{} is missing: run `just weights`", path.display());
        ModelLoader::open(path.to_str().unwrap()).expect("SmolLM2 opens").info()
    })
    .clone()
}

fn compiler() -> &'static ConstraintCompiler {
    static COMPILER: OnceLock<ConstraintCompiler> = OnceLock::new();
    COMPILER.get_or_init(|| ConstraintCompiler::new(smollm2().tokenizer.clone()))
}

fn weather() -> Tool {
    let parameters = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    });
    Tool::new("get_weather", Some("Weather now".into()), Some(parameters), true, "tools[0].function").unwrap()
}

/// A pydantic-style schema with `$defs`, under a name that another tool's `$defs` shares.
fn booking() -> Tool {
    let parameters = json!({
        "$defs": {"Item": {"type": "object", "properties": {"when": {"type": "string"}}, "required": ["when"]}},
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}, "seats": {"type": "integer"}},
        "required": ["item", "seats"],
    });
    Tool::new("book", None, Some(parameters), false, "tools[1].function").unwrap()
}

fn tool_set() -> ToolSet {
    ToolSet::new(
        vec![weather(), booking(), Tool::new("ping", None, None, false, "tools[2].function").unwrap()],
        "tools",
    )
    .unwrap()
}

fn plan(
    tools: Option<&ToolSet>,
    choice: ToolChoice,
    parallel: bool,
    format: ToolFormat,
) -> Result<OutputPlan, ApiError> {
    plan_with(tools, choice, parallel, &ResponseFormat::Text, format)
}

fn plan_with(
    tools: Option<&ToolSet>,
    choice: ToolChoice,
    parallel: bool,
    response_format: &ResponseFormat,
    format: ToolFormat,
) -> Result<OutputPlan, ApiError> {
    let request = OutputRequest {
        tools,
        tool_choice: &choice,
        parallel_tool_calls: parallel,
        response_format,
        response_format_param: "response_format",
        tool_parameters_param: &|i: usize| format!("tools[{i}].function.parameters"),
    };
    OutputPlan::new(&request, format, &smollm2().tokenizer, &|c: &Constraint| compiler().check(c))
}

#[test]
fn tool_definitions_are_checked() {
    for bad in ["", "has space", "dot.ted", &"x".repeat(65)] {
        let e = Tool::new(bad, None, None, false, "tools[3].function").unwrap_err();
        assert_eq!(e.param().as_deref(), Some("tools[3].function.name"), "{bad:?}");
    }
    let e = Tool::new("f", None, Some(json!("object")), false, "tools[0].function").unwrap_err();
    assert_eq!(e.param().as_deref(), Some("tools[0].function.parameters"));
    // No parameters: an object without properties.
    assert_eq!(
        Tool::new("f-1_x", None, None, false, "t").unwrap().parameters,
        json!({"type": "object", "properties": {}})
    );
    let e = ToolSet::new(vec![weather(), weather()], "tools").unwrap_err();
    assert_eq!(e.param().as_deref(), Some("tools[1]"));
    assert_eq!(
        tool_set().template_value()[0],
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": weather().parameters}})
    );
}

#[test]
fn tool_choice_is_read_and_checked_against_the_tools() {
    let tools = tool_set();
    let parse = |v: serde_json::Value, tools: Option<&ToolSet>| ToolChoice::parse(Some(&v), tools, "tool_choice");
    assert_eq!(ToolChoice::parse(None, Some(&tools), "tool_choice").unwrap(), ToolChoice::Auto);
    assert_eq!(ToolChoice::parse(None, None, "tool_choice").unwrap(), ToolChoice::None);
    assert_eq!(parse(json!("required"), Some(&tools)).unwrap(), ToolChoice::Required);
    assert_eq!(parse(json!("none"), None).unwrap(), ToolChoice::None);
    assert_eq!(parse(json!("auto"), None).unwrap(), ToolChoice::Auto);
    let named = json!({"type": "function", "function": {"name": "book"}});
    assert_eq!(parse(named, Some(&tools)).unwrap(), ToolChoice::Named("book".into()));
    // The Responses API's flat shape.
    assert_eq!(
        parse(json!({"type": "function", "name": "ping"}), Some(&tools)).unwrap(),
        ToolChoice::Named("ping".into())
    );
    for (value, tools, param) in [
        (json!({"type": "function", "function": {"name": "nope"}}), Some(&tools), "tool_choice"),
        (json!("required"), None, "tool_choice"),
        (json!({"type": "function", "function": {"name": "book"}}), None, "tool_choice"),
        (json!("sometimes"), Some(&tools), "tool_choice"),
        (json!({"type": "file_search"}), Some(&tools), "tool_choice.type"),
        (json!({"type": "function"}), Some(&tools), "tool_choice.function.name"),
        (json!(3), Some(&tools), "tool_choice"),
    ] {
        let e = parse(value.clone(), tools).unwrap_err();
        assert_eq!((e.status().as_u16(), e.param().as_deref()), (400, Some(param)), "{value}");
    }
}

#[test]
fn every_format_and_choice_compiles() {
    let tools = tool_set();
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Mistral] {
        for parallel in [true, false] {
            let auto = plan(Some(&tools), ToolChoice::Auto, parallel, format).unwrap();
            let constraint = auto.constraint.as_ref().expect("auto constrains calls");
            assert_eq!(constraint.trigger.as_deref(), Some(format.trigger()), "{format:?}");
            assert_eq!(auto.format, Some(format));
            for choice in [ToolChoice::Required, ToolChoice::Named("book".into())] {
                let forced = plan(Some(&tools), choice.clone(), parallel, format).unwrap();
                assert_eq!(forced.constraint.as_ref().unwrap().trigger, None, "{format:?} {choice:?}");
                let Grammar::Lark(lark) = &forced.constraint.as_ref().unwrap().grammar else { panic!("Lark") };
                // A named choice leaves the other functions out of the grammar.
                assert_eq!(lark.contains("get_weather"), choice == ToolChoice::Required, "{lark}");
                assert!(lark.contains("tool1_Item"), "$defs hoisted under the tool's prefix: {lark}");
            }
            // `auto` with a response format: the answer or calls, from the first token.
            let both =
                plan_with(Some(&tools), ToolChoice::Auto, parallel, &ResponseFormat::JsonObject, format).unwrap();
            assert_eq!(both.constraint.unwrap().trigger, None);
        }
    }
    // `none`: tools are not constrained nor parsed; a response format alone is a JSON grammar.
    let none = plan(Some(&tools), ToolChoice::None, true, ToolFormat::Hermes).unwrap();
    assert!(none.constraint.is_none() && none.format.is_none() && none.parser().is_none());
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let json_only = ResponseFormat::JsonSchema { name: "r".into(), schema: schema.clone(), strict: true };
    let planned = plan_with(None, ToolChoice::None, true, &json_only, ToolFormat::Hermes).unwrap();
    let mut closed = schema;
    closed["additionalProperties"] = json!(false);
    assert_eq!(planned.constraint, Some(Constraint::new(Grammar::JsonSchema { schema: closed, strict: true })));
    assert!(planned.format.is_none());
}

#[test]
fn grammar_text_per_format() {
    let tools = ToolSet::new(vec![weather()], "tools").unwrap();
    let lark = |format, parallel| {
        grammar::CallsGrammar { format, tools: &tools, only: None, parallel }.lark(&|_| None).unwrap()
    };
    let hermes = lark(ToolFormat::Hermes, true);
    assert!(
        hermes.starts_with("start: calls\ncalls: call (\"\\n\" call){0,7}\ncall: \"<tool_call>\" \"\\n\" body"),
        "{hermes}"
    );
    assert!(hermes.contains("\"additionalProperties\":false"), "strict tool: {hermes}");
    assert!(lark(ToolFormat::Hermes, false).contains("calls: call\n"));
    assert!(lark(ToolFormat::Llama3Json, true).contains("calls: body (\"; \" body){0,7}"));
    let mistral = lark(ToolFormat::Mistral, false);
    assert!(mistral.contains("calls: \"[TOOL_CALLS]\" body") && mistral.contains("\"maxItems\":1"), "{mistral}");
    assert!(lark(ToolFormat::Mistral, true).contains("\"maxItems\":8"));
    // A special token is asked for as that token.
    let special = grammar::CallsGrammar { format: ToolFormat::Mistral, tools: &tools, only: None, parallel: true }
        .lark(&|text| (text == "[TOOL_CALLS]").then_some(7))
        .unwrap();
    assert!(special.contains("calls: <[7]> body"), "{special}");
}

#[test]
fn a_schema_the_compiler_refuses_is_a_400_naming_it() {
    let mut bad = booking();
    bad.parameters["properties"]["seats"] = json!({"$ref": "#/$defs/Missing"});
    let tools = ToolSet::new(vec![weather(), bad], "tools").unwrap();
    let e = plan(Some(&tools), ToolChoice::Required, true, ToolFormat::Hermes).unwrap_err();
    assert_eq!((e.status().as_u16(), e.param().as_deref()), (400, Some("tools[1].function.parameters")), "{e}");
    assert!(e.to_string().starts_with("Invalid JSON schema: ") && e.to_string().contains("Missing"), "{e}");

    let refused = ResponseFormat::JsonSchema {
        name: "r".into(),
        schema: json!({"type": "object", "properties": {"n": {"type": "frobnicate"}}, "required": ["n"]}),
        strict: false,
    };
    let e = plan_with(None, ToolChoice::None, true, &refused, ToolFormat::Hermes).unwrap_err();
    assert_eq!(e.param().as_deref(), Some("response_format"), "{e}");
}

#[test]
fn new_call_ids_are_unique_and_shaped_like_openais() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_call_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        ids.iter()
            .all(|id| id.len() == 29 && id.starts_with("call_") && id[5..].bytes().all(|b| b.is_ascii_alphanumeric()))
    );
}

fn conversation() -> Vec<ChatMessage> {
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}});
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage { role: "assistant".into(), content: None, tool_calls: Some(vec![call]), ..Default::default() },
        ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "{\"temp\": 21}") },
    ]
}

#[test]
fn fallback_prompt_for_a_template_without_tools() {
    let tools = ToolSet::new(vec![weather()], "tools").unwrap();
    let template = smollm2().chat_template.clone().expect("SmolLM2 has a template");
    assert!(!format::mentions_tools(template.source()));
    assert_eq!(ToolFormat::for_template(template.source()), ToolFormat::Hermes);
    let rendered = template.render(&fallback::rewrite(conversation(), Some(&tools)), true).unwrap();
    let expected = format!(
        "<|im_start|>system\nBe brief.\n\n{}<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n\
         <|im_start|>assistant\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n{{\"temp\": 21}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        fallback::tools_block(&tools)
    );
    assert_eq!(rendered, expected);
    let block = fallback::tools_block(&tools);
    assert!(
        block.contains(&format!("<tools>\n{}\n</tools>", grammar::to_compact_json(&weather().template_value()))),
        "{block}"
    );

    // No system message: the block becomes one (replacing SmolLM2's default system prompt);
    // two results and a user message after them share one user turn.
    let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": {}}});
    let messages = vec![
        ChatMessage::new("user", "Both?"),
        ChatMessage {
            role: "assistant".into(),
            content: Some("Checking.".into()),
            tool_calls: Some(vec![call("a"), call("b")]),
            ..Default::default()
        },
        ChatMessage { tool_call_id: Some("a".into()), ..ChatMessage::new("tool", "1") },
        ChatMessage { tool_call_id: Some("b".into()), ..ChatMessage::new("tool", "2") },
        ChatMessage::new("user", "Thanks"),
    ];
    let rewritten = fallback::rewrite(messages, Some(&tools));
    let roles: Vec<&str> = rewritten.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(
        rewritten[2].content.as_deref(),
        Some(
            "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"
        )
    );
    assert_eq!(
        rewritten[3].content.as_deref(),
        Some("<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response>\nThanks")
    );
    assert!(rewritten.iter().all(|m| m.tool_calls.is_none() && m.tool_call_id.is_none()));
}

#[test]
fn a_template_with_tool_support_renders_them_itself() {
    let source = std::fs::read_to_string(repo_file("tests/fixtures/hermes-tools.jinja")).unwrap();
    let template = ChatTemplate::new(&source, "", "<|im_end|>").unwrap();
    assert!(format::mentions_tools(template.source()));
    assert_eq!(ToolFormat::for_template(template.source()), ToolFormat::Hermes);
    let tools = ToolSet::new(vec![weather()], "tools").unwrap();
    let rendered = template.render_with_tools(&conversation(), Some(&tools.template_value()), true).unwrap();
    let weather_json = "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather now\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": [\"c\", \"f\"]}}, \"required\": [\"city\"]}}}";
    let expected = format!(
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call functions. Signatures:\n<tools>\n{weather_json}\n</tools>\n\n\
         Return each call as <tool_call>\n{{\"name\": <name>, \"arguments\": <object>}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n\
         {{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n{{\"temp\": 21}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(rendered, expected);
}

#[test]
fn the_fallback_keeps_roles_alternating_for_strict_templates() {
    // Gemma 3's template raises unless user and model turns alternate.
    let source = std::fs::read_to_string(repo_file("tests/fixtures/gemma3-chat.jinja")).unwrap();
    let template = ChatTemplate::new(&source, "<bos>", "<eos>").unwrap();
    assert!(!format::mentions_tools(template.source()));
    let tools = ToolSet::new(vec![weather()], "tools").unwrap();
    let mut messages = conversation();
    messages.push(ChatMessage::new("user", "And tomorrow?"));
    let rendered = template.render(&fallback::rewrite(messages, Some(&tools)), true).unwrap();
    assert!(rendered.contains("<tool_response>\n{\"temp\": 21}\n</tool_response>\nAnd tomorrow?"), "{rendered}");
    assert!(rendered.contains("<tools>") && rendered.contains("<tool_call>\n{\"name\": \"get_weather\""), "{rendered}");
}

#[test]
fn objects_that_list_properties_admit_no_others() {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
            "free": {"type": "object"},
            "open": {"type": "object", "properties": {}, "additionalProperties": true},
            "list": {"type": "array", "items": {"properties": {"y": {}}}},
        },
        "$defs": {"D": {"properties": {"z": {}}}},
    });
    grammar::close_listed_objects(&mut schema);
    assert_eq!(schema["additionalProperties"], json!(false));
    let properties = &schema["properties"];
    assert_eq!(properties["properties"]["additionalProperties"], json!(false), "a property called `properties`");
    assert!(properties.get("additionalProperties").is_none(), "the property map itself is not a schema");
    assert!(properties["free"].get("additionalProperties").is_none(), "a free-form object stays free");
    assert_eq!(properties["open"]["additionalProperties"], json!(true));
    assert_eq!(properties["list"]["items"]["additionalProperties"], json!(false));
    assert_eq!(schema["$defs"]["D"]["additionalProperties"], json!(false));
}
