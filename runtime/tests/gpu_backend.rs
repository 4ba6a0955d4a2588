//! The GPU backend against f64 references and the CPU backend, on whatever adapter wgpu finds
//! (CI: Mesa's lavapipe): with the adapter's own limits (subgroups, integer dot products and
//! f16 tiles where it has them), again in f32 only, and with WebGPU's downlevel
//! limits, no optional feature and weights split into many small parts. Skipped, saying so,
//! where there is no adapter, unless LLAVA_REQUIRE_GPU is set (CI sets it).
#![cfg(feature = "gpu")]

use llava_runtime::backend::gpu::{all_shader_sources, AdapterChoice, GpuBackend, GpuOptions};
use llava_runtime::backend::{Backend, CpuBackend, Heads, KvType, Rope};
use llava_runtime::quant::GgmlType;

mod common;
use common::*;

#[test]
fn every_shader_validates_without_optional_capabilities() {
    for shader in all_shader_sources() {
        let (name, source) = (&shader.name, &shader.wgsl);
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        // pack2x16float/unpack2x16float are core WGSL (naga gates them for old GL only;
        // wgpu grants them on every Vulkan, Metal and DX12 adapter): the one capability.
        // Subgroups and f16 only in the modules that ask for them, which the backend builds
        // only for devices that have them.
        let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if shader.f16 {
            caps |= naga::valid::Capabilities::SHADER_FLOAT16;
        }
        let (mut stages, mut ops) = (
            naga::valid::ShaderStages::empty(),
            naga::valid::SubgroupOperationSet::empty(),
        );
        if shader.subgroups {
            caps |= naga::valid::Capabilities::SUBGROUP;
            stages = naga::valid::ShaderStages::COMPUTE;
            ops = naga::valid::SubgroupOperationSet::BASIC
                | naga::valid::SubgroupOperationSet::ARITHMETIC;
        }
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .subgroup_stages(stages)
            .subgroup_operations(ops)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    }
}

/// The configurations every op is checked in: (label, backend).
fn gpus() -> Vec<(&'static str, GpuBackend)> {
    let open = |downlevel: bool, max_binding: Option<u64>, f32_only: bool| {
        GpuBackend::new(&GpuOptions {
            adapter: AdapterChoice::Any,
            downlevel,
            max_binding,
            f32_only,
        })
    };
    match open(false, None, false) {
        Ok(own) => {
            eprintln!("adapter: {:?}", own.adapter());
            // Where the adapter has subgroups, the first two configurations run the subgroup
            // kernels and the last the plain ones; the first alone takes the integer dots
            // and (where the adapter has shader-f16) the f16 tiles.
            let offered = |f: &str| own.adapter().features.iter().any(|g| g == f);
            assert_eq!(own.subgroups(), offered("subgroups"));
            assert_eq!(own.f16(), offered("shader-f16"));
            assert!(
                own.integer_dot(),
                "every native wgpu backend has WGSL's packed 4x8 integer dot products"
            );
            let f32_only = open(false, None, true).expect("the same adapter");
            assert!(!f32_only.integer_dot() && !f32_only.f16());
            let small =
                open(true, Some(4096), false).expect("the same adapter with downlevel limits");
            assert!(!small.subgroups() && !small.integer_dot() && !small.f16());
            // The limits a Pi 5-class GPU gives (issue 20): 128 MiB bindings, 16 KiB of
            // workgroup memory, 256 invocations, whatever this adapter has.
            let l = small.limits();
            assert!(
                l.max_storage_binding <= 128 << 20
                    && l.max_workgroup_storage <= 16 << 10
                    && l.max_invocations <= 256,
                "downlevel: {l:?}"
            );
            vec![
                ("own limits", own),
                ("own limits, f32 only", f32_only),
                ("downlevel, 4 KiB parts", small),
            ]
        }
        Err(e) => {
            assert!(
                std::env::var_os("LLAVA_REQUIRE_GPU").is_none(),
                "LLAVA_REQUIRE_GPU is set but there is no adapter: {e}"
            );
            eprintln!("skipped: {e} (apt-get install mesa-vulkan-drivers libvulkan1)");
            Vec::new()
        }
    }
}

