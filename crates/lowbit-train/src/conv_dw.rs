//! Depthwise convolution for training (one group per channel, `[c, 1, kh, kw]` weights): forward,
//! input gradient and weight gradient as direct loops over each channel's plane, registered with
//! burn's autodiff like [`crate::conv`]'s dense convolution. burn-flex computes a grouped
//! convolution's input gradient as a transposed 3-D convolution, which took most of a block
//! reconstruction step of MobileNetV2 (`perf`). Each output row is a strided multiply-add of
//! an input row per tap, planes in parallel on the rayon pool.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::conv::{burn_ops, f32_data, flex, params, ConvParams, Geom};

#[backend_extension(Flex, Autodiff)]
pub trait LbConvDw: Backend {
    /// `x`: `N × C × H × W`, `w`: `C × 1 × kh × kw`; no bias, no dilation.
    fn lb_conv2d_dw(x: FloatTensor<Self>, w: FloatTensor<Self>, p: ConvParams) -> FloatTensor<Self>;
}

/// Whether `x`'s shape and `w`'s make a depthwise convolution with `groups`.
pub fn is_depthwise(xs: &[usize], ws: &[usize], groups: usize) -> bool {
    xs.len() == 4 && ws.len() == 4 && ws[1] == 1 && groups == xs[1] && ws[0] == xs[1] && xs[1] > 1
}

/// A convolution: depthwise ones (see [`is_depthwise`], no dilation) here, others on
/// [`crate::conv::conv2d`]. `LOWBIT_BURN_OPS=dwconv` keeps depthwise ones on burn's.
pub fn conv2d(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, o: ConvOptions<2>) -> Tensor<4> {
    if o.dilation != [1, 1] || !is_depthwise(&x.dims(), &w.dims(), o.groups) || burn_ops("dwconv") {
        return crate::conv::conv2d(x, w, b, o);
    }
    let y = conv2d_dw(x, w, params(&o));
    match b {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// A depthwise convolution (see [`is_depthwise`]) with stride and padding `p`.
pub fn conv2d_dw(x: Tensor<4>, w: Tensor<4>, p: ConvParams) -> Tensor<4> {
    Tensor::<4>::from_dispatch(<Dispatch as LbConvDw>::lb_conv2d_dw(x.into_dispatch(), w.into_dispatch(), p))
}

fn geom(xs: &[usize], ws: &[usize], p: ConvParams) -> Geom {
    Geom::new(xs, &[ws[0], xs[1], ws[2], ws[3]], p)
}

/// For output index `o` and tap `k`: the input index, if inside `0..len`.
#[inline]
fn input_at(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < len)
}

/// Output columns `lo..hi` whose input column for tap `kj` is inside the image.
fn cols(g: &Geom, kj: usize) -> (usize, usize) {
    let [_, sw, _, pl, _, _] = g.p;
    let lo = (0..g.ow).find(|&x| input_at(x, kj, sw, pl, g.w).is_some()).unwrap_or(g.ow);
    let hi = (lo..g.ow).rev().find(|&x| input_at(x, kj, sw, pl, g.w).is_some()).map_or(lo, |x| x + 1);
    (lo, hi)
}

/// Calls `f(oy, tap, lo, hi, x0)` for every tap and output row whose window row is inside
/// the image: output columns `lo..hi` read input `x0 + (ox - lo)·sw` of plane row `iy`.
fn for_rows(g: &Geom, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let [sh, sw, pt, pl, _, _] = g.p;
    for kj in 0..g.kw {
        let (lo, hi) = cols(g, kj);
        if lo >= hi {
            continue;
        }
        for ki in 0..g.kh {
            for oy in 0..g.oh {
                let Some(iy) = input_at(oy, ki, sh, pt, g.h) else { continue };
                f(oy, ki * g.kw + kj, lo, hi, iy * g.w + lo * sw + kj - pl);
            }
        }
    }
}

/// `dst[i] += w · src[i·stride]` (AVX-512 / AVX2 builds via [`crate::simd_dispatch`]).
fn axpy(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
    #[inline(always)]
    fn body(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
        if stride == 1 {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d += w * v);
        } else {
            dst.iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, &v)| *d += w * v);
        }
    }
    crate::simd_dispatch!(body(dst: &mut [f32], src: &[f32], w: f32, stride: usize) -> ())
}

/// `dst[i·stride] += w · src[i]`.
fn axpy_scatter(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
    #[inline(always)]
    fn body(dst: &mut [f32], src: &[f32], w: f32, stride: usize) {
        if stride == 1 {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d += w * v);
        } else {
            dst.iter_mut().step_by(stride).zip(src).for_each(|(d, &v)| *d += w * v);
        }
    }
    crate::simd_dispatch!(body(dst: &mut [f32], src: &[f32], w: f32, stride: usize) -> ())
}

/// `Σ a[i·stride] · b[i]`, eight partial sums.
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    #[inline(always)]
    fn body(a: &[f32], b: &[f32], stride: usize) -> f32 {
        let mut acc = [0f32; 8];
        if stride == 1 {
            let (ac, bc) = (a[..b.len()].chunks_exact(8), b.chunks_exact(8));
            let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| x * y).sum();
            for (x, y) in ac.zip(bc) {
                for k in 0..8 {
                    acc[k] += x[k] * y[k];
                }
            }
            acc.iter().sum::<f32>() + tail
        } else {
            a.iter().step_by(stride).zip(b).map(|(&x, &y)| x * y).sum()
        }
    }
    crate::simd_dispatch!(body(a: &[f32], b: &[f32], stride: usize) -> f32)
}

