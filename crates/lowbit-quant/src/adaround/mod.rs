//! AdaRound: weight rounding learned on calibration data, after the activation ranges and weight
//! scales are chosen ([`adaround`]).
//!
//! Every quantized convolution and matrix product gets its rounding (up or down per weight)
//! learned to reconstruct its float output from the *quantized* model's input (asymmetric
//! reconstruction: the layer compensates the error of the layers before it), see [`learn`]; then
//! its bias is set so the mean of its output matches float (empirical bias correction against the
//! quantized input). Layers are done in sequence, as in the paper: a layer's statistics come from
//! the model whose earlier layers are already re-rounded, else each layer would also compensate
//! an error its predecessors have since removed, and the corrections would compound. Layers none
//! of which feeds another (a residual block's branch and its shortcut) share a *wave*: one float
//! and one quantized pass over the calibration images, each cut off after the wave's inputs
//! ([`gram`] accumulates all of the wave's statistics at once).
//!
//! The output is an ordinary QDQ model (only the int8 weight values and int32 biases differ from
//! round-to-nearest), so lowbit's integer runtime and ONNX Runtime run it as before.

pub mod gram;
pub mod learn;

use std::collections::HashMap;
use std::time::Instant;

use lowbit_core::{Error, Graph, Op, Result, Tensor};
use lowbit_runtime::{Plan, PlanOptions};

use crate::calibrate::Stats;
use crate::qdq::{build_qdq, QdqConfig, QdqModel};
use gram::{Grams, Rows};
use learn::{error_of, learn_rounding, LearnSettings, Problem};

/// What [`adaround`] does.
#[derive(Clone, Debug)]
pub struct AdaRoundOptions {
    pub learn: LearnSettings,
    /// Calibration images the statistics come from (at most).
    pub images: usize,
    /// Rows sampled per image and layer (output positions), at most; layers with few inputs per
    /// output take fewer (16 per input, at least 128), which is still far more rows than the
    /// `k × k` statistics need.
    pub rows_per_image: usize,
    /// See [`Grams::centered`].
    pub damp: f32,
    pub threads: usize,
    /// Only these layers (node names); `None`: every quantized convolution and matrix product.
    pub only: Option<std::collections::HashSet<String>>,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        AdaRoundOptions {
            learn: LearnSettings::default(),
            images: 256,
            rows_per_image: 1024,
            damp: 0.01,
            threads: 1,
            only: None,
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug)]
pub struct LayerRounding {
    pub node: String,
    /// Inputs per output (`k`), groups, and the rows the statistics came from.
    pub k: usize,
    pub groups: usize,
    pub rows: usize,
    /// Output error relative to the output's variance (`E / Var(y)`), round-to-nearest and learned.
    pub rel_err_nearest: f64,
    pub rel_err_learned: f64,
    /// Fraction of weights rounded the other way than nearest.
    pub flipped: f64,
}

/// A layer AdaRound re-rounds.
struct Target {
    node: String,
    /// The float input (canonical graph) and the dequantized input the QDQ graph's layer reads,
    /// each followed (matrix products only) by the values they are reshaped from: a plan
    /// writes no buffer for a Flatten or Reshape, so the observer sees the source.
    x_float: Vec<String>,
    x_quant: Vec<String>,
    /// Output channels x inputs per output channel (of all groups), in output-channel-major order.
    out_ch: usize,
    w: Vec<f32>,
    bias: Vec<f32>,
    /// Weights stored `[K][N]` (Gemm without transB, MatMul): transposed to rows and back.
    transposed: bool,
    geometry: Geometry,
}

enum Geometry {
    Conv(lowbit_core::op::ConvAttrs, Vec<usize>),
    Dense(usize),
}

