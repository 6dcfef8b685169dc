//! The GPU memory check against the real binary, on lavapipe (`--device wgpu:cpu`, the
//! software Vulkan adapter) with `--gpu-memory-limit` as a fake device size: a model that
//! does not fit is refused before anything is allocated, with the bytes in the message, and
//! a KV cache left to size itself shrinks to what fits.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use stellarchat_tests::{Server, binary, repo_root, routes};

const LIMIT_MIB: u64 = 8;

/// Runs `stellarchat serve` to its exit (it must exit: the model is refused); its exit
/// status and stderr.
async fn serve_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(binary())
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the server exits when its model does not fit")
        .expect("its output");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn a_model_larger_than_the_limit_is_refused_at_start_up_with_the_bytes() {
    // 8B parameters as f32: ~30 GiB against 1 GiB. Refused before the weights are made, so
    // this takes no longer than opening the model.
    let (status, stderr) =
        serve_to_exit(&["--model", "synthetic:8b", "--device", "wgpu:cpu", "--gpu-memory-limit", "1GiB"]).await;
    assert!(!status.success(), "the server served a model that does not fit; stderr:\n{stderr}");
    assert!(stderr.contains("does not fit in the memory of device `wgpu:cpu`"), "{stderr}");
    assert!(stderr.contains("(1073741824 bytes) is available"), "the limit is named: {stderr}");
    assert!(stderr.contains("from --gpu-memory-limit"), "{stderr}");
    for part in ["weights ", "workspace ", "KV cache "] {
        assert!(stderr.contains(part), "{part} missing: {stderr}");
    }
}

#[tokio::test]
async fn a_given_kv_cache_that_does_not_fit_is_refused() {
    // The tiny model fits in 8 MiB, but 65536 KV tokens of it (32 MiB) do not.
    let limit = format!("{LIMIT_MIB}MiB");
    let args = ["--model", "synthetic:tiny", "--device", "wgpu:cpu", "--gpu-memory-limit", &limit, "--kv-cache-tokens", "65536"];
    let (status, stderr) = serve_to_exit(&args).await;
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("(65536 tokens)") && stderr.contains("lower --kv-cache-tokens"), "{stderr}");
}

#[tokio::test]
async fn the_kv_cache_is_sized_from_what_is_left_and_a_model_loaded_on_demand_that_does_not_fit_is_an_api_error() {
    let limit = format!("{LIMIT_MIB}MiB");
    let server = Server::start(&[
        "--model",
        "synthetic:tiny",
        "--model",
        "synthetic:8b",
        "--served-model-name",
        "tiny,big",
        "--device",
        "wgpu:cpu",
        "--gpu-memory-limit",
        &limit,
    ])
    .await;
    server.wait_ready().await;
    let figure = |text: &str, kind: &str| {
        stellarchat_tests::metric_value(text, &format!("stellarchat:device_memory_bytes{{kind=\"{kind}\",model=\"tiny\"}}"))
            .unwrap_or_else(|| panic!("no {kind} figure in:\n{text}"))
    };
    let text = reqwest::get(server.url(routes::METRICS)).await.unwrap().text().await.unwrap();
    let limit_bytes = (LIMIT_MIB << 20) as f64;
    assert_eq!(figure(&text, "capacity"), limit_bytes);
    assert_eq!(figure(&text, "available"), limit_bytes);
    let (weights, workspace, kv) = (figure(&text, "weights"), figure(&text, "workspace"), figure(&text, "kv_cache"));
    let tokens = stellarchat_tests::metric_value(&text, "stellarchat:kv_cache_budget_tokens{model=\"tiny\"}").expect("KV budget");
    // Below the CPU default, in whole blocks, within the limit, and the most blocks whose
    // pool, at its growth peak (L + ceil(L/2) blocks of L: old and new pool alive during the
    // copy), fits in 90 % of what is left.
    assert!(tokens > 0.0 && tokens < 65536.0, "the KV budget was not sized down: {tokens}");
    assert_eq!(tokens % 64.0, 0.0);
    let per_token = kv / tokens;
    let peak_tokens = |blocks: f64| (blocks + (blocks / 2.0).ceil()) * 64.0;
    let blocks = tokens / 64.0;
    assert!(weights + workspace + peak_tokens(blocks) * per_token <= limit_bytes);
    let spare = 0.9 * (limit_bytes - weights - workspace);
    assert!(
        peak_tokens(blocks) * per_token <= spare && peak_tokens(blocks + 1.0) * per_token > spare,
        "{tokens} tokens of {per_token} bytes (growth peak {} tokens) for {spare} spare bytes",
        peak_tokens(blocks)
    );
    // The weights' estimate is what the device's allocator holds once they are loaded.
    let logs = server.logs();
    let bytes_after = |key: &str| -> f64 {
        let line = logs.lines().find(|l| l.contains("device memory after loading the weights")).expect("the after-load line");
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        let rest = &rest[rest.find('(').expect("exact count") + 1..];
        rest[..rest.find(" bytes)").expect("bytes")].parse().expect("a number")
    };
    let (estimated, in_use) = (bytes_after("estimated_weights="), bytes_after("in_use="));
    assert_eq!(estimated, weights);
    assert!((in_use - estimated).abs() <= 4096.0 + estimated / 100.0, "estimated {estimated} bytes, allocated {in_use}");

    // The second model loads on demand and does not fit: an OpenAI-shaped error naming the
    // bytes, and the server serves on.
    let request = json!({"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (status, body) = server.post_json(routes::CHAT_COMPLETIONS, &request).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "model_load_failed", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("does not fit") && message.contains(&format!("({} bytes) is available", LIMIT_MIB << 20)), "{message}");
    // (Not a generation: lavapipe's first one compiles and tunes its kernels for ~40 s.)
    let ready = stellarchat_tests::client().get(server.url(routes::READY)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
