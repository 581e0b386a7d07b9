//! AVX2 integer kernels. `vpmaddubsw` would saturate its 16-bit pair sums (255·127·2 > 32767), so
//! the GEMM widens both operands to i16 and uses `vpmaddwd`, whose i32 pair sums are exact. The
//! weights stay int8 in memory and are sign-extended as they are loaded.

use std::arch::x86_64::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::pack::{pair_index, PackedB, PackedDw, PAIR_PANEL};
use crate::int8::scalar::depthwise_cols;
use crate::int8::tile::{ASrc, Kernels, RowMap, Tile};

/// The AVX2 path's kernels.
pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

/// Epilogue of 8 accumulators for channels `c..c+valid` (valid ≤ 8).
#[inline(always)]
pub(crate) unsafe fn store8(acc: __m256i, c: usize, rq: &Requant, p: *mut u8, valid: usize) {
    let bi = _mm256_loadu_si256(rq.bias_i.as_ptr().add(c) as *const _);
    let s = _mm256_loadu_ps(rq.scale.as_ptr().add(c));
    let bf = (!rq.bias_f.is_empty()).then(|| _mm256_loadu_ps(rq.bias_f.as_ptr().add(c)));
    store8_with(acc, bi, s, bf, rq, p, valid)
}

/// The epilogue of 8 accumulators of one output channel `c` (8 output rows, the integer bias not
/// yet added): [`store8`]'s arithmetic with the channel's numbers in every lane, 8 bytes or 8 f32
/// values at `p`.
#[inline(always)]
pub(crate) unsafe fn store8_channel(acc: __m256i, c: usize, rq: &Requant, p: *mut u8) {
    let bf = (!rq.bias_f.is_empty()).then(|| _mm256_set1_ps(rq.bias_f[c]));
    store8_with(acc, _mm256_set1_epi32(rq.bias_i[c]), _mm256_set1_ps(rq.scale[c]), bf, rq, p, 8)
}

/// `(acc + bi)·s (+ bf)`, clamped, stored as [`Requant::out`] asks (the first `valid` lanes).
#[inline(always)]
unsafe fn store8_with(
    acc: __m256i,
    bi: __m256i,
    s: __m256,
    bf: Option<__m256>,
    rq: &Requant,
    p: *mut u8,
    valid: usize,
) {
    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bi)), s);
    let y = match bf {
        Some(bf) => _mm256_add_ps(y, bf),
        None => y,
    };
    // max/min with the operand order of the scalar path's f32::max/min (NaN → the bound).
    let (lo, hi) = if rq.out == Out::F32 { (rq.lo, rq.hi) } else { (rq.ylo, rq.yhi) };
    let y = if rq.unclamped { y } else { _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(lo)), _mm256_set1_ps(hi)) };
    match rq.out {
        Out::F32 => put_f32x8(p as *mut f32, y, valid),
        Out::Q { scale, zp, qmin, qmax } => put_u8x8(p, quantize8(y, scale, rq.inv, zp, qmin, qmax), valid),
    }
}

/// Lane `r` of the result: the sum of the 8 lanes of `acc[r]` (wrapping, as any order of i32 sums).
#[inline(always)]
pub(crate) unsafe fn hsum8(acc: &[__m256i; 8]) -> __m256i {
    // Per 128-bit half: [r0, r1, r2, r3] partial sums (low half lanes 0-3, high half lanes 4-7).
    let lo = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
    let hi = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[4], acc[5]), _mm256_hadd_epi32(acc[6], acc[7]));
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(lo, hi), _mm256_permute2x128_si256::<0x31>(lo, hi))
}

/// The first `valid ≤ 8` of eight f32 values stored at `p`.
#[inline(always)]
unsafe fn put_f32x8(p: *mut f32, y: __m256, valid: usize) {
    if valid == 8 {
        _mm256_storeu_ps(p, y);
    } else {
        let mut t = [0f32; 8];
        _mm256_storeu_ps(t.as_mut_ptr(), y);
        std::ptr::copy_nonoverlapping(t.as_ptr(), p, valid);
    }
}

