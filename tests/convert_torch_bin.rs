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
