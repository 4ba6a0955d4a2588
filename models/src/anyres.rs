//! LLaVA-1.6 ("NeXT") anyres: high-resolution tiles, unpadding and per-row newlines
//! (GGUF-AND-LLAVA.md §5.3). One function, [`AnyresLayout::new`], decides the grid, the
//! unpadded shape and the token count; the prompt builder and the feature assembler both use
//! it, so they cannot disagree.

use crate::image::{resize_bicubic, RgbImage};

/// How one image is cut and how many LLM positions its features take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnyresLayout {
    /// The chosen pinpoint, (width, height) in pixels.
    pub target: (u32, u32),
    /// Tiles across and down.
    pub grid: (usize, usize),
    /// Patch rows and columns of the whole grid, before unpadding.
    pub full: (usize, usize),
    /// Patch rows and columns kept after unpadding: rows `row0..row0 + rows`, columns
    /// `col0..col0 + cols`.
    pub rows: usize,
    /// Patch columns kept after unpadding.
    pub cols: usize,
    /// First patch row of the full grid that is kept.
    pub row0: usize,
    /// First patch column of the full grid that is kept.
    pub col0: usize,
    /// Patches of one view (the overview), e.g. 576.
    pub base_tokens: usize,
}

impl AnyresLayout {
    /// The layout of an image of `size` (width, height) for a tower with `tile`-pixel views of
    /// `side`×`side` patches.
    pub fn new(size: (u32, u32), pinpoints: &[(u32, u32)], tile: u32, side: usize) -> Self {
        let target = select_best_resolution(size, pinpoints);
        let grid = ((target.0 / tile) as usize, (target.1 / tile) as usize);
        let full = (grid.1 * side, grid.0 * side);
        let (rows, cols, row0, col0) = unpadded(size, full);
        AnyresLayout {
            target,
            grid,
            full,
            rows,
            cols,
            row0,
            col0,
            base_tokens: side * side,
        }
    }

    /// LLM positions: the overview, then the unpadded grid with a newline after each row.
    pub fn tokens(&self) -> usize {
        self.base_tokens + self.rows * (self.cols + 1)
    }

    /// Number of high-resolution tiles: `grid.0 × grid.1`.
    pub fn n_tiles(&self) -> usize {
        self.grid.0 * self.grid.1
    }
}

/// The pinpoint whose aspect-preserving fit keeps the most of the image's pixels, then wastes
/// the least area; the first wins a full tie. Pinpoints are (width, height) as llama.cpp's
/// `clip.vision.image_grid_pinpoints` lists them.
pub fn select_best_resolution(size: (u32, u32), pinpoints: &[(u32, u32)]) -> (u32, u32) {
    let (w, h) = (f64::from(size.0), f64::from(size.1));
    let mut best = pinpoints[0];
    let (mut best_eff, mut best_waste) = (-1i64, i64::MAX);
    for &(pw, ph) in pinpoints {
        let s = (f64::from(pw) / w).min(f64::from(ph) / h);
        // Python's int() on the scaled sizes, and the original pixel count as the cap.
        let down = ((w * s) as i64) * ((h * s) as i64);
        let eff = down.min(i64::from(size.0) * i64::from(size.1));
        let waste = i64::from(pw) * i64::from(ph) - eff;
        if eff > best_eff || (eff == best_eff && waste < best_waste) {
            best = (pw, ph);
            best_eff = eff;
            best_waste = waste;
        }
    }
    best
}

/// transformers' `unpad_image` on a grid of `full` = (rows, cols) patches for an image of
/// `size` (width, height): (rows, cols, first row, first column) kept.
fn unpadded(size: (u32, u32), full: (usize, usize)) -> (usize, usize, usize, usize) {
    let (ow, oh) = (f64::from(size.0), f64::from(size.1));
    let (ch, cw) = (full.0, full.1);
    if ow / oh > cw as f64 / ch as f64 {
        let new_h = round7(oh * (cw as f64 / ow)) as usize;
        let pad = (ch - new_h.min(ch)) / 2;
        (ch - 2 * pad, cw, pad, 0)
    } else {
        let new_w = round7(ow * (ch as f64 / oh)) as usize;
        let pad = (cw - new_w.min(cw)) / 2;
        (ch, cw - 2 * pad, 0, pad)
    }
}

/// `int(round(x, 7))`: rounding to 7 decimals first keeps 23.9999999 from truncating to 23.
fn round7(x: f64) -> f64 {
    ((x * 1e7).round() / 1e7).trunc()
}

