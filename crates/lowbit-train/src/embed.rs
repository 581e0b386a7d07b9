//! Embedding training for open-set recognition: the model's last fully connected layer becomes
//! a `dim`-wide embedding, and a margin-softmax head over the training identities (used only
//! while training, never exported) scores `s * cos(angle to each identity's weight vector)` with a
//! margin on the true identity:
//! - CosFace (large margin cosine): `s (cos θ_y - m)`;
//! - ArcFace (additive angular margin): `s cos(θ_y + m)`, with the usual fallback
//!   `s (cos θ_y - m sin m)` once `θ_y + m` passes π, where `cos(θ + m)` stops falling.
//!
//! **RCM** (rotation consistent margin; Wu et al., CVPR 2020) for quantization-aware training of
//! an embedding model: the quantized model should rotate each sample together with its class, so
//! a sample whose angle to its class centre grew under quantization gets a larger margin.
//! lowbit's reading of the paper's individual error for one training sample `i` of identity `y`
//! (the paper's text was not reachable here; this is the formula tested below):
//! `ε_i = θ(q_i, W_y) - θ(f_i, c_y)`, the change of the sample's angle to its class centre, with
//! `q_i` the quantized model's embedding, `W_y` the head's (quantized-side) centre, `f_i` the float
//! model's embedding and `c_y` the float class centre (normalised mean float embedding, fixed when
//! QAT starts). The margin of the true identity becomes `m + λ max(0, ε_i)`, in the margin's own
//! unit (radians for ArcFace, cosine for CosFace, where `ε_i = cos(f_i, c_y) - cos(q_i, W_y)`).
//! The extra margin is a constant per step (no gradient flows through `ε_i`).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use lowbit_core::{Dim, Graph, Op};

use crate::model::Model;
use crate::{Error, Result, Rng};

pub use crate::head::{EmbedConfig, Head, MarginKind};

/// `g` with its last layer (a Gemm writing the graph output) resized to `dim` outputs, freshly
/// initialised (normal, std `1/sqrt(fan-in)`, bias 0).
pub fn with_embedding(g: &Graph, dim: usize, seed: u64) -> Result<Graph> {
    let out = g.outputs.first().ok_or_else(|| Error::Invalid("the model has no output".into()))?.name.clone();
    let node = g
        .nodes
        .iter()
        .find(|n| n.outputs.first() == Some(&out))
        .ok_or_else(|| Error::Invalid(format!("output '{out}' is not written by a node")))?;
    let Op::Gemm { trans_a: false, trans_b, .. } = node.op else {
        return Err(Error::node(
            &node.name,
            format!(
                "embedding training replaces the last fully connected layer, but the output comes from {}",
                node.op.op_type()
            ),
        ));
    };
    let wname = node.input(1).unwrap_or_default().to_string();
    let w = g.initializers.get(&wname).filter(|t| t.shape.len() == 2).ok_or_else(|| {
        Error::node(&node.name, "embedding training needs the layer's weight as a 2-D float initializer")
    })?;
    let fan_in = if trans_b { w.shape[1] } else { w.shape[0] };
    let mut rng = Rng::new(seed ^ 0xE3BE_DD1D);
    let std = (1.0 / fan_in.max(1) as f32).sqrt();
    let v: Vec<f32> = (0..dim * fan_in).map(|_| rng.normal() * std).collect();
    let mut g2 = g.clone();
    let shape = if trans_b { vec![dim, fan_in] } else { vec![fan_in, dim] };
    let nv = if trans_b {
        v
    } else {
        // Stored [fan_in, dim]: transpose the [dim, fan_in] draw.
        (0..fan_in * dim).map(|k| v[(k % dim) * fan_in + k / dim]).collect()
    };
    g2.initializers.insert(wname, lowbit_core::Tensor::f32(shape, nv));
    if let Some(b) = node.input(2).filter(|b| !b.is_empty()) {
        g2.initializers.insert(b.to_string(), lowbit_core::Tensor::f32(vec![dim], vec![0.0; dim]));
    }
    if let Some(s) = g2.outputs[0].shape.as_mut().and_then(|s| s.last_mut()) {
        *s = Dim::Fixed(dim);
    }
    Ok(g2)
}