/// The first `valid ≤ 8` of the eight bytes in the low half of `q8` stored at `p`.
#[inline(always)]
unsafe fn put_u8x8(p: *mut u8, q8: __m128i, valid: usize) {
    if valid == 8 {
        _mm_storel_epi64(p as *mut _, q8);
    } else {
        let mut v = [0u8; 16];
        _mm_storeu_si128(v.as_mut_ptr() as *mut _, q8);
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, valid);
    }
}

/// `round_half_even(y / s) + zp` on eight lanes, the division correctly rounded from `inv = 1/s`
/// (Markstein: one FMA correction), for `y` clamped or provably unclamped so that the conversion
/// cannot overflow (the 256-bit paths' counterpart of the AVX-512 `round_div_zp`).
#[inline(always)]
pub(crate) unsafe fn round_div_zp8(y: __m256, vs: __m256, vinv: __m256, vzp: __m256i) -> __m256i {
    let q = _mm256_mul_ps(y, vinv);
    let t = _mm256_fmadd_ps(_mm256_fnmadd_ps(q, vs, y), vinv, q);
    _mm256_add_epi32(_mm256_cvtps_epi32(t), vzp)
}

/// QuantizeLinear of eight f32 values `y` (clamped beforehand so that `y·inv` cannot overflow):
/// `y / scale` correctly rounded from `inv = 1/scale` (Markstein: one FMA correction), clamped to
/// `qmin - zp ..= qmax - zp`, rounded half to even, `+ zp`, as eight bytes in the low half.
#[inline(always)]
pub(crate) unsafe fn quantize8(y: __m256, scale: f32, inv: f32, zp: i32, qmin: i32, qmax: i32) -> __m128i {
    let (vs, vinv) = (_mm256_set1_ps(scale), _mm256_set1_ps(inv));
    let q = _mm256_mul_ps(y, vinv);
    let t = _mm256_fmadd_ps(_mm256_fnmadd_ps(q, vs, y), vinv, q);
    let t = _mm256_max_ps(t, _mm256_set1_ps((qmin - zp) as f32));
    let t = _mm256_min_ps(t, _mm256_set1_ps((qmax - zp) as f32));
    let q = _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(zp));
    // Already within [qmin, qmax] (a byte range): the saturating packs keep every value,
    // and a signed value's byte is its two's complement (`x as u8`).
    let (q0, q1) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
    if qmin < 0 {
        let h = _mm_packs_epi32(q0, q1);
        _mm_packs_epi16(h, h)
    } else {
        let h = _mm_packus_epi32(q0, q1);
        _mm_packus_epi16(h, h)
    }
}

