//! AVX-512 VNNI integer kernels: `vpdpbusd` (u8 × s8, four products summed into each i32 lane)
//! for GEMM (this file) and depthwise ([`crate::int8::avx512_dw`]), with the 16-lane
//! requantization epilogues of [`crate::int8::avx512_epi`].

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::int8::avx512_dw::depthwise_row;
use crate::int8::avx512_epi::{mask, round_div_zp};
use crate::int8::pack::{next_panel, PackedB};
use crate::int8::tile::{ASrc, Kernels, RowCursor, Tile};

/// The AVX-512 VNNI path's kernels.
pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

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
    if t.rows <= 2 {
        // A fully connected layer at batch 1 (or 2): the row tiles below would compute 6 to 16
        // copies of its one row.
        return match (t.rows, t.jn.div_ceil(16)) {
            (1, 4) => by_epi::<1, 4>(epi, t, a, src, b, rq, out),
            (1, 3) => by_epi::<1, 3>(epi, t, a, src, b, rq, out),
            (1, 2) => by_epi::<1, 2>(epi, t, a, src, b, rq, out),
            (1, _) => by_epi::<1, 1>(epi, t, a, src, b, rq, out),
            (_, 4) => by_epi::<2, 4>(epi, t, a, src, b, rq, out),
            (_, 3) => by_epi::<2, 3>(epi, t, a, src, b, rq, out),
            (_, 2) => by_epi::<2, 2>(epi, t, a, src, b, rq, out),
            _ => by_epi::<2, 1>(epi, t, a, src, b, rq, out),
        };
    }
    match t.jn.div_ceil(16) {
        4 => by_epi::<6, 4>(epi, t, a, src, b, rq, out),
        3 => by_epi::<8, 3>(epi, t, a, src, b, rq, out),
        2 => by_epi::<12, 2>(epi, t, a, src, b, rq, out),
        _ => by_epi::<16, 1>(epi, t, a, src, b, rq, out),
    }
}

/// [`rows`] with the epilogue kind as a compile-time parameter.
#[inline(always)]
unsafe fn by_epi<const MR: usize, const NR: usize>(
    epi: u8,
    t: &Tile,
    a: *const u8,
    src: &ASrc,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
) {
    match epi {
        1 => rows::<MR, NR, 1>(t, a, src, b, rq, out),
        2 => rows::<MR, NR, 2>(t, a, src, b, rq, out),
        _ => rows::<MR, NR, 0>(t, a, src, b, rq, out),
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
    // (Not on AMD CPUs: see `panel_prefetch`.)
    let (next, next_len) = if crate::isa::panel_prefetch() { next_panel(b, t.j0) } else { (b.quad.as_ptr(), 0) };
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
        // A last block of one or two rows runs on a tile of that height, not on MR rows of which
        // all but one or two are dropped (ResNet-18's and MobileNetV2's 7x7 planes: 49 = 8·6 + 1).
        let (ai, left) = (a.add(i * src.lda), t.rows - i);
        match left {
            1 if MR > 2 => micro::<1, NR, EPI>(1, ai, src, b, rq, out, t, i),
            2 if MR > 2 => micro::<2, NR, EPI>(2, ai, src, b, rq, out, t, i),
            _ => micro::<MR, NR, EPI>(MR.min(left), ai, src, b, rq, out, t, i),
        }
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
