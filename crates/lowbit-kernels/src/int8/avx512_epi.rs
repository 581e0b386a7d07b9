//! The AVX-512 requantization epilogues shared by the integer kernels (GEMM, depthwise, Winograd,
//! AMX, narrow and binary convolutions): 16 i32 accumulators to bytes or f32 values.

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::int8::tile::{RowCursor, Tile};

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
pub(crate) unsafe fn round_div_zp(y: __m512, vs: __m512, vinv: __m512, vzp: __m512i) -> __m512i {
    let q = _mm512_mul_ps(y, vinv);
    let t = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, vs, y), vinv, q);
    _mm512_add_epi32(_mm512_cvtps_epi32(t), vzp)
}

/// `round_half_even(clamp(y / s, qmin - zp, qmax - zp)) + zp` as bytes, `y` already clamped to
/// `[ylo, yhi]` (see [`Requant`]).
#[inline(always)]
pub(crate) unsafe fn quant16(y: __m512, scale: f32, inv: f32, zp: i32, qmin: i32, qmax: i32) -> __m128i {
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
