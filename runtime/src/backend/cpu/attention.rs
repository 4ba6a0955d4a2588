//! Scaled dot-product attention, in f32, over rows or the KV cache (`kv_cache.rs`).
//!
//! Decode: one work unit per (row, run of query heads of one KV head) computes all their
//! scores, softmaxes and weighted sums of values (`VectorOps::decode_heads`), reading each key
//! and value once for the run (`heads_per_task`); 32 query heads are enough units for the
//! cores of the machines we target, so there is no split over the keys yet. Batches
//! (prefill, the vision tower) are two GEMMs per head through `gemm.rs`'s micro-kernel
//! (`attend_batched`).

use half::f16;

use super::gemm::{
    self, GroupColumn, MicroKernelFn, PanelColumn, TileOut, GROUP_ROWS, K_CHUNK, PANEL_ROWS,
};
use super::pool::Pool;
use super::vector::{vector_ops, CacheValue, DecodeHeads, VectorOps};
use super::CpuTensor;
use crate::backend::Heads;

/// Keys and values of `n_kv` positions, and where each KV head's are: key `j` of KV head `g`
/// starts at `keys[g·head_stride + j·pos_stride]`, and its value at the same place in `values`.
pub(super) struct Kv<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
    pub n_kv: usize,
    pub head_stride: usize,
    pub pos_stride: usize,
}

impl<T> Clone for Kv<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Kv<'_, T> {}

impl<'a, T> Kv<'a, T> {
    /// Rows of `[n_kv, n_kv_heads·head_dim]` matrices (keys and values computed in the same
    /// pass, as in the vision tower).
    pub fn rows(keys: &'a [T], values: &'a [T], heads: Heads) -> Self {
        let kv_dim = heads.n_kv_heads * heads.head_dim;
        assert_eq!(keys.len(), values.len(), "as many keys as values");
        Kv {
            keys,
            values,
            n_kv: keys.len() / kv_dim.max(1),
            head_stride: heads.head_dim,
            pos_stride: kv_dim,
        }
    }

    /// Where key or value `j` of KV head `g` starts.
    fn at(&self, g: usize, j: usize) -> usize {
        g * self.head_stride + j * self.pos_stride
    }
}

/// A layer of the cache as attention reads it.
pub(super) enum CachedKv<'a> {
    F32(Kv<'a, f32>),
    F16(Kv<'a, f16>),
}

/// An element type attention can read keys and values in.
pub(super) trait KvElement: CacheValue {
    /// [`VectorOps::decode_heads`] for this element type.
    fn decode_heads(
        ops: &VectorOps,
        call: &DecodeHeads<'_, Self>,
        scores: &mut [f32],
        out: &mut [f32],
    );
}

impl KvElement for f32 {
    fn decode_heads(
        ops: &VectorOps,
        call: &DecodeHeads<'_, f32>,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        (ops.decode_heads)(call, scores, out)
    }
}

impl KvElement for f16 {
    fn decode_heads(
        ops: &VectorOps,
        call: &DecodeHeads<'_, f16>,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        (ops.decode_heads_f16)(call, scores, out)
    }
}

/// How many query heads of a group one decode task takes: the most (a divisor of `group`)
/// that still leaves at least 4 tasks per thread over `rows` rows of `n_heads` heads, so
/// that each key and value is read once per task while every thread has work. Grouped-query
/// models (LLaVA-1.6-Mistral: 4 query heads per KV head) on a few cores share them; with
/// many cores, or one query head per KV head, a task is one head.
fn heads_per_task(n_heads: usize, group: usize, rows: usize, threads: usize) -> usize {
    (1..=group)
        .rev()
        .filter(|&g| group.is_multiple_of(g))
        .find(|&g| n_heads / g * rows >= 4 * threads)
        .unwrap_or(1)
}

/// [`attend`] over keys and values of either element type.
pub(super) fn attend_cached(
    pool: &Pool,
    q: &CpuTensor,
    kv: CachedKv<'_>,
    heads: Heads,
    start: usize,
) -> CpuTensor {
    match kv {
        CachedKv::F32(kv) => attend(pool, q, kv, heads, Some(start)),
        CachedKv::F16(kv) => attend(pool, q, kv, heads, Some(start)),
    }
}

/// The fewest query rows [`attend_batched`] takes; fewer are decoded one by one.
const BATCH_MIN_ROWS: usize = 4;

/// Attention of `q` `[rows, n_heads·head_dim]` over `kv`'s `n_kv` positions. With
/// `causal_start = Some(s)`, row `r` is at position `s + r` and sees positions `0..=s + r`;
/// with `None` every row sees every position.
pub(super) fn attend<T: KvElement>(
    pool: &Pool,
    q: &CpuTensor,
    kv: Kv<'_, T>,
    heads: Heads,
    causal_start: Option<usize>,
) -> CpuTensor {
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    assert_eq!(q.cols, n_heads * head_dim, "query width");
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "head grouping");
    let n_kv = kv.n_kv;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let ops = vector_ops();
    if q.rows >= BATCH_MIN_ROWS {
        return attend_batched(
            pool,
            q,
            kv,
            heads,
            causal_start,
            (&ops, gemm::micro_kernel()),
        );
    }

    // One task per (row, run of `per_task` heads of one group): the run's heads are
    // consecutive in the row, and so are their outputs.
    let per_task = heads_per_task(n_heads, group, q.rows, pool.threads());
    let mut out = vec![0f32; q.rows * q.cols];
    pool.for_each_chunk(&mut out, per_task * head_dim, |unit, out| {
        let tasks_per_row = n_heads / per_task;
        let (r, h0) = (unit / tasks_per_row, unit % tasks_per_row * per_task);
        let at = kv.at(h0 / group, 0);
        let qs = &q.row(r)[h0 * head_dim..][..per_task * head_dim];
        let visible = causal_start.map_or(n_kv, |s| (s + r + 1).min(n_kv));
        let mut scores = vec![0f32; per_task * visible];
        let call = DecodeHeads {
            qs,
            d: head_dim,
            keys: &kv.keys[at..],
            values: &kv.values[at..],
            stride: kv.pos_stride,
            n: visible,
            scale,
        };
        T::decode_heads(&ops, &call, &mut scores, out);
    });
    CpuTensor::new(out, q.rows, q.cols)
}

