//! Scale-out: two replicas of the real binary behind nginx, configured by
//! `deploy/nginx/stellarchat.conf.template` (the same file as the users' example
//! `deploy/nginx/stellarchat.conf`, with loopback ports filled in). A chat completion
//! streams through nginx unbuffered, requests are spread over both replicas, and after one
//! replica is killed (SIGKILL) new requests, streaming, plain and WebSocket, still succeed.
//!
//! The Kubernetes manifests in `deploy/k8s/` are checked too: yamllint, the Kubernetes
//! schemas (`kubernetes-validate --strict`, offline), and what the schemas cannot know: two
//! or more replicas, probes on `/ready` and `/health` at the server's port, real
//! `STELLARCHAT_*` variables, a non-root pod, a Service that selects the pods.
//!
//! Needs nginx (`apt-get install nginx`): the test fails, saying so, when it is missing.
//! nginx runs as whoever runs the test, from a temporary prefix (config, pid, temp folders),
//! logging to a file there; nothing under /etc or /var is touched. Every process started
//! here is stopped by a guard's Drop, also when an assertion fails.

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, repo_root, routes, sse_json};
use tokio_tungstenite::tungstenite::Message;

const TEMPLATE: &str = "deploy/nginx/stellarchat.conf.template";
const EXAMPLE: &str = "deploy/nginx/stellarchat.conf";
const PROMPTS_TOKENS: &str = "stellarchat:prompt_tokens_total";

// ---------------------------------------------------------------------------------------
// The configuration: template, example, rendering
// ---------------------------------------------------------------------------------------

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn render(template: &str, upstreams: &[String], listen: &str) -> String {
    assert!(template.contains("{{UPSTREAMS}}") && template.contains("{{LISTEN}}"), "{TEMPLATE} lost a placeholder");
    template.replace("{{UPSTREAMS}}", &upstreams.join("\n")).replace("{{LISTEN}}", listen)
}

/// The example's upstream `server …;` lines (as written) and its `listen` value.
fn example_parts(example: &str) -> (Vec<String>, String) {
    let mut upstreams = Vec::new();
    let mut in_upstream = false;
    let mut listen = None;
    for line in example.lines() {
        let t = line.trim();
        if t.starts_with("upstream ") {
            in_upstream = true;
        } else if in_upstream && t.starts_with('}') {
            in_upstream = false;
        } else if in_upstream && t.starts_with("server ") {
            upstreams.push(line.to_string());
        } else if let Some(value) = t.strip_prefix("listen ") {
            listen = Some(value.trim_end_matches(';').trim().to_string());
        }
    }
    assert!(upstreams.len() >= 2, "{EXAMPLE} should balance two or more replicas: {upstreams:?}");
    (upstreams, listen.expect("a listen directive in the example"))
}

/// The example's first upstream line with its address replaced (its options kept:
/// `max_fails`, `fail_timeout`).
fn upstream_line(example_line: &str, addr: &str) -> String {
    let indent: String = example_line.chars().take_while(|c| c.is_whitespace()).collect();
    let mut words: Vec<&str> = example_line.split_whitespace().collect();
    assert_eq!(words[0], "server");
    words[1] = addr.trim_end_matches(';');
    let mut line = format!("{indent}{}", words.join(" "));
    if !line.ends_with(';') {
        line.push(';');
    }
    line
}

/// A complete nginx.conf around the snippet: everything nginx writes stays in the prefix.
fn main_conf() -> &'static str {
    "worker_processes 1;\n\
     events { worker_connections 256; }\n\
     http {\n\
     \x20   access_log off;\n\
     \x20   client_body_temp_path client_body_temp;\n\
     \x20   proxy_temp_path proxy_temp;\n\
     \x20   fastcgi_temp_path fastcgi_temp;\n\
     \x20   uwsgi_temp_path uwsgi_temp;\n\
     \x20   scgi_temp_path scgi_temp;\n\
     \x20   include stellarchat.conf;\n\
     }\n"
}

// ---------------------------------------------------------------------------------------
// Guards: a temporary folder and the nginx process group
// ---------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("stellarchat-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    // Debian installs it in /usr/sbin, which a non-root PATH may lack.
    on_path
        .into_iter()
        .chain(["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"].map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, and the scale-out test runs the real nginx: \
                 install it with `apt-get install -y nginx` (CI's .ci/run does)"
            )
        })
}

/// nginx's command line for a config in `prefix`: foreground, pid and error log in there.
fn nginx_command(prefix: &Path) -> Command {
    let mut cmd = Command::new(nginx_binary());
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-e", "stderr"])
        .arg("-g")
        .arg(format!("daemon off; pid {}; error_log stderr;", prefix.join("nginx.pid").display()));
    cmd
}

