//! The CPU backend's operations against straightforward f64 references written here: matmul
//! for every weight type, RoPE as complex rotation, attention with explicit head repetition and
//! masks, norms and activations.

use llava_runtime::backend::reference::attention_f64;
use llava_runtime::backend::{Backend, CpuBackend, Heads, KvType, Rope};
use llava_runtime::quant::{self, GgmlType, DOT_ROWS, TILE_ROWS};

mod common;
use common::*;

#[test]
fn matmul_equals_the_reference_dot_of_every_row_pair_for_every_type() {
    // 21 rows: five tiles of 4 and one row left over (where the path has a wide kernel, ARM's
    // for Q4_0, Q8_0, Q4_K and Q6_K or AVX-512 VNNI's for Q4_K and Q6_K, a wide tile of 16, a
    // tile of 4 and the row; with 104 outputs, 13 groups, VNNI's takes two groups a call and
    // one at a block's end); two blocks of the output transpose.
    // And one row (decode): 101 outputs make groups of the row kernels and rows left over
    // in every worker's run, with 1 and 3 threads. 104 outputs are whole groups of 8 rows,
    // which the CPU backend interleaves where the path has kernels for that (Q4_0 on x86):
    // decode, 3 rows one at a time, and a widened batch read from the interleaved copy.
    let k = 512;
    for (n_out, rows) in [(101, 21), (101, 1), (104, 1), (104, 3), (104, 21)] {
        matmul_equals_the_reference_dot(k, n_out, rows);
    }
}

