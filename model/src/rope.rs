//! Rotary position embeddings, computed from per-token positions so that one batched
//! forward can rotate tokens of many sequences at different offsets.

use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::{ModelConfig, RopeLayout};
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
        RopeTables { cos: upload(cos, [n, 1, half], device, dtype), sin: upload(sin, [n, 1, half], device, dtype) }
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
