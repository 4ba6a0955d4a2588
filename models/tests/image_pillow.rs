//! Image decoding and preprocessing against Pillow and transformers: Pillow's own BICUBIC
//! resizes and CLIPImageProcessor's outputs, made by tests/fixtures/generate.py.

use std::path::{Path, PathBuf};

use llava_models::image::{
    llava15_preprocess, load_image, resize_bicubic, ImageError, DEFAULT_MAX_PIXELS,
};

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images");
const SOURCES: [&str; 6] = ["odd", "tall", "tiny", "rgba", "gray", "big"];
const SIZES: [(u32, u32); 6] = [(56, 56), (13, 9), (100, 70), (1, 1), (3, 200), (336, 336)];
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

fn path(name: &str) -> PathBuf {
    Path::new(IMAGES).join(name)
}

#[path = "../../tests/common/npy.rs"]
#[allow(dead_code)]
mod npy;
use npy::read_npy;

#[path = "../../tests/common/png.rs"]
mod png;
use png::png_claiming;

#[test]
fn bicubic_resize_matches_pillow_byte_for_byte() {
    for name in SOURCES {
        let src = load_image(&path(&format!("{name}.png")), DEFAULT_MAX_PIXELS).unwrap();
        for (w, h) in SIZES {
            let want = load_image(
                &path(&format!("{name}-bicubic-{w}x{h}.png")),
                DEFAULT_MAX_PIXELS,
            )
            .unwrap();
            let got = resize_bicubic(&src, w, h);
            assert_eq!((got.width, got.height), (w, h));
            let diffs = got
                .data
                .iter()
                .zip(&want.data)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                diffs, 0,
                "{name} → {w}x{h}: {diffs} bytes differ from Pillow"
            );
        }
    }
}

#[test]
fn llava15_preprocessing_matches_transformers() {
    for name in SOURCES {
        let img = load_image(&path(&format!("{name}.png")), DEFAULT_MAX_PIXELS).unwrap();
        let got = llava15_preprocess(&img, 56, CLIP_MEAN, CLIP_STD);
        let want = read_npy(&path(&format!("{name}-llava15-56.npy")));
        assert_eq!(got.len(), want.len(), "{name}");
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Identical pixels; the rest is f32 rounding of the normalisation.
        assert!(max <= 1e-5, "{name}: max |diff| {max}");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_images_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(path("odd.png")).unwrap();

    let truncated = write(dir.path(), "cut.png", &png[..png.len() / 2]);
    let e = load_image(&truncated, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }), "{e}");

    // A zip archive renamed .png.
    let zip = write(
        dir.path(),
        "archive.png",
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00rest of a zip",
    );
    let e = load_image(&zip, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(e, ImageError::Format { .. }), "{e}");
    assert!(e.to_string().contains("archive.png"), "{e}");

    // A valid PNG header claiming 100000×100000: refused from the header, before decoding
    // anything.
    let huge = write(
        dir.path(),
        "huge.png",
        &png_claiming(&png, 100_000, 100_000),
    );
    let e = load_image(&huge, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));

    // The limit applies to real images too.
    let e = load_image(&path("big.png"), 1000).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooLarge {
                width: 301,
                height: 233,
                ..
            }
        ),
        "{e}"
    );

    let empty = write(dir.path(), "empty.jpg", b"");
    assert!(load_image(&empty, DEFAULT_MAX_PIXELS).is_err());
    assert!(matches!(
        load_image(&dir.path().join("missing.png"), DEFAULT_MAX_PIXELS).unwrap_err(),
        ImageError::Io { .. }
    ));
}
