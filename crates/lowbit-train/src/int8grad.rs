//! The numerics of unified INT8 training (Zhu et al., "Towards Unified INT8 Training for
//! Convolutional Neural Network", CVPR 2020; issue 22): symmetric per-tensor int8 quantization with
//! stochastic rounding for errors, Direction Sensitive Gradient Clipping (the clip of an error
//! tensor that minimises the deviation `d = 1 - cos(g, q(g))`: direction matters, magnitude does
//! not), Deviation Counteractive Learning-rate Scaling (`max(exp(-alpha·d), beta)`), and products
//! of quantized operands on lowbit's integer GEMM (int32 accumulation, dequantized to f32).
//!
//! These are the pieces the int8 forward / input-gradient / weight-gradient GEMMs of a training
//! step are built from; `lowbit train --int8-train` does not use them yet.

use lowbit_kernels::int8::{gemm, Isa, Out, OutPtr, PackedB, Requant};

use crate::Rng;

/// Largest integer level of a symmetric `bits`-bit grid (127 for 8 bits).
pub fn qmax(bits: u32) -> i32 {
    (1i32 << (bits.clamp(2, 8) - 1)) - 1
}

/// Symmetric quantization of `x` clipped to `[-clip, clip]` on a `bits`-bit grid: the integer
/// levels and the step `clip / qmax`. Nearest rounding (ties to even) without `rng`, stochastic
/// rounding (`floor(x/s + u)`, `u` uniform in `[0, 1)`: unbiased inside the clip) with it.
pub fn quantize_sym(x: &[f32], clip: f32, bits: u32, rng: Option<&mut Rng>) -> (Vec<i8>, f32) {
    let m = qmax(bits);
    if !(clip.is_finite() && clip > 0.0) {
        return (vec![0; x.len()], 0.0);
    }
    let s = clip / m as f32;
    let lim = m as f32;
    let q = match rng {
        None => x.iter().map(|&v| (v / s).round_ties_even().clamp(-lim, lim) as i8).collect(),
        Some(r) => x.iter().map(|&v| ((v / s) + r.uniform()).floor().clamp(-lim, lim) as i8).collect(),
    };
    (q, s)
}

/// `1 - cos(g, s·q)` (0 for identical directions, 1 for orthogonal or an all-zero side).
pub fn deviation(g: &[f32], q: &[i8], s: f32) -> f64 {
    let (mut dot, mut gg, mut qq) = (0f64, 0f64, 0f64);
    for (&a, &b) in g.iter().zip(q) {
        let b = b as f64 * s as f64;
        dot += a as f64 * b;
        gg += a as f64 * a as f64;
        qq += b * b;
    }
    if gg == 0.0 || qq == 0.0 {
        return 1.0;
    }
    1.0 - dot / (gg.sqrt() * qq.sqrt())
}

/// What Direction Sensitive Gradient Clipping chose for one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dsgc {
    /// The clip value, and the tensor's largest magnitude (max clipping's choice).
    pub clip: f32,
    pub max: f32,
    /// Deviation `1 - cos(g, q(g))` at the chosen clip (nearest rounding), and at the max.
    pub deviation: f64,
    pub deviation_at_max: f64,
}

/// Direction Sensitive Gradient Clipping: the clip in `(0, max|g|]` minimising the deviation of the
/// nearest-rounded quantized tensor, found on a log-spaced grid (ratios of 2^(1/8) down to max/2^16)
/// and refined by golden-section search between the best point's neighbours.
pub fn dsgc_clip(g: &[f32], bits: u32) -> Dsgc {
    let max = g.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let dev = |c: f32| {
        let (q, s) = quantize_sym(g, c, bits, None);
        deviation(g, &q, s)
    };
    if !(max.is_finite() && max > 0.0) {
        return Dsgc { clip: max, max, deviation: 1.0, deviation_at_max: 1.0 };
    }
    let at_max = dev(max);
    let grid: Vec<f32> = (0..=128).map(|i| max * (-(i as f32) / 8.0).exp2()).collect();
    let devs: Vec<f64> = grid.iter().map(|&c| dev(c)).collect();
    let best = (0..grid.len()).min_by(|&a, &b| devs[a].total_cmp(&devs[b])).unwrap_or(0);
    // Golden-section search on log(clip) between the neighbours of the best grid point.
    let (mut lo, mut hi) = (grid[(best + 1).min(grid.len() - 1)].ln(), grid[best.saturating_sub(1)].ln());
    let (mut best_c, mut best_d) = (grid[best], devs[best]);
    let phi = 0.618_034_f32;
    for _ in 0..24 {
        let (a, b) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
        let (da, db) = (dev(a.exp()), dev(b.exp()));
        for (c, d) in [(a.exp(), da), (b.exp(), db)] {
            if d < best_d {
                (best_c, best_d) = (c, d);
            }
        }
        if da < db {
            hi = b;
        } else {
            lo = a;
        }
    }
    Dsgc { clip: best_c.min(max), max, deviation: best_d, deviation_at_max: at_max }
}

/// Deviation Counteractive Learning-rate Scaling: the factor a layer's learning rate is scaled by
/// for gradient deviation `d` (published: `alpha = 20`, `beta = 0.1`).
pub fn dcls_factor(d: f64, alpha: f64, beta: f64) -> f64 {
    (-alpha * d).exp().max(beta)
}

/// `C = A · B` (`A`: `m × k`, `B`: `k × n`, row-major f32) with both operands quantized
/// symmetrically to 8 bits (`A` clipped at `clip_a`, stochastically rounded with `rng`; `B` at
/// `clip_b`, nearest) and multiplied on lowbit's integer GEMM on `isa`: `A`'s levels shifted to
/// bytes (`+128`, the shift's `128·Σ_k b` taken off in the epilogue's integer bias), int32 sums
/// scaled by both steps to f32. Exactly the product of the two dequantized operands up to the
/// final f32 rounding.
#[allow(clippy::too_many_arguments)]
pub fn qgemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    clip_a: f32,
    b: &[f32],
    clip_b: f32,
    rng: Option<&mut Rng>,
    threads: usize,
) -> Vec<f32> {
    assert!(a.len() >= m * k && b.len() >= k * n);
    let (qa, sa) = quantize_sym(&a[..m * k], clip_a, 8, rng);
    let (qb, sb) = quantize_sym(&b[..k * n], clip_b, 8, None);
    let mut packed = PackedB::new(isa, k, n, |kk, j| qb[kk * n + j]);
    let corr: Vec<i32> = packed.colsum.iter().map(|&s| -128 * s).collect();
    packed.colsum = vec![];
    let rq = Requant::new(&vec![sa * sb; n], &corr, &[], f32::NEG_INFINITY, f32::INFINITY, Out::F32);
    // Rows of whole 4-byte groups (the padding meets zero weights).
    let k4 = k.div_ceil(4) * 4;
    let mut bytes = vec![128u8; m * k4];
    for (row, q) in bytes.chunks_exact_mut(k4).zip(qa.chunks_exact(k.max(1))) {
        for (d, &v) in row.iter_mut().zip(q) {
            *d = (v as i32 + 128) as u8;
        }
    }
    let mut c = vec![0f32; m * n];
    if m > 0 && n > 0 {
        // SAFETY: `bytes` holds m rows of k4 bytes, `c` m rows of n f32; the caller picks a path this
        // CPU supports.
        unsafe { gemm(m, bytes.as_ptr(), k4, &packed, &rq, OutPtr(c.as_mut_ptr() as *mut u8), n, threads) };
    }
    c
}

#[cfg(test)]
#[path = "int8grad_tests.rs"]
mod tests;
