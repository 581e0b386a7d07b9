//! Integer max pooling on NHWC bytes (exact: max commutes with the monotone dequantization), on
//! the thread pool for large outputs.

use crate::geom::PoolGeom;
use crate::isa::{trace, Isa};

/// MaxPool on quantized values whose input and output parameters are equal (max commutes with
/// the monotone dequantization, so this is exact). Padding is ignored, as ONNX specifies. On
/// `threads > 1` threads, output rows are split over the pool when the output is large.
#[allow(clippy::too_many_arguments)]
pub fn max_pool(isa: Isa, g: &PoolGeom, n: usize, signed: bool, x: &[u8], out: &mut [u8], threads: usize) {
    let row = g.ow * g.c_in;
    let rows = n * g.oh;
    if threads > 1 && rows > 1 && rows * row >= 1 << 16 {
        use rayon::prelude::*;
        trace::int8(isa);
        let per = rows.div_ceil(threads * 4);
        out[..rows * row]
            .par_chunks_mut(per * row)
            .enumerate()
            .for_each(|(i, o)| max_pool_rows(isa, g, signed, x, i * per, o));
    } else {
        max_pool_rows(isa, g, signed, x, 0, &mut out[..rows * row]);
    }
}

multiversion! {
    /// [`max_pool`]'s output rows `r0..` (rows of all images in order, `g.oh` per image) into
    /// `out`, whole rows of `g.ow · c` bytes.
    pub fn max_pool_rows(g: &PoolGeom, signed: bool, x: &[u8], r0: usize, out: &mut [u8]) {
        let flip = if signed { 0x80u8 } else { 0 };
        let c = g.c_in;
        let isz = g.h * g.w * c;
        // Byte offsets of the window's taps inside the image (relative to the window's first
        // tap) for a window wholly inside: the offsets are the same for every such pixel.
        let mut offs = [0usize; 64];
        let taps = g.kh * g.kw;
        if taps <= 64 {
            for (t, o) in offs.iter_mut().enumerate().take(taps) {
                *o = ((t / g.kw) * g.dh * g.w + (t % g.kw) * g.dw) * c;
            }
        }
        // Output rows/columns whose window lies inside the image.
        let inner = |o: usize, s: usize, d: usize, p: usize, k: usize, n: usize| {
            o * s >= p && o * s - p + (k - 1) * d < n
        };
        for (k, orow) in out.chunks_mut(g.ow * c).enumerate() {
            let (b, oy) = ((r0 + k) / g.oh, (r0 + k) % g.oh);
            let xi = &x[b * isz..(b + 1) * isz];
            let row_in = taps > 0 && taps <= 64 && inner(oy, g.sh, g.dh, g.pt, g.kh, g.h);
            for (ox, o) in orow.chunks_mut(c).enumerate() {
                if row_in && inner(ox, g.sw, g.dw, g.pl, g.kw, g.w) {
                    let first = ((oy * g.sh - g.pt) * g.w + ox * g.sw - g.pl) * c;
                    let win = &xi[first..first + offs[taps - 1] + c];
                    max_taps(win, &offs[..taps], flip, o);
                } else {
                    max_border(g, xi, oy, ox, flip, o);
                }
            }
        }
    }
}

/// The maximum over the taps at `offs` of `win` (each `o.len()` bytes), into `o`: blocks of 64,
/// 32, 16 and 8 channels with the running maximum in one register (the narrow ones matter: U²-Net's
/// 16-channel pools ran byte by byte, 1.5 ms for a 320x320 map), then byte by byte (signed bytes
/// compare as unsigned after flipping the sign bit).
#[inline(always)]
fn max_taps(win: &[u8], offs: &[usize], flip: u8, o: &mut [u8]) {
    let c = o.len();
    let mut c0 = 0;
    while c - c0 >= 64 {
        max_block::<64>(win, offs, flip, c0, o);
        c0 += 64;
    }
    for w in [32, 16, 8] {
        if c - c0 >= w {
            match w {
                32 => max_block::<32>(win, offs, flip, c0, o),
                16 => max_block::<16>(win, offs, flip, c0, o),
                _ => max_block::<8>(win, offs, flip, c0, o),
            }
            c0 += w;
        }
    }
    for i in c0..c {
        o[i] = offs.iter().map(|&off| win[off + i] ^ flip).max().unwrap_or(0) ^ flip;
    }
}

