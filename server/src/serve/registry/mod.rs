//! The models a server offers, loaded and unloaded on demand. Each loaded model has its own
//! engine (thread, KV budget, prefix cache), so one model's load or failure never stalls
//! another's streams.
//!
//! A request names a model ([`ModelRegistry::acquire`]): a loaded one is leased at once; an
//! unloaded one is opened, its engine spawned, and the request waits until it is ready
//! (models loaded at start-up answer 503 `not_ready` until then instead, as `/ready` does).
//! Room is made under `--max-loaded-models` by unloading the least recently used idle
//! model, and `--keep-alive` unloads idle ones ([`policy`]). An unloaded model's engine
//! stops when the last request using it ends ([`ServedModel`]'s `Drop`).
//!
//! What happens to the models (ready, failed to load, engine failed) is sent as
//! [`ModelEvent`]s to `serve`, which decides whether the process ends (a model loaded at
//! start-up that fails; a lone model whose engine gives up).

pub mod policy;
mod served;
pub mod spec;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use stellarchat_model::ModelError;
use stellarchat_model::engine::{Engine, EngineState, EngineStats};
use stellarchat_model::model::{ModelInfo, ModelLoader};
use tokio::sync::mpsc;

pub use served::{ModelLease, ServedModel};
pub use spec::{ModelSpec, SpecDefaults, SpecError};

use served::lock;

use super::error::ApiError;
use super::metrics::Metrics;
use super::validate::Limits;

/// The limits every model shares (the rest of [`Limits`] comes from the model).
#[derive(Debug, Clone, Copy)]
pub struct SharedLimits {
    pub max_tokens_limit: usize,
    pub max_n: usize,
}

/// What happened to a model, for `serve` to act on.
#[derive(Debug, Clone)]
pub enum ModelEvent {
    Ready { id: String, seconds: f64 },
    /// Loading failed; `preload`: the model was loaded at start-up.
    LoadFailed { id: String, error: Arc<ModelError>, preload: bool },
    /// The engine gave up while serving (see `engine::supervisor`); the model is unloaded.
    EngineFailed { id: String, error: Arc<ModelError> },
}

/// Where a model stands, for `/v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    Unloaded,
    Loading,
    Loaded,
}

impl LoadState {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadState::Unloaded => "unloaded",
            LoadState::Loading => "loading",
            LoadState::Loaded => "loaded",
        }
    }
}

/// One model as `/v1/models` shows it.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub id: String,
    pub aliases: Vec<String>,
    pub state: LoadState,
    pub pinned: bool,
    /// Known once the model has been opened.
    pub max_model_len: Option<usize>,
}

struct Entry {
    spec: ModelSpec,
    loaded: Mutex<Option<Arc<ServedModel>>>,
    /// The context window, remembered after the first load (for `/v1/models`).
    max_model_len: Mutex<Option<usize>>,
}

/// Every model the server offers, and the loaded ones' engines.
pub struct ModelRegistry {
    entries: Vec<Entry>,
    limits: SharedLimits,
    /// `--max-loaded-models`; 0: no limit.
    max_loaded: usize,
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<ModelEvent>,
    /// Loads start one at a time: the room check and the new slot must not interleave, and
    /// two models reading their files at once would double the peak memory.
    loading: tokio::sync::Mutex<()>,
}


/// Opens a model's file (metadata, tokenizer, template: quick) with its chat template file
/// applied. The weights load later, on the engine's thread.
pub fn open_model(spec: &ModelSpec) -> Result<(ModelLoader, Arc<ModelInfo>), ModelError> {
    let loader = ModelLoader::open(&spec.source)?;
    let info = apply_chat_template_file(loader.info(), spec.chat_template.as_deref())?;
    Ok((loader, info))
}

impl ModelRegistry {
    pub fn new(
        specs: Vec<ModelSpec>,
        limits: SharedLimits,
        max_loaded: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ModelEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let entries = specs
            .into_iter()
            .map(|spec| Entry { spec, loaded: Mutex::new(None), max_model_len: Mutex::new(None) })
            .collect();
        let registry = ModelRegistry { entries, limits, max_loaded, metrics, events, loading: Default::default() };
        (Arc::new(registry), receiver)
    }

    pub fn specs(&self) -> impl Iterator<Item = &ModelSpec> {
        self.entries.iter().map(|e| &e.spec)
    }

