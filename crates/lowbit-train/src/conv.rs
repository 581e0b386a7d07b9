//! Convolution for training: lowbit's own im2col + GEMM forward and backward, registered with
//! burn's autodiff as one differentiable operation through a backend extension.
//!
//! burn-flex's convolution spends most of a training step moving data (a scalar im2col per
//! output position, layout transposes) and computes the input gradient as a direct-loop
//! transposed convolution. Here, per image:
//! - forward: `Y = W · im2col(X)` (`W`: `O × K`, `K = C·kh·kw`, the columns `K × P`, `P = oh·ow`);
//! - input gradient: `dX = col2im(Wᵀ · dY)`;
//! - weight gradient: `dWᵀ = Σ im2col(X) · dYᵀ`,
//!
//! all on `lowbit_kernels`' f32 GEMM, images in parallel on the rayon pool. Stride-1 convolutions
//! run the forward pass and the input gradient (a stride-1 convolution of `dY` with the flipped
//! kernel) through lowbit's inference convolution instead, whose shifted-rows path needs no im2col. Bias and activation
//! stay ordinary burn operations. Grouped and dilated convolutions keep burn's `conv2d` (the model runs depthwise ones
//! on [`crate::conv_dw`]).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;
use lowbit_core::Act;
use lowbit_kernels::fp32::conv::{self as f32conv, PackedConv};
use lowbit_kernels::fp32::gemm as f32gemm;
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::isa::{F32Isa, Paths};

/// The f32 path training's kernels run on (`LOWBIT_ISA`, else the best this CPU has).
pub(crate) fn f32_path() -> F32Isa {
    Paths::selected_or_scalar().f32
}

/// [`f32gemm::sgemm_bias_act`] on [`f32_path`].
#[allow(clippy::too_many_arguments)]
fn sgemm_bias_act(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    bias: &[f32],
    act: Act,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    f32gemm::sgemm_bias_act(f32_path(), m, n, k, a, lda, b, ldb, bias, act, c, ldc, threads)
}
use rayon::prelude::*;

/// `[stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right]`.
pub type ConvParams = [usize; 6];

#[backend_extension(Flex, Autodiff)]
pub trait LbConv: Backend {
    /// `x`: `N × C × H × W`, `w`: `O × C × kh × kw`; no bias, no groups, no dilation.
    fn lb_conv2d(x: FloatTensor<Self>, w: FloatTensor<Self>, p: ConvParams) -> FloatTensor<Self>;
}

