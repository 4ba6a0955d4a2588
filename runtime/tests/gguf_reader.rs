//! The GGUF reader against hand-assembled files: every malformed case the reader must reject
//! with a typed error (never a panic, never a huge allocation), and llama.cpp's own files.

use llava_runtime::gguf::{GgufErrorKind, GgufFile, Value, ValueType};
use llava_runtime::quant::GgmlType;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/vocab");

/// Assembles GGUF bytes field by field, following the spec rather than our writer, so that
/// malformed files can be built.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(ValueType::U32.id()).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &[u8]) -> &mut Self {
        self.str(key.as_bytes()).u32(ValueType::String.id()).str(v)
    }
    fn tensor(&mut self, name: &[u8], shape: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(shape.len() as u32);
        for &d in shape {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(&self) -> Result<GgufFile, llava_runtime::gguf::GgufError> {
        GgufFile::from_bytes("test.gguf", self.0.clone())
    }
    fn err(&self) -> GgufErrorKind {
        match self.parse() {
            Ok(_) => panic!("a malformed file was accepted"),
            Err(e) => {
                // The message names the file and fits on one line.
                let msg = e.to_string();
                assert!(msg.starts_with("test.gguf: "), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
                e.kind
            }
        }
    }
}

/// A valid file using every value type, a string array, and three tensors of different types.
fn valid_file() -> Raw {
    let mut r = Raw::header(3, 3, 15);
    r.kv_str("general.architecture", b"llama")
        .kv_u32("llama.block_count", 2);
    r.str(b"u8").u32(0).bytes(&[7]);
    r.str(b"i8").u32(1).bytes(&[0xff]);
    r.str(b"u16").u32(2).bytes(&513u16.to_le_bytes());
    r.str(b"i16").u32(3).bytes(&(-2i16).to_le_bytes());
    r.str(b"i32").u32(5).bytes(&(-3i32).to_le_bytes());
    r.str(b"f32").u32(6).bytes(&1.5f32.to_le_bytes());
    r.str(b"bool").u32(7).bytes(&[1]);
    r.str(b"u64").u32(10).u64(1 << 40);
    r.str(b"i64").u32(11).bytes(&(-5i64).to_le_bytes());
    r.str(b"f64").u32(12).bytes(&2.25f64.to_le_bytes());
    r.str(b"tokens").u32(9).u32(8).u64(3);
    r.str(b"<s>").str(b"h\xc3\xa9").str(b"");
    r.str(b"scores").u32(9).u32(6).u64(2);
    r.bytes(&0.5f32.to_le_bytes()).bytes(&(-1f32).to_le_bytes());
    r.str(b"empty").u32(9).u32(5).u64(0);
    r.tensor(b"a", &[4, 2], GgmlType::F32.id(), 0);
    r.tensor(b"b", &[32], GgmlType::Q8_0.id(), 32);
    r.tensor(b"c", &[256, 1, 1, 1], GgmlType::Q4K.id(), 96);
    r.pad(32);
    // a: 32 bytes, b: 34 bytes padded to 64, c: 144 bytes.
    let data_start = r.0.len();
    for i in 0..(32 + 64 + 144) {
        r.0.push(i as u8);
    }
    assert_eq!(r.0.len(), data_start + 240);
    r
}

#[test]
fn valid_file_reads_every_value_type_and_tensor() {
    let f = valid_file().parse().expect("valid file");
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata_len(), 15);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(f.get("u8"), Some(Value::U8(7)));
    assert_eq!(f.get("i8"), Some(Value::I8(-1)));
    assert_eq!(f.get("u16"), Some(Value::U16(513)));
    assert_eq!(f.get("i16"), Some(Value::I16(-2)));
    assert_eq!(f.get("i32"), Some(Value::I32(-3)));
    assert_eq!(f.get_f32("f32").unwrap(), 1.5);
    assert!(f.get_bool("bool").unwrap());
    assert_eq!(f.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(f.get_i64("i64").unwrap(), -5);
    assert_eq!(f.get("f64"), Some(Value::F64(2.25)));
    let tokens: Vec<&str> = f.get_str_array("tokens").unwrap().collect();
    assert_eq!(tokens, ["<s>", "hé", ""]);
    let scores: Vec<f32> = f.get_array_of::<f32>("scores").unwrap().collect();
    assert_eq!(scores, [0.5, -1.0]);
    assert!(f.get_array("empty").unwrap().is_empty());

    assert_eq!(f.tensor_count(), 3);
    let a = f.tensor("a").unwrap();
    assert_eq!(
        (a.ggml_type(), a.shape(), a.n_bytes()),
        (GgmlType::F32, &[4, 2][..], 32)
    );
    assert_eq!(a.data, (0..32).collect::<Vec<u8>>());
    let b = f.tensor("b").unwrap();
    assert_eq!(b.data.len(), 34);
    assert_eq!(b.data[0], 32);
    let c = f.tensor("c").unwrap();
    assert_eq!((c.n_elements(), c.data.len(), c.data[0]), (256, 144, 96));
}

#[test]
fn typed_accessors_report_missing_keys_and_wrong_types() {
    let f = valid_file().parse().unwrap();
    let e = f.get_u32("llama.context_length").unwrap_err();
    assert!(matches!(e.kind, GgufErrorKind::MissingKey(ref k) if k == "llama.context_length"));
    assert!(e.to_string().contains("test.gguf"));
    let e = f.get_str("llama.block_count").unwrap_err();
    assert!(matches!(e.kind, GgufErrorKind::WrongType { ref found, .. } if found == "u32"));
    assert!(matches!(
        f.get_u32("i32").unwrap_err().kind,
        GgufErrorKind::WrongType { .. }
    ));
    assert!(matches!(
        f.get_u32("u64").unwrap_err().kind,
        GgufErrorKind::WrongType { .. }
    ));
    assert!(matches!(
        f.get_array_of::<i32>("scores").map(|_| ()).unwrap_err().kind,
        GgufErrorKind::WrongType { ref found, .. } if found == "array of f32"
    ));
    assert_eq!(f.optional("missing", GgufFile::get_u32).unwrap(), None);
    assert_eq!(f.optional("u16", GgufFile::get_u32).unwrap(), Some(513));
    assert!(f.optional("tokens", GgufFile::get_u32).is_err());
}

#[test]
fn truncation_at_every_offset_is_an_error_not_a_panic() {
    let full = valid_file();
    let header_len = full.0.len() - 240;
    for cut in 0..full.0.len() {
        let r = Raw(full.0[..cut].to_vec());
        let kind = r.err();
        if cut < header_len {
            assert!(
                matches!(
                    kind,
                    GgufErrorKind::Truncated { .. }
                        | GgufErrorKind::CountTooLarge { .. }
                        | GgufErrorKind::TensorOutOfBounds { .. }
                ),
                "cut at {cut}: {kind}"
            );
        } else {
            assert!(
                matches!(kind, GgufErrorKind::TensorOutOfBounds { .. }),
                "cut at {cut}: {kind}"
            );
        }
    }
}

#[test]
fn bad_magic_version_and_byte_order() {
    let mut r = valid_file();
    r.0[..4].copy_from_slice(b"GGML");
    assert!(matches!(r.err(), GgufErrorKind::BadMagic(m) if &m == b"GGML"));
    for (v, want_order) in [(1u32, false), (4, false), (3 << 24, true), (0, true)] {
        let mut r = valid_file();
        r.0[4..8].copy_from_slice(&v.to_le_bytes());
        let kind = r.err();
        if want_order {
            assert!(
                matches!(kind, GgufErrorKind::WrongByteOrder(_)),
                "{v}: {kind}"
            );
        } else {
            assert!(matches!(kind, GgufErrorKind::UnsupportedVersion(x) if x == v));
        }
    }
    let mut r = valid_file();
    r.0[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(r.parse().unwrap().version(), 2);
}

#[test]
fn counts_larger_than_the_file_are_rejected_before_allocating() {
    for (n_tensors, n_kv) in [(0, u64::MAX), (u64::MAX, 0), (1 << 40, 1), (0, 1 << 33)] {
        let kind = Raw::header(3, n_tensors, n_kv).err();
        assert!(
            matches!(kind, GgufErrorKind::CountTooLarge { .. }),
            "{kind}"
        );
    }
    // Array lengths: fixed-size elements whose byte count overflows, and string arrays.
    for (elem, count) in [(6u32, u64::MAX), (6, 1 << 40), (8, 1 << 40), (0, 1 << 62)] {
        let mut r = Raw::header(3, 0, 1);
        r.str(b"arr").u32(9).u32(elem).u64(count).zeros(64);
        let kind = r.err();
        assert!(
            matches!(
                kind,
                GgufErrorKind::CountTooLarge { .. } | GgufErrorKind::Truncated { .. }
            ),
            "{kind}"
        );
    }
    // A string length past the end of the file.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"key").u32(8).u64(u64::MAX).zeros(16);
    assert!(matches!(r.err(), GgufErrorKind::Truncated { .. }));
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX - 3).zeros(16);
    assert!(matches!(r.err(), GgufErrorKind::Truncated { .. }));
}

#[test]
fn duplicate_and_empty_keys_are_rejected() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a.b", 1).kv_u32("a.b", 2);
    assert!(matches!(r.err(), GgufErrorKind::DuplicateKey(k) if k == "a.b"));
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("", 1);
    assert!(matches!(r.err(), GgufErrorKind::EmptyKey { .. }));
}

#[test]
fn unknown_value_types_and_nested_arrays_are_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(13).u32(0);
    assert!(matches!(
        r.err(),
        GgufErrorKind::UnknownValueType { id: 13, .. }
    ));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(99).u64(0);
    assert!(matches!(
        r.err(),
        GgufErrorKind::UnknownValueType { id: 99, .. }
    ));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(9).u64(1).u32(4).u64(0);
    assert!(matches!(r.err(), GgufErrorKind::NestedArray { .. }));
}

