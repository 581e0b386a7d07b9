//! Depthwise convolutions in bands of output rows: each band's zero-point-padded input rows are
//! written into a per-thread buffer that stays in L2 and the band's output rows computed from it.
//! Where the rows come from is the caller's ([`run_bands`] takes a filler): copied from the input
//! ([`depthwise_bands`]), or computed there by the 1x1 convolution before it
//! ([`crate::int8::fused`]).

use rayon::prelude::*;

use crate::epilogue::{OutPtr, Requant};
use crate::geom::{ConvGeom, DwGeom};
use crate::int8::gemm::kernels;
use crate::int8::pack::PackedDw;
use crate::isa::trace;

/// Padded row `ph` (`wp` pixels of `cs ≥ c_in` bytes): the input row `ph - pt` between the zero
/// point's left and right padding, or all zero point above and below the image. `x` holds the
/// image's rows from row `first` on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_row(g: &ConvGeom, x: &[u8], first: usize, ph: usize, wp: usize, cs: usize, zx: u8, row: &mut [u8]) {
    let c = g.c_in;
    let ih = ph as isize - g.pt as isize;
    if ih < 0 || ih >= g.h as isize {
        row.fill(zx);
        return;
    }
    let ih = ih as usize - first;
    let left = g.pl.min(wp);
    let n = g.w.min(wp - left);
    if cs == c {
        row[..left * c].fill(zx);
        row[left * c..(left + n) * c].copy_from_slice(&x[ih * g.w * c..(ih * g.w + n) * c]);
        row[(left + n) * c..].fill(zx);
    } else {
        row.fill(zx);
        for i in 0..n {
            let s = (ih * g.w + i) * c;
            row[(left + i) * cs..(left + i) * cs + c].copy_from_slice(&x[s..s + c]);
        }
    }
}

/// Copies the NHWC input into a `[hp][wp][cs]` buffer (channel stride `cs ≥ c`) filled with the
/// zero point outside the image and in the padding channels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_nhwc(g: &ConvGeom, x: &[u8], hp: usize, wp: usize, cs: usize, zx: u8, xp: &mut [u8], threads: usize) {
    let job = |(ph, row): (usize, &mut [u8])| pad_row(g, x, 0, ph, wp, cs, zx, row);
    if threads > 1 && hp * wp * cs >= 1 << 16 {
        // Indexed chunks, not `par_bridge` (which hands rows out one at a time through a lock).
        xp[..hp * wp * cs].par_chunks_mut(wp * cs).enumerate().for_each(job);
    } else {
        xp[..hp * wp * cs].chunks_mut(wp * cs).enumerate().for_each(job);
    }
}

thread_local! {
    /// Each thread's band of padded depthwise input rows (grown once to the largest band met).
    static BAND: std::cell::RefCell<crate::aligned::Aligned<u8>> = const { std::cell::RefCell::new(crate::aligned::Aligned::new()) };
}

/// Bytes of padded input rows a depthwise band aims at: well inside L2, so the rows the kernel reads were just
/// written there by the padding copy (a whole padded image went out to memory and came back).
const DW_BAND_BYTES: usize = 192 << 10;

/// Fills padded input rows `ph0..` of a band (`rows` holds whole rows of `wp·cs` bytes).
pub(crate) type Fill<'a> = dyn Fn(usize, &mut [u8]) + Sync + 'a;

