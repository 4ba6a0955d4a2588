// `gemv` (matmul.wgsl) for adapters with subgroups: each subgroup sums its threads' partial
// dots with one `subgroupAdd`, and one thread adds the subgroups' sums, where the plain
// kernel halves its way through workgroup memory with a barrier per step. The host appends
// this file to matmul.wgsl only when the device has wgpu's SUBGROUP feature (naga wants no
// `enable subgroups;` directive); the results are the plain kernel's within rounding (the
// tests run both).
//
// Nothing here assumes how threads map to subgroups: neither Vulkan nor WGSL says, and the
// size varies (8 to 128, even between pipelines of one device). Each thread owns a slot; the
// first active thread of each subgroup fills its own with the subgroup's sum, the others a
// zero. The first active one, not the one with id 0, which need not be active in a subgroup
// the workgroup fills only in part; naga has no `subgroupElect`, and `subgroupMin` needs no
// more support than the sums do.

var<workgroup> subgroup_sums: array<f32, GEMV_THREADS>;

@compute @workgroup_size(64)
fn gemv_subgroup(
    @builtin(workgroup_id) g: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let n = g.x + g.y * p.groups_x;
    if (n >= p.n) {
        return;
    }
    let base = n * p.row_words;
    let elected = subgroupMin(sg_id) == sg_id;
    for (var r = 0u; r < p.m; r++) {
        let sum = subgroupAdd(row_dot(base, r, t));
        subgroup_sums[t] = select(0.0, sum, elected);
        workgroupBarrier();
        // The 64 slots in two steps of 8 (each thread below 8 folds its own 8 into the first
        // of them), rather than 64 reads in one thread.
        if (t < 8u) {
            var part = 0.0;
            for (var s = 8u * t; s < 8u * t + 8u; s++) {
                part += subgroup_sums[s];
            }
            subgroup_sums[8u * t] = part;
        }
        workgroupBarrier();
        if (t == 0u) {
            var total = 0.0;
            for (var s = 0u; s < GEMV_THREADS; s += 8u) {
                total += subgroup_sums[s];
            }
            out[r * p.out_stride + p.out_col + n] = total;
        }
        workgroupBarrier();
    }
}
