//! The model crate's one error type. Every fallible operation in `stellarchat-model`
//! returns [`ModelError`]; its [`ModelError::kind`] is a stable string that the server uses
//! for metrics labels and maps to an HTTP status in exactly one place.

use std::path::PathBuf;

use crate::device::memory::Bytes;

/// Everything that can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a GGUF file (magic {magic:#010x}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, magic: u32 },

    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),

    #[error("GGUF file is truncated or corrupt while reading {what}")]
    Truncated { what: String },

    #[error("GGUF metadata key `{key}`: {problem}")]
    Metadata { key: String, problem: String },

    #[error("tensor `{tensor}`: {problem}")]
    Tensor { tensor: String, problem: String },

    /// A Hugging Face checkpoint directory, or one of its files, is incomplete or wrong;
    /// `path` is the file (or directory) at fault, `problem` names the key or tensor.
    #[error("{}: {problem}", path.display())]
    Checkpoint { path: PathBuf, problem: String },

    #[error("tensor `{tensor}` has quantization type {ggml_type}, which is not supported")]
    UnsupportedQuantization { tensor: String, ggml_type: String },

    #[error("unsupported model architecture `{name}` (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("device `{requested}` is not available: {reason}")]
    DeviceUnavailable { requested: String, reason: String },

    /// The model does not fit in the device's memory: found before anything is uploaded
    /// (`device::memory_budget`); `figures_from` says where `available` comes from.
    #[error(
        "the model does not fit in the memory of device `{device}` ({adapter}): it needs {} = weights {} + workspace {} + \
         KV cache {} ({kv_tokens} tokens), but {} is available (capacity {}, from {figures_from}); {advice}",
        Bytes(*.needed), Bytes(*.weights), Bytes(*.workspace), Bytes(*.kv_cache), Bytes(*.available), Bytes(*.capacity)
    )]
    DeviceMemory {
        device: String,
        adapter: String,
        needed: u64,
        available: u64,
        capacity: u64,
        weights: u64,
        workspace: u64,
        kv_cache: u64,
        kv_tokens: usize,
        figures_from: String,
        advice: String,
    },

    #[error("dtype {dtype} is not supported on device {device}")]
    UnsupportedDtype { dtype: String, device: String },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A constraint's schema or grammar is invalid or uses what llguidance does not support;
    /// the text is llguidance's explanation.
    #[error("invalid grammar: {0}")]
    InvalidGrammar(String),

    #[error("prompt of {prompt_tokens} tokens plus {max_tokens} new tokens exceeds the context length of {context_length}")]
    ContextLengthExceeded { prompt_tokens: usize, max_tokens: usize, context_length: usize },

    #[error("the engine is overloaded: {0}")]
    Overloaded(String),

    #[error("the engine has shut down")]
    EngineStopped,

    #[error("the model is still loading")]
    NotReady,

    #[error("internal model error: {0}")]
    Internal(String),

    /// A step panicked while this request was in it; the engine caught it and serves on.
    #[error("the engine failed while running this request: {0}")]
    StepFailed(String),

    /// Steps failed again and again: the engine stopped serving (see `engine::supervisor`).
    #[error("the engine stopped after {failures} failed steps in a row (last: {last})")]
    EngineFailed { failures: u32, last: String },
}

impl ModelError {
    /// A stable, low-cardinality name for this error, used as a metrics label and mapped
    /// by the server to the OpenAI `error.type`/status.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Io { .. } => "io",
            ModelError::BadMagic { .. } | ModelError::UnsupportedVersion(_) | ModelError::Truncated { .. } => {
                "invalid_model_file"
            }
            ModelError::Metadata { .. } | ModelError::Tensor { .. } | ModelError::Checkpoint { .. } => {
                "invalid_model_file"
            }
            ModelError::UnsupportedQuantization { .. } => "unsupported_quantization",
            ModelError::UnsupportedArchitecture { .. } => "unsupported_architecture",
            ModelError::Tokenizer(_) => "tokenizer",
            ModelError::ChatTemplate(_) => "chat_template",
            ModelError::DeviceUnavailable { .. } => "device_unavailable",
            ModelError::DeviceMemory { .. } => "device_memory",
            ModelError::UnsupportedDtype { .. } => "unsupported_dtype",
            ModelError::InvalidRequest(_) => "invalid_request",
            ModelError::InvalidGrammar(_) => "invalid_grammar",
            ModelError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ModelError::Overloaded(_) => "overloaded",
            ModelError::EngineStopped => "engine_stopped",
            ModelError::NotReady => "not_ready",
            ModelError::Internal(_) => "internal",
            ModelError::StepFailed(_) => "engine_fault",
            ModelError::EngineFailed { .. } => "engine_failed",
        }
    }

    pub(crate) fn metadata(key: &str, problem: impl Into<String>) -> Self {
        ModelError::Metadata { key: key.to_string(), problem: problem.into() }
    }

    pub(crate) fn tensor(tensor: &str, problem: impl Into<String>) -> Self {
        ModelError::Tensor { tensor: tensor.to_string(), problem: problem.into() }
    }

    pub(crate) fn checkpoint(path: &std::path::Path, problem: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.to_path_buf(), problem: problem.into() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
