//! Per-layer sensitivity and greedy mixed precision.
//!
//! Sensitivity of a layer: quantize only that layer (its weights and the activations around it),
//! keep the rest in float, and measure the damage on scoring images: the drop in top-1 accuracy
//! (labelled data) or in agreement with float (unlabelled), and the SQNR of the logits.
//! Mixed precision: start with every layer at the target width and, most sensitive first, raise
//! layers to the higher width until the drop is within the budget.

use std::collections::HashSet;

use lowbit_core::{Graph, Result};
use lowbit_runtime::classify::{argmax, Classifier};

use crate::calibrate::Stats;
use crate::qdq::{build_qdq, QdqConfig, QdqModel};

/// Images (and optional labels) used to score candidates.
pub struct ScoreSet<'a> {
    pub image_shape: &'a [usize],
    pub data: &'a [f32],
    pub n: usize,
    pub labels: Option<&'a [u32]>,
    pub threads: usize,
}

/// Float reference logits for a score set.
pub struct Reference {
    logits: Vec<Vec<f32>>,
    /// Float top-1 accuracy (labelled) or 1.0 (agreement with itself).
    pub score: f64,
}

impl Reference {
    pub fn new(canon: &Graph, s: &ScoreSet) -> Result<Reference> {
        let logits = logits(canon, s)?;
        let score = match s.labels {
            Some(l) => (0..s.n).filter(|&i| argmax(&logits[i]) as u32 == l[i]).count() as f64 / s.n as f64,
            None => 1.0,
        };
        Ok(Reference { logits, score })
    }
}

fn logits(g: &Graph, s: &ScoreSet) -> Result<Vec<Vec<f32>>> {
    let mut c = Classifier::new(g.clone(), s.image_shape.to_vec(), s.threads);
    let per: usize = s.image_shape.iter().product();
    let mut out = Vec::with_capacity(s.n);
    let mut start = 0;
    while start < s.n {
        let len = 100.min(s.n - start);
        out.extend(c.logits(&s.data[start * per..(start + len) * per], len)?);
        start += len;
    }
    Ok(out)
}

/// (score, SQNR in dB of the logits against float) of a quantized graph.
pub fn score(g: &Graph, s: &ScoreSet, r: &Reference) -> Result<(f64, f64)> {
    let q = logits(g, s)?;
    let sc = match s.labels {
        Some(l) => (0..s.n).filter(|&i| argmax(&q[i]) as u32 == l[i]).count() as f64 / s.n as f64,
        None => (0..s.n).filter(|&i| argmax(&q[i]) == argmax(&r.logits[i])).count() as f64 / s.n as f64,
    };
    let (mut sig, mut noise) = (0f64, 0f64);
    for (a, b) in q.iter().zip(&r.logits) {
        for (&x, &y) in a.iter().zip(b) {
            sig += (y as f64).powi(2);
            noise += (x as f64 - y as f64).powi(2);
        }
    }
    let sqnr = if noise > 0.0 { 10.0 * (sig / noise).log10() } else { f64::INFINITY };
    Ok((sc, sqnr))
}

/// One layer's sensitivity.
#[derive(Clone, Debug)]
pub struct LayerSensitivity {
    pub node: String,
    pub params: usize,
    /// Drop in percentage points when only this layer is quantized.
    pub drop_pp: f64,
    pub sqnr_db: f64,
}

/// Sensitivity of every quantizable layer at `cfg`'s widths, most sensitive (lowest SQNR) first.
pub fn layer_sensitivity(
    canon: &Graph,
    stats: &Stats,
    cfg: &QdqConfig,
    s: &ScoreSet,
    r: &Reference,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerSensitivity>> {
    let all = build_qdq(canon, stats, cfg)?;
    let layers: Vec<(String, usize)> =
        all.layers.iter().filter(|l| l.weight_bits.is_some()).map(|l| (l.node.clone(), l.params)).collect();
    let mut out = vec![];
    for (i, (node, params)) in layers.iter().enumerate() {
        let keep: HashSet<String> = layers.iter().filter(|(n, _)| n != node).map(|(n, _)| n.clone()).collect();
        let q = build_qdq(canon, stats, &QdqConfig { keep_float: keep, ..cfg.clone() })?;
        let (sc, sqnr) = score(&q.graph, s, r)?;
        out.push(LayerSensitivity {
            node: node.clone(),
            params: *params,
            drop_pp: (r.score - sc) * 100.0,
            sqnr_db: sqnr,
        });
        progress(i + 1, layers.len());
    }
    // Most sensitive first by logit SQNR: continuous, so it ranks layers that a few hundred images
    // cannot separate by accuracy.
    out.sort_by(|a, b| a.sqnr_db.partial_cmp(&b.sqnr_db).unwrap_or(std::cmp::Ordering::Equal));
    Ok(out)
}

/// Result of the mixed-precision search.
pub struct MixedPrecision {
    pub model: QdqModel,
    /// Layers raised to the higher width, in the order they were raised.
    pub raised: Vec<String>,
    pub drop_pp: f64,
    pub within_budget: bool,
}

/// Greedy search: raise the most sensitive layers (by `sens`) to `high_bits` weights until the
/// drop on `s` is at most `max_drop_pp`.
pub fn mixed_precision(
    canon: &Graph,
    stats: &Stats,
    cfg: &QdqConfig,
    high_bits: u8,
    sens: &[LayerSensitivity],
    max_drop_pp: f64,
    s: &ScoreSet,
    r: &Reference,
) -> Result<MixedPrecision> {
    let mut cfg = cfg.clone();
    let mut raised = vec![];
    loop {
        let q = build_qdq(canon, stats, &cfg)?;
        let (sc, _) = score(&q.graph, s, r)?;
        let drop = (r.score - sc) * 100.0;
        let next = sens.iter().find(|l| !raised.contains(&l.node));
        if drop <= max_drop_pp || next.is_none() {
            return Ok(MixedPrecision { model: q, raised, drop_pp: drop, within_budget: drop <= max_drop_pp });
        }
        let n = next.unwrap().node.clone();
        cfg.weight_bits_for.insert(n.clone(), high_bits);
        raised.push(n);
    }
}
