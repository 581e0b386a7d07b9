//! AVX2 transforms of f32 Winograd F(4x4, 3x3) ([`crate::fp32::winograd`]): eight tiles of a tile
//! row per step, one tile per lane. The input's 32 columns are split into their four phases with
//! in-lane unpacks (a 4x4 transpose per 128-bit lane) and one lane permute, so both passes of
//! `Bᵀ d B` are lane-wise; `Aᵀ M A` is lane-wise too and its four column phases are interleaved back
//! the same way. The arithmetic is the portable transforms' (same operations, same order, no FMA),
//! so both give the same floats.

use std::arch::x86_64::*;

use crate::fp32::avx2::{load_part, store_part};
use crate::geom::ConvGeom;

/// `bt` (`Bᵀ d`) and `at` (`Aᵀ m`) lane-wise on one vector type, the portable transforms'
/// (`winograd::bt`, `winograd::at`) operation for operation: one source for this module's eight
/// lanes and [`crate::fp32::winograd_lanes`]' sixteen, so both give the portable floats.
macro_rules! lane_transforms {
    ($v:ty, $add:ident, $sub:ident, $mul:ident, $set1:ident) => {
        /// `Bᵀ d` lane-wise (as `winograd::bt`).
        #[inline(always)]
        unsafe fn bt(d: [$v; 6]) -> [$v; 6] {
            let (add, sub, mul) = ($add, $sub, $mul);
            let (c4, c5, c2) = ($set1(4.0), $set1(5.0), $set1(2.0));
            [
                add(sub(mul(c4, d[0]), mul(c5, d[2])), d[4]),
                add(add(mul($set1(-4.0), add(d[1], d[2])), d[3]), d[4]),
                add(sub(mul(c4, sub(d[1], d[2])), d[3]), d[4]),
                sub(add(mul(c2, sub(d[3], d[1])), d[4]), d[2]),
                sub(add(mul(c2, sub(d[1], d[3])), d[4]), d[2]),
                add(sub(mul(c4, d[1]), mul(c5, d[3])), d[5]),
            ]
        }

        /// `Aᵀ m` lane-wise (as `winograd::at`).
        #[inline(always)]
        unsafe fn at(m: [$v; 6]) -> [$v; 4] {
            let (add, sub, mul) = ($add, $sub, $mul);
            let (a, b) = (add(m[1], m[2]), sub(m[1], m[2]));
            let (c, d) = (add(m[3], m[4]), sub(m[3], m[4]));
            [
                add(add(m[0], a), c),
                add(b, mul($set1(2.0), d)),
                add(a, mul($set1(4.0), c)),
                add(add(b, mul($set1(8.0), d)), m[5]),
            ]
        }
    };
}
pub(crate) use lane_transforms;

lane_transforms!(__m256, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_set1_ps);

/// Columns `4t + q` of the 32 floats at `p`, for `q < 4`, `t < 8` (tile `t` in lane `t`).
#[inline(always)]
unsafe fn phases(p: *const f32) -> [__m256; 4] {
    let (a0, a1) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    let (a2, a3) = (_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
    let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    let pd = _mm256_castps_pd;
    let q = [
        _mm256_unpacklo_pd(pd(t0), pd(t2)),
        _mm256_unpackhi_pd(pd(t0), pd(t2)),
        _mm256_unpacklo_pd(pd(t1), pd(t3)),
        _mm256_unpackhi_pd(pd(t1), pd(t3)),
    ];
    // Lanes hold tiles 0, 2, 4, 6, 1, 3, 5, 7.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    q.map(|v| _mm256_permutevar8x32_ps(_mm256_castpd_ps(v), order))
}

/// `v` moved one lane down, `next` in lane 7.
#[inline(always)]
unsafe fn shift_in(v: __m256, next: f32) -> __m256 {
    let up = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
    _mm256_blend_ps::<0x80>(up, _mm256_set1_ps(next))
}

/// Input transforms of one channel's tile rows `r0..r1`. `pad` holds the rows `4·r0 - pt ..` of
/// the channel, zero-padded, `wp` floats each (at least `4·tw8 + 8`, `tw8` = `tw` rounded up to 8);
/// row `i·6 + k` of `V` for this channel starts at `v + (i·6 + k)·vstride`.
///
/// # Safety
/// AVX2 must be available; `pad` must hold `(4·(r1 - r0) + 2)·wp` floats and every `V` row
/// `(r1 - r0)·tw` writable floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn input_rows(pad: &[f32], wp: usize, nr: usize, tw: usize, v: *mut f32, vstride: usize) {
    assert!(pad.len() >= (4 * nr + 2) * wp && wp >= tw.div_ceil(8) * 32 + 8);
    for r in 0..nr {
        let mut tx0 = 0;
        while tx0 < tw {
            let mut h = [[_mm256_setzero_ps(); 6]; 6];
            for (j, hj) in h.iter_mut().enumerate() {
                let row = pad.as_ptr().add((4 * r + j) * wp + 4 * tx0);
                let p = phases(row);
                let (n0, n1) = (shift_in(p[0], *row.add(32)), shift_in(p[1], *row.add(33)));
                *hj = bt([p[0], p[1], p[2], p[3], n0, n1]);
            }
            let n = (tw - tx0).min(8);
            for k in 0..6 {
                let y = bt([h[0][k], h[1][k], h[2][k], h[3][k], h[4][k], h[5][k]]);
                for (i, yi) in y.iter().enumerate() {
                    store_part(v.add((i * 6 + k) * vstride + r * tw + tx0), *yi, n);
                }
            }
            tx0 += 8;
        }
    }
}

