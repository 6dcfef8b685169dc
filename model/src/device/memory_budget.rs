//! The memory check before a model is loaded on a GPU: what its weights, KV cache and
//! workspace will take on the device ([`MemoryEstimate`], from the checkpoint's tensor table
//! and the compute plan, before anything is uploaded), whether that fits in what the device
//! has free ([`DeviceMemory`]), and how many KV-cache tokens fit beside them ([`fit`]).
//!
//! The least KV cache a model must have room for is one block ([`KV_BLOCK_TOKENS`]), not one
//! sequence of the full context: the context lengths of current models (32k–128k tokens)
//! would take more than a small GPU holds for one sequence alone, and refusing them would
//! make those models unusable there, while the engine admits requests only as their KV fits
//! the budget. A budget below the context length is logged as a warning.
//!
//! The KV cache is counted at its growth peak, not at the budget: the device pool grows by
//! copying, old and new alive together, and a pool of `L` blocks may briefly hold
//! [`growth_peak_blocks`]`(L) = L + ceil(L/2)` of them (see [`crate::kv_cache`]'s pool). So a
//! budget sized by the device is the largest whose peak fits in the share of the free memory
//! it may take, and a given budget is refused unless its peak fits.

use crate::arch::{Role, TensorDecl};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::kv_cache::{KV_BLOCK_TOKENS, growth_peak_blocks};
use crate::layers::ComputePlan;

use super::DeviceSpec;
use super::memory::{Bytes, DeviceMemory};

/// The share of the memory left after weights and workspace that a KV budget sized by the
/// device takes: the rest is headroom for the allocator's pools and padding, and for what
/// the estimate does not count.
pub const KV_FREE_FRACTION: f64 = 0.9;

/// What the engine will ask of the KV cache and the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRequest {
    /// The KV budget in tokens: exact, or the ceiling when `sized_by_device`.
    pub tokens: usize,
    /// Size the budget from the memory left (`--kv-cache-tokens` not given).
    pub sized_by_device: bool,
    pub max_prefill_tokens: usize,
    pub max_num_seqs: usize,
}

/// Bytes a model will take on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub kv_bytes_per_token: u64,
    pub workspace: u64,
}

/// The figures of a loaded model's memory check, for the log and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    pub capacity: Option<u64>,
    pub available: Option<u64>,
    pub weights: u64,
    pub workspace: u64,
    /// Bytes of the whole KV budget.
    pub kv_cache: u64,
    /// Bytes the KV pool holds at most while it grows (old and new pool alive during the
    /// copy): what the check counted for the KV cache.
    pub kv_growth_peak: u64,
    pub kv_tokens: usize,
}

/// The memory needed and available when a model does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub needed: u64,
    pub available: u64,
    pub kv_tokens: usize,
    /// The KV part of `needed`: the pool's growth peak for `kv_tokens`.
    pub kv_peak: u64,
}

/// Tokens a pool grown to hold `tokens` may hold at its growth peak ([`growth_peak_blocks`]).
pub fn kv_peak_tokens(tokens: usize) -> usize {
    growth_peak_blocks(tokens.div_ceil(KV_BLOCK_TOKENS)) * KV_BLOCK_TOKENS
}

/// The most blocks a budget may have whose growth peak stays within `blocks`.
fn largest_budget_blocks(blocks: usize) -> usize {
    // L + ceil(L/2) <= F for L <= 2F/3; budgets of 4 blocks or fewer do not grow.
    let mut budget = (blocks.saturating_mul(2) / 3).max(blocks.min(4));
    while growth_peak_blocks(budget + 1) <= blocks {
        budget += 1;
    }
    budget
}

fn float_bytes(plan: &ComputePlan) -> u64 {
    match plan.dtype {
        burn::tensor::FloatDType::F64 => 8,
        burn::tensor::FloatDType::F32 | burn::tensor::FloatDType::Flex32 => 4,
        _ => 2,
    }
}

