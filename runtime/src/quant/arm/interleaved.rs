//! Weights interleaved [`DOT_ROWS`] = 8 rows to a block (`BlockQ8_0x8`, `BlockQ4Kx8`,
//! `BlockQ6Kx8`: the layouts the x86 kernels use, built by the same code; Q4_0's
//! `BlockQ4_0x8Arm`, the x86 layout's runs reordered by half and stored ready to unpack)
//! against their activations, with the by-element form of `sdot`: a group's 8 rows against
//! one activation row (decode) and against [`TILE_ROWS`] of them at once (prefill, the vision
//! tower).
//!
//! The layouts put each 4-byte run of the 8 rows side by side, so one 16-byte register holds
//! the same 4 elements of 4 rows. `sdot acc.4s, w.16b, a.4b[t]` multiplies each of those runs
//! by activation run `t` (4 bytes of one register, chosen by the instruction) and adds the sum
//! into the row's i32 lane: 16 multiply-adds for 4 rows in one instruction, with no
//! horizontal sum at the end, where the one-row kernels of `legacy.rs` and `k_quants.rs` spend
//! a reduction per block. In a batch each weight register is unpacked once and serves the 4
//! activation rows.
//!
//! Every kernel computes the same exact integer sums as the scalar reference and differs only
//! in the order of the float operations (`tests/row_kernels.rs` holds them to that). They use
//! `sdot`, so they exist only on the `neon-dotprod` path: their callers in `mod.rs` are
//! reachable only through a [`Neon`](super::Neon) made by `detect_dotprod`.

use std::arch::aarch64::*;
use std::arch::asm;

use bytemuck::cast_ref;

use super::{f16_to_f32, load_i8x16, load_u8x16};
use crate::quant::dispatch::{ActBlockSum, DOT_ROWS, TILE_ROWS, WIDE_TILE_ROWS};
use crate::quant::k_quants::QK_K;
use crate::quant::k_quants::{sub_sums, TileQ8K};
use crate::quant::{BlockQ4Kx8, BlockQ4_0x8Arm, BlockQ6Kx8, BlockQ8K, BlockQ8_0, BlockQ8_0x8};

/// `sdot` by element: lane `i` of `acc` gets `Σ_k w[4i + k] · a[4L + k]`, exactly.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot_lane<const L: usize>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    const { assert!(L < 4) };
    let mut acc = acc;
    // SAFETY: the instruction reads and writes these three registers and nothing else; the
    // CPU has it, as this function's `target_feature` requires of its callers.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Runs `$body` once for each listed value, with `$i` a `const` of that value: the lanes of
/// `sdot` and `smlal` by element must be constants, and the arrays of registers indexed by
/// them stay in registers (loops the optimizer left rolled kept them on the stack and chose
/// each lane through a chain of branches: twice the instructions of the Q4_0 batch kernel).
macro_rules! unroll {
    ($i:ident in [$($v:literal),*] $body:block) => {{
        $({
            const $i: usize = $v;
            $body
        })*
    }};
}

/// 8 halves widened to f32, as (rows 0..4, rows 4..8).
#[target_feature(enable = "neon")]
#[inline]
fn scales_f16x8(h: &[half::f16; 8]) -> [float32x4_t; 2] {
    super::float::load_f16x8(h)
}

/// 16 bytes at `bytes[at..]` as one register.
#[target_feature(enable = "neon")]
#[inline]
fn load16(bytes: &[u8], at: usize) -> uint8x16_t {
    load_u8x16(bytes[at..at + 16].try_into().expect("16 bytes"))
}

/// 16 quants at `qs[at..]` as one register.
#[target_feature(enable = "neon")]
#[inline]
fn act16(qs: &[i8], at: usize) -> int8x16_t {
    load_i8x16(qs[at..at + 16].try_into().expect("16 quants"))
}

/// The 32 quants of a Q8_0 block as two registers.
#[target_feature(enable = "neon")]
#[inline]
fn act32(qs: &[i8; 32]) -> [int8x16_t; 2] {
    cast_ref::<[i8; 32], [[i8; 16]; 2]>(qs).map(|half| load_i8x16(&half))
}

/// Two lane accumulators (rows 0..4, 4..8) as the 8 rows' sums.
#[target_feature(enable = "neon")]
#[inline]
fn lanes8(acc: [float32x4_t; 2]) -> [f32; DOT_ROWS] {
    let mut out = [0f32; DOT_ROWS];
    // SAFETY: `out` is 8 floats, two unaligned 4-float stores.
    unsafe {
        vst1q_f32(out.as_mut_ptr(), acc[0]);
        vst1q_f32(out.as_mut_ptr().add(4), acc[1]);
    }
    out
}

/// `acc + cvt(sums) · (dw · da)`: one block's exact sums of 4 rows, scaled as ggml scales
/// them (`sumi · d_w · d_a`, up to the order of the products).
#[target_feature(enable = "neon")]
#[inline]
fn scale_add(acc: float32x4_t, sums: int32x4_t, dw: float32x4_t, da: f32) -> float32x4_t {
    vfmaq_f32(acc, vcvtq_f32_s32(sums), vmulq_n_f32(dw, da))
}

/// The lengths a kernel of interleaved blocks relies on.
fn check<A>(blocks: usize, a: &[&[A]], sums: &[&[ActBlockSum]]) {
    for a in a {
        assert_eq!(a.len(), blocks, "dot of rows of different lengths");
    }
    for sums in sums {
        assert_eq!(sums.len(), blocks, "one block sum per activation block");
    }
}

/// Q4_K nibbles of one 16-byte register of interleaved runs, as (low: sub-block `2g`, high:
/// sub-block `2g + 1`), bytes 0..=15.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(p: uint8x16_t) -> (int8x16_t, int8x16_t) {
    (
        vreinterpretq_s8_u8(vandq_u8(p, vdupq_n_u8(0x0f))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(p)),
    )
}

/// Q4_0 quants of one 16-byte register of [`BlockQ4_0x8Arm`] runs as `16·(q - 8)`, (low
/// nibbles: elements `4t..`, high nibbles: elements `16 + 4t..`). The layout stores each byte
/// as `x = packed ^ 0x88`, so `(x << 4) as i8` is `16·(q - 8)` for the low nibble `q` (the
/// flipped top bit of the nibble becomes the sign), and `(x & 0xf0) as i8` the same for the
/// high one: no `-8·Σa` to take off, and sums 16 times too large, which [`scale_add16`]
/// converts with `scvtf #4` (an exact division by 16). The products stay within `sdot`'s i32
/// lanes: `|16·(q - 8)| <= 128`.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles16(x: uint8x16_t) -> (int8x16_t, int8x16_t) {
    (
        vreinterpretq_s8_u8(vshlq_n_u8::<4>(x)),
        vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0xf0))),
    )
}

/// [`scale_add`] of sums 16 times too large ([`nibbles16`]).
#[target_feature(enable = "neon")]
#[inline]
fn scale_add16(acc: float32x4_t, sums: int32x4_t, dw: float32x4_t, da: f32) -> float32x4_t {
    vfmaq_f32(acc, vcvtq_n_f32_s32::<4>(sums), vmulq_n_f32(dw, da))
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks (decode).
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q4_0x8(w: &[BlockQ4_0x8Arm], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let act = act32(&y.qs);
        let mut sums = [vdupq_n_s32(0); 2];
        unroll!(T in [0, 1, 2, 3] {
            unroll!(H in [0, 1] {
                let (lo, hi) = nibbles16(load16(&x.qs, 64 * H + 16 * T));
                sums[H] = sdot_lane::<T>(sdot_lane::<T>(sums[H], lo, act[0]), hi, act[1]);
            });
        });
        let dw = scales_f16x8(&x.d);
        let da = f16_to_f32(y.d);
        unroll!(H in [0, 1] {
            acc[H] = scale_add16(acc[H], sums[H], dw[H], da);
        });
    }
    lanes8(acc)
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows:
/// `out[n][r]` is row `r`'s dot with activation row `n`. Each 16 bytes of nibbles are
/// unpacked once for the 4 activation rows; the activation scales come from `sums`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_0x8(
    w: &[BlockQ4_0x8Arm],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let act: [[int8x16_t; 2]; TILE_ROWS] = std::array::from_fn(|n| act32(&a[n][i].qs));
        let dw = scales_f16x8(&x.d);
        // Rows 0..4, then 4..8: 4 sums live at a time, beside the 8 activation registers.
        unroll!(H in [0, 1] {
            let mut s = [vdupq_n_s32(0); TILE_ROWS];
            unroll!(T in [0, 1, 2, 3] {
                let (lo, hi) = nibbles16(load16(&x.qs, 64 * H + 16 * T));
                unroll!(N in [0, 1, 2, 3] {
                    s[N] = sdot_lane::<T>(sdot_lane::<T>(s[N], lo, act[N][0]), hi, act[N][1]);
                });
            });
            unroll!(N in [0, 1, 2, 3] {
                acc[N][H] = scale_add16(acc[N][H], s[N], dw[H], sums[N][i].d);
            });
        });
    }
    acc.map(|acc| lanes8(acc))
}

