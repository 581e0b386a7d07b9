//! f32 pooling over NCHW planes: max and average with the same row-range trick as the depthwise
//! kernel (no per-element bounds checks inside the window), and global average pooling.

use rayon::prelude::*;

use crate::geom::valid_range;
pub use crate::geom::PoolGeom;
use crate::isa::{trace, F32Isa};

#[allow(clippy::too_many_arguments)]
fn pool_plane(
    isa: F32Isa,
    g: &PoolGeom,
    max: bool,
    count_include_pad: bool,
    pb: usize,
    pr: usize,
    src: &[f32],
    out: &mut [f32],
) {
    // 2x2 stride-2 max pooling inside the plane: its own row-pair kernel on both SIMD paths.
    #[cfg(target_arch = "x86_64")]
    if max && isa != F32Isa::Scalar && crate::fp32::max2::applies(g) {
        // SAFETY: both SIMD paths include AVX2 (checked by `pool2d`); `applies` holds and `plane`
        // asserts the slices hold the planes.
        unsafe { crate::fp32::max2::plane(isa, g, src, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if max && isa == F32Isa::Avx512 && crate::fp32::avx512::window_fits(g) {
        // SAFETY: the AVX-512 path runs here (checked by `pool2d`); loads are masked to the plane's
        // columns, rows range-checked.
        unsafe {
            crate::fp32::avx512::window::<true>(g, src, &[], f32::NEG_INFINITY, f32::NEG_INFINITY, f32::INFINITY, out)
        };
        return;
    }
    for oy in 0..g.oh {
        let orow = &mut out[oy * g.ow..(oy + 1) * g.ow];
        orow.fill(if max { f32::NEG_INFINITY } else { 0.0 });
        let mut rows = 0usize;
        let mut rows_pad = 0usize;
        for ky in 0..g.kh {
            let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
            if iy < (g.h + pb) as isize {
                rows_pad += 1;
            }
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            rows += 1;
            let s = &src[iy as usize * g.w..(iy as usize + 1) * g.w];
            for kx in 0..g.kw {
                let (lo, hi) = valid_range(g.ow, g.sw, kx * g.dw, g.pl, g.w);
                if lo >= hi {
                    continue;
                }
                let base = lo * g.sw + kx * g.dw - g.pl;
                let o = &mut orow[lo..hi];
                if max {
                    for (i, a) in o.iter_mut().enumerate() {
                        *a = a.max(s[base + i * g.sw]);
                    }
                } else {
                    for (i, a) in o.iter_mut().enumerate() {
                        *a += s[base + i * g.sw];
                    }
                }
            }
        }
        if !max {
            for (ox, a) in orow.iter_mut().enumerate() {
                let mut cols = 0usize;
                let mut cols_pad = 0usize;
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
                    if ix < (g.w + pr) as isize {
                        cols_pad += 1;
                    }
                    if ix >= 0 && ix < g.w as isize {
                        cols += 1;
                    }
                }
                let n = if count_include_pad { rows_pad * cols_pad } else { rows * cols };
                *a /= n.max(1) as f32;
            }
        }
    }
}

/// Max or average pooling of `planes` NCHW planes. `pb`/`pr` are the bottom/right pads (needed
/// for `count_include_pad`).
#[allow(clippy::too_many_arguments)]
pub fn pool2d(
    isa: F32Isa,
    g: &PoolGeom,
    planes: usize,
    max: bool,
    count_include_pad: bool,
    pb: usize,
    pr: usize,
    x: &[f32],
    out: &mut [f32],
    threads: usize,
) {
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    trace::f32(isa);
    let (ip, op) = (g.h * g.w, g.oh * g.ow);
    if op == 0 {
        return;
    }
    // Max pooling on AVX2 (and AVX-512 where its own window does not apply): groups of planes on the
    // depthwise kernel's padded, phase-split layout.
    // (2x2 stride-2 windows inside the plane go plane by plane to their own kernel, below.)
    #[cfg(target_arch = "x86_64")]
    let max2 = max && isa != F32Isa::Scalar && crate::fp32::max2::applies(g);
    #[cfg(target_arch = "x86_64")]
    if max && !max2 && isa != F32Isa::Scalar && !(isa == F32Isa::Avx512 && crate::fp32::avx512::window_fits(g)) {
        let (lo, hi) = (f32::NEG_INFINITY, f32::INFINITY);
        let parallel = threads > 1 && planes * ip > 1 << 16;
        // SAFETY: both SIMD paths include AVX2 and FMA (checked supported above); the kernel
        // asserts the slices hold what the geometry says.
        unsafe {
            crate::fp32::avx2::windows::<true>(
                &crate::fp32::layout::Planes { g, x, w: &[], bias: &[], lo, hi },
                planes,
                out,
                parallel,
            )
        };
        return;
    }
    let job = |p: usize, o: &mut [f32]| pool_plane(isa, g, max, count_include_pad, pb, pr, &x[p * ip..(p + 1) * ip], o);
    if threads > 1 && planes * ip > 1 << 16 {
        out[..planes * op].par_chunks_mut(op).enumerate().for_each(|(p, o)| job(p, o));
    } else {
        out[..planes * op].chunks_mut(op).enumerate().for_each(|(p, o)| job(p, o));
    }
}

/// Global average (or max) over each plane of `plane` elements.
pub fn global_pool(x: &[f32], plane: usize, max: bool, out: &mut [f32]) {
    if plane == 0 {
        // Over nothing: the mean is 0/0, the max the identity of max (as the reference says).
        out.fill(if max { f32::NEG_INFINITY } else { f32::NAN });
        return;
    }
    for (o, c) in out.iter_mut().zip(x.chunks(plane)) {
        *o = if max {
            c.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        } else {
            c.iter().sum::<f32>() / plane as f32
        };
    }
}
