//! The integer kernels of every type and instruction flavour against float64 products of
//! the exactly dequantized weights with the rounded activations (so only float rounding
//! separates them), at odd sizes and every tile length; and the rounding's own error
//! against the f32 path.

use super::super::tests::{Rng, assert_close, random_matrix, random_x, reference};
use super::super::{QuantMatrix, Strategy};
use super::*;
use crate::rng::SplitMix64;

const TYPES: [GgmlType; 7] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// Widths: one block, a few, and (for the 32-element types) one that is no multiple of 256.
fn widths(t: GgmlType) -> &'static [usize] {
    match t.block_layout().expect("sized").0 {
        256 => &[256, 768],
        _ => &[32, 96, 608],
    }
}

/// The activations as the kernel for `t` sees them: rounded, then back to f32.
fn rounded(t: GgmlType, x: &[f32], cols: usize) -> Vec<f32> {
    let mut q = Q8Activations::default();
    let block = scale_block(t);
    q.quantize(x, cols, block);
    (0..q.rows())
        .flat_map(|i| {
            let row = q.row(i);
            row.quants.iter().enumerate().map(|(e, &v)| row.scales[e / block] * f32::from(v)).collect::<Vec<_>>()
        })
        .collect()
}

/// Runs one product with the given flavour (as `matmul` would pick it).
fn product(m: &QuantMatrix, cpu: Int8Cpu, x: &[f32], n: usize) -> Vec<f32> {
    let mut m2 = QuantMatrix::new(m.ggml_type(), m.rows(), m.cols(), m.bytes().to_vec()).expect("matrix");
    m2.int8 = Some(cpu);
    let mut y = vec![f32::NAN; n * m.rows()];
    m2.matmul_with(Strategy::Int8, x, n, &mut y).expect("product");
    y
}

#[test]
fn every_type_and_flavour_matches_the_reference_on_rounded_activations() {
    let flavours = Int8Cpu::available();
    if flavours.is_empty() {
        eprintln!("no AVX2 on this CPU: nothing to test");
        return;
    }
    let mut rng = Rng(SplitMix64(81));
    for t in TYPES {
        for &cols in widths(t) {
            for (rows, n) in [(1, 1), (7, 2), (13, 3), (5, 4), (11, 9)] {
                let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("matrix");
                let x = random_x(n * cols, &mut rng);
                let expected = reference(&m, &rounded(t, &x, cols), n);
                for &cpu in &flavours {
                    let what = format!("{t} {rows}×{cols}, n = {n}, {cpu:?}");
                    assert_close(&what, &product(&m, cpu, &x, n), &expected);
                }
            }
        }
    }
}

#[test]
fn large_products_split_over_threads_and_passes_match() {
    let Some(cpu) = Int8Cpu::detect() else { return };
    let mut rng = Rng(SplitMix64(82));
    // 600 rows of Q4_K at 2048 columns: more than one L2 pass and several rayon chunks.
    let (t, rows, cols, n) = (GgmlType::Q4_K, 600, 2048, 6);
    let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("matrix");
    let x = random_x(n * cols, &mut rng);
    assert_close("large Q4_K", &product(&m, cpu, &x, n), &reference(&m, &rounded(t, &x, cols), n));
}

#[test]
fn the_rounding_error_stays_small_against_the_exact_product() {
    let Some(_) = Int8Cpu::detect() else { return };
    let mut rng = Rng(SplitMix64(83));
    for t in TYPES {
        // One row: the batch size `matmul` uses the integer kernels for.
        let (rows, cols, n) = (16, 512, 1);
        let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng))
            .expect("matrix")
            .with_int8_activations(true);
        assert!(m.int8_activations(), "{t} has an int8 kernel");
        let x = random_x(n * cols, &mut rng);
        let mut y = vec![0.0; n * rows];
        m.matmul(&x, n, &mut y);
        for (k, (&got, &(value, scale))) in y.iter().zip(&reference(&m, &x, n)).enumerate() {
            // Each activation moves by at most half a step of max|x| / 127 per block; with
            // uniform x and weights the relative error of the sum is far below 1 %.
            assert!((f64::from(got) - value).abs() <= 1e-2 * scale, "{t} output {k}: {got} vs {value}");
        }
    }
}

#[test]
fn types_without_a_kernel_keep_f32_activations() {
    let m = QuantMatrix::new(GgmlType::F16, 2, 32, vec![0u8; 2 * 32 * 2]).expect("matrix").with_int8_activations(true);
    assert!(!m.int8_activations());
    let m = QuantMatrix::new(GgmlType::Q4_1, 2, 32, vec![0u8; 2 * 20]).expect("matrix").with_int8_activations(false);
    assert!(!m.int8_activations());
}

/// Not a test: the timings behind `int8_max_n` (`cargo test --workspace --features … --lib
/// int8::tests::int8_against_f32_timing -- --ignored --nocapture`, with RAYON_NUM_THREADS=1;
/// INT8_TIMING_N=8,16,64 picks other batch sizes than 1–4).
#[test]
#[ignore]
fn int8_against_f32_timing() {
    let mut rng = Rng(SplitMix64(5));
    for t in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let (rows, cols) = if t.block_layout().unwrap().0 == 256 { (1536, 512) } else { (1536, 576) };
        let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).unwrap();
        let cpu = Int8Cpu::detect().unwrap();
        let mut q = QuantMatrix::new(t, rows, cols, m.bytes().to_vec()).unwrap();
        q.int8 = Some(cpu);
        let sizes = std::env::var("INT8_TIMING_N").ok().map(|s| s.split(',').map(|v| v.parse().unwrap()).collect());
        for n in sizes.unwrap_or_else(|| vec![1usize, 2, 3, 4]) {
            let x = random_x(n * cols, &mut rng);
            let mut y = vec![0.0; n * rows];
            let mut best = [f64::MAX; 2];
            for _ in 0..3 {
                for (k, int8) in [false, true].into_iter().enumerate() {
                    let reps = (400 / n).max(10);
                    let start = std::time::Instant::now();
                    for _ in 0..reps {
                        if int8 { q.matmul_with(Strategy::Int8, &x, n, &mut y).unwrap() } else { m.matmul(&x, n, &mut y) }
                    }
                    best[k] = best[k].min(start.elapsed().as_secs_f64() / reps as f64);
                }
            }
            eprintln!("{t} n={n}: f32 {:.1} us, int8 {:.1} us, int8/f32 {:.2}", best[0] * 1e6, best[1] * 1e6, best[1] / best[0]);
        }
    }
}
