//! lowbit's AVX-512 f32 kernels: the 6×64 GEMM tile and the channel-vector tile ([`gemm`],
//! [`gemm_t`]), the batch-1 matrix-vector panel, stride-2 gathers, and the sliding-window kernel
//! behind depthwise convolution and max pooling. Callers hold an [`crate::isa::F32Isa::Avx512`] path.

use rayon::prelude::*;
use std::arch::x86_64::*;

use crate::fp32::layout::{degenerate, k_blocks, split_gemm, BRows, Ptr, DW_BLOCK, GEMV_AHEAD, KC, KT, MR, NR, TP};
use crate::geom::ConvGeom;

/// Accumulates `x · panel` into `y` (`panel` is `[k][y.len()]`, at most 128 columns).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gemv_panel(x: &[f32], panel: &[f32], k: usize, y: &mut [f32]) {
    let wd = y.len();
    let m: [u16; 8] = std::array::from_fn(|v| mask(wd, v));
    let mut acc: [__m512; 8] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], y.as_ptr().add(v * 16)));
    let mut row = panel.as_ptr();
    // The cache lines of a row (a narrower last panel has fewer).
    let lines = wd.div_ceil(16);
    for p in 0..k {
        let xv = _mm512_set1_ps(*x.get_unchecked(p));
        // The panel streams from memory once per image: fetched `GEMV_AHEAD` rows ahead, as the
        // hardware prefetcher stops at each 4 KB page (8 rows here).
        for v in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(row.add(GEMV_AHEAD * wd + v * 16) as *const i8);
        }
        for v in 0..8 {
            acc[v] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m[v], row.add(v * 16)), acc[v]);
        }
        row = row.add(wd);
    }
    for v in 0..8 {
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(v * 16), m[v], acc[v]);
    }
}

#[inline(always)]
fn mask(rem: usize, v: usize) -> u16 {
    let lo = v * 16;
    if rem >= lo + 16 {
        0xFFFF
    } else if rem <= lo {
        0
    } else {
        ((1u32 << (rem - lo)) - 1) as u16
    }
}

/// One R×(16·V) tile of C over the k-range `[k0, k1)` (V zmm vectors per row, so a ragged
/// right edge costs only the vectors it needs).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const V: usize>(
    k0: usize,
    k1: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    rows: BRows,
    bias: *const f32,
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    last: bool,
) {
    let m: [u16; V] = std::array::from_fn(|v| mask(cols, v));
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            *x = if k0 == 0 {
                _mm512_set1_ps(*bias.add(r))
            } else {
                _mm512_maskz_loadu_ps(m[v], c.add(r * ldc + v * 16))
            };
        }
    }
    for p in k0..k1 {
        let bp = b.add(rows.off(p));
        let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], bp.add(v * 16)));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * lda + p));
            for v in 0..V {
                row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
            }
        }
    }
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for (r, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            let y = if last { _mm512_min_ps(_mm512_max_ps(*x, vlo), vhi) } else { *x };
            _mm512_mask_storeu_ps(c.add(r * ldc + v * 16), m[v], y);
        }
    }
}

/// All tiles with rows in `[i0, i1)` and columns in `[j0, j1)`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    rows: BRows,
    bias: *const f32,
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
) {
    k_blocks(k, KC, |k0, k1, last| {
        let mut j = j0;
        while j < j1 {
            let cols = (j1 - j).min(NR);
            let mut i = i0;
            while i < i1 {
                let nrows = (i1 - i).min(MR);
                let (ap, cp) = (a.add(i * lda), c.add(i * ldc + j));
                let (bp, bsp) = (b.add(j), bias.add(i));
                macro_rules! go {
                    ($r:literal) => {
                        match cols.div_ceil(16) {
                            4 => tile::<$r, 4>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                            3 => tile::<$r, 3>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                            2 => tile::<$r, 2>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                            _ => tile::<$r, 1>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                        }
                    };
                }
                match nrows {
                    6 => go!(6),
                    5 => go!(5),
                    4 => go!(4),
                    3 => go!(3),
                    2 => go!(2),
                    _ => go!(1),
                }
                i += MR;
            }
            j += NR;
        }
    });
}