/// The epilogue of a micro-tile ([`store8`]'s arithmetic; rows `..mr` stored), stage by stage over
/// the whole tile (see the AVX-512 `store_tile`): the requantization of a vector is a chain of
/// dependent operations that, row by row, left the out-of-order window waiting. `BIASED`: the
/// accumulators started at the integer bias (otherwise it is added here).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile<const MR: usize, const NV: usize, const BIASED: bool>(
    acc: &[[__m256i; NV]; MR],
    mr: usize,
    j0: usize,
    cols: usize,
    rq: &Requant,
    out: OutPtr,
    t: &Tile,
    i: usize,
) {
    let mut y = [[_mm256_setzero_ps(); NV]; MR];
    for v in 0..NV {
        let c = j0 + 8 * v;
        let s = _mm256_loadu_ps(rq.scale.as_ptr().add(c));
        if BIASED {
            for r in 0..MR {
                y[r][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][v]), s);
            }
        } else {
            let bi = _mm256_loadu_si256(rq.bias_i.as_ptr().add(c) as *const _);
            for r in 0..MR {
                y[r][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc[r][v], bi)), s);
            }
        }
        if !rq.bias_f.is_empty() {
            let bf = _mm256_loadu_ps(rq.bias_f.as_ptr().add(c));
            for row in y.iter_mut() {
                row[v] = _mm256_add_ps(row[v], bf);
            }
        }
    }
    let (lo, hi) = if rq.out == Out::F32 { (rq.lo, rq.hi) } else { (rq.ylo, rq.yhi) };
    if !rq.unclamped {
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        for row in y.iter_mut() {
            for x in row.iter_mut() {
                *x = _mm256_min_ps(_mm256_max_ps(*x, lo), hi);
            }
        }
    }
    let Out::Q { scale, zp, qmin, qmax } = rq.out else {
        for (r, row) in y.iter().enumerate().take(mr) {
            let Some(orow) = t.map.out_row(t.i0 + i + r) else { continue };
            for (v, &x) in row.iter().enumerate() {
                let j = j0 + v * 8;
                put_f32x8(out.at(rq.out, orow, j, t.ldc) as *mut f32, x, (j0 + cols - j).min(8));
            }
        }
        return;
    };
    if matches!((qmin, qmax), (0, 255) | (-128, 127)) {
        // A whole byte range, y clamped or provably unclamped (|y/s| < 2^30): the saturating packs
        // clamp without compares before them; two vectors (16 channels) per pack sequence and store.
        let signed = qmin < 0;
        let (vs, vinv, vzp) = (_mm256_set1_ps(scale), _mm256_set1_ps(rq.inv), _mm256_set1_epi32(zp));
        let mut q = [[_mm256_setzero_si256(); NV]; MR];
        for r in 0..MR {
            for v in 0..NV {
                q[r][v] = round_div_zp8(y[r][v], vs, vinv, vzp);
            }
        }
        // 32 channels: both packs' 32-bit pieces come out as channels 0-3, 8-11, 16-19, 24-27
        // (low lane) and 4-7, 12-15, 20-23, 28-31 (high lane); one dword permute restores the order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (r, row) in q.iter().enumerate().take(mr) {
            let Some(orow) = t.map.out_row(t.i0 + i + r) else { continue };
            let o = out.0.add(orow * t.ldc);
            let mut v = 0;
            while v + 4 <= NV && cols >= v * 8 + 32 {
                let (a, b) = (_mm256_packs_epi32(row[v], row[v + 1]), _mm256_packs_epi32(row[v + 2], row[v + 3]));
                let bytes = if signed { _mm256_packs_epi16(a, b) } else { _mm256_packus_epi16(a, b) };
                _mm256_storeu_si256(o.add(j0 + v * 8) as *mut _, _mm256_permutevar8x32_epi32(bytes, order));
                v += 4;
            }
            while v < NV {
                let j = j0 + v * 8;
                // Signed 32->16 saturation (of one vector, or two with their 64-bit pieces put back in
                // order), then 16->8 saturation.
                let w = if v + 1 < NV {
                    _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(row[v], row[v + 1]))
                } else {
                    _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(row[v], row[v]))
                };
                let (lo, hi) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                let b = if signed { _mm_packs_epi16(lo, hi) } else { _mm_packus_epi16(lo, hi) };
                let left = j0 + cols - j;
                if v + 1 < NV && left >= 16 {
                    _mm_storeu_si128(o.add(j) as *mut _, b);
                } else {
                    put_u8x8(o.add(j), b, left.min(8));
                    if v + 1 < NV && left > 8 {
                        put_u8x8(o.add(j + 8), _mm_srli_si128::<8>(b), left - 8);
                    }
                }
                v += 2;
            }
        }
        return;
    }
    let mut q = [[_mm_setzero_si128(); NV]; MR];
    for r in 0..MR {
        for v in 0..NV {
            q[r][v] = quantize8(y[r][v], scale, rq.inv, zp, qmin, qmax);
        }
    }
    for (r, row) in q.iter().enumerate().take(mr) {
        let Some(orow) = t.map.out_row(t.i0 + i + r) else { continue };
        for (v, &x) in row.iter().enumerate() {
            let j = j0 + v * 8;
            put_u8x8(out.0.add(orow * t.ldc + j), x, (j0 + cols - j).min(8));
        }
    }
}

