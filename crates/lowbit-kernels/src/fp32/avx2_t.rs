//! lowbit's AVX2 channel-vector f32 GEMM (the AVX2 twin of [`crate::fp32::avx512`]'s `gemm_t`): ymm
//! vectors hold 8 output channels of one column, so products with few columns (7x7 planes: n = 49)
//! waste no lanes, and the weights, transposed once at plan time by
//! [`crate::fp32::gemm::pack_t`], stream in order. A tile is 16 channels × up to 6 columns (12
//! accumulators); B's elements are broadcast straight from its rows (no packing).

use std::arch::x86_64::*;

use crate::fp32::avx2::{load_part, store_part};
use crate::fp32::layout::{degenerate, k_blocks, split_gemm, BRows, Ptr, TP};

/// Reduction block (partial sums go back to C between blocks): 512 measured best on 7x7 planes
/// against 128, 256 and 1024.
const KT2: usize = 512;

/// One 16-channel × J-column tile over `[k0, k1)`. `ap`: the tile's first channel in its pack_t
/// panel (rows `ld` apart); `mrem`: valid channels (at most 16). Partial sums live in C between
/// reduction blocks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_t<const J: usize>(
    k0: usize,
    k1: usize,
    ap: *const f32,
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
    let nv = [mrem.min(8), mrem.saturating_sub(8).min(8)];
    let mut acc = [[_mm256_setzero_ps(); J]; 2];
    for (v, row) in acc.iter_mut().enumerate() {
        if k0 == 0 {
            let bv = load_part(bias.add(v * 8), nv[v]);
            row.iter_mut().for_each(|x| *x = bv);
        } else {
            for (j, x) in row.iter_mut().enumerate() {
                let mut t = [0f32; 8];
                for (l, tl) in t.iter_mut().enumerate().take(nv[v]) {
                    *tl = *c.add((v * 8 + l) * ldc + j);
                }
                *x = _mm256_loadu_ps(t.as_ptr());
            }
        }
    }
    let mut a = ap.add(k0 * ld);
    for p in k0..k1 {
        // The weights come from memory on the first column tile: ask for them 16 rows ahead.
        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * ld) as *const i8);
        let (a0, a1) = (_mm256_loadu_ps(a), _mm256_loadu_ps(a.add(8)));
        let bp = b.add(rows.off(p));
        let [r0, r1] = &mut acc;
        for (j, (x0, x1)) in r0.iter_mut().zip(r1.iter_mut()).enumerate() {
            let x = _mm256_broadcast_ss(&*bp.add(j));
            *x0 = _mm256_fmadd_ps(a0, x, *x0);
            *x1 = _mm256_fmadd_ps(a1, x, *x1);
        }
        a = a.add(ld);
    }
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for (v, row) in acc.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            let y = if last { _mm256_min_ps(_mm256_max_ps(*x, vlo), vhi) } else { *x };
            let mut t = [0f32; 8];
            store_part(t.as_mut_ptr(), y, 8);
            for (l, tl) in t.iter().enumerate().take(nv[v]) {
                *c.add((v * 8 + l) * ldc + j) = *tl;
            }
        }
    }
}

/// Channels `[i0, i1)` (a multiple of 16 apart except at m).
#[target_feature(enable = "avx2,fma")]
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
    // Columns per tile: as even a split of n into tiles of at most 6 as there is.
    let jw = n.div_ceil(n.div_ceil(6));
    k_blocks(k, KT2, |k0, k1, last| {
        let mut i = i0;
        while i < i1 {
            let mrem = (i1 - i).min(16);
            // This channel's panel of pack_t: 48 wide except the last; the tile's offset in it.
            let p0 = i / TP * TP;
            let (ap, ld) = (at.add(p0 * k + (i - p0)), TP.min(mp - p0));
            let (bsp, ci) = (bias.add(i), c.add(i * ldc));
            let mut j = 0;
            while j < n {
                let cols = (n - j).min(jw);
                let (bp, cp) = (b.add(j), ci.add(j));
                macro_rules! go {
                    ($j:literal) => {
                        tile_t::<$j>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last)
                    };
                }
                match cols {
                    6 => go!(6),
                    5 => go!(5),
                    4 => go!(4),
                    3 => go!(3),
                    2 => go!(2),
                    _ => go!(1),
                }
                j += cols;
            }
            i += 16;
        }
    });
}

/// `C = clamp(bias + A · B, lo, hi)` with A given as pack_t's `at`/`mp` (see
/// [`crate::fp32::gemm::sgemm_t`]).
///
/// # Safety
/// AVX2 and FMA must be available; the pointers must be valid for the shapes (the callers assert it).
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
    let (pa, pb, pc, pbias, rows) = (Ptr(at), Ptr(b), Ptr(c), Ptr(bias.as_ptr()), Ptr(rows));
    // Threads split the channels only (in tiles of 16); every tile needs all of n.
    split_gemm(m, 1, 16, 1, threads, |i0, i1, _, _| {
        block_t(i0, i1, n, k, pa.get(), mp, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc)
    });
}
