//! The transformer on a tiny random-weight model: shapes, cached decode against a full
//! forward, and a batch of unequal sequences against each sequence alone.

use stellarchat_model::config::ModelConfig;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::layers::ComputePlan;
use stellarchat_model::model::LoadOptions;
use stellarchat_model::synthetic::{SyntheticPreset, SyntheticWeights};
use stellarchat_model::transformer::{ForwardChunk, Transformer};
use stellarchat_model::weights::WeightFormat;

fn load(spec: DeviceSpec, precision: Precision, weights: WeightFormat) -> Transformer {
    let config = SyntheticPreset::Tiny.config();
    let source = SyntheticWeights::new(config.clone(), 7);
    let device = spec.open().expect("device");
    let plan = LoadOptions { device: spec, precision, weights, ..Default::default() }.plan(spec).expect("plan");
    Transformer::load(config, &source, &device, plan, &mut |_, _| {}).expect("load")
}

fn tiny_model(spec: DeviceSpec) -> Transformer {
    load(spec, Precision::F32, WeightFormat::Dense)
}

/// Every CPU backend compiled in, with both weight formats.
fn models() -> Vec<(String, Transformer)> {
    let mut specs = vec![DeviceSpec::Flex];
    if cfg!(feature = "ndarray") {
        specs.push(DeviceSpec::NdArray);
    }
    specs
        .into_iter()
        .flat_map(|spec| {
            [WeightFormat::Dense, WeightFormat::Quantized]
                .map(|format| (format!("{spec}/{format}"), load(spec, Precision::F32, format)))
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const PROMPT: [u32; 9] = [3, 17, 200, 45, 9, 128, 77, 1, 250];

#[test]
fn forward_returns_one_row_per_chunk_or_per_token() {
    for (_name, model) in models() {
        let vocab = model.config().vocab_size;
        let mut cache = model.new_cache();
        let logits = model
            .forward(&mut [ForwardChunk { cache: &mut cache, tokens: &PROMPT, all_logits: true }])
            .expect("forward");
        assert_eq!(logits.chunk(0).len(), PROMPT.len() * vocab);
        assert_eq!(cache.len(), PROMPT.len());
        assert!(logits.chunk(0).iter().all(|v| v.is_finite()));
        let logits = model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &[5], all_logits: false }]).expect("step");
        assert_eq!(logits.chunk(0).len(), vocab);
        assert_eq!(cache.len(), PROMPT.len() + 1);
    }
}

#[test]
fn cached_incremental_decode_matches_full_forward() {
    for (spec, model) in models() {
        let vocab = model.config().vocab_size;
        let mut full_cache = model.new_cache();
        let full = model
            .forward(&mut [ForwardChunk { cache: &mut full_cache, tokens: &PROMPT, all_logits: true }])
            .expect("full");

        // Prefill in two chunks, then decode the rest one token at a time.
        let mut cache = model.new_cache();
        let mut rows = Vec::new();
        for part in [&PROMPT[..3], &PROMPT[3..5]] {
            let l = model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: part, all_logits: true }]).expect("chunk");
            rows.extend_from_slice(l.chunk(0));
        }
        for token in &PROMPT[5..] {
            let l = model
                .forward(&mut [ForwardChunk { cache: &mut cache, tokens: std::slice::from_ref(token), all_logits: false }])
                .expect("decode");
            rows.extend_from_slice(l.last_row(0));
        }
        assert_eq!(rows.len(), PROMPT.len() * vocab);
        let diff = max_abs_diff(&rows, full.chunk(0));
        assert!(diff < 1e-4, "{spec}: cached decode differs from the full forward by {diff}");
    }
}

#[test]
fn batch_of_unequal_sequences_matches_each_alone() {
    for (spec, model) in models() {
        let prompts: [&[u32]; 3] = [&PROMPT, &[42, 43], &[100, 101, 102, 103, 104]];
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut cache = model.new_cache();
                let l = model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: p, all_logits: false }]).expect("alone");
                l.last_row(0).to_vec()
            })
            .collect();

        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        // A prefix of the first sequence goes in first, so the batch mixes a continuing
        // sequence (cached prefix) with fresh ones.
        model.forward(&mut [ForwardChunk { cache: &mut caches[0], tokens: &PROMPT[..4], all_logits: false }]).expect("pre");
        let mut chunks: Vec<ForwardChunk> = caches
            .iter_mut()
            .zip(prompts)
            .enumerate()
            .map(|(i, (cache, p))| ForwardChunk { cache, tokens: if i == 0 { &p[4..] } else { p }, all_logits: false })
            .collect();
        let batched = model.forward(&mut chunks).expect("batch");
        for (i, expected) in alone.iter().enumerate() {
            let diff = max_abs_diff(batched.last_row(i), expected);
            assert!(diff < 1e-4, "{spec}: sequence {i} differs in the batch by {diff}");
        }
    }
}

