//! Sampling fields shared by chat and completions: ranges, `logit_bias`, `n`,
//! `max_tokens`, stop sequences, `stream_options` → a [`GenerationSpec`].

use super::{
    Context, GenerationSpec, MAX_LOGIT_BIAS, MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS,
};
use crate::serve::error::ApiError;
use crate::serve::protocol::{LogitBias, StopField};

pub(super) fn check_top_logprobs(param: &str, k: i64) -> Result<usize, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS).contains(&k) {
        return Err(ApiError::invalid(param, format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}; got {k}.")));
    }
    Ok(k as usize)
}

pub(super) fn token_id(t: i64, vocab: usize, param: &str) -> Result<u32, ApiError> {
    if t < 0 || t as u64 >= vocab as u64 {
        return Err(ApiError::invalid(
            param,
            format!("Token id {t} is out of range (the vocabulary has {vocab} tokens)."),
        ));
    }
    Ok(t as u32)
}

/// The sampling-related fields common to both request types, as they came in.
pub(super) struct SpecFields {
    pub(super) temperature: Option<f64>,
    pub(super) top_p: Option<f64>,
    pub(super) top_k: Option<i64>,
    pub(super) min_p: Option<f64>,
    pub(super) repetition_penalty: Option<f64>,
    pub(super) presence_penalty: Option<f64>,
    pub(super) frequency_penalty: Option<f64>,
    pub(super) logit_bias: Option<LogitBias>,
    pub(super) seed: Option<i64>,
    pub(super) max_tokens: Option<i64>,
    pub(super) max_tokens_param: &'static str,
    pub(super) stop: Option<StopField>,
    pub(super) stop_token_ids: Option<Vec<i64>>,
    pub(super) ignore_eos: Option<bool>,
    pub(super) skip_special_tokens: Option<bool>,
    pub(super) logprobs: Option<usize>,
    pub(super) n: Option<i64>,
    pub(super) stream: Option<bool>,
    /// `Some(..)` when `stream_options` was given.
    pub(super) include_usage: Option<Option<bool>>,
}

fn in_range(param: &str, v: f64, lo: f64, hi: f64, lo_open: bool) -> Result<f32, ApiError> {
    let ok = if lo_open { v > lo && v <= hi } else { v >= lo && v <= hi };
    if !ok || !v.is_finite() {
        let interval =
            if lo_open { format!("greater than {lo} and at most {hi}") } else { format!("between {lo} and {hi}") };
        return Err(ApiError::invalid(param, format!("`{param}` must be {interval}; got {v}.")));
    }
    Ok(v as f32)
}

pub(super) fn build_spec(f: SpecFields, ctx: &Context<'_>) -> Result<GenerationSpec, ApiError> {
    let limits = ctx.limits;
    // Fields left out take the checkpoint's recommendation, else OpenAI's default.
    let defaults = ctx.defaults;
    let temperature = in_range("temperature", f.temperature.or(defaults.temperature).unwrap_or(1.0), 0.0, 2.0, false)?;
    let top_p = in_range("top_p", f.top_p.or(defaults.top_p).unwrap_or(1.0), 0.0, 1.0, true)?;
    let top_k = match f.top_k.or(defaults.top_k.map(|k| k as i64)).unwrap_or(0) {
        // vLLM uses −1 for "off"; 0 means the same here.
        -1 | 0 => 0,
        k if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        k => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1, 0 (off) or positive; got {k}."))),
    };
    let min_p = in_range("min_p", f.min_p.unwrap_or(0.0), 0.0, 1.0, false)?;
    let repetition_penalty = in_range("repetition_penalty", f.repetition_penalty.or(defaults.repetition_penalty).unwrap_or(1.0), 0.0, 2.0, true)?;
    let presence_penalty = in_range("presence_penalty", f.presence_penalty.unwrap_or(0.0), -2.0, 2.0, false)?;
    let frequency_penalty = in_range("frequency_penalty", f.frequency_penalty.unwrap_or(0.0), -2.0, 2.0, false)?;

    let mut logit_bias = Vec::new();
    if let Some(map) = f.logit_bias {
        if map.len() > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid("logit_bias", format!("At most {MAX_LOGIT_BIAS} entries in `logit_bias`.")));
        }
        for (key, bias) in map {
            let param = format!("logit_bias.{key}");
            let id: i64 = key.trim().parse().map_err(|_| {
                ApiError::invalid(param.clone(), format!("`logit_bias` keys must be token ids; got '{key}'."))
            })?;
            let id = token_id(id, limits.vocab_size, &param)?;
            let bias = in_range(&param, bias, -100.0, 100.0, false)?;
            logit_bias.push((id, bias));
        }
    }

    let n = f.n.unwrap_or(1);
    if n < 1 || n as u64 > limits.max_n as u64 {
        return Err(ApiError::invalid("n", format!("`n` must be between 1 and {}; got {n}.", limits.max_n)));
    }

    let max_tokens = match f.max_tokens {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                f.max_tokens_param,
                format!("`{}` must be at least 1; got {m}.", f.max_tokens_param),
            ));
        }
        Some(m) if m as u64 > limits.max_tokens_limit as u64 => {
            return Err(ApiError::invalid(
                f.max_tokens_param,
                format!("`{}` must be at most {}; got {m}.", f.max_tokens_param, limits.max_tokens_limit),
            ));
        }
        Some(m) => Some(m as usize),
    };

    let stop = f.stop.map(StopField::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("At most {MAX_STOP_STRINGS} stop sequences; got {}.", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "Stop sequences must not be empty."));
    }
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid("stop", format!("Stop sequences must be at most {MAX_STOP_BYTES} bytes.")));
    }

    let stop_token_ids = f.stop_token_ids.unwrap_or_default();
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid("stop_token_ids", format!("At most {MAX_STOP_TOKEN_IDS} stop token ids.")));
    }
    let stop_token_ids =
        stop_token_ids.iter().map(|&t| token_id(t, limits.vocab_size, "stop_token_ids")).collect::<Result<_, _>>()?;

    let stream = f.stream.unwrap_or(false);
    if f.include_usage.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true."));
    }

    Ok(GenerationSpec {
        temperature,
        top_p,
        top_k,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        logit_bias,
        // OpenAI's seed is a signed integer; its bits are the seed.
        seed: f.seed.map(|s| s as u64),
        max_tokens,
        max_tokens_param: f.max_tokens_param,
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        logprobs: f.logprobs,
        n: n as usize,
        stream,
        include_usage: f.include_usage.flatten().unwrap_or(false),
        constraint: None,
    })
}
