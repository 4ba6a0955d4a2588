//! Scaled dot-product attention and the KV cache, in f32.
//!
//! Straightforward for now: one work unit per (row, head) computes all its scores, a softmax
//! and the weighted sum of values. Split-KV decode and tiled prefill come with the CPU
//! performance work.

use rayon::prelude::*;

use super::CpuTensor;
use crate::backend::Heads;

/// Keys and values of every layer, `[n_ctx, n_kv_heads · head_dim]` each, preallocated.
pub struct CpuKvCache {
    n_ctx: usize,
    kv_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl CpuKvCache {
    pub(super) fn new(n_layers: usize, n_ctx: usize, kv_dim: usize) -> Self {
        // One zeroed allocation per layer: the OS maps the pages lazily, so memory grows with
        // the positions actually used. (`vec![layer; n]` would clone the first layer and
        // touch every page of all the others: 4.2 GB resident at once for a 7B at 4096.)
        let zeroed = || (0..n_layers).map(|_| vec![0f32; n_ctx * kv_dim]).collect();
        CpuKvCache {
            n_ctx,
            kv_dim,
            keys: zeroed(),
            values: zeroed(),
        }
    }

    /// Positions the cache can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
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
        let range = start * self.kv_dim..(start + k.rows) * self.kv_dim;
        self.keys[layer][range.clone()].copy_from_slice(&k.data);
        self.values[layer][range].copy_from_slice(&v.data);
    }

    /// Keys and values of positions `0..len` of `layer`.
    pub(super) fn layer(&self, layer: usize, len: usize) -> (&[f32], &[f32]) {
        let n = len * self.kv_dim;
        (&self.keys[layer][..n], &self.values[layer][..n])
    }
}

/// Attention of `q` `[rows, n_heads·head_dim]` over `keys`/`values` `[n_kv, n_kv_heads·head_dim]`.
/// With `causal_start = Some(s)`, row `r` is at position `s + r` and sees positions `0..=s + r`;
/// with `None` every row sees every position.
pub(super) fn attend(
    q: &CpuTensor,
    keys: &[f32],
    values: &[f32],
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

    let mut out = vec![0f32; q.rows * q.cols];
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(unit, out)| {
            let (r, h) = (unit / n_heads, unit % n_heads);
            let kv_off = (h / group) * head_dim;
            let qh = &q.row(r)[h * head_dim..][..head_dim];
            let visible = causal_start.map_or(n_kv, |s| (s + r + 1).min(n_kv));
            let mut scores: Vec<f32> = (0..visible)
                .map(|j| {
                    let kh = &keys[j * kv_dim + kv_off..][..head_dim];
                    qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            softmax_in_place(&mut scores);
            for (j, &p) in scores.iter().enumerate() {
                let vh = &values[j * kv_dim + kv_off..][..head_dim];
                out.iter_mut().zip(vh).for_each(|(o, v)| *o += p * v);
            }
        });
    CpuTensor::new(out, q.rows, q.cols)
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
