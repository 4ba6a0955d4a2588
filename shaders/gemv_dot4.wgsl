// The decode kernel (`gemv`, matmul.wgsl) with packed 4×8-bit integer dot products: the
// activations come quantized to 8 bits in blocks of 32 (q8_act.wgsl), and each weight block's
// dot with them is `dot4I8Packed` over its quants, four products an instruction, scaled once
// per block. The host appends this file to matmul.wgsl for Q4_0, Q8_0, Q4_K and Q6_K weights
// and binds `fn partial` to `row_partial_dot4` and `fn dot4_block` to the weight's
// `dot4_<type>`. The results are the f32 kernel's within the rounding of the activations to
// 8 bits, which is what the CPU backend's integer dots do too.
//
// WGSL's `dot4I8Packed` is a language feature every native wgpu backend has; naga emits the
// hardware instruction where the Vulkan device has VK_KHR_shader_integer_dot_product, and a
// few integer operations where it has not.

@group(0) @binding(4) var<storage, read> xq: array<u32>;

const XQ_WORDS: u32 = 10u;

fn xq_d(a: u32) -> f32 {
    return bitcast<f32>(xq[a + 8u]);
}

fn xq_sum(a: u32) -> f32 {
    return f32(bitcast<i32>(xq[a + 9u]));
}

// Thread `t`'s share of the dot of weight row `base` with row `r` of the quantized
// activations: whole blocks of 32, one at a time.
fn row_partial_dot4(base: u32, r: u32, t: u32) -> f32 {
    let blocks = p.k / 32u;
    let row = r * blocks * XQ_WORDS;
    var acc = 0.0;
    for (var blk = t; blk < blocks; blk += GEMV_THREADS) {
        acc += dot4_block(base, blk, row + blk * XQ_WORDS);
    }
    return acc;
}

// Q4_0 (20-byte blocks: qs[16], d): byte j holds element j in its low nibble and element
// j + 16 in its high one; the values are (q - 8)·d, so Σ (q - 8)·a = Σ q·a - 8·Σ a.
fn dot4_q4_0(base: u32, blk: u32, a: u32) -> f32 {
    let b = base + blk * 5u;
    var s = 0;
    for (var i = 0u; i < 4u; i++) {
        let q = w[b + i];
        s += dot4I8Packed(q & 0x0f0f0f0fu, xq[a + i]);
        s += dot4I8Packed((q >> 4u) & 0x0f0f0f0fu, xq[a + 4u + i]);
    }
    return half_at(b, 16u) * xq_d(a) * (f32(s) - 8.0 * xq_sum(a));
}

// Q8_0 (36-byte blocks: qs[32] i8, d).
fn dot4_q8_0(base: u32, blk: u32, a: u32) -> f32 {
    let b = base + blk * 9u;
    var s = 0;
    for (var i = 0u; i < 8u; i++) {
        s += dot4I8Packed(w[b + i], xq[a + i]);
    }
    return half_at(b, 32u) * xq_d(a) * f32(s);
}

// Q4_K (144-byte super-blocks of 256: d, dmin, scales[12], qs[128]): block `blk` is
// sub-block j = blk % 8 of super-block blk / 8, its 32 nibbles the low (j even) or high
// (j odd) halves of qs bytes 32·(j / 2)..+32; the values are d·sc·q - dmin·m.
fn dot4_q4_k(base: u32, blk: u32, a: u32) -> f32 {
    let b = base + (blk / 8u) * 36u;
    let j = blk % 8u;
    let qs = b + 4u + 8u * (j / 2u);
    let shift = (j % 2u) * 4u;
    var s = 0;
    for (var i = 0u; i < 8u; i++) {
        s += dot4I8Packed((w[qs + i] >> shift) & 0x0f0f0f0fu, xq[a + i]);
    }
    let sm = scale_min_k4(b, j);
    return xq_d(a) * (half_at(b, 0u) * sm.x * f32(s) - half_at(b, 2u) * sm.y * xq_sum(a));
}

// Q6_K (212-byte super-blocks of 256: ql[128], qh[64], scales[16] i8, d): block `blk` is
// group j = blk % 8 of 32 values: half h = j / 4 and row j % 4 of ggml's layout; element l
// takes 4 bits from ql byte 64h + 32·(row % 2) + l (high nibble for rows 2 and 3) and 2 bits
// from qh byte 128 + 32h + l; the values are d·scale·(q - 32), a scale per 16 of them.
fn dot4_q6_k(base: u32, blk: u32, a: u32) -> f32 {
    let b = base + (blk / 8u) * 53u;
    let j = blk % 8u;
    let h = j / 4u;
    let row = j % 4u;
    let ql = b + 16u * h + 8u * (row % 2u);
    let qh = b + 32u + 8u * h;
    let ql_shift = (row / 2u) * 4u;
    let qh_shift = 2u * row;
    var s = vec2<i32>(0);
    for (var i = 0u; i < 8u; i++) {
        let q = ((w[ql + i] >> ql_shift) & 0x0f0f0f0fu) | (((w[qh + i] >> qh_shift) & 0x03030303u) << 4u);
        // q - 32 in each byte as an i8: flipping bit 5 gives the 6-bit two's complement, and
        // bits 6 and 7 copy its sign (0x20 · 6 = 0xc0 stays within the byte).
        let t = q ^ 0x20202020u;
        let v = dot4I8Packed(t | ((t & 0x20202020u) * 6u), xq[a + i]);
        if (i < 4u) {
            s.x += v;
        } else {
            s.y += v;
        }
    }
    let sc = vec2<i32>(sbyte_at(b, 192u + 2u * j), sbyte_at(b, 193u + 2u * j));
    return half_at(b, 208u) * xq_d(a) * f32(sc.x * s.x + sc.y * s.y);
}
