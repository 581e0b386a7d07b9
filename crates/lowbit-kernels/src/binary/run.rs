//! Running a binary convolution: packing activations to sign bits, the bit im2col, and the
//! xnor-popcount GEMM over panels × row blocks on the convolution's path.

use rayon::prelude::*;

use crate::binary::layout::{words, BinConv, PANEL};
use crate::binary::scalar;
#[cfg(target_arch = "x86_64")]
use crate::binary::{avx2, avx512};
use crate::epilogue::OutPtr;
use crate::isa::{trace, BinIsa};

/// This core's register-only bound for the path's xnor-popcount step, in G binary multiply-adds
/// per second (about 0.1 s of work): what no binary kernel on this path can exceed. AVX-512 only
/// (0 for the other paths).
pub fn measured_bound_gmacs(isa: BinIsa) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if isa == BinIsa::Avx512 && isa.supported() {
        let run = |iters: usize| {
            let t = std::time::Instant::now();
            // SAFETY: AVX-512 F and VPOPCNTDQ are present (checked above).
            std::hint::black_box(unsafe { avx512::peak_probe(iters) });
            (iters as f64 * 8.0 * 512.0, t.elapsed().as_secs_f64())
        };
        run(10_000);
        let (macs, s) = run(20_000_000);
        return macs / s / 1e9;
    }
    0.0
}

/// Packs `pixels` NHWC uint8 activations of `c` channels: bit set where `x < zp` (the value is
/// negative; zero counts as `+1`, as `Sign(Sign(x) + 0.5)` does).
pub fn pack_u8(x: &[u8], pixels: usize, c: usize, zp: u8, out: &mut [u64]) {
    let cw = words(c);
    for p in 0..pixels {
        let row = &x[p * c..(p + 1) * c];
        let o = &mut out[p * cw..(p + 1) * cw];
        for (w, chunk) in row.chunks(64).enumerate() {
            let mut bits = 0u64;
            for (j, &v) in chunk.iter().enumerate() {
                bits |= ((v < zp) as u64) << j;
            }
            o[w] = bits;
        }
    }
}

/// Packs one NCHW f32 image (`c` planes of `pixels`) into NHWC sign bits (bit set where `x < 0`;
/// zero and NaN count as `+1`).
pub fn pack_f32_nchw(x: &[f32], pixels: usize, c: usize, out: &mut [u64]) {
    let cw = words(c);
    out[..pixels * cw].fill(0);
    for ch in 0..c {
        let (w, b) = (ch / 64, ch % 64);
        let plane = &x[ch * pixels..(ch + 1) * pixels];
        for (p, &v) in plane.iter().enumerate() {
            out[p * cw + w] |= ((v < 0.0) as u64) << b;
        }
    }
}

