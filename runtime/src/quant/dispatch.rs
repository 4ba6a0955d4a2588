//! Which kernels run: the CPU path (scalar or a SIMD level), detected once per process, and
//! the pure table from (weight type, path) to the activation quantizer and dot product that
//! matmul uses (DESIGN.md, decision 5).
//!
//! The path is the best the running CPU offers, unless `LLAVA_CPU` names one:
//! - `LLAVA_CPU=scalar` forces the scalar reference kernels;
//! - `LLAVA_CPU=avx2` asks for the AVX2 (+FMA, F16C) kernels;
//! - `LLAVA_CPU=avx512` asks for the AVX-512 (F, BW, VL) dot products, `avx512-vnni` for those
//!   that use the VNNI `vpdpbusd` instruction (both quantize activations with AVX2);
//! - `LLAVA_CPU=neon` asks for the plain NEON kernels (64-bit ARM), `neon-dotprod` for those
//!   that use the ARMv8.2 `sdot` instruction;
//! - unset, empty or `auto`: the best available.
//!
//! A path the CPU or this build cannot run (`avx2` or `avx512` on a CPU without it, `neon` on x86, a typo)
//! is not an error: one warning goes to stderr and the best available path is used instead.
//! The variable is read by a library, where aborting the process over it would be worse than
//! running correctly but slower; the warning says what happened.
//!
//! Every SIMD activation quantizer writes the same bytes as the scalar one, so the paths differ
//! only in the float summation order of the dot products.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use bytemuck::{cast_slice, cast_slice_mut};
use half::{bf16, f16};

use super::{
    BlockFormat, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, GgmlType, VecDot,
};

/// The environment variable that forces a [`CpuPath`].
pub const CPU_PATH_ENV: &str = "LLAVA_CPU";

/// A family of CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuPath {
    /// The scalar reference code, on every CPU.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen and later).
    Avx2,
    /// x86-64 with AVX-512F, BW and VL besides AVX2 (Skylake-SP, Ice Lake, Sapphire Rapids,
    /// Zen 4): 512-bit dot products; the activation quantizers, and every kernel it has no
    /// 512-bit version of, are AVX2's.
    Avx512,
    /// `Avx512` with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4 and later): the integer dots
    /// of the 32-element formats use `vpdpbusd`. A path of its own for the reason given at
    /// `NeonDotprod`.
    Avx512Vnni,
    /// 64-bit ARM with NEON, which every aarch64 CPU has (Cortex-A53 and later).
    Neon,
    /// 64-bit ARM with NEON and the dot-product extension (ARMv8.2 `sdot`: Cortex-A55, A76,
    /// Neoverse, Apple M1 and later). It differs from `Neon` only in the integer dots.
    ///
    /// A path of its own, rather than `Neon` choosing `sdot` by itself where the CPU has it:
    /// on a dotprod CPU both levels can then be forced, measured against each other and held
    /// to the scalar reference in one run (`tests/simd_kernels.rs` tests every available
    /// path); otherwise the widening kernels would be tested only on pre-ARMv8.2 cores.
    NeonDotprod,
}

impl CpuPath {
    /// Every path: the scalar one, then the x86-64 and the ARM ones, each from the least to the
    /// most capable.
    pub const ALL: [CpuPath; 6] = [
        CpuPath::Scalar,
        CpuPath::Avx2,
        CpuPath::Avx512,
        CpuPath::Avx512Vnni,
        CpuPath::Neon,
        CpuPath::NeonDotprod,
    ];

    /// The name `LLAVA_CPU` accepts.
    pub fn name(self) -> &'static str {
        match self {
            CpuPath::Scalar => "scalar",
            CpuPath::Avx2 => "avx2",
            CpuPath::Avx512 => "avx512",
            CpuPath::Avx512Vnni => "avx512-vnni",
            CpuPath::Neon => "neon",
            CpuPath::NeonDotprod => "neon-dotprod",
        }
    }

    /// Whether this build has the path's kernels and the running CPU can execute them.
    pub fn is_available(self) -> bool {
        match self {
            CpuPath::Scalar => true,
            CpuPath::Avx2 => avx2().is_some(),
            CpuPath::Avx512 => avx512(false).is_some(),
            CpuPath::Avx512Vnni => avx512(true).is_some(),
            CpuPath::Neon => neon(false).is_some(),
            CpuPath::NeonDotprod => neon(true).is_some(),
        }
    }

    /// The fastest available path: the widest, with the dot-product instructions where the
    /// CPU has them.
    pub fn best_available() -> CpuPath {
        [
            CpuPath::Avx512Vnni,
            CpuPath::Avx512,
            CpuPath::Avx2,
            CpuPath::NeonDotprod,
            CpuPath::Neon,
        ]
        .into_iter()
        .find(|path| path.is_available())
        .unwrap_or(CpuPath::Scalar)
    }
}

