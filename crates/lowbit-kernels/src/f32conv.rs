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
            && self.oh == self.h
            && self.ow == self.w
            && self.group == 1
    }
    pub fn is_depthwise(&self) -> bool {
        self.group == self.c_in && self.group == self.c_out && self.group > 1
    }
    /// Rows of the im2col matrix (reduction length) per group.
    pub fn k(&self) -> usize {
        self.c_in / self.group * self.kh * self.kw
    }
    /// Stride-1 convolutions with a window run on the padded input directly ("shifted rows"),
    /// unless the channel-vector kernel takes them.
    pub fn is_shifted(&self) -> bool {
        !self.is_pointwise() && !self.is_depthwise() && self.sh == 1 && self.sw == 1 && !self.channel_vector()
    }
    /// Small planes (7x7) run on the channel-vector GEMM ([`crate::f32gemm::sgemm_t`]): vectors
    /// along the spatial axis would leave a quarter of their lanes empty.
    pub fn channel_vector(&self) -> bool {
        if self.group != 1 {
            return false;
        }
        let n = self.oh * self.ow;
        // Columns the spatial kernel computes: the padded row width on the shifted path.
        let cols = if !self.is_pointwise() && self.sh == 1 && self.sw == 1 {
            self.oh * (self.ow + (self.kw - 1) * self.dw)
        } else {
            n
        };
        crate::f32gemm::prefer_t(self.c_out, n, cols)
    }
    /// Padded input height and width for the shifted path.
    fn padded_hw(&self) -> (usize, usize) {
        (self.oh + (self.kh - 1) * self.dh, self.ow + (self.kw - 1) * self.dw)
    }
    /// f32 elements of scratch space `conv2d` needs.
    pub fn scratch_len(&self) -> usize {
        if self.is_pointwise() || self.is_depthwise() {
            0
        } else if self.is_shifted() {
            let (hp, wp) = self.padded_hw();
            self.c_in / self.group * hp * wp + (self.kw - 1) * self.dw + 16 + self.c_out / self.group * self.oh * wp
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
    /// `[c_out, c_in/group * kh * kw]`, row-major (ONNX order already fits); empty on the
    /// channel-vector path, which holds `wt` instead.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Act,
    /// Shifted path: start of each B row in the padded input.
    pub row_offsets: Vec<usize>,
    /// Channel-vector path: the weights transposed ([`crate::f32gemm::pack_t`]) and their row length.
    pub wt: Vec<f32>,
    pub mp: usize,
}

impl PackedConv {
    pub fn new(geom: ConvGeom, weight: Vec<f32>, bias: Option<Vec<f32>>, act: Act) -> PackedConv {
        assert_eq!(weight.len(), geom.c_out * geom.k(), "weight size does not fit the geometry");
        let bias = bias.unwrap_or_else(|| vec![0.0; geom.c_out]);
        let mut row_offsets = vec![];
        if geom.is_shifted() {
            let (hp, wp) = geom.padded_hw();
            for c in 0..geom.c_in / geom.group {
                for ky in 0..geom.kh {
                    for kx in 0..geom.kw {
                        row_offsets.push(c * hp * wp + ky * geom.dh * wp + kx * geom.dw);
                    }
                }
            }
        }
        // The channel-vector path keeps only the transposed copy.
        let (weight, wt, mp) = if geom.channel_vector() {
            let (wt, mp) = crate::f32gemm::pack_t(geom.c_out, geom.k(), &weight, geom.k());
            (vec![], wt, mp)
        } else {
            (weight, vec![], 0)
        };
        PackedConv { geom, weight, bias, act, row_offsets, wt, mp }
    }

    /// Packed for the channel-vector GEMM (decided once, by [`ConvGeom::channel_vector`])?
    pub fn channel_vector(&self) -> bool {
        self.mp > 0
    }

    /// Bytes of packed weights and biases held.
    pub fn weight_bytes(&self) -> usize {
        (self.weight.len() + self.wt.len() + self.bias.len()) * 4
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
    let k = g.k();
    let cog = g.c_out / g.group;
    let cig = g.c_in / g.group;
    for gi in 0..g.group {
        let xg = &x[gi * cig * g.h * g.w..(gi + 1) * cig * g.h * g.w];
        let w = if p.channel_vector() { &[][..] } else { &p.weight[gi * cog * k..(gi + 1) * cog * k] };
        let bias = &p.bias[gi * cog..(gi + 1) * cog];
        if g.is_shifted() {
            let (hp, wp) = g.padded_hw();
            let (xpad, cbuf) = scratch.split_at_mut(cig * hp * wp + (g.kw - 1) * g.dw + 16);
            let plane = hp * wp;
            let fill = |c: usize, dst: &mut [f32]| {
                dst.fill(0.0);
                for y in 0..g.h.min(hp.saturating_sub(g.pt)) {
                    let d = (y + g.pt) * wp + g.pl;
                    let n = g.w.min(wp.saturating_sub(g.pl));
                    dst[d..d + n].copy_from_slice(&xg[(c * g.h + y) * g.w..(c * g.h + y) * g.w + n]);
                }
            };
            let (planes, tail) = xpad.split_at_mut(cig * plane);
            tail.fill(0.0);
            if threads > 1 {
                planes.par_chunks_mut(plane).enumerate().for_each(|(c, d)| fill(c, d));
            } else {
                planes.chunks_mut(plane).enumerate().for_each(|(c, d)| fill(c, d));
            }
            let nw = g.oh * wp;
            let cbuf = &mut cbuf[..cog * nw];
            crate::f32gemm::sgemm_rows(
                cog,
                nw,
                k,
                w,
                k,
                xpad,
                crate::f32gemm::BRows::Offsets(&p.row_offsets),
                bias,
                p.act,
                cbuf,
                nw,
                threads,
            );
            let dst = &mut out[gi * cog * hw_out..(gi + 1) * cog * hw_out];
            let cbuf = &*cbuf;
            let compact = |c: usize, plane_out: &mut [f32]| {
                for (y, row) in plane_out.chunks_mut(g.ow).enumerate() {
                    row.copy_from_slice(&cbuf[c * nw + y * wp..c * nw + y * wp + g.ow]);
                }
            };
            if threads > 1 {
                dst.par_chunks_mut(hw_out).enumerate().for_each(|(c, d)| compact(c, d));
            } else {
                dst.chunks_mut(hw_out).enumerate().for_each(|(c, d)| compact(c, d));
            }
            continue;
        }
        let rhs: &[f32] = if g.is_pointwise() {
            xg
        } else {
            let col = &mut scratch[..k * hw_out];
            im2col(g, xg, col, threads);
            col
        };
        let dst = &mut out[gi * cog * hw_out..(gi + 1) * cog * hw_out];
        if p.channel_vector() {
            let rows = crate::f32gemm::BRows::Strided(hw_out);
            crate::f32gemm::sgemm_t(cog, hw_out, k, &p.wt, p.mp, rhs, rows, bias, p.act, dst, hw_out, threads);
        } else {
            crate::f32gemm::sgemm_bias_act(cog, hw_out, k, w, k, rhs, hw_out, bias, p.act, dst, hw_out, threads);
        }
    }
}

/// Output positions `ox` whose input column `ox*s + off - pad` lies inside `[0, len)`.
#[inline(always)]
pub(crate) fn valid_range(out_len: usize, stride: usize, off: usize, pad: usize, len: usize) -> (usize, usize) {
    // need ox*s + off >= pad  and  ox*s + off - pad < len
    let lo = if off >= pad { 0 } else { (pad - off).div_ceil(stride) };
    let hi = if len + pad > off { ((len + pad - off - 1) / stride + 1).min(out_len) } else { 0 };
    (lo.min(hi), hi)
}

/// `dst[i] = src[i * stride]`, with an AVX-512 path for stride 2.
fn gather_strided(dst: &mut [f32], src: &[f32], stride: usize) {
    assert!(dst.is_empty() || (dst.len() - 1) * stride < src.len());
    #[cfg(target_arch = "x86_64")]
    if stride == 2 && crate::f32gemm::avx512_available() {
        // SAFETY: AVX-512F is available; loads are masked to `src`, stores to `dst`.
        unsafe { gather2_avx512(dst, src) };
        return;
    }
    for (i, v) in dst.iter_mut().enumerate() {
        *v = src[i * stride];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather2_avx512(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mask = |avail: usize| -> u16 {
        if avail >= 16 {
            0xFFFF
        } else {
            ((1u32 << avail) - 1) as u16
        }
    };
    let mut i = 0;
    while i < dst.len() {
        let n = (dst.len() - i).min(16);
        let s0 = 2 * i;
        let avail = src.len() - s0;
        let a = _mm512_maskz_loadu_ps(mask(avail), src.as_ptr().add(s0));
        let b = _mm512_maskz_loadu_ps(mask(avail.saturating_sub(16)), src.as_ptr().add(s0).wrapping_add(16));
        let v = _mm512_permutex2var_ps(a, even, b);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask(n), v);
        i += 16;
    }
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
            } else if xlo < xhi {
                gather_strided(&mut d[xlo..xhi], &src[base..], g.sw);
            }
        }
    };
    if threads > 1 {
        col.par_chunks_mut(hw_out).enumerate().for_each(|(r, d)| row(r, d));
    } else {
        col.chunks_mut(hw_out).enumerate().for_each(|(r, d)| row(r, d));
    }
}