fn targets(canon: &Graph, model: &QdqModel) -> Vec<Target> {
    let by_name: HashMap<&str, &lowbit_core::Node> = model.graph.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = vec![];
    for n in &canon.nodes {
        let Some(q) = by_name.get(n.name.as_str()) else { continue };
        // Quantized layers read a dequantized weight written by `{node}_weight_DequantizeLinear`.
        let wdq = format!("{}_weight_DequantizeLinear", n.name);
        let Some(dq) = by_name.get(wdq.as_str()) else { continue };
        if dq
            .inputs
            .first()
            .and_then(|i| model.graph.initializers.get(i))
            .is_none_or(|t| !matches!(t.data, lowbit_core::Data::I8(_)))
        {
            continue;
        }
        let Some(w) = n.input(1).and_then(|w| canon.initializers.get(w)) else { continue };
        let mut wv = w.to_f32_vec();
        let mut bias = n.input(2).and_then(|b| canon.initializers.get(b)).map(|t| t.to_f32_vec());
        let (out_ch, transposed, geometry) = match &n.op {
            Op::Conv(c) if w.rank() == 4 => (w.shape[0], false, Geometry::Conv(c.clone(), w.shape.clone())),
            Op::Gemm { alpha, beta, trans_a: false, trans_b, .. } if w.rank() == 2 => {
                wv.iter_mut().for_each(|v| *v *= alpha);
                if let Some(b) = bias.as_mut() {
                    b.iter_mut().for_each(|v| *v *= beta);
                }
                let (o, k) = if *trans_b { (w.shape[0], w.shape[1]) } else { (w.shape[1], w.shape[0]) };
                (o, !trans_b, Geometry::Dense(k))
            }
            Op::MatMul if w.rank() == 2 => (w.shape[1], true, Geometry::Dense(w.shape[0])),
            _ => continue,
        };
        let mut bias = bias.unwrap_or_else(|| vec![0.0; out_ch]);
        if bias.len() == 1 && out_ch > 1 {
            bias = vec![bias[0]; out_ch];
        }
        if bias.len() != out_ch {
            continue;
        }
        if transposed {
            let k = wv.len() / out_ch;
            wv = (0..out_ch * k).map(|i| wv[(i % k) * out_ch + i / k]).collect();
        }
        let dense = matches!(geometry, Geometry::Dense(_));
        out.push(Target {
            node: n.name.clone(),
            x_float: sources(canon, &n.inputs[0], dense),
            x_quant: sources(&model.graph, &q.inputs[0], dense),
            out_ch,
            w: wv,
            bias,
            transposed,
            geometry,
        });
    }
    out
}

/// `v`, then (with `follow`) the values it is reshaped from.
fn sources(g: &Graph, v: &str, follow: bool) -> Vec<String> {
    let producers = g.producers();
    let mut out = vec![v.to_string()];
    if !follow {
        return out;
    }
    loop {
        let last = out.last().unwrap();
        match producers.get(last.as_str()).map(|&i| &g.nodes[i]) {
            Some(p)
                if matches!(
                    p.op,
                    Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity
                ) && out.len() < 16 =>
            {
                out.push(p.inputs[0].clone())
            }
            _ => break,
        }
    }
    out
}

/// The layer's weight integers (rows form) and scales (one per output channel) in `model`.
fn current(model: &QdqModel, t: &Target) -> Result<(Vec<i32>, Vec<f32>)> {
    let g = &model.graph;
    let dq = g
        .nodes
        .iter()
        .find(|n| n.name == format!("{}_weight_DequantizeLinear", t.node))
        .ok_or_else(|| Error::node(&t.node, "quantized weights not found"))?;
    let lowbit_core::Data::I8(q) = &g.initializers[&dq.inputs[0]].data else {
        return Err(Error::node(&t.node, "weights are not int8"));
    };
    let s = g
        .initializers
        .get(&dq.inputs[1])
        .and_then(|s| s.as_f32())
        .ok_or_else(|| Error::node(&t.node, "weight scale not found"))?;
    let mut q: Vec<i32> = q.iter().map(|&v| v as i32).collect();
    if t.transposed {
        let k = q.len() / t.out_ch;
        q = (0..t.out_ch * k).map(|i| q[(i % k) * t.out_ch + i / k]).collect();
    }
    let s = if s.len() == 1 { vec![s[0]; t.out_ch] } else { s.to_vec() };
    if s.len() != t.out_ch {
        return Err(Error::node(&t.node, "weight scales are not per output channel"));
    }
    Ok((q, s))
}

/// Deterministic choice of at most `cap` of `total` rows (every row when it fits), spread evenly
/// with a per-image offset.
fn picks(total: usize, cap: usize, image: usize) -> Vec<usize> {
    if total <= cap {
        return (0..total).collect();
    }
    let step = total as f64 / cap as f64;
    let off = (image as f64 * 0.618_034).fract() * step;
    (0..cap).map(|i| ((i as f64 * step + off) as usize).min(total - 1)).collect()
}

