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

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

mod npy;
#[allow(unused_imports)]
pub use npy::{parse_npy, read_npy, read_npy_shaped};

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