/// [`attend`] for a batch of query rows (prefill, the vision tower): two GEMMs per head through
/// the f32 micro-kernel of `gemm.rs`, with a softmax between them that needs no transpose.
/// Work units are (head, panel of [`PANEL_ROWS`] query rows), so the causal triangle's uneven
/// panels spread over the threads. Per unit:
/// - scores `S = K·Qᵀ`: the keys are the broadcast operand, [`GROUP_ROWS`] at a time (laid
///   out once per KV head), the panel's query rows the lanes; `S` comes out key-major, one
///   [`PanelColumn`] per key;
/// - a softmax down each lane ([`VectorOps::panel_softmax`]), left unnormalized, after the
///   keys a row may not see are set to −∞;
/// - `Oᵀ = Vᵀ·Pᵀ`: the value dimensions are the broadcast operand (also laid out once per KV
///   head), and `P` is already a packed panel; `Oᵀ` is then written out row by row, each row
///   divided by its lane's sum.
///
/// It replaced a kernel that computed 4 query rows' scores with the keys along the lanes and
/// summed the values row by row (axpy per key): that one ran at about 38% of the FMA peak
/// (`attention/clip/577` 20–23 ms).
fn attend_batched<T: KvElement>(
    pool: &Pool,
    q: &CpuTensor,
    kv: Kv<'_, T>,
    heads: Heads,
    causal_start: Option<usize>,
    (ops, micro): (&VectorOps, MicroKernelFn),
) -> CpuTensor {
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    let n_kv = kv.n_kv;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let rows = q.rows;
    let visible = |r: usize| causal_start.map_or(n_kv, |s| (s + r + 1).min(n_kv));

    // Per KV head, both as groups of GROUP_ROWS rows (the broadcast operand), zero-padded
    // (see `KvPanels`).
    let key_groups = n_kv.div_ceil(GROUP_ROWS);
    let dim_groups = head_dim.div_ceil(GROUP_ROWS);
    let mut laid_out: Vec<KvPanels> = (0..n_kv_heads).map(|_| KvPanels::default()).collect();
    pool.for_each_chunk(&mut laid_out, 1, |g, panels| {
        let mut keys_by_group = vec![[0f32; GROUP_ROWS]; key_groups * head_dim];
        let mut values_by_dim = vec![[0f32; GROUP_ROWS]; dim_groups * n_kv];
        let (mut key, mut value) = (vec![0f32; head_dim], vec![0f32; head_dim]);
        for j in 0..n_kv {
            let at = kv.at(g, j);
            T::widen_slice(&kv.keys[at..at + head_dim], &mut key);
            T::widen_slice(&kv.values[at..at + head_dim], &mut value);
            let group = &mut keys_by_group[j / GROUP_ROWS * head_dim..][..head_dim];
            for (column, &k) in group.iter_mut().zip(&key) {
                column[j % GROUP_ROWS] = k;
            }
            for (d, &v) in value.iter().enumerate() {
                values_by_dim[d / GROUP_ROWS * n_kv + j][d % GROUP_ROWS] = v;
            }
        }
        panels[0] = KvPanels {
            keys_by_group,
            values_by_dim,
        };
    });

    // Output by head, each unit's PANEL_ROWS rows together (the last panel padded).
    let panels = rows.div_ceil(PANEL_ROWS);
    let mut by_head = vec![0f32; n_heads * panels * PANEL_ROWS * head_dim];
    pool.for_each_chunk_init(
        &mut by_head,
        PANEL_ROWS * head_dim,
        UnitScratch::default,
        |scratch, unit, out| {
            let (h, r0) = (unit / panels, unit % panels * PANEL_ROWS);
            let n_r = PANEL_ROWS.min(rows - r0);
            let KvPanels {
                keys_by_group,
                values_by_dim,
            } = &laid_out[h / group];
            // The panel's query rows, head `h`'s part, one column per dimension (rows past
            // the end stay 0; their output is dropped).
            let queries = &mut scratch.queries;
            queries.clear();
            queries.resize(head_dim, PanelColumn::default());
            for i in 0..n_r {
                let row = &q.row(r0 + i)[h * head_dim..][..head_dim];
                for (column, &x) in queries.iter_mut().zip(row) {
                    column.0[i] = x;
                }
            }
            // Scores of the keys the panel's last row sees, whole groups of them.
            let n = visible(r0 + n_r - 1);
            let scores = &mut scratch.scores;
            scores.clear();
            scores.resize(n.div_ceil(GROUP_ROWS) * GROUP_ROWS, PanelColumn::default());
            for (g, tile) in scores.chunks_exact_mut(GROUP_ROWS).enumerate() {
                let keys = &keys_by_group[g * head_dim..][..head_dim];
                micro(
                    keys,
                    queries,
                    TileOut::in_slice(bytemuck::cast_slice_mut(tile), PANEL_ROWS),
                );
            }
            let p = &mut scores[..n];
            if causal_start.is_some() {
                for i in 0..n_r {
                    for column in &mut p[visible(r0 + i)..] {
                        column.0[i] = f32::NEG_INFINITY;
                    }
                }
            }
            let inv_sums = (ops.panel_softmax)(p, scale);
            // Oᵀ, a chunk of keys at a time so that P's chunk stays in L1 while every group of
            // dimensions passes over it.
            let sums = &mut scratch.sums;
            sums.clear();
            sums.resize(dim_groups * GROUP_ROWS * PANEL_ROWS, 0.0);
            for j0 in (0..n).step_by(K_CHUNK) {
                let len = K_CHUNK.min(n - j0);
                for (g, tile) in sums.chunks_exact_mut(GROUP_ROWS * PANEL_ROWS).enumerate() {
                    let values = &values_by_dim[g * n_kv + j0..][..len];
                    micro(
                        values,
                        &p[j0..j0 + len],
                        TileOut::in_slice(tile, PANEL_ROWS),
                    );
                }
            }
            for (i, out) in out.chunks_exact_mut(head_dim).take(n_r).enumerate() {
                for (d, o) in out.iter_mut().enumerate() {
                    *o = sums[d * PANEL_ROWS + i] * inv_sums[i];
                }
            }
        },
    );

    let mut out = vec![0f32; rows * q.cols];
    for (h, head) in by_head
        .chunks_exact(panels * PANEL_ROWS * head_dim)
        .enumerate()
    {
        for (r, src) in head.chunks_exact(head_dim).take(rows).enumerate() {
            out[r * q.cols + h * head_dim..][..head_dim].copy_from_slice(src);
        }
    }
    CpuTensor::new(out, rows, q.cols)
}

