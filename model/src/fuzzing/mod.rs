//! Fuzz target bodies for the model crate's untrusted inputs: GGUF files, chat templates
//! with the messages rendered through them, and text through the tokenizer and the
//! streaming detokenizer.
//!
//! Each body takes raw bytes and must never panic, hang or allocate without bound, whatever
//! the bytes; where a property holds for every input (text survives encode → decode, the
//! streamed pieces add up to the whole decode) it asserts it, so a violation is a crash
//! like any other. The same bodies run under two drivers: the coverage-guided `cargo fuzz`
//! targets in `fuzz/` (`just fuzz`, nightly) and the stable replay tests of `just test`,
//! which run every committed corpus and regression file plus seeded mutations of them
//! ([`replay`]).

pub mod replay;

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::chat_template::{CHATML_TEMPLATE, ChatMessage, ChatTemplate};
use crate::gguf::GgufFile;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Separates the parts of a `chat_template` input: the template, then one message each.
pub const PART_SEPARATOR: u8 = 0;
/// Tensors larger than this are not dequantized by the `gguf` body: a valid header may
/// declare a tensor as large as the file, and an input of a few MiB should not take
/// seconds. Their extents are still checked when the file is parsed.
const MAX_DEQUANTIZED_ELEMENTS: usize = 1 << 20;

/// The GGUF files the bodies take their real tokenizers and templates from, when present.
const MODEL_FILES: &[&str] = &["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"];

/// `bytes` as a GGUF file: the header, metadata and tensor directory, every tensor's data
/// dequantized, then what a loader builds from the metadata (architecture config,
/// tokenizer, chat template), each of which may fail but must not panic.
pub fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(bytes.to_vec()) else { return };
    for name in file.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>() {
        let info = file.tensor_info(&name).expect("a listed tensor is found by its name");
        if info.n_elements() <= MAX_DEQUANTIZED_ELEMENTS
            && let Ok((info, values)) = file.tensor_f32(&name)
        {
            assert_eq!(values.len(), info.n_elements(), "tensor `{name}`");
        }
    }
    let _ = crate::arch::config_from_gguf(&file.metadata, &|name| file.tensor_info(name).is_some());
    if let Ok(tokenizer) = Tokenizer::from_gguf(&file.metadata) {
        let _ = ChatTemplate::from_gguf(&file.metadata, &tokenizer);
        // A hostile vocabulary need not round-trip text; it must only not panic.
        let text = "Hello, wörld! <|im_start|> 12345 \u{1F600}";
        if let Ok(ids) = tokenizer.encode(text, true) {
            let _ = tokenizer.decode(&ids, false);
            let mut decoder = IncrementalDecoder::new(true);
            for id in ids.into_iter().chain([0, u32::MAX]) {
                let _ = decoder.push(&tokenizer, id);
            }
            decoder.finish();
        }
    }
}

/// `bytes` split at [`PART_SEPARATOR`]: a template source, then messages, whose first byte
/// picks the role and shape (see [`message_of`]) and whose rest is the content. The messages
/// are rendered through the hostile template and through the real models' templates.
pub fn chat_template(bytes: &[u8]) {
    let mut parts = bytes.split(|&b| b == PART_SEPARATOR);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let messages: Vec<ChatMessage> = parts.map(message_of).collect();
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather <b>now</b>", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    if let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") {
        let _ = template.render(&messages, true);
        let _ = template.render_with_tools(&messages, Some(&tools), false);
    }
    for template in model_templates() {
        let _ = template.render(&messages, true);
        let _ = template.render_with_tools(&messages, Some(&tools), true);
    }
}

/// One message from the bytes of a part: the first byte's low three bits pick the role
/// (including roles no template knows), bit 3 makes the content null, bit 4 adds a tool
/// call, bit 5 a tool call id and name; the rest is the content.
pub fn message_of(part: &[u8]) -> ChatMessage {
    const ROLES: [&str; 8] = ["user", "assistant", "system", "tool", "developer", "", "USER", "{{ role }}"];
    let (flags, content) = part.split_first().map_or((0, &[][..]), |(&f, rest)| (f, rest));
    let content = String::from_utf8_lossy(content).into_owned();
    let mut message = ChatMessage::new(ROLES[usize::from(flags & 7)], content.clone());
    if flags & 8 != 0 {
        message.content = None;
    }
    if flags & 16 != 0 {
        message.tool_calls = Some(vec![serde_json::json!({"id": "call_1", "type": "function",
            "function": {"name": content, "arguments": {"city": content, "n": [1, 2.5, null]}}})]);
    }
    if flags & 32 != 0 {
        message.tool_call_id = Some(content.clone());
        message.name = Some(content);
    }
    message
}

/// A tokenizer the `tokenizer` body runs, with what its round trip must preserve.
pub struct FuzzTokenizer {
    pub tokenizer: Tokenizer,
    /// Byte-level BPE: encode → decode gives back any text made of the bytes it has
    /// tokens for.
    pub byte_level: bool,
    /// The bytes the vocabulary has no single-byte token for (SmolLM2 lacks some control
    /// characters and bytes its training text never had): encoding drops them, as llama.cpp
    /// and Hugging Face do.
    pub missing_bytes: Vec<u8>,
}

