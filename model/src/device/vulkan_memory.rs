//! The memory heaps of the Vulkan adapter a wgpu/Vulkan device opens, for
//! [`super::memory::DeviceMemory`]: `vkGetPhysicalDeviceMemoryProperties2`, with
//! `VK_EXT_memory_budget`'s per-heap budget and usage when the driver lists the extension.

use std::ffi::CStr;

use ash::vk;

use super::WgpuAdapter;
use super::memory::{AdapterKind, DeviceMemory, Heap};
use super::vulkan_probe::with_physical_device;

/// The adapter's memory; `None` without a Vulkan loader or such an adapter.
/// `mem_available`: caps adapters that share system memory.
pub fn probe(adapter: WgpuAdapter, mem_available: Option<u64>) -> Option<DeviceMemory> {
    with_physical_device(adapter, |instance, device, properties| {
        let name = properties.device_name_as_c_str().map(CStr::to_string_lossy).unwrap_or_default().into_owned();
        let kind = match properties.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => AdapterKind::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => AdapterKind::Integrated,
            vk::PhysicalDeviceType::CPU => AdapterKind::Cpu,
            vk::PhysicalDeviceType::VIRTUAL_GPU => AdapterKind::Virtual,
            _ => AdapterKind::Unknown,
        };
        DeviceMemory::from_heaps(name, kind, &heaps(instance, device), mem_available)
    })
}

fn heaps(instance: &ash::Instance, device: vk::PhysicalDevice) -> Vec<Heap> {
    // SAFETY: queries on a live instance and one of its physical devices.
    let extensions = unsafe { instance.enumerate_device_extension_properties(device) }.unwrap_or_default();
    let has_budget = extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(ash::ext::memory_budget::NAME));
    let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
    let mut properties = vk::PhysicalDeviceMemoryProperties2::default();
    if has_budget {
        properties = properties.push_next(&mut budget);
    }
    // SAFETY: the instance was created for Vulkan 1.1, where this query is core; the budget
    // structure is chained only when the device lists its extension.
    unsafe { instance.get_physical_device_memory_properties2(device, &mut properties) };
    let memory = properties.memory_properties;
    let types = memory.memory_types_as_slice();
    let heaps: Vec<Heap> = memory
        .memory_heaps_as_slice()
        .iter()
        .enumerate()
        .map(|(i, heap)| Heap {
            size: heap.size,
            device_local: heap.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            host_visible: types
                .iter()
                .any(|t| t.heap_index as usize == i && t.property_flags.contains(vk::MemoryPropertyFlags::HOST_VISIBLE)),
            budget: None,
        })
        .collect();
    if !has_budget {
        return heaps;
    }
    heaps
        .into_iter()
        .enumerate()
        // A driver that fills no budget leaves zeros: keep the heap size then.
        .map(|(i, h)| Heap { budget: (budget.heap_budget[i] > 0).then(|| (budget.heap_budget[i], budget.heap_usage[i])), ..h })
        .collect()
}
