// Rotary position embedding on adjacent pairs (x[2i], x[2i + 1]) of each head's first n_rot
// dimensions (GGUF's LLaMA Q/K rows are permuted for this pairing). The angles' cosines and
// sines come from the host, [rows][n_rot / 2][cos, sin], computed as the CPU backend does:
// a GPU's sin/cos of large angles is not accurate enough.

struct Params {
    rows: u32,
    cols: u32,
    head_dim: u32,
    half_rot: u32,  // n_rot / 2
    n_heads: u32,
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = (g.x + g.y * p.groups_x) * 256u + t;  // (row, head, pair)
    if (e >= p.rows * p.n_heads * p.half_rot) {
        return;
    }
    let i = e % p.half_rot;
    let head = (e / p.half_rot) % p.n_heads;
    let row = e / (p.half_rot * p.n_heads);
    let at = row * p.cols + head * p.head_dim + 2u * i;
    let c = cs[2u * (row * p.half_rot + i)];
    let s = cs[2u * (row * p.half_rot + i) + 1u];
    let x0 = x[at];
    let x1 = x[at + 1u];
    x[at] = x0 * c - x1 * s;
    x[at + 1u] = x0 * s + x1 * c;
}
