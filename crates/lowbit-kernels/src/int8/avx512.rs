//! AVX-512 VNNI integer kernels: `vpdpbusd` (u8 × s8, four products summed into each i32 lane)
//! for GEMM, widened i32 multiply-adds for depthwise, and a 16-lane requantization epilogue.

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::pack::{next_panel, PackedB, PackedDw};
use crate::int8::tile::{ASrc, Kernels, RowCursor, Tile};

/// The AVX-512 VNNI path's kernels.
pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

/// The store mask of the first `valid` of 16 lanes.
#[inline(always)]
pub(crate) fn mask(valid: usize) -> u16 {
    if valid >= 16 {
        0xFFFF
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// Epilogue of 16 accumulators (already holding the integer bias) for channels `c..c+16`,
/// stored under `m`.
#[inline(always)]
pub(crate) unsafe fn store16(acc: __m512i, c: usize, rq: &Requant, p: *mut u8, m: u16) {
    let s = _mm512_loadu_ps(rq.scale.as_ptr().add(c));
    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
    let y = if rq.bias_f.is_empty() { y } else { _mm512_add_ps(y, _mm512_loadu_ps(rq.bias_f.as_ptr().add(c))) };
    match rq.out {
        Out::F32 => {
            let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.lo)), _mm512_set1_ps(rq.hi));
            _mm512_mask_storeu_ps(p as *mut f32, m, y)
        }
        Out::Q { scale, zp, qmin, qmax } => {
            let y = if rq.unclamped {
                y
            } else {
                _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.ylo)), _mm512_set1_ps(rq.yhi))
            };
            let q = quant16(y, scale, rq.inv, zp, qmin, qmax);
            _mm_mask_storeu_epi8(p as *mut i8, m, q);
        }
    }
}

/// Epilogue of a block of `rows` × `16·nt` i32 accumulators (`nt ≤ 2`; rows `ld` i32 apart, the
/// integer bias not yet added): task rows `i..i + rows` (through the task's row map), columns
/// `j..` of the task. The per-channel vectors, masks and output constants are loaded once per
/// block and the rows walked without division, which matters where the reduction is short (the
/// stem's epilogue was 45% of its AMX time when every 16 outputs reloaded them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_block(
    acc: *const i32,
    ld: usize,
    i: usize,
    rows: usize,
    j: usize,
    nt: usize,
    t: &Tile,
    rq: &Requant,
    out: OutPtr,
) {
    let has_bf = !rq.bias_f.is_empty();
    let mut sc = [_mm512_setzero_ps(); 2];
    let mut bi = [_mm512_setzero_si512(); 2];
    let mut bf = [_mm512_setzero_ps(); 2];
    let mut m = [0u16; 2];
    for v in 0..nt {
        let c = j + 16 * v;
        sc[v] = _mm512_loadu_ps(rq.scale.as_ptr().add(c));
        bi[v] = _mm512_loadu_si512(rq.bias_i.as_ptr().add(c) as *const _);
        if has_bf {
            bf[v] = _mm512_loadu_ps(rq.bias_f.as_ptr().add(c));
        }
        m[v] = mask(t.j0 + t.jn - c);
    }
    let mut cur = RowCursor::new(t.map, t.i0 + i);
    let value = |r: usize, v: usize| {
        let a = _mm512_add_epi32(_mm512_loadu_si512(acc.add(r * ld + 16 * v) as *const _), bi[v]);
        let y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), sc[v]);
        if has_bf {
            _mm512_add_ps(y, bf[v])
        } else {
            y
        }
    };
    // The same clamp and quantization as `store16`, with the output kind matched once per block
    // rather than per vector: calling a shared per-vector tail made the AMX stem 5-10% slower
    // (0.443-0.461 -> 0.474-0.527 ms, three alternating runs of the kernel bench).
    match rq.out {
        Out::F32 => {
            let (lo, hi) = (_mm512_set1_ps(rq.lo), _mm512_set1_ps(rq.hi));
            for r in 0..rows {
                let Some(orow) = cur.next_row() else { continue };
                for (v, &mv) in m.iter().enumerate().take(nt) {
                    let y = _mm512_min_ps(_mm512_max_ps(value(r, v), lo), hi);
                    _mm512_mask_storeu_ps(out.at(rq.out, orow, j + 16 * v, t.ldc) as *mut f32, mv, y);
                }
            }
        }
        Out::Q { scale, zp, qmin, qmax } => {
            let (ylo, yhi) = (_mm512_set1_ps(rq.ylo), _mm512_set1_ps(rq.yhi));
            for r in 0..rows {
                let Some(orow) = cur.next_row() else { continue };
                for (v, &mv) in m.iter().enumerate().take(nt) {
                    let y = value(r, v);
                    let y = if rq.unclamped { y } else { _mm512_min_ps(_mm512_max_ps(y, ylo), yhi) };
                    let q = quant16(y, scale, rq.inv, zp, qmin, qmax);
                    _mm_mask_storeu_epi8(out.0.add(orow * t.ldc + j + 16 * v) as *mut i8, mv, q);
                }
            }
        }
    }
}

