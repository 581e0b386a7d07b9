//! f32 Winograd F(4x4, 3x3) ([`crate::fp32::winograd`]) on small planes with channels in the AVX-512
//! lanes. The row-wise transforms put one tile per lane, so on a 7x7 plane (two tiles per row) six
//! of their eight lanes are empty and the transforms cost as much as the products. Here the image
//! is transposed to pixels × channels once, each tile's `Bᵀ d B` and `Aᵀ M A` run on 16 channels per
//! vector, and the 36 products `M[ξ] = V[ξ] · U[ξ]` are tiles × channels GEMMs on the spatial tile.
//!
//! The arithmetic is the row-wise transforms' (the same operations in the same order, rows first,
//! no FMA contraction) and the same FMA chain per product (zero, then channel by channel), so both
//! give the same floats.

use rayon::prelude::*;
use std::arch::x86_64::*;

use crate::fp32::gemm::sgemm_bias_act;
use crate::fp32::layout::{transpose, Ptr};
use crate::fp32::winograd_avx2::lane_transforms;
use crate::geom::ConvGeom;
use crate::isa::F32Isa;

/// Transform positions of a 6x6 tile.
const XI: usize = 36;

/// f32 elements of scratch [`run`] needs for `g`.
pub(crate) fn scratch_len(g: &ConvGeom) -> usize {
    let t = g.oh.div_ceil(4) * g.ow.div_ceil(4);
    g.h * g.w * g.c_in + XI * t * (g.c_in + g.c_out) + g.oh * g.ow * g.c_out
}

/// `U` of [`crate::fp32::winograd`] (`[ξ][c_out][c_in]`) as this module's `[ξ][c_in][c_out]`.
pub(crate) fn layout_u(u: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut t = vec![0f32; XI * ci * co];
    for xi in 0..XI {
        transpose(&u[xi * co * ci..(xi + 1) * co * ci], co, ci, &mut t[xi * ci * co..(xi + 1) * ci * co]);
    }
    t
}

/// Convolves one image `x` (`[c_in, h, w]`) into `out` (`[c_out, oh, ow]`) with the transformed
/// weights `u` ([`layout_u`]), bias added and clamped to `[lo, hi]`; `zero` holds a zero per tile
/// (the products' bias). AVX-512 F must be present.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    g: &ConvGeom,
    u: &[f32],
    zero: &[f32],
    bias: &[f32],
    lo: f32,
    hi: f32,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) {
    assert!(crate::isa::features().avx512f);
    let (ci, co, ip, op) = (g.c_in, g.c_out, g.h * g.w, g.oh * g.ow);
    let (th, tw) = (g.oh.div_ceil(4), g.ow.div_ceil(4));
    let t = th * tw;
    assert!(u.len() >= XI * ci * co && bias.len() >= co && x.len() >= ci * ip && out.len() >= co * op);
    assert!(zero.len() >= t);
    assert!(scratch.len() >= scratch_len(g));
    let (hwc, rest) = scratch.split_at_mut(ip * ci);
    let (v, rest) = rest.split_at_mut(XI * t * ci);
    let (m, rest) = rest.split_at_mut(XI * t * co);
    let ohwc = &mut rest[..op * co];
    transpose(&x[..ci * ip], ci, ip, hwc);
    // SAFETY: AVX-512 F asserted; every tile reads inside `hwc` and writes its own rows of `v`
    // (`XI · t · ci` floats).
    unsafe {
        for tile in 0..t {
            input_tile(g, hwc, tile / tw, tile % tw, t, tile, v.as_mut_ptr());
        }
    }
    let (v, zero) = (&*v, &zero[..t]);
    let gemm = |xi: usize, mx: &mut [f32]| {
        let (a, b) = (&v[xi * t * ci..(xi + 1) * t * ci], &u[xi * ci * co..(xi + 1) * ci * co]);
        sgemm_bias_act(F32Isa::Avx512, t, co, ci, a, ci, b, co, zero, lowbit_core::Act::None, mx, co, 1);
    };
    if threads > 1 {
        m.par_chunks_mut(t * co).enumerate().for_each(|(xi, mx)| gemm(xi, mx));
    } else {
        m.chunks_mut(t * co).enumerate().for_each(|(xi, mx)| gemm(xi, mx));
    }
    let op_ = Ptr(ohwc.as_mut_ptr());
    // SAFETY: as above; tile outputs are disjoint pixels of `ohwc` (`op · co` floats).
    unsafe {
        for tile in 0..t {
            output_tile(g, m, tile / tw, tile % tw, t, tile, bias, lo, hi, op_.get());
        }
    }
    transpose(ohwc, op, co, &mut out[..co * op]);
}