/// Block `i` of [`WIDE_TILE_ROWS`] Q8_0 activation rows, side by side: the scales as f32, then
/// each row's quants. The wide kernels read a row's block and four rows' scales at fixed
/// offsets from one pointer; with a pointer per row, 16 rows would need more address
/// registers than the CPU has, and an address computation per row and block.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(super) struct TileQ8_0 {
    d: [f32; WIDE_TILE_ROWS],
    qs: [[i8; 32]; WIDE_TILE_ROWS],
}

// The wide kernels' assembly reads 16 rows: the scales at 0..64, row `n`'s quants at 64 + 32n.
const _: () = assert!(
    WIDE_TILE_ROWS == 16
        && std::mem::offset_of!(TileQ8_0, qs) == 64
        && std::mem::size_of::<TileQ8_0>() == 64 + 16 * 32
);

/// Lays out [`WIDE_TILE_ROWS`] Q8_0 rows of one length as [`TileQ8_0`]s, block by block.
pub(super) fn pack_q8_0_tile(a: [&[BlockQ8_0]; WIDE_TILE_ROWS], dst: &mut [TileQ8_0]) {
    for a in a {
        assert_eq!(a.len(), dst.len(), "one packed block per activation block");
    }
    for (i, tile) in dst.iter_mut().enumerate() {
        for (n, a) in a.iter().enumerate() {
            tile.d[n] = a[i].d.to_f32();
            tile.qs[n] = a[i].qs;
        }
    }
}

/// The assembly that loads half `h` of a [`BlockQ4_0x8Arm`] (its 4 runs at `{w}` + 16T) as
/// [`nibbles16`] unpacks it: run `T`'s low nibbles (elements `4T..`) as `16·(q - 8)` in
/// `v16 + 2T`, its high ones (elements `16 + 4T..`) in `v17 + 2T`. Uses `v24..=v27`, `v31`.
#[rustfmt::skip]
macro_rules! q4_0_half_nibbles {
    () => {
        concat!(
            "ldp q24, q25, [{w}]\n",
            "ldp q26, q27, [{w}, #32]\n",
            "movi v31.16b, #0xf0\n",
            "shl v16.16b, v24.16b, #4\n",
            "and v17.16b, v24.16b, v31.16b\n",
            "shl v18.16b, v25.16b, #4\n",
            "and v19.16b, v25.16b, v31.16b\n",
            "shl v20.16b, v26.16b, #4\n",
            "and v21.16b, v26.16b, v31.16b\n",
            "shl v22.16b, v27.16b, #4\n",
            "and v23.16b, v27.16b, v31.16b\n",
        )
    };
}

/// The assembly that loads half `h` of an interleaved Q8_0 block: run `T` (`{w}` + 32T,
/// elements `4T..`) into `v16 + T`.
#[rustfmt::skip]
macro_rules! q8_0_half_runs {
    () => {
        concat!(
            "ldr q16, [{w}]\n",
            "ldr q17, [{w}, #32]\n",
            "ldr q18, [{w}, #64]\n",
            "ldr q19, [{w}, #96]\n",
            "ldr q20, [{w}, #128]\n",
            "ldr q21, [{w}, #160]\n",
            "ldr q22, [{w}, #192]\n",
            "ldr q23, [{w}, #224]\n",
        )
    };
}

/// The assembly of one packed activation row against a half-block held in `v16..=v23`, for
/// the wide kernels: `ldp` the row's 32 quants (offset `$off` in the [`TileQ8_0`]) into
/// `v30, v31`, its 8 `sdot`s (written by the macro `$dots`, which names each one's weight
/// register and activation lane) into a fresh integer sum `v$s`, then `v$acc += cvt(v$s) · (dw · da)`, with
/// `dw` in `v28` and the row's scale in lane `$lane` of `v29`. `$cvt` converts the sum
/// (`scvtf` with `#4` for Q4_0's sums 16 times too large, see [`nibbles16`]); `v$t` holds the
/// product of the scales. Two rows in a row use different `$s`/`$t`, so their work overlaps.
#[rustfmt::skip]
macro_rules! wide_row {
    ($acc:literal, $lane:literal, $off:literal, $s:literal, $t:literal, $cvt:literal, $dots:ident) => {
        concat!(
            "ldp q30, q31, [{a}, #", $off, "]\n",
            "movi v", $s, ".2d, #0\n",
            $dots!($s),
            "scvtf v", $s, ".4s, v", $s, ".4s", $cvt, "\n",
            "fmul v", $t, ".4s, v28.4s, v29.s[", $lane, "]\n",
            "fmla v", $acc, ".4s, v", $s, ".4s, v", $t, ".4s\n",
        )
    };
}

/// Q4_0's 8 `sdot`s of a row: unpacked run `T`'s low nibbles (`v16 + 2T`, elements `4T..`)
/// with lane `T` of the first 16 quants (`v30`), its high nibbles (`v17 + 2T`, elements
/// `16 + 4T..`) with lane `T` of the rest (`v31`).
#[rustfmt::skip]
macro_rules! dots_q4_0 {
    ($s:literal) => {
        concat!(
            "sdot v", $s, ".4s, v16.16b, v30.4b[0]\n", "sdot v", $s, ".4s, v17.16b, v31.4b[0]\n",
            "sdot v", $s, ".4s, v18.16b, v30.4b[1]\n", "sdot v", $s, ".4s, v19.16b, v31.4b[1]\n",
            "sdot v", $s, ".4s, v20.16b, v30.4b[2]\n", "sdot v", $s, ".4s, v21.16b, v31.4b[2]\n",
            "sdot v", $s, ".4s, v22.16b, v30.4b[3]\n", "sdot v", $s, ".4s, v23.16b, v31.4b[3]\n",
        )
    };
}

/// Q8_0's 8 `sdot`s of a row: run `T` (`v16 + T`, elements `4T..`) with lane `T % 4` of the
/// first (`v30`) or second (`v31`) 16 quants.
#[rustfmt::skip]
macro_rules! dots_q8_0 {
    ($s:literal) => {
        concat!(
            "sdot v", $s, ".4s, v16.16b, v30.4b[0]\n",
            "sdot v", $s, ".4s, v17.16b, v30.4b[1]\n",
            "sdot v", $s, ".4s, v18.16b, v30.4b[2]\n",
            "sdot v", $s, ".4s, v19.16b, v30.4b[3]\n",
            "sdot v", $s, ".4s, v20.16b, v31.4b[0]\n",
            "sdot v", $s, ".4s, v21.16b, v31.4b[1]\n",
            "sdot v", $s, ".4s, v22.16b, v31.4b[2]\n",
            "sdot v", $s, ".4s, v23.16b, v31.4b[3]\n",
        )
    };
}

/// The 16 rows of a [`TileQ8_0`] against the held half-block, in 4 groups whose 4 scales are
/// loaded into `v29` first: row `n` accumulates into `v$n`, its quants at `64 + 32n`.
#[rustfmt::skip]
macro_rules! wide_rows {
    ($cvt:literal, $dots:ident) => {
        concat!(
            "ldr q29, [{a}]\n",
            wide_row!("0", "0", "64", "24", "25", $cvt, $dots),
            wide_row!("1", "1", "96", "26", "27", $cvt, $dots),
            wide_row!("2", "2", "128", "24", "25", $cvt, $dots),
            wide_row!("3", "3", "160", "26", "27", $cvt, $dots),
            "ldr q29, [{a}, #16]\n",
            wide_row!("4", "0", "192", "24", "25", $cvt, $dots),
            wide_row!("5", "1", "224", "26", "27", $cvt, $dots),
            wide_row!("6", "2", "256", "24", "25", $cvt, $dots),
            wide_row!("7", "3", "288", "26", "27", $cvt, $dots),
            "ldr q29, [{a}, #32]\n",
            wide_row!("8", "0", "320", "24", "25", $cvt, $dots),
            wide_row!("9", "1", "352", "26", "27", $cvt, $dots),
            wide_row!("10", "2", "384", "24", "25", $cvt, $dots),
            wide_row!("11", "3", "416", "26", "27", $cvt, $dots),
            "ldr q29, [{a}, #48]\n",
            wide_row!("12", "0", "448", "24", "25", $cvt, $dots),
            wide_row!("13", "1", "480", "26", "27", $cvt, $dots),
            wide_row!("14", "2", "512", "24", "25", $cvt, $dots),
            wide_row!("15", "3", "544", "26", "27", $cvt, $dots),
        )
    };
}

/// Runs the assembly `$body` with the 16 accumulators in `v0..=v15` and every other vector
/// register free for it; `$w`, `$dw` and `$a` are the half-block's quants, its 4 scales
/// (halves) and the packed tile, as `{w}`, `{dw}` and `{a}`.
macro_rules! wide_asm {
    ($acc:ident, $w:expr, $dw:expr, $a:expr, $body:expr) => {
        // SAFETY: the caller's pointers are valid for what `$body` reads (see each kernel);
        // the assembly reads memory only through them, writes none, and names every vector
        // register it changes. `sdot` (`smmla`) is there: the kernels that use it are
        // `dotprod` (`i8mm`) functions.
        unsafe {
            asm!(
                $body,
                w = in(reg) $w,
                dw = in(reg) $dw,
                a = in(reg) $a,
                inout("v0") $acc[0], inout("v1") $acc[1], inout("v2") $acc[2],
                inout("v3") $acc[3], inout("v4") $acc[4], inout("v5") $acc[5],
                inout("v6") $acc[6], inout("v7") $acc[7], inout("v8") $acc[8],
                inout("v9") $acc[9], inout("v10") $acc[10], inout("v11") $acc[11],
                inout("v12") $acc[12], inout("v13") $acc[13], inout("v14") $acc[14],
                inout("v15") $acc[15],
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                // Not `preserves_flags`: `scvtf` and `fmla` may set FPSR's exception bits.
                options(nostack, readonly),
            )
        }
    };
}

