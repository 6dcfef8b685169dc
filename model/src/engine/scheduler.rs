//! Which sequences the engine works on, and how much of each, in the next step: pure
//! functions over small views, so the policy is tested without a model.
//!
//! Every policy gives each decoding sequence its one pending token in every step: a stream
//! never sits a step out. What differs is how prompt tokens (prefill) are handed out and in
//! which order waiting requests are admitted ([`SchedulerPolicy`]):
//!
//! - **`Fifo`** (the engine before the latency policy; kept selectable to measure against):
//!   prompts still being prefilled get chunks oldest first until `max_prefill_tokens` are
//!   spent, and admission starts requests strictly in arrival order, so a request that does
//!   not fit blocks every one behind it.
//! - **`Latency`** (the default): the step's prefill budget shrinks while many streams
//!   decode ([`prefill_budget`]), prompts are prefilled shortest remaining first, and
//!   admission uses the same order with the prompt's cached prefix taken off (a prompt that is
//!   mostly cached is cheap). Both orders age, so long prompts are not starved by a stream of
//!   short ones: a prompt that has waited [`Scheduling::ageing_steps`] steps since it arrived
//!   is aged. The oldest aged prompt being prefilled takes up to half of each step's budget
//!   first (all of it if the others leave some), the rest still going shortest first, so it
//!   progresses by at least half the floor a step while short prompts keep starting. Aged
//!   waiting requests are admitted before younger ones, oldest first, and one that does not
//!   fit the KV budget stops admission: the room that running sequences free is kept for it
//!   instead of being taken by smaller requests behind it.
//!
//! ## The bound
//!
//! A step costs about `fixed + decode_row · d + prefill_token · p` for `d` decoding rows and
//! `p` prompt tokens ([`StepCost`]). The latency policy caps `p` so that this stays under
//! [`Scheduling::target_step_ms`], the inter-token latency it aims at, but never below
//! [`Scheduling::min_prefill_tokens`] (prefill always progresses) nor above
//! `max_prefill_tokens` (the upper bound it always was). So a decode token waits at most one
//! step for prefill, and that step lasts at most
//! `max(target_step_ms, fixed + decode_row · d + prefill_token · min_prefill_tokens)`.
//!
//! The default coefficients are for the 2-core AMD EPYC development machine with the default
//! model (SmolLM2-135M Q4_1, flex device, f32 activations, `--max-num-seqs 16`), from the
//! `engine step` debug lines this engine logs (`RUST_LOG=stellarchat_model::engine=debug`):
//! one decoding stream steps in ~9 ms and sixteen in ~70 ms when the machine is otherwise idle
//! (`just bench`, ITL p50 at 1 and 16 clients), i.e. ~4 ms a row over ~5 ms fixed; fitting
//! 2026-12-01's steps (FIFO, up to 256 prompt tokens beside up to 16 streams) gives a prompt
//! token ~0.75 of a decode row, ~3 ms (~330 tokens/s). A 256-token chunk therefore adds
//! ~0.8 s to a step of sixteen streams (and several seconds on a busy machine: that chunk is
//! why ITL p99 at 16 clients was 1.0 s against llama.cpp's 92 ms). The floor of 32 tokens is
//! the largest that keeps a step of sixteen streams under 2 × 92 ms, the bound
//! (5 + 16 · 4 + 32 · 3 = 165 ms); the 160 ms target lets fewer streams take more (50 tokens
//! beside one stream), and a step with nothing decoding takes the full `max_prefill_tokens`,
//! as no stream waits for it. A short question (~50 prompt tokens) is prefilled in one or two
//! steps. Other machines and devices have other coefficients: set them in [`Scheduling`]; the
//! bound holds with their own.
//!
//! Ageing defaults to 16 steps (~2.6 s of sixteen streams at the bound). Shortest-first alone
//! starved the long passages of `stellarchat bench` (TTFT p99 50–60 s at 16 clients on a busy
//! machine, with 64 steps): short questions keep arriving and take the whole floor; and an
//! aged passage that took the whole budget held every short question back for its whole
//! prefill (TTFT p50 9–10 s). Now the oldest aged passage gets at least half the floor a step:
//! 500 tokens take at most 16 + 500 / 16 ≈ 48 steps once no older prompt is aged, and short
//! questions still get half of every step.
//!
//! Measured (2026-12-01, `stellarchat bench --concurrency 16 --requests 64 --max-tokens 64
//! --ignore-eos --ban-token 2`, a busy machine, so every step ran ~3–4× slower than idle),
//! `latency` against `fifo`: ITL p99 1.0 s against 2.7–5.4 s and TTFT p50 2.6–3.7 s against
//! 7.9–10.6 s, for ITL p50 0.43–0.63 s against 0.19–0.24 s (the same prefill work spread over
//! every step instead of a few long ones), TTFT p99 51–62 s against 17–32 s (the long
//! passages: prefill is most of this load's work and now goes shortest first) and output
//! tokens/s within the runs' noise (19–25 against 19–30).

