//! AVX-512 variant of the fused kernel for the 32-element block types (Q4_0, Q4_1, Q5_0,
//! Q8_0; see the AVX2 `fused` in the parent module), for CPUs that have AVX-512F.
//!
//! Why: in decode steps of the usual `Q4_K_M` files of small models these types do most of
//! the work (rows of 576 or 640 are not whole K-quant super-blocks, so llama-quantize falls
//! back to Q5_0/Q8_0, and Gemma 3's tied 262 144-row output head is Q8_0), and at one
//! activation row the kernel is bound by decoding the quants, not by memory. A block is two
//! 16-lane vectors instead of four 8-lane ones: half the widening loads, conversions and
//! multiply-adds. Q5_0's fifth bits go in with a masked OR straight from the block's 32-bit
//! word (one mask register per half) instead of a variable shift per vector.

use std::arch::x86_64::*;
use std::array;

use super::{Fused, FusedArgs, Q4_0, Q4_1, Q5_0, Q8_0, SEG, hsum, load8};
use crate::gguf::GgmlType;

/// Types with this kernel.
pub(super) fn has_fused(ggml_type: GgmlType) -> bool {
    matches!(ggml_type, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0)
}

/// The kernel for `ggml_type` (nothing for other types).
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn fused_rows(ggml_type: GgmlType, args: FusedArgs<'_, '_>) {
    // SAFETY: same CPU features as this function.
    unsafe {
        match ggml_type {
            GgmlType::Q4_0 => fused_tile::<18, Q4_0>(args),
            GgmlType::Q4_1 => fused_tile::<20, Q4_1>(args),
            GgmlType::Q5_0 => fused_tile::<22, Q5_0>(args),
            GgmlType::Q8_0 => fused_tile::<34, Q8_0>(args),
            _ => {}
        }
    }
}

/// The AVX2 panel decoder (`panel::decode_blocks`) with 16-lane vectors, for these types;
/// false (and nothing written) for others. Bit-exact with `gguf::dequant`: the same
/// operations, unfused. A prefill decodes every weight row into the panel once per call
/// (7 % of a SmolLM2 Q4_K_M prefill profile with the 8-lane decoder).
pub(super) fn decode_rows(_cpu: super::Avx512, ggml_type: GgmlType, rows: &[u8], out: &mut [f32]) -> bool {
    // SAFETY: the `Avx512` token proves the CPU has AVX-512F, AVX2, FMA and F16C.
    unsafe {
        match ggml_type {
            GgmlType::Q4_0 => decode_blocks::<18, Q4_0>(rows, out),
            GgmlType::Q4_1 => decode_blocks::<20, Q4_1>(rows, out),
            GgmlType::Q5_0 => decode_blocks::<22, Q5_0>(rows, out),
            GgmlType::Q8_0 => decode_blocks::<34, Q8_0>(rows, out),
            _ => return false,
        }
    }
    true
}

/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn decode_blocks<const B: usize, K: Quants512<B>>(rows: &[u8], out: &mut [f32]) {
    let (mut d, mut m) = ([0f32; SEG], [0f32; SEG]);
    let offset = _mm512_set1_ps(K::OFFSET);
    for (seg, out) in rows.as_chunks::<B>().0.chunks(SEG).zip(out.chunks_mut(SEG * 32)) {
        segment_scales16::<B, K>(seg, &mut d, &mut m);
        for (b, (block, o)) in seg.iter().zip(out.as_chunks_mut::<32>().0).enumerate() {
            // SAFETY: same CPU features as this function.
            let q = unsafe { K::quants16(block) };
            let (dv, mv) = (_mm512_set1_ps(d[b]), _mm512_set1_ps(m[b]));
            for (o, q) in o.as_chunks_mut::<16>().0.iter_mut().zip(q) {
                // (q − offset) · d, then + m for Q4_1, as the reference computes it.
                let q = if K::OFFSET != 0.0 { _mm512_sub_ps(q, offset) } else { q };
                let v = _mm512_mul_ps(q, dv);
                let v = if K::HAS_MIN { _mm512_add_ps(v, mv) } else { v };
                // SAFETY: `o` is 16 writable floats; `storeu` has no alignment requirement.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
            }
        }
    }
}

