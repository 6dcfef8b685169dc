//! The layers every family is built from, loaded by role from a family's tensor
//! declaration ([`crate::arch::TensorDecl`]): RMSNorm, the attention projections (separate or
//! fused q/k/v, optional biases, optional per-head q/k norms, optional post-norm) and the
//! gated feed-forward block (separate or fused gate/up, SiLU or GELU-tanh, optional
//! post-norm). Attention itself (scores against the cache) is in [`crate::attention`].

use std::collections::HashMap;

use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::arch::{Role, TensorDecl};
use crate::config::{Activation, ModelConfig};
use crate::error::{ModelError, Result};
use crate::weights::{LinearWeight, WeightSource, expect_dims, upload};

/// How a model's layers are computed, chosen from the device and flags by the caller
/// ([`crate::model`]) and handed to the loader, which never sees the device flag itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputePlan {
    /// Activations' and dense weights' float type.
    pub dtype: FloatDType,
    /// Linear layers keep the file's blocks on the host (fused quantized matmul, CPU only).
    pub quantized_linear: bool,
    /// Attention and the KV cache on the host (CPU devices at f32).
    pub host_attention: bool,
    /// The backend's fused attention lacks grouped-query heads: repeat K/V heads.
    pub repeat_kv_heads: bool,
    /// Short chunks (decode steps) attend through our own kernel, which reads grouped K/V
    /// heads from the cache in place (`gpu_attention`, cubecl devices).
    pub attention_kernel: bool,
    /// Separate q/k/v (and gate/up) weights that can share one matrix are concatenated at
    /// load and computed as one product (see [`LinearWeight::concat_outputs`]); off only to
    /// compare against the separate products.
    pub fuse_projections: bool,
    /// Quantized linear layers round activations to 8 bits (`--activations q8`).
    pub int8_activations: bool,
}

/// What loading a layer needs besides its declaration.
pub struct LoadContext<'a> {
    pub source: &'a dyn WeightSource,
    pub device: &'a Device,
    pub plan: ComputePlan,
    pub eps: f64,
}

/// One block's declared tensors, by role.
pub struct BlockDecls<'a> {
    layer: usize,
    by_role: HashMap<Role, &'a TensorDecl>,
}

impl<'a> BlockDecls<'a> {
    /// The declarations of block `layer` among `decls`.
    pub fn new(layer: usize, decls: &'a [TensorDecl]) -> BlockDecls<'a> {
        let by_role = decls.iter().filter(|d| d.layer == Some(layer)).map(|d| (d.role, d)).collect();
        BlockDecls { layer, by_role }
    }

    pub fn get(&self, role: Role) -> Option<&'a TensorDecl> {
        self.by_role.get(&role).copied()
    }

    /// A role the block cannot do without: its absence is a bug in the family's declaration.
    pub fn need(&self, role: Role) -> Result<&'a TensorDecl> {
        self.get(role)
            .ok_or_else(|| ModelError::Internal(format!("block {} declares no {role:?} tensor", self.layer)))
    }
}

/// Root-mean-square normalisation over the last dimension, always computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[1, dim]`, f32.
    gamma: Tensor<2>,
    /// The same values in host memory where the plan computes on the host (CPU devices at
    /// f32): f32 inputs are then normalised in one pass over host rows
    /// ([`crate::host_ops::rms_norm_row`]) instead of six backend ops, each its own pass and
    /// allocation (2–3 % of a prefill).
    host_gamma: Option<Vec<f32>>,
    eps: f64,
}

impl RmsNorm {
    pub fn load(ctx: &LoadContext<'_>, decl: &TensorDecl) -> Result<RmsNorm> {
        let (dims, data) = ctx.source.f32_tensor(&decl.name)?;
        expect_dims(&decl.name, &dims, &decl.dims)?;
        let dim = decl.dims.iter().product();
        let host_gamma = ctx.plan.host_attention.then(|| data.clone());
        Ok(RmsNorm { gamma: upload(data, [1, dim], ctx.device, FloatDType::F32), host_gamma, eps: ctx.eps })
    }

