//! Binary networks (IR-Net, Qin et al. 2020) on a float ResNet graph.
//!
//! [`bireal`] rewrites the residual blocks Bi-Real style: every binary convolution gets its own
//! real-valued shortcut (`x -> BN(conv1(sign x)) + shortcut(x) -> hardtanh -> a1`,
//! `a1 -> BN(conv2(sign a1)) + a1 -> hardtanh`), and ReLU becomes hardtanh (the sign of a ReLU
//! output would be constant). The first convolution, the shortcut projections and the classifier
//! stay real-valued in training and are exported at 8 bits.
//!
//! The binarization itself lives in the trainable [`Model`] (see [`crate::model::Binary`]): the
//! input of each binary convolution goes through sign, its weights through Libra-PB or the XNOR
//! scale, with the EDE or STE backward. [`export`] writes the trained model as QDQ ONNX: BatchNorm
//! folded, binary convolutions as `±1` int8 weights with per-channel scales behind a
//! `Sign(Sign(x) + 0.5)` input, every other layer and activation at 8 bits.

use std::collections::{HashMap, HashSet};

use lowbit_core::{Graph, Node, Op, Tensor};
use lowbit_data::ImageSet;
use lowbit_quant::calibrate::calibrate;
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig, QdqModel};

use crate::model::{host, Binary, Model};
use crate::{Error, Result};

/// The rewritten graph and the convolutions to binarize (by node name).
pub struct BiReal {
    pub graph: Graph,
    pub binary_convs: Vec<String>,
}

fn op_of<'a>(g: &'a Graph, prod: &HashMap<String, usize>, v: &str) -> Option<(usize, &'a Node)> {
    prod.get(v).map(|&i| (i, &g.nodes[i]))
}

/// Rewrites the `Conv-[BN]-ReLU-Conv-[BN]-Add(shortcut)-ReLU` blocks of `g` (a float graph, with
/// or without its BatchNorm nodes) into Bi-Real blocks; see the module docs.
pub fn bireal(g: &Graph) -> Result<BiReal> {
    bireal_with(g, true)
}

/// [`bireal`]; `hardtanh: false` replaces ReLU by nothing (an unclipped real-valued path, as
/// Bi-Real Net's ImageNet models) instead of hardtanh. Not offered by the CLI: the export
/// binarizes the 8-bit quantized real-valued values, and on an unclipped path the 8-bit step is
/// coarse enough that most small values quantize to zero and binarize to +1 (a model trained this
/// way measured 76.7% simulated, 10% exported). Binarizing before the requantization (the Add
/// epilogue emitting sign bits) would fix it.
pub fn bireal_with(g: &Graph, hardtanh: bool) -> Result<BiReal> {
    let prod = g.producers();
    struct Block {
        add: usize,
        main: usize,
        relu1: usize,
        bn1_out: String,
        c1: String,
        c2: String,
    }
    let mut blocks = vec![];
    for (ai, a) in g.nodes.iter().enumerate() {
        if a.op != Op::Add || a.inputs.len() != 2 {
            continue;
        }
        for j in 0..2 {
            let chain = (|| {
                // A BatchNorm after a convolution is optional (already folded in some exports).
                let past_bn = |v: &str| -> Option<String> {
                    match op_of(g, &prod, v) {
                        Some((_, n)) if matches!(n.op, Op::BatchNorm { .. }) => Some(n.inputs[0].clone()),
                        _ => Some(v.to_string()),
                    }
                };
                let c2_out = past_bn(&a.inputs[j])?;
                let (_, c2) = op_of(g, &prod, &c2_out).filter(|(_, n)| matches!(n.op, Op::Conv(_)))?;
                let (r1, relu) = op_of(g, &prod, &c2.inputs[0]).filter(|(_, n)| matches!(n.op, Op::Relu))?;
                let c1_out = past_bn(&relu.inputs[0])?;
                let (_, c1) = op_of(g, &prod, &c1_out).filter(|(_, n)| matches!(n.op, Op::Conv(_)))?;
                Some(Block {
                    add: ai,
                    main: j,
                    relu1: r1,
                    bn1_out: relu.inputs[0].clone(),
                    c1: c1.name.clone(),
                    c2: c2.name.clone(),
                })
            })();
            if let Some(b) = chain {
                blocks.push(b);
                break;
            }
        }
    }
    if blocks.is_empty() {
        return Err(Error::Invalid(
            "no residual block (Conv-BatchNorm-Relu-Conv-BatchNorm-Add) found: binary training rewrites ResNet blocks"
                .into(),
        ));
    }
    let mut out = g.clone();
    let lo = out.fresh_name("bireal_hardtanh_min");
    out.initializers.insert(lo.clone(), Tensor::scalar_f32(-1.0));
    let hi = out.fresh_name("bireal_hardtanh_max");
    out.initializers.insert(hi.clone(), Tensor::scalar_f32(1.0));
    let clip = hardtanh;
    let hardtanh = |n: &mut Node, x: String| {
        if clip {
            n.op = Op::Clip { min: None, max: None };
            n.inputs = vec![x, lo.clone(), hi.clone()];
        } else {
            n.op = Op::Identity;
            n.inputs = vec![x];
        }
    };
    let mut new_nodes = vec![];
    let mut binary_convs = vec![];
    for b in &blocks {
        let shortcut = g.nodes[b.add].inputs[1 - b.main].clone();
        let sum = out.fresh_name(&format!("{}_plus_shortcut", b.bn1_out));
        new_nodes.push(Node {
            name: format!("{}_bireal_Add", b.c1),
            op: Op::Add,
            inputs: vec![b.bn1_out.clone(), shortcut],
            outputs: vec![sum.clone()],
        });
        let a1 = g.nodes[b.relu1].outputs[0].clone();
        hardtanh(&mut out.nodes[b.relu1], sum);
        out.nodes[b.add].inputs[1 - b.main] = a1;
        binary_convs.push(b.c1.clone());
        binary_convs.push(b.c2.clone());
    }
    let relus: HashSet<usize> = blocks.iter().map(|b| b.relu1).collect();
    for i in 0..out.nodes.len() {
        if out.nodes[i].op == Op::Relu && !relus.contains(&i) {
            let x = out.nodes[i].inputs[0].clone();
            hardtanh(&mut out.nodes[i], x);
        }
    }
    out.nodes.extend(new_nodes);
    out.sort_and_check()?;
    Ok(BiReal { graph: out, binary_convs })
}