/// A block type's raw quants (offset not applied) in two 16-lane vectors: elements 0..16
/// and 16..32.
trait Quants512<const B: usize>: Fused<B> {
    /// # Safety
    /// The CPU must have AVX-512F.
    unsafe fn quants16(block: &[u8; B]) -> [__m512; 2];
}

impl Quants512<18> for Q4_0 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 18]) -> [__m512; 2] {
        let [_, _, qs @ ..] = block;
        nibble_halves(qs)
    }
}

impl Quants512<20> for Q4_1 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 20]) -> [__m512; 2] {
        let [_, _, _, _, qs @ ..] = block;
        nibble_halves(qs)
    }
}

impl Quants512<22> for Q5_0 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 22]) -> [__m512; 2] {
        let [_, _, h0, h1, h2, h3, qs @ ..] = block;
        let qh = u32::from_le_bytes([*h0, *h1, *h2, *h3]);
        let v = u8x16(qs);
        let (low, high) = (_mm512_and_si512(v, _mm512_set1_epi32(0x0F)), _mm512_srli_epi32::<4>(v));
        // Bit e of qh is bit 4 of element e: lane e of the low half, lane e − 16 of the high.
        let bit4 = _mm512_set1_epi32(0x10);
        let low = _mm512_mask_or_epi32(low, qh as u16, low, bit4);
        let high = _mm512_mask_or_epi32(high, (qh >> 16) as u16, high, bit4);
        [_mm512_cvtepi32_ps(low), _mm512_cvtepi32_ps(high)]
    }
}

impl Quants512<34> for Q8_0 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 34]) -> [__m512; 2] {
        let [_, _, qs @ ..] = block;
        let (q16, _) = qs.as_chunks::<16>();
        let signed = |bytes: &[u8; 16]| {
            // SAFETY: `bytes` is 16 readable bytes; `loadu` has no alignment requirement.
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }))
        };
        [signed(&q16[0]), signed(&q16[1])]
    }
}

/// The 32 nibbles of a Q4 block: low nibbles (elements 0..16), high nibbles (16..32).
#[inline]
#[target_feature(enable = "avx512f")]
fn nibble_halves(qs: &[u8; 16]) -> [__m512; 2] {
    let v = u8x16(qs);
    let low = _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
    // The lanes hold whole bytes, so a shift by 4 leaves exactly the high nibble.
    [_mm512_cvtepi32_ps(low), _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v))]
}

/// The AVX2 `segment_scales` with gathers: converts the scales of up to [`SEG`] blocks into
/// `d[b]`, and the min term's factor into `m[b]` (entries past the segment are left over).
///
/// Every type here starts its blocks with the f16 `d` (Q4_1: then the f16 `m`), so one 32-bit
/// gather per 16 blocks reads both, in place of 16 scalar byte loads, shifts and ORs per
/// scale (a fifth of the kernel's time in a SmolLM2 Q4_K_M decode profile).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn segment_scales16<const B: usize, K: Fused<B>>(seg: &[[u8; B]], d: &mut [f32; SEG], m: &mut [f32; SEG]) {
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(B as i32),
    );
    let (d16, _) = d.as_chunks_mut::<16>();
    let (m16, _) = m.as_chunks_mut::<16>();
    for ((group, d16), m16) in seg.chunks(16).zip(d16).zip(m16) {
        let mask = (((1u32 << group.len()) - 1) & 0xFFFF) as __mmask16;
        // SAFETY: the unmasked lanes read the first 4 bytes of the group's blocks (every
        // block is at least 18 bytes); masked lanes read nothing.
        let words =
            unsafe { _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, offsets, group.as_ptr().cast()) };
        let low = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words));
        // SAFETY: `d16` is 16 writable floats; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(d16.as_mut_ptr(), low) };
        if K::MIN_TERM {
            let factor =
                if K::HAS_MIN { _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(words))) } else { low };
            // SAFETY: as above, for `m16`.
            unsafe { _mm512_storeu_ps(m16.as_mut_ptr(), factor) };
        }
    }
}

