//! Decoding image files to RGB the way the reference's `PIL.Image.open(f).convert("RGB")`
//! sees them: EXIF orientation applied, grayscale/palette/16-bit/CMYK converted, alpha dropped
//! (not composited). Sizes are checked from the header before any pixel is decoded.

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::RgbImage;

/// 50 megapixels: far above any camera photo LLaVA is useful on, far below what would exhaust
/// memory (a 50 MP RGB image is 150 MB decoded).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// An image file could not be read or decoded, or its size is refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file (or the name given to [`decode_image`]).
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The contents are not an image format the decoder knows.
    #[error("{}: not a supported image (JPEG, PNG, WebP, GIF, BMP): {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The format was recognised, but decoding its pixels failed.
    #[error("{}: cannot decode the image: {reason}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The header declares more pixels than the limit allows; nothing was decoded.
    #[error("{}: {width}×{height} is {} megapixels, above the limit of {} (raise --max-image-pixels)", path.display(), (*width as u64 * *height as u64) / 1_000_000, max / 1_000_000)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width in pixels, from the header.
        width: u32,
        /// Height in pixels, from the header.
        height: u32,
        /// The limit, in pixels.
        max: u64,
    },
    /// The header declares a width or height of zero.
    #[error("{}: the image is empty ({width}×{height})", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Width in pixels, from the header.
        width: u32,
        /// Height in pixels, from the header.
        height: u32,
    },
}

/// Opens and decodes an image file to 8-bit RGB, refusing images of more than `max_pixels`
/// before decoding them.
pub fn load_image(path: &Path, max_pixels: u64) -> Result<RgbImage, ImageError> {
    let io = |error| ImageError::Io {
        path: path.to_owned(),
        error,
    };
    // A FIFO would block the open; a device would read forever.
    llava_runtime::files::regular_file(path).map_err(io)?;
    let reader = ImageReader::open(path).map_err(io)?;
    decode(reader, path, max_pixels)
}

/// [`load_image`] of a file's bytes held in memory; `path` is only used in error messages.
pub fn decode_image(
    path: impl AsRef<Path>,
    bytes: &[u8],
    max_pixels: u64,
) -> Result<RgbImage, ImageError> {
    decode(
        ImageReader::new(Cursor::new(bytes)),
        path.as_ref(),
        max_pixels,
    )
}

fn decode<R: BufRead + Seek>(
    reader: ImageReader<R>,
    path: &Path,
    max_pixels: u64,
) -> Result<RgbImage, ImageError> {
    let format_error = |reason: String| ImageError::Format {
        path: path.to_owned(),
        reason,
    };
    let decode_error = |e: image::ImageError| ImageError::Decode {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let reader = reader
        .with_guessed_format()
        .map_err(|error| ImageError::Io {
            path: path.to_owned(),
            error,
        })?;
    if reader.format().is_none() {
        return Err(format_error("unrecognised file contents".into()));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format_error(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Empty {
            path: path.to_owned(),
            width,
            height,
        });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            width,
            height,
            max: max_pixels,
        });
    }
    // Also bound what the decoder may allocate, in case a format's header lies.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    decoder.set_limits(limits).map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}
