//! Data-free quantization helpers (Nagel et al., DFQ): cross-layer equalization of consecutive
//! convolutions and bias absorption. Both rescale a float graph without changing its function
//! (up to ReLU6 substitution and padding effects, reported).
//!
//! Equalization: for a pair `A -> act -> B` with a positively homogeneous activation (none, ReLU),
//! channel `i` of A's output is scaled by `1/s_i` and B's input channel `i` by `s_i`, with
//! `s_i = sqrt(r1_i * r2_i) / r2_i`, so both weight ranges become `sqrt(r1_i * r2_i)`. ReLU6
//! (`Clip[0,6]`) is not homogeneous: it is replaced by ReLU only where that is safe, i.e. the
//! calibration statistics show the channel never reached 6 (or, with no statistics, when the caller
//! asks for the paper's unconditional substitution).
//!
//! Bias absorption: where channel `i` of A's (ReLU) output is always at least `c_i > 0`, move
//! `c_i` out of A's bias into B's bias (`b_B += W_B · c`), shrinking the range to quantize.

use std::collections::HashMap;

use lowbit_core::{Act, Graph, Op};

use crate::calibrate::Stats;

/// What equalization and absorption did.
#[derive(Clone, Debug, Default)]
pub struct DfqReport {
    pub pairs: usize,
    pub relu6_replaced: usize,
    /// Pairs skipped because a ReLU6 was not safe to replace (node names).
    pub relu6_unsafe: Vec<String>,
    pub channels_absorbed: usize,
    /// Equalization: per node A (by name), the factor each output channel was divided by (the
    /// product over sweeps), so statistics of A's output can follow.
    pub channel_scale: HashMap<String, Vec<f32>>,
}

pub(crate) struct Pair {
    pub(crate) a: usize,
    pub(crate) b: usize,
}

pub(crate) fn find_pairs(g: &Graph) -> Vec<Pair> {
    let consumers = g.consumers();
    let producers = g.producers();
    let mut v = vec![];
    for (bi, b) in g.nodes.iter().enumerate() {
        let Op::Conv(_) = b.op else { continue };
        let Some(&ai) = producers.get(&b.inputs[0]) else { continue };
        let a = &g.nodes[ai];
        let Op::Conv(_) = a.op else { continue };
        if consumers.get(&b.inputs[0]).map(|c| c.len()) != Some(1) || g.is_output(&b.inputs[0]) {
            continue;
        }
        let consts = |n: &lowbit_core::Node| {
            n.input(1).is_some_and(|w| g.initializers.contains_key(w))
                && n.input(2).is_none_or(|x| g.initializers.contains_key(x))
        };
        if consts(a) && consts(b) {
            v.push(Pair { a: ai, b: bi });
        }
    }
    v
}

/// Input-channel layout of B's weight: for B's input channel `i`, the (output channel, weight
/// input-channel index) pairs that read it.
pub(crate) fn b_reads(wshape: &[usize], group: usize, i: usize) -> Vec<(usize, usize)> {
    let (co, cig) = (wshape[0], wshape[1]);
    let cog = co / group;
    let gi = i / cig;
    (gi * cog..(gi + 1) * cog).map(|o| (o, i % cig)).collect()
}

pub(crate) fn group_of(op: &Op) -> usize {
    match op {
        Op::Conv(c) => c.group.max(1),
        _ => 1,
    }
}

/// Makes sure each pair's weights and biases are private copies (initializers may be shared).
pub(crate) fn own(g: &mut Graph, node: usize, input: usize) -> Option<String> {
    let name = g.nodes[node].input(input)?.to_string();
    let fresh = g.fresh_name(&format!("{name}_dfq"));
    let t = g.initializers.get(&name)?.clone();
    g.initializers.insert(fresh.clone(), t);
    g.nodes[node].inputs[input] = fresh.clone();
    Some(fresh)
}