impl BinConv {
    /// The padded packed input at the start of `scratch`, borders zeroed; returns (buffer,
    /// padded width, the rest of the scratch).
    fn padded<'a>(&self, scratch: &'a mut [u64]) -> (&'a mut [u64], usize, &'a mut [u64]) {
        let g = &self.geom;
        let (hp, wp) = self.padded_hw();
        let (hp, wp) = (hp.max(g.h + g.pt), wp.max(g.w + g.pl));
        let (xp, rest) = scratch.split_at_mut(hp * wp * self.cw);
        // Zero only the border: the interior is overwritten by the packing.
        let cw = self.cw;
        for y in 0..hp {
            let row = &mut xp[y * wp * cw..(y + 1) * wp * cw];
            if y < g.pt || y >= g.pt + g.h {
                row.fill(0);
            } else {
                row[..g.pl * cw].fill(0);
                row[(g.pl + g.w) * cw..].fill(0);
            }
        }
        (xp, wp, rest)
    }

    /// Runs on a zero-padded packed input `xp` of padded width `wp`; `a`: room for the GEMM rows.
    unsafe fn run_padded(&self, xp: &[u64], wp: usize, a: &mut [u64], out: OutPtr, threads: usize) {
        let g = &self.geom;
        assert!(self.isa.supported(), "binary path {} is not supported by this CPU", self.isa.name());
        trace::binary(self.isa);
        let rows = g.oh * g.ow;
        let toff = self.tap_offsets(wp);
        // Row m: the words of its window, tap by tap (a padded tap reads the zero border). The
        // kernels then read each row contiguously.
        let (k, cw) = (self.k, self.cw);
        let fill = |m: usize, d: &mut [u64]| {
            let base = self.row_base(m, wp);
            if cw == 1 {
                for (dv, &o) in d.iter_mut().zip(toff.iter()) {
                    *dv = xp[base + o];
                }
            } else {
                for (t, &o) in toff.iter().enumerate() {
                    d[t * cw..(t + 1) * cw].copy_from_slice(&xp[base + o..base + o + cw]);
                }
            }
        };
        let a = &mut a[..rows * k];
        if threads > 1 && rows * k > 1 << 14 {
            a.par_chunks_mut(k).enumerate().for_each(|(m, d)| fill(m, d));
        } else {
            a.chunks_mut(k).enumerate().for_each(|(m, d)| fill(m, d));
        }
        let a: &[u64] = a;
        // Tasks: panels × row blocks.
        let panels = self.n_pad / PANEL;
        let rb = if threads > 1 { rows.div_ceil(4 * threads / panels.max(1) + 1).clamp(24, 192) } else { rows };
        let blocks = rows.div_ceil(rb.max(1));
        let task = |t: usize| {
            let (p, b) = (t % panels, t / panels);
            let m0 = b * rb;
            let mn = rb.min(rows - m0);
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                BinIsa::Avx512 => avx512::panel(self, a, m0, mn, p, &self.w, &self.rq, out),
                #[cfg(target_arch = "x86_64")]
                BinIsa::Avx2 => avx2::panel(self, a, m0, mn, p, &self.w, &self.rq, out),
                _ => scalar::panel(self, a, m0, mn, p, &self.w, &self.rq, out),
            }
        };
        if threads > 1 && panels * blocks > 1 {
            (0..panels * blocks).into_par_iter().for_each(task);
        } else {
            (0..panels * blocks).for_each(task);
        }
    }

    /// Runs on one NCHW f32 image (binarized: `x < 0` is `-1`, everything else `+1`), writing
    /// NHWC `oh·ow·c_out` outputs of the epilogue's type. `scratch`: at least
    /// [`BinConv::scratch_words`] words.
    ///
    /// # Safety
    /// As for [`BinConv::run_u8`].
    pub unsafe fn run_f32_nchw(&self, x: &[f32], out: OutPtr, scratch: &mut [u64], threads: usize) {
        let g = &self.geom;
        let (xp, wp, a) = self.padded(scratch);
        let cw = self.cw;
        for y in 0..g.h {
            let row = &mut xp[((y + g.pt) * wp + g.pl) * cw..((y + g.pt) * wp + g.pl + g.w) * cw];
            row.fill(0);
            for ch in 0..g.c_in {
                let (wd, b) = (ch / 64, ch % 64);
                let plane = &x[(ch * g.h + y) * g.w..(ch * g.h + y + 1) * g.w];
                for (px, &v) in plane.iter().enumerate() {
                    row[px * cw + wd] |= ((v < 0.0) as u64) << b;
                }
            }
        }
        self.run_padded(xp, wp, a, out, threads);
    }

    /// Runs on one NHWC uint8 image (`h·w·c_in` bytes, zero point `zx`: `x < zx` is `-1`),
    /// writing NHWC `oh·ow·c_out` outputs of the epilogue's type. `scratch`: at least
    /// [`BinConv::scratch_words`] words.
    ///
    /// # Safety
    /// `out` must hold `oh·ow·c_out` elements of the output type; the path must be supported.
    pub unsafe fn run_u8(&self, x: &[u8], zx: u8, out: OutPtr, scratch: &mut [u64], threads: usize) {
        let g = &self.geom;
        let (xp, wp, a) = self.padded(scratch);
        let cw = self.cw;
        for y in 0..g.h {
            let dst = &mut xp[((y + g.pt) * wp + g.pl) * cw..((y + g.pt) * wp + g.pl + g.w) * cw];
            let src = &x[y * g.w * g.c_in..(y + 1) * g.w * g.c_in];
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                BinIsa::Avx512 => avx512::pack_u8(src, g.w, g.c_in, zx, dst),
                #[cfg(target_arch = "x86_64")]
                BinIsa::Avx2 => avx2::pack_u8(src, g.w, g.c_in, zx, dst),
                _ => pack_u8(src, g.w, g.c_in, zx, dst),
            }
        }
        self.run_padded(xp, wp, a, out, threads);
    }
}
