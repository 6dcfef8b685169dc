//! A model as the rest of the program sees it: where it comes from (a GGUF file, a Hugging
//! Face checkpoint directory ([`crate::hf`]) or a synthetic preset), what it says about itself
//! ([`ModelInfo`]: name, tokenizer, chat template, context length, recommended sampling), and
//! how its weights are put on a device.
//!
//! Opening is quick (metadata, tokenizer, template); [`ModelLoader::load`] does the heavy
//! part and is meant to run on the engine thread.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::FloatDType;

use crate::arch;
use crate::chat_template::ChatTemplate;
use crate::config::ModelConfig;
use crate::device::memory_budget::{self, KvRequest, MemoryReport};
use crate::device::{DeviceSpec, Precision};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::hf::{self, HfWeights};
use crate::layers::ComputePlan;
use crate::synthetic::{SyntheticPreset, SyntheticQuant, SyntheticWeights};
use crate::transformer::Transformer;
use crate::tokenizer::Tokenizer;
use crate::weights::{ActivationFormat, WeightFormat, WeightSource};

/// What the server and CLI need to know about a model.
#[derive(Clone)]
pub struct ModelInfo {
    /// A name for `/v1/models`: the file stem, or `synthetic-<preset>`.
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub context_length: usize,
    pub config: ModelConfig,
    /// The sampling its authors recommend (Hugging Face `generation_config.json`); all
    /// `None` for GGUF files and synthetic models, which do not say.
    pub generation: GenerationDefaults,
}

/// Default sampling settings a checkpoint recommends, for requests that set none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
}

/// Where to run the model, in which float type, and how weights are kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    pub precision: Precision,
    pub weights: WeightFormat,
    pub activations: ActivationFormat,
}

impl LoadOptions {
    /// How the model is computed on `spec` (a resolved device, not `auto`): quantized linear
    /// layers and host attention on CPU devices at f32, the backend's ops elsewhere.
    pub fn plan(&self, spec: DeviceSpec) -> Result<ComputePlan> {
        let dtype = self.precision.float_dtype();
        let cpu_f32 = spec.is_cpu() && dtype == FloatDType::F32;
        let quantized_linear = match self.weights {
            WeightFormat::Dense => false,
            WeightFormat::Auto => cpu_f32,
            WeightFormat::Quantized if cpu_f32 => true,
            // On GPUs the Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K and Q6_K blocks stay blocks
            // (`gpu_quant`); other types dequantize at load.
            WeightFormat::Quantized if spec.has_quantized_kernels() => true,
            WeightFormat::Quantized => {
                return Err(ModelError::UnsupportedDtype {
                    dtype: format!("quantized weights with {dtype:?} activations"),
                    device: format!("{spec} (quantized weights need a GPU device, or a CPU device and f32)"),
                });
            }
        };
        let int8_activations = self.activations == ActivationFormat::Q8;
        if int8_activations && !(quantized_linear && cpu_f32) {
            return Err(ModelError::UnsupportedDtype {
                dtype: "q8 activations".into(),
                device: format!("{spec} with {} weights (q8 activations need quantized weights on a CPU device at f32)", self.weights),
            });
        }
        Ok(ComputePlan {
            dtype,
            quantized_linear,
            int8_activations,
            host_attention: cpu_f32,
            repeat_kv_heads: !spec.attention_supports_gqa(),
            attention_kernel: spec.has_quantized_kernels() && !cpu_f32,
            fuse_projections: true,
        })
    }
}

impl Default for DeviceSpec {
    fn default() -> Self {
        DeviceSpec::Flex
    }
}

enum Source {
    Gguf(GgufFile),
    Hf(HfWeights),
    Synthetic(SyntheticWeights),
}

/// An opened model whose weights are not loaded yet.
pub struct ModelLoader {
    source: Source,
    info: Arc<ModelInfo>,
}

/// Seed of `synthetic:<preset>` models unless `synthetic:<preset>:<seed>` says otherwise.
pub const SYNTHETIC_SEED: u64 = 42;

