//! Depthwise convolution on small planes with channels in the vector lanes (AVX2 code, taken by
//! the AVX2 and the AVX-512 f32 paths): groups of eight planes are transposed into one padded
//! `[row][column][8]` buffer, every output pixel of the group is then a sum of taps of whole vectors
//! (one weight vector per tap, no edge columns and no half-empty vectors, unlike rows of 7 or 14
//! along the lanes), and the results are transposed back into the planes. Any stride, dilation and
//! padding; the clamp is fused.

use std::arch::x86_64::*;

use crate::fp32::layout::{transpose8, Planes, Ptr};
use crate::geom::ConvGeom;

std::thread_local! {
    static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the channel-vector kernel can take `g` (depthwise, 8+ channels): outputs of at most
/// 56x56, whose group buffers (input and output of eight channels, about 210 KB at 56x56) stay in
/// L2. Against rows along the lanes (`cargo bench -p lowbit-kernels --bench f32 -- dw`, AMD EPYC,
/// share of the FMA peak): 960@7 8 -> 17%, 576@14 13 -> 22%, 576@14 stride 2 4 -> 10%, 192@28 19 ->
/// 24%, 144@56 23 -> 28%, 5x5 480@14 25 -> 37%; at 112x112 (32 channels) 29 -> 26%, so not there.
/// With sixteen lanes (`wide`, AVX-512) the input plane must fit the same bound: against the
/// AVX-512 per-plane kernels (`LOWBIT_PROFILE=1 lowbit bench`, AMD EPYC Zen 5, 1 thread) 384@7x7
/// 0.022 -> 0.011 ms, MobileNetV2's 144@56 0.235 -> 0.178 ms, Lite0's 5x5 240@28 0.20 -> 0.11 ms,
/// but planes read from 112x112 slower (a stride-2 layer 0.20 -> 0.27 ms, 32@112 0.18 -> 0.21 ms).
pub(crate) fn suits(g: &ConvGeom, wide: bool) -> bool {
    g.oh * g.ow <= 3136 && g.c_out >= 8 && (!wide || g.h * g.w <= 3136)
}

/// Depthwise convolution of `x` (`[c, h, w]`) into `out` (`[c, oh, ow]`), weights `[c][kh·kw]`,
/// `bias[c]`, clamped to `[lo, hi]`; groups of eight channels (sixteen with `wide`) on the pool with
/// `parallel`.
///
/// # Safety
/// AVX2 and FMA must be available, and AVX-512 F with `wide`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise(p: &Planes, out: &mut [f32], parallel: bool, wide: bool) {
    use rayon::prelude::*;
    let Planes { g, x, w, bias, lo, hi } = *p;
    let (c, ip, op, kk) = (g.c_out, g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert!(x.len() >= c * ip && out.len() >= c * op && w.len() >= c * kk && bias.len() >= c && op > 0);
    let lanes = if wide { 16 } else { 8 };
    let groups = c.div_ceil(lanes);
    let o = Ptr(out.as_mut_ptr());
    let job = |gi: usize| {
        // SAFETY: the caller's path has AVX2 and FMA (and AVX-512 F with `wide`); group `gi` writes
        // only its own planes.
        BUF.with(|b| unsafe {
            let b = &mut b.borrow_mut();
            if wide {
                group::<16>(g, gi * 16, x, w, bias, lo, hi, o.get(), b)
            } else {
                group::<8>(g, gi * 8, x, w, bias, lo, hi, o.get(), b)
            }
        })
    };
    if parallel {
        (0..groups).into_par_iter().for_each(job);
    } else {
        (0..groups).for_each(job);
    }
}

/// Channels `c0 .. c0 + L` (fewer at the end) of [`depthwise`], `L` 8 or 16 lanes: the planes are
/// transposed in and out eight channels at a time (a group of 16 fills both halves of each slot).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn group<const L: usize>(
    g: &ConvGeom,
    c0: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    lo: f32,
    hi: f32,
    out: *mut f32,
    buf: &mut Vec<f32>,
) {
    let (ip, op, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    let nc = (g.c_out - c0).min(L);
    let hp = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    let wp = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    // Padded input [hp][wp][L], then the outputs [op][L] (rounded up to whole blocks of pixels).
    let opr = op.div_ceil(8) * 8;
    // The tap loop always computes eight pixels and stores those that exist: up to `7·sw` pixels
    // past the last row are read (zeros).
    let xlen = L * (hp * wp + 8 * g.sw);
    let total = xlen + L * (opr + kk + 1);
    if buf.len() < total {
        buf.resize(total, 0.0);
    }
    let (xb, rest) = buf[..total].split_at_mut(xlen);
    if nc < L {
        // Lanes of missing channels must not carry a previous group's values (they would cost no
        // correctness, being never stored, but could be denormals): all of it zeroed.
        xb.fill(0.0);
        rest.fill(0.0);
    } else {
        // Only what the transposes below do not write: the padding rows and columns and the tail.
        let (r0, r1) = (g.pt.min(hp), (g.pt + g.h).min(hp));
        let (c0, c1) = (g.pl.min(wp), (g.pl + g.w).min(wp));
        xb[..L * r0 * wp].fill(0.0);
        for py in r0..r1 {
            xb[L * py * wp..L * (py * wp + c0)].fill(0.0);
            xb[L * (py * wp + c1)..L * (py + 1) * wp].fill(0.0);
        }
        xb[L * r1 * wp..].fill(0.0);
    }
    let (ob, wb) = rest.split_at_mut(L * opr);
    // Weights [tap][L] and the bias vector; missing channels stay zero.
    for ch in 0..nc {
        for t in 0..kk {
            wb[t * L + ch] = w[(c0 + ch) * kk + t];
        }
        wb[kk * L + ch] = bias[c0 + ch];
    }
    let zero = _mm256_setzero_ps();
    // Transpose the image rows in: eight columns of eight channels per step (per half of a slot).
    for half in 0..L / 8 {
        let ch0 = half * 8;
        if ch0 >= nc {
            break;
        }
        for iy in 0..g.h {
            let py = iy + g.pt;
            if py >= hp {
                break;
            }
            let mut ix = 0;
            while ix < g.w {
                let n = (g.w - ix).min(8);
                let rows: [__m256; 8] = std::array::from_fn(|ch| {
                    if ch0 + ch < nc {
                        crate::fp32::avx2::load_part(x.as_ptr().add((c0 + ch0 + ch) * ip + iy * g.w + ix), n)
                    } else {
                        zero
                    }
                });
                let cols = transpose8(rows);
                for (j, v) in cols.iter().enumerate().take(n) {
                    let px = ix + j + g.pl;
                    if px < wp {
                        _mm256_storeu_ps(xb.as_mut_ptr().add((py * wp + px) * L + ch0), *v);
                    }
                }
                ix += 8;
            }
        }
    }
    if L == 16 {
        taps16(g, wp, xb.as_ptr(), wb.as_ptr(), lo, hi, ob.as_mut_ptr());
    } else {
        taps8(g, wp, xb.as_ptr(), wb.as_ptr(), lo, hi, ob.as_mut_ptr());
    }
    // Transpose back: eight pixels of eight channels per step.
    for half in 0..L / 8 {
        let ch0 = half * 8;
        if ch0 >= nc {
            break;
        }
        let mut p0 = 0;
        while p0 < op {
            let n = (op - p0).min(8);
            let px: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(ob.as_ptr().add((p0 + j) * L + ch0)));
            let chans = transpose8(px);
            for (ch, v) in chans.iter().enumerate().take(nc - ch0) {
                crate::fp32::avx2::store_part(out.add((c0 + ch0 + ch) * op + p0), *v, n);
            }
            p0 += 8;
        }
    }
}

