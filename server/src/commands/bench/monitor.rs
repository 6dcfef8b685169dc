//! The soak side of `bench`: the server's resident memory sampled while the load runs
//! (`--rss-pid`, else the `process_resident_memory_bytes` it exports), and after the load,
//! the leak check (`--check-leaks`): once the server has settled, no request running or
//! waiting, no generation in flight, no WebSocket open, the KV cache held by the prefix
//! cache only, and the memory grown by less than `--max-rss-growth` since the warm-up.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where the server's resident set size is read.
#[derive(Debug, Clone)]
pub enum RssSource {
    /// `/proc/PID/status` (a server on this machine).
    Pid(u32),
    /// The server's `/metrics` (Prometheus' `process_resident_memory_bytes`).
    Metrics,
}

/// One RSS sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since the load started.
    pub at_s: f64,
    pub bytes: u64,
}

/// Reads the server's `/metrics` and RSS.
#[derive(Clone)]
pub struct Probe {
    client: reqwest::Client,
    metrics_url: String,
    api_key: Option<String>,
    rss: RssSource,
}

impl Probe {
    /// `base` is the API's base URL (`…/v1`); `/metrics` is beside `/v1`.
    pub fn new(client: reqwest::Client, base: &str, api_key: Option<String>, rss: RssSource) -> Self {
        let root = base.strip_suffix("/v1").unwrap_or(base);
        Probe { client, metrics_url: format!("{root}/metrics"), api_key, rss }
    }

    /// The `/metrics` text, or why not.
    pub async fn metrics(&self) -> Result<String, String> {
        let mut request = self.client.get(&self.metrics_url).timeout(Duration::from_secs(30));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| super::request::error_chain(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| super::request::error_chain(&e))?;
        if !status.is_success() {
            return Err(format!("GET {} answered HTTP {}", self.metrics_url, status.as_u16()));
        }
        Ok(text)
    }

    /// The server's RSS in bytes, or why it could not be read.
    pub async fn rss(&self) -> Result<u64, String> {
        match self.rss {
            RssSource::Pid(pid) => {
                let path = format!("/proc/{pid}/status");
                let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                proc_status_rss(&status).ok_or_else(|| format!("{path} has no VmRSS line"))
            }
            RssSource::Metrics => {
                let text = self.metrics().await?;
                metric_value(&text, "process_resident_memory_bytes")
                    .map(|v| v as u64)
                    .ok_or_else(|| "the server's /metrics has no process_resident_memory_bytes".to_string())
            }
        }
    }
}

/// `VmRSS:  123456 kB` of a `/proc/PID/status`, in bytes.
pub fn proc_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The value of the sample `name` in Prometheus text: the sum over its label sets (one per
/// model), or the unlabelled sample.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let matching = text.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let labelled = key.strip_prefix(name).is_some_and(|rest| rest.starts_with('{'));
        (key == name || labelled).then(|| value.trim().parse::<f64>().ok()).flatten()
    });
    matching.fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// The leak check's verdict, in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LeakCheck {
    /// Seconds waited after the load for the server to go idle.
    pub settle_s: f64,
    /// The conditions that failed (empty: no leak found).
    pub failures: Vec<String>,
    /// Every condition with its figures, for the record.
    pub checked: Vec<String>,
}

/// The engine and server gauges that must read zero, by `stellarchat:` metric name.
const MUST_BE_ZERO: [&str; 4] =
    ["num_requests_running", "num_requests_waiting", "active_generations", "websocket_connections"];

/// What is still held in `metrics` (empty when idle and leak-free), and the figures read.
pub fn idle_failures(metrics: &str) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    let read = |name: &str| metric_value(metrics, &format!("stellarchat:{name}"));
    for name in MUST_BE_ZERO {
        match read(name) {
            Some(v) if v == 0.0 => checked.push(format!("{name} = 0")),
            Some(v) => failures.push(format!("{name} = {v} after the load (expected 0)")),
            None => failures.push(format!("the server does not export stellarchat:{name}")),
        }
    }
    match (read("kv_cache_usage_perc"), read("prefix_cache_usage_perc")) {
        // Both are fractions of one block budget: equal means no sequence holds a block.
        (Some(kv), Some(prefix)) if (kv - prefix).abs() < 1e-9 => {
            checked.push(format!("KV cache in use {:.2} % = held by the prefix cache", kv * 100.0))
        }
        (Some(kv), Some(prefix)) => failures.push(format!(
            "KV cache in use {:.3} % but the prefix cache holds {:.3} %: blocks are held by no request",
            kv * 100.0,
            prefix * 100.0
        )),
        _ => failures.push("the server does not export kv_cache_usage_perc and prefix_cache_usage_perc".into()),
    }
    (failures, checked)
}