/// Adds the head to `model`: weights from `init` (row-major `[classes, dim]`, e.g. the float
/// class centres when QAT starts from a trained embedding model) or random.
pub fn attach(
    model: &mut Model,
    cfg: EmbedConfig,
    init: Option<Vec<f32>>,
    centres: Option<Vec<f32>>,
    seed: u64,
) -> Result<()> {
    let n = cfg.classes * cfg.dim;
    let v = match init {
        Some(v) if v.len() == n => v,
        Some(v) => return Err(Error::Invalid(format!("head init has {} values, want {n}", v.len()))),
        None => {
            let mut rng = Rng::new(seed ^ 0x4EAD);
            (0..n).map(|_| rng.normal()).collect()
        }
    };
    if cfg.rcm.is_some() && centres.as_ref().map(|c| c.len()) != Some(n) {
        return Err(Error::Invalid("RCM needs the float class centres".into()));
    }
    let param = model.add_param("lowbit.embed.head", v);
    model.params[param].shape = vec![cfg.classes, cfg.dim];
    model.head = Some(Head { cfg, param, centres });
    Ok(())
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| if n > 0.0 { x / n } else { 0.0 }).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Normalised mean of the normalised rows of `feats` (`[n, dim]`) per label: `[classes, dim]`.
pub fn class_centres(feats: &[f32], dim: usize, labels: &[u32], classes: usize) -> Vec<f32> {
    let mut s = vec![0f32; classes * dim];
    for (row, &l) in feats.chunks(dim).zip(labels) {
        if (l as usize) < classes {
            for (a, b) in s[l as usize * dim..][..dim].iter_mut().zip(unit(row)) {
                *a += b;
            }
        }
    }
    s.chunks(dim).flat_map(unit).collect()
}

/// RCM's extra margin per sample: `λ max(0, ε_i)` (see the module documentation). `cos_q`: the
/// cosine of each sample's embedding to its identity's head row; `float_feats`: the float model's
/// embeddings (`[n, dim]`).
pub fn rcm_extra(
    kind: MarginKind,
    lambda: f32,
    cos_q: &[f32],
    float_feats: &[f32],
    centres: &[f32],
    labels: &[usize],
) -> Vec<f32> {
    let dim = float_feats.len() / cos_q.len().max(1);
    cos_q
        .iter()
        .zip(float_feats.chunks(dim))
        .zip(labels)
        .map(|((&cq, f), &y)| {
            let cf = dot(&unit(f), &centres[y * dim..(y + 1) * dim]).clamp(-1.0, 1.0);
            let eps = match kind {
                MarginKind::ArcFace => cq.clamp(-1.0, 1.0).acos() - cf.acos(),
                MarginKind::CosFace => cf - cq,
            };
            lambda * eps.max(0.0)
        })
        .collect()
}

