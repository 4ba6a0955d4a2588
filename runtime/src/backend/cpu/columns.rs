//! A row-major matrix written in parallel by blocks of whole columns.
//!
//! A matmul's workers each take a run of weight rows, that is a run of output columns, and
//! write those columns of every activation row. With the output in its final `[rows, cols]`
//! layout, a worker's part is not one contiguous slice, so `Pool::for_each_chunk` cannot hand
//! it out; [`par_column_blocks`] does, with the one `unsafe` step it takes: slices of rows of
//! disjoint column ranges never overlap.

use std::marker::PhantomData;

use super::gemm::{TileOut, GROUP_ROWS, PANEL_ROWS};
use super::pool::Pool;

/// The columns `first..first + width` of a row-major `[rows, stride]` matrix, borrowed
/// exclusively: [`ColumnBlock::row`] gives one row's part of it at a time.
pub(super) struct ColumnBlock<'a> {
    /// Element `(0, first)` of the matrix.
    start: *mut f32,
    stride: usize,
    width: usize,
    rows: usize,
    _matrix: PhantomData<&'a mut [f32]>,
}

impl ColumnBlock<'_> {
    /// How many columns the block has.
    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// Row `r`'s part of the block: `width` elements.
    pub(super) fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} of a {}-row matrix", self.rows);
        // SAFETY: `start + r·stride .. + width` lies inside the matrix (`r < rows` and the
        // block's columns end at or before `stride`, checked in `par_column_blocks`). No other
        // block's slices overlap it (their column ranges are disjoint from this one's), and
        // `&mut self` keeps two slices of this block from being alive at once.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(r * self.stride), self.width) }
    }

    /// The micro-kernel tile at rows `r0..r0 + GROUP_ROWS`, columns `c0..c0 + PANEL_ROWS` of
    /// the block.
    pub(super) fn tile(&mut self, r0: usize, c0: usize) -> TileOut<'_> {
        assert!(
            r0 + GROUP_ROWS <= self.rows && c0 + PANEL_ROWS <= self.width,
            "tile ({r0}, {c0}) of a {}×{} block",
            self.rows,
            self.width
        );
        // SAFETY: each of the tile's rows is `PANEL_ROWS` floats inside this block's columns
        // of a row of the matrix (checked above; see `row`), which no other block touches, and
        // `&mut self` keeps the block from handing out anything else while the tile lives.
        unsafe { TileOut::from_raw(self.start.add(r0 * self.stride + c0), self.stride) }
    }
}

/// The matrix's base pointer, shared by the tasks of [`par_column_blocks`].
struct Base(*mut f32);

// SAFETY: the tasks only derive `ColumnBlock`s of disjoint columns from it (see `row`).
unsafe impl Sync for Base {}

impl Base {
    /// A method, so that closures capture the whole `Base` (which is `Sync`), not its field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(first column, block)` in parallel on `pool` over `data`, a row-major `[rows, cols]`
/// matrix, cut into blocks of `width` columns (the last may be narrower).
pub(super) fn par_column_blocks(
    pool: &Pool,
    data: &mut [f32],
    rows: usize,
    cols: usize,
    width: usize,
    f: impl Fn(usize, ColumnBlock<'_>) + Sync + Send,
) {
    assert_eq!(data.len(), rows * cols, "matrix shape");
    assert!(width > 0, "empty column blocks");
    let base = Base(data.as_mut_ptr());
    pool.for_each(cols.div_ceil(width), |b| {
        let first = b * width;
        let block = ColumnBlock {
            // In bounds, or one past the end when `rows` is 0 (then `row` is never valid).
            start: base.get().wrapping_add(first),
            stride: cols,
            width: width.min(cols - first),
            rows,
            _matrix: PhantomData,
        };
        f(first, block);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_written_once_by_the_block_of_its_column() {
        let pool = Pool::new(3);
        for (rows, cols, width) in [(5, 17, 4), (1, 8, 8), (3, 7, 10), (0, 6, 2), (4, 0, 3)] {
            let mut data = vec![0f32; rows * cols];
            par_column_blocks(&pool, &mut data, rows, cols, width, |first, mut block| {
                assert!(block.width() <= width && first + block.width() <= cols);
                for r in 0..rows {
                    for (c, v) in block.row(r).iter_mut().enumerate() {
                        *v += (r * 1000 + first + c) as f32;
                    }
                }
            });
            let expected: Vec<f32> = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r * 1000 + c) as f32))
                .collect();
            assert_eq!(data, expected, "{rows}×{cols} in blocks of {width}");
        }
    }

    #[test]
    #[should_panic(expected = "row 2 of a 2-row matrix")]
    fn rows_past_the_end_are_refused() {
        let mut data = vec![0f32; 6];
        par_column_blocks(&Pool::new(2), &mut data, 2, 3, 3, |_, mut block| {
            block.row(2);
        });
    }

    #[test]
    #[should_panic(expected = "tile (0, 1) of a 6×16 block")]
    fn tiles_past_the_block_are_refused() {
        let mut data = vec![0f32; 6 * 32];
        par_column_blocks(&Pool::new(2), &mut data, 6, 32, 16, |_, mut block| {
            block.tile(0, 1);
        });
    }
}