/// The loop every assembly wide kernel shares: for each half `h` of the weight rows, the 16
/// accumulators start at zero; per block `x` of `$w` (beside tile `t` of `$a`), the assembly
/// `$body` runs through [`wide_asm!`] with the half's first run at `$qs` and its 4 scales at
/// `$dw`; `$rows` arranges the accumulators into activation rows, stored as the half's outputs.
macro_rules! wide_kernel {
    ($w:ident, $a:ident, |$x:ident, $h:ident| ($qs:expr, $dw:expr), $body:expr, $rows:expr) => {{
        assert_eq!($a.len(), $w.len(), "dot of rows of different lengths");
        let mut out = [[0f32; DOT_ROWS]; WIDE_TILE_ROWS];
        for $h in 0..2 {
            let mut acc = [vdupq_n_f32(0.0); WIDE_TILE_ROWS];
            for ($x, t) in $w.iter().zip($a) {
                let (qs, dw): (*const u8, *const half::f16) = ($qs, $dw);
                wide_asm!(acc, qs, dw, std::ptr::from_ref(t), $body);
            }
            store_half(&mut out, &$rows(&acc), $h);
        }
        out
    }};
}

/// The accumulators of the `sdot` wide kernels, one activation row each.
#[target_feature(enable = "neon")]
#[inline]
fn sdot_rows(acc: &[float32x4_t; WIDE_TILE_ROWS]) -> [float32x4_t; WIDE_TILE_ROWS] {
    *acc
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks against [`WIDE_TILE_ROWS`] packed
/// activation rows. One half of the rows (4) at a time: its 4 registers of each block are
/// unpacked once into 8 and held while the 16 activation rows pass, each with its own float
/// accumulator; each row's block sum is scaled as in [`gemm_q4_0x8`], in the same order.
/// Written in assembly because the compiler, given the same steps as intrinsics, kept 32
/// registers' worth live and spilled a quarter of the accumulators to the stack every block.
/// Per block and half: 128 `sdot` and 97 other instructions.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_0x8_wide(
    w: &[BlockQ4_0x8Arm],
    a: &[TileQ8_0],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    // Half `h`'s runs are the 64 bytes at `64h` of `qs`.
    wide_kernel!(
        w,
        a,
        |x, h| (x.qs[64 * h..].as_ptr(), x.d[4 * h..4 * h + 4].as_ptr()),
        concat!(
            q4_0_half_nibbles!(),
            "ldr d28, [{dw}]\n",
            "fcvtl v28.4s, v28.4h\n",
            wide_rows!(", #4", dots_q4_0),
        ),
        sdot_rows
    )
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks against [`WIDE_TILE_ROWS`] packed
/// activation rows, one half of the rows at a time as in [`gemm_q4_0x8_wide`]: a half's 8
/// registers of each block are held while the 16 activation rows pass.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q8_0x8_wide(
    w: &[BlockQ8_0x8],
    a: &[TileQ8_0],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    // Half `h`'s runs are the 16 bytes at `16h + 32T` of the 256 quants (T = 0..8).
    wide_kernel!(
        w,
        a,
        |x, h| (
            cast_ref::<_, [u8; 256]>(&x.qs)[16 * h..].as_ptr(),
            x.d[4 * h..4 * h + 4].as_ptr()
        ),
        concat!(
            q8_0_half_runs!(),
            "ldr d28, [{dw}]\n",
            "fcvtl v28.4s, v28.4h\n",
            wide_rows!("", dots_q8_0),
        ),
        sdot_rows
    )
}

/// Block `i` of [`WIDE_TILE_ROWS`] Q8_0 activation rows packed for `smmla` (i8mm), which
/// multiplies 2 rows × 8 quants of weights by 2 rows × 8 quants of activations: pair `p` (rows
/// `2p`, `2p + 1`) has its scales as `[d0, d1, d0, d1]` (the lanes of the 2 × 2 result a
/// weight row pair's sums land in) and its quants as 4 chunks of 8 elements, each chunk row
/// `2p`'s 8 quants then row `2p + 1`'s.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(super) struct TileQ8_0Pairs {
    d: [[f32; 4]; WIDE_TILE_ROWS / 2],
    qs: [[[[i8; 8]; 2]; 4]; WIDE_TILE_ROWS / 2],
}

// `gemm_q4_0x8_mmla` reads pair p's scales at 16p and its quants at 128 + 64p.
const _: () = assert!(
    WIDE_TILE_ROWS == 16
        && std::mem::offset_of!(TileQ8_0Pairs, qs) == 128
        && std::mem::size_of::<TileQ8_0Pairs>() == 128 + 8 * 64
);

/// Lays out [`WIDE_TILE_ROWS`] Q8_0 rows of one length as [`TileQ8_0Pairs`], block by block.
pub(super) fn pack_q8_0_pairs(a: [&[BlockQ8_0]; WIDE_TILE_ROWS], dst: &mut [TileQ8_0Pairs]) {
    for a in a {
        assert_eq!(a.len(), dst.len(), "one packed block per activation block");
    }
    for (i, tile) in dst.iter_mut().enumerate() {
        for p in 0..WIDE_TILE_ROWS / 2 {
            let (y0, y1) = (&a[2 * p][i], &a[2 * p + 1][i]);
            let (d0, d1) = (y0.d.to_f32(), y1.d.to_f32());
            tile.d[p] = [d0, d1, d0, d1];
            for c in 0..4 {
                tile.qs[p][c][0].copy_from_slice(&y0.qs[8 * c..8 * c + 8]);
                tile.qs[p][c][1].copy_from_slice(&y1.qs[8 * c..8 * c + 8]);
            }
        }
    }
}

/// The assembly of one pair of packed activation rows against a half-block held in
/// `v24..=v31` as `smmla` operands (see [`gemm_q4_0x8_mmla`]): the pair's scales into `v18`,
/// its 4 chunks of quants through `v22, v23`, 8 `smmla`s into fresh sums `v19` (weight rows
/// 0, 1 of the half) and `v20` (rows 2, 3), converted (`$cvt`: `#4` for Q4_0's sums 16 times
/// too large) and added into accumulators `v$a0`, `v$a1` times `dw · da` (`v16`, `v17`: the half's scales
/// laid out as the sums are).
#[rustfmt::skip]
macro_rules! mmla_pair {
    ($a0:literal, $a1:literal, $d:literal, $q:literal, $q2:literal, $cvt:literal) => {
        concat!(
            "ldr q18, [{a}, #", $d, "]\n",
            "ldp q22, q23, [{a}, #", $q, "]\n",
            "movi v19.2d, #0\n",
            "movi v20.2d, #0\n",
            "smmla v19.4s, v24.16b, v22.16b\n",
            "smmla v20.4s, v25.16b, v22.16b\n",
            "smmla v19.4s, v26.16b, v23.16b\n",
            "smmla v20.4s, v27.16b, v23.16b\n",
            "ldp q22, q23, [{a}, #", $q2, "]\n",
            "smmla v19.4s, v28.16b, v22.16b\n",
            "smmla v20.4s, v29.16b, v22.16b\n",
            "smmla v19.4s, v30.16b, v23.16b\n",
            "smmla v20.4s, v31.16b, v23.16b\n",
            "scvtf v19.4s, v19.4s", $cvt, "\n",
            "scvtf v20.4s, v20.4s", $cvt, "\n",
            "fmul v21.4s, v16.4s, v18.4s\n",
            "fmla v", $a0, ".4s, v19.4s, v21.4s\n",
            "fmul v21.4s, v17.4s, v18.4s\n",
            "fmla v", $a1, ".4s, v20.4s, v21.4s\n",
        )
    };
}

/// The 8 pairs of a [`TileQ8_0Pairs`] against the held half-block: pair `p` accumulates into
/// `v2p`, `v2p+1`, its scales at `16p`, its quants at `128 + 64p`.
#[rustfmt::skip]
macro_rules! mmla_pairs {
    ($cvt:literal) => {
        concat!(
            mmla_pair!("0", "1", "0", "128", "160", $cvt),
            mmla_pair!("2", "3", "16", "192", "224", $cvt),
            mmla_pair!("4", "5", "32", "256", "288", $cvt),
            mmla_pair!("6", "7", "48", "320", "352", $cvt),
            mmla_pair!("8", "9", "64", "384", "416", $cvt),
            mmla_pair!("10", "11", "80", "448", "480", $cvt),
            mmla_pair!("12", "13", "96", "512", "544", $cvt),
            mmla_pair!("14", "15", "112", "576", "608", $cvt),
        )
    };
}

