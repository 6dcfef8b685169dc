//! Times `QuantMatrix::matmul` over the linear layers of SmolLM2-135M: one pass = the 7
//! Q4_1 matrices of each of the 30 blocks (q 576→576, k 576→192, v 576→192, o 576→576,
//! gate 576→1536, up 576→1536, down 1536→576) plus the Q8_0 output projection 576→49152,
//! i.e. the weight reads of one decode step for `n` sequences (no attention, no element-wise
//! work). Weights are random valid blocks; speed does not depend on their values.
//!
//! `cargo run --release -p stellarchat-model --example quant_matmul_bench [-- N...]`
//! (default N = 1 16 64). Prints the best and median of several passes per N and the implied
//! tokens/s (N tokens per pass). The machine is shared: compare runs, not absolute numbers.

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

/// Random blocks with small finite f16 scales (and mins) in front.
fn random_matrix(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    let (elems, block_bytes) = t.block_layout().expect("block type");
    let scale_fields = if t == GgmlType::Q4_1 { 2 } else { 1 };
    let mut bytes = vec![0u8; rows * cols / elems * block_bytes];
    for block in bytes.chunks_exact_mut(block_bytes) {
        for chunk in block.chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        for f in 0..scale_fields {
            let v = half::f16::from_f32(0.01 + 0.01 * rng.unit());
            block[2 * f..2 * f + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantMatrix::new(t, rows, cols, bytes).expect("valid random matrix")
}

struct Layer {
    /// (matrix, takes the hidden-size activations)
    mats: Vec<(QuantMatrix, bool)>,
}

fn main() {
    let ns: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() { vec![1, 16, 64] } else { ns };
    let mut rng = Rng(SplitMix64(7));
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
