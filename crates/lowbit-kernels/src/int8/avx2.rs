//! AVX2 integer kernels. `vpmaddubsw` would saturate its 16-bit pair sums (255·127·2 > 32767), so
//! the GEMM widens both operands to i16 and uses `vpmaddwd`, whose i32 pair sums are exact. The
//! weights stay int8 in memory and are sign-extended as they are loaded.

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::pack::{PackedB, PackedDw};
use crate::int8::scalar::depthwise_cols;
use crate::int8::tile::{ASrc, Kernels, Tile};

/// The AVX2 path's kernels.
pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

/// Epilogue of 8 accumulators for channels `c..c+valid` (valid ≤ 8).
#[inline(always)]
pub(crate) unsafe fn store8(acc: __m256i, c: usize, rq: &Requant, p: *mut u8, valid: usize) {
    let bi = _mm256_loadu_si256(rq.bias_i.as_ptr().add(c) as *const _);
    let s = _mm256_loadu_ps(rq.scale.as_ptr().add(c));
    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bi)), s);
    let y = if rq.bias_f.is_empty() { y } else { _mm256_add_ps(y, _mm256_loadu_ps(rq.bias_f.as_ptr().add(c))) };
    // max/min with the operand order of the scalar path's f32::max/min (NaN → the bound).
    let (lo, hi) = if rq.out == Out::F32 { (rq.lo, rq.hi) } else { (rq.ylo, rq.yhi) };
    let y = if rq.unclamped { y } else { _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(lo)), _mm256_set1_ps(hi)) };
    match rq.out {
        Out::F32 => {
            if valid == 8 {
                _mm256_storeu_ps(p as *mut f32, y);
            } else {
                let mut t = [0f32; 8];
                _mm256_storeu_ps(t.as_mut_ptr(), y);
                std::ptr::copy_nonoverlapping(t.as_ptr(), p as *mut f32, valid);
            }
        }
        Out::Q { scale, zp, qmin, qmax } => {
            let (vs, vinv) = (_mm256_set1_ps(scale), _mm256_set1_ps(rq.inv));
            let q = _mm256_mul_ps(y, vinv);
            let t = _mm256_fmadd_ps(_mm256_fnmadd_ps(q, vs, y), vinv, q);
            let t = _mm256_max_ps(t, _mm256_set1_ps((qmin - zp) as f32));
            let t = _mm256_min_ps(t, _mm256_set1_ps((qmax - zp) as f32));
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(zp));
            // Already within [qmin, qmax] (a byte range): the saturating packs keep every value,
            // and a signed value's byte is its two's complement (`x as u8`).
            let q16 = if qmin < 0 {
                _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
            } else {
                _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
            };
            let q8 = if qmin < 0 { _mm_packs_epi16(q16, q16) } else { _mm_packus_epi16(q16, q16) };
            if valid == 8 {
                _mm_storel_epi64(p as *mut _, q8);
            } else {
                let mut v = [0u8; 16];
                _mm_storeu_si128(v.as_mut_ptr() as *mut _, q8);
                std::ptr::copy_nonoverlapping(v.as_ptr(), p, valid);
            }
        }
    }
}

