//! Q4_0: 32 elements as 4-bit signed steps of one f16 scale (4.5 bits per weight).
//!
//! Layout and algorithms: ggml `block_q4_0`, `quantize_row_q4_0_reference`,
//! `dequantize_row_q4_0`, and the scalar branch of `ggml_vec_dot_q4_0_q8_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::dispatch::InterleavedBlock;
use super::{
    assert_dot_len, assert_row_len, signed_abs_max, trunc_to_i8, BlockFormat, BlockQ8_0, GgmlType,
    VecDot,
};

const QK: usize = 32;

/// `qs[j]` holds element `j` in its low nibble and element `j + 16` in its high nibble, each
/// stored as `q + 8` for a signed step `q` in -8..=7: `x = (nibble - 8) · d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// The block's scale.
    pub d: f16,
    /// The 32 quants, two per byte (layout above).
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == GgmlType::Q4_0.type_size());
const _: () = assert!(GgmlType::Q4_0.block_size() == QK);

impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;

    fn quantize_row(src: &[f32], dst: &mut [Self]) {
        assert_row_len::<Self>(dst.len(), src.len());
        for (block, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            // The largest-magnitude element maps to exactly -8, so the asymmetric range -8..=7
            // is used in full on the side where the extreme lies.
            let d = signed_abs_max(x) / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block.d = f16::from_f32(d);
            for j in 0..QK / 2 {
                // `+ 8.5` then truncation: round half up into the offset range 0..=16,
                // then clamp the single out-of-range value 16 (x == -max) down to 15.
                let lo = trunc_to_i8(x[j] * id + 8.5).min(15) as u8;
                let hi = trunc_to_i8(x[j + QK / 2] * id + 8.5).min(15) as u8;
                block.qs[j] = lo | (hi << 4);
            }
        }
    }

    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        assert_row_len::<Self>(src.len(), dst.len());
        for (block, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = block.d.to_f32();
            for j in 0..QK / 2 {
                let lo = i32::from(block.qs[j] & 0x0f) - 8;
                let hi = i32::from(block.qs[j] >> 4) - 8;
                y[j] = lo as f32 * d;
                y[j + QK / 2] = hi as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ4_0 {
    type Activation = BlockQ8_0;

    fn vec_dot(weights: &[Self], activations: &[BlockQ8_0]) -> f32 {
        assert_dot_len(weights, activations);
        let mut sum = 0f32;
        for (x, y) in weights.iter().zip(activations) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let lo = i32::from(x.qs[j] & 0x0f) - 8;
                let hi = i32::from(x.qs[j] >> 4) - 8;
                sumi += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + QK / 2]);
            }
            // ggml's order: ((sumi · d_x) · d_y).
            sum += sumi as f32 * x.d.to_f32() * y.d.to_f32();
        }
        sum
    }
}

/// Rows interleaved into one [`BlockQ4_0x8`].
pub const INTERLEAVE_ROWS: usize = 8;

/// Block `i` of `INTERLEAVE_ROWS` consecutive Q4_0 rows, laid out so that a kernel
/// dotting all of them with one activation row reads one contiguous stream and finds each
/// 4-byte run of the 8 rows' quants side by side, as one 256-bit register holds them.
///
/// Not a ggml format: the CPU backend builds it from mapped Q4_0 weights when a matmul first
/// uses them (`backend::cpu`), in place of the mapped bytes. It is the same size as the 8
/// blocks it holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0x8 {
    /// Row `r`'s scale.
    pub d: [f16; INTERLEAVE_ROWS],
    /// `qs[32t + 4r..][..4]` is row `r`'s `qs[4t..4t + 4]`, for `t` in 0..4.
    pub qs: [u8; INTERLEAVE_ROWS * QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0x8>() == INTERLEAVE_ROWS * 18);

impl InterleavedBlock for BlockQ4_0x8 {
    type Row = BlockQ4_0;

    /// Interleaves block `i` of each of the rows.
    fn from_rows(rows: [&BlockQ4_0; INTERLEAVE_ROWS]) -> Self {
        let (d, qs) = interleave(rows, Self::run, 0);
        BlockQ4_0x8 { d, qs }
    }

    /// Row `r`'s block, as it was before interleaving.
    fn row(&self, r: usize) -> BlockQ4_0 {
        deinterleave(&self.d, &self.qs, r, Self::run, 0)
    }
}

impl BlockQ4_0x8 {
    /// Where row `r`'s `qs[4t..4t + 4]` starts in `qs`.
    fn run(r: usize, t: usize) -> usize {
        32 * t + 4 * r
    }
}

/// The scales and runs of 8 rows' blocks, row `r`'s `qs[4t..4t + 4]` at `run(r, t)`, each
/// 4 bytes `^ flip`.
#[inline]
fn interleave(
    rows: [&BlockQ4_0; INTERLEAVE_ROWS],
    run: impl Fn(usize, usize) -> usize,
    flip: u32,
) -> ([f16; INTERLEAVE_ROWS], [u8; INTERLEAVE_ROWS * QK / 2]) {
    let mut qs = [0; INTERLEAVE_ROWS * QK / 2];
    for (r, block) in rows.iter().enumerate() {
        for (t, bytes) in block.qs.chunks_exact(4).enumerate() {
            let bytes = u32::from_ne_bytes(bytes.try_into().expect("4 bytes")) ^ flip;
            qs[run(r, t)..][..4].copy_from_slice(&bytes.to_ne_bytes());
        }
    }
    (rows.map(|block| block.d), qs)
}

