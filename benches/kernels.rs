//! Kernel benchmarks, scalar against SIMD in one run (issue 7, item 1).
//!
//! - `gemv/<type>/<k>x<n>/<path>`: one activation row times a `[k, n]` weight (n rows of k) through
//!   the public matmul, i.e. activation quantization, threads and the dot kernel, on a weight
//!   memory-mapped from a GGUF file and cold in the caches, as decoding uses it. Throughput is
//!   weight bytes streamed from memory.
//! - `gemm/<type>/<k>x<n>x<rows>/<path>`: a batch of activation rows times a warm weight, as
//!   prefill and the vision tower use it (K-quant tiles, or the widened f32 micro-kernel for the
//!   other types). Throughput is multiply-adds.
//! - `attention/decode|prefill512/<ctx>/<kv>` and `attention/clip/577`: cached causal attention
//!   of LLaMA-7B's heads at 512, 2048 and 4096 positions (f16 and f32 cache), and CLIP-L's;
//!   `attention/decode-gqa/4096/f16`, Mistral-7B's grouped heads.
//! - `memory/read`: the machine's read bandwidth, the ceiling of decode: threads summing
//!   disjoint parts of a 256 MiB buffer (8× the L3 of the development machine). Throughput is
//!   bytes read.
//! - `dot/<type>/<path>`: the raw dot kernel on one 4096-element row (cache-resident); and
//!   `dot/<type>x4/<path>`, the tile kernel (one weight row, `TILE_ROWS` activation rows) where
//!   the path has one. Throughput is weight bytes either way.
//! - `quantize/<type>/<path>`: one 4096-element activation row.
//! - `interleaved/<type>/x4|wide/<path>`: the batch kernels of interleaved weights alone
//!   (cache-resident, one thread): 16 weight rows against 16 activation rows, by the 4-row
//!   kernel and by the path's wide kernel where it has one. Throughput is multiply-adds.
//!
//! `<path>` is every path the CPU can run: `scalar`, `avx2`, `avx-vnni`, `avx512`,
//! `avx512-vnni`, `neon`, `neon-dotprod` (`quant::set_cpu_path`, or `quant::row_kernels` for
//! the raw kernels). Weights are random rows quantized by the reference quantizers.
//!
//! `cargo bench --bench kernels` (about 3 minutes on 2 cores); `-- gemv/q4_0` to filter.
//! Threads: `LLAVA_BENCH_THREADS`, default one per physical core.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llava_runtime::backend::{Backend, CpuBackend, Heads, KvType};
use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter};
use llava_runtime::quant::{self, CpuPath, GgmlType, DOT_ROWS, TILE_ROWS, WIDE_TILE_ROWS};

const TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::F16,
];

/// `(k, n)`: rows of `k` elements, `n` rows (LLaMA-7B's attention and FFN-up shapes).
const SHAPES: [(usize, usize); 2] = [(4096, 4096), (4096, 11008)];

/// Deterministic values in about [-1, 1] (splitmix64).
fn random_row(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = llava_runtime::rng::SplitMix64(seed);
    (0..n).map(|_| rng.next_signed()).collect()
}

/// Bytes aligned for every block struct.
fn aligned(n_bytes: usize) -> Vec<u32> {
    vec![0u32; n_bytes.div_ceil(4)]
}

fn quantized(ty: GgmlType, x: &[f32]) -> Vec<u32> {
    let n_bytes = ty.row_bytes(x.len() as u64).unwrap() as usize;
    let mut words = aligned(n_bytes);
    quant::quantize_row(ty, x, &mut bytemuck::cast_slice_mut(&mut words)[..n_bytes]).unwrap();
    words
}

/// Each weight is stored in enough copies to span this many bytes, and the GEMV bench cycles
/// through them: 3× the 32 MiB L3 of the development machine, so that every call streams its
/// weight from DRAM, as a forward pass does (the ~600 MB of other weights in between evict it).
const COLD_BYTES: usize = 96 << 20;

/// Distinct quantized rows per weight, repeated down its rows: the kernels' speed does not
/// depend on the values, and the reference K-quant quantizer is too slow to fill 100 MB.
const DISTINCT_ROWS: usize = 64;

fn copies(ty: GgmlType, (k, n): (usize, usize)) -> usize {
    let bytes = ty.row_bytes(k as u64).unwrap() as usize * n;
    COLD_BYTES.div_ceil(bytes)
}

