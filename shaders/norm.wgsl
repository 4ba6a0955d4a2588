// RMSNorm (LLaMA) and LayerNorm (CLIP): one workgroup per row, sums in workgroup memory.

struct Params {
    cols: u32,
    eps: f32,
    groups_x: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gain: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const THREADS: u32 = 256u;
var<workgroup> sums: array<f32, THREADS>;

// Σ over the workgroup of each thread's `v`, returned to every thread.
fn workgroup_sum(t: u32, v: f32) -> f32 {
    sums[t] = v;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            sums[t] += sums[t + s];
        }
        workgroupBarrier();
    }
    let total = sums[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    // Past 65535 rows the grid folds into two dimensions and overshoots (the return is the
    // whole workgroup's, so the barriers below stay uniform).
    let row = g.x + g.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var acc = 0.0;
    for (var c = t; c < p.cols; c += THREADS) {
        let v = x[base + c];
        acc += v * v;
    }
    let mean = workgroup_sum(t, acc) / f32(p.cols);
    let scale = 1.0 / sqrt(mean + p.eps);
    for (var c = t; c < p.cols; c += THREADS) {
        out[base + c] = x[base + c] * scale * gain[c];
    }
}

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = g.x + g.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var acc = 0.0;
    for (var c = t; c < p.cols; c += THREADS) {
        acc += x[base + c];
    }
    let mean = workgroup_sum(t, acc) / f32(p.cols);
    var dev = 0.0;
    for (var c = t; c < p.cols; c += THREADS) {
        let d = x[base + c] - mean;
        dev += d * d;
    }
    let scale = 1.0 / sqrt(workgroup_sum(t, dev) / f32(p.cols) + p.eps);
    for (var c = t; c < p.cols; c += THREADS) {
        out[base + c] = (x[base + c] - mean) * scale * gain[c] + bias[c];
    }
}
