//! Choosing the activation-range method automatically: build the QDQ model with each candidate
//! method from the same calibration statistics, score each against the float model on the
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
    pub agreement: f64,
    pub kl: f64,
}

/// The methods `auto` tries.
pub fn default_candidates() -> Vec<Method> {
    vec![Method::Mse, Method::Percentile(0.9999), Method::Percentile(0.99999), Method::MinMax, Method::Entropy]
}

/// Builds and scores every candidate; returns the best model and all scores (best first).
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
    for &m in candidates {
        let cfg = QdqConfig { method: m, ..base.clone() };
        let q = build_qdq(canon, stats, &cfg)?;
        let mut qc = Classifier::new(q.graph.clone(), image_shape.to_vec(), threads);
        let r = evaluate(&mut qc, Some(&mut float), data, n, None, 100, &mut |_| {})?;
        let ag = r.agreement.unwrap_or_default();
        let c = Candidate { method: m, agreement: ag.top1, kl: ag.kl };
        let better = match &best {
            None => true,
            Some((_, b)) => c.agreement > b.agreement || (c.agreement == b.agreement && c.kl < b.kl),
        };
        all.push(c.clone());
        if better {
            best = Some((q, c));
        }
    }
    all.sort_by(|a, b| b.agreement.partial_cmp(&a.agreement).unwrap().then(a.kl.partial_cmp(&b.kl).unwrap()));
    Ok((best.expect("at least one candidate").0, all))
}