/// A 2-D convolution: lowbit's kernels when the convolution has one group and no dilation,
/// burn's `conv2d` otherwise.
pub fn conv2d(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, o: ConvOptions<2>) -> Tensor<4> {
    if o.groups != 1 || o.dilation != [1, 1] || burn_ops("conv") {
        return burn::tensor::module::conv2d(x, w, b, o);
    }
    let p = params(&o);
    let y = Tensor::<4>::from_dispatch(<Dispatch as LbConv>::lb_conv2d(x.into_dispatch(), w.into_dispatch(), p));
    match b {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// `LOWBIT_BURN_OPS=conv,bn,dsq,fq,relu,clip,sign` (or `all`): the listed operations through burn's own tensor
/// operations instead of lowbit's (to compare speed, or to rule lowbit's out when debugging).
/// `o`'s strides and paddings as [`ConvParams`].
pub fn params(o: &ConvOptions<2>) -> ConvParams {
    [o.stride[0], o.stride[1], o.padding[0].0, o.padding[1].0, o.padding[0].1, o.padding[1].1]
}

pub fn burn_ops(op: &str) -> bool {
    static LIST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let list = LIST.get_or_init(|| std::env::var("LOWBIT_BURN_OPS").unwrap_or_default());
    list.split(',').any(|x| x.trim() == op || x.trim() == "all")
}

/// The shapes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) p: ConvParams,
}

impl Geom {
    pub(crate) fn new(xs: &[usize], ws: &[usize], p: ConvParams) -> Geom {
        assert!(xs.len() == 4 && ws.len() == 4 && xs[1] == ws[1], "conv2d: input {xs:?} and weight {ws:?} disagree");
        let [sh, sw, pt, pl, pb, pr] = p;
        let (h, w, kh, kw) = (xs[2], xs[3], ws[2], ws[3]);
        assert!(sh > 0 && sw > 0 && h + pt + pb >= kh && w + pl + pr >= kw, "conv2d: kernel larger than padded input");
        Geom {
            n: xs[0],
            c: xs[1],
            h,
            w,
            o: ws[0],
            kh,
            kw,
            oh: (h + pt + pb - kh) / sh + 1,
            ow: (w + pl + pr - kw) / sw + 1,
            p,
        }
    }
    pub(crate) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub(crate) fn pix(&self) -> usize {
        self.oh * self.ow
    }
    pub(crate) fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    /// A 1x1, stride-1, unpadded convolution: the image itself is its column matrix.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p == [1, 1, 0, 0, 0, 0]
    }
    /// A stride-1 convolution with a window and padding smaller than it on every side: the
    /// forward pass and the input gradient run on a padded copy of their input, whose shifted
    /// views are the column matrix's rows ("shifted rows"; no im2col, no col2im).
    pub(crate) fn shifted(&self) -> bool {
        let [sh, sw, pt, pl, pb, pr] = self.p;
        !self.pointwise() && sh == 1 && sw == 1 && pt < self.kh && pb < self.kh && pl < self.kw && pr < self.kw
    }
    /// For output column `x` of row `ki/kj` tap `kj`: the input column, if inside the image.
    #[inline]
    pub(crate) fn in_col(&self, ox: usize, kj: usize) -> Option<usize> {
        (ox * self.p[1] + kj).checked_sub(self.p[3]).filter(|&x| x < self.w)
    }
    #[inline]
    pub(crate) fn in_row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.p[0] + ki).checked_sub(self.p[2]).filter(|&y| y < self.h)
    }
    /// The output columns whose input column for tap `kj` lies inside the image: `lo..hi`.
    pub(crate) fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let lo = (0..self.ow).find(|&x| self.in_col(x, kj).is_some()).unwrap_or(self.ow);
        let hi = (lo..self.ow).rev().find(|&x| self.in_col(x, kj).is_some()).map_or(lo, |x| x + 1);
        (lo, hi)
    }
}

/// `col[(c·kh + ki)·kw + kj][y·ow + x] = img[c][y·s + ki - pt][x·s + kj - pl]` (0 outside).
fn im2col(g: &Geom, img: &[f32], col: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if f32_path() == F32Isa::Avx512 {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::im2col(g, img, col) };
    }
    im2col_with(g, img, col, |d, s| d.copy_from_slice(s))
}

/// The adjoint of [`im2col`]: `img` (zeroed by the caller) accumulates every column entry.
fn col2im(g: &Geom, col: &[f32], img: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if f32_path() == F32Isa::Avx512 {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::col2im(g, col, img) };
    }
    col2im_body(g, col, img)
}

/// [`im2col`] with `copy` moving one stride-1 row segment (a short copy: 28 floats on 28x28).
#[inline(always)]
fn im2col_with(g: &Geom, img: &[f32], col: &mut [f32], copy: impl Fn(&mut [f32], &[f32])) {
    im2col_rows(g, img, col, g.pix(), 0.0, copy)
}

