//! The numerics of unified INT8 training (Zhu et al., "Towards Unified INT8 Training for
//! Convolutional Neural Network", CVPR 2020; issue 22): symmetric per-tensor int8 quantization with
//! stochastic rounding for errors, Direction Sensitive Gradient Clipping (the clip of an error
//! tensor that minimises the deviation `d = 1 - cos(g, q(g))`: direction matters, magnitude does
//! not), Deviation Counteractive Learning-rate Scaling (`max(exp(-alpha·d), beta)`), and products
//! of quantized operands on lowbit's integer GEMM (int32 accumulation, dequantized to f32).
//!
//! [`crate::conv8`] builds the int8 forward / input-gradient / weight-gradient convolutions of
//! `lowbit train --int8-train` from these pieces; [`levels_stochastic`] and [`absmax`] are the
//! per-step passes (vectorized, on the pool), [`quantize_sym`] and [`dsgc_clip`] the reference
//! definitions and the periodic clip search.

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
    let dev = |c: f32| deviation_nearest(g, c, bits);
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

/// `deviation(g, quantize_sym(g, clip, bits, None))` in one vectorized pass without the levels
/// (what the DSGC search evaluates ~180 times per search; sums in f32 lanes per block of 4,096,
/// blocks in f64).
pub fn deviation_nearest(g: &[f32], clip: f32, bits: u32) -> f64 {
    if !(clip.is_finite() && clip > 0.0) {
        return 1.0;
    }
    let lim = qmax(bits) as f32;
    let s = clip / lim;
    #[inline(always)]
    fn body(g: &[f32], s: f32, lim: f32) -> Moments {
        let mut m = Moments::default();
        for gb in g.chunks(4096) {
            let (mut dot, mut gg, mut qq) = ([0f32; 16], [0f32; 16], [0f32; 16]);
            let mut it = gb.chunks_exact(16);
            for c in &mut it {
                for l in 0..16 {
                    let q = (c[l] / s).round_ties_even().clamp(-lim, lim);
                    dot[l] += c[l] * q;
                    gg[l] += c[l] * c[l];
                    qq[l] += q * q;
                }
            }
            for (l, v) in it.remainder().iter().enumerate() {
                let q = (v / s).round_ties_even().clamp(-lim, lim);
                dot[l] += v * q;
                gg[l] += v * v;
                qq[l] += q * q;
            }
            let sum = |a: [f32; 16]| a.iter().map(|&v| v as f64).sum::<f64>();
            m = m.add(Moments { dot: sum(dot), gg: sum(gg), qq: sum(qq) });
        }
        m
    }
    fn moments(g: &[f32], s: f32, lim: f32) -> Moments {
        crate::simd_dispatch!(body(g: &[f32], s: f32, lim: f32) -> Moments)
    }
    moments(g, s, lim).deviation()
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

/// The step of a symmetric grid with largest level `qmax` reaching `clip` (1 for an all-zero or
/// subnormal-only tensor, so its levels are all zero rather than undefined).
pub fn step_of(clip: f32, qmax: i32) -> f32 {
    let s = clip / qmax as f32;
    if s.is_normal() && s > 0.0 {
        s
    } else {
        1.0
    }
}

/// Largest magnitude of `x` (NaNs ignored).
pub fn absmax(x: &[f32]) -> f32 {
    use rayon::prelude::*;
    fn part(x: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        let mut it = x.chunks_exact(16);
        for c in &mut it {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = l.max(v.abs());
            }
        }
        it.remainder().iter().chain(&lanes).fold(0f32, |m, v| m.max(v.abs()))
    }
    if x.len() < PAR_MIN {
        return part(x);
    }
    x.par_chunks(PAR_MIN).map(part).reduce(|| 0.0, f32::max)
}