/// Q4_0 · Q8_0 for the 8 rows of interleaved blocks against [`WIDE_TILE_ROWS`] activation
/// rows packed in pairs, with `smmla` (i8mm: Apple M2 and later, Graviton 3, Cortex-A510/A710
/// and later): one instruction multiplies weight rows `2j, 2j + 1` by activation rows `2p,
/// 2p + 1` over 8 elements, twice the multiply-adds of an `sdot`. As in [`gemm_q4_0x8_wide`],
/// one half of the rows at a time; its unpacked runs are paired by `zip1`/`zip2` into 2 rows ×
/// 8 elements. Accumulator `2p + j` holds the 2 × 2 block (weight rows `2j, 2j + 1`) × (rows
/// `2p, 2p + 1`), rearranged into rows at the end. Each block's sums are scaled as in
/// [`gemm_q4_0x8`] (`fma(acc, cvt(sum), dw · da)`). Per block and half: 64 `smmla` and 111
/// other instructions.
#[target_feature(enable = "neon,i8mm")]
pub(super) fn gemm_q4_0x8_mmla(
    w: &[BlockQ4_0x8Arm],
    a: &[TileQ8_0Pairs],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    // Half `h`'s runs are the 64 bytes at `64h` of `qs`.
    wide_kernel!(
        w,
        a,
        |x, h| (x.qs[64 * h..].as_ptr(), x.d[4 * h..4 * h + 4].as_ptr()),
        concat!(
            q4_0_half_nibbles!(),
            // Runs T, T + 1 side by side per row: rows 0, 1 (zip1) and 2, 3 (zip2)
            // of elements 0..8 (v24, v25), 8..16 (v26, v27), 16..24 (v28, v29),
            // 24..32 (v30, v31).
            "zip1 v24.4s, v16.4s, v18.4s\n",
            "zip2 v25.4s, v16.4s, v18.4s\n",
            "zip1 v26.4s, v20.4s, v22.4s\n",
            "zip2 v27.4s, v20.4s, v22.4s\n",
            "zip1 v28.4s, v17.4s, v19.4s\n",
            "zip2 v29.4s, v17.4s, v19.4s\n",
            "zip1 v30.4s, v21.4s, v23.4s\n",
            "zip2 v31.4s, v21.4s, v23.4s\n",
            // The half's scales as the sums lie: [dw0, dw0, dw1, dw1], [dw2, dw2,
            // dw3, dw3].
            "ldr d18, [{dw}]\n",
            "fcvtl v18.4s, v18.4h\n",
            "zip1 v16.4s, v18.4s, v18.4s\n",
            "zip2 v17.4s, v18.4s, v18.4s\n",
            mmla_pairs!(", #4"),
        ),
        mmla_rows
    )
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks against [`WIDE_TILE_ROWS`] activation
/// rows packed in pairs, with `smmla`, as [`gemm_q4_0x8_mmla`]: a half's 8 runs, paired by
/// `zip1`/`zip2`, held while the 8 pairs of activation rows pass.
#[target_feature(enable = "neon,i8mm")]
pub(super) fn gemm_q8_0x8_mmla(
    w: &[BlockQ8_0x8],
    a: &[TileQ8_0Pairs],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    // Half `h`'s runs are the 16 bytes at `16h + 32T` of the 256 quants (T = 0..8).
    wide_kernel!(
        w,
        a,
        |x, h| (
            cast_ref::<_, [u8; 256]>(&x.qs)[16 * h..].as_ptr(),
            x.d[4 * h..4 * h + 4].as_ptr()
        ),
        concat!(
            q8_0_half_runs!(),
            // Runs 2c, 2c + 1 side by side per row: rows 0, 1 (zip1) and 2, 3 (zip2)
            // of elements 8c..8c + 8.
            "zip1 v24.4s, v16.4s, v17.4s\n",
            "zip2 v25.4s, v16.4s, v17.4s\n",
            "zip1 v26.4s, v18.4s, v19.4s\n",
            "zip2 v27.4s, v18.4s, v19.4s\n",
            "zip1 v28.4s, v20.4s, v21.4s\n",
            "zip2 v29.4s, v20.4s, v21.4s\n",
            "zip1 v30.4s, v22.4s, v23.4s\n",
            "zip2 v31.4s, v22.4s, v23.4s\n",
            "ldr d18, [{dw}]\n",
            "fcvtl v18.4s, v18.4h\n",
            "zip1 v16.4s, v18.4s, v18.4s\n",
            "zip2 v17.4s, v18.4s, v18.4s\n",
            mmla_pairs!(""),
        ),
        mmla_rows
    )
}

/// The accumulators of the `smmla` kernels as rows: accumulator `2p + j` holds (weight row
/// `2j`, activation row `2p`), (`2j`, `2p + 1`), (`2j + 1`, `2p`), (`2j + 1`, `2p + 1`);
/// returned is activation row `n`'s 4 weight rows of the half.
#[target_feature(enable = "neon")]
#[inline]
fn mmla_rows(acc: &[float32x4_t; WIDE_TILE_ROWS]) -> [float32x4_t; WIDE_TILE_ROWS] {
    std::array::from_fn(|n| {
        let (p, j) = (n / 2, n % 2);
        if j == 0 {
            vuzp1q_f32(acc[2 * p], acc[2 * p + 1])
        } else {
            vuzp2q_f32(acc[2 * p], acc[2 * p + 1])
        }
    })
}

/// Stores the accumulators of one half of the weight rows (`h`: rows 0..4 or 4..8) into
/// `out[n][4h..4h + 4]`.
#[target_feature(enable = "neon")]
#[inline]
fn store_half(
    out: &mut [[f32; DOT_ROWS]; WIDE_TILE_ROWS],
    acc: &[float32x4_t; WIDE_TILE_ROWS],
    h: usize,
) {
    for (out, &acc) in out.iter_mut().zip(acc) {
        let lanes: &mut [f32; 4] = (&mut out[4 * h..4 * h + 4]).try_into().expect("4 lanes");
        // SAFETY: `lanes` is 4 floats; one unaligned 4-float store.
        unsafe { vst1q_f32(lanes.as_mut_ptr(), acc) };
    }
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks (decode): runs 0..4 are elements 0..16
/// (the first activation register), runs 4..8 the rest.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q8_0x8(w: &[BlockQ8_0x8], a: &[BlockQ8_0]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let act = act32(&y.qs);
        let qs: &[u8; 256] = cast_ref(&x.qs);
        let mut sums = [vdupq_n_s32(0); 2];
        unroll!(T in [0, 1, 2, 3, 4, 5, 6, 7] {
            unroll!(H in [0, 1] {
                let q = vreinterpretq_s8_u8(load16(qs, 32 * T + 16 * H));
                sums[H] = sdot_lane::<{ T % 4 }>(sums[H], q, act[T / 4]);
            });
        });
        let dw = scales_f16x8(&x.d);
        let da = f16_to_f32(y.d);
        unroll!(H in [0, 1] {
            acc[H] = scale_add(acc[H], sums[H], dw[H], da);
        });
    }
    lanes8(acc)
}

/// Q8_0 · Q8_0 for the 8 rows of interleaved blocks against [`TILE_ROWS`] activation rows.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q8_0x8(
    w: &[BlockQ8_0x8],
    a: [&[BlockQ8_0]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let act: [[int8x16_t; 2]; TILE_ROWS] = std::array::from_fn(|n| act32(&a[n][i].qs));
        let qs: &[u8; 256] = cast_ref(&x.qs);
        let dw = scales_f16x8(&x.d);
        unroll!(H in [0, 1] {
            let mut s = [vdupq_n_s32(0); TILE_ROWS];
            unroll!(T in [0, 1, 2, 3, 4, 5, 6, 7] {
                let q = vreinterpretq_s8_u8(load16(qs, 32 * T + 16 * H));
                unroll!(N in [0, 1, 2, 3] {
                    s[N] = sdot_lane::<{ T % 4 }>(s[N], q, act[N][T / 4]);
                });
            });
            unroll!(N in [0, 1, 2, 3] {
                acc[N][H] = scale_add(acc[N][H], s[N], dw[H], sums[N][i].d);
            });
        });
    }
    acc.map(|acc| lanes8(acc))
}

/// Lanes `4h..4h + 4` of 8 unsigned bytes, widened to i32.
#[target_feature(enable = "neon")]
#[inline]
fn widen_u8_half(v: uint8x8_t, h: usize) -> int32x4_t {
    let wide = vmovl_u8(v);
    let half = if h == 0 {
        vget_low_u16(wide)
    } else {
        vget_high_u16(wide)
    };
    vreinterpretq_s32_u32(vmovl_u16(half))
}

