//! `stellarchat serve`: the OpenAI-compatible API over HTTP, SSE and WebSocket, on salvo.
//!
//! Module map:
//! - [`config`]: the flags ([`ServeArgs`]), each also from `STELLARCHAT_<FLAG>`.
//! - [`routes`]: path constants (the bottom layer); [`router`]: the router and the service
//!   (middleware, catcher, OpenAPI), the top layer.
//! - [`protocol`]: OpenAI's wire types (serde + `ToSchema`).
//! - [`validate`]: pure request validation → typed valid requests.
//! - [`prompt`]: chat template + tokenizer + context-length check.
//! - [`generate`]: submitting to the engine and merging its event streams per choice.
//! - [`handlers`]: one module per route family; [`sse`]: SSE framing; [`ws`]: WebSocket.
//! - [`error`]: [`error::ApiError`] and the one place errors become HTTP.
//! - [`middleware`]: access log + request id, API keys, CORS; [`metrics`]: Prometheus.
//! - [`state`]: shared state and the graceful-shutdown [`state::Lifecycle`].
//! - [`tools`]: tool calls and structured outputs (grammars for the engine, parsers for its
//!   text); [`responses_store`]: stored `/v1/responses`; [`conversations`]: the WebSocket's
//!   server-side conversations; [`openapi`]: `/openapi.json` made to state what validation
//!   accepts; [`ui`]: the embedded chat page at `/`.
//!
//! - [`registry`]: the models offered (`--model`s, `--models-dir`, `--models-config`), each
//!   with its own engine, loaded on demand and unloaded by LRU or keep-alive.
//!
//! What happens to the models comes as [`registry::ModelEvent`]s: a start-up model failing to
//! load, or the only model's engine giving up, ends `serve` with an error, and the process
//! with status 1 (see [`run`]).
//!
//! The modules form layers, bottom to top ([`layers::LAYERS`], enforced by a test): route
//! paths and wire types; errors; tools and validation; the response store, state and access
//! log; the generation driver; prompts; the chunk formatters; handlers and the WebSocket; the
//! router; the flags.
//!
//! Start-up order matters: the port is bound *before* the weights load (so `/health`
//! answers and `/ready` says 503 while loading), and the bound address is printed on
//! stdout as `listening on http://HOST:PORT` (tests start us on port 0 and read it).

pub mod config;
pub mod conversations;
pub mod error;
pub mod generate;
pub mod handlers;
pub mod layers;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod prompt;
pub mod protocol;
pub mod registry;
pub mod responses_store;
pub mod router;
pub mod routes;
pub mod sse;
pub mod state;
pub mod tools;
pub mod ui;
pub mod validate;
pub mod ws;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use salvo::conn::tcp::TcpAcceptor;
use salvo::prelude::*;
use salvo::server::ServerHandle;
use stellarchat_model::ModelError;

