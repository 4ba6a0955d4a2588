// `tiled` (matmul.wgsl) with f16 tiles, for adapters with `shader-f16`: x and the weight are
// staged in workgroup memory as f16, four to a vec4 (half the bytes of the f32 kernel's
// tiles, and a quarter of the reads), and multiplied and summed in f32. Each row of x is
// divided by its largest |value| (`row_absmax`, q8_act.wgsl) on the way in and the sums
// multiplied back, so no activation overflows f16 (a LLaMA's down-projection inputs reach
// thousands); the weight values are F16 or a quantized type's, well within f16's range (F32
// and BF16 weights keep the f32 kernel). The host prepends `enable f16;` and appends this
// file to matmul.wgsl; the results are the f32 kernel's within the rounding of x and w to
// f16 (2⁻¹¹ of each). Multiplying in f16 as well (`dot` of two vec4<f16>) doubled the
// tiny test models' logit error, past the bound the CPU's F16 tests hold, so it is not done.

@group(0) @binding(5) var<storage, read> row_scale: array<f32>;

var<workgroup> xh: array<vec4<f16>, 64>;
var<workgroup> wh: array<vec4<f16>, 64>;

@compute @workgroup_size(16, 16)
fn tiled_f16(
    @builtin(workgroup_id) g: vec3<u32>,
    @builtin(local_invocation_id) l: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let col0 = g.x * TILE;
    let row0 = g.y * TILE;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        // Threads 0..64 stage four values of a row of x each, 64..128 four of a weight row.
        let u = t % 64u;
        let kk = k0 + 4u * (u % 4u);
        var v = vec4<f32>(0.0);
        if (t < 64u) {
            let r = row0 + u / 4u;
            if (r < p.m) {
                for (var j = 0u; j < 4u; j++) {
                    if (kk + j < p.k) {
                        v[j] = x[r * p.x_stride + kk + j];
                    }
                }
                xh[u] = vec4<f16>(v / row_scale[r]);
            } else {
                xh[u] = vec4<f16>(v);
            }
        } else if (t < 128u) {
            let c = col0 + u / 4u;
            if (c < p.n) {
                for (var j = 0u; j < 4u; j++) {
                    if (kk + j < p.k) {
                        v[j] = dq(c * p.row_words, kk + j);
                    }
                }
            }
            wh[u] = vec4<f16>(v);
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            acc += dot(vec4<f32>(xh[l.y * 4u + i]), vec4<f32>(wh[l.x * 4u + i]));
        }
        workgroupBarrier();
    }
    let r = row0 + l.y;
    let c = col0 + l.x;
    if (r < p.m && c < p.n) {
        out[r * p.out_stride + p.out_col + c] = acc * row_scale[r];
    }
}