/// Row `r`'s block out of what [`interleave`] made with the same `run` and `flip`.
#[inline]
fn deinterleave(
    d: &[f16; INTERLEAVE_ROWS],
    qs: &[u8; INTERLEAVE_ROWS * QK / 2],
    r: usize,
    run: impl Fn(usize, usize) -> usize,
    flip: u32,
) -> BlockQ4_0 {
    let mut block = BlockQ4_0 {
        d: d[r],
        qs: [0; QK / 2],
    };
    for (t, bytes) in block.qs.chunks_exact_mut(4).enumerate() {
        let stored = &qs[run(r, t)..][..4];
        let stored = u32::from_ne_bytes(stored.try_into().expect("4 bytes")) ^ flip;
        bytes.copy_from_slice(&stored.to_ne_bytes());
    }
    block
}

/// [`BlockQ4_0x8`] as the ARM kernels read it (`quant::arm::interleaved`): the same runs in
/// another order, with every nibble's top bit flipped. Half `h` of the rows (rows `4h..4h + 4`)
/// has its 4 runs together, so a kernel loads them with two `ldp`; and a byte `x` stored as
/// `packed ^ 0x88` unpacks into `16·(q - 8)` (low nibble: `(x << 4) as i8`; high nibble:
/// `(x & 0xf0) as i8`) with no step for the offset of 8.
///
/// Not a ggml format: the CPU backend builds it on the ARM `sdot` path, in place of the
/// mapped bytes. It is the same size as the 8 blocks it holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0x8Arm {
    /// Row `r`'s scale.
    pub d: [f16; INTERLEAVE_ROWS],
    /// `qs[64h + 16t + 4i..][..4]` is row `4h + i`'s `qs[4t..4t + 4]`, each byte `^ 0x88`,
    /// for `h` in 0..2, `t` in 0..4, `i` in 0..4.
    pub qs: [u8; INTERLEAVE_ROWS * QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0x8Arm>() == INTERLEAVE_ROWS * 18);

impl BlockQ4_0x8Arm {
    /// Where row `r`'s `qs[4t..4t + 4]` starts in `qs`.
    fn run(r: usize, t: usize) -> usize {
        64 * (r / 4) + 16 * t + 4 * (r % 4)
    }
}

/// Both nibbles' top bits of 4 bytes: `q + 8` with it flipped is `q` in two's complement
/// (4 bits).
const FLIP4: u32 = 0x8888_8888;

impl InterleavedBlock for BlockQ4_0x8Arm {
    type Row = BlockQ4_0;

    /// Interleaves block `i` of each of the rows.
    fn from_rows(rows: [&BlockQ4_0; INTERLEAVE_ROWS]) -> Self {
        let (d, qs) = interleave(rows, Self::run, FLIP4);
        BlockQ4_0x8Arm { d, qs }
    }

    /// Row `r`'s block, as it was before interleaving.
    fn row(&self, r: usize) -> BlockQ4_0 {
        deinterleave(&self.d, &self.qs, r, Self::run, FLIP4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_the_block_share_bytes_low_nibble_first() {
        // Element j in the low nibble of qs[j], element j+16 in its high nibble.
        let mut x = [0f32; QK];
        x[0] = -8.0; // defines d = 1 and is stored as nibble 0
        x[16] = 7.0; // high nibble of qs[0]: 7 + 8 = 15
        x[1] = 1.0; // low nibble of qs[1]: 9
        let mut block = [BlockQ4_0::zeroed()];
        BlockQ4_0::quantize_row(&x, &mut block);
        assert_eq!(block[0].d.to_f32(), 1.0);
        assert_eq!(block[0].qs[0], 0xf0);
        assert_eq!(block[0].qs[1] & 0x0f, 9);
        let mut y = [0f32; QK];
        BlockQ4_0::dequantize_row(&block, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn interleaving_keeps_every_row() {
        let rows: Vec<BlockQ4_0> = (0..INTERLEAVE_ROWS)
            .map(|r| BlockQ4_0 {
                d: f16::from_f32(r as f32 + 0.5),
                qs: std::array::from_fn(|j| (r * 31 + j * 13) as u8),
            })
            .collect();
        let packed = BlockQ4_0x8::from_rows(std::array::from_fn(|r| &rows[r]));
        // Row 2's bytes 4..8 sit at dword 1, lane 2.
        assert_eq!(packed.qs[32 + 8..][..4], rows[2].qs[4..8]);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(&packed.row(r), row);
        }
        // The ARM order: row 6 (half 1, lane 2)'s bytes 4..8 at 64 + 16 + 8, flipped.
        let arm = BlockQ4_0x8Arm::from_rows(std::array::from_fn(|r| &rows[r]));
        let flipped: Vec<u8> = rows[6].qs[4..8].iter().map(|b| b ^ 0x88).collect();
        assert_eq!(arm.qs[64 + 16 + 8..][..4], flipped[..]);
        assert_eq!(arm.d, packed.d);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(&arm.row(r), row);
        }
    }

    #[test]
    fn the_extreme_opposite_of_max_clamps_to_seven() {
        // max = -8 gives d = 1; +8 would need nibble 16 and is clamped to 15, i.e. +7.
        let mut x = [0f32; QK];
        x[0] = -8.0;
        x[1] = 8.0;
        let mut block = [BlockQ4_0::zeroed()];
        BlockQ4_0::quantize_row(&x, &mut block);
        assert_eq!(block[0].qs[1] & 0x0f, 15);
    }
}
