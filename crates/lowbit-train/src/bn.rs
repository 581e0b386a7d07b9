//! BatchNorm in training mode as one differentiable operation (a backend extension with a
//! handwritten backward, like [`crate::conv`]).
//!
//! Written with burn's tensor operations, training-mode BatchNorm is about a dozen element-wise
//! passes and reductions forward and as many backward, each a separate single-threaded kernel.
//! Here the forward is two passes (statistics, then `y = x·a + b` per channel) and the backward
//! two (the per-channel sums `Σdy` and `Σdy·x̂`, then `dx`), channels or images in parallel.

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

#[backend_extension(Flex, Autodiff)]
pub trait LbBatchNorm: Backend {
    /// Per channel of `x` (`N × C × H × W`): the batch mean (row 0) and biased variance (row 1),
    /// a `2 × C` tensor outside the autodiff graph.
    fn lb_bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `(x - mean) / sqrt(var + eps) · gamma + beta` with `stats` from [`LbBatchNorm::lb_bn_stats`]
    /// of this `x`; differentiable in `x` (through the statistics too), `gamma` and `beta` (`C`).
    fn lb_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

/// The batch mean and biased variance of every channel of `x`, detached: `([C], [C])`.
pub fn batch_stats(x: &Tensor<4>) -> Tensor<2> {
    Tensor::<2>::from_dispatch(<Dispatch as LbBatchNorm>::lb_bn_stats(x.clone().into_dispatch()))
}

/// Training-mode BatchNorm of `x` with its batch statistics `stats` (from [`batch_stats`]).
pub fn batch_norm_train(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, stats: Tensor<2>, eps: f32) -> Tensor<4> {
    Tensor::<4>::from_dispatch(<Dispatch as LbBatchNorm>::lb_bn_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.into_dispatch(),
        eps,
    ))
}

/// `Σ f(a[i], b[i])` over one plane: 16 f32 partial sums (independent, so they vectorize and do
/// not wait on each other), added in f64 at the end.
#[inline]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            acc[j] += f(x[j], y[j]);
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| f(x, y) as f64).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// `(n, c, h·w)` of an NCHW shape.
fn dims(s: &[usize]) -> (usize, usize, usize) {
    assert_eq!(s.len(), 4, "batch norm: expects an NCHW input, got {s:?}");
    (s[0], s[1], s[2] * s[3])
}

fn stats(x: &FlexTensor) -> FlexTensor {
    let x = f32_data(x, "input");
    let (n, c, hw) = dims(x.layout().shape());
    let xs: &[f32] = x.storage();
    let cnt = (n * hw).max(1) as f64;
    let per: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |i| &xs[(i * c + ch) * hw..][..hw]);
            let mean = planes().map(|p| lane_sum(p, p, |v, _| v)).sum::<f64>() / cnt;
            let m = mean as f32;
            let var = planes().map(|p| lane_sum(p, p, |v, _| (v - m) * (v - m))).sum::<f64>() / cnt;
            (m, var as f32)
        })
        .collect();
    let mut out: Vec<f32> = per.iter().map(|p| p.0).collect();
    out.extend(per.iter().map(|p| p.1));
    FlexTensor::from_data(TensorData::new(out, [2, c]))
}

/// Per channel `(mean, 1/sqrt(var + eps))`.
fn mean_istd(stats: &FlexTensor, c: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let st = f32_data(stats, "statistics");
    let s: &[f32] = st.storage();
    assert_eq!(s.len(), 2 * c, "batch norm: statistics for {} channels, input has {c}", s.len() / 2);
    (s[..c].to_vec(), s[c..].iter().map(|&v| 1.0 / (v + eps).sqrt()).collect())
}

fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, st: &FlexTensor, eps: f32) -> FlexTensor {
    let (x, g, b) = (f32_data(x, "input"), f32_data(gamma, "gamma"), f32_data(beta, "beta"));
    let shape = x.layout().shape().to_vec();
    let (n, c, hw) = dims(&shape);
    let (mean, istd) = mean_istd(st, c, eps);
    let (xs, gs, bs): (&[f32], &[f32], &[f32]) = (x.storage(), g.storage(), b.storage());
    // y = x·a + (beta - mean·a), a = gamma·istd.
    let a: Vec<f32> = (0..c).map(|i| gs[i] * istd[i]).collect();
    let o: Vec<f32> = (0..c).map(|i| bs[i] - mean[i] * a[i]).collect();
    let y = crate::par_build(n * c * hw, hw, |plane, yp| {
        let ch = plane % c;
        let xp = &xs[plane * hw..][..hw];
        yp.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * a[ch] + o[ch]);
    });
    FlexTensor::from_data(TensorData::new(y, shape))
}

