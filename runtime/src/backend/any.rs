//! A backend chosen at run time: the CPU or (with the `gpu` feature) the GPU, behind one type,
//! so a front end can take `--device` from its user and still be written once against
//! [`Backend`]. Each op forwards to the backend in use; tensors, weights and caches carry
//! which backend made them, and mixing them is a bug (it panics).

use std::sync::Arc;

use super::cpu::{CpuKvCache, CpuTensor, CpuWeight};
#[cfg(feature = "gpu")]
use super::gpu::{GpuBackend, GpuKvCache, GpuTensor, GpuWeight};
use super::{Backend, BackendError, CpuBackend, Heads, KvType, Rope};
use crate::gguf::GgufFile;

/// The CPU or the GPU backend. (One lives per process: its size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// The GPU backend.
    #[cfg(feature = "gpu")]
    Gpu(GpuBackend),
}

/// Defines one of the backend's value types as an enum over the two backends, with accessors
/// that unwrap the variant of the backend in use.
macro_rules! either {
    ($(#[$doc:meta])* $name:ident, $cpu:ty, $gpu:ty) => {
        $(#[$doc])*
        pub enum $name {
            /// Made by the CPU backend.
            Cpu($cpu),
            /// Made by the GPU backend.
            #[cfg(feature = "gpu")]
            Gpu($gpu),
        }

        // Not every type uses both accessors.
        #[allow(dead_code)]
        impl $name {
            fn cpu(&self) -> &$cpu {
                match self {
                    $name::Cpu(v) => v,
                    #[cfg(feature = "gpu")]
                    _ => panic!(concat!("a GPU ", stringify!($name), " given to the CPU backend")),
                }
            }

            #[cfg(feature = "gpu")]
            fn gpu(&self) -> &$gpu {
                match self {
                    $name::Gpu(v) => v,
                    _ => panic!(concat!("a CPU ", stringify!($name), " given to the GPU backend")),
                }
            }
        }
    };
}

either!(
    /// A tensor of [`AnyBackend`].
    AnyTensor, CpuTensor, GpuTensor
);
either!(
    /// A weight of [`AnyBackend`].
    AnyWeight, CpuWeight, GpuWeight
);
either!(
    /// A KV cache of [`AnyBackend`].
    AnyKvCache, CpuKvCache, GpuKvCache
);

impl AnyTensor {
    fn into_cpu(self) -> CpuTensor {
        match self {
            AnyTensor::Cpu(v) => v,
            #[cfg(feature = "gpu")]
            _ => panic!("a GPU tensor given to the CPU backend"),
        }
    }

    #[cfg(feature = "gpu")]
    fn into_gpu(self) -> GpuTensor {
        match self {
            AnyTensor::Gpu(v) => v,
            _ => panic!("a CPU tensor given to the GPU backend"),
        }
    }
}

/// The `cpu` expression with `$b` bound to the CPU backend, or the `gpu` one with `$b` bound to
/// the GPU backend, whichever is in use.
macro_rules! forward {
    ($self:expr, |$b:ident| cpu: $cpu:expr, gpu: $gpu:expr) => {
        match $self {
            AnyBackend::Cpu($b) => $cpu,
            #[cfg(feature = "gpu")]
            AnyBackend::Gpu($b) => $gpu,
        }
    };
}

impl Backend for AnyBackend {
    type Tensor = AnyTensor;
    type Weight = AnyWeight;
    type KvCache = AnyKvCache;

    fn name(&self) -> &'static str {
        forward!(self, |b| cpu: b.name(), gpu: b.name())
    }

    fn load_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<AnyWeight, BackendError> {
        forward!(self, |b|
            cpu: b.load_weight(file, name).map(AnyWeight::Cpu),
            gpu: b.load_weight(file, name).map(AnyWeight::Gpu))
    }

    fn load_matrix(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        row_len: usize,
    ) -> Result<AnyWeight, BackendError> {
        forward!(self, |b|
            cpu: b.load_matrix(file, name, row_len).map(AnyWeight::Cpu),
            gpu: b.load_matrix(file, name, row_len).map(AnyWeight::Gpu))
    }

    fn upload(&self, data: Vec<f32>, rows: usize, cols: usize) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.upload(data, rows, cols)),
            gpu: AnyTensor::Gpu(b.upload(data, rows, cols)))
    }

    fn download(&self, t: &AnyTensor) -> Result<Vec<f32>, BackendError> {
        forward!(self, |b| cpu: b.download(t.cpu()), gpu: b.download(t.gpu()))
    }

    fn shape(&self, t: &AnyTensor) -> (usize, usize) {
        forward!(self, |b| cpu: b.shape(t.cpu()), gpu: b.shape(t.gpu()))
    }

    fn slice_rows(&self, x: &AnyTensor, start: usize, len: usize) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.slice_rows(x.cpu(), start, len)),
            gpu: AnyTensor::Gpu(b.slice_rows(x.gpu(), start, len)))
    }

    fn concat_rows(&self, parts: &[&AnyTensor]) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.concat_rows(&parts.iter().map(|p| p.cpu()).collect::<Vec<_>>())),
            gpu: AnyTensor::Gpu(b.concat_rows(&parts.iter().map(|p| p.gpu()).collect::<Vec<_>>())))
    }

    fn gather_rows(&self, x: &AnyTensor, rows: &[u32]) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.gather_rows(x.cpu(), rows)),
            gpu: AnyTensor::Gpu(b.gather_rows(x.gpu(), rows)))
    }

    fn get_rows(&self, table: &AnyWeight, ids: &[u32]) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.get_rows(table.cpu(), ids)),
            gpu: AnyTensor::Gpu(b.get_rows(table.gpu(), ids)))
    }

    fn matmul(&self, x: &AnyTensor, w: &AnyWeight) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.matmul(x.cpu(), w.cpu())),
            gpu: AnyTensor::Gpu(b.matmul(x.gpu(), w.gpu())))
    }

    fn add(&self, a: AnyTensor, x: &AnyTensor) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.add(a.into_cpu(), x.cpu())),
            gpu: AnyTensor::Gpu(b.add(a.into_gpu(), x.gpu())))
    }

    fn add_bias(&self, x: AnyTensor, bias: &AnyWeight) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.add_bias(x.into_cpu(), bias.cpu())),
            gpu: AnyTensor::Gpu(b.add_bias(x.into_gpu(), bias.gpu())))
    }

    fn rms_norm(&self, x: &AnyTensor, weight: &AnyWeight, eps: f32) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.rms_norm(x.cpu(), weight.cpu(), eps)),
            gpu: AnyTensor::Gpu(b.rms_norm(x.gpu(), weight.gpu(), eps)))
    }

    fn layer_norm(
        &self,
        x: &AnyTensor,
        weight: &AnyWeight,
        bias: &AnyWeight,
        eps: f32,
    ) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.layer_norm(x.cpu(), weight.cpu(), bias.cpu(), eps)),
            gpu: AnyTensor::Gpu(b.layer_norm(x.gpu(), weight.gpu(), bias.gpu(), eps)))
    }

    fn rope(&self, x: &AnyTensor, start: usize, n_heads: usize, rope: Rope) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.rope(x.cpu(), start, n_heads, rope)),
            gpu: AnyTensor::Gpu(b.rope(x.gpu(), start, n_heads, rope)))
    }

    fn silu_mul(&self, gate: AnyTensor, up: &AnyTensor) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.silu_mul(gate.into_cpu(), up.cpu())),
            gpu: AnyTensor::Gpu(b.silu_mul(gate.into_gpu(), up.gpu())))
    }

    fn gelu(&self, x: AnyTensor) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.gelu(x.into_cpu())),
            gpu: AnyTensor::Gpu(b.gelu(x.into_gpu())))
    }

    fn quick_gelu(&self, x: AnyTensor) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.quick_gelu(x.into_cpu())),
            gpu: AnyTensor::Gpu(b.quick_gelu(x.into_gpu())))
    }

    fn new_kv_cache(
        &self,
        n_layers: usize,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Result<AnyKvCache, BackendError> {
        forward!(self, |b|
            cpu: b.new_kv_cache(n_layers, n_ctx, n_kv_heads, head_dim, kv_type).map(AnyKvCache::Cpu),
            gpu: b.new_kv_cache(n_layers, n_ctx, n_kv_heads, head_dim, kv_type).map(AnyKvCache::Gpu))
    }

    fn attention_cached(
        &self,
        q: &AnyTensor,
        k: &AnyTensor,
        v: &AnyTensor,
        cache: &mut AnyKvCache,
        layer: usize,
        start: usize,
        heads: Heads,
    ) -> AnyTensor {
        match (self, cache) {
            (AnyBackend::Cpu(b), AnyKvCache::Cpu(c)) => AnyTensor::Cpu(b.attention_cached(
                q.cpu(),
                k.cpu(),
                v.cpu(),
                c,
                layer,
                start,
                heads,
            )),
            #[cfg(feature = "gpu")]
            (AnyBackend::Gpu(b), AnyKvCache::Gpu(c)) => AnyTensor::Gpu(b.attention_cached(
                q.gpu(),
                k.gpu(),
                v.gpu(),
                c,
                layer,
                start,
                heads,
            )),
            #[cfg(feature = "gpu")]
            _ => panic!("a KV cache of another backend"),
        }
    }

    fn attention(&self, q: &AnyTensor, k: &AnyTensor, v: &AnyTensor, heads: Heads) -> AnyTensor {
        forward!(self, |b|
            cpu: AnyTensor::Cpu(b.attention(q.cpu(), k.cpu(), v.cpu(), heads)),
            gpu: AnyTensor::Gpu(b.attention(q.gpu(), k.gpu(), v.gpu(), heads)))
    }
}