/// Tests only: for each SIMD path of the architecture this was built for that the CPU cannot
/// run, one line "`test`: skipped PATH (not on this CPU)", written to the process's stderr
/// directly. The test harness captures `eprintln!` of passing tests, so without this a green
/// run on an AVX2-only machine reads like one that covered AVX-512.
#[doc(hidden)]
pub fn report_skipped_paths(test: &str) {
    let native: &[CpuPath] = if cfg!(target_arch = "x86_64") {
        &[CpuPath::Avx2, CpuPath::Avx512, CpuPath::Avx512Vnni]
    } else if cfg!(target_arch = "aarch64") {
        &[CpuPath::Neon, CpuPath::NeonDotprod]
    } else {
        &[]
    };
    let mut stderr = std::io::stderr().lock();
    for path in native.iter().filter(|p| !p.is_available()) {
        let _ = writeln!(stderr, "{test}: skipped {path} (not on this CPU)");
    }
}

impl fmt::Display for CpuPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CPU path name that is not one of [`CpuPath::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CPU path {0:?} (known: scalar, avx2, avx512, avx512-vnni, neon, neon-dotprod)")]
pub struct UnknownCpuPath(pub String);

impl FromStr for CpuPath {
    type Err = UnknownCpuPath;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCpuPath(s.to_owned()))
    }
}

/// Why [`set_cpu_path`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {0} kernels cannot run here (not built for this architecture, or the CPU lacks the instructions)")]
pub struct CpuPathUnavailable(pub CpuPath);

/// Set by [`set_cpu_path`]; `UNSET` until then.
static OVERRIDE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;
static FROM_ENV: OnceLock<CpuPath> = OnceLock::new();

/// The path matmul's kernels come from: the last [`set_cpu_path`], else `LLAVA_CPU`, else the
/// best available (read once per process).
pub fn cpu_path() -> CpuPath {
    match OVERRIDE.load(Ordering::Relaxed) {
        UNSET => *FROM_ENV.get_or_init(path_from_env),
        i => CpuPath::ALL[usize::from(i)],
    }
}

/// Switches the whole process to `path` (benchmarks comparing paths in one run use this). A
/// matmul already running keeps the kernels it started with.
pub fn set_cpu_path(path: CpuPath) -> Result<(), CpuPathUnavailable> {
    if !path.is_available() {
        return Err(CpuPathUnavailable(path));
    }
    let index = CpuPath::ALL
        .iter()
        .position(|&p| p == path)
        .expect("ALL lists every path");
    OVERRIDE.store(index as u8, Ordering::Relaxed);
    Ok(())
}

fn path_from_env() -> CpuPath {
    let best = CpuPath::best_available();
    let Ok(value) = std::env::var(CPU_PATH_ENV) else {
        return best;
    };
    if value.trim().is_empty() || value.trim().eq_ignore_ascii_case("auto") {
        return best;
    }
    match value.parse::<CpuPath>() {
        Ok(path) if path.is_available() => path,
        Ok(path) => {
            // Best effort: a closed stderr must not panic the process.
            let _ = writeln!(
                std::io::stderr(),
                "warning: {CPU_PATH_ENV}={value}: {}; using {best}",
                CpuPathUnavailable(path)
            );
            best
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {CPU_PATH_ENV}={value}: {e}; using {best}"
            );
            best
        }
    }
}

/// The AVX2 kernels, if this is an x86-64 build on a CPU that has them.
#[cfg(target_arch = "x86_64")]
fn avx2() -> Option<super::x86::Avx2> {
    super::x86::Avx2::detect()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> Option<std::convert::Infallible> {
    None
}

/// The AVX-512 kernels (those using `vpdpbusd` if `vnni`), if this is an x86-64 build on a CPU
/// that has them.
#[cfg(target_arch = "x86_64")]
fn avx512(vnni: bool) -> Option<super::x86::Avx512> {
    if vnni {
        super::x86::Avx512::detect_vnni()
    } else {
        super::x86::Avx512::detect()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512(_vnni: bool) -> Option<std::convert::Infallible> {
    None
}

/// The NEON kernels (those using `sdot` if `dotprod`), if this is a 64-bit ARM build and the
/// CPU has them.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn neon(dotprod: bool) -> Option<super::arm::Neon> {
    if dotprod {
        super::arm::Neon::detect_dotprod()
    } else {
        super::arm::Neon::detect()
    }
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn neon(_dotprod: bool) -> Option<std::convert::Infallible> {
    None
}

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
    use GgmlType::*;
    let scalar = match ty {
        F32 => scalar::<f32>(),
        F16 => scalar::<f16>(),
        BF16 => scalar::<bf16>(),
        Q4_0 => scalar::<BlockQ4_0>(),
        Q4_1 => scalar::<BlockQ4_1>(),
        Q5_0 => scalar::<BlockQ5_0>(),
        Q5_1 => scalar::<BlockQ5_1>(),
        Q8_0 => scalar::<BlockQ8_0>(),
        Q2K => scalar::<BlockQ2K>(),
        Q3K => scalar::<BlockQ3K>(),
        Q4K => scalar::<BlockQ4K>(),
        Q5K => scalar::<BlockQ5K>(),
        Q6K => scalar::<BlockQ6K>(),
        _ => return None,
    };
    Some(match path {
        CpuPath::Scalar => scalar,
        CpuPath::Avx2 => with_avx2(scalar, ty),
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
    kernels.widen_batches = matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q8_0
    );
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

/// `kernels` with the AVX2 ones swapped in (every AVX-512 CPU runs them: the quantizers, the
/// dots with no 512-bit version, `widen_batches`), then each dot the AVX-512 `path` (`Avx512`
/// or `Avx512Vnni`) has for `ty`, if the CPU can run them.
#[cfg(target_arch = "x86_64")]
fn with_avx512(kernels: RowKernels, ty: GgmlType, path: CpuPath) -> RowKernels {
    let Some(avx512) = avx512(path == CpuPath::Avx512Vnni) else {
        return kernels;
    };
    let mut kernels = with_avx2(kernels, ty);
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
    if let Some(dot) = neon.dot(ty) {
        kernels.dot = dot;
        // No NEON tile or row kernels yet: one from another path would not match `dot_path`.
        kernels.dot_rows = None;
        kernels.dot_tile = None;
        kernels.interleaved = None;
        kernels.dot_path = path;
    }
    kernels
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn with_neon(kernels: RowKernels, _ty: GgmlType, _path: CpuPath) -> RowKernels {
    kernels
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
    fn path_names_parse_back() {
        for path in CpuPath::ALL {
            assert_eq!(path.name().parse::<CpuPath>(), Ok(path));
        }
        assert_eq!(" AVX2 ".parse::<CpuPath>(), Ok(CpuPath::Avx2));
        assert_eq!("AVX512-VNNI".parse::<CpuPath>(), Ok(CpuPath::Avx512Vnni));
        assert_eq!("Neon-DotProd".parse::<CpuPath>(), Ok(CpuPath::NeonDotprod));
        assert!("sse".parse::<CpuPath>().is_err());
    }

    #[test]
    fn the_unknown_path_error_lists_every_name() {
        let message = "sse".parse::<CpuPath>().unwrap_err().to_string();
        let known: Vec<&str> = CpuPath::ALL.iter().map(|p| p.name()).collect();
        assert!(
            message.ends_with(&format!("(known: {})", known.join(", "))),
            "{message}"
        );
    }

    #[test]
    fn the_best_path_is_the_widest_this_architecture_has() {
        let best = CpuPath::best_available();
        assert!(best.is_available());
        if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
            assert!(CpuPath::Neon.is_available());
            assert!(
                matches!(best, CpuPath::Neon | CpuPath::NeonDotprod),
                "{best}"
            );
            assert_eq!(
                best == CpuPath::NeonDotprod,
                CpuPath::NeonDotprod.is_available()
            );
        } else {
            assert!(!CpuPath::Neon.is_available() && !CpuPath::NeonDotprod.is_available());
        }
        if cfg!(target_arch = "x86_64") {
            let widest = [CpuPath::Avx512Vnni, CpuPath::Avx512, CpuPath::Avx2]
                .into_iter()
                .find(|p| p.is_available())
                .unwrap_or(CpuPath::Scalar);
            assert_eq!(best, widest);
        } else {
            for path in [CpuPath::Avx2, CpuPath::Avx512, CpuPath::Avx512Vnni] {
                assert!(!path.is_available(), "{path}");
            }
        }
        // VNNI comes only with the rest of AVX-512.
        assert!(!CpuPath::Avx512Vnni.is_available() || CpuPath::Avx512.is_available());
    }

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
