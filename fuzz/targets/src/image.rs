//! `image_preprocess`: image files decoded as `llava run --image` decodes them (the default
//! pixel limit, which also bounds the preprocessing's work), then preprocessed as LLaVA-1.5
//! (pad to square, CLIP resize and crop) or LLaVA-1.6 (anyres views, each through the CLIP
//! processor, and the features assembled).
//!
//! Input: one control byte (bit 0: anyres; bit 1: LLaVA's 336-pixel tower, else the tiny
//! fixture's 56-pixel one), then the image file.

use llava_models::anyres::{anyres_views, AnyresLayout};
use llava_models::image::{clip_preprocess, decode_image, llava15_preprocess, DEFAULT_MAX_PIXELS};
use llava_models::{largest_picture, ClipConfig};

use crate::input::Input;

/// OpenAI CLIP's normalisation, with the digits CLIP publishes (as convert/src/clip.rs).
#[allow(clippy::excessive_precision)]
const MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
const STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// (view size, patch size, `(width, height)` grid pinpoints): LLaVA-1.6's, and the same
/// shapes at the tiny fixture's scale.
const LLAVA_16: (u32, u32, [(u32, u32); 5]) = (
    336,
    14,
    [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)],
);
const TINY: (u32, u32, [(u32, u32); 5]) = (
    56,
    14,
    [(56, 112), (112, 56), (112, 112), (168, 56), (56, 168)],
);

pub fn image_preprocess(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.u8();
    let Ok(img) = decode_image("fuzz.image", input.rest(), DEFAULT_MAX_PIXELS) else {
        return;
    };
    assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
    let (size, patch, pinpoints) = if control & 2 != 0 { LLAVA_16 } else { TINY };
    let pixels_per_view = 3 * size as usize * size as usize;
    let side = (size / patch) as usize;
    let anyres = control & 1 != 0;
    let layout = AnyresLayout::new((img.width, img.height), &pinpoints, size, side);
    // The CLI refuses an image whose preprocessing makes more pixels than the decoder's limit
    // (`Pipeline::check_image`): the same bound, from the tower's configuration alone (the
    // network's sizes are not read).
    let tower = ClipConfig {
        image_size: size as usize,
        patch_size: patch as usize,
        hidden_size: 8,
        ffn_size: 16,
        n_heads: 2,
        n_blocks: 1,
        layer_norm_eps: 1e-5,
        image_mean: MEAN,
        image_std: STD,
        use_gelu: false,
        grid_pinpoints: if anyres {
            pinpoints.to_vec()
        } else {
            Vec::new()
        },
        center_crop: false,
    };
    let work = largest_picture(&tower, img.width, img.height).pixels();
    if work > DEFAULT_MAX_PIXELS {
        return;
    }
    if !anyres {
        let pixels = llava15_preprocess(&img, size, MEAN, STD);
        assert_eq!(pixels.len(), pixels_per_view);
        return;
    }
    // The canvas the views are cut from is within the bound.
    assert!(u64::from(layout.target.0) * u64::from(layout.target.1) <= work);
    let views = anyres_views(&img, &layout, size);
    assert_eq!(views.len(), 1 + layout.n_tiles());
    for view in &views {
        assert_eq!((view.width, view.height), (size, size));
        assert_eq!(
            clip_preprocess(view, size, MEAN, STD).len(),
            pixels_per_view
        );
    }
    // Every row the layout keeps is a patch of some view or the newline after them.
    let rows = layout.row_indices(side);
    assert_eq!(rows.len(), layout.tokens());
    assert!(rows
        .iter()
        .all(|&r| (r as usize) <= views.len() * side * side));
}
