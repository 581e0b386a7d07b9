//! Learning one layer group's rounding (AdaRound) from its second-order statistics.
//!
//! The layer computes `y = W x` per output channel (a row `w_c` of `K` weights against a patch of
//! `K` inputs). Over the calibration rows, with the quantized model's inputs `x_q` (what the
//! layer reads once the layers before it are quantized) and the float model's `x_f`, the
//! reconstruction error of the quantized weights `w_q` is, per output element,
//!
//! `E = 1/M · Σ_rows Σ_c (w_q,c · x_q − w_c · x_f)²
//!    = 1/M · Σ_c (w_q,c G_qq w_q,cᵀ − 2 w_q,c G_qf w_cᵀ + w_c G_ff w_cᵀ)`
//!
//! with the Gram matrices `G_qq = Σ x_q x_qᵀ`, `G_qf = Σ x_q x_fᵀ`, `G_ff = Σ x_f x_fᵀ` (centered:
//! the mean of the error is the bias's job, see [`super::gram`]). So every iteration is exact over
//! all calibration rows at the cost of one `rows × K × K` product, with no sampling noise, and
//! the number of rows only costs once, when the Grams are accumulated.
//!
//! The rounding: `w_q = s · clamp(floor(w / s) + h(V), qmin, qmax)` with the rectified sigmoid
//! `h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = −0.1`, `V` initialised so `h` equals the
//! fractional part (the float weight), learned by Adam on `E + λ Σ (1 − |2h − 1|^β)`, the
//! regulariser off for a warm-up and `β` annealed from `beta.0` to `beta.1` after it (Nagel et al.,
//! "Up or Down? Adaptive Rounding for Post-Training Quantization", 2020). The result rounds up
//! where `h ≥ 0.5`.

const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// The settings of [`learn_rounding`].
#[derive(Clone, Debug)]
pub struct LearnSettings {
    pub iters: usize,
    /// Weight of the rounding regulariser.
    pub lambda: f32,
    /// `β` at the end of the warm-up and at the last iteration.
    pub beta: (f32, f32),
    /// Fraction of the iterations without the regulariser.
    pub warmup: f32,
    /// Adam's step size on `V`.
    pub lr: f32,
    /// Threads for the `rows × k × k` product of each iteration.
    pub threads: usize,
}

impl Default for LearnSettings {
    fn default() -> Self {
        LearnSettings { iters: 1000, lambda: 0.01, beta: (20.0, 2.0), warmup: 0.2, lr: 0.01, threads: 1 }
    }
}

/// One group of output channels sharing a Gram matrix.
pub struct Problem<'a> {
    /// Float weights, `rows × k`.
    pub w: &'a [f32],
    /// One scale per row.
    pub scale: &'a [f32],
    pub qmin: i32,
    pub qmax: i32,
    pub k: usize,
    /// `G_qq / M`, `k × k` (symmetric).
    pub gqq: &'a [f32],
    /// `w G_fq / M`, `rows × k` (the target of `w_q G_qq / M`).
    pub target: &'a [f32],
}

/// `out[r][j] = Σ_i a[r][i] g[i][j]` (`a`: rows × k, `g`: k × k).
fn times_gram(a: &[f32], g: &[f32], k: usize, out: &mut [f32], threads: usize) {
    let rows = a.len() / k.max(1);
    if k <= 48 {
        for r in 0..rows {
            let o = &mut out[r * k..(r + 1) * k];
            o.fill(0.0);
            for (i, &av) in a[r * k..(r + 1) * k].iter().enumerate() {
                if av != 0.0 {
                    for (ov, gv) in o.iter_mut().zip(&g[i * k..(i + 1) * k]) {
                        *ov += av * gv;
                    }
                }
            }
        }
        return;
    }
    super::gram::gemm(rows, k, k, out, a, k, 1, g, false, threads);
}

/// The reconstruction error (up to the constant `w G_ff wᵀ / M`) of integer weights `q`.
pub fn error_of(p: &Problem, q: &[i32]) -> f64 {
    let k = p.k;
    let wq: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * p.scale[i / k]).collect();
    let mut e = vec![0f32; wq.len()];
    times_gram(&wq, p.gqq, k, &mut e, 1);
    wq.iter().zip(&e).zip(p.target).map(|((&a, &b), &t)| a as f64 * (b as f64 - 2.0 * t as f64)).sum()
}

/// Round to nearest (half away from zero, as the weight quantizer does), clamped.
pub fn nearest(p: &Problem) -> Vec<i32> {
    let k = p.k;
    p.w.iter()
        .enumerate()
        .map(|(i, &v)| ((v / p.scale[i / k]).round() as i64).clamp(p.qmin as i64, p.qmax as i64) as i32)
        .collect()
}

fn rect_sigmoid(v: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + (-v).exp());
    let h = s * (ZETA - GAMMA) + GAMMA;
    if h <= 0.0 {
        (0.0, 0.0)
    } else if h >= 1.0 {
        (1.0, 0.0)
    } else {
        (h, s * (1.0 - s) * (ZETA - GAMMA))
    }
}

