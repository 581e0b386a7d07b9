//! The expansion and depthwise convolutions of an inverted-residual block fused ([`QExpandDw`]):
//! the 1x1 expansion's output rows are computed straight into the depthwise band buffer (L2), so
//! the expanded activation (6x the block's channels, the largest tensors of MobileNet-family
//! networks) never goes out to memory and back. Each row is the same GEMM row as unfused, so the
//! outputs are bit-exact with running the two convolutions one after the other.

use crate::epilogue::{Out, OutPtr};
use crate::int8::bands::run_bands;
use crate::int8::conv::QConv;
use crate::int8::gemm::gemm;

/// A 1x1 convolution (GEMM over its input, uint8 output) and the depthwise convolution that reads
/// its output, run as one step.
#[derive(Clone, Debug)]
pub struct QExpandDw {
    pub expand: QConv,
    pub dw: QConv,
}

impl QExpandDw {
    /// Fuses `expand` and `dw` when `expand` runs as one GEMM over its input with a uint8 output
    /// whose zero point is the one `dw` pads with, and `dw` is a depthwise convolution of exactly
    /// that output; otherwise gives both back.
    pub fn fuse(expand: QConv, dw: QConv) -> Result<QExpandDw, (QConv, QConv)> {
        let (e, d) = (&expand.geom, &dw.geom);
        let fits = match (expand.direct(), dw.depthwise()) {
            (Some((_, r)), Some(_)) => {
                matches!(r.out, Out::Q { qmin: 0, qmax: 255, zp, .. } if zp == dw.zx as i32)
                    && (e.oh, e.ow, e.c_out) == (d.h, d.w, d.c_in)
                    && expand.geom.is_pointwise()
            }
            _ => false,
        };
        if fits {
            Ok(QExpandDw { expand, dw })
        } else {
            Err((expand, dw))
        }
    }

    pub fn kernel_name(&self) -> &'static str {
        "int8 expand+depthwise"
    }

    pub fn out(&self) -> Out {
        self.dw.out()
    }

    pub fn weight_bytes(&self) -> usize {
        self.expand.weight_bytes() + self.dw.weight_bytes()
    }

    /// Runs on one NHWC image `x` (the expansion's `h*w*c_in` bytes), writing the depthwise
    /// convolution's NHWC outputs.
    ///
    /// # Safety
    /// `out` must hold `oh*ow*c_out` elements of the output type (of the depthwise geometry); the
    /// path must be supported.
    pub unsafe fn run(&self, x: &[u8], out: OutPtr, threads: usize) {
        let (e, g) = (&self.expand.geom, &self.dw.geom);
        assert!(x.len() >= e.h * e.w * e.c_in);
        let (Some((b, er)), Some((w, rq))) = (self.expand.direct(), self.dw.depthwise()) else {
            unreachable!("checked by fuse")
        };
        let dg = self.dw.dw_geom();
        let (row_bytes, zx) = (dg.wp * dg.cs, self.dw.zx);
        // Each padded row: the zero point outside the image, the image row's expansion written by
        // its GEMM straight into the band at the band's channel stride.
        let fill = |ph0: usize, rows: &mut [u8]| {
            for (i, row) in rows.chunks_mut(row_bytes).enumerate() {
                let ih = (ph0 + i) as isize - g.pt as isize;
                if ih < 0 || ih >= g.h as isize {
                    row.fill(zx);
                    continue;
                }
                let left = g.pl.min(dg.wp);
                let n = g.w.min(dg.wp - left);
                row[..left * dg.cs].fill(zx);
                row[(left + n) * dg.cs..].fill(zx);
                if n > 0 {
                    // SAFETY: image row `ih` holds `w` pixels of `c_in` bytes (k4 = c_in for a GEMM
                    // over the input); the row holds `n` pixels of `cs >= c` bytes after `left`.
                    unsafe {
                        gemm(
                            n,
                            x.as_ptr().add(ih as usize * g.w * e.c_in),
                            e.c_in,
                            b,
                            er,
                            OutPtr(row.as_mut_ptr().add(left * dg.cs)),
                            dg.cs,
                            1,
                        )
                    };
                }
            }
        };
        run_bands(g, &dg, w, rq, out, threads, true, &fill);
    }
}