#[test]
fn invalid_utf8_is_rejected_in_keys_values_arrays_and_names() {
    let bad = b"a\xff";
    let mut r = Raw::header(3, 0, 1);
    r.str(bad).u32(4).u32(1);
    assert!(matches!(r.err(), GgufErrorKind::InvalidUtf8 { ref field } if field.contains("key")));
    let mut r = Raw::header(3, 0, 1);
    r.kv_str("k", bad);
    assert!(matches!(r.err(), GgufErrorKind::InvalidUtf8 { .. }));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(8).u64(2).str(b"fine").str(bad);
    assert!(matches!(r.err(), GgufErrorKind::InvalidUtf8 { ref field } if field.contains("[1]")));
    let mut r = Raw::header(3, 1, 0);
    r.tensor(bad, &[4], 0, 0).pad(32).zeros(16);
    assert!(matches!(r.err(), GgufErrorKind::InvalidUtf8 { .. }));
}

#[test]
fn alignment_must_be_a_u32_power_of_two_and_is_honoured() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 48);
    assert!(matches!(r.err(), GgufErrorKind::BadAlignment(_)));
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 0);
    assert!(matches!(r.err(), GgufErrorKind::BadAlignment(_)));
    let mut r = Raw::header(3, 0, 1);
    r.str(b"general.alignment").u32(10).u64(64);
    assert!(matches!(r.err(), GgufErrorKind::BadAlignment(_)));

    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 256);
    r.tensor(b"x", &[3], 0, 0).tensor(b"y", &[1], 0, 256);
    r.pad(256);
    let start = r.0.len();
    r.zeros(260);
    r.0[start + 256] = 9;
    let f = r.parse().unwrap();
    assert_eq!((f.alignment(), f.data_offset()), (256, start as u64));
    assert_eq!(f.tensor("y").unwrap().data, &[9, 0, 0, 0]);
    // 128 is a multiple of 32 but not of the declared 256.
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 256);
    r.tensor(b"x", &[3], 0, 128).pad(256).zeros(512);
    assert!(matches!(
        r.err(),
        GgufErrorKind::MisalignedTensor {
            offset: 128,
            alignment: 256,
            ..
        }
    ));
}

