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


/// Frees this thread's activation buffers (transposed or rounded copies of a prefill's
/// activations, up to a few hundred kB), which decode steps do not use; the next large
/// product allocates them again.
pub(super) fn release() {
    #[cfg(target_arch = "x86_64")]
    {
        TRANSPOSED_X.with(|x_t| {
            if let Ok(mut x_t) = x_t.try_borrow_mut() {
                *x_t = Vec::new();
            }
        });
        Q8_ACTIVATIONS.with(|acts| {
            if let Ok(mut acts) = acts.try_borrow_mut() {
                *acts = int8::Q8Activations::default();
            }
        });
    }
}
