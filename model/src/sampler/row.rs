//! Whole-row passes of the sampler over one logits row: clean-up, maximum, argmax, a
//! vectorizable `exp`, blocked sums and candidate gathering. They run over the full
//! vocabulary on every token, so each is written to vectorize or to skip most of the row, and
//! each gives bit-identical results from run to run (a seeded stream depends on them).

use std::cmp::Ordering;

/// Keeps adjusted logits inside the domain the rest of the module assumes: no NaN, no +inf
/// (an infinite maximum would turn `x - max` into NaN).
pub(super) fn clean(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x.min(f32::MAX)
    }
}

/// Lowest id holding the maximum of a NaN-free row (0 when nothing beats -inf). Two
/// vectorized passes, the second stopping at the first block that holds the maximum: about
/// four times faster than one scalar compare-and-branch pass.
pub(super) fn argmax(row: &[f32]) -> usize {
    let max = row_max(row);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    for (b, block) in row.chunks(64).enumerate() {
        if block.iter().fold(false, |hit, &x| hit | (x == max)) {
            return b * 64 + block.iter().position(|&x| x == max).unwrap_or(0);
        }
    }
    0
}

/// Ignores NaN; -inf for an empty row. Written as a plain fold so that it vectorizes.
pub(super) fn row_max(row: &[f32]) -> f32 {
    row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// e^x, exact at 0, and 0 below -87 (so for -inf as well); about 1 ulp elsewhere in the
/// range used here (x <= 0). It is Cephes' `expf` with branch-free rounding, so that loops
/// over a whole row vectorize, and it is ours rather than libm's so that a seed's tokens do
/// not depend on the platform.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const EXP_POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let poly = EXP_POLY.iter().fold(0.0, |acc, &c| acc * r + c) * (r * r) + r + 1.0;
    let exponent = (shifted.to_bits() as i32 - 0x4B40_0000 + 127) << 23;
    let y = poly * f32::from_bits(exponent as u32);
    if x < -87.0 { 0.0 } else { y }
}

/// Elements per block of [`block_sums`]: small enough for f32 partial sums to stay exact to
/// about 1e-6, large enough that the per-block f64 work is negligible.
pub(super) const BLOCK: usize = 256;

/// Sum of `f` over `row`, block by block, each block's sum pushed to `blocks`. Within a
/// block eight f32 lanes accumulate, which vectorizes; the fixed shape keeps the result
/// bit-identical from run to run.
pub(super) fn block_sums(row: &[f32], blocks: &mut Vec<f64>, f: impl Fn(f32) -> f32) -> f64 {
    blocks.clear();
    let mut total = 0.0;
    for block in row.chunks(BLOCK) {
        let mut lanes = [0f32; 8];
        let mut chunks = block.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += f(x);
            }
        }
        let mut sum: f64 = lanes.iter().map(|&l| f64::from(l)).sum();
        for &x in chunks.remainder() {
            sum += f64::from(f(x));
        }
        blocks.push(sum);
        total += sum;
    }
    total
}

/// Most likely first, then lowest id: a total order on NaN-free values, so selections and
/// sorts under it give the same result whatever algorithm std uses.
pub(super) fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// Replaces `cands` with every (id, logit) of the row at or above `cutoff`: always a prefix
/// of the row in [`by_value_desc`] order, which is what makes gathering by threshold give
/// the same answers as sorting the whole vocabulary.
pub(super) fn gather(cands: &mut Vec<(u32, f32)>, row: &[f32], cutoff: f32) {
    cands.clear();
    // Most blocks hold no candidate; testing a block first keeps the common case branch-free.
    for (b, block) in row.chunks(64).enumerate() {
        if block.iter().fold(false, |hit, &x| hit | (x >= cutoff)) {
            let ids = (b * 64) as u32..;
            cands.extend(ids.zip(block.iter().copied()).filter(|&(_, x)| x >= cutoff));
        }
    }
}

/// Logit distances below the maximum tried in turn when gathering candidates; the last
/// gathers everything. Most rows need only the first.
pub(super) const REACH: [f32; 5] = [8.0, 16.0, 32.0, 64.0, f32::INFINITY];

