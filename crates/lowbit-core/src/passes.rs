//! Graph passes that need no data: BatchNorm folding, activation fusion, Identity removal and
//! dead-node removal. Constant folding needs an evaluator and lives in `lowbit-runtime`.

use crate::{Act, Graph, Op, Tensor};

/// What a pass changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    pub batchnorms_folded: usize,
    pub activations_fused: usize,
    pub hardswish_patterns: usize,
    pub identities_removed: usize,
    pub nodes_removed: usize,
}

fn const_f32<'a>(g: &'a Graph, name: Option<&str>) -> Option<&'a [f32]> {
    g.initializers.get(name?).and_then(|t| t.as_f32())
}

/// Runs every data-free canonicalization pass in order.
pub fn canonicalize(g: &mut Graph) -> PassReport {
    let mut r = PassReport { identities_removed: remove_identities(g), ..Default::default() };
    r.batchnorms_folded = fold_batchnorm(g);
    r.batchnorms_folded += fold_batchnorm_forward(g);
    r.hardswish_patterns = fuse_hardswish(g);
    r.activations_fused = fuse_activations(g);
    r.nodes_removed = remove_dead(g);
    r
}

/// A `BatchNormalization` in inference form with constant parameters: `(scale, beta, mean)` with
/// `scale = gamma / sqrt(var + epsilon)` per channel, so `y = (x - mean)·scale + beta`.
fn bn_constants<'a>(g: &'a Graph, bn: &crate::Node) -> Option<(Vec<f32>, &'a [f32], &'a [f32])> {
    let Op::BatchNorm { epsilon } = bn.op else { return None };
    if bn.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return None; // training-mode outputs requested
    }
    let (gamma, beta, mean, var) = (
        const_f32(g, bn.input(1))?,
        const_f32(g, bn.input(2))?,
        const_f32(g, bn.input(3))?,
        const_f32(g, bn.input(4))?,
    );
    let c = gamma.len();
    if [beta.len(), mean.len(), var.len()] != [c; 3] {
        return None;
    }
    Some(((0..c).map(|o| gamma[o] / (var[o] + epsilon).sqrt()).collect(), beta, mean))
}

/// A Conv's or Gemm's constant bias (input 2) as `n` values (a scalar broadcast; zeros when absent);
/// `None` when it is not a constant of that size.
fn bias_of(g: &Graph, node: &crate::Node, n: usize) -> Option<Vec<f32>> {
    match node.input(2) {
        Some(name) => match const_f32(g, Some(name))? {
            b if b.len() == n => Some(b.to_vec()),
            b if b.len() == 1 => Some(vec![b[0]; n]),
            _ => None,
        },
        None => Some(vec![0.0; n]),
    }
}

/// Gives node `ni` the folded weights `w` and bias `b` (as new initializers, inputs 1 and 2).
fn set_folded_params(g: &mut Graph, ni: usize, w: Tensor, b: Vec<f32>) {
    let wname = g.fresh_name(&format!("{}_w_bnfold", g.nodes[ni].name));
    g.initializers.insert(wname.clone(), w);
    let bname = g.fresh_name(&format!("{}_b_bnfold", g.nodes[ni].name));
    g.initializers.insert(bname.clone(), Tensor::f32(vec![b.len()], b));
    let n = &mut g.nodes[ni];
    n.inputs.resize(3, String::new());
    n.inputs[1] = wname;
    n.inputs[2] = bname;
}

