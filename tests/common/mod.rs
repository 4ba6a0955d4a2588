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

/// Runs the `llava` binary under test.
pub fn llava(args: &[&str]) -> Output {
    Command::new(llava_bin())
        .args(args)
        .output()
        .expect("run llava")
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
