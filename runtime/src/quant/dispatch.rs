//! Which kernels run: the pure table from (weight type, CPU path) to the activation quantizer
//! and dot product that matmul uses (DESIGN.md, decision 5). The CPU path itself, detected
//! once per process and overridable with `LLAVA_CPU`, is [`CpuPath`]'s (`cpu_path.rs`),
//! re-exported here.
//!
//! Every SIMD activation quantizer writes the same bytes as the scalar one, so the paths differ
//! only in the float summation order of the dot products.

use bytemuck::{cast_slice, cast_slice_mut};

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
use super::cpu_path::neon;
#[cfg(target_arch = "x86_64")]
use super::cpu_path::{avx2, avx512, avx_vnni};
use super::{BlockFormat, BlockQ8K, BlockQ8_0, GgmlType, VecDot};

pub use super::cpu_path::{
    cpu_path, report_skipped_paths, set_cpu_path, CpuPath, CpuPathUnavailable, UnknownCpuPath,
    CPU_PATH_ENV,
};

/// Quantizes one f32 row into the raw bytes of an activation row.
pub type QuantizeFn = fn(&[f32], &mut [u8]);
/// Dot product of one weight row with one quantized activation row, both as raw bytes
/// (aligned for their block structs, the same number of elements).
pub type DotFn = fn(&[u8], &[u8]) -> f32;

/// Activation rows a [`DotTileFn`] multiplies at once.
pub const TILE_ROWS: usize = 4;

/// Dot products of one weight row with [`TILE_ROWS`] activation rows: `out[i]` is
/// `dot(w, a[i])` up to the order of the float additions. Each weight block is loaded and
/// unpacked once for all the rows, which is what makes a batch (prefill, the vision tower)
/// cheaper per row than one row at a time.
pub type DotTileFn = fn(&[u8], [&[u8]; TILE_ROWS]) -> [f32; TILE_ROWS];

/// Weight rows a [`DotRowsFn`] takes at once.
pub const DOT_ROWS: usize = 8;

/// Dot products of [`DOT_ROWS`] weight rows with one activation row (decode): `out[i]` is
/// `dot(w[i], a)` up to the order of the float additions. Each activation block is loaded
/// once for all the rows.
pub type DotRowsFn = fn([&[u8]; DOT_ROWS], &[u8]) -> [f32; DOT_ROWS];

/// An [`Interleaving`]'s batch kernel: a group of [`DOT_ROWS`] interleaved weight rows against
/// [`TILE_ROWS`] activation rows, with each row's [`ActBlockSum`]s.
pub type InterleavedGemmFn =
    fn(&[u8], [&[u8]; TILE_ROWS], [&[ActBlockSum]; TILE_ROWS]) -> [[f32; DOT_ROWS]; TILE_ROWS];

/// Activation rows a [`WideGemm`] multiplies at once.
pub const WIDE_TILE_ROWS: usize = 16;

/// Weight groups a [`WideGemm`] call takes at most.
pub const WIDE_MAX_GROUPS: usize = 2;

/// What a [`WideGemm`] call writes: `out[n][8g + r]` is row `r` of its group `g`'s dot with
/// activation row `n` (what the columns past the groups it was given hold is unspecified).
pub type WideOut = [[f32; WIDE_MAX_GROUPS * DOT_ROWS]; WIDE_TILE_ROWS];

/// An [`Interleaving`]'s wider batch kernel: one or two consecutive groups of [`DOT_ROWS`]
/// interleaved weight rows against [`WIDE_TILE_ROWS`] activation rows, which `pack` first lays
/// out block by block for it (once per matmul, not once per group of weight rows). The kernels
/// unpack a block's weights once for 16 activation rows instead of 4, and read each row's block
/// and scale at fixed offsets from one pointer:
/// - ARM's interleaved kernels (`sdot`, and `smmla` for Q4_0 and Q8_0 where the CPU has i8mm),
///   one group per call (a group's 8 rows fill two 128-bit registers);
/// - AVX-512 VNNI's (Q4_0, Q8_0, Q4_K, Q6_K), two groups per call: a 512-bit register holds a
///   4-byte run of 16 rows, two groups side by side.
#[derive(Clone, Copy)]
pub struct WideGemm {
    /// The bytes of a packed tile of rows of the given number of activation blocks.
    pub packed_bytes: fn(usize) -> usize,
    /// Packs [`WIDE_TILE_ROWS`] quantized activation rows (raw bytes, one length) into `dst`.
    pub pack: fn([&[u8]; WIDE_TILE_ROWS], &mut [u8]),
    /// The most groups one call takes (1 or [`WIDE_MAX_GROUPS`]).
    pub groups: usize,
    /// The dots of 1..=`groups` consecutive groups (`w`, whole groups) with each packed
    /// activation row, into [`WideOut`], up to the order of the float additions.
    pub gemm: fn(&[u8], &[u8], &mut WideOut),
}

