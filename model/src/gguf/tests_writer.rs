//! Tests of [`GgufWriter`]: what it writes reads back identically, its bytes follow ggml's
//! layout exactly, and it refuses what llama.cpp's reader would reject.

use super::tests::weights_path;
use super::{GgmlType, GgufFile, GgufWriter, MetadataValue as V, ValueType};
use crate::error::ModelError;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One entry of every value type, arrays of each item type, and tensors of several types.
fn every_kind() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_u8("t.u8", 200).unwrap();
    w.add_i8("t.i8", -100).unwrap();
    w.add_u16("t.u16", 60_000).unwrap();
    w.add_i16("t.i16", -30_000).unwrap();
    w.add_u32("t.u32", 4_000_000_000).unwrap();
    w.add_i32("t.i32", -2_000_000_000).unwrap();
    w.add_u64("t.u64", u64::MAX).unwrap();
    w.add_i64("t.i64", i64::MIN).unwrap();
    w.add_f32("t.f32", -0.1).unwrap();
    w.add_f64("t.f64", std::f64::consts::PI).unwrap();
    w.add_bool("t.bool", true).unwrap();
    w.add_string("t.string", "héllo\n{{ template }}").unwrap();
    w.add_string("t.empty_string", "").unwrap();
    w.add_string_array("t.strings", ["<s>", "", "▁world", "日本"]).unwrap();
    w.add_array("t.f32s", vec![V::F32(1.5), V::F32(f32::MIN_POSITIVE)]).unwrap();
    w.add_array("t.i32s", vec![V::I32(-1), V::I32(7)]).unwrap();
    w.add_array("t.bools", vec![V::Bool(false), V::Bool(true)]).unwrap();
    w.add_array("t.u8s", vec![V::U8(0), V::U8(255)]).unwrap();
    w.add_array("t.u64s", vec![V::U64(1 << 40)]).unwrap();
    w.add_array("t.f64s", vec![V::F64(-2.25)]).unwrap();
    w.add_typed_array("t.no_merges", ValueType::String, vec![]).unwrap();
    w.set_alignment(64).unwrap();
    w.add_f32_tensor("matrix", &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, -5.5]).unwrap();
    let f16: Vec<u8> = [1.0f32, -2.5, 0.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    w.add_tensor("half", &[3], GgmlType::F16, f16).unwrap();
    // Two Q8_0 blocks: scale 0.5, values -16..16.
    let mut q8 = Vec::new();
    for _ in 0..2 {
        q8.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
    }
    w.add_tensor("quant", &[32, 2], GgmlType::Q8_0, q8).unwrap();
    w.add_tensor(
        "ids",
        &[2, 1, 1, 2],
        GgmlType::I32,
        [1i32, -2, 3, -4].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    w
}

#[test]
fn everything_written_reads_back() {
    let w = every_kind();
    let bytes = w.to_bytes();
    let file = GgufFile::from_bytes(bytes.clone()).expect("the writer's output opens");
    assert_eq!(file.version, 3);
    let md = &file.metadata;
    assert_eq!(md.keys().count(), 22);
    for key in md.keys() {
        assert_eq!(md.get(key), w.get(key), "{key}");
    }
    assert_eq!(md.get("t.f32").and_then(V::as_f64).map(|v| v as f32), Some(-0.1));
    assert_eq!(md.array_item_type("t.no_merges"), Some(ValueType::String));
    assert_eq!(md.get("t.no_merges"), Some(&V::Array(vec![])));
    assert_eq!(md.array_item_type("t.strings"), Some(ValueType::String));
    assert_eq!(md.array_item_type("t.bools"), Some(ValueType::Bool));

    let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["matrix", "half", "quant", "ids"]);
    let (info, values) = file.tensor_f32("matrix").expect("matrix");
    assert_eq!((info.dims.as_slice(), info.ggml_type, info.offset), (&[3, 2][..], GgmlType::F32, 0));
    assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, -5.5]);
    assert_eq!(file.tensor_f32("half").expect("half").1, [1.0, -2.5, 0.0]);
    let (info, values) = file.tensor_f32("quant").expect("quant");
    assert_eq!(info.dims, [32, 2]);
    assert!(values.iter().enumerate().all(|(i, &v)| v == ((i % 32) as f32 - 16.0) * 0.5));
    let ids = file.tensor_info("ids").expect("ids");
    assert_eq!((ids.dims.as_slice(), ids.ggml_type), (&[2, 1, 1, 2][..], GgmlType::I32));

    // Offsets are consecutive, each tensor padded to the alignment, as llama.cpp requires.
    let offsets: Vec<_> = file.tensors().iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 64, 128, 256]);
    assert_eq!(bytes.len() % 64, 0, "the last tensor is padded too");
}

