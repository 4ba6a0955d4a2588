// out[r, out_col + n] = Σ_k x[r, k] · W[n, k]: activations times a weight's rows (ggml's
// mul_mat), for any weight type: `dq` (quant.wgsl, chosen per type) reads one element.
// A weight larger than one binding is split by rows; each part is one dispatch, writing its
// columns of `out` from `out_col`.

struct Params {
    m: u32,          // rows of x
    n: u32,          // rows of this part of the weight (output columns)
    k: u32,          // row length
    row_words: u32,  // u32 words per weight row
    x_stride: u32,
    out_stride: u32,
    out_col: u32,
    groups_x: u32,   // workgroups along x of a 2-D grid (the grid is folded when n > 65535)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const GEMV_THREADS: u32 = 64u;
var<workgroup> partial: array<f32, GEMV_THREADS>;

// Thread `t`'s share of the dot of weight row `base` with row `r` of x: eight elements at a
// time (`dq8`) where the row length allows, else one at a time.
fn row_partial(base: u32, r: u32, t: u32) -> f32 {
    var acc = 0.0;
    let xr = r * p.x_stride;
    if (p.k % 8u == 0u) {
        for (var k8 = 8u * t; k8 < p.k; k8 += 8u * GEMV_THREADS) {
            let v = dq8(base, k8);
            let x0 = vec4<f32>(x[xr + k8], x[xr + k8 + 1u], x[xr + k8 + 2u], x[xr + k8 + 3u]);
            let x1 = vec4<f32>(x[xr + k8 + 4u], x[xr + k8 + 5u], x[xr + k8 + 6u], x[xr + k8 + 7u]);
            acc += dot(v.lo, x0) + dot(v.hi, x1);
        }
    } else {
        for (var k = t; k < p.k; k += GEMV_THREADS) {
            acc += dq(base, k) * x[xr + k];
        }
    }
    return acc;
}

// Few rows of x (decode): one workgroup per output column; its threads split the row and
// sum in workgroup memory. `row_dot` is bound by the host: `row_partial` here, or
// `row_partial_dot4` (gemv_dot4.wgsl) for the integer kernels.
@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let n = g.x + g.y * p.groups_x;
    if (n >= p.n) {
        return;
    }
    let base = n * p.row_words;
    for (var r = 0u; r < p.m; r++) {
        partial[t] = row_dot(base, r, t);
        workgroupBarrier();
        for (var s = GEMV_THREADS / 2u; s > 0u; s >>= 1u) {
            if (t < s) {
                partial[t] += partial[t + s];
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            out[r * p.out_stride + p.out_col + n] = partial[0];
        }
        workgroupBarrier();
    }
}

// Many rows (prefill, the vision tower): 16 × 16 outputs per workgroup, one per thread; each
// step stages 16 columns of k of x and of the (dequantized) weight in workgroup memory (2 KiB).
const TILE: u32 = 16u;
var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let col0 = g.x * TILE;
    let row0 = g.y * TILE;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        let kk = k0 + l.x;
        var xv = 0.0;
        if (row0 + l.y < p.m && kk < p.k) {
            xv = x[(row0 + l.y) * p.x_stride + kk];
        }
        xs[l.y * TILE + l.x] = xv;
        var wv = 0.0;
        if (col0 + l.y < p.n && kk < p.k) {
            wv = dq((col0 + l.y) * p.row_words, kk);
        }
        ws[l.y * TILE + l.x] = wv;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i++) {
            acc += xs[l.y * TILE + i] * ws[l.x * TILE + i];
        }
        workgroupBarrier();
    }
    let r = row0 + l.y;
    let c = col0 + l.x;
    if (r < p.m && c < p.n) {
        out[r * p.out_stride + p.out_col + c] = acc;
    }
}
