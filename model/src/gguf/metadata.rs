//! GGUF metadata values and typed look-ups that turn a missing or mistyped key into a
//! [`ModelError::Metadata`] naming the key.

use std::collections::BTreeMap;

use crate::error::{ModelError, Result};

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
}

impl MetadataValue {
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

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// All key/value pairs of a GGUF file, with typed accessors.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: BTreeMap<String, MetadataValue>,
}

impl Metadata {
    pub fn new(entries: BTreeMap<String, MetadataValue>) -> Self {
        Metadata { entries }
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entries.get(key)
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
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| ModelError::metadata(key, "expected a string")))
            .transpose()
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
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| ModelError::metadata(key, "expected a number")))
            .transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| ModelError::metadata(key, "expected a boolean")))
            .transpose()
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&[MetadataValue]>> {
        self.get(key)
            .map(|v| v.as_array().ok_or_else(|| ModelError::metadata(key, "expected an array")))
            .transpose()
    }

    /// An array of strings (token lists, merges).
    pub fn opt_string_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(items) = self.opt_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| ModelError::metadata(key, "expected strings")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers (token types).
    pub fn opt_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.opt_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| ModelError::metadata(key, "expected integers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of floats (SentencePiece scores).
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(items) = self.opt_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| ModelError::metadata(key, "expected numbers")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