/// Marks the named convolutions of `model` binary with `how`.
pub fn mark(model: &mut Model, convs: &[String], how: Binary) -> Result<()> {
    let layers: HashMap<String, usize> = model.compute_layers().into_iter().map(|(n, w, _)| (n, w)).collect();
    for c in convs {
        let w = *layers.get(c).ok_or_else(|| Error::node(c, "not a trainable convolution"))?;
        model.binary.insert(w, how);
    }
    Ok(())
}

/// Exports a trained binary model as QDQ ONNX (see the module docs). `calib`: images for the
/// 8-bit activation ranges.
pub fn export(model: &Model, calib: &ImageSet, threads: usize) -> Result<QdqModel> {
    let mut g = model.to_graph();
    let mut names = HashSet::new();
    for (node, w, _) in model.compute_layers() {
        if model.binary.contains_key(&w) {
            let p = &model.params[w];
            g.initializers.insert(p.name.clone(), Tensor::f32(p.shape.clone(), deploy_weights(model, w)));
            names.insert(node);
        }
    }
    export_graph(&g, names, calib, threads)
}

/// Quantizes float graph `g` with the convolutions `binary` binarized (weights `sign(w)` with
/// per-channel scale `mean |w|`, after BatchNorm folding) and everything else at 8 bits; `calib`:
/// images for the activation ranges.
pub fn export_graph(g: &Graph, binary: HashSet<String>, calib: &ImageSet, threads: usize) -> Result<QdqModel> {
    let (gc, _) = lowbit_runtime::specialize::canonicalize_free(g)?;
    for n in &binary {
        if !gc.nodes.iter().any(|x| &x.name == n) {
            return Err(Error::node(n, "binary convolution lost while folding BatchNorm"));
        }
    }
    let shape = [calib.c, calib.h, calib.w];
    let stats = calibrate(&gc, &shape, &calib.data, calib.n, 100, threads, false, &mut |_, _| {})?;
    let cfg = QdqConfig { method: Method::MinMax, bias_correction: false, binary, ..Default::default() };
    Ok(build_qdq(&gc, &stats, &cfg)?)
}

/// The deployed weights of a binary convolution (flat OIHW): `sign · scale` per filter, with
/// the sign taken at `+1` for zero and the scale an exact power of two under Libra-PB.
pub fn deploy_weights(model: &Model, i: usize) -> Vec<f32> {
    let p = &model.params[i];
    let b = model.binary.get(&i).copied().unwrap_or(Binary { libra: false, ede: false });
    let w = host(&p.t);
    let per = w.len() / p.shape[0].max(1);
    let mut out = Vec::with_capacity(w.len());
    for f in w.chunks(per.max(1)) {
        let n = f.len() as f64;
        let (c, scale): (Vec<f64>, f64) = if b.libra {
            let mean = f.iter().map(|&v| v as f64).sum::<f64>() / n;
            let c: Vec<f64> = f.iter().map(|&v| v as f64 - mean).collect();
            let std = (c.iter().map(|v| v * v).sum::<f64>() / n + 1e-12).sqrt();
            let m = c.iter().map(|v| (v / std).abs()).sum::<f64>() / n;
            (c, 2f64.powi(m.log2().round() as i32))
        } else {
            (f.iter().map(|&v| v as f64).collect(), f.iter().map(|v| v.abs() as f64).sum::<f64>() / n)
        };
        out.extend(c.iter().map(|&v| if v >= 0.0 { scale as f32 } else { -scale as f32 }));
    }
    out
}
