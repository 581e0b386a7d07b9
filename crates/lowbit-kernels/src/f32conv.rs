//! Fast f32 convolution in NCHW: pointwise convolutions go straight to GEMM, general ones through
//! im2col + GEMM (the `gemm` crate's AVX-512/AVX2 kernels), depthwise ones through a direct
//! row-wise kernel compiled for AVX-512, AVX2 and portable code and chosen at run time.
//! Bias and the fused activation are applied in the epilogue.

use gemm::Parallelism;
use lowbit_core::Act;
use rayon::prelude::*;

/// Shape and window of one 2-D convolution (one image).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeom {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
    pub group: usize,
}

impl ConvGeom {
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.group == 1
    }
    pub fn is_depthwise(&self) -> bool {
        self.group == self.c_in && self.group == self.c_out && self.group > 1
    }
    /// Rows of the im2col matrix (reduction length) per group.
    pub fn k(&self) -> usize {
        self.c_in / self.group * self.kh * self.kw
    }
    /// f32 elements of scratch space `conv2d` needs.
    pub fn scratch_len(&self) -> usize {
        if self.is_pointwise() || self.is_depthwise() {
            0
        } else {
            self.k() * self.oh * self.ow
        }
    }
    /// Multiply-accumulates per image.
    pub fn macs(&self) -> usize {
        self.c_out * self.oh * self.ow * self.k()
    }
}

/// A convolution with its weights laid out for the kernel (done once, at plan time).
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub geom: ConvGeom,
    /// `[c_out, c_in/group * kh * kw]`, row-major (ONNX order already fits).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Act,
}

impl PackedConv {
    pub fn new(geom: ConvGeom, weight: Vec<f32>, bias: Option<Vec<f32>>, act: Act) -> PackedConv {
        assert_eq!(
            weight.len(),
            geom.c_out * geom.k(),
            "weight size does not fit the geometry"
        );
        let bias = bias.unwrap_or_else(|| vec![0.0; geom.c_out]);
        PackedConv {
            geom,
            weight,
            bias,
            act,
        }
    }
}

