//! What every handler shares: the models ([`ModelRegistry`]: engines, tokenizers, templates,
//! limits), the metrics, and the [`Lifecycle`] that coordinates graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use salvo::Depot;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::conversations::ConversationStore;
use super::error::ApiError;
use super::metrics::Metrics;
use super::registry::{ModelLease, ModelRegistry};
use super::responses_store::ResponseStore;

pub struct AppState {
    /// The models offered, loaded on demand.
    pub models: Arc<ModelRegistry>,
    /// Accepted API keys; empty = the API is open.
    pub api_keys: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub log_content: bool,
    /// `--parse-special-in-content`: chat content may spell control tokens (see `prompt`).
    pub parse_special_in_content: bool,
    pub max_body_bytes: usize,
    /// `--body-timeout`: how long a request body may take to arrive.
    pub body_timeout: Duration,
    /// `--metrics-api-key`: `/metrics` needs a key like `/v1/*`.
    pub metrics_api_key: bool,
    /// `--cors-origin`s: also the browser origins a WebSocket may come from.
    pub cors_origins: Vec<String>,
    /// `--ws-max-message-bytes`: larger WebSocket messages close the socket with 1009.
    pub ws_max_message_bytes: usize,
    /// `--ws-idle-timeout`: an idle WebSocket is closed after this long.
    pub ws_idle_timeout: Duration,
    pub sse_keepalive: Duration,
    /// Unix seconds at start-up, for `created` in `/v1/models`.
    pub started: u64,
    pub lifecycle: Arc<Lifecycle>,
    /// Stored `/v1/responses` responses (`--responses-store-size`).
    pub responses: Arc<ResponseStore>,
    /// Server-side conversations of the WebSocket (`conversation.*` frames).
    pub conversations: Arc<ConversationStore>,
    /// Whether `/` serves the chat page (off with `--no-ui`).
    pub ui: bool,
}

impl AppState {
    /// The state the access-log hoop put into the depot.
    pub fn from_depot(depot: &Depot) -> Result<Arc<AppState>, ApiError> {
        depot
            .get_typed::<Arc<AppState>>()
            .cloned()
            .map_err(|_| ApiError::Internal("application state missing from the depot".into()))
    }

    /// New generations are refused while shutting down.
    pub fn check_accepting(&self) -> Result<(), ApiError> {
        if self.lifecycle.is_draining() {
            return Err(ApiError::ShuttingDown);
        }
        Ok(())
    }

    /// The model a request names (id or alias), loaded if need be (see
    /// [`ModelRegistry::acquire`]); refused while shutting down.
    pub async fn model(&self, name: &str) -> Result<ModelLease, ApiError> {
        self.check_accepting()?;
        self.models.acquire(name).await
    }
}

/// Graceful shutdown, in two phases: *draining* (no new generations; running ones go on)
/// and *cut* (running ones end now). Each generation holds an [`ActiveGuard`] so the
/// server knows when draining is done.
#[derive(Default)]
pub struct Lifecycle {
    draining: CancellationToken,
    cut: CancellationToken,
    active: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Fires when running generations must stop.
    pub fn cut_token(&self) -> CancellationToken {
        self.cut.clone()
    }

    pub fn cut(&self) {
        self.cut.cancel();
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Waits until no generation runs, or `timeout` passes. Returns whether it drained.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// Counts one running generation (HTTP or WebSocket) for [`Lifecycle::wait_idle`].
pub struct ActiveGuard(Arc<Lifecycle>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
