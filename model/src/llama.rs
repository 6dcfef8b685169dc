//! The Llama-family decoder (Llama 1/2/3, Mistral, SmolLM) and Qwen2, written once against
//! burn's device-dispatched tensors so the same code runs on every compiled backend.
//!
//! [`Transformer::load`] reads parameters by their GGUF names (`token_embd`, `blk.N.attn_q`,
//! …, `output_norm`, `output`). [`Transformer::forward`] runs one step for a batch of
//! sequences of any lengths: their tokens are flattened into one `[tokens, hidden]` matrix
//! for every projection, and only attention is done per sequence, against its own cache.

use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::config::{Architecture, ModelConfig};
use crate::device::DeviceSpec;
use crate::error::{ModelError, Result};
use crate::host_attention::{self, AttentionShape, ChunkAttention};
use crate::kv_cache::SequenceCache;
use crate::rope::Rope;
use crate::weights::{EmbeddingTable, LinearWeight, WeightFormat, WeightSource, expect_dims, transpose, upload};

/// Root-mean-square normalisation, always computed in f32.
#[derive(Debug, Clone)]
struct RmsNorm {
    /// `[1, hidden]`, f32.
    gamma: Tensor<2>,
    eps: f64,
}

impl RmsNorm {
    fn load(source: &dyn WeightSource, name: &str, dim: usize, eps: f64, device: &Device) -> Result<RmsNorm> {
        let (dims, data) = source.f32_tensor(name)?;
        expect_dims(name, &dims, &[dim])?;
        Ok(RmsNorm { gamma: upload(data, [1, dim], device, FloatDType::F32), eps })
    }

    /// `x: [n, hidden]` → `[n, hidden]` in `x`'s float type.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x = if dtype == DType::F32 { x } else { x.cast(FloatDType::F32) };
        let rms = (x.clone().square().mean_dim(1) + self.eps).sqrt();
        let y = x / rms * self.gamma.clone();
        if dtype == DType::F32 { y } else { y.cast(float_dtype(dtype)) }
    }
}

fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: LinearWeight,
    k: LinearWeight,
    v: LinearWeight,
    o: LinearWeight,
    ffn_norm: RmsNorm,
    gate: LinearWeight,
    up: LinearWeight,
    down: LinearWeight,
}

/// One sequence's share of a batched forward.
pub struct ForwardChunk<'a> {
    /// The sequence's cache; the chunk's tokens are appended to it.
    pub cache: &'a mut SequenceCache,
    /// New tokens, at positions `cache.len()..cache.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// Logits for every position of the chunk (teacher forcing), not only the last.
    pub all_logits: bool,
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
    dtype: FloatDType,
    /// Repeat K/V heads before attention (backends whose fused attention lacks GQA).
    repeat_kv: bool,
    /// Attention and KV cache on the host (CPU devices at f32): see [`host_attention`].
    host_attention: bool,
    embeddings: EmbeddingTable,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    output: LinearWeight,
    rope: Rope,
}

