//! `llava quantize`: requantizing a GGUF file gives what a direct conversion gives — the same
//! metadata (but `general.file_type`), the same per-tensor types and, where the source is exact
//! in f32, the same bytes — for an LLM and an mmproj; and bad inputs are refused without
//! leaving a file behind.

use std::path::Path;
use std::process::Output;

use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_runtime::gguf::{GgufFile, GgufWriter, MetaValue};
use llava_runtime::quant::{self, GgmlType};

mod common;
use common::*;

fn quantize(input: &Path, output: &Path, preset: &str) -> Output {
    llava(&[
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--quant",
        preset,
    ])
}

/// Metadata, tensor names, types, shapes and bytes of two files are equal.
fn assert_same_file(a: &Path, b: &Path) {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    let meta = |f: &GgufFile| -> Vec<(String, MetaValue)> {
        f.metadata()
            .map(|(k, v)| (k.to_owned(), v.to_owned_value()))
            .collect()
    };
    assert_eq!(meta(&fa), meta(&fb));
    assert_eq!(fa.tensor_count(), fb.tensor_count());
    for (ta, tb) in fa.tensors().zip(fb.tensors()) {
        assert_eq!(ta.name(), tb.name());
        assert_eq!(ta.ggml_type(), tb.ggml_type(), "{}", ta.name());
        assert_eq!(ta.shape(), tb.shape(), "{}", ta.name());
        assert!(ta.data == tb.data, "{}: bytes differ", ta.name());
    }
}

#[test]
fn requantized_llm_equals_a_direct_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("f32.gguf");
    convert_llama(&fixture("llama-gqa"), &f32_path, Preset::F32).unwrap();
    // The fixture is stored in f16, so the F32 file holds the source exactly and requantizing
    // it repeats the direct conversion's arithmetic.
    for preset in [Preset::Q4KM, Preset::Q8_0, Preset::Q4_0, Preset::F16] {
        let direct = dir.path().join(format!("direct-{preset}.gguf"));
        convert_llama(&fixture("llama-gqa"), &direct, preset).unwrap();
        let requantized = dir.path().join(format!("re-{preset}.gguf"));
        let o = quantize(&f32_path, &requantized, preset.name());
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
        assert_same_file(&requantized, &direct);
    }
    let f = GgufFile::open(dir.path().join("re-q4_k_m.gguf")).unwrap();
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    // use_more_bits(1, 2): the last eighth of 2 layers is layer 1.
    assert_eq!(
        f.tensor("blk.1.attn_v.weight").unwrap().ggml_type(),
        GgmlType::Q6K
    );
    assert_eq!(
        f.tensor("blk.0.attn_v.weight").unwrap().ggml_type(),
        GgmlType::Q4K
    );
}

#[test]
fn requantized_mmproj_equals_a_direct_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llava-tiny-hf");
    let f32_path = dir.path().join("mmproj-f32.gguf");
    convert_mmproj(&src, None, &f32_path, Preset::F32).unwrap();
    let direct = dir.path().join("mmproj-q8_0.gguf");
    convert_mmproj(&src, None, &direct, Preset::Q8_0).unwrap();
    let requantized = dir.path().join("re.gguf");
    let o = quantize(&f32_path, &requantized, "q8_0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_file(&requantized, &direct);
    // The vision rules, not the LLM's: embeddings F16, matrices Q8_0, vectors F32.
    let f = GgufFile::open(&requantized).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ggml_type();
    assert_eq!(ty("v.patch_embd.weight"), GgmlType::F16);
    assert_eq!(ty("v.position_embd.weight"), GgmlType::F16);
    assert_eq!(ty("v.blk.0.ffn_up.weight"), GgmlType::Q8_0);
    assert_eq!(ty("mm.2.weight"), GgmlType::Q8_0);
    assert_eq!(ty("mm.2.bias"), GgmlType::F32);
}

