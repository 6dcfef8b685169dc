//! Long metadata arrays kept in one buffer instead of one [`MetadataValue`] per item.
//!
//! A GGUF vocabulary is three or four arrays of one item per token: texts, types, scores
//! (and, for byte-level BPE, as many merges). As `Vec<MetadataValue>` every item costs a
//! 32-byte value, and every string a heap allocation of its own: ~8 MB for SmolLM2's 49 152
//! tokens and 48 900 merges, ~30 MB for Gemma 3's 262 144 tokens, all of it alive while the
//! tokenizer is built beside the mapped weights (issue 9 bounds peak RSS at 1.2× the file).
//! A [`PackedArray`] holds fixed-size items as their little-endian bytes from the file
//! (4 bytes per `i32`) and strings back to back with one `u32` end offset each.

use super::metadata::{MetadataValue, ValueType};

/// Arrays of at least this many items are read packed; shorter ones (layer patterns, small
/// lists) stay `MetadataValue::Array` values, which are simpler to match on.
pub(crate) const PACK_MIN_ITEMS: u64 = 256;

/// One long array of scalars or strings (never of arrays), as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedArray {
    item_type: ValueType,
    len: usize,
    /// Fixed-size items: their little-endian encodings. Strings: their texts, concatenated.
    bytes: Vec<u8>,
    /// Strings only: where item `i` ends in `bytes` (it starts where item `i − 1` ends).
    ends: Vec<u32>,
}

impl PackedArray {
    /// An empty array of `item_type` items, with room for `len` of them. `None` for arrays
    /// of arrays.
    pub(crate) fn with_capacity(item_type: ValueType, len: usize) -> Option<PackedArray> {
        let (bytes, ends) = match fixed_size(item_type) {
            Some(size) => (Vec::with_capacity(len.saturating_mul(size)), Vec::new()),
            None if item_type == ValueType::String => (Vec::new(), Vec::with_capacity(len)),
            None => return None,
        };
        Some(PackedArray { item_type, len: 0, bytes, ends })
    }

    /// Appends one fixed-size item in its file encoding; `encoded` has the type's size.
    pub(crate) fn push_encoded(&mut self, encoded: &[u8]) {
        debug_assert_eq!(Some(encoded.len()), fixed_size(self.item_type));
        self.bytes.extend_from_slice(encoded);
        self.len += 1;
    }

    /// Appends one string item. `false` (and nothing appended) once the texts would pass
    /// 4 GiB, which no real vocabulary comes near.
    pub(crate) fn push_str(&mut self, text: &str) -> bool {
        debug_assert_eq!(self.item_type, ValueType::String);
        let Ok(end) = u32::try_from(self.bytes.len() + text.len()) else { return false };
        self.bytes.extend_from_slice(text.as_bytes());
        self.ends.push(end);
        self.len += 1;
        true
    }

    /// Gives back the room reserved but not used.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    pub fn item_type(&self) -> ValueType {
        self.item_type
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Item `i` of an array of strings.
    pub fn str(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Pushed from `&str`s, split at their own ends: always valid UTF-8 on char boundaries.
        std::str::from_utf8(&self.bytes[start..end]).ok()
    }

    /// Every item of an array of strings, in order; `None` for other item types.
    pub fn strs(&self) -> Option<impl Iterator<Item = &str>> {
        (self.item_type == ValueType::String).then(|| (0..self.len).filter_map(|i| self.str(i)))
    }

    /// Item `i` as a value of its own.
    pub fn get(&self, i: usize) -> Option<MetadataValue> {
        if i >= self.len {
            return None;
        }
        let Some(size) = fixed_size(self.item_type) else {
            return self.str(i).map(|s| MetadataValue::String(s.to_owned()));
        };
        decode(self.item_type, &self.bytes[i * size..(i + 1) * size])
    }

    /// Every item as a value of its own (allocates; for callers that need `MetadataValue`s).
    pub fn values(&self) -> impl Iterator<Item = MetadataValue> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// The array's body as a GGUF file stores it: item type, count, then the items untagged.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.item_type.id().to_le_bytes());
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        if fixed_size(self.item_type).is_some() {
            out.extend_from_slice(&self.bytes);
            return;
        }
        for text in (0..self.len).filter_map(|i| self.str(i)) {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Bytes of one item of a fixed-size type; `None` for strings and arrays.
pub(crate) fn fixed_size(item_type: ValueType) -> Option<usize> {
    match item_type {
        ValueType::String | ValueType::Array => None,
        other => Some(other.min_encoded_len()),
    }
}

/// One fixed-size item from its little-endian encoding.
fn decode(item_type: ValueType, b: &[u8]) -> Option<MetadataValue> {
    Some(match item_type {
        ValueType::U8 => MetadataValue::U8(b[0]),
        ValueType::I8 => MetadataValue::I8(b[0] as i8),
        ValueType::Bool => MetadataValue::Bool(b[0] != 0),
        ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(b.try_into().ok()?)),
        ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(b.try_into().ok()?)),
        ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(b.try_into().ok()?)),
        ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(b.try_into().ok()?)),
        ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(b.try_into().ok()?)),
        ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(b.try_into().ok()?)),
        ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(b.try_into().ok()?)),
        ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(b.try_into().ok()?)),
        ValueType::String | ValueType::Array => return None,
    })
}
