//! A timing harness, not a test (ignored; it asserts no speed): the matrix-vector kernel
//! against burn's dense f32 matmul on lavapipe, at SmolLM2-135M's decode shapes (one
//! activation row). Run it on a quiet machine with
//! `cargo test --workspace --features stellarchat/flex,stellarchat/ndarray,stellarchat/wgpu
//! --lib gpu_quant::tests_bench -- --ignored --nocapture`.

use std::time::Instant;

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::tests::{assert_close, lavapipe, random_blocks, random_x, read, reference};
use super::*;
use crate::gguf::dequantize;
use crate::rng::SplitMix64;

/// SmolLM2-135M's layers (q, k and v joined; gate and up joined; o; down) and its tied
/// output head, as `(rows, cols)`.
const SHAPES: [(usize, usize); 5] = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)];

/// Milliseconds per call of `forward` over `reps` calls queued back to back, their results
/// summed so that every call is needed, and read once at the end.
fn time_calls(reps: usize, x: &Tensor<2>, forward: impl Fn(Tensor<2>) -> Tensor<2>) -> f64 {
    // The first calls compile the kernels.
    for _ in 0..2 {
        read(forward(x.clone()));
    }
    let started = Instant::now();
    let mut sum = forward(x.clone());
    for _ in 1..reps {
        sum = sum + forward(x.clone());
    }
    read(sum);
    started.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn bench_kind(kind: QuantKind, device: &Device) {
    let mut rng = SplitMix64(40);
    for (rows, cols) in SHAPES {
        let reps = if rows > 10_000 { 4 } else { 20 };
        let bytes = random_blocks(kind, rows, cols, &mut rng);
        let matrix = DeviceQuantMatrix::from_blocks(kind.ggml_type(), rows, cols, &bytes, device).expect("upload");
        let x = random_x(cols, &mut rng);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [1, cols]), (device, DType::F32));
        // The kernel is still checked: a fast wrong kernel would mislead.
        let y = read(matrix.forward(xt.clone()).expect("forward"));
        assert_close(&format!("{kind:?} {rows} × {cols}"), cols, &y, &reference(kind, rows, cols, &bytes, &x));
        let quantized = time_calls(reps, &xt, |x| matrix.forward(x).expect("forward"));
        // The lavapipe candidates (every shape but the GPU's 32 lanes).
        let shapes: Vec<String> = (0..kernels::SHAPES.len())
            .filter(|&k| kernels::SHAPES[k].lanes < 32)
            .map(|k| {
                let shaped = matrix.clone().with_matvec(k);
                let ms = time_calls(reps, &xt, |x| shaped.forward(x).expect("forward"));
                let shape = kernels::SHAPES[k];
                format!("{}/{}/{}: {ms:.2}", shape.lanes, shape.rows_per_unit, shape.cube_units)
            })
            .collect();
        let mut w = vec![0f32; rows * cols];
        dequantize(kind.ggml_type(), &bytes, &mut w).expect("valid blocks");
        let w_t: Vec<f32> = (0..cols * rows).map(|k| w[(k % rows) * cols + k / rows]).collect();
        let dense_w = Tensor::<2>::from_data(TensorData::new(w_t, [cols, rows]), (device, DType::F32));
        let dense = time_calls(reps, &xt, |x| x.matmul(dense_w.clone()));
        println!("{kind:?} {rows:>5} × {cols:>4}: quantized {quantized:7.2} ms, dense {dense:7.2} ms ({})", shapes.join(", "));
        if rows == 3072 {
            // Prefill: the tiled kernel on 94 activation rows (SmolLM2's chat prompt).
            let x94 = Tensor::<2>::from_data(TensorData::new(random_x(94 * cols, &mut rng), [94, cols]), (device, DType::F32));
            let tiled = time_calls(4, &x94, |x| matrix.forward(x).expect("forward"));
            let dense = time_calls(4, &x94, |x| x.matmul(dense_w.clone()));
            println!("{kind:?} {rows:>5} × {cols:>4}, 94 rows: tiled {tiled:7.2} ms, dense {dense:7.2} ms");
        }
    }
}

#[test]
#[ignore = "a timing harness: run it by hand on a quiet machine"]
fn matvec_against_dense_on_lavapipe() {
    let Some(device) = lavapipe() else { return };
    let kinds: Vec<QuantKind> = match std::env::var("BENCH_KINDS") {
        Ok(names) => QuantKind::ALL.into_iter().filter(|k| names.contains(&format!("{k:?}"))).collect(),
        Err(_) => vec![QuantKind::Q4_1],
    };
    for kind in kinds {
        bench_kind(kind, &device);
    }
}