impl MemoryEstimate {
    /// `stored(name)`: a tensor's type in the checkpoint (`None`: a float one);
    /// `device_blocks(type)`: whether the device keeps that type's blocks (`gpu_quant`).
    pub fn new(
        config: &ModelConfig,
        tensors: &[TensorDecl],
        stored: &dyn Fn(&str) -> Option<GgmlType>,
        device_blocks: &dyn Fn(GgmlType) -> bool,
        plan: &ComputePlan,
        request: &KvRequest,
    ) -> MemoryEstimate {
        let float = float_bytes(plan);
        let has_output = tensors.iter().any(|t| t.role == Role::Output);
        // A linear layer keeps its blocks when the plan and the device allow (the packed form
        // is the GGUF bytes in u32 words plus at most one word), else it is dense floats.
        let linear = |name: &str, elements: u64| match stored(name) {
            Some(t) if plan.quantized_linear && device_blocks(t) => {
                t.byte_size(elements as usize).map_or(elements * float, |b| (b as u64).div_ceil(4) * 4 + 4)
            }
            _ => elements * float,
        };
        let weights = tensors
            .iter()
            .map(|t| {
                let elements = t.dims.iter().product::<usize>() as u64;
                match t.role {
                    // Lookups read the host's copy.
                    Role::TokenEmbedding if has_output => 0,
                    // A tied output product uploads the table once more.
                    Role::TokenEmbedding => linear(&t.name, elements),
                    _ if t.dims.len() == 2 => linear(&t.name, elements),
                    // Norm gains, biases, RoPE factors.
                    _ => elements * float,
                }
            })
            .sum();
        let c = config;
        let (hidden, ff, heads, kv_heads, head_dim) =
            (c.hidden_size as u64, c.intermediate_size as u64, c.num_heads as u64, c.num_kv_heads as u64, c.head_dim as u64);
        let (context, vocab) = (c.context_length as u64, c.vocab_size as u64);
        // Workspace: the activations of the largest step, counted as if all were alive at once.
        // T = max_prefill_tokens + max_num_seqs (a prefill chunk beside one decode token per
        // running sequence), float = the plan's float size:
        //   activations  T · float · (4·hidden + 2·(heads + 2·kv_heads)·head_dim + 3·ff)
        //                (residual, its norm, attention output, projection output; q/k/v before
        //                and after RoPE; gate, up and their product)
        //   scores       T · heads · context · float (every token attending a full-length cache)
        //   repeated K/V 2 · heads · context · head_dim · float, where the backend's attention
        //                lacks grouped-query heads (`repeat_kv_heads`)
        //   logits       T · vocab · 4 (f32, every position: prompt logprobs)
        let tokens = (request.max_prefill_tokens + request.max_num_seqs) as u64;
        let activations = tokens * float * (4 * hidden + 2 * (heads + 2 * kv_heads) * head_dim + 3 * ff);
        let scores = tokens * heads * context * float;
        let repeated = if plan.repeat_kv_heads { 2 * heads * context * head_dim * float } else { 0 };
        let logits = tokens * vocab * 4;
        MemoryEstimate {
            weights,
            // Keys and values, every layer, in the plan's float type.
            kv_bytes_per_token: 2 * c.num_layers as u64 * kv_heads * head_dim * float,
            workspace: activations + scores + repeated + logits,
        }
    }
}