/// |got - want| ≤ tol(i) for every element.
fn assert_close(got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol(i),
            "{what}: element {i}: {g} vs {w} (tolerance {})",
            tol(i)
        );
    }
}

#[test]
fn matmul_of_every_weight_type_equals_the_f64_dot_of_the_dequantized_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (label, gpu) in gpus() {
        for ty in WEIGHT_TYPES {
            // Rows of whole blocks, one length not a multiple of any workgroup's width (odd
            // for the types without blocks: F16/BF16 rows then end in a padding half).
            // A long row too (9 × 256), where every decode kernel's threads loop over it.
            let block = ty.block_size();
            for k in [
                if block == 1 { 33 } else { 3 * block.max(32) },
                512,
                2304 + block % 2,
            ] {
                check_matmul(&gpu, label, ty, k, dir.path());
            }
        }
    }
}

fn check_matmul(gpu: &GpuBackend, label: &str, ty: GgmlType, k: usize, dir: &std::path::Path) {
    let n_out = 37;
    let file = gguf(
        dir,
        &[("w", ty, vec![k as u64, n_out as u64], random(k * n_out, 7))],
    );
    let w_ref = dequantized(&file, "w");
    let w = gpu.load_weight(&file, "w").unwrap();
    if label.starts_with("downlevel") && k == 512 {
        assert!(w.n_parts() > 1, "{ty}: the weight was not split");
    }
    for rows in [1, 3, 17, 64] {
        let x = random(rows * k, rows as u64);
        let xt = gpu.upload(x.clone(), rows, k);
        let got = gpu.download(&gpu.matmul(&xt, &w)).unwrap();
        // The integer kernels see the activations rounded to 8 bits (checked against their
        // definition here, then taken as the reference's input).
        let integer = gpu.uses_integer_dot(ty);
        let f16 = rows > 4 && gpu.uses_f16_tiles(ty);
        let x = if integer {
            let blocks = gpu.quantized_activations(&xt).unwrap();
            check_q8_blocks(&x, &blocks, &format!("{label}: {ty}"))
        } else {
            x
        };
        let (mut want, mut tol) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for n in 0..n_out {
                let wr = &w_ref[n * k..(n + 1) * k];
                let terms = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b));
                want.push(terms.clone().sum::<f64>());
                // An f32 sum of k products: within k·2⁻²⁴ of the sum of their magnitudes.
                // The integer kernels' dots are exact, but a K-quant's scale and min terms,
                // rounded apart, can each reach twice the block's largest weight times its
                // activations.
                let wmax = wr.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
                let mag = if integer {
                    2.0 * wmax * xr.iter().map(|&v| f64::from(v).abs()).sum::<f64>()
                } else {
                    terms.clone().map(f64::abs).sum::<f64>()
                };
                let mut t = (k as f64 + 2.0) * 2f64.powi(-24) * mag;
                if f16 {
                    // f16 tiles: x / max|x| and w rounded to f16, each within 2⁻¹⁰ (WGSL
                    // lets a conversion to f16 round to either neighbour, not only the
                    // nearest) of each term (the products and sums are f32's, above); and
                    // values below f16's normal range within 2⁻²⁴ (scaled back by max|x|).
                    let xmax = xr.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
                    t += 2.0 * 2f64.powi(-10) * terms.map(f64::abs).sum::<f64>()
                        + k as f64 * 2f64.powi(-24) * xmax * (2.0 + wmax);
                }
                tol.push(t);
            }
        }
        assert_close(
            &got,
            &want,
            |i| tol[i],
            &format!("{label}: {ty}, k {k}, {rows} rows"),
        );
    }
}

