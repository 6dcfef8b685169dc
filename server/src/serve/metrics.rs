//! Prometheus metrics, named as vLLM names them with the prefix `stellarchat:` (DESIGN.md).
//!
//! HTTP-level figures are recorded by the access log (one place per request); generation
//! figures by the generation driver when a sequence finishes; engine gauges and the prefix
//! cache's counters are read from [`EngineStats`] at scrape time so they can never drift from
//! the engine's own count.
//!
//! Generation and engine figures carry a `model` label (several models may be loaded); the
//! counters an engine keeps survive its unloading ([`Metrics::retire_engine`]).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use stellarchat_model::device::memory_budget::MemoryReport;
use stellarchat_model::engine::{EngineStats, Timings};

pub const PREFIX: &str = "stellarchat:";

/// The `kind` label values of `device_memory_bytes`.
const MEMORY_KINDS: [&str; 5] = ["capacity", "available", "weights", "workspace", "kv_cache"];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub errors_total: IntCounterVec,
    pub request_success_total: IntCounterVec,
    pub time_to_first_token_seconds: HistogramVec,
    pub inter_token_latency_seconds: HistogramVec,
    pub e2e_request_latency_seconds: HistogramVec,
    pub request_queue_time_seconds: HistogramVec,
    pub num_requests_running: IntGaugeVec,
    pub num_requests_waiting: IntGaugeVec,
    pub kv_cache_usage_perc: GaugeVec,
    pub prefix_cache_usage_perc: GaugeVec,
    /// The load's memory check on a GPU device, by `kind`: capacity, available, weights,
    /// workspace, kv_cache (the whole KV budget; the check itself counts the KV pool at its
    /// growth peak, up to 1.5 × this, `MemoryReport::kv_growth_peak`).
    pub device_memory_bytes: IntGaugeVec,
    /// The KV budget in tokens once loaded (on GPU devices sized from the free memory).
    pub kv_cache_budget_tokens: IntGaugeVec,
    /// Set at scrape time by the `/metrics` handler from the shutdown lifecycle's count.
    pub active_generations: IntGauge,
    pub prompt_tokens_total: IntCounterVec,
    pub generation_tokens_total: IntCounterVec,
    pub prefix_cache_queries_tokens_total: IntCounterVec,
    pub prefix_cache_hits_tokens_total: IntCounterVec,
    pub engine_failures_total: IntCounterVec,
    pub websocket_connections: IntGauge,
    /// Models whose engine is loaded and ready.
    pub models_loaded: IntGauge,
    pub model_loads_total: IntCounterVec,
    pub model_load_seconds: HistogramVec,
    pub model_unloads_total: IntCounterVec,
    /// What unloaded engines had counted, by model, so the counters never go back.
    retired: Mutex<HashMap<String, EngineTotals>>,
}

/// The counters an engine keeps itself (read at scrape time).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineTotals {
    pub prefix_cache_queries_tokens: u64,
    pub prefix_cache_hits_tokens: u64,
    pub step_failures: u64,
}

impl EngineTotals {
    fn of(stats: &EngineStats) -> Self {
        EngineTotals {
            prefix_cache_queries_tokens: stats.prefix_cache_queries_tokens,
            prefix_cache_hits_tokens: stats.prefix_cache_hits_tokens,
            step_failures: stats.step_failures,
        }
    }

    fn plus(self, other: EngineTotals) -> Self {
        EngineTotals {
            prefix_cache_queries_tokens: self.prefix_cache_queries_tokens + other.prefix_cache_queries_tokens,
            prefix_cache_hits_tokens: self.prefix_cache_hits_tokens + other.prefix_cache_hits_tokens,
            step_failures: self.step_failures + other.step_failures,
        }
    }
}

fn name(n: &str) -> String {
    format!("{PREFIX}{n}")
}

