//! GGUF files: header, metadata, tensor directory and memory-mapped tensor data.
//!
//! [`GgufFile::open`] maps the file and parses everything but the tensor data, which stays
//! in the page cache until a loader asks for it with [`GgufFile::tensor_bytes`] and turns it
//! into floats with [`dequantize`] (or keeps the blocks quantized). Every malformed input is
//! a typed [`ModelError`] that names the field or tensor, never a panic, and no length or
//! count field is trusted for an allocation before it is checked against the bytes left
//! (`reader`). [`GgufWriter`] writes files, for test models and for the bad files of the tests.

mod bytes;
pub mod dequant;
mod metadata;
mod packed;
mod reader;
mod types;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bytes::TensorBytes;
pub use dequant::dequantize;
pub use metadata::{Metadata, MetadataValue, ValueType};
pub use packed::PackedArray;
pub use types::GgmlType;
pub use writer::GgufWriter;

use crate::error::{ModelError, Result};
use bytes::Backing;
use reader::{Field, Reader};

const GGUF_MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
const DEFAULT_ALIGNMENT: usize = 32;
const MAX_DIMS: u32 = 8;
/// The fewest bytes a metadata entry (key length, value type, a one-byte value) and a tensor
/// directory entry (name length, dimension count, type, offset) take: counts the rest of the
/// file cannot hold are reported as such, before the loops that read them start.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The shape in row-major (PyTorch) order, outermost first: a ggml `[in, out]` matrix
    /// is `[out, in]` here.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An opened, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
    data_start: usize,
    map: Arc<Backing>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| ModelError::Io { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(io_err)?;
        // SAFETY: the map is read-only; a file truncated underneath us by another process
        // would fault, which is the documented, accepted risk of every mmap-based loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(path, Backing::Mapped(map))
    }

    /// Parses a file held in memory (its path reads `<memory>` in errors).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(PathBuf::from("<memory>"), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, map: Backing) -> Result<GgufFile> {
        let mut r = Reader::new(&map);
        let magic = r.u32(Field::Header("the magic number"))?;
        if magic != GGUF_MAGIC {
            return Err(ModelError::BadMagic { path, magic });
        }
        let version = r.u32(Field::Header("the version"))?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64(Field::Header("the tensor count"))?;
        let kv_count = r.u64(Field::Header("the metadata count"))?;
        check_count(kv_count, MIN_KV_BYTES, r.remaining(), "metadata entries")?;

        let mut entries = BTreeMap::new();
        let mut array_types = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string(Field::KeyName(i))?;
            if key.is_empty() {
                return Err(ModelError::metadata(&format!("#{i}"), "the key is empty"));
            }
            if entries.contains_key(&key) {
                return Err(ModelError::metadata(&key, "appears more than once"));
            }
            let value_type = r.u32(Field::Key(&key))?;
            let mut array_type = None;
            let value = r.value(value_type, &key, &mut array_type)?;
            if let Some(item_type) = array_type {
                array_types.insert(key.clone(), item_type);
            }
            entries.insert(key, value);
        }
        let metadata = Metadata::with_array_types(entries, array_types);

        check_count(tensor_count, MIN_TENSOR_INFO_BYTES, r.remaining(), "tensor directory entries")?;
        let mut tensors = Vec::new();
        let mut by_name = BTreeMap::new();
        for i in 0..tensor_count {
            let name = r.string(Field::TensorName(i))?;
            if by_name.contains_key(&name) {
                return Err(ModelError::tensor(&name, "appears more than once in the tensor directory"));
            }
            let field = Field::Tensor(&name);
            let n_dims = r.u32(field)?;
            if n_dims > MAX_DIMS {
                return Err(ModelError::tensor(&name, format!("{n_dims} dimensions")));
            }
            let dims =
                (0..n_dims).map(|_| r.u64(field).and_then(|d| to_usize(d, &name))).collect::<Result<Vec<_>>>()?;
            if dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
                return Err(ModelError::tensor(&name, format!("element count of {dims:?} overflows")));
            }
            let ggml_type = GgmlType::from_id(r.u32(field)?);
            let offset = to_usize(r.u64(field)?, &name)?;
            by_name.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }

        let alignment = metadata.opt_usize("general.alignment")?.unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(ModelError::metadata("general.alignment", format!("{alignment} is not a power of two")));
        }
        if let Some(t) = tensors.iter().find(|t| !t.offset.is_multiple_of(alignment)) {
            return Err(ModelError::tensor(
                &t.name,
                format!("data offset {} is not a multiple of the alignment {alignment}", t.offset),
            ));
        }
        let data_start = r.pos().div_ceil(alignment).checked_mul(alignment);
        let data_start =
            data_start.ok_or_else(|| ModelError::metadata("general.alignment", format!("{alignment} is too large")))?;
        let file = GgufFile { path, version, metadata, tensors, by_name, data_start, map: Arc::new(map) };
        // Validate every tensor's extent now, so later reads cannot go out of bounds. A type we
        // cannot size (a newer quantization) fails when that tensor is read, not at open.
        for info in file.tensors.iter().filter(|t| t.ggml_type.block_layout().is_some()) {
            file.extent(info)?;
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (start, end) = self.extent(info)?;
        Ok(&self.map[start..end])
    }

    /// A tensor's raw bytes without copying them: a window onto the file's map that keeps the
    /// map alive. Its pages are the page cache's, read in on first use.
    pub fn tensor_window(&self, info: &TensorInfo) -> Result<TensorBytes> {
        let (start, end) = self.extent(info)?;
        Ok(TensorBytes::window(self.map.clone(), start..end))
    }

    /// Maps every page of the tensor data now (`MADV_POPULATE_READ`; llama.cpp maps model
    /// files with `MAP_POPULATE`), for weights used in place from the map: otherwise the first
    /// forward pass takes a page fault per 64 KiB of weights, which made a fresh model's first
    /// prefill 10-20 % slower than its next (Gemma 3, 253 MB). Not for weights copied out at
    /// load (dense or device), whose pages are released tensor by tensor and would otherwise
    /// all be resident at once. Failure (a kernel before 5.14) only leaves the faults.
    pub fn populate_tensor_pages(&self) {
        #[cfg(target_os = "linux")]
        if let Backing::Mapped(map) = &*self.map {
            const PAGE: usize = 4096;
            let start = self.data_start / PAGE * PAGE;
            if start < map.len() {
                let _ = map.advise_range(memmap2::Advice::PopulateRead, start, map.len() - start);
            }
        }
    }

    /// Tells the kernel this process is done with the header and metadata (once the tokenizer,
    /// chat template and configuration are built from them: the token texts and merges are
    /// 2-5 MB of a file): the pages wholly before the tensor data leave the resident set.
    /// Reading the metadata again stays correct (the pages come back from the file).
    pub fn release_metadata_pages(&self) {
        TensorBytes::window(self.map.clone(), 0..self.data_start.min(self.map.len())).release_pages();
    }

    /// Tells the kernel this process is done with a tensor's data (after copying it): the pages
    /// wholly inside it leave the resident set, so a model loaded into its own buffers does
    /// not also hold the whole file in memory at its peak. Reading the tensor again stays
    /// correct (the pages come back from the file); failure is harmless and ignored.
    pub fn release(&self, info: &TensorInfo) {
        if let Ok(window) = self.tensor_window(info) {
            window.release_pages();
        }
    }

    /// A tensor dequantized to f32, in ggml element order (row-major over [`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<(TensorInfo, Vec<f32>)> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::tensor(name, "missing from the file"))?.clone();
        let bytes = self.tensor_bytes(&info)?;
        let mut out = vec![0f32; info.n_elements()];
        dequantize(info.ggml_type, bytes, &mut out).map_err(|problem| match problem {
            dequant::DequantError::Unsupported(t) => {
                ModelError::UnsupportedQuantization { tensor: info.name.clone(), ggml_type: t.to_string() }
            }
            dequant::DequantError::Length { .. } => ModelError::tensor(&info.name, problem.to_string()),
        })?;
        Ok((info, out))
    }

    fn extent(&self, info: &TensorInfo) -> Result<(usize, usize)> {
        let size = info.ggml_type.byte_size(info.n_elements()).ok_or_else(|| match info.ggml_type.block_layout() {
            None => ModelError::UnsupportedQuantization { tensor: info.name.clone(), ggml_type: info.ggml_type.to_string() },
            Some((block, _)) if info.n_elements().is_multiple_of(block) => {
                ModelError::Truncated { what: format!("the data of tensor `{}`", info.name) }
            }
            Some((block, _)) => ModelError::tensor(
                &info.name,
                format!("{} elements is not a multiple of the {} block size {block}", info.n_elements(), info.ggml_type),
            ),
        })?;
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.map.len() => Ok((start, end)),
            _ => Err(ModelError::Truncated {
                what: format!(
                    "the data of tensor `{}` ({size} bytes at offset {}; the data section holds {} bytes)",
                    info.name,
                    info.offset,
                    self.map.len().saturating_sub(self.data_start)
                ),
            }),
        }
    }
}

/// A count of entries that each take at least `min_bytes` must fit in the bytes left.
fn check_count(count: u64, min_bytes: usize, left: usize, what: &str) -> Result<()> {
    if count > (left / min_bytes) as u64 {
        return Err(ModelError::Truncated {
            what: format!("the header: {count} {what} cannot fit in the {left} bytes left"),
        });
    }
    Ok(())
}

fn to_usize(v: u64, tensor: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| ModelError::tensor(tensor, format!("{v} does not fit in memory on this machine")))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bad_files;
#[cfg(test)]
mod tests_writer;
