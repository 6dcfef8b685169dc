//! `stellarchat generate`: one request through the same engine the server uses, with the
//! text streamed to stdout, or one JSON object with ids, text and speeds.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use stellarchat_model::ModelError;
use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::engine::{
    Engine, EngineConfig, EventStream, FinishReason, GenerateRequest, GenerationEvent, Timings, Usage,
};
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
    /// Run this many sequences at once (benchmarks): the prompt, rotated by one token per
    /// sequence so no two share a prefix; the text shown is the first one's, the speeds are
    /// the batch's (all prompt tokens over the span of the prefills, all generated tokens over
    /// the span of the decodes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// First run one throwaway request, as llama-bench does before it measures: the prompt
    /// rotated by one token (so it shares no prefix) and two generated tokens. The speeds are
    /// then those of a warm process (code paths, buffers and helper threads in use), not of
    /// its very first prefill.
    #[arg(long)]
    warmup: bool,
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
    sequences: u32,
    /// The load's memory check (GPU devices): what the device has and what the model takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    device_memory: Option<DeviceMemoryJson>,
}

#[derive(Serialize)]
struct DeviceMemoryJson {
    capacity_bytes: Option<u64>,
    available_bytes: Option<u64>,
    weights_bytes: u64,
    workspace_bytes: u64,
    kv_cache_bytes: u64,
    kv_cache_tokens: usize,
}

/// The span from the earliest `start` to the latest `end` of `timings`, and its rate for
/// `tokens`.
fn rate(tokens: usize, spans: impl Iterator<Item = (Instant, Instant)>) -> f64 {
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (start, end) in spans {
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    match (first, last) {
        (Some(first), Some(last)) if last > first => tokens as f64 / (last - first).as_secs_f64(),
        _ => 0.0,
    }
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
    // No constraint is ever compiled here: no grammar tables competing with the prefill. No
    // prefix cache either: the prompts of one run share no prefix (`--parallel` and
    // `--warmup` rotate them), and a warm-up's blocks are then reused, not kept.
    let config = EngineConfig {
        prepare_grammar_tables: false,
        prefix_cache: false,
        gpu_memory_limit: args.gpu_memory_limit,
        ..EngineConfig::default()
    };
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
    if args.warmup {
        let mut rotated = prompt_ids.clone();
        rotated.rotate_left(1);
        let warmup = GenerateRequest { prompt_ids: rotated, max_tokens: 2, ..request.clone() };
        drain(&mut engine.submit(warmup)?)?;
    }
    // The other sequences first, so the batch forms before the first one's prefill ends.
    let mut others = Vec::new();
    for i in 1..args.parallel as usize {
        let mut rotated = prompt_ids.clone();
        rotated.rotate_left(i % prompt_ids.len().max(1));
        others.push(engine.submit(GenerateRequest { prompt_ids: rotated, ..request.clone() })?);
    }
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
                let mut finished = vec![(usage, timings)];
                for other in &mut others {
                    finished.push(drain(other)?);
                }
                let prompt_tokens = finished.iter().map(|(u, _)| u.prompt_tokens).sum();
                let decoded = finished.iter().map(|(u, _)| u.completion_tokens.saturating_sub(1)).sum();
                let prefills = finished.iter().map(|(_, t)| {
                    (t.scheduled.unwrap_or(t.submitted), t.first_token.unwrap_or(t.finished))
                });
                let decodes = finished.iter().map(|(_, t)| (t.first_token.unwrap_or(t.finished), t.finished));
                if args.json {
                    let device_memory = engine.stats().memory.map(|m| DeviceMemoryJson {
                        capacity_bytes: m.capacity,
                        available_bytes: m.available,
                        weights_bytes: m.weights,
                        workspace_bytes: m.workspace,
                        kv_cache_bytes: m.kv_cache,
                        kv_cache_tokens: m.kv_tokens,
                    });
                    let out = JsonOutput {
                        prompt_ids,
                        ids,
                        text,
                        finish_reason: reason.as_str(),
                        prefill_tokens_per_s: rate(prompt_tokens, prefills),
                        decode_tokens_per_s: rate(decoded, decodes),
                        logprobs: args.logprobs.map(|_| std::mem::take(&mut logprobs)),
                        sequences: args.parallel,
                        device_memory,
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

/// Waits for a batch companion's end: its usage and timings.
fn drain(stream: &mut EventStream) -> Result<(Usage, Timings), GenerateError> {
    loop {
        match stream.blocking_recv() {
            Some(GenerationEvent::Finished { usage, timings, .. }) => return Ok((usage, timings)),
            Some(GenerationEvent::Error(e)) => return Err(e.into()),
            Some(_) => {}
            None => return Err(GenerateError::Interrupted),
        }
    }
}
