// Element-wise ops, in place on `x` (the op consumes its input): add, bias, SiLU·mul, GELU
// (erf) and quick-GELU.

struct Params {
    len: u32,
    cols: u32,  // the bias's length (add_bias)
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

fn element(g: vec3<u32>, t: u32) -> u32 {
    return (g.x + g.y * p.groups_x) * 256u + t;
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e < p.len) {
        x[e] += y[e];
    }
}

@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e < p.len) {
        x[e] += y[e % p.cols];
    }
}

// v · sigmoid(a · v), as the CPU's swish: v / (1 + e^(-a·v)). The exponent is capped below
// f32's overflow (e^88.7): WGSL leaves an infinite `exp` indeterminate, and Metal's fast
// math, which wgpu leaves on, may make v / inf a NaN. Past the cap the result is below
// 2e-35 · |v| either way.
fn swish(v: f32, a: f32) -> f32 {
    return v / (1.0 + exp(min(-a * v, 80.0)));
}

@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e < p.len) {
        x[e] = swish(x[e], 1.0) * y[e];
    }
}

@compute @workgroup_size(256)
fn quick_gelu(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e < p.len) {
        x[e] = swish(x[e], 1.702);
    }
}

// erf(v), Abramowitz and Stegun 7.1.26 (absolute error ≤ 1.5e-7); WGSL has no erf.
fn erf(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}

@compute @workgroup_size(256)
fn gelu(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = element(g, t);
    if (e < p.len) {
        let v = x[e];
        x[e] = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
    }
}