/// The epilogue of 16 accumulators of one output channel `c` (16 output rows, the integer bias not
/// yet added), [`store16`]'s arithmetic with the channel's numbers in every lane: 16 bytes, or 16
/// f32 values, at `dst`.
#[inline(always)]
pub(crate) unsafe fn store16_channel(acc: __m512i, c: usize, rq: &Requant, dst: *mut u8) {
    let a = _mm512_add_epi32(acc, _mm512_set1_epi32(rq.bias_i[c]));
    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(rq.scale[c]));
    let y = if rq.bias_f.is_empty() { y } else { _mm512_add_ps(y, _mm512_set1_ps(rq.bias_f[c])) };
    match rq.out {
        Out::F32 => {
            let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.lo)), _mm512_set1_ps(rq.hi));
            _mm512_storeu_ps(dst as *mut f32, y)
        }
        Out::Q { scale, zp, qmin, qmax } => {
            let y = if rq.unclamped {
                y
            } else {
                _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(rq.ylo)), _mm512_set1_ps(rq.yhi))
            };
            _mm_storeu_si128(dst as *mut __m128i, quant16(y, scale, rq.inv, zp, qmin, qmax));
        }
    }
}

/// Lane `r` of the result: the sum of the 16 lanes of `acc[r]` (wrapping, as any order of i32 sums).
#[inline(always)]
pub(crate) unsafe fn hsum16(acc: &[__m512i; 16]) -> __m512i {
    // Pairs of rows: per 128-bit chunk [a0+a2, b0+b2, a1+a3, b1+b3].
    let p: [__m512i; 8] = std::array::from_fn(|k| {
        let (a, b) = (acc[2 * k], acc[2 * k + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    });
    // Fours of rows: per chunk one partial sum of each of rows 4k..4k+4, in order.
    let q: [__m512i; 4] = std::array::from_fn(|k| {
        let (x, y) = (p[2 * k], p[2 * k + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y))
    });
    // Across the four chunks: chunk k of the result holds rows 4k..4k+4.
    let e01 = _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(q[0], q[1]), _mm512_shuffle_i32x4::<0xDD>(q[0], q[1]));
    let e23 = _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(q[2], q[3]), _mm512_shuffle_i32x4::<0xDD>(q[2], q[3]));
    _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(e01, e23), _mm512_shuffle_i32x4::<0xDD>(e01, e23))
}

/// `round_half_even(y / s) + zp` of 16 lanes: the correctly rounded quotient from `inv = 1/s`
/// (Markstein: `q = y·inv`, one FMA for the exact residual, one to correct), rounded half to even
/// (the default MXCSR mode, as `round_ties_even` in the scalar path), the zero point added.
#[inline(always)]
unsafe fn round_div_zp(y: __m512, vs: __m512, vinv: __m512, vzp: __m512i) -> __m512i {
    let q = _mm512_mul_ps(y, vinv);
    let t = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, vs, y), vinv, q);
    _mm512_add_epi32(_mm512_cvtps_epi32(t), vzp)
}

