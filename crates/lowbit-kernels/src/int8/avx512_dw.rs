//! AVX-512 VNNI depthwise kernels: the bytes of 4 taps interleaved so that each i32 lane holds one
//! channel's 4 tap values, `vpdpbusd` against that channel's 4 weights, 64 channels per block.

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::avx512_epi::{mask, round_div_zp, store16};
use crate::int8::avxvnni::evex::{dw_col as dw_col_half, dw_store32};
use crate::int8::pack::PackedDw;

/// Interleaves the bytes of 4 rows of 64 channels so that i32 lane `(L, j)` of vector `i` holds
/// channel `16L + 4i + j` of rows 0..3 (two rounds of unpacks).
#[inline(always)]
unsafe fn interleave4(x0: __m512i, x1: __m512i, x2: __m512i, x3: __m512i) -> [__m512i; 4] {
    let (alo, ahi) = (_mm512_unpacklo_epi8(x0, x1), _mm512_unpackhi_epi8(x0, x1));
    let (blo, bhi) = (_mm512_unpacklo_epi8(x2, x3), _mm512_unpackhi_epi8(x2, x3));
    [
        _mm512_unpacklo_epi16(alo, blo),
        _mm512_unpackhi_epi16(alo, blo),
        _mm512_unpacklo_epi16(ahi, bhi),
        _mm512_unpackhi_epi16(ahi, bhi),
    ]
}

/// Interleaved input column `ix` of the window's `KH` rows (missing rows read as zeros).
#[inline(always)]
unsafe fn dw_col<const KH: usize>(row0: *const u8, g: &DwGeom, ix: usize) -> [__m512i; 4] {
    let p = row0.add(ix * g.cs);
    let mut r = [_mm512_setzero_si512(); 4];
    for (ky, v) in r.iter_mut().enumerate().take(KH) {
        *v = _mm512_loadu_si512(p.add(ky * g.dh * g.wp * g.cs) as *const _);
    }
    interleave4(r[0], r[1], r[2], r[3])
}

#[inline(always)]
unsafe fn dw_col_dyn(row0: *const u8, g: &DwGeom, ix: usize) -> [__m512i; 4] {
    match g.kh {
        1 => dw_col::<1>(row0, g, ix),
        2 => dw_col::<2>(row0, g, ix),
        3 => dw_col::<3>(row0, g, ix),
        _ => dw_col::<4>(row0, g, ix),
    }
}

/// What the row kernels of one 64-channel block work on: the geometry, the block's first window
/// row and packed weights, its per-channel epilogue vectors (lane order), its output row and the
/// store mask of its valid channels.
#[derive(Clone, Copy)]
struct Block<'a> {
    g: &'a DwGeom,
    row0: *const u8,
    wb: *const i8,
    bi: &'a [__m512i; 4],
    sc: &'a [__m512; 4],
    bf: &'a [__m512; 4],
    rp: &'a Requant,
    orow: *mut u8,
    m: u64,
}

/// A row of a `KH`×`KW` depthwise convolution at stride `SW`, with the interleaved columns kept
/// in registers and shifted along the row.
#[inline(always)]
unsafe fn dw_cols_row<const KH: usize, const KW: usize, const SW: usize>(blk: &Block) {
    let Block { g, row0, wb, bi, sc, bf, rp, orow, m } = *blk;
    if KH == 3 && KW == 3 && SW <= 2 && rp.bias_f.is_empty() && rp.unclamped {
        if let Out::Q { qmin: 0, qmax: 255, .. } = rp.out {
            return dw3_fast::<SW>(blk);
        }
    }
    let mut cols: [[__m512i; 4]; KW] = [[_mm512_setzero_si512(); 4]; KW];
    for (k, c) in cols.iter_mut().enumerate() {
        *c = dw_col::<KH>(row0, g, k);
    }
    for ox in 0..g.ow {
        if ox > 0 {
            for k in 0..KW {
                cols[k] = if k + SW < KW { cols[k + SW] } else { dw_col::<KH>(row0, g, ox * SW + k) };
            }
        }
        let mut acc = *bi;
        for (kx, c) in cols.iter().enumerate() {
            let wg = wb.add(kx * 256);
            for i in 0..4 {
                acc[i] = _mm512_dpbusd_epi32(acc[i], c[i], _mm512_loadu_si512(wg.add(64 * i) as *const _));
            }
        }
        dw_store64(&acc, sc, bf, rp, orow.add(ox * g.c), m);
    }
}

