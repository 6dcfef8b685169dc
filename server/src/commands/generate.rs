//! `stellarchat generate`: one request through the same engine the server uses, with the
//! text streamed to stdout, or one JSON object with ids, text and speeds.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use stellarchat_model::ModelError;
use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::engine::{Engine, EngineConfig, FinishReason, GenerateRequest, GenerationEvent};
use stellarchat_model::model::{LoadOptions, ModelLoader};
use stellarchat_model::sampler::SamplingParams;
use stellarchat_model::weights::{ActivationFormat, WeightFormat};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "messages"]))]
pub struct GenerateArgs {
    /// Model file (.gguf), a Hugging Face checkpoint folder, or `synthetic:<preset>`.
    #[arg(long, default_value = super::DEFAULT_MODEL_PATH)]
    model: String,
    /// flex, ndarray, wgpu[:cpu], vulkan, metal, cuda[:N], rocm[:N] or auto.
    #[arg(long, default_value = "flex")]
    device: DeviceSpec,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// auto (quantized blocks on CPU at f32), dense or quantized.
    #[arg(long, default_value = "auto")]
    weights: WeightFormat,
    /// f32 (exact) or q8 (8-bit activations against quantized weights).
    #[arg(long, default_value = "f32")]
    activations: ActivationFormat,
    /// Device memory the model may use (e.g. `6GiB`), instead of what the GPU reports free.
    #[arg(long, value_name = "BYTES", value_parser = crate::serve::config::parse_byte_size)]
    gpu_memory_limit: Option<u64>,
    /// Raw prompt text; special tokens in it are parsed.
    #[arg(long)]
    prompt: Option<String>,
    /// A JSON file with an array of OpenAI-style messages, rendered by the chat template.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// A Jinja chat template file that replaces the model's own (needed for --messages with a
    /// model that has none).
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 means no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// With --json: each token's logprob and its N most likely alternatives (backend comparisons).
    #[arg(long, value_name = "N")]
    logprobs: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct TokenLogprobJson {
    id: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

#[derive(Serialize)]
struct JsonOutput {
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    finish_reason: &'static str,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<TokenLogprobJson>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a JSON array of {{\"role\", \"content\"}} messages: {source}")]
    Messages { path: PathBuf, source: serde_json::Error },
    #[error("--chat-template: {0}")]
    ChatTemplate(ModelError),
    #[error("the model has no chat template: pass --chat-template FILE (a Jinja chat template), or use --prompt")]
    NoTemplate,
    #[error("the engine stopped before finishing")]
    Interrupted,
    #[error("loading the model failed: {0}")]
    Load(std::sync::Arc<ModelError>),
}

pub fn run(args: GenerateArgs) -> Result<(), GenerateError> {
    let loader = ModelLoader::open(&args.model)?;
    let info = crate::serve::registry::apply_chat_template_file(loader.info(), args.chat_template.as_deref())
        .map_err(GenerateError::ChatTemplate)?;
    let prompt_ids = match (&args.prompt, &args.messages) {
        (Some(prompt), _) => info.tokenizer.encode_prompt(prompt)?,
        (None, Some(path)) => {
            let raw =
                std::fs::read_to_string(path).map_err(|source| GenerateError::Read { path: path.clone(), source })?;
            let messages: Vec<ChatMessage> =
                serde_json::from_str(&raw).map_err(|source| GenerateError::Messages { path: path.clone(), source })?;
            let template = info.chat_template.as_ref().ok_or(GenerateError::NoTemplate)?;
            // Message content is text: only the template's own text yields control tokens.
            info.tokenizer.encode_rendered(&template.render_parts(&messages, None, true)?)?
        }
        (None, None) => unreachable!("clap requires --prompt or --messages"),
    };

    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let progress: Box<dyn FnMut(usize, usize) + Send> = Box::new(move |done, total| {
        if show_progress {
            eprint!("\rloading weights {:3}%", done * 100 / total.max(1));
            if done == total {
                eprintln!();
            }
        } else if done == total {
            tracing::info!("weights loaded");
        }
    });
    let options =
        LoadOptions { device: args.device, precision: args.dtype, weights: args.weights, activations: args.activations };
    // No constraint is ever compiled here: no grammar tables competing with the prefill.
    let config =
        EngineConfig { prepare_grammar_tables: false, gpu_memory_limit: args.gpu_memory_limit, ..EngineConfig::default() };
    let engine = Engine::spawn(loader, options, config, progress);
    while !engine.is_ready() {
        if let Some(error) = engine.failure() {
            return Err(GenerateError::Load(error));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let request = GenerateRequest {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
            ..SamplingParams::default()
        },
        ignore_eos: args.ignore_eos,
        logprobs: args.logprobs,
        ..GenerateRequest::greedy(prompt_ids.clone(), args.max_tokens)
    };
    let mut stream = engine.submit(request)?;
    let mut ids = Vec::new();
    let mut logprobs = Vec::new();
    let mut text = String::new();
    let stdout = std::io::stdout();
    loop {
        match stream.blocking_recv() {
            Some(GenerationEvent::Token { id, text: piece, logprob, .. }) => {
                ids.push(id);
                if let Some(lp) = logprob {
                    logprobs.push(TokenLogprobJson { id, logprob: lp.logprob, top: lp.top });
                }
                if !args.json {
                    let mut out = stdout.lock();
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                }
                text.push_str(&piece);
            }
            Some(GenerationEvent::Finished { reason, usage, text: tail, timings }) => {
                text.push_str(&tail);
                let prefill_s =
                    timings.first_token.unwrap_or(timings.finished) - timings.scheduled.unwrap_or(timings.submitted);
                let decode_s = timings.finished - timings.first_token.unwrap_or(timings.finished);
                let per_s = |n: usize, d: std::time::Duration| {
                    if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 }
                };
                if args.json {
                    let out = JsonOutput {
                        prompt_ids,
                        ids,
                        text,
                        finish_reason: reason.as_str(),
                        prefill_tokens_per_s: per_s(usage.prompt_tokens, prefill_s),
                        decode_tokens_per_s: per_s(usage.completion_tokens.saturating_sub(1), decode_s),
                        logprobs: args.logprobs.map(|_| std::mem::take(&mut logprobs)),
                    };
                    println!("{}", serde_json::to_string(&out).unwrap_or_default());
                } else {
                    let _ = stdout.lock().write_all(tail.as_bytes());
                    println!();
                    if reason == FinishReason::Length {
                        tracing::debug!("stopped at max_tokens");
                    }
                }
                engine.shutdown();
                return Ok(());
            }
            // The CLI does not ask for prompt logprobs.
            Some(GenerationEvent::PromptLogprobs(_)) => {}
            Some(GenerationEvent::Error(e)) => return Err(e.into()),
            None => return Err(GenerateError::Interrupted),
        }
    }
}
