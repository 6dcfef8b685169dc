//! Matrix products with weights kept in their GGUF block encoding, for CPU devices.
//!
//! Single-sequence decode on the CPU is bound by reading the weights: f32 weights are 5.5×
//! the bytes of the 4-bit blocks a GGUF file ships. [`QuantMatrix`] keeps the blocks as they
//! are and computes `y = x · Wᵀ` by dequantizing inside the product, so every weight byte is
//! read once per call and never expanded into memory (at small batches) or expanded once per
//! call into a small cache-resident panel (at large batches).
//!
//! Activations stay f32 and every product is a float dot product of the exactly dequantized
//! weights, so results differ from `dequantize` + f32 matmul only by rounding (no quantized
//! activations as in llama.cpp's kernels: our golden tests compare logits to a float64
//! reference).
//!
//! Five strategies, picked per call (see [`Strategy`]):
//! - fused AVX2 kernels at small batches, which decode each block in registers and use it for
//!   up to four activation rows: Q4_0, Q4_1, Q5_0 and Q8_0 (32-element blocks) and Q4_K, Q5_K
//!   and Q6_K (256-element super-blocks), i.e. every type of the usual `Q4_K_M`/`Q5_K_M`
//!   files but their F32 norms;
//! - the fused kernels with 16-lane AVX-512 vectors (every type above), where the CPU has AVX-512F
//!   (detected at run time; the AVX2 kernel is the fallback, e.g. on Zen 2/3);
//! - an AVX2 panel path: a few weight rows dequantized into an f32 panel (AVX2 decoders,
//!   bit-exact with `gguf::dequant`, for the types above and F16; scalar `dequant` for the
//!   rest), then a register-tiled f32 kernel (4 activation rows × 3 weight rows); used for
//!   large batches and types without a fused kernel;
//! - the same panel with a 16-lane AVX-512 kernel (CPUs with AVX-512F, batches of at least
//!   16 rows, i.e. prefill): the activations transposed once per call so that each vector
//!   holds 16 activation rows, 4 × 16 rows × 6 weight rows per register tile, and no
//!   horizontal sums (`avx2::panel512`);
//! - the same panel path with portable, auto-vectorizable Rust (non-x86 targets, CPUs without
//!   AVX2, and the reference the AVX2 kernels are tested against).
//!
//! Work is split over output rows (weight rows) between the calling thread and spinning
//! helper threads (see `spin_pool`); small products run on the calling thread alone, where
//! handing work over would cost more than it saves.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod generic;
mod int8;
mod output;
mod panel;
mod parts;
mod scratch;
#[cfg(test)]
mod panel_tests;
#[cfg(test)]
mod tests;

use std::ops::Range;

use crate::error::ModelError;
use crate::gguf::{GgmlType, TensorBytes};
use crate::spin_pool;
use crate::gguf::dequant::is_supported;
use output::{OutColumns, SharedOut, Tile};
use parts::RowPart;
#[cfg(target_arch = "x86_64")]
use scratch::{with_q8_activations, with_transposed_x};
use scratch::with_panel;

/// Largest batch for the fused kernels: they decode every block once per tile of [`TILE_X`]
/// rows, the panel path once per call. Measured on Zen 4 (Q4_1, 1536 × 576): fused 10 %
/// faster at 3 rows, even at 4, the panel 20 % faster at 8. The K-quant kernels (Xeon,
/// 576 × 1536 Q4_K/Q6_K): fused at 4 rows takes 20–40 % less time than the panel at 5.
const FUSED_MAX_N: usize = 4;
/// Smallest batch for the AVX-512 panel kernel, which pads the batch to whole 16-row blocks
/// (see `avx2::panel512`): below it the AVX2 panel kernel wastes no lanes. Measured on the
/// Xeon (`panel_tests::panel_kernels_timing`): at 8 rows AVX-512 took 1.3–1.7× the AVX2
/// kernel's time, at 16 rows 0.8–1.0×, at 64 rows 0.5–0.85×.
const AVX512_PANEL_MIN_N: usize = 16;
/// Activation rows per tile: the weight block (fused) or weight rows (panel) loaded into
/// registers are used for this many rows.
const TILE_X: usize = 4;
/// Weight rows per panel tile (4 × 3 accumulators + 3 weight vectors + 1 activation vector
/// fill the 16 AVX2 registers).
const TILE_W: usize = 3;
/// Target size of the f32 panel, so that the panel and a tile of activation rows stay in L2.
const PANEL_BYTES: usize = 96 * 1024;
/// Below this many multiply-adds a product runs on the calling thread alone: a helper costs
/// a spawn and possibly a wake-up, several microseconds (a 576 × 576 Q4_1 product at one
/// row, 331 776 multiply-adds, takes about 20 µs on one core).
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Each chunk of output rows handed to a thread has at least this many multiply-adds.
const CHUNK_MIN_MACS: usize = 1 << 16;