/// [`dw_cols_row`] for a 3x3 window with the common epilogue (integer bias only, no clamp to
/// apply, full-range unsigned bytes): the 12 weight vectors held in registers for the row, the
/// three columns as separate values, each channel group's three products and its requantization
/// in one chain, no per-pixel tests. On AMD EPYC (Zen 5), a hot 128-channel band: 29 -> 24 cycles
/// per 64-channel output pixel (misaligned band), 19-20 with the band on a cache line.
#[inline(always)]
unsafe fn dw3_fast<const SW: usize>(blk: &Block) {
    let Block { g, row0, wb, bi, sc, rp, orow, m, .. } = *blk;
    let Out::Q { scale, zp, .. } = rp.out else { unreachable!() };
    let (vs, vinv, vzp) = (_mm512_set1_ps(scale), _mm512_set1_ps(rp.inv), _mm512_set1_epi32(zp));
    let w0: [__m512i; 4] = std::array::from_fn(|i| _mm512_loadu_si512(wb.add(64 * i) as *const _));
    let w1: [__m512i; 4] = std::array::from_fn(|i| _mm512_loadu_si512(wb.add(256 + 64 * i) as *const _));
    let w2: [__m512i; 4] = std::array::from_fn(|i| _mm512_loadu_si512(wb.add(512 + 64 * i) as *const _));
    let mut c0 = dw_col::<3>(row0, g, 0);
    let mut c1 = dw_col::<3>(row0, g, 1);
    let mut c2;
    let mut o = orow;
    for ox in 0..g.ow {
        c2 = dw_col::<3>(row0, g, ox * SW + 2);
        let mut q = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            let a = _mm512_dpbusd_epi32(bi[i], c0[i], w0[i]);
            let a = _mm512_dpbusd_epi32(a, c1[i], w1[i]);
            let a = _mm512_dpbusd_epi32(a, c2[i], w2[i]);
            q[i] = round_div_zp(_mm512_mul_ps(_mm512_cvtepi32_ps(a), sc[i]), vs, vinv, vzp);
        }
        let bytes = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        _mm512_mask_storeu_epi8(o as *mut i8, m, bytes);
        o = o.add(g.c);
        if SW == 1 {
            c0 = c1;
            c1 = c2;
        } else if ox + 1 < g.ow {
            c0 = c2;
            c1 = dw_col::<3>(row0, g, ox * SW + 3);
        }
    }
}

/// A row of a 5x5 depthwise convolution at stride `SW` in the [`PackedDw::five`] layout: rows
/// 0-3 of each window column interleaved once and kept in registers as a ring (column `k` in slot
/// `k mod 5`; the pixel loop unrolled five times so every slot index is a constant and only the
/// `SW` new columns are interleaved per pixel), row 4 interleaved per output pixel as one group
/// of its first four columns, and its last tap widened to the low byte of each lane by one byte
/// shuffle per vector (the other three bytes meet zero weights): 7 groups of `vpdpbusd`, the
/// minimum for 25 taps. The common epilogue (integer bias only, unsigned bytes) is resolved at
/// compile time (`EPI` 1 unclamped, 2 clamped; 0 any other, through [`dw_store64`]). Shifting the
/// 20 column vectors along the row instead moved them through the stack every pixel.
#[inline(always)]
unsafe fn dw5_row<const SW: usize>(blk: &Block) {
    let rp = blk.rp;
    if rp.bias_f.is_empty() && matches!(rp.out, Out::Q { qmin: 0, qmax: 255, .. }) {
        if rp.unclamped {
            dw5_ring::<SW, 1>(blk)
        } else {
            dw5_ring::<SW, 2>(blk)
        }
    } else {
        dw5_ring::<SW, 0>(blk)
    }
}

