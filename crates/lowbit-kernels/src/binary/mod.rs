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
    /// Epilogue; its integer bias holds `taps · c_in` (the `n` of `n - 2·popcount`).
    rq: Requant,
}

impl BinConv {
    /// `w`: OIHW weights, each `+1` or `-1` (anything `>= 0` counts as `+1`); `rq`: per output
    /// channel epilogue (the accumulator is the exact `±1` dot product).
    pub fn new(isa: BinIsa, geom: ConvGeom, w: &[i8], rq: Requant) -> Result<BinConv, String> {
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
        let base = (taps * g.c_in) as i32;
        rq.add_bias_i(&vec![base; g.c_out]);
        Ok(BinConv { geom, isa, cw, k, n_pad, w: wb, wsum, rq })
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

    /// Scratch words `run` needs (the packed input and its bit im2col).
    pub fn scratch_words(&self) -> usize {
        let g = &self.geom;
        g.h * g.w * self.cw + g.oh * g.ow * self.k
    }

    /// Bit mask of the taps of output pixel `m` that fall in the padding.
    #[inline]
    pub(crate) fn pad_mask(&self, m: usize) -> u64 {
        let g = &self.geom;
        let (oy, ox) = (m / g.ow, m % g.ow);
        let mut mask = 0u64;
        for ky in 0..g.kh {
            let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
            for kx in 0..g.kw {
                let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
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

    fn im2col(&self, xb: &[u64], a: &mut [u64], threads: usize) {
        let g = &self.geom;
        let (cw, k) = (self.cw, self.k);
        let row = |m: usize, dst: &mut [u64]| {
            let (oy, ox) = (m / g.ow, m % g.ow);
            for ky in 0..g.kh {
                let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
                    let d = &mut dst[(ky * g.kw + kx) * cw..(ky * g.kw + kx + 1) * cw];
                    if iy < 0 || iy >= g.h as isize || ix < 0 || ix >= g.w as isize {
                        d.fill(0);
                    } else {
                        let s = (iy as usize * g.w + ix as usize) * cw;
                        d.copy_from_slice(&xb[s..s + cw]);
                    }
                }
            }
        };
        let rows = g.oh * g.ow;
        if threads > 1 && rows * k > 1 << 14 {
            a[..rows * k].par_chunks_mut(k).enumerate().for_each(|(m, d)| row(m, d));
        } else {
            for (m, d) in a[..rows * k].chunks_mut(k).enumerate() {
                row(m, d);
            }
        }
    }

    /// Runs on one image whose activations are already sign-packed (`h·w·cw` words, see
    /// [`pack_u8`] / [`pack_f32_nchw`]), writing NHWC `oh·ow·c_out` outputs of the epilogue's
    /// type. `scratch`: at least [`BinConv::scratch_words`] words.
    ///
    /// # Safety
    /// `out` must hold `oh·ow·c_out` elements of the output type; the path must be supported.
    pub unsafe fn run_packed(&self, xb: &[u64], out: OutPtr, scratch: &mut [u64], threads: usize) {
        let g = &self.geom;
        let rows = g.oh * g.ow;
        let a = &mut scratch[..rows * self.k];
        self.im2col(xb, a, threads);
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

    /// [`BinConv::run_packed`] on NHWC uint8 activations with zero point `zx`.
    ///
    /// # Safety
    /// As for [`BinConv::run_packed`].
    pub unsafe fn run_u8(&self, x: &[u8], zx: u8, out: OutPtr, scratch: &mut [u64], threads: usize) {
        let g = &self.geom;
        let n = g.h * g.w * self.cw;
        let (xb, rest) = scratch.split_at_mut(n);
        pack_u8(x, g.h * g.w, g.c_in, zx, xb);
        self.run_packed(xb, out, rest, threads);
    }
}