use std::cmp::Reverse;

use crate::error::ModelError;

/// Which scheduling the engine uses; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerPolicy {
    /// Prefill oldest first with the full budget; admission strictly in arrival order.
    Fifo,
    /// Bounded step time, shortest remaining prefill first with ageing, prefix-aware admission.
    #[default]
    Latency,
}

/// What one forward step costs, in microseconds: `fixed + decode_row · rows + prefill_token ·
/// tokens`, measured on the device it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCost {
    pub fixed_us: u32,
    pub decode_row_us: u32,
    pub prefill_token_us: u32,
}

/// The latency policy's knobs (see the module docs for the defaults' measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduling {
    pub policy: SchedulerPolicy,
    /// The step time (inter-token latency) the prefill budget aims to stay under.
    pub target_step_ms: u32,
    pub cost: StepCost,
    /// Prompt tokens a step may always prefill, however many streams decode.
    pub min_prefill_tokens: usize,
    /// Steps after its arrival from which a request goes ahead of younger ones.
    pub ageing_steps: u64,
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            policy: SchedulerPolicy::Latency,
            target_step_ms: 160,
            cost: StepCost { fixed_us: 5_000, decode_row_us: 4_000, prefill_token_us: 3_000 },
            min_prefill_tokens: 32,
            ageing_steps: 16,
        }
    }
}

impl std::str::FromStr for SchedulerPolicy {
    type Err = ModelError;

    /// `fifo` or `latency` (the `--scheduler` flag's values).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().as_str() {
            "fifo" => Ok(SchedulerPolicy::Fifo),
            "latency" => Ok(SchedulerPolicy::Latency),
            _ => Err(ModelError::InvalidRequest(format!("unknown scheduler `{s}`: expected `latency` or `fifo`"))),
        }
    }
}

impl Scheduling {
    /// Whether something that has waited `waited` steps goes ahead of younger ones.
    fn is_aged(&self, waited: u64) -> bool {
        waited >= self.ageing_steps
    }
}

/// What the scheduler needs to know about a running sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceView {
    /// Tokens already in the cache.
    pub cached: usize,
    /// Tokens known (prompt + generated); `known - cached` are waiting to be fed.
    pub known: usize,
    /// Steps since the request arrived (for ageing).
    pub waited: u64,
}

impl SequenceView {
    fn pending(&self) -> usize {
        self.known.saturating_sub(self.cached)
    }

    fn is_decoding(&self) -> bool {
        self.pending() == 1
    }

    fn is_prefilling(&self) -> bool {
        self.pending() > 1
    }
}

/// What admission needs to know about a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingView {
    /// Prompt tokens it would have to prefill: the prompt less its cached prefix.
    pub uncached: usize,
    /// Steps since it arrived.
    pub waited: u64,
}

/// The `Fifo` plan: decoding sequences get their token, prefilling ones chunks oldest first
/// (by index) from `prefill_budget`. 0 = sits this step out.
pub fn plan_step(sequences: &[SequenceView], prefill_budget: usize) -> Vec<usize> {
    let mut budget = prefill_budget.max(1);
    sequences
        .iter()
        .map(|s| {
            if s.is_decoding() {
                1
            } else {
                let take = s.pending().min(budget);
                budget -= take;
                take
            }
        })
        .collect()
}

