//! The subcommands.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_core::{DType, Tensor};
use lowbit_data::Split;
use lowbit_kernels::isa::features;
use lowbit_runtime::classify::{self, Classifier, EvalReport};
use serde_json::json;

use crate::common::*;
use crate::DataArgs;

pub(crate) fn split(s: &str) -> Split {
    if s == "train" {
        Split::Train
    } else {
        Split::Test
    }
}

/// `lowbit inspect`: prints the model's layers and returns the JSON report (written to `json_out` too).
pub fn inspect(model: &Path, input_shape: Option<&str>, json_out: Option<&Path>) -> Result<serde_json::Value> {
    let mut g = load_model(model)?;
    let ov = input_shape.map(parse_shape).transpose()?;
    if let Some(s) = &ov {
        override_input_shape(&mut g, s).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    }
    let shape = input_shape_or_default(&g, ov.as_deref())?;
    let plan = compile(&g, model, shape.clone(), 1)?;
    let file_bytes = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
    let mut ops: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in &g.nodes {
        *ops.entry(n.op.op_type()).or_default() += 1;
    }
    crate::say!("model     {}", model.display());
    crate::say!("file      {:.2} MB, opset {}, {} nodes", file_bytes as f64 / 1e6, g.opset, g.nodes.len());
    crate::say!("ops       {}", ops.iter().map(|(k, v)| format!("{k}x{v}")).collect::<Vec<_>>().join(" "));
    crate::say!("params    {} ({:.2} MB as f32)", g.param_count(), g.param_count() as f64 * 4.0 / 1e6);
    // Weight schemes lowbit wrote (pow2 / log2 / kmeans layers carry a metadata entry each).
    let mut schemes: std::collections::BTreeMap<&str, usize> = Default::default();
    for (k, v) in &g.metadata {
        if k.starts_with("lowbit.quant.scheme.") {
            *schemes.entry(v.as_str()).or_default() += 1;
        }
    }
    if !schemes.is_empty() {
        let list: Vec<String> = schemes.iter().map(|(s, n)| format!("{s} weights on {n} layer(s)")).collect();
        crate::say!("schemes   {}", list.join(", "));
    }
    crate::say!("input     {:?}", shape);
    let sp = plan.specialized();
    crate::say!(
        "passes    {} constants folded, {} BatchNorms folded, {} hard-swish patterns, {} activations fused, {} identities removed",
        sp.folded,
        sp.passes.batchnorms_folded,
        sp.passes.hardswish_patterns,
        sp.passes.activations_fused,
        sp.passes.identities_removed
    );
    let rows: Vec<Vec<String>> = plan
        .steps()
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.op.clone(),
                s.kernel.clone(),
                format!("{:?}", s.out_shape),
                s.params.to_string(),
                format!("{:.2}", s.macs as f64 / 1e6),
            ]
        })
        .collect();
    print_table(&["layer", "op", "kernel", "output", "params", "MMAC"], &rows);
    crate::say!("total     {:.3} GMAC per batch of {}", plan.macs() as f64 / 1e9, shape[0]);
    crate::say!(
        "arena     {:.2} MB activations (liveness-planned), {:.2} MB scratch",
        plan.arena_bytes() as f64 / 1e6,
        plan.scratch_bytes() as f64 / 1e6
    );
    let f = features();
    crate::say!("cpu       {}", f.names().join(" "));
    let layers: Vec<_> = plan
        .steps()
        .iter()
        .map(|s| json!({"name": s.name, "op": s.op, "kernel": s.kernel, "output": s.out_shape, "params": s.params, "macs": s.macs}))
        .collect();
    let report = json!({"model": model.display().to_string(), "file_bytes": file_bytes, "opset": g.opset, "ops": ops,
        "params": g.param_count(), "input_shape": shape, "macs": plan.macs(), "arena_bytes": plan.arena_bytes(),
        "scratch_bytes": plan.scratch_bytes(), "layers": layers, "cpu_features": f.names()});
    if let Some(p) = json_out {
        write_json(p, &report)?;
    }
    Ok(report)
}

