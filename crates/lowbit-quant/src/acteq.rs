//! Activation equalization into depthwise convolutions: for a pair `A -> act -> B` where every
//! output channel of B reads a single input channel (depthwise, any multiplier), channel `i` of A's
//! output is multiplied by `s_i >= 1` (A's weight row and bias) and B's weights reading it are
//! divided by `s_i`. Under per-channel linear weight quantization both changes are free: each
//! scaled weight row has its own scale, so its integer values do not change. What changes is the
//! activation between A and B, which is quantized with one scale per tensor: channels whose range
//! is far below the widest ones (MobileNetV2's first layers have channels 100x apart) are
//! stretched towards a common range, so the tensor's single step no longer rounds them away.
//!
//! Cross-layer equalization ([`crate::dfq::equalize`]) balances *weight* ranges and needs a
//! positively homogeneous activation (ReLU6 must become ReLU); here the weights cost nothing and
//! ReLU6 stays: a channel is stretched only as far as its calibration maximum stays below the
//! clip (`s_i <= hi / max_i`), so the clip never acts on data where it did not act before.
//! Channels that reach the clip, and dead channels, keep `s_i = 1`. (On unseen data a stretched
//! channel may exceed its calibration maximum; the activation's quantizer saturates at its
//! calibrated range, at most the clip, either way.)

use std::collections::HashMap;

use lowbit_core::{Act, Graph};

use crate::calibrate::Stats;
use crate::dfq::{b_reads, find_pairs, group_of, own};

/// What [`equalize_activations`] did.
#[derive(Clone, Debug, Default)]
pub struct ActEqReport {
    pub pairs: usize,
    /// Channels stretched (`s_i > 1`).
    pub channels: usize,
    /// Per node A (by name), the factor each output channel was *divided* by (`1 / s_i`), the
    /// convention of [`crate::dfq::DfqReport::channel_scale`].
    pub channel_scale: HashMap<String, Vec<f32>>,
}

/// The share of live channels whose maximum sets the common range: the 90th percentile, so a few
/// outlying channels do not stretch everything else to their range.
pub const TARGET_PERCENTILE: f64 = 0.9;

/// Channels below this fraction of the target range are treated as dead (left alone).
const DEAD: f32 = 1e-3;

/// Stretch factors for one activation: `max_abs[i]` is channel `i`'s largest magnitude on the
/// calibration data, `clip` the activation's upper bound (ReLU6: 6), if any.
pub fn stretch(max_abs: &[f32], clip: Option<f32>) -> Vec<f32> {
    let mut live: Vec<f32> = max_abs.iter().copied().filter(|m| m.is_finite() && *m > 0.0).collect();
    if live.is_empty() {
        return vec![1.0; max_abs.len()];
    }
    live.sort_by(f32::total_cmp);
    let target = live[((live.len() - 1) as f64 * TARGET_PERCENTILE).round() as usize];
    max_abs
        .iter()
        .map(|&m| {
            if !m.is_finite() || m <= DEAD * target || m >= target {
                return 1.0;
            }
            let mut s = target / m;
            if let Some(hi) = clip {
                // The stretched channel must stay below the clip on the calibration data.
                s = if m < hi { s.min(hi / m) } else { 1.0 };
            }
            s.max(1.0)
        })
        .collect()
}

