//! Reference versions of the backend's ops in f64, plain loops with no reuse of the kernels'
//! code: what the tests compare the CPU backend (and any other backend) against.

use super::Heads;

/// Scaled dot-product attention in f64: `q` is `[rows, n_heads·head_dim]`, `k` and `v` are
/// `[positions, n_kv_heads·head_dim]`; query head `h` reads KV head `h / (n_heads /
/// n_kv_heads)`, row `r` sees positions `0..visible(r)`; scale `1/sqrt(head_dim)`. The result
/// is `[rows, n_heads·head_dim]`.
pub fn attention_f64(
    q: &[f32],
    k: &[f64],
    v: &[f64],
    heads: Heads,
    visible: impl Fn(usize) -> usize,
) -> Vec<f64> {
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    let kv_dim = n_kv_heads * head_dim;
    let mut out = vec![0f64; q.len()];
    for (r, row) in q.chunks_exact(n_heads * head_dim).enumerate() {
        for h in 0..n_heads {
            let kv = h / (n_heads / n_kv_heads) * head_dim;
            let qh = &row[h * head_dim..][..head_dim];
            let scores: Vec<f64> = (0..visible(r))
                .map(|j| {
                    let kj = &k[j * kv_dim + kv..][..head_dim];
                    let dot: f64 = qh.iter().zip(kj).map(|(&a, &b)| a as f64 * b).sum();
                    dot / (head_dim as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let o = &mut out[(r * n_heads + h) * head_dim..][..head_dim];
            for (j, e) in e.iter().enumerate() {
                for (o, &vj) in o.iter_mut().zip(&v[j * kv_dim + kv..][..head_dim]) {
                    *o += e / total * vj;
                }
            }
        }
    }
    out
}
