//! AVX-512 binary kernel: `vpopcntq` (VPOPCNTDQ) on 8 output channels per register. Each
//! activation word is broadcast to all lanes and XORed with the same word of 8 channels' weights,
//! so accumulators hold per-channel counts and need no horizontal reduction. Micro-tile: 6 rows ×
//! 32 channels (24 accumulators).

use std::arch::x86_64::*;

use crate::binary::layout::{BinConv, PANEL};
use crate::epilogue::{OutPtr, Requant};
use crate::int8::avx512_epi::store16;

/// Rows `m0..m0+mn` of weight panel `p` (see [`BinConv::run_u8`]).
///
/// # Safety
/// As for [`crate::binary::scalar::panel`]; the CPU has AVX-512 F/BW/VL/VPOPCNTDQ and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,fma")]
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
    let mut m = m0;
    while m < m0 + mn {
        let r = (m0 + mn - m).min(6);
        let ap = a.as_ptr().add(m * k);
        match r {
            6 => micro::<6>(c, ap, wp, m, p, rq, out),
            5 => micro::<5>(c, ap, wp, m, p, rq, out),
            4 => micro::<4>(c, ap, wp, m, p, rq, out),
            3 => micro::<3>(c, ap, wp, m, p, rq, out),
            2 => micro::<2>(c, ap, wp, m, p, rq, out),
            _ => micro::<1>(c, ap, wp, m, p, rq, out),
        }
        m += r;
    }
}

#[inline(always)]
unsafe fn micro<const MR: usize>(
    c: &BinConv,
    a: *const u64,
    wp: *const u64,
    m: usize,
    p: usize,
    rq: &Requant,
    out: OutPtr,
) {
    let k = c.k;
    let mut acc = [[_mm512_setzero_si512(); 4]; MR];
    for kk in 0..k {
        let b = wp.add(kk * PANEL);
        let bv = [
            _mm512_loadu_si512(b as *const _),
            _mm512_loadu_si512(b.add(8) as *const _),
            _mm512_loadu_si512(b.add(16) as *const _),
            _mm512_loadu_si512(b.add(24) as *const _),
        ];
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi64(*a.add(r * k + kk) as i64);
            for v in 0..4 {
                accr[v] = _mm512_add_epi64(accr[v], _mm512_popcnt_epi64(_mm512_xor_si512(av, bv[v])));
            }
        }
    }
    let n_out = c.geom.c_out;
    let n0 = p * PANEL;
    let nn = PANEL.min(n_out - n0);
    for (r, accr) in acc.iter().enumerate() {
        let row = m + r;
        let mask = c.pad_mask(row);
        for h in 0..2 {
            let cb = n0 + 16 * h;
            if cb >= n0 + nn {
                break;
            }
            let lo = _mm512_cvtepi64_epi32(accr[2 * h]);
            let hi = _mm512_cvtepi64_epi32(accr[2 * h + 1]);
            let pop = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let mut v = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<1>(pop));
            let mut mk = mask;
            while mk != 0 {
                let t = mk.trailing_zeros() as usize;
                v = _mm512_sub_epi32(v, _mm512_loadu_si512(c.wsum.as_ptr().add(t * c.n_pad + cb) as *const _));
                mk &= mk - 1;
            }
            v = _mm512_mullo_epi32(v, _mm512_set1_epi32(c.mul));
            v = _mm512_add_epi32(v, _mm512_loadu_si512(rq.bias_i.as_ptr().add(cb) as *const _));
            let valid = (n0 + nn - cb).min(16);
            let m16 = if valid >= 16 { 0xFFFF } else { ((1u32 << valid) - 1) as u16 };
            store16(v, cb, rq, out.at(rq.out, row, cb, n_out), m16);
        }
    }
}

/// [`crate::binary::pack_u8`] with one unsigned byte compare per 64 channels (the mask is the word).
///
/// # Safety
/// The CPU has AVX-512 F/BW; `x` holds `pixels · c` bytes and `out` `pixels · words(c)` words.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn pack_u8(x: &[u8], pixels: usize, c: usize, zp: u8, out: &mut [u64]) {
    let cw = crate::binary::layout::words(c);
    assert!(x.len() >= pixels * c && out.len() >= pixels * cw);
    let z = _mm512_set1_epi8(zp as i8);
    for p in 0..pixels {
        let row = x.as_ptr().add(p * c);
        for w in 0..cw {
            let n = (c - w * 64).min(64);
            let m: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            let v = _mm512_maskz_loadu_epi8(m, row.add(w * 64) as *const i8);
            *out.get_unchecked_mut(p * cw + w) = _mm512_mask_cmplt_epu8_mask(m, v, z);
        }
    }
}