/// The column matrix of one image of any element type: row `(c, ki, kj)` (`ld` elements apart)
/// holds, for each output pixel, the input value that tap reads, `pad` where it reads padding;
/// `copy` moves one stride-1 row segment. Shared by the f32 columns and the int8 training's byte
/// columns.
#[inline(always)]
pub(crate) fn im2col_rows<T: Copy>(
    g: &Geom,
    img: &[T],
    col: &mut [T],
    ld: usize,
    pad: T,
    copy: impl Fn(&mut [T], &[T]),
) {
    let sw = g.p[1];
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &mut col[((c * g.kh + ki) * g.kw + kj) * ld..][..g.pix()];
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    let Some(iy) = g.in_row(oy, ki) else {
                        out.fill(pad);
                        continue;
                    };
                    out[..lo].fill(pad);
                    out[hi..].fill(pad);
                    let src = &img[(c * g.h + iy) * g.w..][..g.w];
                    if lo < hi {
                        let x0 = lo * sw + kj - g.p[3];
                        if sw == 1 {
                            copy(&mut out[lo..hi], &src[x0..x0 + hi - lo]);
                        } else {
                            for (j, o) in out[lo..hi].iter_mut().enumerate() {
                                *o = src[x0 + j * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn col2im_body(g: &Geom, col: &[f32], img: &mut [f32]) {
    let (pix, sw) = (g.pix(), g.p[1]);
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &col[((c * g.kh + ki) * g.kw + kj) * pix..][..pix];
                let (lo, hi) = g.valid_cols(kj);
                if lo >= hi {
                    continue;
                }
                let x0 = lo * sw + kj - g.p[3];
                for oy in 0..g.oh {
                    let Some(iy) = g.in_row(oy, ki) else { continue };
                    let dst = &mut img[(c * g.h + iy) * g.w..][..g.w];
                    let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                    if sw == 1 {
                        dst[x0..x0 + hi - lo].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    } else {
                        for (j, v) in src.iter().enumerate() {
                            dst[x0 + j * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The same loops compiled for AVX-512 (16-wide adds; short copies as masked vector moves
/// instead of `memmove` calls).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{col2im_body, im2col_with, Geom};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn im2col(g: &Geom, img: &[f32], col: &mut [f32]) {
        im2col_with(g, img, col, |d, s| {
            let n = d.len().min(s.len());
            let (dp, sp) = (d.as_mut_ptr(), s.as_ptr());
            let mut i = 0;
            while i < n {
                let m: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
                // SAFETY: lanes past `n` are masked off; AVX-512F is enabled for this function.
                unsafe { _mm512_mask_storeu_ps(dp.add(i), m, _mm512_maskz_loadu_ps(m, sp.add(i))) };
                i += 16;
            }
        })
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn col2im(g: &Geom, col: &[f32], img: &mut [f32]) {
        col2im_body(g, col, img)
    }
}

pub(crate) fn f32_data(t: &FlexTensor, what: &str) -> FlexTensor {
    assert_eq!(t.dtype(), burn::tensor::DType::F32, "conv2d: {what} must be f32");
    t.to_contiguous()
}

pub(crate) fn flex(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// `n` images of `src` through lowbit's inference convolution ([`f32conv::conv2d`]: at stride 1
/// its shifted-rows path, without im2col), the weights packed once, images in parallel.
fn conv_images(geom: ConvGeom, weight: Vec<f32>, src: &[f32], n: usize) -> Vec<f32> {
    let (in_len, out_len) = (geom.c_in * geom.h * geom.w, geom.c_out * geom.oh * geom.ow);
    let p = PackedConv::new(f32_path(), geom, weight, None, Act::None);
    let scratch = p.scratch_len();
    crate::par_build_init(
        n * out_len,
        out_len,
        || vec![0f32; scratch],
        |s, i, out| f32conv::conv2d(&p, &src[i * in_len..(i + 1) * in_len], out, s, 1),
    )
}

/// A stride-1, undilated, ungrouped convolution of `c_in × h × w` into `c_out × oh × ow`.
#[allow(clippy::too_many_arguments)]
fn stride1(
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
) -> ConvGeom {
    ConvGeom { c_in, h, w, c_out, kh, kw, sh: 1, sw: 1, dh: 1, dw: 1, pt, pl, oh, ow, group: 1 }
}

/// Stride-1 forward: the inference convolution on each image.
fn forward_shifted(g: &Geom, xs: &[f32], ws: &[f32]) -> Vec<f32> {
    let geom = stride1(g.c, g.h, g.w, g.o, g.kh, g.kw, g.p[2], g.p[3], g.oh, g.ow);
    conv_images(geom, ws.to_vec(), xs, g.n)
}

/// Stride-1 input gradient: the full correlation of `dY` (padded by `kernel - 1 - pad`) with the
/// flipped kernel, `dX[c][y][x] = Σ_{o,i,j} W[o][c][kh-1-i][kw-1-j] · dYpad[o][y+i][x+j]`.
fn input_grad_shifted(g: &Geom, ws: &[f32], dys: &[f32]) -> Vec<f32> {
    let [_, _, pt, pl, _, _] = g.p;
    let kk = g.o * g.kh * g.kw;
    let mut wf = vec![0f32; g.c * kk];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    wf[c * kk + (o * g.kh + i) * g.kw + j] =
                        ws[((o * g.c + c) * g.kh + g.kh - 1 - i) * g.kw + g.kw - 1 - j];
                }
            }
        }
    }
    // dY padded by `kernel - 1 - pad` on the top and left; its padded plane is the input's plus
    // the kernel, so the convolution's output is the input's size.
    let geom = stride1(g.o, g.oh, g.ow, g.c, g.kh, g.kw, g.kh - 1 - pt, g.kw - 1 - pl, g.h, g.w);
    conv_images(geom, wf, dys, g.n)
}

fn forward(x: &FlexTensor, w: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (x, w) = (f32_data(x, "input"), f32_data(w, "weight"));
    let g = Geom::new(x.layout().shape(), w.layout().shape(), p);
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), w.storage());
    let (k, pix) = (g.k(), g.pix());
    if g.shifted() {
        return flex(forward_shifted(&g, xs, ws), [g.n, g.o, g.oh, g.ow]);
    }
    let zero = vec![0f32; g.o];
    let y = crate::par_build_init(g.n * g.o * pix, g.o * pix, Vec::new, |col: &mut Vec<f32>, i, yi| {
        let img = &xs[i * g.chw()..(i + 1) * g.chw()];
        let b: &[f32] = if g.pointwise() {
            img
        } else {
            col.resize(k * pix, 0.0);
            im2col(&g, img, col);
            col
        };
        sgemm_bias_act(g.o, pix, k, ws, k, b, pix, &zero, Act::None, yi, pix, 1);
    });
    flex(y, [g.n, g.o, g.oh, g.ow])
}

/// `dX = col2im(Wᵀ · dY)` per image.
pub(crate) fn input_grad(x_shape: &[usize], w: &FlexTensor, dy: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (w, dy) = (f32_data(w, "weight"), f32_data(dy, "output gradient"));
    let g = Geom::new(x_shape, w.layout().shape(), p);
    let (ws, dys): (&[f32], &[f32]) = (w.storage(), dy.storage());
    if g.shifted() {
        return flex(input_grad_shifted(&g, ws, dys), [g.n, g.c, g.h, g.w]);
    }
    let (k, pix) = (g.k(), g.pix());
    let mut wt = vec![0f32; k * g.o];
    lowbit_kernels::fp32::layout::transpose(ws, g.o, k, &mut wt);
    let zero = vec![0f32; k];
    let dx = crate::par_build_init(g.n * g.chw(), g.chw(), Vec::new, |col: &mut Vec<f32>, i, dxi| {
        let dyi = &dys[i * g.o * pix..(i + 1) * g.o * pix];
        if g.pointwise() {
            sgemm_bias_act(k, pix, g.o, &wt, g.o, dyi, pix, &zero, Act::None, dxi, pix, 1);
            return;
        }
        col.resize(k * pix, 0.0);
        sgemm_bias_act(k, pix, g.o, &wt, g.o, dyi, pix, &zero, Act::None, col, pix, 1);
        col2im(&g, col, dxi);
    });
    flex(dx, [g.n, g.c, g.h, g.w])
}

/// `dWᵀ = Σ_images im2col(X) · dYᵀ`, images split over the pool, partial sums added.
fn weight_grad(x: &FlexTensor, w_shape: &[usize], dy: &FlexTensor, p: ConvParams) -> FlexTensor {
    let (x, dy) = (f32_data(x, "input"), f32_data(dy, "output gradient"));
    let g = Geom::new(x.layout().shape(), w_shape, p);
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), dy.storage());
    let (k, pix, o) = (g.k(), g.pix(), g.o);
    let zero = vec![0f32; k];
    let parts = rayon::current_num_threads().max(1);
    let per = g.n.div_ceil(parts).max(1);
    let dwt = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|part| {
            let (mut acc, mut tmp) = (vec![0f32; k * o], vec![0f32; k * o]);
            let (mut col, mut dyt) = (vec![0f32; if g.pointwise() { 0 } else { k * pix }], vec![0f32; pix * o]);
            for i in part * per..((part + 1) * per).min(g.n) {
                let dyi = &dys[i * o * pix..(i + 1) * o * pix];
                lowbit_kernels::fp32::layout::transpose(dyi, o, pix, &mut dyt);
                let img = &xs[i * g.chw()..(i + 1) * g.chw()];
                let a: &[f32] = if g.pointwise() {
                    img
                } else {
                    im2col(&g, img, &mut col);
                    &col
                };
                sgemm_bias_act(k, o, pix, a, pix, &dyt, o, &zero, Act::None, &mut tmp, o, 1);
                acc.iter_mut().zip(&tmp).for_each(|(s, t)| *s += t);
            }
            acc
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(s, t)| *s += t);
            a
        })
        .unwrap_or_else(|| vec![0f32; k * o]);
    let mut dw = vec![0f32; o * k];
    lowbit_kernels::fp32::layout::transpose(&dwt, k, o, &mut dw);
    flex(dw, [o, g.c, g.kh, g.kw])
}

/// Registers a float convolution with burn: the backend extension method `$method` of `$ext` runs
/// `$forward(&x, &w, p)` on Flex, and under autodiff keeps `x`, `w` and `p` for the backward pass,
/// which registers `$input_grad(x_shape, &w, &dy, p)` and `$weight_grad(&x, w_shape, &dy, p)`
/// for whichever input needs a gradient. The caller has burn's autodiff names in scope (as here).
macro_rules! float_conv_op {
    ($ext:ident, $method:ident, $backward:ident, $forward:path, $input_grad:path, $weight_grad:path) => {
        impl $ext for Flex {
            fn $method(x: FlexTensor, w: FlexTensor, p: ConvParams) -> FlexTensor {
                $forward(&x, &w, p)
            }
        }

        #[derive(Debug)]
        struct $backward;

        impl Backward<Flex, 2> for $backward {
            type State = (FlexTensor, FlexTensor, ConvParams);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let dy = grads.consume::<Flex>(&ops.node);
                let (x, w, p) = ops.state;
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, $input_grad(x.layout().shape(), &w, &dy, p));
                }
                if let Some(node) = node_w {
                    grads.register::<Flex>(node.id, $weight_grad(&x, w.layout().shape(), &dy, p));
                }
            }
        }

        impl<C: CheckpointStrategy> $ext for Autodiff<Flex, C> {
            fn $method(x: FloatTensor<Self>, w: FloatTensor<Self>, p: ConvParams) -> FloatTensor<Self> {
                match $backward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
                    OpsKind::Tracked(prep) => {
                        let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
                        let y = $forward(&xp, &wp, p);
                        prep.finish((xp, wp, p), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish($forward(x.primitive(), w.primitive(), p)),
                }
            }
        }
    };
}
pub(crate) use float_conv_op;

