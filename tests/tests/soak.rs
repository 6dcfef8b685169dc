//! The short soak (the long one is `just soak`): `stellarchat bench` against the real
//! binary for 20 s, 16 clients over plain HTTP, SSE and WebSocket, 30 % of them dropping
//! the connection mid-stream. Passes when no request failed (no 5xx, no 4xx, no transport
//! error) and, after the load, the bench's leak check found the server idle with nothing
//! held: no request running or waiting, no generation or WebSocket open, the KV cache held
//! by the prefix cache only.
//!
//! The RSS is sampled and printed but not judged here: in 20 s the prefix cache is still
//! filling (it keeps finished prompts' KV blocks up to its budget), so the memory still
//! grows for reasons that are not leaks. The 30-minute soak judges it after a warm-up.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use stellarchat_tests::{Server, binary, repo_root};

#[tokio::test]
async fn mixed_load_with_disconnects_leaves_nothing_behind() {
    let server = Server::default_model(&[]).await;
    let pid = server.pid().expect("server pid").to_string();
    let base_url = format!("http://{}/v1", server.addr);
    let run = tokio::process::Command::new(binary())
        .args(["bench", "--base-url", &base_url, "--concurrency", "16", "--duration", "20"])
        .args(["--mix", "http,sse,ws", "--disconnect-ratio", "0.3", "--max-tokens", "16"])
        .args(["--check-leaks", "--settle", "30", "--sample-interval", "5", "--rss-pid", &pid, "--json"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run).await.expect("bench finished").expect("bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || format!("bench stdout:\n{stdout}\nbench stderr:\n{stderr}\nserver log:\n{}", server.logs());
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{}", context()));

    assert_eq!(report["server_errors"], 0, "{}", context());
    assert_eq!(report["errors"], 0, "{}", context());
    assert!(report["successful"].as_u64().unwrap_or(0) > 0, "{}", context());
    assert!(report["disconnected"].as_u64().unwrap_or(0) > 0, "no client dropped its connection\n{}", context());
    let soak = &report["soak"];
    assert_eq!(soak["failures"], Value::Array(vec![]), "{}", context());
    assert!(soak["leak_check"]["checked"].as_array().is_some_and(|c| c.len() == 5), "{}", context());
    assert!(soak["rss"].as_array().is_some_and(|s| s.len() >= 2), "{}", context());
    assert!(output.status.success(), "{}", context());
}
