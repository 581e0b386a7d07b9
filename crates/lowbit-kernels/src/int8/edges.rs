//! The conversions at the edges of the integer region: QuantizeLinear of f32 NCHW values into
//! NHWC bytes, DequantizeLinear back, and byte transposes. Both layouts are converted in one pass
//! (no NCHW byte copy on the way), split over pixel ranges on the pool for large tensors: a
//! model's input and outputs are its largest f32 tensors (CenterFace's 640x480 input: 0.8 ms on
//! one core).

use rayon::prelude::*;

use crate::fp32::layout::Ptr;
use crate::int8::ops::{Layout, QParams};
use crate::isa::{trace, Isa};

/// Elements below which a conversion runs on the calling thread.
const PAR_MIN: usize = 1 << 16;

multiversion! {
    /// QuantizeLinear of contiguous values.
    pub fn quantize_flat(x: &[f32], q: QParams, out: &mut [u8]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.quant(v));
    }
}

/// Pixel chunks of `p` pixels of `c` values for `threads` threads (whole pixels, a few per thread).
fn chunk(p: usize, c: usize, threads: usize) -> usize {
    p.div_ceil(threads * 4).max(1) * c
}

/// QuantizeLinear; with `layout` the f32 input is NCHW and the output NHWC (`tmp` holds the
/// NCHW bytes on the way, `x.len()` of them: quantizing contiguous values vectorizes, the
/// transpose then moves bytes).
pub fn quantize(isa: Isa, x: &[f32], q: QParams, layout: Layout, out: &mut [u8], tmp: &mut [u8], threads: usize) {
    let par = threads > 1 && x.len() >= PAR_MIN;
    let flat = |out: &mut [u8]| {
        if par {
            let k = x.len().div_ceil(threads * 4);
            out[..x.len()].par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| quantize_flat(isa, x, q, o));
        } else {
            quantize_flat(isa, x, q, out)
        }
    };
    match layout {
        None => flat(out),
        Some((n, c, p)) => {
            let tmp = &mut tmp[..x.len()];
            flat(tmp);
            planes_to_nhwc(isa, tmp, n, c, p, out, if par { threads } else { 1 });
        }
    }
}

/// `n` images of `c` byte planes of `p` pixels as NHWC bytes (the byte transpose [`quantize`]
/// ends with), split over pixel ranges on the pool for large tensors.
pub fn planes_to_nhwc(isa: Isa, x: &[u8], n: usize, c: usize, p: usize, out: &mut [u8], threads: usize) {
    let par = threads > 1 && n * c * p >= PAR_MIN;
    for b in 0..n {
        let (xb, ob) = (&x[b * c * p..(b + 1) * c * p], &mut out[b * c * p..(b + 1) * c * p]);
        if par {
            let k = chunk(p, c, threads);
            ob.par_chunks_mut(k).enumerate().for_each(|(i, o)| to_nhwc(isa, xb, c, p, i * k / c, o));
        } else {
            to_nhwc(isa, xb, c, p, 0, ob);
        }
    }
}

/// Bytes of one block of pixels in the layout conversions: whole pixels of every channel, written
/// (or read) while they stay in L1. Channel by channel over the whole range instead touches each
/// output line `c` times after it left the cache (U²-Netp's float stem feeding 64 channels at
/// 320x320: 5.5 ms for the conversion, most of it that).
const BLOCK_BYTES: usize = 8 << 10;

/// Pixels per block for `c` channels.
fn block_px(c: usize) -> usize {
    (BLOCK_BYTES / c.max(1)).max(16)
}