/// Polls `/metrics` until the server is idle and leak-free, or `settle` passes; returns
/// what failed at the last look.
pub async fn check_idle(probe: &Probe, settle: Duration) -> LeakCheck {
    let start = Instant::now();
    loop {
        let (failures, checked) = match probe.metrics().await {
            Ok(text) => idle_failures(&text),
            Err(e) => (vec![format!("reading /metrics failed: {e}")], vec![]),
        };
        if failures.is_empty() || start.elapsed() >= settle {
            return LeakCheck { settle_s: start.elapsed().as_secs_f64(), failures, checked };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// RSS growth from the first sample at or after `warmup` to the last, as a fraction; `None`
/// with fewer than two such samples.
pub fn rss_growth(samples: &[RssSample], warmup: Duration) -> Option<(RssSample, RssSample, f64)> {
    let after: Vec<&RssSample> = samples.iter().filter(|s| s.at_s >= warmup.as_secs_f64()).collect();
    let (first, last) = (**after.first()?, **after.last()?);
    (after.len() >= 2 && first.bytes > 0).then(|| (first, last, last.bytes as f64 / first.bytes as f64 - 1.0))
}

/// Samples the RSS now and every `interval` until `stop` fires, then once more; prints each
/// sample on stderr as it comes (a soak's memory curve), and returns them all.
pub async fn sample_rss(
    probe: Probe,
    start: Instant,
    interval: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<RssSample> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(interval);
    let mut warned = false;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stop => true,
        };
        match probe.rss().await {
            Ok(bytes) => {
                let sample = RssSample { at_s: start.elapsed().as_secs_f64(), bytes };
                eprintln!(
                    "rss {:>7.0} s  {:>10}{}",
                    sample.at_s,
                    mib(bytes),
                    if last { "  (after the load)" } else { "" }
                );
                samples.push(sample);
            }
            Err(e) if !warned => {
                warned = true;
                eprintln!("rss: cannot read the server's RSS: {e}");
            }
            Err(_) => {}
        }
        if last {
            return samples;
        }
    }
}

/// The soak figures and verdict: the RSS curve, its growth after the warm-up, the leak check.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub rss: Vec<RssSample>,
    /// Growth from the first sample after the warm-up to the last (after the load), percent.
    pub rss_growth_pct: Option<f64>,
    pub leak_check: Option<LeakCheck>,
    /// Why the soak failed (empty: it passed).
    pub failures: Vec<String>,
}

/// The verdict from the samples, the leak check and the count of server errors (a leak
/// check also demands no 5xx).
pub fn soak_report(
    rss: Vec<RssSample>,
    warmup: Duration,
    max_growth_pct: Option<f64>,
    leak_check: Option<LeakCheck>,
    server_errors: u64,
) -> SoakReport {
    let growth = rss_growth(&rss, warmup);
    let mut failures = leak_check.as_ref().map(|l| l.failures.clone()).unwrap_or_default();
    if leak_check.is_some() && server_errors > 0 {
        failures.push(format!("{server_errors} requests failed with a server error (5xx or an error in the stream)"));
    }
    match (max_growth_pct, growth) {
        (Some(max), Some((first, last, g))) if g * 100.0 > max => failures.push(format!(
            "RSS grew {:.1} % after the warm-up ({} at {:.0} s → {} at {:.0} s), more than {max} %",
            g * 100.0,
            mib(first.bytes),
            first.at_s,
            mib(last.bytes),
            last.at_s
        )),
        (Some(_), None) => failures.push(format!(
            "too few RSS samples after the {} s warm-up to measure growth (lower --rss-warmup or --sample-interval)",
            warmup.as_secs()
        )),
        _ => {}
    }
    SoakReport { rss, rss_growth_pct: growth.map(|(_, _, g)| g * 100.0), leak_check, failures }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let curve: Vec<String> = self.rss.iter().map(|s| format!("{:.0}s {}", s.at_s, mib(s.bytes))).collect();
        write!(f, "RSS          {}", curve.join(", "))?;
        if let Some(g) = self.rss_growth_pct {
            write!(f, "\nRSS growth   {g:+.2} % after the warm-up")?;
        }
        if let Some(leaks) = &self.leak_check {
            write!(f, "\nleak check   after {:.1} s settle: {}", leaks.settle_s, leaks.checked.join("; "))?;
        }
        match self.failures.as_slice() {
            [] => write!(f, "\nsoak         passed"),
            failures => write!(f, "\nsoak         FAILED: {}", failures.join("; ")),
        }
    }
}

