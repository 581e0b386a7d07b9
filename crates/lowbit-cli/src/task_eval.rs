//! `lowbit eval --task detect|segment|embed --reference FLOAT.onnx`: a model judged against a
//! reference by what the task needs (see [`lowbit_runtime::task`]), plus per-output cosine, max
//! abs error and SQNR for every output.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use lowbit_core::{Graph, Tensor};
use lowbit_runtime::task::{self, Decoder, Output, Task};
use serde_json::json;

use crate::common::*;
use crate::DataArgs;

#[derive(clap::Args, Clone)]
pub struct TaskArgs {
    /// What the model does: auto (from its outputs; classify where unclear) | classify | detect |
    /// segment | embed. Other than classify, needs --reference
    #[arg(long, default_value = "auto")]
    pub task: String,
    /// Detection head layout: auto | centernet (CenterFace) | yolov8 | yolov5 (also YOLOX, v7
    /// decoded) | ssd (also UltraFace)
    #[arg(long, default_value = "auto")]
    pub decoder: String,
    /// Detection: score from which the reference's boxes count as objects (default per decoder)
    #[arg(long)]
    pub conf: Option<f32>,
    /// Embeddings: cosine from which two images are the same identity (default: the threshold
    /// that best separates the identities with the reference's embeddings)
    #[arg(long)]
    pub verify_threshold: Option<f64>,
    /// Embeddings on labelled IDX data: the open-set protocol's second source and unseen classes
    #[command(flatten)]
    pub open_set: crate::train_args::EmbedArgs,
}

/// The task to evaluate: the one asked for, or guessed from the reference's outputs.
pub fn resolve(t: &TaskArgs, reference: &Graph, shapes: &[Vec<usize>], input_hw: (usize, usize)) -> Result<Task> {
    let decoder = |shapes: &[Vec<usize>]| -> Result<Decoder> {
        match t.decoder.as_str() {
            "auto" => Decoder::detect(shapes).ok_or_else(|| {
                anyhow!("cannot tell the detection head from outputs {shapes:?}; pass --decoder ({:?})", Decoder::NAMES)
            }),
            d => Decoder::parse(d).ok_or_else(|| anyhow!("unknown --decoder '{d}' (auto, {:?})", Decoder::NAMES)),
        }
    };
    Ok(match t.task.as_str() {
        "auto" => match task::guess(shapes, input_hw, task::ends_in_softmax(reference)) {
            Task::Detect(d) if t.decoder != "auto" => Task::Detect(decoder(shapes).unwrap_or(d)),
            other => other,
        },
        "classify" => Task::Classify,
        "detect" => Task::Detect(decoder(shapes)?),
        "segment" => Task::Segment,
        "embed" => Task::Embed,
        other => bail!("unknown --task '{other}' (auto, classify, detect, segment, embed)"),
    })
}

/// One side of the comparison: a model lowbit runs, or a folder of outputs another runtime saved
/// as `DIR/<image stem>/<output name>.npy` (the layout `lowbit run --save-outputs` writes).
enum Side {
    Model { path: std::path::PathBuf, graph: Graph, plan: lowbit_runtime::Plan },
    Saved(std::path::PathBuf),
}

impl Side {
    fn path(&self) -> &Path {
        match self {
            Side::Model { path, .. } | Side::Saved(path) => path,
        }
    }

    fn outputs(&self, set: &lowbit_data::ImageSet, i: usize, names: &[String]) -> Result<Vec<Output>> {
        match self {
            Side::Model { path, plan, .. } => {
                let one = [1, set.c, set.h, set.w];
                let per = set.c * set.h * set.w;
                let x = Tensor::f32(one.to_vec(), set.data[i * per..(i + 1) * per].to_vec());
                let outs = plan.run(&[x]).map_err(|e| anyhow!("{}: {}: {e}", path.display(), set.names[i]))?;
                Ok(outs.into_iter().map(|o| Output { shape: o.shape.clone(), data: o.to_f32_vec() }).collect())
            }
            Side::Saved(dir) => {
                let d = dir.join(crate::commands::safe_name(&crate::commands::image_stem(&set.names[i], i)));
                names
                    .iter()
                    .map(|n| {
                        let p = d.join(format!("{}.npy", crate::commands::safe_name(n)));
                        let (shape, data) = crate::commands::read_npy_f32(&p)?;
                        Ok(Output { shape, data })
                    })
                    .collect()
            }
        }
    }
}

/// Opens `path` as a model (its input fitted to the images; `loaded`: already read and fitted) or
/// as a folder of saved outputs.
fn open_side(
    path: &Path,
    a: &DataArgs,
    set: &lowbit_data::ImageSet,
    threads: usize,
    loaded: Option<Graph>,
) -> Result<Side> {
    if path.is_dir() {
        return Ok(Side::Saved(path.to_path_buf()));
    }
    let mut g = match loaded {
        Some(g) => g,
        None => {
            let mut g = load_model(path)?;
            a.image.fit_model(&mut g, path, [set.c, set.h, set.w])?;
            g
        }
    };
    let one = [1, set.c, set.h, set.w];
    override_input_shape(&mut g, &one).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let plan = compile(&g, path, one.to_vec(), threads)?;
    Ok(Side::Model { path: path.to_path_buf(), graph: g, plan })
}

