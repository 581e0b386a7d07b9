use super::*;

/// Normal values of standard deviation `sigma`.
fn normal(r: &mut Rng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n).map(|_| sigma * r.normal()).collect()
}

/// Gradients as the paper describes them: nearly all values near zero, a rare large outlier that
/// sets the maximum (so clipping at the maximum spends the grid's resolution on it).
fn heavy_tailed(r: &mut Rng, n: usize, outlier: f32) -> Vec<f32> {
    let mut g = normal(r, n, 1e-3);
    g[n / 3] = outlier;
    g
}

/// The integer GEMM of quantized operands equals the f64 product of the dequantized operands (up to
/// f32 rounding) on every path, on ragged shapes, and the f32 product of the originals within the
/// quantization error's bound (each level off by at most one step with stochastic rounding, half a
/// step with nearest rounding).
#[test]
fn int8_gemm_matches_the_float_product_within_the_quantization_error() {
    let mut r = Rng::new(7);
    for (m, n, k) in [(1, 1, 1), (5, 17, 3), (33, 40, 75), (64, 96, 130), (7, 130, 257)] {
        let a = normal(&mut r, m * k, 1.0);
        let b = normal(&mut r, k * n, 0.05);
        let ca = a.iter().fold(0f32, |x, v| x.max(v.abs()));
        let cb = b.iter().fold(0f32, |x, v| x.max(v.abs()));
        for isa in Isa::all_supported() {
            let mut ra = Rng::new(11);
            let c = qgemm(isa, m, n, k, &a, ca, &b, cb, Some(&mut ra), 1);
            // The same quantization again (same seed) for the reference.
            let (qa, sa) = quantize_sym(&a, ca, 8, Some(&mut Rng::new(11)));
            let (qb, sb) = quantize_sym(&b, cb, 8, None);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut float, mut bound) = (0f64, 0f64, 0f64);
                    for t in 0..k {
                        let (x, w) = (a[i * k + t] as f64, b[t * n + j] as f64);
                        exact += qa[i * k + t] as f64 * sa as f64 * qb[t * n + j] as f64 * sb as f64;
                        float += x * w;
                        // |x̂ŵ - xw| <= |x|·|Δw| + |Δx|·|w| + |Δx|·|Δw|, |Δx| < sa, |Δw| <= sb/2.
                        bound += x.abs() * sb as f64 / 2.0 + sa as f64 * w.abs() + sa as f64 * sb as f64 / 2.0;
                    }
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * exact.abs().max(1e-3),
                        "{} {m}x{n}x{k} ({i},{j}): {got} vs dequantized product {exact}",
                        isa.name()
                    );
                    assert!(
                        (got - float).abs() <= bound + 1e-6,
                        "{} ({i},{j}): {got} vs {float}, bound {bound}",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// On heavy-tailed gradients DSGC returns the clip with the smallest deviation: no clip on a fine
/// grid does better, while clipping at the maximum (which rounds much of the bulk of small values
/// away) is measurably worse, so a max-clipping implementation fails this test.
#[test]
fn dsgc_returns_the_cosine_optimal_clip_on_heavy_tailed_gradients() {
    let mut r = Rng::new(3);
    for (bits, outlier) in [(8, 0.1f32), (8, 0.3), (6, 0.05), (4, 0.02)] {
        let g = heavy_tailed(&mut r, 20_000, outlier);
        let d = dsgc_clip(&g, bits);
        // Brute force: 4,000 clips log-spaced over (max / 2^16, max].
        let fine = (0..4000)
            .map(|i| {
                let c = d.max * (-(i as f32) * 16.0 / 4000.0).exp2();
                let (q, s) = quantize_sym(&g, c, bits, None);
                deviation(&g, &q, s)
            })
            .fold(f64::INFINITY, f64::min);
        assert!(d.deviation <= fine * (1.0 + 1e-3), "{bits} bits, outlier {outlier}: DSGC {d:?}, optimum {fine}");
        assert!(d.clip < d.max, "{bits} bits, outlier {outlier}: {d:?}");
        assert!(d.deviation_at_max > fine * 1.01, "{bits} bits: max clipping is optimal here ({d:?}, optimum {fine})");
    }
    // A tensor without outliers keeps (nearly) its full range.
    let u: Vec<f32> = (0..4096).map(|_| r.uniform() * 2.0 - 1.0).collect();
    let du = dsgc_clip(&u, 8);
    assert!(du.clip > 0.9 * du.max, "{du:?}");
}

/// Stochastic rounding is unbiased (the mean of many draws of one value is the value), nearest
/// rounding is not (the same test fails for it), and both stay on the grid inside the clip.
#[test]
fn stochastic_rounding_is_unbiased() {
    let s = 0.01f32;
    let clip = 127.0 * s;
    let draws = 200_000;
    let mut r = Rng::new(5);
    for &x in &[0.3 * s, -1.7 * s, 5.25 * s, -0.05 * s] {
        let xs = vec![x; draws];
        let (q, step) = quantize_sym(&xs, clip, 8, Some(&mut r));
        assert_eq!(step, s);
        let mean = q.iter().map(|&v| v as f64).sum::<f64>() / draws as f64 * s as f64;
        // Each draw is off by less than one step: the mean's standard error is below s / sqrt(draws).
        let tol = 4.0 * s as f64 / (draws as f64).sqrt();
        assert!((mean - x as f64).abs() < tol, "x {x}: mean {mean} (tolerance {tol})");
        let (qn, _) = quantize_sym(&xs, clip, 8, None);
        let mean_n = qn.iter().map(|&v| v as f64).sum::<f64>() / draws as f64 * s as f64;
        assert!((mean_n - x as f64).abs() > tol, "nearest rounding looked unbiased for {x}");
    }
    let (q, _) = quantize_sym(&[10.0, -10.0], clip, 8, Some(&mut r));
    assert_eq!(q, vec![127, -127]);
}

#[test]
fn dcls_scales_by_the_deviation_down_to_beta() {
    assert_eq!(dcls_factor(0.0, 20.0, 0.1), 1.0);
    assert!((dcls_factor(0.05, 20.0, 0.1) - (-1f64).exp()).abs() < 1e-12);
    assert_eq!(dcls_factor(0.5, 20.0, 0.1), 0.1);
}

/// The fused vectorized deviation is the definition's (quantize, then compare), at several clips
/// and widths, ragged lengths included.
#[test]
fn fused_deviation_is_the_definition() {
    let mut rng = Rng::new(8);
    for len in [1, 15, 17, 4096, 5000] {
        let g: Vec<f32> = (0..len).map(|_| rng.normal() * 0.1).collect();
        let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        for bits in [4, 8] {
            for frac in [1.0, 0.3, 0.01] {
                let (q, s) = quantize_sym(&g, max * frac, bits, None);
                let want = deviation(&g, &q, s).max(0.0);
                let got = deviation_nearest(&g, max * frac, bits);
                assert!((got - want).abs() <= 1e-5 + 1e-3 * want, "len {len} bits {bits} frac {frac}: {got} vs {want}");
            }
        }
    }
}
