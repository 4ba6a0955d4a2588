//! Helpers shared by the end-to-end tests: running the `llava` binary, fixture paths, NPY files.
// Each test binary uses some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A path under tests/fixtures.
pub fn fixture(p: &str) -> PathBuf {
    Path::new(FIXTURES).join(p)
}

/// The `llava` binary under test: the one built for these tests, or `LLAVA_BIN` (to run the
/// same tests against another build, e.g. to see a regression test fail before its fix).
pub fn llava_bin() -> PathBuf {
    std::env::var_os("LLAVA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_llava")))
}

/// A copy of fixture directory `name` (its files, not subdirectories) under `dir`, to edit or
/// to write into.
pub fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    to
}

/// The tiny LLaVA-1.5 fixture converted in F32 into `dir`: (LLM, mmproj).
pub fn tiny_llava(dir: &Path) -> (PathBuf, PathBuf) {
    use llava_convert::{convert_llama, convert_mmproj, Preset};
    let (llm, mmproj) = (dir.join("llm.gguf"), dir.join("mmproj.gguf"));
    convert_llama(&fixture("llava-tiny-hf"), &llm, Preset::F32).unwrap();
    convert_mmproj(&fixture("llava-tiny-hf"), None, &mmproj, Preset::F32).unwrap();
    (llm, mmproj)
}

/// Runs the `llava` binary under test.
pub fn llava(args: &[&str]) -> Output {
    Command::new(llava_bin())
        .args(args)
        .output()
        .expect("run llava")
}

/// Runs the `llava` binary under test with `input` on its stdin (a pipe).
pub fn llava_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(llava_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run llava");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait for llava")
}

/// How far an F32 run's logits may be from transformers' float32 ones (absolute; the tiny
/// models' logits reach about ±13). Measured (2026-12-07, AMD Zen 3, AVX2; lavapipe for the
/// GPU): 5.4e-6 and 6.7e-6 for the two LLaMA fixtures, 8.8e-6 for LLaVA-1.5, 1.1e-5 for the
/// first LLaVA, at most 2.1e-5 over the LLaVA-NeXT views, 1.2e-5 on the GPU; the bound leaves
/// room for other kernels' summation orders (AVX-512, NEON), not for a real error: a wrong
/// RoPE, norm or scale moves logits by 1e-2 or more.
pub const F32_LOGITS: f32 = 5e-5;

/// The largest |a − b|, for two slices that must be as long as each other.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// transformers' outputs for a text fixture (`reference.json` of llama-gqa, llama-tied,
/// llava-tiny-hf, written by tests/fixtures/generate.py).
pub struct TextReference {
    pub prompt: String,
    pub input_ids: Vec<u32>,
    /// `[positions][vocab]`, checked against the file's `logits_shape`.
    pub logits: Vec<Vec<f32>>,
    pub greedy: Vec<u32>,
    /// transformers' `decode` of `greedy`.
    pub greedy_text: String,
}

impl TextReference {
    /// The vocabulary size: the length of every row of `logits`.
    pub fn n_vocab(&self) -> usize {
        self.logits[0].len()
    }

    /// The logits, row after row.
    pub fn flat_logits(&self) -> Vec<f32> {
        self.logits.concat()
    }
}

/// Reads fixture `dir`'s reference.json, every field it has, and checks that `logits` has the
/// shape `logits_shape` says, one row per prompt token.
pub fn text_reference(dir: &str) -> TextReference {
    let path = fixture(dir).join("reference.json");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let numbers = |k: &str| -> Vec<u64> {
        j[k].as_array()
            .unwrap_or_else(|| panic!("{}: no array {k}", path.display()))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let ids = |k: &str| -> Vec<u32> {
        numbers(k)
            .into_iter()
            .map(|v| u32::try_from(v).unwrap())
            .collect()
    };
    let logits: Vec<Vec<f32>> = j["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let r = TextReference {
        prompt: j["prompt"].as_str().unwrap().to_owned(),
        input_ids: ids("input_ids"),
        logits,
        greedy: ids("greedy_continuation"),
        greedy_text: j["greedy_text"].as_str().unwrap().to_owned(),
    };
    let shape: Vec<usize> = numbers("logits_shape")
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(shape.len(), 2, "{}: logits_shape {shape:?}", path.display());
    assert_eq!(
        shape[0],
        r.input_ids.len(),
        "{}: one row per prompt token",
        path.display()
    );
    assert_eq!(r.logits.len(), shape[0], "{}: rows", path.display());
    assert!(
        r.logits.iter().all(|row| row.len() == shape[1]),
        "{}: a row is not {} long",
        path.display(),
        shape[1]
    );
    assert!(!r.greedy.is_empty(), "{}: no continuation", path.display());
    r
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

mod npy;
#[allow(unused_imports)]
pub use npy::{parse_npy, read_npy, read_npy_shaped};
mod png;
#[allow(unused_imports)]
pub use png::png_claiming;

/// A GPU backend on whatever adapter wgpu finds (software ones included: CI has Mesa's
/// lavapipe), or `None`, said on stderr, where there is none. With LLAVA_REQUIRE_GPU set (CI
/// sets it) a missing adapter fails the test instead.
pub fn gpu_backend() -> Option<llava_runtime::backend::gpu::GpuBackend> {
    use llava_runtime::backend::gpu::{AdapterChoice, GpuBackend, GpuOptions};
    match GpuBackend::new(&GpuOptions {
        adapter: AdapterChoice::Any,
        ..GpuOptions::default()
    }) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var_os("LLAVA_REQUIRE_GPU").is_none(),
                "LLAVA_REQUIRE_GPU is set but there is no adapter: {e}"
            );
            eprintln!("skipped on the GPU: {e}");
            None
        }
    }
}

/// Rewrites the GGUF file `src` to `dst` with `edit` applied to each metadata value and the
/// `added` keys appended (a key of `src` that is also added is dropped from its place), the
/// tensors as they are.
pub fn rewrite_metadata(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, llava_runtime::gguf::MetaValue) -> llava_runtime::gguf::MetaValue,
    added: Vec<(&str, llava_runtime::gguf::MetaValue)>,
) {
    use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter};
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if !added.iter().any(|(a, _)| *a == k) {
            w.add(k, edit(k, v.to_owned_value())).unwrap();
        }
    }
    for (k, v) in added {
        w.add(k, v).unwrap();
    }
    let tensors: Vec<_> = f.tensors().collect();
    for t in &tensors {
        w.add_tensor(t.name(), t.ggml_type(), t.shape()).unwrap();
    }
    w.write(dst, |i, _, out| -> Result<(), GgufWriteError> {
        out.write_all(tensors[i].data).unwrap();
        Ok(())
    })
    .unwrap();
}

/// [`rewrite_metadata`] with `edit` applied to each value.
pub fn with_metadata(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, llava_runtime::gguf::MetaValue) -> llava_runtime::gguf::MetaValue,
) {
    rewrite_metadata(src, dst, edit, Vec::new());
}

/// [`rewrite_metadata`] with `key` set to `value`, added when absent.
pub fn with_key(src: &Path, dst: &Path, key: &str, value: llava_runtime::gguf::MetaValue) {
    rewrite_metadata(src, dst, |_, v| v, vec![(key, value)]);
}
