// matmul.wgsl's kernels with packed 4×8-bit integer dot products: the activations come
// quantized to 8 bits in blocks of 32 (q8_act.wgsl), and each weight block's dot with a block
// of them is `dot4I8Packed` over its quants, four products an instruction, scaled once per
// block. `row_partial_dot4` serves decode's `gemv` (the host binds `fn row_dot` to it) and
// `tiled_dot4` batches. The host appends this file to matmul.wgsl for Q4_0, Q8_0, Q4_K and
// Q6_K weights and binds `fn w_word` and `fn w_scales` to the weight's `w_word_<type>` and
// `w_scales_<type>`. The results are the f32 kernels' within the rounding of the activations
// to 8 bits, which is what the CPU backend's integer dots do too.
//
// WGSL's `dot4I8Packed` is a language feature every native wgpu backend has; naga emits the
// hardware instruction where the Vulkan device has VK_KHR_shader_integer_dot_product, and a
// few integer operations where it has not.
//
// Every type's 32-value block is read in one form: 8 words of four i8 values `v` each (word
// i: values 4i..4i + 4) and `(lo, hi, m)` such that value j is lo·v_j - m for j < 16 and
// hi·v_j - m for the rest. Its dot with activation block (d, q, Σq) is then
// d·(lo·Σ_{j<16} v·q + hi·Σ_{j≥16} v·q - m·Σq).

@group(0) @binding(4) var<storage, read> xq: array<u32>;

// XQ_WORDS, the words of an activation block (see q8_act.wgsl), is declared by the host.

fn xq_d(a: u32) -> f32 {
    return bitcast<f32>(xq[a + 8u]);
}

fn xq_sum(a: u32) -> f32 {
    return f32(bitcast<i32>(xq[a + 9u]));
}

// The dot of 32-value weight block `blk` of row `base` with the activation block at word `a`.
fn block_dot4(base: u32, blk: u32, a: u32) -> f32 {
    var s = vec2<i32>(0);
    for (var i = 0u; i < 4u; i++) {
        s.x += dot4I8Packed(w_word(base, blk, i), xq[a + i]);
        s.y += dot4I8Packed(w_word(base, blk, 4u + i), xq[a + 4u + i]);
    }
    let sc = w_scales(base, blk);
    return xq_d(a) * (sc.x * f32(s.x) + sc.y * f32(s.y) - sc.z * xq_sum(a));
}

// Thread `t`'s share of the dot of weight row `base` with row `r` of the quantized
// activations (decode): whole blocks of 32, one at a time.
fn row_partial_dot4(base: u32, r: u32, t: u32) -> f32 {
    let blocks = p.k / 32u;
    let row = r * blocks * XQ_WORDS;
    var acc = 0.0;
    for (var blk = t; blk < blocks; blk += GEMV_THREADS) {
        acc += block_dot4(base, blk, row + blk * XQ_WORDS);
    }
    return acc;
}

// Batches: 16 × 16 outputs per workgroup, one per thread, as `tiled`; each step stages one
// block of 32 values of 16 activation rows and of 16 weight rows in workgroup memory (their
// words as they are, and the weight's in the common form), then each thread takes 8
// `dot4I8Packed`.
var<workgroup> xs_q: array<u32, 128>;
var<workgroup> ws_q: array<u32, 128>;
var<workgroup> xs_d: array<vec2<f32>, 16>;
var<workgroup> ws_s: array<vec4<f32>, 16>;

@compute @workgroup_size(16, 16)
fn tiled_dot4(
    @builtin(workgroup_id) g: vec3<u32>,
    @builtin(local_invocation_id) l: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let col0 = g.x * TILE;
    let row0 = g.y * TILE;
    let blocks = p.k / 32u;
    // Threads 0..128 stage a word of a row of x (row u / 8), the others a word of a weight
    // row (column u / 8); threads 0..16 also an activation row's scale and sum, 16..32 a
    // weight row's scales.
    let u = t % 128u;
    let xr = row0 + u / 8u;
    let wc = col0 + u / 8u;
    var acc = 0.0;
    for (var blk = 0u; blk < blocks; blk++) {
        var v = 0u;
        if (t < 128u) {
            if (xr < p.m) {
                v = xq[(xr * blocks + blk) * XQ_WORDS + u % 8u];
            }
            xs_q[u] = v;
        } else {
            if (wc < p.n) {
                v = w_word(wc * p.row_words, blk, u % 8u);
            }
            ws_q[u] = v;
        }
        if (t < 16u) {
            var ds = vec2<f32>(0.0);
            if (row0 + t < p.m) {
                let a = ((row0 + t) * blocks + blk) * XQ_WORDS;
                ds = vec2<f32>(xq_d(a), xq_sum(a));
            }
            xs_d[t] = ds;
        } else if (t < 32u) {
            var sc = vec3<f32>(0.0);
            if (col0 + t - 16u < p.n) {
                sc = w_scales((col0 + t - 16u) * p.row_words, blk);
            }
            ws_s[t - 16u] = vec4<f32>(sc, 0.0);
        }
        workgroupBarrier();
        var s = vec2<i32>(0);
        for (var i = 0u; i < 4u; i++) {
            s.x += dot4I8Packed(xs_q[l.y * 8u + i], ws_q[l.x * 8u + i]);
            s.y += dot4I8Packed(xs_q[l.y * 8u + 4u + i], ws_q[l.x * 8u + 4u + i]);
        }
        let xd = xs_d[l.y];
        let sc = ws_s[l.x];
        acc += xd.x * (sc.x * f32(s.x) + sc.y * f32(s.y) - sc.z * xd.y);
        workgroupBarrier();
    }
    let r = row0 + l.y;
    let c = col0 + l.x;
    if (r < p.m && c < p.n) {
        out[r * p.out_stride + p.out_col + c] = acc;
    }
}