fn one_tensor(name: &[u8], shape: &[u64], ty: u32, offset: u64, data: usize) -> Raw {
    let mut r = Raw::header(3, 1, 0);
    r.tensor(name, shape, ty, offset).pad(32).zeros(data);
    r
}

#[test]
fn tensor_infos_are_checked() {
    let ok = one_tensor(&[b'n'; 63], &[32], 0, 0, 128);
    assert!(ok.parse().is_ok(), "a 63-byte name is allowed");
    assert!(matches!(
        one_tensor(&[b'n'; 64], &[32], 0, 0, 128).err(),
        GgufErrorKind::TensorNameTooLong { len: 64, .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[1, 1, 1, 1, 1], 0, 0, 32).err(),
        GgufErrorKind::TooManyDims { n_dims: 5, .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[32], 4, 0, 32).err(),
        GgufErrorKind::UnknownTensorType { id: 4, .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[32], 1000, 0, 32).err(),
        GgufErrorKind::UnknownTensorType { id: 1000, .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[48], GgmlType::Q4_0.id(), 0, 64).err(),
        GgufErrorKind::RowNotWholeBlocks {
            ne0: 48,
            block: 32,
            ..
        }
    ));
    assert!(matches!(
        one_tensor(b"t", &[128, 1], GgmlType::Q4K.id(), 0, 256).err(),
        GgufErrorKind::RowNotWholeBlocks {
            ne0: 128,
            block: 256,
            ..
        }
    ));
    assert!(matches!(
        one_tensor(b"t", &[1 << 32, 1 << 32], 0, 0, 32).err(),
        GgufErrorKind::ShapeOverflow { .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[1 << 62], 0, 0, 32).err(),
        GgufErrorKind::ShapeOverflow { .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[4], 0, 16, 64).err(),
        GgufErrorKind::MisalignedTensor { offset: 16, .. }
    ));
    // Data past the end: by a byte, and with an offset that would overflow.
    assert!(matches!(
        one_tensor(b"t", &[8], 0, 0, 31).err(),
        GgufErrorKind::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        one_tensor(b"t", &[8], 0, u64::MAX - 31, 64).err(),
        GgufErrorKind::TensorOutOfBounds { .. }
    ));
}

