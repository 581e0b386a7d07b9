//! [`Model`]'s forward pass, step by step (a child module of `model`): the whole model
//! ([`Model::forward_values`]) or a range of steps from a given value ([`Model::forward_range`],
//! block reconstruction).

use std::collections::HashMap;
use std::ops::Range;

use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::Tensor;
use lowbit_core::shape::window;

use super::{apply_act, Model, Step, V};
use crate::{Error, Result};

impl Model {
    /// Runs steps `range` (node order) on the values in `vals`, adding what they compute.
    pub(super) fn run_steps(&mut self, vals: &mut HashMap<String, V>, range: Range<usize>, train: bool) -> Result<()> {
        let mut updates: Vec<(usize, Tensor<1>)> = vec![];
        let mut sizes: Vec<(String, usize)> = vec![];
        let masks = self.dms.as_mut().map(|d| {
            let theta: Vec<Tensor<1>> = d.searched.iter().map(|s| self.params[s.theta].t.clone()).collect();
            d.masks(&theta, self.progress, train)
        });
        let dms = self.dms.as_ref().zip(masks.as_ref());
        for (name, step) in &self.steps[range] {
            let get = |v: &str| -> Result<V> {
                vals.get(v).cloned().ok_or_else(|| Error::node(name, format!("input '{v}' is not computed")))
            };
            let (out, val) = match step {
                Step::Conv { x, w, b, attrs, out } => {
                    let xt = get(x)?.t4(name)?;
                    let [_, _, h, wd] = xt.dims();
                    let bin = self.binary.get(w).copied();
                    let (xt, wt): (Tensor<4>, Tensor<4>) = match bin {
                        Some(b) => {
                            let mask = dms.and_then(|(d, m)| d.weight_mask(*w, m));
                            (self.binarize(xt, b), self.binary_weight(*w, b, mask))
                        }
                        None => (xt, self.weight(*w, 0)),
                    };
                    let ks = &self.params[*w].shape;
                    let win = window(
                        &[h, wd],
                        &[ks[2], ks[3]],
                        &attrs.strides,
                        &attrs.dilations,
                        &attrs.pads,
                        attrs.auto_pad,
                        false,
                    )
                    .map_err(|e| Error::node(name, e.to_string()))?;
                    let opts = ConvOptions {
                        stride: [win.strides[0], win.strides[1]],
                        padding: [(win.pads_begin[0], win.pads_end[0]), (win.pads_begin[1], win.pads_end[1])],
                        dilation: [win.dilations[0], win.dilations[1]],
                        groups: attrs.group.max(1),
                    };
                    let bt = b.map(|b| self.bias(b, *w, x));
                    let y = match self.int8.get(w) {
                        Some(l) if crate::conv8::supports(&opts, &wt.dims()) => {
                            crate::conv8::conv2d(xt, wt, bt, opts, l.clone())
                        }
                        _ => crate::conv_dw::conv2d(xt, wt, bt, opts),
                    };
                    (out, V::T4(apply_act(y, attrs.act)))
                }
                Step::Bn { x, gamma, beta, mean, var, eps, out } => {
                    let xt = get(x)?.t4(name)?;
                    let [n, c, h, w] = xt.dims();
                    let y = if train && crate::conv::burn_ops("bn") {
                        let mu = xt.clone().mean_dim(0).mean_dim(2).mean_dim(3);
                        let d = xt - mu.clone();
                        let v = d.clone().square().mean_dim(0).mean_dim(2).mean_dim(3);
                        let cnt = (n * h * w) as f32;
                        let mom = self.bn_momentum;
                        let m1: Tensor<1> = mu.detach().reshape([c]);
                        let v1: Tensor<1> = v.clone().detach().reshape([c]).mul_scalar(cnt / (cnt - 1.0).max(1.0));
                        updates.push((*mean, self.buffers[*mean].1.clone().mul_scalar(1.0 - mom) + m1.mul_scalar(mom)));
                        updates.push((*var, self.buffers[*var].1.clone().mul_scalar(1.0 - mom) + v1.mul_scalar(mom)));
                        let (g4, b4): (Tensor<4>, Tensor<4>) = (self.vec_param(*gamma, 1), self.vec_param(*beta, 1));
                        d * (v.add_scalar(*eps).sqrt().recip() * g4) + b4
                    } else if train {
                        let st = crate::bn::batch_stats(&xt);
                        let cnt = (n * h * w) as f32;
                        let mom = self.bn_momentum;
                        let m1: Tensor<1> = st.clone().narrow(0, 0, 1).reshape([c]);
                        let v1: Tensor<1> =
                            st.clone().narrow(0, 1, 1).reshape([c]).mul_scalar(cnt / (cnt - 1.0).max(1.0));
                        updates.push((*mean, self.buffers[*mean].1.clone().mul_scalar(1.0 - mom) + m1.mul_scalar(mom)));
                        updates.push((*var, self.buffers[*var].1.clone().mul_scalar(1.0 - mom) + v1.mul_scalar(mom)));
                        let (g1, b1) = (self.vec_param(*gamma, 0), self.vec_param(*beta, 0));
                        crate::bn::batch_norm_train(xt, g1, b1, st, *eps)
                    } else {
                        let g4: Tensor<4> = self.vec_param(*gamma, 1);
                        let b4: Tensor<4> = self.vec_param(*beta, 1);
                        let rm: Tensor<4> = self.buffers[*mean].1.clone().reshape([1, c, 1, 1]);
                        let rv: Tensor<4> = self.buffers[*var].1.clone().reshape([1, c, 1, 1]);
                        let k = rv.add_scalar(*eps).sqrt().recip() * g4;
                        (xt - rm) * k + b4
                    };
                    (out, V::T4(y))
                }
                Step::Act { x, act, out } => {
                    let v = get(x)?;
                    (out, v.map(|t| apply_act(t, *act), |t| apply_act(t, *act)))
                }
                Step::Add { a, b, out } => {
                    let (a, b) = (get(a)?, get(b)?);
                    let v = match (a, b) {
                        (V::T4(a), V::T4(b)) => V::T4(a + b),
                        (V::T2(a), V::T2(b)) => V::T2(a + b),
                        _ => return Err(Error::node(name, "Add of a 4-D and a 2-D value")),
                    };
                    (out, v)
                }
                Step::Gap { x, out } => {
                    let t = get(x)?.t4(name)?;
                    (out, V::T4(t.mean_dim(2).mean_dim(3)))
                }
                Step::Flatten { x, out } => {
                    let v = match get(x)? {
                        V::T4(t) => {
                            let [n, c, h, w] = t.dims();
                            V::T2(t.reshape([n, c * h * w]))
                        }
                        v => v,
                    };
                    (out, v)
                }
                Step::Gemm { x, w, b, trans_b, alpha, beta, act, out } => {
                    let xt = get(x)?.t2(name)?;
                    let axis = if *trans_b { 0 } else { 1 };
                    let wt: Tensor<2> = self.weight(*w, axis);
                    let wt = if *trans_b { wt.transpose() } else { wt };
                    let mut y = xt.matmul(wt);
                    if *alpha != 1.0 {
                        y = y.mul_scalar(*alpha);
                    }
                    if let Some(b) = b {
                        let bt: Tensor<2> = self.bias(*b, *w, x).reshape([1, self.params[*b].shape[0]]);
                        y = y + if *beta != 1.0 { bt.mul_scalar(*beta) } else { bt };
                    }
                    (out, V::T2(apply_act(y, *act)))
                }
                Step::MaxPool { x, attrs, out } | Step::AvgPool { x, attrs, out } => {
                    let t = get(x)?.t4(name)?;
                    let [_, _, h, w] = t.dims();
                    let win = window(
                        &[h, w],
                        &attrs.kernel_shape,
                        &attrs.strides,
                        &attrs.dilations,
                        &attrs.pads,
                        attrs.auto_pad,
                        attrs.ceil_mode,
                    )
                    .map_err(|e| Error::node(name, e.to_string()))?;
                    let pads = [(win.pads_begin[0], win.pads_end[0]), (win.pads_begin[1], win.pads_end[1])];
                    let k = [win.kernel[0], win.kernel[1]];
                    let s = [win.strides[0], win.strides[1]];
                    let y = if matches!(step, Step::MaxPool { .. }) {
                        let mut o = MaxPoolOptions::new(k);
                        o.stride = s;
                        o.padding = pads;
                        o.dilation = [win.dilations[0], win.dilations[1]];
                        o.ceil_mode = attrs.ceil_mode;
                        max_pool2d(t, o)
                    } else {
                        let mut o = AvgPoolOptions::new(k);
                        o.stride = s;
                        o.padding = pads;
                        o.count_include_pad = attrs.count_include_pad;
                        o.ceil_mode = attrs.ceil_mode;
                        avg_pool2d(t, o)
                    };
                    (out, V::T4(y))
                }
            };
            let val = match (dms, val) {
                (Some((d, m)), V::T4(t)) => V::T4(d.mask_value(out, t, m)),
                (_, v) => v,
            };
            let val = self.act_q(out, val);
            let per = match &val {
                V::T4(t) => t.dims()[1..].iter().product::<usize>(),
                V::T2(t) => t.dims()[1],
            };
            sizes.push((out.clone(), per));
            vals.insert(out.clone(), val);
        }
        for (k, v) in sizes {
            self.value_sizes.insert(k, v);
        }
        for (i, t) in updates {
            self.buffers[i].1 = t;
        }
        Ok(())
    }

