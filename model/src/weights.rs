//! Where the transformer's parameters come from and how they are kept on the device.
//!
//! A [`WeightSource`] hands out tensors by their GGUF names (a GGUF file or a synthetic
//! model). Linear layers are [`LinearWeight`]s, in one of two [`WeightFormat`]s: a dense
//! device tensor in the model's float type (every backend), or the file's quantized blocks
//! kept in host memory and multiplied by a fused dequantize-and-multiply kernel
//! ([`crate::quant_matmul`]; CPU backends), which reads 4–8× fewer bytes per token. The token
//! embedding is an [`EmbeddingTable`] that stays in its file encoding on the host and
//! dequantizes only the rows a batch looks up.

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufFile, TensorBytes, dequantize};
#[cfg(feature = "gpu-kernels")]
use crate::gpu_quant::{self, DeviceQuantMatrix};
use crate::quant_matmul::QuantMatrix;

/// How linear-layer weights are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Quantized on CPU backends with f32 activations, dense elsewhere.
    #[default]
    Auto,
    /// Dequantized to the model's float type, multiplied by the backend's matmul.
    Dense,
    /// The file's blocks, multiplied on the host by a fused kernel (CPU backends only).
    Quantized,
}

/// What quantized linear layers multiply their weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationFormat {
    /// f32 activations against exactly dequantized weights (the golden-exact default).
    #[default]
    F32,
    /// Activations rounded to 8 bits per 32 values and integer dot products, as llama.cpp
    /// does on CPUs: faster, within a looser tolerance (see `quant_matmul`'s `int8`).
    Q8,
}

impl FromStr for ActivationFormat {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ActivationFormat::F32),
            "q8" => Ok(ActivationFormat::Q8),
            other => Err(ModelError::InvalidRequest(format!("activation format `{other}`: expected f32 or q8"))),
        }
    }
}

impl fmt::Display for ActivationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActivationFormat::F32 => "f32",
            ActivationFormat::Q8 => "q8",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WeightFormat::Auto),
            "dense" => Ok(WeightFormat::Dense),
            "quantized" => Ok(WeightFormat::Quantized),
            other => Err(ModelError::InvalidRequest(format!("weight format `{other}`: expected auto, dense or quantized"))),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Auto => "auto",
            WeightFormat::Dense => "dense",
            WeightFormat::Quantized => "quantized",
        })
    }
}

/// One tensor in its stored encoding: dims in ggml order (innermost first).
pub struct RawTensor {
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// A window onto the file's map where the source has one (no copy), else owned bytes.
    pub bytes: TensorBytes,
}

/// Anything that can produce the model's tensors by GGUF name.
pub trait WeightSource {
    /// A tensor dequantized to f32 in ggml element order, with its ggml dims.
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// A tensor's raw encoding (for embedding tables kept compressed).
    fn raw_tensor(&self, name: &str) -> Result<RawTensor>;
    fn contains(&self, name: &str) -> bool;
}

/// Dense tensors are read once into the model's own buffers, so their file pages are released
/// right after (see [`GgufFile::release`]); raw tensors are windows onto the map, used in
/// place (their pages are the weights' only copy).
impl WeightSource for GgufFile {
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, data) = self.tensor_f32(name)?;
        self.release(&info);
        Ok((info.dims, data))
    }

    fn raw_tensor(&self, name: &str) -> Result<RawTensor> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::tensor(name, "missing from the file"))?;
        let bytes = self.tensor_window(info)?;
        Ok(RawTensor { dims: info.dims.clone(), ggml_type: info.ggml_type, bytes })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }
}

/// Whether `device` is a GPU (cubecl) one: host kernels never run there.
fn is_gpu(device: &Device) -> bool {
    #[cfg(feature = "gpu-kernels")]
    {
        gpu_quant::is_cube(device)
    }
    #[cfg(not(feature = "gpu-kernels"))]
    {
        let _ = device;
        false
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
#[derive(Clone)]
pub enum LinearWeight {
    /// `weight: [in, out]` in the model's float type; `bias: [1, out]`.
    Dense { weight: Tensor<2>, bias: Option<Tensor<2>> },
    /// Blocks on the host, `[out, in]`; activations are f32 on a CPU device.
    Quantized { matrix: Arc<QuantMatrix>, bias: Option<Vec<f32>> },
    /// Blocks on a cubecl device, multiplied there by our own kernels (`gpu_quant`);
    /// `bias: [1, out]`.
    #[cfg(feature = "gpu-kernels")]
    Device { matrix: DeviceQuantMatrix, bias: Option<Tensor<2>> },
}

impl fmt::Debug for LinearWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinearWeight::Dense { weight, .. } => write!(f, "Dense({:?})", weight.dims()),
            LinearWeight::Quantized { matrix, .. } => {
                write!(f, "Quantized({} {}x{})", matrix.ggml_type(), matrix.rows(), matrix.cols())
            }
            #[cfg(feature = "gpu-kernels")]
            LinearWeight::Device { matrix, .. } => {
                write!(f, "Device({:?} {}x{})", matrix.kind(), matrix.rows(), matrix.cols())
            }
        }
    }
}

