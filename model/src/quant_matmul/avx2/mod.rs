//! x86_64 kernels using AVX2, FMA and F16C: here the fused kernels for the 32-element block
//! types (Q4_0, Q4_1, Q5_0, Q8_0); in [`kquant`] and [`kfused`] the K-quant super-blocks
//! (Q4_K, Q5_K, Q6_K) and their fused kernel; in [`panel`] the row decoders that fill the
//! panel and the register-tiled f32 dot kernel; in [`avx512`] the K-quant kernel with
//! 16-lane vectors, for CPUs with AVX-512, and in [`avx512_blocks`] the same for the
//! 32-element block types.
//!
//! Every `#[target_feature]` function is reached only through safe wrappers that take an
//! [`Avx2`] token: the token is made only after runtime detection, so holding one proves the
//! instructions exist.

mod avx512;
mod avx512_blocks;
mod kfused;
mod kquant;
mod panel;
mod panel512;

use std::arch::x86_64::*;
use std::array;

pub(super) use avx512::Avx512;
pub(super) use panel::{decode_rows, dot_tile};

/// [`decode_rows`] with the 16-lane decoders where a type has one (the 32-element block
/// types), the 8-lane ones otherwise.
pub(super) fn decode_rows_512(cpu: Avx2, wide: Avx512, ggml_type: GgmlType, rows: &[u8], out: &mut [f32]) -> bool {
    avx512_blocks::decode_rows(wide, ggml_type, rows, out) || decode_rows(cpu, ggml_type, rows, out)
}
pub(super) use panel512::{MAX_PANEL_ROWS, W_ROWS, panel_rows as panel512_rows, transpose_blocks};

use super::{OutColumns, Tile};
use crate::gguf::GgmlType;

/// Proof that this CPU has AVX2, FMA and F16C (only [`Avx2::detect`] makes one).
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    pub(super) fn detect() -> Option<Avx2> {
        let present =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        present.then_some(Avx2(()))
    }
}

/// Types with fused kernels (and AVX2 panel decoders).
pub(super) fn has_fused(ggml_type: GgmlType) -> bool {
    matches!(
        ggml_type,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// Types with an AVX-512 fused kernel (see [`fused_rows`]).
pub(super) fn has_fused_avx512(ggml_type: GgmlType) -> bool {
    avx512::has_fused(ggml_type)
}

/// Output columns `first_row..` for the rows of `tile`, with `weights` (whole rows of
/// `row_bytes`) decoded block by block in registers. `sums` is [`block_sums`] of all
/// activation rows. With `wide`, types with an AVX-512 kernel use it. Does nothing for types
/// without a fused kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_rows(
    _cpu: Avx2,
    wide: Option<Avx512>,
    ggml_type: GgmlType,
    weights: &[u8],
    row_bytes: usize,
    tile: Tile<'_>,
    sums: &[f32],
    first_row: usize,
    out: &mut OutColumns<'_>,
) {
    let args = (weights, row_bytes, tile, sums, first_row, out);
    if let Some(wide) = wide
        && avx512::has_fused(ggml_type)
    {
        return avx512::fused_rows(wide, ggml_type, args);
    }
    // SAFETY: the `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe {
        match ggml_type {
            GgmlType::Q4_0 => fused_tile::<18, Q4_0>(args),
            GgmlType::Q4_1 => fused_tile::<20, Q4_1>(args),
            GgmlType::Q5_0 => fused_tile::<22, Q5_0>(args),
            GgmlType::Q8_0 => fused_tile::<34, Q8_0>(args),
            GgmlType::Q4_K => kfused::kfused_tile::<144, kquant::Q4_K>(args),
            GgmlType::Q5_K => kfused::kfused_tile::<176, kquant::Q5_K>(args),
            GgmlType::Q6_K => kfused::kfused_tile::<210, kquant::Q6_K>(args),
            _ => {}
        }
    }
}