/// Output columns computed per register block in the depthwise kernel.
const DW_BLOCK: usize = 16;

/// Copies one input plane into `buf` with `pt`/`pl` zero rows/columns before, enough after for
/// every window, and `DW_BLOCK * stride` spare columns so full register blocks never read out of
/// bounds. Returns the padded row length.
fn pad_plane(g: &ConvGeom, plane: &[f32], buf: &mut Vec<f32>, fill: f32) -> usize {
    let ph = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    let pw = (g.ow.div_ceil(DW_BLOCK) * DW_BLOCK - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    let ph = ph.max(g.pt + g.h);
    let pw = pw.max(g.pl + g.w) + DW_BLOCK;
    buf.clear();
    buf.resize(ph * pw, fill);
    for y in 0..g.h {
        buf[(y + g.pt) * pw + g.pl..(y + g.pt) * pw + g.pl + g.w].copy_from_slice(&plane[y * g.w..(y + 1) * g.w]);
    }
    pw
}

#[inline(always)]
fn dw_rows<const S: usize>(g: &ConvGeom, padded: &[f32], pw: usize, w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    let s = if S == 0 { g.sw } else { S };
    for oy in 0..g.oh {
        let orow = &mut out[oy * g.ow..(oy + 1) * g.ow];
        let mut ox0 = 0;
        while ox0 < g.ow {
            let mut acc = [bias; DW_BLOCK];
            for ky in 0..g.kh {
                let r = &padded[(oy * g.sh + ky * g.dh) * pw..];
                for kx in 0..g.kw {
                    let wv = w[ky * g.kw + kx];
                    let base = ox0 * s + kx * g.dw;
                    let src = &r[base..base + (DW_BLOCK - 1) * s + 1];
                    for i in 0..DW_BLOCK {
                        acc[i] += wv * src[i * s];
                    }
                }
            }
            let n = DW_BLOCK.min(g.ow - ox0);
            match act {
                Act::None => {}
                Act::Relu => acc.iter_mut().for_each(|v| *v = v.max(0.0)),
                Act::Clip { lo, hi } => acc.iter_mut().for_each(|v| *v = v.max(lo).min(hi)),
                a => acc.iter_mut().for_each(|v| *v = a.apply(*v)),
            }
            orow[ox0..ox0 + n].copy_from_slice(&acc[..n]);
            ox0 += DW_BLOCK;
        }
    }
}

#[inline(always)]
fn dw_channel_impl(g: &ConvGeom, padded: &[f32], pw: usize, w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    match g.sw {
        1 => dw_rows::<1>(g, padded, pw, w, bias, act, out),
        2 => dw_rows::<2>(g, padded, pw, w, bias, act, out),
        _ => dw_rows::<0>(g, padded, pw, w, bias, act, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_channel_avx2(g: &ConvGeom, padded: &[f32], pw: usize, w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    dw_channel_impl(g, padded, pw, w, bias, act, out)
}

std::thread_local! {
    static PAD_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// AVX-512 depthwise straight from the unpadded plane: out-of-range rows are skipped and
/// out-of-range columns masked off in the loads, so no padded copy is made.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dw_channel_avx512_nopad(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
) {
    window_avx512::<false>(g, plane, w, bias, lo, hi, out)
}

/// The sliding-window kernel behind AVX-512 depthwise convolution (`MAX == false`: weighted sum
/// starting from `init`) and max pooling (`MAX == true`: maximum, masked lanes read as -inf).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn window_avx512<const MAX: bool>(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const MAXK: usize = 16;
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let p = plane.as_ptr();
    let (h, wd) = (g.h as isize, g.w as isize);
    let colmask = |start: isize, lanes: isize| -> u32 {
        // bit j set when column start+j lies in [0, w)
        let a = (-start).clamp(0, lanes);
        let b = (wd - start).clamp(0, lanes);
        if b <= a {
            0
        } else {
            (((1u64 << b) - 1) & !((1u64 << a) - 1)) as u32
        }
    };
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const R: usize, const MAX: bool, const K: usize>(
        g: &ConvGeom,
        p: *const f32,
        w: &[f32],
        bias: f32,
        oy: usize,
        out: *mut f32,
        vlo: __m512,
        vhi: __m512,
        even: __m512i,
        masks: &[[u32; MAXK]],
        h: isize,
    ) {
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        // K > 0: a square K x K window known at compile time (fully unrolled loops).
        let (kh, kw) = if K > 0 { (K, K) } else { (g.kh, g.kw) };
        let mut ox0 = 0;
        let mut blk = 0;
        while ox0 < g.ow {
            let mut acc = [_mm512_set1_ps(bias); R];
            let m = &masks[blk];
            for ky in 0..kh {
                for (r, a) in acc.iter_mut().enumerate() {
                    let iy = ((oy + r) * g.sh + ky * g.dh) as isize - g.pt as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let row = p.wrapping_offset(iy * g.w as isize);
                    for kx in 0..kw {
                        let start = (ox0 * g.sw + kx * g.dw) as isize - g.pl as isize;
                        let base = row.wrapping_offset(start);
                        let mk = m[kx];
                        let fill = if MAX { ninf } else { _mm512_setzero_ps() };
                        let x = if g.sw == 1 {
                            _mm512_mask_loadu_ps(fill, mk as u16, base)
                        } else {
                            let x0 = _mm512_mask_loadu_ps(fill, mk as u16, base);
                            let x1 = _mm512_mask_loadu_ps(fill, (mk >> 16) as u16, base.wrapping_add(16));
                            _mm512_permutex2var_ps(x0, even, x1)
                        };
                        if MAX {
                            *a = _mm512_max_ps(*a, x);
                        } else {
                            let wv = _mm512_set1_ps(*w.get_unchecked(ky * kw + kx));
                            *a = _mm512_fmadd_ps(wv, x, *a);
                        }
                    }
                }
            }
            let n = DW_BLOCK.min(g.ow - ox0);
            for (r, a) in acc.iter().enumerate() {
                let v = _mm512_min_ps(_mm512_max_ps(*a, vlo), vhi);
                let dst = out.add((oy + r) * g.ow + ox0);
                if n == DW_BLOCK {
                    _mm512_storeu_ps(dst, v);
                } else {
                    _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, v);
                }
            }
            ox0 += DW_BLOCK;
            blk += 1;
        }
    }
    // Column masks per (output block, kx), shared by every row.
    let nblk = g.ow.div_ceil(DW_BLOCK);
    let lanes = if g.sw == 1 { 16 } else { 32 };
    // Small on the stack: this runs once per channel, and zeroing a large table per channel cost
    // more than the 7x7 planes' arithmetic.
    let mut masks = [[0u32; MAXK]; 8];
    let mut heap;
    let masks: &mut [[u32; MAXK]] = if nblk <= 8 {
        &mut masks[..nblk]
    } else {
        heap = vec![[0u32; MAXK]; nblk];
        &mut heap
    };
    for (b, mb) in masks.iter_mut().enumerate() {
        for (kx, m) in mb.iter_mut().enumerate().take(g.kw) {
            let start = (b * DW_BLOCK * g.sw + kx * g.dw) as isize - g.pl as isize;
            let raw = colmask(start, lanes);
            *m = if g.sw == 1 {
                raw
            } else {
                // lanes j of the 32-wide raw span; the permute keeps the even ones
                raw
            };
        }
    }
    let o = out.as_mut_ptr();
    macro_rules! run {
        ($k:expr) => {{
            let mut oy = 0;
            while oy + 4 <= g.oh {
                rows::<4, MAX, $k>(g, p, w, bias, oy, o, vlo, vhi, even, masks, h);
                oy += 4;
            }
            while oy < g.oh {
                rows::<1, MAX, $k>(g, p, w, bias, oy, o, vlo, vhi, even, masks, h);
                oy += 1;
            }
        }};
    }
    match (g.kh, g.kw) {
        (3, 3) => run!(3),
        (5, 5) => run!(5),
        _ => run!(0),
    }
}

/// Stride-1 depthwise on a small plane (7x7) as one flat sweep: the plane is copied into a zero
/// border `pw = ow + kw - 1` wide, so output `(oy, ox)` sits at flat index `oy * pw + ox` and every
/// tap is a constant offset. 16 consecutive flat outputs fill a vector across rows (a 7-wide row
/// would fill 7 of its 16 lanes); the border columns' outputs are computed and dropped.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dw_channel_avx512_flat(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
    buf: &mut Vec<f32>,
) {
    use std::arch::x86_64::*;
    let pw = g.ow + (g.kw - 1) * g.dw;
    let flat = g.oh * pw;
    let nvec = flat.div_ceil(16);
    let reach = (g.kh - 1) * g.dh * pw + (g.kw - 1) * g.dw;
    buf.clear();
    buf.resize(nvec * 16 + reach + nvec * 16, 0.0);
    let (pad, acc) = buf.split_at_mut(nvec * 16 + reach);
    // Padded rows -pt .. ; columns -pl .. -pl + pw.
    let rows = g.oh + (g.kh - 1) * g.dh;
    for py in 0..rows {
        let iy = py as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let x0 = g.pl.min(pw);
        let n = g.w.min(pw - x0);
        let src = &plane[iy as usize * g.w..iy as usize * g.w + n];
        pad[py * pw + x0..py * pw + x0 + n].copy_from_slice(src);
    }
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let pp = pad.as_ptr();
    for v in 0..nvec {
        let mut a = _mm512_set1_ps(bias);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let x = _mm512_loadu_ps(pp.add(v * 16 + ky * g.dh * pw + kx * g.dw));
                a = _mm512_fmadd_ps(_mm512_set1_ps(*w.get_unchecked(ky * g.kw + kx)), x, a);
            }
        }
        _mm512_storeu_ps(acc.as_mut_ptr().add(v * 16), _mm512_min_ps(_mm512_max_ps(a, vlo), vhi));
    }
    for oy in 0..g.oh {
        out[oy * g.ow..(oy + 1) * g.ow].copy_from_slice(&acc[oy * pw..oy * pw + g.ow]);
    }
}

