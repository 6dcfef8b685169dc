//! Every supported type and every strategy against a float64 reference built from
//! `gguf::dequantize`, the AVX2 kernels against the portable ones, and the error paths.

use half::{bf16, f16};

use super::*;
use crate::gguf::dequantize;
use crate::rng::SplitMix64;

/// Deterministic test data.
pub(super) struct Rng(pub(super) SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.0.next_unit_f32()
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        bytes.iter_mut().for_each(|b| *b = self.next() as u8);
    }
}

const ALL_TYPES: [GgmlType; 20] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F64,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Byte offsets of a block's f16 scale (first) and min/sum fields, which random bytes could
/// make infinite or NaN.
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random valid blocks: random quants, small finite scales (positive `d`, signed mins).
pub(super) fn random_matrix(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let (block_elems, block_bytes) = t.block_layout().expect("sized type");
    let mut bytes = vec![0u8; rows * cols / block_elems * block_bytes];
    for block in bytes.chunks_exact_mut(block_bytes) {
        let small_int = (rng.next() % 201) as i64 - 100;
        let v = rng.uniform(-1.0, 1.0);
        match t {
            GgmlType::F32 => block.copy_from_slice(&v.to_le_bytes()),
            GgmlType::F16 => block.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            GgmlType::BF16 => block.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
            GgmlType::F64 => block.copy_from_slice(&f64::from(v).to_le_bytes()),
            GgmlType::I16 => block.copy_from_slice(&(small_int as i16).to_le_bytes()),
            GgmlType::I32 => block.copy_from_slice(&(small_int as i32).to_le_bytes()),
            GgmlType::I64 => block.copy_from_slice(&small_int.to_le_bytes()),
            GgmlType::Q8_K => {
                rng.fill(block);
                block[..4].copy_from_slice(&rng.uniform(0.001, 0.02).to_le_bytes());
            }
            _ => {
                rng.fill(block);
                for (k, &at) in f16_fields(t).iter().enumerate() {
                    let value = if k == 0 { rng.uniform(0.001, 0.05) } else { rng.uniform(-0.05, 0.05) };
                    block[at..at + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
                }
            }
        }
    }
    bytes
}

pub(super) fn random_x(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// `(value, Σ|terms|)` per output, in float64 from the dequantized matrix.
pub(super) fn reference(m: &QuantMatrix, x: &[f32], n: usize) -> Vec<(f64, f64)> {
    let (rows, cols) = (m.rows(), m.cols());
    let mut w = vec![0f32; rows * cols];
    dequantize(m.ggml_type(), &m.bytes(), &mut w).expect("valid matrix");
    let mut out = Vec::with_capacity(n * rows);
    for xr in x.chunks_exact(cols.max(1)).take(n) {
        for wr in w.chunks_exact(cols.max(1)) {
            let terms = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b));
            out.push(terms.fold((0.0, 0.0), |(s, abs), t| (s + t, abs + t.abs())));
        }
    }
    out
}

/// Rounding only: within 1e-5 of the sum of the terms' magnitudes.
pub(super) fn assert_close(what: &str, y: &[f32], expected: &[(f64, f64)]) {
    assert_eq!(y.len(), expected.len(), "{what}: length");
    for (k, (&got, &(value, scale))) in y.iter().zip(expected).enumerate() {
        let err = (f64::from(got) - value).abs();
        assert!(
            err <= 1e-5 * scale + 1e-30,
            "{what}: output {k} is {got}, expected {value} (error {err:e}, Σ|terms| {scale:e})"
        );
    }
}

fn strategies(t: GgmlType) -> Vec<Strategy> {
    let mut all = vec![Strategy::Portable];
    #[cfg(target_arch = "x86_64")]
    if avx2::Avx2::detect().is_some() {
        all.push(Strategy::Avx2Panel);
        if avx2::has_fused(t) {
            all.push(Strategy::Avx2Fused);
        }
        if avx2::Avx512::detect().is_some() && avx2::has_fused_avx512(t) {
            all.push(Strategy::Avx512Fused);
        }
        if avx2::Avx512::detect().is_some() {
            all.push(Strategy::Avx512Panel);
        }
    }
    let _ = (t, &mut all); // used only on x86_64
    all
}

