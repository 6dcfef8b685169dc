//! How much memory the device a model runs on has, and how much of it is free: the figures
//! the memory check ([`super::memory_budget`]) weighs the model against.
//!
//! wgpu says nothing about memory (`AdapterInfo` has a name and a type, `Limits` only bound
//! one buffer), so Vulkan adapters are asked through Vulkan itself ([`super::vulkan_memory`]):
//! the heaps of `vkGetPhysicalDeviceMemoryProperties2`, with `VK_EXT_memory_budget`'s
//! per-heap budget and usage where the driver has it. Turning heaps into one figure is
//! [`DeviceMemory::from_heaps`], a pure function:
//!
//! - A discrete GPU: its largest device-local heap (its own VRAM).
//! - An integrated GPU or a software adapter (lavapipe): every heap is the same system RAM,
//!   whether the driver calls it device-local (a carve-out or a share) or host-visible (GTT).
//!   The heaps are summed once and capped by the kernel's `MemAvailable`, since whatever the
//!   driver reports, the model's buffers come out of RAM the rest of the machine also uses.
//!
//! Where nothing answers (Metal, CUDA/ROCm in this build, no Vulkan loader), the figures are
//! unknown and nothing is refused. `--gpu-memory-limit` replaces the probe entirely: for
//! users who share a GPU, and for tests.

use std::fmt;

use crate::error::{ModelError, Result};

use super::DeviceSpec;

/// What kind of adapter the memory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    Discrete,
    Integrated,
    /// A software rasterizer such as Mesa's lavapipe: the host CPU and its RAM.
    Cpu,
    Virtual,
    Unknown,
}