fn matmul_equals_the_reference_dot(k: usize, n_out: usize, rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<_> = WEIGHT_TYPES
        .iter()
        .enumerate()
        .map(|(i, &ty)| {
            let name: &'static str = Box::leak(format!("w{i}").into_boxed_str());
            (
                name,
                ty,
                vec![k as u64, n_out as u64],
                random(k * n_out, i as u64),
            )
        })
        .collect();
    let file = gguf(dir.path(), &tensors);
    let x_data = random(rows * k, 99);
    for threads in [1, 3] {
        let b = CpuBackend::new(threads);
        let x = b.upload(x_data.clone(), rows, k);
        for (name, ty, _, _) in &tensors {
            let w = b.load_weight(&file, name).unwrap();
            let y = b.download(&b.matmul(&x, &w)).unwrap();
            assert_eq!(y.len(), rows * n_out);

            // Reference 1, exact: the activation row quantized to the paired format by the
            // scalar reference quantizer (every SIMD quantizer writes the same bytes), then the
            // kernel of this process's CPU path (`LLAVA_CPU`, else the best the CPU has) with
            // each weight row: the tile kernel for the rows in whole tiles where the path has
            // one, else the dot, one pair at a time. The matmul must give these bits whatever
            // its threading and blocking.
            let act_ty = match ty {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => *ty,
                GgmlType::Q4_1 | GgmlType::Q5_1 => GgmlType::Q8_1,
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
                _ => GgmlType::Q8K,
            };
            let kernels = quant::row_kernels(*ty, quant::cpu_path()).unwrap();
            assert_eq!(kernels.act_type, act_ty, "{ty}");
            // Reference 2, close: the scalar reference dot on the same bytes. A SIMD dot sums
            // the same exact integer block sums in another order: within 1e-5 of Σ|w·a|
            // (tests/simd_kernels.rs bounds it by the terms themselves).
            // Reference 3, approximate: f64 matmul of the dequantized weights and unrounded
            // activations; rounding the activations costs at most a few percent of the terms.
            let wd = dequantized(&file, name);
            let w_data = file.tensor(name).unwrap().data;
            let w_row = ty.row_bytes(k as u64).unwrap() as usize;
            let a_bytes = act_ty.row_bytes(k as u64).unwrap() as usize;
            let act_words: Vec<Vec<u32>> = (0..rows)
                .map(|r| {
                    let mut aw = vec![0u32; a_bytes.div_ceil(4)];
                    let a = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut aw)[..a_bytes];
                    quant::quantize_row(act_ty, &x_data[r * k..(r + 1) * k], a).unwrap();
                    aw
                })
                .collect();
            let act = |r: usize| &bytemuck::cast_slice::<u32, u8>(&act_words[r])[..a_bytes];
            let tiled_rows = match kernels.dot_tile {
                Some(_) => rows / TILE_ROWS * TILE_ROWS,
                None => 0,
            };
            // Widened batches (F16 on AVX2) sum the same products in the f32 micro-kernel's
            // order, every row of the batch: they are held to references 2 and 3 only.
            let widened_rows = if kernels.widen_batches { rows } else { 0 };
            for r in 0..rows {
                let xr = &x_data[r * k..(r + 1) * k];
                let a = act(r);
                let mut ad = vec![0f32; k];
                quant::dequantize_row(act_ty, a, &mut ad).unwrap();
                for j in 0..n_out {
                    let got = y[r * n_out + j];
                    let w_bytes = &w_data[j * w_row..(j + 1) * w_row];
                    let want = match kernels.dot_tile {
                        Some(tile) if r < tiled_rows => {
                            let first = r / TILE_ROWS * TILE_ROWS;
                            tile(w_bytes, std::array::from_fn(|i| act(first + i)))[r - first]
                        }
                        _ => (kernels.dot)(w_bytes, a),
                    };
                    // Rows left to the row kernels (DOT_ROWS weight rows at a time) sum in
                    // their own order too, and so does every row of interleaved weights (whole
                    // groups of DOT_ROWS rows, where the path interleaves the type): references
                    // 2 and 3.
                    let interleaved =
                        kernels.interleaved.is_some() && n_out.is_multiple_of(DOT_ROWS);
                    let by_rows = interleaved || (kernels.dot_rows.is_some() && r >= tiled_rows);
                    assert!(
                        r < widened_rows || by_rows || got.to_bits() == want.to_bits(),
                        "{ty} r{r} j{j}: {got} vs {want} ({} dot)",
                        kernels.dot_path
                    );

                    let scalar = reference_dot(*ty, w_bytes, a);
                    let terms: f64 = wd[j * k..(j + 1) * k]
                        .iter()
                        .zip(&ad)
                        .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
                        .sum();
                    assert!(
                        (f64::from(got) - f64::from(scalar)).abs() <= 1e-5 * terms,
                        "{ty} r{r} j{j}: {got} vs scalar {scalar}"
                    );

                    let wr = &wd[j * k..(j + 1) * k];
                    let exact: f64 = wr.iter().zip(xr).map(|(&p, &q)| p as f64 * q as f64).sum();
                    let norm: f64 = wr.iter().zip(xr).map(|(&p, &q)| (p * q).abs() as f64).sum();
                    let got = got as f64;
                    assert!(
                        (got - exact).abs() <= 0.02 * norm,
                        "{ty} r{r} j{j}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

fn reference_dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    use llava_runtime::quant::*;
    fn dot<W: VecDot>(w: &[u8], a: &[u8]) -> f32 {
        W::vec_dot(bytemuck::cast_slice(w), bytemuck::cast_slice(a))
    }
    match ty {
        GgmlType::F32 => dot::<f32>(w, a),
        GgmlType::F16 => dot::<half::f16>(w, a),
        GgmlType::BF16 => dot::<half::bf16>(w, a),
        GgmlType::Q4_0 => dot::<BlockQ4_0>(w, a),
        GgmlType::Q4_1 => dot::<BlockQ4_1>(w, a),
        GgmlType::Q5_0 => dot::<BlockQ5_0>(w, a),
        GgmlType::Q5_1 => dot::<BlockQ5_1>(w, a),
        GgmlType::Q8_0 => dot::<BlockQ8_0>(w, a),
        GgmlType::Q2K => dot::<BlockQ2K>(w, a),
        GgmlType::Q3K => dot::<BlockQ3K>(w, a),
        GgmlType::Q4K => dot::<BlockQ4K>(w, a),
        GgmlType::Q5K => dot::<BlockQ5K>(w, a),
        GgmlType::Q6K => dot::<BlockQ6K>(w, a),
        other => panic!("no dot for {other}"),
    }
}

#[test]
fn get_rows_returns_dequantized_embedding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (dim, n) = (64, 10);
    let file = gguf(
        dir.path(),
        &[(
            "emb",
            GgmlType::Q8_0,
            vec![dim as u64, n as u64],
            random(dim * n, 5),
        )],
    );
    let b = CpuBackend::new(2);
    let w = b.load_weight(&file, "emb").unwrap();
    let rows = b.download(&b.get_rows(&w, &[7, 0, 7])).unwrap();
    let all = dequantized(&file, "emb");
    assert_eq!(&rows[..dim], &all[7 * dim..8 * dim]);
    assert_eq!(&rows[dim..2 * dim], &all[..dim]);
    assert_eq!(&rows[2 * dim..], &all[7 * dim..8 * dim]);
}

#[test]
fn gather_slice_and_concat_move_whole_rows() {
    let b = CpuBackend::new(1);
    let (rows, cols) = (5, 3);
    let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let x = b.upload(data.clone(), rows, cols);
    let row = |r: usize| data[r * cols..(r + 1) * cols].to_vec();
    // Any order, repeats allowed, as LLaVA-1.6's layout repeats its newline row.
    let order = [4u32, 0, 4, 2];
    let gathered = b.gather_rows(&x, &order);
    assert_eq!(b.shape(&gathered), (4, cols));
    let want: Vec<f32> = order.iter().flat_map(|&r| row(r as usize)).collect();
    assert_eq!(b.download(&gathered).unwrap(), want);
    assert_eq!(b.shape(&b.gather_rows(&x, &[])), (0, cols));
    let sliced = b.slice_rows(&x, 1, 2);
    assert_eq!(b.download(&sliced).unwrap(), [row(1), row(2)].concat());
    let joined = b.concat_rows(&[&sliced, &gathered]);
    assert_eq!(
        b.download(&joined).unwrap(),
        [row(1), row(2), want].concat()
    );
}

#[test]
fn rope_is_a_rotation_of_adjacent_pairs_by_position_times_frequency() {
    let b = CpuBackend::new(1);
    let (n_heads, head_dim) = (3, 8);
    let rope = Rope {
        n_rot: head_dim,
        base: 10_000.0,
        freq_scale: 0.5,
    };
    // Rows at positions start, start + 1, ...: a prompt's, or a decode step's one row.
    for (start, rows) in [(0, 3), (17, 4), (300, 1)] {
        let data = random(rows * n_heads * head_dim, start as u64 + 1);
        let x = b.upload(data.clone(), rows, n_heads * head_dim);
        let y = b.download(&b.rope(&x, start, n_heads, rope)).unwrap();
        for r in 0..rows {
            let pos = start + r;
            for h in 0..n_heads {
                for i in 0..head_dim / 2 {
                    let at = r * n_heads * head_dim + h * head_dim + 2 * i;
                    // (x0 + i·x1) · e^{iθ}, θ = pos · scale · base^(-2i/d), in f64.
                    let theta =
                        pos as f64 * 0.5 * 10_000f64.powf(-((2 * i) as f64) / head_dim as f64);
                    let (x0, x1) = (data[at] as f64, data[at + 1] as f64);
                    let want = (
                        x0 * theta.cos() - x1 * theta.sin(),
                        x0 * theta.sin() + x1 * theta.cos(),
                    );
                    assert!((y[at] as f64 - want.0).abs() < 2e-5, "pos {pos} pair {i}");
                    assert!(
                        (y[at + 1] as f64 - want.1).abs() < 2e-5,
                        "pos {pos} pair {i}"
                    );
                }
            }
        }
    }
}

/// [`attention_f64`] of f32 keys and values.
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: Heads,
    visible: impl Fn(usize) -> usize,
) -> Vec<f64> {
    let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&x| x as f64).collect() };
    attention_f64(q, &wide(k), &wide(v), heads, visible)
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn cached_causal_attention_with_grouped_heads_matches_naive_attention() {
    let heads = Heads {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 16,
    };
    let (q_dim, kv_dim, n) = (6 * 16, 2 * 16, 13);
    let (q, k, v) = (
        random(n * q_dim, 1),
        random(n * kv_dim, 2),
        random(n * kv_dim, 3),
    );
    // An f16 cache holds the keys and values rounded to f16; attention over it must equal
    // attention over those rounded values, computed in f64.
    let rounded =
        |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() };
    let want_f32 = naive_attention(&q, &k, &v, heads, |r| r + 1);
    let want_f16 = naive_attention(&q, &rounded(&k), &rounded(&v), heads, |r| r + 1);
    for (threads, kv_type) in [(1, KvType::F32), (2, KvType::F32), (2, KvType::F16)] {
        let want = match kv_type {
            KvType::F32 => &want_f32,
            KvType::F16 => &want_f16,
        };
        let b = CpuBackend::new(threads);
        // Prefills and single-row steps in any order give what one pass over all 13 rows
        // would: batches of 4 or more rows take the batched path (whole blocks and a
        // partial one, at position 0 and after cached rows), single rows the decode path.
        for schedule in [
            &[(0, 6), (6, 1), (7, 1), (8, 5)][..],
            &[(0, 1), (1, 4), (5, 8)][..],
        ] {
            let mut cache = b
                .new_kv_cache(2, 16, heads.n_kv_heads, heads.head_dim, kv_type)
                .unwrap();
            let mut got = Vec::new();
            for &(start, len) in schedule {
                let t = |d: &[f32], w: usize| {
                    b.upload(d[start * w..(start + len) * w].to_vec(), len, w)
                };
                let out = b.attention_cached(
                    &t(&q, q_dim),
                    &t(&k, kv_dim),
                    &t(&v, kv_dim),
                    &mut cache,
                    1,
                    start,
                    heads,
                );
                got.extend(b.download(&out).unwrap());
            }
            assert_close(
                &got,
                want,
                1e-5,
                &format!("cached attention, {kv_type:?} cache, {schedule:?}"),
            );
        }
    }
    // And the f16 cache really rounds: the exact values are further off than the bound.
    let off = want_f32
        .iter()
        .zip(&want_f16)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(off > 1e-5, "f16 rounding changed nothing ({off:e})");
}

