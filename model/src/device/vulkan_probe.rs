//! A start-up check for the `vulkan` backend (SPIR-V shaders), so that a driver burn's
//! SPIR-V cannot run on is a clear error instead of a segfault in the first matmul.
//!
//! burn 0.22.1's SPIR-V compiler (cubecl-spirv 0.11.3) has two ways to lay out workgroup
//! (shared) memory. With `VK_KHR_workgroup_memory_explicit_layout` it declares a `Block`
//! struct and is correct. Without it, it declares each shared array as a pointer to the
//! array, which `spirv-val` rejects, and Mesa 22.3's lavapipe crashes compiling the
//! pipeline (see `docs/upstream/cubecl-spirv-shared-memory.md`). wgpu's own WGSL path has no
//! such problem, so `--device wgpu` is the way round it on those drivers.
//!
//! [`with_physical_device`] finds the adapter wgpu would open for the memory probe too
//! ([`super::vulkan_memory`]).

use std::ffi::CStr;

use ash::vk;

use super::WgpuAdapter;

/// What the probe found about the adapter `--device vulkan…` would open.
#[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VulkanSupport {
    /// The adapter has explicit workgroup memory layout: burn's SPIR-V runs.
    Supported,
    /// The adapter (named) lacks it: burn's SPIR-V would crash the driver.
    MissingExplicitLayout { adapter: String },
    /// No Vulkan loader, or no adapter of that kind: burn will report that itself.
    Unknown,
}

/// Probes the Vulkan physical device that `adapter` selects, in wgpu's order of adapters.
#[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
pub fn probe(adapter: WgpuAdapter) -> VulkanSupport {
    with_physical_device(adapter, |instance, device, properties| {
        if has_explicit_layout(instance, device) {
            VulkanSupport::Supported
        } else {
            let name = properties.device_name_as_c_str().map(CStr::to_string_lossy).unwrap_or_default();
            VulkanSupport::MissingExplicitLayout { adapter: name.into_owned() }
        }
    })
    .unwrap_or(VulkanSupport::Unknown)
}

/// Runs `query` on the Vulkan physical device that `adapter` selects, in wgpu's order of
/// adapters, on an instance of its own (Vulkan 1.1). `None` without a Vulkan loader or an
/// adapter of that kind.
pub(super) fn with_physical_device<T>(
    adapter: WgpuAdapter,
    query: impl FnOnce(&ash::Instance, vk::PhysicalDevice, &vk::PhysicalDeviceProperties) -> T,
) -> Option<T> {
    // SAFETY: loading the system's Vulkan loader runs its initialisers; that is what wgpu
    // does too, and nothing here outlives the loader (`entry` is dropped last).
    let entry = unsafe { ash::Entry::load() }.ok()?;
    let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_1);
    let create_info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: a plain instance without layers or extensions, destroyed below.
    let instance = unsafe { entry.create_instance(&create_info, None) }.ok()?;
    let answer = choose(&instance, adapter).map(|(device, properties)| query(&instance, device, &properties));
    // SAFETY: no object created from the instance is still alive.
    unsafe { instance.destroy_instance(None) };
    answer
}

fn choose(instance: &ash::Instance, adapter: WgpuAdapter) -> Option<(vk::PhysicalDevice, vk::PhysicalDeviceProperties)> {
    // SAFETY: queries on a live instance and the handles it returned.
    let devices = unsafe { instance.enumerate_physical_devices() }.unwrap_or_default();
    let typed: Vec<(vk::PhysicalDevice, vk::PhysicalDeviceProperties)> =
        devices.into_iter().map(|d| (d, unsafe { instance.get_physical_device_properties(d) })).collect();
    let of_type = |t: vk::PhysicalDeviceType| typed.iter().filter(move |(_, p)| p.device_type == t);
    let chosen = match adapter {
        WgpuAdapter::Cpu => of_type(vk::PhysicalDeviceType::CPU).next(),
        WgpuAdapter::Discrete(i) => of_type(vk::PhysicalDeviceType::DISCRETE_GPU).nth(i),
        WgpuAdapter::Integrated(i) => of_type(vk::PhysicalDeviceType::INTEGRATED_GPU).nth(i),
        // wgpu's default prefers a discrete GPU, then an integrated one, then a virtual one.
        WgpuAdapter::Default => of_type(vk::PhysicalDeviceType::DISCRETE_GPU)
            .chain(of_type(vk::PhysicalDeviceType::INTEGRATED_GPU))
            .chain(of_type(vk::PhysicalDeviceType::VIRTUAL_GPU))
            .next(),
    };
    chosen.copied()
}

/// The extension listed and its `workgroupMemoryExplicitLayout` feature on: the same
/// condition cubecl uses to pick the correct lowering.
#[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
fn has_explicit_layout(instance: &ash::Instance, device: vk::PhysicalDevice) -> bool {
    let wanted = ash::khr::workgroup_memory_explicit_layout::NAME;
    // SAFETY: queries on a live instance and one of its physical devices.
    let extensions = unsafe { instance.enumerate_device_extension_properties(device) }.unwrap_or_default();
    if !extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(wanted)) {
        return false;
    }
    let mut explicit = vk::PhysicalDeviceWorkgroupMemoryExplicitLayoutFeaturesKHR::default();
    let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut explicit);
    // SAFETY: the instance was created for Vulkan 1.1, where this query is core.
    unsafe { instance.get_physical_device_features2(device, &mut features) };
    explicit.workgroup_memory_explicit_layout == vk::TRUE
}
