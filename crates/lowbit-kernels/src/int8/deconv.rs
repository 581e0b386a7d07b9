//! Quantized ConvTranspose (2-D, group 1, any stride, dilation and padding) on the integer GEMM
//! kernels: `cols = X · W` with one column per (kernel tap, output channel) and the activation zero
//! point folded into the column bias, written as f32 (exact: every column is an integer below
//! 2^24, which [`QDeconv::exact_for`] checks from the input channel count), then each column added
//! as an integer into the output pixel it lands on (col2im), then the arithmetic contract of the
//! integer kernels (`f32(acc + bias_i) · scale + bias_f`, quantized). Bit-exact with the fake-quant
//! executor's exact ConvTranspose on every path: the integer sums are order-free and the epilogue is
//! one f32 expression per value.

use crate::epilogue::{quantize_one, Out, OutPtr, Requant};
use crate::fp32::deconv::Deconv2d;
use crate::int8::gemm::gemm;
use crate::int8::pack::PackedB;
use crate::isa::{trace, Isa};

/// A quantized transposed convolution, weights packed for one path.
#[derive(Clone, Debug)]
pub struct QDeconv {
    pub geom: Deconv2d,
    pub isa: Isa,
    /// Activation zero point (uint8).
    pub zx: u8,
    b: PackedB,
    /// The GEMM's epilogue: scale 1, the zero-point correction as integer bias, f32 out.
    cols_rq: Requant,
    scale: Vec<f32>,
    bias_i: Vec<i32>,
    bias_f: Vec<f32>,
    lo: f32,
    hi: f32,
    out: Out,
    /// Where the taps do not overlap (kernel = stride, no padding, dilation or extra output): the
    /// GEMM's own quantizing epilogue, per column (the channel's numbers, the zero-point correction
    /// in the integer bias). Each output then is one column of one input pixel, placed by a copy.
    direct: Option<Requant>,
}

thread_local! {
    /// The columns (f32) and the output accumulators (i32) of the thread's current image.
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<i32>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl QDeconv {
    /// Whether every column of a transposed convolution over `c_in` channels is an integer f32
    /// holds exactly: `|Σ (x - zx)·w| ≤ c_in · 255 · 128 < 2^24`.
    pub fn exact_for(c_in: usize) -> bool {
        (c_in as u64) * 255 * 128 < 1 << 24
    }

    /// `w`: ONNX layout `[C_in][C_out][kh][kw]` int8 (zero point 0); `scale`, `bias_i`, `bias_f` per
    /// output channel (the accumulator's scale and bias, as for a convolution); `lo`/`hi` the clamp;
    /// `out` the output quantization. `None` unless group 1, a quantized output and [`QDeconv::exact_for`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        geom: Deconv2d,
        w: &[i8],
        zx: u8,
        scale: &[f32],
        bias_i: &[i32],
        bias_f: &[f32],
        lo: f32,
        hi: f32,
        out: Out,
    ) -> Option<QDeconv> {
        let g = geom;
        if g.group != 1 || out == Out::F32 || !Self::exact_for(g.c_in) || w.len() != g.c_in * g.c_out * g.kh * g.kw {
            return None;
        }
        let (co, kk) = (g.c_out, g.kh * g.kw);
        let n = kk * co;
        // Column j = tap · c_out + output channel, so that a tap's channels are contiguous for col2im.
        let mut b = PackedB::new(isa, g.c_in, n, |ci, j| {
            let (t, o) = (j / co, j % co);
            w[(ci * co + o) * kk + t]
        });
        let corr: Vec<i32> = b.colsum.iter().map(|&s| -(zx as i32) * s).collect();
        b.colsum = vec![];
        let cols_rq = Requant::new(&vec![1.0; n], &corr, &[], f32::NEG_INFINITY, f32::INFINITY, Out::F32);
        let disjoint =
            (g.kh, g.kw, g.dh, g.dw, g.ph, g.pw, g.oh, g.ow) == (g.sh, g.sw, 1, 1, 0, 0, g.h * g.sh, g.w * g.sw);
        let direct = disjoint.then(|| {
            let per = |v: &[f32]| (0..n).map(|j| v.get(j % co).copied().unwrap_or(0.0)).collect::<Vec<f32>>();
            let bi: Vec<i32> = (0..n).map(|j| bias_i.get(j % co).copied().unwrap_or(0).wrapping_add(corr[j])).collect();
            Requant::new(&per(scale), &bi, &per(bias_f), lo, hi, out)
        });
        Some(QDeconv {
            geom,
            isa,
            zx,
            b,
            cols_rq,
            scale: scale.to_vec(),
            bias_i: bias_i.to_vec(),
            bias_f: bias_f.to_vec(),
            lo,
            hi,
            out,
            direct,
        })
    }

    /// The kernel's name in plan reports: a GEMM whose outputs are placed by a copy where the taps
    /// do not overlap, or a GEMM, col2im and epilogue.
    pub fn kernel_name(&self) -> &'static str {
        if self.direct.is_some() {
            "int8 deconv pixel-shuffle gemm"
        } else {
            "int8 deconv gemm"
        }
    }

    pub fn weight_bytes(&self) -> usize {
        self.b.bytes() + self.cols_rq.bytes() + self.scale.len() * 12
    }

    /// Runs on one NHWC image `x` (`h·w·c_in` bytes), writing NHWC `oh·ow·c_out` quantized outputs.
    ///
    /// # Safety
    /// `out` holds `oh·ow·c_out` bytes; the path is supported by the CPU.
    pub unsafe fn run(&self, x: &[u8], out: OutPtr, threads: usize) {
        let g = &self.geom;
        assert!(x.len() >= g.h * g.w * g.c_in);
        trace::int8(self.isa);
        let (p, kk, co) = (g.h * g.w, g.kh * g.kw, g.c_out);
        let n = kk * co;
        BUFS.with(|bufs| {
            let (cols, acc, apad) = &mut *bufs.borrow_mut();
            // The GEMM reads whole 4-byte groups of a row: rows of a channel count off 4 are copied to
            // a stride of whole groups (the extra bytes meet zero weights).
            let (a, lda) = if g.c_in % 4 == 0 {
                (x.as_ptr(), g.c_in)
            } else {
                let k4 = g.c_in.div_ceil(4) * 4;
                apad.clear();
                apad.resize(p * k4, self.zx);
                for (d, s) in apad.chunks_exact_mut(k4).zip(x.chunks_exact(g.c_in)) {
                    d[..g.c_in].copy_from_slice(s);
                }
                (apad.as_ptr(), k4)
            };
            if let Some(rq) = &self.direct {
                // Input pixel (iy, ix)'s columns of tap row ky are output row iy·sh + ky's pixels
                // ix·sw .. + kw, all channels: kw·c_out contiguous bytes.
                // The bytes of the columns, in the f32 columns' buffer.
                cols.resize((p * n).div_ceil(4), 0.0);
                let t = cols.as_mut_ptr() as *mut u8;
                gemm(p, a, lda, &self.b, rq, OutPtr(t), n, threads);
                let run = g.kw * co;
                for iy in 0..g.h {
                    for ky in 0..g.kh {
                        for ix in 0..g.w {
                            let src = t.add((iy * g.w + ix) * n + ky * run);
                            let dst = out.0.add(((iy * g.sh + ky) * g.ow + ix * g.sw) * co);
                            std::ptr::copy_nonoverlapping(src, dst, run);
                        }
                    }
                }
                return;
            }
            cols.resize(p * n, 0.0);
            acc.clear();
            acc.resize(g.oh * g.ow * co, 0);
            gemm(p, a, lda, &self.b, &self.cols_rq, OutPtr(cols.as_mut_ptr() as *mut u8), n, threads);
            col2im_i32(self.isa, g, cols, acc);
            let o = std::slice::from_raw_parts_mut(out.0, g.oh * g.ow * co);
            let ep = DeconvEpilogue {
                scale: &self.scale,
                bias_i: &self.bias_i,
                bias_f: &self.bias_f,
                lo: self.lo,
                hi: self.hi,
                out: self.out,
            };
            deconv_epilogue(self.isa, acc, &ep, o);
        });
    }
}