/// One GEMM task (see [`crate::int8::gemm::gemm_ex`]).
///
/// # Safety
/// As for [`crate::int8::gemm::gemm_ex`]; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    let mut j = t.j0;
    while j < t.j0 + t.jn {
        let cols = (t.j0 + t.jn - j).min(32);
        let mut i = 0;
        while i < t.rows {
            micro::<2>((t.rows - i).min(2), a.add(i * src.lda), src, b, j, cols, rq, out, t, i);
            i += 2;
        }
        j += 32;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const MR: usize>(
    mr: usize,
    a: *const u8,
    src: &ASrc,
    b: &PackedB,
    j0: usize,
    cols: usize,
    rq: &Requant,
    out: OutPtr,
    t: &Tile,
    i: usize,
) {
    let ap: [*const u8; MR] = std::array::from_fn(|r| a.add(r.min(mr - 1) * src.lda));
    let nv = cols.div_ceil(8);
    let mut acc = [[_mm256_setzero_si256(); 4]; MR];
    let bp = b.pairs.as_ptr().add(j0 * 2);
    let stride = b.n_pad * 2;
    for (tp, &off) in src.taps.iter().enumerate() {
        let bt = bp.add(tp * src.kc / 2 * stride);
        for kp in 0..src.kc / 2 {
            let bq = bt.add(kp * stride);
            // Columns past n_pad are never loaded: j0 + 8·nv ≤ n_pad.
            let mut bv = [_mm256_setzero_si256(); 4];
            for (v, x) in bv.iter_mut().enumerate().take(nv) {
                *x = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq.add(v * 16) as *const _));
            }
            for r in 0..MR {
                let x0 = *ap[r].add(off + 2 * kp) as i32;
                let x1 = *ap[r].add(off + 2 * kp + 1) as i32;
                let av = _mm256_set1_epi32(x0 | (x1 << 16));
                for v in 0..4 {
                    acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(av, bv[v]));
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(mr) {
        let Some(orow) = t.map.out_row(t.i0 + i + r) else { continue };
        for (v, x) in row.iter().enumerate().take(nv) {
            let j = j0 + v * 8;
            store8(*x, j, rq, out.at(rq.out, orow, j, t.ldc), (j0 + cols - j).min(8));
        }
    }
}

/// One output row of a depthwise convolution: 8 channels per vector, the channel tail scalar.
///
/// # Safety
/// As for the band loop in `crate::int8::conv` (`x` holds the window rows of output row `oy`, `out` the band's outputs); the CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    let xp = x.as_ptr();
    let full = g.c / 8 * 8;
    // 16-channel blocks with packed tap pairs: `vpmaddwd` does two taps of 8 channels at once.
    let (b16, taps) = if w.pairs.is_empty() { (0, 0) } else { (g.c / 16, g.kh * g.kw) };
    let np = taps.div_ceil(2);
    let tap_at = |t: usize, ox: usize| ((oy * g.sh + t / g.kw * g.dh) * g.wp + ox * g.sw + t % g.kw * g.dw) * g.cs;
    for ox in 0..g.ow {
        for b in 0..b16 {
            let c = b * 16;
            let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let wp = w.pairs.as_ptr().add(b * np * 32);
            for p in 0..np {
                let x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(xp.add(tap_at(2 * p, ox) + c) as *const _));
                let x1 = if 2 * p + 1 < taps {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(xp.add(tap_at(2 * p + 1, ox) + c) as *const _))
                } else {
                    _mm256_setzero_si256()
                };
                let lo = _mm256_loadu_si256(wp.add(p * 32) as *const _);
                let hi = _mm256_loadu_si256(wp.add(p * 32 + 16) as *const _);
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), lo));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), hi));
            }
            let o = out.at(rq.out, oy * g.ow + ox, c, g.c);
            store8(_mm256_permute2x128_si256::<0x20>(a0, a1), c, rq, o, 8);
            store8(_mm256_permute2x128_si256::<0x31>(a0, a1), c + 8, rq, out.at(rq.out, oy * g.ow + ox, c + 8, g.c), 8);
        }
        let mut c = b16 * 16;
        while c < full {
            let mut acc = _mm256_setzero_si256();
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky * g.dh;
                for kx in 0..g.kw {
                    let ix = ox * g.sw + kx * g.dw;
                    let wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        w.w.as_ptr().add((ky * g.kw + kx) * w.c_pad + c) as *const _
                    ));
                    let xv = _mm_loadl_epi64(xp.add((iy * g.wp + ix) * g.cs + c) as *const _);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(xv), wv));
                }
            }
            store8(acc, c, rq, out.at(rq.out, oy * g.ow + ox, c, g.c), 8);
            c += 8;
        }
    }
    if full < g.c {
        depthwise_cols(g, x, w, rq, out, oy, full, g.c);
    }
}

/// Peak probe: `iters` rounds of 12 independent `vpmaddwd ymm` + `vpaddd` (16 MACs each).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn peak_probe(iters: usize) -> i32 {
    let b = _mm256_set1_epi32(0x0003ffff);
    let mut acc = [_mm256_set1_epi32(0x00010002); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            // The multiply reads the accumulator, so it is not loop-invariant: with a constant
            // operand LLVM hoisted it and the probe measured additions (thousands of "GMAC/s").
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(*x, b));
        }
    }
    let mut v = [0i32; 8];
    let mut s = _mm256_setzero_si256();
    for x in acc {
        s = _mm256_add_epi32(s, x);
    }
    _mm256_storeu_si256(v.as_mut_ptr() as *mut _, s);
    v.iter().sum()
}
