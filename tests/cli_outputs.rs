//! No command destroys a file (issue 18, section 2): outputs that are not regular files, that
//! exist without `--force`, that are an input or each other, are refused before any work; a
//! failed or interrupted command leaves the previous files and no partial ones; stdout errors
//! of `run` are errors, stderr errors never panic; `logits` writes what its header says.
//!
//! Each test names the item it reproduces. `LLAVA_BIN=<old llava> cargo test --test
//! cli_outputs` runs them against another build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llava_convert::{convert_llama, convert_mmproj, Preset};

mod common;
use common::*;

/// A copy of a fixture checkpoint, to break or to write into.
fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
}

/// The file's bytes, or None if it is not a regular file.
fn contents(path: &Path) -> Option<Vec<u8>> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .and_then(|_| std::fs::read(path).ok())
}

/// Names of the hidden partial files in `dir`.
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

fn assert_refused(o: &std::process::Output, expect: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.contains(expect), "{what}: want {expect:?}: {err}");
}

/// (dir, llm, mmproj) of the tiny LLaVA fixture in F32.
fn llava_pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    convert_llama(&fixture("llava-tiny-hf"), &llm, Preset::F32).unwrap();
    convert_mmproj(&fixture("llava-tiny-hf"), None, &mmproj, Preset::F32).unwrap();
    (dir, llm, mmproj)
}

/// 2.1: a FIFO or a directory as any writer's output is refused and left as it was.
#[test]
fn outputs_that_are_not_regular_files_are_refused_by_every_writer() {
    let (dir, llm, _mmproj) = llava_pair();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let fresh = dir.path().join("fresh.gguf");
    let ckpt = fixture("llava-tiny-hf");
    for target in [&fifo, &subdir] {
        let t = s(target);
        let kind = if target == &fifo {
            "is a FIFO"
        } else {
            "is a directory"
        };
        let cases: Vec<Vec<&str>> = vec![
            vec![
                "convert",
                s(&ckpt),
                "-q",
                "f32",
                "-o",
                t,
                "--mmproj-out",
                s(&fresh),
            ],
            vec![
                "convert",
                s(&ckpt),
                "-q",
                "f32",
                "-o",
                s(&fresh),
                "--mmproj-out",
                t,
            ],
            vec!["quantize", s(&llm), t, "-q", "q8_0"],
            vec!["synth", "--preset", "tiny", "-o", t],
            vec!["logits", "-m", s(&llm), "--prompt", "hi", "--out", t],
            vec![
                "logits",
                "-m",
                s(&llm),
                "--prompt",
                "hi",
                "--out",
                s(&fresh),
                "--ids-out",
                t,
            ],
        ];
        for mut args in cases {
            args.push("--force");
            let o = llava(&args);
            assert_refused(&o, kind, &format!("{args:?}"));
            assert!(!fresh.exists(), "{args:?} wrote its other output");
        }
    }
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(!meta.is_file(), "the FIFO was replaced");
    assert!(std::fs::metadata(&subdir).unwrap().is_dir());
}

