//! The CPU backend: eager, f32 activations, weights borrowed from the memory map.
//!
//! The kernels are the process's CPU path's (`quant::cpu_path`: scalar, AVX2, AVX-512 or
//! NEON, chosen at run time); the work of each op is spread over the backend's own thread pool
//! (`pool.rs`).

use std::sync::Arc;

use super::{Backend, BackendError, Heads, KvType, Rope};
use crate::gguf::GgufFile;
use crate::quant::GgmlType;
use pool::Pool;

mod attention;
mod columns;
mod gemm;
mod kv_cache;
mod matmul;
mod pool;
mod vector;
mod weight;

pub use kv_cache::CpuKvCache;
pub use weight::CpuWeight;

/// A row-major `[rows, cols]` f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    /// The elements, row after row: `rows × cols` of them.
    pub data: Vec<f32>,
    /// Number of rows (tokens or patches).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
}

impl CpuTensor {
    /// Wraps `data` as a `[rows, cols]` matrix. Panics if `data.len() != rows * cols`.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "tensor data does not match its shape"
        );
        CpuTensor { data, rows, cols }
    }

    /// Row `r`, `cols` elements. Panics if `r >= rows`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Set to `0`, the environment variable that turns weight interleaving off (see
/// [`CpuBackend::new`]).
pub const INTERLEAVE_ENV: &str = "LLAVA_INTERLEAVE";

/// The CPU backend, with its own pool of worker threads.
pub struct CpuBackend {
    pool: Pool,
    interleave: bool,
}

impl CpuBackend {
    /// `threads` = 0 uses one thread per physical core.
    ///
    /// Weights may be interleaved for faster kernels unless `LLAVA_INTERLEAVE=0`: where the
    /// CPU path has kernels for an interleaved layout of a type (Q4_0 on x86), the first matmul
    /// with such a weight copies it into that layout and releases the mapped pages. Resident
    /// memory stays about the same, but the copy is anonymous memory, which the OS cannot
    /// evict and re-read from the file as it can mapped pages: turn it off to run a model
    /// larger than the free memory.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        CpuBackend {
            pool: Pool::new(threads),
            interleave: std::env::var(INTERLEAVE_ENV).map_or(true, |v| v.trim() != "0"),
        }
    }

    /// Number of threads an op runs on: the calling thread and the pool's workers.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// A copy of `x` with `f(row index, row)` applied to each row: on the pool's threads when
    /// the tensor is big enough to pay for the hand-off (a prefill or the vision tower; the
    /// GELU of CLIP-L's 577 × 4096 activations took 1–2 s on one thread), else on this one.
    fn map_rows(&self, x: &CpuTensor, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> CpuTensor {
        self.map_rows_in_place(x.clone(), f)
    }

    /// [`Self::map_rows`] over `x` itself, for the ops that consume their input.
    fn map_rows_in_place(
        &self,
        x: CpuTensor,
        f: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) -> CpuTensor {
        /// Below this, a decode step's rows: the hand-off costs more than it saves.
        const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;
        let mut out = x;
        if out.cols == 0 {
            return out;
        }
        let cols = out.cols;
        if out.data.len() < PARALLEL_MIN_ELEMENTS {
            out.data
                .chunks_exact_mut(cols)
                .enumerate()
                .for_each(|(r, row)| f(r, row));
        } else {
            self.pool.for_each_chunk(&mut out.data, cols, f);
        }
        out
    }

    /// `f` applied to every element of `x`, as [`Self::map_rows_in_place`].
    fn map_in_place(&self, x: CpuTensor, f: impl Fn(f32) -> f32 + Sync + Send) -> CpuTensor {
        self.map_rows_in_place(x, |_, row| row.iter_mut().for_each(|v| *v = f(*v)))
    }
}

/// Physical cores where the OS tells them apart from hardware threads (matmul is bound by
/// memory and the SIMD units, which hyper-threads share); else the available parallelism.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    physical_cores().unwrap_or(logical).clamp(1, logical)
}