/// The 8 rows' 6-bit sub-block scales and mins of an interleaved Q4_K super-block, one
/// register of 8 bytes (one per row) per sub-block: `scale_min_k4` on 8 rows at once.
#[target_feature(enable = "neon")]
#[inline]
fn q4_k_scales_mins(packed: &[[u8; 8]; 12]) -> ([uint8x8_t; 8], [uint8x8_t; 8]) {
    // SAFETY: each `packed[k]` is 8 bytes; `ld1` has no alignment requirement.
    let b: [uint8x8_t; 12] = std::array::from_fn(|k| unsafe { vld1_u8(packed[k].as_ptr()) });
    let low6 = vdup_n_u8(63);
    let low4 = vdup_n_u8(0x0f);
    let scales = std::array::from_fn(|j| {
        if j < 4 {
            vand_u8(b[j], low6)
        } else {
            let top = vshl_n_u8::<4>(vshr_n_u8::<6>(b[j - 4]));
            vorr_u8(vand_u8(b[j + 4], low4), top)
        }
    });
    let mins = std::array::from_fn(|j| {
        if j < 4 {
            vand_u8(b[j + 4], low6)
        } else {
            let top = vshl_n_u8::<4>(vshr_n_u8::<6>(b[j]));
            vorr_u8(vshr_n_u8::<4>(b[j + 4]), top)
        }
    });
    (scales, mins)
}

/// Q4_K's min terms of one activation row, `Σ_j mins[j][r] · (bsums[2j] + bsums[2j + 1])`
/// for the 8 rows, as (rows 0..4, rows 4..8); exact (at most 8 · 63 · 4064).
#[target_feature(enable = "neon")]
#[inline]
fn q4_k_min_terms(mins: &[int16x8_t; 8], bsums: &[i16; 16]) -> [int32x4_t; 2] {
    // SAFETY: `bsums` is 16 halves; two unaligned 8-half loads.
    let (b0, b1) = unsafe { (vld1q_s16(bsums.as_ptr()), vld1q_s16(bsums.as_ptr().add(8))) };
    // Lane j: bsums[2j] + bsums[2j + 1], the sum of sub-block j's 32 quants.
    let pairs = vpaddq_s16(b0, b1);
    let mut m = [vdupq_n_s32(0); 2];
    unroll!(J in [0, 1, 2, 3, 4, 5, 6, 7] {
        m[0] = vmlal_laneq_s16::<{ J as i32 }>(m[0], vget_low_s16(mins[J]), pairs);
        m[1] = vmlal_laneq_s16::<{ J as i32 }>(m[1], vget_high_s16(mins[J]), pairs);
    });
    m
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks (decode). Per 64-element group `g`,
/// the low nibbles are sub-block `2g` and the high ones sub-block `2g + 1`; each sub-block's
/// exact sums are multiplied by its scale (`mla`) and added up in i32 over the super-block,
/// whose sum alone is converted and scaled.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q4_kx8(w: &[BlockQ4Kx8], a: &[BlockQ8K]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let (scales, mins) = q4_k_scales_mins(&x.scales);
        let mins = mins.map(|m| vreinterpretq_s16_u16(vmovl_u8(m)));
        let m = q4_k_min_terms(&mins, &y.bsums);
        let mut total = [vdupq_n_s32(0); 2];
        for (g, qs) in x.qs.iter().enumerate() {
            let mut s_lo = [vdupq_n_s32(0); 2];
            let mut s_hi = [vdupq_n_s32(0); 2];
            unroll!(Q in [0, 1] {
                let a_lo = act16(&y.qs, 64 * g + 16 * Q);
                let a_hi = act16(&y.qs, 64 * g + 32 + 16 * Q);
                unroll!(T in [0, 1, 2, 3] {
                    unroll!(H in [0, 1] {
                        let (lo, hi) = nibbles(load16(qs, 32 * (4 * Q + T) + 16 * H));
                        s_lo[H] = sdot_lane::<T>(s_lo[H], lo, a_lo);
                        s_hi[H] = sdot_lane::<T>(s_hi[H], hi, a_hi);
                    });
                });
            });
            unroll!(H in [0, 1] {
                let sc_lo = widen_u8_half(scales[2 * g], H);
                let sc_hi = widen_u8_half(scales[2 * g + 1], H);
                total[H] = vmlaq_s32(vmlaq_s32(total[H], s_lo[H], sc_lo), s_hi[H], sc_hi);
            });
        }
        let (d, dmin) = (scales_f16x8(&x.d), scales_f16x8(&x.dmin));
        unroll!(H in [0, 1] {
            acc[H] = vfmaq_f32(acc[H], vcvtq_f32_s32(total[H]), vmulq_n_f32(d[H], y.d));
            acc[H] = vfmsq_f32(acc[H], vcvtq_f32_s32(m[H]), vmulq_n_f32(dmin[H], y.d));
        });
    }
    lanes8(acc)
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks against [`TILE_ROWS`] activation
/// rows. Rows 0..4 and 4..8 in turn, and each group's runs in two halves (the activation
/// registers of runs 0..4, then 4..8), so that the 4 rows' activations, sums and totals stay
/// in registers.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_kx8(
    w: &[BlockQ4Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|n| &a[n][i]);
        let (scales, mins) = q4_k_scales_mins(&x.scales);
        let (d, dmin) = (scales_f16x8(&x.d), scales_f16x8(&x.dmin));
        let mins = mins.map(|m| vreinterpretq_s16_u16(vmovl_u8(m)));
        unroll!(N in [0, 1, 2, 3] {
            let m = q4_k_min_terms(&mins, &ys[N].bsums);
            unroll!(H in [0, 1] {
                let scale = vmulq_n_f32(dmin[H], ys[N].d);
                acc[N][H] = vfmsq_f32(acc[N][H], vcvtq_f32_s32(m[H]), scale);
            });
        });
        unroll!(H in [0, 1] {
            let mut total = [vdupq_n_s32(0); TILE_ROWS];
            for (g, qs) in x.qs.iter().enumerate() {
                let mut s_lo = [vdupq_n_s32(0); TILE_ROWS];
                let mut s_hi = [vdupq_n_s32(0); TILE_ROWS];
                unroll!(Q in [0, 1] {
                    let a_lo: [int8x16_t; TILE_ROWS] =
                        std::array::from_fn(|n| act16(&ys[n].qs, 64 * g + 16 * Q));
                    let a_hi: [int8x16_t; TILE_ROWS] =
                        std::array::from_fn(|n| act16(&ys[n].qs, 64 * g + 32 + 16 * Q));
                    unroll!(T in [0, 1, 2, 3] {
                        let (lo, hi) = nibbles(load16(qs, 32 * (4 * Q + T) + 16 * H));
                        unroll!(N in [0, 1, 2, 3] {
                            s_lo[N] = sdot_lane::<T>(s_lo[N], lo, a_lo[N]);
                            s_hi[N] = sdot_lane::<T>(s_hi[N], hi, a_hi[N]);
                        });
                    });
                });
                let sc_lo = widen_u8_half(scales[2 * g], H);
                let sc_hi = widen_u8_half(scales[2 * g + 1], H);
                unroll!(N in [0, 1, 2, 3] {
                    total[N] = vmlaq_s32(vmlaq_s32(total[N], s_lo[N], sc_lo), s_hi[N], sc_hi);
                });
            }
            unroll!(N in [0, 1, 2, 3] {
                let scale = vmulq_n_f32(d[H], ys[N].d);
                acc[N][H] = vfmaq_f32(acc[N][H], vcvtq_f32_s32(total[N]), scale);
            });
        });
    }
    acc.map(|acc| lanes8(acc))
}

