//! A trainable view of a lowbit [`Graph`]: the graph's nodes run as burn tensor operations, its
//! float initializers become parameters, BatchNorm runs in training mode (batch statistics,
//! running statistics updated) or inference mode, and optional fake quantizers sit on weights
//! and activations. Trained values are written back into a copy of the graph.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use lowbit_core::{Act, ConvAttrs, Graph, Op, PoolAttrs};

pub use crate::host;

use crate::fq::{self, Range};
use crate::fqop::Kind;
use crate::{Error, Result};

/// A value flowing through the model: images (NCHW) or rows (N x K).
#[derive(Clone)]
pub enum V {
    T4(Tensor<4>),
    T2(Tensor<2>),
}

impl V {
    fn t4(self, node: &str) -> Result<Tensor<4>> {
        match self {
            V::T4(t) => Ok(t),
            V::T2(_) => Err(Error::node(node, "expects a 4-D (NCHW) input")),
        }
    }
    fn t2(self, node: &str) -> Result<Tensor<2>> {
        match self {
            V::T2(t) => Ok(t),
            V::T4(t) => {
                let [n, c, h, w] = t.dims();
                if h * w == 1 {
                    Ok(t.reshape([n, c]))
                } else {
                    Err(Error::node(node, "expects a 2-D input"))
                }
            }
        }
    }
    fn map(self, f4: impl FnOnce(Tensor<4>) -> Tensor<4>, f2: impl FnOnce(Tensor<2>) -> Tensor<2>) -> V {
        match self {
            V::T4(t) => V::T4(f4(t)),
            V::T2(t) => V::T2(f2(t)),
        }
    }
}

/// Which quantization-aware training method a quantizer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QatMethod {
    /// Fixed steps from calibration, straight-through rounding.
    Ste,
    /// Learned step size.
    Lsq,
    /// Learned clipping level for activations; weights keep calibrated steps with STE.
    Pact,
    /// Differentiable soft quantization: learned steps and characteristic variable alpha.
    Dsq,
}

impl QatMethod {
    pub fn parse(s: &str) -> Option<QatMethod> {
        match s.to_ascii_lowercase().as_str() {
            "ste" => Some(QatMethod::Ste),
            "lsq" => Some(QatMethod::Lsq),
            "pact" => Some(QatMethod::Pact),
            "dsq" => Some(QatMethod::Dsq),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            QatMethod::Ste => "ste",
            QatMethod::Lsq => "lsq",
            QatMethod::Pact => "pact",
            QatMethod::Dsq => "dsq",
        }
    }
}

/// How one convolution is binarized (weights and input): IR-Net with its two parts switchable,
/// so `Binary { libra: false, ede: false }` is the XNOR-Net baseline (sign with the per-filter
/// mean |w| scale, straight-through estimator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binary {
    /// Libra-PB: each filter's weights balanced (mean 0) and standardised (std 1) before the
    /// sign; the scale is the power of two nearest the mean |w| of the standardised filter, so
    /// deployment rescales with a shift.
    pub libra: bool,
    /// EDE (error-decay estimator) backward for both signs instead of the clipped STE.
    pub ede: bool,
}

/// A parameter: one flat tensor, with its initializer name and shape.
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub t: Tensor<1>,
    /// Weight decay applies (conv / linear weights only).
    pub decay: bool,
}

/// A fake quantizer on one weight (per output channel) or one activation (per tensor).
#[derive(Clone, Debug)]
pub struct Quantizer {
    pub method: QatMethod,
    pub range: Range,
    /// Parameter index of the step (`[C]` or `[1]`); for PACT activations, of the clip level.
    pub step: usize,
    /// Parameter index of DSQ's alpha.
    pub alpha: Option<usize>,
    /// LSQ gradient scale.
    pub grad_scale: f32,
    /// Channel count of a per-channel weight quantizer (1 for per tensor).
    pub channels: usize,
}

#[derive(Clone, Debug)]
enum Step {
    Conv { x: String, w: usize, b: Option<usize>, attrs: ConvAttrs, out: String },
    Bn { x: String, gamma: usize, beta: usize, mean: usize, var: usize, eps: f32, out: String },
    Act { x: String, act: Act, out: String },
    Add { a: String, b: String, out: String },
    Gap { x: String, out: String },
    Flatten { x: String, out: String },
    Gemm { x: String, w: usize, b: Option<usize>, trans_b: bool, alpha: f32, beta: f32, act: Act, out: String },
    MaxPool { x: String, attrs: PoolAttrs, out: String },
    AvgPool { x: String, attrs: PoolAttrs, out: String },
}

