//! Embedding models on the open-set protocol: `lowbit train --task embed` (float training with a
//! CosFace / ArcFace head, or QAT of a trained embedding model, optionally with RCM) and
//! `lowbit eval --task embed` on labelled IDX data (TAR at FAR and rank-1 over the unseen
//! identities; with `--reference`, agreement and the class / individual error decomposition).
//! The protocol is [`lowbit_data::openset`]; the metrics are [`lowbit_runtime::embedding`].

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_core::Graph;
use lowbit_data::openset::{self, OpenSet};
use lowbit_data::{ImageSet, Split};
use lowbit_runtime::classify::Classifier;
use lowbit_runtime::embedding::{self as em, Decomposition, OpenSet as Scores};
use lowbit_train::embed::{self as te, EmbedConfig, MarginKind};
use lowbit_train::qat;
use lowbit_train::train::{self as tr, OptimizerKind, TrainConfig};
use lowbit_train::{Model, QatMethod};
use serde_json::json;

use crate::common::*;
use crate::train_args::{progress_printer, write_curves, EmbedArgs, TrainArgs};

/// The FARs reported (each only where the negative pairs resolve it).
pub const FARS: [f64; 3] = [1e-2, 1e-3, 1e-4];

/// Loads the open-set protocol from `data` (and `--extra-data`) with preprocessing `pre`.
pub fn load_open_set(
    data: &Path,
    e: &EmbedArgs,
    pre: &lowbit_data::Preprocess,
    limit: Option<usize>,
) -> Result<OpenSet> {
    let mut sets = vec![];
    for p in std::iter::once(data).chain(e.extra_data.as_deref()) {
        sets.push((load_data(p, Split::Train, pre, None)?, load_data(p, Split::Test, pre, None)?));
    }
    let refs: Vec<(&ImageSet, &ImageSet)> = sets.iter().map(|(a, b)| (a, b)).collect();
    let mut o = openset::open_set(&refs, &e.unseen).map_err(|err| anyhow!("{err}"))?;
    if let Some(l) = limit {
        // A spread subset (every k-th image) keeps every identity.
        let k = o.train.n.div_ceil(l.max(1)).max(1);
        let keep: Vec<usize> = (0..o.train.n).step_by(k).take(l).collect();
        o.train = pick(&o.train, &keep);
    }
    Ok(o)
}

fn pick(s: &ImageSet, idx: &[usize]) -> ImageSet {
    let il = s.image_len();
    ImageSet {
        n: idx.len(),
        c: s.c,
        h: s.h,
        w: s.w,
        data: idx.iter().flat_map(|&i| s.data[i * il..(i + 1) * il].iter().copied()).collect(),
        labels: s.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
        names: idx.iter().map(|&i| s.names[i].clone()).collect(),
        source: s.source.clone(),
    }
}