/// The end of a super-block of a wide Q4_K kernel, for half `$h` of the rows: `$total[n]`,
/// the exact scaled sums of activation row `n` with the half's 4 rows, times `d · d_a`, less
/// the mins' terms (`Σ_j mins[j][r] · sub_sums[n][j]`) times `dmin · d_a`, added into
/// `$acc[n]`. A macro, so that it is inlined into both kernels (as a function, LLVM called
/// it: 3.6% more instructions per Q4_K_M prompt token under QEMU).
macro_rules! q4_k_wide_scale {
    ($acc:ident, $total:expr, $x:expr, $mins:expr, $t:expr, $h:expr) => {{
        let total: &[int32x4_t; WIDE_TILE_ROWS] = $total;
        let (x, t): (&BlockQ4Kx8, _) = ($x, $t);
        let (d, dmin) = (scales_f16x8(&x.d)[$h], scales_f16x8(&x.dmin)[$h]);
        // Sub-block j's mins of the half's 4 rows, as i16.
        let mins: [int16x4_t; 8] = std::array::from_fn(|j| {
            let wide = vreinterpretq_s16_u16(vmovl_u8($mins[j]));
            if $h == 0 {
                vget_low_s16(wide)
            } else {
                vget_high_s16(wide)
            }
        });
        unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            // SAFETY: `sub_sums[N]` is 8 halves; one unaligned load.
            let sums = unsafe { vld1q_s16(t.sub_sums[N].as_ptr()) };
            let mut m = vdupq_n_s32(0);
            unroll!(J in [0, 1, 2, 3, 4, 5, 6, 7] {
                m = vmlal_laneq_s16::<{ J as i32 }>(m, mins[J], sums);
            });
            $acc[N] = vfmaq_f32($acc[N], vcvtq_f32_s32(total[N]), vmulq_n_f32(d, t.d[N]));
            $acc[N] = vfmsq_f32($acc[N], vcvtq_f32_s32(m), vmulq_n_f32(dmin, t.d[N]));
        });
    }};
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks against [`WIDE_TILE_ROWS`] packed
/// activation rows. One half of the rows (4) at a time, and within a super-block one
/// 64-element group at a time: the group's 8 registers of the half are unpacked once into 16
/// (sub-blocks `2g` and `2g + 1`) and held while the 16 activation rows pass, each adding its
/// two scaled sub-block sums into its own i32 total; the totals and the min terms are
/// converted and scaled once per super-block, as in [`gemm_q4_kx8`].
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q4_kx8_wide(
    w: &[BlockQ4Kx8],
    a: &[TileQ8K],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    assert_eq!(a.len(), w.len(), "dot of rows of different lengths");
    let mut out = [[0f32; DOT_ROWS]; WIDE_TILE_ROWS];
    unroll!(H in [0, 1] {
        let mut acc = [vdupq_n_f32(0.0); WIDE_TILE_ROWS];
        for (x, t) in w.iter().zip(a) {
            let (scales, mins) = q4_k_scales_mins(&x.scales);
            let mut total = [vdupq_n_s32(0); WIDE_TILE_ROWS];
            for (g, qs) in x.qs.iter().enumerate() {
                // Runs k = 4Q + T: elements 4T.. of the first (Q = 0) or second 16 of each
                // sub-block.
                let q: [(int8x16_t, int8x16_t); 8] =
                    std::array::from_fn(|k| nibbles(load16(qs, 32 * k + 16 * H)));
                let sc_lo = widen_u8_half(scales[2 * g], H);
                let sc_hi = widen_u8_half(scales[2 * g + 1], H);
                unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                    let mut s_lo = vdupq_n_s32(0);
                    let mut s_hi = vdupq_n_s32(0);
                    unroll!(Q in [0, 1] {
                        let a_lo = act16(&t.qs[N], 64 * g + 16 * Q);
                        let a_hi = act16(&t.qs[N], 64 * g + 32 + 16 * Q);
                        unroll!(T in [0, 1, 2, 3] {
                            s_lo = sdot_lane::<T>(s_lo, q[4 * Q + T].0, a_lo);
                            s_hi = sdot_lane::<T>(s_hi, q[4 * Q + T].1, a_hi);
                        });
                    });
                    total[N] = vmlaq_s32(vmlaq_s32(total[N], s_lo, sc_lo), s_hi, sc_hi);
                });
            }
            q4_k_wide_scale!(acc, &total, x, mins, t, H);
        }
        store_half(&mut out, &acc, H);
    });
    out
}

