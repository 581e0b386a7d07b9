//! The expansion and depthwise convolutions of an inverted-residual block fused ([`QExpandDw`]):
//! the 1x1 expansion's output rows are computed straight into the depthwise band buffer (L2), so
//! the expanded activation (6x the block's channels, the largest tensors of MobileNet-family
//! networks) never goes out to memory and back. Each row is the same GEMM row as unfused, so the
//! outputs are bit-exact with running the two convolutions one after the other.

use crate::epilogue::{Out, OutPtr};
use crate::int8::bands::{pad_row, run_bands};
use crate::int8::conv::QConv;
use crate::int8::gemm::gemm;

thread_local! {
    /// Each thread's expanded rows of one band, before they are padded into the band buffer.
    static ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
        let (row_bytes, c, zx) = (dg.wp * dg.cs, g.c_in, self.dw.zx);
        let fill = |ph0: usize, rows: &mut [u8]| {
            let n = rows.len() / row_bytes;
            // The image rows among padded rows ph0..ph0 + n, computed by one GEMM.
            let ia = ph0.max(g.pt).min(g.pt + g.h) - g.pt;
            let ib = (ph0 + n).max(g.pt).min(g.pt + g.h) - g.pt;
            ROWS.with(|t| {
                let mut t = t.borrow_mut();
                let len = (ib - ia) * g.w * c;
                if t.len() < len {
                    t.resize(len, 0);
                }
                if ib > ia {
                    // SAFETY: rows ia..ib of the input hold (ib - ia)·w pixels of c_in bytes (k4 = c_in
                    // for a GEMM over the input); `t` holds their outputs.
                    unsafe {
                        gemm(
                            (ib - ia) * g.w,
                            x.as_ptr().add(ia * g.w * e.c_in),
                            e.c_in,
                            b,
                            er,
                            OutPtr(t.as_mut_ptr()),
                            c,
                            1,
                        )
                    };
                }
                for (i, row) in rows.chunks_mut(row_bytes).enumerate() {
                    pad_row(g, &t, ia, ph0 + i, dg.wp, dg.cs, zx, row);
                }
            });
        };
        run_bands(g, &dg, w, rq, out, threads, true, &fill);
    }
}
