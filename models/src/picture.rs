//! How much work an image's preprocessing makes, known from its size alone: the largest
//! picture on the way to the tower's views, which [`crate::Pipeline`] holds against
//! [`crate::LoadOptions::max_image_pixels`] before decoding anything more (a 1 × 100000
//! strip padded to a square is 10^10 pixels), and which its refusal names.

use crate::anyres::AnyresLayout;
use crate::clip::ClipConfig;

/// The largest picture an image's preprocessing makes, named: what `Pipeline::check_image`
/// holds against [`crate::LoadOptions::max_image_pixels`], and what its refusal names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picture {
    /// The decoded image itself: its preprocessing makes nothing larger.
    Image {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
    /// LLaVA-1.5's canvas: the image padded to a square of its longer side (a 1 × 100000
    /// strip becomes 10^10 pixels).
    PaddedSquare {
        /// The square's side.
        side: u64,
    },
    /// LLaVA-1.6's canvas: the grid pinpoint the image is resized into.
    AnyresCanvas {
        /// The pinpoint's width.
        width: u32,
        /// The pinpoint's height.
        height: u32,
    },
    /// A centre-cropping tower's resize (the first LLaVA): the shorter side to the view's
    /// size, the longer side in proportion, before the crop.
    ShortSideResized {
        /// The shorter side: the view's size.
        short: u64,
        /// The longer side.
        long: u64,
    },
    /// One view of the tower, `image_size²`, which every path resizes to: a tiny image costs
    /// that much in a tower with a large image size, however small its own canvas.
    View {
        /// The view's side (`image_size`).
        size: u64,
    },
}

impl Picture {
    /// Its pixels.
    pub fn pixels(&self) -> u64 {
        match *self {
            Picture::Image { width, height } | Picture::AnyresCanvas { width, height } => {
                u64::from(width) * u64::from(height)
            }
            Picture::PaddedSquare { side } => side.saturating_mul(side),
            Picture::ShortSideResized { short, long } => short.saturating_mul(long),
            Picture::View { size } => size.saturating_mul(size),
        }
    }
}

impl std::fmt::Display for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Picture::Image { .. } => write!(f, "the image itself"),
            Picture::PaddedSquare { side } => write!(f, "padded to a square, {side}x{side}"),
            Picture::AnyresCanvas { width, height } => {
                write!(f, "resized into its {width}x{height} grid")
            }
            Picture::ShortSideResized { short, long } => {
                write!(
                    f,
                    "resized to {short} on its shorter side, {long} on its longer"
                )
            }
            Picture::View { size } => write!(f, "resized to the tower's {size}x{size} view"),
        }
    }
}

/// The largest picture preprocessing a `width` × `height` image for a tower of `config` makes,
/// without loading the tower or touching a pixel: LLaVA-1.5 pads to a square of the longer
/// side; anyres fits the image into its pinpoint; a centre-cropping tower resizes the shorter
/// side to its image size; every path then resizes to at least one `image_size²` view.
/// Callers bound the work with it before encoding, as the decoder bounds the image itself.
/// The fuzz target `image_preprocess` checks its preprocessing against this same bound.
#[doc(hidden)]
pub fn largest_picture(config: &ClipConfig, width: u32, height: u32) -> Picture {
    let (w, h) = (u64::from(width), u64::from(height));
    let size = config.image_size as u64;
    let canvas = if !config.grid_pinpoints.is_empty() {
        // As `llava::anyres_layout` cuts the views.
        let layout = AnyresLayout::new(
            (width, height),
            &config.grid_pinpoints,
            config.image_size as u32,
            config.patches_per_side(),
        );
        Picture::AnyresCanvas {
            width: layout.target.0,
            height: layout.target.1,
        }
    } else if config.center_crop {
        let (short, long) = (w.min(h).max(1), w.max(h));
        Picture::ShortSideResized {
            short: size,
            long: size.saturating_mul(long) / short,
        }
    } else {
        Picture::PaddedSquare { side: w.max(h) }
    };
    // On a tie the earlier is named: the image itself, then the canvas, then the view.
    [canvas, Picture::View { size }].into_iter().fold(
        Picture::Image { width, height },
        |largest, p| {
            if p.pixels() > largest.pixels() {
                p
            } else {
                largest
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_picture_of_the_preprocessing_is_the_one_named() {
        let llava15 = ClipConfig {
            image_size: 336,
            patch_size: 14,
            hidden_size: 8,
            ffn_size: 16,
            n_heads: 2,
            n_blocks: 1,
            layer_norm_eps: 1e-5,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            use_gelu: false,
            grid_pinpoints: Vec::new(),
            center_crop: false,
        };
        let crop = ClipConfig {
            center_crop: true,
            ..llava15.clone()
        };
        let pinpoints = vec![(336, 672), (672, 336), (672, 672)];
        let anyres = ClipConfig {
            grid_pinpoints: pinpoints,
            ..llava15.clone()
        };
        use Picture::*;
        for (tower, (w, h), picture) in [
            (&llava15, (1, 100_000), PaddedSquare { side: 100_000 }),
            // A small image: the view it is resized to, not its square.
            (&llava15, (45, 31), View { size: 336 }),
            // A square: the image itself (padding adds nothing).
            (
                &llava15,
                (4000, 4000),
                Image {
                    width: 4000,
                    height: 4000,
                },
            ),
            (
                &crop,
                (10, 1000),
                ShortSideResized {
                    short: 336,
                    long: 33_600,
                },
            ),
            (
                &anyres,
                (600, 300),
                AnyresCanvas {
                    width: 672,
                    height: 336,
                },
            ),
        ] {
            assert_eq!(largest_picture(tower, w, h), picture, "{w}x{h}");
        }
    }
}
