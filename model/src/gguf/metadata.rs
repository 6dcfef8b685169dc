//! GGUF metadata values and typed look-ups that turn a missing or mistyped key into a
//! [`ModelError::Metadata`] naming the key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use super::packed::PackedArray;
use crate::error::{ModelError, Result};

/// How a metadata value is encoded: the ids of ggml's `enum gguf_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        const ALL: [ValueType; 13] = [
            ValueType::U8,
            ValueType::I8,
            ValueType::U16,
            ValueType::I16,
            ValueType::U32,
            ValueType::I32,
            ValueType::F32,
            ValueType::Bool,
            ValueType::String,
            ValueType::Array,
            ValueType::U64,
            ValueType::I64,
            ValueType::F64,
        ];
        ALL.get(usize::try_from(id).ok()?).copied()
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type takes in a file: a string is at least its
    /// 8-byte length, an array its item type and count. Bounds what a count field can claim.
    pub fn min_encoded_len(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // llama.cpp's names (`gguf_type_name`), so messages read the same as its logs.
        let name = match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "str",
            ValueType::Array => "arr",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        };
        f.write_str(name)
    }
}

/// One metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    /// A long array of scalars or strings as read from a file, in one buffer (see
    /// [`PackedArray`]); [`Metadata`]'s array accessors read both kinds.
    Packed(PackedArray),
}

impl MetadataValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::F64(_) => ValueType::F64,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) | MetadataValue::Packed(_) => ValueType::Array,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The items of an array, borrowed when it is a [`MetadataValue::Array`], made one by
    /// one from a [`MetadataValue::Packed`] one (prefer [`Metadata::opt_str_list`] and the
    /// other typed accessors for long arrays).
    pub fn as_array(&self) -> Option<Cow<'_, [MetadataValue]>> {
        match self {
            MetadataValue::Array(a) => Some(Cow::Borrowed(a)),
            MetadataValue::Packed(p) => Some(Cow::Owned(p.values().collect())),
            _ => None,
        }
    }

    /// The number of items of an array of either kind.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            MetadataValue::Array(a) => Some(a.len()),
            MetadataValue::Packed(p) => Some(p.len()),
            _ => None,
        }
    }
}

/// All key/value pairs of a GGUF file, with typed accessors.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: BTreeMap<String, MetadataValue>,
    /// The declared item type of each array read from a file: an empty array has no item to
    /// tell it, and copying a file's keys (see `GgufWriter::copy_metadata`) must keep it.
    array_types: BTreeMap<String, ValueType>,
}

impl Metadata {
    pub fn new(entries: BTreeMap<String, MetadataValue>) -> Self {
        Metadata { entries, array_types: BTreeMap::new() }
    }

    pub(super) fn with_array_types(
        entries: BTreeMap<String, MetadataValue>,
        array_types: BTreeMap<String, ValueType>,
    ) -> Self {
        Metadata { entries, array_types }
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entries.get(key)
    }

    /// The item type of the array at `key`: as declared in the file it was read from, else
    /// that of its first item; `None` for a missing key, a non-array, or an empty array that
    /// was not read from a file.
    pub fn array_item_type(&self, key: &str) -> Option<ValueType> {
        match self.get(key)? {
            MetadataValue::Packed(p) => Some(p.item_type()),
            MetadataValue::Array(items) => {
                self.array_types.get(key).copied().or_else(|| items.first().map(MetadataValue::value_type))
            }
            _ => None,
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn required(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| ModelError::metadata(key, "missing"))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.required(key)?.as_str().ok_or_else(|| ModelError::metadata(key, "expected a string"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| ModelError::metadata(key, "expected a string"))).transpose()
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::metadata(key, "missing"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| ModelError::metadata(key, "expected a non-negative integer"))
            })
            .transpose()
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| ModelError::metadata(key, "expected a number"))).transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| ModelError::metadata(key, "expected a boolean"))).transpose()
    }

    /// An array's items (made one by one if the file's array was packed: see
    /// [`MetadataValue::as_array`]).
    pub fn opt_array(&self, key: &str) -> Result<Option<Cow<'_, [MetadataValue]>>> {
        self.get(key).map(|v| v.as_array().ok_or_else(|| ModelError::metadata(key, "expected an array"))).transpose()
    }

    /// The number of items of an array.
    pub fn opt_array_len(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| v.array_len().ok_or_else(|| ModelError::metadata(key, "expected an array"))).transpose()
    }

    /// An array of strings, borrowed (token lists).
    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let not_strings = || ModelError::metadata(key, "expected strings");
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Packed(p)) => p.strs().map(|items| Some(items.collect())).ok_or_else(not_strings),
            Some(MetadataValue::Array(items)) => {
                items.iter().map(|v| v.as_str().ok_or_else(not_strings)).collect::<Result<Vec<_>>>().map(Some)
            }
            Some(_) => Err(ModelError::metadata(key, "expected an array")),
        }
    }

    /// An array of strings (merges).
    pub fn opt_string_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        Ok(self.opt_str_list(key)?.map(|items| items.into_iter().map(str::to_owned).collect()))
    }

    /// Each item of an array through `item`, which says `None` for an item of the wrong type.
    fn map_items<T>(&self, key: &str, item: impl Fn(&MetadataValue) -> Option<T>, expected: &str) -> Result<Option<Vec<T>>> {
        let wrong = || ModelError::metadata(key, format!("expected {expected}"));
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Packed(p)) => p.values().map(|v| item(&v).ok_or_else(wrong)).collect::<Result<_>>().map(Some),
            Some(MetadataValue::Array(items)) => items.iter().map(|v| item(v).ok_or_else(wrong)).collect::<Result<_>>().map(Some),
            Some(_) => Err(ModelError::metadata(key, "expected an array")),
        }
    }

    /// An array of integers (token types).
    pub fn opt_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.map_items(key, MetadataValue::as_i64, "integers")
    }

    /// An array of floats (SentencePiece scores).
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.map_items(key, |v| v.as_f64().map(|f| f as f32), "numbers")
    }
}
