//! The space-to-depth input of stride-2 convolutions on few channels (the RGB stems): the
//! zero-point-padded image rearranged into 2x2 blocks, so that the window runs as a stride-1 one
//! over shifted rows (see `ConvKind::SpaceToDepth` in [`crate::int8::conv`]).

use crate::geom::ConvGeom;
use crate::isa::Isa;

/// Geometry of the space-to-depth input: `[hp][wp][cs]` blocks, window `kh`×`kw` blocks.
#[derive(Clone, Debug)]
pub(crate) struct S2d {
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) cs: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    /// Tap byte offsets (one per window row of blocks, `kw·cs` bytes each).
    pub(crate) taps: Vec<usize>,
}

impl S2d {
    /// The layout for `g` when space to depth applies: one group, stride 2, no dilation, at most
    /// 4 input channels (a block's 4·c_in ≤ 16 bytes) and a window of at least 5, or of 3 on the
    /// VNNI paths. A 3x3 window becomes 2x2 blocks, 48 bytes of reduction for 27, which AVX2 pays
    /// for as much as it saves on im2col (CenterFace's 3x3 stem 3.5-3.8 ms either way), while
    /// VNNI's stem gets 30% faster (1.9-2.8 -> 1.3-1.5 ms; MobileNetV2's 0.29-0.33 -> 0.21-0.24 ms,
    /// EPYC, alternating runs); the 256-bit VNNI path's 1.79 -> 1.05 ms (1.37 with the blocks
    /// copied one by one, as on CPUs without VBMI; EPYC Zen 4). AMX keeps im2col there: not
    /// measured (no AMX on that machine).
    pub(crate) fn fits(isa: Isa, g: &ConvGeom) -> Option<S2d> {
        let min = if matches!(isa, Isa::Avx512Vnni | Isa::AvxVnni) { 3 } else { 5 };
        if g.group != 1 || g.sh != 2 || g.sw != 2 || g.dh != 1 || g.dw != 1 || g.c_in > 4 || g.kh < min || g.kw < min {
            return None;
        }
        let (kh, kw) = (g.kh.div_ceil(2), g.kw.div_ceil(2));
        // A block's 4·c_in bytes; for AMX, padded to make a window row a whole 64-byte tile row when
        // that at most doubles it (2 to 4 channels and a window 7 or 8 wide: the stem).
        let mut cs = 4 * g.c_in;
        if isa == Isa::Amx && 64 % kw == 0 && 64 / kw >= cs && 64 / kw <= 2 * cs {
            cs = 64 / kw;
        }
        let (hp, wp) = (g.oh + kh - 1, g.ow + kw - 1);
        let taps = (0..kh).map(|t| t * wp * cs).collect();
        Some(S2d { kh, kw, cs, hp, wp, taps })
    }

    /// Scratch bytes: the blocks plus one window row of slack (rows past the last are computed and
    /// dropped).
    pub(crate) fn len(&self) -> usize {
        (self.hp * self.wp + self.kw) * self.cs
    }

    /// Writes the blocks of image `x`: block `(Y, X)` byte `(dy·2 + dx)·c_in + c` is input pixel
    /// `(2Y + dy - pt, 2X + dx - pl)` channel `c`, the zero point outside the image and in the
    /// padding channels.
    ///
    /// Block columns whose two pixels are inside the image interleave two input rows in runs of
    /// `2·c_in` bytes; with AVX-512 VBMI one byte permute writes 4 to 16 blocks at a time (the
    /// block-by-block copies were 38% of CenterFace's stem: 0.25 of 0.66 ms at 480x640).
    pub(crate) fn fill(&self, g: &ConvGeom, x: &[u8], zx: u8, xp: &mut [u8]) {
        self.fill_with(g, x, zx, xp, Interleave::best());
    }

