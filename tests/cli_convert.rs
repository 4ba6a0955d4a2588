//! `llava convert --verbose` and `llava quantize --verbose`: one table row per tensor with the
//! type and shape written and the RMSE against the source, which agrees with the file's
//! contents; without `--verbose`, only the summary line.

use std::path::Path;

use llava_convert::{convert_llama, Preset};
use llava_runtime::gguf::GgufFile;
use llava_runtime::quant;

mod common;
use common::*;

fn decode(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap();
    let row = t.shape()[0] as usize;
    let rb = t.ggml_type().row_bytes(row as u64).unwrap() as usize;
    let mut out = vec![0f32; t.n_elements() as usize];
    // Rows borrowed from the map are aligned for their blocks (32-aligned data, whole blocks).
    for (dst, src) in out.chunks_mut(row).zip(t.data.chunks(rb)) {
        quant::dequantize_row(t.ggml_type(), src, dst).unwrap();
    }
    out
}

/// Checks the table in `err` against `file`, whose source values are those of `exact`.
fn check_table(err: &str, file: &Path, exact: &Path) {
    let (f, x) = (
        GgufFile::open(file).unwrap(),
        GgufFile::open(exact).unwrap(),
    );
    let lines: Vec<&str> = err.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["tensor", "type", "shape", "RMSE"], "{err}");
    assert_eq!(lines.len(), f.tensor_count() + 2, "{err}");
    for (line, t) in lines[1..].iter().zip(f.tensors()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], t.name(), "{line}");
        assert_eq!(cols[1], t.ggml_type().name(), "{line}");
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        assert!(line.contains(&format!("[{}]", shape.join(", "))), "{line}");
        let printed: f64 = cols.last().unwrap().parse().unwrap();
        let (a, b) = (decode(&f, t.name()), decode(&x, t.name()));
        let want = (a
            .iter()
            .zip(&b)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64)
            .sqrt();
        // Printed with 4 significant digits.
        assert!((printed - want).abs() <= want * 1e-3, "{line}: {want}");
        if t.ggml_type() == llava_runtime::quant::GgmlType::F32 {
            assert_eq!(printed, 0.0, "{line}");
        } else {
            assert!(printed > 0.0, "{line}");
        }
    }
    assert!(lines.last().unwrap().starts_with("wrote "), "{err}");
}

#[test]
fn verbose_tables_agree_with_the_files_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(FIXTURES).join("llama-gqa");
    // The fixture is f16: an F32 conversion holds the source values exactly.
    let exact = dir.path().join("f32.gguf");
    convert_llama(&src, &exact, Preset::F32).unwrap();

    let out = dir.path().join("q8.gguf");
    let o = llava(&[
        "convert",
        src.to_str().unwrap(),
        "-q",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
        "--verbose",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_table(&stderr(&o), &out, &exact);

    let out = dir.path().join("q4.gguf");
    let o = llava(&[
        "quantize",
        exact.to_str().unwrap(),
        out.to_str().unwrap(),
        "-q",
        "q4_k_m",
        "-v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_table(&stderr(&o), &out, &exact);

    // Quiet by default: stderr is not a terminal here, and the conversion is far shorter
    // than the interval between plain progress lines.
    let out = dir.path().join("q4_0.gguf");
    let o = llava(&[
        "convert",
        src.to_str().unwrap(),
        "-q",
        "q4_0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("wrote ") && err.contains("MB/s read"),
        "{err}"
    );
}
