//! The panel strategies at prefill sizes: the AVX-512 kernel over transposed activations
//! against the portable path and the float64 reference at sizes that are no multiple of its
//! tiles, and (ignored) the timings that choose between the panel kernels.

use super::tests::{Rng, assert_close, random_matrix, random_x, reference};
use super::*;
use crate::rng::SplitMix64;

/// Activation rows on both sides of every block and tile edge (16-row blocks, 4 blocks per
/// tile), weight rows that leave a ragged 6-row tile and a ragged panel, a type with AVX2
/// decoders and one decoded by `gguf::dequant` (Q5_1), on one thread and split over three.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_panel_matches_the_portable_path_at_odd_sizes() {
    if avx2::Avx512::detect().is_none() || avx2::Avx2::detect().is_none() {
        eprintln!("no AVX-512F on this CPU: skipped");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(SplitMix64(11));
    for (t, cols) in [(GgmlType::Q5_0, 96), (GgmlType::Q4_K, 512), (GgmlType::Q6_K, 256), (GgmlType::Q5_1, 64)] {
        for rows in [1, 5, 7, 13, 101] {
            let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
            for n in [1, 5, 15, 16, 17, 33, 64, 65, 79] {
                let x = random_x(n * cols, &mut rng);
                let expected = reference(&m, &x, n);
                let mut portable = vec![f32::NAN; n * rows];
                m.matmul_with(Strategy::Portable, &x, n, &mut portable).expect("portable");
                for threads in [false, true] {
                    let mut y = vec![f32::NAN; n * rows];
                    let mut run = || m.matmul_with(Strategy::Avx512Panel, &x, n, &mut y);
                    if threads { pool.install(run) } else { run() }.expect("AVX-512 panel available");
                    let what = format!("{t} {rows}×{cols} n={n} threads={threads}");
                    assert_close(&what, &y, &expected);
                    for (k, ((&a, &b), &(_, scale))) in y.iter().zip(&portable).zip(&expected).enumerate() {
                        let diff = f64::from((a - b).abs());
                        assert!(diff <= 2e-5 * scale, "{what} output {k}: {a} vs portable {b}");
                    }
                }
            }
        }
    }
}

/// Not a test: the AVX2 panel kernel against the AVX-512 one at prefill batches (SmolLM2's
/// and Gemma 3's projection shapes, alternating runs so a noisy machine affects both alike).
/// `--lib panel_kernels_timing -- --ignored --nocapture`, with RAYON_NUM_THREADS=1.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn panel_kernels_timing() {
    if avx2::Avx512::detect().is_none() {
        eprintln!("no AVX-512F on this CPU: skipped");
        return;
    }
    let mut rng = Rng(SplitMix64(12));
    for (t, rows, cols) in
        [(GgmlType::Q5_0, 1536, 576), (GgmlType::Q5_0, 576, 1536), (GgmlType::Q4_K, 1536, 512), (GgmlType::Q6_K, 512, 1536)]
    {
        let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
        for n in [8usize, 16, 64, 241] {
            let x = random_x(n * cols, &mut rng);
            let mut y = vec![0.0; n * rows];
            let strategies = [Strategy::Avx2Panel, Strategy::Avx512Panel];
            let mut best = [f64::MAX; 2];
            for _ in 0..5 {
                for (k, &s) in strategies.iter().enumerate() {
                    let reps = (256 / n).max(2);
                    let start = std::time::Instant::now();
                    for _ in 0..reps {
                        m.matmul_with(s, &x, n, &mut y).expect("available");
                    }
                    best[k] = best[k].min(start.elapsed().as_secs_f64() / reps as f64);
                }
            }
            let gmacs = |secs: f64| (n * rows * cols) as f64 / secs / 1e9;
            eprintln!(
                "{t} {rows}×{cols} n={n}: AVX2 {:.0} us ({:.1} GMAC/s), AVX-512 {:.0} us ({:.1} GMAC/s), ratio {:.2}",
                best[0] * 1e6,
                gmacs(best[0]),
                best[1] * 1e6,
                gmacs(best[1]),
                best[1] / best[0]
            );
        }
    }
}

/// Not a test: a Gemma 3 270M prefill's products (18 layers of q‖k‖v, o, gate‖up and down in
/// the file's types, 64 rows) with every matrix distinct, as in a prefill, whose weights
/// stream from memory, and with one layer's matrices over and over (warm caches).
/// `--lib gemma_prefill_products_timing -- --ignored --nocapture`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn gemma_prefill_products_timing() {
    let mut rng = Rng(SplitMix64(13));
    let shapes = [(GgmlType::Q5_0, 1536, 640), (GgmlType::Q4_K, 640, 1024), (GgmlType::Q5_0, 4096, 640), (GgmlType::Q6_K, 640, 2048)];
    let layers: Vec<Vec<QuantMatrix>> = (0..18)
        .map(|_| shapes.iter().map(|&(t, r, c)| QuantMatrix::new(t, r, c, random_matrix(t, r, c, &mut rng)).expect("valid")).collect())
        .collect();
    let n = 64;
    let xs: Vec<Vec<f32>> = shapes.iter().map(|&(_, _, c)| random_x(n * c, &mut rng)).collect();
    let macs: usize = 18 * shapes.iter().map(|&(_, r, c)| n * r * c).sum::<usize>();
    let mut y = vec![0.0; n * 4096];
    for round in 0..5 {
        for (label, warm) in [("distinct", false), ("warm", true)] {
            let start = std::time::Instant::now();
            for l in 0..18 {
                let layer = &layers[if warm { 0 } else { l }];
                for (m, x) in layer.iter().zip(&xs) {
                    m.matmul(x, n, &mut y[..n * m.rows()]);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            eprintln!("round {round} {label}: {:.1} ms, {:.1} GMAC/s", secs * 1e3, macs as f64 / secs / 1e9);
        }
    }
}