impl Step {
    fn out(&self) -> &str {
        match self {
            Step::Conv { out, .. }
            | Step::Bn { out, .. }
            | Step::Act { out, .. }
            | Step::Add { out, .. }
            | Step::Gap { out, .. }
            | Step::Flatten { out, .. }
            | Step::Gemm { out, .. }
            | Step::MaxPool { out, .. }
            | Step::AvgPool { out, .. } => out,
        }
    }
}

/// The trainable model.
pub struct Model {
    pub device: Device,
    pub params: Vec<Param>,
    /// BatchNorm running statistics (never trained by gradient).
    pub buffers: Vec<(String, Tensor<1>)>,
    pub bn_momentum: f32,
    steps: Vec<(String, Step)>,
    pub input: String,
    pub output: String,
    /// Weight quantizers by parameter index of the weight.
    pub weight_q: HashMap<usize, Quantizer>,
    /// Activation quantizers by value name (applied where the value is produced).
    pub act_q: HashMap<String, Quantizer>,
    /// Per-image element count of every value seen by [`Model::forward`].
    pub value_sizes: HashMap<String, usize>,
    /// Binary convolutions by parameter index of the weight.
    pub binary: HashMap<usize, Binary>,
    /// Training progress in `[0, 1]` (the EDE schedule reads it); set by the training loop.
    pub progress: f32,
    /// The margin-softmax head of embedding training ([`crate::embed`]); never exported.
    pub head: Option<crate::head::Head>,
    /// INT8-trained convolutions by parameter index of the weight ([`Model::enable_int8`]).
    pub int8: HashMap<usize, std::sync::Arc<crate::conv8::Int8Layer>>,
    /// A channel-width search over this (super)network ([`crate::dms`]).
    pub dms: Option<crate::dms::Dms>,
    /// Weights with learned rounding (AdaRound's parametrisation) by parameter index of the
    /// weight ([`crate::softround`], learned by [`crate::recon`]); they take precedence over `weight_q`.
    pub soft_round: HashMap<usize, crate::softround::SoftRound>,
    /// QDrop: each activation element is quantized only with this probability ([`crate::softround`]).
    pub qdrop: Option<crate::softround::Drop>,
    graph: Graph,
}

fn t1(v: Vec<f32>, dev: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), dev)
}

