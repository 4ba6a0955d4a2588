// Dequantizing one element of a weight row, for every weight type the GPU computes with.
//
// A weight lives in `w: array<u32>` (declared by the kernel that includes this file), one row
// after another, each row padded to whole words. `base` is the row's first word and `k` the
// element (0 ≤ k < row length). The blocks are ggml's, re-laid at upload where a block's size
// is not a multiple of 4 bytes or a field would straddle words (runtime/src/backend/gpu/
// weight.rs writes them):
//
//   type  bytes  layout on the GPU (byte offsets within a block)
//   F32    4/el  the f32 values
//   F16    2/el  two halves per word, element k in half k % 2; a row of odd length ends in
//                a zero half
//   BF16   2/el  as F16, with bf16 halves
//   Q4_0   20    qs[16] @0, d f16 @16, 2 bytes of padding        (ggml: d @0, qs @2; 18 bytes)
//   Q4_1   20    d @0, m @2, qs[16] @4                            (as ggml)
//   Q5_0   24    qh u32 @0, qs[16] @4, d @20, 2 bytes of padding  (ggml: d @0, qh @2, qs @6)
//   Q5_1   24    d @0, m @2, qh u32 @4, qs[16] @8                 (as ggml)
//   Q8_0   36    qs[32] i8 @0, d @32, 2 bytes of padding          (ggml: d @0, qs @2; 34 bytes)
//   Q2_K   84    scales[16] @0, qs[64] @16, d @80, dmin @82       (as ggml)
//   Q3_K  112    hmask[32] @0, qs[64] @32, scales[12] @96, d @108, 2 bytes of padding
//   Q4_K  144    d @0, dmin @2, scales[12] @4, qs[128] @16        (as ggml)
//   Q5_K  176    d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 (as ggml)
//   Q6_K  212    ql[128] @0, qh[64] @128, scales[16] i8 @192, d @208, 2 bytes of padding
//
// What each value means is ggml's (GGUF-AND-LLAVA.md; runtime/src/quant has the scalar
// versions these are tested against).

// Byte `off` of the data starting at word `base`.
fn byte_at(base: u32, off: u32) -> u32 {
    return (w[base + off / 4u] >> ((off % 4u) * 8u)) & 0xffu;
}

// The byte as a signed value.
fn sbyte_at(base: u32, off: u32) -> i32 {
    return (i32(byte_at(base, off)) << 24u) >> 24u;
}

// The f16 at byte `off` (even).
fn half_at(base: u32, off: u32) -> f32 {
    return unpack2x16float(w[base + off / 4u])[(off / 2u) % 2u];
}

fn dq_f32(base: u32, k: u32) -> f32 {
    return bitcast<f32>(w[base + k]);
}

fn dq_f16(base: u32, k: u32) -> f32 {
    return unpack2x16float(w[base + k / 2u])[k % 2u];
}

fn dq_bf16(base: u32, k: u32) -> f32 {
    return bitcast<f32>(((w[base + k / 2u] >> ((k % 2u) * 16u)) & 0xffffu) << 16u);
}

fn dq_q4_0(base: u32, k: u32) -> f32 {
    let b = base + (k / 32u) * 5u;
    let j = k % 32u;
    let q = (byte_at(b, j % 16u) >> ((j / 16u) * 4u)) & 0xfu;
    return f32(i32(q) - 8) * half_at(b, 16u);
}

fn dq_q4_1(base: u32, k: u32) -> f32 {
    let b = base + (k / 32u) * 5u;
    let j = k % 32u;
    let q = (byte_at(b, 4u + j % 16u) >> ((j / 16u) * 4u)) & 0xfu;
    return f32(q) * half_at(b, 0u) + half_at(b, 2u);
}

// The 5-bit value of element j of a Q5_0/Q5_1 block: the nibble and bit j of qh.
fn q5_value(b: u32, qh: u32, qs_off: u32, j: u32) -> u32 {
    let low = (byte_at(b, qs_off + j % 16u) >> ((j / 16u) * 4u)) & 0xfu;
    return low | (((qh >> j) & 1u) << 4u);
}

fn dq_q5_0(base: u32, k: u32) -> f32 {
    let b = base + (k / 32u) * 6u;
    let q = q5_value(b, w[b], 4u, k % 32u);
    return f32(i32(q) - 16) * half_at(b, 20u);
}

