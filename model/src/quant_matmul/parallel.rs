//! Splitting one product over the calling thread and rayon helpers.
//!
//! `par_iter` from a thread outside the pool hands all the work to the pool and puts the
//! caller to sleep until it is done: every product then pays a cross-thread wake-up both
//! ways, and on a busy 2-core machine waits for pool threads that may not be scheduled.
//! Here the caller works too: it and the helpers claim chunks of rows from a shared counter,
//! so a helper that starts late just finds less (or nothing) to do, and the caller waits only
//! for chunks a helper has already begun.
//!
//! Chunks shrink as the work runs out ("guided" scheduling): large first chunks keep each
//! thread streaming through long runs of weights (many small chunks measured slower), small
//! last ones keep the threads finishing together.

use std::hint::spin_loop;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ModelError;

type Task<'a> = dyn Fn(Range<usize>) -> Result<(), ModelError> + Sync + 'a;

/// The work of one call, on the caller's stack.
struct Job<'a> {
    task: &'a Task<'a>,
    rows: usize,
    /// Chunk sizes are multiples of this (the last chunk excepted) …
    align: usize,
    /// … and at least this, …
    min_chunk: usize,
    /// … and about the remaining rows divided by this.
    divisor: usize,
    /// The first row not yet claimed.
    next: AtomicUsize,
    error: Mutex<Option<ModelError>>,
}

impl Job<'_> {
    /// Claims the next chunk of rows, if any are left.
    fn claim(&self) -> Option<Range<usize>> {
        let mut start = self.next.load(Ordering::Relaxed);
        loop {
            if start >= self.rows {
                return None;
            }
            let size = ((self.rows - start) / self.divisor).next_multiple_of(self.align).max(self.min_chunk);
            let end = (start + size).min(self.rows);
            match self.next.compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(start..end),
                Err(now) => start = now,
            }
        }
    }

    /// Runs chunks until none are left, keeping the first error.
    fn work(&self) {
        while let Some(range) = self.claim() {
            if let Err(e) = (self.task)(range) {
                let mut first = self.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                first.get_or_insert(e);
            }
        }
    }
}

/// Admission to a [`Job`]: the number of helpers inside it, plus [`CLOSED`] once the caller
/// has finished its share. Outlives the call (helpers hold an `Arc`), so a helper that starts
/// after the call returned can still read it and learn the job is gone.
struct Gate(AtomicUsize);

const CLOSED: usize = 1 << (usize::BITS - 1);

impl Gate {
    /// Enters the job unless it is closed.
    fn enter(&self) -> bool {
        let mut state = self.0.load(Ordering::Acquire);
        loop {
            if state & CLOSED != 0 {
                return false;
            }
            match self.0.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }
}

/// Leaves the gate when dropped (also when a task panics).
struct Leave<'a>(&'a Gate);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        // Release: the helper's writes to the output happen before the caller sees it leave.
        self.0.0.fetch_sub(1, Ordering::Release);
    }
}

/// Closes the gate and waits for the helpers inside when dropped — also when the caller's
/// own task panics, so the job outlives every helper that can reach it.
struct CloseAndWait<'a>(&'a Gate);

impl Drop for CloseAndWait<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.0.0.load(Ordering::Acquire) & !CLOSED != 0 {
            // A helper is finishing a chunk (microseconds); yield if it was descheduled.
            spins += 1;
            if spins < 1 << 12 {
                spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A job's address, sendable to a helper.
#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);

// SAFETY: `Job` is `Sync` (atomics, a mutex, a `Sync` task), so sharing its address with
// another thread is sound as long as it is alive when used, which the gate ensures.
unsafe impl Send for JobPtr {}

/// Runs `task` on disjoint chunks of `0..rows` that together cover it, on the calling thread
/// and on up to `helpers` rayon threads; returns the first error. Chunks are multiples of
/// `align` rows (but the last) and at least `min_chunk` rows.
pub(super) fn run_chunks(
    rows: usize,
    align: usize,
    min_chunk: usize,
    helpers: usize,
    task: &Task<'_>,
) -> Result<(), ModelError> {
    let align = align.max(1);
    let job = Job {
        task,
        rows,
        align,
        min_chunk: min_chunk.next_multiple_of(align),
        divisor: 2 * (helpers + 1),
        next: AtomicUsize::new(0),
        error: Mutex::new(None),
    };
    let gate = Arc::new(Gate(AtomicUsize::new(0)));
    {
        let wait = CloseAndWait(&gate);
        // Only the lifetime is erased; helpers dereference it only inside the gate.
        let ptr = JobPtr((&job as *const Job<'_>).cast::<Job<'static>>());
        for _ in 0..helpers {
            let gate = Arc::clone(&gate);
            rayon::spawn(move || {
                let ptr = ptr;
                if !gate.enter() {
                    return;
                }
                let _leave = Leave(&gate);
                // SAFETY: the gate was open when this helper entered, so the caller has not
                // passed `CloseAndWait`, which waits for this helper to leave before
                // `run_chunks` returns (or unwinds) and `job` is dropped.
                let job = unsafe { &*ptr.0 };
                job.work();
            });
        }
        job.work();
        drop(wait);
    }
    match job.error.into_inner() {
        Ok(first) => first.map_or(Ok(()), Err),
        Err(poisoned) => poisoned.into_inner().map_or(Ok(()), Err),
    }
}