    /// The model of requests that name none (`/tokenize`, a new WebSocket conversation).
    pub fn default_id(&self) -> &str {
        self.entries.first().map_or("", |e| e.spec.id.as_str())
    }

    /// The default model if it is loaded or loading (its info and limits are known then).
    pub fn default_model(&self) -> Option<Arc<ServedModel>> {
        if self.entries.is_empty() { None } else { self.loaded(0) }
    }

    /// A model's index by id or alias.
    pub fn resolve(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.id == name || e.spec.aliases.iter().any(|a| a == name))
    }

    fn loaded(&self, index: usize) -> Option<Arc<ServedModel>> {
        lock(&self.entries[index].loaded).clone()
    }

    /// Starts the engine of an opened model and puts it in its slot (start-up preloads and
    /// on-demand loads both come here). `startup`: part of the server's start-up, so
    /// requests and `/ready` answer 503 until it is ready, and a failure stops the server.
    pub fn start(
        self: &Arc<Self>,
        index: usize,
        loader: ModelLoader,
        info: Arc<ModelInfo>,
        startup: bool,
    ) -> Arc<ServedModel> {
        let entry = &self.entries[index];
        let spec = &entry.spec;
        let max_model_len = spec.max_model_len.map_or(info.context_length, |m| m.clamp(1, info.context_length));
        *lock(&entry.max_model_len) = Some(max_model_len);
        let limits = Limits {
            max_model_len,
            max_tokens_limit: self.limits.max_tokens_limit.max(1),
            max_n: self.limits.max_n.max(1),
            vocab_size: info.tokenizer.vocab_size(),
        };
        let id = spec.id.clone();
        let mut last_reported = 0;
        let progress_id = id.clone();
        let progress = Box::new(move |done: usize, total: usize| {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            if pct >= last_reported + 25 || (done == total && last_reported < 100) {
                last_reported = pct;
                tracing::info!(model = %progress_id, done, total, "loading weights: {pct}%");
            }
        });
        tracing::info!(model = %id, source = %spec.source, device = %spec.load.device, "loading model");
        let engine = Engine::spawn(loader, spec.load, spec.engine, progress);
        let model = Arc::new(ServedModel::new(id, engine, info, limits, self.metrics.clone(), startup));
        *lock(&entry.loaded) = Some(model.clone());
        tokio::spawn(follow_engine(
            Arc::downgrade(self),
            index,
            Arc::downgrade(&model),
            model.engine.watch_state(),
            startup,
        ));
        model
    }

    /// A lease on the model `name` if it is loaded and ready now; never loads.
    pub fn try_lease(&self, name: &str) -> Option<ModelLease> {
        let model = self.loaded(self.resolve(name)?)?;
        model.engine.is_ready().then(|| ModelLease::new(model))
    }

    /// A lease on the model `name` (an id or alias), loading it if need be. Errors:
    /// `model_not_found`; `not_ready` while a start-up model loads; `model_load_failed`;
    /// `overloaded` when `--max-loaded-models` are loaded and all busy.
    pub async fn acquire(self: &Arc<Self>, name: &str) -> Result<ModelLease, ApiError> {
        let index = self.resolve(name).ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
        if let Some(model) = self.loaded(index) {
            return self.when_ready(model).await;
        }
        let model = {
            let _one_at_a_time = self.loading.lock().await;
            match self.loaded(index) {
                Some(model) => model,
                None => {
                    self.make_room(index)?;
                    let spec = self.entries[index].spec.clone();
                    let opened = tokio::task::spawn_blocking(move || open_model(&spec))
                        .await
                        .map_err(|e| ApiError::Internal(format!("opening a model: {e}")))?;
                    match opened {
                        Ok((loader, info)) => self.start(index, loader, info, false),
                        Err(error) => {
                            let id = self.entries[index].spec.id.clone();
                            let error = Arc::new(error);
                            self.metrics.observe_model_load(&id, "failed", None);
                            let _ = self.events.send(ModelEvent::LoadFailed { id: id.clone(), error: error.clone(), preload: false });
                            return Err(ApiError::ModelLoadFailed { model: id, reason: error.to_string() });
                        }
                    }
                }
            }
        };
        self.when_ready(model).await
    }

    /// A lease once `model` is ready. A start-up model still loading answers `not_ready`
    /// rather than holding the request (clients of a starting server retry, as `/ready`
    /// tells them); an on-demand load (also of a start-up model unloaded since) is waited for.
    async fn when_ready(&self, model: Arc<ServedModel>) -> Result<ModelLease, ApiError> {
        let lease = ModelLease::new(model);
        let mut states = lease.engine.watch_state();
        loop {
            let state = states.borrow_and_update().clone();
            match state {
                EngineState::Ready => return Ok(lease),
                EngineState::Loading if lease.startup => return Err(ApiError::NotReady),
                EngineState::Loading => {}
                EngineState::Failed(error) => {
                    return Err(ApiError::ModelLoadFailed { model: lease.id.clone(), reason: error.to_string() });
                }
                EngineState::Stopped => return Err(ApiError::ShuttingDown),
            }
            if states.changed().await.is_err() {
                return Err(ApiError::ShuttingDown);
            }
        }
    }

    fn views(&self) -> Vec<policy::LoadedView> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, e)| {
                let model = lock(&e.loaded).clone()?;
                Some(policy::LoadedView {
                    index,
                    in_use: model.in_use(),
                    ready: model.engine.is_ready(),
                    pinned: e.spec.pinned,
                    last_used: model.last_used(),
                    keep_alive: e.spec.keep_alive,
                })
            })
            .collect()
    }

    /// Unloads least recently used idle models until `index` fits under `--max-loaded-models`.
    fn make_room(&self, index: usize) -> Result<(), ApiError> {
        loop {
            match policy::make_room(&self.views(), self.max_loaded) {
                Ok(None) => return Ok(()),
                Ok(Some(victim)) => {
                    tracing::info!(model = %self.entries[victim].spec.id, for_model = %self.entries[index].spec.id,
                        max_loaded = self.max_loaded, "unloading the least recently used model to make room");
                    self.take(victim, "capacity");
                }
                Err(()) => {
                    return Err(ApiError::Overloaded(format!(
                        "model `{}` is not loaded and the {} loaded models (--max-loaded-models) are all in use",
                        self.entries[index].spec.id, self.max_loaded
                    )));
                }
            }
        }
    }

    /// Empties a model's slot; its engine stops when the last lease ends.
    fn take(&self, index: usize, reason: &str) -> bool {
        let taken = lock(&self.entries[index].loaded).take();
        if taken.is_some() {
            self.metrics.observe_model_unload(&self.entries[index].spec.id, reason);
        }
        taken.is_some()
    }

    /// `POST /v1/models/{id}/unload`: whether it was loaded. Requests still running on it
    /// finish first; new ones load it again.
    pub fn unload(&self, name: &str) -> Result<bool, ApiError> {
        let index = self.resolve(name).ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
        Ok(self.take(index, "admin"))
    }

    /// Unloads the models whose keep-alive has run out.
    pub fn reap(&self, now: Instant) {
        for index in policy::expired(&self.views(), now) {
            tracing::info!(model = %self.entries[index].spec.id, "keep-alive expired: unloading");
            self.take(index, "keep_alive");
        }
    }

    /// How often [`ModelRegistry::reap`] should run: a quarter of the shortest keep-alive
    /// (between 50 ms and 1 s), or never.
    pub fn reap_interval(&self) -> Option<Duration> {
        let shortest = self.entries.iter().filter_map(|e| e.spec.keep_alive).min()?;
        Some((shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
    }

    /// Ready to serve: every model loaded at start-up is (a later reload of one, after it
    /// was unloaded, does not make the server unready).
    pub fn check_ready(&self) -> Result<(), ApiError> {
        for (index, entry) in self.entries.iter().enumerate().filter(|(_, e)| e.spec.preload) {
            let model = self.loaded(index);
            match model.as_ref().map(|m| (m.engine.state(), m.startup)) {
                Some((EngineState::Ready, _)) | Some((EngineState::Loading, false)) => {}
                Some((EngineState::Loading, true)) => return Err(ApiError::NotReady),
                // Failed at start-up: the server is on its way out (see `serve`).
                Some((EngineState::Failed(_) | EngineState::Stopped, _)) => return Err(ApiError::ShuttingDown),
                // A start-up model an admin unloaded: the others still serve.
                None => tracing::debug!(model = %entry.spec.id, "start-up model not loaded"),
            }
        }
        Ok(())
    }

    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let state = match self.loaded(index) {
                    Some(m) if m.engine.is_ready() => LoadState::Loaded,
                    Some(_) => LoadState::Loading,
                    None => LoadState::Unloaded,
                };
                ModelStatus {
                    id: e.spec.id.clone(),
                    aliases: e.spec.aliases.clone(),
                    state,
                    pinned: e.spec.pinned,
                    max_model_len: *lock(&e.max_model_len),
                }
            })
            .collect()
    }

    /// The live engines' counters by model id, for `/metrics`.
    pub fn engine_stats(&self) -> HashMap<String, EngineStats> {
        (0..self.entries.len())
            .filter_map(|i| self.loaded(i).map(|m| (m.id.clone(), m.engine.stats())))
            .collect()
    }

    /// Stops every engine (the server is shutting down).
    pub fn shutdown(&self) {
        for index in 0..self.entries.len() {
            if let Some(model) = self.loaded(index) {
                model.engine.shutdown();
            }
        }
    }

    /// Which models count as loaded, for the `models_loaded` gauge.
    pub fn loaded_count(&self) -> usize {
        (0..self.entries.len()).filter(|&i| self.loaded(i).is_some_and(|m| m.engine.is_ready())).count()
    }

    /// Drops `model` from its slot if it is still there (it failed).
    fn forget(&self, index: usize, model: &Weak<ServedModel>) {
        let mut slot = lock(&self.entries[index].loaded);
        if slot.as_ref().is_some_and(|m| Weak::ptr_eq(&Arc::downgrade(m), model)) {
            let failed = slot.take();
            drop(slot);
            drop(failed);
        }
    }

    /// Runs the keep-alive sweep until `stop` fires (nothing to do without keep-alives).
    pub async fn run_reaper(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(interval) = self.reap_interval() else { return };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => self.reap(Instant::now()),
            }
        }
    }
}

