//! f32 ConvTranspose (2-D, any group, stride, dilation, padding) as a GEMM and a col2im scatter:
//! per group, `cols = Wᵀ · X` (rows: output channel × kernel tap, columns: input pixels), then each
//! column is added into the output pixel it lands on. The GEMM is the f32 kernel of the path, so
//! a transposed convolution runs at GEMM speed instead of the reference's scalar loops.

use lowbit_core::shape_ops::ConvTransposeGeom;
use lowbit_core::Act;

use crate::fp32::gemm::sgemm_bias_act;
use crate::isa::F32Isa;

/// 2-D geometry of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deconv2d {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: usize,
    pub group: usize,
}

impl Deconv2d {
    /// From an input shape [N, C, H, W] and the resolved geometry (`None` unless 2-D).
    pub fn new(x: &[usize], g: &ConvTransposeGeom, group: usize) -> Option<Deconv2d> {
        if x.len() != 4 || g.kernel.len() != 2 || g.out.len() != 2 {
            return None;
        }
        let group = group.max(1);
        (x[1] % group == 0 && g.out_channels % group == 0).then_some(Deconv2d {
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: g.out_channels,
            oh: g.out[0],
            ow: g.out[1],
            kh: g.kernel[0],
            kw: g.kernel[1],
            sh: g.strides[0],
            sw: g.strides[1],
            dh: g.dilations[0],
            dw: g.dilations[1],
            ph: g.pads_begin[0],
            pw: g.pads_begin[1],
            group,
        })
    }

    pub fn macs(&self) -> usize {
        self.c_in * (self.c_out / self.group) * self.kh * self.kw * self.h * self.w
    }
}

/// Weights packed per group as `A[(ocg * kh + ky) * kw + kx][icg]`, and the bias.
#[derive(Clone, Debug)]
pub struct PackedDeconv {
    pub geom: Deconv2d,
    pub isa: F32Isa,
    a: Vec<f32>,
    bias: Vec<f32>,
    zeros: Vec<f32>,
}

impl PackedDeconv {
    /// `w`: ONNX layout [C_in, C_out / group, kh, kw].
    pub fn new(isa: F32Isa, geom: Deconv2d, w: &[f32], bias: Option<Vec<f32>>) -> PackedDeconv {
        let g = geom;
        let (cig, cog, kk) = (g.c_in / g.group, g.c_out / g.group, g.kh * g.kw);
        let rows = cog * kk;
        let mut a = vec![0f32; g.group * rows * cig];
        for gi in 0..g.group {
            for icg in 0..cig {
                for r in 0..rows {
                    a[(gi * rows + r) * cig + icg] = w[((gi * cig + icg) * cog) * kk + r];
                }
            }
        }
        let bias = bias.unwrap_or_else(|| vec![0.0; g.c_out]);
        PackedDeconv { geom, isa, a, bias, zeros: vec![0.0; rows] }
    }

    /// f32 values of scratch one image needs (the columns of one group).
    pub fn scratch_len(&self) -> usize {
        let g = &self.geom;
        (g.c_out / g.group) * g.kh * g.kw * g.h * g.w
    }

    /// One image: `x` [C_in, H, W] -> `out` [C_out, OH, OW].
    pub fn run(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32], threads: usize) {
        let g = &self.geom;
        let (cig, cog, kk, hw, ohw) = (g.c_in / g.group, g.c_out / g.group, g.kh * g.kw, g.h * g.w, g.oh * g.ow);
        let rows = cog * kk;
        if ohw == 0 {
            return;
        }
        for (oc, plane) in out[..g.c_out * ohw].chunks_exact_mut(ohw).enumerate() {
            plane.fill(self.bias[oc]);
        }
        if hw == 0 {
            return;
        }
        let cols = &mut scratch[..rows * hw];
        for gi in 0..g.group {
            let a = &self.a[gi * rows * cig..(gi + 1) * rows * cig];
            let xg = &x[gi * cig * hw..(gi + 1) * cig * hw];
            sgemm_bias_act(self.isa, rows, hw, cig, a, cig, xg, hw, &self.zeros, Act::None, cols, hw, threads);
            for ocg in 0..cog {
                let plane = &mut out[(gi * cog + ocg) * ohw..(gi * cog + ocg + 1) * ohw];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let col = &cols[((ocg * g.kh + ky) * g.kw + kx) * hw..][..hw];
                        scatter(g, ky, kx, col, plane);
                    }
                }
            }
        }
    }
}

/// Adds one kernel tap's column (one value per input pixel) into the output plane.
fn scatter(g: &Deconv2d, ky: usize, kx: usize, col: &[f32], plane: &mut [f32]) {
    // Input columns ix whose output column ix*sw + kx*dw - pw lies in [0, ow).
    let off_x = (kx * g.dw) as isize - g.pw as isize;
    let ix0 = if off_x >= 0 { 0 } else { ((-off_x) as usize).div_ceil(g.sw) };
    let ix1 = if (g.ow as isize) <= off_x { 0 } else { ((g.ow as isize - off_x) as usize).div_ceil(g.sw).min(g.w) };
    if ix0 >= ix1 {
        return;
    }
    for iy in 0..g.h {
        let oy = (iy * g.sh + ky * g.dh) as isize - g.ph as isize;
        if oy < 0 || oy >= g.oh as isize {
            continue;
        }
        let orow = &mut plane[oy as usize * g.ow..(oy as usize + 1) * g.ow];
        let src = &col[iy * g.w..(iy + 1) * g.w];
        if g.sw == 1 {
            let o0 = (ix0 as isize + off_x) as usize;
            for (o, s) in orow[o0..o0 + (ix1 - ix0)].iter_mut().zip(&src[ix0..ix1]) {
                *o += s;
            }
        } else {
            for ix in ix0..ix1 {
                orow[(ix as isize * g.sw as isize + off_x) as usize] += src[ix];
            }
        }
    }
}