/// An activation block's scale as f32 and the sum of its quants: what a batch kernel would
/// otherwise work out again for every group of weight rows it passes the block to (Q4_0's
/// `-8` offset costs `8·sum`), so a matmul computes it once per call ([`act_block_sums`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActBlockSum {
    /// The block's scale, as f32.
    pub d: f32,
    /// The sum of the block's quants (all 32 of Q8_0, all 256 of Q8_K).
    pub sum: i32,
}

/// The [`ActBlockSum`] of every block of a quantized activation row of type `ty`, into `out`
/// (one per block); `None` for a type without block sums (only Q8_0 and Q8_K have them).
pub fn act_block_sums(ty: GgmlType, row: &[u8], out: &mut [ActBlockSum]) -> Option<()> {
    match ty {
        GgmlType::Q8_0 => {
            let blocks: &[BlockQ8_0] = cast_slice(row);
            assert_eq!(blocks.len(), out.len(), "one sum per block");
            for (out, b) in out.iter_mut().zip(blocks) {
                let sum = b.qs.iter().map(|&q| i32::from(q)).sum();
                *out = ActBlockSum {
                    d: b.d.to_f32(),
                    sum,
                };
            }
        }
        GgmlType::Q8K => {
            let blocks: &[BlockQ8K] = cast_slice(row);
            assert_eq!(blocks.len(), out.len(), "one sum per block");
            for (out, b) in out.iter_mut().zip(blocks) {
                let sum = b.bsums.iter().map(|&s| i32::from(s)).sum();
                *out = ActBlockSum { d: b.d, sum };
            }
        }
        _ => return None,
    }
    Some(())
}

/// Weights a path multiplies faster once [`DOT_ROWS`] rows at a time are interleaved block by
/// block (on x86: Q4_0, Q8_0, Q4_K and Q6_K, see [`InterleavedBlock`]): how to build the
/// interleaved copy, read a row back, and dot a group of rows. Group `g` holds rows
/// `8g..8g + 8` and starts at `g · group_bytes(row bytes)`.
#[derive(Clone, Copy)]
pub struct Interleaving {
    /// The bytes of a group of `DOT_ROWS` rows of the given length in bytes.
    pub group_bytes: fn(usize) -> usize,
    /// Interleaves `DOT_ROWS` rows (raw weight bytes, one length) into `dst`.
    pub interleave: fn([&[u8]; DOT_ROWS], &mut [u8]),
    /// Row `r` of an interleaved group, as the plain row's bytes.
    pub row: fn(&[u8], usize, &mut [u8]),
    /// The dots of a group's rows with one activation row: `out[r]` is row `r`'s `dot` up to
    /// the order of the float additions.
    pub dot: fn(&[u8], &[u8]) -> [f32; DOT_ROWS],
    /// The same against [`TILE_ROWS`] activation rows at once (batches): `out[n][r]` is row
    /// `r`'s dot with activation row `n`, given each activation row's [`act_block_sums`].
    pub gemm: InterleavedGemmFn,
    /// A wider batch kernel, where the path has one; full tiles of a batch take it, and the
    /// rest `gemm`.
    pub wide: Option<WideGemm>,
}

/// A block of [`DOT_ROWS`] interleaved rows of format `Row` (`BlockQ4_0x8`, `BlockQ8_0x8`,
/// `BlockQ4Kx8`, `BlockQ6Kx8`).
pub trait InterleavedBlock: bytemuck::Pod {
    /// The format of each of the rows.
    type Row: VecDot;
    /// Block `i` of each of the rows, interleaved.
    fn from_rows(rows: [&Self::Row; DOT_ROWS]) -> Self;
    /// Row `r`'s block, exactly as it was before interleaving.
    fn row(&self, r: usize) -> Self::Row;
}

