//! `stellarchat bench`: a load generator for any OpenAI-compatible server (ours, llama.cpp's,
//! vLLM's), so that throughput and latency are measured the same way on each.
//!
//! N clients each send streaming chat requests one after another — greedy, from a fixed
//! prompt set in a seeded order — until `--requests` are done or `--duration` has passed.
//! Per request it measures the time to the first content chunk (TTFT), the gaps between
//! content chunks (ITL), the end-to-end latency and the output tokens (from the usage
//! chunk), and reports throughput and percentiles as text or `--json`.
//!
//! The client side must stay light: on a small machine it shares the cores with the server
//! under test, so it runs on one thread (a current-thread runtime) and parses SSE itself.
//!
//! In its multi-turn mode (`--conversations`, [`conversation`]) each client holds one chat
//! that opens with a shared system prompt and sends its whole history every turn; the
//! report adds TTFT and prompt/cached tokens per turn.
//!
//! As a soak test (`just soak`): `--mix` spreads requests over plain HTTP, SSE and
//! WebSocket, `--disconnect-ratio` makes that share of clients drop the connection
//! mid-stream, the server's RSS is printed every `--sample-interval`, and `--check-leaks`
//! fails the run unless, after the load, the server is idle with nothing held (`monitor`).

mod conversation;
mod monitor;
mod prompts;
mod request;
mod sse;
mod stats;
mod transports;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use monitor::{Probe, RssSource};
use request::{RequestError, RequestSpec};
use stats::{Report, RunInfo, Sample, Tally};
use transports::Transport;

/// Measure an OpenAI-compatible server: streaming chat requests from N concurrent clients.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The API's base URL, up to and including `/v1` (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    base_url: String,
    /// The model to request (default: the first one `GET /models` lists).
    #[arg(long)]
    model: Option<String>,
    /// Multi-turn mode: this many chats at once, each on its own client, all opening with the
    /// same system prompt; each turn sends the whole history, answers included.
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["concurrency", "requests", "duration", "mix", "disconnect_ratio", "check_leaks"],
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    conversations: Option<u32>,
    /// Turns (requests) per conversation, in the multi-turn mode.
    #[arg(long, default_value_t = 4, requires = "conversations", value_parser = clap::value_parser!(u32).range(1..=64))]
    turns: u32,
    /// Length of the shared system prompt in the multi-turn mode, in SmolLM2 tokens (about:
    /// the text is cut by words; 0 for none).
    #[arg(long, value_name = "TOKENS", default_value_t = 300, requires = "conversations")]
    system_prompt_tokens: u32,
    /// Clients sending requests at the same time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Requests to send in all (default: 4 per client).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Send requests for this many seconds instead; those running at the end are finished.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Picks the order of the prompts (the same seed gives every server the same requests).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "STELLARCHAT_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Ask the server to generate past end-of-sequence (`"ignore_eos": true`).
    #[arg(long)]
    ignore_eos: bool,
    /// Ban a token id through `logit_bias` (-100), e.g. the model's EOS; repeatable.
    #[arg(long = "ban-token", value_name = "ID")]
    ban_tokens: Vec<u32>,
    /// Requests sent one at a time before measuring, not counted.
    #[arg(long, default_value_t = 0)]
    warmup: u32,
    /// Seconds one request may take before it counts as a `timeout` error.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    request_timeout: u64,
    /// Print one JSON object with the figures instead of text.
    #[arg(long)]
    json: bool,
    /// Transports used in turn, comma-separated: http (`stream: false`), sse, ws.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sse")]
    mix: Vec<Transport>,
    /// Share of requests (0–1) whose client drops the connection after a random number of
    /// chunks.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    disconnect_ratio: f64,
    /// The server's process id: its RSS is read from /proc (default: from its /metrics).
    #[arg(long, value_name = "PID")]
    rss_pid: Option<u32>,
    /// Seconds between RSS samples (taken with --rss-pid or --check-leaks).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    sample_interval: u64,
    /// After the load, check that the server freed everything: no request running or waiting,
    /// no generation or WebSocket open, the KV cache held by the prefix cache only, and no
    /// 5xx during the run. Exits non-zero if not.
    #[arg(long)]
    check_leaks: bool,
    /// Seconds the server gets after the load to become idle before the leak check fails.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    settle: u64,
    /// RSS growth is measured from the first sample this many seconds into the load.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    rss_warmup: u64,
    /// Fail when the RSS grew more than this many percent after the warm-up.
    #[arg(long, value_name = "PCT")]
    max_rss_growth: Option<f64>,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{s}' is not a number from 0 to 1")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("could not start the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("invalid --base-url '{0}': expected http://HOST:PORT/v1 (plain HTTP)")]
    BaseUrl(String),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    #[error("GET {url} failed ({message}); pass --model to skip it")]
    Models { url: String, message: String },
    #[error("warm-up request failed: {0}")]
    Warmup(RequestError),
    #[error("every request failed ({0} of {0})")]
    AllFailed(u64),
    #[error("the soak check failed:\n  {}", .0.join("\n  "))]
    Soak(Vec<String>),
}

