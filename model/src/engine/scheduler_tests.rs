use super::*;

fn decoding(at: usize) -> SequenceView {
    SequenceView { cached: at, known: at + 1, waited: 0 }
}

fn prompt(len: usize) -> SequenceView {
    SequenceView { cached: 0, known: len, waited: 0 }
}

fn fifo() -> Scheduling {
    Scheduling { policy: SchedulerPolicy::Fifo, ..Scheduling::default() }
}

/// A latency policy whose budget is `max_prefill_tokens` while few streams decode (prefill
/// is cheap here), with the given ageing.
fn latency(ageing_steps: u64) -> Scheduling {
    Scheduling {
        cost: StepCost { fixed_us: 5_000, decode_row_us: 4_000, prefill_token_us: 1_000 },
        ageing_steps,
        ..Scheduling::default()
    }
}

/// A latency policy whose budget is always the floor: every step is over the target.
fn saturated(ageing_steps: u64, min_prefill_tokens: usize) -> Scheduling {
    Scheduling { target_step_ms: 1, min_prefill_tokens, ageing_steps, ..Scheduling::default() }
}

#[test]
fn fifo_decoding_sequences_always_get_their_token() {
    let seqs = [decoding(10), prompt(1000), decoding(3)];
    assert_eq!(plan_step(&seqs, 64), vec![1, 64, 1]);
    assert_eq!(plan(&seqs, 64, &fifo()), vec![1, 64, 1]);
}

#[test]
fn fifo_prefill_budget_is_shared_oldest_first() {
    let seqs = [prompt(40), prompt(40), prompt(5)];
    assert_eq!(plan_step(&seqs, 64), vec![40, 24, 0]);
}

#[test]
fn a_long_prompt_is_fed_in_chunks_while_streams_continue() {
    let mut long = prompt(300);
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
    assert_eq!(plan_step(&[prompt(3)], 0), vec![1]);
    let zero_floor = Scheduling { min_prefill_tokens: 0, ..saturated(64, 0) };
    assert_eq!(plan(&[prompt(3)], 0, &zero_floor), vec![1]);
}

#[test]
fn latency_prefills_shortest_first_and_decoding_rows_always_get_their_token() {
    let seqs = [prompt(500), decoding(7), prompt(30), prompt(100), decoding(2)];
    assert_eq!(plan(&seqs, 64, &latency(64)), vec![0, 1, 30, 34, 1]);
    // Under a budget at its floor as well.
    let many: Vec<SequenceView> = (0..40).map(|i| if i % 3 == 0 { prompt(50 + i) } else { decoding(i) }).collect();
    let planned = plan(&many, 256, &saturated(64, 16));
    for (s, n) in many.iter().zip(&planned) {
        if s.is_decoding() {
            assert_eq!(*n, 1, "a decoding row sat a step out");
        }
    }
    assert_eq!(planned.iter().zip(&many).filter(|(_, s)| s.is_prefilling()).map(|(n, _)| n).sum::<usize>(), 16);
}

#[test]
fn the_oldest_aged_prefill_takes_half_the_budget_first() {
    let mut seqs = [prompt(500), prompt(30), prompt(400)];
    seqs[0].waited = 70;
    seqs[2].waited = 90;
    // The oldest aged one (index 2) takes half; the rest goes shortest first.
    assert_eq!(plan(&seqs, 64, &latency(64)), vec![2, 30, 32]);
    seqs[2].known = 20;
    assert_eq!(plan(&seqs, 64, &latency(64)), vec![14, 30, 20]);
    // Alone, it takes the whole budget.
    assert_eq!(plan(&seqs[..1], 64, &latency(64)), vec![64]);
    // What shorter ones leave goes back to it.
    let few = [SequenceView { waited: 70, ..prompt(500) }, prompt(10)];
    assert_eq!(plan(&few, 64, &latency(64)), vec![54, 10]);
}

