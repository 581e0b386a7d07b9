//! Quantization schemes and parameters.
//!
//! Linear (affine) quantization: `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`,
//! `x ≈ scale * (q - zero_point)`. Symmetric forces `zero_point = 0` (signed) or the mid-point;
//! power-of-two rounds the scale up to `2^k` so requantization is a shift.
//! Non-linear weight schemes: binary (`sign(w) * mean|w|` per channel), logarithmic (`±2^k`),
//! k-means (2^bits shared values per layer).

/// How scale and zero point follow from a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Affine,
    Symmetric,
    PowerOfTwo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    PerTensor,
    PerChannel { axis: usize },
}

/// The kind of values a quantized tensor may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Linear(Mode),
    /// `±alpha` per channel, alpha = mean |w|.
    Binary,
    /// `0` or `±2^k` within `2^(bits-1)-1` exponents below the largest magnitude.
    Log2,
    /// `2^bits` centroids per layer, k-means++ initialised.
    KMeans,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QScheme {
    pub bits: u8,
    pub signed: bool,
    pub kind: Kind,
    pub granularity: Granularity,
}

impl QScheme {
    /// Per-channel symmetric signed weights (the ONNX Runtime / TensorRT convention).
    pub fn weights(bits: u8) -> QScheme {
        QScheme {
            bits,
            signed: true,
            kind: Kind::Linear(Mode::Symmetric),
            granularity: Granularity::PerChannel { axis: 0 },
        }
    }
    /// Per-tensor affine unsigned activations.
    pub fn activations(bits: u8) -> QScheme {
        QScheme { bits, signed: false, kind: Kind::Linear(Mode::Affine), granularity: Granularity::PerTensor }
    }
    pub fn validate(&self) -> Result<(), String> {
        let ok = match self.kind {
            Kind::Binary => self.bits == 1,
            _ => (2..=8).contains(&self.bits),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} bits is out of range for {:?} (linear, log and k-means take 2..=8, binary takes 1)",
                self.bits, self.kind
            ))
        }
    }
    pub fn qmin(&self) -> i32 {
        if self.signed {
            -(1 << (self.bits - 1))
        } else {
            0
        }
    }
    pub fn qmax(&self) -> i32 {
        if self.signed {
            (1 << (self.bits - 1)) - 1
        } else {
            (1 << self.bits) - 1
        }
    }
}

/// Scale and zero point, one per tensor or one per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct QParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    pub qmin: i32,
    pub qmax: i32,
}

/// Round half to even, the ONNX and IEEE default.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

#[inline]
pub fn quantize_value(x: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
    let q = round_half_even(x / scale) as i64 + zp as i64;
    q.clamp(qmin as i64, qmax as i64) as i32
}

#[inline]
pub fn dequantize_value(q: i32, scale: f32, zp: i32) -> f32 {
    (q - zp) as f32 * scale
}

fn pow2_ceil(s: f32) -> f32 {
    2f32.powi(s.log2().ceil() as i32)
}

/// Parameters for a linear scheme covering `[lo, hi]` (per channel when the slices are longer
/// than one). The range is widened to include 0 so that 0 is exactly representable.
pub fn linear_params(s: &QScheme, lo: &[f32], hi: &[f32]) -> QParams {
    let (qmin, qmax) = (s.qmin(), s.qmax());
    let mode = match s.kind {
        Kind::Linear(m) => m,
        _ => Mode::Symmetric,
    };
    let mut scale = Vec::with_capacity(lo.len());
    let mut zp = Vec::with_capacity(lo.len());
    for (&l, &h) in lo.iter().zip(hi) {
        let (l, h) = (l.min(0.0), h.max(0.0));
        let (sc, z) = match mode {
            Mode::Affine => {
                let sc = (h - l) / (qmax - qmin) as f32;
                let sc = if sc > 0.0 && sc.is_finite() { sc } else { 1.0 };
                let z = (qmin as f32 - l / sc).round_ties_even().clamp(qmin as f32, qmax as f32) as i32;
                (sc, z)
            }
            Mode::Symmetric | Mode::PowerOfTwo => {
                let m = l.abs().max(h.abs());
                let (levels, z) = if s.signed {
                    (qmax as f32, 0)
                } else if l < 0.0 {
                    // unsigned symmetric: zero point in the middle
                    (((qmax - qmin) / 2) as f32, (qmax + qmin + 1) / 2)
                } else {
                    (qmax as f32, 0)
                };
                let mut sc = m / levels;
                if !(sc > 0.0 && sc.is_finite()) {
                    sc = 1.0;
                }
                if mode == Mode::PowerOfTwo {
                    sc = pow2_ceil(sc);
                }
                (sc, z)
            }
        };
        scale.push(sc);
        zp.push(z);
    }
    QParams { scale, zero_point: zp, qmin, qmax }
}

