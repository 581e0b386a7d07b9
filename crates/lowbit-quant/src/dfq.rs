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
}

struct Pair {
    a: usize,
    b: usize,
}

fn find_pairs(g: &Graph) -> Vec<Pair> {
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
fn b_reads(wshape: &[usize], group: usize, i: usize) -> Vec<(usize, usize)> {
    let (co, cig) = (wshape[0], wshape[1]);
    let cog = co / group;
    let gi = i / cig;
    (gi * cog..(gi + 1) * cog).map(|o| (o, i % cig)).collect()
}

fn group_of(op: &Op) -> usize {
    match op {
        Op::Conv(c) => c.group.max(1),
        _ => 1,
    }
}

/// Makes sure each pair's weights and biases are private copies (initializers may be shared).
fn own(g: &mut Graph, node: usize, input: usize) -> Option<String> {
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
pub fn absorb_biases(g: &mut Graph, stats: &Stats) -> usize {
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
        let bb = g.nodes[p.b].inputs[2].clone();
        for (v, &s) in g.initializers.get_mut(&bb).unwrap().as_f32_mut().unwrap().iter_mut().zip(&shift_b) {
            *v += s;
        }
    }
    n
}