/// The [`Interleaving`] of `X` with the scalar reference kernels: each row's own dot,
/// de-interleaved, bit-exact. A path with kernels for the layout swaps in its `dot` and
/// `gemm`; the scalar path does not interleave (it would gain nothing).
pub fn interleaving<X: InterleavedBlock>() -> Interleaving {
    fn group_bytes<X: InterleavedBlock>(row_bytes: usize) -> usize {
        row_bytes / std::mem::size_of::<X::Row>() * std::mem::size_of::<X>()
    }
    fn interleave<X: InterleavedBlock>(rows: [&[u8]; DOT_ROWS], dst: &mut [u8]) {
        let rows: [&[X::Row]; DOT_ROWS] = rows.map(cast_slice);
        for (i, out) in cast_slice_mut::<u8, X>(dst).iter_mut().enumerate() {
            *out = X::from_rows(std::array::from_fn(|r| &rows[r][i]));
        }
    }
    fn row<X: InterleavedBlock>(group: &[u8], r: usize, dst: &mut [u8]) {
        let dst: &mut [X::Row] = cast_slice_mut(dst);
        for (out, block) in dst.iter_mut().zip(cast_slice::<u8, X>(group)) {
            *out = block.row(r);
        }
    }
    fn dot<X: InterleavedBlock>(group: &[u8], a: &[u8]) -> [f32; DOT_ROWS] {
        let group: &[X] = cast_slice(group);
        std::array::from_fn(|r| {
            let row: Vec<X::Row> = group.iter().map(|block| block.row(r)).collect();
            X::Row::vec_dot(&row, cast_slice(a))
        })
    }
    fn gemm<X: InterleavedBlock>(
        group: &[u8],
        a: [&[u8]; TILE_ROWS],
        _sums: [&[ActBlockSum]; TILE_ROWS],
    ) -> [[f32; DOT_ROWS]; TILE_ROWS] {
        a.map(|a| dot::<X>(group, a))
    }
    Interleaving {
        group_bytes: group_bytes::<X>,
        interleave: interleave::<X>,
        row: row::<X>,
        dot: dot::<X>,
        gemm: gemm::<X>,
        wide: None,
    }
}

/// How to multiply by weights of one type on one CPU path.
#[derive(Clone, Copy)]
pub struct RowKernels {
    /// The type activations are quantized to (GGUF-AND-LLAVA.md §2.4).
    pub act_type: GgmlType,
    /// Quantizes one f32 row into `act_type` bytes.
    pub quantize: QuantizeFn,
    /// Dot product of one weight row with one quantized activation row.
    pub dot: DotFn,
    /// The same for [`DOT_ROWS`] weight rows at once, where the path has such a kernel.
    pub dot_rows: Option<DotRowsFn>,
    /// The same for [`TILE_ROWS`] activation rows at once, where the path has such a kernel.
    pub dot_tile: Option<DotTileFn>,
    /// Where the path multiplies these weights faster interleaved, how.
    pub interleaved: Option<Interleaving>,
    /// Whether batches (prefill, the vision tower) widen these weights, a block of rows at a
    /// time, and the quantized activations to f32, exactly, and multiply them with an f32 GEMM
    /// micro-kernel instead of `dot_tile` (F16 on AVX2: converting once per block beats
    /// converting in every dot). The products are the same; only the order of the additions
    /// differs.
    pub widen_batches: bool,
    /// Where `quantize` comes from: the requested path, or `Scalar` where it has none for
    /// `act_type`.
    pub quantize_path: CpuPath,
    /// Where `dot` comes from, likewise.
    pub dot_path: CpuPath,
}

/// The kernels for weights of type `ty` on `path`, falling back to the scalar kernel for each
/// one the path does not have (or cannot run here); `None` if the type cannot be multiplied
/// with at all.
pub fn row_kernels(ty: GgmlType, path: CpuPath) -> Option<RowKernels> {
    // The weight formats of the one table (`block_formats`), each with its scalar kernels;
    // activation-only formats have none.
    macro_rules! scalar_of {
        (weight, $b:ty) => {
            scalar::<$b>()
        };
        (activation, $b:ty) => {
            return None
        };
    }
    macro_rules! arms {
        ($t:expr ; $($v:ident : $b:ty = $kind:ident),*) => {
            match $t {
                $(GgmlType::$v => scalar_of!($kind, $b),)*
                _ => return None,
            }
        };
    }
    let scalar = block_formats!(arms!(ty));
    Some(match path {
        CpuPath::Scalar => scalar,
        CpuPath::Avx2 => with_avx2(scalar, ty),
        CpuPath::AvxVnni => with_avx_vnni(scalar, ty),
        CpuPath::Avx512 | CpuPath::Avx512Vnni => with_avx512(scalar, ty, path),
        CpuPath::Neon | CpuPath::NeonDotprod => with_neon(scalar, ty, path),
    })
}

