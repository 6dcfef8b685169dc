//! The kernel on Mesa's lavapipe (wgpu's CPU adapter, the WGSL a GPU runs) against a float64
//! reference: grouped heads, several tiles, windows, several query rows, f32 and f16, and
//! keys and values read from a block pool through a block table whose blocks are out of
//! order, among blocks of other sequences (as the paged cache hands them out).

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use super::*;
use crate::device::{DeviceSpec, WgpuAdapter};
use crate::rng::SplitMix64;

/// wgpu on the software adapter, or `None` where a `vulkan` build's SPIR-V is refused by
/// this driver (as in `gpu_quant`'s tests).
fn lavapipe() -> Option<Device> {
    match (DeviceSpec::Wgpu { adapter: WgpuAdapter::Cpu }).open() {
        Ok(device) => Some(device),
        Err(e) if cfg!(feature = "vulkan") => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening wgpu:cpu (lavapipe; apt-get install mesa-vulkan-drivers): {e}"),
    }
}

struct Case {
    rows: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    total: usize,
    window: Option<usize>,
}

/// `[rows, heads, d]` in float64: softmax over the visible positions of `q·k · scale`, then
/// the weighted values. `k`, `v`: `[kv_heads, total, d]`.
fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f64> {
    let mut out = vec![0f64; c.rows * c.heads * c.d];
    for i in 0..c.rows {
        let position = c.total - c.rows + i;
        let start = c.window.map_or(0, |w| (position + 1).saturating_sub(w));
        for h in 0..c.heads {
            let g = h / (c.heads / c.kv_heads);
            let qr = &q[(i * c.heads + h) * c.d..][..c.d];
            let scores: Vec<f64> = (start..=position)
                .map(|p| {
                    let kr = &k[(g * c.total + p) * c.d..][..c.d];
                    qr.iter().zip(kr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() * f64::from(scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for (w, p) in weights.iter().zip(start..=position) {
                let vr = &v[(g * c.total + p) * c.d..][..c.d];
                for j in 0..c.d {
                    out[(i * c.heads + h) * c.d + j] += w / sum * f64::from(vr[j]);
                }
            }
        }
    }
    out
}

/// Runs one case; `k`/`v` are written into a pool of blocks of [`BLOCK`] positions, the
/// sequence's blocks in reverse order at odd ids, other sequences' blocks (large values that
/// would show in any output) in between, as the paged cache holds them.
fn check(device: &Device, c: &Case, dtype: FloatDType, rng: &mut SplitMix64) {
    let draw = |n: usize, rng: &mut SplitMix64| -> Vec<f32> { (0..n).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect() };
    let q = draw(c.rows * c.heads * c.d, rng);
    let k = draw(c.kv_heads * c.total * c.d, rng);
    let v = draw(c.kv_heads * c.total * c.d, rng);
    let scale = 1.0 / (c.d as f32).sqrt() * 1.5;
    let round = |x: &[f32]| -> Vec<f32> {
        if dtype == FloatDType::F16 { x.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect() } else { x.to_vec() }
    };
    let want = reference(c, &round(&q), &round(&k), &round(&v), scale);

    let blocks = c.total.div_ceil(BLOCK);
    let table: Vec<usize> = (0..blocks).map(|b| 2 * (blocks - 1 - b) + 1).collect();
    let pool_blocks = 2 * blocks + 1;
    let upload_pool = |data: &[f32]| {
        let mut pool = vec![40f32; pool_blocks * c.kv_heads * BLOCK * c.d];
        for g in 0..c.kv_heads {
            for p in 0..c.total {
                let at = ((table[p / BLOCK] * c.kv_heads + g) * BLOCK + p % BLOCK) * c.d;
                pool[at..at + c.d].copy_from_slice(&data[(g * c.total + p) * c.d..][..c.d]);
            }
        }
        let shape = [pool_blocks, c.kv_heads, BLOCK, c.d];
        Tensor::<4>::from_data(TensorData::new(pool, shape), (device, DType::F32)).cast(dtype)
    };
    let ids: Vec<i64> = table.iter().map(|&b| b as i64).collect();
    let table = Tensor::<1, Int>::from_data(TensorData::new(ids, [blocks]), device);
    let q_t = Tensor::<3>::from_data(TensorData::new(q, [c.rows, c.heads, c.d]), (device, DType::F32)).cast(dtype);
    let got = gqa_attention(q_t, upload_pool(&k), upload_pool(&v), table, c.total, c.window, scale).expect("kernel runs");
    assert_eq!(got.dims(), [c.rows, c.heads, c.d]);
    let got = got.cast(FloatDType::F32).into_data().try_into_vec::<f32>().expect("f32 output");
    // Outputs are convex combinations of values in [-1, 1]; f32 sums and exps stay well
    // within 1e-5, an f16 output adds its own rounding (2⁻¹¹ relative).
    let tolerance = if dtype == FloatDType::F16 { 2e-3 } else { 2e-5 };
    for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tolerance,
            "rows {} heads {}/{} d {} total {} window {:?} {dtype:?}: output {n}: {g} vs {w}",
            c.rows,
            c.heads,
            c.kv_heads,
            c.d,
            c.total,
            c.window
        );
    }
}

/// Positions per block, as the paged cache has them.
const BLOCK: usize = crate::kv_cache::KV_BLOCK_TOKENS;

#[test]
fn grouped_attention_matches_float64_reference() {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(2026);
    #[rustfmt::skip]
    let cases = [
        Case { rows: 1, heads: 6, kv_heads: 2, d: 64, total: 1, window: None },
        Case { rows: 1, heads: 9, kv_heads: 3, d: 64, total: 300, window: None }, // three tiles
        Case { rows: 3, heads: 4, kv_heads: 1, d: 72, total: 140, window: None }, // rows past a tile edge
        Case { rows: 2, heads: 4, kv_heads: 2, d: 256, total: 200, window: Some(50) },
        Case { rows: 5, heads: 2, kv_heads: 2, d: 16, total: 5, window: Some(3) },
    ];
    for case in &cases {
        check(&device, case, FloatDType::F32, &mut rng);
    }
    check(&device, &cases[1], FloatDType::F16, &mut rng);
    check(&device, &cases[3], FloatDType::F16, &mut rng);
}

#[test]
fn refuses_shapes_it_does_not_take_and_cpu_devices() {
    let table = |device: &Device| Tensor::<1, Int>::zeros([1], device);
    let flex = Device::flex();
    let q = Tensor::<3>::zeros([1, 4, 64], &flex);
    let kv = Tensor::<4>::zeros([1, 2, BLOCK, 64], &flex);
    let refused = gqa_attention(q, kv.clone(), kv.clone(), table(&flex), 3, None, 1.0);
    assert!(matches!(refused, Err(ModelError::DeviceUnavailable { .. })));
    let Some(device) = lavapipe() else { return };
    let kv = Tensor::<4>::zeros([1, 3, BLOCK, 64], &device);
    let q = Tensor::<3>::zeros([1, 4, 64], &device);
    let refused = gqa_attention(q, kv.clone(), kv, table(&device), 3, None, 1.0);
    assert!(matches!(refused, Err(ModelError::Internal(_))), "4 heads over 3 kv heads");
    let kv = Tensor::<4>::zeros([1, 1, BLOCK, 64], &device);
    let q = Tensor::<3>::zeros([3, 1, 64], &device);
    let refused = gqa_attention(q.clone(), kv.clone(), kv.clone(), table(&device), 2, None, 1.0);
    assert!(matches!(refused, Err(ModelError::Internal(_))), "more rows than keys");
    let refused = gqa_attention(q, kv.clone(), kv, table(&device), BLOCK + 1, None, 1.0);
    assert!(matches!(refused, Err(ModelError::Internal(_))), "a table too short for the positions");
}