fn rows_of(t: &Target, shape: &[usize]) -> Result<Rows> {
    match &t.geometry {
        Geometry::Dense(k) => Ok(Rows::Dense { k: *k }),
        Geometry::Conv(c, ws) => {
            if shape.len() != 4 {
                return Err(Error::node(&t.node, format!("input of rank {} (2-D convolutions only)", shape.len())));
            }
            let kernel = &ws[2..];
            let win =
                lowbit_core::shape::window(&shape[2..], kernel, &c.strides, &c.dilations, &c.pads, c.auto_pad, false)?;
            let groups = c.group.max(1);
            Ok(Rows::Conv {
                groups,
                cin_g: ws[1],
                kernel: [kernel[0], kernel[1]],
                strides: [win.strides[0], win.strides[1]],
                pads: [win.pads_begin[0], win.pads_begin[1]],
                dilations: [win.dilations[0], win.dilations[1]],
                out_hw: [win.out[0], win.out[1]],
            })
        }
    }
}

/// `g` computing only `outputs` (and what they need).
fn cut<'a>(g: &Graph, outputs: impl Iterator<Item = &'a String>) -> Graph {
    let mut c = g.clone();
    c.outputs = outputs
        .map(|n| lowbit_core::ValueInfo { name: n.clone(), dtype: lowbit_core::DType::F32, shape: None })
        .collect();
    c.outputs.dedup_by(|a, b| a.name == b.name);
    lowbit_core::passes::remove_dead(&mut c);
    c
}

/// Each target's wave: the number of targets on the longest path from the model input to its
/// input. Targets of one wave do not feed each other.
fn waves(canon: &Graph, ts: &[Target]) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = ts.iter().enumerate().map(|(i, t)| (t.node.as_str(), i)).collect();
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut wave = vec![0usize; ts.len()];
    for n in &canon.nodes {
        let din = n.inputs.iter().filter_map(|v| depth.get(v.as_str())).copied().max().unwrap_or(0);
        let dout = match index.get(n.name.as_str()) {
            Some(&i) => {
                wave[i] = din;
                din + 1
            }
            None => din,
        };
        for o in &n.outputs {
            depth.insert(o.as_str(), dout);
        }
    }
    let mut out: Vec<Vec<usize>> = vec![vec![]; wave.iter().max().map_or(0, |m| m + 1)];
    for (i, w) in wave.into_iter().enumerate() {
        out[w].push(i);
    }
    out.retain(|w| !w.is_empty());
    out
}

/// Statistics of every target over the calibration images.
fn collect(
    canon: &Graph,
    model: &QdqModel,
    ts: &[&Target],
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    o: &AdaRoundOptions,
) -> Result<Vec<(Rows, Grams)>> {
    let shape: Vec<usize> = [&[1][..], image_shape].concat();
    let opts = PlanOptions { threads: o.threads, optimize: false, int8: false, ..Default::default() };
    let fplan =
        Plan::compile(&cut(canon, ts.iter().map(|t| t.x_float.last().unwrap())), std::slice::from_ref(&shape), &opts)?;
    let qplan = Plan::compile(
        &cut(&model.graph, ts.iter().map(|t| t.x_quant.last().unwrap())),
        std::slice::from_ref(&shape),
        &opts,
    )?;
    let per: usize = image_shape.iter().product();
    let want_f: std::collections::HashSet<&str> =
        ts.iter().flat_map(|t| t.x_float.iter().map(|s| s.as_str())).collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in ts.iter().enumerate() {
        for v in &t.x_quant {
            readers.entry(v.as_str()).or_default().push(i);
        }
    }
    let mut stats: Vec<Option<(Rows, Grams)>> = (0..ts.len()).map(|_| None).collect();
    for img in 0..n {
        let x = Tensor::f32(shape.clone(), data[img * per..(img + 1) * per].to_vec());
        let mut floats: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
        let mut f = |name: &str, s: &[usize], v: &[f32]| {
            if want_f.contains(name) && !floats.contains_key(name) {
                floats.insert(name.to_string(), (s.to_vec(), v.to_vec()));
            }
        };
        fplan.run_observed(std::slice::from_ref(&x), Some(&mut f))?;
        let mut err: Option<Error> = None;
        let mut seen = vec![false; ts.len()];
        let mut q = |name: &str, s: &[usize], v: &[f32]| {
            let Some(rs) = readers.get(name) else { return };
            for &i in rs {
                let t = &ts[i];
                if seen[i] {
                    continue;
                }
                let Some((fs, fv)) = t.x_float.iter().find_map(|n| floats.get(n)) else {
                    err.get_or_insert(Error::node(&t.node, format!("float input {} was not observed", t.x_float[0])));
                    continue;
                };
                let dense = matches!(t.geometry, Geometry::Dense(_));
                if (dense && fv.len() != v.len()) || (!dense && fs.as_slice() != s) {
                    err.get_or_insert(Error::node(
                        &t.node,
                        format!("float input {fs:?} and quantized input {s:?} differ"),
                    ));
                    continue;
                }
                if stats[i].is_none() {
                    match rows_of(t, s) {
                        Ok(r) => {
                            let g = Grams::new(r.k(), r.groups());
                            stats[i] = Some((r, g));
                        }
                        Err(e) => {
                            err.get_or_insert(e);
                            continue;
                        }
                    }
                }
                let (r, g) = stats[i].as_mut().unwrap();
                let cap = o.rows_per_image.min((16 * r.k()).max(128));
                let p = picks(r.count(s), cap, img);
                g.add(r, v, fv, s, &p);
                seen[i] = true;
            }
        };
        qplan.run_observed(&[x], Some(&mut q))?;
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::node(&ts[i].node, "AdaRound: the layer's quantized input was not observed"));
        }
    }
    Ok(stats.into_iter().map(|s| s.expect("every target observed")).collect())
}