    /// `x: [n, dim]` → `[n, dim]` in `x`'s float type.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        if let Some(gamma) = &self.host_gamma
            && x.dtype() == DType::F32
            && let Ok(input) = x.clone().into_data().try_into_vec::<f32>()
        {
            let [n, dim] = x.dims();
            let mut out = vec![0f32; input.len()];
            if dim > 0 {
                let eps = self.eps as f32;
                let norm = |first: usize, out: &mut [f32]| {
                    let rows = out.chunks_mut(dim).zip(input[first * dim..].chunks(dim));
                    rows.for_each(|(o, row)| crate::host_ops::rms_norm_row(row, gamma, eps, o));
                };
                // Rows split over threads only where there are enough of them (prefill).
                if n >= 32 {
                    crate::spin_pool::for_row_chunks(&mut out, dim, 8, &norm);
                } else {
                    norm(0, &mut out);
                }
            }
            return Tensor::from_data(TensorData::new(out, [n, dim]), (&x.device(), DType::F32));
        }
        let dtype = x.dtype();
        let x = if dtype == DType::F32 { x } else { x.cast(FloatDType::F32) };
        let rms = (x.clone().square().mean_dim(1) + self.eps).sqrt();
        let y = x / rms * self.gamma.clone();
        if dtype == DType::F32 { y } else { y.cast(float_dtype(dtype)) }
    }

    /// Per-head normalisation: `x: [n, heads, dim]` → the same shape.
    pub fn forward_heads(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, heads, dim] = x.dims();
        self.forward(x.reshape([n * heads, dim])).reshape([n, heads, dim])
    }
}

pub fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

/// A linear layer from its declaration (`[in, out]` ggml dims) and an optional bias.
fn linear(ctx: &LoadContext<'_>, decl: &TensorDecl, bias: Option<&TensorDecl>) -> Result<LinearWeight> {
    let [d_in, d_out] = decl.dims[..] else {
        return Err(ModelError::Internal(format!("{} is declared with {} dims, not 2", decl.name, decl.dims.len())));
    };
    let prefix = decl.name.strip_suffix(".weight").unwrap_or(&decl.name);
    if let Some(bias) = bias
        && bias.name != format!("{prefix}.bias")
    {
        return Err(ModelError::Internal(format!("bias {} does not belong to {}", bias.name, decl.name)));
    }
    let plan = ctx.plan;
    let (quantized, int8) = (plan.quantized_linear, plan.int8_activations);
    LinearWeight::load(ctx.source, prefix, d_in, d_out, bias.is_some(), quantized, int8, ctx.device, plan.dtype)
}

enum Qkv {
    Separate { q: LinearWeight, k: LinearWeight, v: LinearWeight },
    /// q‖k‖v rows of one matrix: a family's fused tensor, or separate ones joined at load.
    Fused(LinearWeight),
}

/// The parts as one layer when the plan fuses and they can share a matrix.
fn fused(ctx: &LoadContext<'_>, parts: &[&LinearWeight]) -> Option<LinearWeight> {
    if ctx.plan.fuse_projections { LinearWeight::concat_outputs(parts) } else { None }
}

/// The attention sub-block's weights: everything but the scores against the cache.
pub struct AttentionWeights {
    pub norm: RmsNorm,
    qkv: Qkv,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    output: LinearWeight,
    post_norm: Option<RmsNorm>,
}

impl AttentionWeights {
    pub fn load(ctx: &LoadContext<'_>, decls: &BlockDecls<'_>) -> Result<AttentionWeights> {
        let norm = |role| decls.get(role).map(|d| RmsNorm::load(ctx, d)).transpose();
        let qkv = match decls.get(Role::AttnQkv) {
            Some(fused) => Qkv::Fused(linear(ctx, fused, None)?),
            None => {
                let q = linear(ctx, decls.need(Role::AttnQ)?, decls.get(Role::AttnQBias))?;
                let k = linear(ctx, decls.need(Role::AttnK)?, decls.get(Role::AttnKBias))?;
                let v = linear(ctx, decls.need(Role::AttnV)?, decls.get(Role::AttnVBias))?;
                match fused(ctx, &[&q, &k, &v]) {
                    Some(qkv) => Qkv::Fused(qkv),
                    None => Qkv::Separate { q, k, v },
                }
            }
        };
        Ok(AttentionWeights {
            norm: RmsNorm::load(ctx, decls.need(Role::AttnNorm)?)?,
            qkv,
            q_norm: norm(Role::AttnQNorm)?,
            k_norm: norm(Role::AttnKNorm)?,
            output: linear(ctx, decls.need(Role::AttnOutput)?, None)?,
            post_norm: norm(Role::AttnPostNorm)?,
        })
    }

    /// Whether q/k/v are one product (a fused tensor in the file, or joined at load).
    pub fn is_fused(&self) -> bool {
        matches!(self.qkv, Qkv::Fused(_))
    }

