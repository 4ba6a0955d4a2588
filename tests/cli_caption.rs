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
