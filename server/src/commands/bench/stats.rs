//! The benchmark's figures: per-request samples in, one report out (text or JSON).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// What one successful request measured.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Time to the first content chunk; `None` when the reply had no content at all.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content chunks.
    pub itls: Vec<Duration>,
    /// Send to end of stream.
    pub e2e: Duration,
    /// From the usage chunk, else the number of content chunks.
    pub output_tokens: u64,
    /// The usage chunk's `prompt_tokens`, and the part of them the server's cache reused
    /// (`prompt_tokens_details.cached_tokens`), when it sent them.
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    /// The answer's text as streamed (SSE and WebSocket; empty over plain HTTP).
    pub text: String,
}

/// The `p`-th percentile (0–100) of ascending `sorted`, interpolating linearly between the
/// closest ranks (numpy's default, so figures match other tools' on the same data).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi.min(last)]);
    Some(a + (b - a) * (rank - lo as f64))
}

/// p50/p95/p99 and mean of a set of latencies, in milliseconds (`None` when empty).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(durations: impl IntoIterator<Item = Duration>) -> Option<Self> {
        let mut ms: Vec<f64> = durations.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        Some(Percentiles {
            p50: percentile(&ms, 50.0)?,
            p95: percentile(&ms, 95.0)?,
            p99: percentile(&ms, 99.0)?,
            mean,
        })
    }
}

/// Outcomes that are not samples or errors' kinds: counted by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Requests the client dropped on purpose (`--disconnect-ratio`).
    pub disconnected: u64,
    /// Errors that are the server's fault (5xx, or an error inside a stream).
    pub server_errors: u64,
}

/// The whole run's figures; `--json` prints this object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base_url: String,
    pub model: String,
    pub concurrency: usize,
    pub max_tokens: u32,
    pub seed: u64,
    /// Requests finished, successful or not.
    pub requests: u64,
    pub successful: u64,
    pub errors: u64,
    /// Dropped by the client on purpose: neither successful nor errors.
    pub disconnected: u64,
    /// Of the errors: HTTP 4xx, and the server's faults (5xx, errors inside a stream).
    pub client_errors: u64,
    pub server_errors: u64,
    /// Error count by kind (`http_429`, `timeout`, `error_event`, …).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first message seen for each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// Wall time from the first request sent to the last one finished.
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens: u64,
    pub output_tokens_per_s: f64,
    pub ttft_ms: Option<Percentiles>,
    pub itl_ms: Option<Percentiles>,
    pub e2e_ms: Option<Percentiles>,
    /// The multi-turn mode's figures per turn (`--conversations`), beside the totals above.
    #[serde(flatten)]
    pub multi_turn: Option<super::conversation::MultiTurn>,
    /// RSS curve and leak check (`--rss-pid`, `--check-leaks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<super::monitor::SoakReport>,
}

/// Run parameters that go into the report unchanged.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub base_url: String,
    pub model: String,
    pub concurrency: usize,
    pub max_tokens: u32,
    pub seed: u64,
}

/// Errors as (kind, message) pairs, in the order they happened.
pub fn report(info: RunInfo, samples: &[Sample], errors: &[(String, String)], tally: Tally, wall: Duration) -> Report {
    let secs = wall.as_secs_f64();
    let per_s = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    let output_tokens: u64 = samples.iter().map(|s| s.output_tokens).sum();
    let mut errors_by_kind = BTreeMap::new();
    let mut error_examples = BTreeMap::new();
    for (kind, message) in errors {
        *errors_by_kind.entry(kind.clone()).or_insert(0) += 1;
        error_examples.entry(kind.clone()).or_insert_with(|| message.clone());
    }
    Report {
        base_url: info.base_url,
        model: info.model,
        concurrency: info.concurrency,
        max_tokens: info.max_tokens,
        seed: info.seed,
        requests: samples.len() as u64 + errors.len() as u64 + tally.disconnected,
        successful: samples.len() as u64,
        errors: errors.len() as u64,
        disconnected: tally.disconnected,
        client_errors: errors.iter().filter(|(kind, _)| kind.starts_with("http_4")).count() as u64,
        server_errors: tally.server_errors,
        errors_by_kind,
        error_examples,
        duration_s: secs,
        requests_per_s: per_s(samples.len() as f64),
        output_tokens,
        output_tokens_per_s: per_s(output_tokens as f64),
        ttft_ms: Percentiles::of(samples.iter().filter_map(|s| s.ttft)),
        itl_ms: Percentiles::of(samples.iter().flat_map(|s| s.itls.iter().copied())),
        e2e_ms: Percentiles::of(samples.iter().map(|s| s.e2e)),
        multi_turn: None,
        soak: None,
    }
}

