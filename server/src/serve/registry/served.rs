//! One loaded model ([`ServedModel`]: its engine, info and limits) and a request's hold on
//! it ([`ModelLease`]), which keeps the model from being unloaded while the request runs.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use stellarchat_model::engine::EngineHandle;
use stellarchat_model::model::ModelInfo;

use super::super::metrics::Metrics;
use super::super::validate::{Context, Limits};

/// A poisoned lock only means another thread panicked while holding it; the data (a slot,
/// a timestamp) is still consistent.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loaded (or loading) model: its engine and what validation needs.
pub struct ServedModel {
    pub id: String,
    pub engine: EngineHandle,
    pub info: Arc<ModelInfo>,
    pub limits: Limits,
    /// Loaded as part of the server's start-up (not on demand).
    pub startup: bool,
    in_use: AtomicUsize,
    last_used: Mutex<Instant>,
    metrics: Arc<Metrics>,
}

impl ServedModel {
    pub fn validation_context(&self) -> Context<'_> {
        Context { served_model_name: &self.id, limits: &self.limits, defaults: self.info.generation }
    }
}

impl Drop for ServedModel {
    /// The last holder is gone (the registry unloaded it and no request uses it): what the
    /// engine counted is kept in the model's metrics, and its thread stops, freeing the
    /// weights and KV cache.
    fn drop(&mut self) {
        self.metrics.retire_engine(&self.id, &self.engine.stats());
        self.engine.shutdown();
        tracing::info!(model = %self.id, "model unloaded");
    }
}

/// A request's hold on a model: while any lease lives the model is not unloaded
/// automatically, and if an admin unloads it, its engine runs until the last lease ends.
pub struct ModelLease(Arc<ServedModel>);

impl ModelLease {
    pub(super) fn new(model: Arc<ServedModel>) -> Self {
        model.in_use.fetch_add(1, Ordering::AcqRel);
        ModelLease(model)
    }
}

impl Clone for ModelLease {
    fn clone(&self) -> Self {
        ModelLease::new(self.0.clone())
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Deref for ModelLease {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        &self.0
    }
}


impl ServedModel {
    pub(super) fn new(
        id: String,
        engine: EngineHandle,
        info: Arc<ModelInfo>,
        limits: Limits,
        metrics: Arc<Metrics>,
        startup: bool,
    ) -> Self {
        let (in_use, last_used) = (AtomicUsize::new(0), Mutex::new(Instant::now()));
        ServedModel { id, engine, info, limits, startup, in_use, last_used, metrics }
    }

    /// Leases held now.
    pub(super) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// When the last lease ended (or when the model was loaded).
    pub(super) fn last_used(&self) -> Instant {
        *lock(&self.last_used)
    }
}
