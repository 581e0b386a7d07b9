//! Portable binary kernel: the reference the SIMD paths match bit for bit.

use crate::binary::layout::{BinConv, PANEL};
use crate::epilogue::{OutPtr, Requant};
use crate::int8::scalar::store_one;

/// Rows `m0..m0+mn` of weight panel `p` (see [`BinConv::run_u8`]).
///
/// # Safety
/// `out` holds `oh·ow·c_out` elements of the epilogue's output type.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn panel(
    c: &BinConv,
    a: &[u64],
    m0: usize,
    mn: usize,
    p: usize,
    w: &[u64],
    rq: &Requant,
    out: OutPtr,
) {
    let n_out = c.geom.c_out;
    let k = c.k;
    let n0 = p * PANEL;
    let nn = PANEL.min(n_out - n0);
    let wp = &w[p * k * PANEL..(p + 1) * k * PANEL];
    for m in m0..m0 + mn {
        let row = &a[m * k..(m + 1) * k];
        let mask = c.pad_mask(m);
        for j in 0..nn {
            let pop: u32 = row.iter().enumerate().map(|(kk, &x)| (x ^ wp[kk * PANEL + j]).count_ones()).sum();
            let acc = (-2 * pop as i32 - c.correction(mask, n0 + j)) * c.mul;
            store_one(acc, n0 + j, rq, out.at(rq.out, m, n0 + j, n_out));
        }
    }
}