#[inline(always)]
unsafe fn dw5_ring<const SW: usize, const EPI: u8>(blk: &Block) {
    let (g, row0) = (blk.g, blk.row0);
    let mut c = [[_mm512_setzero_si512(); 4]; 5];
    // Columns `ox·SW + 5 - SW ..= ox·SW + 4` are new at pixel `ox`: the first ones before the loop.
    for (col, slot) in c.iter_mut().enumerate().take(5 - SW) {
        *slot = dw_col::<4>(row0, g, col);
    }
    let mut ox = 0;
    while ox < g.ow {
        dw5_step::<SW, 0, EPI>(&mut c, blk, &mut ox);
        dw5_step::<SW, 1, EPI>(&mut c, blk, &mut ox);
        dw5_step::<SW, 2, EPI>(&mut c, blk, &mut ox);
        dw5_step::<SW, 3, EPI>(&mut c, blk, &mut ox);
        dw5_step::<SW, 4, EPI>(&mut c, blk, &mut ox);
    }
}

/// Pixel `ox` (if in the row) of [`dw5_row`], `J = ox mod 5`: its new columns into their ring
/// slots, the 7 groups of products, the epilogue, the 64 bytes stored.
#[inline(always)]
unsafe fn dw5_step<const SW: usize, const J: usize, const EPI: u8>(
    c: &mut [[__m512i; 4]; 5],
    blk: &Block,
    ox: &mut usize,
) {
    let Block { g, row0, wb, bi, sc, bf, rp, orow, m } = *blk;
    let x = *ox;
    if x >= g.ow {
        return;
    }
    for k in 5 - SW..5 {
        c[(SW * J + k) % 5] = dw_col::<4>(row0, g, x * SW + k);
    }
    let p = row0.add(4 * g.dh * g.wp * g.cs + x * SW * g.cs);
    let mut r = [_mm512_setzero_si512(); 5];
    for (kx, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(p.add(kx * g.cs) as *const _);
    }
    let h = interleave4(r[0], r[1], r[2], r[3]);
    let mut acc = *bi;
    for (i, a) in acc.iter_mut().enumerate() {
        // (Loads written out: a closure would not inherit the caller's target features.)
        let wi = wb.add(64 * i);
        for kx in 0..5 {
            *a = _mm512_dpbusd_epi32(*a, c[(SW * J + kx) % 5][i], _mm512_loadu_si512(wi.add(kx * 256) as *const _));
        }
        *a = _mm512_dpbusd_epi32(*a, h[i], _mm512_loadu_si512(wi.add(5 * 256) as *const _));
        // Byte 4i + j of each 128-bit lane to the low byte of lane j (the order of `interleave4`);
        // bytes 1-3 of each lane select nothing (0x80: zero).
        let b = 4 * i as i32;
        let spread = _mm512_broadcast_i32x4(_mm_setr_epi32(b | -256, (b + 1) | -256, (b + 2) | -256, (b + 3) | -256));
        let last = _mm512_shuffle_epi8(r[4], spread);
        *a = _mm512_dpbusd_epi32(*a, last, _mm512_loadu_si512(wi.add(6 * 256) as *const _));
    }
    let o = orow.add(x * g.c);
    if EPI == 0 {
        dw_store64(&acc, sc, bf, rp, o, m);
    } else {
        let Out::Q { scale, zp, .. } = rp.out else { unreachable!() };
        let (vs, vinv, vzp) = (_mm512_set1_ps(scale), _mm512_set1_ps(rp.inv), _mm512_set1_epi32(zp));
        let (lo, hi) = (_mm512_set1_ps(rp.ylo), _mm512_set1_ps(rp.yhi));
        let mut q = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            let y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i]), sc[i]);
            let y = if EPI == 2 { _mm512_min_ps(_mm512_max_ps(y, lo), hi) } else { y };
            q[i] = round_div_zp(y, vs, vinv, vzp);
        }
        let bytes = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        _mm512_mask_storeu_epi8(o as *mut i8, m, bytes);
    }
    *ox = x + 1;
}

