//! The multi-turn mode of `stellarchat bench` (`--conversations N --turns T`): N chats run
//! at once, each on its own client, all opening with the same system prompt; every turn
//! sends the whole history — the system prompt, the earlier user messages and the answers
//! as they were streamed — like a chat front end does. It measures what a prompt cache is
//! for: the TTFT of later turns, whose prompts start with everything the server saw before.
//!
//! The figures are kept per turn (TTFT, prompt and cached tokens), beside the usual
//! whole-run report.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::stats::{Percentiles, Sample, fmt_ms};
use super::{Outcome, Shared, prompts, request};

/// The shared system prompt's text, cut or repeated to the length asked for: an ordinary
/// assistant's instructions, 268 words that SmolLM2's tokenizer makes 314 tokens.
const SYSTEM_TEXT: &str = "You are Orbit, the support assistant of Northwind Outfitters, a shop that sells \
    tents, sleeping bags, stoves, backpacks and clothing for hiking and camping. Answer the customer's \
    questions politely and briefly, in plain English, in at most five sentences unless the customer asks for \
    more detail. The shop is open from nine in the morning to six in the evening, Monday to Saturday, and \
    closed on Sundays and public holidays. Orders placed before two in the afternoon are shipped the same \
    day; delivery takes two to four working days within the country and one to two weeks abroad. Shipping is \
    free for orders above eighty euros; below that it costs six euros. Customers may return unused items \
    within thirty days for a full refund, and worn items within fourteen days if they are defective. Every \
    tent and stove carries a two-year warranty; sleeping bags carry five years. Never promise discounts, \
    never invent products, prices or stock levels, and never ask for payment details in the chat. If a \
    question is about an order, ask for the order number, which has eight digits and starts with the letter \
    N. If a customer is unhappy, apologize once, explain what can be done, and offer to pass the case to a \
    human colleague by email. When a question has nothing to do with the shop, answer it helpfully anyway, \
    but keep the answer short and friendly. Use metric units, give temperatures in degrees Celsius, and \
    prefer lists when comparing more than two products. Remember what the customer said earlier in the \
    conversation and do not repeat questions that were already answered.";

/// SmolLM2 tokens per word of [`SYSTEM_TEXT`] (314 / 268), to turn a token count into words.
const TOKENS_PER_WORD: f64 = 314.0 / 268.0;

/// The system prompt of about `tokens` SmolLM2 tokens: the first words of [`SYSTEM_TEXT`],
/// repeated from its start when more are needed. The same for every conversation and every
/// server; empty for 0.
pub fn system_prompt(tokens: u32) -> String {
    let words = (f64::from(tokens) / TOKENS_PER_WORD).round() as usize;
    SYSTEM_TEXT.split_whitespace().cycle().take(words).collect::<Vec<_>>().join(" ")
}

/// User message `turn` (0-based) of conversation `conversation`: a short question, numbered
/// so that no two conversations share more than the system prompt.
pub fn user_message(seed: u64, conversation: u32, turn: u32, turns: u32) -> String {
    let n = u64::from(conversation) * u64::from(turns) + u64::from(turn);
    format!("Conversation {}, question {}: {}", conversation + 1, turn + 1, prompts::question(seed, n))
}

/// One conversation so far, in the order the messages were sent and received.
#[derive(Debug, Clone, Default)]
pub struct History {
    messages: Vec<(&'static str, String)>,
}

impl History {
    /// A history that opens with `system` (none when it is empty).
    pub fn new(system: &str) -> Self {
        let mut history = History::default();
        if !system.is_empty() {
            history.messages.push(("system", system.to_string()));
        }
        history
    }

    pub fn user(&mut self, text: String) {
        self.messages.push(("user", text));
    }

    pub fn assistant(&mut self, text: String) {
        self.messages.push(("assistant", text));
    }

    /// The OpenAI `messages` array.
    pub fn to_json(&self) -> Value {
        self.messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect()
    }
}

/// What the multi-turn mode was asked for.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub conversations: u32,
    pub turns: u32,
    pub system_prompt_tokens: u32,
}

/// The outcome of one turn (0-based) of one conversation.
pub struct TurnOutcome {
    pub turn: u32,
    pub outcome: Outcome,
}

