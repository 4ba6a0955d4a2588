//! `llava inspect` end to end: llama.cpp's files, JSON output, and truncated files.

use std::path::Path;

use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter};
use llava_runtime::quant::GgmlType;

mod common;
use common::*;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vocab");

#[test]
fn inspect_prints_metadata_of_a_llama_cpp_vocab_file() {
    let path = format!("{VOCAB_DIR}/ggml-vocab-llama-spm.gguf");
    let o = llava(&["inspect", &path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("architecture  llama"), "{out}");
    assert!(out.contains("GGUF v3"), "{out}");
    assert!(out.contains("tokenizer.ggml.model"), "{out}");
    assert!(out.contains("[string; 32000]"), "{out}");
    // Long arrays are cut.
    assert!(
        out.contains(r#"["<unk>", "<s>", "</s>", "<0x00>""#),
        "{out}"
    );
    assert!(out.contains("… 31992 more]"), "{out}");
    assert!(out.lines().count() < 60, "{out}");
}

/// A small model-like file with several tensor types.
fn sample_model(path: &Path) {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama").unwrap();
    w.add("general.name", "tiny").unwrap();
    w.add("general.file_type", 15u32).unwrap();
    w.add("llama.block_count", 1u32).unwrap();
    w.add(
        "tokenizer.ggml.tokens",
        vec!["a".to_owned(), "b".to_owned()],
    )
    .unwrap();
    w.add_tensor("token_embd.weight", GgmlType::Q4K, &[256, 2])
        .unwrap();
    w.add_tensor("blk.0.attn_norm.weight", GgmlType::F32, &[256])
        .unwrap();
    w.add_tensor("output.weight", GgmlType::Q6K, &[256, 2])
        .unwrap();
    w.write(path, |_, d, out| -> Result<(), GgufWriteError> {
        out.write_all(&vec![0; d.n_bytes() as usize]).unwrap();
        Ok(())
    })
    .unwrap();
}

#[test]
fn inspect_shows_tensor_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    sample_model(&path);
    let p = path.to_str().unwrap();

    let o = llava(&["inspect", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("file type     MOSTLY_Q4_K_M (15)"), "{out}");
    assert!(out.contains("parameters    1.28 K (1280)"), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("token_embd.weight"))
        .expect("tensor row");
    assert!(
        row.contains("q4_K") && row.contains("256 x 2") && row.contains("288 B"),
        "{row}"
    );

    let o = llava(&["inspect", "--json", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["parameters"], 1280);
    assert_eq!(j["file_type"]["name"], "MOSTLY_Q4_K_M");
    assert_eq!(j["tensors"][2]["name"], "output.weight");
    assert_eq!(j["tensors"][2]["type"], "q6_K");
    assert_eq!(j["tensors"][2]["bytes"], 420);
    assert_eq!(j["by_type"]["f32"]["bytes"], 1024);
    let tokens = &j["metadata"][4];
    assert_eq!(tokens["key"], "tokenizer.ggml.tokens");
    assert_eq!(tokens["len"], 2);
    assert_eq!(tokens["value"], serde_json::json!(["a", "b"]));
}

#[test]
fn truncated_file_at_every_offset_gives_one_line_error_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let full_path = dir.path().join("full.gguf");
    sample_model(&full_path);
    let mut bytes = std::fs::read(&full_path).unwrap();
    // Cutting into the padding after the last tensor leaves a valid file; stop before it.
    let f = GgufFile::open(&full_path).unwrap();
    let last = f.tensor_infos().last().unwrap();
    bytes.truncate((f.data_offset() + last.offset() + last.n_bytes()) as usize);
    let cut_path = dir.path().join("cut.gguf");
    let p = cut_path.to_str().unwrap();
    // The header and the first bytes of data; then a stride through the rest.
    let header_end = 400.min(bytes.len());
    let cuts = (0..header_end).chain((header_end..bytes.len()).step_by(61));
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let o = llava(&["inspect", p]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "cut at {cut}: {err}");
        assert_eq!(err.lines().count(), 1, "cut at {cut}: {err}");
        assert!(
            err.starts_with("llava: error: ") && err.contains(p),
            "cut at {cut}: {err}"
        );
        assert!(!err.contains("panicked"), "cut at {cut}: {err}");
    }
}

#[test]
fn inspect_of_a_missing_or_foreign_file_is_a_clean_error() {
    let o = llava(&["inspect", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/model.gguf"));
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let o = llava(&["inspect", readme]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a GGUF file"), "{}", stderr(&o));
}

#[test]
fn inspect_reads_only_the_header_of_a_large_file() {
    // A 4 GiB tensor in a sparse file: inspect must not touch the data (a full read would take
    // seconds and the pages would show up as I/O); here we check it works and reports the size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes()); // tensors
    h.extend_from_slice(&0u64.to_le_bytes()); // metadata
    h.extend_from_slice(&(5u64).to_le_bytes());
    h.extend_from_slice(b"big.w");
    h.extend_from_slice(&2u32.to_le_bytes());
    h.extend_from_slice(&4096u64.to_le_bytes());
    h.extend_from_slice(&262_144u64.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // f32
    h.extend_from_slice(&0u64.to_le_bytes()); // offset
    h.resize(h.len().div_ceil(32) * 32, 0);
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, &h).unwrap();
    file.set_len(h.len() as u64 + (4u64 << 30)).unwrap();
    drop(file);

    let o = llava(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["tensor_bytes"], 4u64 << 30);
    assert_eq!(j["parameters"], 1u64 << 30);
}