/// Runs the benchmark on its own single-threaded runtime and prints the report to stdout.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let json = args.json;
    let report = runtime.block_on(bench(args))?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
    } else {
        println!("{report}");
    }
    if report.errors > 0 && report.successful == 0 {
        return Err(BenchError::AllFailed(report.requests));
    }
    match &report.soak {
        Some(soak) if !soak.failures.is_empty() => Err(BenchError::Soak(soak.failures.clone())),
        _ => Ok(()),
    }
}

/// When to stop sending new requests.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Requests(u64),
    Until(Instant),
}

/// Counters the progress line reads while clients update them.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
    disconnected: AtomicU64,
    running: AtomicU64,
    tokens: AtomicU64,
}

impl Progress {
    fn started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, outcome: &Outcome) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(s) => self.tokens.fetch_add(s.output_tokens, Ordering::Relaxed),
            Err(RequestError::Disconnected) => self.disconnected.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What every client needs.
struct Shared {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    spec: RequestSpec,
    ws_url: String,
    mix: Vec<Transport>,
    disconnect_ratio: f64,
    seed: u64,
    timeout: Duration,
    limit: Limit,
    next: AtomicU64,
    progress: Progress,
}

type Outcome = Result<Sample, RequestError>;

async fn bench(args: BenchArgs) -> Result<Report, BenchError> {
    let base = normalize_base_url(&args.base_url)?;
    let plan = args.conversations.map(|conversations| conversation::Plan {
        conversations,
        turns: args.turns,
        system_prompt_tokens: args.system_prompt_tokens,
    });
    let concurrency = plan.map_or(args.concurrency, |p| p.conversations) as usize;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Client(request::error_chain(&e)))?;
    let model = match args.model {
        Some(m) => m,
        None => first_model(&client, &base, args.api_key.as_deref()).await?,
    };
    let spec =
        RequestSpec { model, max_tokens: args.max_tokens, ignore_eos: args.ignore_eos, ban_tokens: args.ban_tokens };
    let url = format!("{base}/chat/completions");
    let timeout = Duration::from_secs(args.request_timeout);

    for k in 0..args.warmup {
        let prompt = format!("Warm-up {k}: {}", prompts::prompt(k as usize));
        let body = request::request_body(&spec, &prompt);
        request::run_one(&client, &url, args.api_key.as_deref(), &body, timeout, None)
            .await
            .map_err(BenchError::Warmup)?;
    }

    let start = Instant::now();
    let limit = match (args.duration, plan) {
        (Some(secs), _) => Limit::Until(start + Duration::from_secs(secs)),
        (None, Some(p)) => Limit::Requests(u64::from(p.conversations) * u64::from(p.turns)),
        (None, None) => Limit::Requests(args.requests.unwrap_or(4 * args.concurrency as u64)),
    };
    let info = RunInfo {
        base_url: base,
        model: spec.model.clone(),
        concurrency,
        max_tokens: args.max_tokens,
        seed: args.seed,
    };
    let sampling = args.check_leaks || args.rss_pid.is_some();
    let rss_source = args.rss_pid.map_or(RssSource::Metrics, RssSource::Pid);
    let probe = Probe::new(client.clone(), &info.base_url, args.api_key.clone(), rss_source);
    let shared = Arc::new(Shared {
        client,
        url,
        api_key: args.api_key,
        spec,
        ws_url: transports::ws_url(&info.base_url),
        mix: args.mix,
        disconnect_ratio: args.disconnect_ratio,
        seed: args.seed,
        timeout,
        limit,
        next: AtomicU64::new(0),
        progress: Progress::default(),
    });
    let ticker = tokio::spawn(show_progress(shared.clone(), start));
    let interval = Duration::from_secs(args.sample_interval);
    let (stop_sampling, stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = sampling.then(|| tokio::spawn(monitor::sample_rss(probe.clone(), start, interval, stopped)));
    let (outcomes, multi_turn) = match plan {
        None => (run_clients(&shared, concurrency).await, None),
        Some(plan) => {
            let turns = conversation::run_all(shared.clone(), plan).await;
            let multi_turn = conversation::MultiTurn::new(plan, &turns);
            (turns.into_iter().map(|t| t.outcome).collect(), Some(multi_turn))
        }
    };
    let wall = start.elapsed();
    ticker.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }

    let mut samples = Vec::new();
    let mut errors = Vec::new();
    let mut tally = Tally::default();
    for outcome in outcomes {
        match outcome {
            Ok(s) => samples.push(s),
            Err(RequestError::Disconnected) => tally.disconnected += 1,
            Err(e) => {
                tally.server_errors += u64::from(e.is_server_error());
                errors.push((e.kind(), e.to_string()));
            }
        }
    }
    let mut report = stats::report(info, &samples, &errors, tally, wall);
    report.multi_turn = multi_turn;
    if let Some(sampler) = sampler {
        let leaks = if args.check_leaks {
            Some(monitor::check_idle(&probe, Duration::from_secs(args.settle)).await)
        } else {
            None
        };
        // The last sample, after the settle: what the server kept.
        let _ = stop_sampling.send(());
        let rss = sampler.await.unwrap_or_default();
        let warmup = Duration::from_secs(args.rss_warmup);
        report.soak = Some(monitor::soak_report(rss, warmup, args.max_rss_growth, leaks, report.server_errors));
    }
    Ok(report)
}

