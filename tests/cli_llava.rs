//! `llava run` and `llava logits` with images, end to end through the CLI, and the errors a
//! user sees for bad images and prompts.

use std::path::Path;

use llava_convert::{convert_llama, Preset};

mod common;
use common::*;

/// (dir guard, llm path, mmproj path), converted in F32.
fn converted() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    (dir, s(&llm), s(&mmproj))
}

#[test]
fn logits_with_an_image_match_transformers() {
    let (dir, llm, mmproj) = converted();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llava-tiny-hf/image-reference/reference.json")).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("logits.npy");
    let image = fixture("images/odd.png");
    let o = llava(&[
        "logits",
        "-m",
        &llm,
        "--mmproj",
        &mmproj,
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        reference["prompt"].as_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--kv-type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = read_npy(&out);
    let want = read_npy(&fixture("llava-tiny-hf/image-reference/logits.npy"));
    let diff = max_abs_diff(&ours, &want);
    assert!(diff <= F32_LOGITS, "max |diff| {diff}");
}

#[test]
fn run_answers_about_an_image_and_reports_timings() {
    let (_dir, llm, mmproj) = converted();
    let image = fixture("images/odd.png");
    let o = llava(&[
        "run",
        "-m",
        &llm,
        "--mmproj",
        &mmproj,
        "--image",
        image.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--temp",
        "0",
        "-n",
        "6",
        "--verbose",
        "What is in this picture?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("image encode: 2 image(s), 32 tokens"), "{err}");
    assert!(err.contains("template llava_v1"), "{err}");
    assert!(err.contains("tokens/s"), "{err}");
    // Each stage is reported as it starts, in order, before the figures at the end.
    let at = |what: &str| {
        err.find(what)
            .unwrap_or_else(|| panic!("{what:?} missing: {err}"))
    };
    let order = [
        at(&format!("llava: loading {llm}")),
        at(&format!("llava: loading {mmproj}")),
        at("llava: encoding image 1/2"),
        at("llava: encoding image 2/2"),
        at("llava: reading the prompt ("),
        at("image encode: 2 image(s)"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{err}");
}

#[test]
fn bad_images_and_prompts_give_one_line_errors() {
    let (dir, llm, mmproj) = converted();
    let png = std::fs::read(fixture("images/odd.png")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let truncated = write("cut.png", &png[..png.len() / 3]);
    let zip = write("zip.png", b"PK\x03\x04 not an image at all");
    let huge = write("huge.png", &png_claiming(&png, 100_000, 100_000));
    let good = fixture("images/odd.png").to_str().unwrap().to_owned();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--image", &truncated, "q"], "cut.png"),
        (vec!["--image", &zip, "q"], "zip.png"),
        (vec!["--image", &huge, "q"], "huge.png: 100000×100000"),
        (
            vec!["--image", &good, "<image> and <image>"],
            "2 <image> marker(s) but 1 image",
        ),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["run", "-m", &llm, "--mmproj", &mmproj, "-n", "2"];
        args.extend(extra);
        let o = llava(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "want {expect:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = llava(&["run", "-m", &llm, "--image", &good, "q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--mmproj"), "{}", stderr(&o));
    // An mmproj that does not belong to the LLM.
    let other = dir.path().join("other.gguf");
    convert_llama(&fixture("llama-gqa"), &other, Preset::Q8_0).unwrap();
    let o = llava(&[
        "run",
        "-m",
        other.to_str().unwrap(),
        "--mmproj",
        &mmproj,
        "--image",
        &good,
        "q",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a pair"), "{}", stderr(&o));
}