    /// Runs steps `range` from `x` as the value `input` (already quantized where the model
    /// quantizes it) and returns the last step's output. Steps may only read `input` and values
    /// computed inside the range.
    pub fn forward_range(&mut self, input: &str, x: V, range: Range<usize>, train: bool) -> Result<V> {
        let last = range.end.checked_sub(1).and_then(|i| self.steps.get(i)).map(|s| s.1.out().to_string());
        let last = last.ok_or_else(|| Error::Invalid(format!("no steps in {range:?}")))?;
        let mut vals = HashMap::new();
        vals.insert(input.to_string(), x);
        self.run_steps(&mut vals, range, train)?;
        vals.remove(&last).ok_or_else(|| Error::Invalid(format!("'{last}' not computed")))
    }

    /// The values steps `range` write.
    pub fn step_outputs(&self, range: Range<usize>) -> Vec<String> {
        self.steps[range].iter().map(|s| s.1.out().to_string()).collect()
    }

    /// `v` through the activation quantizer of value `name` (unchanged when it has none).
    pub fn quantize_value(&self, name: &str, v: V) -> V {
        self.act_q(name, v)
    }

    /// Parameter index of the bias of compute layer `node`, if it has one.
    pub fn layer_bias(&self, node: &str) -> Option<usize> {
        self.steps.iter().find(|s| s.0 == node).and_then(|s| match &s.1 {
            Step::Conv { b, .. } | Step::Gemm { b, .. } => *b,
            _ => None,
        })
    }

    /// Number of steps (one per graph node, in node order).
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }
}