/// `kernels` with each kernel the AVX2 path has for `ty` swapped in, if the CPU can run them.
#[cfg(target_arch = "x86_64")]
fn with_avx2(mut kernels: RowKernels, ty: GgmlType) -> RowKernels {
    let Some(avx2) = avx2() else {
        return kernels;
    };
    if let Some(quantize) = avx2.quantize(kernels.act_type) {
        kernels.quantize = quantize;
        kernels.quantize_path = CpuPath::Avx2;
    }
    // Batches of these types multiply faster as f32 (backend::cpu::gemm) than through integer
    // tiles. Measured with the earlier 3×4 f32 micro-kernel: TinyLlama Q4_0 pp256 29.3 → 40.3
    // t/s, CLIP-L's F16 tower 7.6 → 6.3 s and its Q8_0 one likewise. Not the K-quants: Q4_K_M
    // pp256 41.6 → 37.2 t/s widened then (their tiles unpack 256 weights per scale load); with
    // the packed 6×16 GEMM it is a draw (pp512 39.2 against 39.0–42.5, noisy), 12% of it the
    // scalar K-quant dequantization. Nor Q4_1/Q5_1: their dots take the activations' sum from
    // Q8_1's f16 `s` field, which the widened values do not round.
    kernels.widen_batches = widened_in_batches(ty);
    if let Some(dot) = avx2.dot(ty) {
        kernels.dot = dot;
        kernels.dot_rows = avx2.dot_rows(ty);
        kernels.interleaved = avx2.interleaved(ty);
        kernels.dot_tile = avx2.dot_tile(ty);
        kernels.dot_path = CpuPath::Avx2;
    }
    kernels
}

#[cfg(not(target_arch = "x86_64"))]
fn with_avx2(kernels: RowKernels, _ty: GgmlType) -> RowKernels {
    kernels
}

/// `kernels` with the AVX2 ones swapped in, then the batch kernels of interleaved weights
/// that use AVX-VNNI's `vpdpbusd`, if the CPU can run them. Its dots, tiles and row kernels
/// are AVX2's, named by this path in `dot_path` (as the path they run on; the quantizers keep
/// `Avx2`, as on the AVX-512 paths).
#[cfg(target_arch = "x86_64")]
fn with_avx_vnni(kernels: RowKernels, ty: GgmlType) -> RowKernels {
    let Some(vnni) = avx_vnni() else {
        return kernels;
    };
    let mut kernels = with_avx2(kernels, ty);
    if kernels.dot_path == CpuPath::Avx2 {
        kernels.dot_path = CpuPath::AvxVnni;
    }
    if let (Some(how), Some(gemm)) = (kernels.interleaved, vnni.interleaved_gemm(ty)) {
        kernels.interleaved = Some(Interleaving { gemm, ..how });
    }
    kernels
}

#[cfg(not(target_arch = "x86_64"))]
fn with_avx_vnni(kernels: RowKernels, _ty: GgmlType) -> RowKernels {
    kernels
}

/// `kernels` with the AVX2 ones swapped in (every AVX-512 CPU runs them: the quantizers, the
/// dots with no 512-bit version, `widen_batches`), then each dot the AVX-512 `path` (`Avx512`
/// or `Avx512Vnni`) has for `ty`, if the CPU can run them.
#[cfg(target_arch = "x86_64")]
fn with_avx512(kernels: RowKernels, ty: GgmlType, path: CpuPath) -> RowKernels {
    let Some(avx512) = avx512(path == CpuPath::Avx512Vnni) else {
        return kernels;
    };
    let mut kernels = with_avx2(kernels, ty);
    // Batches of interleaved weights with `vpdpbusd` (the VNNI level); decode stays AVX2's.
    if let (Some(how), Some(gemm)) = (kernels.interleaved, avx512.interleaved_gemm(ty)) {
        kernels.interleaved = Some(Interleaving { gemm, ..how });
    }
    if let (Some(how), Some(wide)) = (kernels.interleaved, avx512.wide_gemm(ty)) {
        kernels.interleaved = Some(Interleaving {
            wide: Some(wide),
            ..how
        });
    }
    if let Some(dot) = avx512.dot(ty) {
        kernels.dot = dot;
        // From the same path as `dot`, or none: a tile must match `dot_path`.
        kernels.dot_tile = avx512.dot_tile(ty);
        // The row kernels of decode stay AVX2's (Q4_0's 8-row transpose, Q5_0's 4 rows): valid
        // on these CPUs, and they differ from `dot` only in the order of additions, as rows
        // kernels may.
        kernels.dot_path = path;
    }
    kernels
}

