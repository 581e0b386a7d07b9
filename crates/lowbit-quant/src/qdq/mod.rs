//! Building a standard QDQ graph: `QuantizeLinear`/`DequantizeLinear` pairs on every activation
//! that an integer kernel will read or write, per-channel symmetric integer weights behind
//! `DequantizeLinear`, int32 biases with `scale = s_x * s_w`. ONNX Runtime and TensorRT load it;
//! lowbit's runtime compiles it.

use std::collections::{HashMap, HashSet};

use lowbit_core::{Act, Data, Error, Graph, Node, Op, Result, Tensor};

mod acts;
mod config;

use crate::calibrate::Stats;
use crate::scheme::{
    kmeans_weights_int8, log2_weights_int8, quantize_linear_weights, Granularity, Kind, Mode, QParams, QScheme,
};
use acts::{plan_activations, ActPlan};
pub(crate) use config::is_compute;
pub use config::KMeansCache;
pub use config::QdqConfig;
use config::{is_passthrough, weights_fingerprint};

/// The integer a binarized activation takes in the QDQ export (`±1` is stored as int8
/// `±BINARY_LEVEL` with scale `1/BINARY_LEVEL`; a power of two, so the scale is exact).
pub const BINARY_LEVEL: i32 = 64;

/// One quantized layer, for reports.
#[derive(Clone, Debug)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    pub weight_bits: Option<u8>,
    pub act_bits: Option<u8>,
    pub params: usize,
}

/// The result of quantizing a graph.
#[derive(Clone, Debug)]
pub struct QdqModel {
    pub graph: Graph,
    pub layers: Vec<LayerReport>,
    /// Activation parameters by (float) value name.
    pub act_params: HashMap<String, (f32, i32)>,
    /// Bytes of weights as deployed (packed bits, plus f32 scales and int32 biases).
    pub weight_bytes: usize,
    pub float_weight_bytes: usize,
}

impl QdqModel {
    /// Layer `node`'s int8 weights as written (the weight tensor's own layout), their scales (one,
    /// or one per channel of `axis`) and that axis; `None` when the layer has no int8 weights.
    pub fn weight_ints(&self, node: &str) -> Option<(Vec<i32>, Vec<f32>, usize)> {
        let g = &self.graph;
        let name = format!("{node}_weight_DequantizeLinear");
        let dq = g.nodes.iter().find(|n| n.name == name)?;
        let lowbit_core::Data::I8(q) = &g.initializers.get(&dq.inputs[0])?.data else { return None };
        let rank = g.initializers[&dq.inputs[0]].rank() as i64;
        let s = g.initializers.get(dq.inputs.get(1)?)?.as_f32()?.to_vec();
        let axis = match dq.op {
            lowbit_core::Op::DequantizeLinear { axis } => (if axis < 0 { axis + rank } else { axis }).max(0) as usize,
            _ => return None,
        };
        Some((q.iter().map(|&v| v as i32).collect(), s, axis))
    }

    /// Layer `node`'s bias as the file computes it (an int32 bias dequantized, or a float one).
    pub fn bias(&self, node: &str) -> Option<Vec<f32>> {
        let g = &self.graph;
        let name = format!("{node}_bias_DequantizeLinear");
        if let Some(dq) = g.nodes.iter().find(|n| n.name == name) {
            let q = g.initializers.get(&dq.inputs[0])?;
            let s = g.initializers.get(dq.inputs.get(1)?)?.as_f32()?;
            let lowbit_core::Data::I32(q) = &q.data else { return None };
            return Some(
                q.iter().enumerate().map(|(i, &v)| v as f32 * if s.len() == 1 { s[0] } else { s[i] }).collect(),
            );
        }
        let n = g.nodes.iter().find(|n| n.name == node)?;
        Some(g.initializers.get(n.input(2)?)?.to_f32_vec())
    }
}

