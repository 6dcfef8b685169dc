//! The stable, bounded driver of the fuzz bodies, for `just test`: every committed file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, then a fixed number of seeded
//! mutations of them (bit flips, interesting integers, inserted, deleted and duplicated
//! ranges, splices of two files), the same mutations on every run. It is no substitute for
//! the coverage-guided `just fuzz`, which finds new inputs; it keeps what that found (and
//! the code paths the corpus reaches) from regressing, on the stable toolchain and in the
//! normal test build.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use crate::rng::SplitMix64;

/// Mutated inputs are cut to this length: the bodies' cost grows with the input.
const MAX_INPUT_BYTES: usize = 64 * 1024;
const INTERESTING_BYTES: &[u8] = b"\x00\xff\x7f\x80\x01{}[]\"\\<>%#:,\n";
const INTERESTING_U64: &[u64] = &[0, 1, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 32, u64::MAX, 1 << 62];

/// The repository's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The committed inputs of `target`: its corpus, then its regressions, sorted by path.
pub fn committed_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            inputs.push((path, bytes));
        }
    }
    inputs
}

/// What a replay ran: the committed inputs and the mutated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounts {
    pub committed: usize,
    pub mutated: usize,
}

/// Runs `body` on every committed input of `target`, then on `mutations` seeded mutations
/// of them. A panic is reported with the input's origin, and the input is written to a
/// file in the temporary directory (to commit under `fuzz/regressions/<target>/` once
/// fixed). Panics if the target has no corpus (a misspelt name would otherwise test nothing).
/// `STELLARCHAT_FUZZ_MUTATIONS=N` sets the count instead: a longer run on stable.
pub fn replay(target: &str, body: fn(&[u8]), mutations: usize) -> ReplayCounts {
    let mutations = std::env::var("STELLARCHAT_FUZZ_MUTATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(mutations);
    let inputs = committed_inputs(target);
    assert!(!inputs.is_empty(), "no corpus in {}", fuzz_dir().join("corpus").join(target).display());
    for (path, bytes) in &inputs {
        run_one(target, body, bytes, &path.display().to_string());
    }
    let mut rng = SplitMix64(0x5eed ^ target.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for i in 0..mutations {
        let (path, base) = &inputs[i % inputs.len()];
        let other = &inputs[pick(&mut rng, inputs.len())].1;
        let mutated = mutate(base, other, &mut rng);
        run_one(target, body, &mutated, &format!("mutation #{i} of {}", path.display()));
    }
    ReplayCounts { committed: inputs.len(), mutated: mutations }
}

fn run_one(target: &str, body: fn(&[u8]), input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
        let saved = save_failure(target, input);
        panic!("fuzz target `{target}` panicked on {origin}; the input is in {}", saved.display());
    }
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let path = std::env::temp_dir().join(format!("stellarchat-fuzz-{target}-{hash:016x}"));
    // Best effort: the panic message says where it would be even if writing fails.
    let _ = std::fs::write(&path, input);
    path
}

fn pick(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// One to four random edits of `base`; `other` is the second parent of a splice.
pub fn mutate(base: &[u8], other: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + pick(rng, 4) {
        edit(&mut out, other, rng);
    }
    out.truncate(MAX_INPUT_BYTES);
    out
}

fn edit(out: &mut Vec<u8>, other: &[u8], rng: &mut SplitMix64) {
    let len = out.len();
    let at = pick(rng, len + 1);
    match pick(rng, 8) {
        0 if len > 0 => out[at.min(len - 1)] ^= 1 << pick(rng, 8),
        1 if len > 0 => out[at.min(len - 1)] = INTERESTING_BYTES[pick(rng, INTERESTING_BYTES.len())],
        2 => {
            let value = INTERESTING_U64[pick(rng, INTERESTING_U64.len())].to_le_bytes();
            let width = [1, 2, 4, 8][pick(rng, 4)];
            let end = (at + width).min(len);
            out.splice(at..end, value[..end - at].iter().copied());
        }
        3 => {
            let n = 1 + pick(rng, 8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            out.splice(at..at, bytes);
        }
        4 => {
            let end = (at + 1 + pick(rng, 64)).min(len);
            out.drain(at..end);
        }
        5 if len > 0 => {
            let start = pick(rng, len);
            let end = (start + 1 + pick(rng, 256)).min(len);
            let chunk = out[start..end].to_vec();
            out.splice(at..at, chunk);
        }
        6 => {
            let from = pick(rng, other.len() + 1);
            out.truncate(at);
            out.extend_from_slice(&other[from..]);
        }
        _ => out.truncate(at),
    }
}
