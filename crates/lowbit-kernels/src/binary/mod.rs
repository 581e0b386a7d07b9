//! Binary (1-bit) convolution: sign-packed activations × sign-packed weights, xnor-popcount.
//!
//! Values are `±1`. An activation or weight is one bit, set for `-1`; activations are packed
//! along channels (NHWC, `cw = ceil(c / 64)` words per pixel, unused high bits zero), so one
//! 64-bit word holds 64 channels of one pixel. The product of two `±1` vectors of length `n` is
//! `n - 2 · popcount(a XOR w)`.
//!
//! A convolution is a GEMM over bit rows: row `m` (an output pixel) concatenates the words of
//! its window's input pixels (im2col of bits); a tap that falls in the padding is stored as zero
//! bits (`+1`), and its contribution `Σ_c w[n][tap][c]` is subtracted afterwards, so padding
//! counts as 0 — not as `+1` or `-1` — exactly as a float convolution over a zero-padded `±1`
//! input would. The integer result then goes through the same epilogue as the int8 kernels
//! ([`Requant`]: per-channel scale and bias — the folded BatchNorm — a clamp, and f32 or
//! quantized output), so the next layer reads uint8 or f32 as it needs.
//!
//! One module per instruction set ([`scalar`], [`avx2`]: nibble-table popcount, [`avx512`]:
//! `vpopcntq`), chosen at run time by [`BinIsa`] (`LOWBIT_BIN_ISA=scalar|avx2|avx512` forces a
//! path). All paths produce the same integers and use the same epilogue, so they are bit-exact.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

use rayon::prelude::*;

use crate::f32conv::ConvGeom;
use crate::int8::{OutPtr, Requant};

/// Output channels per weight panel (one task of the GEMM).
pub const PANEL: usize = 32;

/// A binary kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinIsa {
    Scalar,
    Avx2,
    Avx512,
}

impl BinIsa {
    pub fn name(self) -> &'static str {
        match self {
            BinIsa::Scalar => "scalar",
            BinIsa::Avx2 => "avx2",
            BinIsa::Avx512 => "avx512vpopcntdq",
        }
    }

    pub fn supported(self) -> bool {
        let f = crate::isa::Features::detect();
        match self {
            BinIsa::Scalar => true,
            BinIsa::Avx2 => f.avx2 && f.fma,
            BinIsa::Avx512 => f.avx512f && f.avx512bw && f.avx512vpopcntdq && f.fma,
        }
    }

    /// Every path this CPU runs, best last.
    pub fn all_supported() -> Vec<BinIsa> {
        [BinIsa::Scalar, BinIsa::Avx2, BinIsa::Avx512].into_iter().filter(|i| i.supported()).collect()
    }

    /// This core's register-only bound for the path's xnor-popcount step, in G binary
    /// multiply-adds per second (about 0.1 s of work): what no binary kernel on this path can
    /// exceed. AVX-512 only (0 for the other paths).
    pub fn measured_bound_gmacs(self) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self == BinIsa::Avx512 && self.supported() {
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

    pub fn best() -> BinIsa {
        *BinIsa::all_supported().last().unwrap_or(&BinIsa::Scalar)
    }

    pub fn parse(s: &str) -> Result<BinIsa, String> {
        match s {
            "scalar" => Ok(BinIsa::Scalar),
            "avx2" => Ok(BinIsa::Avx2),
            "avx512" | "avx512vpopcntdq" => Ok(BinIsa::Avx512),
            _ => Err(format!("LOWBIT_BIN_ISA={s}: unknown path; use scalar, avx2 or avx512")),
        }
    }

    /// `LOWBIT_BIN_ISA` if set, else the best supported path.
    pub fn selected() -> Result<BinIsa, String> {
        match std::env::var("LOWBIT_BIN_ISA") {
            Ok(s) if !s.is_empty() => {
                let isa = BinIsa::parse(&s)?;
                if !isa.supported() {
                    return Err(format!("LOWBIT_BIN_ISA={s}: this CPU does not support it"));
                }
                Ok(isa)
            }
            _ => Ok(BinIsa::best()),
        }
    }
}

