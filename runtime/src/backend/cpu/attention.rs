//! Scaled dot-product attention and the KV cache, in f32.
//!
//! One work unit per (row, head) computes all its scores, a softmax and the weighted sum of
//! values, with the SIMD dot and axpy of `vector.rs`. Rows × heads is thousands of units in
//! prefill and the vision tower, and 32 (the heads) in decode: enough for the cores of the
//! machines we target, so there is no split over the keys yet.

use rayon::prelude::*;

use half::{f16, slice::HalfFloatSliceExt};

use super::vector::{vector_ops, CacheValue, VectorOps, SCORE_ROWS};
use super::CpuTensor;
use crate::backend::Heads;

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Exact: what the model computed.
    F32,
    /// Half the memory and half the bytes read per decode step, as llama.cpp's default cache
    /// (keys and values rounded to nearest-even f16; their magnitudes are far inside its range).
    #[default]
    F16,
}

impl KvType {
    /// The name `--kv-type` accepts.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (known: f16, f32)")),
        }
    }
}

/// One layer's keys or values, `[n_ctx, kv_dim]`, in the cache's element type. Held as plain
/// integers for f16 so that the zeroed allocation comes from the allocator's zeroed pages.
enum Store {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Store {
    fn zeroed(ty: KvType, n: usize) -> Store {
        // `vec![0; n]` of a primitive asks the allocator for zeroed memory: the OS maps the
        // pages lazily, so memory grows with the positions actually used. (Cloning a layer, or
        // `vec![f16::ZERO; n]`, would touch every page: 4.2 GB resident at once for a 7B at
        // 4096 positions in f32.)
        match ty {
            KvType::F32 => Store::F32(vec![0f32; n]),
            KvType::F16 => Store::F16(vec![0u16; n]),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Store::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            Store::F16(v) => {
                let dst: &mut [f16] = bytemuck::cast_slice_mut(&mut v[at..at + src.len()]);
                dst.convert_from_f32_slice(src);
            }
        }
    }

    fn prefix(&self, n: usize) -> KvSlice<'_> {
        match self {
            Store::F32(v) => KvSlice::F32(&v[..n]),
            Store::F16(v) => KvSlice::F16(bytemuck::cast_slice(&v[..n])),
        }
    }
}

/// Keys or values as attention reads them.
#[derive(Clone, Copy)]
pub(super) enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Keys and values of every layer, `[n_ctx, n_kv_heads · head_dim]` each, preallocated.
pub struct CpuKvCache {
    n_ctx: usize,
    kv_dim: usize,
    kv_type: KvType,
    keys: Vec<Store>,
    values: Vec<Store>,
}

impl CpuKvCache {
    pub(super) fn new(n_layers: usize, n_ctx: usize, kv_dim: usize, kv_type: KvType) -> Self {
        let zeroed = || {
            (0..n_layers)
                .map(|_| Store::zeroed(kv_type, n_ctx * kv_dim))
                .collect()
        };
        CpuKvCache {
            n_ctx,
            kv_dim,
            kv_type,
            keys: zeroed(),
            values: zeroed(),
        }
    }

    /// Positions the cache can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// How keys and values are stored.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Writes rows of `k` and `v` at positions `start..`.
    pub(super) fn store(&mut self, layer: usize, start: usize, k: &CpuTensor, v: &CpuTensor) {
        assert_eq!((k.cols, v.cols), (self.kv_dim, self.kv_dim), "KV width");
        assert!(
            start + k.rows <= self.n_ctx,
            "KV cache of {} positions overflows at {}",
            self.n_ctx,
            start + k.rows
        );
        self.keys[layer].write(start * self.kv_dim, &k.data);
        self.values[layer].write(start * self.kv_dim, &v.data);
    }

    /// Keys and values of positions `0..len` of `layer`.
    pub(super) fn layer(&self, layer: usize, len: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        let n = len * self.kv_dim;
        (self.keys[layer].prefix(n), self.values[layer].prefix(n))
    }
}

/// An element type attention can read keys and values in.
pub(super) trait KvElement: CacheValue {
    /// [`VectorOps::decode_head`] for this element type; `scores` is `visible` long.
    #[allow(clippy::too_many_arguments)]
    fn decode_head(
        ops: &VectorOps,
        q: &[f32],
        keys: &[Self],
        values: &[Self],
        stride: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    );
}

impl KvElement for f32 {
    fn decode_head(
        ops: &VectorOps,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        stride: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        (ops.decode_head)(q, keys, values, stride, scores.len(), scale, scores, out)
    }
}

impl KvElement for f16 {
    fn decode_head(
        ops: &VectorOps,
        q: &[f32],
        keys: &[f16],
        values: &[f16],
        stride: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        (ops.decode_head_f16)(q, keys, values, stride, scores.len(), scale, scores, out)
    }
}