/// The activation block sums the fused kernel of `ggml_type` needs for its min term (empty
/// if none), `[n, cols / len]` for blocks of `len` = 32 elements (16 for Q6_K), each times
/// the factor of the type's min term: Q4_1 adds `m · Σx` per block; Q4_0 adds `d · (−8 Σx)`,
/// which spares subtracting 8 from every quant (Q5_0 likewise with 16, Q6_K with 32 and
/// `dl` per 16-element sub-block); Q4_K and Q5_K subtract `ml · Σx` per 32-element
/// sub-block.
pub(super) fn block_sums(ggml_type: GgmlType, x: &[f32], cols: usize) -> Vec<f32> {
    let (len, scale) = match ggml_type {
        GgmlType::Q4_1 => (32, 1.0),
        GgmlType::Q4_0 => (32, -8.0),
        GgmlType::Q5_0 => (32, -16.0),
        GgmlType::Q4_K | GgmlType::Q5_K => (32, -1.0),
        GgmlType::Q6_K => (16, -32.0),
        _ => return Vec::new(),
    };
    x.chunks_exact(cols).flat_map(|row| row.chunks_exact(len)).map(|block| scale * block.iter().sum::<f32>()).collect()
}

// ---------------------------------------------------------------------------------------------
// Fused kernels

/// Blocks whose scales are gathered and converted together (8 per F16C instruction) before
/// their quants are used: the per-block scale then costs one broadcast load.
pub(super) const SEG: usize = 64;

/// A block type with a fused kernel: `B` bytes per 32 weights; weight `j` of a block is
/// `d · (q[j] − OFFSET) + m` (`m` only if `HAS_MIN`).
pub(super) trait Fused<const B: usize> {
    const OFFSET: f32;
    const HAS_MIN: bool;
    /// Whether the fused kernel adds `factor · (scaled block sum of x)`: for a min `m`, and
    /// for an offset (`−OFFSET · d · Σx`, with the `−OFFSET` in the sums).
    const MIN_TERM: bool = Self::HAS_MIN || Self::OFFSET != 0.0;

    /// The f16 bits of `d` and of the min term's factor (`m`, or `d` for an offset).
    fn scale_bits(block: &[u8; B]) -> [u16; 2];

    /// The raw quants as floats (offset not applied): `q[k]` holds elements `8k..8k + 8`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn quants(block: &[u8; B]) -> [__m256; 4];
}

#[allow(non_camel_case_types)]
pub(super) struct Q4_0;
#[allow(non_camel_case_types)]
pub(super) struct Q4_1;
#[allow(non_camel_case_types)]
pub(super) struct Q5_0;
#[allow(non_camel_case_types)]
pub(super) struct Q8_0;

/// f16 `d`, 16 bytes of nibbles (low: elements 0..16, high: 16..32); weight (q − 8) · d.
impl Fused<18> for Q4_0 {
    const OFFSET: f32 = 8.0;
    const HAS_MIN: bool = false;

    fn scale_bits(block: &[u8; 18]) -> [u16; 2] {
        let d = u16::from_le_bytes([block[0], block[1]]);
        [d, d]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 18]) -> [__m256; 4] {
        let [_, _, qs @ ..] = block;
        let q = nibbles(qs);
        [_mm256_cvtepi32_ps(q[0]), _mm256_cvtepi32_ps(q[1]), _mm256_cvtepi32_ps(q[2]), _mm256_cvtepi32_ps(q[3])]
    }
}

/// f16 `d`, f16 `m`, 16 bytes of nibbles; weight q · d + m.
impl Fused<20> for Q4_1 {
    const OFFSET: f32 = 0.0;
    const HAS_MIN: bool = true;

    fn scale_bits(block: &[u8; 20]) -> [u16; 2] {
        [u16::from_le_bytes([block[0], block[1]]), u16::from_le_bytes([block[2], block[3]])]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 20]) -> [__m256; 4] {
        let [_, _, _, _, qs @ ..] = block;
        let q = nibbles(qs);
        [_mm256_cvtepi32_ps(q[0]), _mm256_cvtepi32_ps(q[1]), _mm256_cvtepi32_ps(q[2]), _mm256_cvtepi32_ps(q[3])]
    }
}