#[test]
fn full_attention_sees_every_row() {
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 4,
        head_dim: 8,
    };
    let (dim, n) = (32, 7);
    let (q, k, v) = (random(n * dim, 4), random(n * dim, 5), random(n * dim, 6));
    let want = naive_attention(&q, &k, &v, heads, |_| n);
    let b = CpuBackend::new(2);
    let up = |d: &Vec<f32>| b.upload(d.clone(), n, dim);
    let got = b
        .download(&b.attention(&up(&q), &up(&k), &up(&v), heads))
        .unwrap();
    assert_close(&got, &want, 1e-5, "attention");
}

/// Norms, bias and residual adds (the row-wise ops) against their definitions: 3 rows (done on
/// the calling thread) and 700 (over 2^15 elements: done on the pool's workers).
#[test]
fn norms_and_adds_match_their_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 48;
    let (g, beta) = (random(dim, 7), random(dim, 8));
    let file = gguf(
        dir.path(),
        &[
            ("g", GgmlType::F32, vec![dim as u64], g.clone()),
            ("beta", GgmlType::F32, vec![dim as u64], beta.clone()),
        ],
    );
    for (rows, threads) in [(3, 1), (700, 2)] {
        let b = CpuBackend::new(threads);
        let (gw, bw) = (
            b.load_weight(&file, "g").unwrap(),
            b.load_weight(&file, "beta").unwrap(),
        );
        let data: Vec<f32> = random(rows * dim, 9)
            .iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        let x = b.upload(data.clone(), rows, dim);
        let rms = b.download(&b.rms_norm(&x, &gw, 1e-5)).unwrap();
        let ln = b.download(&b.layer_norm(&x, &gw, &bw, 1e-5)).unwrap();
        let (mut want_rms, mut want_ln) = (Vec::new(), Vec::new());
        for row in data.chunks(dim) {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
            let mean = row.iter().sum::<f64>() / dim as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
            for (i, v) in row.iter().enumerate() {
                want_rms.push(v / (ms + 1e-5).sqrt() * g[i] as f64);
                want_ln.push((v - mean) / (var + 1e-5).sqrt() * g[i] as f64 + beta[i] as f64);
            }
        }
        assert_close(&rms, &want_rms, 1e-5, &format!("rms_norm, {rows} rows"));
        assert_close(&ln, &want_ln, 1e-5, &format!("layer_norm, {rows} rows"));
        // Exact: one f32 addition per element.
        let other = random(rows * dim, 10);
        let sum = b
            .download(&b.add(x.clone(), &b.upload(other.clone(), rows, dim)))
            .unwrap();
        let want: Vec<f32> = data.iter().zip(&other).map(|(a, b)| a + b).collect();
        assert_eq!(sum, want, "add, {rows} rows");
        let biased = b.download(&b.add_bias(x.clone(), &bw)).unwrap();
        let want: Vec<f32> = data
            .chunks(dim)
            .flat_map(|row| row.iter().zip(&beta).map(|(v, b)| v + b))
            .collect();
        assert_eq!(biased, want, "add_bias, {rows} rows");
    }
}

