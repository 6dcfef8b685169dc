//! The weights of a Hugging Face checkpoint: its `.safetensors` files, memory-mapped, served
//! by GGUF name as a [`WeightSource`].
//!
//! [`Shards::open`] maps each file and reads its header (names, dtypes, shapes, offsets);
//! [`HfWeights::new`] then checks every tensor the family declares against it — present,
//! F32/F16/BF16, the declared shape — so a bad checkpoint fails at open, naming the file and
//! the tensor, not halfway through loading. A safetensors shape `[out, in]` (row-major) is
//! ggml's `[in, out]` with the same element order, so tensors are used as stored; the only
//! changes are Gemma's norm offset ([`crate::arch::Family::hf_norm_offset`]) and Llama 3's
//! `rope_freqs.weight`, which HF checkpoints do not store and which is computed from
//! `config.json` instead.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::arch::Family;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, dequantize};
use crate::weights::{RawTensor, WeightSource};

/// The GGUF name of Llama 3's frequency divisors, which only GGUF files store.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Where a tensor lies: which file, its dtype and shape, and its bytes in that file.
#[derive(Debug, Clone)]
struct Stored {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The mapped `.safetensors` files of a checkpoint and the tensors their headers list.
pub struct Shards {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    by_name: HashMap<String, Stored>,
}

impl Shards {
    pub fn open(paths: Vec<PathBuf>) -> Result<Shards> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for (file, path) in paths.iter().enumerate() {
            let handle = File::open(path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            // SAFETY: the file is mapped read-only; like every loader of memory-mapped
            // weights, we rely on nobody truncating the checkpoint while it is open.
            let map = unsafe { Mmap::map(&handle) }.map_err(|source| ModelError::Io { path: path.clone(), source })?;
            // Validates the header and that the offsets tile the data section.
            SafeTensors::deserialize(&map)
                .map_err(|e| ModelError::checkpoint(path, format!("is not a valid safetensors file: {e}")))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&map)
                .map_err(|e| ModelError::checkpoint(path, format!("is not a valid safetensors file: {e}")))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                let stored = Stored {
                    file,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + start,
                    end: data_start + end,
                };
                by_name.insert(name, stored);
            }
            maps.push(map);
        }
        Ok(Shards { paths, maps, by_name })
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        self.by_name.contains_key(hf_name)
    }

    fn file_list(&self) -> String {
        let names: Vec<_> =
            self.paths.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        names.join(", ")
    }
}

/// A tensor the family declares, found in the files.
struct Entry {
    hf_name: String,
    stored: Stored,
    /// ggml dims, innermost first (the safetensors shape reversed).
    dims: Vec<usize>,
    /// Added to every element (Gemma's norm gains).
    offset: f32,
}

/// A checkpoint's tensors by GGUF name, checked against the family's declaration.
pub struct HfWeights {
    shards: Shards,
    entries: HashMap<String, Entry>,
    /// Llama 3's divisors, computed from `config.json`.
    rope_freqs: Option<Vec<f32>>,
}

