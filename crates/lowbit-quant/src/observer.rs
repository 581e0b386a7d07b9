//! Streaming calibration observers with bounded memory: a running min/max, and a fixed-size
//! histogram of |x| over `[0, absmax]` filled in a second pass. From them, a clipping range per
//! method: min-max, percentile, KL/entropy (TensorRT's search) and MSE.

/// How an activation's clipping range is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    MinMax,
    /// Keep this fraction of |x| (e.g. 0.9999).
    Percentile(f64),
    /// Minimize KL(P || Q) between the histogram and its quantized version.
    Entropy,
    /// Minimize the expected squared quantization error.
    Mse,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "minmax" | "min-max" => Method::MinMax,
            "entropy" | "kl" => Method::Entropy,
            "mse" => Method::Mse,
            "percentile" => Method::Percentile(0.9999),
            p if p.starts_with("percentile:") => {
                Method::Percentile(p[11..].parse::<f64>().ok().filter(|v| *v > 0.0 && *v <= 1.0)?)
            }
            _ => return None,
        })
    }
    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile:{p}"),
            Method::Entropy => "entropy".into(),
            Method::Mse => "mse".into(),
        }
    }
    pub fn needs_histogram(&self) -> bool {
        !matches!(self, Method::MinMax)
    }
}

pub const BINS: usize = 2048;

/// Statistics of one tensor over the calibration set.
#[derive(Clone, Debug)]
pub struct Observer {
    pub min: f32,
    pub max: f32,
    /// Histogram of positive values over `[0, hist_max]`, filled in the second pass.
    pub hist: Vec<u64>,
    /// Histogram of |x| of negative values over `[0, hist_max]`.
    pub hist_neg: Vec<u64>,
    pub hist_max: f32,
    pub count: u64,
    /// Per-channel (axis 1) sums for channel means, used by bias correction.
    pub channel_sum: Vec<f64>,
    pub channel_count: u64,
    /// Per-channel minimum (axis 1), used by bias absorption.
    pub channel_min: Vec<f32>,
    /// Per-channel maximum (axis 1), used by activation equalization.
    pub channel_max: Vec<f32>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: vec![],
            hist_neg: vec![],
            hist_max: 0.0,
            count: 0,
            channel_sum: vec![],
            channel_count: 0,
            channel_min: vec![],
            channel_max: vec![],
        }
    }
}

impl Observer {
    /// First pass: running range.
    pub fn observe_range(&mut self, x: &[f32]) {
        for &v in x {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
        }
        self.count += x.len() as u64;
    }

    /// Accumulates per-channel sums of an NC... tensor (channel = axis 1).
    pub fn observe_channels(&mut self, shape: &[usize], x: &[f32]) {
        if shape.len() < 2 {
            return;
        }
        let (n, c) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        if self.channel_sum.len() != c {
            self.channel_sum = vec![0.0; c];
            self.channel_min = vec![f32::INFINITY; c];
            self.channel_max = vec![f32::NEG_INFINITY; c];
            self.channel_count = 0;
        }
        for b in 0..n {
            for ch in 0..c {
                let v = &x[(b * c + ch) * inner..(b * c + ch + 1) * inner];
                self.channel_sum[ch] += v.iter().map(|&v| v as f64).sum::<f64>();
                self.channel_min[ch] = v.iter().fold(self.channel_min[ch], |m, &x| m.min(x));
                self.channel_max[ch] = v.iter().fold(self.channel_max[ch], |m, &x| m.max(x));
            }
        }
        self.channel_count += (n * inner) as u64;
    }

    /// Per-channel means (empty when not observed).
    pub fn channel_means(&self) -> Vec<f32> {
        self.channel_sum.iter().map(|s| (s / self.channel_count.max(1) as f64) as f32).collect()
    }

    /// Second pass: histogram of |x| over the range found in the first pass.
    pub fn observe_hist(&mut self, x: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
            self.hist_neg = vec![0; BINS];
            self.hist_max = self.min.abs().max(self.max.abs()).max(f32::MIN_POSITIVE);
        }
        let k = BINS as f32 / self.hist_max;
        // Exact zeros (ReLU's spike) are representable exactly and carry no clipping information.
        for &v in x {
            if v.is_finite() && v != 0.0 {
                let b = ((v.abs() * k) as usize).min(BINS - 1);
                if v > 0.0 {
                    self.hist[b] += 1;
                } else {
                    self.hist_neg[b] += 1;
                }
            }
        }
    }

    pub fn nonnegative(&self) -> bool {
        self.min >= 0.0
    }

    /// The clipping range `[lo, hi]` for `levels` quantization levels over the range.
    pub fn range(&self, method: Method, levels: usize) -> (f32, f32) {
        if !self.min.is_finite() || !self.max.is_finite() {
            return (0.0, 0.0);
        }
        if method == Method::MinMax || self.hist.is_empty() {
            return (self.min, self.max);
        }
        let bw = self.hist_max / BINS as f32;
        // Each side gets its own threshold, with the share of the levels its width gets.
        let span = (self.max.max(0.0) - self.min.min(0.0)).max(f32::MIN_POSITIVE);
        let side = |hist: &[u64], extent: f32| -> f32 {
            if extent <= 0.0 || hist.iter().all(|&h| h == 0) {
                return extent.max(0.0);
            }
            let lv = ((levels as f32 * extent / span).round() as usize).max(2);
            let t = match method {
                Method::Percentile(p) => {
                    let total: u64 = hist.iter().sum();
                    let want = (total as f64 * p).ceil() as u64;
                    let mut acc = 0u64;
                    let mut b = BINS - 1;
                    for (i, &h) in hist.iter().enumerate() {
                        acc += h;
                        if acc >= want {
                            b = i;
                            break;
                        }
                    }
                    (b + 1) as f32 * bw
                }
                Method::Entropy => (entropy_bin(hist, lv) as f32 + 1.0) * bw,
                Method::Mse => mse_threshold(hist, bw, lv),
                Method::MinMax => extent,
            };
            t.min(extent)
        };
        let hi = side(&self.hist, self.max);
        let lo = -side(&self.hist_neg, -self.min);
        (lo.max(self.min), hi.min(self.max))
    }
}

