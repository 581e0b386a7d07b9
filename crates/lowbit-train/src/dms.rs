//! DMS, differentiable dimension search (Li et al., ICLR 2020 workshop): each searched group of
//! channels gets a width multiplier drawn from a logistic distribution over a grid of candidate
//! multipliers; the location is learned with the weights and the spread annealed until the
//! distribution sits on one candidate.
//!
//! **What is searched.** [`channel_groups`] partitions a graph's channel dimensions: every
//! convolution makes a new one, element-wise nodes pass theirs through, and an `Add` joins the two
//! it adds. On a Bi-Real ResNet (every binary convolution has its own real-valued shortcut) each
//! stage is one group: the stem or projection that opens it, every convolution in it, its
//! BatchNorms and the classifier's input, since each convolution's output is added to its input.
//! Searching finer (a block's inner width) would need a channel map in the shortcuts.
//!
//! **The relaxation.** Group `g` has candidate widths `w_0 < … < w_{K-1}` (the multipliers times
//! the base width) and a location `μ_g ∈ [0, K-1]` on the candidate index,
//! `μ = (K-1)·σ(G·θ)` for the trained parameter `θ` (`G` lets one shared learning rate move it).
//! Sampling is restricted to the three candidates around `μ`, `j-1, j, j+1` with `j` the nearest
//! inner index, with the logistic distribution's mass on each: `p_{j-1} = F(j - ½)`,
//! `p_{j+1} = 1 - F(j + ½)`, `p_j` the rest, `F` the logistic CDF with location `μ` and scale `s`.
//! The supernet holds the largest width; channel `i` of the group is scaled by the probability
//! that the sampled width exceeds it, `m_i = Σ_k p_k [i < w_k]` (so the leading channels are
//! shared by every width), on the group's BatchNorm outputs and on the input channels of every
//! binary convolution reading it (a binary convolution sees the sign of its input, which a
//! scale does not change). The expected width `Σ_k p_k w_k` is differentiable in `μ` through `F`;
//! so is the expected cost (binary multiply-accumulates `k²·H·W·E[c_in]·E[c_out]` summed over the
//! binary convolutions, or their weight count), held to the budget by the penalty
//! `λ·ln²(cost / budget)`. The spread anneals from `s_0 = 1` to `s_1 = 0.02` (candidate index
//! units) geometrically over training, and the chosen width is the candidate nearest `μ`.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::{activation::sigmoid, Tensor, TensorData};
use lowbit_core::{Graph, Op, Tensor as CTensor};

use crate::{host, Error, Result};

/// Scale between the trained parameter and the location's logit (see the module docs).
pub(crate) const GAIN: f32 = 60.0;
const SPREAD_START: f32 = 1.0;
const SPREAD_END: f32 = 0.02;

/// One group of channel dimensions that must share a width.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// The convolutions whose output channels are this group, in graph order.
    pub convs: Vec<String>,
    /// Their channel count in the graph.
    pub base: usize,
}

/// The channel groups of `g` (see the module docs), in order of their first convolution, and for
/// every convolution and Gemm the group its input channels belong to.
pub struct Groups {
    pub groups: Vec<Group>,
    /// Node name -> index of the group of its input channels (convolutions and Gemm reading a
    /// grouped value).
    pub input_group: HashMap<String, usize>,
    /// Node name -> index of the group of its output channels (convolutions and BatchNorms).
    pub output_group: HashMap<String, usize>,
}

fn find(p: &mut [usize], mut x: usize) -> usize {
    while p[x] != x {
        p[x] = p[p[x]];
        x = p[x];
    }
    x
}

