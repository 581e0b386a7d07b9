//! The learned-rounding weight parametrisation of block reconstruction ([`crate::recon`]) and
//! QDrop's random mixing of quantized and float activations; the trainable model
//! ([`crate::model`]) applies both.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{activation::sigmoid, Tensor, TensorData};

use crate::Rng;

/// AdaRound's stretch of the sigmoid: `h` reaches exactly 0 and 1.
pub const ZETA: f32 = 1.1;
pub const GAMMA: f32 = -0.1;

/// A weight with learned rounding (see the module documentation).
pub struct SoftRound {
    /// Parameter index of `V` (one per weight).
    pub v: usize,
    /// `floor(w / s)` and `s`, per weight.
    pub base: Vec<f32>,
    pub scale: Vec<f32>,
    pub qmin: f32,
    pub qmax: f32,
    /// Hardened integers: the weight is `s · hard`.
    pub hard: Option<Vec<f32>>,
}

impl SoftRound {
    /// The parametrisation of weights `w` with per-weight scales `scale` and integer range
    /// `[qmin, qmax]`, and the initial `V` (`h(V) = frac(w / s)`: the float weight).
    pub fn new(w: &[f32], scale: Vec<f32>, qmin: f32, qmax: f32) -> (SoftRound, Vec<f32>) {
        let mut base = vec![0f32; w.len()];
        let mut v0 = vec![0f32; w.len()];
        for i in 0..w.len() {
            let r = w[i] / scale[i];
            base[i] = r.floor();
            let frac = (r - base[i]).clamp(1e-4, 1.0 - 1e-4);
            // h(V) = frac: σ(V) = (frac − γ) / (ζ − γ).
            let sg = (frac - GAMMA) / (ZETA - GAMMA);
            v0[i] = -(1.0 / sg - 1.0).ln();
        }
        (SoftRound { v: usize::MAX, base, scale, qmin, qmax, hard: None }, v0)
    }
}

fn rect_sigmoid(v: Tensor<1>) -> Tensor<1> {
    sigmoid(v).mul_scalar(ZETA - GAMMA).add_scalar(GAMMA).clamp(0.0, 1.0)
}

impl SoftRound {
    /// The weight the layer computes with (flat, the tensor's layout).
    pub(crate) fn weight(&self, v: Tensor<1>) -> Tensor<1> {
        let dev = v.device();
        let n = self.base.len();
        let t = |x: &[f32]| Tensor::<1>::from_data(TensorData::new(x.to_vec(), [n]), &dev);
        let q = match &self.hard {
            Some(h) => t(h),
            None => (t(&self.base) + rect_sigmoid(v)).clamp(self.qmin, self.qmax),
        };
        q * t(&self.scale)
    }

    /// `Σ (1 − |2h(V) − 1|^β)`: zero when every `h` is 0 or 1.
    pub fn regulariser(&self, v: Tensor<1>, beta: f32) -> Tensor<1> {
        let h = rect_sigmoid(v);
        let n = self.base.len() as f32;
        h.mul_scalar(2.0).sub_scalar(1.0).abs().powf_scalar(beta).sum().neg().add_scalar(n)
    }

    /// The integers of the current `V` (`V >= 0` rounds up), or of rounding to nearest.
    pub fn ints(&self, v: &[f32], nearest: bool) -> Vec<f32> {
        self.base
            .iter()
            .zip(v)
            .map(|(&b, &vi)| {
                let up = if nearest { host_h(vi) >= 0.5 } else { vi >= 0.0 };
                (b + up as u8 as f32).clamp(self.qmin, self.qmax)
            })
            .collect()
    }
}

fn host_h(v: f32) -> f32 {
    (1.0 / (1.0 + (-v).exp()) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

/// QDrop's random choice between a quantized and a float activation, element by element.
pub struct Drop {
    /// Probability that an element is quantized.
    pub p: f32,
    seed: u64,
    calls: AtomicU64,
}

impl Drop {
    pub fn new(p: f32, seed: u64) -> Drop {
        Drop { p, seed, calls: AtomicU64::new(0) }
    }

    /// `q` where a fresh Bernoulli(p) mask is 1, `x` elsewhere (gradients flow to both).
    pub(crate) fn mix<const D: usize>(&self, x: Tensor<D>, q: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let m = bernoulli(dims.iter().product(), self.p, self.seed ^ call.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let m = Tensor::<D>::from_data(TensorData::new(m, dims), &x.device());
        x.clone() + (q - x) * m
    }
}

/// `n` values, 1 with probability `p` and 0 otherwise, deterministic in `seed`.
fn bernoulli(n: usize, p: f32, seed: u64) -> Vec<f32> {
    crate::par_build(n, 16384, |ci, c| {
        let mut r = Rng::new(seed.wrapping_add((ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        for v in c {
            *v = (r.uniform() < p) as u8 as f32;
        }
    })
}
