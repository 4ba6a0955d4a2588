//! `llava caption` over a folder on the tiny LLaVA fixture: one JSON line per image, a corrupt
//! image recorded as an error while the batch goes on, and a second run (after a kill cut the
//! last line) doing only what is missing.

mod common;
use common::*;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_folder_is_captioned_bad_images_recorded_and_a_cut_run_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let pics = dir.path().join("pics");
    std::fs::create_dir_all(pics.join("sub")).unwrap();
    let png = std::fs::read(fixture("images/odd.png")).unwrap();
    std::fs::write(pics.join("a.png"), &png).unwrap();
    std::fs::write(pics.join("sub/b.PNG"), &png).unwrap();
    std::fs::write(pics.join("c.jpg"), &png[..100]).unwrap();
    std::fs::write(pics.join("notes.txt"), "not an image").unwrap();
    let out = dir.path().join("captions.jsonl");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let args = [
        "caption".to_owned(),
        "-m".into(),
        s(&llm),
        "--mmproj".into(),
        s(&mmproj),
        s(&pics),
        "--out".into(),
        s(&out),
        "--temp".into(),
        "0".into(),
        "-n".into(),
        "6".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = llava(&args);
    // One image failed: the exit status says so, the others are captioned.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let got = lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    let by_name = |name: &str| {
        got.iter()
            .find(|v| v["path"].as_str().unwrap().ends_with(name))
    };
    let a = by_name("a.png").unwrap();
    assert!(
        !a["caption"].as_str().unwrap().is_empty() && a["tokens"] == 6,
        "{a}"
    );
    assert!(by_name("b.PNG").unwrap()["caption"].is_string());
    assert!(by_name("c.jpg").unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("c.jpg"));
    assert!(by_name("notes.txt").is_none());

    // A kill during a run: the file ends with a cut line, and b has no caption yet.
    let kept: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| l.contains("a.png"))
        .map(String::from)
        .collect();
    std::fs::write(&out, format!("{}\n{{\"path\": \"cut", kept[0])).unwrap();
    let o = llava(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("1 of 3 image(s) already captioned"), "{err}");
    assert!(err.contains("removing a cut last line"), "{err}");
    // Every line parses; a once, b captioned now, c's error again.
    let got = lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0].to_string(),
        serde_json::from_str::<serde_json::Value>(&kept[0])
            .unwrap()
            .to_string()
    );
    assert_eq!(got.iter().filter(|v| v["caption"].is_string()).count(), 2);

    // An output that is a directory, or one of the images, is refused before any work.
    let o = llava(&[
        args[0], args[1], args[2], args[3], args[4], args[5], "--out", args[5],
    ]);
    assert_eq!(o.status.code(), Some(1));
    let png_path = s(&pics.join("a.png"));
    let o = llava(&[
        args[0], args[1], args[2], args[3], args[4], &png_path, "--out", &png_path,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read(pics.join("a.png")).unwrap(),
        png,
        "the image is untouched"
    );
}

/// `--out` naming a file that is not a captions file (a photo, notes without a final newline,
/// other JSON lines, a line too long to be one) is refused with a one-line error naming it,
/// before the model loads, and the file is left byte for byte as it was.
#[test]
fn an_existing_file_that_is_not_captions_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let image = fixture("images/odd.png");
    let jpeg: Vec<u8> = [
        &b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"[..],
        &[0x0a, 0x80, 0xff, 0x00],
    ]
    .concat()
    .repeat(50);
    let mut long_line = b"{\"path\": \"".to_vec();
    long_line.resize(17 << 20, b'a');
    let caption = r#"{"caption":"a cat","ms":1.0,"path":"x.png","tokens":3}"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("photo.jpg", jpeg, "line 1 is not a caption line"),
        ("notes.txt", b"my notes, no newline".to_vec(), "no newline"),
        ("data.jsonl", b"{\"a\":1}\n{\"b\":2}\n".to_vec(), "line 1"),
        (
            "mixed.jsonl",
            format!("{caption}\nhello\n{caption}").into_bytes(),
            "line 2",
        ),
        ("long.jsonl", long_line, "longer than 16 MiB"),
    ];
    for (name, bytes, expect) in cases {
        let out = dir.path().join(name);
        std::fs::write(&out, &bytes).unwrap();
        let o = llava(&[
            "caption",
            "-m",
            llm.to_str().unwrap(),
            "--mmproj",
            mmproj.to_str().unwrap(),
            image.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
        assert!(err.contains("not a captions file"), "{name}: {err}");
        assert!(std::fs::read(&out).unwrap() == bytes, "{name} was changed");
    }
}

/// A file name in a folder that holds a terminal escape sequence reaches stderr escaped (the
/// error line of the image that fails), and the JSON line keeps the real name.
#[test]
fn an_escape_sequence_in_a_file_name_never_reaches_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let pics = dir.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let name = "\u{1b}]0;owned\u{7}\u{1b}[2Jbad.png";
    std::fs::write(pics.join(name), b"not a png").unwrap();
    let out = dir.path().join("captions.jsonl");
    let o = llava(&[
        "caption",
        "-m",
        llm.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
        pics.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("\\u{1b}[2Jbad.png"), "{err}");
    assert!(!err.contains(['\u{1b}', '\u{7}']), "{err:?}");
    let got = lines(&out);
    assert!(got[0]["path"].as_str().unwrap().ends_with(name), "{got:?}");
}