/// Runs every conversation at once and returns each turn's outcome. A conversation whose
/// turn failed stops there: the next turn would have no answer to send back.
pub async fn run_all(shared: Arc<Shared>, plan: Plan) -> Vec<TurnOutcome> {
    let system = Arc::new(system_prompt(plan.system_prompt_tokens));
    let mut clients = JoinSet::new();
    for c in 0..plan.conversations {
        clients.spawn(converse(shared.clone(), system.clone(), plan.turns, c));
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = clients.join_next().await {
        // A conversation task only ends by returning; a panic would be a bug in this file.
        if let Ok(mut done) = joined {
            outcomes.append(&mut done);
        }
    }
    outcomes
}

/// One conversation on its own client: `turns` streaming requests, one after the other.
async fn converse(shared: Arc<Shared>, system: Arc<String>, turns: u32, conversation: u32) -> Vec<TurnOutcome> {
    let mut history = History::new(&system);
    let mut outcomes = Vec::new();
    for turn in 0..turns {
        history.user(user_message(shared.seed, conversation, turn, turns));
        let body = request::chat_body(&shared.spec, history.to_json());
        shared.progress.started();
        let outcome =
            request::run_one(&shared.client, &shared.url, shared.api_key.as_deref(), &body, shared.timeout, None).await;
        shared.progress.finished(&outcome);
        let answer = outcome.as_ref().ok().map(|s| s.text.clone());
        outcomes.push(TurnOutcome { turn, outcome });
        match answer {
            Some(text) => history.assistant(text),
            None => break,
        }
    }
    outcomes
}

/// One turn's figures over all conversations.
#[derive(Debug, Clone, Serialize)]
pub struct TurnStats {
    /// 1-based.
    pub turn: u32,
    /// Requests sent for this turn (fewer than the conversations when earlier turns failed).
    pub requests: u64,
    pub successful: u64,
    pub errors: u64,
    pub ttft_ms: Option<Percentiles>,
    pub output_tokens: u64,
    /// Means over the successful requests whose usage reported them (`None` when none did).
    pub prompt_tokens_mean: Option<f64>,
    pub cached_tokens_mean: Option<f64>,
}

/// The multi-turn part of the report (flattened into it: `turns` sits beside the totals).
#[derive(Debug, Clone, Serialize)]
pub struct MultiTurn {
    pub conversations: u32,
    pub turns_per_conversation: u32,
    /// As asked (`--system-prompt-tokens`), and the words that became.
    pub system_prompt_tokens: u32,
    pub system_prompt_words: usize,
    pub turns: Vec<TurnStats>,
    /// TTFT over turns 2.. together: the turns whose history a prompt cache can reuse.
    pub later_turns_ttft_ms: Option<Percentiles>,
}

/// Per-turn figures of `outcomes`, one entry per turn `0..turns` (a turn nobody reached
/// has zero requests).
pub fn turn_stats(outcomes: &[TurnOutcome], turns: u32) -> Vec<TurnStats> {
    (0..turns)
        .map(|turn| {
            let of_turn: Vec<&Outcome> = outcomes.iter().filter(|o| o.turn == turn).map(|o| &o.outcome).collect();
            let samples: Vec<&Sample> = of_turn.iter().filter_map(|o| o.as_ref().ok()).collect();
            TurnStats {
                turn: turn + 1,
                requests: of_turn.len() as u64,
                successful: samples.len() as u64,
                errors: (of_turn.len() - samples.len()) as u64,
                ttft_ms: Percentiles::of(samples.iter().filter_map(|s| s.ttft)),
                output_tokens: samples.iter().map(|s| s.output_tokens).sum(),
                prompt_tokens_mean: mean(samples.iter().filter_map(|s| s.prompt_tokens)),
                cached_tokens_mean: mean(samples.iter().filter_map(|s| s.cached_tokens)),
            }
        })
        .collect()
}

fn mean(values: impl Iterator<Item = u64>) -> Option<f64> {
    let (sum, n) = values.fold((0u64, 0u64), |(sum, n), v| (sum + v, n + 1));
    (n > 0).then(|| sum as f64 / n as f64)
}

impl MultiTurn {
    pub fn new(plan: Plan, outcomes: &[TurnOutcome]) -> Self {
        MultiTurn {
            conversations: plan.conversations,
            turns_per_conversation: plan.turns,
            system_prompt_tokens: plan.system_prompt_tokens,
            system_prompt_words: system_prompt(plan.system_prompt_tokens).split_whitespace().count(),
            turns: turn_stats(outcomes, plan.turns),
            later_turns_ttft_ms: Percentiles::of(
                outcomes.iter().filter(|o| o.turn > 0).filter_map(|o| o.outcome.as_ref().ok()?.ttft),
            ),
        }
    }
}

impl std::fmt::Display for MultiTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "multi-turn   {} conversations × {} turns, system prompt ~{} tokens ({} words)",
            self.conversations, self.turns_per_conversation, self.system_prompt_tokens, self.system_prompt_words
        )?;
        write!(f, "turn    ok  errors   TTFT p50   TTFT p95   prompt tokens   cached tokens")?;
        let opt = |v: Option<f64>, fmt: &dyn Fn(f64) -> String| v.map_or_else(|| "—".to_string(), fmt);
        for t in &self.turns {
            write!(
                f,
                "\n{:>4} {:>5} {:>7} {:>10} {:>10} {:>15} {:>15}",
                t.turn,
                t.successful,
                t.errors,
                opt(t.ttft_ms.map(|p| p.p50), &fmt_ms),
                opt(t.ttft_ms.map(|p| p.p95), &fmt_ms),
                opt(t.prompt_tokens_mean, &|v| format!("{v:.1}")),
                opt(t.cached_tokens_mean, &|v| format!("{v:.1}")),
            )?;
        }
        if let Some(p) = self.later_turns_ttft_ms {
            let last = self.turns_per_conversation;
            write!(f, "\nturns 2–{last} TTFT p50 {}, p95 {}", fmt_ms(p.p50), fmt_ms(p.p95))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::request::RequestError;
    use super::*;

    #[test]
    fn the_system_prompt_is_fixed_and_sized_in_words() {
        assert_eq!(system_prompt(300), system_prompt(300));
        assert_eq!(system_prompt(0), "");
        // 300 tokens at 314 tokens per 268 words.
        let words = system_prompt(300).split_whitespace().count();
        assert_eq!(words, 256);
        assert!(SYSTEM_TEXT.starts_with(&system_prompt(300)));
        assert_eq!(SYSTEM_TEXT.split_whitespace().count(), 268);
        // Longer than the text: it starts over.
        let long = system_prompt(700);
        assert!(long.starts_with(&system_prompt(314)));
        assert!(long[system_prompt(314).len()..].trim_start().starts_with("You are Orbit"));
    }

    #[test]
    fn user_messages_differ_between_conversations_and_turns() {
        let first: Vec<String> = (0..8).map(|c| user_message(0, c, 0, 4)).collect();
        assert!(first[2].starts_with("Conversation 3, question 1: "), "{}", first[2]);
        for (i, a) in first.iter().enumerate() {
            assert!(first[i + 1..].iter().all(|b| a != b));
        }
        assert_ne!(user_message(0, 0, 0, 4), user_message(0, 0, 1, 4));
        assert_eq!(user_message(9, 1, 2, 4), user_message(9, 1, 2, 4));
    }

    #[test]
    fn history_is_sent_whole_in_order() {
        let mut h = History::new("Be brief.");
        h.user("Hi".into());
        h.assistant("Hello! How can I help?".into());
        h.user("Tell me a joke".into());
        assert_eq!(
            h.to_json(),
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke"},
            ])
        );
        let mut bare = History::new("");
        bare.user("Hi".into());
        assert_eq!(bare.to_json(), json!([{"role": "user", "content": "Hi"}]));
    }

    fn sample(ttft_ms: u64, prompt: Option<u64>, cached: Option<u64>) -> Sample {
        Sample {
            ttft: Some(Duration::from_millis(ttft_ms)),
            output_tokens: 4,
            prompt_tokens: prompt,
            cached_tokens: cached,
            ..Sample::default()
        }
    }

    #[test]
    fn figures_are_kept_per_turn() {
        let ok = |turn, ttft, prompt, cached| TurnOutcome { turn, outcome: Ok(sample(ttft, prompt, cached)) };
        let outcomes = vec![
            ok(0, 100, Some(300), Some(0)),
            ok(1, 20, Some(400), Some(320)),
            ok(0, 300, Some(310), None),
            TurnOutcome { turn: 1, outcome: Err(RequestError::Timeout) },
            ok(1, 40, Some(420), Some(300)),
        ];
        let stats = turn_stats(&outcomes, 3);
        assert_eq!(stats.len(), 3);
        let (t1, t2, t3) = (&stats[0], &stats[1], &stats[2]);
        assert_eq!((t1.turn, t1.requests, t1.successful, t1.errors), (1, 2, 2, 0));
        assert_eq!(t1.ttft_ms.unwrap().p50, 200.0);
        assert_eq!((t1.prompt_tokens_mean, t1.cached_tokens_mean), (Some(305.0), Some(0.0)));
        assert_eq!((t2.requests, t2.successful, t2.errors, t2.output_tokens), (3, 2, 1, 8));
        assert_eq!(t2.ttft_ms.unwrap().p50, 30.0);
        assert_eq!((t2.prompt_tokens_mean, t2.cached_tokens_mean), (Some(410.0), Some(310.0)));
        assert_eq!((t3.turn, t3.requests), (3, 0));
        assert!(t3.ttft_ms.is_none() && t3.cached_tokens_mean.is_none());

        let plan = Plan { conversations: 2, turns: 3, system_prompt_tokens: 300 };
        let report = MultiTurn::new(plan, &outcomes);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["turns"][1]["cached_tokens_mean"], 310.0);
        assert_eq!(json["turns"][2]["prompt_tokens_mean"], Value::Null);
        assert_eq!(json["system_prompt_words"], 256);
        // Turn 2's two samples: 20 and 40 ms.
        assert_eq!(json["later_turns_ttft_ms"]["p50"], 30.0);
        let text = report.to_string();
        assert!(text.contains("2 conversations × 3 turns"), "{text}");
        assert!(text.contains("turns 2–3 TTFT p50 30.0 ms, p95 39.0 ms"), "{text}");
        assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3", "0", "0", "—", "—", "—", "—"]), "{text}");
    }
}
