//! The ggml tensor type ids that can appear in a GGUF file, with their block geometry.
//!
//! Ids, block sizes and byte sizes follow ggml (`ggml.c` type traits, `ggml-common.h` structs);
//! see ../shared/reference/GGUF-AND-LLAVA.md §1. Every type a file may name is listed here so that
//! the reader can bounds-check and `llava inspect` can describe any GGUF, even where the runtime
//! has no kernel for the type.

use std::fmt;

/// A ggml tensor element type, by its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE half float.
    F16 = 1,
    /// 32 elements as 4-bit signed steps of one f16 scale; 4.5 bits per weight.
    Q4_0 = 2,
    /// 32 elements as 4-bit steps of an f16 scale above an f16 minimum; 5 bits per weight.
    Q4_1 = 3,
    /// 32 elements as 5-bit signed steps of one f16 scale; 5.5 bits per weight.
    Q5_0 = 6,
    /// 32 elements as 5-bit steps of an f16 scale above an f16 minimum; 6 bits per weight.
    Q5_1 = 7,
    /// 32 elements as signed bytes of one f16 scale; 8.5 bits per weight.
    Q8_0 = 8,
    /// Q8_0 plus the block's scaled sum; 9 bits per weight. An activation format only.
    Q8_1 = 9,
    /// 256-element super-blocks of 2-bit quants with 4-bit scales and mins; 2.625 bits per weight.
    Q2K = 10,
    /// 256-element super-blocks of 3-bit quants with 6-bit scales; 3.4375 bits per weight.
    Q3K = 11,
    /// 256-element super-blocks of 4-bit quants with 6-bit scales and mins; 4.5 bits per weight.
    Q4K = 12,
    /// 256-element super-blocks of 5-bit quants with 6-bit scales and mins; 5.5 bits per weight.
    Q5K = 13,
    /// 256-element super-blocks of 6-bit quants with 8-bit scales; 6.5625 bits per weight.
    Q6K = 14,
    /// 256 signed bytes of one f32 scale, with per-16 sums; 9.125 bits per weight. An activation
    /// format only.
    Q8K = 15,
    /// ggml's IQ2_XXS (2.0625 bits per weight). Recognised, not computed.
    Iq2Xxs = 16,
    /// ggml's IQ2_XS (2.3125 bits per weight). Recognised, not computed.
    Iq2Xs = 17,
    /// ggml's IQ3_XXS (3.0625 bits per weight). Recognised, not computed.
    Iq3Xxs = 18,
    /// ggml's IQ1_S (1.5625 bits per weight). Recognised, not computed.
    Iq1S = 19,
    /// ggml's IQ4_NL: 32-element blocks on a non-linear 4-bit grid (4.5 bits per weight).
    /// Recognised, not computed.
    Iq4Nl = 20,
    /// ggml's IQ3_S (3.4375 bits per weight). Recognised, not computed.
    Iq3S = 21,
    /// ggml's IQ2_S (2.5625 bits per weight). Recognised, not computed.
    Iq2S = 22,
    /// ggml's IQ4_XS (4.25 bits per weight). Recognised, not computed.
    Iq4Xs = 23,
    /// Signed 8-bit integer.
    I8 = 24,
    /// Signed 16-bit integer.
    I16 = 25,
    /// Signed 32-bit integer.
    I32 = 26,
    /// Signed 64-bit integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// ggml's IQ1_M (1.75 bits per weight). Recognised, not computed.
    Iq1M = 29,
    /// bfloat16: the top 16 bits of an f32.
    BF16 = 30,
    /// ggml's ternary TQ1_0 (1.6875 bits per weight). Recognised, not computed.
    Tq1_0 = 34,
    /// ggml's ternary TQ2_0 (2.0625 bits per weight). Recognised, not computed.
    Tq2_0 = 35,
    /// OCP microscaling FP4: 32 e2m1 values with one shared e8m0 scale (4.25 bits per weight).
    /// Recognised, not computed.
    Mxfp4 = 39,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::Iq2Xxs,
        GgmlType::Iq2Xs,
        GgmlType::Iq3Xxs,
        GgmlType::Iq1S,
        GgmlType::Iq4Nl,
        GgmlType::Iq3S,
        GgmlType::Iq2S,
        GgmlType::Iq4Xs,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::Iq1M,
        GgmlType::BF16,
        GgmlType::Tq1_0,
        GgmlType::Tq2_0,
        GgmlType::Mxfp4,
    ];

    /// The type with this on-disk id, if ggml still accepts it in files.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The on-disk id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type, as llama.cpp prints it (`q4_K`, `f16`, ...).
    pub const fn name(self) -> &'static str {
        self.geometry().0
    }

    /// Elements per block: quantization blocks run along `ne[0]`.
    pub const fn block_size(self) -> usize {
        self.geometry().1
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.geometry().2
    }

    /// Bytes taken by `n_elements` contiguous elements, or `None` if `n_elements` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, n_elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(self.type_size() as u64)
    }

    /// Average bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }

    /// `(name, block elements, block bytes)`.
    const fn geometry(self) -> (&'static str, usize, usize) {
        use GgmlType::*;
        match self {
            F32 => ("f32", 1, 4),
            F16 => ("f16", 1, 2),
            Q4_0 => ("q4_0", 32, 18),
            Q4_1 => ("q4_1", 32, 20),
            Q5_0 => ("q5_0", 32, 22),
            Q5_1 => ("q5_1", 32, 24),
            Q8_0 => ("q8_0", 32, 34),
            Q8_1 => ("q8_1", 32, 36),
            Q2K => ("q2_K", 256, 84),
            Q3K => ("q3_K", 256, 110),
            Q4K => ("q4_K", 256, 144),
            Q5K => ("q5_K", 256, 176),
            Q6K => ("q6_K", 256, 210),
            Q8K => ("q8_K", 256, 292),
            Iq2Xxs => ("iq2_xxs", 256, 66),
            Iq2Xs => ("iq2_xs", 256, 74),
            Iq3Xxs => ("iq3_xxs", 256, 98),
            Iq1S => ("iq1_s", 256, 50),
            Iq4Nl => ("iq4_nl", 32, 18),
            Iq3S => ("iq3_s", 256, 110),
            Iq2S => ("iq2_s", 256, 82),
            Iq4Xs => ("iq4_xs", 256, 136),
            I8 => ("i8", 1, 1),
            I16 => ("i16", 1, 2),
            I32 => ("i32", 1, 4),
            I64 => ("i64", 1, 8),
            F64 => ("f64", 1, 8),
            Iq1M => ("iq1_m", 256, 56),
            BF16 => ("bf16", 1, 2),
            Tq1_0 => ("tq1_0", 256, 54),
            Tq2_0 => ("tq2_0", 256, 66),
            Mxfp4 => ("mxfp4", 32, 17),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        let mut ids: Vec<u32> = GgmlType::ALL.iter().map(|t| t.id()).collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            GgmlType::ALL.len(),
            "ALL must be sorted and unique"
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn removed_and_unknown_ids_are_rejected() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn bits_per_weight_match_the_published_figures() {
        assert_eq!(GgmlType::Q4_0.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q4K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q3K.bits_per_weight(), 3.4375);
        assert_eq!(GgmlType::Q2K.bits_per_weight(), 2.625);
    }

    #[test]
    fn row_bytes_requires_whole_blocks() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::Q4K.row_bytes(4096), Some(16 * 144));
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