/// `smmla`: `acc` (a 2 × 2 block of i32, row-major) plus `w` (2 rows × 8 quants) times the
/// transpose of `a` (2 rows × 8 quants): lane `2i + j` gets `Σ_k w[8i + k] · a[8j + k]`,
/// exactly.
#[target_feature(enable = "neon,i8mm")]
#[inline]
fn smmla(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: the instruction reads and writes these three registers and nothing else; the
    // CPU has it, as this function's `target_feature` requires of its callers.
    unsafe {
        asm!(
            "smmla {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Block `i` of [`WIDE_TILE_ROWS`] Q8_K activation rows packed for `smmla`: each row's scale
/// and sub-block sums as in [`TileQ8K`], then the quants by 32-element group: `qs[g][p][c]`
/// is chunk `c` (elements `32g + 8c..`) of pair `p` (rows `2p`, `2p + 1`), row `2p`'s 8
/// quants then row `2p + 1`'s. A group's 8 pairs lie within 512 bytes, so a kernel reaches
/// every chunk of a group from one pointer with `ldp`'s offsets.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(super) struct TileQ8KPairs {
    d: [f32; WIDE_TILE_ROWS],
    sub_sums: [[i16; QK_K / 32]; WIDE_TILE_ROWS],
    qs: [[[[[i8; 8]; 2]; 4]; WIDE_TILE_ROWS / 2]; QK_K / 32],
}

/// Lays out [`WIDE_TILE_ROWS`] Q8_K rows of one length as [`TileQ8KPairs`], super-block by
/// super-block.
pub(super) fn pack_q8_k_pairs(a: [&[BlockQ8K]; WIDE_TILE_ROWS], dst: &mut [TileQ8KPairs]) {
    for a in a {
        assert_eq!(a.len(), dst.len(), "one packed block per activation block");
    }
    for (i, tile) in dst.iter_mut().enumerate() {
        for (n, a) in a.iter().enumerate() {
            let y = &a[i];
            tile.d[n] = y.d;
            tile.sub_sums[n] = sub_sums(y);
            for (g, group) in tile.qs.iter_mut().enumerate() {
                for (c, chunk) in group[n / 2].iter_mut().enumerate() {
                    let at = 32 * g + 8 * c;
                    chunk[n % 2].copy_from_slice(&y.qs[at..at + 8]);
                }
            }
        }
    }
}

/// Q4_K · Q8_K for the 8 rows of interleaved super-blocks against [`WIDE_TILE_ROWS`]
/// activation rows packed in pairs, with `smmla` (i8mm): [`gemm_q4_kx8_wide`]'s steps with
/// twice the multiply-adds per instruction. Per half of the rows and 32-element sub-block,
/// runs `2c`, `2c + 1` of each pair of weight rows are joined into 2 rows × 8 elements
/// (`zip1`/`zip2`), held while the 8 pairs of activation rows pass; each pair's sums, a 2 × 2
/// block per pair of weight rows, take the sub-block's scales laid out as they lie. At the end
/// of a super-block the blocks are rearranged into rows and scaled as the `sdot` kernel
/// scales them: the same exact integers, the same float steps, the same results to the bit.
#[target_feature(enable = "neon,i8mm")]
pub(super) fn gemm_q4_kx8_mmla(
    w: &[BlockQ4Kx8],
    a: &[TileQ8KPairs],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    assert_eq!(a.len(), w.len(), "dot of rows of different lengths");
    let mut out = [[0f32; DOT_ROWS]; WIDE_TILE_ROWS];
    unroll!(H in [0, 1] {
        let mut acc = [vdupq_n_f32(0.0); WIDE_TILE_ROWS];
        for (x, t) in w.iter().zip(a) {
            let (scales, mins) = q4_k_scales_mins(&x.scales);
            // total[2p + j]: activation rows 2p, 2p + 1 with weight rows 2j, 2j + 1 of the half.
            let mut total = [vdupq_n_s32(0); WIDE_TILE_ROWS];
            for (g, qs) in x.qs.iter().enumerate() {
                let runs: [uint8x16_t; 8] = std::array::from_fn(|k| load16(qs, 32 * k + 16 * H));
                unroll!(S in [0, 1] {
                    // Sub-block 2g + S: the low nibbles, then the high ones; weight rows
                    // (0, 1) and (2, 3) of the half, elements 8c..8c + 8.
                    let pairs: [[int8x16_t; 2]; 4] = pair_runs(&runs.map(|r| {
                        let (lo, hi) = nibbles(r);
                        if S == 0 { lo } else { hi }
                    }));
                    let sc = pair_scales(widen_u8_half(scales[2 * g + S], H));
                    let group = &t.qs[2 * g + S];
                    unroll!(P in [0, 1, 2, 3, 4, 5, 6, 7] {
                        let mut s = [vdupq_n_s32(0); 2];
                        unroll!(C in [0, 1, 2, 3] {
                            let act = load_i8x16(cast_ref(&group[P][C]));
                            s[0] = smmla(s[0], pairs[C][0], act);
                            s[1] = smmla(s[1], pairs[C][1], act);
                        });
                        total[2 * P] = vmlaq_s32(total[2 * P], s[0], sc[0]);
                        total[2 * P + 1] = vmlaq_s32(total[2 * P + 1], s[1], sc[1]);
                    });
                });
            }
            q4_k_wide_scale!(acc, &mmla_rows_s32(&total), x, mins, t, H);
        }
        store_half(&mut out, &acc, H);
    });
    out
}

/// Chunk `c`'s sub-block scales of rows `4h..4h + 4`, widened to i32, as (sub-block `2c`,
/// sub-block `2c + 1`): `scales[c]` holds row `r`'s pair at bytes `2r`, `2r + 1`.
#[target_feature(enable = "neon")]
#[inline]
fn q6_k_scales(scales: &[i8; 16], h: usize) -> (int32x4_t, int32x4_t) {
    let v = load_i8x16(scales);
    let (even, odd) = (vuzp1q_s8(v, v), vuzp2q_s8(v, v));
    let rows = |v: int8x16_t| {
        let wide = vmovl_s8(vget_low_s8(v));
        vmovl_s16(if h == 0 {
            vget_low_s16(wide)
        } else {
            vget_high_s16(wide)
        })
    };
    (rows(even), rows(odd))
}

/// The 6-bit quants minus 32 of one register of interleaved runs `t` of a Q6_K chunk, as
/// (elements `4t..`: sub-block `2c`, elements `16 + 4t..`: sub-block `2c + 1`), from the low
/// bits `ql` and the register of high bits `qh` that runs `2k` and `2k + 1` share (bits 0–3
/// for the even run, 4–7 for the odd one).
#[target_feature(enable = "neon")]
#[inline]
fn q6_k_values(ql: uint8x16_t, qh: uint8x16_t, odd: bool) -> (int8x16_t, int8x16_t) {
    let two = vdupq_n_u8(0x30);
    // Bits 4–5 of each value: the two high bits, moved from where this run keeps them.
    let (top_lo, top_hi) = if odd {
        (vandq_u8(qh, two), vandq_u8(vshrq_n_u8::<2>(qh), two))
    } else {
        (
            vandq_u8(vshlq_n_u8::<4>(qh), two),
            vandq_u8(vshlq_n_u8::<2>(qh), two),
        )
    };
    let lo = vorrq_u8(vandq_u8(ql, vdupq_n_u8(0x0f)), top_lo);
    let hi = vorrq_u8(vshrq_n_u8::<4>(ql), top_hi);
    let offset = vdupq_n_s8(32);
    (
        vsubq_s8(vreinterpretq_s8_u8(lo), offset),
        vsubq_s8(vreinterpretq_s8_u8(hi), offset),
    )
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks (decode): per 32-element chunk,
/// the low nibbles (and bits) are sub-block `2c`, the high ones `2c + 1`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_q6_kx8(w: &[BlockQ6Kx8], a: &[BlockQ8K]) -> [f32; DOT_ROWS] {
    check(w.len(), &[a], &[]);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (x, y) in w.iter().zip(a) {
        let mut total = [vdupq_n_s32(0); 2];
        for c in 0..QK_K / 32 {
            let (a_lo, a_hi) = (act16(&y.qs, 32 * c), act16(&y.qs, 32 * c + 16));
            unroll!(H in [0, 1] {
                let mut s_lo = vdupq_n_s32(0);
                let mut s_hi = vdupq_n_s32(0);
                unroll!(T in [0, 1, 2, 3] {
                    let qh = load16(&x.qh[c], 32 * (T / 2) + 16 * H);
                    let ql = load16(&x.ql[c], 32 * T + 16 * H);
                    let (lo, hi) = q6_k_values(ql, qh, T % 2 == 1);
                    s_lo = sdot_lane::<T>(s_lo, lo, a_lo);
                    s_hi = sdot_lane::<T>(s_hi, hi, a_hi);
                });
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], H);
                total[H] = vmlaq_s32(vmlaq_s32(total[H], s_lo, sc_lo), s_hi, sc_hi);
            });
        }
        let d = scales_f16x8(&x.d);
        unroll!(H in [0, 1] {
            acc[H] = vfmaq_f32(acc[H], vcvtq_f32_s32(total[H]), vmulq_n_f32(d[H], y.d));
        });
    }
    lanes8(acc)
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks against [`TILE_ROWS`] activation
/// rows: each register of quants is unpacked once for the 4 rows.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q6_kx8(
    w: &[BlockQ6Kx8],
    a: [&[BlockQ8K]; TILE_ROWS],
    sums: [&[ActBlockSum]; TILE_ROWS],
) -> [[f32; DOT_ROWS]; TILE_ROWS] {
    check(w.len(), &a, &sums);
    let mut acc = [[vdupq_n_f32(0.0); 2]; TILE_ROWS];
    for (i, x) in w.iter().enumerate() {
        let ys: [&BlockQ8K; TILE_ROWS] = std::array::from_fn(|n| &a[n][i]);
        let d = scales_f16x8(&x.d);
        unroll!(H in [0, 1] {
            let mut total = [vdupq_n_s32(0); TILE_ROWS];
            for c in 0..QK_K / 32 {
                let a_lo: [int8x16_t; TILE_ROWS] =
                    std::array::from_fn(|n| act16(&ys[n].qs, 32 * c));
                let a_hi: [int8x16_t; TILE_ROWS] =
                    std::array::from_fn(|n| act16(&ys[n].qs, 32 * c + 16));
                let mut s_lo = [vdupq_n_s32(0); TILE_ROWS];
                let mut s_hi = [vdupq_n_s32(0); TILE_ROWS];
                unroll!(T in [0, 1, 2, 3] {
                    let qh = load16(&x.qh[c], 32 * (T / 2) + 16 * H);
                    let ql = load16(&x.ql[c], 32 * T + 16 * H);
                    let (lo, hi) = q6_k_values(ql, qh, T % 2 == 1);
                    unroll!(N in [0, 1, 2, 3] {
                        s_lo[N] = sdot_lane::<T>(s_lo[N], lo, a_lo[N]);
                        s_hi[N] = sdot_lane::<T>(s_hi[N], hi, a_hi[N]);
                    });
                });
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], H);
                unroll!(N in [0, 1, 2, 3] {
                    total[N] = vmlaq_s32(vmlaq_s32(total[N], s_lo[N], sc_lo), s_hi[N], sc_hi);
                });
            }
            unroll!(N in [0, 1, 2, 3] {
                let scale = vmulq_n_f32(d[H], ys[N].d);
                acc[N][H] = vfmaq_f32(acc[N][H], vcvtq_f32_s32(total[N]), scale);
            });
        });
    }
    acc.map(|acc| lanes8(acc))
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks against [`WIDE_TILE_ROWS`] packed
/// activation rows. One half of the rows (4) at a time, and within a super-block one
/// 32-element chunk at a time: the chunk's runs of the half are unpacked once into 8 registers
/// and held while the 16 activation rows pass, each adding its two scaled sub-block sums into
/// its own i32 total, converted and scaled once per super-block as in [`gemm_q6_kx8`].
#[target_feature(enable = "neon,dotprod")]
pub(super) fn gemm_q6_kx8_wide(
    w: &[BlockQ6Kx8],
    a: &[TileQ8K],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    assert_eq!(a.len(), w.len(), "dot of rows of different lengths");
    let mut out = [[0f32; DOT_ROWS]; WIDE_TILE_ROWS];
    unroll!(H in [0, 1] {
        let mut acc = [vdupq_n_f32(0.0); WIDE_TILE_ROWS];
        for (x, t) in w.iter().zip(a) {
            let mut total = [vdupq_n_s32(0); WIDE_TILE_ROWS];
            for c in 0..QK_K / 32 {
                let mut q = [(vdupq_n_s8(0), vdupq_n_s8(0)); 4];
                unroll!(T in [0, 1, 2, 3] {
                    let qh = load16(&x.qh[c], 32 * (T / 2) + 16 * H);
                    let ql = load16(&x.ql[c], 32 * T + 16 * H);
                    q[T] = q6_k_values(ql, qh, T % 2 == 1);
                });
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], H);
                unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                    let (a_lo, a_hi) = (act16(&t.qs[N], 32 * c), act16(&t.qs[N], 32 * c + 16));
                    let mut s_lo = vdupq_n_s32(0);
                    let mut s_hi = vdupq_n_s32(0);
                    unroll!(T in [0, 1, 2, 3] {
                        s_lo = sdot_lane::<T>(s_lo, q[T].0, a_lo);
                        s_hi = sdot_lane::<T>(s_hi, q[T].1, a_hi);
                    });
                    total[N] = vmlaq_s32(vmlaq_s32(total[N], s_lo, sc_lo), s_hi, sc_hi);
                });
            }
            q6_k_wide_scale(&mut acc, &total, x, &t.d, H);
        }
        store_half(&mut out, &acc, H);
    });
    out
}

/// The end of a super-block of a wide Q6_K kernel, for half `h` of the rows: `total[n]`, the
/// exact scaled sums of activation row `n` with the half's 4 rows, times `d · d_a`, added into
/// `acc[n]`.
#[target_feature(enable = "neon")]
#[inline]
fn q6_k_wide_scale(
    acc: &mut [float32x4_t; WIDE_TILE_ROWS],
    total: &[int32x4_t; WIDE_TILE_ROWS],
    x: &BlockQ6Kx8,
    da: &[f32; WIDE_TILE_ROWS],
    h: usize,
) {
    let d = scales_f16x8(&x.d)[h];
    unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        acc[N] = vfmaq_f32(acc[N], vcvtq_f32_s32(total[N]), vmulq_n_f32(d, da[N]));
    });
}

/// The 2 × 2 blocks of the `smmla` K-quant kernels as rows: `total[2p + j]` holds activation
/// rows `2p`, `2p + 1` with weight rows `2j`, `2j + 1` of a half (as in `mmla_rows`);
/// returned is activation row `n`'s sums with the half's 4 rows.
#[target_feature(enable = "neon")]
#[inline]
fn mmla_rows_s32(total: &[int32x4_t; WIDE_TILE_ROWS]) -> [int32x4_t; WIDE_TILE_ROWS] {
    std::array::from_fn(|n| {
        let p = n / 2;
        if n % 2 == 0 {
            vuzp1q_s32(total[2 * p], total[2 * p + 1])
        } else {
            vuzp2q_s32(total[2 * p], total[2 * p + 1])
        }
    })
}

