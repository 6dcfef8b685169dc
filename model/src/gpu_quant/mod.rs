//! Quantized weights on cubecl devices (wgpu, Vulkan, Metal, CUDA, ROCm): GGUF blocks kept on
//! the device as they are, multiplied by our own `#[cube]` kernel (issue 10).
//!
//! - [`layout`]: the lossless host repack of GGUF blocks into `u32` words (WGSL reads no
//!   8/16-bit storage, and 18-, 22-, 34- and 210-byte blocks are not 4-byte aligned).
//! - `decode`: the per-type decoding both kernels share (32 dequantized weights of a chunk,
//!   mirroring `gguf::dequant`).
//! - `kernels`: the matrix-vector kernel, f32 accumulation: on GPUs 32 units per output, on
//!   lavapipe one unit per 8 outputs.
//! - `tiled`: the tiled kernel for prefill and batches (from a few activation rows on), which
//!   decodes each weight once per tile of activation rows into shared memory.
//! - [`QuantLinearOps`]: the burn backend extension that launches them on burn's own tensors.
//!   With fusion on (every GPU feature turns it on) the call is registered as a custom
//!   operation in the fusion stream and runs in order with its neighbours, with no flush and
//!   no host round trip (docs/gpu-quantized-plan.md §1).
//! - [`DeviceQuantMatrix`]: a packed matrix on a device and its `forward`.
//!
//! Types: Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K and Q6_K ([`QuantKind`]); `weights.rs` uploads
//! linear layers of these types as `LinearWeight::Device` and dequantizes the others at load.

mod decode;
mod kernels;
pub mod layout;
#[cfg(all(test, feature = "wgpu"))]
mod tests;
#[cfg(all(test, feature = "wgpu"))]
mod tests_bench;
#[cfg(all(test, feature = "wgpu"))]
mod tests_tiled;
mod tiled;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, Int, Shape, Tensor, TensorData};
use burn_cubecl::CubeBackend;

use crate::error::ModelError;
use crate::gguf::GgmlType;
use crate::quant_matmul::QuantMatrix;
pub use layout::QuantKind;

/// Our kernels as a burn backend extension. Listed for the cubecl backend only: calling it
/// with a tensor of another backend panics in burn's generated dispatch, so callers go
/// through [`DeviceQuantMatrix::forward`], which checks the device first.
#[backend_extension(
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal", feature = "cuda", feature = "rocm")),
    Fusion: cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal", feature = "cuda", feature = "rocm"))
)]
pub trait QuantLinearOps: Backend {
    /// `y[n, rows] = x[n, cols] · Wᵀ`, W a `rows × cols` matrix of `kind` ([`QuantKind::code`])
    /// packed by [`layout::pack`] into `w` (U32); `y` has `x`'s dtype. `w` is taken by value
    /// (a handle clone): burn 0.22.1's generated dispatch has no borrowed accessor for int
    /// tensors (`as_int`), only for floats.
    /// The matrix-vector kernel runs below `tiled_from` activation rows, the tiled one from
    /// there on; 0 leaves the threshold to the device. Tests set these to run every kernel and
    /// every shape of it on one device: `matvec` is the matrix-vector kernel's shape and
    /// `tile` the tiled kernel's, each 0 for the device's default or 1 + an index into
    /// [`kernels::SHAPES`] or [`tiled::TILES`].
    #[fusion(dtype = x, shape = matvec_shape(x, rows))]
    #[allow(clippy::too_many_arguments)] // the macro takes plain arguments
    fn quant_linear(
        x: FloatTensor<Self>,
        w: IntTensor<Self>,
        kind: u32,
        rows: usize,
        cols: usize,
        matvec: usize,
        tiled_from: usize,
        tile: usize,
    ) -> FloatTensor<Self>;
}

/// The output shape fusion records before the kernel runs; the kernel writes exactly this
/// (fusion does not check it, the tests do).
fn matvec_shape(x: &Shape, rows: &usize) -> Shape {
    [x[0], *rows].into()
}