fn test_cols(t: GgmlType) -> &'static [usize] {
    match t.block_layout().map(|(elems, _)| elems) {
        Some(1) => &[1, 7, 40],
        Some(32) => &[32, 96],
        _ => &[256, 512],
    }
}

#[test]
fn every_type_and_strategy_matches_the_f64_reference() {
    let mut rng = Rng(SplitMix64(1));
    for t in ALL_TYPES {
        assert!(QuantMatrix::supports(t), "{t}");
        for &cols in test_cols(t) {
            for rows in [1, 7, 64, 130] {
                let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
                for n in [1, 3, 4, 5, 17] {
                    let x = random_x(n * cols, &mut rng);
                    let expected = reference(&m, &x, n);
                    let mut y = vec![f32::NAN; n * rows];
                    m.matmul(&x, n, &mut y);
                    assert_close(&format!("{t} {rows}×{cols} n={n} auto"), &y, &expected);
                    for s in strategies(t) {
                        let mut y = vec![f32::NAN; n * rows];
                        m.matmul_with(s, &x, n, &mut y).expect("strategy available");
                        assert_close(&format!("{t} {rows}×{cols} n={n} {s:?}"), &y, &expected);
                    }
                }
            }
        }
    }
}

/// Large enough to split over threads, with ragged last chunks and tiles, on both sides of
/// the fused/panel switch; on the global pool (called from outside it) and inside a 3-thread
/// pool (so helpers exist whatever the machine's core count).
#[test]
fn parallel_products_match_the_reference() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(SplitMix64(2));
    for t in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::F16] {
        let (rows, cols) = (1001, if t == GgmlType::Q4_K { 512 } else { 576 });
        let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
        for n in [1, 2, FUSED_MAX_N, FUSED_MAX_N + 1, 70] {
            let x = random_x(n * cols, &mut rng);
            let expected = reference(&m, &x, n);
            for s in strategies(t) {
                let mut y = vec![f32::NAN; n * rows];
                m.matmul_with(s, &x, n, &mut y).expect("strategy available");
                assert_close(&format!("{t} n={n} {s:?}"), &y, &expected);
                let mut y = vec![f32::NAN; n * rows];
                pool.install(|| m.matmul_with(s, &x, n, &mut y)).expect("strategy available");
                assert_close(&format!("{t} n={n} {s:?} in a 3-thread pool"), &y, &expected);
            }
        }
    }
}