/// Number of channels and elements per channel of a weight with shape `shape` for `g`.
pub fn channel_layout(shape: &[usize], g: Granularity) -> (usize, usize, usize) {
    match g {
        Granularity::PerTensor => (1, 1, shape.iter().product()),
        Granularity::PerChannel { axis } => {
            let c = shape.get(axis).copied().unwrap_or(1);
            let outer: usize = shape[..axis.min(shape.len())].iter().product();
            let inner: usize = shape[(axis + 1).min(shape.len())..].iter().product();
            (c, outer, inner)
        }
    }
}

/// Channel of flat element `i`.
#[inline]
pub fn channel_of(i: usize, c: usize, inner: usize) -> usize {
    if c == 1 {
        0
    } else {
        (i / inner) % c
    }
}

/// Quantizes a weight tensor with a linear scheme: integer values (as i32) and parameters.
/// `search_mse`: per channel, pick the clipping range minimizing squared error (helps below 8 bits).
pub fn quantize_linear_weights(w: &[f32], shape: &[usize], s: &QScheme, search_mse: bool) -> (Vec<i32>, QParams) {
    let (c, _, inner) = channel_layout(shape, s.granularity);
    let mut lo = vec![f32::INFINITY; c];
    let mut hi = vec![f32::NEG_INFINITY; c];
    for (i, &v) in w.iter().enumerate() {
        let ch = channel_of(i, c, inner);
        lo[ch] = lo[ch].min(v);
        hi[ch] = hi[ch].max(v);
    }
    let mut p = linear_params(s, &lo, &hi);
    if search_mse {
        for ch in 0..c {
            let vals: Vec<f32> =
                w.iter().enumerate().filter(|(i, _)| channel_of(*i, c, inner) == ch).map(|(_, &v)| v).collect();
            let err = |sc: f32, z: i32| -> f64 {
                vals.iter()
                    .map(|&v| {
                        let d = dequantize_value(quantize_value(v, sc, z, p.qmin, p.qmax), sc, z) - v;
                        (d * d) as f64
                    })
                    .sum()
            };
            let (mut best, mut best_e) = ((p.scale[ch], p.zero_point[ch]), err(p.scale[ch], p.zero_point[ch]));
            for step in 1..40 {
                let f = 1.0 - step as f32 * 0.0125;
                let q = linear_params(s, &[lo[ch] * f], &[hi[ch] * f]);
                let e = err(q.scale[0], q.zero_point[0]);
                if e < best_e {
                    best_e = e;
                    best = (q.scale[0], q.zero_point[0]);
                }
            }
            p.scale[ch] = best.0;
            p.zero_point[ch] = best.1;
        }
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = channel_of(i, c, inner);
            quantize_value(v, p.scale[ch], p.zero_point[ch], p.qmin, p.qmax)
        })
        .collect();
    (q, p)
}

/// Binary weights: `sign(w)` (0 maps to +1) times the per-channel mean |w|. Returns the signs (±1)
/// and the per-channel scales.
pub fn binarize(w: &[f32], shape: &[usize], axis: usize) -> (Vec<i32>, Vec<f32>) {
    let (c, _, inner) = channel_layout(shape, Granularity::PerChannel { axis });
    let mut sum = vec![0f64; c];
    let mut cnt = vec![0usize; c];
    for (i, &v) in w.iter().enumerate() {
        let ch = channel_of(i, c, inner);
        sum[ch] += v.abs() as f64;
        cnt[ch] += 1;
    }
    let alpha: Vec<f32> = sum.iter().zip(&cnt).map(|(s, &n)| (s / n.max(1) as f64) as f32).collect();
    (w.iter().map(|&v| if v >= 0.0 { 1 } else { -1 }).collect(), alpha)
}