impl Transformer {
    /// Builds the model from `source`. `progress(done, total)` is called after each tensor group.
    /// `format`: [`WeightFormat::Auto`] keeps weights quantized on CPU backends at f32.
    pub fn load(
        config: ModelConfig,
        source: &dyn WeightSource,
        spec: DeviceSpec,
        device: &Device,
        dtype: FloatDType,
        format: WeightFormat,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Transformer> {
        config.validate()?;
        let quantized = match format {
            WeightFormat::Dense => false,
            WeightFormat::Auto => spec.is_cpu() && dtype == FloatDType::F32,
            WeightFormat::Quantized if spec.is_cpu() && dtype == FloatDType::F32 => true,
            WeightFormat::Quantized => {
                return Err(ModelError::UnsupportedDtype {
                    dtype: format!("quantized weights with {dtype:?} activations"),
                    device: format!("{spec} (quantized weights need a CPU device and f32)"),
                });
            }
        };
        let c = &config;
        let total = c.num_layers + 2;
        let embeddings = EmbeddingTable::load(source, "token_embd.weight", c.hidden_size, c.vocab_size)?;
        let tied_quantized = if quantized && !source.contains("output.weight") { embeddings.to_quant_matrix()? } else { None };
        let output = if source.contains("output.weight") {
            LinearWeight::load(source, "output", c.hidden_size, c.vocab_size, false, quantized, device, dtype)?
        } else if let Some(matrix) = tied_quantized {
            LinearWeight::Quantized { matrix: std::sync::Arc::new(matrix), bias: None }
        } else {
            // Tied embeddings: the output projection is the embedding table transposed.
            let table = embeddings.to_f32()?;
            let weight = upload(transpose(&table, c.vocab_size, c.hidden_size), [c.hidden_size, c.vocab_size], device, dtype);
            LinearWeight::Dense { weight, bias: None }
        };
        let final_norm = RmsNorm::load(source, "output_norm.weight", c.hidden_size, c.rms_norm_eps, device)?;
        progress(1, total);

        let qkv_bias = c.architecture == Architecture::Qwen2;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |name: &str| format!("blk.{i}.{name}");
            let linear =
                |name: &str, d_in, d_out, bias| LinearWeight::load(source, &p(name), d_in, d_out, bias, quantized, device, dtype);
            let norm = |name: &str| RmsNorm::load(source, &p(name), c.hidden_size, c.rms_norm_eps, device);
            blocks.push(Block {
                attn_norm: norm("attn_norm.weight")?,
                q: linear("attn_q", c.hidden_size, c.q_dim(), qkv_bias)?,
                k: linear("attn_k", c.hidden_size, c.kv_dim(), qkv_bias)?,
                v: linear("attn_v", c.hidden_size, c.kv_dim(), qkv_bias)?,
                o: linear("attn_output", c.q_dim(), c.hidden_size, false)?,
                ffn_norm: norm("ffn_norm.weight")?,
                gate: linear("ffn_gate", c.hidden_size, c.intermediate_size, false)?,
                up: linear("ffn_up", c.hidden_size, c.intermediate_size, false)?,
                down: linear("ffn_down", c.intermediate_size, c.hidden_size, false)?,
            });
            progress(i + 2, total);
        }
        let freq_factors = if source.contains("rope_freqs.weight") {
            let (dims, data) = source.f32_tensor("rope_freqs.weight")?;
            expect_dims("rope_freqs.weight", &dims, &[c.head_dim / 2])?;
            Some(data)
        } else {
            None
        };
        let rope = Rope::new(c, freq_factors.as_deref());
        progress(total, total);
        Ok(Transformer {
            repeat_kv: !spec.attention_supports_gqa() && c.num_kv_heads != c.num_heads,
            host_attention: spec.is_cpu() && dtype == FloatDType::F32,
            config,
            device: device.clone(),
            dtype,
            embeddings,
            blocks,
            final_norm,
            output,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// An empty cache for a new sequence on this model's device.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(&self.config, &self.device, self.dtype, self.host_attention)
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
            chunk.cache.reserve(len, c.num_layers);
        }
        let n = ids.len();
        let mut x = upload(self.embeddings.lookup(&ids)?, [n, c.hidden_size], &self.device, self.dtype);
        let rope_tables = self.rope.tables(&positions, &self.device, self.dtype);

        for (layer, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(x.clone());
            let q = self.rope.apply(block.q.forward(h.clone())?.reshape([n, c.num_heads, c.head_dim]), &rope_tables);
            let k = self.rope.apply(block.k.forward(h.clone())?.reshape([n, c.num_kv_heads, c.head_dim]), &rope_tables);
            let v: Tensor<3> = block.v.forward(h)?.reshape([n, c.num_kv_heads, c.head_dim]);
            let attended =
                if self.host_attention { self.attend_on_host(layer, chunks, q, k, v)? } else { self.attend(layer, chunks, q, k, v) };
            x = x + block.o.forward(attended)?;

            let h = block.ffn_norm.forward(x.clone());
            let gated = silu(block.gate.forward(h.clone())?) * block.up.forward(h)?;
            x = x + block.down.forward(gated)?;
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
        let logits = if self.dtype == FloatDType::F32 { logits } else { logits.cast(FloatDType::F32) };
        let data = logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Internal(format!("reading logits back: {e:?}")))?;
        Ok(Logits { data, vocab: c.vocab_size, chunk_starts })
    }

    /// Causal self-attention of each chunk against its cache.
    /// `q: [n, heads, d]`, `k, v: [n, kv_heads, d]` → `[n, heads * d]`.
    fn attend(&self, layer: usize, chunks: &mut [ForwardChunk<'_>], q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<2> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut outputs = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks.iter_mut() {
            let len = chunk.tokens.len();
            let rows = row..row + len;
            row += len;
            let seq = |t: Tensor<3>, h: usize| -> Tensor<4> {
                t.slice([rows.clone(), 0..h, 0..d]).swap_dims(0, 1).unsqueeze_dim(0)
            };
            let (k_all, v_all) = chunk.cache.append(layer, seq(k.clone(), kv_heads), seq(v.clone(), kv_heads));
            let (k_all, v_all) = if self.repeat_kv {
                (repeat_heads(k_all, heads / kv_heads), repeat_heads(v_all, heads / kv_heads))
            } else {
                (k_all, v_all)
            };
            // Causal masking is bottom-right aligned, which is what a chunk on top of a
            // cache needs; a single query token sees everything and needs no mask.
            let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: len > 1 };
            let out = attention(seq(q.clone(), heads), k_all, v_all, None, None, options);
            outputs.push(out.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([len, heads * d]));
        }
        if outputs.len() == 1 { outputs.pop().unwrap_or_else(|| unreachable!()) } else { Tensor::cat(outputs, 0) }
    }
}

