//! The kernels on Mesa's lavapipe (wgpu's CPU adapter: the same WGSL a GPU runs), against
//! `gguf::dequantize` and a float64 product, at odd sizes; and the refusals.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use half::f16;

use super::*;
use crate::device::{DeviceSpec, WgpuAdapter};
use crate::gguf::dequantize;
use crate::rng::SplitMix64;

/// wgpu on the software adapter, or `None` where a `vulkan` build's SPIR-V is refused by
/// this driver (see tests/golden.rs; a `wgpu`-only build uses WGSL and must open it).
pub(super) fn lavapipe() -> Option<Device> {
    match (DeviceSpec::Wgpu { adapter: WgpuAdapter::Cpu }).open() {
        Ok(device) => Some(device),
        Err(e) if cfg!(feature = "vulkan") => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening wgpu:cpu (lavapipe; apt-get install mesa-vulkan-drivers): {e}"),
    }
}

/// Random blocks: random quants and scales of both signs, with the f16 cases the kernel's
/// integer decoding must get right in the first blocks (zero, subnormals, a negative scale).
/// Every f16 scale is set (random bytes there could be NaN); the K-quants' 6- and 8-bit
/// scales stay random bytes.
pub(super) fn random_blocks(kind: QuantKind, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let blocks = rows * cols / kind.block_elements();
    let mut bytes: Vec<u8> = (0..blocks * kind.block_bytes()).map(|_| rng.next_u64() as u8).collect();
    let special = [f16::from_bits(0x0001), f16::from_bits(0x83FF), f16::ZERO, f16::from_f32(-0.03125)];
    // Byte offsets of `d`, and of the second f16 (`m`, `dmin`) where there is one.
    let (d_at, second_at) = match kind {
        QuantKind::Q4_1 | QuantKind::Q4_K | QuantKind::Q5_K => (0, Some(2)),
        QuantKind::Q6_K => (208, None),
        QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q5_0 => (0, None),
    };
    for (s, block) in bytes.chunks_exact_mut(kind.block_bytes()).enumerate() {
        let d = special.get(s).copied().unwrap_or_else(|| f16::from_f32(rng.next_unit_f32() * 0.1 - 0.05));
        block[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
        if let Some(at) = second_at {
            let m = f16::from_f32(rng.next_unit_f32() * 0.1 - 0.05);
            block[at..at + 2].copy_from_slice(&m.to_le_bytes());
        }
    }
    bytes
}

pub(super) fn random_x(len: usize, rng: &mut SplitMix64) -> Vec<f32> {
    (0..len).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect()
}

/// `(value, Σ|terms|)` per output, in float64 from the dequantized matrix.
pub(super) fn reference(kind: QuantKind, rows: usize, cols: usize, bytes: &[u8], x: &[f32]) -> Vec<(f64, f64)> {
    let mut w = vec![0f32; rows * cols];
    dequantize(kind.ggml_type(), bytes, &mut w).expect("valid blocks");
    x.chunks_exact(cols)
        .flat_map(|xr| {
            w.chunks_exact(cols).map(move |wr| {
                let terms = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b));
                terms.fold((0.0, 0.0), |(s, abs), t| (s + t, abs + t.abs()))
            })
        })
        .collect()
}

/// Rounding only: f32 sums of `cols` products and one scaling per block stay within
/// `(cols + 2) · 2⁻²⁴ · Σ|terms|` of the exact value.
pub(super) fn assert_close(what: &str, cols: usize, y: &[f32], expected: &[(f64, f64)]) {
    assert_eq!(y.len(), expected.len(), "{what}: length");
    let bound = (cols + 2) as f64 * f64::from(f32::EPSILON) / 2.0;
    for (k, (&got, &(value, scale))) in y.iter().zip(expected).enumerate() {
        let err = (f64::from(got) - value).abs();
        assert!(
            err <= bound * scale + 1e-30,
            "{what}: output {k} is {got}, expected {value} (error {err:e}, Σ|terms| {scale:e})"
        );
    }
}

pub(super) fn read(y: Tensor<2>) -> Vec<f32> {
    y.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// Uploads random `kind` blocks of each size and checks the product with 1, 2 and 5
/// activation rows.
fn check_sizes(kind: QuantKind, sizes: &[(usize, usize)], seed: u64) {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(seed);
    for &(rows, cols) in sizes {
        let bytes = random_blocks(kind, rows, cols, &mut rng);
        let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
        assert_eq!(matrix.device_bytes(), layout::device_bytes(kind, rows * cols / kind.block_elements()));
        // The device's shape, then every shape in `kernels::SHAPES` (lavapipe's, a GPU's, and
        // those in between), each with one and with several activation rows.
        let shapes = [None, None, None].into_iter().chain((0..kernels::SHAPES.len()).flat_map(|k| [Some(k), Some(k)]));
        for (k, shape) in shapes.enumerate() {
            let n = [1, 2, 5][k % 3];
            let x = random_x(n * cols, &mut rng);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, cols]), (&device, DType::F32));
            let y = matrix.clone().with_matvec_or_default(shape).matvec_only().forward(xt).expect("forward");
            assert_eq!(y.dims(), [n, rows], "{kind:?} {rows} × {cols}, n {n}: the shape fusion recorded");
            let what = format!("{kind:?} {rows} × {cols}, n {n}, {:?}", shape.map(|k| kernels::SHAPES[k]));
            assert_close(&what, cols, &read(y), &reference(kind, rows, cols, &bytes, &x));
        }
    }
}