/// Logarithmic quantization: each weight becomes 0 or `±2^k` with `k` in
/// `[kmax - (2^(bits-1) - 2), kmax]`, `kmax = round(log2 max|w|)`; values below half the smallest
/// level become 0. Returns the dequantized values.
pub fn log2_quantize(w: &[f32], bits: u8) -> Vec<f32> {
    let (kmin, codes) = log2_codes(w, bits);
    let step = 2f32.powi(kmin);
    codes.iter().map(|&c| c as f32 * step).collect()
}

/// The integer form of [`log2_quantize`]: `kmin` and, per weight, `0` or `±2^(k - kmin)`.
fn log2_codes(w: &[f32], bits: u8) -> (i32, Vec<i32>) {
    let m = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
    if m == 0.0 {
        return (0, vec![0; w.len()]);
    }
    let kmax = m.log2().round() as i32;
    let levels = (1i32 << (bits - 1)) - 1; // non-zero magnitudes (one code is 0)
    let kmin = kmax - (levels - 1);
    let codes = w
        .iter()
        .map(|&v| {
            let a = v.abs();
            if a < 2f32.powi(kmin) * 0.5 {
                return 0;
            }
            let k = a.log2().round().clamp(kmin as f32, kmax as f32) as i32;
            (v.signum() as i32) << (k - kmin)
        })
        .collect();
    (kmin, codes)
}

/// k-means weight sharing with k-means++ initialisation (deterministic seed): returns the
/// codebook (sorted) and one index per weight.
pub fn kmeans_quantize(w: &[f32], bits: u8, iters: usize) -> (Vec<f32>, Vec<u8>) {
    let k = (1usize << bits).min(w.len().max(1));
    if w.is_empty() {
        return (vec![0.0; k], vec![]);
    }
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut cent = vec![w[(next() * w.len() as f64) as usize % w.len()]];
    let mut d2: Vec<f64> = w.iter().map(|&v| ((v - cent[0]) as f64).powi(2)).collect();
    while cent.len() < k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = next() * total;
            let mut idx = w.len() - 1;
            for (i, &d) in d2.iter().enumerate() {
                if r < d {
                    idx = i;
                    break;
                }
                r -= d;
            }
            idx
        } else {
            (next() * w.len() as f64) as usize % w.len()
        };
        cent.push(w[pick]);
        for (i, &v) in w.iter().enumerate() {
            d2[i] = d2[i].min(((v - w[pick]) as f64).powi(2));
        }
    }
    let mut idx = vec![0u8; w.len()];
    for _ in 0..iters.max(1) {
        let mut sum = vec![0f64; k];
        let mut cnt = vec![0usize; k];
        for (i, &v) in w.iter().enumerate() {
            let best = (0..k).min_by(|&a, &b| (v - cent[a]).abs().total_cmp(&(v - cent[b]).abs())).unwrap();
            idx[i] = best as u8;
            sum[best] += v as f64;
            cnt[best] += 1;
        }
        let mut moved = false;
        for c in 0..k {
            if cnt[c] > 0 {
                let n = (sum[c] / cnt[c] as f64) as f32;
                moved |= n != cent[c];
                cent[c] = n;
            }
        }
        if !moved {
            break;
        }
    }
    // sort codebook, remap indices
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| cent[a].total_cmp(&cent[b]));
    let mut rank = vec![0u8; k];
    for (r, &c) in order.iter().enumerate() {
        rank[c] = r as u8;
    }
    (order.iter().map(|&c| cent[c]).collect(), idx.iter().map(|&i| rank[i as usize]).collect())
}

/// Logarithmic weights as int8 for a standard DequantizeLinear: per channel of `g`, the values of
/// [`log2_quantize`] (`0` or `±2^k`, `k` in `[kmin, kmax]`) written as `±2^(k - kmin)` with the
/// scale `2^kmin`, so `q · scale` is exactly the logarithmic level. With at most 7 exponents
/// (`bits ≤ 4`) the integers stay within ±64; wider logarithmic codes do not fit int8.
pub fn log2_weights_int8(w: &[f32], shape: &[usize], g: Granularity, bits: u8) -> Result<(Vec<i32>, QParams), String> {
    if !(2..=4).contains(&bits) {
        return Err(format!(
            "logarithmic weights take 2 to 4 bits here ({bits} asked): their levels ±2^k are stored as int8 multiples of the smallest level, and 2^(bits-1)-1 exponents must fit ±127"
        ));
    }
    let (c, _, inner) = channel_layout(shape, g);
    let mut per: Vec<Vec<usize>> = vec![vec![]; c];
    for i in 0..w.len() {
        per[channel_of(i, c, inner)].push(i);
    }
    let mut q = vec![0i32; w.len()];
    let mut scale = vec![1f32; c];
    for (ch, idx) in per.iter().enumerate() {
        let vals: Vec<f32> = idx.iter().map(|&i| w[i]).collect();
        let (kmin, codes) = log2_codes(&vals, bits);
        scale[ch] = 2f32.powi(kmin);
        for (&i, code) in idx.iter().zip(codes) {
            q[i] = code;
        }
    }
    Ok((q, QParams { scale, zero_point: vec![0; c], qmin: -128, qmax: 127 }))
}