/// The taps of a group of `$l` channels (one vector of type `$v` per pixel): blocks of up to 8
/// output pixels of a row (independent accumulators), from the padded `[hp][wp][$l]` input `xp` and
/// `[tap][$l]` weights (bias after them) into `[pixel][$l]` outputs. One body for both widths.
macro_rules! taps {
    ($name:ident, $feat:literal, $l:literal, $v:ty, $set1:ident, $load:ident, $fmadd:ident, $min:ident, $max:ident, $store:ident) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(g: &ConvGeom, wp: usize, xp: *const f32, wpp: *const f32, lo: f32, hi: f32, ob: *mut f32) {
            let kk = g.kh * g.kw;
            let (vlo, vhi) = ($set1(lo), $set1(hi));
            let vb: $v = $load(wpp.add(kk * $l));
            for oy in 0..g.oh {
                let mut ox0 = 0;
                while ox0 < g.ow {
                    let n = (g.ow - ox0).min(8);
                    let mut acc = [vb; 8];
                    for ky in 0..g.kh {
                        let row = xp.add(((oy * g.sh + ky * g.dh) * wp) * $l);
                        for kx in 0..g.kw {
                            let wv = $load(wpp.add((ky * g.kw + kx) * $l));
                            let base = row.add((ox0 * g.sw + kx * g.dw) * $l);
                            for (j, a) in acc.iter_mut().enumerate() {
                                *a = $fmadd(wv, $load(base.add(j * g.sw * $l)), *a);
                            }
                        }
                    }
                    for (j, a) in acc.iter().enumerate().take(n) {
                        $store(ob.add((oy * g.ow + ox0 + j) * $l), $min($max(*a, vlo), vhi));
                    }
                    ox0 += 8;
                }
            }
        }
    };
}

taps!(
    taps8,
    "avx2,fma",
    8,
    __m256,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_min_ps,
    _mm256_max_ps,
    _mm256_storeu_ps
);
taps!(
    taps16,
    "avx512f",
    16,
    __m512,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_min_ps,
    _mm512_max_ps,
    _mm512_storeu_ps
);
