//! [`Model`]'s set-up after construction: fresh weights for training from scratch, and the
//! convolutions that train on the integer kernels (a child module of `model`, so it reads the
//! model's steps).

use super::{t1, Model, Step};
use crate::conv8::{Int8Config, Int8Layer};

impl Model {
    /// Re-initializes every weight (Kaiming normal, fan-out for convolutions, fan-in for linear
    /// layers), biases to 0, BatchNorm to identity. For training an architecture from scratch.
    pub fn reinitialize(&mut self, seed: u64) {
        let mut rng = crate::Rng::new(seed);
        let bn_gamma: std::collections::HashSet<usize> = self
            .steps
            .iter()
            .filter_map(|(_, s)| if let Step::Bn { gamma, .. } = s { Some(*gamma) } else { None })
            .collect();
        let gemm_w: std::collections::HashSet<usize> =
            self.steps.iter().filter_map(|(_, s)| if let Step::Gemm { w, .. } = s { Some(*w) } else { None }).collect();
        for (i, p) in self.params.iter_mut().enumerate() {
            let n: usize = p.shape.iter().product();
            let v: Vec<f32> = if p.decay {
                let fan = if gemm_w.contains(&i) {
                    p.shape.iter().skip(1).product::<usize>().max(1)
                } else {
                    p.shape[0] * p.shape[2..].iter().product::<usize>()
                };
                let std = if gemm_w.contains(&i) { (1.0 / fan as f32).sqrt() } else { (2.0 / fan as f32).sqrt() };
                (0..n).map(|_| rng.normal() * std).collect()
            } else if bn_gamma.contains(&i) {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            };
            p.t = t1(v, &self.device);
        }
        for (name, t) in self.buffers.iter_mut() {
            let n = t.dims()[0];
            let is_var = self.graph.nodes.iter().any(|nd| nd.input(4) == Some(name.as_str()));
            *t = t1(vec![if is_var { 1.0 } else { 0.0 }; n], &self.device);
        }
    }

    /// Runs every ungrouped or depthwise, undilated convolution on the integer training kernels of
    /// [`crate::conv8`] with `cfg`, except (unless `all`) those that read the model input (the
    /// stem). Returns the names of the int8 convolutions.
    pub fn enable_int8(&mut self, cfg: Int8Config, all: bool) -> Vec<String> {
        let mut names = vec![];
        for (name, step) in &self.steps {
            if let Step::Conv { x, w, attrs, .. } = step {
                let ws = &self.params[*w].shape;
                let depthwise = attrs.group > 1 && ws.len() == 4 && ws[1] == 1 && ws[0] == attrs.group;
                let plain = (attrs.group <= 1 || depthwise) && attrs.dilations.iter().all(|&d| d == 1);
                if plain && (all || *x != self.input) && !self.binary.contains_key(w) {
                    self.int8.insert(*w, Int8Layer::new(name, cfg, names.len()));
                    names.push(name.clone());
                }
            }
        }
        names
    }
}
