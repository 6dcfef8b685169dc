//! Where the transformer's parameters come from and how they are kept on the device.
//!
//! A [`WeightSource`] hands out tensors by their GGUF names (a GGUF file or a synthetic
//! model). Linear layers are [`LinearWeight`]s: today a dense matrix in the model's float
//! type; the enum is the seam where weights kept quantized (with a fused
//! dequantize-and-multiply) plug in without touching the transformer. The token embedding
//! is an [`EmbeddingTable`] that stays in its file encoding on the host and dequantizes only
//! the rows a batch looks up.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufFile, dequantize};

/// One tensor in its stored encoding: dims in ggml order (innermost first).
pub struct RawTensor {
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    pub bytes: Vec<u8>,
}

/// Anything that can produce the model's tensors by GGUF name.
pub trait WeightSource {
    /// A tensor dequantized to f32 in ggml element order, with its ggml dims.
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// A tensor's raw encoding (for embedding tables kept compressed).
    fn raw_tensor(&self, name: &str) -> Result<RawTensor>;
    fn contains(&self, name: &str) -> bool;
}

impl WeightSource for GgufFile {
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, data) = self.tensor_f32(name)?;
        Ok((info.dims, data))
    }

    fn raw_tensor(&self, name: &str) -> Result<RawTensor> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::tensor(name, "missing from the file"))?;
        Ok(RawTensor { dims: info.dims.clone(), ggml_type: info.ggml_type, bytes: self.tensor_bytes(info)?.to_vec() })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }
}

/// Checks a tensor's ggml dims against what the configuration implies.
pub fn expect_dims(name: &str, dims: &[usize], expected: &[usize]) -> Result<()> {
    if dims == expected {
        Ok(())
    } else {
        Err(ModelError::tensor(name, format!("has dims {dims:?}, the configuration implies {expected:?}")))
    }
}

/// Uploads host floats as a tensor of the model's float type.
pub fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device, dtype: FloatDType) -> Tensor<D> {
    let tensor = Tensor::<D>::from_data(TensorData::new(data, shape), (device, DType::F32));
    if dtype == FloatDType::F32 { tensor } else { tensor.cast(dtype) }
}

/// A linear layer `y = x · W (+ b)`.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// `weight: [in, out]` in the model's float type; `bias: [1, out]`.
    Dense { weight: Tensor<2>, bias: Option<Tensor<2>> },
}

impl LinearWeight {
    /// Loads `{prefix}.weight` (ggml dims `[in, out]`, i.e. PyTorch `[out, in]`) and, when
    /// `with_bias`, `{prefix}.bias`.
    pub fn load(
        source: &dyn WeightSource,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        with_bias: bool,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<LinearWeight> {
        let name = format!("{prefix}.weight");
        let (dims, data) = source.f32_tensor(&name)?;
        expect_dims(&name, &dims, &[d_in, d_out])?;
        let weight = upload(transpose(&data, d_out, d_in), [d_in, d_out], device, dtype);
        let bias = if with_bias {
            let name = format!("{prefix}.bias");
            let (dims, data) = source.f32_tensor(&name)?;
            expect_dims(&name, &dims, &[d_out])?;
            Some(upload(data, [1, d_out], device, dtype))
        } else {
            None
        };
        Ok(LinearWeight::Dense { weight, bias })
    }

    /// `x: [n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            LinearWeight::Dense { weight, bias } => {
                let y = x.matmul(weight.clone());
                match bias {
                    Some(b) => y + b.clone(),
                    None => y,
                }
            }
        }
    }
}

/// Row-major `[rows, cols]` → `[cols, rows]`, blocked for cache locality.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    let mut out = vec![0f32; data.len()];
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// The token embedding, kept on the host in its stored encoding (Q8_0 for the default
/// model: 52 MB instead of 113 MB as f32); lookups dequantize only the rows they need.
pub struct EmbeddingTable {
    ggml_type: GgmlType,
    row_bytes: usize,
    dim: usize,
    vocab: usize,
    bytes: Vec<u8>,
}

impl EmbeddingTable {
    pub fn load(source: &dyn WeightSource, name: &str, dim: usize, vocab: usize) -> Result<EmbeddingTable> {
        let raw = source.raw_tensor(name)?;
        expect_dims(name, &raw.dims, &[dim, vocab])?;
        let row_bytes = raw
            .ggml_type
            .byte_size(dim)
            .ok_or_else(|| ModelError::tensor(name, format!("rows of {dim} do not fill whole {} blocks", raw.ggml_type)))?;
        // Fail at load, not at the first request, if the encoding is one we cannot decode.
        let mut probe = vec![0f32; dim];
        dequantize(raw.ggml_type, &raw.bytes[..row_bytes.min(raw.bytes.len())], &mut probe).map_err(|_| {
            ModelError::UnsupportedQuantization { tensor: name.to_string(), ggml_type: raw.ggml_type.to_string() }
        })?;
        Ok(EmbeddingTable { ggml_type: raw.ggml_type, row_bytes, dim, vocab, bytes: raw.bytes })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows of `ids`, as `[ids.len() * dim]` host floats.
    pub fn lookup(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.dim];
        for (row, &id) in out.chunks_exact_mut(self.dim).zip(ids) {
            let id = id as usize;
            if id >= self.vocab {
                return Err(ModelError::InvalidRequest(format!("token id {id} is outside the vocabulary of {}", self.vocab)));
            }
            let start = id * self.row_bytes;
            dequantize(self.ggml_type, &self.bytes[start..start + self.row_bytes], row)
                .map_err(|e| ModelError::Internal(e.to_string()))?;
        }
        Ok(out)
    }

    /// The whole table as f32, `[vocab * dim]` row-major (for a tied output projection).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.vocab * self.dim];
        dequantize(self.ggml_type, &self.bytes, &mut out).map_err(|e| ModelError::Internal(e.to_string()))?;
        Ok(out)
    }
}
