//! Nothing a user types or a file holds crashes llava or runs away (issue 18, section 3):
//! hostile images, mmproj files and checkpoints, absurd flags, devices and FIFOs as inputs,
//! escape sequences in files. Each case ends with a one-line error (or, for a harmless value,
//! a warning) well within its time, never a panic or an abort.
//!
//! Each test names the item it reproduces. `LLAVA_BIN=<old llava> cargo test --test
//! cli_bad_input` runs them against another build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llava_convert::{convert_llama, convert_mmproj, Preset};
use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter, MetaArray, MetaValue};
use llava_runtime::quant::GgmlType;

mod common;
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs llava, killed after `limit`: a hang is a failure, not a stuck test. The output is
/// read while it runs, so a long report cannot block on a full pipe.
fn llava_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(llava_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{args:?} still running after {limit:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

const LIMIT: Duration = Duration::from_secs(30);

/// A one-line error containing `expect`, with exit status `code`.
fn assert_error(o: &Output, code: i32, expect: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.contains(expect), "{what}: want {expect:?}: {err}");
}

/// (dir, llm, mmproj) of a tiny LLaVA fixture in F32.
fn pair(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    convert_llama(&fixture(name), &llm, Preset::F32).unwrap();
    convert_mmproj(&fixture(name), None, &mmproj, Preset::F32).unwrap();
    (dir, llm, mmproj)
}

/// 3.1: a 1 × 100000 PNG (a few hundred bytes) is refused by the LLaVA-1.5 padding bound,
/// for `run` and `bench`, instead of allocating a 30 GB canvas.
#[test]
fn a_thin_strip_image_is_refused_before_it_is_padded() {
    let (dir, llm, mmproj) = pair("llava-tiny-hf");
    let strip = dir.path().join("strip.png");
    image::RgbImage::from_pixel(1, 100_000, image::Rgb([200, 10, 10]))
        .save(&strip)
        .unwrap();
    // Small on disk (the sweep's was 471 bytes; this encoder's is larger), 30 GB padded.
    assert!(std::fs::metadata(&strip).unwrap().len() < 1 << 20);
    let o = llava_within(
        &[
            "run",
            "-m",
            s(&llm),
            "--mmproj",
            s(&mmproj),
            "--image",
            s(&strip),
            "-n",
            "1",
            "hi",
        ],
        LIMIT,
    );
    assert_error(&o, 1, "padded to a square", "run");
    assert!(stderr(&o).contains("strip.png"), "{}", stderr(&o));
    let o = llava_within(
        &[
            "bench",
            "-m",
            s(&llm),
            "--mmproj",
            s(&mmproj),
            "--image",
            s(&strip),
            "-p",
            "0",
            "-n",
            "0",
        ],
        LIMIT,
    );
    assert_error(&o, 1, "padded to a square", "bench");
}

/// 3.2: hostile mmproj metadata is checked against the tensors the file holds before
/// anything is sized by it: a block count of 2^32 − 1, pinpoints of 2^30, pinpoints that
/// are not multiples of the tower's image size, too many pinpoints.
#[test]
fn hostile_mmproj_counts_and_pinpoints_are_refused() {
    let (dir, llm, mmproj) = pair("llava-next-tiny-hf");
    let bad = dir.path().join("bad-mmproj.gguf");
    let image = fixture("images/next-wide.png");
    let cases: Vec<(&str, MetaValue, &str)> = vec![
        (
            "clip.vision.block_count",
            MetaValue::U32(u32::MAX),
            "block_count",
        ),
        (
            "clip.vision.image_grid_pinpoints",
            MetaValue::Array(MetaArray::I32(vec![1 << 30, 1 << 30])),
            "image_grid_pinpoints",
        ),
        (
            "clip.vision.image_grid_pinpoints",
            MetaValue::Array(MetaArray::I32(vec![57, 112])),
            "not a multiple",
        ),
        (
            "clip.vision.image_grid_pinpoints",
            MetaValue::Array(MetaArray::I32([56, 112].repeat(65))),
            "at most 64",
        ),
    ];
    for (key, value, expect) in cases {
        with_metadata(
            &mmproj,
            &bad,
            |k, v| if k == key { value.clone() } else { v },
        );
        let o = llava_within(
            &[
                "run",
                "-m",
                s(&llm),
                "--mmproj",
                s(&bad),
                "--image",
                s(&image),
                "-n",
                "1",
                "hi",
            ],
            LIMIT,
        );
        assert_error(&o, 1, expect, key);
        assert!(stderr(&o).contains("bad-mmproj.gguf"), "{}", stderr(&o));
    }
}

/// An mmproj's image size is bounded at load (63000-pixel views of 1000-pixel patches would
/// fit a 4096 context in 63² positions and make any image 63000² pixels), and the resize to
/// one view counts in the pixel budget even when the image itself is tiny.
#[test]
fn an_image_size_beyond_any_clip_is_refused_and_the_view_counts_in_the_budget() {
    let (dir, llm, mmproj) = pair("llava-tiny-hf");
    let bad = dir.path().join("bad-mmproj.gguf");
    with_key(
        &mmproj,
        &bad,
        "clip.vision.image_size",
        MetaValue::U32(63_000),
    );
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .save(&tiny)
        .unwrap();
    let run = |mmproj: &Path, extra: &[&str]| {
        let mut args = vec!["run", "-m", s(&llm), "--mmproj", s(mmproj)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--image", s(&tiny), "-n", "1", "hi"]);
        llava_within(&args, LIMIT)
    };
    let o = run(&bad, &[]);
    assert_error(
        &o,
        1,
        "image_size: 63000 pixels: expected 1 to 4096",
        "image_size",
    );
    assert!(stderr(&o).contains("bad-mmproj.gguf"), "{}", stderr(&o));
    // The fixture's 56-pixel views: a 4 × 4 image becomes 56² = 3136 pixels, not 16.
    let o = run(&mmproj, &["--max-image-pixels", "1000"]);
    assert_error(&o, 1, "4x4 becomes", "a view above the budget");
    let o = run(&mmproj, &["--max-image-pixels", "3136"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The converter writes no pinpoints the runtime would refuse.
#[test]
fn converter_and_runtime_share_the_pinpoint_limits() {
    use llava_models::clip;
    assert_eq!(llava_convert::MAX_PINPOINTS, clip::MAX_PINPOINTS);
    assert_eq!(llava_convert::MAX_TILES_PER_SIDE, clip::MAX_TILES_PER_SIDE);
}

/// A copy of a fixture checkpoint with `edit` applied to one of its JSON files.
fn edited_checkpoint(
    name: &str,
    dir: &Path,
    file: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    let to = copy_fixture(name, dir);
    let path = to.join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    to
}

/// 3.3 and 3.10: sizes in config and tokenizer files are checked against the checkpoint's
/// tensors and the vocabulary's real size, the vision side before the LLM is converted, and
/// nothing is left behind.
#[test]
fn converter_sizes_from_config_files_are_checked_against_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "config.json",
            Box::new(|c| c["vision_config"]["num_hidden_layers"] = (1u64 << 32).into()),
            "num_hidden_layers",
        ),
        (
            "tokenizer.json",
            Box::new(|t| t["model"]["vocab"]["hello"] = 1_000_000_000u64.into()),
            "has id 1000000000",
        ),
        (
            "tokenizer.json",
            Box::new(|t| {
                t["added_tokens"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"id": 4_000_000_000u64, "content": "<x>"}))
            }),
            "has id 4000000000",
        ),
    ];
    for (i, (file, edit, expect)) in cases.into_iter().enumerate() {
        let case_dir = dir.path().join(i.to_string());
        let ckpt = edited_checkpoint("llava-tiny-hf", &case_dir, file, edit);
        let out = case_dir.join("out");
        let o = llava_within(
            &["convert", s(&ckpt), "-q", "f32", "--outdir", s(&out)],
            LIMIT,
        );
        assert_error(&o, 1, expect, expect);
        // Refused before the LLM was converted: no summary line, no file.
        let files: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(files.is_empty(), "{expect}: left {files:?}");
    }
}