/// Checks 8-bit activation blocks (shaders/q8_act.wgsl: per 32 values, 8 words of quants,
/// d as f32, the quants' sum) against ggml's Q8_0 rule for `x`, and returns the values they
/// stand for (quant · d).
fn check_q8_blocks(x: &[f32], words: &[u32], what: &str) -> Vec<f32> {
    assert_eq!(words.len(), x.len() / 32 * 10, "{what}: words");
    let mut values = Vec::with_capacity(x.len());
    for (b, (xs, block)) in x.chunks(32).zip(words.chunks(10)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f32::from_bits(block[8]);
        // d = max|x| / 127, as a GPU divides: within a few ulps.
        assert!(
            (d - amax / 127.0).abs() <= 4.0 * f32::EPSILON * amax / 127.0,
            "{what}: block {b}: d {d} for max |x| {amax}"
        );
        let q: Vec<i32> = block[..8]
            .iter()
            .flat_map(|w| w.to_le_bytes().map(|b| i32::from(b as i8)))
            .collect();
        for (i, (&v, &qi)) in xs.iter().zip(&q).enumerate() {
            // round(x / d): within half a step, plus the rounding of 1 / d.
            let exact = if d == 0.0 {
                0.0
            } else {
                f64::from(v) / f64::from(d)
            };
            assert!(
                (f64::from(qi) - exact).abs() <= 0.5 + 1e-4 && qi.abs() <= 127,
                "{what}: block {b}, element {i}: quant {qi} for {v} / {d}"
            );
        }
        assert_eq!(
            block[9] as i32,
            q.iter().sum::<i32>(),
            "{what}: block {b}: the quants' sum"
        );
        values.extend(q.iter().map(|&qi| qi as f32 * d));
    }
    values
}

/// The q, k and v projections of a decode step share one quantization of their input; an
/// input changed in place is quantized again.
#[test]
fn decode_quantizes_an_input_once_and_again_after_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (k, n) = (64, 8);
    let file = gguf(
        dir.path(),
        &[(
            "w",
            GgmlType::Q8_0,
            vec![k as u64, n as u64],
            random(k * n, 9),
        )],
    );
    let (v, dv) = (random(k, 1), random(k, 2));
    let sum: Vec<f32> = v.iter().zip(&dv).map(|(a, b)| a + b).collect();
    for (label, gpu) in gpus() {
        let w = gpu.load_weight(&file, "w").unwrap();
        let x = gpu.upload(v.clone(), 1, k);
        let before = gpu.stats().dispatches;
        let first = gpu.download(&gpu.matmul(&x, &w)).unwrap();
        let again = gpu.download(&gpu.matmul(&x, &w)).unwrap();
        let per_matmul = if gpu.uses_integer_dot(GgmlType::Q8_0) {
            3
        } else {
            2
        };
        assert_eq!(gpu.stats().dispatches - before, per_matmul, "{label}");
        assert_eq!(first, again, "{label}");
        let x = gpu.add(x, &gpu.upload(dv.clone(), 1, k));
        let changed = gpu.download(&gpu.matmul(&x, &w)).unwrap();
        let fresh = gpu
            .download(&gpu.matmul(&gpu.upload(sum.clone(), 1, k), &w))
            .unwrap();
        assert_eq!(
            changed, fresh,
            "{label}: x + dx in place against x + dx uploaded"
        );
        assert_ne!(changed, first, "{label}");
    }
}

#[test]
fn activations_quantize_to_8_bit_blocks_by_ggml_s_q8_0_rule() {
    for (label, gpu) in gpus() {
        // Random blocks, a zero block, one value far above the rest, and values on the steps.
        let mut x = random(4 * 64, 5);
        x[32..64].fill(0.0);
        x[64] = 1e6;
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.25;
        }
        let blocks = gpu
            .quantized_activations(&gpu.upload(x.clone(), 4, 64))
            .unwrap();
        let values = check_q8_blocks(&x, &blocks, label);
        assert!(values[32..64].iter().all(|&v| v == 0.0), "{label}: zeros");
        // ±127·d, with d = max|x| / 127 as the GPU divides (Vulkan allows 2.5 ulp).
        assert!(
            (values[64] - 1e6).abs() <= 1e6 * 4.0 * f32::EPSILON,
            "{label}: the largest value is ±127·d: {}",
            values[64]
        );
    }
}

