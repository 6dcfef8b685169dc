//! The panel path for batches too large for the fused kernels: dequantize a few weight rows
//! to f32 at a time, then multiply them with every activation row in register tiles, so
//! each decoded weight is reused for the whole batch.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::output::{OutColumns, Tile};
use super::{Kernel, PANEL_BYTES, QuantMatrix, TILE_W, TILE_X, generic};
use crate::error::ModelError;
use crate::gguf::dequant;

impl QuantMatrix {
    /// The panel path: dequantize a few weight rows at a time, then multiply them with every
    /// activation row in register tiles.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn panel_rows(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        weights: &[u8],
        first_row: usize,
        panel: &mut Vec<f32>,
        out: &mut OutColumns<'_>,
    ) -> Result<(), ModelError> {
        let cols = self.cols;
        let panel_rows = (PANEL_BYTES / (cols * 4 * TILE_W)).clamp(1, 16) * TILE_W;
        panel.resize(panel_rows * cols, 0.0);
        for (p, rows) in weights.chunks(panel_rows * self.row_bytes).enumerate() {
            let count = rows.len() / self.row_bytes;
            let panel = &mut panel[..count * cols];
            self.decode_rows(kernel, rows, panel)?;
            let row0 = first_row + p * panel_rows;
            for i0 in (0..n).step_by(TILE_X) {
                let tile = Tile { x, cols, first: i0, len: TILE_X.min(n - i0) };
                for (j, w) in panel.chunks(TILE_W * cols).enumerate() {
                    let dots = match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Panel(cpu) | Kernel::Fused(cpu, _) => avx2::dot_tile(cpu, tile, w),
                        // `run_rows` never hands int8 products to the panel path.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Int8(_) => generic::dot_tile(tile, w),
                        Kernel::Portable => generic::dot_tile(tile, w),
                    };
                    for (i, dots) in dots.iter().enumerate().take(tile.len) {
                        for (jj, &v) in dots.iter().enumerate().take(w.len() / cols) {
                            out.put(i0 + i, row0 + j * TILE_W + jj, v);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Dequantizes whole weight rows into `out` (`rows.len() / row_bytes × cols` floats).
    fn decode_rows(&self, kernel: Kernel, rows: &[u8], out: &mut [f32]) -> Result<(), ModelError> {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Panel(cpu) | Kernel::Fused(cpu, _) = kernel
            && avx2::decode_rows(cpu, self.ggml_type, rows, out)
        {
            return Ok(());
        }
        let _ = kernel;
        dequant::dequantize(self.ggml_type, rows, out)
            .map_err(|e| ModelError::Internal(format!("quantized matmul: {e}")))
    }
}