#[test]
fn the_budget_shrinks_with_decoding_rows_but_never_below_the_floor() {
    let s = Scheduling::default();
    let budgets: Vec<usize> = (0..=64).map(|rows| prefill_budget(rows, 256, &s)).collect();
    assert!(budgets.windows(2).all(|w| w[1] <= w[0]), "{budgets:?}");
    assert!(budgets.iter().all(|&b| (s.min_prefill_tokens..=256).contains(&b)), "{budgets:?}");
    // Nothing decodes: nothing to keep waiting short.
    assert_eq!(budgets[0], 256);
    // 160 ms target: (160 - 5 - 4 ms a row) at 3 ms a token.
    assert_eq!(budgets[1], 50);
    assert_eq!(budgets[4], 46);
    assert_eq!(budgets[16], s.min_prefill_tokens);
    assert_eq!(budgets[64], s.min_prefill_tokens);
    // `max_prefill_tokens` stays the upper bound, even below the floor.
    let cheap = latency(64);
    assert_eq!(prefill_budget(1, 256, &cheap), 151);
    assert_eq!(prefill_budget(1, 100, &cheap), 100);
    assert_eq!(prefill_budget(64, 8, &s), 8);
    // And a step's plan spends exactly the budget when prompts are waiting.
    let seqs: Vec<SequenceView> = (0..16).map(decoding).chain([prompt(1000), prompt(1000)]).collect();
    assert_eq!(plan(&seqs, 256, &s).iter().sum::<usize>(), 16 + s.min_prefill_tokens);
}

/// One simulated request: when it arrived, its view, and the step its prefill ended.
struct Simulated {
    arrived: u64,
    view: SequenceView,
    prefilled_at: Option<u64>,
    sampled: usize,
}

/// Steps the planner over `steps` steps: `arrivals(step)` gives the prompt lengths arriving
/// before that step; a request samples a token whenever its known tokens are all cached and
/// leaves after `decode_tokens`. Checks every step that decoding rows get their token.
fn simulate(
    scheduling: &Scheduling,
    max_prefill_tokens: usize,
    steps: u64,
    decode_tokens: usize,
    mut arrivals: impl FnMut(u64) -> Vec<usize>,
) -> Vec<Simulated> {
    let mut all: Vec<Simulated> = Vec::new();
    let mut running: Vec<usize> = Vec::new();
    for step in 0..steps {
        for len in arrivals(step) {
            all.push(Simulated { arrived: step, view: prompt(len), prefilled_at: None, sampled: 0 });
            running.push(all.len() - 1);
        }
        let views: Vec<SequenceView> =
            running.iter().map(|&r| SequenceView { waited: step - all[r].arrived, ..all[r].view }).collect();
        let planned = plan(&views, max_prefill_tokens, scheduling);
        for (&r, (&n, view)) in running.iter().zip(planned.iter().zip(&views)) {
            if view.is_decoding() {
                assert_eq!(n, 1, "step {step}: a decoding row sat out");
            }
            let req = &mut all[r];
            req.view.cached += n;
            if n > 0 && req.view.cached == req.view.known {
                req.prefilled_at.get_or_insert(step);
                req.sampled += 1;
                req.view.known += 1;
            }
        }
        running.retain(|&r| all[r].sampled < decode_tokens);
    }
    all
}

#[test]
fn a_long_prompt_finishes_its_prefill_however_many_short_ones_keep_arriving() {
    let (ageing, floor, long) = (20, 16, 600);
    // Two 30-token prompts a step: more than the floor can prefill, so without ageing
    // shortest-first would never reach the long prompt.
    let arrivals = |step: u64| if step == 0 { vec![long, 30, 30] } else { vec![30, 30] };
    let aged = simulate(&saturated(ageing, floor), 256, 200, 4, arrivals);
    let done = aged[0].prefilled_at.expect("the long prompt was starved");
    // Aged, it gets at least half the floor each step.
    assert!(done < ageing + long.div_ceil(floor / 2) as u64, "prefilled at step {done}");
    // And the short prompts kept starting meanwhile: half of each step was theirs.
    let meanwhile = |r: &&Simulated| r.prefilled_at.is_some_and(|s| s > ageing && s <= done);
    let shorts_done_meanwhile = aged[1..].iter().filter(meanwhile).count();
    assert!(shorts_done_meanwhile as u64 >= (done - ageing) / 8, "{shorts_done_meanwhile} short prompts");

    let unaged = simulate(&saturated(u64::MAX, floor), 256, 200, 4, arrivals);
    assert_eq!(unaged[0].prefilled_at, None, "the test must be able to starve it");
}