fn par(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst[m×n] = dst + lhs[m×k] · rhs[k×n]`, all row-major with the given row strides.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    threads: usize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        true,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par(threads),
    );
}

/// Convolves one image `x` (`[c_in, h, w]`) into `out` (`[c_out, oh, ow]`).
pub fn conv2d(p: &PackedConv, x: &[f32], out: &mut [f32], scratch: &mut [f32], threads: usize) {
    let g = &p.geom;
    let hw_out = g.oh * g.ow;
    assert!(x.len() >= g.c_in * g.h * g.w && out.len() >= g.c_out * hw_out);
    if g.is_depthwise() {
        depthwise(p, x, out, threads);
        return;
    }
    // Prefill with bias, GEMM accumulates into it.
    for (o, row) in out.chunks_mut(hw_out).take(g.c_out).enumerate() {
        row.fill(p.bias[o]);
    }
    let k = g.k();
    let cog = g.c_out / g.group;
    let cig = g.c_in / g.group;
    for gi in 0..g.group {
        let xg = &x[gi * cig * g.h * g.w..(gi + 1) * cig * g.h * g.w];
        let rhs: &[f32] = if g.is_pointwise() {
            xg
        } else {
            let col = &mut scratch[..k * hw_out];
            im2col(g, xg, col, threads);
            col
        };
        let w = &p.weight[gi * cog * k..(gi + 1) * cog * k];
        let dst = &mut out[gi * cog * hw_out..(gi + 1) * cog * hw_out];
        // SAFETY: slices cover m×k, k×n and m×n row-major.
        unsafe {
            sgemm_acc(
                cog,
                hw_out,
                k,
                dst.as_mut_ptr(),
                hw_out,
                w.as_ptr(),
                k,
                rhs.as_ptr(),
                hw_out,
                threads,
            )
        };
    }
    if !p.act.is_none() {
        crate::eltwise::apply_act(p.act, &mut out[..g.c_out * hw_out]);
    }
}

/// Output positions `ox` whose input column `ox*s + off - pad` lies inside `[0, len)`.
#[inline(always)]
pub(crate) fn valid_range(
    out_len: usize,
    stride: usize,
    off: usize,
    pad: usize,
    len: usize,
) -> (usize, usize) {
    // need ox*s + off >= pad  and  ox*s + off - pad < len
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(stride)
    };
    let hi = if len + pad > off {
        ((len + pad - off - 1) / stride + 1).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32], threads: usize) {
    let hw_out = g.oh * g.ow;
    let row = |r: usize, dst: &mut [f32]| {
        let kx = r % g.kw;
        let ky = (r / g.kw) % g.kh;
        let c = r / (g.kw * g.kh);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (xlo, xhi) = valid_range(g.ow, g.sw, kx * g.dw, g.pl, g.w);
        for oy in 0..g.oh {
            let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
            let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
            if iy < 0 || iy >= g.h as isize {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            d[..xlo].fill(0.0);
            d[xhi..].fill(0.0);
            let base = xlo * g.sw + kx * g.dw - g.pl;
            if g.sw == 1 {
                d[xlo..xhi].copy_from_slice(&src[base..base + (xhi - xlo)]);
            } else {
                for (i, v) in d[xlo..xhi].iter_mut().enumerate() {
                    *v = src[base + i * g.sw];
                }
            }
        }
    };
    if threads > 1 {
        col.par_chunks_mut(hw_out)
            .enumerate()
            .for_each(|(r, d)| row(r, d));
    } else {
        col.chunks_mut(hw_out)
            .enumerate()
            .for_each(|(r, d)| row(r, d));
    }
}

#[inline(always)]
fn dw_channel_impl(g: &ConvGeom, plane: &[f32], w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    for oy in 0..g.oh {
        let orow = &mut out[oy * g.ow..(oy + 1) * g.ow];
        orow.fill(bias);
        for ky in 0..g.kh {
            let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            for kx in 0..g.kw {
                let wv = w[ky * g.kw + kx];
                let (lo, hi) = valid_range(g.ow, g.sw, kx * g.dw, g.pl, g.w);
                if lo >= hi {
                    continue;
                }
                let base = lo * g.sw + kx * g.dw - g.pl;
                let o = &mut orow[lo..hi];
                if g.sw == 1 {
                    for (a, &b) in o.iter_mut().zip(&src[base..base + (hi - lo)]) {
                        *a += wv * b;
                    }
                } else if g.sw == 2 {
                    let s = &src[base..];
                    for (i, a) in o.iter_mut().enumerate() {
                        *a += wv * s[2 * i];
                    }
                } else {
                    for (i, a) in o.iter_mut().enumerate() {
                        *a += wv * src[base + i * g.sw];
                    }
                }
            }
        }
        if !act.is_none() {
            for v in orow.iter_mut() {
                *v = act.apply(*v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dw_channel_avx512(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    act: Act,
    out: &mut [f32],
) {
    dw_channel_impl(g, plane, w, bias, act, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_channel_avx2(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    act: Act,
    out: &mut [f32],
) {
    dw_channel_impl(g, plane, w, bias, act, out)
}

fn dw_channel(g: &ConvGeom, plane: &[f32], w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dw_channel_avx512(g, plane, w, bias, act, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { dw_channel_avx2(g, plane, w, bias, act, out) };
        }
    }
    dw_channel_impl(g, plane, w, bias, act, out)
}

fn depthwise(p: &PackedConv, x: &[f32], out: &mut [f32], threads: usize) {
    let g = &p.geom;
    let (ip, op, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let job = |c: usize, o: &mut [f32]| {
        dw_channel(
            g,
            &x[c * ip..(c + 1) * ip],
            &p.weight[c * kk..(c + 1) * kk],
            p.bias[c],
            p.act,
            o,
        )
    };
    if threads > 1 {
        out[..g.c_out * op]
            .par_chunks_mut(op)
            .enumerate()
            .for_each(|(c, o)| job(c, o));
    } else {
        out[..g.c_out * op]
            .chunks_mut(op)
            .enumerate()
            .for_each(|(c, o)| job(c, o));
    }
}

/// General strided f32 GEMM: `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` where element (i, j) of a matrix
/// lives at `ptr + i*rs + j*cs`. `accumulate == false` overwrites `dst`.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    accumulate: bool,
    threads: usize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        par(threads),
    );
}