/// f16 `d`, a little-endian u32 of fifth bits (bit `e` for element `e`), 16 bytes of
/// nibbles as in Q4_0; weight (q − 16) · d.
impl Fused<22> for Q5_0 {
    const OFFSET: f32 = 16.0;
    const HAS_MIN: bool = false;

    fn scale_bits(block: &[u8; 22]) -> [u16; 2] {
        let d = u16::from_le_bytes([block[0], block[1]]);
        [d, d]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 22]) -> [__m256; 4] {
        let [_, _, h0, h1, h2, h3, qs @ ..] = block;
        let q = nibbles(qs);
        let qh = _mm256_set1_epi32(i32::from_le_bytes([*h0, *h1, *h2, *h3]));
        // Bit e of qh onto bit 4 of lane e: shift `qh << 4` right by e, except for elements
        // 24..32, whose bits `<< 4` would shift out of the lane.
        let shl4 = _mm256_slli_epi32::<4>(qh);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let high = |from: __m256i, shift: i32| {
            let v = _mm256_srlv_epi32(from, _mm256_add_epi32(lanes, _mm256_set1_epi32(shift)));
            _mm256_and_si256(v, _mm256_set1_epi32(0x10))
        };
        let with_high = |k: usize, h: __m256i| _mm256_cvtepi32_ps(_mm256_or_si256(q[k], h));
        [
            with_high(0, high(shl4, 0)),
            with_high(1, high(shl4, 8)),
            with_high(2, high(shl4, 16)),
            with_high(3, high(qh, 20)),
        ]
    }
}

/// f16 `d`, 32 signed bytes; weight q · d.
impl Fused<34> for Q8_0 {
    const OFFSET: f32 = 0.0;
    const HAS_MIN: bool = false;

    fn scale_bits(block: &[u8; 34]) -> [u16; 2] {
        [u16::from_le_bytes([block[0], block[1]]), 0]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 34]) -> [__m256; 4] {
        let [_, _, qs @ ..] = block;
        let (q8, _) = qs.as_chunks::<8>();
        let q = |k: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes_to_vec(&q8[k])));
        [q(0), q(1), q(2), q(3)]
    }
}

/// Converts the scales of up to [`SEG`] blocks into `d[b]`, and `m[b]` for the min term
/// (entries past the segment are left over from earlier calls).
///
/// The f16 bits are packed into 64-bit integers with integer instructions (idle in these
/// kernels) and moved to vector registers 4 at a time. Storing them as `u16` and reloading
/// as vectors would stall on store-to-load forwarding, and inserting them one by one into a
/// vector would take a shuffle per block from the busy vector ports.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn segment_scales<const B: usize, K: Fused<B>>(seg: &[[u8; B]], d: &mut [f32; SEG], m: &mut [f32; SEG]) {
    let d8 = d.as_chunks_mut::<8>().0;
    let m8 = m.as_chunks_mut::<8>().0;
    for ((group, d8), m8) in seg.chunks(8).zip(d8).zip(m8) {
        let mut bits = [[0u64; 2]; 2]; // [d, m][blocks 0..4, 4..8]
        for (j, block) in group.iter().enumerate() {
            let [db, mb] = K::scale_bits(block);
            bits[0][j / 4] |= u64::from(db) << (16 * (j % 4));
            bits[1][j / 4] |= u64::from(mb) << (16 * (j % 4));
        }
        let to_f32 = |[lo, hi]: [u64; 2]| _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64));
        store8(d8, to_f32(bits[0]));
        if K::MIN_TERM {
            store8(m8, to_f32(bits[1]));
        }
    }
}

/// The 32 nibbles of a Q4 block as u32 lanes, in element order: the low nibbles of bytes
/// 0..8 and 8..16, then the high nibbles of the same bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> [__m256i; 4] {
    let (halves, _) = qs.as_chunks::<8>();
    let a = _mm256_cvtepu8_epi32(bytes_to_vec(&halves[0]));
    let b = _mm256_cvtepu8_epi32(bytes_to_vec(&halves[1]));
    let low = _mm256_set1_epi32(0x0F);
    // The lanes hold whole bytes, so a shift by 4 leaves exactly the high nibble.
    [_mm256_and_si256(a, low), _mm256_and_si256(b, low), _mm256_srli_epi32::<4>(a), _mm256_srli_epi32::<4>(b)]
}