/// Runs `concurrency` clients until the limit and gathers their outcomes.
async fn run_clients(shared: &Arc<Shared>, concurrency: usize) -> Vec<Outcome> {
    let mut clients = JoinSet::new();
    for _ in 0..concurrency {
        clients.spawn(client_loop(shared.clone()));
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    while let Some(joined) = clients.join_next().await {
        // A client task only ends by returning; a panic would be a bug in this file.
        if let Ok(mut done) = joined {
            outcomes.append(&mut done);
        }
    }
    outcomes
}

/// One client: takes the next request number until the limit, sends, records.
async fn client_loop(shared: Arc<Shared>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let more = match shared.limit {
            Limit::Requests(n) => i < n,
            Limit::Until(t) => Instant::now() < t,
        };
        if !more {
            return outcomes;
        }
        let body = request::request_body(&shared.spec, &request_prompt(shared.seed, i));
        let plan = transports::plan(shared.seed, i, &shared.mix, shared.disconnect_ratio, shared.spec.max_tokens);
        shared.progress.started();
        let (key, drop_after) = (shared.api_key.as_deref(), plan.disconnect_after);
        let outcome = match plan.transport {
            Transport::Sse => {
                request::run_one(&shared.client, &shared.url, key, &body, shared.timeout, drop_after).await
            }
            Transport::Http => {
                transports::run_http(&shared.client, &shared.url, key, &body, shared.timeout, drop_after).await
            }
            Transport::Ws => transports::run_ws(&shared.ws_url, key, &body, shared.timeout, drop_after).await,
        };
        shared.progress.finished(&outcome);
        outcomes.push(outcome);
    }
}