/// The mask of the 16 lanes from channel `c0` of `n`.
#[inline(always)]
fn lanes(n: usize, c0: usize) -> u16 {
    let k = (n - c0).min(16);
    ((1u32 << k) - 1) as u16
}

lane_transforms!(__m512, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_set1_ps);

/// `V[ξ][tile][c]` of tile (`ty`, `tx`) from the pixels × channels image `hwc`, every channel
/// (zeros outside the image).
#[target_feature(enable = "avx512f")]
unsafe fn input_tile(g: &ConvGeom, hwc: &[f32], ty: usize, tx: usize, t: usize, tile: usize, v: *mut f32) {
    let ci = g.c_in;
    for c0 in (0..ci).step_by(16) {
        let mk = lanes(ci, c0);
        let mut h = [[_mm512_setzero_ps(); 6]; 6];
        for (j, hj) in h.iter_mut().enumerate() {
            let iy = (4 * ty + j) as isize - g.pt as isize;
            let row: [__m512; 6] = std::array::from_fn(|i| {
                let ix = (4 * tx + i) as isize - g.pl as isize;
                if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                    _mm512_setzero_ps()
                } else {
                    let at = (iy as usize * g.w + ix as usize) * ci + c0;
                    _mm512_maskz_loadu_ps(mk, hwc.as_ptr().add(at))
                }
            });
            *hj = bt(row);
        }
        for k in 0..6 {
            let y = bt([h[0][k], h[1][k], h[2][k], h[3][k], h[4][k], h[5][k]]);
            for (i, yi) in y.iter().enumerate() {
                _mm512_mask_storeu_ps(v.add(((i * 6 + k) * t + tile) * ci + c0), mk, *yi);
            }
        }
    }
}

/// The 4x4 outputs of tile (`ty`, `tx`) from `M[ξ][tile][o]` into the pixels × channels `ohwc`,
/// bias added and clamped (pixels past the plane's edge dropped).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile(
    g: &ConvGeom,
    m: &[f32],
    ty: usize,
    tx: usize,
    t: usize,
    tile: usize,
    bias: &[f32],
    lo: f32,
    hi: f32,
    ohwc: *mut f32,
) {
    let co = g.c_out;
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for o0 in (0..co).step_by(16) {
        let mk = lanes(co, o0);
        let vb = _mm512_maskz_loadu_ps(mk, bias.as_ptr().add(o0));
        let s: [[__m512; 4]; 6] = std::array::from_fn(|i| {
            at(std::array::from_fn(|k| _mm512_maskz_loadu_ps(mk, m.as_ptr().add(((i * 6 + k) * t + tile) * co + o0))))
        });
        for q in 0..4 {
            let z = at([s[0][q], s[1][q], s[2][q], s[3][q], s[4][q], s[5][q]]);
            let ox = 4 * tx + q;
            for (p, zp) in z.iter().enumerate() {
                let oy = 4 * ty + p;
                if oy < g.oh && ox < g.ow {
                    let y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(*zp, vb), vlo), vhi);
                    _mm512_mask_storeu_ps(ohwc.add((oy * g.ow + ox) * co + o0), mk, y);
                }
            }
        }
    }
}
