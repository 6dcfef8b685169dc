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
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Panel512(_, wide) = kernel {
            return self.panel512_rows(kernel, wide, x, n, weights, first_row, panel, out);
        }
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
                        // `run_rows` never hands int8 products to the panel path, and
                        // `Panel512` returned above.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Int8(_) | Kernel::Panel512(..) => generic::dot_tile(tile, w),
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

    /// [`QuantMatrix::panel_rows`] with the AVX-512 kernel: `x_t` is the activations as
    /// `avx2::transpose_blocks` lays them out, and the panel is zero-padded to whole tiles of
    /// `avx2::W_ROWS` weight rows.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn panel512_rows(
        &self,
        kernel: Kernel,
        wide: avx2::Avx512,
        x_t: &[f32],
        n: usize,
        weights: &[u8],
        first_row: usize,
        panel: &mut Vec<f32>,
        out: &mut OutColumns<'_>,
    ) -> Result<(), ModelError> {
        let cols = self.cols;
        let panel_rows = (PANEL_BYTES / (cols * 4 * avx2::W_ROWS)).clamp(1, 16) * avx2::W_ROWS;
        debug_assert!(panel_rows <= avx2::MAX_PANEL_ROWS);
        panel.resize(panel_rows * cols, 0.0);
        let mut sums = Vec::new();
        let panel_bytes = panel_rows * self.row_bytes;
        for (p, rows) in weights.chunks(panel_bytes).enumerate() {
            let count = rows.len() / self.row_bytes;
            let padded = count.next_multiple_of(avx2::W_ROWS);
            self.decode_rows(kernel, rows, &mut panel[..count * cols])?;
            panel[count * cols..padded * cols].fill(0.0);
            let row0 = first_row + p * panel_rows;
            // The next panel's encoded rows, fetched while this one's tiles run.
            let next = weights.get((p + 1) * panel_bytes..).unwrap_or_default();
            let next = &next[..next.len().min(panel_bytes)];
            avx2::panel512_rows(wide, x_t, n, cols, &panel[..padded * cols], count, row0, next, &mut sums, out);
        }
        Ok(())
    }

    /// Dequantizes whole weight rows into `out` (`rows.len() / row_bytes × cols` floats).
    fn decode_rows(&self, kernel: Kernel, rows: &[u8], out: &mut [f32]) -> Result<(), ModelError> {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Panel512(cpu, wide) = kernel
            && avx2::decode_rows_512(cpu, wide, self.ggml_type, rows, out)
        {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Panel(cpu) | Kernel::Fused(cpu, _) | Kernel::Panel512(cpu, _) = kernel
            && avx2::decode_rows(cpu, self.ggml_type, rows, out)
        {
            return Ok(());
        }
        let _ = kernel;
        dequant::dequantize(self.ggml_type, rows, out)
            .map_err(|e| ModelError::Internal(format!("quantized matmul: {e}")))
    }
}
