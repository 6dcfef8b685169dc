//! Splitting one piece of host work over the calling thread and helper threads: the
//! quantized matrix products ([`crate::quant_matmul`]) and host attention
//! ([`crate::host_attention`]), the work of a CPU decode step.
//!
//! The caller works too: it and the helpers claim chunks of rows from a shared counter, so a
//! helper that starts late just finds less (or nothing) to do, and the caller waits only for
//! chunks a helper has already begun.
//!
//! The helpers are our own threads, not rayon's. A decode step runs a few hundred products of
//! 10–100 µs each with short gaps between them (norms, rope, attention); rayon's idle workers
//! go to sleep after a few dozen yields, so nearly every product paid a futex wake-up of tens
//! of microseconds, and a SmolLM2 decode profile had the helper doing under a fifth of the
//! products' work. Ours spin for [`SPIN`] after each product (yielding the core after
//! [`SPIN_HARD`], so a busy machine's other runnable threads still get it), which is how
//! llama.cpp's threads wait between operations, and only then park.
//!
//! Chunks shrink as the work runs out ("guided" scheduling): large first chunks keep each
//! thread streaming through long runs of weights (many small chunks measured slower), small
//! last ones keep the threads finishing together.

use std::hint::spin_loop;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

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
/// and on up to `helpers` helper threads (see [`helper_threads`]); returns the first error.
/// Chunks are multiples of `align` rows (but the last) and at least `min_chunk` rows.
pub(crate) fn run_chunks(
    rows: usize,
    align: usize,
    min_chunk: usize,
    helpers: usize,
    task: &Task<'_>,
) -> Result<(), ModelError> {
    let align = align.max(1);
    let helpers = helpers.min(helper_threads());
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
        if helpers > 0 {
            // Only the lifetime is erased; helpers dereference it only inside the gate.
            let ptr = JobPtr((&job as *const Job<'_>).cast::<Job<'static>>());
            pool().post(ptr, Arc::clone(&gate));
        }
        job.work();
        drop(wait);
    }
    match job.error.into_inner() {
        Ok(first) => first.map_or(Ok(()), Err),
        Err(poisoned) => poisoned.into_inner().map_or(Ok(()), Err),
    }
}

/// Runs `f(first_row, rows)` over disjoint chunks of the rows of `out` (each `row_len`
/// values; at least `min_rows` rows a chunk) that together cover it, on the calling thread
/// and the helpers: row-wise host work between the products (norms, gated activations of a
/// prefill), which on rayon's pool woke sleeping workers while these helpers spun.
pub(crate) fn for_row_chunks(out: &mut [f32], row_len: usize, min_rows: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let base = RowsPtr(out.as_mut_ptr());
    let task = |range: Range<usize>| {
        // SAFETY: `run_chunks` hands out disjoint ranges within `0..rows`, each once, so the
        // slices never overlap, and it returns only after every task has finished, while
        // `out` is still mutably borrowed here.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(range.start * row_len), range.len() * row_len) };
        f(range.start, chunk);
        Ok(())
    };
    // The task returns no error.
    let _ = run_chunks(rows, 1, min_rows.max(1), helper_threads(), &task);
}

/// The rows' base address, shared with the helpers of [`for_row_chunks`].
struct RowsPtr(*mut f32);

// SAFETY: the helpers write disjoint ranges through it (see `for_row_chunks`).
unsafe impl Sync for RowsPtr {}

impl RowsPtr {
    /// The address `offset` values in (a method, so closures capture the wrapper, not the
    /// raw pointer).
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets within the slice the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// How long a helper spins for the next job after finishing one before it parks. Covers the
/// gaps between the products of a decode step and between steps (sampling, the engine loop),
/// not an idle server.
const SPIN: Duration = Duration::from_millis(3);
/// How long of [`SPIN`] a helper spins without giving up its core; after that it yields
/// between checks.
const SPIN_HARD: Duration = Duration::from_micros(100);

/// Helper threads available to [`run_chunks`]: one fewer than rayon's thread count (which
/// follows `RAYON_NUM_THREADS`), as the caller works too.
pub(crate) fn helper_threads() -> usize {
    pool().threads.load(Ordering::Relaxed)
}

/// The posted job and the helpers that wait for one.
struct Pool {
    /// The latest job posted, with its gate. A newer post replaces it: helpers only ever
    /// help with the newest (concurrent callers each finish their own job anyway).
    posted: Mutex<Option<(JobPtr, Arc<Gate>)>>,
    /// Bumped by every post, just after it stored the job in `posted`.
    epoch: AtomicU64,
    /// Helpers parked on `wake`.
    parked: AtomicUsize,
    wake: Condvar,
    /// Helper threads started.
    threads: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let wanted = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            posted: Mutex::new(None),
            epoch: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            wake: Condvar::new(),
            threads: AtomicUsize::new(0),
        }));
        for i in 0..wanted {
            // A failed spawn only means less help.
            let spawned = std::thread::Builder::new().name(format!("stellarchat-mm{i}")).spawn(move || pool.serve());
            if spawned.is_ok() {
                pool.threads.fetch_add(1, Ordering::Relaxed);
            }
        }
        pool
    })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Option<(JobPtr, Arc<Gate>)>> {
        self.posted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `job` the one helpers pick up next, waking parked helpers.
    fn post(&self, job: JobPtr, gate: Arc<Gate>) {
        *self.lock() = Some((job, gate));
        // Bumped after the lock is released: a spinning helper that sees the bump takes the
        // lock at once, and finding it still held cost the helper a futex sleep and the caller
        // a futex wake-up (a system call) per product, as a decode profile showed.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // A helper counts itself parked, then checks the epoch, both under the lock, so either
        // it sees the bump or it is counted here.
        if self.parked.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders the notification after a counted helper's `wait` began
            // (it holds the lock from its check until it waits).
            drop(self.lock());
            self.wake.notify_all();
        }
    }

    /// A helper's life: wait for a post, help with it, repeat.
    fn serve(&self) {
        let mut seen = self.epoch.load(Ordering::SeqCst);
        loop {
            seen = self.next_post(seen);
            let posted = self.lock().clone();
            let Some((JobPtr(job), gate)) = posted else { continue };
            if !gate.enter() {
                continue; // the caller has finished it alone
            }
            let _leave = Leave(&gate);
            // SAFETY: the gate was open when this helper entered, so the caller has not passed
            // `CloseAndWait`, which waits for this helper to leave before `run_chunks`
            // returns (or unwinds) and the job is dropped.
            unsafe { &*job }.work();
        }
    }

    /// Waits until the epoch moves past `seen` and returns it: spinning, then yielding, then
    /// parked.
    fn next_post(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut checks = 0u32;
        loop {
            let now = self.epoch.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            checks = checks.wrapping_add(1);
            if checks % 64 == 0 {
                let waited = start.elapsed();
                if waited > SPIN {
                    break;
                }
                if waited > SPIN_HARD {
                    std::thread::yield_now();
                    continue;
                }
            }
            spin_loop();
        }
        let mut posted = self.lock();
        self.parked.fetch_add(1, Ordering::SeqCst);
        while self.epoch.load(Ordering::SeqCst) == seen {
            posted = self.wake.wait(posted).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        self.epoch.load(Ordering::SeqCst)
    }
}