impl HfWeights {
    /// Looks up every tensor `family` declares for `config`; `rope_freqs`: the divisors
    /// `config.json` implies, if it asks for Llama 3 scaling.
    pub fn new(
        shards: Shards,
        family: &dyn Family,
        config: &ModelConfig,
        rope_freqs: Option<Vec<f32>>,
    ) -> Result<HfWeights> {
        let mut entries = HashMap::new();
        for decl in family.tensors(config) {
            if decl.name == ROPE_FREQS {
                continue;
            }
            let hf_name = family
                .hf_tensor_name(&decl.name)
                .ok_or_else(|| ModelError::Internal(format!("no Hugging Face name declared for {}", decl.name)))?;
            let Some((hf_name, stored)) = multimodal_spellings(&hf_name)
                .into_iter()
                .find_map(|name| shards.by_name.get(&name).map(|s| (name, s.clone())))
            else {
                return Err(ModelError::checkpoint(
                    shards.paths.first().and_then(|p| p.parent()).unwrap_or(Path::new(".")),
                    format!("tensor `{hf_name}` is missing (looked in {})", shards.file_list()),
                ));
            };
            let path = &shards.paths[stored.file];
            if ggml_type(stored.dtype).is_none() {
                return Err(ModelError::checkpoint(
                    path,
                    format!("tensor `{hf_name}` is {:?}; only F32, F16 and BF16 are supported", stored.dtype),
                ));
            }
            let dims: Vec<usize> = stored.shape.iter().rev().copied().collect();
            if dims != decl.dims {
                let expected: Vec<usize> = decl.dims.iter().rev().copied().collect();
                return Err(ModelError::checkpoint(
                    path,
                    format!("tensor `{hf_name}` has shape {:?}, config.json implies {expected:?}", stored.shape),
                ));
            }
            let offset = if decl.role.is_norm() { family.hf_norm_offset() } else { 0.0 };
            entries.insert(decl.name, Entry { hf_name, stored, dims, offset });
        }
        Ok(HfWeights { shards, entries, rope_freqs })
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| ModelError::tensor(name, "not part of this checkpoint's configuration"))
    }

    fn bytes(&self, entry: &Entry) -> &[u8] {
        &self.shards.maps[entry.stored.file][entry.stored.start..entry.stored.end]
    }

    /// Like [`crate::gguf::GgufFile::release`]: the tensor was copied, so its pages may leave
    /// the resident set (they come back from the file if read again).
    fn release(&self, entry: &Entry) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let (first, last) = (entry.stored.start.div_ceil(PAGE) * PAGE, entry.stored.end / PAGE * PAGE);
            if last > first {
                // SAFETY: a read-only, file-backed map: dropping pages loses nothing, a later
                // read faults them back in from the file.
                let map = &self.shards.maps[entry.stored.file];
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
            }
        }
    }
}

impl WeightSource for HfWeights {
    fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        if name == ROPE_FREQS
            && let Some(divisors) = &self.rope_freqs
        {
            return Ok((vec![divisors.len()], divisors.clone()));
        }
        let entry = self.entry(name)?;
        let ggml =
            ggml_type(entry.stored.dtype).ok_or_else(|| ModelError::Internal(format!("{name}: unchecked dtype")))?;
        let mut out = vec![0f32; entry.dims.iter().product()];
        dequantize(ggml, self.bytes(entry), &mut out).map_err(|e| {
            ModelError::checkpoint(&self.shards.paths[entry.stored.file], format!("tensor `{}`: {e}", entry.hf_name))
        })?;
        if entry.offset != 0.0 {
            out.iter_mut().for_each(|v| *v += entry.offset);
        }
        self.release(entry);
        Ok((entry.dims.clone(), out))
    }

    /// F16 and BF16 tensors stay 16-bit (an embedding table kept on the host, linear layers
    /// multiplied by the CPU kernel); F32 ones, and any that need an offset, come as F32.
    fn raw_tensor(&self, name: &str) -> Result<RawTensor> {
        let entry = self.entry(name)?;
        match ggml_type(entry.stored.dtype) {
            Some(ggml_type) if entry.offset == 0.0 => {
                let bytes = self.bytes(entry).to_vec().into();
                self.release(entry);
                Ok(RawTensor { dims: entry.dims.clone(), ggml_type, bytes })
            }
            _ => {
                let (dims, values) = self.f32_tensor(name)?;
                Ok(RawTensor {
                    dims,
                    ggml_type: GgmlType::F32,
                    bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                })
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name) || (name == ROPE_FREQS && self.rope_freqs.is_some())
    }
}

/// The ggml type with a safetensors dtype's encoding, for the dtypes we read.
fn ggml_type(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// `model.…` as a text-only checkpoint names it, then as multimodal ones do (Gemma 3's
/// `Gemma3ForConditionalGeneration`, in older and newer `transformers` spellings).
fn multimodal_spellings(hf_name: &str) -> Vec<String> {
    let mut names = vec![hf_name.to_string()];
    if let Some(rest) = hf_name.strip_prefix("model.") {
        names.push(format!("model.language_model.{rest}"));
        names.push(format!("language_model.model.{rest}"));
    }
    if hf_name == "lm_head.weight" {
        names.push("language_model.lm_head.weight".into());
    }
    names
}