/// TensorRT's entropy calibration: the histogram end bin `i` (>= levels) minimizing
/// KL(P || Q), P the first `i` bins with the tail folded into the last, Q P merged into `levels`
/// bins and expanded back over P's non-empty bins.
pub fn entropy_bin(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let levels = levels.clamp(2, n);
    let mut best = (f64::INFINITY, n - 1);
    let step = ((n - levels) / 256).max(1);
    let mut i = levels;
    while i <= n {
        let mut p: Vec<f64> = hist[..i].iter().map(|&v| v as f64).collect();
        let tail: f64 = hist[i..].iter().map(|&v| v as f64).sum();
        p[i - 1] += tail;
        let total: f64 = p.iter().sum();
        if total == 0.0 {
            i += step;
            continue;
        }
        // Q: merge into `levels` groups, spread each group's mass over its non-zero bins.
        let mut q = vec![0f64; i];
        for g in 0..levels {
            let (s, e) = (g * i / levels, ((g + 1) * i / levels).max(g * i / levels + 1));
            let mass: f64 = hist[s..e.min(i)].iter().map(|&v| v as f64).sum::<f64>();
            let nz = (s..e.min(i)).filter(|&j| p[j] > 0.0).count();
            if nz > 0 {
                for j in s..e.min(i) {
                    if p[j] > 0.0 {
                        q[j] = mass / nz as f64;
                    }
                }
            }
        }
        let qt: f64 = q.iter().sum();
        let mut kl = 0.0;
        for j in 0..i {
            if p[j] > 0.0 {
                let pj = p[j] / total;
                let qj = (q[j] / qt).max(1e-12);
                kl += pj * (pj / qj).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i - 1);
        }
        i += step;
    }
    best.1
}

/// Threshold on |x| minimizing expected squared error: rounding noise `step²/12` inside, clipping
/// error outside, evaluated on the histogram's bin centers.
pub fn mse_threshold(hist: &[u64], bw: f32, levels: usize) -> f32 {
    let n = hist.len();
    let mut best = (f64::INFINITY, n as f32 * bw);
    for c in 1..=100 {
        let t = (n as f32 * bw) * c as f32 / 100.0;
        let step = (t / (levels.max(2) - 1) as f32) as f64;
        let mut e = 0.0;
        for (j, &h) in hist.iter().enumerate() {
            if h == 0 {
                continue;
            }
            let x = (j as f32 + 0.5) * bw;
            e += h as f64 * if x > t { ((x - t) as f64).powi(2) } else { step * step / 12.0 };
        }
        if e < best.0 {
            best = (e, t);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_with_outlier() -> Observer {
        let mut o = Observer::default();
        let mut s = 7u64;
        let xs: Vec<f32> = (0..200_000)
            .map(|_| {
                // sum of uniforms ~ gaussian, std ~1
                let mut a = 0f32;
                for _ in 0..12 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    a += (s >> 40) as f32 / (1u64 << 24) as f32;
                }
                a - 6.0
            })
            .chain([40.0])
            .collect();
        o.observe_range(&xs);
        o.observe_hist(&xs);
        o
    }

    #[test]
    fn minmax_keeps_the_outlier_others_clip_it() {
        let o = gaussian_with_outlier();
        assert_eq!(o.range(Method::MinMax, 128).1, 40.0);
        // MSE keeps a lone outlier when clipping it costs more than the coarser step; with the
        // bulk scaled up it must clip.
        let (_, hi) = o.range(Method::Mse, 128);
        assert!(hi <= 40.0 && hi > 2.5, "mse {hi}");
        for m in [Method::Percentile(0.9999), Method::Entropy] {
            let (lo, hi) = o.range(m, 128);
            assert!(hi > 2.5 && hi < 12.0, "{m:?}: {hi}");
            assert!(lo < -2.5 && lo >= o.min, "{m:?}: {lo}");
        }
    }

    #[test]
    fn mse_clips_heavy_tail() {
        let mut o = Observer::default();
        // many small values and a thin tail of large ones
        let xs: Vec<f32> =
            (0..100_000).map(|i| ((i % 1000) as f32 / 1000.0) - 0.5).chain((0..20).map(|i| 10.0 + i as f32)).collect();
        o.observe_range(&xs);
        o.observe_hist(&xs);
        let (_, hi) = o.range(Method::Mse, 16);
        assert!(hi < 29.0, "mse kept the whole tail: {hi}");
    }

    #[test]
    fn parse_methods() {
        assert_eq!(Method::parse("percentile:0.999"), Some(Method::Percentile(0.999)));
        assert_eq!(Method::parse("kl"), Some(Method::Entropy));
        assert_eq!(Method::parse("bogus"), None);
        assert_eq!(Method::parse("percentile:2"), None);
    }
}
