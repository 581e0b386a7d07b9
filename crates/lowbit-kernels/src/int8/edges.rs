//! The conversions at the edges of the integer region: QuantizeLinear of f32 NCHW values into
//! NHWC bytes, DequantizeLinear back, and byte transposes. Both layouts are converted in one pass
//! (no NCHW byte copy on the way), split over pixel ranges on the pool for large tensors: a
//! model's input and outputs are its largest f32 tensors (CenterFace's 640x480 input: 0.8 ms on
//! one core).

use rayon::prelude::*;

use crate::int8::ops::{Layout, QParams};
use crate::isa::{trace, Isa};

/// Elements below which a conversion runs on the calling thread.
const PAR_MIN: usize = 1 << 16;

multiversion! {
    /// QuantizeLinear of contiguous values.
    pub fn quantize_flat(x: &[f32], q: QParams, out: &mut [u8]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.quant(v));
    }
}

/// Pixel chunks of `p` pixels of `c` values for `threads` threads (whole pixels, a few per thread).
fn chunk(p: usize, c: usize, threads: usize) -> usize {
    p.div_ceil(threads * 4).max(1) * c
}

/// QuantizeLinear; with `layout` the f32 input is NCHW and the output NHWC (`tmp` holds the
/// NCHW bytes on the way, `x.len()` of them: quantizing contiguous values vectorizes, the
/// transpose then moves bytes).
pub fn quantize(isa: Isa, x: &[f32], q: QParams, layout: Layout, out: &mut [u8], tmp: &mut [u8], threads: usize) {
    let par = threads > 1 && x.len() >= PAR_MIN;
    let flat = |out: &mut [u8]| {
        if par {
            let k = x.len().div_ceil(threads * 4);
            out[..x.len()].par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| quantize_flat(isa, x, q, o));
        } else {
            quantize_flat(isa, x, q, out)
        }
    };
    match layout {
        None => flat(out),
        Some((n, c, p)) => {
            let tmp = &mut tmp[..x.len()];
            flat(tmp);
            for b in 0..n {
                let (xb, ob) = (&tmp[b * c * p..(b + 1) * c * p], &mut out[b * c * p..(b + 1) * c * p]);
                if par {
                    let k = chunk(p, c, threads);
                    ob.par_chunks_mut(k).enumerate().for_each(|(i, o)| to_nhwc(xb, c, p, i * k / c, o));
                } else {
                    to_nhwc(xb, c, p, 0, ob);
                }
            }
        }
    }
}

/// Pixels `i0..i0 + out.len() / c` of the `c` byte planes of `p` values in `x` (one image), NHWC.
fn to_nhwc(x: &[u8], c: usize, p: usize, i0: usize, out: &mut [u8]) {
    let np = out.len() / c;
    for ch in 0..c {
        for (i, &v) in x[ch * p + i0..ch * p + i0 + np].iter().enumerate() {
            out[i * c + ch] = v;
        }
    }
}

/// DequantizeLinear of NHWC bytes into the `c` f32 planes of `p` values at `out` (one image),
/// planes' elements `i0..i0 + np`.
///
/// # Safety
/// `out` holds `c·p` values; no other thread writes elements `i0..i0 + np` of a plane meanwhile.
unsafe fn dequantize_planes(x: &[u8], q: QParams, c: usize, p: usize, i0: usize, np: usize, out: *mut f32) {
    for ch in 0..c {
        for i in i0..i0 + np {
            out.add(ch * p + i).write(q.dequant(x[i * c + ch]));
        }
    }
}

/// DequantizeLinear; with `layout` the input is NHWC and the f32 output NCHW.
pub fn dequantize(x: &[u8], q: QParams, layout: Layout, out: &mut [f32], threads: usize) {
    let par = threads > 1 && out.len() >= PAR_MIN;
    match layout {
        None if par => {
            let k = out.len().div_ceil(threads * 4);
            out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, x)| {
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = q.dequant(v));
            });
        }
        None => out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.dequant(v)),
        Some((n, c, p)) => {
            for b in 0..n {
                let (xb, ob) = (&x[b * c * p..(b + 1) * c * p], &mut out[b * c * p..(b + 1) * c * p]);
                if par {
                    // Each task writes a range of every plane: split the pixels, then each task fills
                    // its slices of the planes through a raw pointer (disjoint ranges).
                    let k = p.div_ceil(threads * 4).max(1);
                    let base = SendMut(ob.as_mut_ptr());
                    (0..p.div_ceil(k)).into_par_iter().for_each(|t| {
                        let (i0, np) = (t * k, k.min(p - t * k));
                        // SAFETY: `ob` holds c·p values; task t alone writes elements i0..i0 + np
                        // of each plane (the tasks' pixel ranges are disjoint).
                        unsafe { dequantize_planes(xb, q, c, p, i0, np, base.get()) };
                    });
                } else {
                    for ch in 0..c {
                        for (i, o) in ob[ch * p..(ch + 1) * p].iter_mut().enumerate() {
                            *o = q.dequant(xb[i * c + ch]);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendMut(*mut f32);
unsafe impl Send for SendMut {}
unsafe impl Sync for SendMut {}
impl SendMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// NHWC bytes → NCHW bytes (for generic fallbacks and graph outputs).
pub fn nhwc_to_nchw(x: &[u8], n: usize, c: usize, p: usize, out: &mut [u8]) {
    for b in 0..n {
        for ch in 0..c {
            for i in 0..p {
                out[(b * c + ch) * p + i] = x[(b * p + i) * c + ch];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's split (pixel ranges, flat chunks) gives the bytes and values of the one-thread
    /// conversion, with and without the layout change, on a batch of 2 with ragged chunks.
    #[test]
    fn threaded_conversions_equal_the_single_thread_ones() {
        let (n, c, p) = (2, 3, 150 * 151 + 7);
        let len = n * c * p;
        let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.0).collect();
        for q in [QParams { scale: 0.05, zp: 128, signed: false }, QParams { scale: 0.03, zp: -5, signed: true }] {
            for layout in [None, Some((n, c, p))] {
                let run = |threads: usize| {
                    let (mut b, mut tmp, mut f) = (vec![0u8; len], vec![0u8; len], vec![0f32; len]);
                    quantize(Isa::Scalar, &x, q, layout, &mut b, &mut tmp, threads);
                    dequantize(&b, q, layout, &mut f, threads);
                    (b, f.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                let one = run(1);
                assert_eq!(one, run(2), "{q:?} {layout:?}");
                if let Some((_, c, p)) = layout {
                    // NHWC: pixel 5's channel 2 is plane 2's value 5.
                    assert_eq!(one.0[5 * c + 2], q.quant(x[2 * p + 5]));
                }
            }
        }
    }
}