/// Pixels `i0..i0 + out.len() / c` of the `c` byte planes of `p` values in `x` (one image), NHWC
/// (RGB by byte shuffles on the SIMD paths, which all have SSSE3).
fn to_nhwc(isa: Isa, x: &[u8], c: usize, p: usize, i0: usize, out: &mut [u8]) {
    let np = out.len() / c;
    assert!(x.len() >= c * p && i0 + np <= p);
    if c == 1 {
        out.copy_from_slice(&x[i0..i0 + np]);
        return;
    }
    // Whole stripes of 16 pixels in 16x16 byte squares (SSE2, every x86-64 CPU), or three byte
    // shuffles per register for RGB; the last < 16 pixels below.
    #[cfg(target_arch = "x86_64")]
    let done = {
        let done = np / 16 * 16;
        // SAFETY: the planes hold pixels i0..i0 + done (asserted above), `out` their NHWC bytes;
        // every path but the portable one implies SSSE3 (AVX2 or later).
        unsafe {
            if c == 3 && isa != Isa::Scalar && isa.supported() {
                sse2::rgb_to_pixels(x.as_ptr().add(i0), p, done, out)
            } else {
                sse2::planes_to_pixels(x.as_ptr().add(i0), p, c, done, out)
            }
        };
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let bp = block_px(c);
    for b0 in (done..np).step_by(bp) {
        let b1 = (b0 + bp).min(np);
        let ob = &mut out[b0 * c..b1 * c];
        for ch in 0..c {
            let src = &x[ch * p + i0 + b0..ch * p + i0 + b1];
            for (o, &v) in ob[ch..].iter_mut().step_by(c).zip(src) {
                *o = v;
            }
        }
    }
}

/// Pixels `i0..i0 + n` of the NHWC bytes `x` (one image of `c` channels) as `c` rows of `n`
/// bytes at `dst`, `ld` apart (the transpose of [`to_nhwc`]).
///
/// # Safety
/// `x` holds pixels up to `i0 + n`; `dst` holds `c` rows of `ld >= n` bytes.
unsafe fn to_rows(x: &[u8], c: usize, i0: usize, n: usize, dst: *mut u8, ld: usize) {
    assert!(x.len() >= (i0 + n) * c && ld >= n);
    if c == 1 {
        std::ptr::copy_nonoverlapping(x.as_ptr().add(i0), dst, n);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let done = {
        let done = n / 16 * 16;
        // SAFETY: as the caller promised, for pixels i0..i0 + done.
        sse2::pixels_to_rows(x, c, i0, done, dst, ld);
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for ch in 0..c {
        for i in done..n {
            dst.add(ch * ld + i).write(x[(i0 + i) * c + ch]);
        }
    }
}

/// A float convolution and the QuantizeLinear of its output in one pass: `out` gets the NHWC
/// bytes (`[oh][ow][c_out]`) of `quantize(conv2d(p, x))`, each band of output rows quantized while
/// it is in cache instead of the whole f32 output written, re-read and transposed (a first layer
/// the quantizer keeps float: U²-Netp's 64 channels at 320x320 are 26 MB of f32). The same bytes
/// as the two steps. Returns false, doing nothing, where the convolution does not run in bands
/// ([`crate::fp32::conv::PackedConv::bands`]).
pub fn conv_quantize(
    isa: Isa,
    p: &crate::fp32::conv::PackedConv,
    x: &[f32],
    q: QParams,
    out: &mut [u8],
    scratch: &mut [f32],
    threads: usize,
) -> bool {
    let (c, ow, oh) = (p.geom.c_out, p.geom.ow, p.geom.oh);
    assert!(out.len() >= c * ow * oh);
    let base = Ptr(out.as_mut_ptr());
    let sink = |y0: usize, y1: usize, cb: &[f32], nw: usize| {
        let wp = nw / (y1 - y0);
        ROW.with(|tmp| {
            let mut tmp = tmp.borrow_mut();
            tmp.resize(c * ow, 0);
            for y in y0..y1 {
                for ch in 0..c {
                    let at = ch * nw + (y - y0) * wp;
                    quantize_flat(isa, &cb[at..at + ow], q, &mut tmp[ch * ow..(ch + 1) * ow]);
                }
                // SAFETY: `out` holds oh·ow·c bytes; this band alone writes rows y0..y1.
                let row = unsafe { std::slice::from_raw_parts_mut(base.get().add(y * ow * c), ow * c) };
                to_nhwc(isa, &tmp, c, ow, 0, row);
            }
        });
    };
    crate::fp32::conv::conv2d_bands(p, x, scratch, threads, &sink)
}

thread_local! {
    /// Each thread's one output row of [`conv_quantize`] as channel planes of bytes.
    static ROW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

multiversion! {
    /// DequantizeLinear of contiguous bytes.
    pub fn dequantize_flat(x: &[u8], q: QParams, out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.dequant(v));
    }
}

thread_local! {
    /// Each thread's block of pixels of [`dequantize_planes`] as channel rows of bytes.
    static ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// DequantizeLinear of NHWC bytes into the `c` f32 planes of `p` values at `out` (one image),
/// planes' elements `i0..i0 + np`: blocks of pixels transposed into channel rows of bytes while
/// in L1, each row then dequantized as contiguous values.
///
/// # Safety
/// `out` holds `c·p` values; no other thread writes elements `i0..i0 + np` of a plane meanwhile.
unsafe fn dequantize_planes(isa: Isa, x: &[u8], q: QParams, c: usize, p: usize, i0: usize, np: usize, out: *mut f32) {
    let bp = block_px(c) / 16 * 16;
    ROWS.with(|t| {
        let mut t = t.borrow_mut();
        t.resize(c * bp, 0);
        for b0 in (i0..i0 + np).step_by(bp) {
            let n = bp.min(i0 + np - b0);
            // SAFETY: `x` is the image's NHWC bytes (p pixels), `t` c rows of bp >= n bytes.
            unsafe { to_rows(x, c, b0, n, t.as_mut_ptr(), bp) };
            for ch in 0..c {
                // SAFETY: plane ch's elements b0..b0 + n are in `out` and this caller's alone.
                let o = unsafe { std::slice::from_raw_parts_mut(out.add(ch * p + b0), n) };
                dequantize_flat(isa, &t[ch * bp..ch * bp + n], q, o);
            }
        }
    });
}

/// DequantizeLinear; with `layout` the input is NHWC and the f32 output NCHW.
pub fn dequantize(isa: Isa, x: &[u8], q: QParams, layout: Layout, out: &mut [f32], threads: usize) {
    let par = threads > 1 && out.len() >= PAR_MIN;
    match layout {
        None if par => {
            let k = out.len().div_ceil(threads * 4);
            out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| {
                dequantize_flat(isa, x, q, o);
            });
        }
        None => dequantize_flat(isa, x, q, out),
        Some((n, c, p)) => {
            for b in 0..n {
                let (xb, ob) = (&x[b * c * p..(b + 1) * c * p], &mut out[b * c * p..(b + 1) * c * p]);
                if par {
                    // Each task writes a range of every plane: split the pixels, then each task fills
                    // its slices of the planes through a raw pointer (disjoint ranges).
                    let k = p.div_ceil(threads * 4).max(1);
                    let base = Ptr(ob.as_mut_ptr());
                    (0..p.div_ceil(k)).into_par_iter().for_each(|t| {
                        let (i0, np) = (t * k, k.min(p - t * k));
                        // SAFETY: `ob` holds c·p values; task t alone writes elements i0..i0 + np
                        // of each plane (the tasks' pixel ranges are disjoint).
                        unsafe { dequantize_planes(isa, xb, q, c, p, i0, np, base.get()) };
                    });
                } else {
                    // SAFETY: `ob` holds c·p values, all written here by this thread alone.
                    unsafe { dequantize_planes(isa, xb, q, c, p, 0, p, ob.as_mut_ptr()) };
                }
            }
        }
    }
}

/// NHWC bytes → NCHW bytes (for generic fallbacks and graph outputs).
pub fn nhwc_to_nchw(x: &[u8], n: usize, c: usize, p: usize, out: &mut [u8]) {
    for b in 0..n {
        for ch in 0..c {
            for i in 0..p {
                out[(b * c + ch) * p + i] = x[(b * p + i) * c + ch];
            }
        }
    }
}

/// A 16x16 byte transpose in four rounds of SSE2 unpacks.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Row `k` of the result is column `k` of the 16x16 bytes in `r` (row `j` in `r[j]`).
    #[inline(always)]
    unsafe fn transpose(r: [__m128i; 16]) -> [__m128i; 16] {
        // Round 1: pairs of rows (channels 2i, 2i+1) by pixel, pixels 0-7 then 8-15.
        let mut a = [_mm_setzero_si128(); 16];
        for i in 0..8 {
            a[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
            a[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
        }
        // Round 2: a[h·8 + q·4 + j] = pixels h·8 + q·4 .. +4, channels 4j .. 4j + 4.
        let mut b = [_mm_setzero_si128(); 16];
        for h in 0..2 {
            for j in 0..4 {
                let (x, y) = (a[h * 8 + 2 * j], a[h * 8 + 2 * j + 1]);
                b[h * 8 + j] = _mm_unpacklo_epi16(x, y);
                b[h * 8 + 4 + j] = _mm_unpackhi_epi16(x, y);
            }
        }
        // Round 3: c[e·2 + j] = pixels 2e, 2e + 1, channels 8j .. 8j + 8.
        let mut c = [_mm_setzero_si128(); 16];
        for g in 0..4 {
            for j in 0..2 {
                let (x, y) = (b[g * 4 + 2 * j], b[g * 4 + 2 * j + 1]);
                c[g * 4 + j] = _mm_unpacklo_epi32(x, y);
                c[g * 4 + 2 + j] = _mm_unpackhi_epi32(x, y);
            }
        }
        // Round 4: one pixel's 16 channels per register.
        std::array::from_fn(|k| {
            let e = k / 2;
            if k % 2 == 0 {
                _mm_unpacklo_epi64(c[2 * e], c[2 * e + 1])
            } else {
                _mm_unpackhi_epi64(c[2 * e], c[2 * e + 1])
            }
        })
    }

    /// Row `j` (< `n` of 16): 16 bytes at `src + j·ld`, or the bytes of `src[j·ld..]` below
    /// `end` (zeros after them).
    #[inline(always)]
    unsafe fn load_rows(src: *const u8, ld: usize, n: usize, end: *const u8) -> [__m128i; 16] {
        std::array::from_fn(|j| {
            let at = src.add(j * ld);
            if j >= n {
                _mm_setzero_si128()
            } else if at.add(16) <= end {
                _mm_loadu_si128(at as *const __m128i)
            } else {
                let mut b = [0u8; 16];
                std::ptr::copy_nonoverlapping(at, b.as_mut_ptr(), end.offset_from(at) as usize);
                _mm_loadu_si128(b.as_ptr() as *const __m128i)
            }
        })
    }

    /// The first `n` pixels (a multiple of 16) of the `c` byte planes at `x`, `p` apart, as NHWC
    /// bytes in `out` (`n·c` or more). A stripe's partial group of channels (`c` not a multiple of
    /// 16) is stored first, whole 16-byte vectors that run into the next pixels' first channels
    /// (rewritten after it by those pixels' own stores), except where a vector would leave `out`.
    ///
    /// # Safety
    /// Each plane holds `n` pixels from `x`.
    pub(super) unsafe fn planes_to_pixels(x: *const u8, p: usize, c: usize, n: usize, out: &mut [u8]) {
        assert!(out.len() >= n * c);
        let partial = c % 16 != 0;
        let groups = (c / 16 * 16..c).step_by(16).filter(|_| partial).chain((0..c / 16 * 16).step_by(16));
        let groups: Vec<usize> = groups.collect();
        let end = x.add((c - 1) * p + n);
        for b0 in (0..n).step_by(16) {
            for &c0 in &groups {
                let vc = (c - c0).min(16);
                let t = transpose(load_rows(x.add(c0 * p + b0), p, vc, end));
                for (k, v) in t.iter().enumerate() {
                    let at = (b0 + k) * c + c0;
                    if at + 16 <= out.len() {
                        _mm_storeu_si128(out.as_mut_ptr().add(at) as *mut __m128i, *v);
                    } else {
                        let mut b = [0u8; 16];
                        _mm_storeu_si128(b.as_mut_ptr() as *mut __m128i, *v);
                        out[at..at + vc].copy_from_slice(&b[..vc]);
                    }
                }
            }
        }
    }

    /// `SHUF[o][ch]`: the byte shuffle taking plane `ch`'s 16 pixels to their places in output
    /// register `o` of 16 interleaved RGB pixels (0x80: a byte of another plane).
    const SHUF: [[[u8; 16]; 3]; 3] = {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut k = 0;
        while k < 48 {
            m[k / 16][k % 3][k % 16] = (k / 3) as u8;
            k += 1;
        }
        m
    };

    /// [`planes_to_pixels`] for three planes: 16 pixels of each into 48 interleaved bytes.
    ///
    /// # Safety
    /// Each plane holds `n` pixels from `x`; the CPU has SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn rgb_to_pixels(x: *const u8, p: usize, n: usize, out: &mut [u8]) {
        assert!(out.len() >= n * 3 && n.is_multiple_of(16));
        let m: [[__m128i; 3]; 3] =
            std::array::from_fn(|o| std::array::from_fn(|ch| _mm_loadu_si128(SHUF[o][ch].as_ptr() as *const __m128i)));
        for b0 in (0..n).step_by(16) {
            let r: [__m128i; 3] = std::array::from_fn(|ch| _mm_loadu_si128(x.add(ch * p + b0) as *const __m128i));
            for (o, m) in m.iter().enumerate() {
                let v = _mm_or_si128(
                    _mm_or_si128(_mm_shuffle_epi8(r[0], m[0]), _mm_shuffle_epi8(r[1], m[1])),
                    _mm_shuffle_epi8(r[2], m[2]),
                );
                _mm_storeu_si128(out.as_mut_ptr().add(b0 * 3 + o * 16) as *mut __m128i, v);
            }
        }
    }

    /// Pixels `i0..i0 + n` (`n` a multiple of 16) of the NHWC bytes `x` (`c` channels) as `c`
    /// rows of bytes at `dst`, `ld` apart.
    ///
    /// # Safety
    /// `x` holds those pixels; `dst` `c` rows of `ld >= n` bytes.
    pub(super) unsafe fn pixels_to_rows(x: &[u8], c: usize, i0: usize, n: usize, dst: *mut u8, ld: usize) {
        let end = x.as_ptr().add(x.len());
        for b0 in (0..n).step_by(16) {
            for c0 in (0..c).step_by(16) {
                let t = transpose(load_rows(x.as_ptr().add((i0 + b0) * c + c0), c, 16, end));
                for (k, v) in t.iter().take(c - c0).enumerate() {
                    _mm_storeu_si128(dst.add((c0 + k) * ld + b0) as *mut __m128i, *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's split (pixel ranges, flat chunks) gives the bytes and values of the one-thread
    /// conversion, with and without the layout change, on a batch of 2 with ragged chunks.
    #[test]
    fn threaded_conversions_equal_the_single_thread_ones() {
        let (n, c, p) = (2, 3, 150 * 151 + 7);
        let len = n * c * p;
        let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.0).collect();
        for q in [QParams { scale: 0.05, zp: 128, signed: false }, QParams { scale: 0.03, zp: -5, signed: true }] {
            for layout in [None, Some((n, c, p))] {
                let run = |threads: usize| {
                    let (mut b, mut tmp, mut f) = (vec![0u8; len], vec![0u8; len], vec![0f32; len]);
                    quantize(Isa::Scalar, &x, q, layout, &mut b, &mut tmp, threads);
                    dequantize(Isa::Scalar, &b, q, layout, &mut f, threads);
                    (b, f.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                let one = run(1);
                assert_eq!(one, run(2), "{q:?} {layout:?}");
                if let Some((_, c, p)) = layout {
                    // NHWC: pixel 5's channel 2 is plane 2's value 5.
                    assert_eq!(one.0[5 * c + 2], q.quant(x[2 * p + 5]));
                }
            }
        }
    }

    /// The layout changes (16x16 squares, partial channel groups, the scalar tail) put plane
    /// `ch`'s pixel `i` at byte `i·c + ch` and back, for every channel count and ragged pixel
    /// range, never writing outside the range; the threaded DequantizeLinear of NHWC bytes gives
    /// every plane's values.
    #[test]
    fn nhwc_bytes_are_the_planes_transposed() {
        // The portable path's squares and the SIMD paths' RGB shuffles.
        for (isa, c) in [Isa::Scalar, Isa::best()]
            .into_iter()
            .flat_map(|isa| [1, 2, 3, 4, 5, 8, 10, 15, 16, 17, 20, 24, 31, 32, 48, 64, 80, 85].map(|c| (isa, c)))
        {
            let p = 16 * 37 + 11;
            let x: Vec<u8> = (0..c * p).map(|i| (i * 131 % 251) as u8).collect();
            for (i0, np) in [(0, p), (5, 16), (17, 16 * 9 + 3), (p - 7, 7), (p - 33, 33), (3, 0)] {
                // Guard bytes around the range: a store past it would show.
                let mut out = vec![0xa5u8; np * c + 64];
                to_nhwc(isa, &x, c, p, i0, &mut out[32..32 + np * c]);
                assert!(
                    out[..32].iter().chain(&out[32 + np * c..]).all(|&b| b == 0xa5),
                    "c {c} i0 {i0}: wrote outside"
                );
                let out = &out[32..32 + np * c];
                for i in 0..np {
                    for ch in 0..c {
                        assert_eq!(out[i * c + ch], x[ch * p + i0 + i], "c {c} i0 {i0} pixel {i} channel {ch}");
                    }
                }
                // And back: pixels i0..i0 + np of the whole NHWC image as channel rows.
                let mut whole = vec![0u8; p * c];
                to_nhwc(isa, &x, c, p, 0, &mut whole);
                let ld = np + 5;
                let mut rows = vec![0x5au8; c * ld];
                // SAFETY: `whole` holds p pixels, `rows` c rows of ld >= np bytes.
                unsafe { to_rows(&whole, c, i0, np, rows.as_mut_ptr(), ld) };
                for ch in 0..c {
                    assert_eq!(
                        &rows[ch * ld..ch * ld + np],
                        &x[ch * p + i0..ch * p + i0 + np],
                        "c {c} i0 {i0} row {ch}"
                    );
                    assert!(rows[ch * ld + np..(ch + 1) * ld].iter().all(|&b| b == 0x5a), "c {c} i0 {i0}: past a row");
                }
            }
            let q = QParams { scale: 0.07, zp: 3, signed: false };
            for threads in [1, 2] {
                let mut whole = vec![0u8; 2 * p * c];
                for b in 0..2 {
                    to_nhwc(isa, &x, c, p, 0, &mut whole[b * p * c..(b + 1) * p * c]);
                }
                let mut f = vec![0f32; 2 * p * c];
                dequantize(isa, &whole, q, Some((2, c, p)), &mut f, threads);
                for (i, v) in f.iter().enumerate() {
                    assert_eq!(v.to_bits(), q.dequant(x[i % (c * p)]).to_bits(), "c {c} threads {threads} value {i}");
                }
            }
        }
    }
}