/// Epilogue of the 4 permuted accumulators of a 64-channel block, back in channel order: the
/// saturating packs (i32 → u16/i16 → u8/i8) undo the interleave's permutation lane by lane.
#[inline(always)]
unsafe fn dw_store64(acc: &[__m512i; 4], sc: &[__m512; 4], bf: &[__m512; 4], rp: &Requant, o: *mut u8, m: u64) {
    let Out::Q { scale, zp, qmin, qmax } = rp.out else { unreachable!() };
    let (vlo, vhi) = (_mm512_set1_ps(rp.ylo), _mm512_set1_ps(rp.yhi));
    let (vs, vinv, vzp) = (_mm512_set1_ps(scale), _mm512_set1_ps(rp.inv), _mm512_set1_epi32(zp));
    let mut q = [_mm512_setzero_si512(); 4];
    for i in 0..4 {
        let y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i]), sc[i]);
        let y = if rp.bias_f.is_empty() { y } else { _mm512_add_ps(y, bf[i]) };
        let y = if rp.unclamped { y } else { _mm512_min_ps(_mm512_max_ps(y, vlo), vhi) };
        q[i] = round_div_zp(y, vs, vinv, vzp);
    }
    let bytes = match (qmin, qmax) {
        (0, 255) => _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3])),
        (-128, 127) => _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3])),
        _ => {
            for v in q.iter_mut() {
                *v = _mm512_min_epi32(_mm512_max_epi32(*v, _mm512_set1_epi32(qmin)), _mm512_set1_epi32(qmax));
            }
            let (a, b) = (_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
            if qmin >= 0 {
                _mm512_packus_epi16(a, b)
            } else {
                _mm512_packs_epi16(a, b)
            }
        }
    };
    _mm512_mask_storeu_epi8(o as *mut i8, m, bytes);
}

/// A 3x3 depthwise row of a block with at most 32 valid channels (at `c0`) on 256-bit vectors:
/// the low halves of the block's packed weights and per-channel vectors hold channels `c0..c0 +
/// 32` (see [`crate::int8::pack::dw_perm`]), so the tail of 96 or 144 channels costs half a
/// block instead of a whole one. The columns and the epilogue are the 256-bit VNNI path's (same
/// lane order, same arithmetic as [`dw_store64`]).
#[inline(always)]
unsafe fn dw3_row_half<const SW: usize>(
    g: &DwGeom,
    row0: *const u8,
    wb: *const i8,
    rp: &Requant,
    c0: usize,
    orow: *mut u8,
    valid: usize,
) {
    let (mut sc, mut bf, mut bi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4], [_mm256_setzero_si256(); 4]);
    let mut wv = [[_mm256_setzero_si256(); 4]; 3];
    for i in 0..4 {
        sc[i] = _mm256_loadu_ps(rp.scale.as_ptr().add(c0 + 16 * i));
        if !rp.bias_f.is_empty() {
            bf[i] = _mm256_loadu_ps(rp.bias_f.as_ptr().add(c0 + 16 * i));
        }
        bi[i] = _mm256_loadu_si256(rp.bias_i.as_ptr().add(c0 + 16 * i) as *const _);
        for (kx, w) in wv.iter_mut().enumerate() {
            w[i] = _mm256_loadu_si256(wb.add(kx * 256 + 64 * i) as *const _);
        }
    }
    let mut c0v = dw_col_half(row0, g, 3, 0);
    let mut c1v = dw_col_half(row0, g, 3, 1);
    for ox in 0..g.ow {
        let c2v = dw_col_half(row0, g, 3, ox * SW + 2);
        let mut a = bi;
        for (k, c) in [&c0v, &c1v, &c2v].into_iter().enumerate() {
            for i in 0..4 {
                a[i] = _mm256_dpbusd_epi32(a[i], c[i], wv[k][i]);
            }
        }
        dw_store32(&a, &sc, &bf, rp, orow.add(ox * g.c), valid);
        if SW == 1 {
            (c0v, c1v) = (c1v, c2v);
        } else if ox + 1 < g.ow {
            (c0v, c1v) = (c2v, dw_col_half(row0, g, 3, ox * SW + 3));
        }
    }
}

