//! ggml's scale searches for the K-quant reference quantizers (`ggml-quants.c`: `nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`).
//!
//! They look for the sub-block scale (and min) that minimises a weighted squared or absolute
//! error, trying a few candidate scales around `nmax / max`. The result depends on every
//! rounding along the way, so each expression is evaluated in ggml's order, in f32, with
//! no fused multiply-adds. Only the variants the reference quantizers call are here (no
//! importance-matrix weights).

use crate::quant::{cpu_path, CpuPath};

/// Round to the nearest integer, ties to even, for |fval| <= 2^22 - 1: adding 1.5·2^23 pushes
/// the integer part into the low mantissa bits, where the FPU has already rounded it.
/// Outside that range (or for NaN) the result is meaningless but, as in ggml, deterministic.
#[inline]
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Symmetric quantization of `x` to `L[i] - nmax` in `-nmax..nmax`, weighted by `x²`
/// (ggml `make_qx_quants` with `rmse_type = 1` and no `qw`, as `quantize_row_q6_K_reference`
/// calls it). Returns the scale; `levels` gets the offset codes `0..2·nmax`.
///
/// The scalar transcription, kept as the tests' reference for [`make_qx_quants_x16`].
#[cfg(test)]
fn make_qx_quants_reference(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), levels.len());
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < 1e-30 {
        levels.fill(0);
        return 0.0;
    }
    let quantize = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (&v, level) in x.iter().zip(levels.iter_mut()) {
        let l = quantize(iscale, v);
        *level = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = sumlx / suml2;
    let mut best = scale * sumlx;
    // Nine steps of 0.1 either side of nmax.
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = quantize(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (&v, level) in x.iter().zip(levels.iter_mut()) {
                *level = (nmax + quantize(iscale, v)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization to `-nmax..nmax` for Q3_K (ggml `make_q3_quants` with
/// `do_rmse = true`): start from `nmax / max`, then up to five passes that move single
/// elements to the level that best improves the `x²`-weighted fit. Returns the scale; `levels`
/// gets the offset codes `0..2·nmax`.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), levels.len());
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax == 0.0 {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (&v, level) in x.iter().zip(levels.iter_mut()) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *level = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (&v, level) in x.iter().zip(levels.iter_mut()) {
            let w = v * v;
            let old = f32::from(*level);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*level) {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *level = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for level in levels.iter_mut() {
        *level += nmax as i8;
    }
    sumlx / suml2
}

/// Search parameters of [`make_qkx2_quants`]: candidate inverse scales
/// `(rmin + rdelta·i + nmax) / (max - min)` for `i` in `0..=nstep`; `use_mad` selects absolute
/// instead of squared error.
pub(super) struct Qkx2Search {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Affine quantization `x ≈ scale·L - the_min` with `L` in `0..=nmax` and `the_min >= 0`
/// (ggml `make_qkx2_quants`): a weighted least-squares fit of scale and min for each candidate
/// rounding, keeping the candidate with the smallest weighted error. Returns `(scale, the_min)`;
/// `levels` gets `L`.
/// One sub-block at a time; [`make_qkx2_quants_x8`] runs eight side by side.
pub(super) fn make_qkx2_quants(
    p: &Qkx2Search,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n > 0 && weights.len() == n && levels.len() == n);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    // The min is only ever subtracted: a block of positives gets min 0, not a positive offset.
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let error = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let quantize =
        |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, p.nmax) as u8;

    let mut iscale = p.nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for i in 0..n {
        levels[i] = quantize(iscale, x[i], min);
        let diff = scale * f32::from(levels[i]) + min - x[i];
        best_mad += weights[i] * error(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + p.nmax as f32) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..n {
            let l = quantize(iscale, x[i], min);
            laux[i] = l;
            let (w, l) = (weights[i], f32::from(l));
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                mad += weights[i] * error(diff);
            }
            if mad < best_mad {
                levels.copy_from_slice(laux);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

// The searches below run several sub-blocks side by side: lane j of every `[f32; L]` is
// sub-block j, and each lane goes through exactly the scalar transcription's operations in
// its order, candidate after candidate, its branches turned into per-lane selects. Lanes never
// mix, no sum is reassociated and nothing is fused, so the results are bit for bit the
// scalar's. The lane loops are plain Rust that the compiler turns into vector instructions;
// on x86-64 they are compiled once more for AVX2 and for AVX-512, and the kernel path
// ([`cpu_path`]) picks one at run time.
// `tests::lane_searches_equal_the_scalar_ones` holds them to the scalar code.

/// `$on(path, args)`: the lane function `$portable` as compiled for the kernel path `path`
/// (the project's run-time choice, [`cpu_path`], honours `LLAVA_CPU`): on x86-64 once more
/// with AVX-512F enabled (`$avx512`) and with AVX2 (`$avx2`), elsewhere the portable build.
macro_rules! compiled_per_path {
    ($portable:ident as $on:ident, $avx2:ident, $avx512:ident,
     ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $on(path: CpuPath, $($arg: $ty),*) -> $ret {
            match path {
                // SAFETY: the guard: the CPU can run the path, and AVX-512 paths include
                // AVX-512F.
                #[cfg(target_arch = "x86_64")]
                CpuPath::Avx512 | CpuPath::Avx512Vnni if path.is_available() => unsafe {
                    $avx512($($arg),*)
                },
                // SAFETY: as above, for AVX2 (which the AVX-VNNI path includes).
                #[cfg(target_arch = "x86_64")]
                CpuPath::Avx2 | CpuPath::AvxVnni if path.is_available() => unsafe {
                    $avx2($($arg),*)
                },
                _ => $portable($($arg),*),
            }
        }

        /// # Safety
        /// The CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }

        /// # Safety
        /// The CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx512($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }
    };
}

/// [`make_qkx2_quants`] for the eight 32-element sub-blocks of a Q4_K or Q5_K super-block
/// (`x` and `weights` hold 256 values, sub-block after sub-block): `(scales, the_mins)` and
/// the levels, the same as eight calls would give.
pub(super) fn make_qkx2_quants_x8(
    p: &Qkx2Search,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
) -> ([f32; 8], [f32; 8]) {
    assert!(x.len() == 256 && weights.len() == 256 && levels.len() == 256);
    qkx2_x8_on(cpu_path(), p, x, weights, levels)
}

compiled_per_path!(
    qkx2_x8 as qkx2_x8_on, qkx2_x8_avx2, qkx2_x8_avx512,
    (p: &Qkx2Search, x: &[f32], weights: &[f32], levels: &mut [u8]) -> ([f32; 8], [f32; 8])
);

#[inline(always)]
fn qkx2_x8(p: &Qkx2Search, xs: &[f32], ws: &[f32], levels: &mut [u8]) -> ([f32; 8], [f32; 8]) {
    const L: usize = 8;
    const N: usize = 32;
    // Transposed: x[i][j] is element i of sub-block j.
    let mut x = [[0f32; L]; N];
    let mut w = [[0f32; L]; N];
    for j in 0..L {
        for i in 0..N {
            x[i][j] = xs[j * N + i];
            w[i][j] = ws[j * N + i];
        }
    }
    let nmax = p.nmax;
    let use_mad = p.use_mad;
    let error = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let quantize = |iscale: f32, d: f32| nearest_int(iscale * d).clamp(0, nmax) as f32;

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0f32; L];
    for j in 0..L {
        sum_x[j] = sum_w[j] * x[0][j];
    }
    for i in 1..N {
        for j in 0..L {
            if x[i][j] < min[j] {
                min[j] = x[i][j];
            }
            if x[i][j] > max[j] {
                max[j] = x[i][j];
            }
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * x[i][j];
        }
    }
    let mut flat = [false; L];
    for j in 0..L {
        if min[j] > 0.0 {
            min[j] = 0.0;
        }
        flat[j] = max[j] == min[j];
    }
    // A flat sub-block's result: scale 0, its min, levels 0 (its lane's work is discarded).
    let flat_min = min;

    let mut lv = [[0f32; L]; N];
    let mut scale = [0f32; L];
    let mut best_mad = [0f32; L];
    let mut iscale = [0f32; L];
    for j in 0..L {
        iscale[j] = nmax as f32 / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    for i in 0..N {
        for j in 0..L {
            let l = quantize(iscale[j], x[i][j] - min[j]);
            lv[i][j] = l;
            let diff = scale[j] * l + min[j] - x[i][j];
            best_mad[j] += w[i][j] * error(diff);
        }
    }
    let mut laux = [[0f32; L]; N];
    for is in 0..=p.nstep.max(0) {
        if p.nstep < 1 {
            break;
        }
        let mut sum_l = [0f32; L];
        let mut sum_l2 = [0f32; L];
        let mut sum_xl = [0f32; L];
        for j in 0..L {
            iscale[j] = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max[j] - min[j]);
        }
        for i in 0..N {
            for j in 0..L {
                let l = quantize(iscale[j], x[i][j] - min[j]);
                laux[i][j] = l;
                sum_l[j] += w[i][j] * l;
                sum_l2[j] += w[i][j] * l * l;
                sum_xl[j] += w[i][j] * l * x[i][j];
            }
        }
        let mut ok = [false; L];
        let mut this_scale = [0f32; L];
        let mut this_min = [0f32; L];
        for j in 0..L {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = det > 0.0;
            let mut s = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            let mut m = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            if m > 0.0 {
                m = 0.0;
                s = sum_xl[j] / sum_l2[j];
            }
            this_scale[j] = s;
            this_min[j] = m;
        }
        let mut mad = [0f32; L];
        for i in 0..N {
            for j in 0..L {
                let diff = this_scale[j] * laux[i][j] + this_min[j] - x[i][j];
                mad[j] += w[i][j] * error(diff);
            }
        }
        let mut take = [false; L];
        for j in 0..L {
            take[j] = !flat[j] && ok[j] && mad[j] < best_mad[j];
            if take[j] {
                best_mad[j] = mad[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
            }
        }
        for i in 0..N {
            for j in 0..L {
                if take[j] {
                    lv[i][j] = laux[i][j];
                }
            }
        }
    }
    let mut the_min = [0f32; L];
    for j in 0..L {
        if flat[j] {
            scale[j] = 0.0;
            min[j] = flat_min[j];
        }
        the_min[j] = -min[j];
        for i in 0..N {
            levels[j * N + i] = if flat[j] { 0 } else { lv[i][j] as u8 };
        }
    }
    (scale, the_min)
}

/// [`make_qx_quants_reference`] for the sixteen 16-element sub-blocks of a Q6_K super-block
/// (`x` holds 256 values, sub-block after sub-block): the scales and the levels, the same as
/// sixteen calls would give.
pub(super) fn make_qx_quants_x16(nmax: i32, x: &[f32], levels: &mut [i8]) -> [f32; 16] {
    assert!(x.len() == 256 && levels.len() == 256);
    qx_x16_on(cpu_path(), nmax, x, levels)
}

compiled_per_path!(
    qx_x16 as qx_x16_on, qx_x16_avx2, qx_x16_avx512,
    (nmax: i32, x: &[f32], levels: &mut [i8]) -> [f32; 16]
);

#[inline(always)]
fn qx_x16(nmax: i32, xs: &[f32], levels: &mut [i8]) -> [f32; 16] {
    const L: usize = 16;
    const N: usize = 16;
    let mut x = [[0f32; L]; N];
    for j in 0..L {
        for i in 0..N {
            x[i][j] = xs[j * N + i];
        }
    }
    let quantize = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;

    let mut max = [0f32; L];
    let mut amax = [0f32; L];
    for row in &x {
        for j in 0..L {
            let ax = row[j].abs();
            if ax > amax[j] {
                amax[j] = ax;
                max[j] = row[j];
            }
        }
    }
    let mut lv = [[0f32; L]; N];
    let mut sumlx = [0f32; L];
    let mut suml2 = [0f32; L];
    let mut iscale = [0f32; L];
    for j in 0..L {
        iscale[j] = -(nmax as f32) / max[j];
    }
    for i in 0..N {
        for j in 0..L {
            let v = x[i][j];
            let l = quantize(iscale[j], v);
            lv[i][j] = l;
            let w = v * v;
            sumlx[j] += w * v * l;
            suml2[j] += w * l * l;
        }
    }
    let mut scale = [0f32; L];
    let mut best = [0f32; L];
    for j in 0..L {
        scale[j] = sumlx[j] / suml2[j];
        best[j] = scale[j] * sumlx[j];
    }
    let mut laux = [[0f32; L]; N];
    for is in (-9..=9).filter(|&is| is != 0) {
        let mut lx = [0f32; L];
        let mut l2 = [0f32; L];
        for j in 0..L {
            iscale[j] = -(nmax as f32 + 0.1 * is as f32) / max[j];
        }
        for i in 0..N {
            for j in 0..L {
                let v = x[i][j];
                let l = quantize(iscale[j], v);
                laux[i][j] = l;
                let w = v * v;
                lx[j] += w * v * l;
                l2[j] += w * l * l;
            }
        }
        let mut take = [false; L];
        for j in 0..L {
            take[j] = l2[j] > 0.0 && lx[j] * lx[j] > best[j] * l2[j];
            if take[j] {
                scale[j] = lx[j] / l2[j];
                best[j] = scale[j] * lx[j];
            }
        }
        for i in 0..N {
            for j in 0..L {
                if take[j] {
                    lv[i][j] = laux[i][j];
                }
            }
        }
    }
    for j in 0..L {
        let zero = amax[j] < 1e-30;
        if zero {
            scale[j] = 0.0;
        }
        for i in 0..N {
            levels[j * N + i] = if zero {
                0
            } else {
                (lv[i][j] as i32 + nmax) as i8
            };
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    /// The kernel paths this CPU can run, each with its compilation of the lane searches (an
    /// AMD AVX2 machine tests the portable and AVX2 ones, an AVX-512 one all three).
    fn paths() -> impl Iterator<Item = CpuPath> {
        CpuPath::ALL.into_iter().filter(|p| p.is_available())
    }

    /// The lane searches against the scalar transcriptions, bit for bit, on super-blocks whose
    /// sub-blocks are of every kind: random spreads over many magnitudes, all positive, all
    /// negative, constant, zeros, a lone outlier, denormals, values on a rounding grid.
    #[test]
    fn lane_searches_equal_the_scalar_ones() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let searches = [
            Qkx2Search {
                nmax: 15,
                rmin: -1.0,
                rdelta: 0.1,
                nstep: 20,
                use_mad: false,
            },
            Qkx2Search {
                nmax: 31,
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: false,
            },
            Qkx2Search {
                nmax: 3,
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            },
        ];
        for block in 0..600 {
            let mut x = vec![0f32; 256];
            for sub in x.chunks_exact_mut(16) {
                let kind = next() % 9;
                let scale = f32::powi(10.0, (next() % 12) as i32 - 8);
                for (i, v) in sub.iter_mut().enumerate() {
                    let u = (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    *v = match kind {
                        0 | 1 => u * scale,
                        2 => u.abs() * scale,
                        3 => -u.abs() * scale,
                        4 => 0.25 * scale,
                        5 => 0.0,
                        6 if i == 7 => 100.0 * scale,
                        6 => u * scale * 1e-3,
                        7 => u * 1e-39,
                        _ => ((next() % 9) as f32 - 4.0) * 0.5 * scale,
                    };
                }
            }
            let mut weights = vec![0f32; 256];
            for (ws, xs) in weights.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
                let av = (xs.iter().fold(0f32, |a, &v| a + v * v) / 32.0).sqrt();
                for (w, &v) in ws.iter_mut().zip(xs) {
                    *w = av + v.abs();
                }
            }
            for (p, path) in searches.iter().flat_map(|p| paths().map(move |c| (p, c))) {
                let mut fast_levels = [0u8; 256];
                let (scales, mins) = qkx2_x8_on(path, p, &x, &weights, &mut fast_levels);
                for j in 0..8 {
                    let r = 32 * j..32 * j + 32;
                    let mut levels = [0u8; 32];
                    let (s, m) =
                        make_qkx2_quants(p, &x[r.clone()], &weights[r.clone()], &mut levels);
                    assert_eq!(
                        (
                            scales[j].to_bits(),
                            mins[j].to_bits(),
                            &fast_levels[r.clone()]
                        ),
                        (s.to_bits(), m.to_bits(), &levels[..]),
                        "{path:?}: block {block}, sub-block {j}: {:?}",
                        &x[r]
                    );
                }
            }
            for (nmax, path) in [32, 4]
                .into_iter()
                .flat_map(|n| paths().map(move |c| (n, c)))
            {
                let mut fast_levels = [0i8; 256];
                let scales = qx_x16_on(path, nmax, &x, &mut fast_levels);
                for (j, scale) in scales.iter().enumerate() {
                    let r = 16 * j..16 * j + 16;
                    let mut levels = [0i8; 16];
                    let s = make_qx_quants_reference(nmax, &x[r.clone()], &mut levels);
                    assert_eq!(
                        (scale.to_bits(), &fast_levels[r.clone()]),
                        (s.to_bits(), &levels[..]),
                        "{path:?}: block {block}, sub-block {j}: {:?}",
                        &x[r]
                    );
                }
            }
        }
    }

    #[test]
    fn qkx2_fits_an_exact_affine_grid() {
        // x = 0.5·L - 1 for L = 0..=15 (cycled) is representable exactly: scale 0.5, min 1.
        let x: Vec<f32> = (0..32).map(|i| 0.5 * (i % 16) as f32 - 1.0).collect();
        let weights = vec![1f32; 32];
        let mut levels = [0u8; 32];
        let p = Qkx2Search {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (scale, the_min) = make_qkx2_quants(&p, &x, &weights, &mut levels);
        assert!((scale - 0.5).abs() < 1e-6 && (the_min - 1.0).abs() < 1e-6);
        for (i, &l) in levels.iter().enumerate() {
            assert_eq!(usize::from(l), i % 16);
        }
    }
}