/// The model's embeddings of every image of `set` on lowbit's runtime.
pub fn embeddings(g: &Graph, set: &ImageSet, threads: usize, what: &str) -> Result<Vec<Vec<f32>>> {
    let mut c = Classifier::new(g.clone(), vec![set.c, set.h, set.w], threads);
    let pb = progress(set.n as u64, what);
    let mut out = Vec::with_capacity(set.n);
    for (start, n, data) in set.batches(250) {
        out.extend(c.logits(data, n).map_err(|e| anyhow!("{what}: {e}"))?);
        pb.set_position((start + n) as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

pub fn scores_json(s: &Scores) -> serde_json::Value {
    json!({"images": s.images, "identities": s.identities, "positive_pairs": s.positive_pairs,
        "negative_pairs": s.negative_pairs, "rank1": s.rank1,
        "confused": s.confused.iter().map(|c| json!({"a": c.0, "b": c.1, "false_accepts": c.2})).collect::<Vec<_>>(),
        "tar": s.tar.iter().map(|t| json!({"far": t.far, "tar": t.tar, "threshold": t.threshold, "far_measured": t.far_measured})).collect::<Vec<_>>()})
}

pub fn decomposition_json(d: &Decomposition) -> serde_json::Value {
    json!({"total_deg": d.total, "class_deg": d.class, "individual_deg": d.individual,
        "compactness_change_deg": d.compactness_change,
        "per_class": d.per_class.iter().map(|c| json!({"id": c.id, "images": c.images, "rotation_deg": c.rotation,
            "individual_deg": c.individual, "spread_reference_deg": c.spread.0, "spread_deg": c.spread.1})).collect::<Vec<_>>()})
}

/// Table rows for open-set scores.
pub fn score_rows(name: &str, s: &Scores) -> Vec<Vec<String>> {
    let mut r = vec![vec![format!("{name}: rank-1"), format!("{:.2}%", s.rank1 * 100.0)]];
    for t in &s.tar {
        r.push(vec![
            format!("{name}: TAR @ FAR {:.0e}", t.far),
            format!("{:.2}% (cosine > {:.4})", t.tar * 100.0, t.threshold),
        ]);
    }
    if let (Some(t), Some(c)) = (s.tar.iter().map(|t| t.far).reduce(f64::min), s.confused.first()) {
        let accepted = s.tar.iter().find(|x| x.far == t).map_or(0.0, |x| x.far_measured * s.negative_pairs as f64);
        r.push(vec![
            format!("{name}: most confused identities at FAR {t:.0e}"),
            format!("{} and {}: {} of {:.0} false accepts", c.0, c.1, c.2, accepted),
        ]);
    }
    r
}

/// Table rows for a decomposition.
pub fn decomposition_rows(d: &Decomposition) -> Vec<Vec<String>> {
    vec![
        vec!["error angle to reference (mean)".into(), format!("{:.2} deg", d.total)],
        vec!["  class error (centre rotation)".into(), format!("{:.2} deg", d.class)],
        vec!["  individual error (after undoing it)".into(), format!("{:.2} deg", d.individual)],
        vec!["  angle to own centre, change".into(), format!("{:+.2} deg", d.compactness_change)],
    ]
}

/// Evaluates `test` (and `reference`, if given) on the unseen identities and, with a reference,
/// compares them. Returns the table rows and the JSON.
pub fn compare(
    test: &[Vec<f32>],
    reference: Option<&[Vec<f32>]>,
    ids: &[u32],
) -> (Vec<Vec<String>>, serde_json::Value) {
    let s = em::open_set(test, ids, &FARS);
    let mut rows = score_rows("model", &s);
    let mut j = json!({"model": scores_json(&s)});
    if let Some(r) = reference {
        let rs = em::open_set(r, ids, &FARS);
        rows.extend(score_rows("reference", &rs));
        let cos: Vec<f64> = r.iter().zip(test).map(|(a, b)| lowbit_runtime::task::cosine(a, b)).collect();
        let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
        let worst = cos.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push(vec!["embedding cosine to reference".into(), format!("{mean:.5} (worst {worst:.5})")]);
        // Verification agreement at the reference's FAR 1e-3 threshold (or the loosest resolved).
        if let Some(t) = rs.tar.iter().find(|t| t.far == 1e-3).or(rs.tar.first()) {
            let agree = agreement(r, test, t.threshold);
            rows.push(vec![
                format!("decisions unchanged at the reference's FAR {:.0e} threshold", t.far),
                format!("{:.4}% of {} pairs", agree * 100.0, rs.positive_pairs + rs.negative_pairs),
            ]);
            j["agreement"] = json!({"far": t.far, "threshold": t.threshold, "agreement": agree});
        }
        let d = em::decompose(r, test, ids);
        rows.extend(decomposition_rows(&d));
        j["reference"] = scores_json(&rs);
        j["cosine"] = json!({"mean": mean, "worst": worst});
        j["decomposition"] = decomposition_json(&d);
    }
    (rows, j)
}

/// Share of pairs decided the same way (cosine above `t`) with both sets of embeddings.
fn agreement(a: &[Vec<f32>], b: &[Vec<f32>], t: f64) -> f64 {
    use rayon::prelude::*;
    let (an, bn): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
        (a.iter().map(|v| em::normalized(v)).collect(), b.iter().map(|v| em::normalized(v)).collect());
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
    let n = an.len();
    let same: usize = (0..n)
        .into_par_iter()
        .map(|i| (i + 1..n).filter(|&j| (dot(&an[i], &an[j]) > t) == (dot(&bn[i], &bn[j]) > t)).count())
        .sum();
    same as f64 / (n * n.saturating_sub(1) / 2).max(1) as f64
}

/// `lowbit eval MODEL --task embed --data IDX [--extra-data IDX] [--reference FLOAT]`.
pub fn eval_open_set(
    model: &Path,
    data: &Path,
    e: &EmbedArgs,
    reference: Option<&Path>,
    preset: Option<&str>,
    threads: usize,
    json_out: Option<&Path>,
) -> Result<()> {
    let g = load_model(model)?;
    let (pname, pre) = choose_preset(preset, &g, data)?;
    // Only the unseen identities are needed: keep no training images.
    let o = load_open_set(data, e, &pre, Some(0))?;
    let ids = o.eval.labels.clone().unwrap_or_default();
    let test = embeddings(&g, &o.eval, threads, &model.display().to_string())?;
    let r = match reference {
        Some(p) => Some(embeddings(&load_model(p)?, &o.eval, threads, &p.display().to_string())?),
        None => None,
    };
    let (mut rows, mut j) = compare(&test, r.as_deref(), &ids);
    rows.insert(0, vec!["unseen identities".into(), format!("{} images of {:?}", o.eval.n, unique(&ids))]);
    crate::say!("{} on the open-set protocol of {}", model.display(), o.eval.source);
    print_table(&["metric", "value"], &rows);
    j["model_path"] = json!(model.display().to_string());
    j["reference_path"] = json!(reference.map(|p| p.display().to_string()));
    j["data"] = json!(o.eval.source);
    j["preset"] = json!(pname);
    if let Some(p) = json_out {
        write_json(p, &j)?;
    }
    Ok(())
}

fn unique(v: &[u32]) -> Vec<u32> {
    let mut u = v.to_vec();
    u.sort_unstable();
    u.dedup();
    u
}

/// `lowbit train MODEL --task embed ...`.
pub fn train_embed(a: &TrainArgs) -> Result<()> {
    let t_all = Instant::now();
    let ea = &a.embed;
    let method = match &a.qat {
        None => None,
        Some(m) => Some(QatMethod::parse(m).ok_or_else(|| anyhow!("unknown --qat '{m}' (ste, lsq, pact, dsq)"))?),
    };
    for (what, b) in [("--weights", a.weights), ("--acts", a.acts)] {
        if !(2..=8).contains(&b) {
            bail!("{what} {b} is out of range: linear quantization takes 2 to 8 bits");
        }
    }
    if a.epochs == 0 || a.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    if let Some(lr) = a.lr.filter(|x| !(x.is_finite() && *x > 0.0)) {
        bail!("--lr {lr} must be a finite number above 0");
    }
    if a.binary.is_some() || a.distill {
        bail!("--task embed trains with a margin head: --binary and --distill are not available");
    }
    let (kind, rcm) = match ea.loss.as_str() {
        "cosface" => (MarginKind::CosFace, None),
        "rcm" => (MarginKind::ArcFace, Some(ea.rcm_weight)),
        _ => (MarginKind::ArcFace, None),
    };
    if rcm.is_some() && method.is_none() {
        bail!("--loss rcm is a quantization-aware training loss: add --qat lsq|dsq (and start from a trained embedding model)");
    }
    if !(ea.scale.is_finite() && ea.scale > 0.0) || ea.embed_dim == 0 {
        bail!("--scale must be above 0 and --embed-dim at least 1");
    }
    if a.threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global();
    }
    lowbit_train::keep_freed_memory();
    let g = load_model(&a.model)?;
    let (preset, pre) = choose_preset(a.preset.as_deref(), &g, &a.data)?;
    let o = load_open_set(&a.data, &ea.data, &pre, a.limit)?;
    let test = match a.test_limit {
        Some(l) => {
            let k = o.eval.n.div_ceil(l.max(1)).max(1);
            pick(&o.eval, &(0..o.eval.n).step_by(k).take(l).collect::<Vec<_>>())
        }
        None => o.eval.clone(),
    };
    let classes = o.train_ids.len();
    eprintln!(
        "open set: {} training images of {} identities {:?}; {} evaluation images of unseen identities {:?}",
        o.train.n,
        classes,
        o.train_ids,
        test.n,
        unique(test.labels.as_deref().unwrap_or_default())
    );
    let device = lowbit_train::device();
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr.unwrap_or(if method.is_some() { 0.002 } else { 0.1 }),
        optimizer: if a.optimizer.as_deref() == Some("adamw") { OptimizerKind::AdamW } else { OptimizerKind::Sgd },
        momentum: 0.9,
        weight_decay: a.weight_decay.unwrap_or(5e-4),
        warmup: a.warmup.unwrap_or(if method.is_some() { 0.0 } else { 0.15 }),
        crop_pad: if a.no_augment { 0 } else { 2 },
        // Mirrored digits are other shapes: crops only.
        flip: false,
        seed: a.seed,
        distill: None,
        limit: None,
    };
    let mut stages: Vec<Vec<String>> = vec![];
    let mut report = json!({"model": a.model.display().to_string(), "data": o.train.source, "eval_data": test.source,
        "train_identities": o.train_ids, "config": serde_json::to_value(&cfg)?});
    let (mut model, prep, float_graph) = match method {
        None => {
            let ge = te::with_embedding(&g, ea.embed_dim, a.seed).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            let mut m = Model::from_graph(&ge, &device).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            if a.reinit {
                m.reinitialize(a.seed);
            }
            (m, None, None)
        }
        Some(meth) => {
            let qc = a.qat_config(meth);
            let t0 = Instant::now();
            let k = o.train.n.div_ceil(a.calib_n.max(1)).max(1);
            let calib = pick(&o.train, &(0..o.train.n).step_by(k).take(a.calib_n).collect::<Vec<_>>());
            let prep = qat::prepare(&g, &calib, &qc, a.threads).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            stages.push(vec![
                format!("PTQ W{}A{} (QAT start)", a.weights, a.acts),
                "-".into(),
                format!("{:.1}", t0.elapsed().as_secs_f64()),
            ]);
            let m =
                qat::model(&prep, &qc, o.train.image(0), &device).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            (m, Some(prep), Some(g.clone()))
        }
    };
    // The head: random for float training; for QAT, the float model's class centres.
    let float_train = match &float_graph {
        Some(fg) => Some(embeddings(fg, &o.train, a.threads, "float embeddings of the training set")?),
        None => None,
    };
    let dim = float_train.as_ref().map_or(ea.embed_dim, |f| f.first().map_or(0, |r| r.len()));
    let econf =
        EmbedConfig { kind, margin: ea.margin.unwrap_or(kind.default_margin()), scale: ea.scale, classes, dim, rcm };
    let labels = o.train.labels.clone().unwrap_or_default();
    let (init, centres) = match &float_train {
        Some(f) => {
            let c = te::class_centres(&f.concat(), dim, &labels, classes);
            (Some(c.clone()), rcm.map(|_| c))
        }
        None => (None, None),
    };
    te::attach(&mut model, econf.clone(), init, centres, a.seed).map_err(|e| anyhow!("{e}"))?;
    report["embed"] = serde_json::to_value(&econf)?;
    eprintln!(
        "training {} parameters for {} epochs ({}{}, {:?} margin {} scale {}, lr {}, batch {}, {} threads)",
        model.num_params(),
        cfg.epochs,
        method.map(|m| format!("QAT {} W{}A{} ", m.name(), a.weights, a.acts)).unwrap_or_default(),
        if rcm.is_some() { "RCM on" } else { "embedding" },
        econf.kind,
        econf.margin,
        econf.scale,
        cfg.lr,
        cfg.batch,
        a.threads
    );
    let mut teacher_cls =
        float_graph.clone().map(|fg| Classifier::new(fg, vec![o.train.c, o.train.h, o.train.w], a.threads));
    let mut teacher_fn = |x: &[f32], n: usize| -> lowbit_train::Result<Vec<f32>> {
        let c = teacher_cls.as_mut().ok_or_else(|| lowbit_train::Error::Invalid("no float model".into()))?;
        let l = c.logits(x, n).map_err(|e| lowbit_train::Error::Invalid(format!("float model: {e}")))?;
        Ok(l.concat())
    };
    let ckpt = tr::checkpoint_path(&a.output);
    if a.no_resume && ckpt.exists() {
        std::fs::remove_file(&ckpt).map_err(|e| anyhow!("{}: {e}", ckpt.display()))?;
    }
    let tag = format!("{}|embed|{:?}|{:?}|{}|{:?}", a.model.display(), a.qat, econf, a.reinit, a.limit);
    let mut on = progress_printer(cfg.epochs, &ckpt, "train (seen ids)", "rank-1 (unseen ids)");
    let teacher: Option<&mut tr::Teacher> = if rcm.is_some() { Some(&mut teacher_fn) } else { None };
    let t_train = Instant::now();
    let history = tr::train(&mut model, &o.train, &test, &cfg, teacher, Some(&ckpt), &tag, &mut on)
        .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let train_s = t_train.elapsed().as_secs_f64();
    let out_graph = match &prep {
        Some(prep) => {
            let q = qat::export(&model, prep).map_err(|e| anyhow!("export: {e}"))?;
            report["weight_bytes"] = json!(q.weight_bytes);
            q.graph
        }
        None => {
            let mut g2 = model.to_graph();
            g2.metadata.retain(|(k, _)| k != "lowbit.preprocess");
            g2.metadata.push(("lowbit.preprocess".into(), preset.clone()));
            g2
        }
    };
    let last = history.last().map(|l| l.test_acc).unwrap_or(f64::NAN);
    stages.push(vec![
        format!("trained ({}, rank-1 in training)", if prep.is_some() { "simulated" } else { "float" }),
        format!("{:.2}", last * 100.0),
        format!("{train_s:.0}"),
    ]);
    lowbit_onnx::write_model(&out_graph, &a.output).map_err(|e| anyhow!("{e}"))?;
    // The exported file on lowbit's runtime (integer kernels for QAT), on every unseen image.
    let ids = o.eval.labels.clone().unwrap_or_default();
    let test_emb = embeddings(&out_graph, &o.eval, a.threads, "exported model on the unseen identities")?;
    let ref_emb = match &float_graph {
        Some(fg) => Some(embeddings(fg, &o.eval, a.threads, "float model on the unseen identities")?),
        None => None,
    };
    let (rows, metrics) = compare(&test_emb, ref_emb.as_deref(), &ids);
    println!();
    print_table(&["stage", "rank-1 %", "time s"], &stages);
    println!("exported {} on lowbit's runtime, {} unseen images:", a.output.display(), o.eval.n);
    print_table(&["metric", "value"], &rows);
    report["history"] = serde_json::to_value(&history)?;
    report["open_set"] = metrics;
    report["stages"] = json!(stages);
    report["train_seconds"] = json!(train_s);
    report["total_seconds"] = json!(t_all.elapsed().as_secs_f64());
    report["threads"] = json!(a.threads);
    write_curves(a, &history, "embedding training", ("%", "train top-1 (seen)", "rank-1 (unseen)"))?;
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    Ok(())
}