#[test]
fn short_prompts_arriving_behind_a_long_one_start_at_once() {
    let (long, short) = (1000, 30);
    let arrivals = |step: u64| match step {
        0 => vec![long],
        s if s % 2 == 1 && s < 40 => vec![short],
        _ => vec![],
    };
    let waits = |sim: &[Simulated]| -> Vec<u64> {
        sim[1..].iter().map(|r| r.prefilled_at.expect("short prefilled") - r.arrived).collect()
    };
    let latency_run = simulate(&latency(1_000), 64, 200, 8, arrivals);
    assert!(waits(&latency_run).iter().all(|&w| w == 0), "short prompts waited: {:?}", waits(&latency_run));
    let long_done = latency_run[0].prefilled_at.expect("the long prompt finished");
    // The shorts take 30 of 64 tokens every other step: the long one still gets the rest.
    assert!(long_done <= 1000 / 34 + 1, "long prompt prefilled at step {long_done}");

    // Oldest first, the first short prompts wait for the whole long one.
    let fifo_run = simulate(&fifo(), 64, 200, 8, arrivals);
    assert!(waits(&fifo_run).iter().any(|&w| w >= 10), "fifo waits: {:?}", waits(&fifo_run));
}

#[test]
fn admission_prefers_cheap_prompts_counting_their_cached_prefix() {
    let waiting = [
        WaitingView { uncached: 500, waited: 3 },
        // A 520-token prompt with 512 tokens cached: cheap.
        WaitingView { uncached: 8, waited: 2 },
        WaitingView { uncached: 100, waited: 1 },
    ];
    assert_eq!(admit_in_order(&waiting, 8, &latency(64), |_| true), vec![1, 2, 0]);
    assert_eq!(admit_in_order(&waiting, 2, &latency(64), |_| true), vec![1, 2]);
    assert_eq!(admit_in_order(&waiting, 8, &fifo(), |_| true), vec![0, 1, 2]);
}

#[test]
fn a_big_request_that_does_not_fit_is_passed_until_it_ages_then_room_is_kept_for_it() {
    // KV room for 300 positions; request i wants `wants[i]`.
    let wants = [1000, 100, 100];
    let admit = |waiting: &[WaitingView], scheduling: &Scheduling| {
        let mut room = 300;
        admit_in_order(waiting, 8, scheduling, |i| {
            let fits = wants[i] <= room;
            if fits {
                room -= wants[i];
            }
            fits
        })
    };
    let young = [
        WaitingView { uncached: 990, waited: 5 },
        WaitingView { uncached: 90, waited: 4 },
        WaitingView { uncached: 90, waited: 3 },
    ];
    assert_eq!(admit(&young, &latency(64)), vec![1, 2]);
    // Oldest first, the big one blocks everything behind it.
    assert_eq!(admit(&young, &fifo()), Vec::<usize>::new());
    // Aged, it goes first and, not fitting, keeps the room for itself.
    let old = [WaitingView { waited: 64, ..young[0] }, young[1], young[2]];
    assert_eq!(admit(&old, &latency(64)), Vec::<usize>::new());
    // Small ones that aged before it go ahead of it all the same.
    let older_small = [old[0], WaitingView { waited: 80, ..young[1] }, young[2]];
    assert_eq!(admit(&older_small, &latency(64)), vec![1]);
}

#[test]
fn the_policy_parses_from_its_flag_value() {
    assert_eq!("latency".parse::<SchedulerPolicy>().ok(), Some(SchedulerPolicy::Latency));
    assert_eq!("FIFO".parse::<SchedulerPolicy>().ok(), Some(SchedulerPolicy::Fifo));
    let err = "lifo".parse::<SchedulerPolicy>().expect_err("unknown policy");
    assert!(err.to_string().contains("lifo"), "{err}");
}