impl FuzzTokenizer {
    fn new(tokenizer: Tokenizer, byte_level: bool) -> Self {
        let mut present = [false; 256];
        for id in 0..tokenizer.vocab_size() as u32 {
            if let [b] = tokenizer.token_bytes(id)[..] {
                present[usize::from(b)] = true;
            }
        }
        let missing_bytes = (0..=255u8).filter(|&b| !present[usize::from(b)]).collect();
        FuzzTokenizer { tokenizer, byte_level, missing_bytes }
    }

    /// What encode → decode must give for `text` with a byte-level vocabulary: the text,
    /// less the ASCII characters the vocabulary lacks; `None` when a missing byte is part of
    /// a multi-byte character (decoding then shows U+FFFD for what is left of it).
    fn expected_round_trip(&self, text: &str) -> Option<String> {
        let missing = |b: &u8| self.missing_bytes.contains(b);
        if !self.byte_level || text.bytes().any(|b| !b.is_ascii() && missing(&b)) {
            return None;
        }
        Some(text.chars().filter(|&c| !c.is_ascii() || !missing(&(c as u8))).collect())
    }
}

/// `bytes` as text (lossily) through each real tokenizer and a synthetic one: encoding
/// with and without special-token parsing, decoding, and streaming the ids back through
/// [`IncrementalDecoder`]; then the bytes as raw ids (three bytes an id, some out of range)
/// through the streaming decoder.
pub fn tokenizer(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for fuzz in tokenizers() {
        let tokenizer = &fuzz.tokenizer;
        tokenizer_round_trip(fuzz, &text);
        let ids: Vec<u32> = bytes
            .chunks(3)
            .map(|c| c.iter().fold(0u32, |id, &b| id << 8 | u32::from(b)) % (tokenizer.vocab_size() as u32 + 8))
            .collect();
        for skip_special in [false, true] {
            let mut decoder = IncrementalDecoder::new(skip_special);
            for &id in &ids {
                let piece = decoder.push(tokenizer, id);
                assert_eq!(piece.is_err(), id as usize >= tokenizer.vocab_size(), "id {id}");
            }
            decoder.finish();
        }
        for &id in ids.iter().take(16) {
            let _ = (tokenizer.token_bytes(id), tokenizer.token_text(id), tokenizer.is_special(id));
        }
    }
}

/// Encodes `text` and checks what must hold for any text: a byte-level vocabulary gives the
/// text back (less the characters it has no token for), and the streamed pieces of the ids
/// add up to their one-shot decode.
fn tokenizer_round_trip(fuzz: &FuzzTokenizer, text: &str) {
    let tokenizer = &fuzz.tokenizer;
    let Ok(plain) = tokenizer.encode(text, false) else { return };
    let _ = tokenizer.encode_prompt(text);
    if let Ok(parsed) = tokenizer.encode(text, true) {
        streamed_matches_decode(tokenizer, &parsed, true);
    }
    let decoded = tokenizer.decode(&plain, false).expect("ids from encode decode");
    if let Some(expected) = fuzz.expected_round_trip(text) {
        assert_eq!(decoded, expected, "byte-level encode → decode changed the text");
    }
    streamed_matches_decode(tokenizer, &plain, false);
}

fn streamed_matches_decode(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) {
    let whole = tokenizer.decode(ids, skip_special).expect("ids from encode decode");
    let mut decoder = IncrementalDecoder::new(skip_special);
    let mut streamed = String::new();
    for &id in ids {
        streamed.push_str(&decoder.push(tokenizer, id).expect("ids from encode decode"));
    }
    streamed.push_str(&decoder.finish());
    assert_eq!(streamed, whole, "streamed pieces differ from the one-shot decode of {ids:?}");
}

/// The real models' tokenizers (whichever weights are present) and a synthetic byte-level one.
pub fn tokenizers() -> &'static [FuzzTokenizer] {
    static TOKENIZERS: OnceLock<Vec<FuzzTokenizer>> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let mut out: Vec<FuzzTokenizer> = model_files()
            .iter()
            .filter_map(|file| {
                let tokenizer = Tokenizer::from_gguf(&file.metadata).ok()?;
                let byte_level = file.metadata.opt_str("tokenizer.ggml.model").ok()?? == "gpt2";
                Some(FuzzTokenizer::new(tokenizer, byte_level))
            })
            .collect();
        out.push(FuzzTokenizer::new(Tokenizer::synthetic(300).expect("synthetic tokenizer"), true));
        out
    })
}

/// ChatML and the real models' templates (whichever weights are present).
pub fn model_templates() -> &'static [ChatTemplate] {
    static TEMPLATES: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut out = vec![ChatTemplate::new(CHATML_TEMPLATE, "", "").expect("ChatML compiles")];
        for file in model_files() {
            let tokenizer = Tokenizer::from_gguf(&file.metadata).expect("the model's tokenizer");
            out.extend(ChatTemplate::from_gguf(&file.metadata, &tokenizer).expect("the model's template"));
        }
        out
    })
}

/// The repository's `weights/` directory (the model crate's sibling).
pub fn weights_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights")
}

fn model_files() -> &'static [GgufFile] {
    static FILES: OnceLock<Vec<GgufFile>> = OnceLock::new();
    FILES.get_or_init(|| {
        MODEL_FILES.iter().map(|name| weights_dir().join(name)).filter_map(|path| GgufFile::open(path).ok()).collect()
    })
}

#[cfg(test)]
mod tests;
