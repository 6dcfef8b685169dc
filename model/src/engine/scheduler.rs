//! Which tokens each sequence contributes to the next forward step: a pure function, so the
//! batching policy is tested without a model.
//!
//! Policy (vLLM's "chunked prefill"): every sequence that is decoding contributes its one
//! pending token; then prompts still being prefilled get chunks, oldest first, until the
//! step's prefill budget is spent. A long prompt therefore never delays running streams by
//! more than one chunk per step.

/// What the scheduler needs to know about a running sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceView {
    /// Tokens already in the cache.
    pub cached: usize,
    /// Tokens known (prompt + generated); `known - cached` are waiting to be fed.
    pub known: usize,
}

impl SequenceView {
    fn is_decoding(&self) -> bool {
        self.known - self.cached == 1
    }
}

/// How many tokens of each sequence (by index) go into the step; 0 = sits this step out.
pub fn plan_step(sequences: &[SequenceView], prefill_budget: usize) -> Vec<usize> {
    let mut budget = prefill_budget.max(1);
    sequences
        .iter()
        .map(|s| {
            let pending = s.known.saturating_sub(s.cached);
            if pending == 0 {
                0
            } else if s.is_decoding() {
                1
            } else {
                let take = pending.min(budget);
                budget -= take;
                take
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoding(at: usize) -> SequenceView {
        SequenceView { cached: at, known: at + 1 }
    }

    #[test]
    fn decoding_sequences_always_get_their_token() {
        let seqs = [decoding(10), SequenceView { cached: 0, known: 1000 }, decoding(3)];
        assert_eq!(plan_step(&seqs, 64), vec![1, 64, 1]);
    }

    #[test]
    fn prefill_budget_is_shared_oldest_first() {
        let seqs = [SequenceView { cached: 0, known: 40 }, SequenceView { cached: 0, known: 40 }, SequenceView { cached: 0, known: 5 }];
        assert_eq!(plan_step(&seqs, 64), vec![40, 24, 0]);
    }

    #[test]
    fn a_long_prompt_is_fed_in_chunks_while_streams_continue() {
        let mut long = SequenceView { cached: 0, known: 300 };
        let mut short = decoding(5);
        let mut steps = 0;
        while long.cached < long.known {
            let plan = plan_step(&[short, long], 128);
            assert_eq!(plan[0], 1, "the running stream advances every step");
            assert!(plan[1] <= 128);
            short = decoding(short.cached + 1);
            long.cached += plan[1];
            steps += 1;
        }
        assert_eq!(steps, 3);
    }

    #[test]
    fn a_zero_budget_still_makes_progress() {
        assert_eq!(plan_step(&[SequenceView { cached: 0, known: 3 }], 0), vec![1]);
    }
}