#[cfg(target_os = "linux")]
fn physical_cores() -> Option<usize> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut cores = std::collections::HashSet::new();
    let (mut physical_id, mut core_id) = (None, None);
    for line in cpuinfo.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (physical_id.take(), core_id.take()) {
                cores.insert((p, c));
            }
            continue;
        }
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => physical_id = Some(v.to_owned()),
            (Some("core id"), Some(v)) => core_id = Some(v.to_owned()),
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(not(target_os = "linux"))]
fn physical_cores() -> Option<usize> {
    None
}

/// Whether the CPU backend has kernels for tensors of this type.
pub fn supports(ty: GgmlType) -> bool {
    matmul::kernel_for(ty).is_some()
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<CpuWeight, BackendError> {
        let (index, t) = super::find_tensor(file, name)?;
        let ty = t.ggml_type();
        // Block structs hold f16/f32 fields: the data must be aligned for them to be read in
        // place. GGUF's default 32-byte alignment guarantees it; a file written with
        // general.alignment = 1 might not.
        if !supports(ty) || !(t.data.as_ptr() as usize).is_multiple_of(4) {
            return Err(BackendError::UnsupportedType {
                path: file.path().to_owned(),
                name: name.to_owned(),
                ty,
            });
        }
        Ok(CpuWeight {
            file: Arc::clone(file),
            index,
            ty,
            shape: t.shape().to_vec(),
            interleave: self.interleave,
            interleaved: Arc::default(),
        })
    }

    fn load_matrix(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        row_len: usize,
    ) -> Result<CpuWeight, BackendError> {
        let mut w = self.load_weight(file, name)?;
        w.shape = super::matrix_shape(file, name, &w.shape, row_len)?.to_vec();
        Ok(w)
    }

    fn upload(&self, data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
        CpuTensor::new(data, rows, cols)
    }

    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>, BackendError> {
        Ok(t.data.clone())
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn slice_rows(&self, x: &CpuTensor, start: usize, len: usize) -> CpuTensor {
        assert!(start + len <= x.rows, "row slice out of range");
        CpuTensor::new(
            x.data[start * x.cols..(start + len) * x.cols].to_vec(),
            len,
            x.cols,
        )
    }

    fn concat_rows(&self, parts: &[&CpuTensor]) -> CpuTensor {
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "concat of different widths"
        );
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        CpuTensor::new(data, parts.iter().map(|p| p.rows).sum(), cols)
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[u32]) -> CpuTensor {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            assert!((r as usize) < x.rows, "row {r} of a {}-row tensor", x.rows);
            data.extend_from_slice(x.row(r as usize));
        }
        CpuTensor::new(data, rows.len(), x.cols)
    }

    fn get_rows(&self, table: &CpuWeight, ids: &[u32]) -> CpuTensor {
        let dim = table.row_len();
        let mut out = vec![0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim)) {
            assert!(
                (id as usize) < table.n_rows(),
                "token id {id} outside the table"
            );
            table.dequantize_row_into(id as usize, row);
        }
        CpuTensor::new(out, ids.len(), dim)
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuWeight) -> CpuTensor {
        matmul::matmul(&self.pool, x, w)
    }

    fn add(&self, a: CpuTensor, b: &CpuTensor) -> CpuTensor {
        assert_eq!(
            (a.rows, a.cols),
            (b.rows, b.cols),
            "add of different shapes"
        );
        self.map_rows_in_place(a, |r, row| {
            row.iter_mut().zip(b.row(r)).for_each(|(x, y)| *x += y)
        })
    }

    fn add_bias(&self, x: CpuTensor, bias: &CpuWeight) -> CpuTensor {
        let b = bias.f32s();
        assert_eq!(b.len(), x.cols, "bias length");
        self.map_rows_in_place(x, |_, row| {
            row.iter_mut().zip(&*b).for_each(|(v, b)| *v += b)
        })
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuWeight, eps: f32) -> CpuTensor {
        let g = weight.f32s();
        assert_eq!(g.len(), x.cols, "norm weight length");
        self.map_rows(x, |_, row| {
            // ggml sums the squares in double precision.
            let sum = sum_f64(row, |v| f64::from(v * v));
            let mean = (sum / row.len() as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            row.iter_mut()
                .zip(&*g)
                .for_each(|(v, g)| *v = *v * scale * g);
        })
    }

    fn layer_norm(
        &self,
        x: &CpuTensor,
        weight: &CpuWeight,
        bias: &CpuWeight,
        eps: f32,
    ) -> CpuTensor {
        let (g, b) = (weight.f32s(), bias.f32s());
        assert_eq!((g.len(), b.len()), (x.cols, x.cols), "norm weight length");
        self.map_rows(x, |_, row| {
            let n = row.len() as f64;
            let mean = sum_f64(row, f64::from) / n;
            let var = sum_f64(row, |v| (f64::from(v) - mean).powi(2)) / n;
            let scale = 1.0 / (var + f64::from(eps)).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&*g).zip(&*b) {
                *v = ((f64::from(*v) - mean) * scale) as f32 * g + b;
            }
        })
    }

    fn rope(&self, x: &CpuTensor, start: usize, n_heads: usize, rope: Rope) -> CpuTensor {
        let head_dim = x.cols / n_heads;
        assert!(
            rope.n_rot <= head_dim && rope.n_rot.is_multiple_of(2),
            "rope dimensions"
        );
        // Inverse frequencies as transformers computes them: base^(-2i/n_rot) in f32.
        let inv_freq: Vec<f32> = (0..rope.n_rot / 2)
            .map(|i| 1.0 / rope.base.powf((2 * i) as f32 / rope.n_rot as f32))
            .collect();
        self.map_rows(x, |r, row| {
            let p = (start + r) as f32 * rope.freq_scale;
            for head in row.chunks_exact_mut(head_dim) {
                for (i, &f) in inv_freq.iter().enumerate() {
                    let (sin, cos) = (p * f).sin_cos();
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * cos - x1 * sin;
                    head[2 * i + 1] = x0 * sin + x1 * cos;
                }
            }
        })
    }

    fn silu_mul(&self, gate: CpuTensor, up: &CpuTensor) -> CpuTensor {
        assert_eq!(
            (gate.rows, gate.cols),
            (up.rows, up.cols),
            "silu_mul shapes"
        );
        let swish = vector::vector_ops().swish;
        self.map_rows_in_place(gate, |r, row| {
            swish(row, 1.0);
            row.iter_mut().zip(up.row(r)).for_each(|(g, &u)| *g *= u);
        })
    }

    fn gelu(&self, x: CpuTensor) -> CpuTensor {
        self.map_in_place(x, |v| {
            0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
        })
    }

    fn quick_gelu(&self, x: CpuTensor) -> CpuTensor {
        let swish = vector::vector_ops().swish;
        self.map_rows_in_place(x, |_, row| swish(row, 1.702))
    }

    fn new_kv_cache(
        &self,
        n_layers: usize,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Result<CpuKvCache, BackendError> {
        Ok(CpuKvCache::new(
            n_layers, n_ctx, n_kv_heads, head_dim, kv_type,
        ))
    }

    fn attention_cached(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        cache: &mut CpuKvCache,
        layer: usize,
        start: usize,
        heads: Heads,
    ) -> CpuTensor {
        cache.store(layer, start, k, v);
        let kv = cache.layer(layer, start + q.rows);
        attention::attend_cached(&self.pool, q, kv, heads, start)
    }

    fn attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, heads: Heads) -> CpuTensor {
        let kv = attention::Kv::rows(&k.data, &v.data, heads);
        attention::attend(&self.pool, q, kv, heads, None)
    }
}

/// `Σ f(v)` over `row` in double precision, as 8 interleaved partial sums: the compiler
/// keeps them in vector registers, where one running sum is a chain of dependent adds (the
/// norms' sums were 1–1.4% of a CLIP encode that way).
fn sum_f64(row: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut partial = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += f(v);
        }
    }
    partial.iter().sum::<f64>() + rest
}
