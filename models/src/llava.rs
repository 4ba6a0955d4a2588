//! The LLaVA pipeline: images through the tower and projector, spliced into the prompt where
//! its `<image>` markers are (GGUF-AND-LLAVA.md §6).
//!
//! As the reference (`tokenizer_image_token`): the text pieces between markers are tokenized
//! separately, BOS only at the very start, and each image's embeddings take consecutive
//! positions.

use llava_runtime::backend::Backend;
use llava_runtime::tokenizer::Tokenizer;

use crate::anyres::{anyres_views, AnyresLayout};
use crate::clip::Clip;
use crate::image::{clip_preprocess, llava15_preprocess, RgbImage};
use crate::llama::Llama;
use crate::template::IMAGE_MARKER;

/// A prompt cannot be run as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    /// The prompt's `<image>` markers and the images given disagree.
    #[error("the prompt has {markers} <image> marker(s) but {images} image(s) were given")]
    MarkerCount {
        /// Markers in the prompt.
        markers: usize,
        /// Images given.
        images: usize,
    },
    /// The prompt does not fit in what is left of the context.
    #[error("the prompt takes {positions} positions ({image_positions} of them image tokens) but {} (raise --ctx)", context_room(*room, *n_ctx))]
    TooLong {
        /// Positions the new prompt takes.
        positions: usize,
        /// Of those, the images' positions.
        image_positions: usize,
        /// Positions left in the context.
        room: usize,
        /// The whole context.
        n_ctx: usize,
    },
    /// The prompt has no tokens at all.
    #[error("the prompt has no tokens")]
    Empty,
}

/// "the context holds 4096", or, part-way through a conversation, what is left of it.
fn context_room(room: usize, n_ctx: usize) -> String {
    if room == n_ctx {
        format!("the context holds {n_ctx}")
    } else {
        format!("only {room} of the context's {n_ctx} are left")
    }
}

/// The embeddings of a whole prompt, ready for the LLM, and the ids of its text tokens (for
/// the sampler's penalties).
pub struct PromptEmbeddings<T> {
    /// `[positions, hidden]`.
    pub embeddings: T,
    /// The text tokens, in order, without the images' positions.
    pub text_ids: Vec<u32>,
    /// Rows of `embeddings`.
    pub n_positions: usize,
}

/// One piece of a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Token ids of a text piece.
    Text(Vec<u32>),
    /// The index of an image.
    Image(usize),
}

/// Splits `prompt` at its `<image>` markers and tokenizes the text pieces: BOS (when `bos`
/// and the tokenizer adds one) before the first piece only, special-token text recognised.
/// Without images, `<image>` is text like any other.
pub fn tokenize_pieces(
    tokenizer: &Tokenizer,
    prompt: &str,
    n_images: usize,
    bos: bool,
) -> Result<Vec<Piece>, PromptError> {
    let texts: Vec<&str> = if n_images == 0 {
        vec![prompt]
    } else {
        prompt.split(IMAGE_MARKER).collect()
    };
    let markers = texts.len() - 1;
    if markers != n_images {
        return Err(PromptError::MarkerCount {
            markers,
            images: n_images,
        });
    }
    let mut pieces = Vec::with_capacity(texts.len() * 2);
    for (i, text) in texts.iter().enumerate() {
        let mut ids = tokenizer.encode(text, false, true);
        if i == 0 && bos && tokenizer.add_bos() {
            if let Some(bos) = tokenizer.bos() {
                ids.insert(0, bos);
            }
        }
        if !ids.is_empty() {
            pieces.push(Piece::Text(ids));
        }
        if i < markers {
            pieces.push(Piece::Image(i));
        }
    }
    Ok(pieces)
}

/// Positions the text pieces take (the images' are not counted).
pub fn text_tokens(pieces: &[Piece]) -> usize {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(ids) => ids.len(),
            Piece::Image(_) => 0,
        })
        .sum()
}

/// Embeddings of the pieces: text rows from the LLM's table, image rows from `images`.
pub fn embed_pieces<B: Backend>(
    backend: &B,
    llm: &Llama<B>,
    pieces: &[Piece],
    images: &[B::Tensor],
) -> PromptEmbeddings<B::Tensor> {
    let text: Vec<B::Tensor> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Text(ids) => Some(llm.embed(backend, ids)),
            Piece::Image(_) => None,
        })
        .collect();
    let mut text_iter = text.iter();
    let parts: Vec<&B::Tensor> = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(_) => text_iter.next().expect("one embedding per text piece"),
            Piece::Image(i) => &images[*i],
        })
        .collect();
    let embeddings = backend.concat_rows(&parts);
    let (n_positions, _) = backend.shape(&embeddings);
    let text_ids = pieces
        .iter()
        .flat_map(|p| match p {
            Piece::Text(ids) => ids.clone(),
            Piece::Image(_) => Vec::new(),
        })
        .collect();
    PromptEmbeddings {
        embeddings,
        text_ids,
        n_positions,
    }
}

/// The embeddings of one image: LLaVA-1.5's single padded view, or for a LLaVA-1.6 tower (one
/// with grid pinpoints) the anyres overview + tiles, unpadded, with `image_newline` per row:
/// the views' features and the newline are stacked and gathered into the layout's order on
/// the backend, so a GPU keeps them where they are.
pub fn encode_image<B: Backend>(backend: &B, clip: &Clip<B>, image: &RgbImage) -> B::Tensor {
    let c = &clip.config;
    let size = c.image_size as u32;
    let (Some(layout), Some(newline)) = (anyres_layout(clip, image), clip.image_newline()) else {
        let pixels = if c.center_crop {
            clip_preprocess(image, size, c.image_mean, c.image_std)
        } else {
            llava15_preprocess(image, size, c.image_mean, c.image_std)
        };
        return clip.encode(backend, &pixels);
    };
    let mut parts: Vec<B::Tensor> = anyres_views(image, &layout, size)
        .iter()
        .map(|view| {
            let pixels = clip_preprocess(view, size, c.image_mean, c.image_std);
            clip.encode(backend, &pixels)
        })
        .collect();
    parts.push(backend.get_rows(newline, &[0]));
    let stacked = backend.concat_rows(&parts.iter().collect::<Vec<_>>());
    drop(parts);
    backend.gather_rows(&stacked, &layout.row_indices(c.patches_per_side()))
}

/// LLM positions `image` takes: the anyres layout's tokens, or one view's patches for a
/// LLaVA-1.5 tower. Known before encoding, so a prompt that cannot fit is refused first.
pub fn image_tokens<B: Backend>(clip: &Clip<B>, image: &RgbImage) -> usize {
    match anyres_layout(clip, image) {
        Some(layout) => layout.tokens(),
        None => clip.config.n_patches(),
    }
}

/// The anyres layout of `image`, or `None` for a LLaVA-1.5 tower. The number of positions an
/// image takes in the prompt is `layout.tokens()`: the same function cuts the views.
pub fn anyres_layout<B: Backend>(clip: &Clip<B>, image: &RgbImage) -> Option<AnyresLayout> {
    let c = &clip.config;
    // `Clip::load` refuses pinpoints without `image_newline`.
    (!c.grid_pinpoints.is_empty()).then(|| {
        AnyresLayout::new(
            (image.width, image.height),
            &c.grid_pinpoints,
            c.image_size as u32,
            c.patches_per_side(),
        )
    })
}