impl LinearWeight {
    /// Loads `{prefix}.weight` (ggml dims `[in, out]`, i.e. PyTorch `[out, in]`) and, when
    /// `with_bias`, `{prefix}.bias`. With `quantized`, types with a kernel keep their blocks,
    /// multiplied with 8-bit activations when `int8_activations`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        source: &dyn WeightSource,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        with_bias: bool,
        quantized: bool,
        int8_activations: bool,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<LinearWeight> {
        let name = format!("{prefix}.weight");
        if quantized {
            let raw = source.raw_tensor(&name)?;
            expect_dims(&name, &raw.dims, &[d_in, d_out])?;
            let bias = || -> Result<Option<Vec<f32>>> {
                if !with_bias {
                    return Ok(None);
                }
                let bias_name = format!("{prefix}.bias");
                let (dims, data) = source.f32_tensor(&bias_name)?;
                expect_dims(&bias_name, &dims, &[d_out])?;
                Ok(Some(data))
            };
            // On a cubecl device, the types its kernels decode go there as blocks.
            #[cfg(feature = "gpu-kernels")]
            if gpu_quant::is_cube(device) {
                if DeviceQuantMatrix::supports(raw.ggml_type) {
                    let matrix = DeviceQuantMatrix::from_blocks(raw.ggml_type, d_out, d_in, &raw.bytes, device)
                        .map_err(|e| ModelError::tensor(&name, e.to_string()))?;
                    // The device holds the copy now.
                    raw.bytes.release_pages();
                    let bias = bias()?.map(|b| upload(b, [1, d_out], device, dtype));
                    return Ok(LinearWeight::Device { matrix, bias });
                }
                // Types without a device kernel dequantize below, as dense weights.
            }
            // Types without a kernel (e.g. F32 tensors in a mixed file) stay dense.
            if QuantMatrix::supports(raw.ggml_type) && !is_gpu(device) {
                let matrix = QuantMatrix::new(raw.ggml_type, d_out, d_in, raw.bytes)
                    .map_err(|e| ModelError::tensor(&name, e.to_string()))?
                    .with_int8_activations(int8_activations);
                return Ok(LinearWeight::Quantized { matrix: Arc::new(matrix), bias: bias()? });
            }
        }
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

    /// The number of outputs.
    pub fn out_features(&self) -> usize {
        match self {
            LinearWeight::Dense { weight, .. } => weight.dims()[1],
            LinearWeight::Quantized { matrix, .. } => matrix.rows(),
            #[cfg(feature = "gpu-kernels")]
            LinearWeight::Device { matrix, .. } => matrix.rows(),
        }
    }

    /// `x: [n, in]` → one `[n, width]` tensor per entry of `widths` (which sum to `out`): the
    /// outputs of a layer made by [`LinearWeight::concat_outputs`], taken apart. Quantized
    /// layers split on the host, so each part is a contiguous tensor (a slice of the joined
    /// output would be a strided view, copied element by element by every later op).
    pub fn forward_split(&self, x: Tensor<2>, widths: &[usize]) -> Result<Vec<Tensor<2>>> {
        let mismatch = |out: usize| ModelError::Internal(format!("splitting {out} outputs into {widths:?}"));
        match self {
            #[cfg(feature = "gpu-kernels")]
            LinearWeight::Device { .. } => self.forward_then_slice(x, widths),
            LinearWeight::Dense { .. } => self.forward_then_slice(x, widths),
            LinearWeight::Quantized { matrix, .. } => {
                let rows = matrix.rows();
                if widths.iter().sum::<usize>() != rows {
                    return Err(mismatch(rows));
                }
                let device = x.device();
                let (n, y) = self.host_forward(x)?;
                let mut start = 0;
                Ok(widths
                    .iter()
                    .map(|&w| {
                        let mut part = Vec::with_capacity(n * w);
                        for row in y.chunks_exact(rows) {
                            part.extend_from_slice(&row[start..start + w]);
                        }
                        start += w;
                        Tensor::from_data(TensorData::new(part, [n, w]), (&device, DType::F32))
                    })
                    .collect())
            }
        }
    }

    /// The whole product on the device, then a view per part.
    fn forward_then_slice(&self, x: Tensor<2>, widths: &[usize]) -> Result<Vec<Tensor<2>>> {
        let out = self.out_features();
        if widths.iter().sum::<usize>() != out {
            return Err(ModelError::Internal(format!("splitting {out} outputs into {widths:?}")));
        }
        let all = self.forward(x)?;
        let n = all.dims()[0];
        let mut start = 0;
        Ok(widths
            .iter()
            .map(|&w| {
                start += w;
                all.clone().slice([0..n, start - w..start])
            })
            .collect())
    }

    /// Whether the product is computed on the host ([`LinearWeight::host_forward`] applies).
    pub fn is_host(&self) -> bool {
        matches!(self, LinearWeight::Quantized { .. })
    }

    /// A quantized layer's product on the host: `(n, y[n, out])`, row-major. Lets a caller
    /// fuse an elementwise step into the one pass that turns it into a tensor.
    pub fn host_forward(&self, x: Tensor<2>) -> Result<(usize, Vec<f32>)> {
        let LinearWeight::Quantized { matrix, bias } = self else {
            return Err(ModelError::Internal("host product of a dense layer".into()));
        };
        let [n, _] = x.dims();
        let input = x
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Internal(format!("reading activations: {e:?}")))?;
        let rows = matrix.rows();
        let mut y = vec![0f32; n * rows];
        matrix.matmul(&input, n, &mut y);
        if let Some(bias) = bias {
            for row in y.chunks_exact_mut(rows) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        Ok((n, y))
    }

    /// `x: [n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        match self {
            LinearWeight::Dense { weight, bias } => {
                let y = x.matmul(weight.clone());
                Ok(match bias {
                    Some(b) => y + b.clone(),
                    None => y,
                })
            }
            LinearWeight::Quantized { matrix, .. } => {
                let device = x.device();
                let (n, y) = self.host_forward(x)?;
                Ok(Tensor::from_data(TensorData::new(y, [n, matrix.rows()]), (&device, DType::F32)))
            }
            #[cfg(feature = "gpu-kernels")]
            LinearWeight::Device { matrix, bias } => {
                let y = matrix.forward(x)?;
                Ok(match bias {
                    Some(b) => y + b.clone(),
                    None => y,
                })
            }
        }
    }
}

