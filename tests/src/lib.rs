//! Helpers for the black-box tests: find the built `stellarchat` binary, start it on
//! 127.0.0.1 port 0, read the bound address from its stdout (`listening on http://…`),
//! and stop it (SIGTERM, or kill on drop). Also: the golden data, SSE and metrics parsing.
//!
//! The binary: `$STELLARCHAT_BIN`, else `$CARGO_TARGET_DIR/debug/stellarchat`, else
//! `target/debug/stellarchat` at the repository root. Build it first
//! (`cargo build -p stellarchat`); `cargo test -p stellarchat-tests` does not.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The server's route paths, from the server library itself.
pub use stellarchat::serve::routes;

/// The default model's served name (the file stem).
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("STELLARCHAT_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let target = if target.is_absolute() { target } else { repo_root().join(target) };
    target.join("debug").join(format!("stellarchat{}", std::env::consts::EXE_SUFFIX))
}

/// The default model file; a missing file fails the test with the command that fetches it.
pub fn default_model() -> PathBuf {
    let path = repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run `just weights` first", path.display());
    path
}

/// `tests/golden/smollm2-135m-instruct-q4_1.json`.
pub fn golden() -> serde_json::Value {
    let path = repo_root().join("tests/golden/smollm2-135m-instruct-q4_1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

/// A golden chat by name (`capital`, `system_haiku`, …).
pub fn golden_chat(name: &str) -> serde_json::Value {
    let golden = golden();
    golden["chats"]
        .as_array()
        .and_then(|chats| chats.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no golden chat named {name}"))
}

/// A running server process.
pub struct Server {
    child: Child,
    pub addr: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `stellarchat serve --host 127.0.0.1 --port 0 <args>` and waits for its
    /// `listening on` line (not for the model: see [`Server::wait_ready`]).
    pub async fn start(args: &[&str]) -> Server {
        let bin = binary();
        assert!(bin.exists(), "{} is missing: build it with `cargo build -p stellarchat`", bin.display());
        let mut child = Command::new(&bin)
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(repo_root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        // stderr is drained continuously so the server never blocks on a full pipe.
        if let Some(stderr) = child.stderr.take() {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    return Some(addr.to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let logs = output.lock().unwrap().join("\n");
            panic!("the server did not report its address; its log:\n{logs}");
        };
        // Keep reading stdout so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, addr, output }
    }

    /// Starts the server on the default model and waits until it is ready.
    pub async fn default_model(args: &[&str]) -> Server {
        let model = default_model();
        let mut all = vec!["--model", model.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let server = Server::start(&all).await;
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Polls `/ready` until 200 (at most 300 s: a debug build on two cores is slow).
    pub async fn wait_ready(&self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if let Ok(res) = client.get(self.url(routes::READY)).send().await {
                if res.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server was not ready in time; its log:\n{}", self.logs());
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// POSTs `body` as JSON to `path`; the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let res = client().post(self.url(path)).json(body).send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.expect("JSON body"))
    }

    /// Sends `request` as one `chat.completion.create` on a fresh WebSocket and returns the
    /// chunk objects of its `chat.completion.chunk` frames, up to `chat.completion.done`.
    pub async fn ws_chat_chunks(&self, request: &serde_json::Value) -> Vec<serde_json::Value> {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;

        let (mut ws, _) = tokio_tungstenite::connect_async(self.ws_url(routes::CHAT_WS)).await.expect("connect");
        let frame = serde_json::json!({"type": "chat.completion.create", "id": "r", "request": request});
        ws.send(Message::text(frame.to_string())).await.expect("send");
        let mut chunks = Vec::new();
        loop {
            let frame = next_ws_frame(&mut ws).await;
            match frame["type"].as_str() {
                Some("chat.completion.chunk") => chunks.push(frame["chunk"].clone()),
                Some("chat.completion.done") => break,
                _ => panic!("unexpected frame {frame}"),
            }
        }
        ws.close(None).await.expect("close");
        chunks
    }

    /// Reads `/metrics` and returns the value of one sample (`name{labels}` as printed).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = client().get(self.url(routes::METRICS)).send().await.ok()?.text().await.ok()?;
        metric_value(&text, sample)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The next text frame of a WebSocket, as JSON (control frames are skipped); panics after
/// 120 s or when the socket closes.
pub async fn next_ws_frame<S>(ws: &mut S) -> serde_json::Value
where
    S: futures::StreamExt<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// A client without connection pooling surprises: every test request is independent.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("HTTP client")
}

/// The value of a sample line `name{labels} value` in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    // A sample without labels also sums the series of every label set (e.g. `model`).
    let matching = text.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let labelled = !sample.contains('{') && key.strip_prefix(sample).is_some_and(|rest| rest.starts_with('{'));
        (key == sample || labelled).then(|| value.trim().parse::<f64>().ok()).flatten()
    });
    matching.fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// Splits an SSE body into frames (each without its trailing blank line). Panics on bytes
/// after the last `\n\n`: a body must end on a frame boundary.
pub fn sse_frames(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "the SSE body does not end with a blank line: {body:?}");
    body.split_terminator("\n\n").map(str::to_string).collect()
}

/// The JSON of `data:` frames (skipping comments and `[DONE]`).
pub fn sse_json(body: &str) -> Vec<serde_json::Value> {
    sse_frames(body)
        .iter()
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad frame {d:?}: {e}")))
        .collect()
}