/// Output transforms of output channel `o`'s tile rows `r0..r1` from `M` (row `ξ` of this channel
/// at `m + ξ·mstride`, tiles of a band `r·tw + tx`) into `plane` (`[oh, ow]`), bias added, clamped.
///
/// # Safety
/// AVX2 must be available; every `M` row must hold `(r1 - r0)·tw` floats.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn output_rows(
    g: &ConvGeom,
    m: *const f32,
    mstride: usize,
    r0: usize,
    r1: usize,
    tw: usize,
    bias: f32,
    lo: f32,
    hi: f32,
    plane: &mut [f32],
) {
    assert!(plane.len() >= g.oh * g.ow);
    let (vb, vlo, vhi) = (_mm256_set1_ps(bias), _mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for ty in r0..r1 {
        let mut tx0 = 0;
        while tx0 < tw {
            let n = (tw - tx0).min(8);
            let base = (ty - r0) * tw + tx0;
            let mut s = [[_mm256_setzero_ps(); 4]; 6];
            for (i, si) in s.iter_mut().enumerate() {
                let r: [__m256; 6] = std::array::from_fn(|k| load_part(m.add((i * 6 + k) * mstride + base), n));
                *si = at(r);
            }
            let mut y = [[_mm256_setzero_ps(); 4]; 4];
            for q in 0..4 {
                let z = at([s[0][q], s[1][q], s[2][q], s[3][q], s[4][q], s[5][q]]);
                for p in 0..4 {
                    y[p][q] = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(z[p], vb), vlo), vhi);
                }
            }
            let (ox0, cols) = (4 * tx0, (g.ow - 4 * tx0).min(32));
            for (p, yp) in y.iter().enumerate() {
                let oy = 4 * ty + p;
                if oy >= g.oh {
                    break;
                }
                let (u0, u1) = (_mm256_unpacklo_ps(yp[0], yp[1]), _mm256_unpackhi_ps(yp[0], yp[1]));
                let (u2, u3) = (_mm256_unpacklo_ps(yp[2], yp[3]), _mm256_unpackhi_ps(yp[2], yp[3]));
                let (pd, ps) = (_mm256_castps_pd, _mm256_castpd_ps);
                let w0 = ps(_mm256_unpacklo_pd(pd(u0), pd(u2)));
                let w1 = ps(_mm256_unpackhi_pd(pd(u0), pd(u2)));
                let w2 = ps(_mm256_unpacklo_pd(pd(u1), pd(u3)));
                let w3 = ps(_mm256_unpackhi_pd(pd(u1), pd(u3)));
                let o = [
                    _mm256_permute2f128_ps::<0x20>(w0, w1),
                    _mm256_permute2f128_ps::<0x20>(w2, w3),
                    _mm256_permute2f128_ps::<0x31>(w0, w1),
                    _mm256_permute2f128_ps::<0x31>(w2, w3),
                ];
                let dst = plane.as_mut_ptr().add(oy * g.ow + ox0);
                for (j, v) in o.iter().enumerate() {
                    if cols > 8 * j {
                        store_part(dst.add(8 * j), *v, cols - 8 * j);
                    }
                }
            }
            tx0 += 8;
        }
    }
}
