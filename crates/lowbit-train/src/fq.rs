//! Fake-quantization functions for quantization-aware training.
//!
//! Each function maps a float tensor `x` to the values a linear quantizer with step `s`, integer
//! zero point `zp` and integer range `[qmin, qmax]` can represent,
//! `y = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s`, and differs only in its backward pass:
//!
//! - [`ste`]: straight-through estimator, `dy/dx = 1` inside the range and 0 outside; `s` fixed.
//! - [`lsq`]: learned step size (Esser et al. 2020): `s` learns, with `dy/ds = round(v) - v`
//!   inside and `qmin - zp` / `qmax - zp` outside (`v = x/s + zp`), scaled by the gradient scale
//!   `g = 1/sqrt(numel * qmax)` of the paper.
//! - [`pact`]: learned clipping level `alpha` (Choi et al. 2018): `dy/dalpha = 1` where `x >= alpha`
//!   and 0 elsewhere; the step follows as `alpha / (qmax - zp)`.
//! - [`dsq`]: differentiable soft quantization (Gong et al. 2019): the forward value is the hard
//!   quantizer's; the backward pass differentiates the soft staircase of [`dsq_soft`], a scaled
//!   tanh per quantization interval whose sharpness `k = ln(2/alpha - 1)` comes from the learned
//!   characteristic variable `alpha` (the soft function tends to the hard one as `alpha -> 0`).
//!   `s` (hence both clipping bounds) learns too, with the LSQ gradient scale.
//!
//! All forward values are bit-identical to the hard quantizer (up to the float rounding of
//! `x / s`), so a trained model deploys on the ordinary integer kernels. `s`, `alpha` and `zp`
//! broadcast against `x` (per tensor: shape `[1, ..]`; per channel: the channel axis kept).

use burn::tensor::Tensor;

/// Rounds half to even, exactly, for |v| < 2^22 (the quantizer's clamped range): adding and
/// subtracting 1.5·2^23 leaves the integer the default rounding mode picks. Branch-free, so the
/// loops vectorise (`f32::round_ties_even` is a library call on baseline x86-64).
#[inline(always)]
pub(crate) fn rint(v: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (v + M) - M
}

/// `floor(v)` for |v| < 2^22, branch-free (see [`rint`]).
#[inline(always)]
pub(crate) fn floor(v: f32) -> f32 {
    let r = rint(v);
    if r > v {
        r - 1.0
    } else {
        r
    }
}

/// The row length of a fused quantizer's input of shape `dims` with `c` parameters along `axis`
/// (the product of the dimensions after the axis: row `r` is in channel `r mod c`); with one
/// parameter, rows of 4096 values, which split the work into tasks.
pub(crate) fn row_len(dims: &[usize], c: usize, axis: Option<usize>, who: &str) -> usize {
    match axis {
        Some(a) if c > 1 => {
            assert_eq!(dims[a], c, "{who}: {c} parameters for axis {a} of {dims:?}");
            dims[a + 1..].iter().product()
        }
        _ => {
            assert_eq!(c, 1, "{who}: {c} parameters without an axis");
            4096
        }
    }
}

/// Rows per parallel task of a fused quantizer: about 16K values.
pub(crate) fn rows_per_task(inner: usize) -> usize {
    (16384 / inner).max(1)
}

/// `round(x)` forward, identity backward.
pub fn round_pass<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let r = x.clone().round();
    x.clone() + (r - x).detach()
}

/// `s` forward, `g * ds` backward (LSQ's gradient scale).
pub fn grad_scale<const D: usize>(s: Tensor<D>, g: f32) -> Tensor<D> {
    let sg = s.clone().mul_scalar(g);
    (s - sg.clone()).detach() + sg
}

/// Integer range of a quantizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub zp: f32,
    pub qmin: f32,
    pub qmax: f32,
}

impl Range {
    /// Signed symmetric `bits`-bit weights: `[-2^(b-1), 2^(b-1)-1]`, zero point 0.
    pub fn signed(bits: u8) -> Range {
        Range { zp: 0.0, qmin: -((1i32 << (bits - 1)) as f32), qmax: ((1i32 << (bits - 1)) - 1) as f32 }
    }
    /// Unsigned `bits`-bit activations with zero point `zp`.
    pub fn unsigned(bits: u8, zp: i32) -> Range {
        Range { zp: zp as f32, qmin: 0.0, qmax: ((1i32 << bits) - 1) as f32 }
    }
    /// LSQ gradient scale for a tensor of `numel` values quantized per `groups` channels.
    pub fn lsq_grad_scale(&self, numel: usize, groups: usize) -> f32 {
        let per = (numel / groups.max(1)).max(1) as f32;
        1.0 / (per * (self.qmax - self.zp).max(1.0)).sqrt()
    }
}

