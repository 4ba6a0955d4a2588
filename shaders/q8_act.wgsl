// Activations prepared for the kernels of lower precision: 8-bit blocks for the integer
// kernels (`quantize_q8`), and per-row scales for the f16 tiles (`row_absmax`).
//
// Activation rows quantized to 8 bits for the integer kernels (gemv_dot4.wgsl), as the
// CPU backend quantizes them for its integer dots (ggml's Q8_0 rule): each block of 32 values
// gets d = max|x| / 127 and quants round(x / d), here with an f32 d and the block's sum of
// quants beside them. A block is XQ_WORDS = 10 u32 words:
//
//   words 0..8  the 32 quants, four i8 to a word (pack4xI8: element 4i + j in byte j of word i)
//   word  8     d, an f32
//   word  9     Σ quants, an i32 (for the formats whose values carry an offset or a min)
//
// Rows follow one another, k / 32 blocks each (the row length is a multiple of 32 wherever
// this path is taken). The host declares XQ_WORDS before this file and before gemv_dot4.wgsl,
// from its own `Q8_WORDS`: one number for the three of them.

struct Params {
    m: u32,         // rows
    k: u32,         // row length (for quantize_q8, a multiple of 32)
    x_stride: u32,  // f32 values between rows of x
    groups_x: u32,  // workgroups along x of a 2-D grid
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;

// One thread per block.
@compute @workgroup_size(64)
fn quantize_q8(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let blocks = p.k / 32u;
    let id = (g.x + g.y * p.groups_x) * 64u + t;
    if (id >= p.m * blocks) {
        return;
    }
    let at = (id / blocks) * p.x_stride + (id % blocks) * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[at + i]));
    }
    let d = amax / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    let out = id * XQ_WORDS;
    var sum = vec4<i32>(0);
    for (var i = 0u; i < 8u; i++) {
        let a = at + 4u * i;
        let q = vec4<i32>(round(vec4<f32>(x[a], x[a + 1u], x[a + 2u], x[a + 3u]) * inv));
        sum += q;
        xq[out + i] = pack4xI8Clamp(q);
    }
    xq[out + 8u] = bitcast<u32>(d);
    xq[out + 9u] = bitcast<u32>(sum.x + sum.y + sum.z + sum.w);
}

// The largest |x| of each row (1 for a row of zeros), an f32 in word r of `xq`: the scale
// the f16 tiles (tiled_f16.wgsl) divide the row by, so that no activation overflows f16's
// range. One workgroup per row.
var<workgroup> row_max: array<f32, 64>;

@compute @workgroup_size(64)
fn row_absmax(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let r = g.x + g.y * p.groups_x;
    if (r >= p.m) {
        return;
    }
    var m = 0.0;
    for (var i = t; i < p.k; i += 64u) {
        m = max(m, abs(x[r * p.x_stride + i]));
    }
    row_max[t] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            row_max[t] = max(row_max[t], row_max[t + s]);
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        xq[r] = bitcast<u32>(select(1.0, row_max[0], row_max[0] > 0.0));
    }
}
