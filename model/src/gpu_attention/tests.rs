//! The kernel on Mesa's lavapipe (wgpu's CPU adapter, the WGSL a GPU runs) against a float64
//! reference: grouped heads, several tiles, windows, several query rows, f32 and f16, and
//! keys and values read through a view of a larger cache (as the cache hands them out).

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

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

/// Runs one case; `k`/`v` are written into a cache of `total + 37` positions and viewed
/// back at `0..total`, as `SequenceCache::append` returns them.
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

    let upload4 = |data: &[f32]| {
        let t = Tensor::<4>::from_data(TensorData::new(data.to_vec(), [1, c.kv_heads, c.total, c.d]), (device, DType::F32)).cast(dtype);
        let cache = Tensor::<4>::zeros([1, c.kv_heads, c.total + 37, c.d], (device, dtype.into()));
        let live = [0..1, 0..c.kv_heads, 0..c.total, 0..c.d];
        cache.slice_assign(live.clone(), t).slice(live)
    };
    let q_t = Tensor::<3>::from_data(TensorData::new(q, [c.rows, c.heads, c.d]), (device, DType::F32)).cast(dtype);
    let got = gqa_attention(q_t, upload4(&k), upload4(&v), c.window, scale).expect("kernel runs");
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
    let flex = Device::flex();
    let q = Tensor::<3>::zeros([1, 4, 64], &flex);
    let kv = Tensor::<4>::zeros([1, 2, 3, 64], &flex);
    assert!(matches!(gqa_attention(q, kv.clone(), kv.clone(), None, 1.0), Err(ModelError::DeviceUnavailable { .. })));
    let Some(device) = lavapipe() else { return };
    let kv = Tensor::<4>::zeros([1, 3, 3, 64], &device);
    let q = Tensor::<3>::zeros([1, 4, 64], &device);
    assert!(matches!(gqa_attention(q, kv.clone(), kv, None, 1.0), Err(ModelError::Internal(_))), "4 heads over 3 kv heads");
    let kv = Tensor::<4>::zeros([1, 1, 2, 64], &device);
    let q = Tensor::<3>::zeros([3, 1, 64], &device);
    assert!(matches!(gqa_attention(q, kv.clone(), kv, None, 1.0), Err(ModelError::Internal(_))), "more rows than keys");
}
