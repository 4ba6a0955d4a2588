//! The images of a request: `data:` URIs, or http(s) URLs fetched where
//! `--allow-remote-images` allows it, each decoded within `--max-image-pixels` and all of a
//! request's together within `--max-request-pixels`.

use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use llava_models::image::{decode_image, ImageError, RgbImage};

use super::{ApiError, Shared};

/// An image from a `data:` URI (base64), or from an http(s) URL where `--allow-remote-images`
/// allows it; anything else is refused: local paths are never read. The image takes its pixels
/// from `pixels_left`, the request's budget.
///
/// Runs on a blocking thread of the runtime (it decodes images), which may wait on a fetch.
pub(super) fn image_from_url(
    s: &Shared,
    url: &str,
    at: &str,
    pixels_left: &mut u64,
) -> Result<RgbImage, ApiError> {
    let is_remote = url.starts_with("http://") || url.starts_with("https://");
    let bytes = match (is_remote, s.remote.as_ref()) {
        (true, Some(remote)) => {
            tokio::runtime::Handle::current().block_on(remote.fetch(url, at))?
        }
        _ => {
            let Some(rest) = url.strip_prefix("data:") else {
                return Err(ApiError::bad(if is_remote {
                    format!("{at}: remote image URLs are not fetched unless the server runs with --allow-remote-images; send the image as a data: URI")
                } else {
                    format!("{at}: images are data: URIs or, where the server allows it, http(s) URLs; local paths are never read")
                }));
            };
            let Some((meta, data)) = rest.split_once(',') else {
                return Err(ApiError::bad(format!("{at}: a data: URI without data")));
            };
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad(format!("{at}: the data: URI must be base64")));
            }
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::bad(format!("{at}: invalid base64: {e}")))?
        }
    };
    // The header's size is checked against the smaller limit before anything is decoded.
    match decode_image(at, &bytes, s.max_image_pixels.min(*pixels_left)) {
        Ok(image) => {
            let pixels = u64::from(image.width) * u64::from(image.height);
            *pixels_left = pixels_left.saturating_sub(pixels);
            Ok(image)
        }
        Err(ImageError::TooLarge {
            path,
            width,
            height,
            ..
        }) => Err(ApiError::bad(
            if u64::from(width) * u64::from(height) > s.max_image_pixels {
                ImageError::TooLarge {
                    path,
                    width,
                    height,
                    max: s.max_image_pixels,
                }
                .to_string()
            } else {
                format!(
                    "{at}: its {width}x{height} pixels bring the request's images past {} pixels in all (--max-request-pixels)",
                    s.max_request_pixels
                )
            },
        )),
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}

/// The fetcher of `--allow-remote-images`: http(s) only (redirects too, at most 5), 10 s to
/// connect and 30 s in all, the body at most `max_bytes` (checked while it arrives).
pub(super) struct RemoteImages {
    client: reqwest::Client,
    max_bytes: usize,
}

impl RemoteImages {
    pub(super) fn new(max_bytes: usize) -> Result<RemoteImages> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("llava-edge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RemoteImages { client, max_bytes })
    }

    async fn fetch(&self, url: &str, at: &str) -> Result<Vec<u8>, ApiError> {
        // The URL as the client wrote it, shortened: error messages stay one readable line.
        let shown: String = url.chars().take(120).collect();
        let failed = |why: String| ApiError::bad(format!("{at}: fetching {shown}: {why}"));
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP status {}", response.status())));
        }
        let too_big = || failed(format!("larger than {} bytes", self.max_bytes));
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(error_chain(&e)))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// An error and its causes on one line (reqwest's own message alone says only "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
