//! Portable integer kernels: the reference every SIMD path must match bit for bit.

use crate::epilogue::{epilogue_f32, quantize_one, Out, OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::pack::{PackedB, PackedDw};
use crate::int8::tile::{ASrc, Kernels, Tile};

/// The portable path's kernels (the reference).
pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

/// Writes the epilogue of accumulator `acc` for channel `c` to `p`.
#[inline(always)]
pub(crate) unsafe fn store_one(acc: i32, c: usize, rq: &Requant, p: *mut u8) {
    let y = epilogue_f32(acc, c, rq);
    match rq.out {
        Out::F32 => *(p as *mut f32) = y,
        Out::Q { scale, zp, qmin, qmax } => *p = quantize_one(y, scale, zp, qmin, qmax) as u8,
    }
}

/// One GEMM task (see [`crate::int8::gemm::gemm_ex`]).
///
/// # Safety
/// As for [`crate::int8::gemm::gemm_ex`].
pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    let quad = b.quad_or_pairs();
    for i in 0..t.rows {
        let Some(orow) = t.map.out_row(t.i0 + i) else { continue };
        let row = a.add(i * src.lda);
        for j in t.j0..t.j0 + t.jn {
            let mut acc = 0i32;
            for (tp, &off) in src.taps.iter().enumerate() {
                for c in 0..src.kc {
                    acc = acc.wrapping_add(*row.add(off + c) as i32 * quad(tp * src.kc + c, j));
                }
            }
            store_one(acc, j, rq, out.at(rq.out, orow, j, t.ldc));
        }
    }
}

impl PackedB {
    /// Weight `(k, j)` from whichever layout this packing holds.
    pub(crate) fn quad_or_pairs(&self) -> impl Fn(usize, usize) -> i32 + '_ {
        move |k, j| {
            if self.quad.is_empty() {
                self.pairs[crate::int8::pack::pair_index(self.k4, k, j)] as i32
            } else {
                self.quad[crate::int8::pack::quad_index(self.kp, self.n_pad, k, j)] as i32
            }
        }
    }
}

/// One output row of a depthwise convolution (see the band loop in `crate::int8::conv` (`x` holds the window rows of output row `oy`, `out` the band's outputs)).
///
/// # Safety
/// As for the band loop in `crate::int8::conv` (`x` holds the window rows of output row `oy`, `out` the band's outputs).
pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
    depthwise_cols(g, x, w, rq, out, oy, 0, g.c);
}

/// Channels `c0..c1` of output row `oy` (SIMD paths use this for their channel tails).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise_cols(
    g: &DwGeom,
    x: &[u8],
    w: &PackedDw,
    rq: &Requant,
    out: OutPtr,
    oy: usize,
    c0: usize,
    c1: usize,
) {
    for ox in 0..g.ow {
        for c in c0..c1 {
            let mut acc = 0i32;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let iy = oy * g.sh + ky * g.dh;
                    let ix = ox * g.sw + kx * g.dw;
                    let v = x[(iy * g.wp + ix) * g.cs + c] as i32;
                    acc = acc.wrapping_add(v * w.w[(ky * g.kw + kx) * w.c_pad + c] as i32);
                }
            }
            store_one(acc, c, rq, out.at(rq.out, oy * g.ow + ox, c, g.c));
        }
    }
}
