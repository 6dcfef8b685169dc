//! The paged KV cache under a model: a prefix shared by two sequences takes no new blocks
//! (the pool's used-block count), and the sequences sharing it decode like unshared ones, on
//! the host cache (flex at f32), device tensors on a CPU (flex at f16: burn's attention over
//! gathered blocks) and wgpu's software adapter (our kernel reading through the block table).

use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::kv_cache::{KV_BLOCK_TOKENS, SequenceCache};
use stellarchat_model::model::LoadOptions;
use stellarchat_model::synthetic::{SyntheticPreset, SyntheticWeights};
use stellarchat_model::transformer::{ForwardChunk, Transformer};
use stellarchat_model::weights::WeightFormat;

const B: usize = KV_BLOCK_TOKENS;

fn load(spec: DeviceSpec, precision: Precision) -> Transformer {
    let config = SyntheticPreset::Tiny.config();
    let source = SyntheticWeights::new(config.clone(), 11);
    let device = spec.open().expect("device");
    let options = LoadOptions { device: spec, precision, weights: WeightFormat::Dense, ..Default::default() };
    let plan = options.plan(spec).expect("plan");
    Transformer::load(config, &source, &device, plan, &mut |_, _| {}).expect("load")
}

fn tokens(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + seed * 101 + 5) % 256).collect()
}

/// Feeds `inputs[i]` to `caches[i]`, all in one batched forward; the logits of every position.
fn step(model: &Transformer, caches: &mut [&mut SequenceCache], inputs: &[&[u32]]) -> Vec<Vec<f32>> {
    let mut chunks: Vec<ForwardChunk<'_>> = caches
        .iter_mut()
        .zip(inputs)
        .map(|(cache, tokens)| ForwardChunk { cache: &mut **cache, tokens, all_logits: true })
        .collect();
    let logits = model.forward(&mut chunks).expect("forward");
    (0..inputs.len()).map(|i| logits.chunk(i).to_vec()).collect()
}

/// Two sequences share the first two blocks of a retained cache and continue with their own
/// suffixes and decode steps, batched together; two fresh caches run the same tokens from
/// scratch. Returns the largest logit difference.
fn shared_prefix_decodes_like_unshared(model: &Transformer) -> f32 {
    let pool = model.kv_pool().clone();
    let prefix = tokens(1, 2 * B + 20);
    let mut retained = model.new_cache();
    step(model, &mut [&mut retained], &[&prefix]);
    assert_eq!(pool.used_blocks(), 3);
    retained.truncate(2 * B);
    assert_eq!(pool.used_blocks(), 2, "the partial block is released");

    let (mut a, mut b) = (model.new_cache(), model.new_cache());
    a.share_prefix(&retained, 2 * B);
    b.share_prefix(&retained, 2 * B);
    assert_eq!(pool.used_blocks(), 2, "a shared prefix takes no new block");
    assert_eq!((a.blocks(), b.blocks()), (retained.blocks(), retained.blocks()));
    assert_eq!(pool.holders(retained.blocks()[0]), 3);
    drop(retained);
    assert_eq!(pool.used_blocks(), 2, "the sequences still hold the prefix");

    let (mut fresh_a, mut fresh_b) = (model.new_cache(), model.new_cache());
    let (suffix_a, suffix_b) = (tokens(2, 60), tokens(3, 3));
    let full = |suffix: &[u32]| [&prefix[..2 * B], suffix].concat();
    let mut worst = 0f32;
    let mut compare = |got: Vec<Vec<f32>>, want: Vec<Vec<f32>>, rows: [usize; 2]| {
        for ((g, w), rows) in got.iter().zip(&want).zip(rows) {
            // The reference's chunk may be longer: compare its last `rows` rows.
            let w = &w[w.len() - g.len()..];
            assert_eq!(g.len(), rows * 256);
            worst = g.iter().zip(w).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        }
    };
    let got = step(model, &mut [&mut a, &mut b], &[&suffix_a, &suffix_b]);
    let want = step(model, &mut [&mut fresh_a, &mut fresh_b], &[&full(&suffix_a), &full(&suffix_b)]);
    compare(got, want, [suffix_a.len(), suffix_b.len()]);
    assert_eq!(pool.used_blocks(), 2 + 1 + 1 + 3 + 3, "each sequence writes its own tail blocks");
    // Decode steps past a block edge for `a` (2 B + 60 + 10 > 3 B).
    for t in 0..10u32 {
        let input = [(t * 13 + 1) % 256];
        let got = step(model, &mut [&mut a, &mut b], &[&input, &input]);
        let want = step(model, &mut [&mut fresh_a, &mut fresh_b], &[&input, &input]);
        compare(got, want, [1, 1]);
    }
    drop((a, b, fresh_a, fresh_b));
    assert_eq!(pool.used_blocks(), 0, "every block is freed with its last holder");
    worst
}

#[test]
fn a_shared_prefix_decodes_like_an_unshared_one_on_the_host_cache() {
    let worst = shared_prefix_decodes_like_unshared(&load(DeviceSpec::Flex, Precision::F32));
    assert!(worst < 1e-3, "{worst}");
}

#[test]
fn a_shared_prefix_decodes_like_an_unshared_one_on_device_tensors() {
    let worst = shared_prefix_decodes_like_unshared(&load(DeviceSpec::Flex, Precision::F16));
    assert!(worst < 5e-2, "{worst}");
}

#[cfg(feature = "wgpu")]
#[test]
fn a_shared_prefix_decodes_like_an_unshared_one_on_the_wgpu_software_adapter() {
    let spec = DeviceSpec::Wgpu { adapter: stellarchat_model::device::WgpuAdapter::Cpu };
    let worst = shared_prefix_decodes_like_unshared(&load(spec, Precision::F32));
    assert!(worst < 1e-3, "{worst}");
}
