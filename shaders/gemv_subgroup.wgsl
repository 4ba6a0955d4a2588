// `gemv` (matmul.wgsl) for adapters with subgroups: each subgroup sums its threads' partial
// dots with one `subgroupAdd`, and one thread adds the subgroups' sums, where the plain
// kernel halves its way through workgroup memory with a barrier per step. The host appends
// this file to matmul.wgsl only when the device has wgpu's SUBGROUP feature (naga wants no
// `enable subgroups;` directive); the results are the plain kernel's within rounding (the tests run both).

var<workgroup> subgroup_sums: array<f32, GEMV_THREADS>;

@compute @workgroup_size(64)
fn gemv_subgroup(
    @builtin(workgroup_id) g: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let n = g.x + g.y * p.groups_x;
    if (n >= p.n) {
        return;
    }
    let base = n * p.row_words;
    let n_subgroups = (GEMV_THREADS + sg_size - 1u) / sg_size;
    for (var r = 0u; r < p.m; r++) {
        let sum = subgroupAdd(row_dot(base, r, t));
        if (sg_id == 0u) {
            subgroup_sums[t / sg_size] = sum;
        }
        workgroupBarrier();
        if (t == 0u) {
            var total = 0.0;
            for (var s = 0u; s < n_subgroups; s++) {
                total += subgroup_sums[s];
            }
            out[r * p.out_stride + p.out_col + n] = total;
        }
        workgroupBarrier();
    }
}
