//! `lowbit train --int8-train`: switching the model's convolutions to the integer training
//! kernels, and the per-layer gradient report (deviation, chosen clip against the max, DCLS
//! factor over training, and where the time went) as a table, JSON and SVG.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use lowbit_kernels::isa::Paths;
use lowbit_train::conv8::Int8Config;
use lowbit_train::Model;
use serde_json::{json, Value};

use crate::common::*;
use crate::train_args::TrainArgs;

/// Marks the convolutions of `m` for INT8 training; the JSON of the setting.
pub fn enable(a: &TrainArgs, m: &mut Model) -> Result<Value> {
    let isa = Paths::selected().map_err(|e| anyhow!(e))?.int8;
    let mut cfg = Int8Config::new(isa);
    cfg.grad_bits = a.grad_bits;
    cfg.dsgc = !a.no_dsgc;
    cfg.dcls = !a.no_dcls;
    cfg.seed = a.seed;
    let names = m.enable_int8(cfg, a.int8_all);
    if names.is_empty() {
        bail!(
            "{}: no convolution to train in int8 (grouped and dilated ones stay f32, and those reading the model input unless --int8-all)",
            a.model.display()
        );
    }
    if cfg.dcls && a.optimizer.as_deref() == Some("adamw") {
        eprintln!("warning: DCLS scales weight gradients, which AdamW's normalisation largely cancels; use SGD (the default) for it to act as a learning-rate scale");
    }
    if isa == lowbit_kernels::int8::Isa::Scalar {
        eprintln!(
            "warning: the integer path is the portable scalar one (LOWBIT_ISA or this CPU): int8 training will be slow"
        );
    }
    eprintln!(
        "int8 training: {} convolutions on the {} integer path (errors {} bits, {}, {}){}",
        names.len(),
        isa.name(),
        cfg.grad_bits,
        if cfg.dsgc { "DSGC clip" } else { "max clip" },
        if cfg.dcls { "DCLS" } else { "no DCLS" },
        if a.int8_all {
            "; linear layers stay f32"
        } else {
            "; convolutions reading the model input and linear layers stay f32"
        }
    );
    Ok(json!({"path": isa.name(), "grad_bits": cfg.grad_bits, "dsgc": cfg.dsgc, "dcls": cfg.dcls,
        "alpha": cfg.alpha, "beta": cfg.beta, "dsgc_every": cfg.dsgc_every, "convs": names}))
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn series(v: &Series) -> Vec<(&str, Vec<(f64, f64)>)> {
    v.iter().map(|(n, p)| (n.as_str(), p.clone())).collect()
}

/// Prints the per-layer table, writes OUTPUT.int8.svg, and returns the layers' JSON
/// (`steps_per_epoch` puts the history on an epoch axis).
pub fn report(a: &TrainArgs, m: &Model, steps_per_epoch: usize) -> Result<Value> {
    let mut layers: Vec<_> = m.int8.values().cloned().collect();
    layers.sort_by_key(|l| l.index);
    let mut rows = vec![];
    let mut out = vec![];
    let (mut dev_s, mut ratio_s, mut fac_s): (Series, Series, Series) = (vec![], vec![], vec![]);
    let mut tot = [0f64; 4];
    for l in &layers {
        let h = l.history();
        let t = l.times();
        let secs = [t.forward, t.input_grad, t.weight_grad, t.quant].map(|d| d.as_secs_f64());
        tot.iter_mut().zip(secs).for_each(|(s, v)| *s += v);
        let mean =
            |f: &dyn Fn(&lowbit_train::conv8::Record) -> f64| h.iter().map(f).sum::<f64>() / h.len().max(1) as f64;
        let ratio = |r: &lowbit_train::conv8::Record| if r.max > 0.0 { (r.clip / r.max) as f64 } else { 1.0 };
        rows.push(vec![
            l.name.clone(),
            format!("{}", l.steps()),
            format!("{:.5}", mean(&|r| r.deviation)),
            format!("{:.3}", mean(&ratio)),
            format!("{:.3}", mean(&|r| r.factor)),
            format!("{:.1}", secs[0]),
            format!("{:.1}", secs[1]),
            format!("{:.1}", secs[2]),
            format!("{:.1}", secs[3]),
        ]);
        let x = |r: &lowbit_train::conv8::Record| r.step as f64 / steps_per_epoch as f64;
        dev_s.push((l.name.clone(), h.iter().map(|r| (x(r), r.deviation)).collect::<Vec<_>>()));
        ratio_s.push((l.name.clone(), h.iter().map(|r| (x(r), ratio(r))).collect::<Vec<_>>()));
        fac_s.push((l.name.clone(), h.iter().map(|r| (x(r), r.factor)).collect::<Vec<_>>()));
        out.push(json!({"name": l.name, "steps": l.steps(), "seconds": {"forward": secs[0], "input_grad": secs[1],
            "weight_grad": secs[2], "quantization": secs[3]}, "history": h}));
    }
    rows.push(vec![
        "all int8 convolutions".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        format!("{:.1}", tot[0]),
        format!("{:.1}", tot[1]),
        format!("{:.1}", tot[2]),
        format!("{:.1}", tot[3]),
    ]);
    println!();
    print_table(&["int8 conv", "steps", "mean dev", "clip/max", "DCLS", "fwd s", "dX s", "dW s", "quant s"], &rows);
    let mut p = a.output.as_os_str().to_owned();
    p.push(".int8.svg");
    let svg = crate::svg::curves(
        &format!("{}: int8 training, per convolution", a.model.display()),
        &[
            ("deviation 1 - cos(dY, q(dY))", series(&dev_s)),
            ("clip / max |dY|", series(&ratio_s)),
            ("DCLS learning-rate factor", series(&fac_s)),
        ],
    );
    write_atomic(&PathBuf::from(&p), svg.as_bytes())?;
    eprintln!("gradient report: {}", PathBuf::from(&p).display());
    Ok(json!(out))
}