/// Registers of consecutive runs of a half (4 rows × 4 elements each) as the `smmla`
/// operands of weight rows (0, 1) and (2, 3) for elements `8c..8c + 8`: element `c` of the
/// result is `[rows 0-1, rows 2-3]` of runs `2c`, `2c + 1` side by side.
#[target_feature(enable = "neon")]
#[inline]
fn pair_runs<const M: usize>(v: &[int8x16_t]) -> [[int8x16_t; 2]; M] {
    assert_eq!(v.len(), 2 * M, "two runs to a chunk");
    std::array::from_fn(|c| {
        let (a, b) = (
            vreinterpretq_s32_s8(v[2 * c]),
            vreinterpretq_s32_s8(v[2 * c + 1]),
        );
        [
            vreinterpretq_s8_s32(vzip1q_s32(a, b)),
            vreinterpretq_s8_s32(vzip2q_s32(a, b)),
        ]
    })
}

/// A sub-block's scales of a half's 4 rows (`[s0, s1, s2, s3]`) as the `smmla` sums lie:
/// `[s0, s0, s1, s1]` (weight rows 0, 1), `[s2, s2, s3, s3]` (rows 2, 3).
#[target_feature(enable = "neon")]
#[inline]
fn pair_scales(sc: int32x4_t) -> [int32x4_t; 2] {
    [vzip1q_s32(sc, sc), vzip2q_s32(sc, sc)]
}

/// Q6_K · Q8_K for the 8 rows of interleaved super-blocks against [`WIDE_TILE_ROWS`]
/// activation rows packed in pairs, with `smmla`: [`gemm_q6_kx8_wide`]'s steps as
/// [`gemm_q4_kx8_mmla`] takes [`gemm_q4_kx8_wide`]'s, per 16-element sub-block, and the same
/// results to the bit.
#[target_feature(enable = "neon,i8mm")]
pub(super) fn gemm_q6_kx8_mmla(
    w: &[BlockQ6Kx8],
    a: &[TileQ8KPairs],
) -> [[f32; DOT_ROWS]; WIDE_TILE_ROWS] {
    assert_eq!(a.len(), w.len(), "dot of rows of different lengths");
    let mut out = [[0f32; DOT_ROWS]; WIDE_TILE_ROWS];
    unroll!(H in [0, 1] {
        let mut acc = [vdupq_n_f32(0.0); WIDE_TILE_ROWS];
        for (x, t) in w.iter().zip(a) {
            let mut total = [vdupq_n_s32(0); WIDE_TILE_ROWS];
            for c in 0..QK_K / 32 {
                let mut q = [(vdupq_n_s8(0), vdupq_n_s8(0)); 4];
                unroll!(T in [0, 1, 2, 3] {
                    let qh = load16(&x.qh[c], 32 * (T / 2) + 16 * H);
                    let ql = load16(&x.ql[c], 32 * T + 16 * H);
                    q[T] = q6_k_values(ql, qh, T % 2 == 1);
                });
                let (sc_lo, sc_hi) = q6_k_scales(&x.scales[c], H);
                unroll!(S in [0, 1] {
                    // Sub-block 2c + S: elements 32c + 16S.., two chunks of 8.
                    let pairs: [[int8x16_t; 2]; 2] =
                        pair_runs(&q.map(|(lo, hi)| if S == 0 { lo } else { hi }));
                    let sc = pair_scales(if S == 0 { sc_lo } else { sc_hi });
                    let group = &t.qs[c];
                    unroll!(P in [0, 1, 2, 3, 4, 5, 6, 7] {
                        let mut s = [vdupq_n_s32(0); 2];
                        unroll!(C in [0, 1] {
                            let act = load_i8x16(cast_ref(&group[P][2 * S + C]));
                            s[0] = smmla(s[0], pairs[C][0], act);
                            s[1] = smmla(s[1], pairs[C][1], act);
                        });
                        total[2 * P] = vmlaq_s32(total[2 * P], s[0], sc[0]);
                        total[2 * P + 1] = vmlaq_s32(total[2 * P + 1], s[1], sc[1]);
                    });
                });
            }
            q6_k_wide_scale(&mut acc, &mmla_rows_s32(&total), x, &t.d, H);
        }
        store_half(&mut out, &acc, H);
    });
    out
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;
    use half::f16;

    use super::*;
    use crate::quant::arm::Neon;
    use crate::quant::test_bytes;

    /// [`WIDE_TILE_ROWS`] Q8_K rows of `blocks` super-blocks: random quants in -127..=127
    /// (±127 included) and their sums.
    fn q8_k_rows(blocks: usize) -> Vec<Vec<BlockQ8K>> {
        (0..WIDE_TILE_ROWS)
            .map(|n| {
                let q = test_bytes(100 + n as u32, blocks * QK_K);
                (0..blocks)
                    .map(|i| {
                        let qs: [i8; QK_K] = std::array::from_fn(|j| match (n + i + j) % 13 {
                            0 => 127,
                            1 => -127,
                            _ => (q[QK_K * i + j] as i8).max(-127),
                        });
                        BlockQ8K {
                            d: 0.01 + 0.002 * (n * blocks + i) as f32,
                            bsums: std::array::from_fn(|k| {
                                qs[16 * k..16 * k + 16].iter().map(|&q| i16::from(q)).sum()
                            }),
                            qs,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_smmla_q4_k_kernel_gives_the_sdot_ones_results_to_the_bit() {
        // Says it skips, and fails instead where LLAVA_REQUIRE_CPU names i8mm.
        crate::quant::report_skipped_paths(
            "the_smmla_q4_k_kernel_gives_the_sdot_ones_results_to_the_bit",
        );
        match Neon::detect_dotprod() {
            Some(neon) if neon.i8mm => {}
            _ => {
                eprintln!("skipped: no i8mm on this CPU");
                return;
            }
        }
        for blocks in [1, 3] {
            let mut w = vec![BlockQ4Kx8::zeroed(); blocks];
            let random = test_bytes(
                7 * blocks as u32,
                blocks * std::mem::size_of::<BlockQ4Kx8>(),
            );
            bytemuck::cast_slice_mut::<_, u8>(&mut w).copy_from_slice(&random);
            for (i, x) in w.iter_mut().enumerate() {
                x.d = std::array::from_fn(|r| f16::from_f32(0.02 + 0.001 * (8 * i + r) as f32));
                x.dmin = std::array::from_fn(|r| f16::from_f32(0.01 + 0.002 * r as f32));
            }
            let rows = q8_k_rows(blocks);
            let rows: [&[BlockQ8K]; WIDE_TILE_ROWS] = std::array::from_fn(|n| rows[n].as_slice());
            let mut tile = vec![TileQ8K::zeroed(); blocks];
            crate::quant::k_quants::pack_q8_k_tile(rows, &mut tile);
            let mut pairs = vec![TileQ8KPairs::zeroed(); blocks];
            pack_q8_k_pairs(rows, &mut pairs);
            // SAFETY: the CPU has dotprod and i8mm (checked above).
            let (want, got) =
                unsafe { (gemm_q4_kx8_wide(&w, &tile), gemm_q4_kx8_mmla(&w, &pairs)) };
            let bits = |v: [[f32; DOT_ROWS]; WIDE_TILE_ROWS]| v.map(|r| r.map(f32::to_bits));
            assert_eq!(bits(got), bits(want), "{blocks} super-blocks");
        }
    }

    #[test]
    fn the_smmla_q6_k_kernel_gives_the_sdot_ones_results_to_the_bit() {
        // Says it skips, and fails instead where LLAVA_REQUIRE_CPU names i8mm.
        crate::quant::report_skipped_paths(
            "the_smmla_q6_k_kernel_gives_the_sdot_ones_results_to_the_bit",
        );
        match Neon::detect_dotprod() {
            Some(neon) if neon.i8mm => {}
            _ => {
                eprintln!("skipped: no i8mm on this CPU");
                return;
            }
        }
        for blocks in [1, 3] {
            let mut w = vec![BlockQ6Kx8::zeroed(); blocks];
            let random = test_bytes(
                9 * blocks as u32,
                blocks * std::mem::size_of::<BlockQ6Kx8>(),
            );
            bytemuck::cast_slice_mut::<_, u8>(&mut w).copy_from_slice(&random);
            for (i, x) in w.iter_mut().enumerate() {
                x.d = std::array::from_fn(|r| f16::from_f32(0.02 + 0.001 * (8 * i + r) as f32));
                // The extreme scales, -128 and 127, among the random ones.
                x.scales[0][0] = -128;
                x.scales[7][15] = 127;
            }
            let rows = q8_k_rows(blocks);
            let rows: [&[BlockQ8K]; WIDE_TILE_ROWS] = std::array::from_fn(|n| rows[n].as_slice());
            let mut tile = vec![TileQ8K::zeroed(); blocks];
            crate::quant::k_quants::pack_q8_k_tile(rows, &mut tile);
            let mut pairs = vec![TileQ8KPairs::zeroed(); blocks];
            pack_q8_k_pairs(rows, &mut pairs);
            // SAFETY: the CPU has dotprod and i8mm (checked above).
            let (want, got) =
                unsafe { (gemm_q6_kx8_wide(&w, &tile), gemm_q6_kx8_mmla(&w, &pairs)) };
            let bits = |v: [[f32; DOT_ROWS]; WIDE_TILE_ROWS]| v.map(|r| r.map(f32::to_bits));
            assert_eq!(bits(got), bits(want), "{blocks} super-blocks");
        }
    }
}
