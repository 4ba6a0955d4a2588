// Row copies: embedding rows of a weight table (any type, through `dq`), and a gather of an
// activation's rows (LLaVA-1.6's anyres layout).

struct Params {
    n_ids: u32,      // rows to produce
    cols: u32,
    row_words: u32,  // words per table row (get_rows)
    first_row: u32,  // the first table row this part of the table holds (get_rows)
    part_rows: u32,  // rows in this part (get_rows)
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;

fn element(g: vec3<u32>, t: u32) -> u32 {
    return (g.x + g.y * p.groups_x) * 256u + t;
}

@compute @workgroup_size(256)
fn get_rows(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e >= p.n_ids * p.cols) {
        return;
    }
    let i = e / p.cols;
    let c = e % p.cols;
    let id = ids[i];
    if (id >= p.first_row && id < p.first_row + p.part_rows) {
        out[e] = dq((id - p.first_row) * p.row_words, c);
    }
}

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e >= p.n_ids * p.cols) {
        return;
    }
    out[e] = x[ids[e / p.cols] * p.cols + e % p.cols];
}