fn tensor_name(ty: GgmlType, (k, n): (usize, usize), copy: usize) -> String {
    format!("{ty}_{k}x{n}_{copy}")
}

/// One GGUF file holding the copies of a weight of every type and shape.
fn weights_file(dir: &Path) -> Arc<GgufFile> {
    let weights = TYPES.iter().flat_map(|&ty| {
        SHAPES
            .iter()
            .map(move |&shape| (ty, shape, copies(ty, shape)))
    });
    write_weights(dir, weights)
}

/// A GGUF file holding `copies` copies of a `(k, n)` weight of each type listed.
fn write_weights(
    dir: &Path,
    weights: impl Iterator<Item = (GgmlType, (usize, usize), usize)>,
) -> Arc<GgufFile> {
    let path = dir.join("kernels.gguf");
    let mut w = GgufWriter::new();
    for (ty, shape, copies) in weights {
        let dims = [shape.0 as u64, shape.1 as u64];
        for copy in 0..copies {
            w.add_tensor(&tensor_name(ty, shape, copy), ty, &dims)
                .unwrap();
        }
    }
    let mut rows: Option<(GgmlType, usize, Vec<Vec<u8>>)> = None;
    w.write(&path, |_, decl, out| -> Result<(), GgufWriteError> {
        let (ty, k) = (decl.ty, decl.shape[0] as usize);
        if !matches!(&rows, Some((t, l, _)) if (*t, *l) == (ty, k)) {
            let row_bytes = ty.row_bytes(k as u64).unwrap() as usize;
            let distinct = (0..DISTINCT_ROWS as u64)
                .map(|r| {
                    bytemuck::cast_slice(&quantized(ty, &random_row(r, k)))[..row_bytes].to_vec()
                })
                .collect();
            rows = Some((ty, k, distinct));
        }
        let (_, _, distinct) = rows.as_ref().expect("filled above");
        for r in 0..decl.shape[1] as usize {
            out.write_all(&distinct[r % DISTINCT_ROWS]).unwrap();
        }
        Ok(())
    })
    .unwrap();
    Arc::new(GgufFile::open(&path).unwrap())
}

/// The paths to compare: scalar, and the SIMD paths the CPU has.
fn paths() -> Vec<CpuPath> {
    let paths: Vec<CpuPath> = CpuPath::ALL
        .into_iter()
        .filter(|p| p.is_available())
        .collect();
    if paths.len() < 2 {
        eprintln!("note: only {paths:?} can run on this CPU");
    }
    paths
}

fn gemv(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = weights_file(dir.path());
    let backend = CpuBackend::new(bench_threads());
    eprintln!("gemv: {} threads", backend.threads());
    let mut group = c.benchmark_group("gemv");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for ty in TYPES {
        for shape in SHAPES {
            let weights: Vec<_> = (0..copies(ty, shape))
                .map(|c| {
                    backend
                        .load_weight(&file, &tensor_name(ty, shape, c))
                        .unwrap()
                })
                .collect();
            let x = backend.upload(random_row(7, shape.0), 1, shape.0);
            let bytes = ty.row_bytes(shape.0 as u64).unwrap() * shape.1 as u64;
            group.throughput(Throughput::Bytes(bytes));
            for path in paths() {
                quant::set_cpu_path(path).unwrap();
                let id = BenchmarkId::new(format!("{ty}/{}x{}", shape.0, shape.1), path);
                let mut next = weights.iter().cycle();
                group.bench_function(id, |b| {
                    b.iter(|| backend.matmul(black_box(&x), next.next().expect("cycle")))
                });
            }
        }
    }
    group.finish();
}

/// Activation rows of the GEMM bench: a prompt chunk, or a slice of the 577 CLIP tokens.
const GEMM_ROWS: usize = 128;

