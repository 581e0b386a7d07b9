//! Convolutions with 1 to 4 output channels (segmentation side outputs, detector heads): the GEMM
//! kernels tile 16 or more output channels per vector, so one output channel ran at 1/16 to 1/32 of
//! their rate (U²-Net's 64→1 3x3 side outputs at 10 GMAC/s). Here the vector runs along the
//! reduction instead: for each output pixel and channel, `vpdpbusd` over 64 input bytes of one
//! window position at a time, 16 pixels in flight, then one horizontal sum per pixel. The input is
//! the zero-point-padded NHWC buffer of the shifted-rows path (stride 1, no dilation), so a window
//! position is a byte offset and nothing is copied per tap. The 256-bit paths do the same with
//! exact 16-bit products (`vpmaddwd` over 16 input bytes, 8 pixels in flight).

use rayon::prelude::*;

use crate::epilogue::{OutPtr, Requant};
use crate::int8::scalar::store_one;
use crate::int8::tile::{RowCursor, RowMap};
use crate::isa::Isa;

/// Packed weights of a narrow convolution: per output channel and window position, `cs` input
/// channels padded with zeros to `c64` (a multiple of 64).
#[derive(Clone, Debug)]
pub struct NarrowW {
    pub isa: Isa,
    pub n: usize,
    /// Input channels per pixel of the padded buffer (a multiple of 4) and that padded to 64.
    pub cs: usize,
    pub c64: usize,
    /// Byte offset of each window position in the padded buffer (relative to the window's first).
    pub taps: Vec<usize>,
    /// `[n][taps][c64]`.
    pub w: Vec<i8>,
}

impl NarrowW {
    /// `w(j, t, c)`: weight of output channel `j`, window position `t`, input channel `c < cs`.
    pub fn new(isa: Isa, n: usize, cs: usize, taps: Vec<usize>, w: impl Fn(usize, usize, usize) -> i8) -> NarrowW {
        let c64 = cs.div_ceil(64) * 64;
        let mut v = vec![0i8; n * taps.len() * c64];
        for j in 0..n {
            for t in 0..taps.len() {
                for c in 0..cs {
                    v[(j * taps.len() + t) * c64 + c] = w(j, t, c);
                }
            }
        }
        NarrowW { isa, n, cs, c64, taps, w: v }
    }

    /// Σ of each output channel's weights (for the zero-point correction).
    pub fn colsum(&self) -> Vec<i32> {
        let per = self.taps.len() * self.c64;
        (0..self.n).map(|j| self.w[j * per..(j + 1) * per].iter().map(|&v| v as i32).sum()).collect()
    }

    pub fn bytes(&self) -> usize {
        self.w.len() + self.taps.len() * 8
    }
}

/// Rows `0..m` of the padded buffer `xp` (row `i` at `i·cs`; `xp` holds every byte a window reads,
/// up to `(m - 1)·cs + taps[last] + cs`), stored through `map` (`ldc` = output channels).
///
/// # Safety
/// `out` holds every row `map` yields; `w.isa` is supported.
#[allow(clippy::too_many_arguments)]
pub unsafe fn narrow_conv(
    m: usize,
    xp: &[u8],
    w: &NarrowW,
    rq: &Requant,
    map: RowMap,
    out: OutPtr,
    ldc: usize,
    threads: usize,
) {
    let need = (m.max(1) - 1) * w.cs + w.taps.last().copied().unwrap_or(0) + w.cs;
    assert!(m == 0 || xp.len() >= need, "narrow conv reads {need} bytes of a {}-byte buffer", xp.len());
    const CHUNK: usize = 256;
    let isa = w.isa;
    crate::isa::trace::int8(isa);
    let run = |i0: usize| {
        let rows = CHUNK.min(m - i0);
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx512Vnni | Isa::Amx) {
            // SAFETY: the path is supported (caller), reads are bounded by `need` (checked above).
            return unsafe { avx512_rows(xp, w, i0, rows, rq, map, out, ldc) };
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::AvxVnni) {
            // SAFETY: as above (the 256-bit paths run only where the CPU has AVX2).
            return unsafe { avx2_rows(xp, w, i0, rows, rq, map, out, ldc) };
        }
        let _ = isa;
        scalar_rows(xp, w, i0, rows, rq, map, out, ldc)
    };
    let starts: Vec<usize> = (0..m).step_by(CHUNK).collect();
    if threads > 1 && m * w.n * w.taps.len() * w.cs >= 1 << 18 {
        starts.into_par_iter().for_each(run);
    } else {
        starts.into_iter().for_each(run);
    }
}

/// Stores accumulator `acc` of the row at `cur` (then steps it), channel `j`.
#[inline(always)]
unsafe fn store(acc: i32, cur: &mut RowCursor, j: usize, rq: &Requant, out: OutPtr, ldc: usize) {
    if let Some(o) = cur.next_row() {
        store_one(acc, j, rq, out.at(rq.out, o, j, ldc));
    }
}

/// Output channel `j` of `n` consecutive rows from row `i` (`vals`: their `n` bytes or f32 values
/// from one vector epilogue), placed through `map`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn place(vals: &[u8], n: usize, map: RowMap, i: usize, j: usize, rq: &Requant, out: OutPtr, ldc: usize) {
    let esz = if rq.out == crate::epilogue::Out::F32 { 4 } else { 1 };
    assert!(vals.len() >= n * esz);
    let mut cur = RowCursor::new(map, i);
    for r in 0..n {
        if let Some(o) = cur.next_row() {
            std::ptr::copy_nonoverlapping(vals.as_ptr().add(r * esz), out.at(rq.out, o, j, ldc), esz);
        }
    }
}

