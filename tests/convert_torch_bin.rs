//! PyTorch checkpoints (`pytorch_model*.bin`, from `torch.save`): converted without running
//! their pickles, to the same GGUF bytes as the same weights in safetensors; hostile and
//! unsupported archives refused in one line. Fixtures: tests/fixtures/torch_bin_fixtures.py.

use std::path::Path;

mod common;
use common::*;

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
}

#[test]
fn a_sharded_pytorch_checkpoint_converts_to_the_gguf_of_its_safetensors() {
    // The .bin fixtures hold no safetensors: the PyTorch reader is what runs.
    for d in ["llava-tiny-orig-bin", "clip-tiny-bin"] {
        assert!(!has_safetensors(&fixture(d)), "{d}");
    }
    let out = tempfile::tempdir().unwrap();
    let convert = |src: &str, tower: &str, to: &str| {
        // Under one directory name: the LLM's general.name comes from it.
        let ckpt = out.path().join(to).join("llava-tiny");
        std::fs::create_dir_all(&ckpt).unwrap();
        for e in std::fs::read_dir(fixture(src)).unwrap().flatten() {
            std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
        }
        let o = llava(&[
            "convert",
            ckpt.to_str().unwrap(),
            "--vision-tower",
            fixture(tower).to_str().unwrap(),
            "--name",
            "t",
            "--outdir",
            out.path().join(to).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{src}: {}", stderr(&o));
    };
    convert("llava-tiny-orig", "clip-tiny", "st");
    convert("llava-tiny-orig-bin", "clip-tiny-bin", "bin");
    for f in ["t-q4_k_m.gguf", "mmproj-t-f16.gguf"] {
        let a = std::fs::read(out.path().join("st").join(f)).unwrap();
        let b = std::fs::read(out.path().join("bin").join(f)).unwrap();
        assert!(
            a == b,
            "{f}: the .bin conversion differs from the safetensors one"
        );
    }
}

#[test]
fn hostile_or_unreadable_pytorch_files_are_refused_in_one_line() {
    for (file, want) in [
        ("evil.bin", "names posix.system"),
        ("legacy.bin", "legacy (before 1.6) format"),
        ("compressed.bin", "data.pkl is compressed"),
        ("overrun.bin", "extends past the end of its storage"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture("llama-gqa").join(f), dir.path().join(f)).unwrap();
        }
        let bin = dir.path().join("pytorch_model.bin");
        std::fs::copy(fixture("torch-bin-hostile").join(file), &bin).unwrap();
        let out = dir.path().join("out.gguf");
        let o = llava(&[
            "convert",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{file}: {err}");
        assert!(err.contains(bin.to_str().unwrap()), "{file}: {err}");
        assert!(err.contains(want), "{file}: {err}");
        assert!(!out.exists(), "{file}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            4,
            "{file}: leftovers"
        );
    }
}

#[test]
fn every_dtype_views_parameters_and_nested_state_dicts_read_as_torch_wrote_them() {
    use llava_convert::read_torch_state_dict;
    use safetensors::Dtype;
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/torch_bin");
    let bytes = std::fs::read(seeds.join("small.bin")).unwrap();
    let tensors = read_torch_state_dict(&bytes).unwrap();
    let get = |name: &str| tensors.iter().find(|t| t.name == name).unwrap();
    let f32s = |t: &llava_convert::TorchTensor| -> Vec<f32> {
        bytes[t.start..t.end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    // torch.arange(12).reshape(3, 4), and the view base[1:]: rows 1 and 2, at offset 4.
    let base = get("a.f32");
    assert_eq!((base.dtype, &base.shape[..]), (Dtype::F32, &[3, 4][..]));
    assert_eq!(f32s(base), (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let view = get("a.view");
    assert_eq!(&view.shape[..], &[2, 4]);
    assert_eq!(f32s(view), (4..12).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(view.start, base.start + 16, "the view shares the storage");
    let half = get("a.f16");
    assert_eq!(half.dtype, Dtype::F16);
    let h: Vec<f32> = bytes[half.start..half.end]
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(h, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let bf16 = get("a.bf16");
    assert_eq!((bf16.dtype, &bf16.shape[..]), (Dtype::BF16, &[3, 4][..]));
    let b: Vec<f32> = bytes[bf16.start..bf16.end]
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(b, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    // torch.arange(5).unsqueeze(0): int64.
    let ids = get("a.ids");
    assert_eq!((ids.dtype, &ids.shape[..]), (Dtype::I64, &[1, 5][..]));
    let i: Vec<i64> = bytes[ids.start..ids.end]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(i, [0, 1, 2, 3, 4]);
    // A Parameter around torch.ones(2).
    let param = get("a.param");
    assert_eq!((param.dtype, &param.shape[..]), (Dtype::F32, &[2][..]));
    assert_eq!(f32s(param), [1.0, 1.0]);
    assert_eq!(tensors.len(), 6);
    // A training checkpoint: the state dict under "state_dict".
    let bytes = std::fs::read(seeds.join("nested.bin")).unwrap();
    let tensors = read_torch_state_dict(&bytes).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(
        (tensors[0].name.as_str(), &tensors[0].shape[..]),
        ("w", &[3, 4][..])
    );
}