/// The margin-softmax loss of embeddings `feat` (`[n, dim]`) against head weights `w` (`[classes *
/// dim]`) for true identities `labels`. `extra` gets the cosines to every identity (host, `[n,
/// classes]`) and gives what to add to each sample's margin (RCM reads the current cosines: one
/// forward pass serves both). Returns the mean loss and those cosines (for accuracy).
pub fn margin_loss(
    feat: Tensor<2>,
    w: Tensor<1>,
    labels: &[usize],
    cfg: &EmbedConfig,
    extra: impl FnOnce(&[f32]) -> Vec<f32>,
) -> (Tensor<1>, Vec<f32>) {
    let [n, d] = feat.dims();
    let c = cfg.classes;
    let dev = feat.device();
    // sqrt(|x|^2 + eps): finite gradients for a zero embedding (clamping after the square root
    // would multiply its infinite derivative by zero).
    let fnorm = (feat.clone() * feat.clone()).sum_dim(1).add_scalar(1e-12).sqrt();
    let fu = feat / fnorm;
    let w = w.reshape([c, d]);
    let wnorm = (w.clone() * w.clone()).sum_dim(1).add_scalar(1e-12).sqrt();
    let wu = w / wnorm;
    let cos = fu.matmul(wu.transpose()).clamp(-1.0 + 1e-6, 1.0 - 1e-6);
    let host = cos.clone().into_data().try_to_vec::<f32>().unwrap_or_default();
    let extra = extra(&host);
    // logits = s (cos A - sin B - C): A = 1, B = C = 0 off the true identity.
    let (mut a, mut b, mut cc, mut onehot) =
        (vec![1f32; n * c], vec![0f32; n * c], vec![0f32; n * c], vec![0f32; n * c]);
    for (i, &y) in labels.iter().enumerate().take(n) {
        let k = i * c + y.min(c - 1);
        onehot[k] = 1.0;
        let m = cfg.margin + extra.get(i).copied().unwrap_or(0.0);
        match cfg.kind {
            MarginKind::CosFace => cc[k] = m,
            MarginKind::ArcFace => {
                if host[k].acos() + m <= std::f32::consts::PI {
                    (a[k], b[k]) = (m.cos(), m.sin());
                } else {
                    cc[k] = m * m.sin();
                }
            }
        }
    }
    let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [n, c]), &dev);
    let mut z = cos.clone() * t(a) - t(cc);
    if cfg.kind == MarginKind::ArcFace {
        let sin = (cos.clone() * cos).neg().add_scalar(1.0).clamp_min(1e-12).sqrt();
        z = z - sin * t(b);
    }
    let logits = z.mul_scalar(cfg.scale);
    let loss = (log_softmax(logits, 1) * t(onehot)).sum().neg().div_scalar(n.max(1) as f32);
    (loss, host)
}

/// Embeddings of every image of `set` (inference mode), one row per image.
pub fn features(model: &mut Model, set: &lowbit_data::ImageSet, batch: usize) -> Result<Vec<Vec<f32>>> {
    model.detach_all();
    let mut out = Vec::with_capacity(set.n);
    for (_, n, data) in set.batches(batch.max(1)) {
        let x: Tensor<4> = Tensor::from_data(TensorData::new(data.to_vec(), [n, set.c, set.h, set.w]), &model.device);
        let y = model.forward(x.inner(), false)?;
        let v = y.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?;
        let k = v.len() / n.max(1);
        out.extend(v.chunks(k.max(1)).map(|r| r.to_vec()));
    }
    Ok(out)
}