#[test]
fn out_of_vocabulary_token_is_an_error_not_a_panic() {
    let model = tiny_model(DeviceSpec::Flex);
    let mut cache = model.new_cache();
    let err = model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &[9999], all_logits: false }]);
    assert!(err.is_err());
}

#[test]
fn f16_forward_stays_close_to_f32() {
    let f32_model = load(DeviceSpec::Flex, Precision::F32, WeightFormat::Dense);
    let f16_model = load(DeviceSpec::Flex, Precision::F16, WeightFormat::Dense);
    let run = |m: &Transformer| {
        let mut cache = m.new_cache();
        m.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &PROMPT, all_logits: false }]).expect("fwd").last_row(0).to_vec()
    };
    let diff = max_abs_diff(&run(&f32_model), &run(&f16_model));
    assert!(diff < 0.1, "f16 logits differ from f32 by {diff}");
}

#[test]
fn quantized_and_dense_weights_give_the_same_logits() {
    let dense = load(DeviceSpec::Flex, Precision::F32, WeightFormat::Dense);
    let quantized = load(DeviceSpec::Flex, Precision::F32, WeightFormat::Quantized);
    let run = |m: &Transformer| {
        let mut cache = m.new_cache();
        m.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &PROMPT, all_logits: true }]).expect("fwd").chunk(0).to_vec()
    };
    let diff = max_abs_diff(&run(&dense), &run(&quantized));
    assert!(diff < 1e-4, "quantized-format logits differ from dense by {diff}");
}

#[test]
fn quantized_weights_with_f16_activations_are_refused_at_load() {
    let options = LoadOptions { device: DeviceSpec::Flex, precision: Precision::F16, weights: WeightFormat::Quantized, ..Default::default() };
    let err = options.plan(DeviceSpec::Flex).expect_err("quantized weights need f32");
    assert_eq!(err.kind(), "unsupported_dtype");
}

/// On a GPU, quantized weights are the device kernels' (`gpu_quant`), in f16 or f32, with
/// attention on the device; 8-bit activations stay a CPU feature.
#[cfg(feature = "wgpu")]
#[test]
fn quantized_weights_on_a_gpu_plan_device_kernels() {
    let spec = DeviceSpec::Wgpu { adapter: stellarchat_model::device::WgpuAdapter::Cpu };
    for precision in [Precision::F32, Precision::F16] {
        let options = LoadOptions { device: spec, precision, weights: WeightFormat::Quantized, ..Default::default() };
        let plan = options.plan(spec).expect("quantized weights on a GPU");
        assert!(plan.quantized_linear && !plan.host_attention, "{precision:?}: {plan:?}");
    }
    let auto = LoadOptions { device: spec, precision: Precision::F32, ..Default::default() };
    assert!(!auto.plan(spec).expect("plan").quantized_linear, "auto keeps dense weights on GPUs for now");
    let q8 = LoadOptions {
        device: spec,
        precision: Precision::F32,
        weights: WeightFormat::Quantized,
        activations: stellarchat_model::weights::ActivationFormat::Q8,
    };
    assert_eq!(q8.plan(spec).expect_err("q8 activations on a GPU").kind(), "unsupported_dtype");
}

/// Separate q/k/v and gate/up weights joined into one matrix at load (the default plan) give
/// the logits of the separate products, with either weight format, with and without q/k/v
/// biases, in a batch that mixes a prefill with a decode step.
#[test]
fn fused_projections_give_the_logits_of_separate_ones() {
    for qkv_bias in [false, true] {
        let config = ModelConfig { qkv_bias, ..SyntheticPreset::Tiny.config() };
        let source = SyntheticWeights::new(config.clone(), 11);
        let device = DeviceSpec::Flex.open().expect("device");
        for weights in [WeightFormat::Dense, WeightFormat::Quantized] {
            let options = LoadOptions { device: DeviceSpec::Flex, precision: Precision::F32, weights, ..Default::default() };
            let plan = options.plan(DeviceSpec::Flex).expect("plan");
            assert!(plan.fuse_projections, "fusing is the default");
            let load = |fuse_projections| {
                let plan = ComputePlan { fuse_projections, ..plan };
                Transformer::load(config.clone(), &source, &device, plan, &mut |_, _| {}).expect("load")
            };
            let (fused, separate) = (load(true), load(false));
            let layers = config.num_layers;
            assert_eq!(fused.fused_blocks(), (layers, layers), "{weights}: every block fused");
            assert_eq!(separate.fused_blocks(), (0, 0), "{weights}: no block fused");
            let run = |m: &Transformer| {
                let (mut a, mut b) = (m.new_cache(), m.new_cache());
                m.forward(&mut [ForwardChunk { cache: &mut a, tokens: &PROMPT[..4], all_logits: false }]).expect("pre");
                let mut chunks = [
                    ForwardChunk { cache: &mut a, tokens: &PROMPT[4..5], all_logits: false },
                    ForwardChunk { cache: &mut b, tokens: &PROMPT, all_logits: true },
                ];
                let logits = m.forward(&mut chunks).expect("batch");
                [logits.chunk(0), logits.chunk(1)].concat()
            };
            let diff = max_abs_diff(&run(&fused), &run(&separate));
            assert!(diff < 1e-5, "{weights}, qkv_bias {qkv_bias}: fused logits differ from separate by {diff}");
        }
    }
}

