//! The streaming GGUF writer: round trips through the reader, byte-identity with files written
//! by llama.cpp's gguf-py, and no file at the destination when anything goes wrong.

use std::path::Path;

use llava_runtime::gguf::{
    copy_file, GgufFile, GgufWriteError, GgufWriter, MetaArray, MetaValue, WRITE_VERSION,
};
use llava_runtime::quant::GgmlType;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/vocab");

fn every_value() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("general.architecture", "llama".into()),
        ("t.u8", 200u8.into()),
        ("t.i8", (-100i8).into()),
        ("t.u16", 60000u16.into()),
        ("t.i16", (-30000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", 0.1f32.into()),
        ("t.bool", true.into()),
        ("t.str", "naïve — ✓".into()),
        ("t.empty_str", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::PI.into()),
        ("a.u8", vec![1u8, 2, 3].into()),
        ("a.i8", vec![-1i8, 0, 1].into()),
        ("a.u16", vec![1u16, 65535].into()),
        ("a.i16", vec![-1i16, 7].into()),
        ("a.u32", vec![336u32, 672, 672, 336].into()),
        ("a.i32", vec![-7i32, 3].into()),
        ("a.f32", vec![0.48145466f32, 0.4578275, 0.40821073].into()),
        ("a.bool", vec![true, false, true].into()),
        (
            "a.str",
            vec!["<s>".to_owned(), String::new(), "▁the".to_owned()].into(),
        ),
        ("a.u64", vec![u64::MAX, 0].into()),
        ("a.i64", vec![i64::MIN, i64::MAX].into()),
        ("a.f64", vec![1e300f64, -0.0].into()),
        ("a.empty", MetaValue::Array(MetaArray::F32(vec![]))),
    ]
}

/// Deterministic bytes for tensor `i`.
fn tensor_bytes(i: usize, n: u64) -> Vec<u8> {
    (0..n).map(|j| (j as usize * 31 + i * 7) as u8).collect()
}

fn write_sample(path: &Path, alignment: Option<u32>) -> Vec<(String, GgmlType, Vec<u64>)> {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add("general.alignment", a).unwrap();
    }
    for (k, v) in every_value() {
        w.add(k, v).unwrap();
    }
    let tensors = vec![
        ("token_embd.weight".to_owned(), GgmlType::Q4K, vec![256, 3]),
        ("blk.0.attn_norm.weight".to_owned(), GgmlType::F32, vec![5]),
        (
            "blk.0.attn_q.weight".to_owned(),
            GgmlType::Q8_0,
            vec![64, 2],
        ),
        (
            "v.patch_embd.weight".to_owned(),
            GgmlType::F16,
            vec![14, 14, 3, 2],
        ),
        ("empty".to_owned(), GgmlType::F32, vec![0, 4]),
        ("scalar".to_owned(), GgmlType::F32, vec![]),
    ];
    for (name, ty, shape) in &tensors {
        w.add_tensor(name, *ty, shape).unwrap();
    }
    w.write(path, |i, decl, out| -> Result<(), GgufWriteError> {
        // Write in uneven pieces to show the writer does not depend on one call per tensor.
        let bytes = tensor_bytes(i, decl.n_bytes());
        for chunk in bytes.chunks(7) {
            out.write_all(chunk).unwrap();
        }
        Ok(())
    })
    .unwrap();
    tensors
}

#[test]
fn write_then_read_gives_identical_metadata_and_bytes() {
    for alignment in [None, Some(1), Some(64), Some(4096)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        let tensors = write_sample(&path, alignment);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), WRITE_VERSION);
        let want_alignment = alignment.map_or(32, u64::from);
        assert_eq!(f.alignment(), want_alignment);
        assert_eq!(f.data_offset() % want_alignment, 0);

        let mut expected = every_value();
        if let Some(a) = alignment {
            expected.insert(0, ("general.alignment", a.into()));
        }
        let got: Vec<(String, MetaValue)> = f
            .metadata()
            .map(|(k, v)| (k.to_owned(), v.to_owned_value()))
            .collect();
        let expected: Vec<(String, MetaValue)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(got, expected);

        assert_eq!(f.tensor_count(), tensors.len());
        for (i, (t, (name, ty, shape))) in f.tensors().zip(&tensors).enumerate() {
            assert_eq!(
                (t.name(), t.ggml_type(), t.shape()),
                (name.as_str(), *ty, &shape[..])
            );
            assert_eq!(t.offset() % want_alignment, 0, "{name}");
            assert_eq!(t.data, tensor_bytes(i, t.n_bytes()), "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o044,
                0o044,
                "readable by others like any new file: {mode:o}"
            );
        }
        // Nothing else was left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[test]
