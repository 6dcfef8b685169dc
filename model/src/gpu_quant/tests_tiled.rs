//! The tiled kernel on lavapipe, every type and every tile shape in `tiled::TILES`, against
//! `gguf::dequantize` and a float64 product: weight rows that are no multiple of a tile's,
//! activation rows that are no multiple of one, K steps past the end of a row; f16, shards,
//! strided activations, and the switch between the two kernels.

use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use half::f16;

use super::tests::{assert_close, assert_close_f16, lavapipe, random_blocks, random_x, read, reference};
use super::*;
use crate::rng::SplitMix64;

/// 67 weight rows (no multiple of any tile's 32 or 64) and, per width, activation rows and a
/// tile shape (an index into `tiled::TILES`), so every shape meets a partial tile of both
/// kinds: 5 (less than one tile), 33 and 70 (one past a multiple of 32 and of 16, 6 past 64).
fn check_tiled(kind: QuantKind, widths: &[usize], seed: u64) {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(seed);
    let rows = 67;
    for &cols in widths {
        let bytes = random_blocks(kind, rows, cols, &mut rng);
        let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
        for (n, tile) in [(5, 0), (33, 0), (70, 1), (33, 2), (5, 1)] {
            let x = random_x(n * cols, &mut rng);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, cols]), (&device, DType::F32));
            let y = matrix.clone().with_tiled(1, tile).forward(xt).expect("forward");
            assert_eq!(y.dims(), [n, rows], "{kind:?} {rows} × {cols}, n {n}: the shape fusion recorded");
            let what = format!("tiled {kind:?} {rows} × {cols}, n {n}, {:?}", tiled::TILES[tile]);
            assert_close(&what, cols, &read(y), &reference(kind, rows, cols, &bytes, &x));
        }
    }
}

/// 32-element blocks: 3 chunks a row (the lavapipe tile's 2-chunk steps end past the row) and
/// SmolLM2's 576 (18).
const BLOCK_WIDTHS: [usize; 2] = [96, 576];

/// K-quant super-blocks: one and three a row.
const SUPER_BLOCK_WIDTHS: [usize; 2] = [256, 768];

#[test]
fn tiled_q8_0_q4_0_and_q4_1_match_dequantize_and_a_float64_product() {
    for (k, kind) in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1].into_iter().enumerate() {
        check_tiled(kind, &BLOCK_WIDTHS, 30 + k as u64);
    }
}

#[test]
fn tiled_q5_0_matches_dequantize_and_a_float64_product() {
    check_tiled(QuantKind::Q5_0, &BLOCK_WIDTHS, 33);
}

#[test]
fn tiled_q4_k_and_q5_k_match_dequantize_and_a_float64_product() {
    check_tiled(QuantKind::Q4_K, &SUPER_BLOCK_WIDTHS, 34);
    check_tiled(QuantKind::Q5_K, &SUPER_BLOCK_WIDTHS, 35);
}

#[test]
fn tiled_q6_k_matches_dequantize_and_a_float64_product() {
    check_tiled(QuantKind::Q6_K, &SUPER_BLOCK_WIDTHS, 36);
}

/// f16 activations in and out through the device's default tile, every type.
#[test]
fn tiled_f16_activations_in_and_out() {
    let Some(device) = lavapipe() else { return };
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("skipped: this adapter has no f16");
        return;
    }
    let mut rng = SplitMix64(37);
    let (rows, n) = (67, 33);
    for kind in QuantKind::ALL {
        let cols = 3 * kind.block_elements();
        let bytes = random_blocks(kind, rows, cols, &mut rng);
        let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
        let x16: Vec<f16> = random_x(n * cols, &mut rng).into_iter().map(f16::from_f32).collect();
        let x: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
        let xt = Tensor::<2>::from_data(TensorData::new(x16, [n, cols]), (&device, DType::F16));
        let y = matrix.forward(xt).expect("forward");
        assert_eq!(y.dtype(), DType::F16);
        assert_close_f16(&format!("tiled {kind:?} f16"), cols, &read(y), &reference(kind, rows, cols, &bytes, &x));
    }
}

/// The device's own switch: below its threshold the matrix-vector kernel, from it on the
/// tiled one (the default matrix, no test hooks), and both agree with the reference; strided
/// activations (a transpose) and shards of rows go through the tiled kernel too.
#[test]
fn default_dispatch_shards_and_strided_activations() {
    let Some(device) = lavapipe() else { return };
    let mut rng = SplitMix64(38);
    let (kind, rows, cols) = (QuantKind::Q4_1, 67, 576);
    let bytes = random_blocks(kind, rows, cols, &mut rng);
    let limit = 5 * (cols / 32) * kind.block_bytes() + 16;
    let sharded =
        DeviceQuantMatrix::from_blocks_in_shards(kind.ggml_type(), rows, cols, &bytes, &device, limit).expect("upload");
    assert_eq!(sharded.shards(), 14);
    let whole = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, &device).expect("upload");
    for n in [1, 3, 9, 40] {
        let x = random_x(n * cols, &mut rng);
        let expected = reference(kind, rows, cols, &bytes, &x);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, cols]), (&device, DType::F32));
        assert_close(&format!("default, n {n}"), cols, &read(whole.forward(xt.clone()).expect("forward")), &expected);
        let y = sharded.forward(xt).expect("forward");
        assert_close(&format!("shards, n {n}"), cols, &read(y), &expected);
        let x_t: Vec<f32> = (0..cols * n).map(|k| x[(k % n) * cols + k / n]).collect();
        let xt_t = Tensor::<2>::from_data(TensorData::new(x_t, [cols, n]), (&device, DType::F32));
        let y = whole.clone().with_tiled(1, 0).forward(xt_t.transpose()).expect("forward");
        assert_close(&format!("strided, n {n}"), cols, &read(y), &expected);
    }
}

#[test]
fn every_shape_divides_among_its_units_and_fits_16_kib() {
    for tile in tiled::TILES {
        assert!(tile.is_valid(), "{tile:?}");
    }
    for shape in kernels::SHAPES {
        assert!(shape.is_valid(), "{shape:?}");
    }
    let too_large = tiled::TileShape { x_rows: 64, w_rows: 64, units: 256, per_w: 4, chunks: 2 };
    assert!(!too_large.is_valid(), "32 KiB of shared memory");
}
