//! `stellarchat serve` flags. Every flag also reads `STELLARCHAT_<FLAG>` from the
//! environment, so a container is configured by environment alone. Lists (`--api-key`,
//! `--cors-origin`) take the flag repeatedly, or a comma-separated environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::engine::{EngineConfig, FaultInjection, SchedulerPolicy, Scheduling};
use stellarchat_model::model::LoadOptions;
use stellarchat_model::weights::{ActivationFormat, WeightFormat};

use super::registry::spec::{self, ModelSpec, SpecDefaults, SpecError};

/// The default model: fetched into `weights/` by `just weights`.
pub const DEFAULT_MODEL: &str = "weights/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Serve the OpenAI-compatible API over HTTP, SSE and WebSocket.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A GGUF file, a Hugging Face checkpoint folder, or `synthetic:<preset>` (random
    /// weights, for tests and benchmarks); repeatable: several models in one server, the
    /// first loaded at start-up and the default. Default: the default model, unless
    /// `--models-dir` or `--models-config` names models.
    #[arg(long = "model", env = "STELLARCHAT_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Serve every GGUF file and checkpoint folder in this folder (ids from file or folder
    /// names), loaded when first asked for.
    #[arg(long, env = "STELLARCHAT_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// A TOML file of `[[models]]` with per-model settings (`path`, `id`, `aliases`,
    /// `device`, `dtype`, `weights`, `activations`, `max_model_len`, `chat_template`,
    /// `kv_cache_tokens`, `max_num_seqs`, `pinned`, `preload`, `keep_alive`); see the README.
    #[arg(long, env = "STELLARCHAT_MODELS_CONFIG", value_name = "FILE")]
    pub models_config: Option<PathBuf>,

    /// Models loaded at once; loading one more unloads the least recently used idle one
    /// (0: no limit).
    #[arg(long, env = "STELLARCHAT_MAX_LOADED_MODELS", default_value_t = 0)]
    pub max_loaded_models: usize,

    /// Unload a model after this many seconds without requests (default: keep it loaded).
    #[arg(long, env = "STELLARCHAT_KEEP_ALIVE", value_name = "SECONDS")]
    pub keep_alive: Option<u64>,

    /// Keep this model loaded: loaded at start-up, never unloaded for room or keep-alive;
    /// repeatable.
    #[arg(long = "pin", env = "STELLARCHAT_PIN", value_delimiter = ',', value_name = "MODEL")]
    pub pins: Vec<String>,

    /// A Jinja chat template file that replaces the model's own (for every model); models
    /// without one (base models such as Gemma 3 270M) need it for /v1/chat/completions.
    #[arg(long, env = "STELLARCHAT_CHAT_TEMPLATE", value_name = "FILE")]
    pub chat_template: Option<PathBuf>,

    /// Let special-token text in chat message content (and tool calls, results, definitions)
    /// become control tokens, as before this flag existed. Off: only the chat template's own
    /// text yields control tokens, so a message cannot forge a turn.
    #[arg(long, env = "STELLARCHAT_PARSE_SPECIAL_IN_CONTENT")]
    pub parse_special_in_content: bool,

    /// The model id clients send and `/v1/models` lists (default: the file stem or folder
    /// name); repeatable: the i-th names the i-th `--model`.
    #[arg(long = "served-model-name", env = "STELLARCHAT_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_names: Vec<String>,

    /// Backend: flex, ndarray, wgpu[:adapter], vulkan, metal, cuda[:N], rocm[:N], auto.
    #[arg(long, env = "STELLARCHAT_DEVICE", default_value = "flex", value_parser = parse_device)]
    pub device: DeviceSpec,

    /// Float type of weights and activations: f32, f16, bf16.
    #[arg(long, env = "STELLARCHAT_DTYPE", default_value = "f32", value_parser = parse_dtype)]
    pub dtype: Precision,

    /// How linear weights are kept: auto (quantized blocks on CPU backends), dense, quantized.
    #[arg(long, env = "STELLARCHAT_WEIGHTS", default_value = "auto", value_parser = parse_weights)]
    pub weights: WeightFormat,

    /// What quantized weights are multiplied with: f32 (exact; the default) or q8 (8-bit
    /// activations and integer dot products, as llama.cpp: faster on CPUs, looser logits).
    #[arg(long, env = "STELLARCHAT_ACTIVATIONS", default_value = "f32", value_parser = parse_activations)]
    pub activations: ActivationFormat,

    #[arg(long, env = "STELLARCHAT_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// 0 picks a free port; the bound address is printed as `listening on http://HOST:PORT`.
    #[arg(long, env = "STELLARCHAT_PORT", default_value_t = 8080)]
    pub port: u16,

    /// An accepted API key (Bearer); repeatable. Without any key the API is open.
    #[arg(long = "api-key", env = "STELLARCHAT_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// A file of API keys, one per line (`#` starts a comment).
    #[arg(long, env = "STELLARCHAT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// An origin allowed by CORS (`*` for any); repeatable. Without any, no CORS headers.
    #[arg(long = "cors-origin", env = "STELLARCHAT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Context window to enforce (default and maximum: the model's).
    #[arg(long, env = "STELLARCHAT_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,

    /// Largest `max_tokens` a request may ask for (also the default when it asks none).
    #[arg(long, env = "STELLARCHAT_MAX_TOKENS_LIMIT", default_value_t = 4096)]
    pub max_tokens_limit: usize,

    /// Largest `n` (choices per request).
    #[arg(long, env = "STELLARCHAT_MAX_N", default_value_t = 8)]
    pub max_n: usize,

    /// Largest request body; larger ones get 413.
    #[arg(long, env = "STELLARCHAT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a client may take to send a request body; slower ones get 408.
    #[arg(long, env = "STELLARCHAT_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,

    /// Open connections served at once; more wait (in the kernel's accept queue) until one
    /// closes. Bounds file descriptors and per-connection memory; the default stays under
    /// the usual 1024 open-file limit, with room for the model file and logs.
    #[arg(long, env = "STELLARCHAT_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Put `/metrics` behind the API key, like `/v1/*` (off: `/metrics` is open).
    #[arg(long, env = "STELLARCHAT_METRICS_API_KEY")]
    pub metrics_api_key: bool,

    /// Largest WebSocket message (and frame); larger ones close the socket with code 1009
    /// (default: `--max-body-bytes`).
    #[arg(long, env = "STELLARCHAT_WS_MAX_MESSAGE_BYTES")]
    pub ws_max_message_bytes: Option<usize>,

    /// Seconds a WebSocket may sit idle (no frames, nothing in flight) before it is closed.
    #[arg(long, env = "STELLARCHAT_WS_IDLE_TIMEOUT", default_value_t = 300)]
    pub ws_idle_timeout: u64,

    #[arg(long, env = "STELLARCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log prompts and completions (off: logs carry counts only).
    #[arg(long, env = "STELLARCHAT_LOG_CONTENT")]
    pub log_content: bool,

    /// Sequences decoded together in one batch.
    #[arg(long, env = "STELLARCHAT_MAX_NUM_SEQS", default_value_t = EngineConfig::default().max_num_seqs)]
    pub max_num_seqs: usize,

    /// Requests that may wait for a slot; beyond it the server answers 429.
    #[arg(long, env = "STELLARCHAT_MAX_QUEUE", default_value_t = EngineConfig::default().max_queue)]
    pub max_queue: usize,

    /// Prompt tokens prefilled per engine step (chunked prefill).
    #[arg(long, env = "STELLARCHAT_MAX_PREFILL_TOKENS", default_value_t = EngineConfig::default().max_prefill_tokens)]
    pub max_prefill_tokens: usize,

    /// KV-cache positions shared by all sequences. Default: 65536; on a GPU device, as many
    /// as fit in 90 % of the memory left after weights and workspace, 65536 at most. Given,
    /// a GPU device that cannot hold them refuses the model at load.
    #[arg(long, env = "STELLARCHAT_KV_CACHE_TOKENS")]
    pub kv_cache_tokens: Option<usize>,

    /// Device memory the model may use (e.g. `6GiB`, `512MiB`, bytes), instead of what the
    /// GPU reports free: for a GPU shared with other programs. Weights, workspace and KV
    /// cache are checked against it at load.
    #[arg(long, env = "STELLARCHAT_GPU_MEMORY_LIMIT", value_name = "BYTES", value_parser = parse_byte_size)]
    pub gpu_memory_limit: Option<u64>,

    /// Reuse the KV cache of earlier requests' prompt prefixes (the default).
    #[arg(long, overrides_with = "no_prefix_cache")]
    pub prefix_cache: bool,

    /// Prefill every prompt in full; keep no cache of finished requests.
    #[arg(long, env = "STELLARCHAT_NO_PREFIX_CACHE", overrides_with = "prefix_cache")]
    pub no_prefix_cache: bool,

    /// Engine scheduling: `latency` (a step's prefill shrinks while streams decode, shortest
    /// prompt first with ageing) or `fifo` (oldest first, the full prefill chunk every step).
    #[arg(long, env = "STELLARCHAT_SCHEDULER", default_value = "latency",
          value_parser = |s: &str| s.parse::<SchedulerPolicy>().map_err(|e| e.to_string()))]
    pub scheduler: SchedulerPolicy,

    /// Test-only: make engine steps panic (`panic-at-step=N` or `panic-from-step=N`) so that
    /// tests can watch the engine's supervision on the real binary. Hidden from `--help`.
    #[arg(long, hide = true)]
    pub fault_injection: Option<FaultInjection>,

    /// Seconds running streams may take to finish after SIGTERM/SIGINT before they are cut.
    #[arg(long, env = "STELLARCHAT_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Seconds between `: keep-alive` comments on an idle SSE stream.
    #[arg(long, env = "STELLARCHAT_SSE_KEEPALIVE", default_value_t = 15)]
    pub sse_keepalive: u64,

    /// Responses kept in memory for `previous_response_id` and `GET /v1/responses/{id}`
    /// (the least recently used go first); 0 keeps none.
    #[arg(long, env = "STELLARCHAT_RESPONSES_STORE_SIZE", default_value_t = 1024)]
    pub responses_store_size: usize,

    /// Turn off the chat page at `/` (then `/` answers 404).
    #[arg(long, env = "STELLARCHAT_NO_UI")]
    pub no_ui: bool,

    /// Server-side conversations (WebSocket `conversation.*`) one API key may keep; creating
    /// one more forgets that key's least recently used one.
    #[arg(long, env = "STELLARCHAT_MAX_CONVERSATIONS_PER_KEY", default_value_t = 64)]
    pub max_conversations_per_key: usize,

    /// Prompt tokens a conversation turn may render to; beyond it the oldest messages are
    /// dropped (in user/assistant pairs).
    #[arg(long, env = "STELLARCHAT_CONVERSATION_MAX_TOKENS", default_value_t = 8192)]
    pub conversation_max_tokens: usize,

    /// Seconds an unused server-side conversation is kept.
    #[arg(long, env = "STELLARCHAT_CONVERSATION_TTL", default_value_t = 3600)]
    pub conversation_ttl: u64,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: stellarchat_model::ModelError| e.to_string())
}

fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    s.parse().map_err(|e: stellarchat_model::ModelError| e.to_string())
}

fn parse_activations(s: &str) -> Result<ActivationFormat, String> {
    s.parse().map_err(|e: stellarchat_model::ModelError| e.to_string())
}

pub(crate) fn parse_byte_size(s: &str) -> Result<u64, String> {
    stellarchat_model::device::memory::parse_byte_size(s).map_err(|e| e.to_string())
}

fn parse_dtype(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: stellarchat_model::ModelError| e.to_string())
}

impl ServeArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { device: self.device, precision: self.dtype, weights: self.weights, activations: self.activations }
    }

    /// Every model to serve, in order (the first is the default): `--model`s, then the
    /// `--models-config` file's, then `--models-dir`'s; the default model when none is named.
    pub fn model_specs(&self) -> Result<Vec<ModelSpec>, SpecError> {
        let defaults = SpecDefaults {
            load: self.load_options(),
            engine: self.engine_config(),
            max_model_len: self.max_model_len,
            chat_template: self.chat_template.clone(),
            keep_alive: self.keep_alive.map(Duration::from_secs),
        };
        let mut specs = spec::from_flags(&self.models, &self.served_model_names, &defaults)?;
        if let Some(path) = &self.models_config {
            specs.extend(spec::read_config(path, &defaults)?);
        }
        if let Some(dir) = &self.models_dir {
            let found = spec::from_dir(dir, &defaults)?;
            if found.is_empty() && specs.is_empty() {
                return Err(SpecError::Empty(dir.clone()));
            }
            // A file named on its own keeps its own settings.
            let named: Vec<String> = specs.iter().map(|s| s.source.clone()).collect();
            specs.extend(found.into_iter().filter(|f| !named.contains(&f.source)));
        }
        if specs.is_empty() {
            specs = spec::from_flags(&[DEFAULT_MODEL.to_string()], &self.served_model_names, &defaults)?;
        }
        spec::finish(specs, &self.pins)
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_num_seqs: self.max_num_seqs.max(1),
            max_queue: self.max_queue,
            max_prefill_tokens: self.max_prefill_tokens.max(1),
            kv_cache_tokens: self.kv_cache_tokens.unwrap_or(EngineConfig::default().kv_cache_tokens).max(1),
            size_kv_cache_by_device: self.kv_cache_tokens.is_none(),
            gpu_memory_limit: self.gpu_memory_limit,
            prefix_cache: !self.no_prefix_cache,
            scheduling: Scheduling { policy: self.scheduler, ..Scheduling::default() },
            fault_injection: self.fault_injection,
            prepare_grammar_tables: true,
        }
    }

    pub fn conversation_limits(&self) -> super::conversations::ConversationLimits {
        super::conversations::ConversationLimits {
            max_per_owner: self.max_conversations_per_key.max(1),
            ttl: Duration::from_secs(self.conversation_ttl.max(1)),
            max_tokens: self.conversation_max_tokens.max(1),
        }
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// `--api-key` values plus the keys of `--api-key-file`; empty lines and `#` comments
    /// are skipped.
    pub fn load_api_keys(&self) -> std::io::Result<Vec<String>> {
        let mut keys: Vec<String> =
            self.api_keys.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)?;
            keys.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string),
            );
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_match_the_issue() {
        let cli = Cli::try_parse_from(["stellarchat"]).expect("defaults parse");
        let a = cli.serve;
        let specs = a.model_specs().expect("specs");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].source, DEFAULT_MODEL);
        assert!(specs[0].preload && !specs[0].pinned);
        assert_eq!(a.max_loaded_models, 0);
        assert_eq!(a.keep_alive, None);
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 8080);
        assert_eq!(a.device, DeviceSpec::Flex);
        assert_eq!(a.dtype, Precision::F32);
        assert!(!a.log_content);
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.chat_template, None);
        assert_eq!(a.body_timeout, 30);
        assert!(!a.metrics_api_key);
        assert_eq!(a.ws_max_message_bytes, None);
        assert_eq!(a.ws_idle_timeout, 300);
    }

    #[test]
    fn prefix_cache_is_on_unless_turned_off() {
        let on = |argv: &[&str]| Cli::try_parse_from(argv).expect("parse").serve.engine_config().prefix_cache;
        assert!(on(&["stellarchat"]));
        assert!(!on(&["stellarchat", "--no-prefix-cache"]));
        assert!(on(&["stellarchat", "--no-prefix-cache", "--prefix-cache"]), "the last flag wins");
    }

    #[test]
    fn the_kv_budget_is_sized_by_the_device_unless_given() {
        let engine = |argv: &[&str]| Cli::try_parse_from(argv).expect("parse").serve.engine_config();
        let default = engine(&["stellarchat"]);
        assert!(default.size_kv_cache_by_device);
        assert_eq!((default.kv_cache_tokens, default.gpu_memory_limit), (65_536, None));
        let given = engine(&["stellarchat", "--kv-cache-tokens", "4096", "--gpu-memory-limit", "6GiB"]);
        assert!(!given.size_kv_cache_by_device);
        assert_eq!((given.kv_cache_tokens, given.gpu_memory_limit), (4096, Some(6 << 30)));
        assert!(Cli::try_parse_from(["stellarchat", "--gpu-memory-limit", "lots"]).is_err());
    }

    #[test]
    fn responses_store_size_defaults_to_1024() {
        let cli = Cli::try_parse_from(["stellarchat"]).expect("defaults parse");
        assert_eq!(cli.serve.responses_store_size, 1024);
        let cli = Cli::try_parse_from(["stellarchat", "--responses-store-size", "0"]).expect("parse");
        assert_eq!(cli.serve.responses_store_size, 0);
    }

    #[test]
    fn repeatable_flags() {
        let cli = Cli::try_parse_from([
            "stellarchat",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--cors-origin",
            "http://x",
            "--port",
            "0",
            "--chat-template",
            "gemma.jinja",
        ])
        .expect("parse");
        assert_eq!(cli.serve.chat_template, Some(PathBuf::from("gemma.jinja")));
        assert_eq!(cli.serve.api_keys, vec!["a", "b"]);
        assert_eq!(cli.serve.cors_origins, vec!["http://x"]);
        assert_eq!(cli.serve.port, 0);
    }
}