/// Quantizes `w` with given symmetric scales (one per channel of `s`'s granularity, or one).
fn quantize_with_scales(
    w: &[f32],
    shape: &[usize],
    s: &QScheme,
    scales: &[f32],
) -> std::result::Result<(Vec<i32>, QParams), String> {
    let (c, _, inner) = crate::scheme::channel_layout(shape, s.granularity);
    if scales.len() != c && scales.len() != 1 {
        return Err(format!("{} weight scales for {c} channels", scales.len()));
    }
    if scales.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err("weight scales must be positive and finite".into());
    }
    let sc: Vec<f32> = if scales.len() == c { scales.to_vec() } else { vec![scales[0]; c] };
    let (qmin, qmax) = (s.qmin(), s.qmax());
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| crate::scheme::quantize_value(v, sc[crate::scheme::channel_of(i, c, inner)], 0, qmin, qmax))
        .collect();
    Ok((q, QParams { scale: sc, zero_point: vec![0; c], qmin, qmax }))
}

/// Integer weights given as they are ([`QdqConfig::weight_int_override`]), checked against the
/// weight tensor and the scheme's range; per-tensor schemes keep the first scale.
fn given_ints(
    q: &[i32],
    scales: &[f32],
    w: &[f32],
    shape: &[usize],
    s: &QScheme,
) -> std::result::Result<(Vec<i32>, QParams), String> {
    if q.len() != w.len() {
        return Err(format!("{} weight integers given for {} weights", q.len(), w.len()));
    }
    let (qmin, qmax) = (s.qmin(), s.qmax());
    if q.iter().any(|v| !(qmin..=qmax).contains(v)) {
        return Err(format!("given weight integers leave [{qmin}, {qmax}]"));
    }
    let (c, _, _) = crate::scheme::channel_layout(shape, s.granularity);
    let sc: Vec<f32> = if c == 1 { scales.iter().take(1).copied().collect() } else { scales.to_vec() };
    if sc.len() != c || sc.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(format!("{} weight scales given for {c} channels (positive and finite)", scales.len()));
    }
    Ok((q.to_vec(), QParams { scale: sc, zero_point: vec![0; c], qmin, qmax }))
}