/// Folds `BatchNormalization` into the Conv or Gemm that feeds it, when that producer has no other
/// reader and all parameters are constants. Returns how many were folded.
pub fn fold_batchnorm(g: &mut Graph) -> usize {
    let mut folded = 0;
    loop {
        let consumers = g.consumers();
        let producers = g.producers();
        let mut done = None;
        for (bi, bn) in g.nodes.iter().enumerate() {
            let Some((scale, beta, mean)) = bn_constants(g, bn) else { continue };
            let Some(&pi) = producers.get(&bn.inputs[0]) else {
                continue;
            };
            let p = &g.nodes[pi];
            if consumers.get(&bn.inputs[0]).map(|c| c.len()) != Some(1) || g.is_output(&bn.inputs[0]) {
                continue;
            }
            let Some(w) = p.input(1).and_then(|n| g.initializers.get(n)) else {
                continue;
            };
            let Some(wv) = w.as_f32() else { continue };
            let c = scale.len();
            let Some(bias_in) = bias_of(g, p, c) else { continue };
            let mut nw = wv.to_vec();
            match &p.op {
                Op::Conv(a) if a.act.is_none() && w.shape[0] == c => {
                    let per = nw.len() / c;
                    for o in 0..c {
                        nw[o * per..(o + 1) * per].iter_mut().for_each(|x| *x *= scale[o]);
                    }
                }
                Op::Gemm { trans_b, act, alpha, .. } if act.is_none() && w.shape.len() == 2 => {
                    // Fold alpha into W and beta into the bias as we go.
                    let (k, n) = if *trans_b { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
                    if n != c {
                        continue;
                    }
                    for kk in 0..k {
                        for o in 0..n {
                            let i = if *trans_b { o * k + kk } else { kk * n + o };
                            nw[i] *= scale[o] * alpha;
                        }
                    }
                }
                Op::ConvTranspose(a) if w.shape.len() >= 3 && w.shape[1] * a.group.max(1) == c => {
                    // Weight [C_in, C_out / group, k...]: output channel (ic / cig) * cog + ocg.
                    let (cog, cig) = (w.shape[1], w.shape[0] / a.group.max(1));
                    let per = nw.len() / (w.shape[0] * cog);
                    for (i, chunk) in nw.chunks_exact_mut(per).enumerate() {
                        let (ic, ocg) = (i / cog, i % cog);
                        chunk.iter_mut().for_each(|x| *x *= scale[(ic / cig) * cog + ocg]);
                    }
                }
                _ => continue,
            }
            let bias_scale = match &p.op {
                Op::Gemm { beta, .. } => *beta,
                _ => 1.0,
            };
            let nb: Vec<f32> = (0..c).map(|o| (bias_in[o] * bias_scale - mean[o]) * scale[o] + beta[o]).collect();
            done = Some((bi, pi, Tensor { shape: w.shape.clone(), data: crate::Data::F32(nw) }, nb));
            break;
        }
        let Some((bi, pi, nw, nb)) = done else { break };
        set_folded_params(g, pi, nw, nb);
        let bn_out = g.nodes[bi].outputs[0].clone();
        let p = &mut g.nodes[pi];
        p.outputs[0] = bn_out;
        if let Op::Gemm { alpha, beta, .. } = &mut p.op {
            *alpha = 1.0;
            *beta = 1.0;
        }
        g.nodes.remove(bi);
        folded += 1;
    }
    folded
}

/// Folds a `BatchNormalization` that no Conv/Gemm feeds (it follows an activation, as in the
/// embedding heads of face recognisers: PRelu -> BatchNorm -> Dropout -> Flatten -> Gemm) forward
/// into the Gemm that reads it, directly or through `Flatten` (axis 1): with `x' = x·a[c] + b[c]`
/// per channel and `k = c·HW + s` the Gemm's reduction index, `W'[k] = W[k]·a[c(k)]` and the bias
/// gains `alpha · Σ_k b[c(k)]·W[k]`. The BatchNorm and the Flatten must have no other reader.
/// Returns how many were folded.
pub fn fold_batchnorm_forward(g: &mut Graph) -> usize {
    let mut folded = 0;
    loop {
        let consumers = g.consumers();
        let sole = |v: &str| -> Option<usize> {
            match consumers.get(v) {
                Some(c) if c.len() == 1 && !g.is_output(v) => Some(c[0]),
                _ => None,
            }
        };
        let mut done = None;
        for (bi, bn) in g.nodes.iter().enumerate() {
            let Some((a, beta, mean)) = bn_constants(g, bn) else { continue };
            let Some(mut ri) = sole(&bn.outputs[0]) else { continue };
            let mut flatten = None;
            if matches!(g.nodes[ri].op, Op::Flatten { axis: 1 }) {
                flatten = Some(ri);
                let Some(r) = sole(&g.nodes[ri].outputs[0]) else { continue };
                ri = r;
            }
            let gm = &g.nodes[ri];
            let Op::Gemm { alpha, beta: gbeta, trans_a: false, trans_b, act: _ } = gm.op else { continue };
            let Some(w) = gm.input(1).and_then(|n| g.initializers.get(n)) else { continue };
            let (Some(wv), true) = (w.as_f32(), w.shape.len() == 2) else { continue };
            let c = a.len();
            let (k, n) = if trans_b { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
            if c == 0 || k % c != 0 || (flatten.is_none() && k != c) {
                continue;
            }
            let Some(bias_in) = bias_of(g, gm, n) else { continue };
            let hw = k / c;
            let b: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * a[i]).collect();
            let mut nw = wv.to_vec();
            let mut nb: Vec<f64> = bias_in.iter().map(|&v| (v * gbeta) as f64).collect();
            for kk in 0..k {
                let ch = kk / hw;
                for (o, nbo) in nb.iter_mut().enumerate() {
                    let i = if trans_b { o * k + kk } else { kk * n + o };
                    *nbo += (alpha * b[ch] * wv[i]) as f64;
                    nw[i] *= a[ch];
                }
            }
            let nb: Vec<f32> = nb.into_iter().map(|v| v as f32).collect();
            done = Some((bi, ri, Tensor { shape: w.shape.clone(), data: crate::Data::F32(nw) }, nb));
            break;
        }
        let Some((bi, gi, nw, nb)) = done else { break };
        set_folded_params(g, gi, nw, nb);
        // The BatchNorm's reader now reads its input.
        let (bn_in, bn_out) = (g.nodes[bi].inputs[0].clone(), g.nodes[bi].outputs[0].clone());
        for x in g.nodes.iter_mut().flat_map(|n| n.inputs.iter_mut()) {
            if *x == bn_out {
                *x = bn_in.clone();
            }
        }
        if let Op::Gemm { beta, .. } = &mut g.nodes[gi].op {
            *beta = 1.0;
        }
        g.nodes.remove(bi);
        folded += 1;
    }
    folded
}

/// The activation a node computes, if it is a pure elementwise activation with constant parameters.
pub fn as_activation(g: &Graph, n: &crate::Node) -> Option<Act> {
    match &n.op {
        Op::Relu => Some(Act::Relu),
        Op::HardSigmoid { alpha, beta } => Some(Act::HardSigmoid { alpha: *alpha, beta: *beta }),
        Op::HardSwish => Some(Act::HardSwish),
        Op::Clip { min, max } => {
            let bound = |i: usize, attr: Option<f32>, dflt: f32| -> Option<f32> {
                match n.input(i) {
                    Some(name) => {
                        let v = const_f32(g, Some(name))?;
                        (v.len() == 1).then(|| v[0])
                    }
                    None => Some(attr.unwrap_or(dflt)),
                }
            };
            let lo = bound(1, *min, f32::NEG_INFINITY)?;
            let hi = bound(2, *max, f32::INFINITY)?;
            Some(if lo == 0.0 && hi == f32::INFINITY { Act::Relu } else { Act::Clip { lo, hi } })
        }
        _ => None,
    }
}

/// Fuses an activation that is the only reader of a Conv/Gemm output into that node.
pub fn fuse_activations(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let consumers = g.consumers();
        let producers = g.producers();
        let mut hit = None;
        for (ai, a) in g.nodes.iter().enumerate() {
            let Some(act) = as_activation(g, a) else {
                continue;
            };
            let x = &a.inputs[0];
            let Some(&pi) = producers.get(x) else {
                continue;
            };
            if consumers.get(x).map(|c| c.len()) != Some(1) || g.is_output(x) {
                continue;
            }
            if !g.nodes[pi].op.fused_act().is_none() || !matches!(g.nodes[pi].op, Op::Conv(_) | Op::Gemm { .. }) {
                continue;
            }
            hit = Some((ai, pi, act));
            break;
        }
        let Some((ai, pi, act)) = hit else { break };
        let out = g.nodes[ai].outputs[0].clone();
        let p = &mut g.nodes[pi];
        match &mut p.op {
            Op::Conv(c) => c.act = act,
            Op::Gemm { act: a, .. } => *a = act,
            _ => unreachable!(),
        }
        p.outputs[0] = out;
        g.nodes.remove(ai);
        fused += 1;
    }
    fused
}

