//! AVX2 binary kernel: no popcount instruction, so bytes are counted with a nibble table
//! (`vpshufb`) and summed per 64-bit lane with `vpsadbw`. 4 output channels per register; micro-tile
//! 2 rows × 16 channels.

use std::arch::x86_64::*;

use crate::binary::layout::{BinConv, PANEL};
use crate::epilogue::{OutPtr, Requant};
use crate::int8::avx2::store8;

#[inline(always)]
unsafe fn popcnt64x4(v: __m256i, lut: __m256i, low: __m256i) -> __m256i {
    let lo = _mm256_and_si256(v, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
    let cnt = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
    _mm256_sad_epu8(cnt, _mm256_setzero_si256())
}

/// Rows `m0..m0+mn` of weight panel `p` (see [`BinConv::run_u8`]).
///
/// # Safety
/// As for [`crate::binary::scalar::panel`]; the CPU has AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn panel(
    c: &BinConv,
    a: &[u64],
    m0: usize,
    mn: usize,
    p: usize,
    w: &[u64],
    rq: &Requant,
    out: OutPtr,
) {
    let k = c.k;
    let wp = w.as_ptr().add(p * k * PANEL);
    let n_out = c.geom.c_out;
    let n0 = p * PANEL;
    let nn = PANEL.min(n_out - n0);
    let lut = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
    );
    let low = _mm256_set1_epi8(0x0f);
    let perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for half in 0..2 {
        let cb0 = n0 + 16 * half;
        if cb0 >= n0 + nn {
            break;
        }
        let mut m = m0;
        while m < m0 + mn {
            let rows = (m0 + mn - m).min(2);
            let mut acc = [[_mm256_setzero_si256(); 4]; 2];
            for kk in 0..k {
                let b = wp.add(kk * PANEL + 16 * half);
                let bv = [
                    _mm256_loadu_si256(b as *const _),
                    _mm256_loadu_si256(b.add(4) as *const _),
                    _mm256_loadu_si256(b.add(8) as *const _),
                    _mm256_loadu_si256(b.add(12) as *const _),
                ];
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    let av = _mm256_set1_epi64x(*a.get_unchecked((m + r) * k + kk) as i64);
                    for v in 0..4 {
                        let x = _mm256_xor_si256(av, bv[v]);
                        accr[v] = _mm256_add_epi64(accr[v], popcnt64x4(x, lut, low));
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate().take(rows) {
                let row = m + r;
                let mask = c.pad_mask(row);
                for q in 0..2 {
                    let cb = cb0 + 8 * q;
                    if cb >= n0 + nn {
                        break;
                    }
                    // Low dwords of two 4 x u64 vectors -> 8 x i32.
                    let mixed =
                        _mm256_blend_epi32::<0b1010_1010>(accr[2 * q], _mm256_slli_epi64::<32>(accr[2 * q + 1]));
                    let pop = _mm256_permutevar8x32_epi32(mixed, perm);
                    let mut v = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<1>(pop));
                    let mut mk = mask;
                    while mk != 0 {
                        let t = mk.trailing_zeros() as usize;
                        let ws = _mm256_loadu_si256(c.wsum.as_ptr().add(t * c.n_pad + cb) as *const _);
                        v = _mm256_sub_epi32(v, ws);
                        mk &= mk - 1;
                    }
                    let v = _mm256_mullo_epi32(v, _mm256_set1_epi32(c.mul));
                    let valid = (n0 + nn - cb).min(8);
                    store8(v, cb, rq, out.at(rq.out, row, cb, n_out), valid);
                }
            }
            m += rows;
        }
    }
}

/// [`crate::binary::pack_u8`] 32 channels per compare (`x < zp` is `!(max(x, zp) == x)`).
///
/// # Safety
/// The CPU has AVX2; `x` holds `pixels · c` bytes and `out` `pixels · words(c)` words.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_u8(x: &[u8], pixels: usize, c: usize, zp: u8, out: &mut [u64]) {
    let cw = crate::binary::layout::words(c);
    assert!(x.len() >= pixels * c && out.len() >= pixels * cw);
    let z = _mm256_set1_epi8(zp as i8);
    for p in 0..pixels {
        let row = &x[p * c..(p + 1) * c];
        for w in 0..cw {
            let chunk = &row[w * 64..(w * 64 + 64).min(c)];
            let mut bits = 0u64;
            let mut j = 0;
            while j + 32 <= chunk.len() {
                let v = _mm256_loadu_si256(chunk.as_ptr().add(j) as *const _);
                let ge = _mm256_cmpeq_epi8(_mm256_max_epu8(v, z), v);
                bits |= ((!(_mm256_movemask_epi8(ge) as u32)) as u64) << j;
                j += 32;
            }
            for (i, &v) in chunk.iter().enumerate().skip(j) {
                bits |= ((v < zp) as u64) << i;
            }
            out[p * cw + w] = bits;
        }
    }
}
