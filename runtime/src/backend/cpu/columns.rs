//! A row-major matrix written in parallel by blocks of whole columns.
//!
//! A matmul's workers each take a run of weight rows, that is a run of output columns, and
//! write those columns of every activation row. With the output in its final `[rows, cols]`
//! layout, a worker's part is not one contiguous slice, so `Pool::for_each_chunk` cannot hand
//! it out; [`zeroed_by_column_runs`] does, with the `unsafe` steps it takes: slices of rows of
//! disjoint column ranges never overlap, and each task zeroes its own columns before anything
//! reads them.

use std::marker::PhantomData;
use std::ops::Range;

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
        // block's columns end at or before `stride`, as `Base::block` requires). No other
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

    /// Columns `run` of the `[rows, cols]` matrix at the base.
    ///
    /// # Safety
    /// `run` must lie inside `0..cols`, the matrix's elements in those columns must be
    /// initialized and neither read nor written through anything else while the block lives.
    unsafe fn block<'a>(&self, rows: usize, cols: usize, run: Range<usize>) -> ColumnBlock<'a> {
        ColumnBlock {
            // In bounds, or one past the end when `rows` is 0 (then `row` is never valid).
            start: self.get().wrapping_add(run.start),
            stride: cols,
            width: run.len(),
            rows,
            _matrix: PhantomData,
        }
    }
}

/// Runs `f(first column, block)` in parallel on `pool` over `data`, a row-major `[rows, cols]`
/// matrix, cut into blocks of `width` columns (the last may be narrower).
#[cfg(test)]
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
        // SAFETY: the blocks `first..first + width` of distinct `b` are disjoint and inside
        // `0..cols`; `data` is borrowed exclusively for the whole loop.
        f(first, unsafe {
            base.block(rows, cols, first..cols.min(first + width))
        });
    });
}

/// A new row-major `[rows, cols]` matrix written by `f(first column, block)` in parallel on
/// `pool`, one task per run of `runs` (which must cover `0..cols` in order, without gaps or
/// overlaps). Each block starts out zeroed by its own task: the zeroing is spread over the
/// threads, and each block's lines are in its worker's cache when `f` starts, where zeroing
/// the whole matrix first took one thread alone (1–2% of a CLIP encode in `memset`, the other
/// threads waiting).
pub(super) fn zeroed_by_column_runs(
    pool: &Pool,
    rows: usize,
    cols: usize,
    runs: &[Range<usize>],
    f: impl Fn(usize, ColumnBlock<'_>) + Sync + Send,
) -> Vec<f32> {
    let mut next = 0;
    for run in runs {
        assert!(
            run.start == next && run.end > run.start,
            "column runs must tile the columns in order: {run:?} after {next}"
        );
        next = run.end;
    }
    assert_eq!(next, cols, "column runs end at {next} of {cols} columns");
    let n = rows.checked_mul(cols).expect("matrix size overflows");
    let mut data = Vec::<f32>::with_capacity(n);
    let base = Base(data.as_mut_ptr());
    pool.for_each(runs.len(), |b| {
        let run = runs[b].clone();
        for r in 0..rows {
            // SAFETY: `r·cols + run` lies inside the allocation of `n` floats (`run.end <=
            // cols`), and no other task writes these columns (the runs are disjoint). Raw
            // writes: nothing reads the memory before it is zeroed.
            unsafe {
                base.get()
                    .add(r * cols + run.start)
                    .write_bytes(0, run.len())
            };
        }
        // SAFETY: the run's columns of every row are initialized (just above) and exclusively
        // this task's; the allocation outlives the loop.
        f(run.start, unsafe { base.block(rows, cols, run) });
    });
    // SAFETY: every element was zeroed by the task of its column's run (the runs cover
    // `0..cols`, checked above) before `f` wrote it; if a task panicked, `for_each` re-raises
    // it after all tasks have finished, and `data` is dropped with length 0.
    unsafe { data.set_len(n) };
    data
}

/// Column runs for [`zeroed_by_column_runs`]: `0..cols` in runs of whole `unit`s (the last may
/// be short), large first and smaller towards the end ("guided" scheduling: each run is about
/// the rest's share of `2 × threads`), so that the threads finish close together however
/// their speeds vary, with few runs in all.
pub(super) fn guided_runs(cols: usize, unit: usize, threads: usize) -> Vec<Range<usize>> {
    assert!(unit > 0, "empty column units");
    let units = cols.div_ceil(unit);
    let mut runs = Vec::new();
    let mut done = 0;
    while done < units {
        let take = ((units - done) / (2 * threads.max(1))).max(1);
        let start = done * unit;
        done += take;
        runs.push(start..cols.min(done * unit));
    }
    runs
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

    #[test]
    fn zeroed_runs_start_at_zero_and_are_written_by_their_own_task() {
        let pool = Pool::new(3);
        for (rows, cols, unit) in [(5, 17, 4), (1, 8, 8), (3, 7, 10), (0, 6, 2), (6, 100, 16)] {
            let runs = guided_runs(cols, unit, pool.threads());
            let data = zeroed_by_column_runs(&pool, rows, cols, &runs, |first, mut block| {
                let run = runs
                    .iter()
                    .find(|r| r.start == first)
                    .expect("a run's start");
                assert_eq!(block.width(), run.len());
                for r in 0..rows {
                    for (c, v) in block.row(r).iter_mut().enumerate() {
                        assert_eq!(*v, 0.0, "({r}, {}) not zeroed", first + c);
                        *v += (r * 1000 + first + c) as f32;
                    }
                }
            });
            let expected: Vec<f32> = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r * 1000 + c) as f32))
                .collect();
            assert_eq!(data, expected, "{rows}×{cols} in units of {unit}");
        }
    }

    #[test]
    fn guided_runs_tile_the_columns_in_whole_units_shrinking_towards_the_end() {
        for (cols, unit, threads) in [(4096, 64, 2), (1024, 96, 2), (32000, 16, 16), (5, 8, 4)] {
            let runs = guided_runs(cols, unit, threads);
            assert_eq!(runs.first().map(|r| r.start), Some(0));
            assert_eq!(runs.last().map(|r| r.end), Some(cols));
            for pair in runs.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{runs:?}");
                assert!(pair[0].len() >= pair[1].len(), "{runs:?}");
            }
            for run in &runs[..runs.len() - 1] {
                assert!(run.len() % unit == 0, "{run:?} of units of {unit}");
            }
            // The first run is about a (2·threads)-th of the columns, the last one unit or less.
            let units = cols.div_ceil(unit);
            assert_eq!(
                runs[0].len(),
                cols.min(unit * (units / (2 * threads)).max(1))
            );
            assert!(runs.last().unwrap().len() <= unit);
        }
        // 4096 columns in 64 units over 2 threads: 16, 12, 9, 6, 5, 4, 3, 2, then 7 single units.
        let lens: Vec<usize> = guided_runs(4096, 64, 2)
            .iter()
            .map(|r| r.len() / 64)
            .collect();
        assert_eq!(lens, [16, 12, 9, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    #[should_panic(expected = "column runs end at 8 of 9 columns")]
    fn runs_short_of_the_columns_are_refused() {
        zeroed_by_column_runs(&Pool::new(2), 2, 9, &[0..4, 4..8], |_, _| {});
    }

    #[test]
    #[should_panic(expected = "column runs must tile the columns in order")]
    fn overlapping_runs_are_refused() {
        zeroed_by_column_runs(&Pool::new(2), 2, 8, &[0..4, 3..8], |_, _| {});
    }
}
