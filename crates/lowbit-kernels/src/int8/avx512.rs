//! AVX-512 VNNI integer kernels: `vpdpbusd` (u8 × s8, four products summed into each i32 lane)
//! for GEMM, widened i32 multiply-adds for depthwise, and a 16-lane requantization epilogue.

use std::arch::x86_64::*;

use super::{DwGeom, Out, OutPtr, PackedB, PackedDw, Requant};

#[inline(always)]
fn mask(valid: usize) -> u16 {
    if valid >= 16 {
        0xFFFF
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// Epilogue of 16 accumulators for channels `c..c+16`, stored under `m`.
#[inline(always)]
unsafe fn store16(acc: __m512i, c: usize, rq: &Requant, p: *mut u8, m: u16) {
    let bi = _mm512_loadu_si512(rq.bias_i.as_ptr().add(c) as *const _);
    let s = _mm512_loadu_ps(rq.scale.as_ptr().add(c));
    let bf = _mm512_loadu_ps(rq.bias_f.as_ptr().add(c));
    let y = _mm512_cvtepi32_ps(_mm512_add_epi32(acc, bi));
    let y = _mm512_add_ps(_mm512_mul_ps(y, s), bf);
    let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.lo)), _mm512_set1_ps(rq.hi));
    match rq.out {
        Out::F32 => _mm512_mask_storeu_ps(p as *mut f32, m, y),
        Out::Q { scale, zp, qmin, qmax } => {
            let t = _mm512_div_ps(y, _mm512_set1_ps(scale));
            let t = _mm512_max_ps(t, _mm512_set1_ps((qmin - zp) as f32));
            let t = _mm512_min_ps(t, _mm512_set1_ps((qmax - zp) as f32));
            // Round half to even: the default MXCSR mode, as `round_ties_even` in the scalar path.
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(zp));
            _mm_mask_storeu_epi8(p as *mut i8, m, _mm512_cvtepi32_epi8(q));
        }
    }
}

/// Rows `0..m` × columns `j0..j0+jn` (jn ≤ 64) of the GEMM.
///
/// # Safety
/// As for [`super::gemm`]; the CPU has AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_tile(
    m: usize,
    a: *const u8,
    lda: usize,
    b: &PackedB,
    j0: usize,
    jn: usize,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
) {
    match jn.div_ceil(16) {
        4 => rows::<6, 4>(m, a, lda, b, j0, jn, rq, out, ldc),
        3 => rows::<8, 3>(m, a, lda, b, j0, jn, rq, out, ldc),
        2 => rows::<12, 2>(m, a, lda, b, j0, jn, rq, out, ldc),
        _ => rows::<16, 1>(m, a, lda, b, j0, jn, rq, out, ldc),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const MR: usize, const NR: usize>(
    m: usize,
    a: *const u8,
    lda: usize,
    b: &PackedB,
    j0: usize,
    jn: usize,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
) {
    let mut i = 0;
    while i < m {
        micro::<MR, NR>(MR.min(m - i), a.add(i * lda), lda, b, j0, jn, rq, out, ldc, i);
        i += MR;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const MR: usize, const NR: usize>(
    mr: usize,
    a: *const u8,
    lda: usize,
    b: &PackedB,
    j0: usize,
    jn: usize,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
    i0: usize,
) {
    // Rows past the end repeat the last row (computed, not stored).
    let ap: [*const u8; MR] = std::array::from_fn(|r| a.add(r.min(mr - 1) * lda));
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    let bp = b.quad.as_ptr().add(j0 * 4);
    let stride = b.n_pad * 4;
    for q in 0..b.k4 / 4 {
        let bq = bp.add(q * stride);
        let bv: [__m512i; NR] = std::array::from_fn(|v| _mm512_loadu_si512(bq.add(v * 64) as *const _));
        for r in 0..MR {
            let av = _mm512_set1_epi32((ap[r].add(q * 4) as *const i32).read_unaligned());
            for v in 0..NR {
                acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(mr) {
        for (v, x) in row.iter().enumerate() {
            let j = j0 + v * 16;
            store16(*x, j, rq, out.at(rq.out, i0 + r, j, ldc), mask(j0 + jn - j));
        }
    }
}

/// One output row of a depthwise convolution: 16 channels per vector, 4 pixels at a time.
///
/// # Safety
/// As for [`super::depthwise`]; the CPU has AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    let xp = x.as_ptr();
    let mut c = 0;
    while c < g.c {
        let m = mask(g.c - c);
        let mut ox = 0;
        while ox < g.ow {
            let np = (g.ow - ox).min(4);
            let mut acc = [_mm512_setzero_si512(); 4];
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky * g.dh;
                for kx in 0..g.kw {
                    let wv = _mm512_loadu_si512(w.w.as_ptr().add((ky * g.kw + kx) * w.c_pad + c) as *const _);
                    for (p, a) in acc.iter_mut().enumerate().take(np) {
                        let ix = (ox + p) * g.sw + kx * g.dw;
                        let xv = _mm_maskz_loadu_epi8(m, xp.add((iy * g.wp + ix) * g.c + c) as *const i8);
                        *a = _mm512_add_epi32(*a, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(xv), wv));
                    }
                }
            }
            for (p, a) in acc.iter().enumerate().take(np) {
                store16(*a, c, rq, out.at(rq.out, oy * g.ow + ox + p, c, g.c), m);
            }
            ox += 4;
        }
        c += 16;
    }
}
