//! `lowbit search-widths`: DMS channel-width search for a binary network ([`lowbit_train::dms`]),
//! and `train --binary ... --widths` building the found (or a uniformly scaled) architecture.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lowbit_core::Graph;
use lowbit_train::dms::{self, Dms, Groups};
use lowbit_train::train as tr;
use lowbit_train::Model;
use serde_json::{json, Value};

use crate::common::*;
use crate::outputs::write_atomic;
use crate::train_args::{binary_name, binary_of, load_training, progress_printer, train_config, TrainArgs};

#[derive(clap::Args, Clone)]
pub struct SearchArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Budget in binary multiply-accumulates per image: a number (K/M/G suffixes) or a multiple of
    /// the model's own widths, e.g. 1x
    #[arg(long, conflicts_with = "budget_params")]
    pub budget_ops: Option<String>,
    /// Budget in binary weights: a number (K/M/G) or a multiple of the model's own, e.g. 1x
    #[arg(long)]
    pub budget_params: Option<String>,
    /// Candidate width multipliers of every searched channel group
    #[arg(long, default_value = "0.5,1,1.5,2,3")]
    pub candidates: String,
    /// Weight of the budget penalty λ·ln²(cost / budget)
    #[arg(long, default_value_t = 2.0)]
    pub penalty: f32,
}

/// The channel groups holding a binary convolution's input or output channels.
fn searched(gr: &Groups, binary: &[String]) -> Vec<usize> {
    let mut v: Vec<usize> =
        binary.iter().flat_map(|c| [gr.input_group.get(c), gr.output_group.get(c)]).flatten().copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn width_of(m: f64, base: usize) -> usize {
    ((m * base as f64).round() as usize).max(1)
}

/// `g` (a Bi-Real graph whose binary convolutions are `binary`) at the widths `spec` asks for: a
/// `search-widths` file or one multiplier. Returns the graph and the widths as a report.
pub fn widen(g: &Graph, binary: &[String], spec: &str, seed: u64) -> Result<(Graph, Value)> {
    let gr = dms::channel_groups(g).map_err(|e| anyhow!("--widths: {e}"))?;
    let mut widths: Vec<Option<usize>> = vec![None; gr.groups.len()];
    let groups = searched(&gr, binary);
    if let Ok(m) = spec.parse::<f64>() {
        if !(m.is_finite() && m > 0.0) {
            bail!("--widths {spec}: a multiplier must be above 0");
        }
        for &i in &groups {
            widths[i] = Some(width_of(m, gr.groups[i].base));
        }
    } else {
        let text = std::fs::read_to_string(spec).with_context(|| format!("--widths {spec}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{spec}: not JSON"))?;
        let list = v["widths"].as_array().ok_or_else(|| anyhow!("{spec}: no 'widths' list"))?;
        for (k, e) in list.iter().enumerate() {
            let first = e["layers"][0].as_str().ok_or_else(|| anyhow!("{spec}: widths[{k}] has no 'layers'"))?;
            let w =
                e["width"].as_u64().filter(|&w| w > 0).ok_or_else(|| anyhow!("{spec}: widths[{k}] has no width"))?;
            let i = gr
                .groups
                .iter()
                .position(|gp| gp.convs.first().map(String::as_str) == Some(first))
                .ok_or_else(|| anyhow!("{spec}: widths[{k}]: '{first}' opens no channel group of this model"))?;
            widths[i] = Some(w as usize);
        }
    }
    let out = dms::apply_widths(g, &gr, &widths, seed).map_err(|e| anyhow!("--widths: {e}"))?;
    let rep: Vec<Value> = groups
        .iter()
        .map(|&i| {
            let w = widths[i].unwrap_or(gr.groups[i].base);
            json!({"layers": gr.groups[i].convs, "base": gr.groups[i].base, "width": w})
        })
        .collect();
    Ok((out, json!(rep)))
}

/// A budget: a number with an optional K/M/G suffix, or a multiple of `own` ("1.25x").
fn parse_budget(s: &str, own: f64) -> Result<f64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'x' | 'X')) => (&t[..i], own),
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * mul),
        _ => bail!("budget '{s}' is not a positive number (K/M/G) or multiple (e.g. 1x)"),
    }
}