fn dw_channel(g: &ConvGeom, plane: &[f32], w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::f32gemm::avx512_available() && g.sw == 1 && g.sh == 1 && g.ow <= 12 {
        if let Some((lo, hi)) = crate::f32gemm::clamp_of(act) {
            // SAFETY: AVX-512F is available; the buffer holds every vector and tap offset read.
            return PAD_BUF
                .with(|b| unsafe { dw_channel_avx512_flat(g, plane, w, bias, lo, hi, out, &mut b.borrow_mut()) });
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::f32gemm::avx512_available() && g.sw <= 2 && g.kw <= 16 {
        if let Some((lo, hi)) = crate::f32gemm::clamp_of(act) {
            // SAFETY: AVX-512F is available; every load is masked to the plane's columns and rows
            // are range-checked.
            return unsafe { dw_channel_avx512_nopad(g, plane, w, bias, lo, hi, out) };
        }
    }
    PAD_BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let pw = pad_plane(g, plane, &mut buf, 0.0);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { dw_channel_avx2(g, &buf, pw, w, bias, act, out) };
            }
        }
        dw_channel_impl(g, &buf, pw, w, bias, act, out)
    })
}

fn depthwise(p: &PackedConv, x: &[f32], out: &mut [f32], threads: usize) {
    let g = &p.geom;
    let (ip, op, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let job = |c: usize, o: &mut [f32]| {
        dw_channel(g, &x[c * ip..(c + 1) * ip], &p.weight[c * kk..(c + 1) * kk], p.bias[c], p.act, o)
    };
    if threads > 1 {
        out[..g.c_out * op].par_chunks_mut(op).enumerate().for_each(|(c, o)| job(c, o));
    } else {
        out[..g.c_out * op].chunks_mut(op).enumerate().for_each(|(c, o)| job(c, o));
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