/// `gemm/<type>/<k>x<n>x<rows>/<path>`: [`GEMM_ROWS`] activation rows times a `[k, n]` weight,
/// as prefill and the vision tower use it. Throughput is in elements = multiply-adds. The
/// scalar path is left out: at ~1 G multiply-adds per second it would take minutes.
fn gemm(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = weights_file(dir.path());
    let backend = CpuBackend::new(bench_threads());
    let mut group = c.benchmark_group("gemm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let shape = SHAPES[0];
    for ty in TYPES {
        let w = backend
            .load_weight(&file, &tensor_name(ty, shape, 0))
            .unwrap();
        let x: Vec<f32> = (0..GEMM_ROWS)
            .flat_map(|r| random_row(100 + r as u64, shape.0))
            .collect();
        let x = backend.upload(x, GEMM_ROWS, shape.0);
        group.throughput(Throughput::Elements((shape.0 * shape.1 * GEMM_ROWS) as u64));
        for path in paths().into_iter().filter(|&p| p != CpuPath::Scalar) {
            quant::set_cpu_path(path).unwrap();
            let id = BenchmarkId::new(format!("{ty}/{}x{}x{GEMM_ROWS}", shape.0, shape.1), path);
            group.bench_function(id, |b| b.iter(|| backend.matmul(black_box(&x), &w)));
        }
    }
    group.finish();
}

/// `gemm/clip/<type>/<k>x<n>x577/<path>`: the vision tower's matmuls (CLIP ViT-L/14-336: 577
/// rows, width 1024, MLP 4096) with the mmproj types, F16 and Q8_0. One copy of each weight:
/// in the tower too, each is read from memory once per matmul and then from cache.
fn gemm_clip(c: &mut Criterion) {
    const ROWS: usize = 577;
    const CLIP_TYPES: [GgmlType; 2] = [GgmlType::F16, GgmlType::Q8_0];
    const CLIP_SHAPES: [(usize, usize); 2] = [(1024, 4096), (4096, 1024)];
    let dir = tempfile::tempdir().unwrap();
    let weights = CLIP_TYPES
        .iter()
        .flat_map(|&ty| CLIP_SHAPES.iter().map(move |&shape| (ty, shape, 1)));
    let file = write_weights(dir.path(), weights);
    let backend = CpuBackend::new(bench_threads());
    let mut group = c.benchmark_group("gemm/clip");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for ty in CLIP_TYPES {
        for shape in CLIP_SHAPES {
            let w = backend
                .load_weight(&file, &tensor_name(ty, shape, 0))
                .unwrap();
            let x: Vec<f32> = (0..ROWS)
                .flat_map(|r| random_row(100 + r as u64, shape.0))
                .collect();
            let x = backend.upload(x, ROWS, shape.0);
            group.throughput(Throughput::Elements((shape.0 * shape.1 * ROWS) as u64));
            for path in paths().into_iter().filter(|&p| p != CpuPath::Scalar) {
                quant::set_cpu_path(path).unwrap();
                let id = BenchmarkId::new(format!("{ty}/{}x{}x{ROWS}", shape.0, shape.1), path);
                group.bench_function(id, |b| b.iter(|| backend.matmul(black_box(&x), &w)));
            }
        }
    }
    group.finish();
}

/// `attention/<case>/<ctx>/<kv>`: LLaMA-7B attention (32 heads of 128, MHA) at a context of
/// `ctx` positions, with an f16 or f32 cache: `decode` is one new row over the whole context,
/// `prefill512` the last 512 rows of it arriving at once (the causal triangle's bottom). Plus
/// `decode-gqa/4096/f16`: Mistral-7B's grouped heads (32 over 8 KV heads), and `clip`:
/// CLIP-L's full attention, 577 rows, 16 heads of 64. Throughput is in query rows.
fn attention(c: &mut Criterion) {
    let heads = Heads {
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 128,
    };
    let dim = heads.n_heads * heads.head_dim;
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for kv_type in [KvType::F16, KvType::F32] {
        let backend = CpuBackend::new(bench_threads());
        for ctx in [512, 2048, 4096] {
            let mut cache = backend
                .new_kv_cache(1, ctx, heads.n_kv_heads, heads.head_dim, kv_type)
                .unwrap();
            // Fill the cache once, in 512-row steps (the values do not change the speed).
            for start in (0..ctx).step_by(512) {
                let t = backend.upload(random_row(start as u64, 512 * dim), 512, dim);
                backend.attention_cached(&t, &t, &t, &mut cache, 0, start, heads);
            }
            for rows in [1, 512] {
                let x = backend.upload(random_row(1, rows * dim), rows, dim);
                let case = if rows == 1 { "decode" } else { "prefill512" };
                group.throughput(Throughput::Elements(rows as u64));
                let id = BenchmarkId::new(format!("{case}/{ctx}"), kv_type.name());
                group.bench_function(id, |b| {
                    b.iter(|| {
                        backend.attention_cached(&x, &x, &x, &mut cache, 0, ctx - rows, heads)
                    })
                });
            }
        }
    }
    // Grouped-query heads (LLaVA-1.6-Mistral: 32 query heads over 8 KV heads of 128), one
    // decode row at 4,096 positions, f16 cache.
    let mistral = Heads {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
    };
    let (q_dim, kv_dim) = (32 * 128, 8 * 128);
    let backend = CpuBackend::new(bench_threads());
    let mut cache = backend
        .new_kv_cache(1, 4096, mistral.n_kv_heads, mistral.head_dim, KvType::F16)
        .unwrap();
    for start in (0..4096).step_by(512) {
        let q = backend.upload(random_row(start as u64, 512 * q_dim), 512, q_dim);
        let kv = backend.upload(random_row(start as u64 + 1, 512 * kv_dim), 512, kv_dim);
        backend.attention_cached(&q, &kv, &kv, &mut cache, 0, start, mistral);
    }
    let q = backend.upload(random_row(1, q_dim), 1, q_dim);
    let kv = backend.upload(random_row(2, kv_dim), 1, kv_dim);
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode-gqa/4096/f16", |b| {
        b.iter(|| backend.attention_cached(black_box(&q), &kv, &kv, &mut cache, 0, 4095, mistral))
    });
    let clip = Heads {
        n_heads: 16,
        n_kv_heads: 16,
        head_dim: 64,
    };
    let x = backend.upload(random_row(2, 577 * 1024), 577, 1024);
    group.throughput(Throughput::Elements(577));
    group.bench_function("clip/577", |b| {
        b.iter(|| backend.attention(black_box(&x), &x, &x, clip))
    });
    group.finish();
}

