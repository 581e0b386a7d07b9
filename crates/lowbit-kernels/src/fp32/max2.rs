//! 2x2 stride-2 max pooling of f32 planes whose windows all lie inside the plane (no padding):
//! the most common pooling of plain CNNs (VGG-style classifiers, U-Net encoders). Each output row
//! is the pairwise maximum of two input rows, then of neighbouring columns: two loads, one maximum
//! and a de-interleave per vector of outputs, where the general window kernels spend a pass per tap.

use std::arch::x86_64::*;

use crate::geom::PoolGeom;
use crate::isa::F32Isa;

/// Whether `g` is a 2x2, stride-2 max pooling with every window inside the plane.
pub(crate) fn applies(g: &PoolGeom) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl) == (2, 2, 2, 2, 1, 1, 0, 0)
        && 2 * g.oh <= g.h
        && 2 * g.ow <= g.w
        && g.oh * g.ow > 0
}

/// Plane `src` (`g.h × g.w`) into `out` (`g.oh × g.ow`) on path `isa` (AVX2 or AVX-512).
///
/// # Safety
/// The path's features must be available; `g` must [`applies`]; the slices hold the planes.
pub(crate) unsafe fn plane(isa: F32Isa, g: &PoolGeom, src: &[f32], out: &mut [f32]) {
    assert!(applies(g) && src.len() >= g.h * g.w && out.len() >= g.oh * g.ow);
    if isa == F32Isa::Avx512 {
        plane512(g, src.as_ptr(), out.as_mut_ptr())
    } else {
        plane256(g, src.as_ptr(), out.as_mut_ptr())
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn plane512(g: &PoolGeom, src: *const f32, out: *mut f32) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mask = |n: usize| if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 };
    for oy in 0..g.oh {
        let (r0, r1) = (src.add(2 * oy * g.w), src.add((2 * oy + 1) * g.w));
        let o = out.add(oy * g.ow);
        let mut ox = 0;
        while ox < g.ow {
            // 16 outputs from 32 columns of each row (fewer at the end, masked).
            let n = (g.ow - ox).min(16);
            let (m0, m1) = (mask(2 * n), mask((2 * n).saturating_sub(16)));
            let x = 2 * ox;
            let a = _mm512_max_ps(_mm512_maskz_loadu_ps(m0, r0.add(x)), _mm512_maskz_loadu_ps(m0, r1.add(x)));
            let b = _mm512_max_ps(_mm512_maskz_loadu_ps(m1, r0.add(x + 16)), _mm512_maskz_loadu_ps(m1, r1.add(x + 16)));
            let y = _mm512_max_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
            _mm512_mask_storeu_ps(o.add(ox), mask(n), y);
            ox += 16;
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn plane256(g: &PoolGeom, src: *const f32, out: *mut f32) {
    use crate::fp32::avx2::{load_part, store_part};
    for oy in 0..g.oh {
        let (r0, r1) = (src.add(2 * oy * g.w), src.add((2 * oy + 1) * g.w));
        let o = out.add(oy * g.ow);
        let mut ox = 0;
        while ox < g.ow {
            // 8 outputs from 16 columns of each row (fewer at the end).
            let n = (g.ow - ox).min(8);
            let (n0, n1) = ((2 * n).min(8), (2 * n).saturating_sub(8));
            let x = 2 * ox;
            let a = _mm256_max_ps(load_part(r0.add(x), n0), load_part(r1.add(x), n0));
            let b = if n1 > 0 {
                _mm256_max_ps(load_part(r0.add(x + 8), n1), load_part(r1.add(x + 8), n1))
            } else {
                _mm256_setzero_ps()
            };
            // Per 128-bit half: [a0 a2 b0 b2] against [a1 a3 b1 b3], then the 64-bit pairs reordered.
            let y = _mm256_max_ps(_mm256_shuffle_ps::<0x88>(a, b), _mm256_shuffle_ps::<0xDD>(a, b));
            let y = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(y)));
            store_part(o.add(ox), y, n);
            ox += 8;
        }
    }
}
