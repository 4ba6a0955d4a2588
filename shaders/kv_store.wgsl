// Appends rows of K or V (f32) to an f16 cache: two values per word, from element `first`
// (even) on.
struct StoreParams {
    words: u32,
    first_word: u32,
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: StoreParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn store_f16(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let i = (g.x + g.y * p.groups_x) * 256u + t;
    if (i < p.words) {
        // Clamped to f16's finite range: WGSL leaves packing a larger value indeterminate, and
        // an infinite key would make attention's exp(inf − inf) a NaN for the whole row.
        let pair = vec2<f32>(src[2u * i], src[2u * i + 1u]);
        dst[p.first_word + i] = pack2x16float(clamp(pair, vec2(-65504.0), vec2(65504.0)));
    }
}
