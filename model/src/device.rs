//! Which burn backend runs the model: parsing `--device`/`--dtype`, listing the backends
//! compiled into this build, and turning a choice into a `burn::tensor::Device`; the
//! device's memory and the check of a model against it live in [`memory`] and
//! [`memory_budget`].

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, FloatDType};

use crate::error::{ModelError, Result};

/// A backend the user asked for, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn-flex, the pure-Rust CPU backend (default).
    Flex,
    /// burn-ndarray (deprecated upstream, kept as a second CPU reference).
    NdArray,
    /// wgpu with the API it settles on (Vulkan, Metal, DX12); `adapter` picks the card.
    Wgpu { adapter: WgpuAdapter },
    /// wgpu pinned to Vulkan (SPIR-V shaders).
    Vulkan { adapter: WgpuAdapter },
    /// wgpu pinned to Metal.
    Metal { adapter: WgpuAdapter },
    Cuda { index: usize },
    Rocm { index: usize },
    /// The best device this build and machine offer (see [`DeviceSpec::resolve_auto`]).
    Auto,
}

/// Which wgpu adapter to open. wgpu's own default never picks a software adapter such as
/// Mesa's lavapipe, so `cpu` must be named to use one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    Default,
    Discrete(usize),
    Integrated(usize),
    Cpu,
}

/// Every backend name `--device` understands, in the order `auto` prefers them.
pub const ALL_BACKENDS: &[&str] = &["cuda", "rocm", "wgpu", "vulkan", "metal", "flex", "ndarray"];