    /// [`S2d::fill`] with the interior blocks interleaved by `vector`.
    fn fill_with(&self, g: &ConvGeom, x: &[u8], zx: u8, xp: &mut [u8], vector: Interleave) {
        let (c, cs, wp) = (g.c_in, self.cs, self.wp);
        let run = 2 * c;
        // Block columns `xa..xe` have both pixels inside: 0 <= 2X - pl and 2X - pl + 1 < w.
        let xa = g.pl.div_ceil(2).min(wp);
        let xe = ((g.w + g.pl) / 2).clamp(xa, wp);
        for yb in 0..self.hp {
            let row = &mut xp[yb * wp * cs..(yb + 1) * wp * cs];
            let src: [Option<&[u8]>; 2] = std::array::from_fn(|dy| {
                let iy = (2 * yb + dy) as isize - g.pt as isize;
                (iy >= 0 && (iy as usize) < g.h).then(|| &x[iy as usize * g.w * c..(iy as usize + 1) * g.w * c])
            });
            // Interior blocks `xa..done` written by the vector path.
            #[allow(unused_mut)]
            let mut done = xa;
            #[cfg(target_arch = "x86_64")]
            if let [Some(r0), Some(r1)] = src {
                if cs == 4 * c && xe > xa {
                    let (s0, dst) = ((2 * xa - g.pl) * c, &mut row[xa * cs..xe * cs]);
                    // SAFETY: `Interleave::best` and the tests pick only what the CPU has; the
                    // functions keep their reads within the rows and their writes within the
                    // interior blocks.
                    done += match vector {
                        Interleave::Vbmi => unsafe { interleave_vbmi(r0, r1, run, s0, dst) },
                        Interleave::Ssse3 => unsafe { interleave_ssse3(r0, r1, run, s0, dst) },
                        Interleave::None => 0,
                    };
                }
            }
            for xb in (0..xa).chain(done..wp) {
                let blk = &mut row[xb * cs..(xb + 1) * cs];
                let ix = (2 * xb) as isize - g.pl as isize;
                if xb < xe && xb >= xa {
                    for (dy, s) in src.iter().enumerate() {
                        let d = &mut blk[dy * run..(dy + 1) * run];
                        match s {
                            Some(s) => copy_small(d, &s[ix as usize * c..(ix as usize + 2) * c]),
                            None => d.fill(zx),
                        }
                    }
                    blk[2 * run..].fill(zx);
                    continue;
                }
                blk.fill(zx);
                for (dy, s) in src.iter().enumerate() {
                    let Some(s) = s else { continue };
                    for dx in 0..2 {
                        let i = ix + dx as isize;
                        if i >= 0 && i < g.w as isize {
                            let at = (dy * 2 + dx) * c;
                            blk[at..at + c].copy_from_slice(&s[i as usize * c..(i as usize + 1) * c]);
                        }
                    }
                }
            }
        }
        xp[self.hp * wp * cs..].fill(zx);
    }
}

/// How [`S2d::fill`] interleaves the two input rows of its interior blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Interleave {
    /// Block by block (two short copies each).
    None,
    /// 16-byte byte shuffles (any x86-64 CPU with SSSE3: every one with AVX2).
    Ssse3,
    /// 64-byte byte permutes (AVX-512 VBMI).
    Vbmi,
}

impl Interleave {
    fn best() -> Interleave {
        #[cfg(target_arch = "x86_64")]
        {
            let f = crate::isa::features();
            if f.vbmi() {
                return Interleave::Vbmi;
            }
            if std::arch::is_x86_feature_detected!("ssse3") {
                return Interleave::Ssse3;
            }
        }
        Interleave::None
    }
}