/// 2.1: `-` writes to stdout where the format allows it (logits).
#[test]
fn logits_can_write_to_stdout() {
    let (_dir, llm, _mmproj) = llava_pair();
    let o = llava(&["logits", "-m", s(&llm), "--prompt", "hi", "--out", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, values) = parse_npy(&o.stdout).unwrap();
    assert_eq!(shape[1], 520);
    assert_eq!(values.len(), shape[0] * 520);
}

/// 2.2: an existing output needs --force, for every command alike; the model being read is
/// never an output, even with --force.
#[test]
fn logits_refuses_an_existing_output_and_never_overwrites_its_model() {
    let (dir, llm, _mmproj) = llava_pair();
    let model_bytes = std::fs::read(&llm).unwrap();
    let existing = dir.path().join("old.npy");
    std::fs::write(&existing, b"keep me").unwrap();
    let o = llava(&[
        "logits",
        "-m",
        s(&llm),
        "--prompt",
        "hi",
        "--out",
        s(&existing),
    ]);
    assert_refused(&o, "already exists (use --force to replace it)", "existing");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let o = llava(&[
        "logits",
        "-m",
        s(&llm),
        "--prompt",
        "hi",
        "--ids-out",
        s(&existing),
        "--out",
        s(&dir.path().join("new.npy")),
    ]);
    assert_refused(&o, "already exists (use --force to replace it)", "ids-out");
    for force in [false, true] {
        let mut args = vec!["logits", "-m", s(&llm), "--prompt", "hi", "--out", s(&llm)];
        if force {
            args.push("--force");
        }
        let o = llava(&args);
        assert_refused(&o, "an input of this command", &format!("{args:?}"));
    }
    assert_eq!(
        std::fs::read(&llm).unwrap(),
        model_bytes,
        "the model changed"
    );
    // The same message from every writer.
    let o = llava(&["quantize", s(&llm), s(&existing)]);
    assert_refused(&o, "already exists (use --force to replace it)", "quantize");
}

/// 2.3: converting onto a file of the checkpoint itself is refused, by identity (a hard link
/// or `..` path too); the checkpoint survives.
#[test]
fn convert_never_writes_over_its_own_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("llava-tiny-hf", dir.path());
    let weights = ckpt.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let link = dir.path().join("linked.gguf");
    std::fs::hard_link(&weights, &link).unwrap();
    let indirect = ckpt
        .join("..")
        .join("llava-tiny-hf")
        .join("model.safetensors");
    for out in [&weights, &link, &indirect] {
        let o = llava(&["convert", s(&ckpt), "-q", "f32", "-o", s(out), "--force"]);
        assert_refused(
            &o,
            "an input of this command",
            &format!("{}", out.display()),
        );
        let o = llava(&[
            "convert",
            s(&ckpt),
            "-q",
            "f32",
            "--mmproj-out",
            s(out),
            "--outdir",
            s(dir.path()),
            "--force",
        ]);
        assert_refused(&o, "an input of this command", "--mmproj-out");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}

/// 2.4: a failed `convert --force` keeps the previous pair; both files are replaced only once
/// both new ones are complete. The failure comes after the new LLM is written: a vision
/// tensor whose dtype (I16) passes every check but cannot be converted.
#[test]
fn a_failed_forced_convert_keeps_the_previous_files() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("llava-tiny-hf", dir.path());
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    let convert = |quant: &str| {
        llava(&[
            "convert",
            s(&ckpt),
            "-q",
            quant,
            "-o",
            s(&llm),
            "--mmproj-out",
            s(&mmproj),
            "--force",
        ])
    };
    let o = convert("f32");
    assert!(o.status.success(), "{}", stderr(&o));
    let (llm_before, mmproj_before) = (contents(&llm).unwrap(), contents(&mmproj).unwrap());

    // The header names each tensor, then its dtype: F16 -> I16, same width, same offsets.
    let weights = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let name = header
        .find("\"vision_tower.encoder.layers.1.mlp.fc2.weight\"")
        .unwrap();
    let dtype = name + header[name..].find("\"F16\"").unwrap();
    bytes[8 + dtype + 1] = b'I';
    std::fs::write(&weights, bytes).unwrap();

    let o = convert("q8_0");
    assert_refused(&o, "dtype I16 is not supported", "a vision tensor of I16");
    assert_eq!(contents(&llm).unwrap(), llm_before, "the LLM was replaced");
    assert_eq!(contents(&mmproj).unwrap(), mmproj_before);
    assert_eq!(partial_files(dir.path()), Vec::<String>::new());
}

/// 2.5: two outputs on one path are refused (convert and synth).
#[test]
fn two_outputs_on_one_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let same = dir.path().join("same.gguf");
    let also_same = dir.path().join(".").join("same.gguf");
    let o = llava(&[
        "convert",
        s(&fixture("llava-tiny-hf")),
        "-q",
        "f32",
        "-o",
        s(&same),
        "--mmproj-out",
        s(&also_same),
    ]);
    assert_refused(&o, "name the same file", "convert");
    let o = llava(&[
        "synth",
        "--preset",
        "tiny",
        "-o",
        s(&same),
        "--mmproj-out",
        s(&same),
    ]);
    assert_refused(&o, "name the same file", "synth");
    assert!(!same.exists());
}

