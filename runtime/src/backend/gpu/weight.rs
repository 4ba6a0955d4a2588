//! Weights on the GPU: ggml blocks re-laid so every field a shader reads sits inside one u32
//! word (the layout table is in shaders/quant.wgsl), uploaded from the memory map one part at
//! a time, and split by rows into parts no larger than a storage binding.

use crate::quant::GgmlType;

/// How a type's blocks change on the way to the GPU: `(ggml bytes, GPU bytes)` per block, or
/// `None` for a type the GPU backend does not compute with.
pub(super) fn block_bytes(ty: GgmlType) -> Option<(usize, usize)> {
    Some(match ty {
        GgmlType::F32 => (4, 4),
        // Two-byte types are re-laid per row (an odd row gets a padding half), not per block.
        GgmlType::F16 | GgmlType::BF16 => (2, 2),
        GgmlType::Q4_0 => (18, 20),
        GgmlType::Q4_1 => (20, 20),
        GgmlType::Q5_0 => (22, 24),
        GgmlType::Q5_1 => (24, 24),
        GgmlType::Q8_0 => (34, 36),
        GgmlType::Q2K => (84, 84),
        GgmlType::Q3K => (110, 112),
        GgmlType::Q4K => (144, 144),
        GgmlType::Q5K => (176, 176),
        GgmlType::Q6K => (210, 212),
        _ => return None,
    })
}

/// The name of the type's element function in quant.wgsl.
pub(super) fn shader_fn(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => "dq_f32",
        GgmlType::F16 => "dq_f16",
        GgmlType::BF16 => "dq_bf16",
        GgmlType::Q4_0 => "dq_q4_0",
        GgmlType::Q4_1 => "dq_q4_1",
        GgmlType::Q5_0 => "dq_q5_0",
        GgmlType::Q5_1 => "dq_q5_1",
        GgmlType::Q8_0 => "dq_q8_0",
        GgmlType::Q2K => "dq_q2_k",
        GgmlType::Q3K => "dq_q3_k",
        GgmlType::Q4K => "dq_q4_k",
        GgmlType::Q5K => "dq_q5_k",
        GgmlType::Q6K => "dq_q6_k",
        _ => unreachable!("checked by block_bytes"),
    }
}

/// The name of the type's eight-element function in quant.wgsl (decode's kernel):
/// specialised for the types decode spends most on, `dq8_generic` for the others.
pub(super) fn shader_fn8(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => "dq8_f32",
        GgmlType::F16 => "dq8_f16",
        GgmlType::Q4_0 => "dq8_q4_0",
        GgmlType::Q8_0 => "dq8_q8_0",
        GgmlType::Q4K => "dq8_q4_k",
        GgmlType::Q6K => "dq8_q6_k",
        _ => "dq8_generic",
    }
}

/// The suffix of the type's block functions in gemv_dot4.wgsl (`w_word_<suffix>`,
/// `w_scales_<suffix>`: the kernels with packed 4×8-bit integer dot products), for the types
/// that have them.
pub(super) fn shader_fn_dot4(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::Q4_0 => Some("q4_0"),
        GgmlType::Q8_0 => Some("q8_0"),
        GgmlType::Q4K => Some("q4_k"),
        GgmlType::Q6K => Some("q6_k"),
        _ => None,
    }
}

/// u32 words of one row of `row_len` elements on the GPU.
pub(super) fn row_words(ty: GgmlType, row_len: usize) -> usize {
    match ty {
        GgmlType::F16 | GgmlType::BF16 => row_len.div_ceil(2),
        _ => {
            let (_, gpu) = block_bytes(ty).expect("a GPU type");
            row_len / ty.block_size() * gpu / 4
        }
    }
}

/// Re-lays whole rows of ggml data (`src`, rows of `row_len` elements) into `dst`, which
/// holds `row_words(ty, row_len)` words per row.
pub(super) fn relayout(ty: GgmlType, row_len: usize, src: &[u8], dst: &mut [u8]) {
    let (ggml, gpu) = block_bytes(ty).expect("a GPU type");
    match ty {
        GgmlType::F16 | GgmlType::BF16 => {
            let (src_row, dst_row) = (row_len * 2, row_words(ty, row_len) * 4);
            for (s, d) in src.chunks_exact(src_row).zip(dst.chunks_exact_mut(dst_row)) {
                d[..src_row].copy_from_slice(s);
                d[src_row..].fill(0);
            }
        }
        _ if ggml == gpu && ty != GgmlType::Q5_0 => dst.copy_from_slice(src),
        _ => {
            for (s, d) in src.chunks_exact(ggml).zip(dst.chunks_exact_mut(gpu)) {
                relay_block(ty, s, d);
            }
        }
    }
}

/// One block into its GPU layout (shaders/quant.wgsl).
fn relay_block(ty: GgmlType, s: &[u8], d: &mut [u8]) {
    d.fill(0);
    match ty {
        // d f16, then the quants → the quants, then d.
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            let n = s.len() - 2;
            d[..n].copy_from_slice(&s[2..]);
            d[n..n + 2].copy_from_slice(&s[..2]);
        }
        // d, qh[4], qs[16] → qh, qs, d.
        GgmlType::Q5_0 => {
            d[..20].copy_from_slice(&s[2..22]);
            d[20..22].copy_from_slice(&s[..2]);
        }
        // Word-aligned fields already; only the block's length grows to whole words.
        GgmlType::Q3K | GgmlType::Q6K => d[..s.len()].copy_from_slice(s),
        _ => unreachable!("{ty} needs no re-layout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gpu_block_is_whole_words_and_holds_its_ggml_block() {
        for id in 0..64 {
            let Some(ty) = GgmlType::from_id(id) else {
                continue;
            };
            if let Some((ggml, gpu)) = block_bytes(ty) {
                assert_eq!(ggml, ty.type_size(), "{ty}");
                if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
                    // Whole rows are padded instead: a row of 3 halves takes 2 words.
                    assert_eq!(row_words(ty, 3), 2);
                } else {
                    assert!(gpu >= ggml && gpu % 4 == 0 && gpu - ggml < 4, "{ty}");
                }
            }
        }
    }

    #[test]
    fn q8_0_moves_its_scale_behind_the_quants() {
        let mut s = vec![0xaa, 0xbb];
        s.extend(0..32u8);
        let mut d = vec![0xffu8; 36];
        relayout(GgmlType::Q8_0, 32, &s, &mut d);
        assert_eq!(&d[..32], &(0..32u8).collect::<Vec<_>>()[..]);
        assert_eq!(&d[32..], &[0xaa, 0xbb, 0, 0]);
    }

    #[test]
    fn an_odd_f16_row_is_padded_to_a_whole_word() {
        // Two rows of three halves: each becomes two words, the last half zero.
        let s: Vec<u8> = (1..=12).collect();
        let mut d = vec![0xffu8; 16];
        relayout(GgmlType::F16, 3, &s, &mut d);
        assert_eq!(d, [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0]);
    }
}