/// `round_half_even(clamp(y / s, qmin - zp, qmax - zp)) + zp` as bytes, `y` already clamped to
/// `[ylo, yhi]` (see [`Requant`]).
#[inline(always)]
unsafe fn quant16(y: __m512, scale: f32, inv: f32, zp: i32, qmin: i32, qmax: i32) -> __m128i {
    // Saturate after rounding: `y / s` is within one step of the range, so clamping after rounding
    // equals the scalar path's clamping before it.
    let q = round_div_zp(y, _mm512_set1_ps(scale), _mm512_set1_ps(inv), _mm512_set1_epi32(zp));
    match (qmin, qmax) {
        (0, 255) => _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512())),
        (-128, 127) => _mm512_cvtsepi32_epi8(q),
        _ => _mm512_cvtepi32_epi8(_mm512_min_epi32(
            _mm512_max_epi32(q, _mm512_set1_epi32(qmin)),
            _mm512_set1_epi32(qmax),
        )),
    }
}

/// One GEMM task (see [`crate::int8::gemm::gemm_ex`]), columns `jn ≤ 64`.
///
/// # Safety
/// As for [`crate::int8::gemm::gemm_ex`]; the CPU has AVX-512 F/BW/VL/VNNI and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    // The common requantization (integer bias only, full-range unsigned bytes) gets micro-tiles
    // whose epilogue has no per-vector tests: EPI 1 unclamped, 2 clamped, 0 anything else.
    let epi = match rq.out {
        Out::Q { qmin: 0, qmax: 255, .. } if rq.bias_f.is_empty() => 1 + !rq.unclamped as u8,
        _ => 0,
    };
    match (t.jn.div_ceil(16), epi) {
        (4, 1) => rows::<6, 4, 1>(t, a, src, b, rq, out),
        (4, 2) => rows::<6, 4, 2>(t, a, src, b, rq, out),
        (4, _) => rows::<6, 4, 0>(t, a, src, b, rq, out),
        (3, 1) => rows::<8, 3, 1>(t, a, src, b, rq, out),
        (3, 2) => rows::<8, 3, 2>(t, a, src, b, rq, out),
        (3, _) => rows::<8, 3, 0>(t, a, src, b, rq, out),
        (2, 1) => rows::<12, 2, 1>(t, a, src, b, rq, out),
        (2, 2) => rows::<12, 2, 2>(t, a, src, b, rq, out),
        (2, _) => rows::<12, 2, 0>(t, a, src, b, rq, out),
        (_, 1) => rows::<16, 1, 1>(t, a, src, b, rq, out),
        (_, 2) => rows::<16, 1, 2>(t, a, src, b, rq, out),
        _ => rows::<16, 1, 0>(t, a, src, b, rq, out),
    }
}