/// Channels `c0..c0 + W` of [`max_taps`].
#[inline(always)]
fn max_block<const W: usize>(win: &[u8], offs: &[usize], flip: u8, c0: usize, o: &mut [u8]) {
    let mut m = [0u8; W];
    for &off in offs {
        let v: &[u8; W] = win[off + c0..off + c0 + W].try_into().unwrap();
        for i in 0..W {
            m[i] = m[i].max(v[i] ^ flip);
        }
    }
    let d: &mut [u8; W] = (&mut o[c0..c0 + W]).try_into().unwrap();
    for i in 0..W {
        d[i] = m[i] ^ flip;
    }
}

/// One output pixel whose window crosses the image edge (the taps outside are skipped).
#[inline(always)]
fn max_border(g: &PoolGeom, xi: &[u8], oy: usize, ox: usize, flip: u8, o: &mut [u8]) {
    let c = g.c_in;
    o.fill(0);
    for ky in 0..g.kh {
        let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        for kx in 0..g.kw {
            let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
            if ix < 0 || ix >= g.w as isize {
                continue;
            }
            let s = (iy as usize * g.w + ix as usize) * c;
            for (m, &v) in o.iter_mut().zip(&xi[s..s + c]) {
                *m = (*m).max(v ^ flip);
            }
        }
    }
    o.iter_mut().for_each(|d| *d ^= flip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::ops::{test_bytes as bytes, QParams};

    /// A 3x3 stride-2 pool with one pixel of padding on `c` channels of an `h`x`w` image.
    fn pool3x3s2(c: usize, h: usize, w: usize) -> PoolGeom {
        let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
        PoolGeom { c_in: c, c_out: c, h, w, kh: 3, kw: 3, sh: 2, sw: 2, dh: 1, dw: 1, pt: 1, pl: 1, oh, ow, group: 1 }
    }

    #[test]
    fn max_pool_rows_split_over_threads_equal_one_thread() {
        // Two 3x3 stride-2 images large enough to split (32x33 outputs of 40 channels each), with
        // border windows on every side: each chunk must map its rows to the right image and row.
        let g = pool3x3s2(40, 64, 65);
        let x = bytes(2 * 64 * 65 * 40, 5);
        for isa in Isa::all_supported() {
            let mut one = vec![0u8; 2 * 32 * 33 * 40];
            let mut many = vec![1u8; one.len()];
            max_pool(isa, &g, 2, false, &x, &mut one, 1);
            for threads in [2, 3, 8] {
                max_pool(isa, &g, 2, false, &x, &mut many, threads);
                assert!(one == many, "{isa:?}, {threads} threads");
            }
        }
    }

    #[test]
    fn max_pool_matches_the_dequantized_maximum() {
        for isa in Isa::all_supported() {
            // 5 channels (bytes only), 16 (one 16-byte block), 61 (blocks of 32, 16 and 8 and 5 bytes)
            // and 70 (a whole 64-byte block and bytes); the 7x6 image has windows inside and across
            // every edge.
            for (signed, c) in [5, 16, 61, 70].into_iter().flat_map(|c| [(false, c), (true, c)]) {
                let g = pool3x3s2(c, 7, 6);
                let x = bytes(2 * 7 * 6 * c, 9 + signed as u32);
                let q = QParams { scale: 0.1, zp: if signed { -3 } else { 7 }, signed };
                let mut out = vec![0u8; 2 * 4 * 3 * c];
                max_pool(isa, &g, 2, signed, &x, &mut out, 1);
                for b in 0..2 {
                    for oy in 0..4 {
                        for ox in 0..3 {
                            for ch in 0..c {
                                let mut best = f32::NEG_INFINITY;
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                                        if iy >= 0 && ix >= 0 && iy < 7 && ix < 6 {
                                            best = best
                                                .max(q.dequant(x[((b * 7 + iy as usize) * 6 + ix as usize) * c + ch]));
                                        }
                                    }
                                }
                                assert_eq!(out[((b * 4 + oy) * 3 + ox) * c + ch], q.quant(best), "signed={signed}");
                            }
                        }
                    }
                }
            }
        }
    }
}