#[cfg(not(target_arch = "x86_64"))]
fn with_avx512(kernels: RowKernels, _ty: GgmlType, _path: CpuPath) -> RowKernels {
    kernels
}

/// `kernels` with each kernel the NEON `path` (`Neon` or `NeonDotprod`) has for `ty` swapped
/// in, if the CPU can run them.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn with_neon(mut kernels: RowKernels, ty: GgmlType, path: CpuPath) -> RowKernels {
    let Some(neon) = neon(path == CpuPath::NeonDotprod) else {
        return kernels;
    };
    if let Some(quantize) = neon.quantize(kernels.act_type) {
        kernels.quantize = quantize;
        kernels.quantize_path = path;
    }
    // Batches of the types AVX2 widens go through the f32 GEMM here too (its NEON
    // micro-kernel, `backend/cpu/gemm/arm.rs`), rather than a dot per pair of rows; on the
    // `sdot` level Q4_0 and Q8_0 take the interleaved integer GEMM instead (`matmul::plan`).
    kernels.widen_batches = widened_in_batches(ty);
    if let Some(dot) = neon.dot(ty) {
        kernels.dot = dot;
        // No NEON tile or row kernels: one from another path would not match `dot_path`.
        // Interleaved weights (the `sdot` level) take the place of both.
        kernels.dot_rows = None;
        kernels.dot_tile = None;
        kernels.interleaved = neon.interleaved(ty);
        kernels.dot_path = path;
    }
    kernels
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn with_neon(kernels: RowKernels, _ty: GgmlType, _path: CpuPath) -> RowKernels {
    kernels
}

/// The types whose batches the SIMD paths widen to f32 for the GEMM micro-kernel (see
/// `with_avx2` for the measurements behind the list).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn widened_in_batches(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q8_0
    )
}

fn quantize_as<W: VecDot>(src: &[f32], dst: &mut [u8]) {
    W::Activation::quantize_row(src, cast_slice_mut(dst));
}

fn dot_as<W: VecDot>(w: &[u8], a: &[u8]) -> f32 {
    W::vec_dot(cast_slice(w), cast_slice(a))
}

