//! Images in: decoding with the `image` crate, and the reference preprocessing of LLaVA and
//! CLIP (GGUF-AND-LLAVA.md §5), pixel for pixel.

mod decode;
mod resize;

pub use decode::{decode_image, load_image, ImageError, DEFAULT_MAX_PIXELS};
pub use resize::resize_bicubic;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels, row after row, R, G, B bytes each: `width × height × 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image of `width × height` pixels, all of colour `fill` (R, G, B).
    pub fn new(width: u32, height: u32, fill: [u8; 3]) -> RgbImage {
        let data = fill
            .iter()
            .copied()
            .cycle()
            .take(width as usize * height as usize * 3)
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    fn pixel_offset(&self, x: u32, y: u32) -> usize {
        (y as usize * self.width as usize + x as usize) * 3
    }

    /// Copies `src` with its top-left corner at `(x, y)`; parts outside are dropped.
    pub fn paste(&mut self, src: &RgbImage, x: i64, y: i64) {
        for sy in 0..src.height {
            let ty = y + i64::from(sy);
            if ty < 0 || ty >= i64::from(self.height) {
                continue;
            }
            for sx in 0..src.width {
                let tx = x + i64::from(sx);
                if tx < 0 || tx >= i64::from(self.width) {
                    continue;
                }
                let (d, s) = (
                    self.pixel_offset(tx as u32, ty as u32),
                    src.pixel_offset(sx, sy),
                );
                self.data[d..d + 3].copy_from_slice(&src.data[s..s + 3]);
            }
        }
    }
}

/// LLaVA-1.5's `expand2square`: the image centred on a square canvas of `fill`.
pub fn expand_to_square(img: &RgbImage, fill: [u8; 3]) -> RgbImage {
    if img.width == img.height {
        return img.clone();
    }
    let side = img.width.max(img.height);
    let mut out = RgbImage::new(side, side, fill);
    let x = (side - img.width) / 2;
    let y = (side - img.height) / 2;
    out.paste(img, i64::from(x), i64::from(y));
    out
}

/// The canvas colour of `expand2square`: `int(mean · 255)` per channel, (122, 116, 104) for
/// CLIP's mean.
pub fn mean_fill(mean: [f32; 3]) -> [u8; 3] {
    // Python's int() truncates; the product is computed in double precision there.
    mean.map(|m| (f64::from(m) * 255.0) as u8)
}

/// transformers' `CLIPImageProcessor` with the Pillow backend: shortest edge to `size` with
/// BICUBIC (the other edge `int(size · long / short)`), centre crop to `size`×`size`, scale by
/// 1/255, normalise. Returns planar CHW f32.
pub fn clip_preprocess(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        resize_bicubic(img, nw, nh)
    };
    let cropped = center_crop(&resized, size, size);
    normalize(&cropped, mean, std)
}

/// LLaVA-1.5's preprocessing: pad to square with the mean colour, then the CLIP processor.
pub fn llava15_preprocess(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    clip_preprocess(&expand_to_square(img, mean_fill(mean)), size, mean, std)
}

/// transformers' `center_crop`: offsets `(orig − crop) // 2`, zero padding where the image is
/// smaller than the crop.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if (img.width, img.height) == (width, height) {
        return img.clone();
    }
    let left = (i64::from(img.width) - i64::from(width)).div_euclid(2);
    let top = (i64::from(img.height) - i64::from(height)).div_euclid(2);
    let mut out = RgbImage::new(width, height, [0, 0, 0]);
    out.paste(img, -left, -top);
    out
}

/// `(v / 255 − mean) / std`, planar CHW.
pub fn normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width as usize * img.height as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // transformers rescales in double precision, then works in f32.
            let v = (f64::from(px[c]) * (1.0 / 255.0)) as f32;
            out[c * n + i] = (v - mean[c]) / std[c];
        }
    }
    out
}
