//! f32 depthwise convolution, one channel plane at a time: on AVX-512 straight from the unpadded
//! plane (masked loads) or, for small stride-1 planes, as one flat sweep; on AVX2 from a padded,
//! phase-split copy ([`crate::fp32::avx2`]); on the portable path from a padded copy with a
//! register-blocked row kernel.

use lowbit_core::Act;
use rayon::prelude::*;

use crate::fp32::layout::{clamp_of, fused_clamp, Planes, DW_BLOCK};
#[cfg(target_arch = "x86_64")]
use crate::fp32::{avx2, avx512, dw_cv};
use crate::geom::ConvGeom;
use crate::isa::{trace, F32Isa};

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

std::thread_local! {
    static PAD_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn dw_channel(isa: F32Isa, g: &ConvGeom, plane: &[f32], w: &[f32], bias: f32, act: Act, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == F32Isa::Avx512 && g.sw == 1 && g.sh == 1 && g.ow <= 12 {
        if let Some((lo, hi)) = clamp_of(act) {
            // SAFETY: the AVX-512 path runs here (checked by `depthwise`); the buffer holds every
            // vector and tap offset read.
            return PAD_BUF
                .with(|b| unsafe { avx512::dw_channel_flat(g, plane, w, bias, lo, hi, out, &mut b.borrow_mut()) });
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == F32Isa::Avx512 && avx512::window_fits(g) {
        if let Some((lo, hi)) = clamp_of(act) {
            // SAFETY: as above; every load is masked to the plane's columns and rows are range-checked.
            return unsafe { avx512::dw_channel_nopad(g, plane, w, bias, lo, hi, out) };
        }
    }
    PAD_BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let pw = pad_plane(g, plane, &mut buf, 0.0);
        dw_channel_impl(g, &buf, pw, w, bias, act, out)
    })
}

/// Depthwise convolution of one image `x` (`[c, h, w]`): weights `[c][kh·kw]`, one bias per channel,
/// the activation fused.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    isa: F32Isa,
    g: &ConvGeom,
    weight: &[f32],
    bias: &[f32],
    act: Act,
    x: &[f32],
    out: &mut [f32],
    threads: usize,
) {
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    trace::f32(isa);
    let (ip, op, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    // AVX2 (and AVX-512 where its own kernels do not apply): groups of channels on the padded,
    // phase-split layout, or on small planes with channels in the lanes ([`dw_cv`], sixteen per
    // vector on AVX-512, whose per-plane kernels leave most lanes of a 7- or 14-wide row empty).
    #[cfg(target_arch = "x86_64")]
    let cv = isa != F32Isa::Scalar && dw_cv::suits(g, isa == F32Isa::Avx512);
    #[cfg(target_arch = "x86_64")]
    if cv || (isa != F32Isa::Scalar && !(isa == F32Isa::Avx512 && avx512::window_fits(g) && clamp_of(act).is_some())) {
        let (lo, hi) = fused_clamp(act);
        // SAFETY: both SIMD paths include AVX2 and FMA (checked supported above); the kernels
        // assert the slices hold what the geometry says.
        let p = Planes { g, x, w: weight, bias, lo, hi };
        unsafe {
            if cv {
                dw_cv::depthwise(&p, out, threads > 1, isa == F32Isa::Avx512)
            } else {
                avx2::windows::<false>(&p, g.c_out, out, threads > 1)
            }
        };
        if clamp_of(act).is_none() {
            crate::eltwise::apply_act(isa, act, &mut out[..g.c_out * op]);
        }
        return;
    }
    let job = |c: usize, o: &mut [f32]| {
        dw_channel(isa, g, &x[c * ip..(c + 1) * ip], &weight[c * kk..(c + 1) * kk], bias[c], act, o)
    };
    if threads > 1 {
        out[..g.c_out * op].par_chunks_mut(op).enumerate().for_each(|(c, o)| job(c, o));
    } else {
        out[..g.c_out * op].chunks_mut(op).enumerate().for_each(|(c, o)| job(c, o));
    }
}