/// [`interleave_vbmi`] on 16-byte vectors: a group of blocks a whole number of vectors long
/// (`lcm(2·run, 16)` bytes: 4 blocks for RGB in 3 vectors, 4, 2 and 1 block for 1, 2 and 4
/// channels), each output vector the or of two byte shuffles, one of a 16-byte window of each row
/// (a vector's bytes from one row are consecutive there, at most 16); returns the blocks written.
/// On CPUs without VBMI this replaces two short copies per block: AMD EPYC Zen 4, the layers'
/// times with each interleave forced in a throwaway build, block by block / SSSE3 / VBMI: the
/// 256-bit VNNI path's CenterFace stem 1.38-1.41 / 1.06 / 1.03-1.04 ms, MobileNetV2's 0.23 / 0.18-0.19 /
/// 0.18 ms, the AVX2 path's ResNet-18 7x7 stem 2.50 / 2.40-2.42 / 2.39-2.43 ms.
///
/// # Safety
/// The CPU has SSSE3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn interleave_ssse3(r0: &[u8], r1: &[u8], run: usize, s0: usize, dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let blk = 2 * run;
    let blocks = dst.len() / blk;
    // Group: `g` blocks, `nv` output vectors, `g·run` bytes of each row.
    let g = match blk {
        4 => 4,
        8 => 2,
        12 => 4,
        16 => 1,
        _ => return 0,
    };
    let nv = g * blk / 16;
    // Per output vector and row: the window's first byte (group-relative) and the shuffle that
    // takes the vector's bytes from it (0x80: a byte of the other row).
    let mut win = [[0usize; 2]; 3];
    let mut idx = [[[0x80u8; 16]; 2]; 3];
    for k in 0..nv {
        let from = |p: usize| {
            let (b, j) = (p / blk, p % blk);
            if j < run {
                (0, b * run + j)
            } else {
                (1, b * run + j - run)
            }
        };
        let mut seen = [false; 2];
        for p in 16 * k..16 * k + 16 {
            let (r, at) = from(p);
            if !seen[r] {
                (seen[r], win[k][r]) = (true, at);
            }
            idx[k][r][p - 16 * k] = (at - win[k][r]) as u8;
        }
    }
    let reach = win[..nv].iter().flatten().max().unwrap() + 16;
    let shuf: [[__m128i; 2]; 3] =
        std::array::from_fn(|k| std::array::from_fn(|r| _mm_loadu_si128(idx[k][r].as_ptr() as *const _)));
    let mut b = 0;
    while b + g <= blocks && s0 + b * run + reach <= r0.len().min(r1.len()) {
        let at = s0 + b * run;
        for k in 0..nv {
            let x0 = _mm_loadu_si128(r0.as_ptr().add(at + win[k][0]) as *const _);
            let x1 = _mm_loadu_si128(r1.as_ptr().add(at + win[k][1]) as *const _);
            let v = _mm_or_si128(_mm_shuffle_epi8(x0, shuf[k][0]), _mm_shuffle_epi8(x1, shuf[k][1]));
            _mm_storeu_si128(dst.as_mut_ptr().add(b * blk + 16 * k) as *mut _, v);
        }
        b += g;
    }
    b
}

/// Interleaves rows `r0` and `r1` from byte `s0` in runs of `run` bytes (`2·c_in`, at most 8) into
/// `dst` (blocks of `2·run` bytes: a run of `r0`, then one of `r1`), as many whole vectors of
/// blocks as fit; returns the blocks written. Each vector: 32 bytes of each row side by side, one
/// `vpermb`, one masked store.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn interleave_vbmi(r0: &[u8], r1: &[u8], run: usize, s0: usize, dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let blk = 2 * run;
    let blocks = dst.len() / blk;
    // Blocks per vector (5 for RGB: 60 bytes; 16, 8, 4 for 1, 2, 4 channels), reading `nb·run`
    // (at most 32) bytes of each row.
    let nb = 64 / blk;
    let out = nb * blk;
    let mut idx = [0u8; 64];
    for (k, v) in idx.iter_mut().enumerate().take(out) {
        let (b, j) = (k / blk, k % blk);
        *v = if j < run { b * run + j } else { 32 + b * run + j - run } as u8;
    }
    let vidx = _mm512_loadu_si512(idx.as_ptr() as *const _);
    let m: u64 = if out == 64 { u64::MAX } else { (1u64 << out) - 1 };
    let mut b = 0;
    while b + nb <= blocks && s0 + b * run + 32 <= r0.len().min(r1.len()) {
        let lo = _mm256_loadu_si256(r0.as_ptr().add(s0 + b * run) as *const _);
        let hi = _mm256_loadu_si256(r1.as_ptr().add(s0 + b * run) as *const _);
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(b * blk) as *mut i8, m, _mm512_permutexvar_epi8(vidx, v));
        b += nb;
    }
    b
}

