//! Where a product's results go: `y[n, rows]`, written by several threads at once, each
//! owning a disjoint range of columns (weight rows), and the activation tiles read beside it.

use std::marker::PhantomData;
use std::ops::Range;

/// Up to [`TILE_X`] consecutive activation rows `first..first + len` of `x[n, cols]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tile<'a> {
    pub x: &'a [f32],
    pub cols: usize,
    pub first: usize,
    pub len: usize,
}

impl<'a> Tile<'a> {
    /// Row `i` of the tile; rows past `len` repeat the last one, so kernels can always work
    /// on a full tile and the caller drops the extra results.
    pub fn row(&self, i: usize) -> &'a [f32] {
        let r = self.first + i.min(self.len - 1);
        &self.x[r * self.cols..(r + 1) * self.cols]
    }
}

/// `y[n, rows]` shared by the tasks of one product, each writing only its own columns.
pub(super) struct SharedOut<'a> {
    ptr: *mut f32,
    n: usize,
    rows: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedOut` only hands out column ranges through the unsafe `columns`, whose callers
// guarantee the ranges are disjoint, so no element is written by two threads.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub fn new(y: &'a mut [f32], n: usize, rows: usize) -> SharedOut<'a> {
        assert_eq!(y.len(), n * rows, "output size checked by the caller");
        SharedOut { ptr: y.as_mut_ptr(), n, rows, _y: PhantomData }
    }

    /// Write access to columns `range` of every row.
    ///
    /// # Safety
    /// No two live [`OutColumns`] of the same `SharedOut` may have overlapping ranges.
    pub unsafe fn columns(&self, range: Range<usize>) -> OutColumns<'_> {
        assert!(range.end <= self.rows, "column range inside the output");
        OutColumns { ptr: self.ptr, n: self.n, rows: self.rows, range, _y: PhantomData }
    }
}

/// Exclusive write access to some columns of `y[n, rows]`.
pub(super) struct OutColumns<'a> {
    ptr: *mut f32,
    n: usize,
    rows: usize,
    range: Range<usize>,
    _y: PhantomData<&'a mut [f32]>,
}

impl OutColumns<'_> {
    #[inline]
    pub fn put(&mut self, i: usize, r: usize, v: f32) {
        assert!(i < self.n && self.range.contains(&r), "output ({i}, {r}) outside this task's columns");
        // SAFETY: in bounds (checked above: i < n, r < rows, y has n × rows elements), and
        // column `r` belongs to this `OutColumns` alone (the contract of `SharedOut::columns`).
        unsafe { self.ptr.add(i * self.rows + r).write(v) }
    }

    /// `put(i, r0 + k, values[k])` for every `k`, checked once.
    #[inline]
    pub fn put_run(&mut self, i: usize, r0: usize, values: &[f32]) {
        let end = r0 + values.len();
        assert!(
            i < self.n && self.range.start <= r0 && end <= self.range.end,
            "output ({i}, {r0}..{end}) outside this task's columns"
        );
        // SAFETY: in bounds (checked above), and columns `r0..end` belong to this
        // `OutColumns` alone (the contract of `SharedOut::columns`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rows + r0), values.len()) }.copy_from_slice(values);
    }
}