/// nginx (master and workers) in a process group of its own.
struct Nginx {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Nginx {
    fn start(prefix: &Path, port: u16) -> Nginx {
        let log = prefix.join("nginx.stderr");
        let mut child = nginx_command(prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&log).expect("nginx log file")))
            .stderr(Stdio::from(fs::File::create(&log).expect("nginx log file")))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&addr).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nginx exited ({status}) before listening; its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = signal_group(child.id(), "KILL");
                let _ = child.wait();
                panic!("nginx did not listen on {addr}; its log:\n{}", fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `kill -SIG -- -PGID`: the whole group. True when some process received it.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pgid = self.child.id();
        // SIGTERM to master and workers (fast shutdown), then SIGKILL for whatever is left.
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) || signal_group(pgid, "0") {
            signal_group(pgid, "KILL");
        }
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------
// Requests through nginx
// ---------------------------------------------------------------------------------------

fn chat(stream: bool) -> Value {
    json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
    })
}

/// A streamed chat completion through `url`: checks the SSE body and returns how many
/// separate reads it arrived in.
async fn stream_chat(url: &str, request_id: &str) -> usize {
    let res = client()
        .post(url)
        .header("x-request-id", request_id)
        .timeout(Duration::from_secs(300))
        .json(&chat(true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("streamed request {request_id}: {e}"));
    assert_eq!(res.status(), 200, "streamed request {request_id}");
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/event-stream"), "content-type {content_type:?}");
    let echoed = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(echoed.as_deref(), Some(request_id), "X-Request-Id did not pass through nginx");
    let mut reads = 0;
    let mut body = Vec::new();
    let mut stream = res.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap_or_else(|e| panic!("stream {request_id} broke: {e}"));
        if !piece.is_empty() {
            reads += 1;
            body.extend_from_slice(&piece);
        }
    }
    let body = String::from_utf8(body).expect("UTF-8 SSE");
    assert!(body.ends_with("data: [DONE]\n\n"), "the stream did not end with [DONE]: {body:?}");
    let chunks = sse_json(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "first chunk: {}", chunks[0]);
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert!(!text.is_empty(), "no content in {body:?}");
    reads
}

async fn plain_chat(url: &str) {
    let res = client().post(url).timeout(Duration::from_secs(300)).json(&chat(false)).send().await.expect("request");
    assert_eq!(res.status(), 200);
    // Without a client id, nginx's own $request_id (32 hex digits) reaches the replica.
    let id = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "X-Request-Id {id:?} is not nginx's");
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
}

/// One chat over `/v1/chat/ws` through nginx (the Upgrade headers must pass).
async fn websocket_chat(ws_url: &str) -> Result<(), String> {
    let (mut ws, response) = tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(ws_url))
        .await
        .map_err(|_| "no WebSocket handshake in time".to_string())?
        .map_err(|e| format!("WebSocket handshake through nginx: {e}"))?;
    if response.status() != 101 {
        return Err(format!("handshake answered {}", response.status()));
    }
    let mut request = chat(false);
    request.as_object_mut().unwrap().remove("stream");
    let create = json!({"type": "chat.completion.create", "id": "ws-1", "request": request});
    ws.send(Message::text(create.to_string())).await.map_err(|e| format!("send: {e}"))?;
    let mut chunks = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(300), ws.next())
            .await
            .map_err(|_| "no frame in time".to_string())?
            .ok_or("the socket closed before chat.completion.done")?
            .map_err(|e| format!("after {chunks} chunks: {e}"))?;
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).map_err(|e| format!("bad frame {text}: {e}"))?;
        match frame["type"].as_str() {
            Some("chat.completion.chunk") => chunks += 1,
            Some("chat.completion.done") => break,
            _ => return Err(format!("unexpected frame {frame}")),
        }
    }
    let _ = ws.close(None).await;
    if chunks == 0 { Err("no chunk over the WebSocket".into()) } else { Ok(()) }
}

fn context(what: &str, nginx: &Nginx, a: &Server, b: &Server) -> String {
    format!(
        "{what}\n--- nginx log:\n{}\n--- replica A log:\n{}\n--- replica B log:\n{}",
        nginx.log(),
        a.logs(),
        b.logs()
    )
}

