//! Helpers shared by the kernel benches (`int8`, `f32`): best-of timing and square convolution
//! geometries.

use std::time::Instant;

use lowbit_kernels::geom::ConvGeom;

/// Best time of `f` in seconds over at least 0.3 s of runs (after one warm-up run).
pub fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let mut total = 0.0;
    while total < 0.3 {
        let t = Instant::now();
        f();
        let s = t.elapsed().as_secs_f64();
        best = best.min(s);
        total += s;
    }
    best
}

/// A `k`x`k` convolution at stride `s` on a square `hw` image, padded by `k / 2` on every side.
pub fn square_geom(c_in: usize, c_out: usize, hw: usize, k: usize, s: usize, group: usize) -> ConvGeom {
    let (pad, o) = (k / 2, (hw + 2 * (k / 2) - k) / s + 1);
    ConvGeom {
        c_in,
        h: hw,
        w: hw,
        c_out,
        kh: k,
        kw: k,
        sh: s,
        sw: s,
        dh: 1,
        dw: 1,
        pt: pad,
        pl: pad,
        oh: o,
        ow: o,
        group,
    }
}