/// Cross-layer equalization, `sweeps` passes over all pairs. `stats` (calibration statistics of
/// the graph's values) decides where ReLU6 may become ReLU; `None` replaces every ReLU6 in a pair.
pub fn equalize(g: &mut Graph, stats: Option<&Stats>, sweeps: usize) -> DfqReport {
    let mut rep = DfqReport::default();
    let pairs = find_pairs(g);
    // Decide activations first.
    let mut usable = vec![];
    for p in &pairs {
        let out = g.nodes[p.a].outputs[0].clone();
        let act = g.nodes[p.a].op.fused_act();
        match act {
            Act::None | Act::Relu => usable.push(p.a),
            Act::Clip { lo, hi } if lo == 0.0 && hi > 0.0 => {
                let safe = match stats.and_then(|s| s.get(&out)) {
                    Some(o) => o.max < hi,
                    None => true,
                };
                if safe {
                    if let Op::Conv(c) = &mut g.nodes[p.a].op {
                        c.act = Act::Relu;
                    }
                    rep.relu6_replaced += 1;
                    usable.push(p.a);
                } else {
                    rep.relu6_unsafe.push(g.nodes[p.a].name.clone());
                }
            }
            _ => {}
        }
    }
    let pairs: Vec<Pair> = pairs.into_iter().filter(|p| usable.contains(&p.a)).collect();
    rep.pairs = pairs.len();
    let mut owned: HashMap<(usize, usize), String> = HashMap::new();
    for p in &pairs {
        for (n, i) in [(p.a, 1), (p.a, 2), (p.b, 1)] {
            if let Some(name) = own(g, n, i) {
                owned.insert((n, i), name);
            }
        }
    }
    for _ in 0..sweeps.max(1) {
        for p in &pairs {
            let wa_name = owned[&(p.a, 1)].clone();
            let wb_name = owned[&(p.b, 1)].clone();
            let ba_name = owned.get(&(p.a, 2)).cloned();
            let wa_shape = g.initializers[&wa_name].shape.clone();
            let wb_shape = g.initializers[&wb_name].shape.clone();
            let gb = group_of(&g.nodes[p.b].op);
            let c = wa_shape[0];
            let per_a: usize = wa_shape[1..].iter().product();
            let kb: usize = wb_shape[2..].iter().product();
            let (wa, wb) = (g.initializers[&wa_name].to_f32_vec(), g.initializers[&wb_name].to_f32_vec());
            let mut scale = vec![1f32; c];
            for (i, s) in scale.iter_mut().enumerate() {
                let r1 = wa[i * per_a..(i + 1) * per_a].iter().fold(0f32, |m, v| m.max(v.abs()));
                let mut r2 = 0f32;
                for (o, ci) in b_reads(&wb_shape, gb, i) {
                    let base = (o * wb_shape[1] + ci) * kb;
                    r2 = wb[base..base + kb].iter().fold(r2, |m, v| m.max(v.abs()));
                }
                if r1 > 0.0 && r2 > 0.0 {
                    *s = (r1 * r2).sqrt() / r2;
                }
            }
            let mut wa2 = wa;
            for i in 0..c {
                wa2[i * per_a..(i + 1) * per_a].iter_mut().for_each(|v| *v /= scale[i]);
            }
            let mut wb2 = wb;
            for (i, &s) in scale.iter().enumerate() {
                for (o, ci) in b_reads(&wb_shape, gb, i) {
                    let base = (o * wb_shape[1] + ci) * kb;
                    wb2[base..base + kb].iter_mut().for_each(|v| *v *= s);
                }
            }
            let acc = rep.channel_scale.entry(g.nodes[p.a].name.clone()).or_insert_with(|| vec![1.0; c]);
            acc.iter_mut().zip(&scale).for_each(|(a, s)| *a *= s);
            g.initializers.get_mut(&wa_name).unwrap().as_f32_mut().unwrap().copy_from_slice(&wa2);
            g.initializers.get_mut(&wb_name).unwrap().as_f32_mut().unwrap().copy_from_slice(&wb2);
            if let Some(bn) = ba_name {
                let b = g.initializers.get_mut(&bn).unwrap().as_f32_mut().unwrap();
                for (v, &s) in b.iter_mut().zip(&scale) {
                    *v /= s;
                }
            }
        }
    }
    rep
}