/// Partitions the channel dimensions of `g` (see the module docs).
pub fn channel_groups(g: &Graph) -> Result<Groups> {
    let mut parent: Vec<usize> = vec![0]; // dimension 0: the model input and anything else
    let mut dim: HashMap<String, usize> = HashMap::new();
    let mut conv_dim: Vec<(String, usize, usize)> = vec![]; // (conv, its output dim, channels)
    let mut reads: Vec<(String, usize)> = vec![];
    let mut bn_dim: Vec<(String, usize)> = vec![];
    for n in &g.nodes {
        let d_in = n.inputs.first().and_then(|x| dim.get(x)).copied().unwrap_or(0);
        let out = match &n.op {
            Op::Conv(c) => {
                let w =
                    g.initializers.get(&n.inputs[1]).ok_or_else(|| Error::node(&n.name, "weights are not constant"))?;
                if c.group > 1 {
                    return Err(Error::node(&n.name, "grouped convolutions are not width-searched"));
                }
                parent.push(parent.len());
                reads.push((n.name.clone(), d_in));
                conv_dim.push((n.name.clone(), parent.len() - 1, w.shape[0]));
                parent.len() - 1
            }
            Op::Gemm { .. } | Op::MatMul => {
                reads.push((n.name.clone(), d_in));
                0
            }
            Op::Add => {
                let d_b = n.inputs.get(1).and_then(|x| dim.get(x)).copied().unwrap_or(0);
                let (ra, rb) = (find(&mut parent, d_in), find(&mut parent, d_b));
                if (ra == 0) != (rb == 0) {
                    return Err(Error::node(&n.name, "adds a convolution's channels to ungrouped ones"));
                }
                parent[ra.max(rb)] = ra.min(rb);
                d_in
            }
            Op::BatchNorm { .. } => {
                bn_dim.push((n.name.clone(), d_in));
                d_in
            }
            _ => d_in,
        };
        for o in &n.outputs {
            dim.insert(o.clone(), out);
        }
    }
    let mut root_group: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Group> = vec![];
    let mut output_group = HashMap::new();
    for (name, d, ch) in &conv_dim {
        let r = find(&mut parent, *d);
        let gi = *root_group.entry(r).or_insert_with(|| {
            groups.push(Group { convs: vec![], base: *ch });
            groups.len() - 1
        });
        if groups[gi].base != *ch {
            return Err(Error::node(name, format!("has {ch} channels, added to {} others", groups[gi].base)));
        }
        groups[gi].convs.push(name.clone());
        output_group.insert(name.clone(), gi);
    }
    let mut input_group = HashMap::new();
    for (name, d) in reads {
        if let Some(&gi) = root_group.get(&find(&mut parent, d)).filter(|_| d != 0) {
            input_group.insert(name, gi);
        }
    }
    for (name, d) in bn_dim {
        if let Some(&gi) = root_group.get(&find(&mut parent, d)).filter(|_| d != 0) {
            output_group.insert(name, gi);
        }
    }
    Ok(Groups { groups, input_group, output_group })
}