/// Sixteen bytes as u32 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn u8x16(bytes: &[u8; 16]) -> __m512i {
    // SAFETY: `bytes` is 16 readable bytes; `loadu` has no alignment requirement.
    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load16(v: &[f32; 16]) -> __m512 {
    // SAFETY: `v` is 16 readable floats; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

/// Picks the kernel for the tile's row count: at one or two rows blocks alternate between two
/// accumulator sets, to hide the multiply-add latency.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn fused_tile<const B: usize, K: Quants512<B>>(args: FusedArgs<'_, '_>) {
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

/// The AVX2 `fused` with 16 lanes: scales converted [`SEG`] blocks at a time (several short
/// rows together, long rows piecewise), `d · (x · q)` per block in 512-bit accumulators, the
/// min/offset term as a dot product of the converted factors with the block sums.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn fused<const B: usize, K: Quants512<B>, const NX: usize, const U: usize>(
    (weights, row_bytes, tile, sums, first_row, out): FusedArgs<'_, '_>,
) {
    let blocks = row_bytes / B;
    let x: [&[[f32; 32]]; NX] = array::from_fn(|i| &tile.row(i).as_chunks::<32>().0[..blocks]);
    let sums: [&[f32]; NX] =
        array::from_fn(|i| if K::MIN_TERM { &sums[(tile.first + i) * blocks..][..blocks] } else { &[] });
    let all = weights.as_chunks::<B>().0;
    let (mut d, mut m) = ([0f32; SEG], [0f32; SEG]);
    let group_rows = (SEG / blocks.max(1)).max(1);
    let group_bytes = group_rows * blocks * B;
    for (g, group) in all.chunks(group_rows * blocks).enumerate() {
        prefetch(weights, (g + PREFETCH_GROUPS) * group_bytes, group_bytes);
        if blocks <= SEG {
            segment_scales16::<B, K>(group, &mut d, &mut m);
        }
        for (rr, row) in group.chunks_exact(blocks).enumerate() {
            let mut acc = Acc::<NX, U>::new();
            if blocks <= SEG {
                let at = rr * blocks;
                // SAFETY: same CPU features as this function.
                unsafe { acc.add::<B, K>(row, &d[at..at + blocks], &m[at..at + blocks], x, sums, 0) };
            } else {
                for (s, seg) in row.chunks(SEG).enumerate() {
                    segment_scales16::<B, K>(seg, &mut d, &mut m);
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

/// How many groups of rows ahead [`fused`] asks for the weights' cache lines. The profile of
/// a decode step had most of the kernel's time waiting on the scale gather, the first touch
/// of each block's line: the hardware prefetcher does not run far enough ahead of these
/// streams on its own.
const PREFETCH_GROUPS: usize = 2;

/// Asks for the cache lines of `bytes[from..from + len]` (what lies in `bytes`).
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch(bytes: &[u8], from: usize, len: usize) {
    let end = bytes.len().min(from.saturating_add(len));
    for at in (from..end).step_by(64) {
        // SAFETY: `at` is inside `bytes`; a prefetch reads nothing architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast()) };
    }
}

/// The accumulators of one weight row with `NX` activation rows.
struct Acc<const NX: usize, const U: usize> {
    /// `d · (x · q)` terms, `U` sets used round-robin over blocks.
    dots: [[__m512; NX]; U],
    /// Min terms: vector part (8 blocks a vector) and the tail of fewer than 8 blocks.
    mins: [__m256; NX],
    min_tail: [f32; NX],
}

impl<const NX: usize, const U: usize> Acc<NX, U> {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new() -> Self {
        Acc { dots: [[_mm512_setzero_ps(); NX]; U], mins: [_mm256_setzero_ps(); NX], min_tail: [0.0; NX] }
    }

    /// Adds `blocks` (the blocks `start..` of a row) with their converted scales `d`, `m`.
    ///
    /// Always inlined (so no `target_feature` of its own): out of line its accumulators would
    /// go through memory.
    ///
    /// # Safety
    /// Only to be called from functions with AVX-512F, AVX2, FMA and F16C enabled, on a CPU
    /// with them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // indices keep arrays in registers
    unsafe fn add<const B: usize, K: Quants512<B>>(
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
        // SAFETY: the caller runs with AVX-512F, AVX2, FMA and F16C (this function's contract).
        unsafe {
            let (groups, tail) = blocks.as_chunks::<U>();
            for (g, group) in groups.iter().enumerate() {
                for (u, block) in group.iter().enumerate() {
                    let k = g * U + u;
                    let q = K::quants16(block);
                    let dv = _mm512_set1_ps(d[k]);
                    for i in 0..NX {
                        self.dots[u][i] = _mm512_fmadd_ps(dv, dot32(&xs[i][k], &q), self.dots[u][i]);
                    }
                }
            }
            for (t, block) in tail.iter().enumerate() {
                let k = groups.len() * U + t;
                let q = K::quants16(block);
                let dv = _mm512_set1_ps(d[k]);
                for i in 0..NX {
                    self.dots[0][i] = _mm512_fmadd_ps(dv, dot32(&xs[i][k], &q), self.dots[0][i]);
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
    #[target_feature(enable = "avx512f")]
    fn totals(&self) -> [f32; NX] {
        let mut totals = [0f32; NX];
        for (i, t) in totals.iter_mut().enumerate() {
            let mut total = self.dots[0][i];
            for set in &self.dots[1..] {
                total = _mm512_add_ps(total, set[i]);
            }
            *t = _mm512_reduce_add_ps(total) + hsum(self.mins[i]) + self.min_tail[i];
        }
        totals
    }
}

/// `Σ_l x[l] · q[l / 16][l % 16]` as 16 partial sums.
#[inline]
#[target_feature(enable = "avx512f")]
fn dot32(x: &[f32; 32], q: &[__m512; 2]) -> __m512 {
    let (x16, _) = x.as_chunks::<16>();
    _mm512_fmadd_ps(load16(&x16[1]), q[1], _mm512_mul_ps(load16(&x16[0]), q[0]))
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgmlType;
    use crate::quant_matmul::tests::{Rng, random_matrix, random_x};
    use crate::quant_matmul::{QuantMatrix, Strategy};
    use crate::rng::SplitMix64;

    /// Probe, not a check (no wall-clock assertions): one activation row against Gemma 3's
    /// 2048 × 640 FFN shape and a 32768-row slice of its output head, AVX2 against AVX-512,
    /// alternating, best of 5 (`--lib avx512_blocks -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn avx2_against_avx512_timing() {
        if super::super::Avx512::detect().is_none() {
            eprintln!("no AVX-512 on this CPU");
            return;
        }
        let mut rng = Rng(SplitMix64(11));
        for t in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            for (rows, cols) in [(2048, 640), (32768, 640)] {
                let m = QuantMatrix::new(t, rows, cols, random_matrix(t, rows, cols, &mut rng)).expect("valid");
                let x = random_x(cols, &mut rng);
                let mut y = vec![0.0; rows];
                let mut best = [f64::MAX; 2];
                for _ in 0..5 {
                    for (k, s) in [Strategy::Avx2Fused, Strategy::Avx512Fused].into_iter().enumerate() {
                        let reps = (1 << 26) / (rows * cols);
                        let start = std::time::Instant::now();
                        for _ in 0..reps {
                            m.matmul_with(s, &x, 1, &mut y).expect("strategy available");
                        }
                        best[k] = best[k].min(start.elapsed().as_secs_f64() / reps as f64);
                    }
                }
                eprintln!(
                    "{t} {rows}×{cols} n=1: AVX2 {:.1} us, AVX-512 {:.1} us, ratio {:.2}",
                    best[0] * 1e6,
                    best[1] * 1e6,
                    best[1] / best[0]
                );
            }
        }
    }
}