/// Leave-one-out rank-1 retrieval of `set` (labels = identities) with `model`'s embeddings.
pub fn evaluate(model: &mut Model, set: &lowbit_data::ImageSet, batch: usize) -> Result<f64> {
    let labels = set.labels.as_ref().ok_or_else(|| Error::Invalid(format!("{}: no identities", set.source)))?;
    let f = features(model, set, batch)?;
    Ok(lowbit_runtime::embedding::open_set(&f, labels, &[]).rank1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> burn::tensor::Device {
        crate::device()
    }

    fn cfg(kind: MarginKind) -> EmbedConfig {
        EmbedConfig { kind, margin: kind.default_margin(), scale: 16.0, classes: 3, dim: 4, rcm: None }
    }

    fn sample(seed: u64, n: usize) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    /// The loss on the host, written from the formulas.
    fn host_loss(f: &[f32], w: &[f32], labels: &[usize], c: &EmbedConfig, extra: &[f32]) -> f64 {
        let d = c.dim;
        let mut total = 0f64;
        for (i, row) in f.chunks(d).enumerate() {
            let fu = unit(row);
            let z: Vec<f64> = (0..c.classes)
                .map(|j| {
                    let cs = dot(&fu, &unit(&w[j * d..(j + 1) * d])) as f64;
                    if j != labels[i] {
                        return c.scale as f64 * cs;
                    }
                    let m = (c.margin + extra[i]) as f64;
                    c.scale as f64
                        * match c.kind {
                            MarginKind::CosFace => cs - m,
                            MarginKind::ArcFace if cs.acos() + m <= std::f64::consts::PI => (cs.acos() + m).cos(),
                            MarginKind::ArcFace => cs - m * m.sin(),
                        }
                })
                .collect();
            let mx = z.iter().copied().fold(f64::MIN, f64::max);
            let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            total += lse - z[labels[i]];
        }
        total / (f.len() / d) as f64
    }

    #[test]
    fn margin_losses_match_their_formulas_and_gradients_match_finite_differences() {
        let labels = [0usize, 2, 1, 2, 0];
        let extra = [0.0f32, 0.1, 0.0, 0.3, 0.05];
        for kind in [MarginKind::CosFace, MarginKind::ArcFace] {
            let c = cfg(kind);
            let f = sample(1, 5 * 4);
            let w = sample(2, 3 * 4);
            let run = |fv: &[f32]| {
                let ft = Tensor::<2>::from_data(TensorData::new(fv.to_vec(), [5, 4]), &dev()).require_grad();
                let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [12]), &dev()).require_grad();
                let (l, _) = margin_loss(ft.clone(), wt.clone(), &labels, &c, |_| extra.to_vec());
                let g = l.backward();
                let lv = l.into_data().try_to_vec::<f32>().unwrap()[0];
                let gf = ft.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
                (lv, gf)
            };
            let (lv, gf) = run(&f);
            let want = host_loss(&f, &w, &labels, &c, &extra);
            assert!((lv as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "{kind:?}: loss {lv} vs {want}");
            for k in 0..f.len() {
                let h = 1e-3f32;
                let (mut p, mut m) = (f.clone(), f.clone());
                p[k] += h;
                m[k] -= h;
                let fd = (host_loss(&p, &w, &labels, &c, &extra) - host_loss(&m, &w, &labels, &c, &extra))
                    / (2.0 * h as f64);
                assert!((gf[k] as f64 - fd).abs() < 2e-2 * (1.0 + fd.abs()), "{kind:?} d/df[{k}]: {} vs {fd}", gf[k]);
            }
        }
    }

    #[test]
    fn a_zero_embedding_has_finite_gradients() {
        let c = cfg(MarginKind::ArcFace);
        let mut f = sample(5, 2 * 4);
        f[4..].fill(0.0);
        let ft = Tensor::<2>::from_data(TensorData::new(f, [2, 4]), &dev()).require_grad();
        let wt = Tensor::<1>::from_data(TensorData::new(sample(6, 12), [12]), &dev()).require_grad();
        let (l, _) = margin_loss(ft.clone(), wt.clone(), &[0, 1], &c, |_| vec![]);
        let g = l.backward();
        for v in [ft.grad(&g).unwrap().into_data(), wt.grad(&g).unwrap().into_data()] {
            assert!(v.try_to_vec::<f32>().unwrap().iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn a_margin_raises_the_loss_and_rcm_only_adds_for_samples_that_drift_from_their_centre() {
        let f = sample(3, 4 * 4);
        let w = sample(4, 3 * 4);
        let labels = [1usize, 0, 2, 1];
        let mut c = cfg(MarginKind::ArcFace);
        let base = {
            c.margin = 0.0;
            host_loss(&f, &w, &labels, &c, &[0.0; 4])
        };
        c.margin = 0.5;
        assert!(host_loss(&f, &w, &labels, &c, &[0.0; 4]) > base);
        // Float features equal to the centres (angle 0): any quantized angle is drift.
        let centres: Vec<f32> = w.chunks(4).flat_map(unit).collect();
        let float_feats: Vec<f32> = labels.iter().flat_map(|&y| centres[y * 4..(y + 1) * 4].to_vec()).collect();
        let cos_q = [0.9f32, 1.0, 0.5, -0.2];
        let e = rcm_extra(MarginKind::ArcFace, 2.0, &cos_q, &float_feats, &centres, &labels);
        for (k, &cq) in cos_q.iter().enumerate() {
            assert!((e[k] - 2.0 * cq.acos()).abs() < 1e-3, "sample {k}: {} vs {}", e[k], 2.0 * cq.acos());
        }
        // A sample closer to its centre than the float one gets no extra margin.
        let far_float: Vec<f32> = labels.iter().flat_map(|_| vec![0.0, 0.0, 0.0, 1.0]).collect();
        let e = rcm_extra(MarginKind::CosFace, 1.0, &[1.0; 4], &far_float, &centres, &labels);
        assert!(e.iter().all(|&v| v == 0.0), "{e:?}");
    }
}
