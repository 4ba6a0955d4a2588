//! `llava bench` end to end on the tiny fixtures: the JSON report has every field, its counts
//! are the ones asked for and its timings are positive and ordered; bad input gives one line.

use std::path::Path;

use llava_convert::{convert_llama, convert_mmproj, Preset};
use serde_json::Value;

mod common;
use common::*;

/// (dir guard, llm path, mmproj path) of a fixture, converted in F32.
fn converted(name: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = (dir.path().join("llm.gguf"), dir.path().join("mmproj.gguf"));
    convert_llama(&fixture(name), &llm, Preset::F32).unwrap();
    convert_mmproj(&fixture(name), None, &mmproj, Preset::F32).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    (dir, s(&llm), s(&mmproj))
}

fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json"];
    all.extend(args);
    let o = llava(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

/// min <= median <= max, all positive.
fn assert_spread(s: &Value, what: &str) {
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{what}.{k}: {s}"));
    let (min, median, max) = (f("min"), f("median"), f("max"));
    assert!(0.0 < min && min <= median && median <= max, "{what}: {s}");
}

#[test]
fn bench_reports_prefill_generation_and_image_encode_as_json() {
    let (_dir, llm, mmproj) = converted("llava-tiny-hf");
    let r = bench_json(&[
        "-m", &llm, "--mmproj", &mmproj, "-t", "1", "-p", "8", "-n", "4", "-r", "2",
    ]);
    assert_eq!(r["runtime"], "llava-edge");
    assert_eq!(r["threads"], 1);
    assert_eq!(r["repetitions"], 2);
    assert_eq!(r["kv_type"], "f16");
    assert!(!r["kernels"].as_str().unwrap().is_empty(), "{r}");
    assert!(r["load_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["model"]["path"], llm.as_str());
    assert_eq!(
        r["model"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&llm).unwrap().len()
    );
    assert_eq!(
        r["mmproj"]["bytes"].as_u64().unwrap(),
        std::fs::metadata(&mmproj).unwrap().len()
    );
    if cfg!(target_os = "linux") {
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    for (key, tokens) in [("pp", 8), ("tg", 4)] {
        let t = &r[key];
        assert_eq!(t["tokens"], tokens, "{key}: {t}");
        assert_spread(&t["tokens_per_second"], key);
        assert_spread(&t["ms"], key);
        let samples: Vec<f64> = t["samples_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(samples.len(), 2, "{key}: {t}");
        // The spread is the samples': min, max, and for two the mean of both.
        let ms = |k: &str| t["ms"][k].as_f64().unwrap();
        let (lo, hi) = (samples[0].min(samples[1]), samples[0].max(samples[1]));
        assert_eq!((ms("min"), ms("max")), (lo, hi), "{key}: {t}");
        assert!(
            (ms("median") - (lo + hi) / 2.0).abs() <= 1e-9 * hi,
            "{key}: {t}"
        );
        // tokens/s and ms describe the same runs.
        let fastest = tokens as f64 / (t["ms"]["min"].as_f64().unwrap() / 1e3);
        let max_rate = t["tokens_per_second"]["max"].as_f64().unwrap();
        assert!((fastest - max_rate).abs() <= 1e-6 * max_rate, "{key}: {t}");
    }
    let e = &r["encode"];
    // The tiny tower: one 56x56 view of 4x4 patches.
    assert_eq!(e["image_tokens"], 16, "{e}");
    assert_eq!(e["views"], 1, "{e}");
    assert_eq!((&e["width"], &e["height"]), (&56.into(), &56.into()), "{e}");
    assert!(e["image"].as_str().unwrap().starts_with("synthetic"), "{e}");
    assert_spread(&e["ms"], "encode");
    assert!(e["mmproj_load_ms"].as_f64().unwrap() > 0.0, "{e}");
}

#[test]
fn bench_encodes_a_given_image_and_anyres_uses_the_largest_pinpoint() {
    let (_dir, llm, mmproj) = converted("llava-tiny-hf");
    let image = fixture("images/odd.png");
    let r = bench_json(&[
        "-m",
        &llm,
        "--mmproj",
        &mmproj,
        "--image",
        image.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "0",
        "-r",
        "1",
    ]);
    assert!(r["pp"].is_null() && r["tg"].is_null(), "{r}");
    assert_eq!(r["encode"]["image"], image.to_str().unwrap());
    assert_eq!(r["encode"]["image_tokens"], 16);

    let (_dir, llm, mmproj) = converted("llava-next-tiny-hf");
    let r = bench_json(&[
        "-m", &llm, "--mmproj", &mmproj, "-p", "0", "-n", "0", "-r", "1",
    ]);
    let e = &r["encode"];
    assert!(
        e["image"].as_str().unwrap().contains("largest pinpoint"),
        "{e}"
    );
    // 112x112 of the pinpoints: overview + 2x2 tiles; 16 + 8 rows of (8 + newline) positions.
    assert_eq!(
        (&e["width"], &e["height"]),
        (&112.into(), &112.into()),
        "{e}"
    );
    assert_eq!(e["views"], 5, "{e}");
    assert_eq!(e["image_tokens"], 16 + 8 * 9, "{e}");
}

#[test]
fn bench_prints_a_table_by_default() {
    let (_dir, llm, _mmproj) = converted("llava-tiny-hf");
    let o = llava(&["bench", "-m", &llm, "-p", "4", "-n", "2", "-r", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("llava-edge: "), "{out}");
    assert!(out.contains("| pp4 |") && out.contains("| tg2 |"), "{out}");
    assert!(!out.contains("image encode"), "{out}");
    assert!(stderr(&o).contains("tg2: run 1/1"), "{}", stderr(&o));
}

#[test]
fn bench_bad_input_gives_one_line_naming_the_problem() {
    let (dir, llm, _mmproj) = converted("llava-tiny-hf");
    let missing = dir.path().join("missing.gguf");
    let missing = missing.to_str().unwrap();
    let not_gguf = dir.path().join("not.gguf");
    std::fs::write(&not_gguf, b"not a gguf file at all").unwrap();
    let not_gguf = not_gguf.to_str().unwrap();
    let image = fixture("images/odd.png");
    let image = image.to_str().unwrap();
    // Exit status 1 for what the files hold, 2 for a flag's value out of its range.
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["-m", missing], "missing.gguf", 1),
        (vec!["-m", not_gguf], "not.gguf", 1),
        (vec!["-m", &llm, "--mmproj", missing], "missing.gguf", 1),
        (vec!["-m", &llm, "--image", image], "--mmproj", 1),
        (vec!["-m", &llm, "-r", "0"], "--repetitions", 2),
        (vec!["-m", &llm, "-d", "18446744073709551615"], "--depth", 2),
    ];
    for (extra, expect, code) in cases {
        let mut args = vec!["bench", "-p", "2", "-n", "1"];
        args.extend(extra);
        let o = llava(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expect), "want {expect:?}: {err}");
    }
}
