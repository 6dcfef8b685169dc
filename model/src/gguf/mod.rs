//! GGUF files: header, metadata, tensor directory and memory-mapped tensor data.
//!
//! [`GgufFile::open`] maps the file and parses everything but the tensor data, which stays
//! in the page cache until a loader asks for it with [`GgufFile::tensor_bytes`] and turns it
//! into floats with [`dequantize`] (or keeps the blocks quantized). Every malformed input is
//! a typed [`ModelError`] that names the field or tensor, never a panic.

pub mod dequant;
mod metadata;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use dequant::dequantize;
pub use metadata::{Metadata, MetadataValue};
pub use types::GgmlType;

use crate::error::{ModelError, Result};

const GGUF_MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
const DEFAULT_ALIGNMENT: usize = 32;
/// Upper bounds that keep a corrupt length field from turning into a huge allocation.
const MAX_STRING_BYTES: u64 = 1 << 30;
const MAX_ARRAY_ITEMS: u64 = 1 << 28;
const MAX_DIMS: u32 = 8;
/// Arrays of arrays recurse; a crafted file must not be able to overflow the stack.
const MAX_ARRAY_DEPTH: u32 = 16;

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
    map: memmap2::Mmap,
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
        Self::parse(path, map)
    }

    fn parse(path: PathBuf, map: memmap2::Mmap) -> Result<GgufFile> {
        let mut r = Reader { bytes: &map, pos: 0, depth: 0 };
        let magic = r.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(ModelError::BadMagic { path, magic });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;

        let mut entries = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string(&format!("metadata key #{i}"))?;
            let value_type = r.u32(&key)?;
            let value = r.value(value_type, &key)?;
            entries.insert(key, value);
        }
        let metadata = Metadata::new(entries);

        let mut tensors = Vec::new();
        let mut by_name = BTreeMap::new();
        for i in 0..tensor_count {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&name)?;
            if n_dims > MAX_DIMS {
                return Err(ModelError::tensor(&name, format!("{n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name).and_then(|d| to_usize(d, &name)))
                .collect::<Result<Vec<_>>>()?;
            if dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
                return Err(ModelError::tensor(&name, format!("element count of {dims:?} overflows")));
            }
            let ggml_type = GgmlType::from_id(r.u32(&name)?);
            let offset = to_usize(r.u64(&name)?, &name)?;
            by_name.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }

        let alignment = metadata.opt_usize("general.alignment")?.unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(ModelError::metadata("general.alignment", format!("{alignment} is not a power of two")));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let file = GgufFile { path, version, metadata, tensors, by_name, data_start, map };
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
            _ => Err(ModelError::Truncated { what: format!("the data of tensor `{}`", info.name) }),
        }
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| ModelError::Truncated { what: what.to_string() })
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// How many arrays the value being read is nested in.
    depth: u32,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| ModelError::Truncated { what: what.to_string() })?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.take::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.take::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING_BYTES {
            return Err(ModelError::Truncated { what: what.to_string() });
        }
        let len = to_usize(len, what)?;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| ModelError::Truncated { what: what.to_string() })?;
        // Token lists of real files contain invalid UTF-8 now and then; keep what we can.
        let s = String::from_utf8_lossy(&self.bytes[self.pos..end]).into_owned();
        self.pos = end;
        Ok(s)
    }

    fn value(&mut self, value_type: u32, key: &str) -> Result<MetadataValue> {
        Ok(match value_type {
            0 => MetadataValue::U8(self.take::<1>(key)?[0]),
            1 => MetadataValue::I8(i8::from_le_bytes(self.take::<1>(key)?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.take::<2>(key)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.take::<2>(key)?)),
            4 => MetadataValue::U32(self.u32(key)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.take::<4>(key)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.take::<4>(key)?)),
            7 => MetadataValue::Bool(self.take::<1>(key)?[0] != 0),
            8 => MetadataValue::String(self.string(key)?),
            9 => {
                let item_type = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY_ITEMS || item_type == 9 && n > 1 << 16 {
                    return Err(ModelError::metadata(key, format!("array of {n} items is too large")));
                }
                if self.depth >= MAX_ARRAY_DEPTH {
                    return Err(ModelError::metadata(key, "arrays nested too deeply"));
                }
                let n = to_usize(n, key)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                self.depth += 1;
                for _ in 0..n {
                    items.push(self.value(item_type, key)?);
                }
                self.depth -= 1;
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64(key)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.take::<8>(key)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.take::<8>(key)?)),
            other => return Err(ModelError::metadata(key, format!("unknown value type {other}"))),
        })
    }
}

#[cfg(test)]
mod tests;