impl Model {
    /// Builds the trainable view of `g` (one float input, one output). Every float initializer
    /// read by a Conv/Gemm/BatchNorm becomes a parameter.
    pub fn from_graph(g: &Graph, device: &Device) -> Result<Model> {
        let inputs = g.runtime_inputs();
        if inputs.len() != 1 || g.outputs.len() != 1 {
            return Err(Error::Invalid(format!(
                "training needs one input and one output; the graph has {} and {}",
                inputs.len(),
                g.outputs.len()
            )));
        }
        let mut m = Model {
            device: device.clone(),
            params: vec![],
            buffers: vec![],
            bn_momentum: 0.1,
            steps: vec![],
            input: inputs[0].name.clone(),
            output: g.outputs[0].name.clone(),
            weight_q: HashMap::new(),
            act_q: HashMap::new(),
            value_sizes: HashMap::new(),
            binary: HashMap::new(),
            progress: 0.0,
            head: None,
            int8: HashMap::new(),
            dms: None,
            soft_round: HashMap::new(),
            qdrop: None,
            graph: g.clone(),
        };
        let mut pidx: HashMap<String, usize> = HashMap::new();
        let mut param = |m: &mut Model, node: &str, name: &str, decay: bool| -> Result<usize> {
            if let Some(&i) = pidx.get(name) {
                return Ok(i);
            }
            let t = g.initializers.get(name).ok_or_else(|| {
                Error::node(node, format!("'{name}' is not a constant; training needs constant weights"))
            })?;
            let v = t.as_f32().ok_or_else(|| Error::node(node, format!("'{name}' is not float32")))?.to_vec();
            m.params.push(Param { name: name.into(), shape: t.shape.clone(), t: t1(v, device), decay });
            pidx.insert(name.into(), m.params.len() - 1);
            Ok(m.params.len() - 1)
        };
        for n in &g.nodes {
            let x = || n.inputs.first().cloned().unwrap_or_default();
            let out = n.outputs.first().cloned().unwrap_or_default();
            let step = match &n.op {
                Op::Conv(c) => {
                    let w = param(&mut m, &n.name, &n.inputs[1], true)?;
                    if m.params[w].shape.len() != 4 {
                        return Err(Error::node(&n.name, "only 2-D convolutions can be trained"));
                    }
                    let b = match n.input(2) {
                        Some(b) => Some(param(&mut m, &n.name, b, false)?),
                        None => None,
                    };
                    Step::Conv { x: x(), w, b, attrs: c.clone(), out }
                }
                Op::BatchNorm { epsilon } => {
                    if n.inputs.len() < 5 {
                        return Err(Error::node(&n.name, "BatchNormalization needs 5 inputs"));
                    }
                    let gamma = param(&mut m, &n.name, &n.inputs[1], false)?;
                    let beta = param(&mut m, &n.name, &n.inputs[2], false)?;
                    let mut buf = |name: &str| -> Result<usize> {
                        let t = g
                            .initializers
                            .get(name)
                            .and_then(|t| t.as_f32())
                            .ok_or_else(|| Error::node(&n.name, format!("'{name}' is not a float constant")))?;
                        m.buffers.push((name.into(), t1(t.to_vec(), device)));
                        Ok(m.buffers.len() - 1)
                    };
                    let mean = buf(&n.inputs[3])?;
                    let var = buf(&n.inputs[4])?;
                    Step::Bn { x: x(), gamma, beta, mean, var, eps: *epsilon, out }
                }
                Op::Relu => Step::Act { x: x(), act: Act::Relu, out },
                Op::Clip { .. } => {
                    let act = lowbit_core::passes::as_activation(g, n)
                        .ok_or_else(|| Error::node(&n.name, "Clip bounds must be constants"))?;
                    Step::Act { x: x(), act, out }
                }
                Op::HardSwish => Step::Act { x: x(), act: Act::HardSwish, out },
                Op::HardSigmoid { alpha, beta } => {
                    Step::Act { x: x(), act: Act::HardSigmoid { alpha: *alpha, beta: *beta }, out }
                }
                Op::Add => Step::Add { a: x(), b: n.inputs[1].clone(), out },
                Op::GlobalAveragePool => Step::Gap { x: x(), out },
                Op::Flatten { axis } if *axis == 1 => Step::Flatten { x: x(), out },
                Op::Reshape { .. } => Step::Flatten { x: x(), out },
                Op::Identity => Step::Act { x: x(), act: Act::None, out },
                Op::Gemm { alpha, beta, trans_a: false, trans_b, act } => {
                    let w = param(&mut m, &n.name, &n.inputs[1], true)?;
                    let b = match n.input(2) {
                        Some(b) => Some(param(&mut m, &n.name, b, false)?),
                        None => None,
                    };
                    Step::Gemm { x: x(), w, b, trans_b: *trans_b, alpha: *alpha, beta: *beta, act: *act, out }
                }
                Op::MaxPool(p) => Step::MaxPool { x: x(), attrs: p.clone(), out },
                Op::AveragePool(p) => Step::AvgPool { x: x(), attrs: p.clone(), out },
                other => {
                    return Err(Error::node(&n.name, format!("{} is not supported by training", other.op_type())));
                }
            };
            m.steps.push((n.name.clone(), step));
        }
        Ok(m)
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Makes every parameter a gradient leaf (call after building and after each update).
    pub fn require_grad(&mut self) {
        for p in &mut self.params {
            p.t = p.t.clone().autodiff().detach().require_grad();
        }
    }

    /// Stops tracking gradients (for evaluation: no autodiff graph is recorded, so nothing is
    /// retained). [`Model::require_grad`] turns tracking back on.
    pub fn detach_all(&mut self) {
        for p in &mut self.params {
            p.t = p.t.clone().inner();
        }
        for b in &mut self.buffers {
            b.1 = b.1.clone().inner();
        }
    }

    /// Adds a parameter (for quantizers) and returns its index.
    pub fn add_param(&mut self, name: &str, v: Vec<f32>) -> usize {
        let shape = vec![v.len()];
        self.params.push(Param { name: name.into(), shape, t: t1(v, &self.device), decay: false });
        self.params.len() - 1
    }

    /// Keeps quantizer parameters valid after an update: steps positive, DSQ's alpha in
    /// `[1e-3, 0.5]`.
    pub fn after_step(&mut self) {
        let mut fix: Vec<(usize, f32, f32)> = vec![];
        for q in self.weight_q.values().chain(self.act_q.values()) {
            fix.push((q.step, 1e-8, f32::MAX));
            if let Some(a) = q.alpha {
                fix.push((a, 1e-3, 0.5));
            }
        }
        for (i, lo, hi) in fix {
            let t = self.params[i].t.clone().inner().clamp(lo, hi);
            self.params[i].t = Tensor::from_inner(t).require_grad();
        }
    }

    /// Compute layers (Conv/Gemm) in order: (node name, weight parameter index, output channels).
    pub fn compute_layers(&self) -> Vec<(String, usize, usize)> {
        self.steps
            .iter()
            .filter_map(|(name, s)| match s {
                Step::Conv { w, .. } => Some((name.clone(), *w, self.params[*w].shape[0])),
                Step::Gemm { w, trans_b, .. } => {
                    let sh = &self.params[*w].shape;
                    Some((name.clone(), *w, if *trans_b { sh[0] } else { sh[1] }))
                }
                _ => None,
            })
            .collect()
    }

    fn quantize<const D: usize>(&self, x: Tensor<D>, q: &Quantizer, axis: Option<usize>) -> Tensor<D> {
        let shape = |len: usize| -> [usize; D] {
            let mut s = [1usize; D];
            if let Some(a) = axis {
                s[a] = len;
            }
            s
        };
        let bc = |i: usize| -> Tensor<D> {
            let p = &self.params[i];
            p.t.clone().reshape(shape(p.shape[0]))
        };
        match q.method {
            QatMethod::Ste if crate::conv::burn_ops("fq") => fq::ste(x, bc(q.step), q.range),
            QatMethod::Lsq if crate::conv::burn_ops("fq") => fq::lsq(x, bc(q.step), q.range, q.grad_scale),
            QatMethod::Pact if crate::conv::burn_ops("fq") => fq::pact(x, bc(q.step), q.range),
            QatMethod::Ste | QatMethod::Lsq | QatMethod::Pact => {
                let kind = match q.method {
                    QatMethod::Ste => Kind::Ste,
                    QatMethod::Lsq => Kind::Lsq,
                    _ => Kind::Pact,
                };
                let s = self.params[q.step].t.clone();
                crate::fqop::fake_quant(x, s, kind, q.range, q.grad_scale, axis)
            }
            QatMethod::Dsq if crate::conv::burn_ops("dsq") => {
                let a = bc(q.alpha.expect("DSQ quantizer has alpha")).clamp(1e-3, 0.5);
                fq::dsq(x, bc(q.step), a, q.range, q.grad_scale)
            }
            QatMethod::Dsq => {
                let a = self.params[q.alpha.expect("DSQ quantizer has alpha")].t.clone();
                crate::dsq::dsq(x, self.params[q.step].t.clone(), a, q.range, q.grad_scale, axis)
            }
        }
    }

    fn weight<const D: usize>(&self, i: usize, axis: usize) -> Tensor<D> {
        let p = &self.params[i];
        let mut s = [1usize; D];
        s.copy_from_slice(&p.shape[..D]);
        if let Some(r) = self.soft_round.get(&i) {
            return r.weight(self.params[r.v].t.clone()).reshape(s);
        }
        let w: Tensor<D> = p.t.clone().reshape(s);
        match self.weight_q.get(&i) {
            Some(q) => self.quantize(w, q, (q.channels > 1).then_some(axis)),
            None => w,
        }
    }

    /// A bias, fake-quantized as deployed (int32 with scale `s_x * s_w`, straight-through) when
    /// the layer's weight and input are quantized.
    fn bias(&self, b: usize, w: usize, x: &str) -> Tensor<1> {
        let bt = self.params[b].t.clone();
        let (Some(wq), Some(xq)) = (self.weight_q.get(&w), self.act_q.get(x)) else { return bt };
        let sx = self.params[xq.step].t.clone().detach();
        let sx = if xq.method == QatMethod::Pact { sx.div_scalar(xq.range.qmax - xq.range.zp) } else { sx };
        let sw = self.params[wq.step].t.clone().detach();
        let n = self.params[b].shape[0];
        let s = if sw.dims()[0] == n { sw * sx } else { (sw * sx).expand([n]) };
        fq::round_pass(bt / s.clone()) * s
    }

    fn vec_param<const D: usize>(&self, i: usize, axis: usize) -> Tensor<D> {
        let p = &self.params[i];
        let mut s = [1usize; D];
        s[axis] = p.shape.iter().product();
        p.t.clone().reshape(s)
    }

    fn act_q(&self, name: &str, v: V) -> V {
        match self.act_q.get(name) {
            None => v,
            Some(q) => match &self.qdrop {
                None => v.map(|t| self.quantize(t, q, None), |t| self.quantize(t, q, None)),
                Some(d) => v.map(
                    |t| d.mix(t.clone(), self.quantize(t, q, None)),
                    |t| d.mix(t.clone(), self.quantize(t, q, None)),
                ),
            },
        }
    }

    /// Runs the model. `train`: BatchNorm uses batch statistics and updates its running ones.
    pub fn forward(&mut self, x: Tensor<4>, train: bool) -> Result<Tensor<2>> {
        self.forward_values(x, train, false).map(|r| r.0)
    }

    /// [`Model::forward`], also returning every value computed when `keep` is set (for
    /// debugging and tests).
    pub fn forward_values(&mut self, x: Tensor<4>, train: bool, keep: bool) -> Result<(Tensor<2>, HashMap<String, V>)> {
        let mut vals: HashMap<String, V> = HashMap::new();
        let input = self.input.clone();
        vals.insert(input.clone(), self.act_q(&input, V::T4(x)));
        self.run_steps(&mut vals, 0..self.steps.len(), train)?;
        let out = vals
            .remove(&self.output)
            .ok_or_else(|| Error::Invalid(format!("output '{}' not computed", self.output)))?;
        let out = out.t2(&self.output)?;
        Ok((out, if keep { vals } else { HashMap::new() }))
    }

    /// The first output of node `name`.
    pub fn graph_node_output(&self, name: &str) -> Option<String> {
        self.graph.nodes.iter().find(|n| n.name == name).and_then(|n| n.outputs.first().cloned())
    }

    pub fn is_batchnorm(&self, name: &str) -> bool {
        self.steps.iter().any(|(n, s)| n == name && matches!(s, Step::Bn { .. }))
    }

    /// The graph with every parameter and running statistic replaced by its trained value.
    pub fn to_graph(&self) -> Graph {
        let mut g = self.graph.clone();
        for p in &self.params {
            if let Some(t) = g.initializers.get_mut(&p.name) {
                *t = lowbit_core::Tensor::f32(p.shape.clone(), host(&p.t));
            }
        }
        for (name, t) in &self.buffers {
            if let Some(dst) = g.initializers.get_mut(name) {
                let v = host(t);
                *dst = lowbit_core::Tensor::f32(vec![v.len()], v);
            }
        }
        g
    }
}

#[path = "model_init.rs"]
mod init;

#[path = "model_bin.rs"]
mod bin;

#[path = "model_fwd.rs"]
mod fwd;

fn apply_act<const D: usize>(t: Tensor<D>, act: Act) -> Tensor<D> {
    match act {
        Act::None => t,
        Act::Relu => crate::unary::relu(t),
        Act::Clip { lo, hi } if !crate::conv::burn_ops("clip") => {
            crate::unary::unary(t, crate::unary::Unary::Clip { lo, hi })
        }
        Act::Clip { lo, hi } => t.clamp(lo, hi),
        Act::HardSigmoid { alpha, beta } => t.mul_scalar(alpha).add_scalar(beta).clamp(0.0, 1.0),
        Act::HardSwish => t.clone() * t.div_scalar(6.0).add_scalar(0.5).clamp(0.0, 1.0),
    }
}