/// k-means weight sharing as int8 for a standard DequantizeLinear: one codebook of `2^bits`
/// centroids for the whole tensor ([`kmeans_quantize`]), each centroid snapped to the int8 grid of
/// the per-tensor scale `max|c| / 127`, every weight replaced by its centroid's integer. Returns the
/// integers, the parameters and the (snapped, sorted) codebook as integers.
pub fn kmeans_weights_int8(w: &[f32], bits: u8) -> (Vec<i32>, QParams, Vec<i32>) {
    let (cent, idx) = kmeans_quantize(w, bits, 30);
    let m = cent.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let sc = if m > 0.0 && m.is_finite() { m / 127.0 } else { 1.0 };
    let code: Vec<i32> = cent.iter().map(|&c| quantize_value(c, sc, 0, -127, 127)).collect();
    let q = idx.iter().map(|&i| code[i as usize]).collect();
    let mut book = code;
    book.dedup();
    (q, QParams { scale: vec![sc], zero_point: vec![0], qmin: -128, qmax: 127 }, book)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn log2_weights_int8_are_exact_levels() {
        // Channel 0: max 1.0 -> kmax 0; 4 bits -> 7 exponents, kmin -6, scale 1/64.
        // Channel 1: max 0.3 -> kmax round(-1.74) = -2, kmin -8.
        let w = [1.0, 0.3, -0.06, 0.001, 0.3, -0.1, 0.0, 0.02];
        let (q, p) = log2_weights_int8(&w, &[2, 4], Granularity::PerChannel { axis: 0 }, 4).unwrap();
        assert_eq!(p.scale, vec![1.0 / 64.0, 1.0 / 256.0]);
        // 0.3 -> 2^-2 = 16/64; -0.06 -> -2^-4 = -4/64; 0.001 < 2^-7 -> 0.
        assert_eq!(&q[..4], &[64, 16, -4, 0]);
        // 0.3 -> 2^-2 = 64/256; -0.1 -> -2^-3 = -32/256; 0.02 -> 2^-6 = 4/256.
        assert_eq!(&q[4..], &[64, -32, 0, 4]);
        let deq: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * p.scale[i / 4]).collect();
        assert_eq!(&deq[..4], &log2_quantize(&w[..4], 4)[..]);
        assert_eq!(&deq[4..], &log2_quantize(&w[4..], 4)[..]);
        assert!(log2_weights_int8(&w, &[8], Granularity::PerTensor, 5).is_err());
    }

    #[test]
    fn kmeans_weights_int8_use_at_most_the_codebook() {
        let w: Vec<f32> = (0..500).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        for bits in [2u8, 3, 4] {
            let (q, p, book) = kmeans_weights_int8(&w, bits);
            let mut distinct: Vec<i32> = q.clone();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() <= 1 << bits, "{bits} bits: {} values", distinct.len());
            assert!(distinct.iter().all(|v| book.contains(v)));
            assert_eq!(book.iter().map(|v| v.abs()).max().unwrap(), 127);
            // Each weight sits on the nearest snapped centroid, within the worst cluster radius.
            let err = w.iter().zip(&q).map(|(&x, &v)| (x - v as f32 * p.scale[0]).abs()).fold(0f32, f32::max);
            assert!(err < 2.5 / (1 << bits) as f32 + p.scale[0], "{bits} bits: max error {err}");
        }
    }

    #[test]
    fn hand_computed_affine_u8() {
        // range [-1, 2] over 255 steps: scale 3/255, zero point round(1/(3/255)) = 85
        let p = linear_params(&QScheme::activations(8), &[-1.0], &[2.0]);
        assert!((p.scale[0] - 3.0 / 255.0).abs() < 1e-9);
        assert_eq!(p.zero_point[0], 85);
        assert_eq!(quantize_value(0.0, p.scale[0], 85, 0, 255), 85);
        assert_eq!(quantize_value(2.0, p.scale[0], 85, 0, 255), 255);
        assert_eq!(quantize_value(-5.0, p.scale[0], 85, 0, 255), 0);
    }

    #[test]
    fn hand_computed_symmetric_int8_and_int4() {
        let s8 = QScheme { granularity: Granularity::PerTensor, ..QScheme::weights(8) };
        let p = linear_params(&s8, &[-0.5], &[1.27]);
        assert!((p.scale[0] - 0.01).abs() < 1e-7);
        assert_eq!(p.zero_point[0], 0);
        assert_eq!(quantize_value(-0.5, 0.01, 0, -128, 127), -50);
        let s4 = QScheme { bits: 4, ..s8 };
        let p = linear_params(&s4, &[-0.7], &[0.35]);
        assert!((p.scale[0] - 0.1).abs() < 1e-7); // 0.7 / 7
        assert_eq!((p.qmin, p.qmax), (-8, 7));
    }

    #[test]
    fn round_half_even_ties() {
        assert_eq!(quantize_value(0.5, 1.0, 0, -128, 127), 0);
        assert_eq!(quantize_value(1.5, 1.0, 0, -128, 127), 2);
        assert_eq!(quantize_value(2.5, 1.0, 0, -128, 127), 2);
        assert_eq!(quantize_value(-2.5, 1.0, 0, -128, 127), -2);
    }

    #[test]
    fn power_of_two_scale() {
        let s = QScheme {
            kind: Kind::Linear(Mode::PowerOfTwo),
            granularity: Granularity::PerTensor,
            ..QScheme::weights(8)
        };
        let p = linear_params(&s, &[-1.0], &[3.0]);
        // 3/127 = 0.0236 -> 2^-5 = 0.03125
        assert_eq!(p.scale[0], 0.03125);
    }

    #[test]
    fn per_channel_weights() {
        let w = [1.0, -2.0, 0.5, 0.25];
        let (q, p) = quantize_linear_weights(&w, &[2, 2], &QScheme::weights(8), false);
        assert_eq!(p.scale.len(), 2);
        assert!((p.scale[0] - 2.0 / 127.0).abs() < 1e-7 && (p.scale[1] - 0.5 / 127.0).abs() < 1e-7);
        assert_eq!(q, vec![64, -127, 127, 64]);
    }

    #[test]
    fn binary_weights() {
        let (s, a) = binarize(&[1.0, -3.0, 0.0, -0.5], &[2, 2], 0);
        assert_eq!(s, vec![1, -1, 1, -1]);
        assert_eq!(a, vec![2.0, 0.25]);
    }

    #[test]
    fn log2_levels() {
        let q = log2_quantize(&[1.0, 0.3, -0.06, 0.001, 0.75], 3);
        // kmax = 0, 3 magnitudes: 1, 0.5, 0.25; below 0.125 -> 0
        assert_eq!(q, vec![1.0, 0.25, -0.0, 0.0, 1.0]);
    }

    #[test]
    fn kmeans_two_clusters() {
        let w = [0.0, 0.1, -0.1, 5.0, 5.1, 4.9];
        let (c, idx) = kmeans_quantize(&w, 1, 20);
        assert_eq!(c.len(), 2);
        assert!((c[0] - 0.0).abs() < 1e-6 && (c[1] - 5.0).abs() < 1e-5, "{c:?}");
        assert_eq!(idx, vec![0, 0, 0, 1, 1, 1]);
    }

    proptest! {
        #[test]
        fn roundtrip_error_within_half_step(lo in -100f32..0.0, span in 0.001f32..200.0, bits in 2u8..=8, signed in any::<bool>(), sym in any::<bool>(), t in 0f32..1.0) {
            let hi = lo + span;
            let s = QScheme { bits, signed, kind: Kind::Linear(if sym { Mode::Symmetric } else { Mode::Affine }), granularity: Granularity::PerTensor };
            let p = linear_params(&s, &[lo], &[hi]);
            let x = lo + t * (hi - lo);
            let q = quantize_value(x, p.scale[0], p.zero_point[0], p.qmin, p.qmax);
            let err = (dequantize_value(q, p.scale[0], p.zero_point[0]) - x).abs();
            prop_assert!(err <= p.scale[0] / 2.0 * 1.0001 + 1e-6, "x {} err {} scale {}", x, err, p.scale[0]);
        }
    }
}