fn memory(c: &mut Criterion) {
    const BYTES: usize = 256 << 20;
    let threads = CpuBackend::new(bench_threads()).threads();
    let buffer: Vec<u64> = (0..BYTES as u64 / 8).collect();
    let mut group = c.benchmark_group("memory");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(BYTES as u64));
    group.bench_function(BenchmarkId::new("read", format!("{threads}t")), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                let parts: Vec<_> = buffer
                    .chunks(buffer.len().div_ceil(threads))
                    .map(|part| s.spawn(|| part.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
                    .collect();
                parts.into_iter().map(|p| p.join().unwrap()).sum::<u64>()
            })
        })
    });
    group.finish();
}

fn bench_threads() -> usize {
    std::env::var("LLAVA_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The weight types of the `dot` group: every one with a SIMD dot.
const DOT_TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::F16,
];

fn dot_and_quantize(c: &mut Criterion) {
    const K: usize = 4096;
    let mut group = c.benchmark_group("dot");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(700));
    let x = random_row(1, K);
    for ty in DOT_TYPES {
        let w = quantized(ty, &random_row(2, K));
        let w_bytes =
            &bytemuck::cast_slice::<u32, u8>(&w)[..ty.row_bytes(K as u64).unwrap() as usize];
        group.throughput(Throughput::Bytes(w_bytes.len() as u64));
        for path in paths() {
            let kernels = quant::row_kernels(ty, path).unwrap();
            let act = quantized(kernels.act_type, &x);
            let a_len = kernels.act_type.row_bytes(K as u64).unwrap() as usize;
            let a = &bytemuck::cast_slice::<u32, u8>(&act)[..a_len];
            group.bench_function(BenchmarkId::new(ty.to_string(), path), |b| {
                b.iter(|| (kernels.dot)(black_box(w_bytes), black_box(a)))
            });
            if let Some(tile) = kernels.dot_tile {
                // The same activation row TILE_ROWS times: the kernel cannot tell.
                let id = BenchmarkId::new(format!("{ty}x{TILE_ROWS}"), path);
                group.bench_function(id, |b| {
                    b.iter(|| tile(black_box(w_bytes), black_box([a; TILE_ROWS])))
                });
            }
        }
    }
    group.finish();

    let mut group = c.benchmark_group("quantize");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(700))
        .throughput(Throughput::Bytes((K * 4) as u64));
    for weight_ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K, GgmlType::F16] {
        for path in paths() {
            let kernels = quant::row_kernels(weight_ty, path).unwrap();
            let a_len = kernels.act_type.row_bytes(K as u64).unwrap() as usize;
            let mut out = aligned(a_len);
            let out = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut out)[..a_len];
            group.bench_function(BenchmarkId::new(kernels.act_type.to_string(), path), |b| {
                b.iter(|| (kernels.quantize)(black_box(&x), out))
            });
        }
    }
    group.finish();
}

