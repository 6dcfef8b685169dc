//! Tests of the GGUF reader and the dequantizers: bit-exactness against llama.cpp's reference
//! formulas (golden vectors made outside the project), the reader's error paths on small
//! hand-written files, and a smoke test on the real SmolLM2 weights when they are present.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::dequant::{self, DequantError, QK_K};
use super::{GgmlType, GgufFile, MetadataValue, dequantize};
use crate::error::ModelError;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The golden dequantization vectors, kept in the repository (`tests/golden`).
fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/quant-vectors.gguf")
}

/// The default model, fetched by `just weights` (which `just test` runs first).
pub(super) fn weights_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `just weights`", path.display());
    Some(path)
}

/// A file in the temp dir, removed when dropped; the name is unique per process and call so
/// tests can run in parallel.
struct TempFile(PathBuf);

impl TempFile {
    fn with_bytes(tag: &str, bytes: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("stellarchat-gguf-test-{}-{n}-{tag}.gguf", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn open_bytes(tag: &str, bytes: &[u8]) -> Result<GgufFile, ModelError> {
    let file = TempFile::with_bytes(tag, bytes);
    // The map keeps the data alive after the file is unlinked.
    GgufFile::open(&file.0)
}

/// A hand-rolled GGUF writer: just enough of the format to build valid and broken test files.
struct GgufBuilder {
    version: u32,
    alignment: usize,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn gguf_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl GgufBuilder {
    fn new() -> GgufBuilder {
        GgufBuilder { version: 3, alignment: 32, kv: vec![], n_kv: 0, infos: vec![], n_tensors: 0, data: vec![] }
    }

    /// A key with a value type id and the value's raw encoding.
    fn kv_raw(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
        self.kv.extend(gguf_string(key));
        self.kv.extend(value_type.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key, T_U32, &v.to_le_bytes())
    }

    fn kv_str(self, key: &str, s: &str) -> Self {
        self.kv_raw(key, T_STRING, &gguf_string(s))
    }

    fn kv_array(self, key: &str, item_type: u32, items: &[Vec<u8>]) -> Self {
        let mut value = item_type.to_le_bytes().to_vec();
        value.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|item| value.extend_from_slice(item));
        self.kv_raw(key, T_ARRAY, &value)
    }

    fn alignment(mut self, alignment: usize) -> Self {
        self.alignment = alignment;
        self.kv_u32("general.alignment", alignment as u32)
    }

    /// A tensor directory entry only; the data is whatever `offset` points at.
    fn tensor_info(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        self.infos.extend(gguf_string(name));
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// A tensor with its data, placed at the next aligned offset like real writers do.
    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: &[u8]) -> Self {
        self.data.resize(self.data.len().next_multiple_of(self.alignment), 0);
        let offset = self.data.len() as u64;
        self.data.extend_from_slice(data);
        self.tensor_info(name, dims, type_id, offset)
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        out.extend_from_slice(&self.infos);
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend_from_slice(&self.data);
        out
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A small valid file: two tensors, the second at a 64-byte aligned offset.
fn sample_file() -> GgufBuilder {
    let f16_data: Vec<u8> =
        [1.0f32, -2.5, 0.0, 65504.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    GgufBuilder::new()
        .kv_str("general.architecture", "llama")
        .alignment(64)
        .kv_raw("test.scale", T_F32, &0.5f32.to_le_bytes())
        .kv_raw("test.flag", T_BOOL, &[1])
        .kv_array("tokenizer.ggml.tokens", T_STRING, &[gguf_string("<s>"), gguf_string("héllo"), gguf_string("")])
        .kv_array("test.ids", T_I32, &[(-1i32).to_le_bytes().to_vec(), 7i32.to_le_bytes().to_vec()])
        .tensor("weight", &[3, 2], 0, &f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, -5.5]))
        .tensor("half", &[4], 1, &f16_data)
}

// ---------------------------------------------------------------------------------------------
// Bit-exactness against llama.cpp

const GOLDEN_TYPES: [(&str, GgmlType); 12] = [
    ("F16", GgmlType::F16),
    ("BF16", GgmlType::BF16),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q5_0", GgmlType::Q5_0),
    ("Q5_1", GgmlType::Q5_1),
    ("Q2_K", GgmlType::Q2_K),
    ("Q3_K", GgmlType::Q3_K),
    ("Q4_K", GgmlType::Q4_K),
    ("Q5_K", GgmlType::Q5_K),
    ("Q6_K", GgmlType::Q6_K),
];

fn first_mismatch(ours: &[f32], expected: &[f32]) -> Option<usize> {
    ours.iter().zip(expected).position(|(a, b)| a.to_bits() != b.to_bits())
}

#[test]
fn dequantization_is_bit_exact_with_llama_cpp_reference() {
    let file = GgufFile::open(golden_path()).expect("open golden vectors");
    let mut failures = Vec::new();
    for (name, ggml_type) in GOLDEN_TYPES {
        let (info, ours) = file.tensor_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (expected_info, expected) = file.tensor_f32(&format!("{name}.expected")).expect("expected tensor");
        assert_eq!(info.ggml_type, ggml_type, "{name}");
        assert_eq!(info.dims, [512, 4], "{name}");
        assert_eq!((expected_info.ggml_type, &expected_info.dims), (GgmlType::F32, &info.dims), "{name}.expected");
        if let Some(i) = first_mismatch(&ours, &expected) {
            failures.push(format!(
                "{name}: first mismatch at element {i} (row {}, column {}): got {} ({:#010x}), expected {} ({:#010x})",
                i / 512,
                i % 512,
                ours[i],
                ours[i].to_bits(),
                expected[i],
                expected[i].to_bits()
            ));
        }

        // The block-level entry point must agree with the whole-tensor one.
        let (block_elems, block_bytes) = ggml_type.block_layout().expect("sized type");
        let bytes = file.tensor_bytes(&info).expect("bytes");
        let mut block_out = vec![0f32; block_elems];
        for (b, (block, want)) in bytes.chunks_exact(block_bytes).zip(ours.chunks_exact(block_elems)).enumerate() {
            dequant::dequantize_block(ggml_type, block, &mut block_out).expect("block");
            if let Some(i) = first_mismatch(&block_out, want) {
                failures.push(format!("{name}: dequantize_block differs in block {b} at element {i}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "dequantization differs from llama.cpp:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Dequantizer unit tests (types the golden file does not cover, and the error cases)

#[test]
fn q8_1_and_q8_k_scale_signed_bytes() {
    let mut q8_1 = [0u8; 36];
    q8_1[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    q8_1[2..4].copy_from_slice(&half::f16::from_f32(1234.0).to_le_bytes()); // `s` is not used
    for (j, q) in q8_1[4..].iter_mut().enumerate() {
        *q = (j as i8 - 16) as u8;
    }
    let mut out = [0f32; 32];
    dequant::dequantize_q8_1(&q8_1, &mut out);
    assert_eq!(out.to_vec(), (0..32).map(|j| (j - 16) as f32 * 0.5).collect::<Vec<_>>());

    let mut q8_k = vec![0u8; 292];
    q8_k[..4].copy_from_slice(&0.25f32.to_le_bytes());
    for (j, q) in q8_k[4..4 + QK_K].iter_mut().enumerate() {
        *q = j as u8; // covers -128..=127 as i8
    }
    q8_k[4 + QK_K..].fill(0xAB); // block sums are not used
    let mut out = vec![0f32; QK_K];
    dequantize(GgmlType::Q8_K, &q8_k, &mut out).expect("q8_k");
    assert!(out.iter().enumerate().all(|(j, &v)| v == f32::from(j as u8 as i8) * 0.25));
}

#[test]
fn plain_types_convert_elementwise() {
    let mut out = [0f32; 3];
    dequantize(GgmlType::F32, &f32_bytes(&[1.5, -0.0, f32::INFINITY]), &mut out).expect("f32");
    assert_eq!(out.map(f32::to_bits), [1.5f32, -0.0, f32::INFINITY].map(f32::to_bits));

    let f16s: Vec<u8> = [0x3C00u16, 0x0001, 0xFC00].iter().flat_map(|h| h.to_le_bytes()).collect();
    dequantize(GgmlType::F16, &f16s, &mut out).expect("f16");
    assert_eq!(out, [1.0, 2f32.powi(-24), f32::NEG_INFINITY]);

    let bf16s: Vec<u8> = [0x3F80u16, 0xC040, 0x0000].iter().flat_map(|h| h.to_le_bytes()).collect();
    dequantize(GgmlType::BF16, &bf16s, &mut out).expect("bf16");
    assert_eq!(out, [1.0, -3.0, 0.0]);

    dequantize(GgmlType::I8, &[0x80, 0x7F, 0x01], &mut out).expect("i8");
    assert_eq!(out, [-128.0, 127.0, 1.0]);
    let i16s: Vec<u8> = [-300i16, 0, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    dequantize(GgmlType::I16, &i16s, &mut out).expect("i16");
    assert_eq!(out, [-300.0, 0.0, 300.0]);
    let i32s: Vec<u8> = [-7i32, 1 << 20, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    dequantize(GgmlType::I32, &i32s, &mut out).expect("i32");
    assert_eq!(out, [-7.0, 1048576.0, 3.0]);
    let f64s: Vec<u8> = [0.1f64, -2.0, 1e300].iter().flat_map(|v| v.to_le_bytes()).collect();
    dequantize(GgmlType::F64, &f64s, &mut out).expect("f64");
    assert_eq!(out, [0.1f32, -2.0, f32::INFINITY]);
}

#[test]
fn q4_0_follows_the_reference_layout() {
    // d = 2; byte j holds element j in its low nibble and element j + 16 in its high one.
    let mut block = [0u8; 18];
    block[..2].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
    for j in 0..16 {
        block[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let mut out = [0f32; 32];
    dequant::dequantize_q4_0(&block, &mut out);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(out[j + 16], (7.0 - j as f32) * 2.0);
    }
}

#[test]
fn length_and_type_errors() {
    let mut out = vec![0f32; 32];
    match dequantize(GgmlType::Q4_0, &[0; 17], &mut out) {
        Err(DequantError::Length { ggml_type: GgmlType::Q4_0, bytes: 17, elements: 32 }) => {}
        other => panic!("expected a length error, got {other:?}"),
    }
    // Not a whole number of blocks.
    assert!(matches!(dequantize(GgmlType::Q4_K, &[0; 144], &mut out), Err(DequantError::Length { .. })));
    assert!(matches!(
        dequantize(GgmlType::Other(16), &[0; 18], &mut out),
        Err(DequantError::Unsupported(GgmlType::Other(16)))
    ));
    assert!(matches!(
        dequant::dequantize_block(GgmlType::Q8_0, &[0; 68], &mut [0.0; 64]),
        Err(DequantError::Length { .. })
    ));
    assert!(matches!(
        dequant::dequantize_block(GgmlType::Q8_0, &[0; 34], &mut [0.0; 31]),
        Err(DequantError::Length { .. })
    ));
    assert!(matches!(dequant::dequantize_block(GgmlType::Other(99), &[], &mut []), Err(DequantError::Unsupported(_))));
    // Empty tensors are fine.
    dequantize(GgmlType::Q6_K, &[], &mut []).expect("empty");
}

// ---------------------------------------------------------------------------------------------
// Reader

#[test]
fn reads_a_hand_written_file() {
    for version in [2, 3] {
        let mut builder = sample_file();
        builder.version = version;
        let bytes = builder.build();
        let file = open_bytes("valid", &bytes).expect("valid file");
        assert_eq!(file.version, version);

        let md = &file.metadata;
        assert_eq!(md.str("general.architecture").expect("arch"), "llama");
        assert_eq!(md.usize("general.alignment").expect("alignment"), 64);
        assert_eq!(md.opt_f64("test.scale").expect("scale"), Some(0.5));
        assert_eq!(md.opt_bool("test.flag").expect("flag"), Some(true));
        let tokens = md.opt_string_array("tokenizer.ggml.tokens").expect("tokens");
        assert_eq!(tokens, Some(vec!["<s>".to_string(), "héllo".to_string(), String::new()]));
        assert_eq!(md.opt_i64_array("test.ids").expect("ids"), Some(vec![-1, 7]));
        assert_eq!(
            md.get("test.ids"),
            Some(&MetadataValue::Array(vec![MetadataValue::I32(-1), MetadataValue::I32(7)]))
        );

        assert_eq!(file.tensors().len(), 2);
        let (info, values) = file.tensor_f32("weight").expect("weight");
        assert_eq!(
            (info.ggml_type, info.dims.clone(), info.shape(), info.offset),
            (GgmlType::F32, vec![3, 2], vec![2, 3], 0)
        );
        assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, -5.5]);
        let (info, values) = file.tensor_f32("half").expect("half");
        assert_eq!((info.ggml_type, info.offset), (GgmlType::F16, 64));
        assert_eq!(values, [1.0, -2.5, 0.0, 65504.0]);
        assert_eq!(file.tensor_bytes(&info).expect("bytes").len(), 8);

        // The data section starts at the first 64-byte boundary after the header.
        let data_start = bytes.len() - 64 - 8;
        assert_eq!(data_start % 64, 0);
        assert_eq!(&bytes[data_start..data_start + 8], &f32_bytes(&[0.0, 1.0])[..]);
        assert!(matches!(file.tensor_f32("absent"), Err(ModelError::Tensor { tensor, .. }) if tensor == "absent"));
    }
}

#[test]
fn bad_magic_is_reported() {
    let mut bytes = sample_file().build();
    bytes[..4].copy_from_slice(b"GGML");
    match open_bytes("magic", &bytes) {
        Err(ModelError::BadMagic { magic, .. }) => assert_eq!(magic, u32::from_le_bytes(*b"GGML")),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

#[test]
fn unsupported_version_is_reported() {
    let mut builder = sample_file();
    builder.version = 4;
    assert!(matches!(open_bytes("version", &builder.build()), Err(ModelError::UnsupportedVersion(4))));
}

#[test]
fn truncated_header_is_reported() {
    let bytes = sample_file().build();
    assert!(matches!(open_bytes("trunc", &bytes[..40]), Err(ModelError::Truncated { .. })));
    // Every shorter prefix of a valid file is an error, never a panic.
    for len in 0..bytes.len() {
        match open_bytes("prefix", &bytes[..len]) {
            Err(ModelError::Truncated { .. }) => {}
            other => panic!("prefix of {len} bytes: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn tensor_data_past_the_end_is_reported() {
    let bytes =
        GgufBuilder::new().tensor("ok", &[4], 0, &f32_bytes(&[1.0; 4])).tensor_info("beyond", &[64], 0, 32).build();
    match open_bytes("eof", &bytes) {
        Err(ModelError::Truncated { what }) => assert!(what.contains("`beyond`"), "{what}"),
        other => panic!("expected Truncated, got {other:?}"),
    }
    // An offset so large that offset + size overflows.
    let bytes = GgufBuilder::new().tensor_info("far", &[4], 0, u64::MAX - 31).build();
    assert!(matches!(open_bytes("overflow", &bytes), Err(ModelError::Truncated { what }) if what.contains("`far`")));
}

#[test]
fn element_count_overflow_is_reported() {
    let bytes = GgufBuilder::new().tensor_info("huge", &[1 << 40, 1 << 40], 0, 0).build();
    assert!(matches!(open_bytes("elements", &bytes), Err(ModelError::Tensor { tensor, .. }) if tensor == "huge"));
    // The count fits but the byte size does not.
    let bytes = GgufBuilder::new().tensor_info("wide", &[1 << 62], 0, 0).build();
    assert!(matches!(open_bytes("bytes", &bytes), Err(ModelError::Truncated { what }) if what.contains("`wide`")));
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    // Each level is an array holding one array; the innermost is an empty array of u32.
    let depth = 100_000;
    let mut value = Vec::new();
    for _ in 0..depth {
        value.extend(T_ARRAY.to_le_bytes());
        value.extend(1u64.to_le_bytes());
    }
    value.extend(T_U32.to_le_bytes());
    value.extend(0u64.to_le_bytes());
    let bytes = GgufBuilder::new().kv_raw("nested", T_ARRAY, &value).build();
    assert!(matches!(open_bytes("nested", &bytes), Err(ModelError::Metadata { key, .. }) if key == "nested"));
}

#[test]
fn unknown_type_fails_when_the_tensor_is_read() {
    let bytes =
        GgufBuilder::new().tensor("fine", &[2], 0, &f32_bytes(&[1.0, 2.0])).tensor("iq", &[256], 99, &[0; 64]).build();
    let file = open_bytes("unknown", &bytes).expect("a file with an unknown type still opens");
    assert_eq!(file.tensor_info("iq").map(|t| t.ggml_type), Some(GgmlType::Other(99)));
    assert_eq!(file.tensor_f32("fine").expect("fine").1, [1.0, 2.0]);
    match file.tensor_f32("iq") {
        Err(ModelError::UnsupportedQuantization { tensor, ggml_type }) => {
            assert_eq!(tensor, "iq");
            assert!(ggml_type.contains("99"), "{ggml_type}");
        }
        other => panic!("expected UnsupportedQuantization, got {other:?}"),
    }
}

#[test]
fn block_size_mismatch_is_reported() {
    let bytes = GgufBuilder::new().tensor("odd", &[33], 8, &[0; 68]).build();
    assert!(matches!(open_bytes("block", &bytes), Err(ModelError::Tensor { tensor, .. }) if tensor == "odd"));
}

#[test]
fn missing_file_is_an_io_error() {
    let path = std::env::temp_dir().join(format!("stellarchat-gguf-test-{}-does-not-exist.gguf", std::process::id()));
    match GgufFile::open(&path) {
        Err(ModelError::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The real model, when it has been downloaded

#[test]
fn smollm2_weights_dequantize_to_finite_values() {
    let Some(path) = weights_path() else {
        eprintln!("note: SmolLM2-135M-Instruct.Q4_1.gguf is not present (weights/fetch.sh); skipping");
        return;
    };
    let file = GgufFile::open(&path).expect("open SmolLM2");
    assert_eq!(file.metadata.str("general.architecture").expect("architecture"), "llama");
    assert_eq!(file.tensors().len(), 272);
    for (name, ggml_type) in [("token_embd.weight", GgmlType::Q8_0), ("blk.0.attn_q.weight", GgmlType::Q4_1)] {
        let (info, values) = file.tensor_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.ggml_type, ggml_type, "{name}");
        assert_eq!(values.len(), info.n_elements());
        assert!(values.iter().all(|v| v.is_finite()), "{name} has non-finite values");
        assert!(values.iter().any(|&v| v != 0.0), "{name} is all zeros");
    }
}
