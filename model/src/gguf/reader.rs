//! A bounds-checked little-endian cursor over a GGUF header (everything before the tensor
//! data). Every length or count field is checked against the bytes left in the file before
//! anything is allocated for it, so a corrupt field is an error naming the key or tensor,
//! never a huge allocation.

use std::borrow::Cow;
use std::fmt;

use super::metadata::{MetadataValue, ValueType};
use super::packed::{PACK_MIN_ITEMS, PackedArray, fixed_size};
use crate::error::{ModelError, Result};

/// Upper bounds that keep a corrupt length field from turning into a huge allocation
/// (llama.cpp's `GGUF_MAX_STRING_LENGTH` is also 1 GiB).
const MAX_STRING_BYTES: u64 = 1 << 30;
const MAX_ARRAY_ITEMS: u64 = 1 << 28;
/// Arrays of arrays recurse; a crafted file must not be able to overflow the stack.
const MAX_ARRAY_DEPTH: u32 = 16;
/// Vectors start no larger than this; beyond it they grow only as items are actually read.
const MAX_INITIAL_CAPACITY: usize = 1 << 16;

/// What is being read, for error messages; formatted only when something goes wrong.
#[derive(Clone, Copy)]
pub(super) enum Field<'a> {
    /// A header field: "the magic number", "the tensor count", …
    Header(&'static str),
    /// The name of the `n`th metadata key.
    KeyName(u64),
    /// The value of a metadata key.
    Key(&'a str),
    /// The name of the `n`th tensor.
    TensorName(u64),
    /// A tensor's directory entry.
    Tensor(&'a str),
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Header(what) => f.write_str(what),
            Field::KeyName(i) => write!(f, "the name of metadata key #{i}"),
            Field::Key(key) => write!(f, "metadata `{key}`"),
            Field::TensorName(i) => write!(f, "the name of tensor #{i}"),
            Field::Tensor(name) => write!(f, "the directory entry of tensor `{name}`"),
        }
    }
}

fn truncated(field: Field<'_>, detail: impl fmt::Display) -> ModelError {
    ModelError::Truncated { what: format!("{field}: {detail}") }
}

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// How many arrays the value being read is nested in.
    depth: u32,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0, depth: 0 }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take<const N: usize>(&mut self, field: Field<'_>) -> Result<[u8; N]> {
        if self.remaining() < N {
            return Err(truncated(field, format!("needs {N} bytes, {} left", self.remaining())));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    pub(super) fn u32(&mut self, field: Field<'_>) -> Result<u32> {
        self.take::<4>(field).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, field: Field<'_>) -> Result<u64> {
        self.take::<8>(field).map(u64::from_le_bytes)
    }

    pub(super) fn string(&mut self, field: Field<'_>) -> Result<String> {
        self.str(field).map(Cow::into_owned)
    }

    /// A string, borrowed from the file when it is valid UTF-8.
    fn str(&mut self, field: Field<'_>) -> Result<Cow<'a, str>> {
        let len = self.u64(field)?;
        let left = self.remaining();
        if len > MAX_STRING_BYTES || len > left as u64 {
            return Err(truncated(field, format!("a string of {len} bytes, but only {left} bytes are left")));
        }
        let end = self.pos + len as usize;
        // Token lists of real files contain invalid UTF-8 now and then; keep what we can.
        let s = String::from_utf8_lossy(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(s)
    }

    /// A value of type id `value_type`. Array item types are recorded in `array_type` (the
    /// outermost array's), since an empty array has no item to show it.
    pub(super) fn value(
        &mut self,
        value_type: u32,
        key: &str,
        array_type: &mut Option<ValueType>,
    ) -> Result<MetadataValue> {
        let Some(value_type) = ValueType::from_id(value_type) else {
            return Err(ModelError::metadata(key, format!("unknown value type {value_type}")));
        };
        let field = Field::Key(key);
        Ok(match value_type {
            ValueType::U8 => MetadataValue::U8(self.take::<1>(field)?[0]),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.take::<1>(field)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.take::<2>(field)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.take::<2>(field)?)),
            ValueType::U32 => MetadataValue::U32(self.u32(field)?),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.take::<4>(field)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.take::<4>(field)?)),
            ValueType::Bool => MetadataValue::Bool(self.take::<1>(field)?[0] != 0),
            ValueType::String => MetadataValue::String(self.string(field)?),
            ValueType::U64 => MetadataValue::U64(self.u64(field)?),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.take::<8>(field)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.take::<8>(field)?)),
            ValueType::Array => self.array(key, array_type)?,
        })
    }

    /// An array: a [`MetadataValue::Packed`] when it is long and of scalars or strings, else
    /// a [`MetadataValue::Array`].
    fn array(&mut self, key: &str, array_type: &mut Option<ValueType>) -> Result<MetadataValue> {
        let field = Field::Key(key);
        let item_id = self.u32(field)?;
        let n = self.u64(field)?;
        let Some(item_type) = ValueType::from_id(item_id) else {
            return Err(ModelError::metadata(key, format!("array of unknown value type {item_id}")));
        };
        if n > MAX_ARRAY_ITEMS || item_type == ValueType::Array && n > 1 << 16 {
            return Err(ModelError::metadata(key, format!("an array of {n} items is too large")));
        }
        // Each item takes at least `min_encoded_len` bytes: a count the rest of the file
        // cannot hold is corrupt, and is reported before any memory is reserved for it.
        let left = self.remaining();
        let min_len = item_type.min_encoded_len();
        if n > (left / min_len) as u64 {
            return Err(truncated(
                field,
                format!(
                    "an array of {n} {item_type} items needs at least {} bytes, but only {left} are left",
                    n.saturating_mul(min_len as u64)
                ),
            ));
        }
        if self.depth >= MAX_ARRAY_DEPTH {
            return Err(ModelError::metadata(key, "arrays nested too deeply"));
        }
        if self.depth == 0 {
            *array_type = Some(item_type);
        }
        let n = n as usize; // at most `left`, so it fits
        if n as u64 >= PACK_MIN_ITEMS
            && let Some(packed) = PackedArray::with_capacity(item_type, n.min(MAX_INITIAL_CAPACITY))
        {
            return self.packed(key, packed, n).map(MetadataValue::Packed);
        }
        let mut items = Vec::with_capacity(n.min(MAX_INITIAL_CAPACITY));
        self.depth += 1;
        for _ in 0..n {
            items.push(self.value(item_id, key, &mut None)?);
        }
        self.depth -= 1;
        Ok(MetadataValue::Array(items))
    }

    /// The `n` items of a long array of scalars or strings, into `packed`.
    fn packed(&mut self, key: &str, mut packed: PackedArray, n: usize) -> Result<PackedArray> {
        let field = Field::Key(key);
        match fixed_size(packed.item_type()) {
            Some(size) => {
                // `n × size` bytes were checked to be left before this was called.
                for item in self.bytes[self.pos..self.pos + n * size].chunks_exact(size) {
                    packed.push_encoded(item);
                }
                self.pos += n * size;
            }
            None => {
                for _ in 0..n {
                    let text = self.str(field)?;
                    if !packed.push_str(&text) {
                        return Err(ModelError::metadata(key, "the array's strings pass 4 GiB"));
                    }
                }
            }
        }
        packed.shrink_to_fit();
        Ok(packed)
    }
}