fn fq_core<const D: usize>(x: Tensor<D>, s: Tensor<D>, r: Range) -> Tensor<D> {
    let v = (x / s.clone()).add_scalar(r.zp).clamp(r.qmin, r.qmax);
    round_pass(v).sub_scalar(r.zp) * s
}

/// Straight-through estimator with a fixed step `s` (no gradient reaches `s`).
pub fn ste<const D: usize>(x: Tensor<D>, s: Tensor<D>, r: Range) -> Tensor<D> {
    fq_core(x, s.detach(), r)
}

/// Learned step size quantization; `g` is the gradient scale ([`Range::lsq_grad_scale`]).
pub fn lsq<const D: usize>(x: Tensor<D>, s: Tensor<D>, r: Range, g: f32) -> Tensor<D> {
    fq_core(x, grad_scale(s, g), r)
}

/// PACT: clip at the learned level `alpha`, then quantize with step `alpha / (qmax - zp)`.
pub fn pact<const D: usize>(x: Tensor<D>, alpha: Tensor<D>, r: Range) -> Tensor<D> {
    // min(x, alpha) with d/dalpha = 1 where x > alpha: alpha - relu(alpha - x).
    let xc = alpha.clone() - burn::tensor::activation::relu(alpha.clone() - x);
    let s = alpha.detach().div_scalar(r.qmax - r.zp);
    let lo = s.clone().mul_scalar(r.qmin - r.zp);
    let xc = xc.max_pair(lo);
    let q = fq_core(xc.clone(), s, r);
    xc.clone() + (q - xc).detach()
}

/// The DSQ soft staircase on `v` (in steps, already clamped to `[qmin, qmax]`): per unit interval
/// `[i, i+1)`, `i + (1 + tanh(k (v - i - 1/2)) / tanh(k/2)) / 2` with `k = ln(2/alpha - 1)`.
/// Continuous, equal to the interval ends at the ends, steepest at the rounding thresholds.
pub fn dsq_soft<const D: usize>(v: Tensor<D>, alpha: Tensor<D>, r: Range) -> Tensor<D> {
    let i = v.clone().floor().clamp(r.qmin, (r.qmax - 1.0).max(r.qmin)).detach();
    let k = (alpha.recip().mul_scalar(2.0).sub_scalar(1.0)).log();
    let t = (k.clone() * (v - i.clone()).sub_scalar(0.5)).tanh();
    let norm = k.mul_scalar(0.5).tanh();
    i + (t / norm).add_scalar(1.0).mul_scalar(0.5)
}

/// Differentiable soft quantization: hard forward, [`dsq_soft`] backward; `s` learns with the LSQ
/// gradient scale `g`, `alpha` learns through the soft function (keep it in `(0, 1)`).
pub fn dsq<const D: usize>(x: Tensor<D>, s: Tensor<D>, alpha: Tensor<D>, r: Range, g: f32) -> Tensor<D> {
    let s = grad_scale(s, g);
    let v = (x / s.clone()).add_scalar(r.zp).clamp(r.qmin, r.qmax);
    let soft = dsq_soft(v.clone(), alpha, r);
    let hard = v.round();
    let q = soft.clone() + (hard - soft).detach();
    q.sub_scalar(r.zp) * s
}

/// `+1` where `x >= 0`, `-1` elsewhere (the deployed binarization: a zero input maps to `+1`).
pub fn sign_pm1<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.greater_equal_elem(0.0).float().mul_scalar(2.0).sub_scalar(1.0)
}

/// Binarization with the straight-through estimator of BNNs: forward [`sign_pm1`], backward
/// `1` where `|x| <= 1` and 0 elsewhere (the gradient of `clamp(x, -1, 1)`).
pub fn sign_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let soft = x.clone().clamp(-1.0, 1.0);
    soft.clone() + (sign_pm1(x) - soft).detach()
}

/// IR-Net's error-decay estimator (Qin et al. 2020): forward [`sign_pm1`], backward the
/// derivative of `k · tanh(t · x)`, `k · t · (1 - tanh²(t · x))` with `k = max(1/t, 1)`. Early in
/// training (small `t`) every weight and activation receives gradient; late (large `t`) the
/// backward approaches the sign function's.
pub fn ede<const D: usize>(x: Tensor<D>, t: f32) -> Tensor<D> {
    let k = (1.0 / t).max(1.0);
    let soft = x.clone().mul_scalar(t).tanh().mul_scalar(k);
    soft.clone() + (sign_pm1(x) - soft).detach()
}

