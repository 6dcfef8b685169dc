//! Rotary position embeddings, computed from per-token positions so that one batched
//! forward can rotate tokens of many sequences at different offsets.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::weights::upload;

/// The rotation frequencies of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `inv_freq[i] = 1 / (theta^(2i/d) · factor_i · linear_scale)`, in f64 so tables are exact.
    inv_freq: Vec<f64>,
    layout: RopeLayout,
}

/// `cos`/`sin` for the tokens of one forward, broadcastable over heads.
pub struct RopeTables {
    cos: Tensor<3>,
    sin: Tensor<3>,
    /// The same `[n, head_dim / 2]` values in host memory, for [`Rope::apply_on_host`].
    host_cos: Vec<f32>,
    host_sin: Vec<f32>,
}

impl Rope {
    /// The rotation of full-attention layers. `freq_factors`: Llama 3's per-frequency
    /// divisors (GGUF `rope_freqs.weight`), if any.
    pub fn new(config: &ModelConfig, freq_factors: Option<&[f32]>) -> Rope {
        Rope::with_base(config, config.rope_theta, config.rope_linear_scale, freq_factors)
    }

    /// The rotation of sliding-window layers: their own base where the family has one
    /// (Gemma 3), without linear scaling, as llama.cpp computes them.
    pub fn local(config: &ModelConfig, freq_factors: Option<&[f32]>) -> Option<Rope> {
        config.rope_theta_local.map(|theta| Rope::with_base(config, theta, 1.0, freq_factors))
    }

    fn with_base(config: &ModelConfig, theta: f64, linear_scale: f64, freq_factors: Option<&[f32]>) -> Rope {
        let half = config.head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let base = theta.powf(-2.0 * i as f64 / config.head_dim as f64);
                let factor = freq_factors.and_then(|f| f.get(i)).map_or(1.0, |&f| f as f64);
                base / factor / linear_scale
            })
            .collect();
        Rope { inv_freq, layout: config.rope_layout }
    }

    /// Tables for `positions` (one per token of the batch): `[n, 1, head_dim / 2]`.
    pub fn tables(&self, positions: &[usize], device: &Device, dtype: FloatDType) -> RopeTables {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let n = positions.len();
        let (host_cos, host_sin) = (cos.clone(), sin.clone());
        let (cos, sin) = (upload(cos, [n, 1, half], device, dtype), upload(sin, [n, 1, half], device, dtype));
        RopeTables { cos, sin, host_cos, host_sin }
    }

    /// [`Rope::apply`] for f32 activations of a CPU device, computed in host memory: at a
    /// decode step the backend version's dozen small tensor ops (slices, products, a
    /// concatenation, each with its own allocation and dispatch) took 5 % of a SmolLM2 step.
    /// Same operations in the same order, so the same roundings.
    pub fn apply_on_host(&self, x: Tensor<3>, tables: &RopeTables) -> Result<Tensor<3>> {
        let [n, heads, dim] = x.dims();
        let device = x.device();
        let mut data = x
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Internal(format!("reading rope input: {e:?}")))?;
        self.rotate(&mut data, heads, dim, tables);
        Ok(Tensor::from_data(TensorData::new(data, [n, heads, dim]), (&device, DType::F32)))
    }

    /// Rotates `x: [n, heads, head_dim]` (row-major) in place by each token's position.
    fn rotate(&self, x: &mut [f32], heads: usize, dim: usize, tables: &RopeTables) {
        let half = dim / 2;
        if half == 0 || heads == 0 {
            return;
        }
        for (t, token) in x.chunks_exact_mut(heads * dim).enumerate() {
            let (cos, sin) = (&tables.host_cos[t * half..][..half], &tables.host_sin[t * half..][..half]);
            for head in token.chunks_exact_mut(dim) {
                match self.layout {
                    RopeLayout::Halves => {
                        let (first, second) = head.split_at_mut(half);
                        for (((a, b), &c), &s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
                            let (x0, x1) = (*a, *b);
                            *a = x0 * c - x1 * s;
                            *b = x0 * s + x1 * c;
                        }
                    }
                    RopeLayout::InterleavedPairs => {
                        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                            let (x0, x1) = (pair[0], pair[1]);
                            pair[0] = x0 * c - x1 * s;
                            pair[1] = x0 * s + x1 * c;
                        }
                    }
                }
            }
        }
    }

    /// `x: [n, heads, head_dim]` → the same shape, rotated by each token's position.
    pub fn apply(&self, x: Tensor<3>, tables: &RopeTables) -> Tensor<3> {
        let [n, heads, dim] = x.dims();
        let half = dim / 2;
        match self.layout {
            RopeLayout::Halves => {
                let x0 = x.clone().slice([0..n, 0..heads, 0..half]);
                let x1 = x.slice([0..n, 0..heads, half..dim]);
                let (cos, sin) = (tables.cos.clone(), tables.sin.clone());
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::cat(vec![r0, r1], 2)
            }
            RopeLayout::InterleavedPairs => {
                let pairs: Tensor<4> = x.reshape([n, heads, half, 2]);
                let x0 = pairs.clone().slice([0..n, 0..heads, 0..half, 0..1]);
                let x1 = pairs.slice([0..n, 0..heads, 0..half, 1..2]);
                let cos: Tensor<4> = tables.cos.clone().unsqueeze_dim(3);
                let sin: Tensor<4> = tables.sin.clone().unsqueeze_dim(3);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::cat(vec![r0, r1], 3).reshape([n, heads, dim])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host rotation against the backend ops, both layouts, several tokens at scattered
    /// positions (exact: same operations, same order).
    #[test]
    fn host_rotation_matches_backend_ops() {
        let device = Device::flex();
        let (n, heads, dim) = (3, 4, 16);
        let x: Vec<f32> = (0..n * heads * dim).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        for layout in [RopeLayout::Halves, RopeLayout::InterleavedPairs] {
            let rope = Rope { inv_freq: (0..dim / 2).map(|i| 10000f64.powf(-2.0 * i as f64 / dim as f64)).collect(), layout };
            let tables = rope.tables(&[0, 5, 1234], &device, FloatDType::F32);
            let input = || Tensor::<3>::from_data(TensorData::new(x.clone(), [n, heads, dim]), (&device, DType::F32));
            let want = rope.apply(input(), &tables).into_data().try_into_vec::<f32>().expect("f32");
            let got = rope.apply_on_host(input(), &tables).expect("host").into_data().try_into_vec::<f32>().expect("f32");
            assert_eq!(got, want, "{layout:?}");
            // Position 0 is the identity, later ones are not.
            assert_eq!(&got[..heads * dim], &x[..heads * dim], "{layout:?}");
            assert_ne!(&got[heads * dim..], &x[heads * dim..], "{layout:?}");
        }
    }
}
