//! The decoder every family runs, written once against burn's device-dispatched tensors so
//! the same code runs on every compiled backend.
//!
//! [`Transformer::load`] builds the layers from the family's tensor declaration
//! ([`crate::arch::Family::tensors`]) with the shared layers of [`crate::layers`], following a
//! [`ComputePlan`]. [`Transformer::forward`] runs one step for a batch of sequences of any
//! lengths: their tokens are flattened into one `[tokens, hidden]` matrix for every
//! projection, and only attention is done per sequence, against its own cache.

use std::sync::Arc;

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::arch::{Role, TensorDecl};
use crate::attention::{LayerAttention, attend_on_device, attend_on_host};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::host_attention::AttentionShape;
use crate::kv_cache::{KvPool, KvShape, SequenceCache};
use crate::layers::{AttentionWeights, BlockDecls, ComputePlan, FeedForward, LoadContext, RmsNorm};
use crate::rope::Rope;
use crate::weights::{EmbeddingTable, LinearWeight, WeightSource, expect_dims, transpose, upload};

pub use crate::attention::ForwardChunk;

struct Block {
    attention: AttentionWeights,
    ffn: FeedForward,
    /// Index into [`Transformer::ropes`].
    rope: usize,
}

/// Logits of a forward, as host f32 rows of `vocab` entries, in chunk order.
#[derive(Debug, Clone)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
    /// First row of each chunk, plus one past the end.
    chunk_starts: Vec<usize>,
}

impl Logits {
    /// The rows of chunk `i`: one (its last position), or one per token with `all_logits`.
    pub fn chunk(&self, i: usize) -> &[f32] {
        &self.data[self.chunk_starts[i] * self.vocab..self.chunk_starts[i + 1] * self.vocab]
    }