/// Equalizes every `Conv -> act -> depthwise Conv` pair of `g` (canonical, activations fused)
/// using the per-channel maxima in `stats` (A's output after its activation). Only for linear
/// per-channel weight quantization: callers check.
pub fn equalize_activations(g: &mut Graph, stats: &Stats) -> ActEqReport {
    let mut rep = ActEqReport::default();
    for p in find_pairs(g) {
        let (a, b) = (p.a, p.b);
        let clip = match g.nodes[a].op.fused_act() {
            Act::None | Act::Relu => None,
            Act::Clip { lo, hi } if lo == 0.0 && hi > 0.0 => Some(hi),
            _ => continue,
        };
        let Some(wb) = g.nodes[b].input(1).and_then(|w| g.initializers.get(w)) else { continue };
        // Depthwise: one input channel per group, so each output channel of B reads one channel.
        if wb.rank() != 4 || wb.shape[1] != 1 {
            continue;
        }
        let Some(o) = stats.get(&g.nodes[a].outputs[0]) else { continue };
        if o.channel_max.is_empty() || o.channel_max.len() != o.channel_min.len() {
            continue;
        }
        let max_abs: Vec<f32> =
            o.channel_max.iter().zip(&o.channel_min).map(|(hi, lo)| hi.abs().max(lo.abs())).collect();
        let s = stretch(&max_abs, clip);
        let c = s.len();
        let Some(wa) = g.nodes[a].input(1).and_then(|w| g.initializers.get(w)) else { continue };
        if wa.shape.first() != Some(&c) || s.iter().all(|&v| v == 1.0) {
            continue;
        }
        let wb_shape = wb.shape.clone();
        let per_a = wa.len() / c;
        let gb = group_of(&g.nodes[b].op);
        let kb: usize = wb_shape[2..].iter().product();
        // All three tensors must be f32 before any is touched, or the pair would be half rescaled.
        let f32_at = |n: usize, i: usize| {
            g.nodes[n].input(i).and_then(|v| g.initializers.get(v)).and_then(|t| t.as_f32()).is_some()
        };
        if !f32_at(a, 1) || !f32_at(b, 1) || (g.nodes[a].input(2).is_some() && !f32_at(a, 2)) {
            continue;
        }
        let (Some(wa_name), Some(wb_name)) = (own(g, a, 1), own(g, b, 1)) else { continue };
        let ba_name = own(g, a, 2);
        let wa = g.initializers.get_mut(&wa_name).and_then(|t| t.as_f32_mut()).expect("checked f32 above");
        for (i, &si) in s.iter().enumerate() {
            wa[i * per_a..(i + 1) * per_a].iter_mut().for_each(|v| *v *= si);
        }
        if let Some(bias) = ba_name.and_then(|n| g.initializers.get_mut(&n)).and_then(|t| t.as_f32_mut()) {
            bias.iter_mut().zip(&s).for_each(|(v, si)| *v *= si);
        }
        let wb = g.initializers.get_mut(&wb_name).and_then(|t| t.as_f32_mut()).expect("checked f32 above");
        for (i, &si) in s.iter().enumerate() {
            for (oc, ci) in b_reads(&wb_shape, gb, i) {
                let base = (oc * wb_shape[1] + ci) * kb;
                wb[base..base + kb].iter_mut().for_each(|v| *v /= si);
            }
        }
        rep.pairs += 1;
        rep.channels += s.iter().filter(|&&v| v > 1.0).count();
        rep.channel_scale.insert(g.nodes[a].name.clone(), s.iter().map(|v| 1.0 / v).collect());
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretch_respects_target_clip_and_dead_channels() {
        // Ten channels: 0.0 (dead), 1e-6 (dead relative to the target), small ones, and wide ones.
        let m = [0.0, 1e-6, 0.05, 0.5, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0];
        let s = stretch(&m, Some(6.0));
        assert_eq!(s[0], 1.0);
        assert_eq!(s[1], 1.0);
        // The target is the 90th percentile of live maxima (6.0 here).
        assert!((s[2] - 6.0 / 0.05).abs() < 1e-3, "{s:?}");
        assert!((s[4] - 3.0).abs() < 1e-6);
        // Channels at the clip stay.
        assert_eq!(s[8], 1.0);
        for (mi, si) in m.iter().zip(&s) {
            assert!(si >= &1.0 && mi * si <= 6.0 + 1e-4, "{mi} {si}");
        }
        // Without a clip, only the target bounds the stretch.
        let s = stretch(&[0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0], None);
        assert!((s[0] - 10.0).abs() < 1e-5, "{s:?}");
        assert_eq!(s[9], 1.0);
    }
}