/// Rows of A widened at a time by [`gemm_tile`] (a multiple of every micro-kernel's row count).
const ROW_BLOCK: usize = 24;

thread_local! {
    /// A's rows widened to u16, so a pair of reduction bytes is one 32-bit broadcast.
    static WIDE: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reductions at least this long run on 6 × 16 micro-tiles (see [`gemm_tile`]).
const DEEP_K: usize = 64;

/// One GEMM task (see [`crate::int8::gemm::gemm_ex`]). A block of rows is first widened to u16
/// (each pair of reduction bytes then feeds `vpmaddwd` from one `vpbroadcastd` load instead of two
/// byte loads, a shift, an or and a move), then every column block of the task runs over it on a
/// micro-kernel whose accumulators, sign-extended weight vectors, broadcast and product fit the 16
/// vector registers. Reductions of [`DEEP_K`] or more take 16 columns at a time on 6 × 16 tiles
/// (12 × 8 for a last 8 columns): each weight vector is sign-extended (`vpmovsxbw`, which shares
/// ports with `vpmaddwd` on AMD Zen 4) once per 6 products instead of once per 2 on a 2 × 32
/// tile. A register-only loop of `vpmaddwd` ran at 93 GMAC/s on one Zen 4 core, 73 with one
/// `vpmovsxbw` per two; `cargo bench -p lowbit-kernels --bench int8`: ResNet-18's 3x3 GEMMs
/// 70-72 -> 80-83 GMAC/s, MobileNetV2's 14x14 expansion (K = 96) 62 -> 67. Shorter reductions,
/// where the epilogue outweighs the products, keep 32-column blocks (2 × 32, 3 × 24, 6 × 16 or
/// 12 × 8), whose epilogue packs 32 channels per store: K = 32 50.6 against 48.5 GMAC/s, K = 16
/// 36.0 against 32.9. (3 × 32 and 4 × 24 needed 17 registers: LLVM kept accumulators on the
/// stack.)
///
/// # Safety
/// As for [`crate::int8::gemm::gemm_ex`]; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    let k = src.taps.len() * src.kc;
    WIDE.with(|wide| {
        let mut wide = wide.borrow_mut();
        if wide.len() < ROW_BLOCK * k {
            wide.resize(ROW_BLOCK * k, 0);
        }
        let mut i = 0;
        while i < t.rows {
            let rows = (t.rows - i).min(ROW_BLOCK);
            widen(a.add(i * src.lda), src, rows, wide.as_mut_ptr());
            let wa = wide.as_ptr() as *const u32;
            let mut j = t.j0;
            // One or two rows (a fully connected layer at batch 1): one row per micro-tile (not a
            // tile of repeated rows whose sums are dropped) over up to 64 columns, so each pass
            // over B reads whole cache lines of it. More rows: 16 columns at a time, 6 rows deep.
            let deep = k >= DEEP_K;
            let step = if rows <= 2 {
                64
            } else if deep {
                16
            } else {
                32
            };
            while j < t.j0 + t.jn {
                let cols = (t.j0 + t.jn - j).min(step);
                match (rows <= 2, cols.div_ceil(8)) {
                    (true, 8) => micro::<1, 8>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 7) => micro::<1, 7>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 6) => micro::<1, 6>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 5) => micro::<1, 5>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 4) => micro::<1, 4>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 3) => micro::<1, 3>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, 2) => micro::<1, 2>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (true, _) => micro::<1, 1>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (false, 4) if !deep => micro::<2, 4>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (false, 3) if !deep => micro::<3, 3>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (false, 2) => micro::<6, 2>(rows, wa, k, b, j, cols, rq, out, t, i),
                    (false, _) => micro::<12, 1>(rows, wa, k, b, j, cols, rq, out, t, i),
                }
                j += step;
            }
            i += rows;
        }
    });
}