/// The prompt of request `i`: its number first, so that no two requests share more than
/// the chat template's header — servers with a prompt cache (llama.cpp reuses a slot's
/// previous prompt) would otherwise skip the prefill of a repeated prompt, and the
/// comparison would measure caching instead of inference.
fn request_prompt(seed: u64, i: u64) -> String {
    format!("Request {i}: {}", prompts::prompt(prompts::prompt_index(seed, i)))
}

/// Rewrites the progress line on a terminal; elsewhere (logs, CI) prints a line every 5 s.
async fn show_progress(shared: Arc<Shared>, start: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        interval.tick().await;
        let p = &shared.progress;
        let secs = start.elapsed().as_secs_f64();
        let tokens = p.tokens.load(Ordering::Relaxed);
        let total = match shared.limit {
            Limit::Requests(n) => format!("/{n}"),
            Limit::Until(_) => String::new(),
        };
        let line = format!(
            "bench: {}{total} done, {} running, {} errors, {} dropped, {tokens} tokens, {:.1} tok/s, {secs:.1} s",
            p.done.load(Ordering::Relaxed),
            p.running.load(Ordering::Relaxed),
            p.errors.load(Ordering::Relaxed),
            p.disconnected.load(Ordering::Relaxed),
            tokens as f64 / secs.max(1e-9),
        );
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

/// `http://host:port/v1/` → `http://host:port/v1`; anything but an http URL is refused.
fn normalize_base_url(raw: &str) -> Result<String, BenchError> {
    let trimmed = raw.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(url) if url.scheme() == "http" && url.host_str().is_some() => Ok(trimmed.to_string()),
        _ => Err(BenchError::BaseUrl(raw.to_string())),
    }
}

/// The first model `GET {base}/models` lists.
async fn first_model(client: &reqwest::Client, base: &str, api_key: Option<&str>) -> Result<String, BenchError> {
    let url = format!("{base}/models");
    let fail = |message: String| BenchError::Models { url: url.clone(), message };
    let mut request = client.get(&url).timeout(Duration::from_secs(30));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| fail(request::error_chain(&e)))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| fail(request::error_chain(&e)))?;
    if !status.is_success() {
        return Err(fail(format!("HTTP {}: {}", status.as_u16(), sse::error_message(&text))));
    }
    first_model_id(&text).ok_or_else(|| fail("the response lists no model".into()))
}

/// `data[0].id` of a `/models` response.
fn first_model_id(text: &str) -> Option<String> {
    let list: serde_json::Value = serde_json::from_str(text).ok()?;
    list.get("data")?.get(0)?.get("id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(normalize_base_url("http://127.0.0.1:8080/v1/").unwrap(), "http://127.0.0.1:8080/v1");
        assert!(normalize_base_url("https://api.example.com/v1").is_err());
        assert!(normalize_base_url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn model_list() {
        let body = r#"{"object":"list","data":[{"id":"smol","object":"model"},{"id":"other"}]}"#;
        assert_eq!(first_model_id(body).as_deref(), Some("smol"));
        assert_eq!(first_model_id(r#"{"data":[]}"#), None);
        assert_eq!(first_model_id("<html>"), None);
    }

    #[test]
    fn prompts_are_numbered_and_seeded() {
        assert!(request_prompt(3, 17).starts_with("Request 17: "));
        assert_eq!(request_prompt(3, 17), request_prompt(3, 17));
    }
}
