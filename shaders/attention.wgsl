// Attention, flash style: one workgroup per (query row, head) walks the keys in chunks of 64
// with an online softmax, so no [rows, positions] score matrix is ever stored. Causal with a
// KV cache (query row r sits at position start + r and sees positions ≤ its own), or full
// (the vision tower). Grouped-query: head h reads KV head h / group.
//
// K and V are `array<Kv>` laid [position][kv head][dim]; the host prepends the element type:
// f32 (`alias Kv = f32; fn kv_get(word: Kv, i: u32) -> f32`, KV_PER_WORD 1) or f16 packed two
// to a word (`unpack2x16float`, KV_PER_WORD 2), so no optional feature is needed.

struct Params {
    rows: u32,
    n_heads: u32,
    group: u32,      // query heads per KV head
    head_dim: u32,
    n_kv: u32,       // positions in K and V
    start: u32,      // position of query row 0
    causal: u32,
    q_stride: u32,
    kv_stride: u32,  // elements per position in K and V
    out_stride: u32,
    scale: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<Kv>;
@group(0) @binding(3) var<storage, read> vc: array<Kv>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const THREADS: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const PER_THREAD: u32 = MAX_HEAD_DIM / THREADS;
var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, THREADS>;
var<workgroup> red: array<f32, THREADS>;

fn k_at(i: u32) -> f32 {
    return kv_get(kc[i / KV_PER_WORD], i);
}

fn v_at(i: u32) -> f32 {
    return kv_get(vc[i / KV_PER_WORD], i);
}

fn reduce_max(t: u32, v: f32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] = max(red[t], red[t + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] += red[t + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let id = g.x + g.y * p.groups_x;
    if (id >= p.rows * p.n_heads) {
        return;
    }
    let row = id / p.n_heads;
    let head = id % p.n_heads;
    let kv_base = (head / p.group) * p.head_dim;
    for (var d = t; d < p.head_dim; d += THREADS) {
        qs[d] = q[row * p.q_stride + head * p.head_dim + d];
    }
    workgroupBarrier();
    var limit = p.n_kv;
    if (p.causal != 0u) {
        limit = min(p.n_kv, p.start + row + 1u);
    }
    var best = -3.0e38;
    var total = 0.0;
    var acc = array<f32, PER_THREAD>();
    for (var c0 = 0u; c0 < limit; c0 += THREADS) {
        let pos = c0 + t;
        var s = -3.0e38;
        if (pos < limit) {
            var dot = 0.0;
            let at = pos * p.kv_stride + kv_base;
            for (var d = 0u; d < p.head_dim; d++) {
                dot += qs[d] * k_at(at + d);
            }
            s = dot * p.scale;
        }
        let new_best = max(best, reduce_max(t, s));
        var e = 0.0;
        if (pos < limit) {
            e = exp(s - new_best);
        }
        probs[t] = e;
        let alpha = exp(best - new_best);
        total = total * alpha + reduce_sum(t, e);
        best = new_best;
        let n_in = min(THREADS, limit - c0);
        for (var i = 0u; i < PER_THREAD; i++) {
            let d = t + i * THREADS;
            if (d < p.head_dim) {
                var a = acc[i] * alpha;
                for (var j = 0u; j < n_in; j++) {
                    a += probs[j] * v_at((c0 + j) * p.kv_stride + kv_base + d);
                }
                acc[i] = a;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < PER_THREAD; i++) {
        let d = t + i * THREADS;
        if (d < p.head_dim) {
            out[row * p.out_stride + head * p.head_dim + d] = acc[i] / total;
        }
    }
}