/// Rows `0..rows` of A (row `r` at `a + r·lda`, read through `src`) into `w` as u16, `k` per row.
#[inline(always)]
unsafe fn widen(a: *const u8, src: &ASrc, rows: usize, w: *mut u16) {
    let k = src.taps.len() * src.kc;
    for r in 0..rows {
        let row = a.add(r * src.lda);
        let dst = w.add(r * k);
        for (tp, &off) in src.taps.iter().enumerate() {
            let (s, d) = (row.add(off), dst.add(tp * src.kc));
            let mut c = 0;
            while c + 16 <= src.kc {
                let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(s.add(c) as *const _));
                _mm256_storeu_si256(d.add(c) as *mut _, v);
                c += 16;
            }
            // `kc` is a multiple of 4: at most one run of 8 and one of 4 remain.
            if c + 8 <= src.kc {
                let v = _mm_cvtepu8_epi16(_mm_loadl_epi64(s.add(c) as *const _));
                _mm_storeu_si128(d.add(c) as *mut _, v);
                c += 8;
            }
            if c < src.kc {
                let v = _mm_cvtepu8_epi16(_mm_cvtsi32_si128((s.add(c) as *const i32).read_unaligned()));
                _mm_storel_epi64(d.add(c) as *mut _, v);
            }
        }
    }
}

/// Rows `0..rows` of widened A (`k / 2` pairs each) times columns `j0..j0 + cols` of B, with
/// `NV = ⌈cols / 8⌉`, in micro-tiles of `MR` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const MR: usize, const NV: usize>(
    rows: usize,
    wa: *const u32,
    k: usize,
    b: &PackedB,
    j0: usize,
    cols: usize,
    rq: &Requant,
    out: OutPtr,
    t: &Tile,
    i: usize,
) {
    let mut r0 = 0;
    while r0 < rows {
        let (mr, wa) = ((rows - r0).min(MR), wa.add(r0 * k / 2));
        let kp_n = k / 2;
        // Rows past `mr` repeat the last valid one (their sums are computed and dropped).
        let ap: [*const u32; MR] = std::array::from_fn(|r| wa.add(r.min(mr - 1) * kp_n));
        // Accumulators start at the integer bias (`store_tile` then does not add it).
        let bias: [__m256i; NV] =
            std::array::from_fn(|v| _mm256_loadu_si256(rq.bias_i.as_ptr().add(j0 + 8 * v) as *const _));
        let mut acc = [bias; MR];
        // Each vector's 8 columns lie in one pair panel (`j0` is a multiple of 8); every panel
        // steps one line per pair of reduction rows. Columns past n_pad are never loaded:
        // j0 + 8·NV ≤ n_pad.
        debug_assert!(j0 % 8 == 0);
        let off: [usize; NV] = std::array::from_fn(|v| pair_index(b.k4, 0, j0 + 8 * v));
        let mut bq = b.pairs.as_ptr();
        for kp in 0..kp_n {
            let bv: [__m256i; NV] =
                std::array::from_fn(|v| _mm256_cvtepi8_epi16(_mm_loadu_si128(bq.add(off[v]) as *const _)));
            for r in 0..MR {
                let av = _mm256_set1_epi32(*ap[r].add(kp) as i32);
                for v in 0..NV {
                    acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(av, bv[v]));
                }
            }
            bq = bq.add(2 * PAIR_PANEL);
        }
        store_tile::<MR, NV, true>(&acc, mr, j0, cols, rq, out, t, i + r0);
        r0 += MR;
    }
}

/// Output pixels per block of the depthwise kernel: each pair of tap weights is loaded once for
/// this many pixels (4 pixels × 2 accumulators + 2 weight vectors + temporaries fit 16 registers).
const DW_NX: usize = 4;

