//! `lowbit train`: float training and quantization-aware training of an ONNX model, with
//! progress, a table and JSON report, a loss/accuracy curve and resumable checkpoints.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_runtime::classify::Classifier;
use lowbit_train::qat;
use lowbit_train::train as tr;
use lowbit_train::{Model, QatMethod};
use serde_json::json;

use crate::common::*;
pub use crate::train_args::TrainArgs;
use crate::train_args::{binary_name, binary_of, load_training, progress_printer, train_config, write_curves};

pub fn train(a: &TrainArgs) -> Result<()> {
    if a.embed.task == "embed" {
        return crate::embed::train_embed(a);
    }
    let t_all = Instant::now();
    let method = match &a.qat {
        None => None,
        Some(m) => Some(QatMethod::parse(m).ok_or_else(|| anyhow!("unknown --qat '{m}' (ste, lsq, pact, dsq)"))?),
    };
    for (what, b) in [("--weights", a.weights), ("--acts", a.acts)] {
        if !(2..=8).contains(&b) {
            bail!("{what} {b} is out of range: linear quantization takes 2 to 8 bits");
        }
    }
    let binary = binary_of(a);
    let cfg = train_config(a, method, binary.is_some())?;
    let (g, preset, train_set, test_set) = load_training(a)?;
    let device = lowbit_train::device();
    let image_shape = vec![train_set.c, train_set.h, train_set.w];
    let teacher_graph = match &a.teacher {
        Some(p) => load_model(p)?,
        None => g.clone(),
    };
    let mut stages: Vec<Vec<String>> = vec![];
    let mut report = json!({"model": a.model.display().to_string(), "data": a.data.display().to_string(), "config": serde_json::to_value(&cfg)?});

    // The model to train: the float graph, or the deployable canonical graph with fake quantizers.
    let (mut model, prep, qcfg) = match method {
        None if binary.is_some() => {
            let how = binary.unwrap();
            let float_acc = top1(&g, &test_set, a.threads)?;
            stages.push(vec!["float".into(), format!("{:.2}", float_acc * 100.0), "-".into()]);
            report["float_top1"] = json!(float_acc);
            let br = lowbit_train::binary::bireal(&g).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            let graph = match &a.widths {
                Some(w) => {
                    let (graph, rep) = crate::widths::widen(&br.graph, &br.binary_convs, w, a.seed)?;
                    report["widths"] = rep;
                    graph
                }
                None => br.graph.clone(),
            };
            let mut m = Model::from_graph(&graph, &device).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            lowbit_train::binary::mark(&mut m, &br.binary_convs, how).map_err(|e| anyhow!("{e}"))?;
            if a.reinit || a.widths.is_some() {
                m.reinitialize(a.seed);
            }
            eprintln!(
                "binary: {} convolutions W1A1 ({}), Bi-Real shortcuts; first/last/shortcut layers 8-bit at export",
                br.binary_convs.len(),
                binary_name(how)
            );
            report["binary"] =
                json!({"method": binary_name(how), "libra": how.libra, "ede": how.ede, "convs": br.binary_convs});
            (m, None, None)
        }
        None => {
            let mut m = Model::from_graph(&g, &device).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            if a.reinit {
                m.reinitialize(a.seed);
            } else {
                let acc = top1(&g, &test_set, a.threads)?;
                stages.push(vec!["start (float)".into(), format!("{:.2}", acc * 100.0), "-".into()]);
            }
            if a.int8_train {
                report["int8_train"] = crate::int8_report::enable(a, &mut m)?;
            }
            (m, None, None)
        }
        Some(meth) => {
            let qc = a.qat_config(meth);
            let float_acc = top1(&g, &test_set, a.threads)?;
            stages.push(vec!["float".into(), format!("{:.2}", float_acc * 100.0), "-".into()]);
            report["float_top1"] = json!(float_acc);
            let calib = train_set.slice(0, a.calib_n.min(train_set.n));
            let t0 = Instant::now();
            let prep = qat::prepare(&g, &calib, &qc, a.threads).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            let ptq_acc = top1(&prep.ptq.graph, &test_set, a.threads)?;
            stages.push(vec![
                format!("PTQ W{}A{} (QAT start)", a.weights, a.acts),
                format!("{:.2}", ptq_acc * 100.0),
                format!("{:.1}", t0.elapsed().as_secs_f64()),
            ]);
            report["ptq_top1"] = json!(ptq_acc);
            let m = qat::model(&prep, &qc, train_set.image(0), &device)
                .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            (m, Some(prep), Some(qc))
        }
    };
    eprintln!(
        "training {} parameters for {} epochs ({}, lr {}, batch {}, {} threads{})",
        model.num_params(),
        cfg.epochs,
        match (method, binary) {
            (Some(m), _) => format!("QAT {} W{}A{}", m.name(), a.weights, a.acts),
            (None, Some(b)) => format!("binary {}", binary_name(b)),
            _ if a.int8_train => "int8 training".to_string(),
            _ => "float".to_string(),
        },
        cfg.lr,
        cfg.batch,
        a.threads,
        if cfg.distill.is_some() { ", distilling from the float model" } else { "" }
    );
    let mut teacher_cls = Classifier::new(teacher_graph, image_shape.clone(), a.threads);
    let mut teacher_fn = |x: &[f32], n: usize| -> lowbit_train::Result<Vec<f32>> {
        let l = teacher_cls.logits(x, n).map_err(|e| lowbit_train::Error::Invalid(format!("teacher: {e}")))?;
        Ok(l.concat())
    };
    let ckpt = tr::checkpoint_path(&a.output);
    if a.no_resume && ckpt.exists() {
        std::fs::remove_file(&ckpt).map_err(|e| anyhow!("{}: {e}", ckpt.display()))?;
    }
    let mut tag = format!("{}|{:?}|{}|{:?}|{:?}", a.model.display(), a.qat, a.reinit, binary, a.widths);
    if a.int8_train {
        tag += &format!("|int8 dsgc={} dcls={} bits={} all={}", !a.no_dsgc, !a.no_dcls, a.grad_bits, a.int8_all);
    }
    let mut on = progress_printer(cfg.epochs, &ckpt, "train", "test");
    let teacher: Option<&mut tr::Teacher> = if a.distill { Some(&mut teacher_fn) } else { None };
    let t_train = Instant::now();
    let history = tr::train(&mut model, &train_set, &test_set, &cfg, teacher, Some(&ckpt), &tag, &mut on)
        .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let train_s = t_train.elapsed().as_secs_f64();
    if std::env::var_os("LOWBIT_QAT_DEBUG").is_some() {
        if let Some(prep) = &prep {
            let (acts, weights) = qat::learned(&model);
            let mut names: Vec<&String> = acts.keys().collect();
            names.sort();
            for v in names {
                let init = prep.ptq.act_params.get(v).map(|p| p.0).unwrap_or(f32::NAN);
                eprintln!("act {v}: step {:.5} -> {:.5} (x{:.3})", init, acts[v].0, acts[v].0 / init);
            }
            for (n, s) in &weights {
                let mn = s.iter().copied().fold(f32::INFINITY, f32::min);
                let mx = s.iter().copied().fold(0f32, f32::max);
                eprintln!("weights {n}: steps {mn:.6} .. {mx:.6}");
            }
        }
    }
    let last = history.last().map(|l| l.test_acc).unwrap_or(f64::NAN);
    let epoch_s: Vec<f64> = history.iter().map(|l| l.seconds).collect();

    // Write the result and measure it on lowbit's runtime (integer kernels for QAT).
    let out_graph = match (&prep, &qcfg) {
        (Some(prep), Some(_)) => {
            let q = qat::export(&model, prep).map_err(|e| anyhow!("export: {e}"))?;
            report["weight_bytes"] = json!(q.weight_bytes);
            report["float_weight_bytes"] = json!(q.float_weight_bytes);
            report["layers"] = json!(q
                .layers
                .iter()
                .map(|l| json!({"node": l.node, "weight_bits": l.weight_bits, "act_bits": l.act_bits}))
                .collect::<Vec<_>>());
            stages.push(vec![
                format!("QAT {} (simulated)", method.unwrap().name()),
                format!("{:.2}", last * 100.0),
                format!("{train_s:.0}"),
            ]);
            q.graph
        }
        _ if binary.is_some() => {
            let calib = train_set.slice(0, a.calib_n.min(train_set.n));
            let q = lowbit_train::binary::export(&model, &calib, a.threads).map_err(|e| anyhow!("export: {e}"))?;
            report["weight_bytes"] = json!(q.weight_bytes);
            report["float_weight_bytes"] = json!(q.float_weight_bytes);
            report["layers"] = json!(q
                .layers
                .iter()
                .map(|l| json!({"node": l.node, "weight_bits": l.weight_bits, "act_bits": l.act_bits, "params": l.params}))
                .collect::<Vec<_>>());
            stages.push(vec![
                format!("{} W1A1 (simulated, real-valued path in float)", binary_name(binary.unwrap())),
                format!("{:.2}", last * 100.0),
                format!("{train_s:.0}"),
            ]);
            q.graph
        }
        _ => {
            let what = if a.int8_train { "trained (int8 convolutions)" } else { "trained (float)" };
            stages.push(vec![what.into(), format!("{:.2}", last * 100.0), format!("{train_s:.0}")]);
            let mut g2 = model.to_graph();
            g2.metadata.retain(|(k, _)| k != "lowbit.preprocess");
            g2.metadata.push(("lowbit.preprocess".into(), preset.clone()));
            g2
        }
    };
    let deployed = top1(&out_graph, &test_set, a.threads)?;
    stages.push(vec![
        if method.is_some() || binary.is_some() {
            "exported QDQ on lowbit's integer runtime".into()
        } else {
            "exported ONNX on lowbit's runtime".into()
        },
        format!("{:.2}", deployed * 100.0),
        "-".into(),
    ]);
    lowbit_onnx::write_model(&out_graph, &a.output).map_err(|e| anyhow!("{e}"))?;
    println!();
    print_table(&["stage", "test top-1 %", "time s"], &stages);
    println!(
        "epoch time: mean {:.1} s over {} epochs ({} threads, batch {}); wrote {}",
        epoch_s.iter().sum::<f64>() / epoch_s.len().max(1) as f64,
        epoch_s.len(),
        a.threads,
        a.batch,
        a.output.display()
    );
    report["history"] = serde_json::to_value(&history)?;
    report["deployed_top1"] = json!(deployed);
    if binary.is_some() {
        let (macs, weights) = lowbit_train::dms_setup::binary_cost(&model);
        report["binary_macs"] = json!(macs);
        report["binary_weights"] = json!(weights);
        report["params"] = json!(model.num_params());
    }
    report["stages"] = json!(stages);
    report["train_seconds"] = json!(train_s);
    report["total_seconds"] = json!(t_all.elapsed().as_secs_f64());
    report["threads"] = json!(a.threads);
    write_curves(a, &history, "training curves", ("top-1 %", "train", "test"))?;
    if a.int8_train {
        let steps = (train_set.n / a.batch).max(1);
        report["int8_train"]["layers"] = crate::int8_report::report(a, &model, steps)?;
    }
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    Ok(())
}