#[inline(always)]
unsafe fn rows<const MR: usize, const NR: usize, const EPI: u8>(
    t: &Tile,
    a: *const u8,
    src: &ASrc,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
) {
    // The next panel's weights are fetched into L2 a slice per row block, so that its first row
    // block does not wait on memory where the weights are met once per image (ResNet-18 in
    // `lowbit bench` on AVX-512 VNNI, 3 alternating pairs of runs: 8.36-8.42 -> 8.01-8.12 ms; no
    // change on AMX, whose loop is not waiting on these loads).
    let (next, next_len) = next_panel(b, t.j0);
    let blocks = t.rows.div_ceil(MR);
    let slice = next_len.div_ceil(blocks).div_ceil(64) * 64;
    let mut i = 0;
    while i < t.rows {
        let p0 = (i / MR) * slice;
        let mut p = p0;
        while p < (p0 + slice).min(next_len) {
            _mm_prefetch::<_MM_HINT_T1>(next.add(p));
            p += 64;
        }
        micro::<MR, NR, EPI>(MR.min(t.rows - i), a.add(i * src.lda), src, b, rq, out, t, i);
        i += MR;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const MR: usize, const NR: usize, const EPI: u8>(
    mr: usize,
    a: *const u8,
    src: &ASrc,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
    t: &Tile,
    i: usize,
) {
    // Rows past the end repeat the last row (computed, not stored).
    let ap: [*const u8; MR] = std::array::from_fn(|r| a.add(r.min(mr - 1) * src.lda));
    // Accumulators start at the integer bias (zero-point correction included).
    let bias: [__m512i; NR] =
        std::array::from_fn(|v| _mm512_loadu_si512(rq.bias_i.as_ptr().add(t.j0 + 16 * v) as *const _));
    let mut acc = [bias; MR];
    // This panel's contiguous block: `[k4/4][width][4]`.
    let width = crate::int8::pack::PANEL.min(b.n_pad - t.j0);
    let bp = b.quad.as_ptr().add(t.j0 * b.kp);
    let stride = width * 4;
    let quads = src.kc / 4;
    for (tp, &off) in src.taps.iter().enumerate() {
        let bt = bp.add(tp * quads * stride);
        for q in 0..quads {
            let bq = bt.add(q * stride);
            let bv: [__m512i; NR] = std::array::from_fn(|v| _mm512_loadu_si512(bq.add(v * 64) as *const _));
            for r in 0..MR {
                let av = _mm512_set1_epi32((ap[r].add(off + q * 4) as *const i32).read_unaligned());
                for v in 0..NR {
                    acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
                }
            }
        }
    }
    let cur = RowCursor::new(t.map, t.i0 + i);
    store_tile::<MR, NR, EPI>(&acc, mr, cur, t, rq, out);
}

/// The epilogue of a micro-tile (rows `..mr` stored, through the task's row map), stage by stage
/// over the whole tile (rows past `mr` included: they repeat the last row): each vector's
/// requantization is a chain of ten dependent operations, and row by row, with one to three
/// vectors per row, the out-of-order window waited on those chains (the 16-column tile spent more
/// time in its epilogue than in its products). `EPI` 1 and 2 are the common requantization resolved
/// at compile time (integer bias only, full-range unsigned bytes; 2 clamps `y`), 0 anything else
/// with its tests outside the loops. Four 8-bit vectors of a row are packed (i32 → i16 → 8 bits,
/// which saturate as the narrowing conversions do) and put back in channel order by one dword
/// permute: one store instead of four narrowing conversions of two µops each.
#[inline(always)]
unsafe fn store_tile<const MR: usize, const NR: usize, const EPI: u8>(
    acc: &[[__m512i; NR]; MR],
    mr: usize,
    mut cur: RowCursor,
    t: &Tile,
    rq: &Requant,
    out: OutPtr,
) {
    let mut sc = [_mm512_setzero_ps(); NR];
    for (v, x) in sc.iter_mut().enumerate() {
        *x = _mm512_loadu_ps(rq.scale.as_ptr().add(t.j0 + 16 * v));
    }
    let mut y = [[_mm512_setzero_ps(); NR]; MR];
    for r in 0..MR {
        for v in 0..NR {
            y[r][v] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][v]), sc[v]);
        }
    }
    if EPI == 0 && !rq.bias_f.is_empty() {
        let mut bf = [_mm512_setzero_ps(); NR];
        for (v, x) in bf.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(rq.bias_f.as_ptr().add(t.j0 + 16 * v));
        }
        for row in y.iter_mut() {
            for v in 0..NR {
                row[v] = _mm512_add_ps(row[v], bf[v]);
            }
        }
    }
    let (lo, hi, clamp) = match rq.out {
        Out::F32 if EPI == 0 => (rq.lo, rq.hi, true),
        _ => (rq.ylo, rq.yhi, EPI == 2 || (EPI == 0 && !rq.unclamped)),
    };
    if clamp {
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for row in y.iter_mut() {
            for x in row.iter_mut() {
                *x = _mm512_min_ps(_mm512_max_ps(*x, lo), hi);
            }
        }
    }
    let (scale, zp, qmin, qmax) = match rq.out {
        Out::Q { scale, zp, qmin, qmax } => (scale, zp, qmin, qmax),
        Out::F32 if EPI == 0 => return store_tile_f32(&y, mr, cur, t, rq, out),
        Out::F32 => unreachable!("the common requantization has 8-bit outputs"),
    };

    let (qmin, qmax) = if EPI == 0 { (qmin, qmax) } else { (0, 255) };
    let (vs, vinv, vzp) = (_mm512_set1_ps(scale), _mm512_set1_ps(rq.inv), _mm512_set1_epi32(zp));
    let mut qs = [[_mm512_setzero_si512(); NR]; MR];
    for r in 0..MR {
        for v in 0..NR {
            qs[r][v] = round_div_zp(y[r][v], vs, vinv, vzp);
        }
    }
    if !matches!((qmin, qmax), (0, 255) | (-128, 127)) {
        let (a, b) = (_mm512_set1_epi32(qmin), _mm512_set1_epi32(qmax));
        for row in qs.iter_mut() {
            for x in row.iter_mut() {
                *x = _mm512_min_epi32(_mm512_max_epi32(*x, a), b);
            }
        }
    }
    let unsigned = qmin >= 0;
    for q in qs.iter().take(mr) {
        let Some(orow) = cur.next_row() else { continue };
        let dst = out.0.add(orow * t.ldc + t.j0);
        if NR == 4 {
            let (a, b) = (_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
            let bytes = if unsigned { _mm512_packus_epi16(a, b) } else { _mm512_packs_epi16(a, b) };
            // Dword 4l + v of the packs holds channels 16v + 4l .. + 3: move it to dword 4v + l.
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            let m: u64 = if t.jn >= 64 { u64::MAX } else { (1u64 << t.jn) - 1 };
            _mm512_mask_storeu_epi8(dst as *mut i8, m, _mm512_permutexvar_epi32(idx, bytes));
        } else {
            for (v, &x) in q.iter().enumerate() {
                let x = if unsigned {
                    _mm512_cvtusepi32_epi8(_mm512_max_epi32(x, _mm512_setzero_si512()))
                } else {
                    _mm512_cvtsepi32_epi8(x)
                };
                _mm_mask_storeu_epi8(dst.add(16 * v) as *mut i8, mask(t.jn - 16 * v), x);
            }
        }
    }
}