/// One output row of a depthwise convolution: 16-channel blocks on tap pairs (`vpmaddwd`), four
/// output pixels at a time; an 8-channel block on single taps, the channel tail scalar.
///
/// # Safety
/// As for the band loop in `crate::int8::conv` (`x` holds the window rows of output row `oy`, `out` the band's outputs); the CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    let taps = g.kh * g.kw;
    // Byte offset of every tap from its output pixel's first input byte, computed once per row
    // (a divide per tap per pixel cost more than the multiplies it feeds).
    let mut on_stack = [0usize; 64];
    let mut on_heap = vec![];
    let offs: &mut [usize] = if taps <= on_stack.len() {
        &mut on_stack[..taps]
    } else {
        on_heap.resize(taps, 0);
        &mut on_heap
    };
    for (t, o) in offs.iter_mut().enumerate() {
        *o = ((oy * g.sh + t / g.kw * g.dh) * g.wp + t % g.kw * g.dw) * g.cs;
    }
    let offs = &*offs;
    let step = g.sw * g.cs;
    let xp = x.as_ptr();
    let b16 = if w.pairs.is_empty() { 0 } else { g.c / 16 };
    for b in 0..b16 {
        let c = b * 16;
        let wp = w.pairs.as_ptr().add(b * taps.div_ceil(2) * 32);
        let mut ox = 0;
        while ox + DW_NX <= g.ow {
            let acc = dw16::<DW_NX>(xp.add(ox * step + c), step, offs, wp);
            // The GEMM's staged epilogue, the block's pixels as rows and its 16 channels as columns
            // (a 3x3 window's nine products per output cost less than their requantization).
            let t = Tile { rows: DW_NX, i0: oy * g.ow + ox, map: RowMap::Linear, j0: c, jn: 16, ldc: g.c };
            store_tile::<DW_NX, 2, false>(&acc, DW_NX, c, 16, rq, out, &t, 0);
            ox += DW_NX;
        }
        while ox < g.ow {
            let [a] = dw16::<1>(xp.add(ox * step + c), step, offs, wp);
            store8(a[0], c, rq, out.at(rq.out, oy * g.ow + ox, c, g.c), 8);
            store8(a[1], c + 8, rq, out.at(rq.out, oy * g.ow + ox, c + 8, g.c), 8);
            ox += 1;
        }
    }
    let full = g.c / 8 * 8;
    let mut c = b16 * 16;
    while c < full {
        for ox in 0..g.ow {
            let px = xp.add(ox * step + c);
            let mut acc = _mm256_setzero_si256();
            for (t, &o) in offs.iter().enumerate() {
                let wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(w.w.as_ptr().add(t * w.c_pad + c) as *const _));
                let xv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(px.add(o) as *const _));
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
            }
            store8(acc, c, rq, out.at(rq.out, oy * g.ow + ox, c, g.c), 8);
        }
        c += 8;
    }
    if full < g.c {
        depthwise_cols(g, x, w, rq, out, oy, full, g.c);
    }
}

/// Accumulators of 16 channels for `NX` output pixels `step` bytes apart, the first pixel's input
/// at `px`: `[pixel][channels 0-7, 8-15]`. Two taps' bytes are interleaved (`vpunpck*bw`) and
/// widened to the i16 pairs `vpmaddwd` multiplies with the pair's weights ([`PackedDw::pairs`]).
#[inline(always)]
unsafe fn dw16<const NX: usize>(px: *const u8, step: usize, offs: &[usize], wp: *const i16) -> [[__m256i; 2]; NX] {
    let mut acc = [[_mm256_setzero_si256(); 2]; NX];
    let mut pair = |p: usize, o0: usize, o1: Option<usize>| {
        let wlo = _mm256_loadu_si256(wp.add(p * 32) as *const _);
        let whi = _mm256_loadu_si256(wp.add(p * 32 + 16) as *const _);
        for (i, a) in acc.iter_mut().enumerate() {
            let q = px.add(i * step);
            let x0 = _mm_loadu_si128(q.add(o0) as *const _);
            let x1 = match o1 {
                Some(o1) => _mm_loadu_si128(q.add(o1) as *const _),
                None => _mm_setzero_si128(),
            };
            let lo = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x0, x1));
            let hi = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x0, x1));
            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(lo, wlo));
            a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(hi, whi));
        }
    };
    let whole = offs.len() / 2;
    for p in 0..whole {
        pair(p, offs[2 * p], Some(offs[2 * p + 1]));
    }
    if offs.len() % 2 == 1 {
        pair(whole, offs[2 * whole], None);
    }
    acc
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