/// One KV head's keys and values laid out for [`attend_batched`]'s micro-kernel calls, as
/// groups of [`GROUP_ROWS`] rows, the broadcast operand (zero-padded at the end):
/// - `keys_by_group[g·head_dim + d][s]` = dimension `d` of key `g·GROUP_ROWS + s`;
/// - `values_by_dim[g·n_kv + j][s]` = dimension `g·GROUP_ROWS + s` of value `j`.
#[derive(Default)]
struct KvPanels {
    keys_by_group: Vec<GroupColumn>,
    values_by_dim: Vec<GroupColumn>,
}

/// A worker's buffers for [`attend_batched`], kept across its units.
#[derive(Default)]
struct UnitScratch {
    queries: Vec<PanelColumn>,
    scores: Vec<PanelColumn>,
    /// `Oᵀ`, `[dims (whole groups), PANEL_ROWS]`.
    sums: Vec<f32>,
}

pub(super) fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::super::vector::{all_vector_ops, test_data as data};
    use super::*;
    use crate::backend::reference::attention_f64;

    #[test]
    fn decode_tasks_share_a_kv_head_while_every_thread_has_four() {
        // LLaVA-1.6-Mistral (32 query heads, 8 KV heads): 4 per task on 2 threads, 2 on 4,
        // one on 8 or more.
        assert_eq!(heads_per_task(32, 4, 1, 2), 4);
        assert_eq!(heads_per_task(32, 4, 1, 4), 2);
        assert_eq!(heads_per_task(32, 4, 1, 8), 1);
        assert_eq!(heads_per_task(32, 4, 1, 16), 1);
        // TinyLlama (32 and 4): 4 of the group of 8 on 2 threads; 2 rows double the tasks.
        assert_eq!(heads_per_task(32, 8, 1, 2), 4);
        assert_eq!(heads_per_task(32, 8, 2, 2), 8);
        // One query head per KV head (LLaVA-1.5's Vicuna): always one.
        assert_eq!(heads_per_task(32, 1, 1, 1), 1);
        // A group that is not a power of two: divisors only.
        assert_eq!(heads_per_task(12, 6, 1, 1), 3);
    }

    /// The batched path with every pair of vector primitives and micro-kernel this CPU has,
    /// against f64, over f32 and f16 keys and values: whole and partial panels, key counts
    /// past one chunk of the second GEMM (`K_CHUNK`) and not a multiple of the key groups,
    /// head sizes not a multiple of the dimension groups, grouped heads, causal rows after
    /// cached positions, and full attention.
    #[test]
    fn batched_attention_matches_f64_on_every_available_path() {
        let cases = [
            // (rows, n_kv, causal start, n_heads, n_kv_heads, head_dim)
            (40, 40, None, 2, 2, 64),
            (37, 327, Some(290), 4, 2, 16),
            (5, 5, Some(0), 3, 1, 8),
            (21, 300, None, 2, 1, 12),
        ];
        let pool = Pool::new(3);
        for (rows, n_kv, causal_start, n_heads, n_kv_heads, head_dim) in cases {
            let heads = Heads {
                n_heads,
                n_kv_heads,
                head_dim,
            };
            let kv_dim = n_kv_heads * head_dim;
            let q = CpuTensor::new(
                data(rows * n_heads * head_dim, 31),
                rows,
                n_heads * head_dim,
            );
            let (k, v) = (data(n_kv * kv_dim, 32), data(n_kv * kv_dim, 33));
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k.iter().map(|&x| f16::from_f32(x)).collect(),
                v.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let visible = |r: usize| causal_start.map_or(n_kv, |s: usize| s + r + 1);
            let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&x| x as f64).collect() };
            let wide16 = |x: &[f16]| -> Vec<f64> { x.iter().map(|x| x.to_f64()).collect() };
            let want32 = attention_f64(&q.data, &wide(&k), &wide(&v), heads, visible);
            let want16 = attention_f64(&q.data, &wide16(&k16), &wide16(&v16), heads, visible);
            for ops in all_vector_ops() {
                for micro in gemm::micro_kernels() {
                    let kv32 = Kv::rows(&k, &v, heads);
                    let kv16 = Kv::rows(&k16, &v16, heads);
                    let got32 = attend_batched(&pool, &q, kv32, heads, causal_start, (&ops, micro));
                    let got16 = attend_batched(&pool, &q, kv16, heads, causal_start, (&ops, micro));
                    for (got, want, what) in [(got32, &want32, "f32"), (got16, &want16, "f16")] {
                        for (i, (&g, &w)) in got.data.iter().zip(want).enumerate() {
                            assert!(
                                (g as f64 - w).abs() <= 1e-5,
                                "{what} rows={rows} n_kv={n_kv} d={head_dim} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