/// Adds `b` as int32 values with per-output scales `bscale` (rounded half to even) and their
/// DequantizeLinear node; returns the dequantized value's name.
fn int32_bias(
    out: &mut Graph,
    new_nodes: &mut Vec<Node>,
    node: &str,
    bname: &str,
    b: &[f32],
    bscale: Vec<f32>,
) -> String {
    let nout = b.len();
    let bq: Vec<i32> = b
        .iter()
        .zip(&bscale)
        .map(|(&v, &s)| (v / s).round_ties_even().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
        .collect();
    let bqn = out.fresh_name(&format!("{bname}_quantized"));
    out.initializers.insert(bqn.clone(), Tensor { shape: vec![nout], data: Data::I32(bq) });
    let bsn = out.fresh_name(&format!("{bname}_scale"));
    out.initializers.insert(bsn.clone(), Tensor::f32(vec![nout], bscale));
    let bdq = out.fresh_name(&format!("{bname}_dequantized"));
    new_nodes.push(Node {
        name: format!("{node}_bias_DequantizeLinear"),
        op: Op::DequantizeLinear { axis: 0 },
        inputs: vec![bqn, bsn],
        outputs: vec![bdq.clone()],
    });
    bdq
}

/// Weight and activation overrides that keep the first and last compute layers of `g` at `bits`:
/// their weights, and the activation the last layer reads (with the pass-through values, such as
/// a Flatten, between it and the quantized producer). The first layer reads the model input,
/// which is always 8-bit. Returns `(weight_bits_for, act_bits_for)`.
pub fn first_last_overrides(g: &Graph, bits: u8) -> (HashMap<String, u8>, HashMap<String, u8>) {
    let compute: Vec<usize> = (0..g.nodes.len()).filter(|&i| is_compute(&g.nodes[i], g)).collect();
    let (mut w, mut a) = (HashMap::new(), HashMap::new());
    let (Some(&first), Some(&last)) = (compute.first(), compute.last()) else { return (w, a) };
    w.insert(g.nodes[first].name.clone(), bits);
    w.insert(g.nodes[last].name.clone(), bits);
    let producers = g.producers();
    let mut v = g.nodes[last].inputs[0].clone();
    loop {
        a.insert(v.clone(), bits);
        match producers.get(v.as_str()).map(|&i| &g.nodes[i]) {
            Some(p) if is_passthrough(&p.op) => v = p.inputs[0].clone(),
            _ => break,
        }
    }
    (w, a)
}

/// Splits activations that are not clamps (hard-swish, hard-sigmoid) out of the Conv/Gemm they are fused into, as
/// their own nodes, so calibration observes the pre-activation and the export quantizes it: the integer runtime then
/// runs the convolution with an 8-bit output and the activation as a byte table, and no f32 tensor is left between
/// them. ReLU and Clip stay fused (they are the requantization's clamp). Returns how many were split. Run it on the
/// canonical graph before calibrating.
pub fn split_activations(g: &mut Graph) -> usize {
    let mut split = 0;
    let mut i = 0;
    while i < g.nodes.len() {
        let act = g.nodes[i].op.fused_act();
        if matches!(g.nodes[i].op, Op::Conv(_) | Op::Gemm { .. })
            && matches!(act, Act::HardSwish | Act::HardSigmoid { .. })
        {
            let y = g.nodes[i].outputs[0].clone();
            let pre = g.fresh_name(&format!("{y}_preact"));
            let n = &mut g.nodes[i];
            match &mut n.op {
                Op::Conv(c) => c.act = Act::None,
                Op::Gemm { act: a, .. } => *a = Act::None,
                _ => unreachable!(),
            }
            n.outputs[0] = pre.clone();
            let op = match act {
                Act::HardSwish => Op::HardSwish,
                Act::HardSigmoid { alpha, beta } => Op::HardSigmoid { alpha, beta },
                _ => unreachable!(),
            };
            let name = format!("{}_{}", n.name, op.op_type());
            g.nodes.insert(i + 1, Node { name, op, inputs: vec![pre], outputs: vec![y] });
            split += 1;
            i += 1;
        }
        i += 1;
    }
    split
}

/// Quantizes `g` (a canonical float graph, see `lowbit_runtime::canonicalize_free`) using the
/// calibration statistics `stats`.
pub fn build_qdq(g: &Graph, stats: &Stats, cfg: &QdqConfig) -> Result<QdqModel> {
    QScheme::activations(cfg.act_bits).validate().map_err(Error::Invalid)?;
    QScheme::weights(cfg.weight_bits).validate().map_err(Error::Invalid)?;
    for (n, b) in &cfg.weight_bits_for {
        QScheme::weights(*b).validate().map_err(|e| Error::node(n, e))?;
    }
    for (v, b) in &cfg.act_bits_for {
        QScheme::activations(*b).validate().map_err(|e| Error::value(v, e))?;
    }
    let inputs: HashSet<&str> = g.runtime_inputs().iter().map(|v| v.name.as_str()).collect();
    let ActPlan { float_nodes, params, order, narrowed, clip_before_q } = plan_activations(g, stats, cfg)?;
    let quantized = |n: &Node| !float_nodes.contains(&n.name);

    let mut out = g.clone();
    out.opset = out.opset.max(13);
    // Graph inputs no node reads and no initializer backs (old exporters list weights as inputs
    // and a converter may leave them behind) are not written: other runtimes would ask for them.
    let read: HashSet<&str> = g.nodes.iter().flat_map(|n| n.inputs.iter().map(|s| s.as_str())).collect();
    out.inputs
        .retain(|i| read.contains(i.name.as_str()) || g.initializers.contains_key(&i.name) || g.is_output(&i.name));
    let mut layers = vec![];
    let mut weight_bytes = 0usize;
    let mut scheme_meta: Vec<(String, String)> = vec![];
    let mut float_weight_bytes = 0usize;
    let mut new_nodes: Vec<Node> = vec![];
    // Q/DQ pairs for graph inputs go first.
    let qdq_pair = |v: &str, (s, z): (f32, i32), g: &mut Graph| -> Vec<Node> {
        let mut nodes = vec![];
        let mut src = v.to_string();
        if let Some(&(lo, hi)) = clip_before_q.get(v) {
            let (ln, hn) = (g.fresh_name(&format!("{v}_clip_min")), g.fresh_name(&format!("{v}_clip_max")));
            g.initializers.insert(ln.clone(), Tensor::scalar_f32(lo));
            g.initializers.insert(hn.clone(), Tensor::scalar_f32(hi));
            src = format!("{v}_clipped");
            nodes.push(Node {
                name: format!("{v}_Clip"),
                op: Op::Clip { min: None, max: None },
                inputs: vec![v.into(), ln, hn],
                outputs: vec![src.clone()],
            });
        }
        let sn = g.fresh_name(&format!("{v}_scale"));
        g.initializers.insert(sn.clone(), Tensor::scalar_f32(s));
        let zn = g.fresh_name(&format!("{v}_zero_point"));
        g.initializers.insert(zn.clone(), Tensor { shape: vec![], data: Data::U8(vec![z as u8]) });
        nodes.extend([
            Node {
                name: format!("{v}_QuantizeLinear"),
                op: Op::QuantizeLinear { axis: 1 },
                inputs: vec![src, sn.clone(), zn.clone()],
                outputs: vec![format!("{v}_quantized")],
            },
            Node {
                name: format!("{v}_DequantizeLinear"),
                op: Op::DequantizeLinear { axis: 1 },
                inputs: vec![format!("{v}_quantized"), sn, zn],
                outputs: vec![format!("{v}_dequantized")],
            },
        ]);
        nodes
    };
    for v in &order {
        if inputs.contains(v.as_str()) {
            let pair = qdq_pair(v, params[v], &mut out);
            new_nodes.extend(pair);
        }
    }
    let dq = |v: &str| format!("{v}_dequantized");
    for n in &g.nodes {
        let mut n2 = n.clone();
        if let Some(&act) = narrowed.get(&n.name) {
            match &mut n2.op {
                Op::Conv(c) => c.act = act,
                Op::Gemm { act: a, .. } => *a = act,
                _ => {
                    let Act::Clip { lo, hi } = act else { unreachable!("narrowed activations are clips") };
                    let (ln, hn) =
                        (out.fresh_name(&format!("{}_min", n.name)), out.fresh_name(&format!("{}_max", n.name)));
                    out.initializers.insert(ln.clone(), Tensor::scalar_f32(lo));
                    out.initializers.insert(hn.clone(), Tensor::scalar_f32(hi));
                    n2.op = Op::Clip { min: None, max: None };
                    n2.inputs = vec![n.inputs[0].clone(), ln, hn];
                }
            }
        }
        // Readers of quantized values read the dequantized copy.
        for i in n2.inputs.iter_mut() {
            if params.contains_key(i.as_str()) {
                *i = dq(i);
            }
        }
        if cfg.binary.contains(&n.name) && is_compute(n, g) {
            let Op::Conv(_) = n.op else { return Err(Error::node(&n.name, "only convolutions can be binary")) };
            let x = &n.inputs[0];
            if !params.contains_key(x) {
                return Err(Error::node(&n.name, "input activation is not quantized"));
            }
            let wname = n.inputs[1].clone();
            let w = &g.initializers[&wname];
            let wv = w.to_f32_vec();
            let co = w.shape[0];
            let per = wv.len() / co.max(1);
            let scale: Vec<f32> = wv
                .chunks(per.max(1))
                .map(|c| (c.iter().map(|v| v.abs() as f64).sum::<f64>() / c.len().max(1) as f64) as f32)
                .map(|a| if a > 0.0 && a.is_finite() { a } else { f32::MIN_POSITIVE })
                .collect();
            let q: Vec<i8> = wv.iter().map(|&v| if v >= 0.0 { 1 } else { -1 }).collect();
            let scale_w = scale.clone();
            // On disk: one bit per weight (uint8, bit j of byte i set for weight 8i+j negative),
            // unpacked by standard ops that every runtime folds at load: Cast -> Gather from a
            // shared 256x8 table of ±1 -> Reshape [-> Slice] -> Reshape to the weight's shape.
            let qn = out.fresh_name(&format!("{wname}_binary"));
            let table = "lowbit_binary_sign_table".to_string();
            if !out.initializers.contains_key(&table) {
                let t: Vec<i8> =
                    (0..256).flat_map(|b| (0..8).map(move |j| if b >> j & 1 == 1 { -1 } else { 1 })).collect();
                out.initializers.insert(table.clone(), Tensor { shape: vec![256, 8], data: Data::I8(t) });
            }
            let nb = q.len().div_ceil(8);
            let mut packed = vec![0u8; nb];
            for (i, &v) in q.iter().enumerate() {
                packed[i / 8] |= ((v < 0) as u8) << (i % 8);
            }
            let pn = out.fresh_name(&format!("{wname}_bits"));
            out.initializers.insert(pn.clone(), Tensor { shape: vec![nb], data: Data::U8(packed) });
            let v = |k: &str| format!("{qn}_{k}");
            let mut unpack = vec![
                (Op::Cast { to: lowbit_core::DType::I32 }, vec![pn], v("index")),
                (Op::Gather { axis: 0 }, vec![table, v("index")], v("signs")),
            ];
            let flat = out.fresh_name(&format!("{qn}_flat_shape"));
            out.initializers.insert(flat.clone(), Tensor::i64(vec![1], vec![(nb * 8) as i64]));
            unpack.push((Op::Reshape { allowzero: false }, vec![v("signs"), flat], v("flat")));
            let mut last = v("flat");
            if nb * 8 != q.len() {
                let (st, en) = (out.fresh_name(&format!("{qn}_start")), out.fresh_name(&format!("{qn}_end")));
                out.initializers.insert(st.clone(), Tensor::i64(vec![1], vec![0]));
                out.initializers.insert(en.clone(), Tensor::i64(vec![1], vec![q.len() as i64]));
                unpack.push((Op::Slice { attrs: None }, vec![last.clone(), st, en], v("sliced")));
                last = v("sliced");
            }
            let shp = out.fresh_name(&format!("{qn}_shape"));
            out.initializers
                .insert(shp.clone(), Tensor::i64(vec![w.shape.len()], w.shape.iter().map(|&d| d as i64).collect()));
            unpack.push((Op::Reshape { allowzero: false }, vec![last, shp], qn.clone()));
            for (i, (op, inputs, o)) in unpack.into_iter().enumerate() {
                new_nodes.push(Node { name: format!("{}_weight_unpack_{i}", n.name), op, inputs, outputs: vec![o] });
            }
            let sn = out.fresh_name(&format!("{wname}_scale"));
            out.initializers.insert(sn.clone(), Tensor::f32(vec![co], scale_w));
            let wdq = out.fresh_name(&format!("{wname}_dequantized"));
            new_nodes.push(Node {
                name: format!("{}_weight_DequantizeLinear", n.name),
                op: Op::DequantizeLinear { axis: 0 },
                inputs: vec![qn, sn],
                outputs: vec![wdq.clone()],
            });
            n2.inputs[1] = wdq;
            // x -> Sign -> + 0.5 -> Sign: +1 where x >= 0, -1 elsewhere; then int8 Q/DQ, scale 1.
            let base = format!("{}_binarize", n.name);
            let half = out.fresh_name(&format!("{base}_half"));
            out.initializers.insert(half.clone(), Tensor::scalar_f32(0.5));
            // The ±1 values as int8 ±64 with scale 1/64 (exact): the bias, as int32 with the
            // accumulator scale `s_w / 64`, then keeps six more bits than in units of one product.
            let one = out.fresh_name(&format!("{base}_scale"));
            out.initializers.insert(one.clone(), Tensor::scalar_f32(1.0 / BINARY_LEVEL as f32));
            let zero = out.fresh_name(&format!("{base}_zero_point"));
            out.initializers.insert(zero.clone(), Tensor { shape: vec![], data: Data::I8(vec![0]) });
            let v = |k: &str| format!("{base}_{k}");
            let chain = [
                ("Sign", Op::Sign, vec![n2.inputs[0].clone()], v("sign")),
                ("Add", Op::Add, vec![v("sign"), half], v("shifted")),
                ("Sign_1", Op::Sign, vec![v("shifted")], v("pm1")),
                ("QuantizeLinear", Op::QuantizeLinear { axis: 1 }, vec![v("pm1"), one.clone(), zero.clone()], v("q")),
                ("DequantizeLinear", Op::DequantizeLinear { axis: 1 }, vec![v("q"), one, zero], v("dq")),
            ];
            for (suffix, op, inputs, o) in chain {
                new_nodes.push(Node { name: format!("{base}_{suffix}"), op, inputs, outputs: vec![o] });
            }
            n2.inputs[0] = v("dq");
            let nparams = wv.len();
            float_weight_bytes += nparams * 4;
            weight_bytes += nparams.div_ceil(8) + co * 4;
            if let Some(b) = n.input(2).and_then(|b| g.initializers.get(b)) {
                float_weight_bytes += b.len() * 4;
                weight_bytes += b.len() * 4;
                let bscale: Vec<f32> = scale.iter().map(|s| s / BINARY_LEVEL as f32).collect();
                n2.inputs[2] = int32_bias(&mut out, &mut new_nodes, &n.name, &n.inputs[2], &b.to_f32_vec(), bscale);
            }
            layers.push(LayerReport {
                node: n.name.clone(),
                op: n.op.op_type().to_string(),
                weight_bits: Some(1),
                act_bits: Some(1),
                params: nparams,
            });
        } else if is_compute(n, g) && quantized(n) {
            let x = &n.inputs[0];
            // `float_input`: a layer reading the model input keeps it float; its bias stays float.
            let sx = match params.get(x) {
                Some(&(sx, _)) => Some(sx),
                None if cfg.float_input && inputs.contains(x.as_str()) => None,
                None => return Err(Error::node(&n.name, "input activation is not quantized")),
            };
            let wname = n.inputs[1].clone();
            let w = &g.initializers[&wname];
            let mut wv = w.to_f32_vec();
            let mut bias: Option<Vec<f32>> =
                n.input(2).map(|b| g.initializers.get(b).map(|t| t.to_f32_vec())).flatten();
            let axis = match &n.op {
                Op::Conv(_) => 0,
                Op::Gemm { trans_b, .. } => {
                    if *trans_b {
                        0
                    } else {
                        1
                    }
                }
                _ => 1,
            };
            if let Op::Gemm { alpha, beta, .. } = &mut n2.op {
                if *alpha != 1.0 {
                    wv.iter_mut().for_each(|v| *v *= *alpha);
                    *alpha = 1.0;
                }
                if let Some(b) = bias.as_mut() {
                    b.iter_mut().for_each(|v| *v *= *beta);
                }
                *beta = 1.0;
                if let Some(b) = &bias {
                    let nout = w.shape[axis];
                    if b.len() == 1 && nout > 1 {
                        bias = Some(vec![b[0]; nout]);
                    } else if b.len() != nout {
                        return Err(Error::node(&n.name, "Gemm bias is not per output channel"));
                    }
                }
            }
            let bits = cfg.weight_bits_for.get(&n.name).copied().unwrap_or(cfg.weight_bits);
            let scheme = QScheme {
                granularity: if cfg.per_channel { Granularity::PerChannel { axis } } else { Granularity::PerTensor },
                ..QScheme::weights(bits)
            };
            // Mixed precision's raised layers (8 bits above a lower default) stay linear.
            let kind = if bits > cfg.weight_bits { Kind::Linear(Mode::Symmetric) } else { cfg.weight_kind };
            let mut book = 0usize;
            let (q, p): (Vec<i32>, QParams) = match (cfg.weight_scale_override.get(&n.name), kind) {
                _ if cfg.weight_int_override.contains_key(&n.name) => {
                    let (q, sc) = &cfg.weight_int_override[&n.name];
                    given_ints(q, sc, &wv, &w.shape, &scheme).map_err(|e| Error::node(&n.name, e))?
                }
                (Some(sc), _) => {
                    quantize_with_scales(&wv, &w.shape, &scheme, sc).map_err(|e| Error::node(&n.name, e))?
                }
                (None, Kind::Linear(m)) => quantize_linear_weights(
                    &wv,
                    &w.shape,
                    &QScheme { kind: Kind::Linear(m), ..scheme },
                    cfg.weight_mse || bits < 8,
                ),
                (None, Kind::Log2) => {
                    log2_weights_int8(&wv, &w.shape, scheme.granularity, bits).map_err(|e| Error::node(&n.name, e))?
                }
                (None, Kind::KMeans) => {
                    // Clustering does not depend on the activation settings `auto` and mixed
                    // precision vary between builds: cluster each weight tensor once.
                    let key = (n.name.clone(), bits, weights_fingerprint(&wv));
                    let mut cache = cfg.kmeans_cache.lock().unwrap_or_else(|e| e.into_inner());
                    let (q, p, codes) = cache.entry(key).or_insert_with(|| kmeans_weights_int8(&wv, bits)).clone();
                    book = codes.len();
                    (q, p)
                }
                (None, Kind::Binary) => {
                    return Err(Error::node(
                        &n.name,
                        "binary weights come from `lowbit binarize` or `lowbit train --binary`, not from build_qdq's weight kind",
                    ))
                }
            };
            // Named as on the command line; layers with given scales are linear whatever the kind.
            let scheme_name = match kind {
                _ if cfg.weight_scale_override.contains_key(&n.name) => None,
                Kind::Linear(Mode::PowerOfTwo) => Some("pow2"),
                Kind::Log2 => Some("log"),
                Kind::KMeans => Some("kmeans"),
                _ => None,
            };
            if let Some(sn) = scheme_name {
                scheme_meta.push((format!("lowbit.quant.scheme.{}", n.name), format!("{sn}:{bits}")));
            }
            let nch = p.scale.len();
            let given_bias = cfg.bias_override.get(&n.name);
            if let Some(b) = given_bias {
                if b.len() != w.shape[axis] {
                    return Err(Error::node(
                        &n.name,
                        format!("{} biases given for {} outputs", b.len(), w.shape[axis]),
                    ));
                }
                bias = Some(b.clone());
            } else if cfg.bias_correction && matches!(n.op, Op::Conv(_)) {
                if let Some(mean) = stats.get(x).map(|o| o.channel_means()).filter(|m| !m.is_empty()) {
                    let (co, cig) = (w.shape[0], w.shape[1]);
                    let kk: usize = w.shape[2..].iter().product();
                    let group = mean.len() / cig.max(1);
                    let cog = co / group.max(1);
                    let mut shift = vec![0f32; co];
                    for (o, sh) in shift.iter_mut().enumerate() {
                        let gi = o / cog.max(1);
                        let sc = p.scale[if nch == 1 { 0 } else { o }];
                        let mut acc = 0f64;
                        for ci in 0..cig {
                            let m = mean[gi * cig + ci] as f64;
                            for k in 0..kk {
                                let idx = (o * cig + ci) * kk + k;
                                acc += ((q[idx] as f32 * sc) - wv[idx]) as f64 * m;
                            }
                        }
                        *sh = acc as f32;
                    }
                    let b = bias.get_or_insert_with(|| vec![0.0; co]);
                    for (bv, s) in b.iter_mut().zip(&shift) {
                        *bv -= s;
                    }
                }
            }
            let qn = out.fresh_name(&format!("{wname}_quantized"));
            out.initializers.insert(
                qn.clone(),
                Tensor { shape: w.shape.clone(), data: Data::I8(q.iter().map(|&v| v as i8).collect()) },
            );
            let sn = out.fresh_name(&format!("{wname}_scale"));
            let sshape = if nch == 1 { vec![] } else { vec![nch] };
            out.initializers.insert(sn.clone(), Tensor::f32(sshape.clone(), p.scale.clone()));
            let wdq = out.fresh_name(&format!("{wname}_dequantized"));
            new_nodes.push(Node {
                name: format!("{}_weight_DequantizeLinear", n.name),
                op: Op::DequantizeLinear { axis: axis as i64 },
                // Symmetric weights: the zero point input is left out (ONNX: 0 when absent).
                inputs: vec![qn, sn],
                outputs: vec![wdq.clone()],
            });
            n2.inputs[1] = wdq;
            let nparams = wv.len();
            float_weight_bytes += nparams * 4;
            // k-means: indices of `bits` each plus the int8 codebook.
            weight_bytes += (nparams * bits as usize).div_ceil(8) + nch * 4 + book;
            if let Some(b) = bias {
                let nout = b.len();
                let bname = n.inputs.get(2).cloned().unwrap_or_else(|| format!("{}_bias", n.name));
                n2.inputs.resize(3, String::new());
                n2.inputs[2] = match sx {
                    Some(sx) => {
                        let bscale: Vec<f32> = (0..nout).map(|o| sx * p.scale[if nch == 1 { 0 } else { o }]).collect();
                        int32_bias(&mut out, &mut new_nodes, &n.name, &bname, &b, bscale)
                    }
                    None => {
                        let fb = out.fresh_name(&format!("{bname}_corrected"));
                        out.initializers.insert(fb.clone(), Tensor::f32(vec![nout], b));
                        fb
                    }
                };
                float_weight_bytes += nout * 4;
                weight_bytes += nout * 4;
            }
            layers.push(LayerReport {
                node: n.name.clone(),
                op: n.op.op_type().to_string(),
                weight_bits: Some(bits),
                act_bits: sx.map(|_| cfg.act_bits_of(&n.inputs[0])),
                params: nparams,
            });
        } else if is_compute(n, g) {
            let np = g.initializers[&n.inputs[1]].len();
            float_weight_bytes += np * 4;
            weight_bytes += np * 4;
            layers.push(LayerReport {
                node: n.name.clone(),
                op: n.op.op_type().to_string(),
                weight_bits: None,
                act_bits: None,
                params: np,
            });
        }
        let outs = n2.outputs.clone();
        new_nodes.push(n2);
        for o in &outs {
            if let Some(&p) = params.get(o) {
                let pair = qdq_pair(o, p, &mut out);
                new_nodes.extend(pair);
            }
        }
    }
    out.nodes = new_nodes;
    // Float weights replaced by quantized ones are no longer read.
    lowbit_core::passes::remove_dead(&mut out);
    out.sort_and_check()?;
    out.metadata.retain(|(k, _)| !k.starts_with("lowbit.quant"));
    out.metadata.push(("lowbit.quant.weight_bits".into(), cfg.weight_bits.to_string()));
    out.metadata.push(("lowbit.quant.act_bits".into(), cfg.act_bits.to_string()));
    out.metadata.push(("lowbit.quant.method".into(), cfg.method.name()));
    out.metadata.extend(scheme_meta);
    Ok(QdqModel { graph: out, layers, act_params: params, weight_bytes, float_weight_bytes })
}
