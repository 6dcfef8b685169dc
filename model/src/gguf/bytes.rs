//! Tensor bytes shared without copying: a range of a memory-mapped file, or of a buffer.
//!
//! Quantized weights are used as the file stores them, so the loader hands the kernels a
//! window onto the file's map instead of a copy: the weights then take the file's page-cache
//! pages and nothing else, and the load never holds both the file's pages and a heap copy
//! (which had put Gemma 3's peak RSS at about twice its file size).

use std::ops::{Deref, Range};
use std::sync::Arc;

/// What a [`TensorBytes`] borrows from: a file's read-only map, or bytes built in memory.
pub(crate) enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(map) => map,
            Backing::Owned(bytes) => bytes,
        }
    }
}

/// An immutable, cheaply cloned byte range. Clones share the backing, which lives (and, for a
/// file, stays mapped) until the last clone is dropped.
#[derive(Clone)]
pub struct TensorBytes {
    backing: Arc<Backing>,
    start: usize,
    end: usize,
}

impl TensorBytes {
    /// A window onto `backing`; `range` must lie inside it (the GGUF parser checks every
    /// tensor's extent before handing one out).
    pub(crate) fn window(backing: Arc<Backing>, range: Range<usize>) -> TensorBytes {
        assert!(range.start <= range.end && range.end <= backing.len(), "tensor range outside its backing");
        TensorBytes { backing, start: range.start, end: range.end }
    }

    /// Tells the kernel this process no longer needs the file pages wholly inside this window
    /// (after the bytes were copied elsewhere, e.g. dequantized), so they leave the
    /// resident set. Reading the window again stays correct: the pages come back from the
    /// file. Owned bytes, and failures, are ignored.
    ///
    /// Only effective once nothing maps the neighbouring pages: the page cache may hold a
    /// file in large folios (2 MiB on ext4 with kernel 6.x), and a fault on any page of one
    /// maps all of it again, released pages included. So weights used in place are never
    /// copied and released piecemeal (see `QuantMatrix::stacked`).
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Backing::Mapped(map) = &*self.backing {
            const PAGE: usize = 4096;
            let (first, last) = (self.start.div_ceil(PAGE) * PAGE, self.end / PAGE * PAGE);
            if last > first {
                // SAFETY: the map is read-only and file-backed, so dropping its pages loses
                // nothing: a later read through any window faults them back in from the file
                // and sees the same bytes. Only pages wholly inside this window are dropped.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
            }
        }
    }

    /// Whether these bytes are a window onto a memory-mapped file (not a heap copy).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.backing, Backing::Mapped(_))
    }
}

impl From<Vec<u8>> for TensorBytes {
    fn from(bytes: Vec<u8>) -> TensorBytes {
        let end = bytes.len();
        TensorBytes { backing: Arc::new(Backing::Owned(bytes)), start: 0, end }
    }
}

impl FromIterator<u8> for TensorBytes {
    fn from_iter<I: IntoIterator<Item = u8>>(bytes: I) -> TensorBytes {
        TensorBytes::from(bytes.into_iter().collect::<Vec<u8>>())
    }
}

impl Deref for TensorBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.backing[self.start..self.end]
    }
}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorBytes").field("len", &self.len()).field("mapped", &self.is_mapped()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_its_range_and_clones_share_the_backing() {
        let backing = Arc::new(Backing::Owned((0u8..10).collect()));
        let window = TensorBytes::window(backing.clone(), 3..7);
        assert_eq!(&*window, &[3, 4, 5, 6]);
        let copy = window.clone();
        assert_eq!(Arc::strong_count(&backing), 3);
        drop((window, copy));
        assert_eq!(Arc::strong_count(&backing), 1);
        assert!(!TensorBytes::from(vec![1, 2]).is_mapped());
    }

    #[test]
    #[should_panic(expected = "outside its backing")]
    fn a_window_past_the_end_is_refused() {
        TensorBytes::window(Arc::new(Backing::Owned(vec![0; 4])), 2..5);
    }
}