/// Elements below which the per-step passes stay on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// A 32-bit integer hash (lowbias32): the counter-based random source of stochastic rounding, so
/// every element's draw depends only on `(seed, index)` and the pass vectorizes and splits freely.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The uniform draw in `[0, 1)` stochastic rounding adds to element `i` under `seed`.
#[inline(always)]
pub fn draw(seed: u32, i: u32) -> f32 {
    (hash32(i.wrapping_mul(0x9e37_79b9) ^ seed) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// What one pass of [`levels_stochastic`] measured: `Σ g·q`, `Σ g²`, `Σ q²` (the deviation
/// `1 - cos(g, q)` of the quantized tensor follows without a second pass).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    pub dot: f64,
    pub gg: f64,
    pub qq: f64,
}

impl Moments {
    pub fn deviation(&self) -> f64 {
        if self.gg == 0.0 || self.qq == 0.0 {
            return 1.0;
        }
        (1.0 - self.dot / (self.gg.sqrt() * self.qq.sqrt())).max(0.0)
    }
    fn add(self, o: Moments) -> Moments {
        Moments { dot: self.dot + o.dot, gg: self.gg + o.gg, qq: self.qq + o.qq }
    }
}

/// Stochastic rounding of `g` onto the symmetric grid of step `s` with levels `-lim..=lim`
/// (`lim <= 127`): `out[i] = clamp(floor(g[i]/s + u_i), -lim, lim) + 128` as a byte (the zero point
/// of lowbit's integer kernels), `u_i = draw(seed, i)`. Unbiased inside the clip. Returns the
/// [`Moments`] of `g` and the levels.
pub fn levels_stochastic(g: &[f32], s: f32, lim: f32, seed: u32, out: &mut [u8]) -> Moments {
    use rayon::prelude::*;
    assert_eq!(g.len(), out.len());
    let inv = 1.0 / s;
    let run = |base: usize, g: &[f32], o: &mut [u8]| levels_part(g, inv, lim, seed, base as u32, o);
    if g.len() < PAR_MIN {
        return run(0, g, out);
    }
    g.par_chunks(PAR_MIN)
        .zip(out.par_chunks_mut(PAR_MIN))
        .enumerate()
        .map(|(i, (g, o))| run(i * PAR_MIN, g, o))
        .reduce(Moments::default, Moments::add)
}

/// [`levels_stochastic`] on one range starting at element `base`, compiled for AVX-512 / AVX2
/// where present (the same IEEE operations in the same order on every path: the same bits).
fn levels_part(g: &[f32], inv: f32, lim: f32, seed: u32, base: u32, out: &mut [u8]) -> Moments {
    #[inline(always)]
    fn body(g: &[f32], inv: f32, lim: f32, seed: u32, base: u32, out: &mut [u8]) -> Moments {
        let mut m = Moments::default();
        // f32 sums in 16 lanes over blocks of 4,096 elements, blocks added in f64.
        for (bi, (gb, ob)) in g.chunks(4096).zip(out.chunks_mut(4096)).enumerate() {
            let (mut dot, mut gg, mut qq) = ([0f32; 16], [0f32; 16], [0f32; 16]);
            let b0 = base.wrapping_add((bi * 4096) as u32);
            let mut ci = 0u32;
            let mut gi = gb.chunks_exact(16);
            let mut oi = ob.chunks_exact_mut(16);
            for (gc, oc) in (&mut gi).zip(&mut oi) {
                for l in 0..16 {
                    let u = draw(seed, b0.wrapping_add(ci + l as u32));
                    let q = (gc[l] * inv + u).floor().clamp(-lim, lim);
                    oc[l] = (q + 128.0) as u8;
                    dot[l] += gc[l] * q;
                    gg[l] += gc[l] * gc[l];
                    qq[l] += q * q;
                }
                ci += 16;
            }
            for (l, (gv, ov)) in gi.remainder().iter().zip(oi.into_remainder()).enumerate() {
                let u = draw(seed, b0.wrapping_add(ci + l as u32));
                let q = (gv * inv + u).floor().clamp(-lim, lim);
                *ov = (q + 128.0) as u8;
                dot[l] += gv * q;
                gg[l] += gv * gv;
                qq[l] += q * q;
            }
            let sum = |a: [f32; 16]| a.iter().map(|&v| v as f64).sum::<f64>();
            m = m.add(Moments { dot: sum(dot), gg: sum(gg), qq: sum(qq) });
        }
        m
    }
    crate::simd_dispatch!(body(g: &[f32], inv: f32, lim: f32, seed: u32, base: u32, out: &mut [u8]) -> Moments)
}

/// At most `n` evenly strided elements of `g` plus its largest magnitude: what the periodic DSGC
/// search runs on (the search's cost then does not grow with the batch).
pub fn sample(g: &[f32], n: usize) -> Vec<f32> {
    let every = g.len().div_ceil(n.max(1)).max(1);
    let mut s: Vec<f32> = g.iter().step_by(every).copied().collect();
    if let Some(m) = g.iter().copied().filter(|v| v.is_finite()).max_by(|a, b| a.abs().total_cmp(&b.abs())) {
        s.push(m);
    }
    s
}

#[cfg(test)]
#[path = "int8grad_tests.rs"]
mod tests;