/// The backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "flex") {
        out.push("flex");
    }
    if cfg!(feature = "ndarray") {
        out.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        out.push("vulkan");
    }
    if cfg!(feature = "metal") {
        out.push("metal");
    }
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    if cfg!(feature = "rocm") {
        out.push("rocm");
    }
    out
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let invalid = |why: &str| ModelError::DeviceUnavailable { requested: s.to_string(), reason: why.to_string() };
        let index = |arg: Option<&str>| -> Result<usize> {
            arg.map_or(Ok(0), |a| a.parse().map_err(|_| invalid("the device index must be a number")))
        };
        let adapter = |arg: Option<&str>| -> Result<WgpuAdapter> {
            Ok(match arg {
                None | Some("default") => WgpuAdapter::Default,
                Some("cpu") => WgpuAdapter::Cpu,
                Some(a) => {
                    if let Some(i) = a.strip_prefix("discrete") {
                        WgpuAdapter::Discrete(i.parse().unwrap_or(0))
                    } else if let Some(i) = a.strip_prefix("integrated") {
                        WgpuAdapter::Integrated(i.parse().unwrap_or(0))
                    } else if let Ok(i) = a.parse() {
                        WgpuAdapter::Discrete(i)
                    } else {
                        return Err(invalid("adapter must be default, cpu, discreteN, integratedN or N"));
                    }
                }
            })
        };
        let no_arg = |spec: DeviceSpec| if arg.is_some() { Err(invalid("takes no `:` argument")) } else { Ok(spec) };
        match name {
            "flex" | "cpu" => no_arg(DeviceSpec::Flex),
            "ndarray" => no_arg(DeviceSpec::NdArray),
            "auto" => no_arg(DeviceSpec::Auto),
            "wgpu" => Ok(DeviceSpec::Wgpu { adapter: adapter(arg)? }),
            "vulkan" => Ok(DeviceSpec::Vulkan { adapter: adapter(arg)? }),
            "metal" => Ok(DeviceSpec::Metal { adapter: adapter(arg)? }),
            "cuda" => Ok(DeviceSpec::Cuda { index: index(arg)? }),
            "rocm" => Ok(DeviceSpec::Rocm { index: index(arg)? }),
            _ => Err(invalid(&format!("unknown device; expected one of {}, auto", ALL_BACKENDS.join(", ")))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let adapter = |a: &WgpuAdapter| match a {
            WgpuAdapter::Default => String::new(),
            WgpuAdapter::Cpu => ":cpu".into(),
            WgpuAdapter::Discrete(i) => format!(":discrete{i}"),
            WgpuAdapter::Integrated(i) => format!(":integrated{i}"),
        };
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
            DeviceSpec::Wgpu { adapter: a } => write!(f, "wgpu{}", adapter(a)),
            DeviceSpec::Vulkan { adapter: a } => write!(f, "vulkan{}", adapter(a)),
            DeviceSpec::Metal { adapter: a } => write!(f, "metal{}", adapter(a)),
            DeviceSpec::Cuda { index } => write!(f, "cuda:{index}"),
            DeviceSpec::Rocm { index } => write!(f, "rocm:{index}"),
            DeviceSpec::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceSpec {
    fn backend_name(&self) -> &'static str {
        match self {
            DeviceSpec::Flex => "flex",
            DeviceSpec::NdArray => "ndarray",
            DeviceSpec::Wgpu { .. } => "wgpu",
            DeviceSpec::Vulkan { .. } => "vulkan",
            DeviceSpec::Metal { .. } => "metal",
            DeviceSpec::Cuda { .. } => "cuda",
            DeviceSpec::Rocm { .. } => "rocm",
            DeviceSpec::Auto => "auto",
        }
    }

    /// Whether this backend runs on the host CPU (so the host-side fast paths apply).
    pub fn is_cpu(&self) -> bool {
        matches!(self, DeviceSpec::Flex | DeviceSpec::NdArray)
    }

    /// Whether linear layers can keep their quantized blocks (`gpu_quant::QuantKind`) on this
    /// device (`gpu_quant`, a cubecl backend compiled in).
    pub fn has_quantized_kernels(&self) -> bool {
        cfg!(feature = "gpu-kernels") && !self.is_cpu() && *self != DeviceSpec::Auto
    }

    /// burn's fused attention handles grouped-query attention only on flex; on the cubecl
    /// backends K/V heads must be repeated first or the result is silently wrong.
    pub fn attention_supports_gqa(&self) -> bool {
        matches!(self, DeviceSpec::Flex)
    }

    /// `auto`: CUDA, then ROCm, then a wgpu GPU, then the CPU — the first compiled in.
    /// Returns the choice and why, for the start-up log.
    pub fn resolve_auto(self) -> (DeviceSpec, String) {
        if self != DeviceSpec::Auto {
            return (self, "requested explicitly".into());
        }
        let compiled = compiled_backends();
        let pick = if compiled.contains(&"cuda") {
            (DeviceSpec::Cuda { index: 0 }, "CUDA is compiled in")
        } else if compiled.contains(&"rocm") {
            (DeviceSpec::Rocm { index: 0 }, "ROCm is compiled in")
        } else if compiled.contains(&"wgpu")
            && wgpu_has_gpu()
            && (!compiled.contains(&"vulkan") || vulkan_spirv_runs(WgpuAdapter::Default))
        {
            (DeviceSpec::Wgpu { adapter: WgpuAdapter::Default }, "a wgpu GPU adapter is present")
        } else if compiled.contains(&"vulkan") && wgpu_has_gpu() && vulkan_spirv_runs(WgpuAdapter::Default) {
            (DeviceSpec::Vulkan { adapter: WgpuAdapter::Default }, "a Vulkan GPU adapter is present")
        } else if compiled.contains(&"flex") {
            (DeviceSpec::Flex, "no GPU backend found; using the CPU")
        } else {
            (DeviceSpec::NdArray, "no GPU backend found; using the CPU (ndarray)")
        };
        (pick.0, pick.1.to_string())
    }

    /// Opens the device. A backend not compiled into this build is an error that lists
    /// the ones that are.
    pub fn open(self) -> Result<Device> {
        let (spec, _) = self.resolve_auto();
        let unavailable = || ModelError::DeviceUnavailable {
            requested: spec.to_string(),
            reason: format!(
                "the `{}` backend is not compiled into this build (compiled: {}); rebuild with `--features {}`",
                spec.backend_name(),
                compiled_backends().join(", "),
                spec.backend_name()
            ),
        };
        #[allow(unused_variables)]
        let adapter_kind = |a: WgpuAdapter| -> burn::tensor::DeviceKind {
            match a {
                WgpuAdapter::Default => burn::tensor::DeviceKind::DefaultDevice,
                WgpuAdapter::Cpu => burn::tensor::DeviceKind::Cpu,
                WgpuAdapter::Discrete(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
                WgpuAdapter::Integrated(i) => burn::tensor::DeviceKind::IntegratedGpu(i),
            }
        };
        match spec {
            #[cfg(feature = "flex")]
            DeviceSpec::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            DeviceSpec::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu { adapter } => {
                // With `vulkan` compiled in, cubecl compiles SPIR-V for every Vulkan
                // adapter, `wgpu` ones included.
                #[cfg(feature = "vulkan")]
                spirv_runs_on(spec, adapter)?;
                Ok(Device::wgpu(adapter_kind(adapter)))
            }
            #[cfg(feature = "vulkan")]
            DeviceSpec::Vulkan { adapter } => {
                spirv_runs_on(spec, adapter)?;
                Ok(Device::vulkan(adapter_kind(adapter)))
            }
            #[cfg(feature = "metal")]
            DeviceSpec::Metal { adapter } => Ok(Device::metal(adapter_kind(adapter))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda { index } => Ok(Device::cuda(index)),
            #[cfg(feature = "rocm")]
            DeviceSpec::Rocm { index } => Ok(Device::rocm(index)),
            _ => Err(unavailable()),
        }
    }
}

pub mod memory;
pub mod memory_budget;
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
mod vulkan_memory;
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
mod vulkan_probe;

/// Whether burn's SPIR-V path can run on this adapter (see [`vulkan_probe`]).
#[cfg(feature = "vulkan")]
fn vulkan_spirv_runs(adapter: WgpuAdapter) -> bool {
    !matches!(vulkan_probe::probe(adapter), vulkan_probe::VulkanSupport::MissingExplicitLayout { .. })
}

/// Refuses, before burn meets it, a Vulkan driver on which burn's SPIR-V would crash.
#[cfg(feature = "vulkan")]
fn spirv_runs_on(spec: DeviceSpec, adapter: WgpuAdapter) -> Result<()> {
    let vulkan_probe::VulkanSupport::MissingExplicitLayout { adapter: name } = vulkan_probe::probe(adapter) else {
        return Ok(());
    };
    let way_round = match spec {
        DeviceSpec::Vulkan { .. } => "use `--device wgpu` in a build without the `vulkan` feature (WGSL shaders)",
        _ => "this build has the `vulkan` feature, so wgpu compiles SPIR-V for Vulkan adapters too; use a build without it (WGSL shaders)",
    };
    Err(ModelError::DeviceUnavailable {
        requested: spec.to_string(),
        reason: format!(
            "the Vulkan driver of `{name}` lacks VK_KHR_workgroup_memory_explicit_layout, without which burn 0.22's \
             SPIR-V shaders are invalid and crash the driver; {way_round}, or a driver that has the extension"
        ),
    })
}

#[cfg(not(feature = "vulkan"))]
fn vulkan_spirv_runs(_adapter: WgpuAdapter) -> bool {
    false
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn wgpu_has_gpu() -> bool {
    // Enumerating adapters can panic inside wgpu on broken driver setups; a panic here
    // must mean "no GPU", not a crash at start-up.
    std::panic::catch_unwind(|| {
        !burn::tensor::Device::enumerate(burn::tensor::DeviceType::Wgpu).into_iter().next().is_none()
    })
    .unwrap_or(false)
}

#[cfg(not(any(feature = "wgpu", feature = "vulkan")))]
fn wgpu_has_gpu() -> bool {
    false
}

/// The float type weights and activations are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
    BF16,
}

impl FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            _ => Err(ModelError::UnsupportedDtype { dtype: s.to_string(), device: "any".into() }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        })
    }
}

impl Precision {
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::BF16 => FloatDType::BF16,
        }
    }

    /// Fails at start-up, not mid-request, when the device cannot compute in this type.
    pub fn check_supported(self, device: &Device, spec: DeviceSpec) -> Result<()> {
        if device.supports_dtype(self.float_dtype()) {
            Ok(())
        } else {
            Err(ModelError::UnsupportedDtype { dtype: self.to_string(), device: spec.to_string() })
        }
    }
}