/// EDE's `t` at training progress `p` in `[0, 1]`: `t_min · 10^(p · log10(t_max / t_min))`, from
/// `t_min = 0.1` to `t_max = 10` as in the paper.
pub fn ede_t(p: f32) -> f32 {
    let (t_min, t_max) = (0.1f32, 10.0f32);
    t_min * 10f32.powf(p.clamp(0.0, 1.0) * (t_max / t_min).log10())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn dev() -> Device {
        Device::flex().autodiff()
    }
    fn t1(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev())
    }
    fn vals(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }
    /// A deterministic spread of inputs: inside the range, on both sides of it, and near the
    /// rounding thresholds but not on them.
    fn inputs() -> Vec<f32> {
        let mut v = vec![];
        let mut st = 12345u64;
        for _ in 0..257 {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (st >> 40) as f32 / (1u64 << 24) as f32;
            v.push(-2.5 + 5.0 * u);
        }
        v.into_iter().filter(|x| ((x / 0.25) - (x / 0.25).floor() - 0.5).abs() > 1e-3).collect()
    }
    fn hard(x: f32, s: f32, r: Range) -> f32 {
        (((x / s).round_ties_even() + r.zp).clamp(r.qmin, r.qmax) - r.zp) * s
    }
    fn assert_close(a: f32, b: f32, tol: f32, what: &str) {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }

    const S: f32 = 0.25;

    fn ranges() -> Vec<Range> {
        vec![Range::signed(4), Range::unsigned(4, 3), Range::unsigned(2, 0), Range::signed(8)]
    }

    #[test]
    fn rint_and_floor_match_std() {
        for v in [
            -128.5f32, -3.0, -0.0, -1e-7, 1e-7, 7.0, -2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 2.51, 254.5, 255.0,
            3.4999,
        ] {
            assert_eq!(rint(v), v.round_ties_even(), "{v}");
            assert_eq!(floor(v), v.floor(), "{v}");
        }
    }

    #[test]
    fn forward_values_are_the_hard_quantizer() {
        let xs = inputs();
        for r in ranges() {
            let want: Vec<f32> = xs.iter().map(|&x| hard(x, S, r)).collect();
            let n = xs.len();
            let s = t1(&vec![S; n]);
            let alpha = t1(&vec![0.2; n]);
            let outs = [
                ("ste", vals(ste(t1(&xs), s.clone(), r))),
                ("lsq", vals(lsq(t1(&xs), s.clone(), r, 0.1))),
                ("dsq", vals(dsq(t1(&xs), s.clone(), alpha, r, 0.1))),
            ];
            for (name, got) in outs {
                for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                    assert_close(*g, *w, 1e-6, &format!("{name} {r:?} x={x}"));
                }
            }
            // PACT with alpha = (qmax - zp) * S has the same step.
            let a = t1(&vec![(r.qmax - r.zp) * S; n]);
            for ((g, w), x) in vals(pact(t1(&xs), a, r)).iter().zip(&want).zip(&xs) {
                assert_close(*g, *w, 1e-6, &format!("pact {r:?} x={x}"));
            }
        }
    }

    #[test]
    fn ste_gradient_is_one_inside_zero_outside() {
        let xs = inputs();
        for r in ranges() {
            let x = t1(&xs).require_grad();
            let s = t1(&vec![S; xs.len()]).require_grad();
            let g = ste(x.clone(), s.clone(), r).sum().backward();
            let gx = vals(x.grad(&g).unwrap());
            for (xi, gi) in xs.iter().zip(gx) {
                let v = xi / S + r.zp;
                let inside = v > r.qmin && v < r.qmax;
                assert_eq!(gi, if inside { 1.0 } else { 0.0 }, "{r:?} x={xi}");
            }
            // The step is fixed: no gradient reaches it.
            assert!(s.grad(&g).is_none_or(|t| vals(t).iter().all(|&v| v == 0.0)));
        }
    }

    #[test]
    fn lsq_step_gradient_follows_the_paper() {
        let xs = inputs();
        let gs = 0.37;
        for r in ranges() {
            let s = t1(&vec![S; xs.len()]).require_grad();
            let x = t1(&xs).require_grad();
            let g = lsq(x.clone(), s.clone(), r, gs).sum().backward();
            let gsv = vals(s.grad(&g).unwrap());
            let gx = vals(x.grad(&g).unwrap());
            for ((xi, gsi), gxi) in xs.iter().zip(gsv).zip(gx) {
                let v = xi / S + r.zp;
                let want = if v <= r.qmin {
                    r.qmin - r.zp
                } else if v >= r.qmax {
                    r.qmax - r.zp
                } else {
                    v.round_ties_even() - v
                };
                assert_close(gsi, gs * want, 1e-4, &format!("lsq ds {r:?} x={xi}"));
                let inside = v > r.qmin && v < r.qmax;
                assert_eq!(gxi, if inside { 1.0 } else { 0.0 }, "lsq dx {r:?} x={xi}");
            }
        }
    }

    #[test]
    fn pact_alpha_gradient_is_one_above_alpha() {
        let r = Range::unsigned(4, 0);
        let alpha_v = 1.1f32;
        let xs = inputs();
        let a = t1(&vec![alpha_v; xs.len()]).require_grad();
        let x = t1(&xs).require_grad();
        let g = pact(x.clone(), a.clone(), r).sum().backward();
        let ga = vals(a.grad(&g).unwrap());
        let gx = vals(x.grad(&g).unwrap());
        for ((xi, gai), gxi) in xs.iter().zip(ga).zip(gx) {
            assert_eq!(gai, if *xi > alpha_v { 1.0 } else { 0.0 }, "x={xi}");
            assert_eq!(gxi, if *xi > 0.0 && *xi < alpha_v { 1.0 } else { 0.0 }, "x={xi}");
        }
    }

    /// Finite differences of the soft function with respect to its input and to alpha.
    #[test]
    fn dsq_soft_gradients_match_finite_differences() {
        let r = Range::unsigned(4, 0);
        let vs: Vec<f32> = (0..60).map(|i| 0.13 + i as f32 * 0.2371).filter(|v| *v < r.qmax).collect();
        for alpha_v in [0.05f32, 0.2, 0.45] {
            let v = t1(&vs).require_grad();
            let a = t1(&vec![alpha_v; vs.len()]).require_grad();
            let g = dsq_soft(v.clone(), a.clone(), r).sum().backward();
            let gv = vals(v.grad(&g).unwrap());
            let ga = vals(a.grad(&g).unwrap());
            let f = |v: f64, a: f64| {
                let i = v.floor().clamp(r.qmin as f64, r.qmax as f64 - 1.0);
                let k = (2.0 / a - 1.0).ln();
                i + (1.0 + (k * (v - i - 0.5)).tanh() / (k * 0.5).tanh()) / 2.0
            };
            for (j, &vj) in vs.iter().enumerate() {
                let h = 1e-4;
                let (vd, ad) = (vj as f64, alpha_v as f64);
                let dv = (f(vd + h, ad) - f(vd - h, ad)) / (2.0 * h);
                let da = (f(vd, ad + h) - f(vd, ad - h)) / (2.0 * h);
                assert_close(gv[j], dv as f32, 2e-3, &format!("d soft/dv v={vj} a={alpha_v}"));
                assert_close(ga[j], da as f32, 2e-3, &format!("d soft/dalpha v={vj} a={alpha_v}"));
            }
        }
    }

    #[test]
    fn dsq_soft_is_a_continuous_staircase_that_sharpens() {
        let r = Range::unsigned(3, 0);
        // At the interval ends the soft function equals the integer levels.
        let ends: Vec<f32> = (0..7).map(|i| i as f32 + 1e-6).collect();
        let got = vals(dsq_soft(t1(&ends), t1(&vec![0.3; 7]), r));
        for (g, e) in got.iter().zip(&ends) {
            assert_close(*g, e.round(), 1e-4, "level");
        }
        // As alpha shrinks it approaches rounding.
        let xs: Vec<f32> = (0..50).map(|i| 0.07 + i as f32 * 0.13).collect();
        let err = |a: f32| -> f32 {
            let y = vals(dsq_soft(t1(&xs), t1(&vec![a; xs.len()]), r));
            y.iter().zip(&xs).map(|(y, x)| (y - x.round()).abs()).sum::<f32>()
        };
        assert!(err(0.01) < err(0.2) && err(0.2) < err(0.45), "{} {} {}", err(0.01), err(0.2), err(0.45));
    }

    /// The DSQ backward pass is the soft function's gradient (chain rule through v = x/s + zp).
    #[test]
    fn dsq_gradients_are_the_soft_functions() {
        let r = Range::unsigned(4, 2);
        let xs = inputs();
        let n = xs.len();
        let (sv, av, gs) = (S, 0.2f32, 0.5f32);
        let x = t1(&xs).require_grad();
        let s = t1(&vec![sv; n]).require_grad();
        let a = t1(&vec![av; n]).require_grad();
        let g = dsq(x.clone(), s.clone(), a.clone(), r, gs).sum().backward();
        let (gx, gsv, ga) = (vals(x.grad(&g).unwrap()), vals(s.grad(&g).unwrap()), vals(a.grad(&g).unwrap()));
        // Reference: y(x, s, a) = (soft(clamp(x/s + zp)) - zp) * s, differentiated numerically.
        let y = |x: f64, s: f64, a: f64| {
            let v = (x / s + r.zp as f64).clamp(r.qmin as f64, r.qmax as f64);
            let i = v.floor().clamp(r.qmin as f64, r.qmax as f64 - 1.0);
            let k = (2.0 / a - 1.0).ln();
            let soft = i + (1.0 + (k * (v - i - 0.5)).tanh() / (k * 0.5).tanh()) / 2.0;
            (soft - r.zp as f64) * s
        };
        let h = 1e-5;
        for j in 0..n {
            let xd = xs[j] as f64;
            let v = xd / sv as f64 + r.zp as f64;
            if (v - r.qmin as f64).abs() < 1e-3 || (v - r.qmax as f64).abs() < 1e-3 {
                continue;
            }
            let (sd, ad) = (sv as f64, av as f64);
            let dx = (y(xd + h, sd, ad) - y(xd - h, sd, ad)) / (2.0 * h);
            // The forward uses the hard value, so d/ds has the hard value's term (q - zp) where the
            // soft one has (soft - zp): compare the soft part of the chain rule only.
            let v_in = v.clamp(r.qmin as f64, r.qmax as f64);
            let hard = v_in.round();
            let soft_at = y(xd, sd, ad) / sd + r.zp as f64;
            let ds = (y(xd, sd + h, ad) - y(xd, sd - h, ad)) / (2.0 * h) + (hard - soft_at);
            let da = (y(xd, sd, ad + h) - y(xd, sd, ad - h)) / (2.0 * h);
            assert_close(gx[j], dx as f32, 3e-3, &format!("dsq dx x={}", xs[j]));
            assert_close(gsv[j], (gs as f64 * ds) as f32, 3e-3, &format!("dsq ds x={}", xs[j]));
            assert_close(ga[j], da as f32, 3e-3, &format!("dsq dalpha x={}", xs[j]));
        }
    }

    #[test]
    fn binarizers_forward_is_the_sign_with_zero_to_plus_one() {
        let xs = [-2.0f32, -0.3, -1e-9, 0.0, 1e-9, 0.4, 3.0];
        let want = [-1.0f32, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(vals(sign_pm1(t1(&xs))), want);
        assert_eq!(vals(sign_ste(t1(&xs))), want);
        for t in [0.1, 1.0, 10.0] {
            assert_eq!(vals(ede(t1(&xs), t)), want, "t={t}");
        }
    }

    #[test]
    fn sign_ste_gradient_is_one_inside_the_unit_interval() {
        let xs = [-2.0f32, -1.5, -0.99, -0.2, 0.0, 0.5, 0.99, 1.01, 4.0];
        let x = t1(&xs).require_grad();
        let g = sign_ste(x.clone()).sum().backward();
        let gx = vals(x.grad(&g).unwrap());
        for (xi, gi) in xs.iter().zip(gx) {
            assert_eq!(gi, if xi.abs() <= 1.0 { 1.0 } else { 0.0 }, "x={xi}");
        }
    }

    #[test]
    fn ede_gradient_matches_finite_differences_of_k_tanh() {
        let xs: Vec<f32> = (0..41).map(|i| -2.0 + i as f32 * 0.1 + 0.013).collect();
        for p in [0.0f32, 0.5, 1.0] {
            let t = ede_t(p);
            let k = (1.0 / t).max(1.0);
            let x = t1(&xs).require_grad();
            let g = ede(x.clone(), t).sum().backward();
            let gx = vals(x.grad(&g).unwrap());
            for (xi, gi) in xs.iter().zip(gx) {
                let f = |v: f64| k as f64 * (t as f64 * v).tanh();
                let h = 1e-4;
                let fd = (f(*xi as f64 + h) - f(*xi as f64 - h)) / (2.0 * h);
                assert_close(gi, fd as f32, 1e-3, &format!("t={t} x={xi}"));
            }
        }
        // The schedule runs from 0.1 to 10, geometrically.
        assert_close(ede_t(0.0), 0.1, 1e-6, "t_min");
        assert_close(ede_t(0.5), 1.0, 1e-5, "t_mid");
        assert_close(ede_t(1.0), 10.0, 1e-5, "t_max");
    }
}