impl Transformer {
    /// [`Transformer::attend`] on the host: same shapes, `q: [n, heads, d]`,
    /// `k, v: [n, kv_heads, d]` → `[n, heads * d]`, with the cache in host memory.
    fn attend_on_host(
        &self,
        layer: usize,
        chunks: &mut [ForwardChunk<'_>],
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let n = q.dims()[0];
        let read = |t: Tensor<3>| {
            t.into_data().try_into_vec::<f32>().map_err(|e| ModelError::Internal(format!("reading attention inputs: {e:?}")))
        };
        let (queries, keys, values) = (read(q)?, read(k)?, read(v)?);
        let row_width = c.num_kv_heads * c.head_dim;
        let mut first_row = 0;
        let mut views = Vec::with_capacity(chunks.len());
        for chunk in chunks.iter_mut() {
            let len = chunk.tokens.len();
            let start = chunk.cache.len();
            let rows = first_row * row_width..(first_row + len) * row_width;
            let (k_all, v_all, capacity) = chunk.cache.append_host(layer, &keys[rows.clone()], &values[rows]);
            views.push(ChunkAttention { first_row, len, start, keys: k_all, values: v_all, capacity });
            first_row += len;
        }
        let shape = AttentionShape { heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let out = host_attention::attend(&queries, &views, shape);
        Ok(Tensor::from_data(TensorData::new(out, [n, c.num_heads * c.head_dim]), (&self.device, DType::F32)))
    }
}

/// `[1, kv_heads, s, d]` → `[1, kv_heads * rep, s, d]`, each head repeated `rep` times in place.
fn repeat_heads(t: Tensor<4>, rep: usize) -> Tensor<4> {
    let [b, h, s, d] = t.dims();
    t.unsqueeze_dim::<5>(2).expand([b, h, rep, s, d]).reshape([b, h * rep, s, d])
}
