//! `stellarchat bench`'s multi-turn mode against the real server, kept tiny (2 conversations
//! × 2 turns, 4 tokens each): the JSON report has one entry per turn, the second turn's
//! prompt holds the first one's history, and our prefix cache reuses it — so the figures
//! `just bench` compares with llama.cpp's measure what they claim to.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use stellarchat_tests::{Server, binary, repo_root};

#[tokio::test]
async fn later_turns_resend_the_history_and_hit_the_prefix_cache() {
    let server = Server::default_model(&[]).await;
    let base_url = format!("http://{}/v1", server.addr);
    let run = tokio::process::Command::new(binary())
        .args(["bench", "--base-url", &base_url, "--conversations", "2", "--turns", "2"])
        // About 100 tokens: the first turn's prompt fills at least one whole 64-token block.
        .args(["--system-prompt-tokens", "100", "--max-tokens", "4", "--ignore-eos", "--ban-token", "2", "--json"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run).await.expect("bench finished").expect("bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || format!("bench stdout:\n{stdout}\nbench stderr:\n{stderr}\nserver log:\n{}", server.logs());
    assert!(output.status.success(), "{}", context());
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{}", context()));

    assert_eq!((report["successful"].as_u64(), report["errors"].as_u64()), (Some(4), Some(0)), "{}", context());
    assert_eq!(report["conversations"], 2, "{}", context());
    let turns = report["turns"].as_array().unwrap_or_else(|| panic!("no turns array\n{}", context()));
    assert_eq!(turns.len(), 2, "{}", context());
    let figure = |turn: &Value, key: &str| turn[key].as_f64().unwrap_or_else(|| panic!("no {key}\n{}", context()));
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn["turn"], i + 1, "{}", context());
        assert_eq!(turn["successful"], 2, "{}", context());
        assert!(turn["ttft_ms"]["p50"].as_f64().is_some(), "{}", context());
    }
    let (first, second) = (&turns[0], &turns[1]);
    // The second prompt holds the first one, its answer and a new question.
    assert!(figure(second, "prompt_tokens_mean") > figure(first, "prompt_tokens_mean") + 4.0, "{}", context());
    assert!(figure(first, "prompt_tokens_mean") > 64.0, "{}", context());
    assert!(figure(second, "cached_tokens_mean") > 0.0, "the second turn reused nothing\n{}", context());
}
