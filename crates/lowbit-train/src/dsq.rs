//! DSQ's fake quantizer as one differentiable operation (a backend extension with a handwritten
//! backward, like [`crate::conv`]).
//!
//! Written with burn's tensor operations ([`crate::fq::dsq`]), the quantizer is about fifteen
//! element-wise passes forward (scale, clamp, floor, log, tanh, round, the straight-through
//! combination) and as many backward, each a separate kernel holding its own intermediate
//! tensor. Here the forward is one pass and the backward one pass that also reduces the step and
//! `α` gradients. The values and gradients are those of the composed version:
//! - `u = x/s + zp`, `v = clamp(u, qmin, qmax)`, forward `y = (round_half_even(v) - zp)·s`;
//! - backward through the soft staircase `φ(v) = i + (tanh(k(v - i - ½))/tanh(k/2) + 1)/2`,
//!   `i = clamp(⌊v⌋, qmin, qmax - 1)`, `k = ln(2/α - 1)`, `α` clamped to `[0.001, 0.5]`;
//! - the step's gradient scaled by LSQ's `g`.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::conv::f32_data;
use crate::fq::{floor, rint, Range};

/// The quantizer's constants: `[zp, qmin, qmax, g, inner]`; `x` is viewed as rows of `inner`
/// values, row `r` in channel `r mod C` (`C` = the step's length; with one step, one channel).
pub type DsqParams = [f32; 5];

/// The α clamp of [`crate::model`]'s DSQ quantizers.
const ALPHA_MIN: f32 = 1e-3;
const ALPHA_MAX: f32 = 0.5;

#[backend_extension(Flex, Autodiff)]
pub trait LbDsq: Backend {
    /// DSQ fake quantization of `x` with per-channel steps `s` (`C`) and one `alpha` (`1`).
    fn lb_dsq(x: FloatTensor<Self>, s: FloatTensor<Self>, alpha: FloatTensor<Self>, p: DsqParams) -> FloatTensor<Self>;
}

/// DSQ fake quantization of `x` (any rank) with steps `s` (length 1, or one per index of `axis`)
/// and the characteristic variable `alpha` (length 1); see the module documentation.
pub fn dsq<const D: usize>(
    x: Tensor<D>,
    s: Tensor<1>,
    alpha: Tensor<1>,
    r: Range,
    g: f32,
    axis: Option<usize>,
) -> Tensor<D> {
    let dims = x.dims();
    let c = s.dims()[0];
    let inner: usize = match axis {
        Some(a) if c > 1 => {
            assert_eq!(dims[a], c, "dsq: {c} steps for axis {a} of {dims:?}");
            dims[a + 1..].iter().product()
        }
        _ => {
            // One step: any row length works; rows of 4096 values split the work into tasks.
            assert_eq!(c, 1, "dsq: {c} steps without an axis");
            4096
        }
    };
    let p = [r.zp, r.qmin, r.qmax, g, inner as f32];
    Tensor::<D>::from_dispatch(<Dispatch as LbDsq>::lb_dsq(
        x.into_dispatch(),
        s.into_dispatch(),
        alpha.into_dispatch(),
        p,
    ))
}

struct Consts {
    zp: f32,
    qmin: f32,
    qmax: f32,
    g: f32,
    inner: usize,
}

fn consts(p: DsqParams) -> Consts {
    Consts { zp: p[0], qmin: p[1], qmax: p[2], g: p[3], inner: (p[4] as usize).max(1) }
}

/// `tanh(x)` to about 1e-7 absolute error, branch-free so the backward loop vectorises (`f32::tanh`
/// is a library call per element: it made a DSQ epoch 3.4x a float one on one thread).
/// `tanh(|x|) = 1 - 2/(e^(2|x|) + 1)`, `e^y = 2^n·p(r)` with `n = round(y/ln 2)`, `|r| <= ln2/2`
/// and `p` the degree-7 Taylor polynomial (relative error below 2e-8 on that interval).
#[inline(always)]
fn tanh(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const M: f32 = 12_582_912.0; // 1.5·2^23: round to nearest by addition
    let y = (2.0 * x.abs()).min(40.0); // tanh(20) is 1 in f32
    let t = y * std::f32::consts::LOG2_E + M;
    let n = t - M;
    // n in 0..=58 sits in t's low mantissa bits: 2^n built with integer operations only.
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(M.to_bits()).wrapping_add(127)) << 23);
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let e = p * two_n;
    (1.0 - 2.0 / (e + 1.0)).copysign(x)
}

/// Rows per parallel task: about 16K values.
fn rows_per_task(inner: usize) -> usize {
    (16384 / inner).max(1)
}