#[test]
fn the_bytes_follow_ggml_layout() {
    let mut w = GgufWriter::new();
    w.add_u32("a", 7).unwrap();
    w.add_f32_tensor("t", &[2], &[1.0, 2.0]).unwrap();
    let mut expected = b"GGUF".to_vec();
    expected.extend(3u32.to_le_bytes());
    expected.extend(1u64.to_le_bytes()); // tensors
    expected.extend(1u64.to_le_bytes()); // metadata entries
    expected.extend(1u64.to_le_bytes());
    expected.extend(b"a");
    expected.extend(4u32.to_le_bytes()); // u32
    expected.extend(7u32.to_le_bytes());
    expected.extend(1u64.to_le_bytes());
    expected.extend(b"t");
    expected.extend(1u32.to_le_bytes()); // dims
    expected.extend(2u64.to_le_bytes());
    expected.extend(0u32.to_le_bytes()); // F32
    expected.extend(0u64.to_le_bytes()); // offset
    assert_eq!(expected.len(), 74);
    expected.resize(96, 0); // the default alignment is 32
    expected.extend(f32_bytes(&[1.0, 2.0]));
    expected.resize(128, 0);
    assert_eq!(w.to_bytes(), expected);

    // No tensors: the header is still padded, like ggml's writer does.
    let empty = GgufWriter::new().to_bytes();
    assert_eq!(empty.len(), 32);
    assert_eq!(GgufFile::from_bytes(empty).expect("empty file").tensors().len(), 0);
}

#[test]
fn output_is_deterministic_and_keeps_insertion_order() {
    assert_eq!(every_kind().to_bytes(), every_kind().to_bytes());
    let mut w = GgufWriter::new();
    w.add_string("zeta", "1").unwrap().add_string("alpha", "2").unwrap().add_string("mid", "3").unwrap();
    // Replacing keeps the position; removing drops the entry.
    w.add_string("zeta", "one").unwrap();
    assert_eq!(w.remove("mid"), Some(V::String("3".into())));
    let bytes = w.to_bytes();
    let at = |needle: &[u8]| bytes.windows(needle.len()).position(|win| win == needle).expect("present");
    assert!(at(b"zeta") < at(b"alpha"));
    assert!(bytes.windows(3).all(|win| win != b"mid"));
    let file = GgufFile::from_bytes(bytes).expect("opens");
    assert_eq!(file.metadata.str("zeta").expect("zeta"), "one");

    let mut w = GgufWriter::new();
    w.add_f32_tensor("b", &[1], &[1.0]).unwrap().add_f32_tensor("a", &[1], &[2.0]).unwrap();
    w.add_f32_tensor("b", &[2], &[3.0, 4.0]).unwrap();
    assert!(w.remove_tensor("a"));
    assert!(!w.remove_tensor("a"));
    let file = GgufFile::from_bytes(w.to_bytes()).expect("opens");
    assert_eq!(file.tensors().len(), 1);
    assert_eq!(file.tensor_f32("b").expect("b").1, [3.0, 4.0]);
}