/// The KV budget in tokens that fits in `available` beside the weights and the workspace,
/// or what is missing. Unknown memory refuses nothing. The KV cache counts at its growth
/// peak ([`kv_peak_tokens`]). A budget sized by the device is the largest, in whole blocks,
/// whose peak takes at most [`KV_FREE_FRACTION`] of what is left, between one block and the
/// requested ceiling; a given budget's peak must fit whole.
pub fn fit(estimate: &MemoryEstimate, available: Option<u64>, request: &KvRequest) -> Result<usize, Shortfall> {
    let Some(available) = available else { return Ok(request.tokens) };
    let fixed = estimate.weights + estimate.workspace;
    let kv_peak = |tokens: usize| kv_peak_tokens(tokens) as u64 * estimate.kv_bytes_per_token;
    let least = if request.sized_by_device { KV_BLOCK_TOKENS.min(request.tokens) } else { request.tokens };
    let needed = fixed + kv_peak(least);
    if needed > available {
        return Err(Shortfall { needed, available, kv_tokens: least, kv_peak: kv_peak(least) });
    }
    if !request.sized_by_device {
        return Ok(request.tokens);
    }
    let spare = ((available - fixed) as f64 * KV_FREE_FRACTION) as u64;
    let fits = usize::try_from(spare / estimate.kv_bytes_per_token.max(1)).unwrap_or(usize::MAX);
    let blocks = largest_budget_blocks(fits / KV_BLOCK_TOKENS);
    Ok(blocks.saturating_mul(KV_BLOCK_TOKENS).clamp(least, request.tokens))
}

/// The memory check of a model about to load on `spec` (a resolved device): probes the
/// device (`limit`, `--gpu-memory-limit`, wins), estimates, logs the figures and refuses a
/// model that does not fit, before anything is allocated. Returns the KV budget in tokens and
/// the figures; CPU devices are not checked (`request.tokens`, no figures).
pub fn check(
    spec: DeviceSpec,
    limit: Option<u64>,
    config: &ModelConfig,
    plan: &ComputePlan,
    stored: &dyn Fn(&str) -> Option<GgmlType>,
    request: &KvRequest,
) -> Result<(usize, Option<MemoryReport>)> {
    if spec.is_cpu() {
        return Ok((request.tokens, None));
    }
    let tensors = config.family.family().tensors(config);
    let estimate = MemoryEstimate::new(config, &tensors, stored, &|t| device_keeps_blocks(spec, t), plan, request);
    let memory = DeviceMemory::probe(spec, limit);
    let kv_tokens = fit(&estimate, memory.available, request).map_err(|s| refusal(spec, &memory, &estimate, request, s))?;
    let report = MemoryReport {
        capacity: memory.capacity,
        available: memory.available,
        weights: estimate.weights,
        workspace: estimate.workspace,
        kv_cache: kv_tokens as u64 * estimate.kv_bytes_per_token,
        kv_growth_peak: kv_peak_tokens(kv_tokens) as u64 * estimate.kv_bytes_per_token,
        kv_tokens,
    };
    let show = |b: Option<u64>| b.map_or_else(|| "unknown".to_string(), |b| Bytes(b).to_string());
    tracing::info!(
        device = %spec,
        adapter = %memory.adapter,
        kind = %memory.kind,
        capacity = %show(memory.capacity),
        available = %show(memory.available),
        figures_from = %memory.source,
        weights = %Bytes(report.weights),
        workspace = %Bytes(report.workspace),
        kv_cache_tokens = kv_tokens,
        kv_cache = %Bytes(report.kv_cache),
        kv_growth_peak = %Bytes(report.kv_growth_peak),
        kv_sized_by_device = request.sized_by_device && memory.available.is_some(),
        "device memory"
    );
    if kv_tokens < config.context_length {
        tracing::warn!(
            kv_cache_tokens = kv_tokens,
            context_length = config.context_length,
            "the KV cache holds fewer tokens than one sequence of the model's full context"
        );
    }
    Ok((kv_tokens, Some(report)))
}

/// Logs what the device's allocator holds once the weights are loaded, beside the estimate
/// (before any KV cache or workspace exists), where the backend reports it.
pub fn log_after_load(report: &MemoryReport, device: &burn::tensor::Device) {
    if let Some(usage) = device.memory_pool_usage() {
        tracing::info!(
            estimated_weights = %Bytes(report.weights),
            in_use = %Bytes(usage.bytes_in_use),
            reserved = %Bytes(usage.bytes_reserved),
            "device memory after loading the weights"
        );
    }
}