impl DeviceQuantMatrix {
    fn with_matvec_or_default(self, shape: Option<usize>) -> DeviceQuantMatrix {
        match shape {
            Some(shape) => self.with_matvec(shape),
            None => self,
        }
    }

    /// The matrix-vector kernel whatever the number of activation rows (the tiled one has
    /// its own tests, tests_tiled.rs).
    fn matvec_only(mut self) -> DeviceQuantMatrix {
        self.tiled_from = usize::MAX;
        self
    }
}

/// 32-element blocks: 1088 columns are 34 blocks a row, more than a cube's 32 units, so units
/// take two; 67 rows are no multiple of any shape's rows per unit.
const BLOCK_SIZES: [(usize, usize); 4] = [(1, 32), (3, 96), (67, 576), (3, 1088)];

/// K-quant super-blocks: one, three, and nine a row (72 sub-blocks: units take two or three).
const SUPER_BLOCK_SIZES: [(usize, usize); 4] = [(1, 256), (3, 768), (67, 256), (3, 2304)];

#[test]
fn q8_0_q4_0_and_q4_1_match_dequantize_and_a_float64_product_at_odd_sizes() {
    for (k, kind) in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1].into_iter().enumerate() {
        check_sizes(kind, &BLOCK_SIZES, 10 + k as u64);
    }
}

#[test]
fn q5_0_matches_dequantize_and_a_float64_product_at_odd_sizes() {
    check_sizes(QuantKind::Q5_0, &BLOCK_SIZES, 20);
}

#[test]
fn q4_k_matches_dequantize_and_a_float64_product_at_odd_sizes() {
    check_sizes(QuantKind::Q4_K, &SUPER_BLOCK_SIZES, 21);
}

#[test]
fn q5_k_matches_dequantize_and_a_float64_product_at_odd_sizes() {
    check_sizes(QuantKind::Q5_K, &SUPER_BLOCK_SIZES, 22);
}

#[test]
fn q6_k_matches_dequantize_and_a_float64_product_at_odd_sizes() {
    check_sizes(QuantKind::Q6_K, &SUPER_BLOCK_SIZES, 23);
}

/// A matrix larger than one buffer goes up in shards of whole rows, and the product is the
/// same (here 5-row shards of Q6_K, whose 2-byte pieces are padded per shard).
#[test]
fn matrices_larger_than_a_buffer_go_up_in_shards_of_rows() {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(24);
    let (kind, rows, cols, n) = (QuantKind::Q6_K, 67, 256, 2);
    let bytes = random_blocks(kind, rows, cols, &mut rng);
    let limit = 5 * kind.block_bytes() + 16;
    let matrix =
        DeviceQuantMatrix::from_blocks_in_shards(kind.ggml_type(), rows, cols, &bytes, &device, limit).expect("upload");
    assert_eq!(matrix.shards(), 14, "13 shards of 5 rows and one of 2");
    assert!(matrix.device_bytes() <= bytes.len() + 14 * 14 && matrix.device_bytes() >= bytes.len());
    let x = random_x(n * cols, &mut rng);
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, cols]), (&device, DType::F32));
    let y = matrix.forward(xt).expect("forward");
    assert_eq!(y.dims(), [n, rows]);
    assert_close("Q6_K in shards", cols, &read(y), &reference(kind, rows, cols, &bytes, &x));
}

/// Strided activations (a transpose) and the result used by the next operation in the same
/// fusion stream: the custom operation runs in order, on the values its inputs had.
#[test]
fn reads_strided_activations_and_runs_in_stream_order() {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(11);
    let (kind, rows, cols, n) = (QuantKind::Q4_0, 5, 64, 3);
    let bytes = random_blocks(kind, rows, cols, &mut rng);
    let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
    let x = random_x(n * cols, &mut rng);
    let x_t: Vec<f32> = (0..cols * n).map(|k| x[(k % n) * cols + k / n]).collect();
    let xt = Tensor::<2>::from_data(TensorData::new(x_t, [cols, n]), (&device, DType::F32));
    let xt = (xt * 2.0) * 0.5; // fused element-wise ops before ours (exact: powers of two)
    let y = matrix.forward(xt.transpose()).expect("forward") * 2.0;
    let expected: Vec<(f64, f64)> =
        reference(kind, rows, cols, &bytes, &x).into_iter().map(|(v, s)| (2.0 * v, 2.0 * s)).collect();
    assert_close("strided Q4_0", cols, &read(y), &expected);
}