    /// `x: [n, hidden]` (the residual stream) → `q: [n, heads, d]`, `k, v: [n, kv_heads, d]`,
    /// normalised and projected, with per-head q/k norms applied; RoPE is the caller's.
    pub fn project(&self, x: Tensor<2>, c: &ModelConfig) -> Result<(Tensor<3>, Tensor<3>, Tensor<3>)> {
        let h = self.norm.forward(x);
        let n = h.dims()[0];
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => (q.forward(h.clone())?, k.forward(h.clone())?, v.forward(h)?),
            Qkv::Fused(qkv) => {
                let mut parts = qkv.forward_split(h, &[c.q_dim(), c.kv_dim(), c.kv_dim()])?.into_iter();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(q), Some(k), Some(v)) => (q, k, v),
                    _ => return Err(ModelError::Internal("q/k/v split into fewer than three parts".into())),
                }
            }
        };
        let q = q.reshape([n, c.num_heads, c.head_dim]);
        let k = k.reshape([n, c.num_kv_heads, c.head_dim]);
        let v = v.reshape([n, c.num_kv_heads, c.head_dim]);
        let q = match &self.q_norm {
            Some(norm) => norm.forward_heads(q),
            None => q,
        };
        let k = match &self.k_norm {
            Some(norm) => norm.forward_heads(k),
            None => k,
        };
        Ok((q, k, v))
    }

    /// `attended: [n, heads * d]` → what the block adds to the residual stream, `[n, hidden]`.
    pub fn output(&self, attended: Tensor<2>) -> Result<Tensor<2>> {
        let out = self.output.forward(attended)?;
        Ok(match &self.post_norm {
            Some(norm) => norm.forward(out),
            None => out,
        })
    }
}

enum GateUp {
    Separate { gate: LinearWeight, up: LinearWeight },
    /// gate‖up rows of one matrix: a family's fused tensor, or separate ones joined at load.
    Fused(LinearWeight),
}

/// The gated feed-forward sub-block.
pub struct FeedForward {
    norm: RmsNorm,
    gate_up: GateUp,
    down: LinearWeight,
    post_norm: Option<RmsNorm>,
    activation: Activation,
}

impl FeedForward {
    pub fn load(ctx: &LoadContext<'_>, decls: &BlockDecls<'_>, activation: Activation) -> Result<FeedForward> {
        let gate_up = match decls.get(Role::FfnGateUp) {
            Some(fused) => GateUp::Fused(linear(ctx, fused, None)?),
            None => {
                let gate = linear(ctx, decls.need(Role::FfnGate)?, None)?;
                let up = linear(ctx, decls.need(Role::FfnUp)?, None)?;
                match fused(ctx, &[&gate, &up]) {
                    Some(both) => GateUp::Fused(both),
                    None => GateUp::Separate { gate, up },
                }
            }
        };
        Ok(FeedForward {
            norm: RmsNorm::load(ctx, decls.need(Role::FfnNorm)?)?,
            gate_up,
            down: linear(ctx, decls.need(Role::FfnDown)?, None)?,
            post_norm: decls.get(Role::FfnPostNorm).map(|d| RmsNorm::load(ctx, d)).transpose()?,
            activation,
        })
    }

    /// Whether gate/up are one product (a fused tensor in the file, or joined at load).
    pub fn is_fused(&self) -> bool {
        matches!(self.gate_up, GateUp::Fused(_))
    }

    /// `x: [n, hidden]` (the residual stream) → what the block adds to it, `[n, hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let h = self.norm.forward(x);
        let gated = match &self.gate_up {
            GateUp::Fused(both) if both.is_host() => {
                let device = h.device();
                let (n, joined) = both.host_forward(h)?;
                let ff = both.out_features() / 2;
                let gated = gate_host(&joined, ff, self.activation);
                Tensor::from_data(TensorData::new(gated, [n, ff]), (&device, DType::F32))
            }
            _ => self.gate_device(h)?,
        };
        let out = self.down.forward(gated)?;
        Ok(match &self.post_norm {
            Some(norm) => norm.forward(out),
            None => out,
        })
    }

    /// `act(gate) · up` by backend ops: dense layers, whose products stay on the device.
    fn gate_device(&self, h: Tensor<2>) -> Result<Tensor<2>> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(h.clone())?, up.forward(h)?),
            GateUp::Fused(both) => {
                let ff = both.out_features() / 2;
                let mut parts = both.forward_split(h, &[ff, ff])?.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(gate), Some(up)) => (gate, up),
                    _ => return Err(ModelError::Internal("gate/up split into fewer than two parts".into())),
                }
            }
        };
        Ok(match self.activation {
            Activation::Silu => silu(gate),
            Activation::GeluTanh => gelu_tanh(gate),
        } * up)
    }
}