impl QuantLinearOps for CubeBackend {
    fn quant_linear(
        x: FloatTensor<Self>,
        w: IntTensor<Self>,
        kind: u32,
        rows: usize,
        cols: usize,
        matvec: usize,
        tiled_from: usize,
        tile: usize,
    ) -> FloatTensor<Self> {
        let kind = QuantKind::from_code(kind).expect("DeviceQuantMatrix passes only the kinds it packed");
        let tiled_from = if tiled_from == 0 { tiled::default_tiled_from(&x.client) } else { tiled_from };
        if x.meta.shape()[0] >= tiled_from {
            let tile = tile.checked_sub(1).map(|index| tiled::TILES[index]);
            tiled::quant_tiled(x, w, kind, rows, cols, tile)
        } else {
            let shape = matvec.checked_sub(1).map(|index| kernels::SHAPES[index]);
            kernels::quant_matvec(x, w, kind, rows, cols, shape)
        }
    }
}

/// The largest buffer a matrix is uploaded in: WebGPU's guaranteed storage-buffer binding size
/// (128 MiB). A device may allow more (cubecl asks for the adapter's own limits), but Mesa's
/// lavapipe allows no more, and a larger buffer fails only at the first kernel that reads it:
/// Gemma 3's tied output head (262144 × 640 Q8_0) is 170 MB. Larger matrices go up as shards
/// of whole rows, one launch each, so the limit costs a real GPU nothing but a launch.
pub const MAX_BUFFER_BYTES: usize = 128 << 20;

/// A quantized `rows × cols` weight matrix on a cubecl device, in the packed layout of
/// [`layout`] (the GGUF bytes plus at most 14 bytes per shard).
#[derive(Debug, Clone)]
pub struct DeviceQuantMatrix {
    /// Consecutive row ranges, each packed and uploaded on its own, with its row count.
    shards: Vec<(Tensor<1, Int>, usize)>,
    kind: QuantKind,
    rows: usize,
    cols: usize,
    /// The matrix-vector kernel's shape: 0 for the device's, 1 + an index into
    /// `kernels::SHAPES`.
    matvec: usize,
    /// Activation rows from which the tiled kernel runs; 0 leaves it to the device.
    tiled_from: usize,
    /// The tiled kernel's shape: 0 for the device's, 1 + an index into `tiled::TILES`.
    tile: usize,
}

impl DeviceQuantMatrix {
    /// Whether the device kernels decode `ggml_type`.
    pub fn supports(ggml_type: GgmlType) -> bool {
        QuantKind::from_ggml(ggml_type).is_some()
    }

    /// Packs and uploads a host [`QuantMatrix`].
    pub fn upload(matrix: &QuantMatrix, device: &Device) -> Result<DeviceQuantMatrix, ModelError> {
        DeviceQuantMatrix::from_blocks(matrix.ggml_type(), matrix.rows(), matrix.cols(), &matrix.bytes(), device)
    }

    /// Packs and uploads `bytes`, `rows × cols` elements of `ggml_type` in GGUF's layout.
    /// A type without a kernel is [`ModelError::UnsupportedQuantization`], a device that is
    /// not a cubecl one [`ModelError::DeviceUnavailable`], wrong sizes [`ModelError::Tensor`]
    /// (errors name no tensor: callers that know it wrap them).
    pub fn from_blocks(
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        device: &Device,
    ) -> Result<DeviceQuantMatrix, ModelError> {
        DeviceQuantMatrix::from_blocks_in_shards(ggml_type, rows, cols, bytes, device, MAX_BUFFER_BYTES)
    }