fn forward(x: &FlexTensor, s: &FlexTensor, p: DsqParams) -> FlexTensor {
    let (x, s) = (f32_data(x, "input"), f32_data(s, "step"));
    let k = consts(p);
    let xs: &[f32] = x.storage();
    let ss: &[f32] = s.storage();
    let c = ss.len();
    let mut y = vec![0f32; xs.len()];
    let chunk = rows_per_task(k.inner) * k.inner;
    y.par_chunks_mut(chunk).enumerate().for_each(|(t, yc)| {
        let row0 = t * chunk / k.inner;
        for (j, yr) in yc.chunks_mut(k.inner).enumerate() {
            let st = ss[(row0 + j) % c];
            let (off, len) = ((row0 + j) * k.inner, yr.len());
            for (o, &v) in yr.iter_mut().zip(&xs[off..off + len]) {
                let q = rint((v / st + k.zp).clamp(k.qmin, k.qmax));
                *o = (q - k.zp) * st;
            }
        }
    });
    FlexTensor::from_data(TensorData::new(y, x.layout().shape().to_vec()))
}

/// `(dx, ds, dalpha)`.
fn backward(x: &FlexTensor, s: &FlexTensor, alpha: &FlexTensor, dy: &FlexTensor, p: DsqParams) -> [FlexTensor; 3] {
    let (x, s, dy) = (f32_data(x, "input"), f32_data(s, "step"), f32_data(dy, "gradient"));
    let a_raw = f32_data(alpha, "alpha").storage::<f32>()[0];
    let k = consts(p);
    let (xs, ss, dys): (&[f32], &[f32], &[f32]) = (x.storage(), s.storage(), dy.storage());
    let c = ss.len();
    let a = a_raw.clamp(ALPHA_MIN, ALPHA_MAX);
    let a_live = (ALPHA_MIN..=ALPHA_MAX).contains(&a_raw);
    let kk = (2.0 / a - 1.0).ln();
    let norm = (0.5 * kk).tanh();
    let dk_da = -2.0 / (a * (2.0 - a));
    let i_max = (k.qmax - 1.0).max(k.qmin);
    let mut dx = vec![0f32; xs.len()];
    let chunk = rows_per_task(k.inner) * k.inner;
    let (ds, dalpha) = dx
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(t, dc)| {
            let row0 = t * chunk / k.inner;
            let mut ds = vec![0f64; c];
            let mut dk = 0f64;
            for (j, dr) in dc.chunks_mut(k.inner).enumerate() {
                let ch = (row0 + j) % c;
                let st = ss[ch];
                let (off, len) = ((row0 + j) * k.inner, dr.len());
                let (mut ds_row, mut dk_row) = (0f32, 0f32);
                for ((d, &xv), &gy) in dr.iter_mut().zip(&xs[off..off + len]).zip(&dys[off..off + len]) {
                    let u = xv / st + k.zp;
                    let inside = u >= k.qmin && u <= k.qmax;
                    let v = u.clamp(k.qmin, k.qmax);
                    let hard = rint(v);
                    let i = floor(v).clamp(k.qmin, i_max);
                    let e = v - i - 0.5;
                    let th = tanh(kk * e);
                    let sech2 = 1.0 - th * th;
                    // dφ/dv and dφ/dk.
                    let dphi_dv = kk * sech2 / (2.0 * norm);
                    let dphi_dk = (e * sech2 * norm - 0.5 * th * (1.0 - norm * norm)) / (2.0 * norm * norm);
                    let dv = if inside { dphi_dv } else { 0.0 };
                    // y = (φ(v) - zp)·s in the backward: dy/dx = dφ/dv·[inside], dy/ds = (hard - zp) - dφ/dv·[inside]·x/s.
                    *d = gy * dv;
                    ds_row += gy * ((hard - k.zp) - dv * xv / st);
                    dk_row += gy * st * dphi_dk;
                }
                ds[ch] += ds_row as f64;
                dk += dk_row as f64;
            }
            (ds, dk)
        })
        .reduce(
            || (vec![0f64; c], 0f64),
            |(mut a, ka), (b, kb)| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                (a, ka + kb)
            },
        );
    let ds: Vec<f32> = ds.iter().map(|&v| (v * k.g as f64) as f32).collect();
    let da = if a_live { (dalpha * dk_da as f64) as f32 } else { 0.0 };
    [
        FlexTensor::from_data(TensorData::new(dx, x.layout().shape().to_vec())),
        FlexTensor::from_data(TensorData::new(ds, [c])),
        FlexTensor::from_data(TensorData::new(vec![da], [1])),
    ]
}