fn forward(x: &FlexTensor, w: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (x, w) = (f32_data(x, "input"), f32_data(w, "weight"));
    let g = geom(x.layout().shape(), w.layout().shape(), p);
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), w.storage());
    let (taps, hw, pix, sw) = (g.kh * g.kw, g.h * g.w, g.pix(), g.p[1]);
    let y = crate::par_build(g.n * g.c * pix, pix, |plane, out| {
        let c = plane % g.c;
        let (xp, wc) = (&xs[plane * hw..(plane + 1) * hw], &ws[c * taps..(c + 1) * taps]);
        for_rows(&g, |oy, t, lo, hi, x0| {
            axpy(&mut out[oy * g.ow + lo..oy * g.ow + hi], &xp[x0..], wc[t], sw);
        });
    });
    flex(y, [g.n, g.c, g.oh, g.ow])
}

fn input_grad(xs: &[usize], w: &FlexTensor, dy: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (w, dy) = (f32_data(w, "weight"), f32_data(dy, "output gradient"));
    let g = geom(xs, w.layout().shape(), p);
    let (ws, dys): (&[f32], &[f32]) = (w.storage(), dy.storage());
    let (taps, hw, pix, sw) = (g.kh * g.kw, g.h * g.w, g.pix(), g.p[1]);
    let dx = crate::par_build(g.n * g.c * hw, hw, |plane, out| {
        let c = plane % g.c;
        let (d, wc) = (&dys[plane * pix..(plane + 1) * pix], &ws[c * taps..(c + 1) * taps]);
        for_rows(&g, |oy, t, lo, hi, x0| {
            let len = (hi - lo - 1) * sw + 1;
            axpy_scatter(&mut out[x0..x0 + len], &d[oy * g.ow + lo..oy * g.ow + hi], wc[t], sw);
        });
    });
    flex(dx, [g.n, g.c, g.h, g.w])
}

fn weight_grad(x: &FlexTensor, ws: &[usize], dy: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (x, dy) = (f32_data(x, "input"), f32_data(dy, "output gradient"));
    let g = geom(x.layout().shape(), ws, p);
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), dy.storage());
    let (taps, hw, pix, sw) = (g.kh * g.kw, g.h * g.w, g.pix(), g.p[1]);
    let per: Vec<Vec<f32>> = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let mut sums = vec![0f64; taps];
            for n in 0..g.n {
                let plane = n * g.c + c;
                let (xp, d) = (&xs[plane * hw..(plane + 1) * hw], &dys[plane * pix..(plane + 1) * pix]);
                for_rows(&g, |oy, t, lo, hi, x0| {
                    sums[t] += dot(&xp[x0..], &d[oy * g.ow + lo..oy * g.ow + hi], sw) as f64;
                });
            }
            sums.into_iter().map(|v| v as f32).collect()
        })
        .collect();
    flex(per.concat(), [g.c, 1, g.kh, g.kw])
}

crate::conv::float_conv_op!(LbConvDw, lb_conv2d_dw, DwBackward, forward, input_grad, weight_grad);

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    fn close(a: &[f32], b: &[f32], what: &str) {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: lowbit {x}, burn {y}");
        }
    }

    /// Forward and both gradients against burn's grouped convolution on random shapes: strides
    /// 1-3, asymmetric padding (including none and more than the kernel reaches), odd sizes.
    #[test]
    fn matches_burn_grouped_conv_and_gradients() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(5);
        for case in 0..40 {
            let (n, c) = (1 + rng.below(3), 2 + rng.below(7));
            let (kh, kw) = (1 + rng.below(4), 1 + rng.below(4));
            let (sh, sw) = (1 + rng.below(3), 1 + rng.below(3));
            let pads = [rng.below(kh + 1), rng.below(kw + 1), rng.below(kh + 1), rng.below(kw + 1)];
            let (h, w) = (kh + rng.below(9), kw + rng.below(9));
            let x: Vec<f32> = (0..n * c * h * w).map(|_| rng.normal()).collect();
            let wt: Vec<f32> = (0..c * kh * kw).map(|_| rng.normal()).collect();
            let mk =
                |v: &[f32], s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), s), &dev).require_grad();
            let (xa, wa) = (mk(&x, [n, c, h, w]), mk(&wt, [c, 1, kh, kw]));
            let (xb, wb) = (mk(&x, [n, c, h, w]), mk(&wt, [c, 1, kh, kw]));
            let p = [sh, sw, pads[0], pads[1], pads[2], pads[3]];
            let ya = conv2d_dw(xa.clone(), wa.clone(), p);
            let o = ConvOptions {
                stride: [sh, sw],
                padding: [(pads[0], pads[2]), (pads[1], pads[3])],
                dilation: [1, 1],
                groups: c,
            };
            let yb = burn::tensor::module::conv2d(xb.clone(), wb.clone(), None, o);
            assert_eq!(ya.dims(), yb.dims(), "case {case}");
            let m: Vec<f32> = (0..ya.dims().iter().product()).map(|_| rng.normal()).collect();
            let mt = Tensor::<4>::from_data(TensorData::new(m, ya.dims()), &dev);
            let host = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            close(&host(ya.clone()), &host(yb.clone()), &format!("case {case} forward"));
            let (ga, gb) = ((ya * mt.clone()).sum().backward(), (yb * mt).sum().backward());
            let g = |t: &Tensor<4>, gr| host(Tensor::from_inner(t.grad(gr).unwrap()));
            close(&g(&xa, &ga), &g(&xb, &gb), &format!("case {case} input gradient"));
            close(&g(&wa, &ga), &g(&wb, &gb), &format!("case {case} weight gradient"));
        }
    }
}
