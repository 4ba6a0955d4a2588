//! ggml's scale searches for the K-quant reference quantizers (`ggml-quants.c`: `nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`).
//!
//! They look for the sub-block scale (and min) that minimises a weighted squared or absolute
//! error, trying a few candidate scales around `nmax / max`. The result depends on every
//! rounding along the way, so each expression is evaluated in ggml's order, in f32, with
//! no fused multiply-adds. Only the variants the reference quantizers call are here (no
//! importance-matrix weights).

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
pub(super) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
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