fn rewriting_llama_cpp_files_reproduces_them_byte_for_byte() {
    // The vocab files and the converted fixtures were written by llama.cpp's gguf-py (its
    // convert_hf_to_gguf.py and convert_image_encoder_to_gguf.py for the latter): an
    // independent writer of the format, metadata only in the first, with tensors (their
    // infos, alignment and padding) in the others.
    let converted = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/llamacpp-converted"
    );
    for (dir, name) in [
        (VOCAB_DIR, "ggml-vocab-llama-spm.gguf"),
        (VOCAB_DIR, "ggml-vocab-llama-bpe.gguf"),
        (VOCAB_DIR, "ggml-vocab-gpt-2.gguf"),
        (converted, "llava-tiny-hf-f32.gguf"),
        (converted, "mmproj-model-f32.gguf"),
    ] {
        let src_path = Path::new(dir).join(name);
        let src = GgufFile::open(&src_path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join(name);
        copy_file(&src, &dst).unwrap();
        let a = std::fs::read(&src_path).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert_eq!(a.len(), b.len(), "{name}");
        assert!(a == b, "{name}: bytes differ");
    }
}

#[test]
fn a_failing_callback_leaves_no_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    std::fs::write(&path, b"previous contents").unwrap();

    #[derive(Debug)]
    enum MyError {
        Gguf(#[allow(dead_code)] GgufWriteError),
        Conversion,
    }
    impl From<GgufWriteError> for MyError {
        fn from(e: GgufWriteError) -> Self {
            MyError::Gguf(e)
        }
    }

    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
    w.add_tensor("b", GgmlType::F32, &[4]).unwrap();
    let r = w.write(&path, |i, _, out| {
        if i == 1 {
            return Err(MyError::Conversion);
        }
        out.write_all(&[0; 16]).unwrap();
        Ok(())
    });
    assert!(matches!(r, Err(MyError::Conversion)));
    assert_eq!(std::fs::read(&path).unwrap(), b"previous contents");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A short write is caught.
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
    let r = w.write(&path, |_, _, out| {
        out.write_all(&[0; 15]).map_err(|e| panic!("{e}"))
    });
    assert!(matches!(
        r,
        Err(GgufWriteError::SizeMismatch {
            written: 15,
            expected: 16,
            ..
        })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"previous contents");

    // A panic in the callback unwinds without leaving a temporary file behind.
    let path2 = dir.path().join("new.gguf");
    let result = std::panic::catch_unwind(|| {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
        let _ = w.write(&path2, |_, _, _| -> Result<(), GgufWriteError> {
            panic!("converter bug")
        });
    });
    assert!(result.is_err());
    assert!(!path2.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn invalid_declarations_are_refused_up_front() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert!(matches!(
        w.add("k", 2u32),
        Err(GgufWriteError::DuplicateKey(_))
    ));
    assert!(w.add("", 2u32).is_err());
    assert!(w.add("general.alignment", 48u32).is_err());
    assert!(w.add("general.alignment", 64u64).is_err());
    assert!(w.add_tensor(&"n".repeat(64), GgmlType::F32, &[1]).is_err());
    assert!(w.add_tensor("t", GgmlType::F32, &[1, 1, 1, 1, 1]).is_err());
    assert!(w.add_tensor("t", GgmlType::Q4_0, &[48]).is_err());
    assert!(w
        .add_tensor("t", GgmlType::F32, &[1 << 40, 1 << 40])
        .is_err());
    w.add_tensor("t", GgmlType::F32, &[1]).unwrap();
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[1]),
        Err(GgufWriteError::DuplicateTensor(_))
    ));
}

#[test]
fn write_to_a_missing_directory_is_an_error_naming_the_path() {
    let w = GgufWriter::new();
    let e = w
        .write(
            "/nonexistent-dir/x.gguf",
            |_, _, _| -> Result<(), GgufWriteError> { Ok(()) },
        )
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent-dir/x.gguf"), "{e}");
}