/// f16 activations in and out, where the adapter has f16: the kernel reads x in its dtype,
/// accumulates in f32 and rounds once to f16 when it writes y.
#[test]
fn f16_activations_in_and_out() {
    let Some(device) = lavapipe() else { return };
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("skipped: this adapter has no f16");
        return;
    }
    let mut rng = SplitMix64(13);
    let (rows, n) = (67, 2);
    for kind in QuantKind::ALL {
        let cols = 3 * kind.block_elements();
        let bytes = random_blocks(kind, rows, cols, &mut rng);
        let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
        for shape in [None, Some(1)] {
            let x16: Vec<f16> = random_x(n * cols, &mut rng).into_iter().map(f16::from_f32).collect();
            let x: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
            let xt = Tensor::<2>::from_data(TensorData::new(x16, [n, cols]), (&device, DType::F16));
            let y = matrix.clone().with_matvec_or_default(shape).matvec_only().forward(xt).expect("forward");
            assert_eq!(y.dtype(), DType::F16);
            let what = format!("{kind:?} f16, {:?}", shape.map(|k| kernels::SHAPES[k]));
            assert_close_f16(&what, cols, &read(y), &reference(kind, rows, cols, &bytes, &x));
        }
    }
}

/// [`assert_close`] for a result rounded to f16 once at the end.
pub(super) fn assert_close_f16(what: &str, cols: usize, y: &[f32], expected: &[(f64, f64)]) {
    assert_eq!(y.len(), expected.len(), "{what}: length");
    let bound = (cols + 2) as f64 * f64::from(f32::EPSILON) / 2.0;
    for (k, (&g, &(v, s))) in y.iter().zip(expected).enumerate() {
        // The f32 sum's rounding, then f16's: half an ulp (2⁻¹¹ relative, 2⁻²⁵ absolute below
        // the normals).
        let allowed = bound * s + (v.abs() + bound * s) * 2f64.powi(-11) + 2f64.powi(-25);
        assert!((f64::from(g) - v).abs() <= allowed, "{what}, output {k}: {g} vs {v}");
    }
}

#[test]
fn types_without_a_kernel_and_wrong_sizes_are_typed_errors() {
    let Some(device) = lavapipe() else { return };
    let err = DeviceQuantMatrix::from_blocks(GgmlType::Q2_K, 1, 256, &[0; 84], &device).unwrap_err();
    assert_eq!(err.kind(), "unsupported_quantization", "{err}");
    let err = DeviceQuantMatrix::from_blocks(GgmlType::Q8_0, 2, 32, &[0; 34], &device).unwrap_err();
    assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
    let err = DeviceQuantMatrix::from_blocks(GgmlType::Q4_0, 1, 40, &[0; 18], &device).unwrap_err();
    assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
    // A 576-wide row (SmolLM2's) is 18 blocks of 32 but no whole number of 256-element
    // super-blocks, whatever the byte count.
    for (kind, bytes) in [(GgmlType::Q4_K, 2 * 144 + 36), (GgmlType::Q6_K, 2 * 210)] {
        let err = DeviceQuantMatrix::from_blocks(kind, 1, 576, &vec![0; bytes], &device).unwrap_err();
        assert!(matches!(err, ModelError::Tensor { .. }), "{err}");
        assert!(err.to_string().contains("blocks of 256 per row (576 columns)"), "{err}");
    }
    let matrix = DeviceQuantMatrix::from_blocks(GgmlType::Q4_0, 1, 32, &[0; 18], &device).expect("upload");
    let x = Tensor::<2>::zeros([1, 64], &device);
    assert!(matches!(matrix.forward(x), Err(ModelError::Internal(_))));
}

/// A CPU device never reaches the extension (which would panic there): a typed error at
/// upload, and at `forward` for activations that live on one.
#[cfg(feature = "flex")]
#[test]
fn a_cpu_device_is_refused_not_dispatched() {
    let flex = Device::flex();
    let bytes = random_blocks(QuantKind::Q8_0, 2, 64, &mut SplitMix64(12));
    let err = DeviceQuantMatrix::from_blocks(GgmlType::Q8_0, 2, 64, &bytes, &flex).unwrap_err();
    assert_eq!(err.kind(), "device_unavailable", "{err}");
    let Some(device) = lavapipe() else { return };
    let matrix = DeviceQuantMatrix::from_blocks(GgmlType::Q8_0, 2, 64, &bytes, &device).expect("upload");
    let err = matrix.forward(Tensor::<2>::zeros([1, 64], &flex)).unwrap_err();
    assert_eq!(err.kind(), "device_unavailable", "{err}");
}