/// `123.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: &str = "# HELP x\nstellarchat:num_requests_running 0\nstellarchat:num_requests_waiting 0\n\
        stellarchat:active_generations 0\nstellarchat:websocket_connections 0\n\
        stellarchat:kv_cache_usage_perc 0.25\nstellarchat:prefix_cache_usage_perc 0.25\n\
        process_resident_memory_bytes 1.2e8\n";

    #[test]
    fn metric_values_and_proc_status() {
        assert_eq!(metric_value(IDLE, "process_resident_memory_bytes"), Some(1.2e8));
        assert_eq!(metric_value(IDLE, "stellarchat:num_requests"), None);
        let two_models = "x{model=\"a\"} 0.25\nx{model=\"b/c\"} 0.5\nxy 7\n";
        assert_eq!(metric_value(two_models, "x"), Some(0.75), "summed over models");
        assert_eq!(proc_status_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(proc_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn idle_server_passes_and_each_leak_is_named() {
        let (failures, checked) = idle_failures(IDLE);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(checked.len(), 5);
        let running = IDLE.replace("running 0", "running 2");
        assert!(idle_failures(&running).0[0].contains("num_requests_running = 2"));
        let held = IDLE.replace("kv_cache_usage_perc 0.25", "kv_cache_usage_perc 0.3");
        assert!(idle_failures(&held).0[0].contains("held by no request"));
        assert_eq!(idle_failures("").0.len(), 5);
    }

    #[test]
    fn growth_is_measured_from_the_warm_up() {
        let s = |at_s: f64, mb: u64| RssSample { at_s, bytes: mb << 20 };
        let samples = [s(0.0, 50), s(60.0, 100), s(120.0, 102), s(180.0, 104)];
        let (first, last, growth) = rss_growth(&samples, Duration::from_secs(60)).unwrap();
        assert_eq!((first.bytes, last.bytes), (100 << 20, 104 << 20));
        assert!((growth - 0.04).abs() < 1e-9);
        assert!(rss_growth(&samples, Duration::from_secs(170)).is_none());
        assert_eq!(mib(3 << 19), "1.5 MiB");
    }

    #[test]
    fn soak_verdict() {
        let s = |at_s: f64, mb: u64| RssSample { at_s, bytes: mb << 20 };
        let steady = vec![s(0.0, 50), s(60.0, 100), s(120.0, 101)];
        let idle = || Some(LeakCheck { settle_s: 0.5, failures: vec![], checked: vec!["ok".into()] });
        let warmup = Duration::from_secs(60);
        let pass = soak_report(steady.clone(), warmup, Some(5.0), idle(), 0);
        assert!(pass.failures.is_empty(), "{:?}", pass.failures);
        assert!(pass.to_string().contains("passed"), "{pass}");
        let grown = soak_report(vec![s(60.0, 100), s(120.0, 110)], warmup, Some(5.0), idle(), 0);
        assert!(grown.failures[0].contains("RSS grew 10.0 %"), "{:?}", grown.failures);
        let errors = soak_report(steady.clone(), warmup, None, idle(), 3);
        assert!(errors.failures[0].starts_with("3 requests failed"), "{:?}", errors.failures);
        assert!(soak_report(steady, Duration::from_secs(600), Some(5.0), None, 0).failures[0].contains("too few"));
    }
}