#[test]
fn get_rows_gives_the_dequantized_rows_of_every_type() {
    let dir = tempfile::tempdir().unwrap();
    for (label, gpu) in gpus() {
        for ty in WEIGHT_TYPES {
            let (k, n) = (256, 11);
            let file = gguf(
                dir.path(),
                &[("t", ty, vec![k as u64, n as u64], random(k * n, 3))],
            );
            let table = dequantized(&file, "t");
            let ids = [10u32, 0, 3, 3, 7];
            let got = gpu
                .download(&gpu.get_rows(&gpu.load_weight(&file, "t").unwrap(), &ids))
                .unwrap();
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&i| {
                    table[i as usize * k..(i as usize + 1) * k]
                        .iter()
                        .map(|&v| f64::from(v))
                })
                .collect();
            // The shader may fuse the scale's multiply-add: a few ulps of the row's largest value.
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close(&got, &want, |_| scale * 1e-6, &format!("{label}: {ty}"));
        }
    }
}

/// The same op on the CPU and the GPU: values within `tol` relative to the largest.
fn same(cpu: &[f32], gpu: &[f32], tol: f64, what: &str) {
    let want: Vec<f64> = cpu.iter().map(|&v| f64::from(v)).collect();
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    assert_close(gpu, &want, |_| tol * scale, what);
}

#[test]
fn norms_rope_activations_and_row_moves_match_the_cpu_backend() {
    // Rows as the matmul test has them; rows of 96 and of 1000 (more than a workgroup's
    // threads: the norms' loops go round).
    for (rows, cols) in [
        (1, 96),
        (3, 1000),
        (5, 96),
        (17, 1000),
        (64, 96),
        (64, 1000),
    ] {
        check_row_ops(rows, cols);
    }
}