#[test]
fn write_to_writes_a_file_that_opens() {
    let path = std::env::temp_dir().join(format!("stellarchat-writer-test-{}.gguf", std::process::id()));
    let w = every_kind();
    w.write_to(&path).expect("write");
    let file = GgufFile::open(&path);
    let on_disk = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(on_disk.expect("read back"), w.to_bytes());
    assert_eq!(file.expect("open").tensors().len(), 4);
    let missing = std::env::temp_dir().join("stellarchat-no-such-dir").join("x.gguf");
    assert!(matches!(w.write_to(&missing), Err(ModelError::Io { path, .. }) if path == missing));
}

fn metadata_error(result: Result<&mut GgufWriter, ModelError>) -> (String, String) {
    match result {
        Err(ModelError::Metadata { key, problem }) => (key, problem),
        Err(other) => panic!("expected a metadata error, got {other:?}"),
        Ok(_) => panic!("expected a metadata error, got Ok"),
    }
}

fn tensor_error(result: Result<&mut GgufWriter, ModelError>) -> (String, String) {
    match result {
        Err(ModelError::Tensor { tensor, problem }) => (tensor, problem),
        Err(other) => panic!("expected a tensor error, got {other:?}"),
        Ok(_) => panic!("expected a tensor error, got Ok"),
    }
}

#[test]
fn what_llama_cpp_rejects_is_refused_when_added() {
    let mut w = GgufWriter::new();
    assert_eq!(metadata_error(w.add_u32("", 1)).0, "");
    let (key, problem) = metadata_error(w.add_array("mixed", vec![V::U32(1), V::I32(2)]));
    assert_eq!(key, "mixed");
    assert!(problem.contains("item #1 is a i32"), "{problem}");
    assert!(metadata_error(w.add_array("nested", vec![V::Array(vec![V::U8(1)])])).1.contains("arrays of arrays"));
    assert!(metadata_error(w.add_array("empty", vec![])).1.contains("item type"));
    assert!(metadata_error(w.add_typed_array("typed", ValueType::U8, vec![V::U16(1)])).1.contains("u16"));
    assert!(metadata_error(w.set_alignment(48)).1.contains("power of two"));
    assert!(metadata_error(w.set_alignment(0)).1.contains("power of two"));
    assert!(metadata_error(w.add_u64("general.alignment", 64)).1.contains("u32"));

    let long = "x".repeat(64);
    assert_eq!(tensor_error(w.add_f32_tensor(long.as_str(), &[1], &[0.0])).0, long);
    w.add_f32_tensor("x".repeat(63), &[1], &[0.0]).expect("63 bytes is fine");
    assert!(tensor_error(w.add_f32_tensor("five", &[1, 1, 1, 1, 1], &[0.0])).1.contains("5 dimensions"));
    assert!(tensor_error(w.add_f32_tensor("none", &[], &[0.0])).1.contains("0 dimensions"));
    assert!(tensor_error(w.add_f32_tensor("short", &[2, 2], &[0.0; 3])).1.contains("16 bytes, but 12"));
    assert!(tensor_error(w.add_tensor("rows", &[16, 4], GgmlType::Q8_0, vec![0; 68])).1.contains("blocks of 32"));
    assert!(tensor_error(w.add_tensor("huge", &[1 << 32, 1 << 31], GgmlType::I8, vec![])).1.contains("overflows"));
    // Nothing refused was kept.
    assert_eq!(GgufFile::from_bytes(w.to_bytes()).expect("opens").tensors().len(), 1);
    // A type this build cannot size is written as given (for tests of unknown types).
    w.add_tensor("iq", &[256], GgmlType::Other(99), vec![1, 2, 3]).expect("unknown types are not checked");
}