impl LbDsq for Flex {
    fn lb_dsq(x: FlexTensor, s: FlexTensor, _alpha: FlexTensor, p: DsqParams) -> FlexTensor {
        forward(&x, &s, p)
    }
}

#[derive(Debug)]
struct DsqBackward;

impl Backward<Flex, 3> for DsqBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, DsqParams);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_s, node_a] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, s, alpha, p) = ops.state;
        let [dx, ds, da] = backward(&x, &s, &alpha, &dy, p);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_s {
            grads.register::<Flex>(node.id, ds);
        }
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, da);
        }
    }
}

impl<C: CheckpointStrategy> LbDsq for Autodiff<Flex, C> {
    fn lb_dsq(x: FloatTensor<Self>, s: FloatTensor<Self>, alpha: FloatTensor<Self>, p: DsqParams) -> FloatTensor<Self> {
        match DsqBackward.prepare::<C>([x.node(), s.node(), alpha.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, sp, ap) = (x.primitive().clone(), s.primitive().clone(), alpha.primitive().clone());
                let y = forward(&xp, &sp, p);
                prep.finish((xp, sp, ap, p), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), s.primitive(), p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: fused {x}, composed {y}");
        }
    }

    #[test]
    fn fast_tanh_is_close_to_tanh() {
        let mut worst = 0f64;
        for i in -400_000..=400_000 {
            let x = i as f32 * 5e-5 * (1.0 + (i as f32).abs() * 1e-5);
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        for x in [0.0f32, -0.0, 1e-30, 19.9, 20.0, 1e6, -1e6, f32::MAX, f32::MIN] {
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
    }

    /// The fused quantizer against the composed one ([`crate::fq::dsq`], itself checked against
    /// finite differences): values, and the gradients of x, the steps and α, per channel on axis
    /// 0 and 1, and per tensor, for signed weights and unsigned activations with a zero point.
    #[test]
    fn matches_composed_dsq() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(7);
        let cases: [([usize; 4], Option<usize>, Range, f32); 5] = [
            ([6, 3, 3, 3], Some(0), Range::signed(2), 0.4),
            ([4, 5, 1, 1], Some(1), Range::signed(4), 0.2),
            ([3, 4, 5, 7], None, Range::unsigned(2, 0), 0.2),
            ([2, 3, 4, 4], None, Range::unsigned(4, 3), 0.05),
            // α outside the clamp: no gradient for α.
            ([2, 2, 3, 3], None, Range::unsigned(3, 1), 0.7),
        ];
        for (shape, axis, r, alpha) in cases {
            let n: usize = shape.iter().product();
            let c = axis.map_or(1, |a| shape[a]);
            let xv: Vec<f32> = (0..n).map(|_| rng.normal() * 1.5).collect();
            let sv: Vec<f32> = (0..c).map(|i| 0.3 + 0.1 * i as f32).collect();
            let wv: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let g = 0.37;
            let run = |fused: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
                let s = Tensor::<1>::from_data(TensorData::new(sv.clone(), [c]), &dev).require_grad();
                let a = Tensor::<1>::from_data(TensorData::new(vec![alpha], [1]), &dev).require_grad();
                let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), shape), &dev);
                let y = if fused {
                    dsq(x.clone(), s.clone(), a.clone(), r, g, axis)
                } else {
                    let mut bs = [1usize; 4];
                    if let Some(ax) = axis {
                        bs[ax] = c;
                    }
                    let sb: Tensor<4> = s.clone().reshape(bs);
                    let ab: Tensor<4> = a.clone().reshape([1, 1, 1, 1]).clamp(ALPHA_MIN, ALPHA_MAX);
                    crate::fq::dsq(x.clone(), sb, ab, r, g)
                };
                let grads = (y.clone() * w).sum().backward();
                let ga = a.grad(&grads).map(vals).unwrap_or(vec![0.0]);
                (vals(y), vals(x.grad(&grads).unwrap()), vals(s.grad(&grads).unwrap()), ga)
            };
            let (f, b) = (run(true), run(false));
            let what = format!("{shape:?} axis {axis:?} {r:?} alpha {alpha}");
            close(&f.0, &b.0, 1e-5, &format!("{what} y"));
            close(&f.1, &b.1, 1e-4, &format!("{what} dx"));
            close(&f.2, &b.2, 1e-4, &format!("{what} ds"));
            close(&f.3, &b.3, 1e-3, &format!("{what} dalpha"));
            if alpha > ALPHA_MAX {
                assert_eq!(f.3, vec![0.0]);
            } else {
                assert!(f.3[0].abs() > 1e-6, "{what}: α should receive gradient");
            }
        }
    }
}