fn dq_q5_1(base: u32, k: u32) -> f32 {
    let b = base + (k / 32u) * 6u;
    let q = q5_value(b, w[b + 1u], 8u, k % 32u);
    return f32(q) * half_at(b, 0u) + half_at(b, 2u);
}

fn dq_q8_0(base: u32, k: u32) -> f32 {
    let b = base + (k / 32u) * 9u;
    return f32(sbyte_at(b, k % 32u)) * half_at(b, 32u);
}

fn dq_q2_k(base: u32, k: u32) -> f32 {
    let b = base + (k / 256u) * 21u;
    let n = k % 256u;
    let sc = byte_at(b, n / 16u);
    let q = (byte_at(b, 16u + 32u * (n / 128u) + n % 32u) >> (2u * ((n % 128u) / 32u))) & 3u;
    return half_at(b, 80u) * f32(sc & 0xfu) * f32(q) - half_at(b, 82u) * f32(sc >> 4u);
}

fn dq_q3_k(base: u32, k: u32) -> f32 {
    let b = base + (k / 256u) * 28u;
    let n = k % 256u;
    let j = n / 16u;
    var low = byte_at(b, 96u + j % 8u);
    if (j >= 8u) {
        low = low >> 4u;
    }
    let high = (byte_at(b, 96u + 8u + j % 4u) >> (2u * (j / 4u))) & 3u;
    let scale = i32((low & 0xfu) | (high << 4u)) - 32;
    let q2 = (byte_at(b, 32u + 32u * (n / 128u) + n % 32u) >> (2u * ((n % 128u) / 32u))) & 3u;
    let high_set = (byte_at(b, n % 32u) >> (n / 32u)) & 1u;
    let q = i32(q2) - select(4, 0, high_set == 1u);
    return half_at(b, 108u) * f32(scale) * f32(q);
}