/// Input shape for batch 1, symbolic non-batch dims from the override.
fn input_shape_or_default(g: &lowbit_core::Graph, ov: Option<&[usize]>) -> Result<Vec<usize>> {
    let b = ov.and_then(|s| s.first().copied()).unwrap_or(1);
    input_shape(g, b, ov)
}

pub(crate) fn load_for(
    model: &Path,
    data: &Path,
    a: &DataArgs,
) -> Result<(lowbit_core::Graph, String, lowbit_data::ImageSet)> {
    let mut g = load_model(model)?;
    // Surface missing/empty/corrupt data before anything else.
    load_data(data, split(&a.split), &lowbit_data::Preprocess::none(), Some(1))?;
    let (preset, pre) = a.image.resolve(&g, data)?;
    let set = load_data(data, split(&a.split), &pre, a.limit)?;
    a.image.fit_model(&mut g, model, [set.c, set.h, set.w])?;
    // Check the data against the declared input shape up front, with a clear message.
    if let Some(lowbit_core::ValueInfo { shape: Some(dims), name, .. }) =
        g.runtime_inputs().first().map(|v| (*v).clone())
    {
        let ok = dims.len() == 4
            && dims.iter().zip([set.n, set.c, set.h, set.w]).skip(1).all(|(d, v)| match d {
                lowbit_core::Dim::Fixed(x) => *x == v,
                _ => true,
            });
        if !ok {
            let dims: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    lowbit_core::Dim::Fixed(v) => v.to_string(),
                    lowbit_core::Dim::Sym(s) => s.clone(),
                })
                .collect();
            bail!(
                "{}: model input '{name}' expects [{}] but the data {} holds images of shape [{}, {}, {}] (preset {preset})",
                model.display(),
                dims.join(", "),
                data.display(),
                set.c,
                set.h,
                set.w
            );
        }
    }
    Ok((g, preset, set))
}

pub fn run(
    model: &Path,
    input: &Path,
    a: &DataArgs,
    top: usize,
    threads: usize,
    json_out: Option<&Path>,
) -> Result<()> {
    let (g, preset, set) = load_for(model, input, a)?;
    let mut c = Classifier::new(g, vec![set.c, set.h, set.w], threads);
    let mut out = vec![];
    let mut rows = vec![];
    for (start, len, chunk) in set.batches(32) {
        let logits = c.logits(chunk, len).map_err(|e| anyhow!("{}: {e}", model.display()))?;
        for (i, l) in logits.iter().enumerate() {
            let p = classify::softmax(l);
            let t = classify::topk(l, top.max(1));
            rows.push(vec![
                set.names[start + i].clone(),
                t.iter().map(|&k| format!("{k}:{:.3}", p[k])).collect::<Vec<_>>().join(" "),
            ]);
            out.push(json!({"image": set.names[start + i], "top": t, "prob": t.iter().map(|&k| p[k]).collect::<Vec<_>>(), "logits": l}));
        }
    }
    crate::say!("preset {preset}, {} images", set.n);
    print_table(&["image", "top classes (class:prob)"], &rows);
    if let Some(p) = json_out {
        write_json(p, &json!({"model": model.display().to_string(), "preset": preset, "results": out}))?;
    }
    Ok(())
}

/// A file name from a value or image name: path separators and control characters become '_'.
pub(crate) fn safe_name(s: &str) -> String {
    let t: String =
        s.chars().map(|c| if c == '/' || c == '\\' || c.is_control() || c == ':' { '_' } else { c }).collect();
    match t.as_str() {
        "" | "." | ".." => format!("_{t}"),
        _ => t,
    }
}

/// The folder name of image `i` called `name` in saved outputs: its file stem.
pub(crate) fn image_stem(name: &str, i: usize) -> String {
    Path::new(name).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| format!("{i}"))
}