fn check_row_ops(rows: usize, cols: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuBackend::new(1);
    let file = gguf(
        dir.path(),
        &[
            ("g", GgmlType::F32, vec![cols as u64], random(cols, 11)),
            ("b", GgmlType::F32, vec![cols as u64], random(cols, 12)),
            ("g16", GgmlType::F16, vec![cols as u64], random(cols, 13)),
        ],
    );
    let x = random(rows * cols, 1);
    let y = random(rows * cols, 2);
    for (label, gpu) in gpus() {
        let on_cpu = |f: &dyn Fn(
            &CpuBackend,
            <CpuBackend as Backend>::Tensor,
        ) -> <CpuBackend as Backend>::Tensor| {
            cpu.download(&f(&cpu, cpu.upload(x.clone(), rows, cols)))
                .unwrap()
        };
        let on_gpu = |f: &dyn Fn(
            &GpuBackend,
            <GpuBackend as Backend>::Tensor,
        ) -> <GpuBackend as Backend>::Tensor| {
            gpu.download(&f(&gpu, gpu.upload(x.clone(), rows, cols)))
                .unwrap()
        };
        let (cg, cb, c16) = (
            cpu.load_weight(&file, "g").unwrap(),
            cpu.load_weight(&file, "b").unwrap(),
            cpu.load_weight(&file, "g16").unwrap(),
        );
        let (gg, gb, g16) = (
            gpu.load_weight(&file, "g").unwrap(),
            gpu.load_weight(&file, "b").unwrap(),
            gpu.load_weight(&file, "g16").unwrap(),
        );
        let yc = cpu.upload(y.clone(), rows, cols);
        let yg = gpu.upload(y.clone(), rows, cols);
        // Rows of 96: 3 heads of 32, a part of each rotated; of 1000: 10 heads of 100, whole.
        let (n_heads, n_rot) = if cols == 96 { (3, 16) } else { (10, 100) };
        let rope = Rope {
            n_rot,
            base: 10000.0,
            freq_scale: 1.0,
        };
        let picks = [rows as u32 - 1, 0, rows as u32 - 1, rows as u32 / 2];
        let (from, len) = (rows / 3, rows - rows / 3);
        let cases: Vec<(&str, Vec<f32>, Vec<f32>)> = vec![
            (
                "rms_norm",
                on_cpu(&|b, t| b.rms_norm(&t, &cg, 1e-5)),
                on_gpu(&|b, t| b.rms_norm(&t, &gg, 1e-5)),
            ),
            (
                "rms_norm f16 gain",
                on_cpu(&|b, t| b.rms_norm(&t, &c16, 1e-6)),
                on_gpu(&|b, t| b.rms_norm(&t, &g16, 1e-6)),
            ),
            (
                "layer_norm",
                on_cpu(&|b, t| b.layer_norm(&t, &cg, &cb, 1e-5)),
                on_gpu(&|b, t| b.layer_norm(&t, &gg, &gb, 1e-5)),
            ),
            (
                "rope",
                on_cpu(&|b, t| b.rope(&t, 1000, n_heads, rope)),
                on_gpu(&|b, t| b.rope(&t, 1000, n_heads, rope)),
            ),
            (
                "silu_mul",
                on_cpu(&|b, t| b.silu_mul(t, &yc)),
                on_gpu(&|b, t| b.silu_mul(t, &yg)),
            ),
            ("gelu", on_cpu(&|b, t| b.gelu(t)), on_gpu(&|b, t| b.gelu(t))),
            (
                "quick_gelu",
                on_cpu(&|b, t| b.quick_gelu(t)),
                on_gpu(&|b, t| b.quick_gelu(t)),
            ),
            (
                "add",
                on_cpu(&|b, t| b.add(t, &yc)),
                on_gpu(&|b, t| b.add(t, &yg)),
            ),
            (
                "add_bias",
                on_cpu(&|b, t| b.add_bias(t, &cb)),
                on_gpu(&|b, t| b.add_bias(t, &gb)),
            ),
            (
                "gather_rows",
                on_cpu(&|b, t| b.gather_rows(&t, &picks)),
                on_gpu(&|b, t| b.gather_rows(&t, &picks)),
            ),
            (
                "slice_rows",
                on_cpu(&|b, t| b.slice_rows(&t, from, len)),
                on_gpu(&|b, t| b.slice_rows(&t, from, len)),
            ),
            (
                "concat_rows",
                on_cpu(&|b, t| b.concat_rows(&[&b.slice_rows(&t, from, len), &t])),
                on_gpu(&|b, t| b.concat_rows(&[&b.slice_rows(&t, from, len), &t])),
            ),
        ];
        for (what, c, g) in cases {
            // f32 throughout on both; the GPU's exp and sqrt are within a few ulps.
            same(&c, &g, 1e-5, &format!("{label}: {what}, {rows} × {cols}"));
        }
    }
}

#[test]
fn attention_cached_causal_with_grouped_heads_and_full_match_the_cpu_backend() {
    // Heads of 32, of 80 (not a multiple of the 64 threads that share a head) and of 128
    // (LLaMA's: each thread holds two of a row's values).
    for (label, gpu) in gpus() {
        for head_dim in [32, 80, 128] {
            check_attention(&format!("{label}, heads of {head_dim}"), &gpu, head_dim);
        }
    }
}

