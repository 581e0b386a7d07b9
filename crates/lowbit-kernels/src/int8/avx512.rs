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
    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, bi)), s);
    let y = if rq.bias_f.is_empty() { y } else { _mm512_add_ps(y, _mm512_loadu_ps(rq.bias_f.as_ptr().add(c))) };
    match rq.out {
        Out::F32 => {
            let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.lo)), _mm512_set1_ps(rq.hi));
            _mm512_mask_storeu_ps(p as *mut f32, m, y)
        }
        Out::Q { scale, zp, qmin, qmax } => {
            let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.ylo)), _mm512_set1_ps(rq.yhi));
            let q = quant16(y, scale, rq.inv, zp, qmin, qmax);
            _mm_mask_storeu_epi8(p as *mut i8, m, q);
        }
    }
}

/// `round_half_even(clamp(y / s, qmin - zp, qmax - zp)) + zp` as bytes, `y` already clamped to
/// `[ylo, yhi]` (see [`Requant`]).
#[inline(always)]
unsafe fn quant16(y: __m512, scale: f32, inv: f32, zp: i32, qmin: i32, qmax: i32) -> __m128i {
    let (vs, vinv) = (_mm512_set1_ps(scale), _mm512_set1_ps(inv));
    let q = _mm512_mul_ps(y, vinv);
    let r = _mm512_fnmadd_ps(q, vs, y);
    let t = _mm512_fmadd_ps(r, vinv, q);
    let t = _mm512_max_ps(t, _mm512_set1_ps((qmin - zp) as f32));
    let t = _mm512_min_ps(t, _mm512_set1_ps((qmax - zp) as f32));
    // Round half to even: the default MXCSR mode, as `round_ties_even` in the scalar path.
    _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(zp)))
}

/// Rows `0..m` × columns `j0..j0+jn` (jn ≤ 64) of the GEMM.
///
/// # Safety
/// As for [`super::gemm`]; the CPU has AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
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

/// One output row of a depthwise convolution. With quantized output, 64 channels at a time: the
/// bytes of 4 taps are interleaved (two rounds of unpacks) so that each i32 lane holds one
/// channel's 4 tap values, and `vpdpbusd` multiplies them by that channel's 4 weights.
///
/// # Safety
/// As for [`super::depthwise`]; the CPU has AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    let taps = g.kh * g.kw;
    let (Some(rp), Out::Q { scale, zp, qmin, qmax }) = (&w.rq_perm, rq.out) else {
        return depthwise_row_lanes(g, x, w, rq, out, oy);
    };
    if taps > 64 {
        return depthwise_row_lanes(g, x, w, rq, out, oy);
    }
    let mut toff = [0usize; 64];
    for (t, o) in toff.iter_mut().enumerate().take(taps) {
        *o = ((t / g.kw) * g.dh * g.wp + (t % g.kw) * g.dw) * g.cs;
    }
    let groups = w.groups();
    let zero = _mm512_setzero_si512();
    let (vlo, vhi) = (_mm512_set1_ps(rp.ylo), _mm512_set1_ps(rp.yhi));
    let xp = x.as_ptr();
    for c0 in (0..g.c).step_by(64) {
        let valid = (g.c - c0).min(64);
        let part_mask = [0, 1, 2, 3].map(|p| mask(valid.saturating_sub(p * 16)));
        let wb = w.vnni.as_ptr().add(c0 / 64 * groups * 256);
        let (mut sc, mut bf, mut bi) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4], [zero; 4]);
        for i in 0..4 {
            sc[i] = _mm512_loadu_ps(rp.scale.as_ptr().add(c0 + 16 * i));
            if !rp.bias_f.is_empty() {
                bf[i] = _mm512_loadu_ps(rp.bias_f.as_ptr().add(c0 + 16 * i));
            }
            bi[i] = _mm512_loadu_si512(rp.bias_i.as_ptr().add(c0 + 16 * i) as *const _);
        }
        for ox in 0..g.ow {
            let base = xp.add(((oy * g.sh) * g.wp + ox * g.sw) * g.cs + c0);
            let mut acc = [zero; 4];
            for gi in 0..groups {
                let t0 = gi * 4;
                let mut xs = [zero; 4];
                for (j, v) in xs.iter_mut().enumerate() {
                    if t0 + j < taps {
                        *v = _mm512_loadu_si512(base.add(toff[t0 + j]) as *const _);
                    }
                }
                let [x0, x1, x2, x3] = xs;
                let (alo, ahi) = (_mm512_unpacklo_epi8(x0, x1), _mm512_unpackhi_epi8(x0, x1));
                let (blo, bhi) = (_mm512_unpacklo_epi8(x2, x3), _mm512_unpackhi_epi8(x2, x3));
                let q = [
                    _mm512_unpacklo_epi16(alo, blo),
                    _mm512_unpackhi_epi16(alo, blo),
                    _mm512_unpacklo_epi16(ahi, bhi),
                    _mm512_unpackhi_epi16(ahi, bhi),
                ];
                let wg = wb.add(gi * 256);
                for i in 0..4 {
                    acc[i] = _mm512_dpbusd_epi32(acc[i], q[i], _mm512_loadu_si512(wg.add(64 * i) as *const _));
                }
            }
            // Epilogue in the permuted order, then a 4x4 dword transpose back to channel order.
            let mut b = [_mm_setzero_si128(); 4];
            for i in 0..4 {
                let y = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[i], bi[i]));
                let y = _mm512_mul_ps(y, sc[i]);
                let y = if rp.bias_f.is_empty() { y } else { _mm512_add_ps(y, bf[i]) };
                b[i] = quant16(_mm512_min_ps(_mm512_max_ps(y, vlo), vhi), scale, rp.inv, zp, qmin, qmax);
            }
            let t0 = _mm_unpacklo_epi32(b[0], b[1]);
            let t1 = _mm_unpacklo_epi32(b[2], b[3]);
            let t2 = _mm_unpackhi_epi32(b[0], b[1]);
            let t3 = _mm_unpackhi_epi32(b[2], b[3]);
            let r = [
                _mm_unpacklo_epi64(t0, t1),
                _mm_unpackhi_epi64(t0, t1),
                _mm_unpacklo_epi64(t2, t3),
                _mm_unpackhi_epi64(t2, t3),
            ];
            let o = out.0.add((oy * g.ow + ox) * g.c + c0);
            for (p, v) in r.iter().enumerate() {
                _mm_mask_storeu_epi8(o.add(16 * p) as *mut i8, part_mask[p], *v);
            }
        }
    }
}

/// Depthwise row with one channel per i32 lane (any output type).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn depthwise_row_lanes(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
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
                        let xv = _mm_maskz_loadu_epi8(m, xp.add((iy * g.wp + ix) * g.cs + c) as *const i8);
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

/// Peak probe: `iters` rounds of 12 independent `vpdpbusd zmm` (64 MACs each); returns a value
/// that depends on every result so the loop is not removed.
///
/// # Safety
/// The CPU has AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn peak_probe(iters: usize) -> i32 {
    let a = _mm512_set1_epi32(0x01020304);
    let b = _mm512_set1_epi32(0x01ff01ff);
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for x in acc {
        s = _mm512_add_epi32(s, x);
    }
    _mm512_reduce_add_epi32(s)
}