/// Norm weights and biases stored as F16 (llama.cpp writes them F32, but a file may not) are
/// widened, not refused mid-forward: the fuzzers found the F32-only read panicking.
#[test]
fn norms_and_biases_stored_as_f16_are_widened() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 48;
    let (g, beta) = (random(dim, 11), random(dim, 12));
    let file = gguf(
        dir.path(),
        &[
            ("g", GgmlType::F16, vec![dim as u64], g.clone()),
            ("beta", GgmlType::F16, vec![dim as u64], beta.clone()),
            ("g32", GgmlType::F32, vec![dim as u64], dequantized_f16(&g)),
            (
                "beta32",
                GgmlType::F32,
                vec![dim as u64],
                dequantized_f16(&beta),
            ),
        ],
    );
    let b = CpuBackend::new(1);
    let w = |name: &str| b.load_weight(&file, name).unwrap();
    let x = b.upload(random(2 * dim, 13), 2, dim);
    assert_eq!(
        b.download(&b.rms_norm(&x, &w("g"), 1e-5)).unwrap(),
        b.download(&b.rms_norm(&x, &w("g32"), 1e-5)).unwrap()
    );
    assert_eq!(
        b.download(&b.layer_norm(&x, &w("g"), &w("beta"), 1e-5))
            .unwrap(),
        b.download(&b.layer_norm(&x, &w("g32"), &w("beta32"), 1e-5))
            .unwrap()
    );
    assert_eq!(
        b.download(&b.add_bias(x.clone(), &w("beta"))).unwrap(),
        b.download(&b.add_bias(x, &w("beta32"))).unwrap()
    );
}

