// `tiled` (matmul.wgsl) with f16 tiles, for adapters with `shader-f16`: x and the weight are
// staged in workgroup memory as f16, two to a vec2 (half the bytes of the f32 kernel's tiles,
// and half the reads), and multiplied and summed in f32. Each row of x is
// divided by its largest |value| (`row_absmax`, q8_act.wgsl) on the way in and the sums
// multiplied back, so no activation overflows f16 (a LLaMA's down-projection inputs reach
// thousands); the weight values are F16 or a quantized type's, well within f16's range. Used
// for F16 weights and the quantized types without integer kernels (Q4_0, Q8_0, Q4_K and Q6_K
// take `tiled_dot4` where it exists); F32 and BF16 weights keep the f32 kernel. The host prepends `enable f16;` and appends this
// file to matmul.wgsl; the results are the f32 kernel's within the rounding of x and w to
// f16 (2⁻¹¹ of each where the conversion rounds to nearest, 2⁻¹⁰ where it takes the other
// neighbour, which WGSL allows). Multiplying in f16 as well (`dot` of two vec4<f16>) doubled the
// tiny test models' logit error, past the bound the CPU's F16 tests hold, so it is not done.

@group(0) @binding(5) var<storage, read> row_scale: array<f32>;

var<workgroup> xh: array<vec2<f16>, 128>;
var<workgroup> wh: array<vec2<f16>, 128>;

@compute @workgroup_size(16, 16)
fn tiled_f16(
    @builtin(workgroup_id) g: vec3<u32>,
    @builtin(local_invocation_id) l: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let col0 = g.x * TILE;
    let row0 = g.y * TILE;
    // Each thread stages two adjacent elements per step: threads 0..128 of a row of x (row
    // u / 8), the others of a weight row (column u / 8).
    let u = t % 128u;
    let pair = 2u * (u % 8u);
    let xr = row0 + u / 8u;
    let wc = col0 + u / 8u;
    var inv = 0.0;
    if (t < 128u && xr < p.m) {
        inv = 1.0 / row_scale[xr];
    }
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        let kk = k0 + pair;
        var v = vec2<f32>(0.0);
        if (t < 128u) {
            if (xr < p.m) {
                let at = xr * p.x_stride + kk;
                if (kk < p.k) {
                    v.x = x[at];
                }
                if (kk + 1u < p.k) {
                    v.y = x[at + 1u];
                }
            }
            xh[u] = vec2<f16>(v * inv);
        } else {
            if (wc < p.n) {
                if (kk < p.k) {
                    v.x = dq(wc * p.row_words, kk);
                }
                if (kk + 1u < p.k) {
                    v.y = dq(wc * p.row_words, kk + 1u);
                }
            }
            wh[u] = vec2<f16>(v);
        }
        workgroupBarrier();
        for (var i = 0u; i < 8u; i++) {
            acc += dot(vec2<f32>(xh[l.y * 8u + i]), vec2<f32>(wh[l.x * 8u + i]));
        }
        workgroupBarrier();
    }
    let r = row0 + l.y;
    let c = col0 + l.x;
    if (r < p.m && c < p.n) {
        out[r * p.out_stride + p.out_col + c] = acc * row_scale[r];
    }
}