/// The views of an anyres image, overview first: the image stretched to `tile`×`tile`, then
/// the tiles of the image fitted into `target` (aspect kept, centred on black), row-major.
pub fn anyres_views(img: &RgbImage, layout: &AnyresLayout, tile: u32) -> Vec<RgbImage> {
    let (tw, th) = layout.target;
    let (w, h) = (f64::from(img.width), f64::from(img.height));
    let (sw, sh) = (f64::from(tw) / w, f64::from(th) / h);
    let (nw, nh) = if sw < sh {
        (tw, ((h * sw).ceil() as u32).min(th))
    } else {
        (((w * sh).ceil() as u32).min(tw), th)
    };
    let resized = resize_bicubic(img, nw.max(1), nh.max(1));
    let mut canvas = RgbImage::new(tw, th, [0, 0, 0]);
    canvas.paste(
        &resized,
        i64::from((tw - resized.width) / 2),
        i64::from((th - resized.height) / 2),
    );
    let mut views = vec![resize_bicubic(img, tile, tile)];
    for gy in 0..layout.grid.1 as u32 {
        for gx in 0..layout.grid.0 as u32 {
            let mut t = RgbImage::new(tile, tile, [0, 0, 0]);
            t.paste(&canvas, -i64::from(gx * tile), -i64::from(gy * tile));
            views.push(t);
        }
    }
    views
}

impl AnyresLayout {
    /// Where each LLM row of the image comes from, as indices into the rows of the views'
    /// features stacked one view after another (`1 + tiles` blocks of `side²` rows, overview
    /// first) followed by one newline row: the overview's rows, then the tiles' patches as one
    /// grid, unpadded, each grid row followed by the newline. `layout.tokens()` indices, for
    /// [`Backend::gather_rows`](llava_runtime::backend::Backend::gather_rows).
    pub fn row_indices(&self, side: usize) -> Vec<u32> {
        let per_view = side * side;
        let newline = ((1 + self.n_tiles()) * per_view) as u32;
        let mut rows = Vec::with_capacity(self.tokens());
        rows.extend(0..per_view as u32);
        let gw = self.grid.0;
        for r in self.row0..self.row0 + self.rows {
            let (ty, py) = (r / side, r % side);
            for c in self.col0..self.col0 + self.cols {
                let (tx, px) = (c / side, c % side);
                let view = 1 + ty * gw + tx;
                rows.push((view * per_view + py * side + px) as u32);
            }
            rows.push(newline);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINPOINTS: [(u32, u32); 5] =
        [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

    #[test]
    fn token_counts_match_the_reference_table() {
        // GGUF-AND-LLAVA.md §5.5, the REF column (unpad + newline), 336-px views of 24×24.
        for ((w, h), tokens) in [
            ((300, 200), 976),
            ((336, 336), 1176),
            ((640, 480), 2340),
            ((1024, 768), 2340),
            ((480, 640), 2352),
            ((1280, 720), 1948),
            ((1920, 1080), 1948),
            ((672, 672), 2928),
            ((500, 1500), 2376),
        ] {
            let l = AnyresLayout::new((w, h), &PINPOINTS, 336, 24);
            assert_eq!(l.tokens(), tokens, "{w}x{h}: {l:?}");
        }
    }

    #[test]
    fn best_resolution_prefers_kept_pixels_then_less_waste() {
        assert_eq!(select_best_resolution((1280, 720), &PINPOINTS), (672, 672));
        assert_eq!(select_best_resolution((500, 1500), &PINPOINTS), (336, 1008));
        assert_eq!(select_best_resolution((1500, 400), &PINPOINTS), (1008, 336));
        // A full tie: the first pinpoint wins.
        assert_eq!(select_best_resolution((300, 300), &PINPOINTS), (336, 672));
    }

    #[test]
    fn assembly_unpads_rows_and_appends_newlines() {
        // 1×2 grid (wide) of 2×2-patch views, dim 1; an image twice as wide as tall keeps
        // the full 2×4 grid; values say where they came from.
        let layout = AnyresLayout::new((200, 100), &[(4, 2)], 2, 2);
        assert_eq!((layout.grid, layout.rows, layout.cols), ((2, 1), 2, 4));
        // Views' rows 0..12, the newline row 12. Overview 0..4, then grid row 0: tile 1
        // (4, 5), tile 2 (8, 9), newline; grid row 1: 6, 7, 10, 11, newline.
        let out = layout.row_indices(2);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 8, 9, 12, 6, 7, 10, 11, 12]);
        assert_eq!(out.len(), layout.tokens());
        // A 1:4 image on a 1:2 grid of 4×2 patches: 1 column of content, but the padding to
        // remove on each side, (2 − 1) // 2, is 0, so both columns stay.
        let tall = AnyresLayout::new((100, 400), &[(2, 4)], 2, 2);
        assert_eq!((tall.rows, tall.cols, tall.col0), (4, 2, 0));
        // 1:8 on a 1:2 grid of 4×4 patches: content 0.5 column → pad 1 each side... of 4
        // columns: (4 − 1) // 2 = 1, keeping columns 1..3.
        let thin = AnyresLayout::new((100, 800), &[(4, 8)], 4, 4);
        assert_eq!((thin.rows, thin.cols, thin.col0), (8, 2, 1));
    }
}