/// 3.4: a tensor with a zero dimension is requantized without dividing by zero.
#[test]
fn quantize_survives_an_empty_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("mmproj.gguf");
    convert_mmproj(&fixture("llava-tiny-hf"), None, &src, Preset::F32).unwrap();
    let f = GgufFile::open(&src).unwrap();
    let odd = dir.path().join("odd.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add(k, v.to_owned_value()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name(), t.ggml_type(), t.shape()).unwrap();
    }
    w.add_tensor("v.empty.weight", GgmlType::F32, &[0, 128])
        .unwrap();
    let tensors: Vec<_> = f.tensors().collect();
    w.write(&odd, |i, _, out| -> Result<(), GgufWriteError> {
        if let Some(t) = tensors.get(i) {
            out.write_all(t.data).unwrap();
        }
        Ok(())
    })
    .unwrap();
    let out = dir.path().join("q.gguf");
    let o = llava_within(&["quantize", s(&odd), s(&out), "-q", "q8_0"], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = GgufFile::open(&out).unwrap();
    assert_eq!(q.tensor("v.empty.weight").unwrap().shape(), [0, 128]);
}

/// 3.5 and 3.6: numeric flags are checked when parsed, with the reason; the ones that depend
/// on the model once it is open.
#[test]
fn absurd_numeric_flags_are_refused_with_the_reason() {
    let (_dir, llm, _mmproj) = pair("llava-tiny-hf");
    let m = s(&llm);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-m", m, "-n", "2"];
        args.extend_from_slice(extra);
        args.push("hi");
        llava_within(&args, LIMIT)
    };
    // (flags, exit status, message)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["-c", "1000000000"], 2, "beyond any model's context"),
        (vec!["-c", "4294967296"], 2, "beyond any model's context"),
        (
            vec!["-c", "18446744073709551615"],
            2,
            "beyond any model's context",
        ),
        (
            vec!["--repeat-last-n", "18446744073709551615"],
            2,
            "--repeat-last-n",
        ),
        (vec!["-t", "100000"], 2, "more than any CPU"),
        (vec!["-c", "100000"], 1, "above the 512 positions"),
        (
            vec!["--presence-penalty", "nan"],
            1,
            "--presence-penalty must be a finite",
        ),
        (
            vec!["--frequency-penalty", "nan"],
            1,
            "--frequency-penalty must be a finite",
        ),
        (vec!["--temp", "-1"], 1, "--temp must be 0 or more, got -1"),
        (vec!["--max-image-pixels", "0"], 2, "refuse every image"),
    ];
    for (flags, code, expect) in cases {
        let o = run(&flags);
        assert_error(&o, code, expect, &format!("{flags:?}"));
    }
    // A context the memory cannot hold: 16 M positions of a 22-layer model's cache (377 GB).
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("tinyllama.gguf");
    let o = llava(&[
        "synth",
        "--preset",
        "tinyllama-1.1b",
        "-q",
        "q4_0",
        "-o",
        s(&big),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = llava_within(
        &[
            "run",
            "-m",
            s(&big),
            "-c",
            "16000000",
            "--ctx-beyond-training",
            "-n",
            "1",
            "hi",
        ],
        LIMIT,
    );
    assert_error(&o, 1, "memory is available", "16 M context");
    // Harmless values run: a random seed, and more threads than CPUs (capped, with a warning).
    let o = run(&["--seed", "-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["-t", "1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: -t 1000"), "{}", stderr(&o));
}

/// 3.7 and 3.8: devices, FIFOs and directories are refused as inputs without being opened
/// (a FIFO without a writer would hang the open); prompt files are bounded.
#[test]
fn inputs_that_are_not_regular_files_are_refused_at_once() {
    let (dir, llm, mmproj) = pair("llava-tiny-hf");
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (m, f) = (s(&llm), s(&fifo));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "-m", f, "hi"], "is a FIFO"),
        (vec!["run", "-m", m, "--mmproj", f, "hi"], "is a FIFO"),
        (
            vec!["run", "-m", m, "--mmproj", s(&mmproj), "--image", f, "hi"],
            "is a FIFO",
        ),
        (vec!["inspect", f], "is a FIFO"),
        (vec!["run", "-m", s(dir.path()), "hi"], "is a directory"),
        (
            vec!["run", "-m", m, "--file", s(dir.path())],
            "is a directory",
        ),
        // Prompt files may be pipes or devices, read up to the bound.
        (
            vec!["run", "-m", m, "--file", "/dev/zero"],
            "larger than 16 MiB",
        ),
        (
            vec!["tokenize", "-m", m, "--file", "/dev/zero"],
            "larger than 16 MiB",
        ),
    ];
    for (args, expect) in cases {
        let o = llava_within(&args, LIMIT);
        assert_error(&o, 1, expect, &format!("{args:?}"));
    }
    // A prompt file past the bound (sparse: no disk used).
    let big = dir.path().join("big.txt");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let o = llava_within(&["tokenize", "-m", m, "--file", s(&big)], LIMIT);
    assert_error(&o, 1, "larger than 16 MiB", "big prompt file");
    // And `-` reads stdin.
    let mut child = Command::new(llava_bin())
        .args(["tokenize", "-m", m, "--no-bos", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hello").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let piped = stdout(&o);
    let o = llava(&["tokenize", "-m", m, "--no-bos", "hello"]);
    assert_eq!(piped, stdout(&o));
}

/// 3.7: `inspect --json` of a file with many metadata keys streams its report: 300 000 keys
/// (7 MB) in at most 256 MiB of address space, where building the whole JSON value first took
/// 545 MB; the report is complete, valid JSON.
#[test]
fn inspect_json_of_many_keys_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.gguf");
    let mut w = GgufWriter::new();
    for i in 0..300_000 {
        w.add(&format!("k.{i}"), MetaValue::U32(i)).unwrap();
    }
    w.write(&path, |_, _, _| -> Result<(), GgufWriteError> { Ok(()) })
        .unwrap();
    let mut cmd = Command::new(llava_bin());
    cmd.args(["inspect", "--json", s(&path)]);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256 << 20,
                    rlim_max: 256 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["metadata"].as_array().unwrap().len(), 300_000);
    assert_eq!(j["metadata"][299_999]["key"], "k.299999");
    assert_eq!(j["tensors"], serde_json::json!([]));
}