/// One (16·V channels) × J columns tile of the channel-vector kernel over `[k0, k1)`. Partial
/// sums live in C (gathered and scattered along the channel stride `ldc`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_t<const V: usize, const J: usize>(
    k0: usize,
    k1: usize,
    at: *const f32,
    ld: usize,
    b: *const f32,
    rows: BRows,
    bias: *const f32,
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
    mrem: usize,
    last: bool,
) {
    let m: [u16; V] = std::array::from_fn(|v| mask(mrem, v));
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(ldc as i32),
    );
    let mut acc = [[_mm512_setzero_ps(); J]; V];
    for (v, row) in acc.iter_mut().enumerate() {
        let bv = _mm512_maskz_loadu_ps(m[v], bias.add(v * 16));
        for (j, x) in row.iter_mut().enumerate() {
            *x = if k0 == 0 {
                bv
            } else {
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m[v], idx, c.add(v * 16 * ldc + j))
            };
        }
    }
    for p in k0..k1 {
        let ap = at.add(p * ld);
        let av: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(ap.add(v * 16)));
        let bp = b.add(rows.off(p));
        for j in 0..J {
            let x = _mm512_set1_ps(*bp.add(j));
            for v in 0..V {
                acc[v][j] = _mm512_fmadd_ps(av[v], x, acc[v][j]);
            }
        }
    }
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for (v, row) in acc.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            let y = if last { _mm512_min_ps(_mm512_max_ps(*x, vlo), vhi) } else { *x };
            _mm512_mask_i32scatter_ps::<4>(c.add(v * 16 * ldc + j), m[v], idx, y);
        }
    }
}