/// Learns one layer's rounding: the integers (rows form), its new float bias and its report.
fn learn_layer(
    t: &Target,
    g: &Grams,
    nearest: &[i32],
    scale: &[f32],
    bits: u8,
    o: &AdaRoundOptions,
    threads: usize,
) -> (Vec<i32>, Vec<f32>, LayerRounding) {
    let (k, groups) = (g.k, g.groups);
    let cog = t.out_ch / groups;
    let qs = crate::scheme::QScheme::weights(bits);
    let (mut ints, mut bias) = (vec![0i32; t.w.len()], t.bias.clone());
    let (mut e_near, mut e_learn, mut power) = (0f64, 0f64, 0f64);
    let mut flipped = 0usize;
    for gi in 0..groups {
        let (qq, qf, ff, mq, mf) = g.centered(gi, o.damp);
        let rows = gi * cog..(gi + 1) * cog;
        let w = &t.w[rows.start * k..rows.end * k];
        let sc = &scale[rows.clone()];
        // target = w G_fq = w (G_qf)ᵀ: target[r][i] = Σ_j w[r][j] qf[i][j].
        let target: Vec<f32> = (0..cog * k)
            .map(|ri| {
                let (row, i) = (ri / k, ri % k);
                (0..k).map(|j| w[row * k + j] * qf[i * k + j]).sum()
            })
            .collect();
        let p = Problem { w, scale: sc, qmin: qs.qmin(), qmax: qs.qmax(), k, gqq: &qq, target: &target };
        let near = &nearest[rows.start * k..rows.end * k];
        let learned = learn_rounding(&p, &LearnSettings { threads, ..o.learn.clone() });
        // The constant term w G_ff wᵀ makes both errors absolute.
        let mut full = 0f64;
        for row in 0..cog {
            for i in 0..k {
                let wi = w[row * k + i] as f64;
                full += wi * (0..k).map(|j| ff[i * k + j] as f64 * w[row * k + j] as f64).sum::<f64>();
            }
        }
        // Reported without the damping term (which only shapes the learning).
        let (qq0, qf0) = if o.damp > 0.0 {
            let (a, b, ..) = g.centered(gi, 0.0);
            (a, b)
        } else {
            (qq.clone(), qf.clone())
        };
        let target0: Vec<f32> =
            (0..cog * k).map(|ri| (0..k).map(|j| w[ri / k * k + j] * qf0[ri % k * k + j]).sum()).collect();
        let p0 = Problem { gqq: &qq0, target: &target0, ..p };
        e_near += error_of(&p0, near) + full;
        e_learn += error_of(&p0, &learned) + full;
        power += full;
        flipped += learned.iter().zip(near).filter(|(a, b)| a != b).count();
        // Mean of (w_q x_q − w x_f) per output channel, taken out of the bias.
        for row in 0..cog {
            let oc = rows.start + row;
            let shift: f64 = (0..k)
                .map(|i| learned[row * k + i] as f64 * sc[row] as f64 * mq[i] - w[row * k + i] as f64 * mf[i])
                .sum();
            bias[oc] -= shift as f32;
        }
        ints[rows.start * k..rows.end * k].copy_from_slice(&learned);
    }
    let rel = |e: f64| if power > 0.0 { e.max(0.0) / power } else { 0.0 };
    let rep = LayerRounding {
        node: t.node.clone(),
        k,
        groups,
        rows: g.rows,
        rel_err_nearest: rel(e_near),
        rel_err_learned: rel(e_learn),
        flipped: flipped as f64 / t.w.len().max(1) as f64,
    };
    (ints, bias, rep)
}