impl LinearWeight {
    /// One layer whose output is the outputs of `parts` side by side, in order (q‖k‖v,
    /// gate‖up): one product per step instead of one per part, so the activations are read,
    /// the kernel dispatched and the threads woken once. `None` when the parts cannot share
    /// one matrix: different formats, quantized in different types (a Q4_K_M file keeps some
    /// tensors in Q6_K), or different input widths. A missing bias is zeros beside a present
    /// one.
    ///
    /// Quantized blocks never straddle rows, so quantized parts are stacked by reference
    /// (no copy: [`QuantMatrix::stacked`]); dense `[in, out]` tensors are concatenated along
    /// `out`.
    pub fn concat_outputs(parts: &[&LinearWeight]) -> Option<LinearWeight> {
        match parts.first()? {
            LinearWeight::Quantized { .. } => {
                let matrices: Vec<(&QuantMatrix, &Option<Vec<f32>>)> = parts
                    .iter()
                    .map(|part| match part {
                        LinearWeight::Quantized { matrix, bias } => Some((matrix.as_ref(), bias)),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                let matrix = QuantMatrix::stacked(&matrices.iter().map(|(m, _)| *m).collect::<Vec<_>>())?;
                let bias = matrices.iter().any(|(_, b)| b.is_some()).then(|| {
                    matrices.iter().flat_map(|(m, b)| b.as_ref().map_or_else(|| vec![0.0; m.rows()], Vec::clone)).collect()
                });
                Some(LinearWeight::Quantized { matrix: Arc::new(matrix), bias })
            }
            // Device matrices stay one product a part (stacking them would need one upload).
            #[cfg(feature = "gpu-kernels")]
            LinearWeight::Device { .. } => None,
            LinearWeight::Dense { weight, .. } => {
                let d_in = weight.dims()[0];
                let dense: Vec<(&Tensor<2>, &Option<Tensor<2>>)> = parts
                    .iter()
                    .map(|part| match part {
                        LinearWeight::Dense { weight, bias } => Some((weight, bias)),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                if dense.iter().any(|(w, _)| w.dims()[0] != d_in || w.dtype() != weight.dtype()) {
                    return None;
                }
                let bias = dense.iter().any(|(_, b)| b.is_some()).then(|| {
                    let biases = dense
                        .iter()
                        .map(|(w, b)| match b {
                            Some(b) => b.clone(),
                            None => Tensor::zeros([1, w.dims()[1]], (&w.device(), w.dtype())),
                        })
                        .collect();
                    Tensor::cat(biases, 1)
                });
                let weight = Tensor::cat(dense.iter().map(|(w, _)| (*w).clone()).collect(), 1);
                Some(LinearWeight::Dense { weight, bias })
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
    /// Shared with a tied output projection's [`QuantMatrix`].
    bytes: TensorBytes,
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

    /// The table as a `[vocab, dim]` quantized matrix (for a tied output projection).
    pub fn to_quant_matrix(&self) -> Result<Option<QuantMatrix>> {
        if !QuantMatrix::supports(self.ggml_type) {
            return Ok(None);
        }
        QuantMatrix::new(self.ggml_type, self.vocab, self.dim, self.bytes.clone())
            .map(Some)
            .map_err(|e| ModelError::tensor("token_embd.weight", e.to_string()))
    }

    /// The whole table as f32, `[vocab * dim]` row-major (for a tied output projection).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.vocab * self.dim];
        dequantize(self.ggml_type, &self.bytes, &mut out).map_err(|e| ModelError::Internal(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` Q8_0 rows of `cols` (one f16 scale, then 32 signed bytes per block), made up.
    fn q8_0(rows: usize, cols: usize, seed: usize) -> LinearWeight {
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 32 {
            bytes.extend(half::f16::from_f32(0.01 + 0.001 * ((block + seed) % 7) as f32).to_le_bytes());
            bytes.extend((0..32).map(|i| ((block * 31 + i * 17 + seed * 5) % 255) as u8));
        }
        let matrix = QuantMatrix::new(GgmlType::Q8_0, rows, cols, bytes).expect("matrix");
        LinearWeight::Quantized { matrix: Arc::new(matrix), bias: None }
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    #[test]
    fn concatenated_quantized_rows_compute_each_part_side_by_side() {
        let device = Device::flex();
        let (cols, n) = (64, 3);
        let q = q8_0(40, cols, 1);
        let k = match q8_0(24, cols, 2) {
            LinearWeight::Quantized { matrix, .. } => LinearWeight::Quantized { matrix, bias: Some(vec![0.5; 24]) },
            dense => dense,
        };
        let v = q8_0(24, cols, 3);
        let fused = LinearWeight::concat_outputs(&[&q, &k, &v]).expect("same type and width");
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let input = || upload(x.clone(), [n, cols], &device, FloatDType::F32);
        let got = host(fused.forward(input()).expect("fused"));
        let parts: Vec<Vec<f32>> = [&q, &k, &v].iter().map(|w| host(w.forward(input()).expect("part"))).collect();
        for row in 0..n {
            let want: Vec<f32> = [(&parts[0], 40), (&parts[1], 24), (&parts[2], 24)]
                .iter()
                .flat_map(|(p, width)| p[row * width..(row + 1) * width].to_vec())
                .collect();
            let row_got = &got[row * 88..(row + 1) * 88];
            for (a, b) in row_got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "row {row}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn parts_of_different_types_or_widths_stay_separate() {
        let q = q8_0(32, 64, 1);
        let f32_rows = QuantMatrix::new(GgmlType::F32, 32, 64, vec![0u8; 32 * 64 * 4]).expect("f32 matrix");
        let other_type = LinearWeight::Quantized { matrix: Arc::new(f32_rows), bias: None };
        assert!(LinearWeight::concat_outputs(&[&q, &other_type]).is_none(), "Q8_0 beside F32");
        assert!(LinearWeight::concat_outputs(&[&q, &q8_0(32, 96, 2)]).is_none(), "different input widths");
        let device = Device::flex();
        let dense = LinearWeight::Dense { weight: upload(vec![0.0; 64 * 32], [64, 32], &device, FloatDType::F32), bias: None };
        assert!(LinearWeight::concat_outputs(&[&q, &dense]).is_none(), "quantized beside dense");
    }
}