/// Learns the rounding of `p` and returns its integer weights (`rows × k`).
pub fn learn_rounding(p: &Problem, s: &LearnSettings) -> Vec<i32> {
    let k = p.k;
    let n = p.w.len();
    let base: Vec<f32> = p.w.iter().enumerate().map(|(i, &v)| (v / p.scale[i / k]).floor()).collect();
    // V so that h(V) is the fractional part: σ(V) = (r − γ) / (ζ − γ).
    let mut v: Vec<f32> =
        p.w.iter()
            .zip(&base)
            .enumerate()
            .map(|(i, (&w, &b))| {
                let r = (w / p.scale[i / k] - b).clamp(0.0, 1.0);
                let sg = ((r - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1.0 - 1e-4);
                (sg / (1.0 - sg)).ln()
            })
            .collect();
    let (mut m1, mut m2) = (vec![0f32; n], vec![0f32; n]);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut wq = vec![0f32; n];
    let mut e = vec![0f32; n];
    let mut hd = vec![(0f32, 0f32); n];
    let warm = (s.iters as f32 * s.warmup) as usize;
    for it in 0..s.iters {
        for i in 0..n {
            let (h, d) = rect_sigmoid(v[i]);
            hd[i] = (h, d);
            let q = (base[i] + h).clamp(p.qmin as f32, p.qmax as f32);
            wq[i] = q * p.scale[i / k];
        }
        times_gram(&wq, p.gqq, k, &mut e, s.threads);
        let reg = it >= warm;
        let beta = if reg {
            let t = (it - warm) as f32 / (s.iters - warm).max(1) as f32;
            s.beta.1 + (s.beta.0 - s.beta.1) * (1.0 - t)
        } else {
            0.0
        };
        let (c1, c2) = (1.0 - b1.powi(it as i32 + 1), 1.0 - b2.powi(it as i32 + 1));
        for i in 0..n {
            let (h, d) = hd[i];
            if d == 0.0 {
                continue;
            }
            let q = base[i] + h;
            let inside = q > p.qmin as f32 && q < p.qmax as f32;
            let mut g = if inside { 2.0 * (e[i] - p.target[i]) * p.scale[i / k] } else { 0.0 };
            if reg {
                let t = 2.0 * h - 1.0;
                g += s.lambda * -beta * t.abs().powf(beta - 1.0) * t.signum() * 2.0;
            }
            let g = g * d;
            m1[i] = b1 * m1[i] + (1.0 - b1) * g;
            m2[i] = b2 * m2[i] + (1.0 - b2) * g * g;
            v[i] -= s.lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + eps);
        }
    }
    v.iter()
        .zip(&base)
        .map(|(&vi, &b)| {
            let up = rect_sigmoid(vi).0 >= 0.5;
            ((b as i64) + up as i64).clamp(p.qmin as i64, p.qmax as i64) as i32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Correlated inputs: nearest rounding is not the best rounding, and learning finds a better one.
    fn problem(k: usize, rows: usize, m: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut sd = seed;
        let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut sd) * 0.3).collect();
        let mix: Vec<f32> = (0..k * k).map(|_| lcg(&mut sd)).collect();
        let mut g = vec![0f32; k * k];
        for _ in 0..m {
            let z: Vec<f32> = (0..k).map(|_| lcg(&mut sd)).collect();
            let x: Vec<f32> = (0..k).map(|j| (0..k).map(|i| z[i] * mix[i * k + j]).sum::<f32>() + z[j]).collect();
            for a in 0..k {
                for b in 0..k {
                    g[a * k + b] += x[a] * x[b] / m as f32;
                }
            }
        }
        let mut t = vec![0f32; rows * k];
        times_gram(&w, &g, k, &mut t, 1);
        let scale = vec![0.05f32; rows];
        (w, g, t, scale)
    }

    #[test]
    fn learned_rounding_beats_nearest_and_stays_in_range() {
        for (k, rows, qmax) in [(9usize, 4usize, 127i32), (27, 8, 7), (64, 3, 7)] {
            let (w, g, t, scale) = problem(k, rows, 400, k as u64);
            let p = Problem { w: &w, scale: &scale, qmin: -qmax - 1, qmax, k, gqq: &g, target: &t };
            let near = nearest(&p);
            let learned = learn_rounding(&p, &LearnSettings { iters: 600, ..Default::default() });
            let (en, el) = (error_of(&p, &near), error_of(&p, &learned));
            let full = w.iter().zip(&t).map(|(&a, &b)| (a * b) as f64).sum::<f64>();
            // Errors relative to the output power (the constant term makes them non-negative).
            let (rn, rl) = ((en + full) / full, (el + full) / full);
            assert!(rl < rn * 0.9, "k {k}: learned {rl:e} vs nearest {rn:e}");
            for (i, (&q, &wv)) in learned.iter().zip(&w).enumerate() {
                assert!((-qmax - 1..=qmax).contains(&q));
                let f = (wv / scale[i / k]).floor() as i32;
                assert!(
                    q == f || q == f + 1 || q == -qmax - 1 || q == qmax,
                    "only up or down: {q} from {}",
                    wv / scale[i / k]
                );
            }
        }
    }

    #[test]
    fn gram_product_paths_agree() {
        for k in [5usize, 48, 49, 130] {
            let (w, g, t, _) = problem(k, 3, 50, 7);
            let mut naive = vec![0f32; t.len()];
            for r in 0..3 {
                for j in 0..k {
                    naive[r * k + j] = (0..k).map(|i| w[r * k + i] * g[i * k + j]).sum();
                }
            }
            for (a, b) in t.iter().zip(&naive) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "k {k}: {a} vs {b}");
            }
        }
    }
}