/// Bias absorption for every `Conv -> ReLU -> Conv` pair: where the calibration minimum `c_i` of
/// channel `i` of A's (post-ReLU) output is positive, the ReLU never clipped that channel, so
/// `relu(x) - c_i == relu(x - c_i)` on the data; move `c_i` from A's bias into B's bias.
/// (B's zero padding then stands for `-c_i` instead of 0 at the borders: DFQ's approximation.)
///
/// Returns the number of channels absorbed and, per node A, the amount `c` taken out of its output
/// channels (so statistics of A's output can follow).
pub fn absorb_biases(g: &mut Graph, stats: &Stats) -> (usize, HashMap<String, Vec<f32>>) {
    let mut shifts = HashMap::new();
    let mut n = 0;
    for p in find_pairs(g) {
        if g.nodes[p.a].op.fused_act() != Act::Relu {
            continue;
        }
        let out = g.nodes[p.a].outputs[0].clone();
        let Some(o) = stats.get(&out) else { continue };
        let c: Vec<f32> = o.channel_min.iter().map(|&m| if m.is_finite() { m.max(0.0) } else { 0.0 }).collect();
        if c.iter().all(|&v| v == 0.0) {
            continue;
        }
        let wb_name = g.nodes[p.b].inputs[1].clone();
        let wb = g.initializers[&wb_name].clone();
        let gb = group_of(&g.nodes[p.b].op);
        if c.len() != wb.shape[1] * gb {
            continue;
        }
        // A's bias (create if absent), B's bias (create if absent), both private copies.
        let co_a = c.len();
        let co_b = wb.shape[0];
        for (node, len) in [(p.a, co_a), (p.b, co_b)] {
            if g.nodes[node].input(2).is_none() {
                let name = g.fresh_name(&format!("{}_bias", g.nodes[node].name));
                g.initializers.insert(name.clone(), lowbit_core::Tensor::f32(vec![len], vec![0.0; len]));
                g.nodes[node].inputs.resize(3, String::new());
                g.nodes[node].inputs[2] = name;
            } else {
                own(g, node, 2);
            }
        }
        let kb: usize = wb.shape[2..].iter().product();
        let mut shift_b = vec![0f32; co_b];
        for (i, &ci) in c.iter().enumerate() {
            if ci == 0.0 {
                continue;
            }
            for (o, k) in b_reads(&wb.shape, gb, i) {
                let base = (o * wb.shape[1] + k) * kb;
                shift_b[o] += ci * wb.as_f32().unwrap()[base..base + kb].iter().sum::<f32>();
            }
            n += 1;
        }
        let ba = g.nodes[p.a].inputs[2].clone();
        for (v, &ci) in g.initializers.get_mut(&ba).unwrap().as_f32_mut().unwrap().iter_mut().zip(&c) {
            *v -= ci;
        }
        shifts.insert(g.nodes[p.a].name.clone(), c.clone());
        let bb = g.nodes[p.b].inputs[2].clone();
        for (v, &s) in g.initializers.get_mut(&bb).unwrap().as_f32_mut().unwrap().iter_mut().zip(&shift_b) {
            *v += s;
        }
    }
    (n, shifts)
}

/// Per-channel normal distributions `N(mu, sigma^2)` of convolution outputs before their
/// activation, by (canonical) convolution name: DFQ's data-free estimate from the BatchNorm that
/// followed the convolution before folding (`mu = beta`, `sigma = |gamma|`).
#[derive(Clone, Debug, Default)]
pub struct BnDists(pub HashMap<String, (Vec<f32>, Vec<f32>)>);