/// Removes Identity nodes, rewiring their readers (or their producer, when the Identity writes a
/// graph output).
pub fn remove_identities(g: &mut Graph) -> usize {
    let mut removed = 0;
    let mut i = 0;
    while i < g.nodes.len() {
        if g.nodes[i].op != Op::Identity {
            i += 1;
            continue;
        }
        let (x, y) = (g.nodes[i].inputs[0].clone(), g.nodes[i].outputs[0].clone());
        if !g.is_output(&y) {
            g.replace_uses(&y, &x);
        } else {
            let producers = g.producers();
            let Some(&pi) = producers.get(&x) else {
                i += 1;
                continue;
            };
            if g.is_output(&x) {
                i += 1;
                continue;
            }
            g.nodes[pi].outputs.iter_mut().filter(|o| **o == x).for_each(|o| *o = y.clone());
            g.replace_uses(&x, &y);
        }
        g.nodes.remove(i);
        removed += 1;
    }
    removed
}

/// Removes nodes none of whose outputs are read or are graph outputs, and unused initializers.
pub fn remove_dead(g: &mut Graph) -> usize {
    let mut removed = 0;
    let mut live: std::collections::HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(n.inputs.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.into_iter();
    g.nodes.retain(|_| {
        let kept = k.next().unwrap();
        removed += (!kept) as usize;
        kept
    });
    let inputs: std::collections::HashSet<String> = g.inputs.iter().map(|i| i.name.clone()).collect();
    g.initializers.retain(|name, _| live.contains(name) || inputs.contains(name));
    removed
}

fn scalar_const(g: &Graph, name: &str) -> Option<f32> {
    let t = g.initializers.get(name)?;
    (t.len() == 1).then(|| t.to_f32_vec()[0])
}

/// Replaces the exporter pattern `x * clip(x + 3, 0, 6) / 6` (Add, Clip, Mul, Div or Mul by 1/6)
/// with one `HardSwish` node, and `x * HardSigmoid(x; 1/6, 1/2)` (how HardSwish is written before opset 14; the same
/// f32 operations, so the same bits). Returns how many were replaced.
pub fn fuse_hardswish(g: &mut Graph) -> usize {
    let mut n = fuse_hardsigmoid_mul(g);
    loop {
        let consumers = g.consumers();
        let producers = g.producers();
        let single = |v: &str| consumers.get(v).map(|c| c.len()) == Some(1) && !g.is_output(v);
        let mut hit = None;
        'search: for (di, d) in g.nodes.iter().enumerate() {
            // y = m / 6  or  m * (1/6)
            let m = match &d.op {
                Op::Div if d.input(1).and_then(|c| scalar_const(g, c)) == Some(6.0) => d.inputs[0].clone(),
                Op::Mul => match (scalar_const(g, &d.inputs[1]), scalar_const(g, &d.inputs[0])) {
                    (Some(c), _) if (c - 1.0 / 6.0).abs() < 1e-7 => d.inputs[0].clone(),
                    (_, Some(c)) if (c - 1.0 / 6.0).abs() < 1e-7 => d.inputs[1].clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let Some(&mi) = producers.get(&m) else { continue };
            if g.nodes[mi].op != Op::Mul || !single(&m) {
                continue;
            }
            // m = x * b (either order), b = clip(a, 0, 6), a = x + 3
            for (xs, bs) in [(0, 1), (1, 0)] {
                let (x, b) = (&g.nodes[mi].inputs[xs], &g.nodes[mi].inputs[bs]);
                let Some(&bi) = producers.get(b) else { continue };
                if !single(b) || as_activation(g, &g.nodes[bi]) != Some(Act::Clip { lo: 0.0, hi: 6.0 }) {
                    continue;
                }
                let a = &g.nodes[bi].inputs[0];
                let Some(&ai) = producers.get(a) else { continue };
                let an = &g.nodes[ai];
                if an.op != Op::Add || !single(a) {
                    continue;
                }
                let ok = (an.inputs[0] == *x && scalar_const(g, &an.inputs[1]) == Some(3.0))
                    || (an.inputs[1] == *x && scalar_const(g, &an.inputs[0]) == Some(3.0));
                if ok {
                    hit = Some((di, mi, bi, ai, x.clone()));
                    break 'search;
                }
            }
        }
        let Some((di, mi, bi, ai, x)) = hit else { break };
        let y = g.nodes[di].outputs[0].clone();
        let name = g.nodes[di].name.clone();
        g.nodes[ai] = crate::Node { name, op: Op::HardSwish, inputs: vec![x], outputs: vec![y] };
        let mut drop = [di, mi, bi];
        drop.sort_unstable();
        for i in drop.iter().rev() {
            g.nodes.remove(*i);
        }
        n += 1;
    }
    n
}

/// `Mul(x, HardSigmoid(x))` with alpha = 1/6 and beta = 1/2 (bit for bit) → `HardSwish(x)`.
fn fuse_hardsigmoid_mul(g: &mut Graph) -> usize {
    let mut n = 0;
    loop {
        let consumers = g.consumers();
        let producers = g.producers();
        let hit = g.nodes.iter().enumerate().find_map(|(mi, m)| {
            if m.op != Op::Mul || m.inputs.len() != 2 {
                return None;
            }
            (0..2).find_map(|k| {
                let (x, h) = (&m.inputs[1 - k], &m.inputs[k]);
                let &hi = producers.get(h)?;
                let hn = &g.nodes[hi];
                let exact = matches!(hn.op, Op::HardSigmoid { alpha, beta }
                    if alpha.to_bits() == (1.0f32 / 6.0).to_bits() && beta == 0.5);
                let single = consumers.get(h).map(|c| c.len()) == Some(1) && !g.is_output(h);
                (exact && single && hn.inputs[0] == *x).then(|| (mi, hi, x.clone()))
            })
        });
        let Some((mi, hi, x)) = hit else { break };
        let (name, y) = (g.nodes[mi].name.clone(), g.nodes[mi].outputs[0].clone());
        g.nodes[mi] = crate::Node { name, op: Op::HardSwish, inputs: vec![x], outputs: vec![y] };
        g.nodes.remove(hi);
        n += 1;
    }
    n
}
