//! The registry on real engines running `synthetic:tiny` (random weights, loaded in
//! milliseconds): on-demand loads, room made by LRU, keep-alive, pinning, admin unloads of a
//! model in use, and a load failure that leaves the other models serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stellarchat_model::engine::{EngineState, GenerateRequest, GenerationEvent};

use super::*;

fn spec(id: &str, source: &str) -> ModelSpec {
    ModelSpec {
        id: id.into(),
        aliases: Vec::new(),
        source: source.into(),
        load: Default::default(),
        engine: Default::default(),
        max_model_len: None,
        chat_template: None,
        pinned: false,
        preload: false,
        keep_alive: None,
    }
}

fn registry(specs: Vec<ModelSpec>, max_loaded: usize) -> (Arc<ModelRegistry>, mpsc::UnboundedReceiver<ModelEvent>) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    ModelRegistry::new(specs, SharedLimits { max_tokens_limit: 64, max_n: 2 }, max_loaded, metrics)
}

fn state_of(registry: &ModelRegistry, id: &str) -> LoadState {
    registry.statuses().into_iter().find(|s| s.id == id).expect("listed").state
}

/// One greedy token from the leased model's engine.
async fn generates(model: &ModelLease) -> bool {
    let mut request = GenerateRequest::greedy(vec![1, 2, 3], 1);
    request.ignore_eos = true;
    let mut events = model.engine.submit(request).expect("submit");
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Finished { usage, .. } => return usage.completion_tokens == 1,
            GenerationEvent::Error(_) => return false,
            _ => {}
        }
    }
    false
}

#[tokio::test]
async fn a_request_loads_its_model_and_aliases_name_it() {
    let mut b = spec("b", "synthetic:tiny:7");
    b.aliases = vec!["bee".into()];
    let (registry, mut events) = registry(vec![spec("a", "synthetic:tiny"), b], 0);
    assert_eq!(state_of(&registry, "b"), LoadState::Unloaded);
    assert!(registry.try_lease("b").is_none(), "try_lease never loads");

    let lease = registry.acquire("bee").await.expect("loads on demand");
    assert_eq!(lease.id, "b");
    assert_eq!(lease.limits.max_tokens_limit, 64);
    assert!(generates(&lease).await);
    assert_eq!(state_of(&registry, "b"), LoadState::Loaded);
    assert_eq!(state_of(&registry, "a"), LoadState::Unloaded, "only what is asked for loads");
    assert!(matches!(events.recv().await, Some(ModelEvent::Ready { id, .. }) if id == "b"));
    assert_eq!(registry.loaded_count(), 1);

    let err = registry.acquire("c").await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), "model_not_found");
    registry.shutdown();
}

#[tokio::test]
async fn room_is_made_by_unloading_the_least_recently_used_idle_model() {
    let specs = vec![spec("a", "synthetic:tiny"), spec("b", "synthetic:tiny:2"), spec("c", "synthetic:tiny:3")];
    let (registry, _events) = registry(specs, 2);
    drop(registry.acquire("a").await.expect("a"));
    let b = registry.acquire("b").await.expect("b");
    // `a` is idle and least recently used: it makes room for `c`.
    let c = registry.acquire("c").await.expect("c");
    assert_eq!(state_of(&registry, "a"), LoadState::Unloaded);
    assert_eq!((state_of(&registry, "b"), state_of(&registry, "c")), (LoadState::Loaded, LoadState::Loaded));

    // Both loaded models are in use: no room for `a`, and nothing running is unloaded.
    let err = registry.acquire("a").await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), "overloaded");
    assert!(err.to_string().contains("--max-loaded-models"), "{err}");
    assert!(generates(&b).await && generates(&c).await);

    drop(c);
    let a = registry.acquire("a").await.expect("room once c is idle");
    assert!(generates(&a).await);
    assert_eq!(state_of(&registry, "c"), LoadState::Unloaded);
    registry.shutdown();
}