/// Reads a NumPy .npy file of little-endian float32 values in C order (as [`npy_f32`] and
/// `numpy.save` of a float32 array write them).
pub(crate) fn read_npy_f32(p: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let b = std::fs::read(p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    let bad = |why: &str| anyhow!("{}: not a float32 .npy file: {why}", p.display());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(bad(&format!("version {v}"))),
    };
    let header = b.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?;
    let header = String::from_utf8_lossy(header);
    if !header.contains("'descr': '<f4'") {
        return Err(bad(&format!("dtype in {} is not '<f4'", header.trim())));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order"));
    }
    let tuple = header.split("'shape':").nth(1).and_then(|t| t.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = tuple
        .trim_start_matches([' ', '('])
        .split(',')
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().parse::<usize>().map_err(|_| bad(&format!("shape '{tuple})'"))))
        .collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
    let body = &b[start + hlen..];
    if n.checked_mul(4) != Some(body.len()) {
        return Err(bad(&format!(
            "shape {shape:?} needs {} bytes of data, the file has {}",
            n.saturating_mul(4),
            body.len()
        )));
    }
    Ok((shape, body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

/// A NumPy .npy file (format 1.0) of little-endian float32 values.
pub fn npy_f32(shape: &[usize], v: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    out
}

pub fn eval(
    model: &Path,
    data: &Path,
    a: &DataArgs,
    reference: Option<&Path>,
    batch: usize,
    threads: usize,
    json_out: Option<&Path>,
    check_fake_quant: bool,
) -> Result<(EvalReport, serde_json::Value)> {
    let (g, preset, set) = load_for(model, data, a)?;
    let reference = reference.map(|p| Ok::<_, anyhow::Error>((p, load_model(p)?))).transpose()?;
    let what = EvalInputs { model, data: &data.display().to_string(), preset: &preset, reference };
    eval_set(&what, g, &set, batch, threads, json_out, check_fake_quant)
}

/// What [`eval_set`] evaluates: the model file (for messages and the report), where the images
/// came from, their preprocessing, and the reference model (path and graph) to agree with.
pub struct EvalInputs<'a> {
    pub model: &'a Path,
    pub data: &'a str,
    pub preset: &'a str,
    pub reference: Option<(&'a Path, lowbit_core::Graph)>,
}

/// `lowbit eval` on images already loaded and preprocessed (`g` is the model as read, its input fit
/// to the images): accuracy when labelled, agreement with a reference; prints the table and returns
/// the report with its JSON (written to `json_out` too).
pub fn eval_set(
    w: &EvalInputs,
    g: lowbit_core::Graph,
    set: &lowbit_data::ImageSet,
    batch: usize,
    threads: usize,
    json_out: Option<&Path>,
    check_fake_quant: bool,
) -> Result<(EvalReport, serde_json::Value)> {
    let (model, data, preset) = (w.model, w.data, w.preset.to_string());
    let reference = w.reference.as_ref().map(|(p, _)| *p);
    let shape = vec![set.c, set.h, set.w];
    let graph = check_fake_quant.then(|| g.clone());
    let mut c = Classifier::new(g, shape.clone(), threads);
    let mut r = w.reference.as_ref().map(|(_, rg)| Classifier::new(rg.clone(), shape.clone(), threads));
    let pb = progress(set.n as u64, "eval");
    let t0 = Instant::now();
    let rep = classify::evaluate(&mut c, r.as_mut(), &set.data, set.n, set.labels.as_deref(), batch, &mut |d| {
        pb.set_position(d as u64)
    })
    .map_err(|e| anyhow!("{}: {e}", model.display()))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mut rows = vec![vec!["images".into(), set.n.to_string()], vec!["preset".into(), preset.clone()]];
    if let (Some(t1), Some(t5)) = (rep.top1, rep.top5) {
        rows.push(vec!["top-1".into(), format!("{:.2}% ± {:.2} pp", t1 * 100.0, binomial_se(t1, set.n) * 100.0)]);
        rows.push(vec!["top-5".into(), format!("{:.2}%", t5 * 100.0)]);
    }
    if let Some(ag) = &rep.agreement {
        rows.push(vec![
            "top-1 agreement".into(),
            format!(
                "{:.2}% ± {:.2} pp (binomial standard error)",
                ag.top1 * 100.0,
                binomial_se(ag.top1, set.n) * 100.0
            ),
        ]);
        rows.push(vec!["top-5 overlap".into(), format!("{:.2}%", ag.top5 * 100.0)]);
        rows.push(vec!["cosine".into(), format!("{:.5}", ag.cosine)]);
        rows.push(vec!["KL".into(), format!("{:.5}", ag.kl)]);
    }
    rows.push(vec!["time".into(), format!("{secs:.2} s ({:.0} images/s)", set.n as f64 / secs)]);
    // The plan against the fake-quant executor (the QDQ graph's own arithmetic, node by node).
    let mut fq_report = serde_json::Value::Null;
    if let Some(graph) = graph {
        let pb = progress(set.n as u64, "fake-quant check");
        let out = graph.outputs.first().map(|o| o.name.clone()).ok_or_else(|| anyhow!("model has no output"))?;
        let (mut same_bits, mut same_top1) = (0usize, 0usize);
        let per: usize = shape.iter().product();
        for i in 0..set.n {
            let img = &set.data[i * per..(i + 1) * per];
            let plan = c.logits(img, 1).map_err(|e| anyhow!("{}: {e}", model.display()))?.remove(0);
            let x = lowbit_core::Tensor::f32([vec![1], shape.clone()].concat(), img.to_vec());
            let vals = lowbit_runtime::fakequant::run(&graph, &[x]).map_err(|e| anyhow!("{}: {e}", model.display()))?;
            let sim = vals.get(&out).map(|t| t.to_f32_vec()).unwrap_or_default();
            same_bits += (plan.iter().map(|v| v.to_bits()).eq(sim.iter().map(|v| v.to_bits()))) as usize;
            same_top1 += (classify::argmax(&plan) == classify::argmax(&sim)) as usize;
            pb.set_position(i as u64 + 1);
        }
        pb.finish_and_clear();
        rows.push(vec!["fake-quant executor: identical outputs".into(), format!("{same_bits}/{}", set.n)]);
        rows.push(vec!["fake-quant executor: same top-1".into(), format!("{same_top1}/{}", set.n)]);
        fq_report = json!({"identical_outputs": same_bits, "same_top1": same_top1, "images": set.n});
    }
    crate::say!("{} on {data}", model.display());
    print_table(&["metric", "value"], &rows);
    let report = json!({"model": model.display().to_string(), "data": data, "preset": preset, "images": set.n,
        "top1": rep.top1, "top1_se": rep.top1.map(|t| binomial_se(t, set.n)), "top5": rep.top5,
        "agreement": rep.agreement.as_ref().map(|a| json!({"top1": a.top1, "top1_se": binomial_se(a.top1, set.n), "top5": a.top5, "cosine": a.cosine, "kl": a.kl})),
        "reference": reference.map(|p| p.display().to_string()), "seconds": secs,
        "predictions": rep.predictions, "fake_quant_check": fq_report});
    if let Some(p) = json_out {
        write_json(p, &report)?;
    }
    Ok((rep, report))
}

/// The standard error of a proportion `p` measured on `n` images, `sqrt(p(1 - p) / n)`: how far
/// a top-1 or agreement figure moves between image sets of this size.
pub fn binomial_se(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// Latency statistics of one benchmark.
pub struct BenchResult {
    pub median_ms: f64,
    pub p90_ms: f64,
    pub gmacs: f64,
    /// The JSON report (what `--json` writes).
    pub report: serde_json::Value,
}

pub fn bench(
    model: &Path,
    batch: usize,
    threads: usize,
    iters: usize,
    warmup: usize,
    input_shape_s: Option<&str>,
    json_out: Option<&Path>,
) -> Result<BenchResult> {
    let mut g = load_model(model)?;
    let ov = input_shape_s.map(parse_shape).transpose()?;
    if let Some(s) = &ov {
        let mut s = s.clone();
        s[0] = batch.max(1);
        override_input_shape(&mut g, &s).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    }
    let shape = input_shape(&g, batch.max(1), ov.as_deref())?;
    let plan = compile(&g, model, shape.clone(), threads)?;
    let specs = plan.input_specs();
    if specs[0].1 != DType::F32 {
        bail!("{}: bench feeds float32 inputs; this model's input is {}", model.display(), specs[0].1.name());
    }
    let n: usize = shape.iter().product();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let x = Tensor::f32(shape.clone(), data);
    for _ in 0..warmup {
        plan.run(std::slice::from_ref(&x)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    }
    let mut times = Vec::with_capacity(iters.max(1));
    let pb = progress(iters.max(1) as u64, "bench");
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        plan.run(std::slice::from_ref(&x)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    pb.finish_and_clear();
    if std::env::var_os("LOWBIT_PROFILE").is_some() {
        plan.enable_profiling();
        for _ in 0..iters.max(1) {
            plan.run(std::slice::from_ref(&x)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
        }
        let prof = plan.profile().unwrap().to_vec();
        let total: f64 = prof.iter().sum();
        // LOWBIT_PROFILE=all lists every step in plan order; anything else the 25 slowest.
        let all = std::env::var("LOWBIT_PROFILE").is_ok_and(|v| v == "all");
        let mut idx: Vec<usize> = (0..prof.len()).collect();
        if !all {
            idx.sort_by(|&a, &b| prof[b].partial_cmp(&prof[a]).unwrap());
        }
        let rows: Vec<Vec<String>> = idx
            .iter()
            .take(if all { idx.len() } else { 25 })
            .map(|&i| {
                let s = &plan.steps()[i];
                let ms = prof[i] * 1e3 / iters.max(1) as f64;
                vec![
                    s.name.clone(),
                    s.kernel.clone(),
                    format!("{:?}", s.out_shape),
                    format!("{ms:.3}"),
                    format!("{:.1}%", prof[i] / total * 100.0),
                    format!("{:.1}", s.macs as f64 / 1e6 / ms),
                ]
            })
            .collect();
        print_table(&["layer", "kernel", "output", "ms", "share", "GMAC/s"], &rows);
        let mut by: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
        for (i, s) in plan.steps().iter().enumerate() {
            let e = by.entry(s.kernel.clone()).or_default();
            e.0 += prof[i] * 1e3 / iters.max(1) as f64;
            e.1 += s.macs;
        }
        let rows: Vec<Vec<String>> = by
            .iter()
            .map(|(k, (ms, macs))| vec![k.clone(), format!("{ms:.3}"), format!("{:.1}", *macs as f64 / 1e6 / ms)])
            .collect();
        print_table(&["kernel", "ms", "GMAC/s"], &rows);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let (median, p90) = (pct(0.5), pct(0.9));
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    // One more run counting each kernel call by path (complete with one thread: calls on the other
    // pool threads are not seen), so a forced LOWBIT_ISA is shown to reach every step.
    let (_, traces) = plan.run_traced(std::slice::from_ref(&x)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    let mut calls = lowbit_kernels::isa::trace::Counts::default();
    for t in &traces {
        calls.f32.iter_mut().zip(t.f32).for_each(|(a, b)| *a += b);
        calls.int8.iter_mut().zip(t.int8).for_each(|(a, b)| *a += b);
        calls.binary.iter_mut().zip(t.binary).for_each(|(a, b)| *a += b);
    }
    let paths = plan.paths();
    let gmacs = plan.macs() as f64 / 1e9 / (median / 1e3);
    let ips = batch as f64 / (median / 1e3);
    let int8 = plan.int8_steps() > 0;
    let precision = if int8 { format!("int8, {}", plan.isa().name()) } else { "f32".to_string() };
    // Share of this machine's measured multiply-accumulate peak for the integer path in use.
    let peak = if int8 { lowbit_kernels::int8::measured_peak_gmacs(plan.isa()) * threads as f64 } else { 0.0 };
    crate::say!("{} batch {} threads {} ({precision})", model.display(), batch, threads);
    print_table(
        &["median ms", "p90 ms", "mean ms", "images/s", "GMAC/s", "of peak", "arena MB", "weights MB"],
        &[vec![
            format!("{median:.3}"),
            format!("{p90:.3}"),
            format!("{mean:.3}"),
            format!("{ips:.1}"),
            format!("{gmacs:.1}"),
            if int8 { format!("{:.0}%", 100.0 * gmacs / peak) } else { "-".into() },
            format!("{:.2}", plan.arena_bytes() as f64 / 1e6),
            format!("{:.2}", plan.weight_bytes() as f64 / 1e6),
        ]],
    );
    crate::say!(
        "paths: f32 {}, integer {}, binary {}; kernel calls per run: {} ({} on SIMD paths)",
        paths.f32.name(),
        paths.int8.name(),
        paths.binary.name(),
        calls.total(),
        calls.simd()
    );
    let report = json!({"model": model.display().to_string(), "precision": if int8 { "int8" } else { "f32" },
                "isa": if int8 { Some(plan.isa().name()) } else { None }, "batch": batch, "threads": threads, "iters": iters,
                "median_ms": median, "p90_ms": p90, "mean_ms": mean, "images_per_s": ips, "gmac_per_s": gmacs,
                "peak_gmac_per_s": if int8 { Some(peak) } else { None }, "int8_steps": plan.int8_steps(),
                "f32_fallbacks": plan.int8_notes(), "macs": plan.macs(), "arena_bytes": plan.arena_bytes(),
                "weight_bytes": plan.weight_bytes(), "cpu_features": lowbit_kernels::isa::features().names(),
                "paths": {"f32": paths.f32.name(), "int8": paths.int8.name(), "binary": paths.binary.name()},
                "kernel_calls": {"f32": calls.f32, "int8": calls.int8, "binary": calls.binary,
                    "total": calls.total(), "simd": calls.simd(), "counted_threads": 1}});
    if let Some(p) = json_out {
        write_json(p, &report)?;
    }
    Ok(BenchResult { median_ms: median, p90_ms: p90, gmacs, report })
}

const DEMO_MODEL: &[u8] = include_bytes!("../../../assets/fmnist-default.onnx");
const DEMO_IMAGES: &[u8] = include_bytes!("../../../assets/fmnist-test-1k-images-idx3-ubyte.gz");
const DEMO_LABELS: &[u8] = include_bytes!("../../../assets/fmnist-test-1k-labels-idx1-ubyte.gz");
const DEMO_TRAIN_IMAGES: &[u8] = include_bytes!("../../../assets/fmnist-train-500-images-idx3-ubyte.gz");
const DEMO_TRAIN_LABELS: &[u8] = include_bytes!("../../../assets/fmnist-train-500-labels-idx1-ubyte.gz");

/// The main job on the embedded default: quantize the shipped Fashion-MNIST model (W8A8 and
/// W4A8, calibrated on 500 shipped training images), evaluate float and quantized on the 1,000
/// shipped test images, and benchmark the float model.
pub fn demo(threads: usize, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| anyhow!("{}: cannot create folder: {e}", out.display()))?;
    let model = out.join("fmnist-default.onnx");
    let data = out.join("fmnist-1k");
    std::fs::create_dir_all(&data)?;
    write_atomic(&model, DEMO_MODEL)?;
    write_atomic(&data.join("t10k-images-idx3-ubyte.gz"), DEMO_IMAGES)?;
    write_atomic(&data.join("t10k-labels-idx1-ubyte.gz"), DEMO_LABELS)?;
    write_atomic(&data.join("train-images-idx3-ubyte.gz"), DEMO_TRAIN_IMAGES)?;
    write_atomic(&data.join("train-labels-idx1-ubyte.gz"), DEMO_TRAIN_LABELS)?;
    crate::say!("== embedded default: a Fashion-MNIST ResNet-20-style model lowbit trained itself; 500 training images for calibration, 1,000 test images ==\n");
    let t0 = Instant::now();
    let mut summary = vec![];
    for (w, a) in [(8u8, 8u8), (4, 8)] {
        let qa = crate::quantize::QuantizeArgs {
            model: model.clone(),
            calib: Some(data.clone()),
            data: None,
            no_learned_rounding: false,
            qat_method: "lsq".into(),
            qat_epochs: 1,
            calib_split: "train".into(),
            calib_n: 500,
            weights: w,
            acts: a,
            method: "auto".into(),
            per_tensor: false,
            rounding: "nearest".into(),
            adaround_iters: 1000,
            adaround_images: 256,
            recon_iters: 1000,
            recon_batch: 32,
            recon_images: 256,
            scheme: "linear".into(),
            cle: false,
            cle_relu6_to_relu: false,
            absorb_bias: false,
            no_act_equalize: false,
            no_bias_correction: false,
            bn_stats: false,
            sensitivity: false,
            max_drop: None,
            plots: None,
            skip_first: false,
            skip_last: false,
            first_last_bits: None,
            quantize_input: false,
            float_input: false,
            eval: Some(data.clone()),
            eval_limit: None,
            image: crate::image_args::ImageArgs { preset: Some("fmnist".into()), ..Default::default() },
            threads,
            output: out.join(format!("fmnist-default-w{w}a{a}.onnx")),
            json: Some(out.join(format!("quantize-w{w}a{a}.json"))),
        };
        let r = crate::quantize::quantize(&qa)?;
        summary.push((w, a, r));
        crate::say!();
    }
    let b = bench(&model, 1, threads, 200, 20, None, Some(&out.join("bench.json")))?;
    crate::say!();
    // The W8A8 file on lowbit's integer runtime (int8 activations between layers).
    let q8 = out.join("fmnist-default-w8a8.onnx");
    let bq = bench(&q8, 1, threads, 200, 20, None, Some(&out.join("bench-w8a8.json")))?;
    crate::say!("\nsummary ({:.1} s):", t0.elapsed().as_secs_f64());
    let mut rows = vec![];
    if let Some((_, _, r)) = summary.first() {
        rows.push(vec![
            "float32".into(),
            pct(r.float_top1),
            "-".into(),
            format!("{:.1} KB", r.float_weight_bytes as f64 / 1e3),
        ]);
    }
    for (w, a, r) in &summary {
        let drop = match (r.float_top1, r.quant_top1) {
            (Some(f), Some(q)) => format!("{:+.2} pp", (q - f) * 100.0),
            _ => "-".into(),
        };
        rows.push(vec![
            format!("W{w}A{a}"),
            pct(r.quant_top1),
            drop,
            format!("{:.1} KB", r.quant_weight_bytes as f64 / 1e3),
        ]);
    }
    print_table(&["model", "top-1 (1,000 test images)", "change", "weights"], &rows);
    crate::say!("float32 batch-1 latency {:.3} ms median ({:.3} ms p90, {:.1} GMAC/s)", b.median_ms, b.p90_ms, b.gmacs);
    crate::say!(
        "W8A8 on the integer runtime {:.3} ms median ({:.3} ms p90, {:.1} GMAC/s): {:.2}x the float32 speed",
        bq.median_ms,
        bq.p90_ms,
        bq.gmacs,
        b.median_ms / bq.median_ms
    );
    crate::say!("models and reports written to {}/", out.display());
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", x * 100.0)).unwrap_or_else(|| "-".into())
}

pub fn dump_data(data: &Path, a: &DataArgs, out: &Path) -> Result<()> {
    let pre = a.image.resolve_without_model().map_err(|e| anyhow!("dump-data {e}"))?;
    let set = load_data(data, split(&a.split), &pre, a.limit)?;
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", out.display()));
    write_atomic(&with("f32"), &set.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    write_atomic(&with("npy"), &npy_f32(&[set.n, set.c, set.h, set.w], &set.data))?;
    if let Some(l) = &set.labels {
        write_atomic(&with("labels"), &l.iter().map(|&v| v as u8).collect::<Vec<u8>>())?;
    }
    write_json(
        &with("json"),
        &json!({"shape": [set.n, set.c, set.h, set.w], "labelled": set.labels.is_some(), "source": data.display().to_string(),
            "names": set.names, "stems": set.names.iter().enumerate().map(|(i, n)| safe_name(&image_stem(n, i))).collect::<Vec<_>>()}),
    )?;
    crate::say!("{} images {:?} -> {}.f32", set.n, [set.c, set.h, set.w], out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_bad_files_named() {
        let dir = std::env::temp_dir().join(format!("lowbit-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        for shape in [vec![2, 3], vec![5], vec![1, 2, 1, 2]] {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| i as f32 * -0.5).collect();
            std::fs::write(&p, npy_f32(&shape, &v)).unwrap();
            assert_eq!(read_npy_f32(&p).unwrap(), (shape, v));
        }
        let mut bytes = npy_f32(&[4], &[1.0; 4]);
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_npy_f32(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy") && e.contains("16 bytes"), "{e}");
        let mut f8 = npy_f32(&[1], &[0.0]);
        let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
        f8[at + 2] = b'8';
        std::fs::write(&p, f8).unwrap();
        assert!(read_npy_f32(&p).unwrap_err().to_string().contains("<f4"));
        std::fs::write(&p, b"junk").unwrap();
        assert!(read_npy_f32(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
