//! The CPU backend's KV cache: keys and values of every layer, preallocated, in f32 or f16.

use half::{f16, slice::HalfFloatSliceExt};

use super::attention::{CachedKv, Kv};
use super::CpuTensor;
use crate::backend::KvType;

/// One layer's keys or values, `[n_kv_heads, n_ctx, head_dim]`, in the cache's element type.
/// Held as plain integers for f16 so that the zeroed allocation comes from the allocator's
/// zeroed pages.
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
}

/// Keys and values of every layer, preallocated, each KV head's positions one after another
/// (`[n_kv_heads, n_ctx, head_dim]`): a decode step reads each head's keys and values as one
/// stream. Stored position-major (`[n_ctx, n_kv_heads·head_dim]`), consecutive keys of a head
/// were `n_kv_heads·head_dim` values apart (8 KB in a 7B's f16 cache), each in another page.
pub struct CpuKvCache {
    n_ctx: usize,
    n_kv_heads: usize,
    head_dim: usize,
    keys: Vec<Store>,
    values: Vec<Store>,
}

impl CpuKvCache {
    pub(super) fn new(
        n_layers: usize,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Self {
        let zeroed = || {
            (0..n_layers)
                .map(|_| Store::zeroed(kv_type, n_kv_heads * n_ctx * head_dim))
                .collect()
        };
        CpuKvCache {
            n_ctx,
            n_kv_heads,
            head_dim,
            keys: zeroed(),
            values: zeroed(),
        }
    }

    /// Writes rows of `k` and `v` at positions `start..`.
    pub(super) fn store(&mut self, layer: usize, start: usize, k: &CpuTensor, v: &CpuTensor) {
        let (d, kv_dim) = (self.head_dim, self.n_kv_heads * self.head_dim);
        assert_eq!((k.cols, v.cols), (kv_dim, kv_dim), "KV width");
        assert_eq!(k.rows, v.rows, "as many keys as values");
        assert!(
            start + k.rows <= self.n_ctx,
            "KV cache of {} positions overflows at {}",
            self.n_ctx,
            start + k.rows
        );
        for g in 0..self.n_kv_heads {
            for r in 0..k.rows {
                let at = (g * self.n_ctx + start + r) * d;
                self.keys[layer].write(at, &k.row(r)[g * d..][..d]);
                self.values[layer].write(at, &v.row(r)[g * d..][..d]);
            }
        }
    }

    /// Keys and values of positions `0..len` of `layer`.
    pub(super) fn layer(&self, layer: usize, len: usize) -> CachedKv<'_> {
        assert!(
            len <= self.n_ctx,
            "{len} positions of a {}-position cache",
            self.n_ctx
        );
        let (head_stride, pos_stride) = (self.n_ctx * self.head_dim, self.head_dim);
        match (&self.keys[layer], &self.values[layer]) {
            (Store::F32(keys), Store::F32(values)) => CachedKv::F32(Kv {
                keys,
                values,
                n_kv: len,
                head_stride,
                pos_stride,
            }),
            (Store::F16(keys), Store::F16(values)) => CachedKv::F16(Kv {
                keys: bytemuck::cast_slice(keys),
                values: bytemuck::cast_slice(values),
                n_kv: len,
                head_stride,
                pos_stride,
            }),
            _ => unreachable!("keys and values are stored alike"),
        }
    }
}