fn check_attention(label: &str, gpu: &GpuBackend, head_dim: usize) {
    let cpu = CpuBackend::new(1);
    let heads = Heads {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim,
    };
    let (q_cols, kv_cols) = (4 * head_dim, 2 * head_dim);
    for kv_type in [KvType::F32, KvType::F16] {
        // The CPU's reference keeps an exact cache, fed the values the GPU's cache holds: an
        // f16 cache's are checked to be a rounding of the input (WGSL lets `pack2x16float`
        // round either way), then attended to in f32 on both sides.
        let mut cc = cpu.new_kv_cache(2, 160, 2, head_dim, KvType::F32).unwrap();
        let mut gc = gpu.new_kv_cache(2, 160, 2, head_dim, kv_type).unwrap();
        // A prompt of 70 rows (more than one chunk of 64 keys), then one row, then 3.
        let mut start = 0;
        for (step, rows) in [70, 1, 3].into_iter().enumerate() {
            let seed = 100 * step as u64;
            let (q, k, v) = (
                random(rows * q_cols, seed),
                random(rows * kv_cols, seed + 1),
                random(rows * kv_cols, seed + 2),
            );
            let g = gpu
                .download(&gpu.attention_cached(
                    &gpu.upload(q.clone(), rows, q_cols),
                    &gpu.upload(k.clone(), rows, kv_cols),
                    &gpu.upload(v.clone(), rows, kv_cols),
                    &mut gc,
                    1,
                    start,
                    heads,
                ))
                .unwrap();
            let what = format!("{label}: {kv_type:?} cache, rows {start}..");
            let (held_k, held_v) = gpu.kv_cache_rows(&gc, 1, start + rows).unwrap();
            let new = start * kv_cols..;
            let (held_k, held_v) = (held_k[new.clone()].to_vec(), held_v[new].to_vec());
            for (input, held) in [(&k, &held_k), (&v, &held_v)] {
                match kv_type {
                    KvType::F32 => assert_eq!(held, input, "{what}"),
                    KvType::F16 => assert_f16_roundings(input, held, &what),
                }
            }
            let c = cpu
                .download(&cpu.attention_cached(
                    &cpu.upload(q, rows, q_cols),
                    &cpu.upload(held_k, rows, kv_cols),
                    &cpu.upload(held_v, rows, kv_cols),
                    &mut cc,
                    1,
                    start,
                    heads,
                ))
                .unwrap();
            same(&c, &g, 1e-5, &what);
            start += rows;
        }
    }
    // Full attention (the vision tower): every row sees every row.
    let rows = 77;
    let heads = Heads {
        n_heads: 2,
        n_kv_heads: 2,
        head_dim,
    };
    let cols = 2 * head_dim;
    let (q, k, v) = (
        random(rows * cols, 1),
        random(rows * cols, 2),
        random(rows * cols, 3),
    );
    let c = cpu
        .download(&cpu.attention(
            &cpu.upload(q.clone(), rows, cols),
            &cpu.upload(k.clone(), rows, cols),
            &cpu.upload(v.clone(), rows, cols),
            heads,
        ))
        .unwrap();
    let g = gpu
        .download(&gpu.attention(
            &gpu.upload(q, rows, cols),
            &gpu.upload(k, rows, cols),
            &gpu.upload(v, rows, cols),
            heads,
        ))
        .unwrap();
    same(&c, &g, 1e-5, &format!("{label}: full attention"));
}

#[test]
fn ops_record_without_running_and_one_download_is_one_submission_and_one_readback() {
    let dir = tempfile::tempdir().unwrap();
    let file = gguf(
        dir.path(),
        &[
            ("w", GgmlType::Q4_0, vec![64, 64], random(64 * 64, 5)),
            ("g", GgmlType::F32, vec![64], random(64, 6)),
        ],
    );
    for (label, gpu) in gpus() {
        let w = gpu.load_weight(&file, "w").unwrap();
        let g = gpu.load_weight(&file, "g").unwrap();
        let before = gpu.stats();
        let mut x = gpu.upload(random(64, 9), 1, 64);
        for _ in 0..10 {
            let y = gpu.quick_gelu(gpu.matmul(&x, &w));
            x = gpu.rms_norm(&gpu.add(y, &x), &g, 1e-5);
        }
        assert_eq!(
            gpu.stats().submissions,
            before.submissions,
            "{label}: ops submitted work"
        );
        let out = gpu.download(&x).unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
        let after = gpu.stats();
        assert_eq!(after.submissions - before.submissions, 1, "{label}");
        assert_eq!(after.readbacks - before.readbacks, 1, "{label}");
        assert!(
            after.dispatches - before.dispatches >= 20,
            "{label}: {after:?}"
        );
    }
}