    /// The last row of chunk `i`: what the next token is sampled from.
    pub fn last_row(&self, i: usize) -> &[f32] {
        let end = self.chunk_starts[i + 1] * self.vocab;
        &self.data[end - self.vocab..end]
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// A loaded model, bound to one device.
pub struct Transformer {
    config: ModelConfig,
    device: Device,
    plan: ComputePlan,
    embeddings: EmbeddingTable,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    output: LinearWeight,
    /// The full-attention rotation, then the sliding layers' own if the family has one.
    ropes: Vec<Rope>,
    /// The KV blocks every cache of this model draws from.
    kv_pool: Arc<KvPool>,
}

impl Transformer {
    /// Builds the model from `source`, which must hold every tensor the configuration's
    /// family declares, with the declared shapes. `progress(done, total)` is called after
    /// each tensor group.
    pub fn load(
        config: ModelConfig,
        source: &dyn WeightSource,
        device: &Device,
        plan: ComputePlan,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Transformer> {
        config.validate()?;
        let decls = config.family.family().tensors(&config);
        for decl in &decls {
            if !source.contains(&decl.name) {
                return Err(ModelError::tensor(
                    &decl.name,
                    format!("missing: a {} checkpoint of this configuration has it", config.family.name()),
                ));
            }
        }
        let c = &config;
        let ctx = LoadContext { source, device, plan, eps: c.rms_norm_eps };
        let global = |role| decls.iter().find(|d| d.role == role && d.layer.is_none());
        let need = |role| global(role).ok_or_else(|| ModelError::Internal(format!("no {role:?} tensor declared")));
        let total = c.num_layers + 2;

        let embedding = need(Role::TokenEmbedding)?;
        let embeddings = EmbeddingTable::load(source, &embedding.name, c.hidden_size, c.vocab_size)?;
        let output = match global(Role::Output) {
            Some(decl) => {
                let prefix = decl.name.strip_suffix(".weight").unwrap_or(&decl.name);
                let (quantized, int8) = (plan.quantized_linear, plan.int8_activations);
                LinearWeight::load(source, prefix, c.hidden_size, c.vocab_size, false, quantized, int8, device, plan.dtype)?
            }
            None => tied_output(&embeddings, c, device, plan)?,
        };
        let final_norm = RmsNorm::load(&ctx, need(Role::OutputNorm)?)?;
        progress(1, total);

        let freq_factors = global(Role::RopeFreqs).map(|decl| read_vector(source, decl)).transpose()?;
        let mut ropes = vec![Rope::new(c, freq_factors.as_deref())];
        ropes.extend(Rope::local(c, freq_factors.as_deref()));
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let block_decls = BlockDecls::new(i, &decls);
            blocks.push(Block {
                attention: AttentionWeights::load(&ctx, &block_decls)?,
                ffn: FeedForward::load(&ctx, &block_decls, c.activation)?,
                rope: if c.window(i).is_some() { ropes.len() - 1 } else { 0 },
            });
            progress(i + 2, total);
        }
        progress(total, total);
        let kv_shape = KvShape { layers: c.num_layers, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let kv_pool = Arc::new(KvPool::new(kv_shape, device, plan.dtype, plan.host_attention, None));
        Ok(Transformer { config, device: device.clone(), plan, embeddings, blocks, final_norm, output, ropes, kv_pool })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> FloatDType {
        self.plan.dtype
    }

    /// How many blocks compute q/k/v, and how many gate/up, as one product each.
    pub fn fused_blocks(&self) -> (usize, usize) {
        let qkv = self.blocks.iter().filter(|b| b.attention.is_fused()).count();
        let gate_up = self.blocks.iter().filter(|b| b.ffn.is_fused()).count();
        (qkv, gate_up)
    }

    /// An empty cache for a new sequence on this model's device.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.kv_pool.clone(), self.config.context_length)
    }

    /// The pool of KV blocks this model's caches share.
    pub fn kv_pool(&self) -> &Arc<KvPool> {
        &self.kv_pool
    }

    /// One step for a batch of sequences: appends each chunk's tokens to its cache and
    /// returns the logits of each chunk's last position (all positions with `all_logits`).
    ///
    /// Shapes: the `n` tokens of all chunks flow as `x: [n, hidden]`; per layer
    /// `q: [n, heads, head_dim]`, `k, v: [n, kv_heads, head_dim]`; each chunk's attention runs
    /// as `[1, heads, len, head_dim]` against `[1, kv_heads, cached + len, head_dim]`; logits
    /// are `[rows, vocab]`.
    pub fn forward(&self, chunks: &mut [ForwardChunk<'_>]) -> Result<Logits> {
        let c = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut output_rows = Vec::new();
        let mut chunk_starts = vec![0];
        for chunk in chunks.iter_mut() {
            let start = chunk.cache.len();
            let len = chunk.tokens.len();
            if len == 0 {
                return Err(ModelError::Internal("a forward chunk has no tokens".into()));
            }
            if start + len > c.context_length {
                return Err(ModelError::ContextLengthExceeded {
                    prompt_tokens: start + len,
                    max_tokens: 0,
                    context_length: c.context_length,
                });
            }
            let first_row = ids.len();
            ids.extend_from_slice(chunk.tokens);
            positions.extend(start..start + len);
            if chunk.all_logits {
                output_rows.extend(first_row..first_row + len);
            } else {
                output_rows.push(first_row + len - 1);
            }
            chunk_starts.push(output_rows.len());
            chunk.cache.reserve(len)?;
        }
        let n = ids.len();
        let mut embedded = self.embeddings.lookup(&ids)?;
        if c.embedding_scale != 1.0 {
            let scale = c.embedding_scale as f32;
            embedded.iter_mut().for_each(|v| *v *= scale);
        }
        let mut x = upload(embedded, [n, c.hidden_size], &self.device, self.plan.dtype);
        let rope_tables: Vec<_> = self.ropes.iter().map(|r| r.tables(&positions, &self.device, self.plan.dtype)).collect();

        for (layer, block) in self.blocks.iter().enumerate() {
            let (q, k, v) = block.attention.project(x.clone(), c)?;
            let rope = &self.ropes[block.rope];
            let tables = &rope_tables[block.rope];
            let (q, k) = if self.plan.host_attention && self.plan.dtype == FloatDType::F32 {
                (rope.apply_on_host(q, tables)?, rope.apply_on_host(k, tables)?)
            } else {
                (rope.apply(q, tables), rope.apply(k, tables))
            };
            let settings = LayerAttention {
                layer,
                shape: AttentionShape {
                    heads: c.num_heads,
                    kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    scale: c.attention_scale as f32,
                    window: c.window(layer),
                },
                repeat_kv: self.plan.repeat_kv_heads && c.num_kv_heads != c.num_heads,
                kernel: self.plan.attention_kernel,
            };
            let attended = if self.plan.host_attention {
                attend_on_host(settings, chunks, q, k, v)?
            } else {
                attend_on_device(settings, chunks, q, k, v)?
            };
            x = x.clone() + block.attention.output(attended)?;
            x = x.clone() + block.ffn.forward(x)?;
        }
        for chunk in chunks.iter_mut() {
            chunk.cache.advance(chunk.tokens.len());
        }

        let rows = output_rows.len();
        let selected = if rows == n {
            x
        } else {
            let index: Vec<i64> = output_rows.iter().map(|&r| r as i64).collect();
            x.select(0, Tensor::<1, Int>::from_data(TensorData::new(index, [rows]), &self.device))
        };
        let logits = self.output.forward(self.final_norm.forward(selected))?;
        let logits = if self.plan.dtype == FloatDType::F32 { logits } else { logits.cast(FloatDType::F32) };
        let data = logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Internal(format!("reading logits back: {e:?}")))?;
        if n >= TRIM_AFTER_ROWS {
            // A prefill's activations and products (0.1-1 MB a layer) are free now and decode
            // steps need none of that size: give the pages back (see `heap`).
            crate::quant_matmul::release_batch_buffers();
            crate::heap::return_freed_pages();
        }
        Ok(Logits { data, vocab: c.vocab_size, chunk_starts })
    }
}

/// Forwards of at least this many rows (prefills) hand their freed memory back.
const TRIM_AFTER_ROWS: usize = 32;

/// The output projection of a model without `output.weight`: the embedding table, kept
/// quantized when the plan and its type allow, else transposed into a dense `[hidden, vocab]`.
/// Whether `device` is a cubecl one (host kernels never run there).
fn plan_is_gpu(device: &Device) -> bool {
    #[cfg(feature = "gpu-kernels")]
    {
        crate::gpu_quant::is_cube(device)
    }
    #[cfg(not(feature = "gpu-kernels"))]
    {
        let _ = device;
        false
    }
}

fn tied_output(embeddings: &EmbeddingTable, c: &ModelConfig, device: &Device, plan: ComputePlan) -> Result<LinearWeight> {
    // On a cubecl device the table's blocks are uploaded once more for the output product
    // (lookups stay on the host).
    #[cfg(feature = "gpu-kernels")]
    if plan.quantized_linear
        && crate::gpu_quant::is_cube(device)
        && let Some(matrix) = embeddings.to_quant_matrix()?
        && crate::gpu_quant::DeviceQuantMatrix::supports(matrix.ggml_type())
    {
        let matrix = crate::gpu_quant::DeviceQuantMatrix::upload(&matrix, device)
            .map_err(|e| ModelError::tensor("token_embd.weight", e.to_string()))?;
        return Ok(LinearWeight::Device { matrix, bias: None });
    }
    if plan.quantized_linear
        && !plan_is_gpu(device)
        && let Some(matrix) = embeddings.to_quant_matrix()?
    {
        let matrix = matrix.with_int8_activations(plan.int8_activations);
        return Ok(LinearWeight::Quantized { matrix: std::sync::Arc::new(matrix), bias: None });
    }
    let table = embeddings.to_f32()?;
    let weight = upload(transpose(&table, c.vocab_size, c.hidden_size), [c.hidden_size, c.vocab_size], device, plan.dtype);
    Ok(LinearWeight::Dense { weight, bias: None })
}

/// A one-dimensional tensor as host floats, checked against its declaration.
fn read_vector(source: &dyn WeightSource, decl: &TensorDecl) -> Result<Vec<f32>> {
    let (dims, data) = source.f32_tensor(&decl.name)?;
    expect_dims(&decl.name, &dims, &decl.dims)?;
    Ok(data)
}