/// Register-only bound of the xnor-popcount step: `iters` rounds of 8 independent
/// `vpxorq` + `vpopcntq` + `vpaddq` chains on zmm registers (512 binary multiply-adds each, no
/// memory traffic; in `asm!` so the compiler can neither hoist nor spill anything). Returns the
/// accumulated count so the work is observable.
///
/// # Safety
/// The CPU has AVX-512 F and VPOPCNTDQ.
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
pub unsafe fn peak_probe(iters: usize) -> i64 {
    let mut n = iters;
    let mut out = [0i64; 8];
    std::arch::asm!(
        "vpternlogq zmm16, zmm16, zmm16, 0",
        "vpternlogq zmm17, zmm17, zmm17, 0",
        "vpternlogq zmm18, zmm18, zmm18, 0",
        "vpternlogq zmm19, zmm19, zmm19, 0",
        "vpternlogq zmm20, zmm20, zmm20, 0",
        "vpternlogq zmm21, zmm21, zmm21, 0",
        "vpternlogq zmm22, zmm22, zmm22, 0",
        "vpternlogq zmm23, zmm23, zmm23, 0",
        "vpbroadcastq zmm8, {w}",
        "vpbroadcastq zmm0, {n}",
        "vpaddq zmm1, zmm0, zmm8",
        "vpsubq zmm2, zmm0, zmm8",
        "vpxorq zmm3, zmm0, zmm8",
        "vpaddq zmm4, zmm1, zmm1",
        "vpaddq zmm5, zmm2, zmm2",
        "vpaddq zmm6, zmm3, zmm3",
        "vpaddq zmm7, zmm4, zmm2",
        "test {n}, {n}",
        "jz 3f",
        "2:",
        "vpxorq zmm24, zmm0, zmm8", "vpopcntq zmm24, zmm24", "vpaddq zmm16, zmm16, zmm24",
        "vpxorq zmm25, zmm1, zmm8", "vpopcntq zmm25, zmm25", "vpaddq zmm17, zmm17, zmm25",
        "vpxorq zmm26, zmm2, zmm8", "vpopcntq zmm26, zmm26", "vpaddq zmm18, zmm18, zmm26",
        "vpxorq zmm27, zmm3, zmm8", "vpopcntq zmm27, zmm27", "vpaddq zmm19, zmm19, zmm27",
        "vpxorq zmm28, zmm4, zmm8", "vpopcntq zmm28, zmm28", "vpaddq zmm20, zmm20, zmm28",
        "vpxorq zmm29, zmm5, zmm8", "vpopcntq zmm29, zmm29", "vpaddq zmm21, zmm21, zmm29",
        "vpxorq zmm30, zmm6, zmm8", "vpopcntq zmm30, zmm30", "vpaddq zmm22, zmm22, zmm30",
        "vpxorq zmm31, zmm7, zmm8", "vpopcntq zmm31, zmm31", "vpaddq zmm23, zmm23, zmm31",
        "dec {n}",
        "jnz 2b",
        "3:",
        "vpaddq zmm16, zmm16, zmm17",
        "vpaddq zmm18, zmm18, zmm19",
        "vpaddq zmm20, zmm20, zmm21",
        "vpaddq zmm22, zmm22, zmm23",
        "vpaddq zmm16, zmm16, zmm18",
        "vpaddq zmm20, zmm20, zmm22",
        "vpaddq zmm16, zmm16, zmm20",
        "vmovdqu64 [{out}], zmm16",
        n = inout(reg) n,
        w = in(reg) 0x0123_4567_89ab_cdef_i64,
        out = in(reg) out.as_mut_ptr(),
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
        out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm16") _, out("zmm17") _, out("zmm18") _,
        out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _,
        out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _,
        out("zmm31") _,
        options(nostack),
    );
    let _ = n;
    out.iter().sum()
}

#[cfg(test)]
mod tests {
    /// The bound probe really does its 8 × `iters` xor-popcount-adds: its sum equals the count
    /// computed on scalars from the same inputs.
    #[test]
    fn peak_probe_counts_every_step() {
        if !crate::isa::BinIsa::Avx512.supported() {
            return;
        }
        for iters in [0usize, 1, 7, 1000] {
            let (n, w) = (iters as i64, 0x0123_4567_89ab_cdef_i64);
            let (a1, a2, a3) = (n.wrapping_add(w), n.wrapping_sub(w), n ^ w);
            let a = [
                n,
                a1,
                a2,
                a3,
                a1.wrapping_add(a1),
                a2.wrapping_add(a2),
                a3.wrapping_add(a3),
                a1.wrapping_add(a1).wrapping_add(a2),
            ];
            let per_iter: i64 = a.iter().map(|&x| (x ^ w).count_ones() as i64).sum::<i64>() * 8;
            // SAFETY: AVX-512 F and VPOPCNTDQ are present (checked above).
            assert_eq!(unsafe { super::peak_probe(iters) }, per_iter * iters as i64, "iters {iters}");
        }
    }
}