/// 3.9: control characters from a file are escaped in everything printed; JSON stays exact.
#[test]
fn escape_sequences_in_a_file_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.gguf");
    let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let mut w = GgufWriter::new();
    w.add("general.architecture", MetaValue::String(evil.into()))
        .unwrap();
    w.add("general.name", MetaValue::String(evil.into()))
        .unwrap();
    w.add(&format!("key.{evil}"), MetaValue::U32(1)).unwrap();
    w.add_tensor(&format!("t{}", &evil[..8]), GgmlType::F32, &[4])
        .unwrap();
    w.write(&path, |_, _, out| -> Result<(), GgufWriteError> {
        out.write_all(&[0; 16]).unwrap();
        Ok(())
    })
    .unwrap();
    let o = llava_within(&["inspect", s(&path)], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
    let o = llava_within(&["inspect", "--json", s(&path)], LIMIT);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["name"], evil);
    // Errors echo strings from the file escaped too: a real LLM whose architecture is evil.
    let (_pair_dir, llm, _mmproj) = pair("llava-tiny-hf");
    let bad = dir.path().join("evil-llm.gguf");
    with_metadata(&llm, &bad, |k, v| {
        if k == "general.architecture" {
            MetaValue::String(evil.into())
        } else {
            v
        }
    });
    let o = llava_within(&["run", "-m", s(&bad), "hi"], LIMIT);
    assert_error(&o, 1, "\\u{1b}]0;pwned", "evil architecture");
    assert!(!stderr(&o).contains('\u{1b}'), "{:?}", stderr(&o));
}