impl BnDists {
    /// From the unfolded graph: every BatchNormalization (constant parameters) whose input is a
    /// convolution's output read by nothing else.
    pub fn from_graph(g: &Graph) -> BnDists {
        let producers = g.producers();
        let consumers = g.consumers();
        let mut d = HashMap::new();
        for bn in &g.nodes {
            let Op::BatchNorm { .. } = bn.op else { continue };
            let Some(&pi) = producers.get(&bn.inputs[0]) else { continue };
            let Op::Conv(_) = g.nodes[pi].op else { continue };
            if consumers.get(&bn.inputs[0]).map(|c| c.len()) != Some(1) {
                continue;
            }
            let get = |i: usize| bn.input(i).and_then(|n| g.initializers.get(n)).map(|t| t.to_f32_vec());
            let (Some(gamma), Some(beta)) = (get(1), get(2)) else { continue };
            if gamma.len() != beta.len() {
                continue;
            }
            d.insert(g.nodes[pi].name.clone(), (beta, gamma.iter().map(|v| v.abs()).collect()));
        }
        BnDists(d)
    }

    /// Follows equalization: A's output channel `i` was divided by `s_i`.
    pub fn rescale(&mut self, channel_scale: &HashMap<String, Vec<f32>>) {
        for (name, sc) in channel_scale {
            if let Some((mu, sigma)) = self.0.get_mut(name) {
                for ((m, sd), s) in mu.iter_mut().zip(sigma.iter_mut()).zip(sc) {
                    *m /= s;
                    *sd /= s;
                }
            }
        }
    }

    /// Follows bias absorption: `c_i` was taken out of A's bias.
    pub fn shift(&mut self, shifts: &HashMap<String, Vec<f32>>) {
        for (name, c) in shifts {
            if let Some((mu, _)) = self.0.get_mut(name) {
                mu.iter_mut().zip(c).for_each(|(m, c)| *m -= c);
            }
        }
    }

    /// Puts the per-channel means and minima of [`BnDists::stats`] into calibration statistics
    /// (the values' ranges and histograms stay measured).
    pub fn overlay(&self, canon: &Graph, stats: &mut Stats) {
        for (k, o) in self.stats(canon) {
            if let Some(s) = stats.get_mut(&k) {
                (s.channel_sum, s.channel_count, s.channel_min) = (o.channel_sum, o.channel_count, o.channel_min);
            }
        }
    }

    /// Statistics of the canonical graph's values that these distributions describe: for each
    /// known convolution, its output (after its fused activation) gets per-channel means
    /// `E[act(X)]`, per-channel minima `act(mu - 3 sigma)` (DFQ's bias-absorption bound) and a
    /// range `[min act(mu - 3 sigma), max act(mu + 3 sigma)]`. Not fit to decide whether a ReLU6
    /// ever reaches 6: activation tails are heavier than a normal's (on fmnist-mobilenet, even
    /// `mu + 6 sigma < 6` held for 7 pairs whose activations do reach 6 on real images).
    pub fn stats(&self, canon: &Graph) -> Stats {
        let mut st = Stats::new();
        let consumers = canon.consumers();
        for n in &canon.nodes {
            let Op::Conv(c) = &n.op else { continue };
            let Some((mu, sigma)) = self.0.get(&n.name) else { continue };
            // A BatchNorm that folding left in place still follows: the statistics are not this output's.
            let unfolded = consumers
                .get(&n.outputs[0])
                .is_some_and(|cs| cs.iter().any(|&i| matches!(canon.nodes[i].op, Op::BatchNorm { .. })));
            if unfolded {
                continue;
            }
            let (lo, hi) = match c.act {
                Act::None => (f32::NEG_INFINITY, f32::INFINITY),
                Act::Relu => (0.0, f32::INFINITY),
                Act::Clip { lo, hi } => (lo, hi),
                _ => continue,
            };
            let mut o = crate::observer::Observer {
                channel_count: 1,
                channel_sum: mu.iter().zip(sigma).map(|(&m, &s)| clipped_normal_mean(m, s, lo, hi)).collect(),
                channel_min: mu.iter().zip(sigma).map(|(&m, &s)| (m - 3.0 * s).clamp(lo, hi)).collect(),
                ..Default::default()
            };
            for (&m, &s) in mu.iter().zip(sigma) {
                o.min = o.min.min((m - 3.0 * s).clamp(lo, hi));
                o.max = o.max.max((m + 3.0 * s).clamp(lo, hi));
            }
            st.insert(n.outputs[0].clone(), o);
        }
        st
    }
}