/// A depthwise convolution in bands of output rows, bands on the pool when `threads > 1`. With
/// `carry`, each thread takes a contiguous run of bands and moves the rows two neighbouring bands
/// share (the window's overlap) instead of filling them again, which matters when filling computes
/// them; and on several threads a plane whose padded rows fit [`WHOLE_BYTES`] is filled whole first
/// (no row filled twice), then its output rows computed.
///
/// # Safety
/// `out` holds `oh * ow * c` outputs of the requantization's type; the path is supported by the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_bands(
    g: &ConvGeom,
    dg: &DwGeom,
    w: &PackedDw,
    rq: &Requant,
    out: OutPtr,
    threads: usize,
    carry: bool,
    fill: &Fill,
) {
    trace::int8(w.isa);
    let kern = kernels(w.isa);
    let row_bytes = dg.wp * dg.cs;
    let span = (g.kh - 1) * g.dh + 1;
    let hp = (g.oh - 1) * g.sh + span;
    if carry && threads > 1 && hp * row_bytes <= WHOLE_BYTES && g.oh * g.ow * g.c_out >= 1 << 14 {
        // Two phases on the pool: every padded row filled once (rows split over the threads),
        // then every output row computed from them (split again).
        BAND.with(|buf| {
            let mut buf = buf.borrow_mut();
            // 64 spare bytes: the AVX-512 kernels read whole 64-channel blocks past the last pixel.
            let need = hp * row_bytes + 64;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let per = hp.div_ceil(threads);
            buf[..hp * row_bytes].par_chunks_mut(per * row_bytes).enumerate().for_each(|(i, rows)| fill(i * per, rows));
            let x: &[u8] = &buf;
            let per = g.oh.div_ceil(threads);
            (0..g.oh.div_ceil(per)).into_par_iter().for_each(|k| {
                for oy in k * per..((k + 1) * per).min(g.oh) {
                    (kern.depthwise_row)(dg, x, w, rq, out, oy);
                }
            });
        });
        return;
    }
    let mut band = ((DW_BAND_BYTES / row_bytes.max(1)).saturating_sub(span) / g.sh + 1).clamp(1, g.oh.max(1));
    if threads > 1 {
        // At least two bands per thread so the pool has work to balance.
        band = band.min(g.oh.div_ceil(2 * threads)).max(1);
    }
    let bands = g.oh.div_ceil(band);
    // Bands b0..b1 in order on one thread.
    let job = |b0: usize, b1: usize| {
        BAND.with(|buf| {
            let mut buf = buf.borrow_mut();
            // Padded rows the buffer starts with.
            let mut held = 0..0;
            for b in b0..b1 {
                let (oy0, rows) = (b * band, band.min(g.oh - b * band));
                let (ph0, nrows) = (oy0 * g.sh, (rows - 1) * g.sh + span);
                // 64 spare bytes: the AVX-512 kernels read whole 64-channel blocks past the last pixel.
                let need = nrows * row_bytes + 64;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let mut have = 0;
                if carry && held.contains(&ph0) {
                    have = (held.end - ph0).min(nrows);
                    let from = (ph0 - held.start) * row_bytes;
                    buf.copy_within(from..from + have * row_bytes, 0);
                }
                fill(ph0 + have, &mut buf[have * row_bytes..nrows * row_bytes]);
                held = ph0..ph0 + nrows;
                let o = OutPtr(out.at(rq.out, oy0 * g.ow, 0, g.c_out));
                let bg = DwGeom { oh: rows, ..*dg };
                for oy in 0..rows {
                    (kern.depthwise_row)(&bg, &buf, w, rq, o, oy);
                }
            }
        });
    };
    if threads > 1 && bands > 1 && g.oh * g.ow * g.c_out >= 1 << 14 {
        if carry {
            let runs = threads.min(bands);
            (0..runs).into_par_iter().for_each(|r| job(r * bands / runs, (r + 1) * bands / runs));
        } else {
            (0..bands).into_par_iter().for_each(|b| job(b, b + 1));
        }
    } else {
        job(0, bands);
    }
}

/// Bytes of padded input rows up to which [`run_bands`] with `carry` (a fused expansion + depthwise
/// convolution) on more than one thread fills the whole plane first instead of running bands:
/// planes this small (MobileNets' 14x14 and 7x7 blocks) give each thread's run of bands so few rows
/// that their windows' overlap makes the threads compute much of the expansion twice (a 5x5 window
/// on 7 rows over 2 threads: 15 rows of expansion for 11), and the whole expanded plane stays in L2
/// anyway.
const WHOLE_BYTES: usize = 256 << 10;

/// A depthwise convolution of the NHWC image `x`, each band's rows padded from it.
///
/// # Safety
/// As for [`run_bands`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise_bands(
    g: &ConvGeom,
    dg: &DwGeom,
    x: &[u8],
    zx: u8,
    w: &PackedDw,
    rq: &Requant,
    out: OutPtr,
    threads: usize,
) {
    let row_bytes = dg.wp * dg.cs;
    let fill = |ph0: usize, rows: &mut [u8]| {
        for (i, row) in rows.chunks_mut(row_bytes).enumerate() {
            pad_row(g, x, 0, ph0 + i, dg.wp, dg.cs, zx, row);
        }
    };
    run_bands(g, dg, w, rq, out, threads, false, &fill);
}