/// Words per pixel for `c` channels.
pub fn words(c: usize) -> usize {
    c.div_ceil(64)
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

/// A binary 2-D convolution (group 1), weights packed once.
#[derive(Clone, Debug)]
pub struct BinConv {
    pub geom: ConvGeom,
    pub isa: BinIsa,
    /// Words per input pixel.
    pub cw: usize,
    /// Words per GEMM row (`taps · cw`).
    pub k: usize,
    /// Output channels padded to a multiple of [`PANEL`].
    pub n_pad: usize,
    /// Weight bits, `[panel][k][PANEL]`.
    w: Vec<u64>,
    /// `Σ_c w[n][tap][c]` (±1 values) per tap, `[tap][n_pad]`: the padding correction.
    wsum: Vec<i32>,
    /// The accumulator is `mul` times the `±1` dot product (a binarized input stored as `±mul`).
    pub mul: i32,
    /// Epilogue; its integer bias holds `mul · taps · c_in` (the `n` of `n - 2·popcount`).
    rq: Requant,
}

impl BinConv {
    /// `w`: OIHW weights, each `+1` or `-1` (anything `>= 0` counts as `+1`); `rq`: per output
    /// channel epilogue of the accumulator `mul · (±1 dot product)` (`mul` ≥ 1).
    pub fn new(isa: BinIsa, geom: ConvGeom, w: &[i8], mul: i32, rq: Requant) -> Result<BinConv, String> {
        let g = &geom;
        if g.group != 1 {
            return Err("binary convolutions take group 1".into());
        }
        let taps = g.kh * g.kw;
        if w.len() != g.c_out * g.c_in * taps {
            return Err(format!("{} weights for a {}x{}x{}x{} convolution", w.len(), g.c_out, g.c_in, g.kh, g.kw));
        }
        let cw = words(g.c_in);
        let k = taps * cw;
        let n_pad = g.c_out.div_ceil(PANEL) * PANEL;
        let mut wb = vec![0u64; n_pad / PANEL * k * PANEL];
        let mut wsum = vec![0i32; taps * n_pad];
        for n in 0..g.c_out {
            let (p, j) = (n / PANEL, n % PANEL);
            for ci in 0..g.c_in {
                for t in 0..taps {
                    let neg = w[(n * g.c_in + ci) * taps + t] < 0;
                    let kk = t * cw + ci / 64;
                    wb[(p * k + kk) * PANEL + j] |= (neg as u64) << (ci % 64);
                    wsum[t * n_pad + n] += if neg { -1 } else { 1 };
                }
            }
        }
        let mut rq = rq;
        if !(1..=1 << 12).contains(&mul) || (taps * g.c_in) as i64 * mul as i64 > i32::MAX as i64 / 4 {
            return Err(format!("accumulator multiplier {mul} out of range for {} products", taps * g.c_in));
        }
        let base = (taps * g.c_in) as i32 * mul;
        rq.add_bias_i(&vec![base; g.c_out]);
        Ok(BinConv { geom, isa, cw, k, n_pad, w: wb, wsum, mul, rq })
    }

    pub fn kernel_name(&self) -> &'static str {
        match self.isa {
            BinIsa::Scalar => "binary xnor-popcount (scalar)",
            BinIsa::Avx2 => "binary xnor-popcount (avx2)",
            BinIsa::Avx512 => "binary xnor-popcount (avx512 vpopcntq)",
        }
    }

    pub fn out(&self) -> crate::int8::Out {
        self.rq.out
    }

    /// Bytes of packed weights (1 bit per weight, padded to whole words and panels) and
    /// per-channel parameters held.
    pub fn weight_bytes(&self) -> usize {
        self.w.len() * 8 + self.wsum.len() * 4 + self.rq.bytes()
    }

    /// Padded input height and width: the window of every output pixel lies inside.
    pub fn padded_hw(&self) -> (usize, usize) {
        let g = &self.geom;
        ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    }

    /// Scratch words `run_u8` / `run_f32_nchw` need (the zero-padded packed input and the bit
    /// rows of the GEMM).
    pub fn scratch_words(&self) -> usize {
        self.padded_words() + self.geom.oh * self.geom.ow * self.k
    }

    fn padded_words(&self) -> usize {
        let (hp, wp) = self.padded_hw();
        hp.max(self.geom.h + self.geom.pt) * wp.max(self.geom.w + self.geom.pl) * self.cw
    }

    /// Bit mask of the taps of output pixel `m` that fall in the padding.
    #[inline]
    pub(crate) fn pad_mask(&self, m: usize) -> u64 {
        let g = &self.geom;
        let (oy, ox) = (m / g.ow, m % g.ow);
        let (y0, x0) = (oy * g.sh, ox * g.sw);
        // Interior pixels (the common case) have no padded tap.
        if y0 >= g.pt && y0 + (g.kh - 1) * g.dh < g.pt + g.h && x0 >= g.pl && x0 + (g.kw - 1) * g.dw < g.pl + g.w {
            return 0;
        }
        let mut mask = 0u64;
        for ky in 0..g.kh {
            let iy = (y0 + ky * g.dh) as isize - g.pt as isize;
            for kx in 0..g.kw {
                let ix = (x0 + kx * g.dw) as isize - g.pl as isize;
                if iy < 0 || iy >= g.h as isize || ix < 0 || ix >= g.w as isize {
                    mask |= 1 << (ky * g.kw + kx);
                }
            }
        }
        mask
    }

    /// The padding correction for channel `n` of a pixel with padded taps `mask`.
    #[inline]
    pub(crate) fn correction(&self, mask: u64, n: usize) -> i32 {
        let mut m = mask;
        let mut s = 0;
        while m != 0 {
            let t = m.trailing_zeros() as usize;
            s += self.wsum[t * self.n_pad + n];
            m &= m - 1;
        }
        s
    }

    /// Word offset of output pixel `m`'s window in the padded input.
    #[inline(always)]
    pub(crate) fn row_base(&self, m: usize, wp: usize) -> usize {
        let g = &self.geom;
        ((m / g.ow) * g.sh * wp + (m % g.ow) * g.sw) * self.cw
    }

    /// Word offsets of the taps relative to a window's origin.
    pub(crate) fn tap_offsets(&self, wp: usize) -> Vec<usize> {
        let g = &self.geom;
        (0..g.kh * g.kw).map(|t| ((t / g.kw) * g.dh * wp + (t % g.kw) * g.dw) * self.cw).collect()
    }

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
