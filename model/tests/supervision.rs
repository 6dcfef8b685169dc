//! The engine survives its own faults: a step that panics fails only the sequences in it
//! (with `StepFailed`), frees their slots and caches, and the engine serves the next request;
//! failed steps in a row stop it with `EngineFailed`, published as `EngineState::Failed`.
//! Faults come from the test-only `EngineConfig::fault_injection`.

use std::time::{Duration, Instant};

use stellarchat_model::ModelError;
use stellarchat_model::device::DeviceSpec;
use stellarchat_model::engine::{
    Engine, EngineConfig, EngineHandle, EngineState, EventStream, FaultInjection, GenerateRequest, GenerationEvent,
    MAX_CONSECUTIVE_STEP_FAILURES,
};
use stellarchat_model::model::{LoadOptions, ModelLoader};

fn start(fault: FaultInjection) -> EngineHandle {
    let loader = ModelLoader::open("synthetic:tiny").expect("open model");
    let config = EngineConfig { fault_injection: Some(fault), ..EngineConfig::default() };
    let engine =
        Engine::spawn(loader, LoadOptions { device: DeviceSpec::Flex, ..Default::default() }, config, Box::new(|_, _| {}));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine.is_ready() {
        assert!(engine.failure().is_none(), "load failed: {:?}", engine.failure());
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

fn request(tokens: usize) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(vec![5, 6, 7], tokens);
    r.ignore_eos = true;
    r
}

/// Tokens received, and how the stream ended (`None`: finished normally).
fn drain(mut stream: EventStream) -> (usize, Option<ModelError>) {
    let mut tokens = 0;
    let mut error = None;
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::Token { .. } => tokens += 1,
            GenerationEvent::Error(e) => error = Some(e),
            _ => {}
        }
    }
    (tokens, error)
}

fn wait_until(engine: &EngineHandle, what: &str, done: impl Fn(&EngineHandle) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(engine) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_panicking_step_fails_its_sequences_and_the_engine_serves_on() {
    // Step 0 is the first request's prefill: it panics.
    let engine = start(FaultInjection::PanicAtStep(0));
    let (tokens, error) = drain(engine.submit(request(8)).expect("submitted"));
    assert_eq!(tokens, 0);
    match error {
        Some(ModelError::StepFailed(message)) => assert!(message.contains("fault injection"), "{message}"),
        other => panic!("expected StepFailed, got {other:?}"),
    }
    // The failed sequence's slot and cache are freed, and nothing was kept for reuse.
    wait_until(&engine, "the failed sequence to be freed", |e| {
        let s = e.stats();
        s.running == 0 && s.waiting == 0 && s.kv_cache_usage == 0.0
    });
    assert_eq!(engine.stats().step_failures, 1);
    assert!(engine.is_ready(), "one failure must not stop the engine: {:?}", engine.state());

    // The next request is served in full, by the same engine.
    let (tokens, error) = drain(engine.submit(request(8)).expect("submitted after the fault"));
    assert!(error.is_none(), "{error:?}");
    assert_eq!(tokens, 8);
    assert_eq!(engine.stats().step_failures, 1);
}

#[test]
fn steps_that_keep_failing_stop_the_engine_with_a_typed_failure() {
    let engine = start(FaultInjection::PanicFromStep(0));
    let states = engine.watch_state();
    for attempt in 1..MAX_CONSECUTIVE_STEP_FAILURES {
        let (_, error) = drain(engine.submit(request(4)).expect("submitted"));
        assert!(matches!(error, Some(ModelError::StepFailed(_))), "attempt {attempt}: {error:?}");
        assert!(engine.is_ready(), "stopped after {attempt} failures");
    }
    // The last allowed failure: this request and everything after it fails.
    let (_, error) = drain(engine.submit(request(4)).expect("submitted"));
    assert!(matches!(error, Some(ModelError::StepFailed(_))), "{error:?}");
    wait_until(&engine, "the engine to give up", |e| !matches!(e.state(), EngineState::Ready));
    match engine.state() {
        EngineState::Failed(error) => match &*error {
            ModelError::EngineFailed { failures, last } => {
                assert_eq!(*failures, MAX_CONSECUTIVE_STEP_FAILURES);
                assert!(last.contains("fault injection"), "{last}");
            }
            other => panic!("expected EngineFailed, got {other}"),
        },
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(engine.failure().is_some());
    // The watch channel saw the change, and new requests are refused rather than queued.
    assert!(states.has_changed().unwrap_or(true));
    assert!(matches!(engine.submit(request(4)), Err(ModelError::EngineStopped)));
    assert_eq!(engine.stats().step_failures, u64::from(MAX_CONSECUTIVE_STEP_FAILURES));
}