float_conv_op!(LbConv, lb_conv2d, ConvBackward, forward, input_grad, weight_grad);

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn rand(rng: &mut crate::Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn close(a: &Tensor<4>, b: &Tensor<4>, what: &str) {
        let (a, b) = (a.to_data().try_to_vec::<f32>().unwrap(), b.to_data().try_to_vec::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: lowbit {x}, burn {y}");
        }
    }

    /// The AVX-512 column loops against the portable ones, bit for bit, on ragged geometries.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_columns_match_portable() {
        if !lowbit_kernels::isa::features().avx512f {
            return;
        }
        let mut rng = crate::Rng::new(3);
        for _ in 0..40 {
            let (c, h, w, o) = (1 + rng.below(4), 1 + rng.below(40), 1 + rng.below(40), 1);
            let k = [1, 3, 5][rng.below(3)];
            let s = 1 + rng.below(2);
            let p = [s, s, rng.below(k), rng.below(k), rng.below(k), rng.below(k)];
            if h + p[2] + p[4] < k || w + p[3] + p[5] < k {
                continue;
            }
            let g = Geom::new(&[1, c, h, w], &[o, c, k, k], p);
            let img = rand(&mut rng, g.chw());
            let (mut a, mut b) = (vec![1f32; g.k() * g.pix()], vec![2f32; g.k() * g.pix()]);
            im2col_with(&g, &img, &mut a, |d, s| d.copy_from_slice(s));
            // SAFETY: AVX-512F was detected above.
            unsafe { avx512::im2col(&g, &img, &mut b) };
            assert_eq!(a, b, "im2col {g:?}");
            let col = rand(&mut rng, g.k() * g.pix());
            let (mut a, mut b) = (vec![0f32; g.chw()], vec![0f32; g.chw()]);
            col2im_body(&g, &col, &mut a);
            // SAFETY: as above.
            unsafe { avx512::col2im(&g, &col, &mut b) };
            assert_eq!(a, b, "col2im {g:?}");
        }
    }

    /// Forward, input and weight gradients against burn's own conv2d on random geometries,
    /// padding and strides that leave ragged edges included.
    #[test]
    fn matches_burn_conv_and_gradients() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(7);
        let cases = [
            // n, c, h, w, o, k, stride, pads (t, l, b, r)
            (2, 3, 9, 7, 5, 3, 1, [1, 1, 1, 1]),
            (3, 4, 8, 8, 6, 3, 2, [1, 1, 1, 1]),
            (2, 5, 7, 6, 4, 1, 1, [0, 0, 0, 0]),
            (2, 5, 7, 6, 4, 1, 2, [0, 0, 0, 0]),
            (1, 2, 6, 9, 3, 5, 2, [2, 1, 0, 2]),
            (2, 3, 5, 5, 7, 3, 1, [0, 0, 0, 0]),
            // Stride 1, asymmetric padding (shifted rows); padding as wide as the kernel (im2col).
            (2, 3, 8, 7, 4, 5, 1, [2, 1, 0, 4]),
            (2, 2, 6, 5, 3, 3, 1, [0, 2, 1, 0]),
            (2, 3, 5, 6, 4, 1, 1, [1, 0, 0, 1]),
            (1, 2, 4, 5, 3, 3, 1, [3, 1, 1, 1]),
        ];
        for (n, c, h, w, o, k, s, pads) in cases {
            let xs = rand(&mut rng, n * c * h * w);
            let wv = rand(&mut rng, o * c * k * k);
            let bv = rand(&mut rng, o);
            let opts = ConvOptions {
                stride: [s, s],
                padding: [(pads[0], pads[2]), (pads[1], pads[3])],
                dilation: [1, 1],
                groups: 1,
            };
            let run = |ours: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [n, c, h, w]), &dev).require_grad();
                let wt = Tensor::<4>::from_data(TensorData::new(wv.clone(), [o, c, k, k]), &dev).require_grad();
                let b = Tensor::<1>::from_data(TensorData::new(bv.clone(), [o]), &dev).require_grad();
                let y = if ours {
                    conv2d(x.clone(), wt.clone(), Some(b.clone()), opts.clone())
                } else {
                    burn::tensor::module::conv2d(x.clone(), wt.clone(), Some(b.clone()), opts.clone())
                };
                // A weighted sum, so every output position carries a different gradient.
                let dims = y.dims();
                let m = Tensor::<4>::from_data(
                    TensorData::new((0..dims.iter().product::<usize>()).map(|i| (i % 7) as f32 - 3.0).collect(), dims),
                    &dev,
                );
                let grads = (y.clone() * m).sum().backward();
                (y.detach(), x.grad(&grads).unwrap(), wt.grad(&grads).unwrap())
            };
            let (y1, dx1, dw1) = run(true);
            let (y0, dx0, dw0) = run(false);
            let what = format!("n{n} c{c} {h}x{w} o{o} k{k} s{s} pads{pads:?}");
            close(&y1, &y0, &format!("{what} output"));
            close(&dx1, &dx0, &format!("{what} input gradient"));
            close(&dw1, &dw0, &format!("{what} weight gradient"));
        }
    }
}