/// [`store_tile`]'s f32 output: the clamped values stored.
#[inline(always)]
unsafe fn store_tile_f32<const MR: usize, const NR: usize>(
    y: &[[__m512; NR]; MR],
    mr: usize,
    mut cur: RowCursor,
    t: &Tile,
    rq: &Requant,
    out: OutPtr,
) {
    for row in y.iter().take(mr) {
        let Some(orow) = cur.next_row() else { continue };
        for (v, &x) in row.iter().enumerate() {
            let j = t.j0 + 16 * v;
            _mm512_mask_storeu_ps(out.at(rq.out, orow, j, t.ldc) as *mut f32, mask(t.jn - 16 * v), x);
        }
    }
}

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

/// A row of a `KH`×`KW` depthwise convolution at stride `SW`, with the interleaved columns kept
/// in registers and shifted along the row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_cols_row<const KH: usize, const KW: usize, const SW: usize>(
    g: &DwGeom,
    row0: *const u8,
    wb: *const i8,
    bi: &[__m512i; 4],
    sc: &[__m512; 4],
    bf: &[__m512; 4],
    rp: &Requant,
    orow: *mut u8,
    m: u64,
) {
    if KH == 3 && KW == 3 && SW <= 2 && rp.bias_f.is_empty() && rp.unclamped {
        if let Out::Q { qmin: 0, qmax: 255, .. } = rp.out {
            return dw3_fast::<SW>(g, row0, wb, bi, sc, rp, orow, m);
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
#[allow(clippy::too_many_arguments)]
unsafe fn dw3_fast<const SW: usize>(
    g: &DwGeom,
    row0: *const u8,
    wb: *const i8,
    bi: &[__m512i; 4],
    sc: &[__m512; 4],
    rp: &Requant,
    orow: *mut u8,
    m: u64,
) {
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
        if w.by_cols && g.kh == 3 && g.kw == 3 && g.sw == 1 {
            dw_cols_row::<3, 3, 1>(g, row0, wb, &bi, &sc, &bf, rp, orow, m);
        } else if w.by_cols && g.kh == 3 && g.kw == 3 && g.sw == 2 {
            dw_cols_row::<3, 3, 2>(g, row0, wb, &bi, &sc, &bf, rp, orow, m);
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
        if ppv == 2 {
            dw_cols_row::<3, 3, 2>(gv, *row0, wb, &bi, &sc, &bf, rp, *orow, *m);
        } else {
            dw_cols_row::<3, 3, 4>(gv, *row0, wb, &bi, &sc, &bf, rp, *orow, *m);
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
