//! Times `QuantMatrix::matmul`, in two modes.
//!
//! By default, over the linear layers of SmolLM2-135M: one pass = the 7 Q4_1 matrices of
//! each of the 30 blocks (q 576→576, k 576→192, v 576→192, o 576→576, gate 576→1536, up
//! 576→1536, down 1536→576) plus the Q8_0 output projection 576→49152, i.e. the weight reads
//! of one decode step for `n` sequences (no attention, no element-wise work). Prints the best
//! and median of several passes per N and the implied tokens/s (N tokens per pass).
//!
//! With `--products [TYPE...]`, one product at a time: µs per product for each type (default
//! Q4_0 Q4_1 Q8_0 Q5_0 Q4_K Q5_K Q6_K) at SmolLM2-135M's shapes (rows × cols) 576×1536
//! (down), 1536×576 (gate/up), 576×576 (q/o) and 49152×576 (output). A K-quant row must be a
//! whole number of 256-element super-blocks, so for K-quants the 576 columns become 768
//! (llama.cpp stores such tensors of a Q4_K_M file as Q5_0 or Q8_0 instead).
//!
//! `cargo run --release -p stellarchat-model --example quant_matmul_bench [-- [--products
//! [TYPE...]] N...]` (default N = 1 16 64, or 1 4 16 64 with `--products`). Weights are
//! random valid blocks; speed does not depend on their values. The machine is shared:
//! compare runs, not absolute numbers. With `RAYON_NUM_THREADS=1`, `--products` times the
//! thread's CPU time (on Linux), which other processes taking turns on the core do not add to.

use std::time::{Duration, Instant};

use stellarchat_model::gguf::GgmlType;
use stellarchat_model::quant_matmul::QuantMatrix;
use stellarchat_model::rng::SplitMix64;

const DIM: usize = 576;
const HIDDEN: usize = 1536;
const KV: usize = 192;
const LAYERS: usize = 30;
const VOCAB: usize = 49152;

struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn unit(&mut self) -> f32 {
        self.0.next_unit_f32() * 2.0 - 1.0
    }
}

/// Byte offsets of a block's f16 fields (scale, min), which random bytes could make NaN.
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    }
}

/// Random blocks with small finite f16 scales (and mins).
fn random_matrix(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    let (elems, block_bytes) = t.block_layout().expect("block type");
    let mut bytes = vec![0u8; rows * cols / elems * block_bytes];
    for block in bytes.chunks_exact_mut(block_bytes) {
        for chunk in block.chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        for &at in f16_fields(t) {
            let v = half::f16::from_f32(0.01 + 0.01 * rng.unit());
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantMatrix::new(t, rows, cols, bytes).expect("valid random matrix")
}

const PRODUCT_TYPES: [GgmlType; 7] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// Seconds of CPU time this thread has used (Linux), for timing single-threaded products
/// on a machine other processes share.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `clock_gettime` (libc, which std links on Linux) writes one `struct timespec`
    // (two 64-bit fields on 64-bit Linux) to a valid pointer.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    time.sec as f64 + time.nsec as f64 * 1e-9
}

/// The clock for `--products`: the thread's CPU time when products run on this thread alone
/// (one rayon thread, Linux, 64-bit), else wall-clock time.
fn product_clock() -> (&'static str, fn() -> f64) {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    if rayon::current_num_threads() == 1 {
        return ("thread CPU time", thread_cpu_seconds);
    }
    fn wall() -> f64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
    ("wall-clock time", wall)
}

/// `--products`: µs per product, best and median of several timed batches, per type, shape
/// and N.
fn products(types: &[GgmlType], ns: &[usize], rng: &mut Rng) {
    let (clock_name, clock) = product_clock();
    println!(
        "µs per product, best (median) of 7 batches, {clock_name}; {} rayon threads; shapes rows×cols",
        rayon::current_num_threads()
    );
    for &t in types {
        let (block, _) = t.block_layout().expect("block type");
        println!("{t} (fast kernel: {})", QuantMatrix::has_fast_kernel(t));
        for (rows, cols) in [(DIM, HIDDEN), (HIDDEN, DIM), (DIM, DIM), (VOCAB, DIM)] {
            let cols = cols.next_multiple_of(block);
            let m = random_matrix(t, rows, cols, rng);
            let mut line = format!("  {rows:>5}×{cols:<5}");
            for &n in ns {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.unit()).collect();
                let mut y = vec![0f32; n * rows];
                m.matmul(&x, n, &mut y); // warm-up
                // Batches of about 20 ms, so timer resolution and one-off stalls do not count.
                let start = clock();
                m.matmul(&x, n, &mut y);
                let once = clock() - start;
                let reps = ((0.02 / once.max(1e-7)) as usize).clamp(1, 10_000);
                let mut per_product: Vec<f64> = (0..7)
                    .map(|_| {
                        let start = clock();
                        for _ in 0..reps {
                            m.matmul(&x, n, &mut y);
                        }
                        (clock() - start) * 1e6 / reps as f64
                    })
                    .collect();
                per_product.sort_by(f64::total_cmp);
                line += &format!("  n={n:<3}{:9.1} ({:9.1})", per_product[0], per_product[3]);
            }
            println!("{line}");
        }
    }
}