/// Rows longer than the fused kernels' scale segment (64 blocks) are converted piecewise;
/// short rows are converted several at a time, with a ragged last group.
#[test]
fn long_and_short_rows_match_the_reference() {
    let mut rng = Rng(SplitMix64(4));
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
        for (rows, cols) in [(37, 32 * 70), (5, 32 * 128), (23, 32 * 7), (45, 32 * 64)] {
            let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
            for n in [1, 2, 3, 4] {
                let x = random_x(n * cols, &mut rng);
                let expected = reference(&m, &x, n);
                for s in strategies(t) {
                    let mut y = vec![f32::NAN; n * rows];
                    m.matmul_with(s, &x, n, &mut y).expect("strategy available");
                    assert_close(&format!("{t} {rows}×{cols} n={n} {s:?}"), &y, &expected);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_kernels_agree_with_the_portable_path() {
    let Some(cpu) = avx2::Avx2::detect() else {
        eprintln!("no AVX2/FMA/F16C on this CPU: skipped");
        return;
    };
    let mut rng = Rng(SplitMix64(3));
    for t in AVX2_TYPES {
        let cols = if t.block_layout().is_some_and(|(elems, _)| elems == 256) { 768 } else { 320 };
        check_avx2_kernels(cpu, t, 67, cols, 1..=9, &mut rng);
    }
}

/// Types with AVX2 row decoders (and, F16 excepted, fused kernels).
#[cfg(target_arch = "x86_64")]
const AVX2_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The AVX2 row decoder of `t` against `gguf::dequant` (bit for bit), and every AVX2
/// strategy against the portable path and the f64 reference, for `n` in `ns`.
#[cfg(target_arch = "x86_64")]
fn check_avx2_kernels(
    cpu: avx2::Avx2,
    t: GgmlType,
    rows: usize,
    cols: usize,
    ns: impl IntoIterator<Item = usize>,
    rng: &mut Rng,
) {
    let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, rng)).expect("valid");
    let mut ours = vec![0f32; rows * cols];
    let mut theirs = vec![0f32; rows * cols];
    assert!(avx2::decode_rows(cpu, t, &m.bytes(), &mut ours), "{t} has an AVX2 decoder");
    dequantize(t, &m.bytes(), &mut theirs).expect("valid");
    for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{t} {rows}×{cols}: AVX2 decoder differs at {k}: {a} vs {b}");
    }
    if let Some(wide) = avx2::Avx512::detect() {
        let mut wide_out = vec![0f32; rows * cols];
        assert!(avx2::decode_rows_512(cpu, wide, t, &m.bytes(), &mut wide_out), "{t} has a decoder");
        for (k, (a, b)) in wide_out.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{t} {rows}×{cols}: AVX-512 decoder differs at {k}: {a} vs {b}");
        }
    }

    for n in ns {
        let x = random_x(n * cols, rng);
        let expected = reference(&m, &x, n);
        let mut portable = vec![0f32; n * rows];
        m.matmul_with(Strategy::Portable, &x, n, &mut portable).expect("portable");
        assert_close(&format!("{t} {rows}×{cols} n={n} Portable"), &portable, &expected);
        for s in strategies(t).into_iter().filter(|&s| s != Strategy::Portable) {
            let mut y = vec![f32::NAN; n * rows];
            m.matmul_with(s, &x, n, &mut y).expect("strategy available");
            assert_close(&format!("{t} {rows}×{cols} n={n} {s:?}"), &y, &expected);
            for (k, ((&a, &b), &(_, scale))) in y.iter().zip(&portable).zip(&expected).enumerate() {
                let diff = f64::from((a - b).abs());
                assert!(diff <= 2e-5 * scale, "{t} {rows}×{cols} n={n} {s:?} output {k}: {a} vs portable {b}");
            }
        }
    }
}

/// The kernels of the types real Q4_K_M/Q5_K_M files use, at sizes that are no multiple of
/// any tile: rows not a multiple of the 3-row panel tile or the thread chunks, 1 to 9
/// activation rows (every fused tile height, and fused and panel on both sides of the
/// switch), rows of 1 to 5 super-blocks (or 1 to 70 blocks for Q5_0).
#[cfg(target_arch = "x86_64")]
#[test]
fn kquant_and_q5_0_kernels_at_odd_sizes() {
    let Some(cpu) = avx2::Avx2::detect() else {
        eprintln!("no AVX2/FMA/F16C on this CPU: skipped");
        return;
    };
    let mut rng = Rng(SplitMix64(5));
    for t in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0] {
        let (block, _) = t.block_layout().expect("block type");
        let blocks: &[usize] = if block == 256 { &[1, 2, 3, 5] } else { &[1, 3, 9, 18, 70] };
        for &k in blocks {
            for rows in [1, 2, 5, 13, 37] {
                check_avx2_kernels(cpu, t, rows, block * k, 1..=9, &mut rng);
            }
        }
    }
}

/// Blocks at the edges of their ranges: all-zero and all-ones quant bytes (every nibble,
/// fifth bit and 6-bit scale at 0 or at its maximum, Q6_K's scales at −1), with large and
/// negative f16 scales.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_decoders_are_exact_at_the_edges() {
    let Some(cpu) = avx2::Avx2::detect() else {
        eprintln!("no AVX2/FMA/F16C on this CPU: skipped");
        return;
    };
    for t in AVX2_TYPES.into_iter().filter(|&t| t != GgmlType::F16) {
        let (elems, block_bytes) = t.block_layout().expect("block type");
        for fill in [0x00u8, 0xFF, 0x5A, 0xA5] {
            for scale in [-65504.0f32, -1.0, 0.0, 6.1e-5, 1.5, 65504.0] {
                let mut block = vec![fill; block_bytes];
                for &at in f16_fields(t) {
                    block[at..at + 2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                }
                let (mut ours, mut theirs) = (vec![0f32; elems], vec![0f32; elems]);
                assert!(avx2::decode_rows(cpu, t, &block, &mut ours), "{t} has an AVX2 decoder");
                dequantize(t, &block, &mut theirs).expect("valid");
                let mut wide_out = vec![0f32; elems];
                let wide = avx2::Avx512::detect().map(|wide| avx2::decode_rows_512(cpu, wide, t, &block, &mut wide_out));
                for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    // A scale of 65504 overflows to inf, and inf · 0 is a NaN (of any payload).
                    let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                    assert!(same, "{t} fill {fill:#x} scale {scale}: element {k}: {a} vs {b}");
                    if wide == Some(true) {
                        let w = wide_out[k];
                        let same = w.to_bits() == b.to_bits() || (w.is_nan() && b.is_nan());
                        assert!(same, "{t} fill {fill:#x} scale {scale}: AVX-512 element {k}: {w} vs {b}");
                    }
                }
            }
        }
    }
}

