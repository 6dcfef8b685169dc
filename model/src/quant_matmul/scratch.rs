//! Each thread's reusable buffers for the products (a dequantized panel, rounded
//! activations), so the hot path does not allocate.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use super::int8;

thread_local! {
    /// Each thread's panel, reused across calls so the hot path does not allocate.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The calling thread's rounded activations, reused across calls.
    static Q8_ACTIVATIONS: RefCell<int8::Q8Activations> = RefCell::new(int8::Q8Activations::default());
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The calling thread's transposed activations (the AVX-512 panel kernel's), reused
    /// across calls.
    static TRANSPOSED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
pub(super) fn with_transposed_x<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    TRANSPOSED_X.with(|x_t| match x_t.try_borrow_mut() {
        Ok(mut x_t) => f(&mut x_t),
        Err(_) => f(&mut Vec::new()),
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) fn with_q8_activations<R>(f: impl FnOnce(&mut int8::Q8Activations) -> R) -> R {
    Q8_ACTIVATIONS.with(|acts| match acts.try_borrow_mut() {
        Ok(mut acts) => f(&mut acts),
        Err(_) => f(&mut int8::Q8Activations::default()),
    })
}

pub(super) fn with_panel<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PANEL.with(|panel| match panel.try_borrow_mut() {
        Ok(mut panel) => f(&mut panel),
        // Only reachable if a kernel re-entered this thread's panel; stay correct regardless.
        Err(_) => f(&mut Vec::new()),
    })
}