// Scale and min of 32-element sub-block j of a Q4_K/Q5_K block (6 bits each, packed in 12
// bytes at byte 4).
fn scale_min_k4(b: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(b, 4u + j) & 63u), f32(byte_at(b, 8u + j) & 63u));
    }
    let sc = (byte_at(b, 8u + j) & 0xfu) | ((byte_at(b, j) >> 6u) << 4u);
    let m = (byte_at(b, 8u + j) >> 4u) | ((byte_at(b, 4u + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// The 4-bit value of element n in the Q4_K/Q5_K nibble layout, from qs at byte `qs_off`.
fn k_nibble(b: u32, qs_off: u32, n: u32) -> u32 {
    return (byte_at(b, qs_off + 32u * (n / 64u) + n % 32u) >> (((n / 32u) % 2u) * 4u)) & 0xfu;
}

fn dq_q4_k(base: u32, k: u32) -> f32 {
    let b = base + (k / 256u) * 36u;
    let n = k % 256u;
    let sm = scale_min_k4(b, n / 32u);
    return half_at(b, 0u) * sm.x * f32(k_nibble(b, 16u, n)) - half_at(b, 2u) * sm.y;
}

fn dq_q5_k(base: u32, k: u32) -> f32 {
    let b = base + (k / 256u) * 44u;
    let n = k % 256u;
    let sm = scale_min_k4(b, n / 32u);
    let q = k_nibble(b, 48u, n) | (((byte_at(b, 16u + n % 32u) >> (n / 32u)) & 1u) << 4u);
    return half_at(b, 0u) * sm.x * f32(q) - half_at(b, 2u) * sm.y;
}

fn dq_q6_k(base: u32, k: u32) -> f32 {
    let b = base + (k / 256u) * 53u;
    let n = k % 256u;
    let half = n / 128u;
    let r = n % 128u;
    let row = r / 32u;
    let l = r % 32u;
    let ql = byte_at(b, 64u * half + l + 32u * (row % 2u)) >> ((row / 2u) * 4u);
    let qh = (byte_at(b, 128u + 32u * half + l) >> (2u * row)) & 3u;
    let q = i32((ql & 0xfu) | (qh << 4u)) - 32;
    // ggml's order: (d · scale) · q.
    return (half_at(b, 208u) * f32(sbyte_at(b, 192u + n / 16u))) * f32(q);
}

// Eight consecutive elements `k8..k8 + 8` of a row (`k8` a multiple of 8), for the decode
// kernel: a block's scales are decoded once for the eight, and its quants read a word at a
// time. `dq8_generic` (eight `dq` calls) serves the types without a specialised one.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn dq8_generic(base: u32, k8: u32) -> Eight {
    return Eight(
        vec4<f32>(dq(base, k8), dq(base, k8 + 1u), dq(base, k8 + 2u), dq(base, k8 + 3u)),
        vec4<f32>(dq(base, k8 + 4u), dq(base, k8 + 5u), dq(base, k8 + 6u), dq(base, k8 + 7u)),
    );
}

// The four bytes of `word`, shifted right by `shift` and masked by `mask`, as floats.
fn bytes4(word: u32, shift: u32, mask: u32) -> vec4<f32> {
    let v = (word >> shift) & mask;
    return vec4<f32>(f32(v & 0xffu), f32((v >> 8u) & 0xffu), f32((v >> 16u) & 0xffu), f32(v >> 24u));
}

// The four bytes of `word` as signed values.
fn sbytes4(word: u32) -> vec4<f32> {
    let v = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

fn dq8_f32(base: u32, k8: u32) -> Eight {
    let at = base + k8;
    return Eight(
        bitcast<vec4<f32>>(vec4<u32>(w[at], w[at + 1u], w[at + 2u], w[at + 3u])),
        bitcast<vec4<f32>>(vec4<u32>(w[at + 4u], w[at + 5u], w[at + 6u], w[at + 7u])),
    );
}

fn dq8_f16(base: u32, k8: u32) -> Eight {
    let at = base + k8 / 2u;
    return Eight(
        vec4<f32>(unpack2x16float(w[at]), unpack2x16float(w[at + 1u])),
        vec4<f32>(unpack2x16float(w[at + 2u]), unpack2x16float(w[at + 3u])),
    );
}

fn dq8_q4_0(base: u32, k8: u32) -> Eight {
    let b = base + (k8 / 32u) * 5u;
    let j = k8 % 32u;
    let at = b + (j % 16u) / 4u;
    let shift = (j / 16u) * 4u;
    let d = half_at(b, 16u);
    return Eight(
        (bytes4(w[at], shift, 0x0f0f0f0fu) - 8.0) * d,
        (bytes4(w[at + 1u], shift, 0x0f0f0f0fu) - 8.0) * d,
    );
}

fn dq8_q8_0(base: u32, k8: u32) -> Eight {
    let b = base + (k8 / 32u) * 9u;
    let at = b + (k8 % 32u) / 4u;
    let d = half_at(b, 32u);
    return Eight(sbytes4(w[at]) * d, sbytes4(w[at + 1u]) * d);
}

fn dq8_q4_k(base: u32, k8: u32) -> Eight {
    let b = base + (k8 / 256u) * 36u;
    let n = k8 % 256u;
    let sm = scale_min_k4(b, n / 32u);
    let scale = half_at(b, 0u) * sm.x;
    let min = half_at(b, 2u) * sm.y;
    let at = b + (16u + 32u * (n / 64u) + n % 32u) / 4u;
    let shift = ((n / 32u) % 2u) * 4u;
    return Eight(
        scale * bytes4(w[at], shift, 0x0f0f0f0fu) - min,
        scale * bytes4(w[at + 1u], shift, 0x0f0f0f0fu) - min,
    );
}

fn dq8_q6_k(base: u32, k8: u32) -> Eight {
    let b = base + (k8 / 256u) * 53u;
    let n = k8 % 256u;
    let half = n / 128u;
    let r = n % 128u;
    let row = r / 32u;
    let l = r % 32u;
    let ql_at = b + (64u * half + l + 32u * (row % 2u)) / 4u;
    let qh_at = b + (128u + 32u * half + l) / 4u;
    let ql_shift = (row / 2u) * 4u;
    let qh_shift = 2u * row;
    // ggml's order: (d · scale) · q.
    let scale = half_at(b, 208u) * f32(sbyte_at(b, 192u + n / 16u));
    let lo = bytes4(w[ql_at], ql_shift, 0x0f0f0f0fu) + 16.0 * bytes4(w[qh_at], qh_shift, 0x03030303u);
    let hi = bytes4(w[ql_at + 1u], ql_shift, 0x0f0f0f0fu) + 16.0 * bytes4(w[qh_at + 1u], qh_shift, 0x03030303u);
    return Eight(scale * (lo - 32.0), scale * (hi - 32.0));
}