/// The reference: rows `i0..i0 + rows`, byte by byte.
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_rows(
    xp: &[u8],
    w: &NarrowW,
    i0: usize,
    rows: usize,
    rq: &Requant,
    map: RowMap,
    out: OutPtr,
    ldc: usize,
) {
    for i in i0..i0 + rows {
        for j in 0..w.n {
            let mut cur = RowCursor::new(map, i);
            let mut acc = 0i32;
            for (t, &off) in w.taps.iter().enumerate() {
                let x = &xp[i * w.cs + off..i * w.cs + off + w.cs];
                let wt = &w.w[(j * w.taps.len() + t) * w.c64..];
                for c in 0..w.cs {
                    acc = acc.wrapping_add(x[c] as i32 * wt[c] as i32);
                }
            }
            store(acc, &mut cur, j, rq, out, ldc);
        }
    }
}

/// Rows `i0..i0 + rows` on AVX-512 VNNI: blocks of 16 rows with one accumulator each, the last
/// rows one at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_rows(
    xp: &[u8],
    w: &NarrowW,
    i0: usize,
    rows: usize,
    rq: &Requant,
    map: RowMap,
    out: OutPtr,
    ldc: usize,
) {
    let mut i = i0;
    while i + 16 <= i0 + rows {
        block::<16>(xp, w, i, rq, map, out, ldc);
        i += 16;
    }
    while i < i0 + rows {
        block::<1>(xp, w, i, rq, map, out, ldc);
        i += 1;
    }
}

/// `R` consecutive rows from `i`, every output channel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn block<const R: usize>(xp: &[u8], w: &NarrowW, i: usize, rq: &Requant, map: RowMap, out: OutPtr, ldc: usize) {
    use std::arch::x86_64::*;
    let (cs, nt) = (w.cs, w.taps.len());
    let base = xp.as_ptr().add(i * cs);
    for j in 0..w.n {
        let mut acc = [_mm512_setzero_si512(); R];
        for (t, &off) in w.taps.iter().enumerate() {
            let wt = w.w.as_ptr().add((j * nt + t) * w.c64);
            let mut c = 0;
            while c < cs {
                // The last chunk of a pixel reads only its own bytes (masked); its padding weights are 0.
                let wv = _mm512_loadu_si512(wt.add(c) as *const _);
                if cs - c >= 64 {
                    // Whole chunks load unmasked (byte-masked loads are slower on some cores).
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_si512(base.add(r * cs + off + c) as *const _);
                        *a = _mm512_dpbusd_epi32(*a, xv, wv);
                    }
                } else {
                    let mask: __mmask64 = (1u64 << (cs - c)) - 1;
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_maskz_loadu_epi8(mask, base.add(r * cs + off + c) as *const i8);
                        *a = _mm512_dpbusd_epi32(*a, xv, wv);
                    }
                }
                c += 64;
            }
        }
        let mut cur = RowCursor::new(map, i);
        if let Ok(acc) = <&[__m512i; 16]>::try_from(&acc[..]) {
            // 16 rows: one transposing sum and one vector epilogue, then the rows' values placed.
            let mut vals = [0u8; 64];
            crate::int8::avx512_epi::store16_channel(crate::int8::avx512_epi::hsum16(acc), j, rq, vals.as_mut_ptr());
            place(&vals, 16, map, i, j, rq, out, ldc);
            continue;
        }
        for a in &acc {
            store(_mm512_reduce_add_epi32(*a), &mut cur, j, rq, out, ldc);
        }
    }
}

/// Rows `i0..i0 + rows` on AVX2 (also the AVX-VNNI path's): blocks of 8 rows with one accumulator
/// each, 16 input channels per `vpmaddwd` (bytes widened to i16, exact), the last rows on the
/// reference.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_rows(
    xp: &[u8],
    w: &NarrowW,
    i0: usize,
    rows: usize,
    rq: &Requant,
    map: RowMap,
    out: OutPtr,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let (cs, nt) = (w.cs, w.taps.len());
    let mut i = i0;
    while i + 8 <= i0 + rows {
        let base = xp.as_ptr().add(i * cs);
        for j in 0..w.n {
            let mut acc = [_mm256_setzero_si256(); 8];
            for (t, &off) in w.taps.iter().enumerate() {
                // Whole 16-byte weight loads: `c64` pads every window position's weights with zeros.
                let wt = w.w.as_ptr().add((j * nt + t) * w.c64);
                let px = base.add(off);
                let mut c = 0;
                while c + 16 <= cs {
                    let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(wt.add(c) as *const _));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(px.add(r * cs + c) as *const _));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                    }
                    c += 16;
                }
                if c < cs {
                    let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(wt.add(c) as *const _));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_cvtepu8_epi16(load_bytes(px.add(r * cs + c), cs - c));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                    }
                }
            }
            let mut vals = [0u8; 32];
            crate::int8::avx2::store8_channel(crate::int8::avx2::hsum8(&acc), j, rq, vals.as_mut_ptr());
            place(&vals, 8, map, i, j, rq, out, ldc);
        }
        i += 8;
    }
    scalar_rows(xp, w, i, i0 + rows - i, rq, map, out, ldc)
}

/// The `n` bytes at `p` (16, or 4, 8 or 12 at a pixel's end) in the low lanes, zeros above; reads
/// no byte past `p + n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_bytes(p: *const u8, n: usize) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let word = |q: *const u8| (q as *const i32).read_unaligned();
    match n {
        16 => _mm_loadu_si128(p as *const _),
        12 => _mm_insert_epi32::<2>(_mm_loadl_epi64(p as *const _), word(p.add(8))),
        8 => _mm_loadl_epi64(p as *const _),
        _ => _mm_cvtsi32_si128(word(p)),
    }
}
