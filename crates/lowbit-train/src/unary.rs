//! Element-wise activations as one backend extension that runs on the rayon pool, each one pass
//! forward and one pass backward: ReLU, hardtanh-style clipping, and the two binarizers of binary
//! training (sign with the clipped straight-through estimator, and IR-Net's error-decay
//! estimator).
//!
//! burn-flex's element-wise kernels are single-threaded, and a binarizer composed from them is
//! ten passes each way (EDE's `k·tanh(t·x)` soft function, the sign, the straight-through
//! combination), each with its own intermediate tensor and a scalar `tanhf` per element: on
//! fmnist-resnet's Bi-Real network tanh alone was 37% of a binary training step's samples. Here
//! the sign's forward is one pass and its backward one pass with a vectorizable `exp`.
//! Values and gradients are those of the composed functions in [`crate::fq`] (EDE's to float
//! rounding: the derivative `k·t·sech²(t·x)` is computed as `4ke/(1+e)²` with `e = exp(-2|t·x|)`).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::conv::f32_data;

/// Elements per parallel chunk (64 KB).
const CHUNK: usize = 1 << 14;

/// Which function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// `max(x, 0)`; the gradient passes where `x > 0`.
    Relu,
    /// `clamp(x, lo, hi)`; the gradient passes where `lo <= x <= hi` (burn's convention).
    Clip { lo: f32, hi: f32 },
    /// `+1` where `x >= 0`, else `-1`; the gradient passes where `|x| <= 1` ([`crate::fq::sign_ste`]).
    SignSte,
    /// The same sign; the gradient is that of `k·tanh(t·x)`, `k = max(1/t, 1)` ([`crate::fq::ede`]).
    SignEde { t: f32 },
}

impl Unary {
    fn encode(self) -> [f32; 3] {
        match self {
            Unary::Relu => [0.0, 0.0, 0.0],
            Unary::Clip { lo, hi } => [1.0, lo, hi],
            Unary::SignSte => [2.0, 0.0, 0.0],
            Unary::SignEde { t } => [3.0, t, 0.0],
        }
    }
    fn decode(p: [f32; 3]) -> Unary {
        match p[0] as u32 {
            0 => Unary::Relu,
            1 => Unary::Clip { lo: p[1], hi: p[2] },
            2 => Unary::SignSte,
            _ => Unary::SignEde { t: p[1] },
        }
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait LbUnary: Backend {
    /// The function encoded by `p` ([`Unary`]) applied to every element of `x`.
    fn lb_unary(x: FloatTensor<Self>, p: [f32; 3]) -> FloatTensor<Self>;
}

/// `f` applied element-wise on the rayon pool, with its handwritten backward.
pub fn unary<const D: usize>(x: Tensor<D>, f: Unary) -> Tensor<D> {
    Tensor::<D>::from_dispatch(<Dispatch as LbUnary>::lb_unary(x.into_dispatch(), f.encode()))
}

/// `max(x, 0)` on the rayon pool (burn's own `relu` with `LOWBIT_BURN_OPS=relu`).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::conv::burn_ops("relu") {
        return burn::tensor::activation::relu(x);
    }
    unary(x, Unary::Relu)
}

/// `exp(x)` for `x <= 0` (larger inputs are clamped to 0): `2^k · e^r` with `|r| <= ln2/2` and
/// `e^r` by its Taylor series to degree 6 (relative error below 2e-7); plain arithmetic so the
/// loops that call it vectorize.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `k · LN2_HI` is exact for |k| < 2^9 (Cody-Waite reduction).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = (std::f64::consts::LN_2 - 0.693_359_375) as f32;
    // Round to nearest with the 1.5·2^23 trick (no rounding call, so it vectorizes on SSE2).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let k = (x * LOG2E + MAGIC) - MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p =
        1.0 + r * (1.0 + r * (1.0 / 2.0 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

fn forward(x: &FlexTensor, f: Unary) -> FlexTensor {
    let x = f32_data(x, "input");
    let xs: &[f32] = x.storage();
    let y = crate::par_build(xs.len(), CHUNK, |i, yc| {
        let xc = &xs[i * CHUNK..];
        match f {
            Unary::Relu => yc.iter_mut().zip(xc).for_each(|(y, &v)| *y = v.max(0.0)),
            Unary::Clip { lo, hi } => yc.iter_mut().zip(xc).for_each(|(y, &v)| *y = v.max(lo).min(hi)),
            Unary::SignSte | Unary::SignEde { .. } => {
                yc.iter_mut().zip(xc).for_each(|(y, &v)| *y = if v >= 0.0 { 1.0 } else { -1.0 })
            }
        }
    });
    FlexTensor::from_data(TensorData::new(y, x.layout().shape().to_vec()))
}

/// `dx` from the input `x` and the output gradient `dy`.
fn backward(x: &FlexTensor, dy: &FlexTensor, f: Unary) -> FlexTensor {
    let (x, dy) = (f32_data(x, "input"), f32_data(dy, "output gradient"));
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), dy.storage());
    assert_eq!(xs.len(), dys.len(), "unary: input and its gradient differ in size");
    let dx = crate::par_build(xs.len(), CHUNK, |i, dc| {
        let off = i * CHUNK;
        let it = dc.iter_mut().zip(&xs[off..]).zip(&dys[off..]);
        match f {
            Unary::Relu => it.for_each(|((d, &v), &g)| *d = if v > 0.0 { g } else { 0.0 }),
            Unary::Clip { lo, hi } => it.for_each(|((d, &v), &g)| *d = if v >= lo && v <= hi { g } else { 0.0 }),
            Unary::SignSte => it.for_each(|((d, &v), &g)| *d = if v.abs() <= 1.0 { g } else { 0.0 }),
            Unary::SignEde { t } => {
                let k4 = 4.0 * (1.0 / t).max(1.0) * t;
                it.for_each(|((d, &v), &g)| {
                    let e = exp_neg(-2.0 * (t * v).abs());
                    let s = 1.0 + e;
                    *d = g * (k4 * e / (s * s));
                })
            }
        }
    });
    FlexTensor::from_data(TensorData::new(dx, x.layout().shape().to_vec()))
}