#[test]
fn empty_shapes_are_fine() {
    let m = QuantMatrix::new(GgmlType::Q4_1, 0, 64, Vec::new()).expect("no rows");
    m.matmul(&[0.5; 128], 2, &mut []);
    let m = QuantMatrix::new(GgmlType::Q8_0, 3, 0, Vec::new()).expect("no columns");
    let mut y = [f32::NAN; 6];
    m.matmul(&[], 2, &mut y);
    assert_eq!(y, [0.0; 6]);
    let m = QuantMatrix::new(GgmlType::Q8_0, 3, 32, vec![0; 3 * 34]).expect("valid");
    m.matmul(&[], 0, &mut []);
}

#[test]
fn wrong_sizes_and_types_are_errors() {
    let err = QuantMatrix::new(GgmlType::Q4_1, 2, 64, vec![0; 79]).expect_err("short");
    assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
    let err = QuantMatrix::new(GgmlType::Q4_1, 2, 64, vec![0; 81]).expect_err("long");
    assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
    let err = QuantMatrix::new(GgmlType::Q4_0, 2, 48, vec![0; 54]).expect_err("partial block");
    assert!(err.to_string().contains("48 columns"), "{err}");
    let err = QuantMatrix::new(GgmlType::Q8_0, usize::MAX, 64, Vec::new()).expect_err("overflow");
    assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
    let err = QuantMatrix::new(GgmlType::Other(99), 1, 32, vec![0; 32]).expect_err("unknown type");
    assert!(matches!(err, ModelError::UnsupportedQuantization { .. }), "{err}");
    assert!(!QuantMatrix::supports(GgmlType::Other(99)));
    let err = QuantMatrix::for_tensor("blk.0.attn_q.weight", GgmlType::Q4_1, 2, 64, vec![0; 1]).expect_err("short");
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");

    let m = QuantMatrix::new(GgmlType::Q4_1, 2, 64, vec![0; 80]).expect("valid");
    assert!(m.try_matmul(&[0.0; 127], 2, &mut [0.0; 4]).is_err());
    assert!(m.try_matmul(&[0.0; 128], 2, &mut [0.0; 5]).is_err());
    assert!(m.try_matmul(&[0.0; 128], usize::MAX, &mut [0.0; 4]).is_err());
    assert!(m.try_matmul(&[0.0; 128], 2, &mut [0.0; 4]).is_ok());
}

#[test]
#[should_panic(expected = "QuantMatrix::matmul")]
fn matmul_panics_on_mismatched_slices() {
    let m = QuantMatrix::new(GgmlType::Q8_0, 1, 32, vec![0; 34]).expect("valid");
    m.matmul(&[0.0; 31], 1, &mut [0.0; 1]);
}

#[test]
fn fast_kernels_are_reported() {
    #[cfg(target_arch = "x86_64")]
    let avx2 = avx2::Avx2::detect().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    for t in ALL_TYPES {
        let fused = matches!(
            t,
            GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        );
        assert_eq!(QuantMatrix::has_fast_kernel(t), fused && avx2, "{t}");
    }
}