/// [`attend`] over keys and values of either element type.
pub(super) fn attend_cached(
    q: &CpuTensor,
    keys: KvSlice<'_>,
    values: KvSlice<'_>,
    heads: Heads,
    start: usize,
) -> CpuTensor {
    match (keys, values) {
        (KvSlice::F32(k), KvSlice::F32(v)) => attend(q, k, v, heads, Some(start)),
        (KvSlice::F16(k), KvSlice::F16(v)) => attend(q, k, v, heads, Some(start)),
        _ => unreachable!("keys and values are stored alike"),
    }
}

/// Attention of `q` `[rows, n_heads·head_dim]` over `keys`/`values` `[n_kv, n_kv_heads·head_dim]`.
/// With `causal_start = Some(s)`, row `r` is at position `s + r` and sees positions `0..=s + r`;
/// with `None` every row sees every position.
pub(super) fn attend<T: KvElement>(
    q: &CpuTensor,
    keys: &[T],
    values: &[T],
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
    let kv_dim = n_kv_heads * head_dim;
    let n_kv = keys.len() / kv_dim;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let ops = vector_ops();
    if q.rows >= SCORE_ROWS {
        return attend_batched(q, keys, values, heads, causal_start, &ops);
    }

    let mut out = vec![0f32; q.rows * q.cols];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(unit, out)| {
            let (r, h) = (unit / n_heads, unit % n_heads);
            let kv_off = (h / group) * head_dim;
            let qh = &q.row(r)[h * head_dim..][..head_dim];
            let visible = causal_start.map_or(n_kv, |s| (s + r + 1).min(n_kv));
            let mut scores = vec![0f32; visible];
            T::decode_head(
                &ops,
                qh,
                &keys[kv_off..],
                &values[kv_off..],
                kv_dim,
                scale,
                &mut scores,
                out,
            );
        });
    CpuTensor::new(out, q.rows, q.cols)
}

/// [`attend`] for a batch of query rows (prefill, the vision tower): each KV head's keys are
/// transposed once to `[head_dim, n_kv]` (and values widened to f32), then each head takes its
/// query rows [`SCORE_ROWS`] at a time, computing their scores with the keys along the SIMD
/// lanes. Work units are (head, block of rows), so the causal triangle's uneven rows spread
/// over the threads.
fn attend_batched<T: KvElement>(
    q: &CpuTensor,
    keys: &[T],
    values: &[T],
    heads: Heads,
    causal_start: Option<usize>,
    ops: &VectorOps,
) -> CpuTensor {
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    let kv_dim = n_kv_heads * head_dim;
    let n_kv = keys.len() / kv_dim;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let rows = q.rows;

    // Per KV head: keys transposed, values as f32 rows of head_dim.
    let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..n_kv_heads)
        .into_par_iter()
        .map(|g| {
            let mut kt = vec![0f32; head_dim * n_kv];
            let mut v = vec![0f32; n_kv * head_dim];
            for j in 0..n_kv {
                let at = j * kv_dim + g * head_dim;
                for (d, &k) in keys[at..at + head_dim].iter().enumerate() {
                    kt[d * n_kv + j] = k.widen();
                }
                for (o, &x) in v[j * head_dim..][..head_dim].iter_mut().zip(&values[at..]) {
                    *o = x.widen();
                }
            }
            (kt, v)
        })
        .collect();

    // Output by head, rows padded to whole blocks so no block straddles two heads.
    let padded = rows.div_ceil(SCORE_ROWS) * SCORE_ROWS;
    let mut by_head = vec![0f32; n_heads * padded * head_dim];
    by_head
        .par_chunks_mut(SCORE_ROWS * head_dim)
        .enumerate()
        .for_each(|(unit, out)| {
            let (h, r0) = (
                unit / (padded / SCORE_ROWS),
                unit % (padded / SCORE_ROWS) * SCORE_ROWS,
            );
            let (kt, v) = &kv[h / group];
            // Rows past the end repeat the last row; their output is dropped.
            let q_rows: [&[f32]; SCORE_ROWS] =
                std::array::from_fn(|i| &q.row((r0 + i).min(rows - 1))[h * head_dim..][..head_dim]);
            let visible = |r: usize| causal_start.map_or(n_kv, |s| (s + r + 1).min(n_kv));
            let n = visible((r0 + SCORE_ROWS - 1).min(rows - 1));
            let mut scores = vec![0f32; SCORE_ROWS * n];
            (ops.scores)(q_rows, kt, n_kv, n, &mut scores);
            for (i, (out, scores)) in out
                .chunks_exact_mut(head_dim)
                .zip(scores.chunks_exact_mut(n.max(1)))
                .enumerate()
            {
                if r0 + i >= rows {
                    break;
                }
                let seen = visible(r0 + i);
                let p = &mut scores[..seen];
                (ops.softmax)(p, scale);
                (ops.weighted_sum)(p, &v[..seen * head_dim], out);
            }
        });

    let mut out = vec![0f32; rows * q.cols];
    for (h, head) in by_head.chunks_exact(padded * head_dim).enumerate() {
        for (r, src) in head.chunks_exact(head_dim).take(rows).enumerate() {
            out[r * q.cols + h * head_dim..][..head_dim].copy_from_slice(src);
        }
    }
    CpuTensor::new(out, rows, q.cols)
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