/// The per-channel numbers of [`QDeconv`]'s last step: `q_out(min(max(f32(acc + bias_i) · scale + bias_f, lo), hi))`.
pub struct DeconvEpilogue<'a> {
    pub scale: &'a [f32],
    pub bias_i: &'a [i32],
    pub bias_f: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub out: Out,
}

multiversion! {
    /// col2im of a quantized transposed convolution: column block `(tap, channel)` of input pixel `(iy, ix)` (f32
    /// holding an integer, see [`QDeconv`]) added as an integer into output pixel
    /// `(iy·sh + ky·dh - ph, ix·sw + kx·dw - pw)` of `acc` (NHWC, zeroed by the caller).
    pub fn col2im_i32(g: &Deconv2d, cols: &[f32], acc: &mut [i32]) {
        let (co, kk) = (g.c_out, g.kh * g.kw);
        for iy in 0..g.h {
            for ky in 0..g.kh {
                let oy = (iy * g.sh + ky * g.dh) as isize - g.ph as isize;
                if oy < 0 || oy >= g.oh as isize {
                    continue;
                }
                for ix in 0..g.w {
                    let src = &cols[(iy * g.w + ix) * kk * co..][..kk * co];
                    for kx in 0..g.kw {
                        let ox = (ix * g.sw + kx * g.dw) as isize - g.pw as isize;
                        if ox < 0 || ox >= g.ow as isize {
                            continue;
                        }
                        let d = &mut acc[(oy as usize * g.ow + ox as usize) * co..][..co];
                        for (a, &v) in d.iter_mut().zip(&src[(ky * g.kw + kx) * co..][..co]) {
                            *a += v as i32;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// The last step of a quantized transposed convolution: each accumulator of `[pixels][c]` through
    /// [`DeconvEpilogue`] to its output byte.
    pub fn deconv_epilogue(acc: &[i32], ep: &DeconvEpilogue, out: &mut [u8]) {
        let Out::Q { scale: so, zp, qmin, qmax } = ep.out else { return };
        let c = ep.scale.len();
        let (lo, hi) = (ep.lo, ep.hi);
        for (orow, arow) in out.chunks_exact_mut(c).zip(acc.chunks_exact(c)) {
            let per = ep.scale.iter().zip(ep.bias_i).zip(ep.bias_f);
            for ((o, &a), ((&s, &bi), &bf)) in orow.iter_mut().zip(arow).zip(per) {
                let y = ((a.wrapping_add(bi) as f32) * s + bf).max(lo).min(hi);
                *o = quantize_one(y, so, zp, qmin, qmax) as u8;
            }
        }
    }
}