/// `(dx, dgamma, dbeta)`.
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    st: &FlexTensor,
    dy: &FlexTensor,
    eps: f32,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, g, dy) = (f32_data(x, "input"), f32_data(gamma, "gamma"), f32_data(dy, "output gradient"));
    let shape = x.layout().shape().to_vec();
    let (n, c, hw) = dims(&shape);
    let (mean, istd) = mean_istd(st, c, eps);
    let (xs, gs, dys): (&[f32], &[f32], &[f32]) = (x.storage(), g.storage(), dy.storage());
    // Per channel: Σdy and Σdy·x̂.
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut sx) = (0f64, 0f64);
            for i in 0..n {
                let off = (i * c + ch) * hw;
                let (xp, dp) = (&xs[off..off + hw], &dys[off..off + hw]);
                let mu = mean[ch];
                s += lane_sum(dp, dp, |d, _| d);
                sx += lane_sum(xp, dp, |x, d| (x - mu) * d);
            }
            (s as f32, (sx * istd[ch] as f64) as f32)
        })
        .collect();
    let m = (n * hw).max(1) as f32;
    // dx = gamma·istd·(dy - Σdy/M - x̂·Σ(dy·x̂)/M).
    let dx = crate::par_build(n * c * hw, hw, |plane, dxp| {
        let ch = plane % c;
        let off = plane * hw;
        let (k, mu, is) = (gs[ch] * istd[ch], mean[ch], istd[ch]);
        let (sm, sxm) = (sums[ch].0 / m, sums[ch].1 / m);
        for ((d, &x), &g) in dxp.iter_mut().zip(&xs[off..off + hw]).zip(&dys[off..off + hw]) {
            *d = k * (g - sm - (x - mu) * is * sxm);
        }
    });
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1).collect();
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0).collect();
    (
        FlexTensor::from_data(TensorData::new(dx, shape)),
        FlexTensor::from_data(TensorData::new(dgamma, [c])),
        FlexTensor::from_data(TensorData::new(dbeta, [c])),
    )
}

impl LbBatchNorm for Flex {
    fn lb_bn_stats(x: FlexTensor) -> FlexTensor {
        stats(&x)
    }
    fn lb_bn_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, st: FlexTensor, eps: f32) -> FlexTensor {
        forward(&x, &gamma, &beta, &st, eps)
    }
}

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, st, eps) = ops.state;
        let (dx, dg, db) = backward(&x, &gamma, &st, &dy, eps);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, dg);
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, db);
        }
    }
}

impl<C: CheckpointStrategy> LbBatchNorm for Autodiff<Flex, C> {
    fn lb_bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <FloatTensor<Self>>::new(stats(x.primitive()))
    }
    fn lb_bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        st: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        match BnBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, gp, sp) = (x.primitive().clone(), gamma.primitive().clone(), st.primitive().clone());
                let y = forward(&xp, &gp, beta.primitive(), &sp, eps);
                prep.finish((xp, gp, sp, eps), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(x.primitive(), gamma.primitive(), beta.primitive(), st.primitive(), eps))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Output, running statistics and all three gradients against BatchNorm written with burn's
    /// tensor operations.
    #[test]
    fn matches_burn_batch_norm() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(11);
        for (n, c, h, w) in [(4, 3, 5, 7), (2, 6, 1, 1), (3, 2, 8, 3)] {
            let xs: Vec<f32> = (0..n * c * h * w).map(|_| 2.0 * rng.normal() + 0.5).collect();
            let gv: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
            let bv: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
            let mv: Vec<f32> = (0..n * c * h * w).map(|i| (i % 5) as f32 - 2.0).collect();
            let run = |ours: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [n, c, h, w]), &dev).require_grad();
                let g = Tensor::<1>::from_data(TensorData::new(gv.clone(), [c]), &dev).require_grad();
                let b = Tensor::<1>::from_data(TensorData::new(bv.clone(), [c]), &dev).require_grad();
                let (y, mean, var) = if ours {
                    let st = batch_stats(&x);
                    let (mean, var) =
                        (st.clone().narrow(0, 0, 1).reshape([c]), st.clone().narrow(0, 1, 1).reshape([c]));
                    (batch_norm_train(x.clone(), g.clone(), b.clone(), st, 1e-5), mean, var)
                } else {
                    let mu = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
                    let d = x.clone() - mu.clone();
                    let v = d.clone().square().mean_dim(0).mean_dim(2).mean_dim(3);
                    let y = d * (v.clone().add_scalar(1e-5).sqrt().recip() * g.clone().reshape([1, c, 1, 1]))
                        + b.clone().reshape([1, c, 1, 1]);
                    (y, mu.detach().reshape([c]), v.detach().reshape([c]))
                };
                let m = Tensor::<4>::from_data(TensorData::new(mv.clone(), [n, c, h, w]), &dev);
                let grads = (y.clone() * m).sum().backward();
                let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
                let v1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                (
                    v(y.detach()),
                    v1(mean),
                    v1(var),
                    v(x.grad(&grads).unwrap()),
                    v1(g.grad(&grads).unwrap()),
                    v1(b.grad(&grads).unwrap()),
                )
            };
            let (a, b) = (run(true), run(false));
            let pairs = [(&a.0, &b.0, "y"), (&a.1, &b.1, "mean"), (&a.2, &b.2, "var"), (&a.3, &b.3, "dx")];
            for (p, q, what) in pairs.into_iter().chain([(&a.4, &b.4, "dgamma"), (&a.5, &b.5, "dbeta")]) {
                for (i, (u, v)) in p.iter().zip(q.iter()).enumerate() {
                    assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{n}x{c}x{h}x{w} {what}[{i}]: {u} vs {v}");
                }
            }
        }
    }
}