/// Channel rows `[i0, i1)` (a multiple of 16 apart except at m) of the channel-vector kernel.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_t(
    i0: usize,
    i1: usize,
    n: usize,
    k: usize,
    at: *const f32,
    mp: usize,
    b: *const f32,
    rows: BRows,
    bias: *const f32,
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
) {
    // Columns per tile: as even a split of n into tiles of at most 8 as there is.
    let jw = n.div_ceil(n.div_ceil(8));
    k_blocks(k, KT, |k0, k1, last| {
        let mut i = i0;
        while i < i1 {
            let mrem = i1 - i;
            // This channel panel of pack_t: 48 wide except the last.
            let (ap, ld) = (at.add(i * k), TP.min(mp - i));
            let (bsp, ci) = (bias.add(i), c.add(i * ldc));
            let mut j = 0;
            while j < n {
                let cols = (n - j).min(jw);
                let (bp, cp) = (b.add(j), ci.add(j));
                macro_rules! go {
                    ($v:literal) => {
                        match cols {
                            8 => tile_t::<$v, 8>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            7 => tile_t::<$v, 7>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            6 => tile_t::<$v, 6>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            5 => tile_t::<$v, 5>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            4 => tile_t::<$v, 4>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            3 => tile_t::<$v, 3>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            2 => tile_t::<$v, 2>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            _ => tile_t::<$v, 1>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                        }
                    };
                }
                match mrem.div_ceil(16) {
                    1 => go!(1),
                    2 => go!(2),
                    _ => go!(3),
                }
                j += cols;
            }
            i += TP;
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_t(
    m: usize,
    n: usize,
    k: usize,
    at: *const f32,
    mp: usize,
    b: *const f32,
    rows: BRows,
    bias: &[f32],
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
) {
    if degenerate(m, n, k, bias, lo, hi, c, ldc) {
        return;
    }
    let bias = bias.as_ptr();
    let tiles = m.div_ceil(TP);
    if threads <= 1 || tiles < 2 {
        block_t(0, m, n, k, at, mp, b, rows, bias, lo, hi, c, ldc);
        return;
    }
    let (pa, pb, pc, pbias, rows) = (Ptr(at), Ptr(b), Ptr(c), Ptr(bias), Ptr(rows));
    let parts = (threads * 2).min(tiles);
    let per = tiles.div_ceil(parts);
    (0..parts).into_par_iter().for_each(|t| {
        let (i0, i1) = ((t * per * TP).min(m), ((t + 1) * per * TP).min(m));
        if i0 < i1 {
            block_t(i0, i1, n, k, pa.get(), mp, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc);
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    rows: BRows,
    bias: &[f32],
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
) {
    if degenerate(m, n, k, bias, lo, hi, c, ldc) {
        return;
    }
    let (pa, pb, pc, pbias, rows) = (Ptr(a), Ptr(b), Ptr(c), Ptr(bias.as_ptr()), Ptr(rows));
    split_gemm(m, n, MR, NR, threads, |i0, i1, j0, j1| {
        block(i0, i1, j0, j1, k, pa.get(), lda, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc)
    });
}

/// `dst[i] = src[2i]`: two masked loads and one permute per 16 outputs.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gather2(dst: &mut [f32], src: &[f32]) {
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

/// AVX-512 depthwise straight from the unpadded plane: out-of-range rows are skipped and
/// out-of-range columns masked off in the loads, so no padded copy is made.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn dw_channel_nopad(
    g: &ConvGeom,
    plane: &[f32],
    w: &[f32],
    bias: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
) {
    window::<false>(g, plane, w, bias, lo, hi, out)
}

/// Does [`window`] take geometry `g` (stride at most 2, window at most 16 wide)?
pub(crate) fn window_fits(g: &ConvGeom) -> bool {
    g.sw <= 2 && g.kw <= 16
}

/// The sliding-window kernel behind AVX-512 depthwise convolution (`MAX == false`: weighted sum
/// starting from `init`) and max pooling (`MAX == true`: maximum, masked lanes read as -inf).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn window<const MAX: bool>(
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
                    if K > 0 && g.sw == 2 && g.dw == 1 {
                        // Stride 2, window known: the row's 48 columns from the block's first are loaded
                        // once and split into even and odd columns; tap kx is the even (kx even) or odd
                        // run shifted by kx / 2 (2 loads and a permute per tap before). Masked-off
                        // columns read as the fill, as the per-tap loads read them.
                        let start = (ox0 * 2) as isize - g.pl as isize;
                        let (a0, b0) = ((-start).clamp(0, 48), (g.w as isize - start).clamp(0, 48));
                        let span = if b0 <= a0 { 0u64 } else { ((1u64 << b0) - 1) & !((1u64 << a0) - 1) };
                        let fill = if MAX { ninf } else { _mm512_setzero_ps() };
                        let base = row.wrapping_offset(start);
                        let x0 = _mm512_mask_loadu_ps(fill, span as u16, base);
                        let x1 = _mm512_mask_loadu_ps(fill, (span >> 16) as u16, base.wrapping_add(16));
                        let x2 = _mm512_mask_loadu_ps(fill, (span >> 32) as u16, base.wrapping_add(32));
                        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
                        let e = _mm512_castps_si512(_mm512_permutex2var_ps(x0, even, x1));
                        let o = _mm512_castps_si512(_mm512_permutex2var_ps(x0, odd, x1));
                        let en = _mm512_castps_si512(_mm512_permutex2var_ps(x2, even, x2));
                        let on = _mm512_castps_si512(_mm512_permutex2var_ps(x2, odd, x2));
                        for kx in 0..kw {
                            let (lo_, hi_) = if kx % 2 == 0 { (e, en) } else { (o, on) };
                            let x = _mm512_castsi512_ps(match kx / 2 {
                                0 => lo_,
                                1 => _mm512_alignr_epi32::<1>(hi_, lo_),
                                2 => _mm512_alignr_epi32::<2>(hi_, lo_),
                                3 => _mm512_alignr_epi32::<3>(hi_, lo_),
                                4 => _mm512_alignr_epi32::<4>(hi_, lo_),
                                5 => _mm512_alignr_epi32::<5>(hi_, lo_),
                                6 => _mm512_alignr_epi32::<6>(hi_, lo_),
                                _ => _mm512_alignr_epi32::<7>(hi_, lo_),
                            });
                            if MAX {
                                *a = _mm512_max_ps(*a, x);
                            } else {
                                let wv = _mm512_set1_ps(*w.get_unchecked(ky * kw + kx));
                                *a = _mm512_fmadd_ps(wv, x, *a);
                            }
                        }
                        continue;
                    }
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
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn dw_channel_flat(
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