pub use config::{LogFormat, ServeArgs};
use metrics::Metrics;
use registry::{ModelEvent, ModelRegistry, ModelSpec, SharedLimits, SpecError};
use state::{AppState, Lifecycle};

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("models: {0}")]
    Models(#[from] SpecError),
    #[error("cannot open the model `{model}`: {error}")]
    Model { model: String, error: ModelError },
    #[error("--chat-template (model `{model}`): {error}")]
    ChatTemplate { model: String, error: ModelError },
    #[error("loading the model `{model}` failed: {error}")]
    Load { model: String, error: Arc<ModelError> },
    /// The engine of the server's only model failed while serving and gave up (see
    /// `engine::supervisor`): the process exits non-zero so that its supervisor starts a
    /// fresh one. With several models, the failed one is unloaded instead.
    #[error("the engine of `{model}` failed and the server stops: {error}")]
    EngineFailed { model: String, error: Arc<ModelError> },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot read the API key file: {0}")]
    ApiKeyFile(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server: {0}")]
    Server(std::io::Error),
}

/// Installs the global log subscriber (`RUST_LOG` overrides the `info` default). Logs go to
/// stderr so stdout carries only the `listening on` line. A subscriber installed earlier
/// by the caller wins.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: files and log collectors get plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The registry of `args`' models, with the start-up ones opened and loading (a file that
/// cannot be opened fails here, fast); also used by in-process tests.
pub fn open_models(
    args: &ServeArgs,
    metrics: Arc<Metrics>,
) -> Result<(Arc<ModelRegistry>, tokio::sync::mpsc::UnboundedReceiver<ModelEvent>), ServeError> {
    let specs = args.model_specs()?;
    let limits = SharedLimits { max_tokens_limit: args.max_tokens_limit, max_n: args.max_n };
    let (models, events) = ModelRegistry::new(specs, limits, args.max_loaded_models, metrics);
    let preload: Vec<(usize, ModelSpec)> =
        models.specs().cloned().enumerate().filter(|(_, spec)| spec.preload).collect();
    for (index, spec) in preload {
        // Opening parses metadata, tokenizer and template only; the weights load on the
        // model's engine thread.
        let loader = stellarchat_model::model::ModelLoader::open(&spec.source)
            .map_err(|error| ServeError::Model { model: spec.id.clone(), error })?;
        let info = registry::apply_chat_template_file(loader.info(), spec.chat_template.as_deref())
            .map_err(|error| ServeError::ChatTemplate { model: spec.id.clone(), error })?;
        models.start(index, loader, info, true);
    }
    Ok((models, events))
}

/// Builds the shared state (also used by in-process tests).
pub fn build_state(
    args: &ServeArgs,
    models: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    api_keys: Vec<String>,
) -> Arc<AppState> {
    Arc::new(AppState {
        models,
        api_keys,
        metrics,
        log_content: args.log_content,
        parse_special_in_content: args.parse_special_in_content,
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout.max(1)),
        metrics_api_key: args.metrics_api_key,
        cors_origins: args.cors_origins.clone(),
        ws_max_message_bytes: args.ws_max_message_bytes.unwrap_or(args.max_body_bytes).max(1),
        ws_idle_timeout: Duration::from_secs(args.ws_idle_timeout.max(1)),
        sse_keepalive: Duration::from_secs(args.sse_keepalive.max(1)),
        started: protocol::unix_now(),
        lifecycle: Arc::new(Lifecycle::default()),
        responses: Arc::new(responses_store::ResponseStore::new(args.responses_store_size)),
        conversations: Arc::new(conversations::ConversationStore::new(args.conversation_limits())),
        ui: !args.no_ui,
    })
}