/// Tokens of each sequence (by index) that go into the next step under `scheduling`;
/// `max_prefill_tokens` is the upper bound of a step's prompt tokens.
pub fn plan(sequences: &[SequenceView], max_prefill_tokens: usize, scheduling: &Scheduling) -> Vec<usize> {
    if scheduling.policy == SchedulerPolicy::Fifo {
        return plan_step(sequences, max_prefill_tokens);
    }
    let decode_rows = sequences.iter().filter(|s| s.is_decoding()).count();
    let mut budget = prefill_budget(decode_rows, max_prefill_tokens, scheduling);
    let mut plan: Vec<usize> = sequences.iter().map(|s| usize::from(s.is_decoding())).collect();
    let prefilling = sequences.iter().enumerate().filter(|(_, s)| s.is_prefilling());
    let order = priority_order(prefilling.map(|(i, s)| (i, s.pending(), s.waited)), scheduling);
    // The oldest aged prompt, if any, is served first but with at most half the budget: the
    // rest still goes shortest first, so short prompts never wait for a long one to finish.
    let oldest_aged = order.first().copied().filter(|&i| scheduling.is_aged(sequences[i].waited));
    let mut give = |i: usize, most: usize, budget: &mut usize| {
        let take = (sequences[i].pending() - plan[i]).min(most).min(*budget);
        plan[i] += take;
        *budget -= take;
    };
    if let Some(i) = oldest_aged {
        give(i, budget.div_ceil(2), &mut budget);
    }
    let mut shortest_first: Vec<usize> = order.into_iter().filter(|&i| Some(i) != oldest_aged).collect();
    shortest_first.sort_by_key(|&i| (sequences[i].pending(), Reverse(sequences[i].waited), i));
    // What the others leave goes back to the aged one.
    for i in shortest_first.into_iter().chain(oldest_aged) {
        give(i, usize::MAX, &mut budget);
    }
    plan
}

/// The latency policy's prefill budget for a step with `decode_rows` decoding sequences: what
/// keeps the estimated step time under the target, within `[min_prefill_tokens,
/// max_prefill_tokens]` (the maximum wins if they cross); `max_prefill_tokens` when nothing
/// decodes.
pub fn prefill_budget(decode_rows: usize, max_prefill_tokens: usize, scheduling: &Scheduling) -> usize {
    if decode_rows == 0 {
        // No stream waits for this step: prefill in the largest chunks, which run fastest.
        return max_prefill_tokens.max(1);
    }
    let cost = &scheduling.cost;
    let target_us = u64::from(scheduling.target_step_ms) * 1_000;
    let decode_us = u64::from(cost.fixed_us) + u64::from(cost.decode_row_us) * decode_rows as u64;
    let fits = target_us.saturating_sub(decode_us) / u64::from(cost.prefill_token_us.max(1));
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    fits.max(scheduling.min_prefill_tokens).min(max_prefill_tokens).max(1)
}

/// Indices of `(index, remaining tokens, waited steps)` in the latency policy's order: aged
/// ones first, oldest first; then the rest, fewest remaining tokens first, older first on ties.
fn priority_order(items: impl Iterator<Item = (usize, usize, u64)>, scheduling: &Scheduling) -> Vec<usize> {
    let mut keyed: Vec<_> = items
        .map(|(i, remaining, waited)| {
            let aged = scheduling.is_aged(waited);
            ((!aged, if aged { 0 } else { remaining }, Reverse(waited), i), i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Admits waiting requests (`waiting`, in arrival order) into at most `free_slots` slots and
/// returns the indices started, in the order they started. `try_start(i)` starts request `i`
/// if the KV budget has room for it and says whether it did.
///
/// `Fifo` tries them in arrival order and stops at the first that does not fit. `Latency`
/// tries them in the order of `priority_order` over their uncached prompt tokens; one that does not fit
/// is passed over, unless it is aged: then admission stops, keeping the room for it.
pub fn admit_in_order(
    waiting: &[WaitingView],
    free_slots: usize,
    scheduling: &Scheduling,
    mut try_start: impl FnMut(usize) -> bool,
) -> Vec<usize> {
    let fifo = scheduling.policy == SchedulerPolicy::Fifo;
    let order = if fifo {
        (0..waiting.len()).collect()
    } else {
        priority_order(waiting.iter().enumerate().map(|(i, w)| (i, w.uncached, w.waited)), scheduling)
    };
    let mut started = Vec::new();
    for i in order {
        if started.len() == free_slots {
            break;
        }
        if try_start(i) {
            started.push(i);
        } else if fifo || scheduling.is_aged(waiting[i].waited) {
            break;
        }
    }
    started
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