impl AdapterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Discrete => "discrete",
            AdapterKind::Integrated => "integrated",
            AdapterKind::Cpu => "cpu",
            AdapterKind::Virtual => "virtual",
            AdapterKind::Unknown => "unknown",
        }
    }

    /// Whether the adapter's memory is the machine's RAM.
    fn shares_system_memory(self) -> bool {
        matches!(self, AdapterKind::Integrated | AdapterKind::Cpu)
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One memory heap as a Vulkan driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    pub size: u64,
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`.
    pub device_local: bool,
    /// A memory type of this heap is host-visible.
    pub host_visible: bool,
    /// `VK_EXT_memory_budget`: (budget, usage) of this process in this heap. The budget
    /// already leaves out what other processes use.
    pub budget: Option<(u64, u64)>,
}

impl Heap {
    /// What this process may still allocate in the heap.
    fn free(&self) -> u64 {
        match self.budget {
            Some((budget, usage)) => budget.saturating_sub(usage),
            None => self.size,
        }
    }
}

/// Where the figures of a [`DeviceMemory`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// `--gpu-memory-limit`.
    Limit,
    /// Vulkan heaps with `VK_EXT_memory_budget`.
    VulkanBudget,
    /// Vulkan heap sizes only (no budget extension): free is the heap size.
    VulkanHeaps,
    /// Nothing known: nothing is refused.
    Unknown,
}

impl MemorySource {
    pub fn as_str(self) -> &'static str {
        match self {
            MemorySource::Limit => "--gpu-memory-limit",
            MemorySource::VulkanBudget => "Vulkan heaps and VK_EXT_memory_budget",
            MemorySource::VulkanHeaps => "Vulkan heap sizes",
            MemorySource::Unknown => "unknown",
        }
    }
}

impl fmt::Display for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The memory of one device, as far as the platform tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    pub adapter: String,
    pub kind: AdapterKind,
    /// All the memory the model's buffers could ever use.
    pub capacity: Option<u64>,
    /// What is free for them now.
    pub available: Option<u64>,
    pub source: MemorySource,
}

impl DeviceMemory {
    pub fn unknown(adapter: impl Into<String>) -> DeviceMemory {
        DeviceMemory {
            adapter: adapter.into(),
            kind: AdapterKind::Unknown,
            capacity: None,
            available: None,
            source: MemorySource::Unknown,
        }
    }

    /// One figure from a driver's heaps (see the module's documentation). `mem_available`:
    /// the kernel's `MemAvailable`, which caps adapters that share system memory.
    pub fn from_heaps(adapter: String, kind: AdapterKind, heaps: &[Heap], mem_available: Option<u64>) -> DeviceMemory {
        let source = if heaps.iter().any(|h| h.budget.is_some()) { MemorySource::VulkanBudget } else { MemorySource::VulkanHeaps };
        let (capacity, available) = if kind.shares_system_memory() {
            let ram: Vec<&Heap> = heaps.iter().filter(|h| h.device_local || h.host_visible).collect();
            if ram.is_empty() {
                (None, None)
            } else {
                let cap = |n: u64| mem_available.map_or(n, |m| n.min(m));
                let capacity: u64 = ram.iter().map(|h| h.size).sum();
                let free: u64 = ram.iter().map(|h| h.free()).sum();
                (Some(capacity), Some(cap(free)))
            }
        } else {
            match heaps.iter().filter(|h| h.device_local).max_by_key(|h| h.size) {
                Some(vram) => (Some(vram.size), Some(vram.free())),
                None => (None, None),
            }
        };
        let source = if capacity.is_some() { source } else { MemorySource::Unknown };
        DeviceMemory { adapter, kind, capacity, available, source }
    }

    /// The device `spec` opens, probed; `limit` (`--gpu-memory-limit`) wins over the probe.
    /// CPU backends (flex, ndarray) are not probed: their memory is not checked.
    pub fn probe(spec: DeviceSpec, limit: Option<u64>) -> DeviceMemory {
        let mut memory = probe_device(spec);
        if let Some(limit) = limit {
            memory.capacity = Some(limit);
            memory.available = Some(limit);
            memory.source = MemorySource::Limit;
        }
        memory
    }
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn probe_device(spec: DeviceSpec) -> DeviceMemory {
    match spec {
        DeviceSpec::Wgpu { adapter } | DeviceSpec::Vulkan { adapter } => super::vulkan_memory::probe(adapter, mem_available())
            .unwrap_or_else(|| DeviceMemory::unknown(spec.to_string())),
        _ => DeviceMemory::unknown(spec.to_string()),
    }
}

#[cfg(not(any(feature = "wgpu", feature = "vulkan")))]
fn probe_device(spec: DeviceSpec) -> DeviceMemory {
    DeviceMemory::unknown(spec.to_string())
}

/// The kernel's estimate of memory available to new allocations without swapping
/// (`/proc/meminfo`'s `MemAvailable`), where there is one.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Parses a byte count: a number with an optional unit. `K`, `M`, `G`, `T` and `KiB`..`TiB`
/// are powers of 1024 (what memory is sized in); `kB`, `MB`, `GB`, `TB` powers of 1000; `B`
/// or nothing: bytes. Fractions are allowed with a unit (`1.5GiB`).
pub fn parse_byte_size(text: &str) -> Result<u64> {
    let invalid = || ModelError::InvalidRequest(format!("`{text}` is not a byte size (e.g. 6GiB, 512MiB, 8000000000)"));
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(invalid()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or_else(invalid);
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * multiplier as f64;
    if multiplier == 1 || !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// A byte count for people: binary units with the exact count beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = None;
        for u in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = Some(u);
        }
        match unit {
            Some(u) => write!(f, "{value:.2} {u} ({} bytes)", self.0),
            None => write!(f, "{} bytes", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn heap(size: u64, device_local: bool, host_visible: bool, budget: Option<(u64, u64)>) -> Heap {
        Heap { size, device_local, host_visible, budget }
    }

    #[test]
    fn a_discrete_gpu_counts_its_largest_device_local_heap_and_its_budget() {
        let heaps = [heap(8 * GIB, true, false, Some((7 * GIB, GIB))), heap(32 * GIB, false, true, Some((30 * GIB, 0)))];
        let m = DeviceMemory::from_heaps("card".into(), AdapterKind::Discrete, &heaps, Some(16 * GIB));
        assert_eq!((m.capacity, m.available, m.source), (Some(8 * GIB), Some(6 * GIB), MemorySource::VulkanBudget));
        // Without the budget extension, all of the heap counts as free.
        let heaps = [heap(8 * GIB, true, false, None), heap(256 << 20, true, true, None)];
        let m = DeviceMemory::from_heaps("card".into(), AdapterKind::Discrete, &heaps, None);
        assert_eq!((m.capacity, m.available, m.source), (Some(8 * GIB), Some(8 * GIB), MemorySource::VulkanHeaps));
    }

    #[test]
    fn an_integrated_gpu_counts_its_heaps_once_and_no_more_than_mem_available() {
        // A carve-out (device-local) and GTT (host-visible): both RAM, summed once.
        let heaps = [heap(GIB / 2, true, true, Some((GIB / 2, 0))), heap(8 * GIB, false, true, Some((7 * GIB, GIB)))];
        let m = DeviceMemory::from_heaps("apu".into(), AdapterKind::Integrated, &heaps, Some(32 * GIB));
        assert_eq!((m.capacity, m.available), (Some(8 * GIB + GIB / 2), Some(6 * GIB + GIB / 2)));
        // The kernel says less is free than the driver: the kernel wins.
        let m = DeviceMemory::from_heaps("apu".into(), AdapterKind::Integrated, &heaps, Some(3 * GIB));
        assert_eq!(m.available, Some(3 * GIB));
        // lavapipe: one heap, the whole of RAM, capped by MemAvailable.
        let m = DeviceMemory::from_heaps("llvmpipe".into(), AdapterKind::Cpu, &[heap(64 * GIB, true, true, None)], Some(20 * GIB));
        assert_eq!((m.capacity, m.available), (Some(64 * GIB), Some(20 * GIB)));
    }

    #[test]
    fn no_heaps_means_unknown() {
        let m = DeviceMemory::from_heaps("x".into(), AdapterKind::Discrete, &[heap(GIB, false, true, None)], None);
        assert_eq!((m.capacity, m.available, m.source), (None, None, MemorySource::Unknown));
    }

    #[test]
    fn the_limit_wins_over_the_probe() {
        let m = DeviceMemory::probe(DeviceSpec::Flex, Some(6 * GIB));
        assert_eq!((m.capacity, m.available, m.source), (Some(6 * GIB), Some(6 * GIB), MemorySource::Limit));
        assert_eq!(DeviceMemory::probe(DeviceSpec::Flex, None).available, None, "CPU backends are not probed");
    }

    #[test]
    fn byte_sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("123").unwrap(), 123);
        assert_eq!(parse_byte_size("6GiB").unwrap(), 6 * GIB);
        assert_eq!(parse_byte_size("6g").unwrap(), 6 * GIB);
        assert_eq!(parse_byte_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("1.5GiB").unwrap(), 3 * GIB / 2);
        for bad in ["", "GiB", "6 parsecs", "-1", "1.5", "99999999999999999999"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn mem_available_is_read_in_kib() {
        let meminfo = "MemTotal:       32000000 kB\nMemFree:         1000 kB\nMemAvailable:   24108540 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(24_108_540 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn byte_counts_read_in_binary_units_with_the_exact_count() {
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(3 * GIB / 2).to_string(), "1.50 GiB (1610612736 bytes)");
    }
}
