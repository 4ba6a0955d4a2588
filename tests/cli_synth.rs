//! `llava synth`: random-weight file pairs with the layout a conversion gives — the same keys,
//! tensor names and per-tensor types — deterministic for a seed, every weight finite.

use std::path::Path;
use std::process::Output;

use llava_convert::{convert_mmproj, Preset};
use llava_runtime::gguf::GgufFile;
use llava_runtime::quant::{self, GgmlType};

mod common;
use common::*;

fn synth(outdir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "synth",
        "--preset",
        "tiny",
        "--outdir",
        outdir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    llava(&args)
}

/// Every tensor dequantized: all values finite and within a trained model's range.
fn assert_all_weights_sane(path: &Path) {
    let f = GgufFile::open(path).unwrap();
    for t in f.tensors() {
        let row = t.shape()[0] as usize;
        let rb = t.ggml_type().row_bytes(row as u64).unwrap() as usize;
        let mut x = vec![0f32; row];
        // Rows borrowed from the map are aligned for their blocks: the data is 32-aligned and
        // every row is a whole number of blocks.
        for bytes in t.data.chunks(rb) {
            quant::dequantize_row(t.ggml_type(), bytes, &mut x).unwrap();
            assert!(
                x.iter().all(|v| v.is_finite() && v.abs() <= 1.0),
                "{}: {}",
                path.display(),
                t.name()
            );
        }
    }
}

#[test]
fn tiny_pair_has_a_converted_files_layout_and_repeats_with_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let o = synth(dir.path(), &["-q", "q4_k_m", "--vision-quant", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let llm = dir.path().join("tiny-q4_k_m.gguf");
    let mmproj = dir.path().join("mmproj-tiny-q8_0.gguf");
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
    assert_all_weights_sane(&llm);
    assert_all_weights_sane(&mmproj);

    // The mmproj has the keys of a converted one, in the same order, and each tensor the type
    // the converter gives a tensor of that name.
    let converted = dir.path().join("converted.gguf");
    let src = Path::new(FIXTURES).join("llava-tiny-hf");
    convert_mmproj(&src, None, &converted, Preset::Q8_0).unwrap();
    let (s, c) = (
        GgufFile::open(&mmproj).unwrap(),
        GgufFile::open(&converted).unwrap(),
    );
    let keys = |f: &GgufFile| f.metadata().map(|(k, _)| k.to_owned()).collect::<Vec<_>>();
    assert_eq!(keys(&s), keys(&c));
    assert_eq!(s.get_u32("clip.vision.block_count").unwrap(), 2);
    assert_eq!(s.get_u32("clip.vision.embedding_length").unwrap(), 64);
    for t in s.tensors() {
        let ct = c.tensor(t.name()).unwrap_or_else(|| panic!("{}", t.name()));
        assert_eq!(t.ggml_type(), ct.ggml_type(), "{}", t.name());
        assert_eq!(t.shape().len(), ct.shape().len(), "{}", t.name());
    }
    // The projector maps the tower's width to the tiny LLM's.
    let llm_file = GgufFile::open(&llm).unwrap();
    let width = llm_file.get_u32("llama.embedding_length").unwrap() as u64;
    assert_eq!(s.tensor("mm.0.weight").unwrap().shape(), [64, width]);
    assert_eq!(s.tensor("mm.2.weight").unwrap().shape(), [width, width]);

    // The pair runs: the image goes through the synthetic tower and projector.
    let o = llava(&[
        "run",
        "-m",
        llm.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
        "--image",
        &format!("{FIXTURES}/images/odd.png"),
        "--temp",
        "0",
        "-n",
        "4",
        "--verbose",
        "What is this?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("image encode: 1 image(s)"),
        "{}",
        stderr(&o)
    );

    // The same seed, the same bytes; another seed, other weights.
    let again = dir.path().join("again");
    let o = synth(&again, &["-q", "q4_k_m", "--vision-quant", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(read(&llm) == read(&again.join("tiny-q4_k_m.gguf")));
    assert!(read(&mmproj) == read(&again.join("mmproj-tiny-q8_0.gguf")));
    let other = dir.path().join("other");
    let o = synth(
        &other,
        &["-q", "q4_k_m", "--vision-quant", "q8_0", "--seed", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let f = GgufFile::open(other.join("tiny-q4_k_m.gguf")).unwrap();
    let t = |f: &GgufFile| f.tensor("blk.0.ffn_up.weight").unwrap().data.to_vec();
    assert_ne!(t(&f), t(&llm_file));
    assert_eq!(
        f.tensor("blk.0.ffn_up.weight").unwrap().ggml_type(),
        GgmlType::Q4K
    );
}

#[test]
fn existing_outputs_are_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mmproj = dir.path().join("mmproj-tiny-f16.gguf");
    std::fs::write(&mmproj, b"keep me").unwrap();
    let o = synth(dir.path(), &["-q", "q8_0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&mmproj).unwrap(), b"keep me");
    assert!(!dir.path().join("tiny-q8_0.gguf").exists());
    let o = synth(dir.path(), &["-q", "q8_0", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        GgufFile::open(&mmproj)
            .unwrap()
            .get_str("general.architecture")
            .unwrap(),
        "clip"
    );
}