/// `width` channels of `t` along `axis`: the leading ones kept, new ones filled by `fill`.
fn resize(t: &CTensor, axis: usize, width: usize, fill: &mut dyn FnMut() -> f32) -> Result<CTensor> {
    let v = t.as_f32().ok_or_else(|| Error::Invalid("width search needs float weights".into()))?;
    let outer: usize = t.shape[..axis].iter().product();
    let old = t.shape[axis];
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * width * inner);
    for o in 0..outer {
        for c in 0..width {
            for i in 0..inner {
                out.push(if c < old { v[(o * old + c) * inner + i] } else { fill() });
            }
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = width;
    Ok(CTensor::f32(shape, out))
}

/// `g` with group `i` at `widths[i]` channels (`None`: unchanged): convolution weights and biases,
/// BatchNorm parameters and statistics, and the input dimension of the layers reading a group.
/// Existing channels keep their values; new weights are Kaiming-normal (fan-out), new BatchNorms
/// identity, new biases zero.
pub fn apply_widths(g: &Graph, gr: &Groups, widths: &[Option<usize>], seed: u64) -> Result<Graph> {
    let mut out = g.clone();
    let mut rng = crate::Rng::new(seed);
    let width = |m: &HashMap<String, usize>, node: &str| m.get(node).and_then(|&i| widths.get(i).copied().flatten());
    for n in &g.nodes {
        let (wo, wi) = (width(&gr.output_group, &n.name), width(&gr.input_group, &n.name));
        match &n.op {
            Op::Conv(_) => {
                let mut w = g.initializers[&n.inputs[1]].clone();
                let fan = |w: &CTensor, o: usize| o * w.shape[2..].iter().product::<usize>();
                if let Some(o) = wo {
                    let std = (2.0 / fan(&w, o) as f32).sqrt();
                    w = resize(&w, 0, o, &mut || rng.normal() * std)?;
                }
                if let Some(i) = wi {
                    let std = (2.0 / fan(&w, w.shape[0]) as f32).sqrt();
                    w = resize(&w, 1, i, &mut || rng.normal() * std)?;
                }
                out.initializers.insert(n.inputs[1].clone(), w);
                if let (Some(b), Some(o)) = (n.input(2), wo) {
                    out.initializers.insert(b.into(), resize(&g.initializers[b], 0, o, &mut || 0.0)?);
                }
            }
            Op::BatchNorm { .. } => {
                if let Some(o) = wo {
                    for (k, v) in [(1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)] {
                        let name =
                            n.input(k).ok_or_else(|| Error::node(&n.name, "BatchNormalization needs 5 inputs"))?;
                        out.initializers.insert(name.into(), resize(&g.initializers[name], 0, o, &mut || v)?);
                    }
                }
            }
            Op::Gemm { trans_b, .. } => {
                if let Some(i) = wi {
                    let w = &g.initializers[&n.inputs[1]];
                    let std = (1.0 / i as f32).sqrt();
                    let axis = if *trans_b { 1 } else { 0 };
                    out.initializers.insert(n.inputs[1].clone(), resize(w, axis, i, &mut || rng.normal() * std)?);
                }
            }
            Op::MatMul if wi.is_some() => return Err(Error::node(&n.name, "MatMul reading a searched group")),
            _ => {}
        }
    }
    Ok(out)
}

/// A binary convolution's place in the cost: its input and output groups (or fixed channel
/// counts) and `k²·H·W` (multiply-accumulates per input and output channel pair).
#[derive(Clone, Debug)]
pub struct CostTerm {
    pub conv: String,
    pub input: Side,
    pub output: Side,
    pub per_pair: f64,
}

/// One side of a convolution: a group's width, or a fixed channel count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Group(usize),
    Fixed(usize),
}

/// The cost of `terms` at per-group widths `w` (as f64).
pub fn cost_at(terms: &[CostTerm], w: &dyn Fn(usize) -> f64) -> f64 {
    let side = |s: &Side| match s {
        Side::Group(g) => w(*g),
        Side::Fixed(c) => *c as f64,
    };
    terms.iter().map(|t| t.per_pair * side(&t.input) * side(&t.output)).sum()
}

/// One searched group's state.
pub struct Searched {
    pub group: usize,
    /// Candidate widths, ascending.
    pub widths: Vec<usize>,
    /// Parameter index of `θ`.
    pub theta: usize,
}

/// The width search attached to a [`Model`] (its `dms` field).
pub struct Dms {
    pub searched: Vec<Searched>,
    pub terms: Vec<CostTerm>,
    pub budget: f64,
    pub lambda: f32,
    /// Unsearched groups' widths.
    pub fixed: HashMap<usize, usize>,
    /// BatchNorm output value -> group.
    pub(crate) mask_values: HashMap<String, usize>,
    /// Binary convolution weight parameter -> group of its input channels.
    pub(crate) mask_weights: HashMap<usize, usize>,
    /// The penalty of the last training forward (added to the loss by the training loop).
    pub penalty: Option<Tensor<1>>,
    /// `(progress, expected width per searched group, expected cost)` at every training forward.
    pub history: Mutex<Vec<(f32, Vec<f32>, f32)>>,
}

/// Per-forward masks: group -> `[max width]` channel scales.
pub type Masks = HashMap<usize, Tensor<1>>;

impl Dms {
    /// The width of an unsearched group (its channel count in the supernet).
    fn fixed_width(&self, g: usize) -> usize {
        self.fixed.get(&g).copied().unwrap_or(0)
    }