/// `interleaved/<type>/<kernel>/<path>`: the batch kernels of interleaved weights alone, on
/// cache-resident data, single-threaded: 16 weight rows (two groups) of 4096 elements against
/// 16 activation rows, by the 4-row kernel (`x4`: 4 tiles × 2 groups) and by the wide one
/// (`wide`: the path's calls over the same 16 × 16 dots, the activations packed beforehand, as
/// a matmul packs them once for all its weight rows). Throughput is multiply-adds.
fn interleaved(c: &mut Criterion) {
    const K: usize = 4096;
    let mut group = c.benchmark_group("interleaved");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(1500))
        .throughput(Throughput::Elements(
            (WIDE_TILE_ROWS * 2 * DOT_ROWS * K) as u64,
        ));
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let w_len = ty.row_bytes(K as u64).unwrap() as usize;
        let rows: Vec<Vec<u32>> = (0..2 * DOT_ROWS as u64)
            .map(|r| quantized(ty, &random_row(300 + r, K)))
            .collect();
        for path in paths() {
            let kernels = quant::row_kernels(ty, path).unwrap();
            let Some(how) = kernels.interleaved else {
                continue;
            };
            let a_len = kernels.act_type.row_bytes(K as u64).unwrap() as usize;
            let acts: Vec<Vec<u32>> = (0..WIDE_TILE_ROWS as u64)
                .map(|r| quantized(kernels.act_type, &random_row(400 + r, K)))
                .collect();
            let act = |n: usize| &bytemuck::cast_slice::<u32, u8>(&acts[n])[..a_len];
            let blocks = a_len / kernels.act_type.type_size();
            let sums: Vec<Vec<quant::ActBlockSum>> = (0..WIDE_TILE_ROWS)
                .map(|n| {
                    let mut sums = vec![quant::ActBlockSum::default(); blocks];
                    quant::act_block_sums(kernels.act_type, act(n), &mut sums).unwrap();
                    sums
                })
                .collect();
            let group_len = (how.group_bytes)(w_len);
            let mut groups = aligned(2 * group_len);
            for (g, dst) in bytemuck::cast_slice_mut::<u32, u8>(&mut groups)
                .chunks_exact_mut(group_len)
                .enumerate()
            {
                let rows = std::array::from_fn(|r| {
                    &bytemuck::cast_slice::<u32, u8>(&rows[g * DOT_ROWS + r])[..w_len]
                });
                (how.interleave)(rows, dst);
            }
            let groups: &[u8] = &bytemuck::cast_slice(&groups)[..2 * group_len];
            let id = BenchmarkId::new(format!("{ty}/x4"), path);
            group.bench_function(id, |b| {
                b.iter(|| {
                    for tile in 0..WIDE_TILE_ROWS / TILE_ROWS {
                        let a = std::array::from_fn(|i| act(tile * TILE_ROWS + i));
                        let s = std::array::from_fn(|i| sums[tile * TILE_ROWS + i].as_slice());
                        for g in groups.chunks_exact(group_len) {
                            black_box((how.gemm)(black_box(g), a, s));
                        }
                    }
                })
            });
            if let Some(wide) = how.wide {
                let mut packed = aligned((wide.packed_bytes)(blocks));
                (wide.pack)(
                    std::array::from_fn(act),
                    bytemuck::cast_slice_mut(&mut packed),
                );
                let packed: &[u8] = bytemuck::cast_slice(&packed);
                let mut out: quant::WideOut = Default::default();
                let id = BenchmarkId::new(format!("{ty}/wide"), path);
                group.bench_function(id, |b| {
                    b.iter(|| {
                        for g in groups.chunks(wide.groups * group_len) {
                            (wide.gemm)(black_box(g), packed, &mut out);
                            black_box(&out);
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    dot_and_quantize,
    interleaved,
    memory,
    gemv,
    gemm,
    gemm_clip,
    attention
);
criterion_main!(benches);