/// A quantized synthetic model (`synthetic:<preset>@<type>`) computes with one set of
/// weights: dense loading dequantizes the very blocks the quantized kernels multiply.
#[test]
fn quantized_synthetic_models_load_the_same_weights_dense_and_quantized() {
    use stellarchat_model::synthetic::SyntheticQuant;
    for quant in [SyntheticQuant::Q4_0, SyntheticQuant::Q8_0, SyntheticQuant::Q4KM] {
        let config = SyntheticPreset::Tiny.config();
        let source = SyntheticWeights::quantized(config.clone(), 7, Some(quant));
        let run = |weights: WeightFormat| {
            let plan = LoadOptions { weights, ..Default::default() }.plan(DeviceSpec::Flex).expect("plan");
            let model = Transformer::load(config.clone(), &source, &DeviceSpec::Flex.open().expect("flex"), plan, &mut |_, _| {})
                .expect("load");
            let mut cache = model.new_cache();
            model.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &PROMPT, all_logits: true }]).expect("fwd").chunk(0).to_vec()
        };
        let (dense, quantized) = (run(WeightFormat::Dense), run(WeightFormat::Quantized));
        let f32_logits = load(DeviceSpec::Flex, Precision::F32, WeightFormat::Dense);
        let mut cache = f32_logits.new_cache();
        let f32_logits =
            f32_logits.forward(&mut [ForwardChunk { cache: &mut cache, tokens: &PROMPT, all_logits: true }]).expect("fwd").chunk(0).to_vec();
        let diff = max_abs_diff(&dense, &quantized);
        assert!(diff < 1e-4, "{quant:?}: dense and quantized loads differ by {diff}");
        assert!(max_abs_diff(&dense, &f32_logits) > 1e-3, "{quant:?}: the blocks are not the f32 model's weights");
    }
}

/// On a GPU, decode steps attend through `gpu_attention` (grouped heads read in place); the
/// tiny model (4 query heads over 2 key/value heads) must decode as with burn's attention on
/// repeated heads, step after step, in a batch of two sequences.
#[cfg(feature = "wgpu")]
#[test]
fn device_attention_kernel_decodes_like_burns_attention() {
    let spec = DeviceSpec::Wgpu { adapter: stellarchat_model::device::WgpuAdapter::Cpu };
    let Ok(device) = spec.open() else {
        assert!(cfg!(feature = "vulkan"), "lavapipe must open in a wgpu-only build");
        return;
    };
    let config = SyntheticPreset::Tiny.config();
    let source = SyntheticWeights::new(config.clone(), 7);
    let plan = LoadOptions { device: spec, ..Default::default() }.plan(spec).expect("plan");
    assert!(plan.attention_kernel && plan.repeat_kv_heads, "{plan:?}");
    let decode = |plan: ComputePlan| {
        let model = Transformer::load(config.clone(), &source, &device, plan, &mut |_, _| {}).expect("load");
        let (mut a, mut b) = (model.new_cache(), model.new_cache());
        let mut logits = Vec::new();
        model.forward(&mut [ForwardChunk { cache: &mut a, tokens: &PROMPT, all_logits: false }]).expect("prefill a");
        model.forward(&mut [ForwardChunk { cache: &mut b, tokens: &PROMPT[..4], all_logits: false }]).expect("prefill b");
        for step in 0..4u32 {
            let (ta, tb) = ([10 + step], [100 + step, 7]);
            let out = model
                .forward(&mut [
                    ForwardChunk { cache: &mut a, tokens: &ta, all_logits: false },
                    ForwardChunk { cache: &mut b, tokens: &tb, all_logits: true },
                ])
                .expect("decode");
            logits.extend_from_slice(out.chunk(0));
            logits.extend_from_slice(out.chunk(1));
        }
        logits
    };
    let kernel = decode(plan);
    let burn = decode(ComputePlan { attention_kernel: false, ..plan });
    let diff = max_abs_diff(&kernel, &burn);
    assert!(diff < 1e-4, "kernel and burn attention differ by {diff}");
}
