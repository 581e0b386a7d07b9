//! Setting a [`Dms`] search up on a [`Model`] and reading it back, and the binary cost of a
//! model: the half of [`crate::dms`] that needs the model (kept apart so that `model`, which runs
//! the search's masks, and the search do not import each other).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::dms::{CostTerm, Dms, Groups, Searched, Side, GAIN};
use crate::model::{host, Model};
use crate::{Error, Result};

/// The cost terms of the binary convolutions of `model` (after one forward, which records the
/// value sizes), with `gr` the groups of its graph. `ops`: multiply-accumulates, else weights.
pub fn cost_terms(model: &Model, gr: &Groups, ops: bool) -> Result<Vec<CostTerm>> {
    let mut terms = vec![];
    for (name, w, cout) in model.compute_layers() {
        if !model.binary.contains_key(&w) {
            continue;
        }
        let sh = &model.params[w].shape;
        let out = model.graph_node_output(&name).unwrap_or_default();
        let size = *model
            .value_sizes
            .get(&out)
            .ok_or_else(|| Error::node(&name, "output size unknown (run a forward first)"))?;
        let hw = size / cout.max(1);
        let k2 = (sh[2] * sh[3]) as f64;
        terms.push(CostTerm {
            conv: name.clone(),
            input: gr.input_group.get(&name).map_or(Side::Fixed(sh[1]), |&g| Side::Group(g)),
            output: gr.output_group.get(&name).map_or(Side::Fixed(sh[0]), |&g| Side::Group(g)),
            per_pair: if ops { k2 * hw as f64 } else { k2 },
        });
    }
    Ok(terms)
}

/// A trained binary model's binary multiply-accumulates per image and binary weights (after a
/// forward, which records the value sizes).
pub fn binary_cost(model: &Model) -> (f64, f64) {
    let (mut macs, mut weights) = (0f64, 0f64);
    for (name, w, cout) in model.compute_layers() {
        if model.binary.contains_key(&w) {
            let n = model.params[w].shape.iter().product::<usize>() as f64;
            let out = model.graph_node_output(&name).unwrap_or_default();
            let hw = model.value_sizes.get(&out).map_or(0, |s| s / cout.max(1));
            weights += n;
            macs += n * hw as f64;
        }
    }
    (macs, weights)
}

impl Dms {
    /// Attaches a search over `search` (group index, candidate widths) to `model`, whose graph is
    /// the supernet (every searched group at its largest candidate) with groups `gr`; `terms` from
    /// [`cost_terms`] on the base widths' group indices; `start`: the initial location (candidate
    /// index, fractional) per searched group.
    pub fn attach(
        model: &mut Model,
        gr: &Groups,
        search: Vec<(usize, Vec<usize>)>,
        start: &[f32],
        terms: Vec<CostTerm>,
        budget: f64,
        lambda: f32,
    ) -> Result<()> {
        let mut searched = vec![];
        for ((group, widths), &s) in search.into_iter().zip(start) {
            let k = widths.len();
            if k < 2 || widths.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::Invalid(format!("group {group}: candidate widths {widths:?} must rise")));
            }
            // μ = (K-1)·σ(G·θ) = s.
            let p = (s / (k - 1) as f32).clamp(1e-3, 1.0 - 1e-3);
            let theta = model.add_param(&format!("dms.theta.{group}"), vec![(p / (1.0 - p)).ln() / GAIN]);
            searched.push(Searched { group, widths, theta });
        }
        let groups: std::collections::HashSet<usize> = searched.iter().map(|s| s.group).collect();
        let mut mask_values = HashMap::new();
        for (node, &gi) in &gr.output_group {
            if groups.contains(&gi) && model.is_batchnorm(node) {
                mask_values.insert(model.graph_node_output(node).unwrap_or_default(), gi);
            }
        }
        let mut mask_weights = HashMap::new();
        for (name, w, _) in model.compute_layers() {
            if let Some(&gi) = gr.input_group.get(&name).filter(|g| groups.contains(g)) {
                if model.binary.contains_key(&w) {
                    mask_weights.insert(w, gi);
                }
            }
        }
        model.dms = Some(Dms {
            searched,
            terms,
            budget,
            lambda,
            fixed: gr
                .groups
                .iter()
                .enumerate()
                .filter(|(i, _)| !groups.contains(i))
                .map(|(i, g)| (i, g.base))
                .collect(),
            mask_values,
            mask_weights,
            penalty: None,
            history: Mutex::new(vec![]),
        });
        Ok(())
    }

    /// The location `μ` (candidate index units) of every searched group.
    pub fn locations(&self, model: &Model) -> Vec<f32> {
        self.searched
            .iter()
            .map(|s| {
                let th = host(&model.params[s.theta].t)[0];
                (s.widths.len() - 1) as f32 / (1.0 + (-GAIN * th).exp())
            })
            .collect()
    }

    /// The candidate nearest each location: the found widths.
    pub fn chosen(&self, model: &Model) -> Vec<usize> {
        let k = |i: usize| self.searched[i].widths.len() - 1;
        self.locations(model).iter().enumerate().map(|(i, m)| (m.round().max(0.0) as usize).min(k(i))).collect()
    }
}
