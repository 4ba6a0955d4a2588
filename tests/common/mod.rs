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

/// Runs the `llava` binary built for these tests.
pub fn llava(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llava"))
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

/// The values of a float32 NPY file (version 1.0, little-endian).
pub fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