// Q4_0 (20-byte blocks: qs[16], d): byte j holds value j in its low nibble and value j + 16
// in its high one; the values are (q - 8)·d: v = q, lo = hi = d, m = 8d.
fn w_word_q4_0(base: u32, blk: u32, i: u32) -> u32 {
    return (w[base + blk * 5u + i % 4u] >> ((i / 4u) * 4u)) & 0x0f0f0f0fu;
}

fn w_scales_q4_0(base: u32, blk: u32) -> vec3<f32> {
    let d = half_at(base + blk * 5u, 16u);
    return vec3<f32>(d, d, 8.0 * d);
}

// Q8_0 (36-byte blocks: qs[32] i8, d).
fn w_word_q8_0(base: u32, blk: u32, i: u32) -> u32 {
    return w[base + blk * 9u + i];
}

fn w_scales_q8_0(base: u32, blk: u32) -> vec3<f32> {
    let d = half_at(base + blk * 9u, 32u);
    return vec3<f32>(d, d, 0.0);
}

// Q4_K (144-byte super-blocks of 256: d, dmin, scales[12], qs[128]): block `blk` is
// sub-block j = blk % 8 of super-block blk / 8, its 32 nibbles the low (j even) or high
// (j odd) halves of qs bytes 32·(j / 2)..+32; the values are d·sc·q - dmin·m.
fn w_word_q4_k(base: u32, blk: u32, i: u32) -> u32 {
    let b = base + (blk / 8u) * 36u;
    let j = blk % 8u;
    return (w[b + 4u + 8u * (j / 2u) + i] >> ((j % 2u) * 4u)) & 0x0f0f0f0fu;
}

fn w_scales_q4_k(base: u32, blk: u32) -> vec3<f32> {
    let b = base + (blk / 8u) * 36u;
    let sm = scale_min_k4(b, blk % 8u);
    let scale = half_at(b, 0u) * sm.x;
    return vec3<f32>(scale, scale, half_at(b, 2u) * sm.y);
}

// Q6_K (212-byte super-blocks of 256: ql[128], qh[64], scales[16] i8, d): block `blk` is
// group j = blk % 8 of 32 values: half h = j / 4 and row j % 4 of ggml's layout; value l
// takes 4 bits from ql byte 64h + 32·(row % 2) + l (high nibble for rows 2 and 3) and 2 bits
// from qh byte 128 + 32h + l; the values are d·scale·(q - 32), a scale per 16 of them.
fn w_word_q6_k(base: u32, blk: u32, i: u32) -> u32 {
    let b = base + (blk / 8u) * 53u;
    let j = blk % 8u;
    let h = j / 4u;
    let row = j % 4u;
    let ql = w[b + 16u * h + 8u * (row % 2u) + i] >> ((row / 2u) * 4u);
    let qh = w[b + 32u + 8u * h + i] >> (2u * row);
    let q = (ql & 0x0f0f0f0fu) | ((qh & 0x03030303u) << 4u);
    // q - 32 in each byte as an i8: flipping bit 5 gives the 6-bit two's complement, and
    // bits 6 and 7 copy its sign (0x20 · 6 = 0xc0 stays within the byte).
    let t = q ^ 0x20202020u;
    return t | ((t & 0x20202020u) * 6u);
}

fn w_scales_q6_k(base: u32, blk: u32) -> vec3<f32> {
    let b = base + (blk / 8u) * 53u;
    let j = blk % 8u;
    // ggml's order: (d · scale) · q.
    let d = half_at(b, 208u);
    return vec3<f32>(d * f32(sbyte_at(b, 192u + 2u * j)), d * f32(sbyte_at(b, 193u + 2u * j)), 0.0);
}
