//! What `lowbit quantize` shows and writes: the range-method choice, per-layer sensitivity and
//! mixed precision, plots, the before/after evaluation, the summary tables and the JSON report.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_core::Graph;
use lowbit_data::{Preprocess, Split};
use lowbit_quant::ptq::PtqOutcome;
use lowbit_runtime::classify::{self, Agreement, Classifier};
use serde_json::json;

use crate::common::*;
use crate::quantize_args::QuantizeArgs;

/// `auto`'s candidate table, the sensitivity table and the mixed-precision line.
pub fn choice_and_sensitivity(a: &QuantizeArgs, r: &PtqOutcome, labelled: bool) {
    if r.candidates.first().is_some_and(|c| c.sqnr_db.is_some()) {
        let rows: Vec<Vec<String>> = r
            .candidates
            .iter()
            .map(|c| {
                vec![
                    c.method.name(),
                    if c.bias_correction { "yes" } else { "no" }.to_string(),
                    format!("{:.2}", c.sqnr_db.unwrap_or(f64::NAN)),
                ]
            })
            .collect();
        crate::say!(
            "range method on {} calibration images (not a classifier: chosen, first row, by the mean SQNR of every \
             output against float):",
            r.scored_images
        );
        print_table(&["method", "bias corr.", "SQNR dB"], &rows);
        crate::say!();
    } else if !r.candidates.is_empty() {
        let rows: Vec<Vec<String>> = r
            .candidates
            .iter()
            .map(|c| {
                vec![
                    c.method.name(),
                    if c.bias_correction { "yes" } else { "no" }.to_string(),
                    format!("{:.2}%", c.agreement * 100.0),
                    format!("{:.6}", c.kl),
                    if c.tied_best { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        crate::say!(
            "range method on {} calibration images (chosen, first row: the lowest KL among those whose agreement \
             with float is within sampling noise of the best):",
            r.scored_images
        );
        print_table(&["method", "bias corr.", "top-1 agreement", "KL", "near best agreement"], &rows);
        crate::say!();
    }
    if !r.sensitivity.is_empty() {
        let what = if labelled { "top-1 drop" } else { "agreement drop" };
        crate::say!(
            "per-layer sensitivity at W{}A{} (only that layer quantized; {} calibration images):",
            a.weights,
            a.acts,
            r.scored_images
        );
        let rows: Vec<Vec<String>> = r
            .sensitivity
            .iter()
            .map(|l| {
                vec![
                    l.node.clone(),
                    l.params.to_string(),
                    format!("{:+.2} pp", l.drop_pp),
                    format!("{:.1} dB", l.sqnr_db),
                ]
            })
            .collect();
        print_table(&["layer", "params", what, "logit SQNR"], &rows);
        crate::say!();
        if let Some(m) = &r.mixed {
            crate::say!(
                "mixed precision for --max-drop {}: {} layer(s) raised to 8-bit weights ({}); {what} on calibration images {:.2} pp{}",
                m.max_drop,
                m.raised.len(),
                if m.raised.is_empty() { "none".to_string() } else { m.raised.join(", ") },
                m.drop_pp,
                if m.within_budget { "" } else { " -- budget NOT met even with every layer raised" }
            );
            crate::say!();
        }
    }
}

/// `sensitivity.svg` (when scored) and `histograms.svg` (activation histograms with clip ranges).
pub fn plots(a: &QuantizeArgs, r: &PtqOutcome, dir: &Path, labelled: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: cannot create folder: {e}", dir.display()))?;
    if !r.sensitivity.is_empty() {
        let rows: Vec<(String, f64, String)> =
            r.sensitivity.iter().map(|l| (l.node.clone(), l.drop_pp, format!("({:.1} dB)", l.sqnr_db))).collect();
        let unit = if labelled { "pp top-1" } else { "pp agreement" };
        let title = format!("{}: per-layer sensitivity at W{}A{}", a.model.display(), a.weights, a.acts);
        write_atomic(&dir.join("sensitivity.svg"), crate::svg::bar_chart(&title, unit, &rows).as_bytes())?;
    }
    let q = &r.model;
    let mut names: Vec<&String> = q.act_params.keys().collect();
    names.sort();
    let hists: Vec<crate::svg::Hist> = names
        .iter()
        .filter_map(|n| r.stats.get(*n).map(|o| (n, o)))
        .filter(|(_, o)| !o.hist.is_empty())
        .map(|(n, o)| {
            let (s, z) = q.act_params[*n];
            let lo = (0 - z) as f32 * s;
            let hi = (((1i32 << a.acts) - 1) - z) as f32 * s;
            crate::svg::Hist { name: n, pos: &o.hist, neg: &o.hist_neg, hist_max: o.hist_max, lo, hi }
        })
        .collect();
    let title = format!("{}: activation histograms and clip ranges", a.model.display());
    write_atomic(&dir.join("histograms.svg"), crate::svg::histograms(&title, &hists).as_bytes())?;
    crate::say!("plots written to {}/", dir.display());
    Ok(())
}

/// Float and quantized on the evaluation data.
pub struct Eval {
    pub n: usize,
    pub float_top1: Option<f64>,
    pub quant_top1: Option<f64>,
    pub agreement: Option<Agreement>,
}

pub fn evaluate(a: &QuantizeArgs, ev: &Path, g: &Graph, q: &Graph, pre: &Preprocess, shape: &[usize]) -> Result<Eval> {
    let set = load_data(ev, Split::Test, pre, a.eval_limit)?;
    if [set.c, set.h, set.w] != shape[..] {
        bail!("{}: evaluation images are {:?}, calibration images {:?}", ev.display(), [set.c, set.h, set.w], shape);
    }
    let mut fc = Classifier::new(g.clone(), shape.to_vec(), a.threads);
    let mut qc = Classifier::new(q.clone(), shape.to_vec(), a.threads);
    let pb = progress(set.n as u64, "evaluate");
    let labels = set.labels.as_deref();
    let r =
        classify::evaluate(&mut qc, Some(&mut fc), &set.data, set.n, labels, 100, &mut |d| pb.set_position(d as u64))
            .map_err(|e| anyhow!("evaluation failed: {e}"))?;
    pb.finish_and_clear();
    let mut float_top1 = None;
    if labels.is_some() {
        let fr = classify::evaluate(&mut fc, None, &set.data, set.n, labels, 100, &mut |_| {})
            .map_err(|e| anyhow!("evaluation failed: {e}"))?;
        float_top1 = fr.top1;
    }
    Ok(Eval { n: set.n, float_top1, quant_top1: r.top1, agreement: r.agreement })
}

/// The before/after and per-layer tables, and the JSON report.
/// A block reconstruction's outcome (BRECQ or QDrop).
pub struct Recon {
    pub kind: &'static str,
    pub blocks: Vec<lowbit_train::recon::BlockReport>,
    pub secs: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn summary(
    a: &QuantizeArgs,
    r: &PtqOutcome,
    recon: Option<&Recon>,
    preset: &str,
    calib_n: usize,
    ev: Option<&Eval>,
    calib_secs: f64,
    t0: Instant,
) -> Result<serde_json::Value> {
    let q = &r.model;
    let file_in = std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0);
    let file_out = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    crate::say!(
        "{} -> {} (W{}A{}{}, {}, preset {preset}, {calib_n} calibration images)",
        a.model.display(),
        a.output.display(),
        a.weights,
        a.acts,
        if a.scheme == "linear" { String::new() } else { format!(" {} weights", a.scheme) },
        r.method.name(),
    );
    let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", x * 100.0)).unwrap_or_else(|| "-".into());
    let kb = |b: f64| format!("{:.1} KB", b / 1e3);
    let mut rows = vec![
        vec![
            "weights".into(),
            kb(q.float_weight_bytes as f64),
            kb(q.weight_bytes as f64),
            format!("{:.1}%", q.weight_bytes as f64 / q.float_weight_bytes.max(1) as f64 * 100.0),
        ],
        vec!["file".into(), kb(file_in as f64), kb(file_out as f64), String::new()],
    ];
    if let Some(e) = ev {
        let drop = match (e.float_top1, e.quant_top1) {
            (Some(f), Some(q)) => format!("{:+.2} pp", (q - f) * 100.0),
            _ => String::new(),
        };
        rows.push(vec![format!("top-1 ({} images)", e.n), pct(e.float_top1), pct(e.quant_top1), drop]);
        if let Some(ag) = &e.agreement {
            rows.push(vec!["top-1 agreement".into(), "100%".into(), format!("{:.2}%", ag.top1 * 100.0), String::new()]);
            rows.push(vec!["logit cosine".into(), "1".into(), format!("{:.5}", ag.cosine), String::new()]);
        }
    }
    for n in &r.notes {
        crate::say!("{n}");
    }
    print_table(&["", "float", "quantized", "change"], &rows);
    let bits = |b: Option<u8>| b.map(|b| b.to_string()).unwrap_or_else(|| "f32".into());
    let lrows: Vec<Vec<String>> = q
        .layers
        .iter()
        .map(|l| vec![l.node.clone(), l.op.clone(), l.params.to_string(), bits(l.weight_bits), bits(l.act_bits)])
        .collect();
    crate::say!();
    print_table(&["layer", "op", "params", "w bits", "a bits"], &lrows);
    if !r.rounding.is_empty() {
        let rrows: Vec<Vec<String>> = r
            .rounding
            .iter()
            .map(|l| {
                vec![
                    l.node.clone(),
                    format!("{}x{}", l.groups, l.k),
                    l.rows.to_string(),
                    format!("{:.3e}", l.rel_err_nearest),
                    format!("{:.3e}", l.rel_err_learned),
                    format!("{:.1}%", l.flipped * 100.0),
                ]
            })
            .collect();
        crate::say!(
            "\nAdaRound ({:.1} s): each layer's output error (pre-activation, relative to its variance) from the quantized model's input",
            r.rounding_secs
        );
        print_table(&["layer", "groups x k", "rows", "nearest", "adaround", "flipped"], &rrows);
    }
    if let Some(rc) = recon {
        let rows: Vec<Vec<String>> = rc
            .blocks
            .iter()
            .map(|b| {
                vec![
                    b.output.clone(),
                    b.layers.len().to_string(),
                    format!("{:.3e}", b.rel_err_nearest),
                    format!("{:.3e}{}", b.rel_err_learned, if b.kept_nearest { " (nearest kept)" } else { "" }),
                    format!("{:.1}%", b.flipped * 100.0),
                    format!("{:.1}", b.secs),
                ]
            })
            .collect();
        crate::say!(
            "\n{} ({:.1} s): each block's output error (relative to its power) from the quantized model's input",
            rc.kind.to_uppercase(),
            rc.secs
        );
        print_table(&["block output", "layers", "nearest", rc.kind, "flipped", "s"], &rows);
    }
    crate::say!("\ncalibration {:.1} s, total {:.1} s", calib_secs, t0.elapsed().as_secs_f64());
    let sens = r
        .sensitivity
        .iter()
        .map(|l| json!({"node": l.node, "params": l.params, "drop_pp": l.drop_pp, "sqnr_db": l.sqnr_db}));
    let sens_json = if r.sensitivity.is_empty() { serde_json::Value::Null } else { json!(sens.collect::<Vec<_>>()) };
    let mixed_json = r.mixed.as_ref().map(|m| json!({"max_drop_pp": m.max_drop, "raised": m.raised, "drop_pp": m.drop_pp, "within_budget": m.within_budget}));
    let agree = ev.and_then(|e| e.agreement.as_ref());
    let report = json!({
            "model": a.model.display().to_string(), "output": a.output.display().to_string(),
            "weights_bits": a.weights, "weight_scheme": a.scheme, "act_bits": a.acts, "method": r.method.name(), "per_channel": !a.per_tensor, "bias_correction": r.bias_corrected, "bn_stats": a.bn_stats,
            "calibration_images": calib_n, "preset": preset,
            "method_candidates": r.candidates.iter().map(|c| json!({"method": c.method.name(), "bias_correction": c.bias_correction, "agreement": c.agreement, "kl": c.kl, "near_best_agreement": c.tied_best, "sqnr_db": c.sqnr_db})).collect::<Vec<_>>(),
            "float_top1": ev.and_then(|e| e.float_top1), "quant_top1": ev.and_then(|e| e.quant_top1), "eval_images": ev.map_or(0, |e| e.n),
            "agreement": agree.map(|g| json!({"top1": g.top1, "top5": g.top5, "cosine": g.cosine, "kl": g.kl})),
            "float_weight_bytes": q.float_weight_bytes, "quant_weight_bytes": q.weight_bytes,
            "file_bytes_in": file_in, "file_bytes_out": file_out,
            "layers": q.layers.iter().map(|l| json!({"node": l.node, "op": l.op, "params": l.params, "weight_bits": l.weight_bits, "act_bits": l.act_bits})).collect::<Vec<_>>(),
            "sensitivity": sens_json, "mixed_precision": mixed_json,
            "input_precision": r.input_precision.as_ref().map(|p| json!({"sqnr_int8_input_db": p.sqnr_int8_input_db, "sqnr_float_input_db": p.sqnr_float_input_db, "input_float": p.float_input()})),
            "notes": r.notes,
            "rounding": match recon { Some(rc) => rc.kind, None if crate::quantize_args::rounding(a) == "adaround" => "adaround", None => "nearest" },
            "reconstruction_seconds": recon.map(|rc| rc.secs),
            "reconstruction_blocks": recon.map(|rc| rc.blocks.iter().map(|b| json!({"output": b.output, "layers": b.layers, "rel_err_nearest": b.rel_err_nearest, "rel_err_learned": b.rel_err_learned, "flipped": b.flipped, "kept_nearest": b.kept_nearest, "seconds": b.secs})).collect::<Vec<_>>()),
            "adaround_seconds": r.rounding_secs,
            "adaround_layers": r.rounding.iter().map(|l| json!({"node": l.node, "k": l.k, "groups": l.groups, "rows": l.rows, "rel_err_nearest": l.rel_err_nearest, "rel_err_adaround": l.rel_err_learned, "flipped": l.flipped})).collect::<Vec<_>>(),
            "seconds": t0.elapsed().as_secs_f64(),
    });
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    Ok(report)
}