#[test]
fn duplicate_and_overlapping_tensors_are_rejected() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor(b"t", &[8], 0, 0)
        .tensor(b"t", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    assert!(matches!(r.err(), GgufErrorKind::DuplicateTensor(n) if n == "t"));
    let mut r = Raw::header(3, 2, 0);
    r.tensor(b"a", &[16], 0, 0)
        .tensor(b"b", &[8], 0, 32)
        .pad(32)
        .zeros(96);
    assert!(matches!(
        r.err(),
        GgufErrorKind::OverlappingTensors { ref first, ref second } if first == "a" && second == "b"
    ));
    // Out of order and with a gap is fine.
    let mut r = Raw::header(3, 2, 0);
    r.tensor(b"a", &[8], 0, 64)
        .tensor(b"b", &[8], 0, 0)
        .pad(32)
        .zeros(96);
    assert!(r.parse().is_ok());
}

fn vocab(name: &str) -> String {
    format!("{VOCAB_DIR}/{name}")
}

#[test]
fn reads_llama_cpp_vocab_files() {
    let f = GgufFile::open(vocab("ggml-vocab-llama-spm.gguf")).unwrap();
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "llama");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 32000);
    let tokens: Vec<&str> = tokens.collect();
    assert_eq!(&tokens[..3], ["<unk>", "<s>", "</s>"]);
    assert_eq!(tokens[3], "<0x00>");
    assert_eq!(
        f.get_array_of::<f32>("tokenizer.ggml.scores")
            .unwrap()
            .len(),
        32000
    );
    assert_eq!(
        f.get_array_of::<i32>("tokenizer.ggml.token_type")
            .unwrap()
            .nth(1),
        Some(3)
    );
    assert_eq!(f.tensor_count(), 0);

    for name in ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-gpt-2.gguf"] {
        let f = GgufFile::open(vocab(name)).unwrap();
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
        assert!(merges.len() > 40_000, "{name}");
    }
}

#[test]
fn truncated_vocab_file_is_an_error_at_every_header_offset_sampled() {
    let bytes = std::fs::read(vocab("ggml-vocab-llama-spm.gguf")).unwrap();
    // Every offset of the fixed header and first records, then a stride through the rest.
    let offsets = (0..4096).chain((4096..bytes.len()).step_by(997));
    for cut in offsets {
        let e = GgufFile::from_bytes("cut.gguf", bytes[..cut].to_vec()).unwrap_err();
        assert!(
            matches!(
                e.kind,
                GgufErrorKind::Truncated { .. } | GgufErrorKind::CountTooLarge { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn missing_file_and_empty_file_are_errors() {
    let e = GgufFile::open("/nonexistent/x.gguf").unwrap_err();
    assert!(matches!(e.kind, GgufErrorKind::Io(_)));
    assert!(e.to_string().starts_with("/nonexistent/x.gguf: "));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&p).unwrap_err().kind,
        GgufErrorKind::Truncated { .. }
    ));
}

/// splitmix64: a tiny deterministic generator, so failures reproduce.
fn next_random(state: &mut u64) -> u64 {
    llava_runtime::rng::SplitMix64::step(state)
}

#[test]
fn random_corruption_never_panics() {
    let valid = valid_file();
    let header_len = valid.0.len() - 240;
    let mut state = 42;
    for _ in 0..20_000 {
        let mut bytes = valid.0.clone();
        let flips = 1 + next_random(&mut state) % 4;
        for _ in 0..flips {
            let at = (next_random(&mut state) % header_len as u64) as usize;
            let r = next_random(&mut state);
            // Mostly single-byte noise; sometimes a length-sized extreme value.
            if r.is_multiple_of(8) && at + 8 <= bytes.len() {
                let v = [u64::MAX, 1 << 63, u32::MAX as u64, 64][(r >> 8) as usize % 4];
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                bytes[at] = (r >> 16) as u8;
            }
        }
        // Either outcome is fine; a panic or an abort from a huge allocation is not.
        if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", bytes) {
            for (_, v) in f.metadata() {
                if let Value::Array(a) = v {
                    a.iter().for_each(drop);
                }
            }
            for t in f.tensors() {
                assert_eq!(t.data.len() as u64, t.n_bytes());
            }
        }
    }
}