fn device_keeps_blocks(spec: DeviceSpec, ggml_type: GgmlType) -> bool {
    #[cfg(feature = "gpu-kernels")]
    {
        spec.has_quantized_kernels() && crate::gpu_quant::DeviceQuantMatrix::supports(ggml_type)
    }
    #[cfg(not(feature = "gpu-kernels"))]
    {
        let _ = (spec, ggml_type);
        false
    }
}

fn refusal(spec: DeviceSpec, memory: &DeviceMemory, e: &MemoryEstimate, request: &KvRequest, s: Shortfall) -> ModelError {
    let advice = if request.sized_by_device {
        "use a smaller model or quantized weights (`--weights quantized`), lower --max-prefill-tokens or --max-num-seqs, or raise --gpu-memory-limit"
    } else {
        "lower --kv-cache-tokens (or leave it out to size the KV cache from the free memory), use a smaller model or quantized weights, or raise --gpu-memory-limit"
    };
    ModelError::DeviceMemory {
        device: spec.to_string(),
        adapter: memory.adapter.clone(),
        needed: s.needed,
        available: s.available,
        capacity: memory.capacity.unwrap_or(s.available),
        weights: e.weights,
        workspace: e.workspace,
        // The peak, so that the message's parts add up to what is needed.
        kv_cache: s.kv_peak,
        kv_tokens: s.kv_tokens,
        figures_from: memory.source.as_str().to_string(),
        advice: format!("the KV figure is its growth peak, old and new pool alive while it grows; {advice}"),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::FloatDType;

    use super::*;
    use crate::synthetic::SyntheticPreset;

    const MIB: u64 = 1 << 20;

    fn plan(dtype: FloatDType, quantized_linear: bool) -> ComputePlan {
        let mut plan = crate::model::LoadOptions::default().plan(DeviceSpec::Flex).expect("plan");
        plan.dtype = dtype;
        plan.quantized_linear = quantized_linear;
        plan.host_attention = false;
        plan.repeat_kv_heads = false;
        plan
    }

    fn request(tokens: usize, sized_by_device: bool) -> KvRequest {
        KvRequest { tokens, sized_by_device, max_prefill_tokens: 256, max_num_seqs: 16 }
    }

    fn estimate_of(preset: SyntheticPreset, plan: &ComputePlan, stored: &dyn Fn(&str) -> Option<GgmlType>) -> MemoryEstimate {
        let config = preset.config();
        let tensors = config.family.family().tensors(&config);
        MemoryEstimate::new(&config, &tensors, stored, &|t| t == GgmlType::Q8_0, plan, &request(65_536, true))
    }

    #[test]
    fn dense_weights_are_elements_times_the_float_size_without_the_looked_up_embedding() {
        let config = SyntheticPreset::Tiny.config();
        let tensors = config.family.family().tensors(&config);
        let elements = |skip_embedding: bool| -> u64 {
            let has_output = tensors.iter().any(|t| t.role == Role::Output);
            tensors
                .iter()
                .filter(|t| !(skip_embedding && has_output && t.role == Role::TokenEmbedding))
                .map(|t| t.dims.iter().product::<usize>() as u64)
                .sum()
        };
        let f32 = estimate_of(SyntheticPreset::Tiny, &plan(FloatDType::F32, false), &|_| None);
        let f16 = estimate_of(SyntheticPreset::Tiny, &plan(FloatDType::F16, false), &|_| None);
        assert_eq!(f32.weights, 4 * elements(true));
        assert_eq!(f16.weights, 2 * elements(true));
        let c = &config;
        assert_eq!(f32.kv_bytes_per_token, (2 * c.num_layers * c.num_kv_heads * c.head_dim * 4) as u64);
        assert_eq!(f16.kv_bytes_per_token * 2, f32.kv_bytes_per_token);
        assert!(f16.workspace < f32.workspace && f32.workspace > 0);
    }

    #[test]
    fn device_quantized_matrices_count_their_packed_blocks() {
        let dense = estimate_of(SyntheticPreset::Smollm2_135m, &plan(FloatDType::F32, true), &|_| None);
        let q8 = estimate_of(SyntheticPreset::Smollm2_135m, &plan(FloatDType::F32, true), &|_| Some(GgmlType::Q8_0));
        // Q8_0: 34 bytes per 32 weights against 128 as f32; norms stay f32.
        let ratio = q8.weights as f64 / dense.weights as f64;
        assert!((0.26..0.28).contains(&ratio), "Q8_0/f32 = {ratio}");
        // The plan decides: dense weights when it keeps no blocks, whatever the file holds.
        let unplanned = estimate_of(SyntheticPreset::Smollm2_135m, &plan(FloatDType::F32, false), &|_| Some(GgmlType::Q8_0));
        assert_eq!(unplanned.weights, dense.weights);
        // A type the device has no kernel for is dequantized.
        let q4k = estimate_of(SyntheticPreset::Smollm2_135m, &plan(FloatDType::F32, true), &|_| Some(GgmlType::Q4_K));
        assert_eq!(q4k.weights, dense.weights);
    }

    fn estimate(weights: u64, workspace: u64, per_token: u64) -> MemoryEstimate {
        MemoryEstimate { weights, kv_bytes_per_token: per_token, workspace }
    }

    #[test]
    fn unknown_memory_refuses_nothing() {
        assert_eq!(fit(&estimate(u64::MAX / 2, 0, 1), None, &request(4096, false)), Ok(4096));
        assert_eq!(fit(&estimate(u64::MAX / 2, 0, 1), None, &request(65_536, true)), Ok(65_536));
    }

    #[test]
    fn a_budget_sized_by_the_device_has_its_growth_peak_in_nine_tenths_of_what_is_left() {
        let e = estimate(600 * MIB, 100 * MIB, 64 * 1024);
        // 1000 MiB free: 300 MiB left, 270 MiB of it at 64 KiB a token = 4320 tokens = 67
        // blocks at the peak; 44 blocks peak at 44 + 22 = 66, 45 at 68.
        assert_eq!(fit(&e, Some(1000 * MIB), &request(65_536, true)), Ok(44 * 64));
        // The ceiling (the CPU default) still holds on a large device.
        assert_eq!(fit(&e, Some(1 << 40), &request(65_536, true)), Ok(65_536));
        // Room for one block but not for the headroom: one block.
        assert_eq!(fit(&e, Some(700 * MIB + 64 * 64 * 1024), &request(65_536, true)), Ok(64));
    }

    #[test]
    fn weights_and_workspace_beyond_the_memory_are_refused_with_the_numbers() {
        let e = estimate(600 * MIB, 100 * MIB, 64 * 1024);
        let s = fit(&e, Some(700 * MIB), &request(65_536, true)).expect_err("no room for one block");
        let one_block = 64 * 64 * 1024;
        assert_eq!(s, Shortfall { needed: 700 * MIB + one_block, available: 700 * MIB, kv_tokens: 64, kv_peak: one_block });
    }

    #[test]
    fn a_given_budget_must_fit_whole_at_its_growth_peak() {
        let e = estimate(600 * MIB, 100 * MIB, 64 * 1024);
        // 300 MiB left = 4800 tokens = 75 blocks: a 50-block budget peaks at 75.
        assert_eq!(fit(&e, Some(1000 * MIB), &request(3200, false)), Ok(3200));
        // One token more is a 51st block, peaking at 51 + 26 = 77 blocks.
        let s = fit(&e, Some(1000 * MIB), &request(3201, false)).expect_err("one token too many");
        assert_eq!((s.needed, s.kv_tokens, s.kv_peak), (700 * MIB + 77 * 64 * 64 * 1024, 3201, 77 * 64 * 64 * 1024));
    }

    /// Replays the device pool's growth (old and new pool alive during each copy) for a
    /// budget of `tokens` asked for one block at a time and returns its largest footprint.
    fn replayed_peak_bytes(e: &MemoryEstimate, tokens: usize) -> u64 {
        let device = burn::tensor::Device::flex();
        let shape = crate::kv_cache::KvShape { layers: 1, kv_heads: 1, head_dim: 1 };
        let pool = std::sync::Arc::new(crate::kv_cache::KvPool::new(shape, &device, FloatDType::F32, false, None));
        let blocks = tokens / KV_BLOCK_TOKENS;
        pool.set_growth_limit(blocks);
        let mut cache = crate::kv_cache::SequenceCache::new(pool.clone(), tokens);
        let mut peak = 0;
        for _ in 0..blocks {
            let before = pool.storage_blocks();
            cache.reserve(KV_BLOCK_TOKENS).expect("room");
            cache.advance(KV_BLOCK_TOKENS);
            let after = pool.storage_blocks();
            if after != before {
                peak = peak.max(before + after);
            }
        }
        (peak * KV_BLOCK_TOKENS) as u64 * e.kv_bytes_per_token
    }

    #[test]
    fn the_sized_budget_grows_within_the_memory_the_check_saw() {
        // A fake device limit: 1000 MiB with 700 MiB of weights and workspace.
        let e = estimate(600 * MIB, 100 * MIB, 64 * 1024);
        let available = 1000 * MIB;
        let room = ((available - 700 * MIB) as f64 * KV_FREE_FRACTION) as u64;
        // What the check before counting the peak admitted: 67 blocks, which double-capped
        // growth reaches from 64 (4 → … → 64 → 67): 131 blocks alive, ~524 MiB > 300 MiB left.
        let unpeaked = 67 * 64;
        let doubling_peak = (64 + 67) * 64 * e.kv_bytes_per_token;
        assert!(doubling_peak > available - 700 * MIB, "the old budget overshoots the device");
        // Now: the budget's real growth, replayed on a pool, stays within the room counted.
        let budget = fit(&e, Some(available), &request(65_536, true)).expect("fits");
        assert!(budget < unpeaked);
        let replayed = replayed_peak_bytes(&e, budget);
        assert!(replayed <= room, "growth peaks at {replayed} bytes, {room} were counted");
        assert_eq!(replayed, kv_peak_tokens(budget) as u64 * e.kv_bytes_per_token, "the bound is reached");
        // Across device sizes.
        for extra_mib in [5, 17, 64, 100, 300, 1000, 4000] {
            let available = 700 * MIB + extra_mib * MIB;
            let budget = fit(&e, Some(available), &request(1 << 20, true)).expect("fits");
            let room = ((available - 700 * MIB) as f64 * KV_FREE_FRACTION) as u64;
            if budget > 64 {
                assert!(replayed_peak_bytes(&e, budget) <= room, "{extra_mib} MiB: budget {budget}");
                // Not needlessly small: one block more would not fit its peak.
                assert!(kv_peak_tokens(budget + 64) as u64 * e.kv_bytes_per_token > room, "{extra_mib} MiB");
            }
        }
    }

    #[test]
    fn the_refusal_names_the_bytes() {
        let e = estimate(600 * MIB, 100 * MIB, 64 * 1024);
        let memory = DeviceMemory::probe(DeviceSpec::Flex, Some(700 * MIB));
        let s = fit(&e, memory.available, &request(65_536, true)).expect_err("refused");
        let spec = DeviceSpec::Wgpu { adapter: super::super::WgpuAdapter::Cpu };
        let error = refusal(spec, &memory, &e, &request(65_536, true), s);
        assert_eq!(error.kind(), "device_memory");
        let text = error.to_string();
        for figure in [700 * MIB + 64 * 64 * 1024, 700 * MIB, 600 * MIB, 100 * MIB, 64 * 64 * 1024] {
            assert!(text.contains(&format!("{figure} bytes")), "{figure} missing from: {text}");
        }
        assert!(text.contains("--gpu-memory-limit"), "{text}");
    }
}