fn scalar<W: VecDot>() -> RowKernels {
    RowKernels {
        act_type: W::Activation::TYPE,
        quantize: quantize_as::<W>,
        dot: dot_as::<W>,
        dot_rows: None,
        interleaved: None,
        dot_tile: None,
        widen_batches: false,
        quantize_path: CpuPath::Scalar,
        dot_path: CpuPath::Scalar,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_path_uses_only_scalar_kernels() {
        for ty in GgmlType::ALL {
            if let Some(k) = row_kernels(ty, CpuPath::Scalar) {
                assert_eq!(
                    (k.quantize_path, k.dot_path),
                    (CpuPath::Scalar, CpuPath::Scalar)
                );
            }
        }
    }

    #[test]
    fn the_avx2_path_covers_the_types_it_claims_where_the_cpu_has_it() {
        use GgmlType::*;
        if !CpuPath::Avx2.is_available() {
            if cfg!(target_arch = "x86_64") {
                report_skipped_paths(
                    "the_avx2_path_covers_the_types_it_claims_where_the_cpu_has_it",
                );
            }
            return;
        }
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K, F16] {
            let k = row_kernels(ty, CpuPath::Avx2).unwrap();
            assert_eq!(
                (k.quantize_path, k.dot_path),
                (CpuPath::Avx2, CpuPath::Avx2),
                "{ty}"
            );
        }
        // No SIMD dot yet, but the Q8_K activations are quantized with AVX2.
        let k = row_kernels(Q3K, CpuPath::Avx2).unwrap();
        assert_eq!(
            (k.quantize_path, k.dot_path),
            (CpuPath::Avx2, CpuPath::Scalar)
        );
    }

    #[test]
    fn the_avx_vnni_path_is_avx2_with_its_own_batch_kernels_where_the_cpu_has_it() {
        use GgmlType::*;
        if !CpuPath::AvxVnni.is_available() {
            if cfg!(target_arch = "x86_64") {
                report_skipped_paths(
                    "the_avx_vnni_path_is_avx2_with_its_own_batch_kernels_where_the_cpu_has_it",
                );
            }
            return;
        }
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K, F16, Q3K] {
            let k = row_kernels(ty, CpuPath::AvxVnni).unwrap();
            let avx2 = row_kernels(ty, CpuPath::Avx2).unwrap();
            let dot_path = match avx2.dot_path {
                CpuPath::Avx2 => CpuPath::AvxVnni,
                other => other,
            };
            assert_eq!(
                (k.quantize_path, k.dot_path),
                (avx2.quantize_path, dot_path),
                "{ty}"
            );
            assert!(k.dot as usize == avx2.dot as usize, "{ty}");
            assert_eq!(k.widen_batches, avx2.widen_batches, "{ty}");
            // Its own batch kernels for interleaved Q4_0 and Q8_0; the rest of the layout AVX2's.
            match (k.interleaved, avx2.interleaved) {
                (Some(k), Some(avx2)) => {
                    assert!(k.dot as usize == avx2.dot as usize, "{ty}");
                    let own = k.gemm as usize != avx2.gemm as usize;
                    assert_eq!(own, matches!(ty, Q4_0 | Q8_0), "{ty}");
                }
                (None, None) => {}
                _ => panic!("{ty}: interleaved on one path only"),
            }
        }
    }

    #[test]
    fn the_avx512_paths_cover_the_types_they_claim_where_the_cpu_has_them() {
        use GgmlType::*;
        if cfg!(target_arch = "x86_64") {
            report_skipped_paths(
                "the_avx512_paths_cover_the_types_they_claim_where_the_cpu_has_them",
            );
        }
        for path in [CpuPath::Avx512, CpuPath::Avx512Vnni] {
            if !path.is_available() {
                continue;
            }
            // Their own dots (and K-quant tiles); AVX2's quantizers.
            for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K, F16] {
                let k = row_kernels(ty, path).unwrap();
                assert_eq!((k.quantize_path, k.dot_path), (CpuPath::Avx2, path), "{ty}");
                assert_eq!(k.dot_tile.is_some(), matches!(ty, Q4K | Q5K | Q6K), "{ty}");
                let avx2 = row_kernels(ty, CpuPath::Avx2).unwrap();
                assert_eq!(k.widen_batches, avx2.widen_batches, "{ty}");
            }
            // Nothing 512-bit for Q3_K: AVX2's quantizer, the scalar dot.
            let k = row_kernels(Q3K, path).unwrap();
            assert_eq!(
                (k.quantize_path, k.dot_path),
                (CpuPath::Avx2, CpuPath::Scalar)
            );
        }
    }

    #[test]
    fn the_neon_paths_cover_the_types_they_claim_where_the_cpu_has_them() {
        use GgmlType::*;
        if cfg!(target_arch = "aarch64") {
            report_skipped_paths(
                "the_neon_paths_cover_the_types_they_claim_where_the_cpu_has_them",
            );
        }
        for path in [CpuPath::Neon, CpuPath::NeonDotprod] {
            if !path.is_available() {
                continue;
            }
            for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K, F16] {
                let k = row_kernels(ty, path).unwrap();
                assert_eq!((k.quantize_path, k.dot_path), (path, path), "{ty}");
            }
            let k = row_kernels(Q3K, path).unwrap();
            assert_eq!((k.quantize_path, k.dot_path), (path, CpuPath::Scalar));
        }
    }

    #[test]
    fn every_path_covers_the_same_types_with_the_same_activation_format() {
        for ty in GgmlType::ALL {
            let s = row_kernels(ty, CpuPath::Scalar);
            for path in CpuPath::ALL {
                let v = row_kernels(ty, path);
                assert_eq!(s.is_some(), v.is_some(), "{ty} {path}");
                if let (Some(s), Some(v)) = (s, v) {
                    assert_eq!(s.act_type, v.act_type, "{ty} {path}");
                }
            }
        }
    }
}
