//! The short fuzz runs of `just test`: each target's committed corpus and regressions, and
//! seeded mutations of them (see `replay`); and checks that the driver itself can fail.

use super::replay::{ReplayCounts, mutate, replay};
use super::*;
use crate::rng::SplitMix64;

/// Mutated inputs per target: a few seconds of the test run each.
const MUTATIONS: usize = 300;

fn assert_ran(counts: ReplayCounts) {
    assert!(counts.committed > 0 && counts.mutated >= MUTATIONS, "{counts:?}");
}

#[test]
fn fuzz_gguf_corpus_and_mutations() {
    assert_ran(replay("gguf", gguf, MUTATIONS));
}

#[test]
fn fuzz_chat_template_corpus_and_mutations() {
    assert_ran(replay("chat_template", chat_template, MUTATIONS));
}

#[test]
fn fuzz_tokenizer_corpus_and_mutations() {
    assert!(tokenizers().len() >= 2, "the SmolLM2 weights are missing: run `just weights`");
    assert_ran(replay("tokenizer", tokenizer, MUTATIONS));
}

#[test]
#[should_panic(expected = "fuzz target `gguf` panicked on")]
fn a_panicking_body_fails_the_replay() {
    replay("gguf", |bytes| assert!(bytes.len() > usize::MAX / 2, "always panics"), 0);
}

#[test]
fn mutations_are_seeded_and_change_the_input() {
    let base = b"GGUF\x03\x00\x00\x00 some bytes to edit".to_vec();
    let run = |seed| {
        let mut rng = SplitMix64(seed);
        (0..20).map(|_| mutate(&base, b"other parent", &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert!(run(7).iter().filter(|m| **m != base).count() >= 15);
}

#[test]
fn messages_of_parts_cover_roles_null_content_and_tool_calls() {
    assert_eq!(message_of(b"\x00hi"), ChatMessage::new("user", "hi"));
    assert_eq!(message_of(b""), ChatMessage::new("user", ""));
    let m = message_of(b"\x39f");
    assert_eq!((m.role.as_str(), m.content.as_deref()), ("assistant", None));
    assert!(m.tool_calls.is_some() && m.tool_call_id.as_deref() == Some("f"));
}


/// Found by the first replays: SmolLM2's vocabulary has no token for some bytes (ASCII
/// control characters, and bytes such as 0xF1 its training text never had), which encoding
/// drops (as llama.cpp does); everything else round-trips.
#[test]
fn smollm2_drops_the_bytes_it_has_no_token_for() {
    let smollm2 = tokenizers().iter().find(|t| t.tokenizer.vocab_size() == 49152).expect("SmolLM2 weights");
    let missing = &smollm2.missing_bytes;
    assert!(missing.contains(&4) && missing.contains(&0xf1) && !missing.contains(&b'\n'), "{missing:x?}");
    let ids = smollm2.tokenizer.encode("a\u{4}b", false).unwrap();
    assert_eq!(smollm2.tokenizer.decode(&ids, false).unwrap(), "ab");
    assert_eq!(smollm2.expected_round_trip("a\u{4}b"), Some("ab".into()));
    assert_eq!(smollm2.expected_round_trip("\u{5f1f8}"), None);
    tokenizer(b"a\x04b\x13\x1d\n \xf1\x9f\x87\xb8");
    tokenizer(&std::fs::read(super::replay::fuzz_dir().join("regressions/tokenizer/missing-byte-f1.txt")).unwrap());
}