/// One output row of a depthwise convolution. With quantized output, 64 channels at a time: the
/// bytes of 4 taps are interleaved so that each i32 lane holds one channel's 4 tap values, and
/// `vpdpbusd` multiplies them by that channel's 4 weights. With `by_cols` packing the 4 taps are
/// the rows of one window column, and each interleaved input column is reused by the output
/// pixels that share it (all of them at stride 1, every other one at stride 2).
///
/// # Safety
/// As for the band loop in `crate::int8::conv` (`x` holds the window rows of output row `oy`, `out` the band's outputs); the CPU has AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    let taps = g.kh * g.kw;
    let (Some(rp), Out::Q { .. }) = (&w.rq_perm, rq.out) else {
        return depthwise_row_lanes(g, x, w, rq, out, oy);
    };
    let groups = w.groups;
    let zero = _mm512_setzero_si512();
    let xp = x.as_ptr();
    if w.ppv > 1 {
        return depthwise_row_pixels(g, xp, w, rp, out, oy);
    }
    let mut toff = [0usize; 64];
    for (t, o) in toff.iter_mut().enumerate().take(taps) {
        *o = ((t / g.kw) * g.dh * g.wp + (t % g.kw) * g.dw) * g.cs;
    }
    for c0 in (0..g.c).step_by(64) {
        let valid = (g.c - c0).min(64);
        let m = if valid == 64 { u64::MAX } else { (1u64 << valid) - 1 };
        let wb = w.vnni.as_ptr().add(c0 / 64 * groups * 256);
        let (mut sc, mut bf, mut bi) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4], [zero; 4]);
        for i in 0..4 {
            sc[i] = _mm512_loadu_ps(rp.scale.as_ptr().add(c0 + 16 * i));
            if !rp.bias_f.is_empty() {
                bf[i] = _mm512_loadu_ps(rp.bias_f.as_ptr().add(c0 + 16 * i));
            }
            bi[i] = _mm512_loadu_si512(rp.bias_i.as_ptr().add(c0 + 16 * i) as *const _);
        }
        let row0 = xp.add((oy * g.sh) * g.wp * g.cs + c0);
        let orow = out.0.add(oy * g.ow * g.c + c0);
        if valid <= 32 && w.by_cols && g.kh == 3 && g.kw == 3 && g.sw <= 2 {
            // A tail block of at most 32 channels (96 = 64 + 32, 144 = 2·64 + 16) on half vectors.
            if g.sw == 1 {
                dw3_row_half::<1>(g, row0, wb, rp, c0, orow, valid);
            } else {
                dw3_row_half::<2>(g, row0, wb, rp, c0, orow, valid);
            }
            continue;
        }
        let blk = Block { g, row0, wb, bi: &bi, sc: &sc, bf: &bf, rp, orow, m };
        if w.five {
            if g.sw == 1 {
                dw5_row::<1>(&blk);
            } else {
                dw5_row::<2>(&blk);
            }
        } else if w.by_cols && g.kh == 3 && g.kw == 3 && g.sw == 1 {
            dw_cols_row::<3, 3, 1>(&blk);
        } else if w.by_cols && g.kh == 3 && g.kw == 3 && g.sw == 2 {
            dw_cols_row::<3, 3, 2>(&blk);
        } else if w.by_cols {
            for ox in 0..g.ow {
                let mut acc = bi;
                for kx in 0..g.kw {
                    let c = dw_col_dyn(row0, g, ox * g.sw + kx);
                    let wg = wb.add(kx * 256);
                    for i in 0..4 {
                        acc[i] = _mm512_dpbusd_epi32(acc[i], c[i], _mm512_loadu_si512(wg.add(64 * i) as *const _));
                    }
                }
                dw_store64(&acc, &sc, &bf, rp, orow.add(ox * g.c), m);
            }
        } else {
            for ox in 0..g.ow {
                let base = row0.add(ox * g.sw * g.cs);
                let mut acc = bi;
                for gi in 0..groups {
                    let t0 = gi * 4;
                    let mut xs = [zero; 4];
                    for (j, v) in xs.iter_mut().enumerate() {
                        if t0 + j < taps {
                            *v = _mm512_loadu_si512(base.add(toff[t0 + j]) as *const _);
                        }
                    }
                    let q = interleave4(xs[0], xs[1], xs[2], xs[3]);
                    let wg = wb.add(gi * 256);
                    for i in 0..4 {
                        acc[i] = _mm512_dpbusd_epi32(acc[i], q[i], _mm512_loadu_si512(wg.add(64 * i) as *const _));
                    }
                }
                dw_store64(&acc, &sc, &bf, rp, orow.add(ox * g.c), m);
            }
        }
    }
}

