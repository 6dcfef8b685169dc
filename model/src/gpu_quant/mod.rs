//! Quantized weights on cubecl devices (wgpu, Vulkan, Metal, CUDA, ROCm): GGUF blocks kept on
//! the device as they are, multiplied by our own `#[cube]` kernel (issue 10).
//!
//! - [`layout`]: the lossless host repack of GGUF blocks into `u32` words (WGSL reads no
//!   8/16-bit storage, and 18/34-byte blocks are not 4-byte aligned).
//! - `kernels`: the matrix-vector kernel, one cube per output element, f32 accumulation;
//!   `decode`: its per-type decoding, mirroring `gguf::dequant`.
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
    #[fusion(dtype = x, shape = matvec_shape(x, rows))]
    fn quant_matvec(x: FloatTensor<Self>, w: IntTensor<Self>, kind: u32, rows: usize, cols: usize)
    -> FloatTensor<Self>;
}

/// The output shape fusion records before the kernel runs; the kernel writes exactly this
/// (fusion does not check it, the tests do).
fn matvec_shape(x: &Shape, rows: &usize) -> Shape {
    [x[0], *rows].into()
}

impl QuantLinearOps for CubeBackend {
    fn quant_matvec(x: FloatTensor<Self>, w: IntTensor<Self>, kind: u32, rows: usize, cols: usize) -> FloatTensor<Self> {
        let kind = QuantKind::from_code(kind).expect("DeviceQuantMatrix passes only the kinds it packed");
        kernels::quant_matvec(x, w, kind, rows, cols)
    }
}

/// A quantized `rows × cols` weight matrix on a cubecl device, in the packed layout of
/// [`layout`] (the GGUF bytes plus at most 2 bytes).
#[derive(Debug, Clone)]
pub struct DeviceQuantMatrix {
    words: Tensor<1, Int>,
    kind: QuantKind,
    rows: usize,
    cols: usize,
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
        let kind = QuantKind::from_ggml(ggml_type)
            .ok_or_else(|| ModelError::UnsupportedQuantization { tensor: String::new(), ggml_type: ggml_type.to_string() })?;
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
        let words = layout::pack(kind, bytes);
        let len = words.len();
        let words = Tensor::<1, Int>::from_data(TensorData::new(words, [len]), (device, DType::U32));
        Ok(DeviceQuantMatrix { words, kind, rows, cols })
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
        layout::device_bytes(self.kind, self.rows * self.cols / self.kind.block_elements())
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
        if device != self.words.device() {
            return Err(ModelError::Internal(format!(
                "activations on {device:?}, quantized weights on {:?}",
                self.words.device()
            )));
        }
        let y = <Dispatch as QuantLinearOps>::quant_matvec(
            x.into_dispatch(),
            self.words.clone().into_dispatch(),
            self.kind.code(),
            self.rows,
            self.cols,
        );
        Ok(Tensor::from_dispatch(y))
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