/// Eight bytes in the low half of a vector (no pointer access, so no `unsafe`).
#[inline]
#[target_feature(enable = "avx2")]
fn bytes_to_vec(bytes: &[u8; 8]) -> __m128i {
    _mm_cvtsi64_si128(i64::from_le_bytes(*bytes))
}

#[inline]
#[target_feature(enable = "avx")]
pub(super) fn load8(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable floats; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx")]
pub(super) fn store8(v: &mut [f32; 8], value: __m256) {
    // SAFETY: `v` is 8 writable floats; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), value) }
}

#[inline]
#[target_feature(enable = "avx")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `Σ_l x[l] · w[l / 8][l % 8]` as 8 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot32(x: &[f32; 32], w: &[__m256; 4]) -> __m256 {
    let (x8, _) = x.as_chunks::<8>();
    let s = _mm256_mul_ps(load8(&x8[0]), w[0]);
    let s = _mm256_fmadd_ps(load8(&x8[1]), w[1], s);
    let s = _mm256_fmadd_ps(load8(&x8[2]), w[2], s);
    _mm256_fmadd_ps(load8(&x8[3]), w[3], s)
}

type FusedArgs<'a, 'o> = (&'a [u8], usize, Tile<'a>, &'a [f32], usize, &'a mut OutColumns<'o>);

/// Picks the kernel for the tile's row count. With one or two rows, each output has too few
/// independent accumulator chains to hide the FMA latency, so blocks alternate between two.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fused_tile<const B: usize, K: Fused<B>>(args: FusedArgs<'_, '_>) {
    // SAFETY: same CPU features as this function.
    unsafe {
        match args.2.len {
            1 => fused::<B, K, 1, 2>(args),
            2 => fused::<B, K, 2, 2>(args),
            3 => fused::<B, K, 3, 1>(args),
            _ => fused::<B, K, 4, 1>(args),
        }
    }
}

/// The fused kernel for `NX` activation rows with `U` accumulator sets: per weight row,
/// `Σ_blocks d · (x · q) + Σ_blocks factor · sum`, the first in 8 lanes per accumulator, the
/// second as a dot product of the converted factors with the block sums.
///
/// Scales are converted for up to [`SEG`] blocks at a time: several whole rows when rows are
/// short (the per-row work is then a small part of a row of 18 blocks), else a row piecewise.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fused<const B: usize, K: Fused<B>, const NX: usize, const U: usize>(
    (weights, row_bytes, tile, sums, first_row, out): FusedArgs<'_, '_>,
) {
    let blocks = row_bytes / B;
    let x: [&[[f32; 32]]; NX] = array::from_fn(|i| &tile.row(i).as_chunks::<32>().0[..blocks]);
    let sums: [&[f32]; NX] =
        array::from_fn(|i| if K::MIN_TERM { &sums[(tile.first + i) * blocks..][..blocks] } else { &[] });
    let all = weights.as_chunks::<B>().0;
    let (mut d, mut m) = ([0f32; SEG], [0f32; SEG]);
    let group_rows = (SEG / blocks.max(1)).max(1);
    for (g, group) in all.chunks(group_rows * blocks).enumerate() {
        if blocks <= SEG {
            segment_scales::<B, K>(group, &mut d, &mut m);
        }
        for (rr, row) in group.chunks_exact(blocks).enumerate() {
            let mut acc = Acc::<NX, U>::new();
            if blocks <= SEG {
                let at = rr * blocks;
                // SAFETY: same CPU features as this function.
                unsafe { acc.add::<B, K>(row, &d[at..at + blocks], &m[at..at + blocks], x, sums, 0) };
            } else {
                for (s, seg) in row.chunks(SEG).enumerate() {
                    segment_scales::<B, K>(seg, &mut d, &mut m);
                    // SAFETY: same CPU features as this function.
                    unsafe { acc.add::<B, K>(seg, &d[..seg.len()], &m[..seg.len()], x, sums, s * SEG) };
                }
            }
            for (i, total) in acc.totals().into_iter().enumerate() {
                out.put(tile.first + i, first_row + g * group_rows + rr, total);
            }
        }
    }
}

