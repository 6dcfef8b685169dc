//! The integer tile kernel of the 32-element types: up to [`TILE_X`] activation rows against
//! whole weight rows, one 32-element chunk at a time, in three instruction flavours chosen
//! at run time ([`Int8Cpu`]): `vpdpbusd` from AVX-VNNI or from AVX-512 VNNI (one instruction
//! for 32 multiply-adds into eight 32-bit sums), or AVX2's `vpmaddubsw` + `vpmaddwd`
//! elsewhere. The K-quants go to [`ktile`], whatever the flavour.
//!
//! Both take unsigned × signed bytes. Unsigned weight quants (≤ 63) meet the signed
//! activation quants directly; Q8_0's signed quants go through the sign trick (`|w|` against
//! `x · sign(w)`), which is exact because activations stay within ±127 — that also keeps
//! `vpmaddubsw`'s 16-bit pair sums (at most 2 · 128 · 127) from saturating.

use std::arch::x86_64::*;
use std::array;

use super::super::avx2::hsum;
use super::super::{OutColumns, TILE_X};
use super::{Q8Activations, Q8Row, ktile};
use super::blocks::{self, Int8Block};
use crate::gguf::GgmlType;

/// Proof that this CPU has AVX2, FMA and F16C, and which integer dot instruction it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::quant_matmul) enum Int8Cpu {
    Avx2,
    AvxVnni,
    Avx512Vnni,
}

impl Int8Cpu {
    /// The best flavour this CPU has (`None` without AVX2, FMA and F16C).
    pub(in crate::quant_matmul) fn detect() -> Option<Int8Cpu> {
        Int8Cpu::available().last().copied()
    }

    /// Every flavour this CPU can run, slowest first (the tests run each).
    pub(in crate::quant_matmul) fn available() -> Vec<Int8Cpu> {
        let base =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        if !base {
            return Vec::new();
        }
        let mut all = vec![Int8Cpu::Avx2];
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            all.push(Int8Cpu::Avx512Vnni);
        }
        // Last: the VEX encoding, where both exist, is the one without the AVX-512 state.
        if is_x86_feature_detected!("avxvnni") {
            all.push(Int8Cpu::AvxVnni);
        }
        all
    }
}

/// Eight 32-bit sums of 4 consecutive products of unsigned `u` and signed `s` bytes.
trait Dot {
    /// # Safety
    /// The CPU must have the flavour's instructions.
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
}

struct Madd;
struct AvxVnni;
struct Avx512Vnni;