/// Re-rounds the weights of `cfg`'s QDQ model of `canon` by AdaRound on `n` calibration images
/// of `data` (each of `image_shape`). Layers whose weights are not linear int8 (binary,
/// logarithmic, k-means) keep theirs. `progress(what, done, total)` counts waves. Returns `cfg`
/// with the learned integers, scales and biases of the re-rounded layers as overrides (so every
/// build from it has them).
#[allow(clippy::too_many_arguments)]
pub fn adaround(
    canon: &Graph,
    stats: &Stats,
    cfg: &QdqConfig,
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    o: &AdaRoundOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(QdqConfig, Vec<LayerRounding>, f64)> {
    if !matches!(cfg.weight_kind, crate::scheme::Kind::Linear(_)) {
        return Err(Error::Invalid("AdaRound learns the rounding of linear weights (--scheme linear or pow2)".into()));
    }
    let t0 = Instant::now();
    let n = n.min(o.images).max(1);
    let mut model = build_qdq(canon, stats, cfg)?;
    let mut ts = targets(canon, &model);
    if let Some(only) = &o.only {
        ts.retain(|t| only.contains(&t.node));
    }
    if ts.is_empty() {
        return Err(Error::Invalid("AdaRound: no quantized convolution or matrix product".into()));
    }
    // Round-to-nearest's integers and scales; the scales stay (later builds need not search them again).
    let start: Vec<(Vec<i32>, Vec<f32>)> = ts.iter().map(|t| current(&model, t)).collect::<Result<_>>()?;
    let mut cfg2 = cfg.clone();
    for (t, (_, sc)) in ts.iter().zip(&start) {
        if !cfg2.weight_scale_override.contains_key(&t.node) {
            let sc = if cfg.per_channel { sc.clone() } else { vec![sc[0]] };
            cfg2.weight_scale_override.insert(t.node.clone(), sc);
        }
    }
    let waves = waves(canon, &ts);
    let mut report: Vec<Option<LayerRounding>> = vec![None; ts.len()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads.max(1))
        .build()
        .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
    for (wi, wave) in waves.iter().enumerate() {
        if wi > 0 {
            model = build_qdq(canon, stats, &cfg2)?;
        }
        let members: Vec<&Target> = wave.iter().map(|&i| &ts[i]).collect();
        let tc = Instant::now();
        let st = collect(canon, &model, &members, image_shape, data, n, o)?;
        let tc = tc.elapsed().as_secs_f64();
        let tl = Instant::now();
        let learn_one = |j: usize| {
            let (i, t) = (wave[j], members[j]);
            let bits = cfg.weight_bits_for.get(&t.node).copied().unwrap_or(cfg.weight_bits);
            // A wave of one layer: the layer's products take the threads.
            let threads = if wave.len() == 1 { o.threads.max(1) } else { 1 };
            learn_layer(t, &st[j].1, &start[i].0, &start[i].1, bits, o, threads)
        };
        let results: Vec<(Vec<i32>, Vec<f32>, LayerRounding)> = {
            use rayon::prelude::*;
            pool.install(|| (0..wave.len()).into_par_iter().map(learn_one).collect())
        };
        if std::env::var("LOWBIT_DEBUG_ADAROUND").is_ok() {
            eprintln!(
                "wave {wi}: {} layers, statistics {tc:.2} s, learning {:.2} s",
                wave.len(),
                tl.elapsed().as_secs_f64()
            );
        }
        for (j, (ints, bias, rep)) in results.into_iter().enumerate() {
            let (i, t) = (wave[j], members[j]);
            let ints = if t.transposed {
                let k = ints.len() / t.out_ch;
                (0..t.out_ch * k).map(|x| ints[(x % t.out_ch) * k + x / t.out_ch]).collect()
            } else {
                ints
            };
            cfg2.weight_int_override.insert(t.node.clone(), (ints, start[i].1.clone()));
            cfg2.bias_override.insert(t.node.clone(), bias);
            report[i] = Some(rep);
        }
        progress("adaround", wi + 1, waves.len());
    }
    let report = report.into_iter().flatten().collect();
    Ok((cfg2, report, t0.elapsed().as_secs_f64()))
}