/// Waits (up to a minute) until `child` has a partial file in `dir`, failing if it ends first.
fn wait_for_a_partial_file(child: &mut std::process::Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_files(dir).is_empty() {
        assert!(Instant::now() < deadline, "no partial file appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer ended before the signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 2.6: SIGINT, SIGTERM or SIGHUP during a write remove the partial files; the final path is
/// never created and the process ends by the signal.
#[test]
fn signals_during_a_write_leave_no_partial_files() {
    for (signal, name) in [(2, "INT"), (15, "TERM"), (1, "HUP")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.gguf");
        // A 1.1B model in F32: seconds of writing in a test build.
        let mut cmd = Command::new(llava_bin());
        cmd.args([
            "synth",
            "--preset",
            "tinyllama-1.1b",
            "-q",
            "f32",
            "-o",
            s(&out),
        ])
        .stderr(Stdio::null());
        // The default dispositions, whatever this test inherited: a background shell starts
        // its jobs with SIGINT ignored, and llava keeps an ignored signal ignored.
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal() is async-signal-safe and changes only the child.
            unsafe {
                cmd.pre_exec(|| {
                    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                        libc::signal(s, libc::SIG_DFL);
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        wait_for_a_partial_file(&mut child, dir.path());
        std::thread::sleep(Duration::from_millis(200));
        let sent = Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(signal) || status.code() == Some(128 + signal),
            "SIG{name}: {status:?}"
        );
        assert_eq!(partial_files(dir.path()), Vec::<String>::new(), "SIG{name}");
        assert!(!out.exists(), "SIG{name}");
    }
}

/// 2.6: a signal the process was started with ignored (`nohup`) stays ignored: the write
/// finishes.
#[test]
fn an_ignored_hangup_does_not_stop_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kept.gguf");
    let mut child = Command::new("nohup")
        .arg(llava_bin())
        .args([
            "synth",
            "--preset",
            "tinyllama-1.1b",
            "-q",
            "q8_0",
            "-o",
            s(&out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_a_partial_file(&mut child, dir.path());
    let sent = Command::new("kill")
        .args(["-HUP".to_owned(), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(out.exists());
    assert_eq!(partial_files(dir.path()), Vec::<String>::new());
}

/// 2.7: `run`'s answer is its output: a full stdout is an error; a closed pipe stops the
/// generation quietly (no more tokens computed); a broken stderr never panics.
#[test]
fn run_reports_stdout_errors_and_stops_on_a_closed_pipe() {
    let (_dir, llm, _mmproj) = llava_pair();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(llava_bin())
        .args(["run", "-m", s(&llm), "--temp", "0", "-n", "8", "hello"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("stdout"), "{}", stderr(&o));

    // A reader that closes the pipe after one byte: generation stops at once.
    let mut child = Command::new(llava_bin())
        .args([
            "run",
            "-m",
            s(&llm),
            "--temp",
            "0",
            "-n",
            "200",
            "--verbose",
            "-c",
            "512",
            "--stop",
            "NEVER",
            "hello",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("stopped: output closed"), "{err}");

    // stderr on /dev/full: diagnostics are lost, the answer is not, and nothing panics.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(llava_bin())
        .args([
            "run",
            "-m",
            s(&llm),
            "--temp",
            "0",
            "-n",
            "4",
            "--verbose",
            "hello",
        ])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(!stdout_of(&o).is_empty());
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 2.7: a converter whose stderr is closed still writes both files.
#[test]
fn convert_with_a_broken_stderr_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(llava_bin())
        .args([
            "convert",
            s(&fixture("llava-tiny-hf")),
            "-q",
            "f32",
            "--verbose",
            "--outdir",
            s(dir.path()),
        ])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(dir.path().join("mmproj-llava-tiny-hf-f16.gguf").exists());
    assert!(dir.path().join("llava-tiny-hf-f32.gguf").exists());
}

/// 2.8: with an image, the NPY header describes every position, image rows included, and
/// `--ids-out` marks the image rows with -1.
#[test]
fn logits_with_an_image_write_a_header_that_matches_the_data() {
    let (dir, llm, mmproj) = llava_pair();
    let (out, ids) = (dir.path().join("l.npy"), dir.path().join("ids.txt"));
    let o = llava(&[
        "logits",
        "-m",
        s(&llm),
        "--mmproj",
        s(&mmproj),
        "--image",
        s(&fixture("images/odd.png")),
        "--prompt",
        "USER: <image>\nWhat is this? ASSISTANT:",
        "--out",
        s(&out),
        "--ids-out",
        s(&ids),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // read_npy_shaped checks the data against the header.
    let (shape, _) = read_npy_shaped(&out);
    let ids: Vec<i64> = std::fs::read_to_string(&ids)
        .unwrap()
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(shape, [ids.len(), 520]);
    // The tiny tower: 56-pixel views of 14-pixel patches, 16 image positions.
    assert_eq!(ids.iter().filter(|&&i| i == -1).count(), 16);
    assert!(ids.iter().all(|&i| i == -1 || (0..520).contains(&i)));
}

/// 2.8: the tests' NPY reader refuses data that disagrees with its header.
#[test]
fn the_npy_reader_checks_the_shape_against_the_data() {
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend([0u8; 24]);
    assert_eq!(parse_npy(&npy).unwrap().0, [2, 3]);
    npy.extend([0u8; 4]);
    assert!(parse_npy(&npy).unwrap_err().contains("holds 6 values"));
}

/// 2.9: a tokenizer.json without tokens is refused; nothing is written.
#[test]
fn convert_refuses_a_tokenizer_with_an_empty_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("llama-gqa", dir.path());
    let path = ckpt.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["model"]["vocab"] = serde_json::json!({});
    tok["added_tokens"] = serde_json::json!([]);
    std::fs::write(&path, tok.to_string()).unwrap();
    let out = dir.path().join("out.gguf");
    let o = llava(&["convert", s(&ckpt), "-q", "f32", "-o", s(&out)]);
    assert_refused(&o, "vocab is empty", "empty vocab");
    assert!(!out.exists());
}