fn dequantized_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

#[test]
fn activations_match_published_values() {
    let b = CpuBackend::new(1);
    let xs = [-3.0f32, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0];
    let x = b.upload(xs.to_vec(), 1, xs.len());
    // x·Φ(x), with Φ from the normal table.
    let phi = [
        0.0013498980316301,
        0.15865525393145707,
        0.3085375387259869,
        0.5,
        0.6914624612740131,
        0.8413447460685429,
        0.9772498680518208,
    ];
    let gelu: Vec<f64> = xs.iter().zip(phi).map(|(&x, p)| x as f64 * p).collect();
    assert_close(
        &b.download(&b.gelu(x.clone())).unwrap(),
        &gelu,
        1e-6,
        "gelu",
    );
    let quick: Vec<f64> = xs
        .iter()
        .map(|&x| x as f64 / (1.0 + (-1.702 * x as f64).exp()))
        .collect();
    assert_close(
        &b.download(&b.quick_gelu(x.clone())).unwrap(),
        &quick,
        1e-6,
        "quick_gelu",
    );
    let up = b.upload(vec![2.0; xs.len()], 1, xs.len());
    let silu: Vec<f64> = xs
        .iter()
        .map(|&x| 2.0 * x as f64 / (1.0 + (-x as f64).exp()))
        .collect();
    assert_close(
        &b.download(&b.silu_mul(x.clone(), &up)).unwrap(),
        &silu,
        1e-6,
        "silu_mul",
    );
}

#[test]
fn loading_refuses_types_without_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let file = gguf(
        dir.path(),
        &[("a", GgmlType::Q8K, vec![256, 1], random(256, 1))],
    );
    let b = CpuBackend::new(1);
    let e = b.load_weight(&file, "a").unwrap_err();
    assert!(e.to_string().contains("\"a\" has type q8_K"), "{e}");
    let e = b.load_weight(&file, "nope").unwrap_err();
    assert!(e.to_string().contains("\"nope\" is missing"), "{e}");
}