/// The accumulators of one weight row with `NX` activation rows.
struct Acc<const NX: usize, const U: usize> {
    /// `d · (x · q)` terms, `U` sets used round-robin over blocks.
    dots: [[__m256; NX]; U],
    /// Min terms: vector part and the tail of fewer than 8 blocks.
    mins: [__m256; NX],
    min_tail: [f32; NX],
}

impl<const NX: usize, const U: usize> Acc<NX, U> {
    #[inline]
    #[target_feature(enable = "avx")]
    fn new() -> Self {
        Acc { dots: [[_mm256_setzero_ps(); NX]; U], mins: [_mm256_setzero_ps(); NX], min_tail: [0.0; NX] }
    }

    /// Adds `blocks` (the blocks `start..` of a row) with their converted scales `d`, `m`.
    ///
    /// Always inlined (hence no `target_feature` of its own, which forbids that): it is the
    /// hot loop, and out of line its accumulators would go through memory.
    ///
    /// # Safety
    /// Only to be called from functions with AVX2, FMA and F16C enabled, on a CPU with them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // indices keep arrays in registers
    unsafe fn add<const B: usize, K: Fused<B>>(
        &mut self,
        blocks: &[[u8; B]],
        d: &[f32],
        m: &[f32],
        x: [&[[f32; 32]]; NX],
        sums: [&[f32]; NX],
        start: usize,
    ) {
        let len = blocks.len();
        let (d, m) = (&d[..len], &m[..len]);
        let mut xs: [&[[f32; 32]]; NX] = [&[]; NX];
        for i in 0..NX {
            xs[i] = &x[i][start..start + len];
        }
        // SAFETY: the caller runs with AVX2, FMA and F16C (this function's contract).
        unsafe {
            // Full groups of U blocks with the sets in turn (a loop with a constant bound, so
            // the sets stay in registers), then the remaining blocks into set 0.
            let (groups, tail) = blocks.as_chunks::<U>();
            for (g, group) in groups.iter().enumerate() {
                for (u, block) in group.iter().enumerate() {
                    let k = g * U + u;
                    let q = K::quants(block);
                    let dv = _mm256_set1_ps(d[k]);
                    for i in 0..NX {
                        self.dots[u][i] = _mm256_fmadd_ps(dv, dot32(&xs[i][k], &q), self.dots[u][i]);
                    }
                }
            }
            for (t, block) in tail.iter().enumerate() {
                let k = groups.len() * U + t;
                let q = K::quants(block);
                let dv = _mm256_set1_ps(d[k]);
                for i in 0..NX {
                    self.dots[0][i] = _mm256_fmadd_ps(dv, dot32(&xs[i][k], &q), self.dots[0][i]);
                }
            }
            if K::MIN_TERM {
                let (m8, m_tail) = m.as_chunks::<8>();
                for i in 0..NX {
                    let (s8, s_tail) = sums[i][start..start + len].as_chunks::<8>();
                    for (mv, sv) in m8.iter().zip(s8) {
                        self.mins[i] = _mm256_fmadd_ps(load8(mv), load8(sv), self.mins[i]);
                    }
                    for (a, b) in m_tail.iter().zip(s_tail) {
                        self.min_tail[i] += a * b;
                    }
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx")]
    fn totals(&self) -> [f32; NX] {
        let mut totals = [0f32; NX];
        for (i, t) in totals.iter_mut().enumerate() {
            let mut total = self.mins[i];
            for set in &self.dots {
                total = _mm256_add_ps(total, set[i]);
            }
            *t = hsum(total) + self.min_tail[i];
        }
        totals
    }
}
