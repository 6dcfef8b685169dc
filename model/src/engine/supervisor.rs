//! Keeps the engine serving through its own faults, and says what state it is in.
//!
//! A panic inside a step (a backend bug, a kernel that trips an assertion, a matcher that
//! breaks an invariant) must not take the engine thread down with every request waiting on
//! it, nor leave `/ready` green while every request fails. The engine catches the panic,
//! fails the sequences of that step (their caches are dropped: a half-written cache must
//! never be reused by the prefix cache) and goes on. A fault that repeats on every step is
//! not transient — a lost device, a corrupted model — and serving on would only turn each
//! request into a 500: after [`MAX_CONSECUTIVE_STEP_FAILURES`] failed steps in a row the
//! engine gives up, publishes [`EngineState::Failed`] and the server exits non-zero so its
//! supervisor (systemd, Kubernetes, Docker's restart policy) starts a fresh process.
//!
//! The state travels through a `tokio::sync::watch` channel: `/ready`, the server's
//! shutdown logic and the CLI all read the same value, and can wait for it to change.

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ModelError;

/// Failed steps in a row after which the engine stops serving. One failure is most likely
/// one bad request or one transient device error; three in a row, with fresh sequences
/// each time, means the engine itself is broken.
pub const MAX_CONSECUTIVE_STEP_FAILURES: u32 = 3;

/// What the engine is doing.
#[derive(Debug, Clone)]
pub enum EngineState {
    /// Reading the weights onto the device.
    Loading,
    /// Serving.
    Ready,
    /// Loading failed, or steps kept failing: nothing more will be served. The error says why
    /// (for a load, the typed error of the loader: a missing device, a bad tensor, …).
    Failed(Arc<ModelError>),
    /// Shut down on request.
    Stopped,
}

impl EngineState {
    pub fn is_ready(&self) -> bool {
        matches!(self, EngineState::Ready)
    }

    /// True once the engine will never serve again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, EngineState::Failed(_) | EngineState::Stopped)
    }
}

/// Makes chosen steps panic, so that tests can watch the supervision work on the real
/// binary. Operators never set it; it is a hidden `serve` flag (and only the process's
/// owner can pass flags), not something a request can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultInjection {
    /// The step with this number (counting from 0 since start) panics.
    PanicAtStep(u64),
    /// Every step from this number on panics.
    PanicFromStep(u64),
}

impl FaultInjection {
    pub fn panics_at(self, step: u64) -> bool {
        match self {
            FaultInjection::PanicAtStep(n) => step == n,
            FaultInjection::PanicFromStep(n) => step >= n,
        }
    }
}

impl FromStr for FaultInjection {
    type Err = ModelError;

    /// `panic-at-step=N` or `panic-from-step=N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ModelError::InvalidRequest(format!("fault injection `{s}`: expected panic-at-step=N or panic-from-step=N"));
        let (kind, step) = s.split_once('=').ok_or_else(invalid)?;
        let step: u64 = step.trim().parse().map_err(|_| invalid())?;
        match kind.trim() {
            "panic-at-step" => Ok(FaultInjection::PanicAtStep(step)),
            "panic-from-step" => Ok(FaultInjection::PanicFromStep(step)),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for FaultInjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultInjection::PanicAtStep(n) => write!(f, "panic-at-step={n}"),
            FaultInjection::PanicFromStep(n) => write!(f, "panic-from-step={n}"),
        }
    }
}

/// What to do after a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Fail that step's sequences and serve on.
    GoOn,
    /// The engine is broken: stop serving.
    GiveUp,
}

/// Counts failed steps in a row.
#[derive(Debug, Default)]
pub(super) struct Supervisor {
    consecutive: u32,
}

impl Supervisor {
    pub(super) fn succeeded(&mut self) {
        self.consecutive = 0;
    }

    pub(super) fn failed(&mut self) -> Verdict {
        self.consecutive += 1;
        if self.consecutive >= MAX_CONSECUTIVE_STEP_FAILURES { Verdict::GiveUp } else { Verdict::GoOn }
    }

    pub(super) fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

/// The message of a caught panic (`panic!` payloads are `&str` or `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_consecutive_failures_only() {
        let mut s = Supervisor::default();
        assert_eq!(s.failed(), Verdict::GoOn);
        assert_eq!(s.failed(), Verdict::GoOn);
        s.succeeded();
        // A success in between resets the count: sporadic faults never stop the engine.
        for _ in 1..MAX_CONSECUTIVE_STEP_FAILURES {
            assert_eq!(s.failed(), Verdict::GoOn);
        }
        assert_eq!(s.failed(), Verdict::GiveUp);
        assert_eq!(s.consecutive(), MAX_CONSECUTIVE_STEP_FAILURES);
    }

    #[test]
    fn fault_injection_parses_and_matches_steps() {
        let at: FaultInjection = "panic-at-step=3".parse().unwrap();
        assert_eq!(at, FaultInjection::PanicAtStep(3));
        assert!(!at.panics_at(2) && at.panics_at(3) && !at.panics_at(4));
        let from: FaultInjection = "panic-from-step=2".parse().unwrap();
        assert!(!from.panics_at(1) && from.panics_at(2) && from.panics_at(100));
        assert_eq!(from.to_string(), "panic-from-step=2");
        for bad in ["panic", "panic-at-step=", "panic-at-step=x", "explode=1"] {
            assert!(bad.parse::<FaultInjection>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn panic_messages_of_both_payload_kinds() {
        let owned = std::panic::catch_unwind(|| panic!("{}", String::from("owned"))).unwrap_err();
        assert_eq!(panic_message(&*owned), "owned");
        let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(&*literal), "literal");
        assert!(EngineState::Ready.is_ready() && !EngineState::Loading.is_terminal());
        assert!(EngineState::Stopped.is_terminal());
    }
}