/// Runs (or reads) `model` and `reference` on every image and reports the task metric. Either
/// side may be a folder of saved outputs, not both. Returns `None` when the task is
/// classification (the caller's classifier evaluation handles it).
pub fn eval(
    model: &Path,
    data: &Path,
    a: &DataArgs,
    reference: &Path,
    t: &TaskArgs,
    threads: usize,
    json_out: Option<&Path>,
) -> Result<Option<serde_json::Value>> {
    let graph_path = match (model.is_dir(), reference.is_dir()) {
        (true, true) => bail!(
            "{} and {} are both folders of outputs; one side must be a model",
            model.display(),
            reference.display()
        ),
        (false, _) => model,
        (true, false) => reference,
    };
    let (loaded, preset, set) = crate::commands::load_for(graph_path, data, a)?;
    if set.n == 0 {
        bail!("{}: no images", data.display());
    }
    // The model load_for read (and fitted to the images) serves its side.
    let mut loaded = Some(loaded);
    let test = open_side(model, a, &set, threads, if graph_path == model { loaded.take() } else { None })?;
    let refr = open_side(reference, a, &set, threads, loaded.take())?;
    let g = match (&test, &refr) {
        (Side::Model { graph, .. }, _) | (_, Side::Model { graph, .. }) => graph.clone(),
        _ => unreachable!("one side is a model"),
    };
    let one = [1, set.c, set.h, set.w];
    let names: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let first_ref = refr.outputs(&set, 0, &names)?;
    let shapes: Vec<Vec<usize>> = first_ref.iter().map(|o| o.shape.clone()).collect();
    let kind = resolve(t, &g, &shapes, (set.h, set.w))?;
    if kind == Task::Classify {
        return Ok(None);
    }
    // Per output: sum of cosines, worst cosine, max abs error, signal and noise energy.
    let mut per_out = vec![(0.0f64, f64::INFINITY, 0.0f64, task::Sqnr::default()); names.len()];
    let (mut truth, mut preds, mut test_at_conf) = (vec![], vec![], 0usize);
    let (mut seg, mut emb_ref, mut emb_test, mut emb_cos) = (vec![], vec![], vec![], vec![]);
    let decoder = match kind {
        Task::Detect(d) => Some(d),
        _ => None,
    };
    let conf = t.conf.or(decoder.map(|d| d.default_conf())).unwrap_or(0.5);
    let pb = progress(set.n as u64, "eval");
    for i in 0..set.n {
        let r = if i == 0 { first_ref.clone() } else { refr.outputs(&set, i, &names)? };
        let q = test.outputs(&set, i, &names)?;
        if r.len() != q.len() || r.iter().zip(&q).any(|(a, b)| a.shape != b.shape) {
            bail!(
                "{} and {} give outputs of different shapes on {}: {:?} vs {:?}",
                model.display(),
                reference.display(),
                set.names[i],
                q.iter().map(|o| &o.shape).collect::<Vec<_>>(),
                r.iter().map(|o| &o.shape).collect::<Vec<_>>()
            );
        }
        for (k, (a, b)) in r.iter().zip(&q).enumerate() {
            let c = task::cosine(&a.data, &b.data);
            let m = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
            let e = &mut per_out[k];
            e.0 += c;
            e.1 = e.1.min(c);
            e.2 = e.2.max(m);
            e.3.add(&a.data, &b.data);
        }
        match kind {
            Task::Detect(d) => {
                let rd = d.decode(&r, (set.h, set.w), conf).map_err(|e| anyhow!("{}: {e}", refr.path().display()))?;
                // Low-scored boxes take part in the ranking, as mAP is defined.
                let qd =
                    d.decode(&q, (set.h, set.w), conf.min(0.05)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
                test_at_conf += qd.iter().filter(|b| b.score >= conf).count();
                truth.push(rd);
                preds.push(qd);
            }
            Task::Segment => {
                let (lo, hi) = r[0].data.iter().fold((f32::MAX, f32::MIN), |m, &v| (m.0.min(v), m.1.max(v)));
                let thr = if lo >= 0.0 && hi <= 1.0 { 0.5 } else { 0.0 };
                seg.push(task::segmentation(&r[0], &q[0], thr).map_err(|e| anyhow!("{}: {e}", model.display()))?);
            }
            Task::Embed => {
                emb_cos.push(task::cosine(&r[0].data, &q[0].data));
                emb_ref.push(r[0].data.clone());
                emb_test.push(q[0].data.clone());
            }
            Task::Classify => unreachable!("returned above"),
        }
        pb.set_position(i as u64 + 1);
    }
    pb.finish_and_clear();
    let n = set.n as f64;
    let mut rows = vec![vec!["images".into(), set.n.to_string()], vec!["preset".into(), preset.clone()]];
    let mut metric = json!({});
    match kind {
        Task::Detect(d) => {
            let map = task::mean_ap(&truth, &preds, 0.5);
            let n_truth: usize = truth.iter().map(|v| v.len()).sum();
            rows.push(vec!["task".into(), format!("detect ({d:?} decoder, conf {conf})")]);
            rows.push(vec!["reference boxes".into(), n_truth.to_string()]);
            rows.push(vec!["boxes at conf".into(), test_at_conf.to_string()]);
            rows.push(vec![
                "mAP@0.5 vs reference".into(),
                map.map(|m| format!("{m:.4}")).unwrap_or("- (no reference box)".into()),
            ]);
            metric = json!({"task": "detect", "decoder": format!("{d:?}"), "conf": conf, "map50": map,
                "reference_boxes": n_truth, "boxes_at_conf": test_at_conf});
        }
        Task::Segment => {
            let iou = seg.iter().map(|s| s.iou).sum::<f64>() / n;
            let worst = seg.iter().map(|s| s.iou).fold(f64::INFINITY, f64::min);
            let mae = seg.iter().map(|s| s.mae).sum::<f64>() / n;
            let (ti, tu) = seg.iter().fold((0u64, 0u64), |a, s| (a.0 + s.inter, a.1 + s.union));
            let pooled = if tu == 0 { 1.0 } else { ti as f64 / tu as f64 };
            rows.push(vec!["task".into(), "segment (first output)".into()]);
            rows.push(vec!["mask IoU vs reference".into(), format!("{iou:.4} mean per image (worst {worst:.4})")]);
            rows.push(vec!["mask IoU, all pixels".into(), format!("{pooled:.4}")]);
            rows.push(vec!["mean abs error".into(), format!("{mae:.5}")]);
            metric = json!({"task": "segment", "iou": iou, "pooled_iou": pooled, "worst_iou": worst, "mae": mae,
                "per_image": seg.iter().zip(&set.names).map(|(s, nm)| json!({"image": nm, "iou": s.iou, "mae": s.mae})).collect::<Vec<_>>()});
        }
        Task::Embed => {
            let mean = emb_cos.iter().sum::<f64>() / n;
            let worst = emb_cos.iter().copied().fold(f64::INFINITY, f64::min);
            let ids: Vec<String> = set.names.iter().map(|s| task::identity(s)).collect();
            let v = task::verification(&emb_ref, &emb_test, &ids, t.verify_threshold);
            rows.push(vec!["task".into(), "embed (first output)".into()]);
            rows.push(vec!["embedding cosine".into(), format!("{mean:.5} (worst image {worst:.5})")]);
            rows.push(vec![
                "verification agreement".into(),
                format!("{:.4} of {} pairs at cosine {:.3}", v.agreement, v.pairs, v.threshold),
            ]);
            rows.push(vec![
                "verification accuracy".into(),
                format!("reference {:.4}, model {:.4}", v.reference_accuracy, v.test_accuracy),
            ]);
            // The class / individual error decomposition over the identities (issue 23), and TAR
            // at the FARs the pairs resolve.
            let mut uniq = ids.clone();
            uniq.sort();
            uniq.dedup();
            let nid: Vec<u32> = ids.iter().map(|i| uniq.binary_search(i).unwrap_or(0) as u32).collect();
            let d = lowbit_runtime::embedding::decompose(&emb_ref, &emb_test, &nid);
            rows.extend(crate::embed::decomposition_rows(&d));
            let tar = lowbit_runtime::embedding::open_set(&emb_test, &nid, &crate::embed::FARS);
            if !tar.tar.is_empty() {
                rows.extend(crate::embed::score_rows("model", &tar));
            }
            metric = json!({"task": "embed", "cosine": mean, "worst_cosine": worst, "pairs": v.pairs,
                "threshold": v.threshold, "agreement": v.agreement, "reference_accuracy": v.reference_accuracy,
                "test_accuracy": v.test_accuracy, "decomposition": crate::embed::decomposition_json(&d),
                "identities": uniq, "open_set": crate::embed::scores_json(&tar),
                "per_image": emb_cos.iter().zip(&set.names).map(|(c, nm)| json!({"image": nm, "cosine": c})).collect::<Vec<_>>()});
        }
        Task::Classify => unreachable!(),
    }
    let mut outs_json = vec![];
    for (k, name) in names.iter().enumerate() {
        let (cs, cw, m, e) = per_out[k];
        let sqnr = e.db();
        rows.push(vec![
            format!("output {name}"),
            format!("cosine {:.5} (worst {cw:.5}), max abs {m:.3e}, SQNR {sqnr:.1} dB", cs / n),
        ]);
        outs_json.push(json!({"output": name, "cosine": cs / n, "worst_cosine": cw, "max_abs": m, "sqnr_db": if sqnr.is_finite() { json!(sqnr) } else { json!("inf") }}));
    }
    crate::say!("{} against {} on {}", model.display(), reference.display(), data.display());
    print_table(&["metric", "value"], &rows);
    let report = json!({"model": model.display().to_string(), "reference": reference.display().to_string(),
        "data": data.display().to_string(), "preset": preset, "images": set.n, "input": one,
        "metric": metric, "outputs": outs_json});
    if let Some(p) = json_out {
        write_json(p, &report)?;
    }
    Ok(Some(report))
}