#[tokio::test]
async fn keep_alive_unloads_idle_models_but_not_pinned_or_busy_ones() {
    let mut a = spec("a", "synthetic:tiny");
    // Long enough that loading `b` and `c` on a loaded machine never makes `a` idle for it
    // before the first reap: the reaps below pass their own instants.
    a.keep_alive = Some(Duration::from_secs(60));
    let mut b = a.clone();
    b.id = "b".into();
    b.pinned = true;
    let mut c = a.clone();
    c.id = "c".into();
    let (registry, _events) = registry(vec![a, b, c], 0);
    assert_eq!(registry.reap_interval(), Some(Duration::from_secs(1)), "a quarter of the keep-alive, at most 1 s");
    drop(registry.acquire("a").await.expect("a"));
    drop(registry.acquire("b").await.expect("b"));
    let busy = registry.acquire("c").await.expect("c");

    registry.reap(Instant::now());
    assert_eq!(state_of(&registry, "a"), LoadState::Loaded, "not idle long enough yet");
    registry.reap(Instant::now() + Duration::from_secs(61));
    assert_eq!(state_of(&registry, "a"), LoadState::Unloaded);
    assert_eq!(state_of(&registry, "b"), LoadState::Loaded, "pinned");
    assert_eq!(state_of(&registry, "c"), LoadState::Loaded, "in use");
    drop(busy);
    registry.reap(Instant::now() + Duration::from_secs(61));
    assert_eq!(state_of(&registry, "c"), LoadState::Unloaded);
    registry.shutdown();
}

#[tokio::test]
async fn an_admin_unload_lets_running_requests_finish_then_stops_the_engine() {
    let (registry, _events) = registry(vec![spec("a", "synthetic:tiny")], 0);
    let lease = registry.acquire("a").await.expect("a");
    let mut states = lease.engine.watch_state();
    assert!(registry.unload("a").expect("known"));
    assert!(!registry.unload("a").expect("known"), "already unloaded");
    assert_eq!(state_of(&registry, "a"), LoadState::Unloaded);
    assert!(generates(&lease).await, "the lease keeps its engine");
    drop(lease);
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(*states.borrow_and_update(), EngineState::Stopped) {
            if states.changed().await.is_err() {
                break;
            }
        }
    });
    assert!(stopped.await.is_ok(), "the engine stops with its last lease");
    assert_eq!(registry.unload("zz").map(|_| ()).unwrap_err().kind(), "model_not_found");
    registry.shutdown();
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_an_error_and_the_others_serve() {
    let specs = vec![spec("good", "synthetic:tiny"), spec("broken", "/nonexistent/model.gguf")];
    let (registry, mut events) = registry(specs, 0);
    let good = registry.acquire("good").await.expect("good");
    let err = registry.acquire("broken").await.map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), "model_load_failed");
    assert_eq!(err.status().as_u16(), 500);
    assert!(err.to_string().contains("broken") && err.to_string().contains("nonexistent"), "{err}");
    assert_eq!(state_of(&registry, "broken"), LoadState::Unloaded);
    assert!(generates(&good).await);
    let mut saw_failure = false;
    while let Ok(event) = events.try_recv() {
        saw_failure |= matches!(event, ModelEvent::LoadFailed { ref id, preload: false, .. } if id == "broken");
    }
    assert!(saw_failure);
    registry.shutdown();
}

#[tokio::test]
async fn a_start_up_model_unloaded_since_loads_again_on_demand() {
    let mut first = spec("a", "synthetic:tiny");
    first.preload = true;
    let (registry, mut events) = registry(vec![first], 0);
    let (loader, info) = open_model(&registry.entries[0].spec).expect("opens");
    let model = registry.start(0, loader, info, true);
    assert!(model.startup);
    drop(model);
    while !matches!(events.recv().await, Some(ModelEvent::Ready { .. })) {}
    registry.check_ready().expect("ready once loaded");
    assert!(registry.unload("a").unwrap());
    registry.check_ready().expect("an admin unload leaves the server ready");

    // On demand now: the request waits for the load instead of answering `not_ready`.
    let lease = registry.acquire("a").await.expect("reloads");
    assert!(!lease.startup);
    assert!(generates(&lease).await);
    registry.shutdown();
}