/// A stacked matrix (parts kept apart, as q‖k‖v is) computes what one matrix of the
/// concatenated bytes computes, bit for bit, with every strategy, including thread chunks
/// and int8 passes that cross from one part to the next.
#[test]
fn stacked_parts_compute_like_one_concatenated_matrix() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(SplitMix64(7));
    for t in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let cols = if t.block_layout().map(|(e, _)| e) == Some(256) { 512 } else { 576 };
        let sizes = [131, 7, 600];
        let parts: Vec<QuantMatrix> = sizes
            .iter()
            .map(|&rows| QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid"))
            .collect();
        let stacked = QuantMatrix::stacked(&parts.iter().collect::<Vec<_>>()).expect("same type and width");
        assert_eq!(stacked.rows(), sizes.iter().sum::<usize>());
        let whole = QuantMatrix::new(t, stacked.rows(), cols, stacked.bytes().into_owned()).expect("valid");
        for n in [1, 3, 70] {
            let x = random_x(n * cols, &mut rng);
            for s in strategies(t) {
                let (mut a, mut b) = (vec![f32::NAN; n * whole.rows()], vec![f32::NAN; n * whole.rows()]);
                whole.matmul_with(s, &x, n, &mut a).expect("strategy available");
                pool.install(|| stacked.matmul_with(s, &x, n, &mut b)).expect("strategy available");
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{t} n={n} {s:?}");
            }
        }
        // The integer kernels walk weights in L2-sized passes: those cross parts too.
        #[cfg(target_arch = "x86_64")]
        if QuantMatrix::has_int8_kernel(t) {
            let parts8: Vec<QuantMatrix> = parts.into_iter().map(|m| m.with_int8_activations(true)).collect();
            let stacked = QuantMatrix::stacked(&parts8.iter().collect::<Vec<_>>()).expect("same type and width");
            assert!(stacked.int8_activations());
            let whole = whole.with_int8_activations(true);
            for n in [1, 4] {
                let x = random_x(n * cols, &mut rng);
                let (mut a, mut b) = (vec![f32::NAN; n * whole.rows()], vec![f32::NAN; n * whole.rows()]);
                whole.matmul_with(Strategy::Int8, &x, n, &mut a).expect("int8 available");
                pool.install(|| stacked.matmul_with(Strategy::Int8, &x, n, &mut b)).expect("int8 available");
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{t} n={n} int8");
            }
        }
    }
    let other = QuantMatrix::new(GgmlType::Q8_0, 2, 32, vec![0u8; 68]).expect("valid");
    let q4 = QuantMatrix::new(GgmlType::Q4_0, 2, 32, vec![0u8; 36]).expect("valid");
    assert!(QuantMatrix::stacked(&[&other, &q4]).is_none(), "different types stay apart");
    assert!(QuantMatrix::stacked(&[]).is_none());
}

/// Not a test: a stacked matrix's products against one contiguous copy's (gate‖up shapes of
/// SmolLM2, alternating runs so a noisy machine affects both alike). `--lib
/// stacked_against_whole_timing -- --ignored --nocapture`, with RAYON_NUM_THREADS=1.
#[test]
#[ignore]
fn stacked_against_whole_timing() {
    let mut rng = Rng(SplitMix64(9));
    for t in [GgmlType::Q5_0, GgmlType::Q4_K] {
        let cols = if t == GgmlType::Q4_K { 512 } else { 576 };
        let parts: Vec<QuantMatrix> =
            (0..2).map(|_| QuantMatrix::new(t, 1536, cols, random_matrix(t, 1536, cols, &mut rng)).expect("valid")).collect();
        let stacked = QuantMatrix::stacked(&parts.iter().collect::<Vec<_>>()).expect("stackable");
        let whole = QuantMatrix::new(t, stacked.rows(), cols, stacked.bytes().into_owned()).expect("valid");
        for n in [1usize, 64] {
            let x = random_x(n * cols, &mut rng);
            let mut y = vec![0.0; n * whole.rows()];
            let mut best = [f64::MAX; 2];
            for _ in 0..5 {
                for (k, m) in [&whole, &stacked].into_iter().enumerate() {
                    let reps = (200 / n).max(5);
                    let start = std::time::Instant::now();
                    for _ in 0..reps {
                        m.matmul(&x, n, &mut y);
                    }
                    best[k] = best[k].min(start.elapsed().as_secs_f64() / reps as f64);
                }
            }
            eprintln!("{t} n={n}: whole {:.1} us, stacked {:.1} us, ratio {:.2}", best[0] * 1e6, best[1] * 1e6, best[1] / best[0]);
        }
    }
}