/// Latency buckets from 1 ms to ~80 s.
fn latency_buckets() -> Vec<f64> {
    vec![0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(name("requests_total"), "HTTP requests by route and status."),
            &["route", "status"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(name("request_duration_seconds"), "HTTP request duration (to the end of the stream).")
                .buckets(latency_buckets()),
            &["route"],
        )?;
        let errors_total =
            IntCounterVec::new(Opts::new(name("errors_total"), "Failed requests by error kind."), &["kind"])?;
        let request_success_total = IntCounterVec::new(
            Opts::new(name("request_success_total"), "Finished generations by finish reason and model."),
            &["finished_reason", "model"],
        )?;
        let histogram = |n: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name(n), help.to_string()).buckets(latency_buckets()), &["model"])
        };
        let by_model = |n: &str, help: &str| IntCounterVec::new(Opts::new(name(n), help.to_string()), &["model"]);
        let time_to_first_token_seconds = histogram("time_to_first_token_seconds", "Time to the first token.")?;
        let inter_token_latency_seconds = histogram("inter_token_latency_seconds", "Time between tokens.")?;
        let e2e_request_latency_seconds = histogram("e2e_request_latency_seconds", "Submit to finish.")?;
        let request_queue_time_seconds = histogram("request_queue_time_seconds", "Time waiting for a slot.")?;
        let gauge = |n: &str, help: &str| IntGaugeVec::new(Opts::new(name(n), help.to_string()), &["model"]);
        let num_requests_running = gauge("num_requests_running", "Sequences in the running batch.")?;
        let num_requests_waiting = gauge("num_requests_waiting", "Requests waiting for a slot.")?;
        let fraction = |n: &str, help: &str| GaugeVec::new(Opts::new(name(n), help.to_string()), &["model"]);
        let kv_cache_usage_perc = fraction("kv_cache_usage_perc", "Fraction of the model's KV cache in use (0-1).")?;
        // With no request running, all of the KV cache in use must be this part: the soak's
        // leak check (`stellarchat bench --check-leaks`) compares the two.
        let prefix_cache_usage_perc =
            fraction("prefix_cache_usage_perc", "Fraction of the KV cache held by the prefix cache for reuse (0-1).")?;
        let device_memory_bytes = IntGaugeVec::new(
            Opts::new(
                name("device_memory_bytes"),
                "GPU memory at the model's load, by kind: capacity and available (the device's, or --gpu-memory-limit), \
                 weights, workspace and kv_cache (estimated).",
            ),
            &["model", "kind"],
        )?;
        let kv_cache_budget_tokens =
            gauge("kv_cache_budget_tokens", "KV-cache positions the model's sequences may hold together.")?;
        let active_generations = IntGauge::new(
            name("active_generations"),
            "Generations in flight over HTTP and WebSocket (what graceful shutdown waits for).",
        )?;
        let prompt_tokens_total = by_model("prompt_tokens_total", "Prompt tokens processed.")?;
        let generation_tokens_total = by_model("generation_tokens_total", "Tokens generated.")?;
        let prefix_cache_queries_tokens_total =
            by_model("prefix_cache_queries_tokens_total", "Prompt tokens looked up in the prefix cache.")?;
        let prefix_cache_hits_tokens_total =
            by_model("prefix_cache_hits_tokens_total", "Prompt tokens found in the prefix cache (prefill skipped).")?;
        let engine_failures_total = by_model(
            "engine_failures_total",
            "Engine steps that panicked; their requests failed with a 500 and the engine served on.",
        )?;
        let websocket_connections = IntGauge::new(name("websocket_connections"), "Open WebSocket connections.")?;
        let models_loaded = IntGauge::new(name("models_loaded"), "Models loaded and ready.")?;
        let model_loads_total = IntCounterVec::new(
            Opts::new(name("model_loads_total"), "Model loads by outcome (loaded, failed)."),
            &["model", "outcome"],
        )?;
        let model_load_seconds = HistogramVec::new(
            HistogramOpts::new(name("model_load_seconds"), "Time from the start of a load to the model being ready.")
                .buckets(latency_buckets()),
            &["model"],
        )?;
        let model_unloads_total = IntCounterVec::new(
            Opts::new(name("model_unloads_total"), "Model unloads by reason (capacity, keep_alive, admin)."),
            &["model", "reason"],
        )?;

        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(errors_total.clone()))?;
        registry.register(Box::new(request_success_total.clone()))?;
        registry.register(Box::new(time_to_first_token_seconds.clone()))?;
        registry.register(Box::new(inter_token_latency_seconds.clone()))?;
        registry.register(Box::new(e2e_request_latency_seconds.clone()))?;
        registry.register(Box::new(request_queue_time_seconds.clone()))?;
        registry.register(Box::new(num_requests_running.clone()))?;
        registry.register(Box::new(num_requests_waiting.clone()))?;
        registry.register(Box::new(kv_cache_usage_perc.clone()))?;
        registry.register(Box::new(prefix_cache_usage_perc.clone()))?;
        registry.register(Box::new(device_memory_bytes.clone()))?;
        registry.register(Box::new(kv_cache_budget_tokens.clone()))?;
        registry.register(Box::new(active_generations.clone()))?;
        registry.register(Box::new(prompt_tokens_total.clone()))?;
        registry.register(Box::new(generation_tokens_total.clone()))?;
        registry.register(Box::new(prefix_cache_queries_tokens_total.clone()))?;
        registry.register(Box::new(prefix_cache_hits_tokens_total.clone()))?;
        registry.register(Box::new(engine_failures_total.clone()))?;
        registry.register(Box::new(websocket_connections.clone()))?;
        registry.register(Box::new(models_loaded.clone()))?;
        registry.register(Box::new(model_loads_total.clone()))?;
        registry.register(Box::new(model_load_seconds.clone()))?;
        registry.register(Box::new(model_unloads_total.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        Ok(Metrics {
            registry,
            requests_total,
            request_duration_seconds,
            errors_total,
            request_success_total,
            time_to_first_token_seconds,
            inter_token_latency_seconds,
            e2e_request_latency_seconds,
            request_queue_time_seconds,
            num_requests_running,
            num_requests_waiting,
            kv_cache_usage_perc,
            prefix_cache_usage_perc,
            device_memory_bytes,
            kv_cache_budget_tokens,
            active_generations,
            prompt_tokens_total,
            generation_tokens_total,
            prefix_cache_queries_tokens_total,
            prefix_cache_hits_tokens_total,
            engine_failures_total,
            websocket_connections,
            models_loaded,
            model_loads_total,
            model_load_seconds,
            model_unloads_total,
            retired: Mutex::new(HashMap::new()),
        })
    }

    /// One HTTP request is over (for streams: the stream is over).
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64, error_kind: Option<&str>) {
        self.requests_total.with_label_values(&[route, &status.to_string()]).inc();
        self.request_duration_seconds.with_label_values(&[route]).observe(seconds);
        if let Some(kind) = error_kind {
            self.errors_total.with_label_values(&[kind]).inc();
        }
    }

    /// One sequence of `model` finished normally.
    pub fn observe_finished(
        &self,
        model: &str,
        reason: &str,
        prompt_tokens: usize,
        completion_tokens: usize,
        timings: &Timings,
    ) {
        self.request_success_total.with_label_values(&[reason, model]).inc();
        self.prompt_tokens_total.with_label_values(&[model]).inc_by(prompt_tokens as u64);
        self.generation_tokens_total.with_label_values(&[model]).inc_by(completion_tokens as u64);
        let seconds = |later: std::time::Instant| later.duration_since(timings.submitted).as_secs_f64();
        self.e2e_request_latency_seconds.with_label_values(&[model]).observe(seconds(timings.finished));
        if let Some(scheduled) = timings.scheduled {
            self.request_queue_time_seconds.with_label_values(&[model]).observe(seconds(scheduled));
        }
        if let Some(first) = timings.first_token {
            self.time_to_first_token_seconds.with_label_values(&[model]).observe(seconds(first));
        }
    }

    /// Starts `model`'s series at zero (when it loads), so that a scrape before its first
    /// request already shows them, as unlabelled counters would.
    pub fn init_model(&self, model: &str) {
        let label = [model];
        for counter in [
            &self.prompt_tokens_total,
            &self.generation_tokens_total,
            &self.prefix_cache_queries_tokens_total,
            &self.prefix_cache_hits_tokens_total,
            &self.engine_failures_total,
        ] {
            counter.with_label_values(&label);
        }
        for histogram in [
            &self.time_to_first_token_seconds,
            &self.inter_token_latency_seconds,
            &self.e2e_request_latency_seconds,
            &self.request_queue_time_seconds,
        ] {
            histogram.with_label_values(&label);
        }
    }

    /// A load of `model` ended: `outcome` `loaded` (with its seconds) or `failed`.
    pub fn observe_model_load(&self, model: &str, outcome: &str, seconds: Option<f64>) {
        self.model_loads_total.with_label_values(&[model, outcome]).inc();
        if let Some(seconds) = seconds {
            self.model_load_seconds.with_label_values(&[model]).observe(seconds);
        }
    }

    pub fn observe_model_unload(&self, model: &str, reason: &str) {
        self.model_unloads_total.with_label_values(&[model, reason]).inc();
    }

    /// An engine of `model` stopped: what it counted stays in the model's counters.
    pub fn retire_engine(&self, model: &str, stats: &EngineStats) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let total = retired.entry(model.to_string()).or_default();
        *total = total.plus(EngineTotals::of(stats));
    }

    /// The memory gauges of `model`: its load's figures, or none (CPU device, unloaded).
    fn set_memory(&self, model: &str, memory: Option<MemoryReport>) {
        let Some(m) = memory else {
            for kind in MEMORY_KINDS {
                let _ = self.device_memory_bytes.remove_label_values(&[model, kind]);
            }
            let _ = self.kv_cache_budget_tokens.remove_label_values(&[model]);
            return;
        };
        let figures = [m.capacity, m.available, Some(m.weights), Some(m.workspace), Some(m.kv_cache)];
        for (kind, bytes) in MEMORY_KINDS.into_iter().zip(figures) {
            match bytes {
                Some(b) => self.device_memory_bytes.with_label_values(&[model, kind]).set(i64::try_from(b).unwrap_or(i64::MAX)),
                None => {
                    let _ = self.device_memory_bytes.remove_label_values(&[model, kind]);
                }
            }
        }
        self.kv_cache_budget_tokens.with_label_values(&[model]).set(i64::try_from(m.kv_tokens).unwrap_or(i64::MAX));
    }

    /// Prometheus text exposition, with the engine gauges refreshed first from the live
    /// engines' `stats` (by model id); `loaded`: models loaded and ready.
    pub fn render(&self, stats: &HashMap<String, EngineStats>, loaded: usize) -> Result<String, prometheus::Error> {
        self.models_loaded.set(loaded as i64);
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut models: Vec<&String> = stats.keys().chain(retired.keys()).collect();
        models.sort();
        models.dedup();
        for model in models {
            let live = stats.get(model).copied().unwrap_or_default();
            let label = [model.as_str()];
            self.num_requests_running.with_label_values(&label).set(live.running as i64);
            self.num_requests_waiting.with_label_values(&label).set(live.waiting as i64);
            self.kv_cache_usage_perc.with_label_values(&label).set(live.kv_cache_usage);
            self.prefix_cache_usage_perc.with_label_values(&label).set(live.prefix_cache_usage);
            self.set_memory(model, stats.get(model).and_then(|s| s.memory));
            // The engines count since their start; the counters catch up to the sum of the
            // unloaded ones and the live one (they only rise).
            let total = retired.get(model).copied().unwrap_or_default().plus(EngineTotals::of(&live));
            let catch_up = |counter: &IntCounterVec, total: u64| {
                let counter = counter.with_label_values(&label);
                counter.inc_by(total.saturating_sub(counter.get()));
            };
            catch_up(&self.prefix_cache_queries_tokens_total, total.prefix_cache_queries_tokens);
            catch_up(&self.prefix_cache_hits_tokens_total, total.prefix_cache_hits_tokens);
            catch_up(&self.engine_failures_total, total.step_failures);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
