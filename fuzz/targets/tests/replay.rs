//! Replays every committed fuzz input through its target on stable Rust, as CI's `cargo test`
//! runs it: `fuzz/regressions/<target>/` (minimised inputs of bugs the fuzzers found, each
//! fixed) and `fuzz/seeds/<target>/` (the hand-made starting corpus). A directory named for no
//! target fails, so an input is never silently skipped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use llava_fuzz_targets::TARGETS;

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    paths.sort();
    paths
}

/// Runs each file under `fuzz/<kind>/<target>/`, returning the failures and the targets seen.
fn replay(kind: &str) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for dir in entries(&Path::new(FUZZ_DIR).join(kind)) {
        if !dir.is_dir() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("a named directory")
            .to_string_lossy();
        let Some(&(_, target)) = TARGETS.iter().find(|(t, _)| *t == name) else {
            failures.push(format!("{}: no fuzz target is named {name}", dir.display()));
            continue;
        };
        seen.push(name.into_owned());
        for file in entries(&dir) {
            let bytes = std::fs::read(&file).expect("a readable input");
            if catch_unwind(AssertUnwindSafe(|| target(&bytes))).is_err() {
                failures.push(format!("{}: panicked (message above)", file.display()));
            }
        }
    }
    (failures, seen)
}

#[test]
fn regression_inputs_run_clean() {
    let (failures, _) = replay("regressions");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seed_inputs_run_clean_and_every_target_has_seeds() {
    let (mut failures, seen) = replay("seeds");
    for (name, _) in TARGETS {
        if !seen.iter().any(|s| s == name) {
            failures.push(format!(
                "fuzz/seeds/{name}: missing; every target needs seeds"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