/// Milliseconds with precision that suits their size: `0.84 ms`, `12.3 ms`, `456 ms`, `7.89 s`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn fmt_percentiles(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {:>9}   p95 {:>9}   p99 {:>9}   mean {:>9}",
            fmt_ms(p.p50),
            fmt_ms(p.p95),
            fmt_ms(p.p99),
            fmt_ms(p.mean)
        ),
        None => "—".to_string(),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "server       {} (model {})", self.base_url, self.model)?;
        let clients = if self.concurrency == 1 { "client" } else { "clients" };
        writeln!(f, "load         {} {clients}, max_tokens {}, seed {}", self.concurrency, self.max_tokens, self.seed)?;
        writeln!(
            f,
            "requests     {} ok, {} errors ({} 4xx, {} 5xx), {} dropped by the client, in {:.2} s",
            self.successful, self.errors, self.client_errors, self.server_errors, self.disconnected, self.duration_s
        )?;
        writeln!(
            f,
            "throughput   {:.2} req/s, {:.1} output tok/s ({} output tokens)",
            self.requests_per_s, self.output_tokens_per_s, self.output_tokens
        )?;
        writeln!(f, "TTFT         {}", fmt_percentiles(self.ttft_ms))?;
        writeln!(f, "ITL          {}", fmt_percentiles(self.itl_ms))?;
        write!(f, "e2e          {}", fmt_percentiles(self.e2e_ms))?;
        for (kind, count) in &self.errors_by_kind {
            let example = self.error_examples.get(kind).map(String::as_str).unwrap_or("");
            write!(f, "\nerror        {kind} ×{count}: {example}")?;
        }
        if let Some(multi_turn) = &self.multi_turn {
            write!(f, "\n{multi_turn}")?;
        }
        if let Some(soak) = &self.soak {
            write!(f, "\n{soak}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        // numpy.percentile([1,2,3,4], 95) == 3.85
        assert!((percentile(&v, 95.0).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentiles_of_durations_sort_first() {
        let p = Percentiles::of([ms(30), ms(10), ms(20)]).unwrap();
        assert_eq!(p.p50, 20.0);
        assert_eq!(p.mean, 20.0);
        assert!(Percentiles::of([]).is_none());
    }

    #[test]
    fn report_counts_and_rates() {
        let info = RunInfo { base_url: "u".into(), model: "m".into(), concurrency: 2, max_tokens: 4, seed: 0 };
        let samples = vec![
            Sample { ttft: Some(ms(100)), itls: vec![ms(10), ms(20)], e2e: ms(130), output_tokens: 3, ..Sample::default() },
            Sample { ttft: None, itls: vec![], e2e: ms(50), output_tokens: 0, ..Sample::default() },
        ];
        let errors = vec![("http_429".to_string(), "queue full".to_string()), ("http_429".into(), "again".into())];
        let tally = Tally { disconnected: 1, server_errors: 0 };
        let r = report(info, &samples, &errors, tally, Duration::from_secs(2));
        assert_eq!((r.requests, r.successful, r.errors, r.disconnected), (5, 2, 2, 1));
        assert_eq!((r.client_errors, r.server_errors), (2, 0));
        assert_eq!(r.errors_by_kind["http_429"], 2);
        assert_eq!(r.error_examples["http_429"], "queue full");
        assert_eq!(r.requests_per_s, 1.0);
        assert_eq!(r.output_tokens_per_s, 1.5);
        assert_eq!(r.ttft_ms.unwrap().p99, 100.0);
        assert_eq!(r.itl_ms.unwrap().p50, 15.0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["e2e_ms"]["p50"], 90.0);
        let text = r.to_string();
        assert!(text.contains("http_429 ×2: queue full"), "{text}");
    }

    #[test]
    fn millisecond_formatting() {
        assert_eq!(fmt_ms(0.8449), "0.84 ms");
        assert_eq!(fmt_ms(12.34), "12.3 ms");
        assert_eq!(fmt_ms(456.4), "456 ms");
        assert_eq!(fmt_ms(7890.0), "7.89 s");
    }
}
