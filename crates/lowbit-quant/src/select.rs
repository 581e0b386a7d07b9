//! Choosing the activation-range method (and whether to correct biases) automatically: build the
//! QDQ model with each candidate from the same calibration statistics, score each against the float model on the
//! calibration images (top-1 agreement, then KL of the logits), keep the best.

use lowbit_core::{Graph, Result};
use lowbit_runtime::classify::{evaluate, Classifier};

use crate::calibrate::Stats;
use crate::observer::Method;
use crate::qdq::{build_qdq, QdqConfig, QdqModel};

/// One candidate's score.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub method: Method,
    pub bias_correction: bool,
    pub agreement: f64,
    pub kl: f64,
}

/// The methods `auto` tries.
pub fn default_candidates() -> Vec<Method> {
    vec![Method::Mse, Method::Percentile(0.9999), Method::Percentile(0.99999), Method::MinMax, Method::Entropy]
}

/// Builds and scores every candidate; returns the chosen model and all scores (chosen first).
#[allow(clippy::too_many_arguments)]
pub fn choose_method(
    canon: &Graph,
    stats: &Stats,
    base: &QdqConfig,
    candidates: &[Method],
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    threads: usize,
) -> Result<(QdqModel, Vec<Candidate>)> {
    let mut float = Classifier::new(canon.clone(), image_shape.to_vec(), threads);
    let mut best: Option<(QdqModel, Candidate)> = None;
    let mut all = vec![];
    let variants: Vec<(Method, bool)> = candidates.iter().flat_map(|&m| [(m, true), (m, false)]).collect();
    for (m, bc) in variants {
        let cfg = QdqConfig { method: m, bias_correction: bc, ..base.clone() };
        let q = build_qdq(canon, stats, &cfg)?;
        let mut qc = Classifier::new(q.graph.clone(), image_shape.to_vec(), threads);
        let r = evaluate(&mut qc, Some(&mut float), data, n, None, 100, &mut |_| {})?;
        let ag = r.agreement.unwrap_or_default();
        let c = Candidate { method: m, bias_correction: bc, agreement: ag.top1, kl: ag.kl };
        // Ties in agreement go to the lower KL, but only when clearly lower (2%): otherwise the
        // earlier candidate (the list is ordered by how well each method does on average) stays.
        let better = match &best {
            None => true,
            Some((_, b)) => c.agreement > b.agreement || (c.agreement == b.agreement && c.kl < b.kl * 0.98),
        };
        all.push(c.clone());
        if better {
            best = Some((q, c));
        }
    }
    let (q, chosen) = best.expect("at least one candidate");
    all.sort_by(|a, b| b.agreement.partial_cmp(&a.agreement).unwrap().then(a.kl.partial_cmp(&b.kl).unwrap()));
    // The chosen candidate first.
    if let Some(i) = all.iter().position(|c| c.method == chosen.method && c.bias_correction == chosen.bias_correction) {
        let c = all.remove(i);
        all.insert(0, c);
    }
    Ok((q, all))
}