/// `stellarchat serve` from the command line: logging, then the listener on `--host`/`--port`,
/// then [`run`] until SIGTERM or SIGINT.
pub async fn main(args: ServeArgs) -> Result<(), ServeError> {
    init_logging(args.log_format);
    let addr = format!("{}:{}", args.host, args.port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    run(listener, args, shutdown_signal()).await
}

/// Serves the API on `listener` until `shutdown` completes (then drains gracefully) or the
/// model fails to load. The caller binds the listener (tests bind 127.0.0.1:0) and decides
/// what shutdown means (signals in [`main`], a channel in tests). `args.host`/`args.port`
/// are not used here.
pub async fn run(
    listener: tokio::net::TcpListener,
    args: ServeArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let api_keys = args.load_api_keys().map_err(ServeError::ApiKeyFile)?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let (models, events) = open_models(&args, metrics.clone())?;

    let bound = listener.local_addr().map_err(ServeError::Server)?;
    let acceptor = TcpAcceptor::try_from(listener).map_err(ServeError::Server)?;
    let state = build_state(&args, models.clone(), metrics, api_keys);

    let ids: Vec<&str> = models.specs().map(|s| s.id.as_str()).collect();
    tracing::info!(
        models = %ids.join(","),
        default_model = %models.default_id(),
        device = %args.device,
        dtype = %args.dtype,
        weights = %args.weights,
        max_loaded_models = args.max_loaded_models,
        keep_alive_s = ?args.keep_alive,
        api_keys = state.api_keys.len(),
        "listening on http://{bound}"
    );
    // The parseable line for scripts and tests (stdout; logs are on stderr).
    println!("listening on http://{bound}");
    let _ = std::io::stdout().flush();

    let server = Server::new(acceptor).max_connections(args.max_connections as usize);
    let handle = server.handle();
    let service = router::service(state.clone(), &args.cors_origins);
    let mut serving = tokio::spawn(server.try_serve(service));
    let reaper_stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(models.clone().run_reaper(reaper_stop.clone()));

    let failure = tokio::select! {
        _ = shutdown => None,
        failure = watch_models(events, models.specs().count()) => Some(failure),
        result = &mut serving => {
            // The accept loop ended on its own: nothing left to drain.
            reaper_stop.cancel();
            models.shutdown();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Server(e)),
                Err(e) => Err(ServeError::Server(std::io::Error::other(e))),
            };
        }
    };
    reaper_stop.cancel();
    shutdown_gracefully(&state, &handle, &mut serving, args.shutdown_timeout()).await;
    models.shutdown();
    match failure {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Follows the models' events: logs loads, and returns the error that ends `serve` — a
/// model loaded at start-up that fails to load, or the engine of the only model giving up
/// (the process then exits non-zero for its supervisor to restart it). With several
/// models, a failed one is unloaded and loads again when next asked for. Never returns
/// while the models serve.
async fn watch_models(mut events: tokio::sync::mpsc::UnboundedReceiver<ModelEvent>, models: usize) -> ServeError {
    while let Some(event) = events.recv().await {
        match event {
            ModelEvent::Ready { id, seconds } => tracing::info!(model = %id, seconds, "model loaded; ready"),
            ModelEvent::LoadFailed { id, error, preload: true } => {
                tracing::error!(model = %id, error = %error, "a start-up model failed to load; shutting down");
                return ServeError::Load { model: id, error };
            }
            ModelEvent::LoadFailed { id, error, preload: false } => {
                tracing::error!(model = %id, error = %error, "loading a model on demand failed; serving the others");
            }
            ModelEvent::EngineFailed { id, error } if models == 1 => {
                tracing::error!(model = %id, error = %error, "the engine failed; shutting down");
                return ServeError::EngineFailed { model: id, error };
            }
            ModelEvent::EngineFailed { id, error } => {
                tracing::error!(model = %id, error = %error, "the engine failed; the model is unloaded");
            }
        }
    }
    // The registry is gone: nothing more to watch.
    std::future::pending().await
}

/// Graceful shutdown: stop accepting and refuse new generations, let running ones finish
/// for up to `timeout`, then cut them (SSE streams end with an error event, WebSockets
/// close), and give connections a moment to flush before forcing them closed.
async fn shutdown_gracefully(
    state: &AppState,
    handle: &ServerHandle,
    serving: &mut tokio::task::JoinHandle<std::io::Result<()>>,
    timeout: Duration,
) {
    let running = state.lifecycle.active();
    tracing::info!(running, timeout_s = timeout.as_secs(), "shutting down: draining running requests");
    state.lifecycle.begin_drain();
    handle.stop_graceful(None);
    if !state.lifecycle.wait_idle(timeout).await {
        tracing::warn!(running = state.lifecycle.active(), "shutdown timeout reached: cancelling running requests");
    }
    // Ends whatever still runs, and closes idle WebSockets (salvo does not track them).
    state.lifecycle.cut();
    if tokio::time::timeout(Duration::from_secs(2), &mut *serving).await.is_err() {
        handle.stop_forceful();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut *serving).await;
    }
    tracing::info!("server stopped");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests;