impl LbUnary for Flex {
    fn lb_unary(x: FlexTensor, p: [f32; 3]) -> FlexTensor {
        forward(&x, Unary::decode(p))
    }
}

#[derive(Debug)]
struct UnaryBackward;

impl Backward<Flex, 1> for UnaryBackward {
    type State = (FlexTensor, [f32; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let (x, p) = &ops.state;
            grads.register::<Flex>(node.id, backward(x, &dy, Unary::decode(*p)));
        }
    }
}

impl<C: CheckpointStrategy> LbUnary for Autodiff<Flex, C> {
    fn lb_unary(x: FloatTensor<Self>, p: [f32; 3]) -> FloatTensor<Self> {
        match UnaryBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                let y = forward(&xp, Unary::decode(p));
                prep.finish((xp, p), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), Unary::decode(p))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Output and input gradient of `ours` and `theirs` on a tensor larger than one chunk with a
    /// ragged last chunk; `xs` gives the values.
    fn both(
        xs: &[f32],
        ours: impl Fn(Tensor<2>) -> Tensor<2>,
        theirs: impl Fn(Tensor<2>) -> Tensor<2>,
    ) -> [(Vec<f32>, Vec<f32>); 2] {
        let dev = Device::flex().autodiff();
        let n = xs.len();
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = Tensor::<2>::from_data(TensorData::new(xs.to_vec(), [n / 7, 7]), &dev).require_grad();
            let y = f(x.clone());
            let m = Tensor::<2>::from_data(
                TensorData::new((0..n).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>(), [n / 7, 7]),
                &dev,
            );
            let grads = (y.clone() * m).sum().backward();
            let dx = x.grad(&grads).unwrap().to_data().try_to_vec::<f32>().unwrap();
            (y.detach().to_data().try_to_vec::<f32>().unwrap(), dx)
        };
        [run(&ours), run(&theirs)]
    }

    /// Random values with exact zeros, exact clip bounds and exact `±1` among them (where the
    /// gradient conventions could differ), spread wide enough to reach every branch.
    fn values(seed: u64) -> Vec<f32> {
        let mut rng = crate::Rng::new(seed);
        let n = 7 * (CHUNK / 3 + 11);
        (0..n)
            .map(|i| match i % 17 {
                0 => 0.0,
                1 => 1.0,
                2 => -1.0,
                3 => 0.5,
                _ => 3.0 * rng.normal(),
            })
            .collect()
    }

    #[test]
    fn relu_matches_burn() {
        let [a, b] = both(&values(5), |x| unary(x, Unary::Relu), burn::tensor::activation::relu);
        assert_eq!(a, b);
    }

    #[test]
    fn clip_matches_burn_clamp() {
        let [a, b] = both(&values(6), |x| unary(x, Unary::Clip { lo: -1.0, hi: 0.5 }), |x| x.clamp(-1.0, 0.5));
        assert_eq!(a, b);
    }

    #[test]
    fn sign_ste_matches_the_composed_binarizer() {
        let [a, b] = both(&values(7), |x| unary(x, Unary::SignSte), crate::fq::sign_ste);
        assert_eq!(a, b);
    }

    /// EDE over its whole schedule (`t` from 0.1 to 10): the sign exactly; the gradient to 1e-5
    /// relative of the exact derivative (in f64), and to float rounding of the composed
    /// `k·tanh(t·x)`, whose `1 - tanh²` loses relative precision where tanh is near 1 (so that
    /// comparison is absolute, against the derivative's peak `k·t` times the largest `dy`).
    #[test]
    fn sign_ede_matches_the_composed_binarizer() {
        for (i, &t) in [0.1f32, 0.7, 1.0, 3.3, 10.0].iter().enumerate() {
            let xs = values(8 + i as u64);
            let [(ya, da), (yb, db)] = both(&xs, |x| unary(x, Unary::SignEde { t }), |x| crate::fq::ede(x, t));
            assert_eq!(ya, yb, "t={t}");
            let k = (1.0 / t as f64).max(1.0);
            for (j, ((&a, &b), &x)) in da.iter().zip(&db).zip(&xs).enumerate() {
                let g = (j % 5) as f64 - 2.0;
                let exact = g * k * t as f64 / (t as f64 * x as f64).cosh().powi(2);
                assert!((a as f64 - exact).abs() <= 1e-5 * exact.abs() + 1e-30, "t={t} x={x}: {a} vs {exact}");
                assert!(((a - b) as f64).abs() <= 2e-6 * k * t as f64 * 2.0, "t={t} x={x}: {a} vs composed {b}");
            }
        }
    }

    #[test]
    fn exp_neg_is_accurate_to_float_rounding() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let (a, b) = (exp_neg(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-200.0) >= 0.0 && exp_neg(-200.0) < 1e-37);
    }
}
