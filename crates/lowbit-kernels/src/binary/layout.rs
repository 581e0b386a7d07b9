//! The packed form of a binary convolution ([`BinConv`]): weight bits per panel, the padding
//! correction per tap, the epilogue, and the geometry helpers the per-ISA kernels read.

use crate::epilogue::{Out, Requant};
use crate::geom::ConvGeom;
use crate::isa::BinIsa;

/// Output channels per weight panel (one task of the GEMM).
pub const PANEL: usize = 32;

/// Words per pixel for `c` channels.
pub fn words(c: usize) -> usize {
    c.div_ceil(64)
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
    pub(crate) w: Vec<u64>,
    /// `Σ_c w[n][tap][c]` (±1 values) per tap, `[tap][n_pad]`: the padding correction.
    pub(crate) wsum: Vec<i32>,
    /// The accumulator is `mul` times the `±1` dot product (a binarized input stored as `±mul`).
    pub mul: i32,
    /// Epilogue; its integer bias holds `mul · taps · c_in` (the `n` of `n - 2·popcount`).
    pub(crate) rq: Requant,
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

    pub fn out(&self) -> Out {
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
}