/// `joined: [n, 2·ff]`, each row gate‖up → `act(gate) · up`, `[n, ff]`, row-parallel: one
/// pass over the host product instead of splitting it into two tensors and running three
/// or more serial backend ops over them.
fn gate_host(joined: &[f32], ff: usize, activation: Activation) -> Vec<f32> {
    let mut gated = vec![0f32; joined.len() / 2];
    if ff == 0 {
        return gated;
    }
    let gate = |first: usize, out: &mut [f32]| {
        for (o, row) in out.chunks_mut(ff).zip(joined[first * 2 * ff..].chunks(2 * ff)) {
            let (gate, up) = row.split_at(ff);
            crate::host_ops::gated(activation, gate, up, o);
        }
    };
    // Rows split over threads only where there are enough of them (prefill), and over the
    // products' spinning helpers (`spin_pool`), not rayon's pool: a decode step's row takes
    // about a microsecond, and handing work to rayon woke a sleeping worker and blocked this
    // thread until it finished, two context switches a layer.
    if gated.len() / ff >= 32 {
        crate::spin_pool::for_row_chunks(&mut gated, ff, 4, &gate);
    } else {
        gate(0, &mut gated);
    }
    gated
}

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`, with `x³` as products: a float power
/// of a negative base is undefined in WGSL.
fn gelu_tanh(x: Tensor<2>) -> Tensor<2> {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * sqrt_2_over_pi;
    x * (inner.tanh() + 1.0) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let device = burn::tensor::Device::flex();
        let xs = [-6.0f32, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 2.0, 7.5];
        let t = upload(xs.to_vec(), [1, xs.len()], &device, FloatDType::F32);
        let got = gelu_tanh(t).into_data().try_to_vec::<f32>().expect("f32");
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!((g as f64 - want).abs() < 1e-5, "gelu_tanh({x}) = {g}, want {want}");
        }
    }

    /// The host pass against the backend formula on the same random gate‖up rows.
    fn host_gate_matches_backend_ops(activation: Activation) {
        let device = burn::tensor::Device::flex();
        let (n, ff) = (5, 37);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let joined: Vec<f32> = (0..n * 2 * ff)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 24.0 - 12.0
            })
            .collect();
        let got = gate_host(&joined, ff, activation);
        let all = upload(joined, [n, 2 * ff], &device, FloatDType::F32);
        let (gate, up) = (all.clone().slice([0..n, 0..ff]), all.slice([0..n, ff..2 * ff]));
        let act = match activation {
            Activation::Silu => silu(gate),
            Activation::GeluTanh => gelu_tanh(gate),
        };
        let want = (act * up).into_data().try_to_vec::<f32>().expect("f32");
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{activation:?} [{i}]: host {g}, backend {w}");
        }
    }

    /// The host RMSNorm (CPU plans at f32) against the backend ops, over enough rows to be
    /// split over threads and over a few.
    #[test]
    fn host_rms_norm_matches_backend_ops() {
        let device = burn::tensor::Device::flex();
        let dim = 37;
        let gamma: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / 20.0).collect();
        let host = RmsNorm { gamma: upload(gamma.clone(), [1, dim], &device, FloatDType::F32), host_gamma: Some(gamma), eps: 1e-6 };
        let backend = RmsNorm { host_gamma: None, ..host.clone() };
        for n in [1, 3, 40] {
            let x: Vec<f32> = (0..n * dim).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
            let input = upload(x, [n, dim], &device, FloatDType::F32);
            let got = host.forward(input.clone()).into_data().try_to_vec::<f32>().expect("f32");
            let want = backend.forward(input).into_data().try_to_vec::<f32>().expect("f32");
            assert_eq!(got.len(), n * dim);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 2e-6 * w.abs().max(1.0), "n={n} [{i}]: host {g}, backend {w}");
            }
        }
    }

    #[test]
    fn host_silu_gate_matches_backend_ops() {
        host_gate_matches_backend_ops(Activation::Silu);
    }

    #[test]
    fn host_gelu_tanh_gate_matches_backend_ops() {
        host_gate_matches_backend_ops(Activation::GeluTanh);
    }
}
