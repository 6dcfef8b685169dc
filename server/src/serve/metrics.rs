//! Prometheus metrics, named as vLLM names them with the prefix `stellarchat:` (DESIGN.md).
//!
//! HTTP-level figures are recorded by the access log (one place per request); generation
//! figures by the generation driver when a sequence finishes; engine gauges and the prefix
//! cache's counters are read from [`EngineStats`] at scrape time so they can never drift from
//! the engine's own count.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use stellarchat_model::engine::{EngineStats, Timings};

pub const PREFIX: &str = "stellarchat:";

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub errors_total: IntCounterVec,
    pub request_success_total: IntCounterVec,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
    pub request_queue_time_seconds: Histogram,
    pub num_requests_running: IntGauge,
    pub num_requests_waiting: IntGauge,
    pub kv_cache_usage_perc: Gauge,
    pub prefix_cache_usage_perc: Gauge,
    /// Set at scrape time by the `/metrics` handler from the shutdown lifecycle's count.
    pub active_generations: IntGauge,
    pub prompt_tokens_total: IntCounter,
    pub generation_tokens_total: IntCounter,
    pub prefix_cache_queries_tokens_total: IntCounter,
    pub prefix_cache_hits_tokens_total: IntCounter,
    pub engine_failures_total: IntCounter,
    pub websocket_connections: IntGauge,
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
            Opts::new(name("request_success_total"), "Finished generations by finish reason."),
            &["finished_reason"],
        )?;
        let histogram = |n: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name(n), help.to_string()).buckets(latency_buckets()))
        };
        let time_to_first_token_seconds = histogram("time_to_first_token_seconds", "Time to the first token.")?;
        let inter_token_latency_seconds = histogram("inter_token_latency_seconds", "Time between tokens.")?;
        let e2e_request_latency_seconds = histogram("e2e_request_latency_seconds", "Submit to finish.")?;
        let request_queue_time_seconds = histogram("request_queue_time_seconds", "Time waiting for a slot.")?;
        let num_requests_running = IntGauge::new(name("num_requests_running"), "Sequences in the running batch.")?;
        let num_requests_waiting = IntGauge::new(name("num_requests_waiting"), "Requests waiting for a slot.")?;
        let kv_cache_usage_perc = Gauge::new(name("kv_cache_usage_perc"), "Fraction of the KV cache in use (0-1).")?;
        // With no request running, all of the KV cache in use must be this part: the soak's
        // leak check (`stellarchat bench --check-leaks`) compares the two.
        let prefix_cache_usage_perc = Gauge::new(
            name("prefix_cache_usage_perc"),
            "Fraction of the KV cache held by the prefix cache for reuse (0-1).",
        )?;
        let active_generations = IntGauge::new(
            name("active_generations"),
            "Generations in flight over HTTP and WebSocket (what graceful shutdown waits for).",
        )?;
        let prompt_tokens_total = IntCounter::new(name("prompt_tokens_total"), "Prompt tokens processed.")?;
        let generation_tokens_total = IntCounter::new(name("generation_tokens_total"), "Tokens generated.")?;
        let prefix_cache_queries_tokens_total = IntCounter::new(
            name("prefix_cache_queries_tokens_total"),
            "Prompt tokens looked up in the prefix cache.",
        )?;
        let prefix_cache_hits_tokens_total = IntCounter::new(
            name("prefix_cache_hits_tokens_total"),
            "Prompt tokens found in the prefix cache (prefill skipped).",
        )?;
        let engine_failures_total = IntCounter::new(
            name("engine_failures_total"),
            "Engine steps that panicked; their requests failed with a 500 and the engine served on.",
        )?;
        let websocket_connections = IntGauge::new(name("websocket_connections"), "Open WebSocket connections.")?;

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
        registry.register(Box::new(active_generations.clone()))?;
        registry.register(Box::new(prompt_tokens_total.clone()))?;
        registry.register(Box::new(generation_tokens_total.clone()))?;
        registry.register(Box::new(prefix_cache_queries_tokens_total.clone()))?;
        registry.register(Box::new(prefix_cache_hits_tokens_total.clone()))?;
        registry.register(Box::new(engine_failures_total.clone()))?;
        registry.register(Box::new(websocket_connections.clone()))?;
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
            active_generations,
            prompt_tokens_total,
            generation_tokens_total,
            prefix_cache_queries_tokens_total,
            prefix_cache_hits_tokens_total,
            engine_failures_total,
            websocket_connections,
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

    /// One sequence finished normally.
    pub fn observe_finished(&self, reason: &str, prompt_tokens: usize, completion_tokens: usize, timings: &Timings) {
        self.request_success_total.with_label_values(&[reason]).inc();
        self.prompt_tokens_total.inc_by(prompt_tokens as u64);
        self.generation_tokens_total.inc_by(completion_tokens as u64);
        self.e2e_request_latency_seconds.observe(timings.finished.duration_since(timings.submitted).as_secs_f64());
        if let Some(scheduled) = timings.scheduled {
            self.request_queue_time_seconds.observe(scheduled.duration_since(timings.submitted).as_secs_f64());
        }
        if let Some(first) = timings.first_token {
            self.time_to_first_token_seconds.observe(first.duration_since(timings.submitted).as_secs_f64());
        }
    }

    /// Prometheus text exposition, with the engine gauges refreshed first.
    pub fn render(&self, stats: &EngineStats) -> Result<String, prometheus::Error> {
        self.num_requests_running.set(stats.running as i64);
        self.num_requests_waiting.set(stats.waiting as i64);
        self.kv_cache_usage_perc.set(stats.kv_cache_usage);
        self.prefix_cache_usage_perc.set(stats.prefix_cache_usage);
        // The engine counts since its start; the counters catch up to it (they only rise).
        let catch_up = |counter: &IntCounter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        catch_up(&self.prefix_cache_queries_tokens_total, stats.prefix_cache_queries_tokens);
        catch_up(&self.prefix_cache_hits_tokens_total, stats.prefix_cache_hits_tokens);
        catch_up(&self.engine_failures_total, stats.step_failures);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