async fn prompt_tokens(server: &Server) -> f64 {
    server.metric(PROMPTS_TOKENS).await.unwrap_or_else(|| panic!("{PROMPTS_TOKENS} missing from {}", server.addr))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The users' example is the template with its placeholders filled, and nginx accepts it.
#[test]
fn example_config_is_the_template_filled_in_and_valid() {
    let template = read(TEMPLATE);
    let example = read(EXAMPLE);
    let (upstreams, listen) = example_parts(&example);
    assert!(
        render(&template, &upstreams, &listen) == example,
        "{EXAMPLE} and {TEMPLATE} drifted apart: edit both (the example is the template with the \
         upstream `server` lines and the `listen` value filled in)"
    );
    for directive in [
        "least_conn;",
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_http_version 1.1;",
        "proxy_next_upstream error timeout http_502 http_503",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header X-Request-Id",
    ] {
        assert!(template.contains(directive), "{TEMPLATE} lacks `{directive}`");
    }
    assert!(upstreams.iter().all(|l| l.contains("max_fails=") && l.contains("fail_timeout=")), "{upstreams:?}");

    let prefix = TempDir::new("nginx-t");
    fs::write(prefix.0.join("nginx.conf"), main_conf()).unwrap();
    fs::write(prefix.0.join("stellarchat.conf"), &example).unwrap();
    let out = nginx_command(&prefix.0).arg("-t").output().expect("run nginx -t");
    assert!(out.status.success(), "nginx -t rejects {EXAMPLE}:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn two_replicas_behind_nginx_survive_losing_one() {
    nginx_binary(); // fail early, before the replicas load
    let (mut a, b) = tokio::join!(Server::default_model(&[]), Server::default_model(&[]));

    let example = read(EXAMPLE);
    let (example_upstreams, _) = example_parts(&example);
    let upstreams: Vec<String> =
        [&a.addr, &b.addr].iter().map(|addr| upstream_line(&example_upstreams[0], addr)).collect();
    let port = free_port();
    let prefix = TempDir::new("scale-out");
    fs::write(prefix.0.join("nginx.conf"), main_conf()).unwrap();
    fs::write(prefix.0.join("stellarchat.conf"), render(&read(TEMPLATE), &upstreams, &format!("127.0.0.1:{port}")))
        .unwrap();
    let nginx = Nginx::start(&prefix.0, port);
    let chat_url = nginx.url(routes::CHAT_COMPLETIONS);

    // 1. A streamed completion arrives through nginx in pieces, not buffered whole (the
    //    replicas also send `X-Accel-Buffering: no`; the config turns buffering off for all).
    let reads = stream_chat(&chat_url, "scale-out-1").await;
    assert!(reads >= 2, "{}", context("the SSE body arrived in one read: nginx buffered the stream", &nginx, &a, &b));

    // 2. Requests are spread over both replicas.
    for _ in 0..4 {
        if prompt_tokens(&a).await > 0.0 && prompt_tokens(&b).await > 0.0 {
            break;
        }
        plain_chat(&chat_url).await;
    }
    assert!(
        prompt_tokens(&a).await > 0.0 && prompt_tokens(&b).await > 0.0,
        "{}",
        context("nginx did not spread the requests over both replicas", &nginx, &a, &b)
    );

    // 3. Replica A dies (SIGKILL: no graceful shutdown, its port refuses connections).
    let pid = a.pid().expect("replica A's pid");
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    assert!(a.wait_exit(Duration::from_secs(10)).await.is_some(), "replica A did not die");
    let before = prompt_tokens(&b).await;

    // 4. New requests still succeed: nginx moves them to replica B.
    for i in 0..4 {
        if i % 2 == 0 {
            stream_chat(&chat_url, &format!("after-kill-{i}")).await;
        } else {
            plain_chat(&chat_url).await;
        }
    }
    if let Err(e) = websocket_chat(&nginx.url(routes::CHAT_WS).replacen("http://", "ws://", 1)).await {
        panic!("{}", context(&format!("/v1/chat/ws through nginx: {e}"), &nginx, &a, &b));
    }
    assert!(prompt_tokens(&b).await > before, "{}", context("replica B served nothing after A died", &nginx, &a, &b));
    // …and nginx did try the dead replica (and skipped it), so failover was exercised.
    assert!(
        nginx.log().contains("Connection refused"),
        "{}",
        context("nginx never tried the dead replica: the failover path was not exercised", &nginx, &a, &b)
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------

/// A Python tool from PATH or `.venv/bin`.
fn python_tool(name: &str) -> PathBuf {
    let venv = repo_root().join(".venv/bin").join(name);
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .or_else(|| venv.is_file().then_some(venv))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (neither on PATH nor in .venv/bin): install the deploy linters from PyPI with \
                 `python3 -m venv .venv && .venv/bin/pip install yamllint kubernetes-validate` (`just test` does)"
            )
        })
}

/// `.venv/bin/python` or `python3`, whichever has PyYAML.
fn python_with_yaml() -> PathBuf {
    [repo_root().join(".venv/bin/python"), PathBuf::from("python3")]
        .into_iter()
        .find(|py| {
            Command::new(py).args(["-c", "import yaml"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "no Python with PyYAML: `python3 -m venv .venv && .venv/bin/pip install yamllint kubernetes-validate`"
            )
        })
}

fn run_tool(tool: &Path, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).current_dir(repo_root()).output().expect("run linter");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{} {}` failed:\n{text}", tool.display(), args.join(" "));
    text
}

/// Every document of a YAML file, as JSON (PyYAML, which yamllint brings along).
fn yaml_documents(rel: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let json = run_tool(&python_with_yaml(), &["-c", script, rel]);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn help_lists_env(help: &str, name: &str) -> bool {
    help.match_indices(name).any(|(at, _)| {
        help[..at].ends_with("env: ")
            && !help[at + name.len()..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[test]
fn kubernetes_manifests_are_valid() {
    let yamllint = python_tool("yamllint");
    let validate = python_tool("kubernetes-validate");
    run_tool(&yamllint, &["-c", "deploy/.yamllint.yaml", "--strict", "deploy/"]);

    let dir = repo_root().join("deploy/k8s");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .expect("deploy/k8s")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let manifests: Vec<&String> = files.iter().filter(|f| *f != "kustomization.yaml").collect();
    let paths: Vec<String> = manifests.iter().map(|f| format!("deploy/k8s/{f}")).collect();
    let mut args = vec!["--strict"];
    args.extend(paths.iter().map(String::as_str));
    run_tool(&validate, &args);

    // `kubectl apply -k deploy/k8s/` applies every manifest.
    let kustomization = &yaml_documents("deploy/k8s/kustomization.yaml")[0];
    let listed: Vec<&str> =
        kustomization["resources"].as_array().expect("resources").iter().filter_map(Value::as_str).collect();
    for file in &manifests {
        assert!(listed.contains(&file.as_str()), "kustomization.yaml does not list {file}");
    }

    let docs: Vec<Value> = paths.iter().flat_map(|p| yaml_documents(p)).collect();
    let of_kind = |kind: &'static str| docs.iter().find(|d| d["kind"] == kind);
    let deployment = of_kind("Deployment").expect("a Deployment");
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "the Deployment should run two or more replicas"
    );
    let pod = &deployment["spec"]["template"];
    let pod_spec = &pod["spec"];
    let container = pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "stellarchat"))
        .expect("a container named stellarchat");

    // The environment: real flags only; the port, model and probes agree.
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let bin = stellarchat_tests::binary();
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p stellarchat`", bin.display());
    let out = Command::new(&bin).args(["serve", "--help"]).output().expect("stellarchat serve --help");
    assert!(out.status.success(), "stellarchat serve --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    for name in env.keys().filter(|k| k.starts_with("STELLARCHAT_")) {
        assert!(help_lists_env(&help, name), "deployment.yaml sets {name}, which no `stellarchat serve` flag reads");
    }
    let value =
        |k: &str| env.get(k).and_then(|e| e["value"].as_str()).unwrap_or_else(|| panic!("no {k} value")).to_string();
    assert_eq!(value("STELLARCHAT_HOST"), "0.0.0.0");
    let port: u64 = value("STELLARCHAT_PORT").parse().expect("a numeric port");
    let ports = container["ports"].as_array().expect("ports");
    let port_of = |p: &Value| -> u64 {
        match p {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => ports
                .iter()
                .find(|q| q["name"] == name.as_str())
                .and_then(|q| q["containerPort"].as_u64())
                .expect("named port"),
            _ => panic!("bad port {p}"),
        }
    };
    for (probe, path) in [("readinessProbe", routes::READY), ("livenessProbe", routes::HEALTH)] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(&get["port"]), port, "{probe} asks another port than STELLARCHAT_PORT");
    }
    let model = value("STELLARCHAT_MODEL");
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    assert!(
        mounts.iter().any(|m| m["mountPath"].as_str().is_some_and(|p| model.starts_with(&format!("{p}/")))),
        "STELLARCHAT_MODEL {model} is not on a mounted volume"
    );

    // Non-root, and the Service reaches the pods on the server's port.
    let non_root = |sc: &Value| sc["runAsNonRoot"] == true && sc["runAsUser"].as_u64().is_none_or(|u| u != 0);
    assert!(
        non_root(&pod_spec["securityContext"]) || non_root(&container["securityContext"]),
        "the pod may run as root"
    );
    let service = of_kind("Service").expect("a Service");
    let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    for (k, v) in service["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(labels.get(k), Some(v), "the Service selector {k}={v} does not select the pods");
    }
    let target = &service["spec"]["ports"][0]["targetPort"];
    assert_eq!(port_of(target), port, "the Service targets another port than the server's");
}