/// A 3x3 stride-1 depthwise row of `64 / ppv` channels with `ppv` neighbouring output pixels per
/// vector: the window column of pixel `ppv·X + k`'s 64 bytes are columns `ppv·X + k ..` of the
/// input, each pixel's channels against the block's repeated weights, so `dw_cols_row` at stride
/// `ppv` over `ow / ppv` vectors computes every pixel; the last `ow mod ppv` pixels under a mask
/// (their window reads past the row's end land in the next padded row or the band's spare bytes,
/// and are not stored).
#[inline(always)]
unsafe fn depthwise_row_pixels(g: &DwGeom, xp: *const u8, w: &PackedDw, rp: &Requant, out: OutPtr, oy: usize) {
    let (c, ppv) = (g.c, w.ppv);
    let (mut sc, mut bf, mut bi) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4], [_mm512_setzero_si512(); 4]);
    for i in 0..4 {
        sc[i] = _mm512_loadu_ps(rp.scale.as_ptr().add(16 * i));
        if !rp.bias_f.is_empty() {
            bf[i] = _mm512_loadu_ps(rp.bias_f.as_ptr().add(16 * i));
        }
        bi[i] = _mm512_loadu_si512(rp.bias_i.as_ptr().add(16 * i) as *const _);
    }
    let row0 = xp.add(oy * g.sh * g.wp * g.cs);
    let orow = out.0.add(oy * g.ow * c);
    let wb = w.vnni.as_ptr();
    let (full, rest) = (g.ow / ppv, g.ow % ppv);
    // (No closure for the two calls: a closure would not inherit the caller's target features.)
    let at = g.ow - rest;
    let parts = [
        (DwGeom { c: 64, ow: full, ..*g }, row0, orow, u64::MAX),
        (
            DwGeom { c: 64, ow: (rest > 0) as usize, ..*g },
            row0.add(at * g.cs),
            orow.add(at * c),
            (1u64 << (rest * c)) - 1,
        ),
    ];
    for (gv, row0, orow, m) in parts.iter().filter(|p| p.0.ow > 0) {
        let blk = Block { g: gv, row0: *row0, wb, bi: &bi, sc: &sc, bf: &bf, rp, orow: *orow, m: *m };
        if ppv == 2 {
            dw_cols_row::<3, 3, 2>(&blk);
        } else {
            dw_cols_row::<3, 3, 4>(&blk);
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
            let mut acc = [_mm512_loadu_si512(rq.bias_i.as_ptr().add(c) as *const _); 4];
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky * g.dh;
                for kx in 0..g.kw {
                    let wv = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                        w.w.as_ptr().add((ky * g.kw + kx) * w.c_pad + c) as *const _
                    ));
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
