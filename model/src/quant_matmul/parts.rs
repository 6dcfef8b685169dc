//! A [`QuantMatrix`]'s rows kept in parts: one for a tensor, one per tensor for a stacked
//! projection (q‖k‖v, gate‖up), so stacking never copies weights out of the model file.

use std::borrow::Cow;
use std::ops::Range;

use super::QuantMatrix;
use crate::gguf::TensorBytes;

/// Rows `first..first + bytes.len() / row_bytes` of a [`QuantMatrix`].
#[derive(Clone)]
pub(super) struct RowPart {
    pub first: usize,
    pub bytes: TensorBytes,
}

impl QuantMatrix {
    /// The encoded weights, `rows × row bytes` (copied only for a stacked matrix).
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self.parts.as_slice() {
            [one] => Cow::Borrowed(&one.bytes[..]),
            parts => Cow::Owned(parts.iter().flat_map(|p| p.bytes.iter().copied()).collect()),
        }
    }

    /// The matrices' rows one after the other, as one matrix (q‖k‖v, or gate‖up), without
    /// copying: each keeps its bytes where they are (for a GGUF model, the file's map, so the
    /// weights take no memory beyond the file's pages). `None` unless all share the type and
    /// width. `int8` activations apply if any part had them.
    pub fn stacked(matrices: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = matrices.first()?;
        if matrices.iter().any(|m| m.ggml_type != first.ggml_type || m.cols != first.cols) {
            return None;
        }
        let mut parts = Vec::new();
        let mut rows = 0;
        for m in matrices {
            parts.extend(m.parts.iter().map(|p| RowPart { first: rows + p.first, bytes: p.bytes.clone() }));
            rows += m.rows;
        }
        let int8 = matrices.iter().any(|m| m.int8_activations());
        Some(QuantMatrix { rows, parts, ..QuantMatrix::clone_shape(first) }.with_int8_activations(int8))
    }

    /// `self` without rows (for [`QuantMatrix::stacked`] to fill in).
    fn clone_shape(&self) -> QuantMatrix {
        QuantMatrix {
            ggml_type: self.ggml_type,
            rows: 0,
            cols: self.cols,
            row_bytes: self.row_bytes,
            parts: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            avx2: self.avx2,
            #[cfg(target_arch = "x86_64")]
            avx512: self.avx512,
            #[cfg(target_arch = "x86_64")]
            int8: None,
        }
    }

    /// The encoded bytes of weight rows `range`, as contiguous pieces with their row ranges
    /// (one piece unless the range crosses from one part of a stacked matrix to the next).
    pub(super) fn row_slices(&self, range: Range<usize>) -> impl Iterator<Item = (Range<usize>, &[u8])> + '_ {
        self.parts.iter().filter_map(move |part| {
            let part_rows = part.bytes.len() / self.row_bytes;
            let (start, end) = (range.start.max(part.first), range.end.min(part.first + part_rows));
            (start < end).then(|| {
                let at = |row: usize| (row - part.first) * self.row_bytes;
                (start..end, &part.bytes[at(start)..at(end)])
            })
        })
    }

}
