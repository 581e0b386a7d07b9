//! `lowbit quantize`: calibrate, build the QDQ model, evaluate before/after, write the file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_data::Split;
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig};
use lowbit_quant::scheme::{Kind, Mode};
use lowbit_runtime::classify::{self, Classifier};
use serde_json::json;

use crate::common::*;

#[derive(clap::Args, Clone)]
pub struct QuantizeArgs {
    pub model: PathBuf,
    /// Calibration data (IDX folder/file or image folder)
    #[arg(long, required_unless_present = "data")]
    pub calib: Option<PathBuf>,
    /// Automatic pipeline on a labelled IDX folder with train and test splits: L1 data-free
    /// (weights only), L2 calibrated with sensitivity-driven mixed precision (--max-drop), and L3
    /// quantization-aware training only if the budget is still missed; a table of every stage
    #[arg(long, conflicts_with_all = ["calib", "eval"])]
    pub data: Option<PathBuf>,
    /// L3 method (ste, lsq, pact, dsq) and epochs
    #[arg(long, default_value = "lsq")]
    pub qat_method: String,
    #[arg(long, default_value_t = 1)]
    pub qat_epochs: usize,
    /// Split of an IDX folder used for calibration
    #[arg(long, default_value = "train", value_parser = ["train", "test"])]
    pub calib_split: String,
    /// Number of calibration images
    #[arg(long, default_value_t = 1000)]
    pub calib_n: usize,
    /// Weight bits (2..=8), per-channel symmetric
    #[arg(long, default_value_t = 8)]
    pub weights: u8,
    /// Activation bits (2..=8), per-tensor affine
    #[arg(long, default_value_t = 8)]
    pub acts: u8,
    /// Activation range method: auto (try all, keep the one closest to float on the
    /// calibration images) | minmax | percentile[:P] | entropy | mse
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// Per-tensor weights instead of per-channel
    #[arg(long)]
    pub per_tensor: bool,
    /// Weight values: linear (symmetric scale), pow2 (power-of-two scales: requantization is a
    /// shift), log (0 or ±2^k, 2..4 bits), kmeans (2^bits shared values per layer). All are written
    /// as int8 weights of a standard DequantizeLinear, so ONNX Runtime and lowbit's integer kernels run
    /// them; the file's metadata names the scheme of each layer
    #[arg(long, default_value = "linear")]
    pub scheme: String,
    /// Cross-layer equalization of consecutive convolutions before quantizing (DFQ)
    #[arg(long)]
    pub cle: bool,
    /// With --cle: equalize every pair, replacing ReLU6 by ReLU even where activations reach 6 (as
    /// the DFQ paper does; this changes the float function, and --eval measures against the
    /// original model)
    #[arg(long)]
    pub cle_relu6_to_relu: bool,
    /// Bias absorption across Conv-ReLU-Conv pairs (DFQ; uses calibration minima since
    /// folded models carry no BatchNorm statistics)
    #[arg(long)]
    pub absorb_bias: bool,
    /// Turn off bias correction of weight-quantization error
    #[arg(long)]
    pub no_bias_correction: bool,
    /// DFQ's data-free statistics: where a layer's input comes from a convolution followed by
    /// BatchNormalization in the given (unfolded) model, bias correction and bias absorption use
    /// that BatchNorm's beta and gamma (the input as N(beta, gamma^2) through its activation)
    /// instead of calibration data; activation ranges and the ReLU6 check of --cle still come
    /// from --calib
    #[arg(long)]
    pub bn_stats: bool,
    /// Per-layer sensitivity table (and plot with --plots)
    #[arg(long)]
    pub sensitivity: bool,
    /// Mixed precision: raise the most sensitive layers to 8-bit weights until the top-1 drop
    /// on the (labelled) calibration images is at most this many percentage points
    #[arg(long)]
    pub max_drop: Option<f64>,
    /// Folder for SVG plots: per-layer sensitivity and activation histograms with clip ranges
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Keep the first / last compute layer in float
    #[arg(long)]
    pub skip_first: bool,
    #[arg(long)]
    pub skip_last: bool,
    /// Evaluate float and quantized on this labelled data (or agreement when unlabelled)
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Limit the evaluation images
    #[arg(long)]
    pub eval_limit: Option<usize>,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Summary of a quantization run.
pub struct QuantizeOutcome {
    pub float_top1: Option<f64>,
    pub quant_top1: Option<f64>,
    pub float_weight_bytes: usize,
    pub quant_weight_bytes: usize,
    /// Weight bits per quantized layer (after mixed precision).
    pub weight_bits: Vec<(String, Option<u8>)>,
    pub graph: lowbit_core::Graph,
}

pub fn quantize(a: &QuantizeArgs) -> Result<QuantizeOutcome> {
    let auto = a.method == "auto";
    let method = if auto {
        Method::Mse
    } else {
        Method::parse(&a.method)
            .ok_or_else(|| anyhow!("unknown --method '{}' (auto, minmax, percentile[:P], entropy, mse)", a.method))?
    };
    for (what, b) in [("--weights", a.weights), ("--acts", a.acts)] {
        if !(2..=8).contains(&b) {
            bail!("{what} {b} is out of range: linear quantization takes 2 to 8 bits");
        }
    }
    if a.calib_n == 0 {
        bail!("--calib-n must be at least 1");
    }
    let weight_kind = match a.scheme.as_str() {
        "linear" => Kind::Linear(Mode::Symmetric),
        "pow2" => Kind::Linear(Mode::PowerOfTwo),
        "log" if a.weights <= 4 => Kind::Log2,
        "log" => bail!(
            "--scheme log takes --weights 2 to 4 ({} asked): logarithmic levels ±2^k are stored as int8 multiples of the smallest level, and 2^(bits-1)-1 exponents must fit ±127",
            a.weights
        ),
        "kmeans" => Kind::KMeans,
        other => bail!("unknown --scheme '{other}' (linear, pow2, log, kmeans)"),
    };
    let t0 = Instant::now();
    let g = load_model(&a.model)?;
    let split = if a.calib_split == "test" { Split::Test } else { Split::Train };
    let calib_path = a.calib.clone().ok_or_else(|| anyhow!("--calib is required"))?;
    load_data(&calib_path, split, &lowbit_data::Preprocess::none(), Some(1))?;
    let (preset, pre) = choose_preset(a.preset.as_deref(), &g, &calib_path)?;
    let calib = load_data(&calib_path, split, &pre, Some(a.calib_n))?;
    let image_shape = vec![calib.c, calib.h, calib.w];
    let (mut canon, _) = lowbit_runtime::canonicalize_free(&g).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    // Check shapes with a clear message before the long part.
    let mut s1 = vec![1];
    s1.extend(&image_shape);
    compile(&canon, &a.model, s1, 1).map_err(|e| {
        anyhow!("{e} (calibration data {} has images of shape {:?})", calib_path.display(), image_shape)
    })?;
    let quick = |canon: &lowbit_core::Graph| {
        lowbit_quant::calibrate::calibrate(
            canon,
            &image_shape,
            &calib.data,
            calib.n,
            32,
            a.threads,
            false,
            &mut |_, _| {},
        )
        .map_err(|e| anyhow!("{}: calibration failed: {e}", a.model.display()))
    };
    let mut dfq_notes = vec![];
    let mut bn = a.bn_stats.then(|| lowbit_quant::dfq::BnDists::from_graph(&g));
    if let Some(d) = &bn {
        // Only pairs that folding merged describe a convolution of the canonical graph.
        let described = d.stats(&canon).len();
        if described == 0 {
            bail!(
                "{}: --bn-stats needs Conv -> BatchNormalization pairs with constant parameters, and this model has none (BatchNorm already folded?)",
                a.model.display()
            );
        }
        dfq_notes.push(format!("BatchNorm statistics: {described} convolutions described by N(beta, gamma^2)"));
        if a.no_bias_correction && !a.absorb_bias {
            dfq_notes.push("--bn-stats has no effect without bias correction or --absorb-bias".into());
        }
    }
    if a.cle {
        // The ReLU6 check stays on calibration data: BatchNorm's normal tails under-predict 6.
        let st = quick(&canon)?;
        let r = lowbit_quant::dfq::equalize(&mut canon, if a.cle_relu6_to_relu { None } else { Some(&st) }, 8);
        if let Some(d) = bn.as_mut() {
            d.rescale(&r.channel_scale);
        }
        dfq_notes.push(format!(
            "cross-layer equalization: {} conv pairs, {} ReLU6 -> ReLU{}, {} pairs skipped (ReLU6 saturates: {})",
            r.pairs,
            r.relu6_replaced,
            if a.cle_relu6_to_relu { " (all, as asked)" } else { " (never reached 6 on the calibration images)" },
            r.relu6_unsafe.len(),
            if r.relu6_unsafe.is_empty() { "none".to_string() } else { r.relu6_unsafe.join(", ") }
        ));
    }
    if a.absorb_bias {
        let mut st = quick(&canon)?;
        if let Some(d) = &bn {
            d.overlay(&canon, &mut st);
        }
        let (n, shifts) = lowbit_quant::dfq::absorb_biases(&mut canon, &st);
        if let Some(d) = bn.as_mut() {
            d.shift(&shifts);
        }
        dfq_notes.push(format!("bias absorption: {n} channels"));
    }
    // Hard-swish and hard-sigmoid become their own nodes, so their inputs are calibrated and quantized too.
    let split = lowbit_quant::qdq::split_activations(&mut canon);
    if split > 0 {
        dfq_notes.push(format!("{split} hard-swish/hard-sigmoid activations quantized on their own (8-bit table)"));
    }
    let pb = progress(0, "calibrate");
    let stats = lowbit_quant::calibrate::calibrate(
        &canon,
        &image_shape,
        &calib.data,
        calib.n,
        32,
        a.threads,
        auto || method.needs_histogram(),
        &mut |d, t| {
            pb.set_length(t as u64);
            pb.set_position(d as u64)
        },
    )
    .map_err(|e| anyhow!("{}: calibration failed: {e}", a.model.display()))?;
    pb.finish_and_clear();
    // With --bn-stats, bias correction reads BatchNorm's per-channel means (ranges stay calibrated).
    let mut stats = stats;
    if let Some(d) = &bn {
        d.overlay(&canon, &mut stats);
    }
    let cfg = QdqConfig {
        weight_bits: a.weights,
        act_bits: a.acts,
        per_channel: !a.per_tensor,
        method,
        weight_mse: a.weights < 8,
        skip_first: a.skip_first,
        skip_last: a.skip_last,
        bias_correction: !a.no_bias_correction,
        weight_kind,
        ..Default::default()
    };
    let mut bias_corrected = !a.no_bias_correction;
    // `auto` scores its candidates on up to 1,000 calibration images (the same cap as sensitivity below).
    let auto_n = calib.n.min(1000);
    let (q, method, candidates) = if auto {
        let (q, c) = lowbit_quant::select::choose_method(
            &canon,
            &stats,
            &cfg,
            &lowbit_quant::select::default_candidates(),
            // --no-bias-correction holds for auto too; otherwise auto tries both.
            if a.no_bias_correction { &[false] } else { &[true, false] },
            &image_shape,
            &calib.data[..auto_n * calib.image_len()],
            auto_n,
            a.threads,
        )
        .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
        let m = c[0].method;
        bias_corrected = c[0].bias_correction;
        (q, m, c)
    } else {
        (build_qdq(&canon, &stats, &cfg).map_err(|e| anyhow!("{}: {e}", a.model.display()))?, method, vec![])
    };
    if !candidates.is_empty() {
        let rows: Vec<Vec<String>> = candidates
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
        println!(
            "range method on {auto_n} calibration images (chosen, first row: the lowest KL among those whose agreement \
             with float is within sampling noise of the best):"
        );
        print_table(&["method", "bias corr.", "top-1 agreement", "KL", "near best agreement"], &rows);
        println!();
    }
    // Sensitivity and mixed precision, scored on the calibration images (never the evaluation set).
    let mut q = q;
    let mut sens_json = serde_json::Value::Null;
    let mut mixed_json = serde_json::Value::Null;
    let mut sens_rows: Vec<(String, f64, String)> = vec![];
    if a.sensitivity || a.max_drop.is_some() {
        use lowbit_quant::sensitivity::*;
        let n = calib.n.min(1000);
        let set = ScoreSet {
            image_shape: &image_shape,
            data: &calib.data[..n * calib.image_len()],
            n,
            labels: calib.labels.as_ref().map(|l| &l[..n]),
            threads: a.threads,
        };
        let chosen = QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() };
        let r = Reference::new(&canon, &set).map_err(|e| anyhow!("{e}"))?;
        let pb = progress(0, "sensitivity");
        let sens = layer_sensitivity(&canon, &stats, &chosen, &set, &r, &mut |d, t| {
            pb.set_length(t as u64);
            pb.set_position(d as u64)
        })
        .map_err(|e| anyhow!("{e}"))?;
        pb.finish_and_clear();
        let what = if set.labels.is_some() { "top-1 drop" } else { "agreement drop" };
        println!(
            "per-layer sensitivity at W{}A{} (only that layer quantized; {n} calibration images):",
            a.weights, a.acts
        );
        let rows: Vec<Vec<String>> = sens
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
        println!();
        sens_rows = sens.iter().map(|l| (l.node.clone(), l.drop_pp, format!("({:.1} dB)", l.sqnr_db))).collect();
        sens_json = json!(sens
            .iter()
            .map(|l| json!({"node": l.node, "params": l.params, "drop_pp": l.drop_pp, "sqnr_db": l.sqnr_db}))
            .collect::<Vec<_>>());
        if let Some(md) = a.max_drop {
            let mp = mixed_precision(&canon, &stats, &chosen, 8, &sens, md, &set, &r).map_err(|e| anyhow!("{e}"))?;
            println!(
                "mixed precision for --max-drop {md}: {} layer(s) raised to 8-bit weights ({}); {what} on calibration images {:.2} pp{}",
                mp.raised.len(),
                if mp.raised.is_empty() { "none".to_string() } else { mp.raised.join(", ") },
                mp.drop_pp,
                if mp.within_budget { "" } else { " -- budget NOT met even with every layer raised" }
            );
            println!();
            mixed_json = json!({"max_drop_pp": md, "raised": mp.raised, "drop_pp": mp.drop_pp, "within_budget": mp.within_budget});
            q = mp.model;
        }
    }
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: cannot create folder: {e}", dir.display()))?;
        if !sens_rows.is_empty() {
            let unit = if calib.labels.is_some() { "pp top-1" } else { "pp agreement" };
            write_atomic(
                &dir.join("sensitivity.svg"),
                crate::svg::bar_chart(
                    &format!("{}: per-layer sensitivity at W{}A{}", a.model.display(), a.weights, a.acts),
                    unit,
                    &sens_rows,
                )
                .as_bytes(),
            )?;
        }
        let mut names: Vec<&String> = q.act_params.keys().collect();
        names.sort();
        let hists: Vec<crate::svg::Hist> = names
            .iter()
            .filter_map(|n| stats.get(*n).map(|o| (n, o)))
            .filter(|(_, o)| !o.hist.is_empty())
            .map(|(n, o)| {
                let (s, z) = q.act_params[*n];
                let lo = (0 - z) as f32 * s;
                let hi = (((1i32 << a.acts) - 1) - z) as f32 * s;
                crate::svg::Hist { name: n, pos: &o.hist, neg: &o.hist_neg, hist_max: o.hist_max, lo, hi }
            })
            .collect();
        write_atomic(
            &dir.join("histograms.svg"),
            crate::svg::histograms(&format!("{}: activation histograms and clip ranges", a.model.display()), &hists)
                .as_bytes(),
        )?;
        println!("plots written to {}/", dir.display());
    }
    if !q.layers.iter().any(|l| l.weight_bits.is_some()) {
        bail!("{}: no quantizable layer (Conv/Gemm/MatMul with constant weights) in this model", a.model.display());
    }
    let calib_secs = t0.elapsed().as_secs_f64();

    // Before/after on evaluation data.
    let (mut ftop, mut qtop, mut agree, mut eval_n) = (None, None, None, 0);
    if let Some(ev) = &a.eval {
        let set = load_data(ev, Split::Test, &pre, a.eval_limit)?;
        if [set.c, set.h, set.w] != image_shape[..] {
            bail!(
                "{}: evaluation images are {:?}, calibration images {:?}",
                ev.display(),
                [set.c, set.h, set.w],
                image_shape
            );
        }
        eval_n = set.n;
        let mut fc = Classifier::new(g.clone(), image_shape.clone(), a.threads);
        let mut qc = Classifier::new(q.graph.clone(), image_shape.clone(), a.threads);
        let pb = progress(set.n as u64, "evaluate");
        let r = classify::evaluate(&mut qc, Some(&mut fc), &set.data, set.n, set.labels.as_deref(), 100, &mut |d| {
            pb.set_position(d as u64)
        })
        .map_err(|e| anyhow!("evaluation failed: {e}"))?;
        pb.finish_and_clear();
        qtop = r.top1;
        agree = r.agreement.clone();
        if set.labels.is_some() {
            let fr = classify::evaluate(&mut fc, None, &set.data, set.n, set.labels.as_deref(), 100, &mut |_| {})
                .map_err(|e| anyhow!("evaluation failed: {e}"))?;
            ftop = fr.top1;
        }
    }
    lowbit_onnx::write_model(&q.graph, &a.output).map_err(|e| anyhow!("{e}"))?;
    let file_in = std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0);
    let file_out = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);

    println!(
        "{} -> {} (W{}A{}{}, {}, preset {preset}, {} calibration images)",
        a.model.display(),
        a.output.display(),
        a.weights,
        a.acts,
        if a.scheme == "linear" { String::new() } else { format!(" {} weights", a.scheme) },
        method.name(),
        calib.n
    );
    let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", x * 100.0)).unwrap_or_else(|| "-".into());
    let mut rows = vec![vec![
        "weights".into(),
        format!("{:.1} KB", q.float_weight_bytes as f64 / 1e3),
        format!("{:.1} KB", q.weight_bytes as f64 / 1e3),
        format!("{:.1}%", q.weight_bytes as f64 / q.float_weight_bytes.max(1) as f64 * 100.0),
    ]];
    rows.push(vec![
        "file".into(),
        format!("{:.1} KB", file_in as f64 / 1e3),
        format!("{:.1} KB", file_out as f64 / 1e3),
        String::new(),
    ]);
    if a.eval.is_some() {
        let drop = match (ftop, qtop) {
            (Some(f), Some(q)) => format!("{:+.2} pp", (q - f) * 100.0),
            _ => String::new(),
        };
        rows.push(vec![format!("top-1 ({eval_n} images)"), pct(ftop), pct(qtop), drop]);
        if let Some(ag) = &agree {
            rows.push(vec!["top-1 agreement".into(), "100%".into(), format!("{:.2}%", ag.top1 * 100.0), String::new()]);
            rows.push(vec!["logit cosine".into(), "1".into(), format!("{:.5}", ag.cosine), String::new()]);
        }
    }
    for n in &dfq_notes {
        println!("{n}");
    }
    print_table(&["", "float", "quantized", "change"], &rows);
    let lrows: Vec<Vec<String>> = q
        .layers
        .iter()
        .map(|l| {
            vec![
                l.node.clone(),
                l.op.clone(),
                l.params.to_string(),
                l.weight_bits.map(|b| b.to_string()).unwrap_or_else(|| "f32".into()),
                l.act_bits.map(|b| b.to_string()).unwrap_or_else(|| "f32".into()),
            ]
        })
        .collect();
    println!();
    print_table(&["layer", "op", "params", "w bits", "a bits"], &lrows);
    println!("\ncalibration {:.1} s, total {:.1} s", calib_secs, t0.elapsed().as_secs_f64());
    if let Some(j) = &a.json {
        write_json(
            j,
            &json!({
                "model": a.model.display().to_string(), "output": a.output.display().to_string(),
                "weights_bits": a.weights, "weight_scheme": a.scheme, "act_bits": a.acts, "method": method.name(), "per_channel": !a.per_tensor, "bias_correction": bias_corrected, "bn_stats": a.bn_stats,
                "calibration_images": calib.n, "preset": preset,
                "method_candidates": candidates.iter().map(|c| json!({"method": c.method.name(), "bias_correction": c.bias_correction, "agreement": c.agreement, "kl": c.kl, "near_best_agreement": c.tied_best})).collect::<Vec<_>>(),
                "float_top1": ftop, "quant_top1": qtop, "eval_images": eval_n,
                "agreement": agree.as_ref().map(|g| json!({"top1": g.top1, "top5": g.top5, "cosine": g.cosine, "kl": g.kl})),
                "float_weight_bytes": q.float_weight_bytes, "quant_weight_bytes": q.weight_bytes,
                "file_bytes_in": file_in, "file_bytes_out": file_out,
                "layers": q.layers.iter().map(|l| json!({"node": l.node, "op": l.op, "params": l.params, "weight_bits": l.weight_bits, "act_bits": l.act_bits})).collect::<Vec<_>>(),
                "sensitivity": sens_json, "mixed_precision": mixed_json,
                "seconds": t0.elapsed().as_secs_f64(),
            }),
        )?;
    }
    Ok(QuantizeOutcome {
        float_top1: ftop,
        quant_top1: qtop,
        float_weight_bytes: q.float_weight_bytes,
        quant_weight_bytes: q.weight_bytes,
        weight_bits: q.layers.iter().map(|l| (l.node.clone(), l.weight_bits)).collect(),
        graph: q.graph.clone(),
    })
}