#[test]
fn a_misused_weight_is_an_error_at_download_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = gguf(dir.path(), &[("g", GgmlType::F32, vec![8], random(8, 1))]);
    for (label, gpu) in gpus() {
        let g = gpu.load_weight(&file, "g").unwrap();
        let x = gpu.upload(random(16, 2), 1, 16);
        let err = gpu
            .download(&gpu.rms_norm(&x, &g, 1e-5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a vector of 16"), "{label}: {err}");
    }
}

/// What a device cannot hold is an error naming the limit, from the call that makes it or at
/// the next download, never a panic: a KV cache layer larger than a binding, an activation
/// larger than a binding (made by an op, or uploaded), and an upload larger than any buffer.
#[test]
fn tensors_beyond_the_device_limits_are_errors_not_panics() {
    let Some((_, gpu)) = gpus()
        .into_iter()
        .find(|(label, _)| label.starts_with("downlevel"))
    else {
        return;
    };
    let limits = gpu.limits();
    let binding = limits.max_storage_binding as usize;
    // One layer's keys: positions × 2 heads × 64 values × 4 bytes.
    let n_ctx = binding / (2 * 64 * 4) + 1;
    let err = gpu
        .new_kv_cache(1, n_ctx, 2, 64, KvType::F32)
        .map(|_| ())
        .expect_err("a KV cache beyond the binding limit")
        .to_string();
    assert!(err.contains("binding limit"), "{err}");

    // Rows of 1024 values, one row more than a binding holds.
    let cols = 1024;
    let rows = binding / (cols * 4) + 1;
    let check = |gpu: &GpuBackend, what: &str, out: &<GpuBackend as Backend>::Tensor| {
        let err = gpu.download(out).expect_err(what).to_string();
        assert!(err.contains("largest storage binding"), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    };
    // A fresh device for each case: an error stays with the device that had it.
    let fresh = || {
        GpuBackend::new(&GpuOptions {
            adapter: AdapterChoice::Any,
            downlevel: true,
            ..GpuOptions::default()
        })
        .unwrap()
    };
    let gpu = fresh();
    let big = gpu.upload(vec![0.5; rows * cols], rows, cols);
    check(&gpu, "an upload beyond a binding", &big);
    let gpu = fresh();
    let x = gpu.upload(vec![0.5; 2 * cols], 2, cols);
    let wide = gpu.concat_rows(&vec![&x; rows / 2 + 1]);
    check(&gpu, "an op's output beyond a binding", &wide);
    let gpu = fresh();
    let max_buffer = gpu.limits().max_buffer as usize;
    let rows = max_buffer / (cols * 4) + 1;
    let huge = gpu.upload(vec![0.0; rows * cols], rows, cols);
    check(&gpu, "an upload beyond any buffer", &huge);
}

/// Each of `held` is `input`'s value rounded to f16 either way (WGSL allows both neighbours),
/// or flushed to zero below f16's normal range.
fn assert_f16_roundings(input: &[f32], held: &[f32], what: &str) {
    assert_eq!(input.len(), held.len(), "{what}");
    for (i, (&x, &h)) in input.iter().zip(held).enumerate() {
        let nearest = half::f16::from_f32(x);
        let other = if nearest.to_f32() == x {
            nearest
        } else {
            // The neighbour on x's other side: a step of the magnitude towards x.
            let towards_zero = (nearest.to_f32() > x) == (x > 0.0);
            let bits = nearest.to_bits();
            half::f16::from_bits(if towards_zero { bits - 1 } else { bits + 1 })
        };
        let flushed = h == 0.0 && x.abs() < f32::from(half::f16::MIN_POSITIVE);
        assert!(
            h == nearest.to_f32() || h == other.to_f32() || flushed,
            "{what}: value {i}: {x} held as {h} (f16 neighbours {nearest}, {other})"
        );
    }
}