#[test]
fn a_quantized_source_is_dequantized_first() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = dir.path().join("q4.gguf");
    convert_llama(&fixture("llama-gqa"), &q4, Preset::Q4KM).unwrap();
    let f16 = dir.path().join("f16.gguf");
    let o = quantize(&q4, &f16, "f16");
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (GgufFile::open(&q4).unwrap(), GgufFile::open(&f16).unwrap());
    assert_eq!(b.get_u32("general.file_type").unwrap(), 1);
    for (ta, tb) in a.tensors().zip(b.tensors()) {
        let n = ta.n_elements() as usize;
        let row = ta.shape()[0] as usize;
        let (mut xa, mut xb) = (vec![0f32; n], vec![0f32; n]);
        for r in 0..n / row {
            fn bytes<'a>(t: &llava_runtime::gguf::Tensor<'a>, r: usize, row: usize) -> &'a [u8] {
                let rb = t.ggml_type().row_bytes(row as u64).unwrap() as usize;
                &t.data[r * rb..(r + 1) * rb]
            }
            quant::dequantize_row(
                ta.ggml_type(),
                bytes(&ta, r, row),
                &mut xa[r * row..][..row],
            )
            .unwrap();
            quant::dequantize_row(
                tb.ggml_type(),
                bytes(&tb, r, row),
                &mut xb[r * row..][..row],
            )
            .unwrap();
        }
        // Q4_K and Q6_K values are f16 scales times small integers: F16 holds them to within
        // its own rounding.
        for (x, y) in xa.iter().zip(&xb) {
            assert!((x - y).abs() <= x.abs() * 1e-3 + 1e-6, "{}", ta.name());
        }
        let want = if tb.shape().len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        assert_eq!(tb.ggml_type(), want, "{}", tb.name());
    }
}

/// A file with the given architecture and one tensor of type `ty` (zero bytes).
fn write_file(path: &Path, arch: &str, ty: GgmlType) {
    let mut w = GgufWriter::new();
    w.add("general.architecture", arch).unwrap();
    w.add("llama.block_count", MetaValue::U32(1)).unwrap();
    w.add_tensor("blk.0.attn_q.weight", ty, &[256, 4]).unwrap();
    w.write(path, |_, decl, out| {
        out.write_all(&vec![0u8; decl.n_bytes() as usize])
            .map_err(|error| llava_runtime::gguf::GgufWriteError::Io {
                path: path.to_owned(),
                error,
            })
    })
    .unwrap();
}

/// Nothing at `path` and no temporary file beside it.
fn assert_nothing_written(dir: &Path, path: &Path) {
    assert!(!path.exists(), "{}", path.display());
    let partial: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn bad_inputs_are_refused_with_one_line_naming_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");

    let gpt2 = dir.path().join("gpt2.gguf");
    write_file(&gpt2, "gpt2", GgmlType::F16);
    let o = quantize(&gpt2, &out, "q8_0");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("gpt2.gguf") && e.contains("general.architecture") && e.contains("\"gpt2\""),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert_nothing_written(dir.path(), &out);

    let iq = dir.path().join("iq.gguf");
    write_file(&iq, "llama", GgmlType::Iq2Xxs);
    let o = quantize(&iq, &out, "q8_0");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("iq.gguf") && e.contains("blk.0.attn_q.weight") && e.contains("iq2_xxs"),
        "{e}"
    );
    assert_nothing_written(dir.path(), &out);

    let missing = dir.path().join("missing.gguf");
    let o = quantize(&missing, &out, "q8_0");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.gguf"), "{}", stderr(&o));
    assert_nothing_written(dir.path(), &out);

    // An existing output is refused, and kept, unless --force.
    let good = dir.path().join("good.gguf");
    write_file(&good, "llama", GgmlType::F16);
    std::fs::write(&out, b"keep me").unwrap();
    let o = quantize(&good, &out, "q8_0");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let args = |p: &Path| {
        [
            "quantize".to_owned(),
            good.to_str().unwrap().to_owned(),
            p.to_str().unwrap().to_owned(),
            "-q".to_owned(),
            "q8_0".to_owned(),
            "--force".to_owned(),
        ]
    };
    let run = |p: &Path| {
        let a = args(p);
        llava(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        GgufFile::open(&out)
            .unwrap()
            .tensor("blk.0.attn_q.weight")
            .unwrap()
            .ggml_type(),
        GgmlType::Q8_0
    );

    // Writing over the input would replace the file being read.
    let o = run(&good);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is the input file"), "{}", stderr(&o));
}