/// `dst.copy_from_slice(src)` without a library call for the short runs im2col copies (two
/// overlapping fixed-size moves cover any length between a size and twice it).
#[inline(always)]
pub(crate) fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    assert_eq!(dst.len(), n);
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: every access is within `0..n` of both slices (checked equal above).
    unsafe {
        macro_rules! two {
            ($t:ty) => {{
                let w = std::mem::size_of::<$t>();
                (d as *mut $t).write_unaligned((s as *const $t).read_unaligned());
                (d.add(n - w) as *mut $t).write_unaligned((s.add(n - w) as *const $t).read_unaligned());
            }};
        }
        match n {
            0 => {}
            1..=3 => {
                for i in 0..n {
                    *d.add(i) = *s.add(i);
                }
            }
            4..=7 => two!(u32),
            8..=15 => two!(u64),
            16..=31 => two!(u128),
            32..=64 => {
                two!([u128; 2]);
            }
            _ => std::ptr::copy_nonoverlapping(s, d, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: block `(Y, X)` byte `(dy·2 + dx)·c + ch` is pixel `(2Y + dy - pt, 2X + dx - pl)`
    /// channel `ch`, the zero point elsewhere (outside the image, padding channels, the slack).
    fn reference(s: &S2d, g: &ConvGeom, x: &[u8], zx: u8) -> Vec<u8> {
        let c = g.c_in;
        let mut v = vec![zx; s.len()];
        for yb in 0..s.hp {
            for xb in 0..s.wp {
                for dy in 0..2 {
                    for dx in 0..2 {
                        let (iy, ix) = ((2 * yb + dy) as isize - g.pt as isize, (2 * xb + dx) as isize - g.pl as isize);
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        for ch in 0..c {
                            v[(yb * s.wp + xb) * s.cs + (dy * 2 + dx) * c + ch] =
                                x[(iy as usize * g.w + ix as usize) * c + ch];
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn blocks_match_the_definition() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        for case in 0..400 {
            let c = 1 + (next() % 4) as usize;
            let k = [3usize, 5, 7][(next() % 3) as usize];
            let (h, w) = (1 + (next() % 40) as usize, 1 + (next() % 90) as usize);
            let (pt, pl, pb, pr) =
                ((next() % 4) as usize, (next() % 4) as usize, (next() % 4) as usize, (next() % 4) as usize);
            if h + pt + pb < k || w + pl + pr < k {
                continue;
            }
            let (oh, ow) = ((h + pt + pb - k) / 2 + 1, (w + pl + pr - k) / 2 + 1);
            let g = ConvGeom {
                c_in: c,
                h,
                w,
                c_out: 8,
                kh: k,
                kw: k,
                sh: 2,
                sw: 2,
                dh: 1,
                dw: 1,
                pt,
                pl,
                oh,
                ow,
                group: 1,
            };
            // AMX pads a block to a 64-byte window row where that at most doubles it.
            let isa = if case % 3 == 0 && k >= 5 { Isa::Amx } else { Isa::Avx512Vnni };
            let s = S2d::fits(isa, &g).expect("a stride-2 window on few channels");
            let x: Vec<u8> = (0..h * w * c).map(|_| next() as u8).collect();
            let zx = next() as u8;
            // Stale bytes in the scratch must not survive.
            let want = reference(&s, &g, &x, zx);
            for vector in [Interleave::None, Interleave::Ssse3, Interleave::Vbmi] {
                #[cfg(target_arch = "x86_64")]
                let have = match vector {
                    Interleave::None => true,
                    Interleave::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
                    Interleave::Vbmi => crate::isa::features().vbmi(),
                };
                #[cfg(not(target_arch = "x86_64"))]
                let have = vector == Interleave::None;
                if !have {
                    continue;
                }
                let mut xp: Vec<u8> = (0..s.len()).map(|_| next() as u8).collect();
                s.fill_with(&g, &x, zx, &mut xp, vector);
                assert_eq!(xp, want, "{vector:?} {g:?} cs {}", s.cs);
            }
            checked += 1;
        }
        assert!(checked > 300);
    }
}
