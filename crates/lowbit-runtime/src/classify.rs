//! Running image classifiers over many images and scoring them: top-1/top-5 against labels, and
//! agreement with a reference model (top-1 agreement, top-5 overlap, cosine and KL of logits).

use std::collections::HashMap;

use lowbit_core::{Error, Graph, Result, Tensor};

use crate::{Plan, PlanOptions};

/// A model with one image input, compiled lazily per batch size.
pub struct Classifier {
    graph: Graph,
    image_shape: Vec<usize>,
    threads: usize,
    plans: HashMap<usize, Plan>,
}

impl Classifier {
    /// `image_shape` is one image's shape (e.g. `[1, 28, 28]`).
    pub fn new(graph: Graph, image_shape: Vec<usize>, threads: usize) -> Classifier {
        Classifier { graph, image_shape, threads, plans: HashMap::new() }
    }

    pub fn plan(&mut self, batch: usize) -> Result<&mut Plan> {
        if !self.plans.contains_key(&batch) {
            let mut s = vec![batch];
            s.extend(&self.image_shape);
            let p = Plan::compile(&self.graph, &[s], &PlanOptions { threads: self.threads, ..Default::default() })?;
            self.plans.insert(batch, p);
        }
        Ok(self.plans.get_mut(&batch).unwrap())
    }

    /// Logits (first output), one row per image of `data` (`n` images).
    pub fn logits(&mut self, data: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let mut s = vec![n];
        s.extend(&self.image_shape);
        let x = Tensor::f32(s, data.to_vec());
        let out = self.plan(n)?.run(&[x])?;
        let t = &out[0];
        let v = t
            .as_f32()
            .ok_or_else(|| Error::Invalid(format!("model output is {}, expected float32", t.dtype().name())))?;
        if n == 0 || t.shape.first() != Some(&n) {
            return Err(Error::Invalid(format!("model output shape {:?} is not [{n}, classes]", t.shape)));
        }
        if v.is_empty() {
            return Err(Error::Invalid(format!("model output shape {:?} has 0 classes", t.shape)));
        }
        Ok(v.chunks(v.len() / n).map(|c| c.to_vec()).collect())
    }
}

/// Agreement of a model with a reference model on the same images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Share of images where both predict the same class.
    pub top1: f64,
    /// Share of images whose reference top-1 class is in the model's top 5.
    pub top5: f64,
    /// Mean cosine similarity of the logit vectors.
    pub cosine: f64,
    /// Mean KL(reference softmax || model softmax).
    pub kl: f64,
}

/// Scores of one evaluation run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalReport {
    pub images: usize,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub agreement: Option<Agreement>,
    pub predictions: Vec<usize>,
}

pub fn argmax(v: &[f32]) -> usize {
    topk(v, 1)[0]
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn topk(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// KL(softmax(reference) || softmax(logits)), in nats.
pub fn kl_divergence(reference: &[f32], logits: &[f32]) -> f64 {
    let (p, q) = (softmax(reference), softmax(logits));
    p.iter().zip(&q).map(|(&p, &q)| if p > 0.0 { p * (p / q.max(1e-30)).ln() } else { 0.0 }).sum()
}

/// Evaluates `model` on `n` images (`data` holds them back to back). With `labels`, top-1/top-5;
/// with `reference`, agreement. `progress` is called with the number of images done.
pub fn evaluate(
    model: &mut Classifier,
    mut reference: Option<&mut Classifier>,
    data: &[f32],
    n: usize,
    labels: Option<&[u32]>,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalReport> {
    let per = data.len() / n.max(1);
    let batch = batch.max(1);
    let (mut c1, mut c5) = (0usize, 0usize);
    let mut ag = Agreement::default();
    let mut r = EvalReport { images: n, ..Default::default() };
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let chunk = &data[start * per..(start + len) * per];
        let logits = model.logits(chunk, len)?;
        let refl = match reference.as_deref_mut() {
            Some(m) => Some(m.logits(chunk, len)?),
            None => None,
        };
        if let Some(rl) = &refl {
            if let (Some(a), Some(b)) = (logits.first(), rl.first()) {
                if a.len() != b.len() {
                    return Err(Error::Invalid(format!(
                        "the model has {} classes but the reference model has {}; they cannot be compared",
                        a.len(),
                        b.len()
                    )));
                }
            }
        }
        for (i, row) in logits.iter().enumerate() {
            let top = topk(row, 5);
            r.predictions.push(top[0]);
            if let Some(l) = labels {
                let y = *l.get(start + i).ok_or_else(|| Error::Invalid(format!("no label for image {}", start + i)))?
                    as usize;
                if y >= row.len() {
                    return Err(Error::Invalid(format!(
                        "image {} has label {y} but the model has only {} classes",
                        start + i,
                        row.len()
                    )));
                }
                c1 += (top[0] == y) as usize;
                c5 += top.contains(&y) as usize;
            }
            if let Some(rl) = &refl {
                let rr = &rl[i];
                let rt = argmax(rr);
                ag.top1 += (rt == top[0]) as usize as f64;
                ag.top5 += top.contains(&rt) as usize as f64;
                let dot: f64 = row.iter().zip(rr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let na: f64 = row.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = rr.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
                ag.cosine += if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 0.0 };
                ag.kl += kl_divergence(rr, row);
            }
        }
        start += len;
        progress(start);
    }
    if labels.is_some() {
        r.top1 = Some(c1 as f64 / n as f64);
        r.top5 = Some(c5 as f64 / n as f64);
    }
    if reference.is_some() {
        let k = n as f64;
        r.agreement = Some(Agreement { top1: ag.top1 / k, top5: ag.top5 / k, cosine: ag.cosine / k, kl: ag.kl / k });
    }
    Ok(r)
}