impl ModelLoader {
    /// `spec`: a path to a `.gguf` file, a Hugging Face checkpoint directory, or
    /// `synthetic:<preset>[:<seed>][@<quantization>]` (q4_0, q8_0 or q4_k_m: see
    /// [`SyntheticQuant`]).
    pub fn open(spec: &str) -> Result<ModelLoader> {
        if let Some(rest) = spec.strip_prefix("synthetic:") {
            let (rest, quant) = match rest.split_once('@') {
                Some((rest, quant)) => (rest, Some(quant.parse::<SyntheticQuant>()?)),
                None => (rest, None),
            };
            let (preset_name, seed) = match rest.split_once(':') {
                Some((p, s)) => {
                    let seed = s.parse().map_err(|_| ModelError::InvalidRequest(format!("bad synthetic seed `{s}`")))?;
                    (p, seed)
                }
                None => (rest, SYNTHETIC_SEED),
            };
            let preset: SyntheticPreset = preset_name.parse()?;
            let config = preset.config();
            let tokenizer = Tokenizer::synthetic(config.vocab_size)?;
            let chat_template = Some(ChatTemplate::new(
                crate::chat_template::CHATML_TEMPLATE,
                tokenizer.bos_token_text().unwrap_or_default(),
                tokenizer.eos_token_text().unwrap_or_default(),
            )?);
            let name = match spec.split_once('@') {
                Some((_, quant)) => format!("synthetic-{preset_name}-{}", quant.to_ascii_lowercase()),
                None => format!("synthetic-{preset_name}"),
            };
            let info = ModelInfo {
                name,
                tokenizer: Arc::new(tokenizer),
                chat_template,
                context_length: config.context_length,
                config: config.clone(),
                generation: GenerationDefaults::default(),
            };
            return Ok(ModelLoader { source: Source::Synthetic(SyntheticWeights::quantized(config, seed, quant)), info: Arc::new(info) });
        }
        let path = Path::new(spec);
        if path.is_dir() {
            let (info, weights) = hf::open(path)?;
            return Ok(ModelLoader { source: Source::Hf(weights), info: Arc::new(info) });
        }
        Self::open_gguf(path)
    }

    fn open_gguf(path: &Path) -> Result<ModelLoader> {
        let file = GgufFile::open(path)?;
        let config = arch::config_from_gguf(&file.metadata, &|name| file.tensor_info(name).is_some())?;
        let tokenizer = Tokenizer::from_gguf(&file.metadata)?;
        let chat_template = ChatTemplate::from_gguf(&file.metadata, &tokenizer)?;
        file.release_metadata_pages();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let info = ModelInfo {
            name,
            tokenizer: Arc::new(tokenizer),
            chat_template,
            context_length: config.context_length,
            config,
            generation: GenerationDefaults::default(),
        };
        Ok(ModelLoader { source: Source::Gguf(file), info: Arc::new(info) })
    }

    pub fn info(&self) -> Arc<ModelInfo> {
        self.info.clone()
    }

    /// The memory check before [`ModelLoader::load`] on a GPU device
    /// ([`crate::device::memory_budget::check`]): refuses a model that does not fit, with the
    /// numbers, before anything is uploaded. Returns the KV budget in tokens and the figures
    /// (none on CPU devices, which are not checked). `limit`: `--gpu-memory-limit`.
    pub fn check_memory(
        &self,
        options: &LoadOptions,
        limit: Option<u64>,
        request: &KvRequest,
    ) -> Result<(usize, Option<MemoryReport>)> {
        let (spec, _) = options.device.resolve_auto();
        if spec.is_cpu() {
            return Ok((request.tokens, None));
        }
        let plan = options.plan(spec)?;
        // GGUF files and quantized synthetic models hold blocks; checkpoints are floats.
        let stored = |name: &str| match &self.source {
            Source::Gguf(file) => file.tensor_info(name).map(|t| t.ggml_type),
            Source::Synthetic(weights) => weights.tensor_type(name),
            Source::Hf(_) => None,
        };
        memory_budget::check(spec, limit, &self.info.config, &plan, &stored, request)
    }

    /// Opens the device and builds the transformer on it. `progress(done, total)`.
    pub fn load(&self, options: &LoadOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Transformer> {
        let (spec, why) = options.device.resolve_auto();
        if options.device == DeviceSpec::Auto {
            tracing::info!(device = %spec, reason = %why, "device chosen automatically");
        }
        let plan = options.plan(spec)?;
        let device = spec.open()?;
        options.precision.check_supported(&device, spec)?;
        if let Source::Gguf(file) = &self.source
            && plan.quantized_linear
        {
            // The products read the weights from the map: fault it in now, not mid-prefill.
            file.populate_tensor_pages();
        }
        let source: &dyn WeightSource = match &self.source {
            Source::Gguf(file) => file,
            Source::Hf(weights) => weights,
            Source::Synthetic(weights) => weights,
        };
        Transformer::load(self.info.config.clone(), source, &device, plan, progress)
    }
}