/// The `n` best (id, logit) entries of a NaN-free row, sorted by [`by_value_desc`].
pub(super) fn top_n(cands: &mut Vec<(u32, f32)>, row: &[f32], max: f32, n: usize) {
    for reach in REACH {
        gather(cands, row, max - reach);
        if cands.len() >= n {
            break;
        }
    }
    if n > 0 && n < cands.len() {
        cands.select_nth_unstable_by(n - 1, by_value_desc);
        cands.truncate(n);
    }
    cands.sort_unstable_by(by_value_desc);
}

/// Cleans the row in place (see [`clean`]) and returns its maximum (-inf if none is finite).
pub(super) fn sanitize(row: &mut [f32]) -> f32 {
    // Read-only and in eight lanes so that it vectorizes, since repairs are rare: `x * 0` is
    // NaN exactly for NaN and infinities (-inf is then cleaned for nothing, harmlessly).
    let mut maxes = [f32::NEG_INFINITY; 8];
    let mut probes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for ((m, p), &x) in maxes.iter_mut().zip(&mut probes).zip(chunk) {
            *m = m.max(x);
            *p += x * 0.0;
        }
    }
    let rest = chunks.remainder();
    if probes.iter().chain(rest).all(|x| x.is_finite()) {
        return row_max(rest).max(row_max(&maxes));
    }
    for x in row.iter_mut() {
        *x = clean(*x);
    }
    row_max(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Irregular values in [-10, 10) with many exact duplicates, to exercise tie-breaking.
    fn coarse_row(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 40) % 200) as f32 * 0.1 - 10.0
            })
            .collect()
    }

    #[test]
    fn exp_is_accurate_and_exact_where_it_matters() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-88.0), 0.0);
        for i in 0..=200_000 {
            let x = -87.0 + i as f32 * (97.0 / 200_000.0);
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(
                (got - want).abs() <= want * 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn argmax_finds_the_first_maximum_in_any_block() {
        let mut row = vec![0.0f32; 1000];
        row[700] = 2.0;
        row[900] = 2.0;
        row[130] = 1.9;
        assert_eq!(argmax(&row), 700);
        row[65] = 2.0;
        assert_eq!(argmax(&row), 65);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 100]), 0);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[-0.0, 0.0]), 0);
    }

    #[test]
    fn top_n_equals_a_full_sort() {
        for seed in 0..5 {
            let mut row = coarse_row(3000, seed);
            row[17] = f32::NEG_INFINITY;
            row[2999] = 40.0;
            let mut sorted: Vec<(u32, f32)> = (0..).zip(row.iter().copied()).collect();
            sorted.sort_by(by_value_desc);
            let max = row_max(&row);
            let mut cands = Vec::new();
            for n in [1, 2, 7, 64, 500, 2999, 3000] {
                top_n(&mut cands, &row, max, n);
                assert_eq!(cands[..], sorted[..n], "seed {seed}, n {n}");
            }
        }
    }

    #[test]
    fn block_sums_add_up() {
        let row = coarse_row(49_152 + 13, 9);
        let mut blocks = Vec::new();
        let total = block_sums(&row, &mut blocks, |x| exp(x - 10.0));
        let want: f64 = row.iter().map(|&x| (f64::from(x) - 10.0).exp()).sum();
        assert!((total - want).abs() < want * 1e-6, "{total} vs {want}");
        assert_eq!(blocks.len(), row.len().div_ceil(BLOCK));
        assert_eq!(blocks.iter().sum::<f64>(), total);
    }

    #[test]
    fn sanitize_repairs_only_what_is_broken() {
        let mut row = vec![
            1.0,
            f32::NAN,
            3.0,
            f32::INFINITY,
            2.0,
            -1.0,
            0.0,
            5.0,
            4.0,
            f32::NAN,
        ];
        assert_eq!(sanitize(&mut row), f32::MAX);
        assert_eq!(row[1], f32::NEG_INFINITY);
        assert_eq!(row[3], f32::MAX);
        assert_eq!(row[9], f32::NEG_INFINITY);
        // NaN in the tail that does not fill a lane group is seen too.
        let mut row = vec![0.5; 11];
        row[10] = f32::NAN;
        assert_eq!(sanitize(&mut row), 0.5);
        assert_eq!(row[10], f32::NEG_INFINITY);
        let mut row = vec![f32::NEG_INFINITY, -3.0, 7.0];
        assert_eq!(sanitize(&mut row), 7.0);
        assert_eq!(row, [f32::NEG_INFINITY, -3.0, 7.0]);
        assert_eq!(sanitize(&mut []), f32::NEG_INFINITY);
    }
}
