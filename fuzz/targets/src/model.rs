//! `llm_load` and `mmproj_load`: whole models from GGUF bytes, with the checks the CLI makes
//! after loading (src/load.rs), then, for files small enough to run in a blink, one step of
//! the model so that the shapes the loader accepted are known to compute.

use llava_runtime::gguf::keys;
use std::sync::Arc;

use llava_models::anyres::AnyresLayout;
use llava_models::image::RgbImage;
use llava_models::llava::{anyres_layout, encode_image};
use llava_models::{Clip, Llama};
use llava_runtime::backend::{Backend, KvType};
use llava_runtime::gguf::GgufFile;
use llava_runtime::tokenizer::Tokenizer;

use crate::fixtures::backend;

/// A loaded model is run only when its weights, and one view's pixels and activations, are
/// fewer than this. Memory is bounded already (every tensor lies in the input); this bounds
/// the time of one input.
const MAX_RUN_ELEMENTS: u64 = 1 << 20;
/// Attention over a view costs the square of its patches.
const MAX_RUN_PATCHES: usize = 1024;

pub fn llm_load(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let file = Arc::new(file);
    let b = backend();
    let tokenizer = Tokenizer::from_gguf(&file).ok();
    if let Some(t) = &tokenizer {
        exercise_tokenizer(t);
    }
    let Ok(model) = Llama::load(b, &file) else {
        return;
    };
    let c = &model.config;
    if tokenizer
        .as_ref()
        .is_some_and(|t| t.vocab_size() > c.n_vocab)
    {
        return;
    }
    let _ = file.optional(keys::CHAT_TEMPLATE, |f, k| f.get_str(k).map(str::to_owned));
    if total_elements(&file) > MAX_RUN_ELEMENTS || c.n_vocab == 0 {
        return;
    }
    // Two positions: a prompt row, then one decoded row against the cache.
    let mut ids = tokenizer.map_or_else(Vec::new, |t| t.encode("Hi", true, false));
    ids.truncate(2);
    if ids.is_empty() {
        ids.push(0);
    }
    let n_ctx = ids.len() + 1;
    let mut cache = model
        .new_cache(b, n_ctx, KvType::F16)
        .expect("a CPU cache of a few positions");
    let logits = model.forward(b, model.embed(b, &ids), 0, &mut cache, true);
    assert_eq!(b.shape(&logits), (1, c.n_vocab));
    let logits = model.forward(b, model.embed(b, &[0]), ids.len(), &mut cache, false);
    assert_eq!(b.shape(&logits), (1, c.n_vocab));
}

pub fn mmproj_load(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let file = Arc::new(file);
    let b = backend();
    let Ok(clip) = Clip::load(b, &file) else {
        return;
    };
    let c = &clip.config;
    // `Clip::load` refuses pinpoints without `image_newline`.
    assert!(c.grid_pinpoints.is_empty() || clip.image_newline().is_some());
    // The layouts of the image sizes the anyres tests use, and of degenerate ones (sizes
    // only: `anyres_layout` would need the pixels).
    if !c.grid_pinpoints.is_empty() {
        let (tile, side) = (c.image_size as u32, c.patches_per_side());
        for size in [
            (1, 1),
            (336, 336),
            (640, 480),
            (1, 1000),
            (1000, 1),
            (4096, 4096),
        ] {
            check_layout(&AnyresLayout::new(size, &c.grid_pinpoints, tile, side));
        }
    }
    let image = RgbImage::new(3, 2, [10, 200, 30]);
    let layout = anyres_layout(&clip, &image);
    let views = 1 + layout.map_or(0, |l| l.n_tiles() as u64);
    let size = c.image_size as u64;
    let width = c
        .hidden_size
        .max(c.ffn_size)
        .max(clip.projector.output_size()) as u64;
    let per_view = (3 * size)
        .saturating_mul(size)
        .max((c.n_patches() as u64).saturating_mul(width));
    if total_elements(&file) > MAX_RUN_ELEMENTS
        || c.n_patches() > MAX_RUN_PATCHES
        || views.saturating_mul(per_view) > MAX_RUN_ELEMENTS
    {
        return;
    }
    let embeddings = encode_image(b, &clip, &image);
    let expected_rows = layout.map_or(c.n_patches(), |l| l.tokens());
    assert_eq!(
        b.shape(&embeddings),
        (expected_rows, clip.projector.output_size())
    );
}

/// A vocabulary from the file, on text with what tokenizers find hard (spaces, digits,
/// special-token text, multi-byte characters), and every id decoded: the ids must be in range
/// and decoding must not fail on them.
fn exercise_tokenizer(t: &Tokenizer) {
    const TEXT: &str = " Hello  world's 12345!\n\t<s></s><|eot_id|>[INST] é你好🦙 \u{2581}x ";
    for (add_special, parse_special) in [(true, true), (false, false)] {
        let ids = t.encode(TEXT, add_special, parse_special);
        assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
        t.decode(&ids, true).expect("encoded ids are in range");
    }
    // Every id once (the vocabulary lies in the input, so this is bounded by its size).
    let all: Vec<u32> = (0..t.vocab_size() as u32).collect();
    t.decode(&all, true).expect("ids below the vocabulary size");
    t.decode(&all, false)
        .expect("ids below the vocabulary size");
}

/// The unpadded grid lies inside the full one.
fn check_layout(l: &AnyresLayout) {
    assert!(l.row0 + l.rows <= l.full.0, "{l:?}");
    assert!(l.col0 + l.cols <= l.full.1, "{l:?}");
}

fn total_elements(file: &GgufFile) -> u64 {
    file.tensor_infos()
        .iter()
        .map(|t| t.n_elements())
        .fold(0, u64::saturating_add)
}