/// 3.11: messages that say what is wrong and what to do.
#[test]
fn common_mistakes_get_messages_that_say_what_to_do() {
    let (dir, llm, mmproj) = pair("llava-tiny-hf");
    let o = llava_within(&["run", "-m", s(&mmproj), "hi"], LIMIT);
    assert_error(&o, 1, "pass it as --mmproj", "mmproj as -m");
    let o = llava_within(&["run", "-m", s(&llm), "--mmproj", s(&llm), "hi"], LIMIT);
    assert_error(&o, 1, "pass it as -m", "LLM as --mmproj");
    let ckpt = edited_checkpoint("llama-gqa", dir.path(), "config.json", |c| {
        c.as_object_mut().unwrap().remove("model_type");
    });
    let o = llava_within(
        &["convert", s(&ckpt), "-o", s(&dir.path().join("o.gguf"))],
        LIMIT,
    );
    assert_error(&o, 1, "\"model_type\": missing", "no model_type");
}

/// 3.10: a prompt whose image tokens cannot fit the context is refused, with the count of
/// image tokens. (That it happens before any image is encoded is the order of
/// `load::build_prompt`; the old order printed the same message, so this test shows the
/// message, not the order.)
#[test]
fn a_prompt_too_long_for_the_context_is_refused_before_encoding() {
    let (_dir, llm, mmproj) = pair("llava-tiny-hf");
    let o = llava_within(
        &[
            "run",
            "-m",
            s(&llm),
            "--mmproj",
            s(&mmproj),
            "--image",
            s(&fixture("images/odd.png")),
            "-c",
            "12",
            "hi",
        ],
        LIMIT,
    );
    assert_error(
        &o,
        1,
        "(16 of them image tokens) but the context holds 12",
        "ctx",
    );
}