pub fn search_widths(s: &SearchArgs) -> Result<()> {
    let a = &s.train;
    let t_all = Instant::now();
    let how =
        binary_of(a).ok_or_else(|| anyhow!("search-widths searches binary networks: pass --binary irnet|xnor"))?;
    let (budget_spec, ops) = match (&s.budget_ops, &s.budget_params) {
        (Some(b), None) => (b.clone(), true),
        (None, Some(b)) => (b.clone(), false),
        _ => bail!("pass --budget-ops or --budget-params"),
    };
    let mut cands: Vec<f64> = vec![];
    for c in s.candidates.split(',') {
        match c.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => cands.push(v),
            _ => bail!("--candidates: '{c}' is not a multiplier above 0"),
        }
    }
    cands.sort_by(f64::total_cmp);
    cands.dedup();
    if cands.len() < 2 {
        bail!("--candidates needs at least two multipliers");
    }
    if !(s.penalty.is_finite() && s.penalty > 0.0) {
        bail!("--penalty must be above 0");
    }
    let cfg = train_config(a, None, true)?;
    let (g, _, train_set, test_set) = load_training(a)?;
    let device = lowbit_train::device();
    let err = |e: lowbit_train::Error| anyhow!("{}: {e}", a.model.display());
    let br = lowbit_train::binary::bireal(&g).map_err(err)?;
    let gr = dms::channel_groups(&br.graph).map_err(err)?;
    let groups = searched(&gr, &br.binary_convs);
    // Cost terms on the model's own widths (a forward records every value's size).
    let mut base = Model::from_graph(&br.graph, &device).map_err(err)?;
    lowbit_train::binary::mark(&mut base, &br.binary_convs, how).map_err(err)?;
    tr::evaluate(&mut base, &train_set.slice(0, 2.min(train_set.n)), 2).map_err(err)?;
    let terms = lowbit_train::dms_setup::cost_terms(&base, &gr, ops).map_err(err)?;
    let own = dms::cost_at(&terms, &|i| gr.groups[i].base as f64);
    let budget = parse_budget(&budget_spec, own)?;
    let cand_w: Vec<Vec<usize>> = groups
        .iter()
        .map(|&i| {
            let mut w: Vec<usize> = cands.iter().map(|&m| width_of(m, gr.groups[i].base)).collect();
            w.dedup();
            w
        })
        .collect();
    // The supernet: every searched group at its largest candidate, the model's weights leading.
    let mut widths = vec![None; gr.groups.len()];
    for (k, &i) in groups.iter().enumerate() {
        widths[i] = cand_w[k].last().copied();
    }
    let sg = dms::apply_widths(&br.graph, &gr, &widths, a.seed).map_err(err)?;
    let mut model = Model::from_graph(&sg, &device).map_err(err)?;
    lowbit_train::binary::mark(&mut model, &br.binary_convs, how).map_err(err)?;
    if a.reinit {
        model.reinitialize(a.seed);
    }
    // Start every group at the candidate nearest the uniform scaling that meets the budget (the
    // cost grows with the square of a uniform multiplier).
    let u = (budget / own).sqrt();
    let start: Vec<f32> = groups
        .iter()
        .zip(&cand_w)
        .map(|(&i, w)| {
            let b = u * gr.groups[i].base as f64;
            (0..w.len()).min_by(|&x, &y| (w[x] as f64 - b).abs().total_cmp(&(w[y] as f64 - b).abs())).unwrap_or(0)
                as f32
        })
        .collect();
    let search: Vec<(usize, Vec<usize>)> = groups.iter().copied().zip(cand_w.iter().cloned()).collect();
    Dms::attach(&mut model, &gr, search, &start, terms.clone(), budget, s.penalty).map_err(err)?;
    eprintln!(
        "search-widths: {} channel groups, candidates {:?}, budget {:.4} M {} ({:.3}x the model's {:.4} M); supernet {} parameters, {} epochs on {} images ({})",
        groups.len(),
        cands,
        budget / 1e6,
        if ops { "binary MACs" } else { "binary weights" },
        budget / own,
        own / 1e6,
        model.num_params(),
        cfg.epochs,
        train_set.n.min(a.limit.unwrap_or(usize::MAX)),
        binary_name(how)
    );
    let mut on = progress_printer(cfg.epochs, Path::new("-"), "train", "supernet test");
    let t_train = Instant::now();
    let history = tr::train(&mut model, &train_set, &test_set, &cfg, None, None, "dms", &mut on).map_err(err)?;
    let train_s = t_train.elapsed().as_secs_f64();
    let d = model.dms.as_ref().ok_or_else(|| anyhow!("the search lost its state"))?;
    let mu = d.locations(&model);
    // The final widths: the most probable combination under the annealed distribution that fits
    // the budget. Each group's location lies on a candidate or, typically, near the boundary
    // between two (where the relaxation mixes them), so each group chooses the candidate below or
    // above it, with the logistic probabilities at the final spread; ties go to the larger cost.
    // If even the lower candidates overshoot, step down the group nearest its next lower one.
    let cost_of = |p: &[usize]| {
        dms::cost_at(&terms, &|i| match groups.iter().position(|&g| g == i) {
            Some(k) => cand_w[k][p[k]] as f64,
            None => gr.groups[i].base as f64,
        })
    };
    let nearest = d.chosen(&model);
    let rounded = cost_of(&nearest);
    let lower: Vec<usize> =
        mu.iter().zip(&cand_w).map(|(m, w)| (m.floor().max(0.0) as usize).min(w.len() - 1)).collect();
    let s_end = Dms::spread(1.0) as f64;
    let log_p = |k: usize, up: bool| {
        let z = (lower[k] as f64 + 0.5 - mu[k] as f64) / s_end;
        // ln F(z) for the lower candidate, ln(1 - F(z)) for the upper.
        let z = if up { -z } else { z };
        -(1.0 + (-z).exp()).ln()
    };
    let mut pick = lower.clone();
    let g = groups.len().min(16);
    let mut best: Option<(f64, f64)> = None;
    for bits in 0u32..(1 << g) {
        let up = |k: usize| k < g && bits >> k & 1 == 1 && lower[k] + 1 < cand_w[k].len();
        let p: Vec<usize> = (0..groups.len()).map(|k| lower[k] + usize::from(up(k))).collect();
        let c = cost_of(&p);
        let lp: f64 = (0..groups.len()).map(|k| log_p(k, up(k))).sum();
        let better = match best {
            None => true,
            Some((bl, bc)) => lp > bl + 1e-9 || ((lp - bl).abs() <= 1e-9 && c > bc),
        };
        if c <= budget * (1.0 + 1e-9) && better {
            best = Some((lp, c));
            pick = p;
        }
    }
    while cost_of(&pick) > budget * (1.0 + 1e-9) {
        let k = (0..pick.len())
            .filter(|&k| pick[k] > 0)
            .max_by(|&x, &y| (pick[x] as f32 - mu[x]).total_cmp(&(pick[y] as f32 - mu[y])));
        match k {
            Some(k) => pick[k] -= 1,
            None => break,
        }
    }
    let cost = cost_of(&pick);
    let hist = d.history.lock().map(|h| h.clone()).unwrap_or_default();
    let mut rows = vec![];
    let mut list = vec![];
    for (k, &i) in groups.iter().enumerate() {
        let gp = &gr.groups[i];
        let w = cand_w[k][pick[k]];
        // The group's binary MACs at the model's own widths (convolutions whose output is the group).
        let own: Vec<dms::CostTerm> = terms.iter().filter(|t| t.output == dms::Side::Group(i)).cloned().collect();
        let macs = dms::cost_at(&own, &|g| gr.groups[g].base as f64);
        let nconv = own.len();
        rows.push(vec![
            format!("{} .. ({} convs)", gp.convs.first().cloned().unwrap_or_default(), gp.convs.len()),
            gp.base.to_string(),
            format!("{:.3}", macs / 1e6 / nconv.max(1) as f64),
            format!("{:.2}", mu[k]),
            w.to_string(),
            format!("{:.2}", w as f64 / gp.base as f64),
        ]);
        list.push(json!({
            "layers": gp.convs, "base": gp.base, "width": w, "multiplier": w as f64 / gp.base as f64,
            "location": mu[k], "candidates": cand_w[k],
            if ops { "binary_macs_per_conv_at_base" } else { "binary_weights_per_conv_at_base" }: macs / nconv.max(1) as f64,
        }));
    }
    println!();
    print_table(
        &[
            "group (first conv)",
            "base",
            if ops { "M binary MACs/conv" } else { "M binary weights/conv" },
            "location",
            "width",
            "x",
        ],
        &rows,
    );
    println!(
        "cost {:.4} M ({:.3}x budget; nearest candidates {:.3}x); supernet test top-1 {:.2}% after {:.0} s",
        cost / 1e6,
        cost / budget,
        rounded / budget,
        history.last().map_or(f64::NAN, |l| l.test_acc * 100.0),
        train_s
    );
    let names: Vec<String> = groups.iter().map(|&i| gr.groups[i].convs.first().cloned().unwrap_or_default()).collect();
    let report = json!({
        "model": a.model.display().to_string(),
        "binary": binary_name(how),
        "widths": list,
        "budget": {"kind": if ops { "binary_macs" } else { "binary_weights" }, "value": budget, "model_own": own},
        "cost": cost,
        "cost_nearest": rounded,
        "candidates": cands,
        "penalty": s.penalty,
        "history": history,
        "expected_widths": hist.iter().step_by((hist.len() / 200).max(1)).map(|(p, w, c)| json!({"progress": p, "widths": w, "cost": c})).collect::<Vec<_>>(),
        "groups": names,
        "train_seconds": train_s,
        "total_seconds": t_all.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    write_atomic(&a.output, text.as_bytes())?;
    // The search curves: expected width per group over training.
    let mut svg_curves: Vec<(String, Vec<(f64, f64)>)> = vec![];
    for (k, n) in names.iter().enumerate() {
        let pts = hist
            .iter()
            .step_by((hist.len() / 400).max(1))
            .map(|(p, w, _)| (*p as f64 * cfg.epochs as f64, w[k] as f64))
            .collect();
        svg_curves.push((format!("{n} (base {})", gr.groups[groups[k]].base), pts));
    }
    let cost_pts = hist
        .iter()
        .step_by((hist.len() / 400).max(1))
        .map(|(p, _, c)| (*p as f64 * cfg.epochs as f64, *c as f64 / budget))
        .collect();
    let charts: Vec<(&str, Vec<(&str, Vec<(f64, f64)>)>)> = vec![
        ("expected width", svg_curves.iter().map(|(n, p)| (n.as_str(), p.clone())).collect()),
        ("expected cost / budget", vec![("cost", cost_pts)]),
    ];
    let plot = a.plot.clone().unwrap_or_else(|| {
        let mut s = a.output.as_os_str().to_owned();
        s.push(".curve.svg");
        s.into()
    });
    write_atomic(&plot, crate::svg::curves(&format!("{}: DMS width search", a.model.display()), &charts).as_bytes())?;
    eprintln!("wrote {} and {}", a.output.display(), plot.display());
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    Ok(())
}
