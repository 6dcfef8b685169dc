//! Writing GGUF v3 files, byte by byte: for test models (small random-weight checkpoints
//! that llama.cpp must load too) and for the bad files of the reader's tests.
//!
//! The layout is ggml's own (`gguf_write_out`): the header (magic, version 3, tensor count,
//! metadata count), the metadata entries in insertion order, the tensor directory in
//! insertion order, zeros up to the alignment, then each tensor's data followed by zeros up
//! to the alignment. Tensor offsets are therefore consecutive, which llama.cpp requires.
//!
//! Everything llama.cpp would reject is refused when it is added, with an error naming the
//! key or tensor, so [`GgufWriter::to_bytes`] cannot fail: empty keys, arrays of mixed or
//! nested types, a `general.alignment` that is not a `u32` power of two, tensor names of 64
//! bytes or more, more than 4 dimensions, rows that are not whole blocks, data of the wrong
//! length. A tensor of a type this build cannot size ([`GgmlType::Other`]) is written with
//! the bytes given, for tests of unknown types; llama.cpp may reject such a file.

use std::path::Path;

use super::metadata::{Metadata, MetadataValue, ValueType};
use super::types::GgmlType;
use crate::error::{ModelError, Result};

const VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u32 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_NAME` (names must be shorter) and `GGML_MAX_DIMS`.
const MAX_NAME_BYTES: usize = 64;
const MAX_DIMS: usize = 4;

/// A GGUF file being assembled in memory. Adding a key or tensor that is already there
/// replaces it in place, so a base file can be varied one entry at a time.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<Entry>,
    tensors: Vec<TensorEntry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: MetadataValue,
    /// For arrays: the item type written (an empty array has no item to show it).
    item_type: Option<ValueType>,
}

#[derive(Debug, Clone)]
struct TensorEntry {
    name: String,
    dims: Vec<usize>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata entry. An array's item type is its first item's; an
    /// empty array needs [`GgufWriter::add_typed_array`].
    pub fn add(&mut self, key: impl Into<String>, value: MetadataValue) -> Result<&mut Self> {
        let key = key.into();
        let item_type = match &value {
            MetadataValue::Array(items) => match items.first() {
                Some(first) => Some(first.value_type()),
                None => return Err(ModelError::metadata(&key, "an empty array needs an explicit item type")),
            },
            MetadataValue::Packed(packed) => Some(packed.item_type()),
            _ => None,
        };
        self.insert(key, value, item_type)
    }

    /// Adds (or replaces) an array whose items are all of `item_type`.
    pub fn add_typed_array(
        &mut self,
        key: impl Into<String>,
        item_type: ValueType,
        items: Vec<MetadataValue>,
    ) -> Result<&mut Self> {
        self.insert(key.into(), MetadataValue::Array(items), Some(item_type))
    }

    pub fn add_array(&mut self, key: impl Into<String>, items: Vec<MetadataValue>) -> Result<&mut Self> {
        self.add(key, MetadataValue::Array(items))
    }

    pub fn add_string_array<S: Into<String>>(
        &mut self,
        key: impl Into<String>,
        items: impl IntoIterator<Item = S>,
    ) -> Result<&mut Self> {
        let items = items.into_iter().map(|s| MetadataValue::String(s.into())).collect();
        self.add_typed_array(key, ValueType::String, items)
    }

    pub fn add_u8(&mut self, key: impl Into<String>, v: u8) -> Result<&mut Self> {
        self.add(key, MetadataValue::U8(v))
    }
    pub fn add_i8(&mut self, key: impl Into<String>, v: i8) -> Result<&mut Self> {
        self.add(key, MetadataValue::I8(v))
    }
    pub fn add_u16(&mut self, key: impl Into<String>, v: u16) -> Result<&mut Self> {
        self.add(key, MetadataValue::U16(v))
    }
    pub fn add_i16(&mut self, key: impl Into<String>, v: i16) -> Result<&mut Self> {
        self.add(key, MetadataValue::I16(v))
    }
    pub fn add_u32(&mut self, key: impl Into<String>, v: u32) -> Result<&mut Self> {
        self.add(key, MetadataValue::U32(v))
    }
    pub fn add_i32(&mut self, key: impl Into<String>, v: i32) -> Result<&mut Self> {
        self.add(key, MetadataValue::I32(v))
    }
    pub fn add_u64(&mut self, key: impl Into<String>, v: u64) -> Result<&mut Self> {
        self.add(key, MetadataValue::U64(v))
    }
    pub fn add_i64(&mut self, key: impl Into<String>, v: i64) -> Result<&mut Self> {
        self.add(key, MetadataValue::I64(v))
    }
    pub fn add_f32(&mut self, key: impl Into<String>, v: f32) -> Result<&mut Self> {
        self.add(key, MetadataValue::F32(v))
    }
    pub fn add_f64(&mut self, key: impl Into<String>, v: f64) -> Result<&mut Self> {
        self.add(key, MetadataValue::F64(v))
    }
    pub fn add_bool(&mut self, key: impl Into<String>, v: bool) -> Result<&mut Self> {
        self.add(key, MetadataValue::Bool(v))
    }
    pub fn add_string(&mut self, key: impl Into<String>, v: impl Into<String>) -> Result<&mut Self> {
        self.add(key, MetadataValue::String(v.into()))
    }

    /// Sets `general.alignment` (a `u32`, as llama.cpp requires; 32 when not set).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        self.add_u32(ALIGNMENT_KEY, alignment)
    }

    /// Copies the entries of `from` whose key `keep` accepts, in `from`'s (sorted) order,
    /// keeping each array's item type as the file declared it.
    pub fn copy_metadata(&mut self, from: &Metadata, mut keep: impl FnMut(&str) -> bool) -> Result<&mut Self> {
        for key in from.keys().filter(|k| keep(k)) {
            let Some(value) = from.get(key) else { continue };
            match (value, from.array_item_type(key)) {
                (MetadataValue::Array(items), Some(item_type)) => self.add_typed_array(key, item_type, items.clone())?,
                _ => self.add(key, value.clone())?,
            };
        }
        Ok(self)
    }

    /// Copies every entry of `from` whose key starts with `prefix` (e.g. `"tokenizer."`).
    pub fn copy_metadata_with_prefix(&mut self, from: &Metadata, prefix: &str) -> Result<&mut Self> {
        self.copy_metadata(from, |key| key.starts_with(prefix))
    }

    /// Removes a metadata entry, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<MetadataValue> {
        let i = self.metadata.iter().position(|e| e.key == key)?;
        Some(self.metadata.remove(i).value)
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// Adds (or replaces) a tensor: `dims` in ggml order (innermost first, so a PyTorch
    /// `[out, in]` matrix is `[in, out]`), `data` in `ggml_type`'s encoding.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        ggml_type: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let data = data.into();
        check_tensor(&name, dims, ggml_type, data.len())?;
        let entry = TensorEntry { name, dims: dims.to_vec(), ggml_type, data };
        match self.tensors.iter_mut().find(|t| t.name == entry.name) {
            Some(existing) => *existing = entry,
            None => self.tensors.push(entry),
        }
        Ok(self)
    }

    /// Adds (or replaces) an F32 tensor.
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, dims: &[usize], values: &[f32]) -> Result<&mut Self> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    /// Removes a tensor; false if there was none of that name.
    pub fn remove_tensor(&mut self, name: &str) -> bool {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        self.tensors.len() != before
    }

    /// The alignment of the data section and of every tensor in it.
    pub fn alignment(&self) -> usize {
        match self.get(ALIGNMENT_KEY) {
            Some(MetadataValue::U32(a)) => *a as usize,
            _ => DEFAULT_ALIGNMENT as usize,
        }
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::with_capacity(
            self.tensors.iter().map(|t| t.data.len().next_multiple_of(alignment)).sum::<usize>() + 4096,
        );
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for entry in &self.metadata {
            put_string(&mut out, &entry.key);
            out.extend_from_slice(&entry.value.value_type().id().to_le_bytes());
            match (&entry.value, entry.item_type) {
                (MetadataValue::Array(items), Some(item_type)) => put_array(&mut out, item_type, items),
                (MetadataValue::Packed(packed), _) => packed.write(&mut out),
                (value, _) => put_value(&mut out, value),
            }
        }
        let mut offset = 0usize;
        for tensor in &self.tensors {
            put_string(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for &d in &tensor.dims {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += tensor.data.len().next_multiple_of(alignment);
        }
        pad(&mut out, alignment);
        for tensor in &self.tensors {
            out.extend_from_slice(&tensor.data);
            pad(&mut out, alignment);
        }
        out
    }

    /// Writes the file to `path`.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
    }

    fn insert(&mut self, key: String, value: MetadataValue, item_type: Option<ValueType>) -> Result<&mut Self> {
        check_entry(&key, &value, item_type)?;
        let entry = Entry { key, value, item_type };
        match self.metadata.iter_mut().find(|e| e.key == entry.key) {
            Some(existing) => *existing = entry,
            None => self.metadata.push(entry),
        }
        Ok(self)
    }
}

/// What llama.cpp's reader demands of a metadata entry.
fn check_entry(key: &str, value: &MetadataValue, item_type: Option<ValueType>) -> Result<()> {
    if key.is_empty() {
        return Err(ModelError::metadata(key, "the key is empty"));
    }
    if key == ALIGNMENT_KEY {
        match value {
            MetadataValue::U32(a) if a.is_power_of_two() => {}
            MetadataValue::U32(a) => return Err(ModelError::metadata(key, format!("{a} is not a power of two"))),
            other => return Err(ModelError::metadata(key, format!("must be a u32, not a {}", other.value_type()))),
        }
    }
    if let MetadataValue::Array(items) = value {
        let item_type = item_type.ok_or_else(|| ModelError::metadata(key, "an array needs an item type"))?;
        if item_type == ValueType::Array {
            return Err(ModelError::metadata(key, "arrays of arrays cannot be read by llama.cpp"));
        }
        if let Some((i, item)) = items.iter().enumerate().find(|(_, item)| item.value_type() != item_type) {
            return Err(ModelError::metadata(
                key,
                format!("item #{i} is a {}, but the array holds {item_type} items", item.value_type()),
            ));
        }
    }
    Ok(())
}

/// What llama.cpp's reader demands of a tensor directory entry and its data.
fn check_tensor(name: &str, dims: &[usize], ggml_type: GgmlType, data_len: usize) -> Result<()> {
    let bad = |problem: String| Err(ModelError::tensor(name, problem));
    if name.is_empty() || name.len() >= MAX_NAME_BYTES {
        return bad(format!("names must be 1 to {} bytes long, this one is {}", MAX_NAME_BYTES - 1, name.len()));
    }
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return bad(format!("{} dimensions; ggml tensors have 1 to {MAX_DIMS}", dims.len()));
    }
    let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).filter(|&n| n < i64::MAX as u64);
    let Some(elements) = elements.and_then(|n| usize::try_from(n).ok()) else {
        return bad(format!("the element count of {dims:?} overflows"));
    };
    let Some((block, _)) = ggml_type.block_layout() else {
        return Ok(());
    };
    if !dims[0].is_multiple_of(block) {
        return bad(format!("rows of {} elements are not whole {ggml_type} blocks of {block}", dims[0]));
    }
    match ggml_type.byte_size(elements) {
        Some(size) if size == data_len => Ok(()),
        Some(size) => bad(format!("{dims:?} of {ggml_type} takes {size} bytes, but {data_len} were given")),
        None => bad(format!("the byte size of {dims:?} of {ggml_type} overflows")),
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An array's body: item type, count, then the items without type tags.
fn put_array(out: &mut Vec<u8>, item_type: ValueType, items: &[MetadataValue]) {
    out.extend_from_slice(&item_type.id().to_le_bytes());
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        put_value(out, item);
    }
}

/// A value without its type tag.
fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.push(*v),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => put_string(out, s),
        // Nested arrays are refused when added; an inner array's item type is its first item's.
        MetadataValue::Array(items) => {
            put_array(out, items.first().map_or(ValueType::U8, MetadataValue::value_type), items)
        }
        MetadataValue::Packed(packed) => packed.write(out),
    }
}

fn pad(out: &mut Vec<u8>, alignment: usize) {
    out.resize(out.len().next_multiple_of(alignment), 0);
}
