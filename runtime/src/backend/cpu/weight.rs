//! [`CpuWeight`]: a GGUF tensor as the CPU backend holds it, borrowed from the memory map, with
//! the interleaved copy matmul may make of it and the dequantization of vector weights and
//! embedding rows.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use super::pool::Pool;
use crate::gguf::GgufFile;
use crate::quant::{self, GgmlType};

/// A GGUF tensor borrowed from its file's memory map.
#[derive(Clone)]
pub struct CpuWeight {
    pub(super) file: Arc<GgufFile>,
    pub(super) index: usize,
    pub(super) ty: GgmlType,
    /// ggml order: `ne[0]` first.
    pub(super) shape: Vec<u64>,
    /// Whether matmul may replace the mapped data with an interleaved copy (see
    /// [`CpuWeight::interleaved`]).
    pub(super) interleave: bool,
    /// That copy, once made (`None` if its memory could not be mapped); shared by clones.
    pub(super) interleaved: Arc<OnceLock<Option<memmap2::MmapMut>>>,
}

impl CpuWeight {
    /// The tensor's bytes as stored in the file, borrowed from the map.
    pub fn data(&self) -> &[u8] {
        self.file
            .tensor_at(self.index)
            .expect("index taken from the same file")
            .data
    }

    /// The tensor's element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Dimensions in ggml order (`ne[0]` first). For a weight loaded with
    /// [`Backend::load_matrix`](crate::backend::Backend::load_matrix), the `[row_len, rows]` it
    /// is viewed as.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Elements per row (`ne[0]`).
    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (all dimensions after the first).
    pub fn n_rows(&self) -> usize {
        self.shape.iter().skip(1).product::<u64>() as usize
    }

    /// The data with every group of [`quant::DOT_ROWS`] rows interleaved by `how`, if this
    /// weight may be interleaved and its rows come in whole groups; made by the first call, in
    /// parallel on `pool`. The mapped pages are then released (`GgufFile::
    /// release_tensor_pages`), so the copy replaces the mapped tensor in resident memory
    /// rather than doubling it (DESIGN.md, decision 3; Q4_K's copy is 2.8% larger, its scales
    /// unpacked). Every interleaving of a type lays it out the same way, whichever path's
    /// kernels asked for it.
    ///
    /// The copy is an anonymous mapping of its own, not a heap allocation: a 7B model's
    /// 25 MB tensors from malloc filled glibc's 64 MB arena heaps two at a time, beside the
    /// activations, and the freed space around them stayed resident. If the mapping cannot
    /// be made, the weight keeps its mapped layout.
    pub(super) fn interleaved(&self, how: &quant::Interleaving, pool: &Pool) -> Option<&[u8]> {
        let group_rows = quant::DOT_ROWS;
        if !self.interleave || self.n_rows() == 0 || !self.n_rows().is_multiple_of(group_rows) {
            return None;
        }
        let copy = self.interleaved.get_or_init(|| {
            let data = self.data();
            let row_bytes = data.len() / self.n_rows();
            let group_bytes = (how.group_bytes)(row_bytes);
            // The mapping is page-aligned; groups of whole words keep every group after the
            // first aligned for the blocks' 2-byte fields too.
            assert!(group_bytes.is_multiple_of(4), "groups of whole words");
            let n_groups = self.n_rows() / group_rows;
            let mut copy = memmap2::MmapOptions::new()
                .len(n_groups * group_bytes)
                .map_anon()
                .ok()?;
            let copy_bytes: &mut [u8] = &mut copy;
            // A few MB at a time, each part's mapped pages released as soon as it is copied:
            // resident memory never holds much of the tensor twice (the 107 MB output matrix
            // of TinyLlama raised the peak by its size when released at the end).
            let part_groups = (4 << 20) / (group_rows * row_bytes) + 1;
            let src_part = part_groups * group_rows * row_bytes;
            pool.for_each_chunk(copy_bytes, part_groups * group_bytes, |p, dst| {
                let start = p * src_part;
                let src = &data[start..(start + src_part).min(data.len())];
                for (dst, src) in dst
                    .chunks_exact_mut(group_bytes)
                    .zip(src.chunks_exact(group_rows * row_bytes))
                {
                    let rows = std::array::from_fn(|r| &src[r * row_bytes..][..row_bytes]);
                    (how.interleave)(rows, dst)
                }
                self.file
                    .release_tensor_pages(self.index, start..start + src.len());
            });
            Some(copy)
        });
        copy.as_deref()
    }

    /// A vector weight (norm weights, biases) as f32: borrowed from the map when it is stored
    /// as F32, as converters write them; else dequantized (a file may hold them as F16).
    pub(super) fn f32s(&self) -> Cow<'_, [f32]> {
        if self.ty == GgmlType::F32 {
            // Aligned: checked at load.
            return Cow::Borrowed(bytemuck::cast_slice(self.data()));
        }
        let mut out = vec![0f32; self.row_len() * self.n_rows()];
        if self.row_len() > 0 {
            for (r, row) in out.chunks_exact_mut(self.row_len()).enumerate() {
                self.dequantize_row_into(r, row);
            }
        }
        Cow::Owned(out)
    }

    /// Row `r`, dequantized into `out`.
    pub(super) fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let row_bytes = self
            .ty
            .row_bytes(self.row_len() as u64)
            .expect("checked at load") as usize;
        let bytes = &self.data()[r * row_bytes..(r + 1) * row_bytes];
        quant::dequantize_row(self.ty, bytes, out).expect("type and alignment checked at load");
    }
}

impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuWeight({} {:?})", self.ty, self.shape)
    }
}