/// `E[clamp(X, lo, hi)]` for `X ~ N(mu, sigma^2)` (`lo`/`hi` may be infinite).
pub fn clipped_normal_mean(mu: f32, sigma: f32, lo: f32, hi: f32) -> f64 {
    let (m, s) = (mu as f64, sigma as f64);
    if s <= 0.0 {
        return m.clamp(lo as f64, hi as f64);
    }
    // E[max(X, a)] = a + E[max(X - a, 0)], and E[max(Y, 0)] = m Phi(m/s) + s phi(m/s) for Y ~ N(m, s^2).
    let relu = |m: f64| m * normal_cdf(m / s) + s * normal_pdf(m / s);
    let (lo, hi) = (lo as f64, hi as f64);
    // clamp(X, lo, hi) = lo + max(X - lo, 0) - max(X - hi, 0)
    let mut e = m;
    if lo.is_finite() {
        e = lo + relu(m - lo);
    }
    if hi.is_finite() {
        e -= relu(m - hi);
    }
    e
}

fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Standard normal CDF through erfc (the Chebyshev fit of Numerical Recipes' `erfcc`, fractional
/// error below 1.2e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - 0.5 * r
    } else {
        0.5 * r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `E[clamp(X, lo, hi)]` by the trapezoid rule over ±12 sigma.
    fn numeric(mu: f64, s: f64, lo: f64, hi: f64) -> f64 {
        let n = 200_000;
        let (a, b) = (mu - 12.0 * s, mu + 12.0 * s);
        let h = (b - a) / n as f64;
        (0..=n)
            .map(|i| {
                let x = a + i as f64 * h;
                let w = if i == 0 || i == n { 0.5 } else { 1.0 };
                w * x.clamp(lo, hi) * (-(x - mu).powi(2) / (2.0 * s * s)).exp()
                    / (s * (2.0 * std::f64::consts::PI).sqrt())
            })
            .sum::<f64>()
            * h
    }

    #[test]
    fn clipped_normal_mean_matches_integration() {
        let inf = f32::INFINITY;
        for &(mu, s) in &[(0.0f32, 1.0f32), (1.5, 0.7), (-2.0, 1.0), (5.5, 2.0), (7.0, 0.5), (0.3, 3.0)] {
            for &(lo, hi) in &[(-inf, inf), (0.0, inf), (0.0, 6.0)] {
                let got = clipped_normal_mean(mu, s, lo, hi);
                let want = numeric(mu as f64, s as f64, lo as f64, hi as f64);
                assert!((got - want).abs() < 1e-5, "N({mu}, {s}^2) clamped to [{lo}, {hi}]: {got} vs {want}");
            }
        }
        // No spread: the clamped mean itself.
        assert_eq!(clipped_normal_mean(7.0, 0.0, 0.0, 6.0), 6.0);
    }

    #[test]
    fn bn_statistics_follow_equalization_and_absorption() {
        let mut d = BnDists(HashMap::from([("a".to_string(), (vec![2.0, -1.0], vec![1.0, 0.5]))]));
        d.rescale(&HashMap::from([("a".to_string(), vec![2.0, 0.5])]));
        assert_eq!(d.0["a"], (vec![1.0, -2.0], vec![0.5, 1.0]));
        d.shift(&HashMap::from([("a".to_string(), vec![0.25, 0.0])]));
        assert_eq!(d.0["a"].0, vec![0.75, -2.0]);
    }
}