#[test]
fn copies_the_tokenizer_of_the_default_model() {
    let Some(path) = weights_path() else { return };
    let source = GgufFile::open(&path).expect("open the default model");
    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "llama").unwrap();
    w.copy_metadata_with_prefix(&source.metadata, "tokenizer.").expect("copy");
    let copy = GgufFile::from_bytes(w.to_bytes()).expect("opens");
    let copied: Vec<_> = copy.metadata.keys().filter(|k| k.starts_with("tokenizer.")).collect();
    let original: Vec<_> = source.metadata.keys().filter(|k| k.starts_with("tokenizer.")).collect();
    assert_eq!(copied, original);
    assert!(copied.contains(&"tokenizer.ggml.tokens") && copied.contains(&"tokenizer.chat_template"));
    for key in copied {
        assert_eq!(copy.metadata.get(key), source.metadata.get(key), "{key}");
        assert_eq!(copy.metadata.array_item_type(key), source.metadata.array_item_type(key), "{key}");
    }
    assert!(copy.metadata.get("general.name").is_none(), "only the selected keys are copied");
}

#[test]
fn long_arrays_read_packed_and_write_back_byte_identical() {
    const N: usize = 300; // above the reader's packing threshold
    let texts: Vec<String> =
        (0..N).map(|i| match i % 3 { 0 => String::new(), 1 => format!("▁tok{i}"), _ => format!("日本{i}") }).collect();
    let mut w = GgufWriter::new();
    // In key order, as `copy_metadata` writes them below.
    w.add_array("long.bools", (0..N).map(|i| V::Bool(i % 2 == 0)).collect()).unwrap();
    w.add_array("long.f32s", (0..N).map(|i| V::F32(i as f32 * -0.25)).collect()).unwrap();
    w.add_array("long.i32s", (0..N).map(|i| V::I32(i as i32 - 150)).collect()).unwrap();
    w.add_string_array("long.strings", texts.clone()).unwrap();
    w.add_array("long.u64s", (0..N).map(|i| V::U64(u64::MAX - i as u64)).collect()).unwrap();
    w.add_array("short.i32s", vec![V::I32(1), V::I32(2)]).unwrap();
    let bytes = w.to_bytes();
    let file = GgufFile::from_bytes(bytes.clone()).expect("opens");
    let md = &file.metadata;

    for key in ["long.strings", "long.i32s", "long.f32s", "long.bools", "long.u64s"] {
        assert!(matches!(md.get(key), Some(V::Packed(p)) if p.len() == N), "{key} is packed");
        assert_eq!(md.opt_array_len(key).unwrap(), Some(N), "{key}");
    }
    assert!(matches!(md.get("short.i32s"), Some(V::Array(_))), "short arrays stay values");
    assert_eq!(md.array_item_type("long.strings"), Some(ValueType::String));
    assert_eq!(md.array_item_type("long.bools"), Some(ValueType::Bool));

    let strs = md.opt_str_list("long.strings").unwrap().expect("strings");
    assert_eq!(strs, texts.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(md.opt_string_array("long.strings").unwrap(), Some(texts));
    let ids = md.opt_i64_array("long.i32s").unwrap().expect("ints");
    assert_eq!(ids, (0..N as i64).map(|i| i - 150).collect::<Vec<_>>());
    let scores = md.opt_f32_array("long.f32s").unwrap().expect("floats");
    assert_eq!(scores, (0..N).map(|i| i as f32 * -0.25).collect::<Vec<_>>());
    let flags = md.opt_array("long.bools").unwrap().expect("bools");
    assert_eq!(flags[3], V::Bool(false));
    assert_eq!(md.get("long.u64s").and_then(|v| v.as_array()).map(|a| a[N - 1].clone()), Some(V::U64(u64::MAX - 299)));
    // Typed accessors refuse the wrong item type by key.
    let err = md.opt_str_list("long.i32s").unwrap_err().to_string();
    assert!(err.contains("long.i32s") && err.contains("strings"), "{err}");
    assert!(md.opt_i64_array("long.strings").is_err());

    // Copied into a new file, packed arrays are written exactly as they were read.
    let mut copy = GgufWriter::new();
    copy.copy_metadata(md, |_| true).unwrap();
    assert_eq!(copy.to_bytes(), bytes);
}