struct Layer {
    /// (matrix, takes the hidden-size activations)
    mats: Vec<(QuantMatrix, bool)>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ns: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let mut rng = Rng(SplitMix64(7));
    if args.iter().any(|a| a == "--products") {
        let named: Vec<GgmlType> = args
            .iter()
            .filter_map(|a| PRODUCT_TYPES.into_iter().find(|t| t.to_string().eq_ignore_ascii_case(a)))
            .collect();
        let types = if named.is_empty() { PRODUCT_TYPES.to_vec() } else { named };
        let ns = if ns.is_empty() { vec![1, 4, 16, 64] } else { ns };
        products(&types, &ns, &mut rng);
        return;
    }
    let ns = if ns.is_empty() { vec![1, 16, 64] } else { ns };
    let shapes = [(DIM, DIM, false), (KV, DIM, false), (KV, DIM, false), (DIM, DIM, false)];
    let ffn = [(HIDDEN, DIM, false), (HIDDEN, DIM, false), (DIM, HIDDEN, true)];
    let layers: Vec<Layer> = (0..LAYERS)
        .map(|_| Layer {
            mats: shapes
                .iter()
                .chain(&ffn)
                .map(|&(rows, cols, wide)| (random_matrix(GgmlType::Q4_1, rows, cols, &mut rng), wide))
                .collect(),
        })
        .collect();
    let output = random_matrix(GgmlType::Q8_0, VOCAB, DIM, &mut rng);
    let weight_bytes: usize =
        layers.iter().flat_map(|l| &l.mats).map(|(m, _)| m.bytes().len()).sum::<usize>() + output.bytes().len();
    println!(
        "SmolLM2-135M linear layers: 210 Q4_1 + output Q8_0, {:.1} MB of weights, {} rayon threads, fast kernels: {}",
        weight_bytes as f64 / 1e6,
        rayon::current_num_threads(),
        QuantMatrix::has_fast_kernel(GgmlType::Q4_1)
    );

    for n in ns {
        let x_dim: Vec<f32> = (0..n * DIM).map(|_| rng.unit()).collect();
        let x_hidden: Vec<f32> = (0..n * HIDDEN).map(|_| rng.unit()).collect();
        let mut y = vec![0f32; n * VOCAB];
        let mut pass = |with_output: bool| {
            let start = Instant::now();
            for layer in &layers {
                for (m, wide) in &layer.mats {
                    let x = if *wide { &x_hidden } else { &x_dim };
                    m.matmul(x, n, &mut y[..n * m.rows()]);
                }
            }
            let layers_done = start.elapsed();
            if with_output {
                output.matmul(&x_dim, n, &mut y);
            }
            (layers_done, start.elapsed())
        };
        pass(true); // warm-up: page in the weights, start the pool
        let reps = (200 / n).clamp(5, 30);
        let mut layer_times = Vec::with_capacity(reps);
        let mut totals = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (l, t) = pass(true);
            layer_times.push(l);
            totals.push(t);
        }
        let best = |v: &mut Vec<Duration>| {
            v.sort();
            (v[0].as_secs_f64() * 1e3, v[v.len() / 2].as_secs_f64() * 1e3)
        };
        let (best_total, median_total) = best(&mut totals);
        let (best_layers, _) = best(&mut layer_times);
        println!(
            "n = {n:>3}: {best_total:7.2} ms/pass best ({median_total:7.2} median, {reps} passes) → {:7.1} tokens/s; \
             210 Q4_1 layers {best_layers:7.2} ms, output Q8_0 {:6.2} ms",
            n as f64 * 1e3 / best_total,
            best_total - best_layers
        );
    }
}