/// Follows one engine: reports it ready (with its load time), and on failure empties its
/// slot and tells `serve`.
async fn follow_engine(
    registry: Weak<ModelRegistry>,
    index: usize,
    model: Weak<ServedModel>,
    mut states: tokio::sync::watch::Receiver<EngineState>,
    startup: bool,
) {
    let started = Instant::now();
    let mut ready = false;
    loop {
        let state = states.borrow_and_update().clone();
        let Some(registry) = registry.upgrade() else { return };
        let spec = &registry.entries[index].spec;
        match state {
            EngineState::Ready if !ready => {
                ready = true;
                let seconds = started.elapsed().as_secs_f64();
                registry.metrics.observe_model_load(&spec.id, "loaded", Some(seconds));
                registry.metrics.init_model(&spec.id);
                let _ = registry.events.send(ModelEvent::Ready { id: spec.id.clone(), seconds });
            }
            EngineState::Failed(error) => {
                registry.forget(index, &model);
                let id = spec.id.clone();
                let event = if ready {
                    ModelEvent::EngineFailed { id, error }
                } else {
                    registry.metrics.observe_model_load(&id, "failed", None);
                    ModelEvent::LoadFailed { id, error, preload: startup }
                };
                let _ = registry.events.send(event);
                return;
            }
            EngineState::Stopped => return,
            _ => {}
        }
        drop(registry);
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// The model's info with `--chat-template FILE` applied: the file's template (checked now,
/// so a bad file stops start-up) replaces the model's own. Logs which template chats will
/// use, or that there is none.
pub fn apply_chat_template_file(info: Arc<ModelInfo>, file: Option<&Path>) -> Result<Arc<ModelInfo>, ModelError> {
    let Some(file) = file else {
        match &info.chat_template {
            Some(_) => tracing::info!(model = %info.name, "chat template: the model's own"),
            None => tracing::warn!(
                model = %info.name,
                "the model has no chat template: /v1/chat/completions answers 400 (use /v1/completions, \
                 or pass --chat-template FILE)"
            ),
        }
        return Ok(info);
    };
    let template = stellarchat_model::chat_template::ChatTemplate::from_file(file, &info.tokenizer)?;
    tracing::info!(
        model = %info.name,
        file = %file.display(),
        replaces_models_own = info.chat_template.is_some(),
        "chat template: from --chat-template"
    );
    // The rest is cheap to clone: the tokenizer is shared.
    Ok(Arc::new(ModelInfo { chat_template: Some(template), ..ModelInfo::clone(&info) }))
}

#[cfg(test)]
mod tests;