    /// [`DeviceQuantMatrix::from_blocks`] with buffers of at most `max_buffer_bytes` (one row at
    /// least).
    fn from_blocks_in_shards(
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        device: &Device,
        max_buffer_bytes: usize,
    ) -> Result<DeviceQuantMatrix, ModelError> {
        let kind = QuantKind::from_ggml(ggml_type).ok_or_else(|| ModelError::UnsupportedQuantization {
            tensor: String::new(),
            ggml_type: ggml_type.to_string(),
        })?;
        let block_elements = kind.block_elements();
        if rows == 0 || cols == 0 || !cols.is_multiple_of(block_elements) {
            return Err(ModelError::tensor(
                "",
                format!(
                    "a {rows} × {cols} matrix is not a non-empty whole number of {ggml_type} blocks of \
                     {block_elements} per row ({cols} columns)"
                ),
            ));
        }
        let expected = rows
            .checked_mul(cols / block_elements)
            .and_then(|blocks| blocks.checked_mul(kind.block_bytes()))
            .ok_or_else(|| ModelError::tensor("", format!("{rows} × {cols} {ggml_type} matrix is too large")))?;
        if bytes.len() != expected {
            return Err(ModelError::tensor(
                "",
                format!("{} bytes, but a {rows} × {cols} {ggml_type} matrix takes {expected}", bytes.len()),
            ));
        }
        require_cube(device)?;
        let row_blocks = cols / block_elements;
        // Whole rows per shard; the packed form adds at most 14 bytes (+ 2 for rounding).
        let shard_rows = ((max_buffer_bytes.saturating_sub(16)) / (row_blocks * kind.block_bytes())).max(1);
        let shards = bytes
            .chunks(shard_rows * row_blocks * kind.block_bytes())
            .map(|shard| {
                let words = layout::pack(kind, shard);
                let len = words.len();
                let rows = shard.len() / (row_blocks * kind.block_bytes());
                (Tensor::<1, Int>::from_data(TensorData::new(words, [len]), (device, DType::U32)), rows)
            })
            .collect();
        Ok(DeviceQuantMatrix { shards, kind, rows, cols, matvec: 0, tiled_from: 0, tile: 0 })
    }

    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix takes on the device.
    pub fn device_bytes(&self) -> usize {
        let row_blocks = self.cols / self.kind.block_elements();
        self.shards.iter().map(|&(_, rows)| layout::device_bytes(self.kind, rows * row_blocks)).sum()
    }

    /// The same matrix multiplied by the matrix-vector kernel in `kernels::SHAPES[shape]`'s
    /// shape whatever the device: the tests run the GPU shape on lavapipe.
    #[cfg(test)]
    fn with_matvec(mut self, shape: usize) -> DeviceQuantMatrix {
        assert!(shape < kernels::SHAPES.len());
        self.matvec = shape + 1;
        self
    }

    /// The same matrix multiplied by the tiled kernel from `tiled_from` activation rows on
    /// (`usize::MAX`: never), with `tiled::TILES[tile]`'s shape, whatever the device.
    #[cfg(test)]
    fn with_tiled(mut self, tiled_from: usize, tile: usize) -> DeviceQuantMatrix {
        assert!(tiled_from > 0 && tile < tiled::TILES.len());
        self.tiled_from = tiled_from;
        self.tile = tile + 1;
        self
    }

    /// How many buffers hold the matrix (one unless it is larger than [`MAX_BUFFER_BYTES`]).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` on the matrix's device, in `x`'s dtype. `x` on another
    /// device (a CPU one in particular) is an error, never a call into the extension.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
        let [n, cols] = x.dims();
        if cols != self.cols {
            return Err(ModelError::Internal(format!(
                "quantized product of a {} × {} matrix with activations of {n} × {cols}",
                self.rows, self.cols
            )));
        }
        let device = x.device();
        require_cube(&device)?;
        let weights_device = self.shards[0].0.device();
        if device != weights_device {
            return Err(ModelError::Internal(format!(
                "activations on {device:?}, quantized weights on {weights_device:?}"
            )));
        }
        let code = self.kind.code();
        let mut outputs: Vec<Tensor<2>> = self
            .shards
            .iter()
            .map(|(words, rows)| {
                let y = <Dispatch as QuantLinearOps>::quant_linear(
                    x.clone().into_dispatch(),
                    words.clone().into_dispatch(),
                    code,
                    *rows,
                    self.cols,
                    self.matvec,
                    self.tiled_from,
                    self.tile,
                );
                Tensor::from_dispatch(y)
            })
            .collect();
        Ok(if outputs.len() == 1 { outputs.pop().expect("one shard") } else { Tensor::cat(outputs, 1) })
    }
}

/// The extension is listed for cubecl devices only (see [`QuantLinearOps`]).
/// Whether `device` runs on a cubecl backend (where the extension may be called).
pub fn is_cube(device: &Device) -> bool {
    require_cube(device).is_ok()
}

fn require_cube(device: &Device) -> Result<(), ModelError> {
    match device.as_dispatch() {
        DispatchDevice::Cube(_) => Ok(()),
        #[allow(unreachable_patterns)] // a build with only GPU backends has no other variant
        _ => Err(ModelError::DeviceUnavailable {
            requested: format!("{device:?}"),
            reason: "quantized weights stay in their GGUF blocks only on cubecl devices (wgpu, vulkan, metal, \
                     cuda, rocm)"
                .into(),
        }),
    }
}