    pub fn spread(progress: f32) -> f32 {
        SPREAD_START * (SPREAD_END / SPREAD_START).powf(progress.clamp(0.0, 1.0))
    }

    /// The channel masks at training progress `progress` (see the module docs), from the searched
    /// groups' `θ` parameters in order; in training, also
    /// the budget penalty and a history entry.
    pub fn masks(&mut self, theta: &[Tensor<1>], progress: f32, train: bool) -> Masks {
        let s = Self::spread(progress);
        let mut masks = HashMap::new();
        let mut expected: HashMap<usize, Tensor<1>> = HashMap::new();
        let mut ew = vec![];
        for (sg, th) in self.searched.iter().zip(theta) {
            let k = sg.widths.len();
            let th = th.clone();
            let dev = th.device();
            let mu = sigmoid(th.mul_scalar(GAIN)).mul_scalar((k - 1) as f32);
            let m0 = host(&mu)[0];
            // The three candidates around μ (two when there are two).
            let (lo, hi) = if k == 2 {
                (0, 1)
            } else {
                let j = (m0.round() as usize).clamp(1, k - 2);
                (j - 1, j + 1)
            };
            let cdf = |b: f32| sigmoid(mu.clone().neg().add_scalar(b).div_scalar(s));
            let mut ps: Vec<(usize, Tensor<1>)> = vec![(lo, cdf(lo as f32 + 0.5))];
            let top = cdf(hi as f32 - 0.5).neg().add_scalar(1.0);
            if hi - lo == 2 {
                let mid = cdf(lo as f32 + 1.5) - ps[0].1.clone();
                ps.push((lo + 1, mid));
            }
            ps.push((hi, top));
            let max_w = *sg.widths.last().unwrap_or(&1);
            let mut m: Tensor<1> = Tensor::zeros([max_w], &dev);
            let mut e: Tensor<1> = Tensor::zeros([1], &dev);
            for (i, p) in &ps {
                let w = sg.widths[*i];
                let ind: Vec<f32> = (0..max_w).map(|c| if c < w { 1.0 } else { 0.0 }).collect();
                let ind = Tensor::<1>::from_data(TensorData::new(ind, [max_w]), &dev);
                m = m + ind * p.clone().expand([max_w]);
                e = e + p.clone().mul_scalar(w as f32);
            }
            ew.push(host(&e)[0]);
            masks.insert(sg.group, m);
            expected.insert(sg.group, e);
        }
        if train {
            let dev = theta.first().map(|t| t.device()).unwrap_or_default();
            let mut cost: Tensor<1> = Tensor::zeros([1], &dev);
            for t in &self.terms {
                let side = |s: &Side| -> Tensor<1> {
                    match s {
                        Side::Group(g) if expected.contains_key(g) => expected[g].clone(),
                        Side::Group(g) => Tensor::zeros([1], &dev).add_scalar(self.fixed_width(*g) as f32),
                        Side::Fixed(c) => Tensor::zeros([1], &dev).add_scalar(*c as f32),
                    }
                };
                cost = cost + (side(&t.input) * side(&t.output)).mul_scalar(t.per_pair as f32);
            }
            let c = host(&cost)[0];
            let r = cost.div_scalar(self.budget as f32).log();
            self.penalty = Some((r.clone() * r).mul_scalar(self.lambda));
            if let Ok(mut h) = self.history.lock() {
                h.push((progress, ew, c));
            }
        }
        masks
    }

    /// `v` scaled by its group's mask when it is a masked value.
    pub fn mask_value(&self, value: &str, v: Tensor<4>, masks: &Masks) -> Tensor<4> {
        match self.mask_values.get(value).and_then(|g| masks.get(g)) {
            Some(m) => {
                let c = m.dims()[0];
                v * m.clone().reshape([1, c, 1, 1])
            }
            None => v,
        }
    }

    /// The mask of a binary convolution's input channels (by weight parameter), if searched.
    pub fn weight_mask(&self, w: usize, masks: &Masks) -> Option<Tensor<1>> {
        self.mask_weights.get(&w).and_then(|g| masks.get(g)).cloned()
    }
}