impl Dot for Madd {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

impl Dot for AvxVnni {
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
}

impl Dot for Avx512Vnni {
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// Output columns `first_row..` for activation rows `first_x..first_x + len` (`len` ≤
/// [`TILE_X`]), with `weights` whole rows of `row_bytes` of `ggml_type`. Does nothing for
/// types without an integer kernel ([`super::has_int8`]).
#[allow(clippy::too_many_arguments)]
pub(in crate::quant_matmul) fn tile_rows(
    cpu: Int8Cpu,
    ggml_type: GgmlType,
    weights: &[u8],
    row_bytes: usize,
    acts: &Q8Activations,
    first_x: usize,
    len: usize,
    first_row: usize,
    out: &mut OutColumns<'_>,
) {
    assert!((1..=TILE_X).contains(&len) && first_x + len <= acts.rows(), "activation tile inside the batch");
    let args = Args { weights, row_bytes, acts, first_x, len, first_row, out };
    // SAFETY: an `Int8Cpu` is made only by `detect`/`available`, after checking its flavour's
    // features (and AVX2, FMA and F16C for all).
    unsafe {
        match cpu {
            Int8Cpu::Avx2 => by_type_avx2(ggml_type, args),
            Int8Cpu::AvxVnni => by_type_avxvnni(ggml_type, args),
            Int8Cpu::Avx512Vnni => by_type_avx512vnni(ggml_type, args),
        }
    }
}

pub(super) struct Args<'a, 'o> {
    pub weights: &'a [u8],
    pub row_bytes: usize,
    pub acts: &'a Q8Activations,
    pub first_x: usize,
    pub len: usize,
    pub first_row: usize,
    pub out: &'a mut OutColumns<'o>,
}

/// One monomorphised entry per flavour, each compiled with its features so that the
/// generic body and the `Dot` inside it inline.
macro_rules! by_type {
    ($name:ident, $dot:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(ggml_type: GgmlType, a: Args<'_, '_>) {
            // SAFETY: this function's features are the flavour's.
            unsafe {
                match ggml_type {
                    GgmlType::Q4_0 => by_len::<18, blocks::Q4_0, $dot>(a),
                    GgmlType::Q4_1 => by_len::<20, blocks::Q4_1, $dot>(a),
                    GgmlType::Q5_0 => by_len::<22, blocks::Q5_0, $dot>(a),
                    GgmlType::Q8_0 => by_len::<34, blocks::Q8_0, $dot>(a),
                    // `vpmaddwd` applies the K-quants' integer scales: no `vpdpbusd` there.
                    GgmlType::Q4_K => ktile::by_len::<144, ktile::Q4K>(a),
                    GgmlType::Q5_K => ktile::by_len::<176, ktile::Q5K>(a),
                    GgmlType::Q6_K => ktile::by_len::<210, ktile::Q6K>(a),
                    _ => {}
                }
            }
        }
    };
}

by_type!(by_type_avx2, Madd, "avx2,fma,f16c");
by_type!(by_type_avxvnni, AvxVnni, "avx2,fma,f16c,avxvnni");
by_type!(by_type_avx512vnni, Avx512Vnni, "avx2,fma,f16c,avx512vnni,avx512vl");

/// The tile's row count as a constant, so the per-row loops unroll.
#[inline(always)]
unsafe fn by_len<const B: usize, W: Int8Block<B>, D: Dot>(a: Args<'_, '_>) {
    // SAFETY: the caller's features.
    unsafe {
        match a.len {
            1 => tile::<B, W, D, 1>(a),
            2 => tile::<B, W, D, 2>(a),
            3 => tile::<B, W, D, 3>(a),
            _ => tile::<B, W, D, 4>(a),
        }
    }
}

#[inline(always)]
unsafe fn tile<const B: usize, W: Int8Block<B>, D: Dot, const R: usize>(a: Args<'_, '_>) {
    let rows: [Q8Row<'_>; R] = array::from_fn(|i| a.acts.row(a.first_x + i));
    let chunks = a.row_bytes / B * W::CHUNKS;
    assert!(a.acts.block() == 32, "activations rounded per 32 elements");
    assert!(rows.iter().all(|r| r.quants.len() == 32 * chunks && r.scales.len() == chunks && r.sums.len() == chunks));
    // SAFETY: the caller's features include AVX2, FMA and F16C and the flavour's dot
    // instruction; every chunk index `ci` < `chunks` (blocks × CHUNKS), so the unchecked
    // reads stay inside the rows asserted above.
    unsafe {
        for (r, row) in a.weights.chunks_exact(a.row_bytes).enumerate() {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [0.0f32; R];
            let (blocks, _) = row.as_chunks::<B>();
            for (b, block) in blocks.iter().enumerate() {
                let header = W::header(block);
                for c in 0..W::CHUNKS {
                    let ci = b * W::CHUNKS + c;
                    let (q, scale) = W::chunk(block, &header, c);
                    let (u, sign) = if W::SIGNED { (_mm256_sign_epi8(q, q), q) } else { (q, _mm256_setzero_si256()) };
                    for i in 0..R {
                        let Q8Row { quants, scales, sums, .. } = rows[i];
                        let x = _mm256_loadu_si256(quants.as_ptr().add(32 * ci).cast());
                        let x = if W::SIGNED { _mm256_sign_epi8(x, sign) } else { x };
                        let dots = _mm256_cvtepi32_ps(D::dot(u, x));
                        let dx = *scales.get_unchecked(ci);
                        acc[i] = _mm256_fmadd_ps(dots, _mm256_mul_ps(scale.a, _mm256_set1_ps(dx)), acc[i]);
                        if W::HAS_MIN {
                            mins[i] += scale.o * *sums.get_unchecked(ci);
                        }
                    }
                }
            }
            for i in 0..a.len.min(R) {
                a.out.put(a.first_x + i, a.first_row + r, hsum(acc[i]) + mins[i]);
            }
        }
    }
}
