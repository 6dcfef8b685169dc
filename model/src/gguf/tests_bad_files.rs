//! Bad files: each corrupt field is a typed error that names the key or tensor, never a
//! panic and never an allocation sized by the corrupt field. The files are written by
//! [`GgufWriter`] and then patched.

use super::{GgmlType, GgufFile, GgufWriter};
use crate::error::ModelError;

/// A small valid file: strings, an array and two F32 tensors (48 and 16 bytes of data).
fn base() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "llama").unwrap();
    w.add_string("tokenizer.chat_template", "{{ messages }}").unwrap();
    w.add_string_array("tokenizer.ggml.tokens", ["a", "b", "c"]).unwrap();
    w.add_u32("llama.block_count", 1).unwrap();
    w.add_f32_tensor("token_embd.weight", &[4, 3], &[0.5; 12]).unwrap();
    w.add_f32_tensor("output_norm.weight", &[4], &[1.0; 4]).unwrap();
    w
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{needle:?} not in the file"))
}

fn length_prefixed(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// The position right after the string `s` (a key or tensor name) in the file: where a
/// key's value type, or a tensor's dimension count, is.
fn after(bytes: &[u8], s: &str) -> usize {
    let needle = length_prefixed(s);
    find(bytes, &needle) + needle.len()
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn truncated(result: Result<GgufFile, ModelError>) -> String {
    match result {
        Err(ModelError::Truncated { what }) => what,
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn a_file_cut_anywhere_is_truncated() {
    let bytes = base().to_bytes();
    // The last 16 bytes pad the last tensor: without them the file is still whole.
    let data_end = bytes.len() - 16;
    for len in 0..data_end {
        truncated(GgufFile::from_bytes(bytes[..len].to_vec()));
    }
    GgufFile::from_bytes(bytes[..data_end].to_vec()).expect("only padding is missing");
    // Each section names what it was reading.
    let cut = |len: usize| truncated(GgufFile::from_bytes(bytes[..len].to_vec()));
    assert!(cut(20).contains("the metadata count"), "{}", cut(20));
    let in_template = find(&bytes, b"{{ messages }}") + 3;
    assert!(
        cut(in_template).contains("metadata `tokenizer.chat_template`: a string of 14 bytes"),
        "{}",
        cut(in_template)
    );
    let in_dims = after(&bytes, "output_norm.weight") + 6;
    assert!(cut(in_dims).contains("tensor `output_norm.weight`"), "{}", cut(in_dims));
    let in_data = bytes.len() - 20;
    assert!(cut(in_data).contains("the data of tensor `output_norm.weight`"), "{}", cut(in_data));
}

#[test]
fn a_tensor_of_2_pow_40_elements_is_refused_before_reading() {
    let mut bytes = base().to_bytes();
    let dims = after(&bytes, "token_embd.weight") + 4;
    patch_u64(&mut bytes, dims, 1 << 20);
    patch_u64(&mut bytes, dims + 8, 1 << 20);
    let what = truncated(GgufFile::from_bytes(bytes));
    assert!(what.contains("`token_embd.weight` (4398046511104 bytes at offset 0"), "{what}");
}

#[test]
fn a_dims_product_that_overflows_is_refused() {
    let mut bytes = base().to_bytes();
    let dims = after(&bytes, "token_embd.weight") + 4;
    patch_u64(&mut bytes, dims, 1 << 40);
    patch_u64(&mut bytes, dims + 8, 1 << 40);
    match GgufFile::from_bytes(bytes) {
        Err(ModelError::Tensor { tensor, problem }) => {
            assert_eq!(tensor, "token_embd.weight");
            assert!(problem.contains("overflows"), "{problem}");
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }
}

#[test]
fn a_string_of_2_pow_62_bytes_is_refused() {
    let bytes = base().to_bytes();
    // A value, a key name and a tensor name.
    let value = after(&bytes, "tokenizer.chat_template") + 4;
    let key = 24;
    let tensor = find(&bytes, &length_prefixed("token_embd.weight"));
    for (at, field) in [
        (value, "metadata `tokenizer.chat_template`"),
        (key, "the name of metadata key #0"),
        (tensor, "the name of tensor #0"),
    ] {
        let mut bytes = bytes.clone();
        patch_u64(&mut bytes, at, 1 << 62);
        let what = truncated(GgufFile::from_bytes(bytes));
        assert!(what.starts_with(field) && what.contains("a string of 4611686018427387904 bytes"), "{what}");
    }
}

#[test]
fn an_absurd_array_count_is_refused() {
    let bytes = base().to_bytes();
    let count = after(&bytes, "tokenizer.ggml.tokens") + 8;
    let mut huge = bytes.clone();
    patch_u64(&mut huge, count, 1 << 60);
    match GgufFile::from_bytes(huge) {
        Err(ModelError::Metadata { key, problem }) => {
            assert_eq!(key, "tokenizer.ggml.tokens");
            assert!(problem.contains("too large"), "{problem}");
        }
        other => panic!("expected a metadata error, got {other:?}"),
    }
    // Under the hard limit, but more than the rest of the file could hold.
    let mut large = bytes.clone();
    patch_u64(&mut large, count, 1 << 27);
    let what = truncated(GgufFile::from_bytes(large));
    assert!(what.contains("`tokenizer.ggml.tokens`: an array of 134217728 str items needs at least"), "{what}");
}

#[test]
fn absurd_header_counts_are_refused() {
    let bytes = base().to_bytes();
    for (at, what) in [(16, "metadata entries"), (8, "tensor directory entries")] {
        let mut bytes = bytes.clone();
        patch_u64(&mut bytes, at, 1 << 62);
        let message = truncated(GgufFile::from_bytes(bytes));
        assert!(message.contains(&format!("4611686018427387904 {what} cannot fit")), "{message}");
    }
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let mut bytes = base().to_bytes();
    bytes[..4].copy_from_slice(b"GGJT");
    assert!(matches!(GgufFile::from_bytes(bytes.clone()), Err(ModelError::BadMagic { .. })));
    bytes[..4].copy_from_slice(b"GGUF");
    // 1 is the retired v1 layout; 0x03000000 is a big-endian file.
    for version in [0, 1, 4, 0x0300_0000] {
        patch_u32(&mut bytes, 4, version);
        match GgufFile::from_bytes(bytes.clone()) {
            Err(e @ ModelError::UnsupportedVersion(v)) => {
                assert_eq!(v, version);
                assert!(e.to_string().contains("supported: 2, 3"), "{e}");
            }
            other => panic!("version {version}: expected UnsupportedVersion, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_names_are_refused() {
    let mut w = GgufWriter::new();
    w.add_u32("key.a", 1).unwrap().add_u32("key.b", 2).unwrap();
    w.add_f32_tensor("aa", &[2], &[1.0, 2.0]).unwrap().add_f32_tensor("bb", &[2], &[3.0, 4.0]).unwrap();
    let bytes = w.to_bytes();

    let mut tensors = bytes.clone();
    let at = find(&tensors, &length_prefixed("bb")) + 8;
    tensors[at..at + 2].copy_from_slice(b"aa");
    match GgufFile::from_bytes(tensors) {
        Err(ModelError::Tensor { tensor, problem }) => {
            assert_eq!(tensor, "aa");
            assert!(problem.contains("more than once"), "{problem}");
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }

    let mut keys = bytes;
    let at = find(&keys, b"key.b");
    keys[at..at + 5].copy_from_slice(b"key.a");
    assert!(matches!(GgufFile::from_bytes(keys), Err(ModelError::Metadata { key, .. }) if key == "key.a"));
}

#[test]
fn misaligned_or_out_of_range_offsets_are_refused() {
    let bytes = base().to_bytes();
    // After the name: dimension count, one dimension, type, then the offset (64).
    let offset = after(&bytes, "output_norm.weight") + 4 + 8 + 4;
    assert_eq!(bytes[offset..offset + 8], 64u64.to_le_bytes());

    let mut misaligned = bytes.clone();
    patch_u64(&mut misaligned, offset, 68);
    match GgufFile::from_bytes(misaligned) {
        Err(ModelError::Tensor { tensor, problem }) => {
            assert_eq!(tensor, "output_norm.weight");
            assert!(problem.contains("68 is not a multiple of the alignment 32"), "{problem}");
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }
    for past_the_end in [96, 1 << 40, u64::MAX - 31] {
        let mut bytes = bytes.clone();
        patch_u64(&mut bytes, offset, past_the_end);
        let what = truncated(GgufFile::from_bytes(bytes));
        assert!(what.contains("the data of tensor `output_norm.weight`"), "{what}");
    }
}

#[test]
fn an_unknown_ggml_type_fails_only_when_that_tensor_is_used() {
    let mut w = base();
    w.add_tensor("blk.0.ffn_down.weight", &[256], GgmlType::Other(99), vec![0; 66]).unwrap();
    let file = GgufFile::from_bytes(w.to_bytes()).expect("the file opens");
    assert_eq!(file.tensor_f32("output_norm.weight").expect("other tensors load").1, [1.0; 4]);
    let info = file.tensor_info("blk.0.ffn_down.weight").expect("listed").clone();
    for result in [file.tensor_f32(&info.name).map(|_| ()), file.tensor_bytes(&info).map(|_| ())] {
        match result {
            Err(e @ ModelError::UnsupportedQuantization { .. }) => {
                assert!(e.to_string().contains("`blk.0.ffn_down.weight`"), "{e}");
                assert!(e.to_string().contains("ggml type 99"), "{e}");
            }
            other => panic!("expected UnsupportedQuantization, got {other:?}"),
        }
    }
}

#[test]
fn bad_metadata_values_name_the_key() {
    let bytes = base().to_bytes();
    let mut unknown_type = bytes.clone();
    patch_u32(&mut unknown_type, after(&bytes, "llama.block_count"), 13);
    match GgufFile::from_bytes(unknown_type) {
        Err(ModelError::Metadata { key, problem }) => {
            assert_eq!(key, "llama.block_count");
            assert!(problem.contains("unknown value type 13"), "{problem}");
        }
        other => panic!("expected a metadata error, got {other:?}"),
    }

    let mut w = base();
    w.set_alignment(64).unwrap();
    let mut bytes = w.to_bytes();
    let value = after(&bytes, "general.alignment") + 4;
    patch_u32(&mut bytes, value, 48);
    assert!(matches!(GgufFile::from_bytes(bytes), Err(ModelError::Metadata { key, .. }) if key == "general.alignment"));

    let mut empty_key = base().to_bytes();
    let name = after(&empty_key, "general.architecture") - "general.architecture".len() - 8;
    patch_u64(&mut empty_key, name, 0);
    // The key is now empty and its old text is read as the value type: refused either way.
    assert!(matches!(GgufFile::from_bytes(empty_key), Err(ModelError::Metadata { key, .. }) if key == "#0"));
}
