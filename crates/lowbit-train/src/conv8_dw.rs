//! Depthwise convolutions (one group per channel) in INT8 training: the forward pass and the
//! stride-1 input gradient run on the integer depthwise kernel like the dense layers do
//! ([`super::run_conv`] with `group = c`; the input gradient with the taps flipped); the strided
//! input gradient and the weight gradient (one dot product per channel and tap over the batch)
//! are direct integer loops over the byte planes.

use rayon::prelude::*;

use crate::conv::Geom;

/// Whether weights of shape `ws` on an input of shape `xs` form a depthwise convolution
/// (`[c, 1, kh, kw]` on `c > 1` channels).
pub(super) fn is_depthwise(xs: &[usize], ws: &[usize]) -> bool {
    xs.len() == 4 && ws.len() == 4 && ws[1] == 1 && xs[1] > 1 && ws[0] == xs[1]
}

/// The taps of each channel flipped (`kh·kw` per channel): the stride-1 input gradient's kernel.
pub(super) fn flipped(wq: &[i8], taps: usize) -> Vec<i8> {
    wq.chunks_exact(taps).flat_map(|w| w.iter().rev().copied()).collect()
}

/// For output row/column `o` and tap `k`: the input index, if inside `0..len`.
#[inline]
fn input_at(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < len)
}

/// The output columns `lo..hi` for which `ok` holds (a contiguous range: the window's column is
/// inside the image).
fn valid(len: usize, ok: impl Fn(usize) -> bool) -> (usize, usize) {
    let lo = (0..len).find(|&x| ok(x)).unwrap_or(len);
    let hi = (lo..len).rev().find(|&x| ok(x)).map_or(lo, |x| x + 1);
    (lo, hi)
}

/// `Σ (a - 128)·(b - 128)` over two byte rows of equal length (integer sums: the same value on
/// every path [`crate::simd_dispatch`] picks).
fn dot_bytes(a: &[u8], b: &[u8]) -> i32 {
    #[inline(always)]
    fn body(a: &[u8], b: &[u8]) -> i32 {
        a.iter().zip(b).map(|(&x, &y)| (x as i32 - 128) * (y as i32 - 128)).sum()
    }
    crate::simd_dispatch!(body(a: &[u8], b: &[u8]) -> i32)
}

/// `dX = Σ_taps w · dY` scattered back through the windows, integer sums times `scale`, NCHW
/// (`g.c` = `g.o` channels; `dyp` the error planes as bytes, level + 128).
pub(super) fn input_grad_direct(g: &Geom, wq: &[i8], scale: f32, dyp: &[u8]) -> Vec<f32> {
    let (taps, hw, pix) = (g.kh * g.kw, g.h * g.w, g.pix());
    let [sh, sw, pt, pl, _, _] = g.p;
    crate::par_build_init(
        g.n * g.c * hw,
        hw,
        || vec![0i32; hw],
        |acc, plane, out| {
            let c = plane % g.c;
            acc.fill(0);
            let dy = &dyp[plane * pix..(plane + 1) * pix];
            let w = &wq[c * taps..(c + 1) * taps];
            for kj in 0..g.kw {
                let (lo, hi) = valid(g.ow, |ox| input_at(ox, kj, sw, pl, g.w).is_some());
                if lo >= hi {
                    continue;
                }
                for oy in 0..g.oh {
                    let drow = &dy[oy * g.ow + lo..oy * g.ow + hi];
                    for ki in 0..g.kh {
                        let Some(iy) = input_at(oy, ki, sh, pt, g.h) else { continue };
                        let wv = w[ki * g.kw + kj] as i32;
                        let x0 = iy * g.w + lo * sw + kj - pl;
                        for (a, &d) in acc[x0..].iter_mut().step_by(sw).zip(drow) {
                            *a += wv * (d as i32 - 128);
                        }
                    }
                }
            }
            out.iter_mut().zip(acc.iter()).for_each(|(o, &a)| *o = a as f32 * scale);
        },
    )
}

/// `dW[c][tap] = Σ_images Σ_pixels dY · X` in integers (as f32), `c × kh·kw`, channels on the pool.
pub(super) fn weight_grad(g: &Geom, xq: &[u8], dyp: &[u8]) -> Vec<f32> {
    let (taps, hw, pix) = (g.kh * g.kw, g.h * g.w, g.pix());
    let [sh, sw, pt, pl, _, _] = g.p;
    let per_channel: Vec<Vec<f32>> = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let mut sums = vec![0i64; taps];
            for n in 0..g.n {
                let x = &xq[(n * g.c + c) * hw..(n * g.c + c + 1) * hw];
                let dy = &dyp[(n * g.c + c) * pix..(n * g.c + c + 1) * pix];
                for (t, s) in sums.iter_mut().enumerate() {
                    let (ki, kj) = (t / g.kw, t % g.kw);
                    let (lo, hi) = valid(g.ow, |ox| input_at(ox, kj, sw, pl, g.w).is_some());
                    if lo >= hi {
                        continue;
                    }
                    for oy in 0..g.oh {
                        let Some(iy) = input_at(oy, ki, sh, pt, g.h) else { continue };
                        let drow = &dy[oy * g.ow + lo..oy * g.ow + hi];
                        let x0 = iy * g.w + lo * sw + kj - pl;
                        let row: i32 = if sw == 1 {
                            dot_bytes(&x[x0..x0 + (hi - lo)], drow)
                        } else {
                            x[x0..]
                                .iter()
                                .step_by(sw)
                                .zip(drow)
                                .map(|(&a, &b)| (a as i32 - 128) * (b as i32 - 128))
                                .sum()
                        };
                        *s += row as i64;
                    }
                }
            }
            sums.into_iter().map(|v| v as f32).collect()
        })
        .collect();
    per_channel.concat()
}