/// Frees the calling thread's buffers of large-batch products (see `scratch::release`), after
/// a prefill.
pub fn release_batch_buffers() {
    scratch::release();
}

/// A weight matrix kept in its GGUF block encoding: `rows` outputs × `cols` inputs, each row
/// `cols / block_size` consecutive blocks (GGUF's layout of a `[out, in]` linear weight).
pub struct QuantMatrix {
    ggml_type: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The encoded rows in parts of whole rows, shared (a tied output projection and the
    /// embedding table hold one copy): one part for a tensor, one per tensor for a stacked
    /// projection (see [`QuantMatrix::stacked`]), each left where the model file has it.
    parts: Vec<RowPart>,
    /// The AVX2 kernels' proof of CPU support, looked up once.
    #[cfg(target_arch = "x86_64")]
    avx2: Option<avx2::Avx2>,
    /// The same for the AVX-512 kernels.
    #[cfg(target_arch = "x86_64")]
    avx512: Option<avx2::Avx512>,
    /// Set by [`QuantMatrix::with_int8_activations`] where this CPU and type have integer
    /// kernels: every product then rounds its activations to 8 bits (see `int8`).
    #[cfg(target_arch = "x86_64")]
    int8: Option<int8::Int8Cpu>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("ggml_type", &self.ggml_type)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// How one product is computed (chosen per call; tests force each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the AVX2 variants
enum Strategy {
    /// Rows dequantized by `gguf::dequant` into a panel, portable f32 dot tiles.
    Portable,
    /// Rows dequantized into a panel (AVX2 decoders for the fused types and F16), AVX2 dot
    /// tiles.
    Avx2Panel,
    /// Blocks decoded in registers and multiplied directly (types with `avx2::has_fused`).
    Avx2Fused,
    /// [`Strategy::Avx2Fused`] with 16-lane vectors (types with `avx2::has_fused_avx512`).
    Avx512Fused,
    /// The panel of [`Strategy::Avx2Panel`] with a 16-lane kernel over transposed activations
    /// (CPUs with AVX-512F; see `avx2::panel512`).
    Avx512Panel,
    /// Activations rounded to 8 bits, integer dot products (`int8`; opt-in).
    Int8,
}

impl QuantMatrix {
    /// Wraps `bytes`, which must be exactly `rows × cols` elements of `ggml_type` (with `cols`
    /// a multiple of the block size). A type [`QuantMatrix::supports`] rejects is
    /// [`ModelError::UnsupportedQuantization`]; wrong sizes are [`ModelError::Tensor`]. Both
    /// leave the tensor name empty: callers that know it wrap the error (or use
    /// [`QuantMatrix::for_tensor`]).
    pub fn new(
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        bytes: impl Into<TensorBytes>,
    ) -> Result<QuantMatrix, ModelError> {
        QuantMatrix::for_tensor("", ggml_type, rows, cols, bytes)
    }

    /// [`QuantMatrix::new`] with the tensor's name in the errors.
    pub fn for_tensor(
        tensor: &str,
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        bytes: impl Into<TensorBytes>,
    ) -> Result<QuantMatrix, ModelError> {
        let unsupported =
            || ModelError::UnsupportedQuantization { tensor: tensor.to_string(), ggml_type: ggml_type.to_string() };
        let bytes = bytes.into();
        let (block_elems, block_bytes) = ggml_type.block_layout().ok_or_else(unsupported)?;
        if !QuantMatrix::supports(ggml_type) {
            return Err(unsupported());
        }
        if !cols.is_multiple_of(block_elems) {
            return Err(ModelError::tensor(
                tensor,
                format!("{cols} columns are not a whole number of {ggml_type} blocks of {block_elems}"),
            ));
        }
        let row_bytes = (cols / block_elems) * block_bytes; // ≤ cols * 8: no overflow
        let expected = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| ModelError::tensor(tensor, format!("{rows} × {cols} {ggml_type} matrix is too large")))?;
        if bytes.len() != expected {
            return Err(ModelError::tensor(
                tensor,
                format!("{} bytes, but a {rows} × {cols} {ggml_type} matrix takes {expected}", bytes.len()),
            ));
        }
        Ok(QuantMatrix {
            ggml_type,
            rows,
            cols,
            row_bytes,
            parts: vec![RowPart { first: 0, bytes }],
            #[cfg(target_arch = "x86_64")]
            avx2: avx2::Avx2::detect(),
            #[cfg(target_arch = "x86_64")]
            avx512: avx2::Avx512::detect(),
            #[cfg(target_arch = "x86_64")]
            int8: None,
        })
    }

    /// With `on`, products of small batches (decode steps of up to four sequences; see
    /// `INT8_MAX_N`) round the activations to 8 bits per 32-element block
    /// and use integer dot products, as llama.cpp does: faster, but no longer within the f32
    /// path's rounding of the exact result. Only where this CPU (AVX2, FMA and F16C; VNNI where
    /// present) and this type ([`QuantMatrix::has_int8_kernel`]) have the kernels; other
    /// matrices keep f32 activations.
    pub fn with_int8_activations(mut self, on: bool) -> QuantMatrix {
        #[cfg(target_arch = "x86_64")]
        {
            self.int8 = if on && int8::has_int8(self.ggml_type) { int8::Int8Cpu::detect() } else { None };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = on;
        self
    }

    /// Whether products round activations to 8 bits (see [`QuantMatrix::with_int8_activations`]).
    pub fn int8_activations(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.int8.is_some()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether 8-bit activations are available for this type on this CPU.
    pub fn has_int8_kernel(ggml_type: GgmlType) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            int8::has_int8(ggml_type) && int8::Int8Cpu::detect().is_some()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = ggml_type;
            false
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Whether a matrix of this type can be built: every type `gguf::dequant` decodes.
    pub fn supports(ggml_type: GgmlType) -> bool {
        is_supported(ggml_type) && ggml_type.block_layout().is_some()
    }

    /// Whether this type has hand-written kernels on this CPU (fused AVX2 kernels and AVX2
    /// panel decoders for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K). Other supported types
    /// use the generic dequantize-into-a-panel path, which is fast at large batches but
    /// decodes with scalar code.
    pub fn has_fast_kernel(ggml_type: GgmlType) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            avx2::Avx2::detect().is_some() && avx2::has_fused(ggml_type)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = ggml_type;
            false
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ`, f32 activations, row-major slices.
    ///
    /// # Panics
    /// If `x` is not `n × cols` or `y` not `n × rows` long — a bug in the caller, like a
    /// mismatched `copy_from_slice`. [`QuantMatrix::try_matmul`] returns an error instead.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        if let Err(e) = self.try_matmul(x, n, y) {
            panic!("QuantMatrix::matmul: {e}");
        }
    }

    /// [`QuantMatrix::matmul`] that reports mismatched slice lengths as
    /// [`ModelError::Internal`].
    pub fn try_matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), ModelError> {
        self.matmul_with(self.strategy(n), x, n, y)
    }

    /// The fastest strategy available for a batch of `n` rows.
    fn strategy(&self, n: usize) -> Strategy {
        #[cfg(target_arch = "x86_64")]
        if self.int8.is_some() && n <= INT8_MAX_N {
            return Strategy::Int8;
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2.is_some() {
            return if n > FUSED_MAX_N || !avx2::has_fused(self.ggml_type) {
                if self.avx512.is_some() && n >= AVX512_PANEL_MIN_N { Strategy::Avx512Panel } else { Strategy::Avx2Panel }
            } else if self.avx512.is_some() && avx2::has_fused_avx512(self.ggml_type) {
                Strategy::Avx512Fused
            } else {
                Strategy::Avx2Fused
            };
        }
        let _ = n;
        Strategy::Portable
    }

    /// The product with a given strategy (an error if this CPU or type lacks it).
    fn matmul_with(&self, strategy: Strategy, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), ModelError> {
        let (rows, cols) = (self.rows, self.cols);
        if n.checked_mul(cols) != Some(x.len()) || n.checked_mul(rows) != Some(y.len()) {
            return Err(ModelError::Internal(format!(
                "quantized matmul of a {rows} × {cols} matrix: x has {} values and y {}, expected {n} × {cols} and {n} × {rows}",
                x.len(),
                y.len()
            )));
        }
        let kernel = self.kernel(strategy)?;
        if n == 0 || rows == 0 {
            return Ok(());
        }
        if cols == 0 {
            y.fill(0.0);
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Int8(_) = kernel {
            // Rounded once per call, shared by all weight rows (and threads).
            return with_q8_activations(|acts| {
                acts.quantize(x, cols, int8::scale_block(self.ggml_type));
                self.split_rows(kernel, x, n, &[], Some(acts), y)
            });
        }
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Panel512(_, wide) = kernel {
            // Transposed once per call, shared by all weight rows (and threads).
            return with_transposed_x(|x_t| {
                avx2::transpose_blocks(wide, x, n, cols, x_t);
                self.split_rows(kernel, x_t, n, &[], None, y)
            });
        }
        // Per-block activation sums for the fused kernels' min term, shared by all weight rows.
        let x_sums = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Fused(..) => avx2::block_sums(self.ggml_type, x, cols),
            _ => Vec::new(),
        };
        self.split_rows(kernel, x, n, &x_sums, None, y)
    }

    /// Runs `kernel` over all weight rows, on this thread or split with helper threads.
    fn split_rows(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        x_sums: &[f32],
        acts: Option<&int8::Q8Activations>,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        let (rows, cols) = (self.rows, self.cols);
        let out = SharedOut::new(y, n, rows);
        let run = |range: Range<usize>| {
            // SAFETY: the row ranges passed to `run` are disjoint: a single `0..rows`, or the
            // chunks of `run_chunks`, each claimed once.
            let mut cols_out = unsafe { out.columns(range.clone()) };
            self.run_rows(kernel, x, n, x_sums, acts, range, &mut cols_out)
        };

        let macs = n.saturating_mul(rows).saturating_mul(cols);
        // The caller works too (see `spin_pool`): `threads - 1` helpers fill the cores.
        let helpers = spin_pool::helper_threads();
        let min_chunk = CHUNK_MIN_MACS.div_ceil(n * cols);
        if helpers == 0 || macs < PARALLEL_MIN_MACS || rows < 2 * min_chunk {
            return run(0..rows);
        }
        // Whole tiles per chunk, so only the last chunk has ragged tiles.
        spin_pool::run_chunks(rows, TILE_X * TILE_W, min_chunk, helpers, &run)
    }

    /// Resolves a strategy into a kernel this CPU and type have.
    fn kernel(&self, strategy: Strategy) -> Result<Kernel, ModelError> {
        let missing = || ModelError::Internal(format!("{strategy:?} is not available for {}", self.ggml_type));
        match strategy {
            Strategy::Portable => Ok(Kernel::Portable),
            #[cfg(target_arch = "x86_64")]
            Strategy::Avx2Panel => self.avx2.map(Kernel::Panel).ok_or_else(missing),
            #[cfg(target_arch = "x86_64")]
            Strategy::Avx512Panel => match (self.avx2, self.avx512) {
                (Some(cpu), Some(wide)) => Ok(Kernel::Panel512(cpu, wide)),
                _ => Err(missing()),
            },
            #[cfg(target_arch = "x86_64")]
            Strategy::Avx2Fused => match self.avx2 {
                Some(cpu) if avx2::has_fused(self.ggml_type) => Ok(Kernel::Fused(cpu, None)),
                _ => Err(missing()),
            },
            #[cfg(target_arch = "x86_64")]
            Strategy::Avx512Fused => match (self.avx2, self.avx512) {
                (Some(cpu), Some(wide)) if avx2::has_fused_avx512(self.ggml_type) => Ok(Kernel::Fused(cpu, Some(wide))),
                _ => Err(missing()),
            },
            #[cfg(target_arch = "x86_64")]
            Strategy::Int8 => match self.int8.or_else(int8::Int8Cpu::detect) {
                Some(cpu) if int8::has_int8(self.ggml_type) => Ok(Kernel::Int8(cpu)),
                _ => Err(missing()),
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => Err(missing()),
        }
    }

    /// Computes output columns `range` (weight rows) for all `n` activation rows.
    #[allow(clippy::too_many_arguments)]
    fn run_rows(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        x_sums: &[f32],
        acts: Option<&int8::Q8Activations>,
        range: Range<usize>,
        out: &mut OutColumns<'_>,
    ) -> Result<(), ModelError> {
        for (range, weights) in self.row_slices(range) {
            self.run_contiguous_rows(kernel, x, n, x_sums, acts, range, weights, out)?;
        }
        Ok(())
    }

    /// [`QuantMatrix::run_rows`] for rows `range` whose encoded bytes `weights` are contiguous.
    #[allow(clippy::too_many_arguments)]
    fn run_contiguous_rows(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        x_sums: &[f32],
        acts: Option<&int8::Q8Activations>,
        range: Range<usize>,
        weights: &[u8],
        out: &mut OutColumns<'_>,
    ) -> Result<(), ModelError> {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (x_sums, acts); // only the AVX2 kernels use them
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Int8(cpu) => {
                let acts = acts.ok_or_else(|| ModelError::Internal("int8 product without activations".into()))?;
                // Weight rows in passes that stay in L2 while every activation tile runs
                // over them (prefill batches have hundreds of rows).
                let pass_rows = (INT8_PASS_BYTES / self.row_bytes).max(1);
                for (p, pass) in weights.chunks(pass_rows * self.row_bytes).enumerate() {
                    for i0 in (0..n).step_by(TILE_X) {
                        let (len, row0) = (TILE_X.min(n - i0), range.start + p * pass_rows);
                        int8::tile_rows(cpu, self.ggml_type, pass, self.row_bytes, acts, i0, len, row0, out);
                    }
                }
                Ok(())
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Fused(cpu, wide) => {
                for i0 in (0..n).step_by(TILE_X) {
                    let tile = Tile { x, cols: self.cols, first: i0, len: TILE_X.min(n - i0) };
                    let (bytes, sums) = (self.row_bytes, x_sums);
                    avx2::fused_rows(cpu, wide, self.ggml_type, weights, bytes, tile, sums, range.start, out);
                }
                Ok(())
            }
            _ => with_panel(|panel| self.panel_rows(kernel, x, n, weights, range.start, panel, out)),
        }
    }
}

/// A resolved [`Strategy`]; the AVX2 variants carry the proof that the CPU has AVX2, the
/// fused one with AVX-512 also the proof of that.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Panel(avx2::Avx2),
    /// The panel with the AVX-512 kernel; `x` is then the transposed activations.
    #[cfg(target_arch = "x86_64")]
    Panel512(avx2::Avx2, avx2::Avx512),
    #[cfg(target_arch = "x86_64")]
    Fused(avx2::Avx2, Option<avx2::Avx512>),
    #[cfg(target_arch = "x86_64")]
    Int8(int8::Int8Cpu),
}

/// Largest batch that uses 8-bit activations when a matrix has them: the batches where the
/// integer kernels beat the f32 ones. Measured on the Xeon (`int8::tests::int8_against_f32_timing`:
/// 1536 × 576 or × 512, one thread, best of 3; time int8 / f32 at 1, 2, 3, 4 rows): Q4_1
/// 0.73, 0.65, 0.69, 0.83; Q5_0 0.55–0.67; Q8_0 0.60–0.79; Q4_K 0.85, 0.85, 0.99, 0.72; Q6_K
/// 0.60–0.85. Larger batches take the f32 panel, which reuses each decoded weight for every
/// row of the batch (the integer tile, for four).
#[cfg(target_arch = "x86_64")]
const INT8_MAX_N: usize = FUSED_MAX_N;

/// Weight bytes an int8 pass keeps hot in L2 (see `run_rows`).
#[cfg(target_arch = "x86_64")]
const INT8_PASS_BYTES: usize = 256 * 1024;

