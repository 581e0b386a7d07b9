//! Finds the integer units of a QDQ graph: `DequantizeLinear → op → QuantizeLinear` patterns
//! (conv, gemm, add, mul, activations as byte tables, global average pool, max pool, reshapes) whose inputs are already integer,
//! so the plan runs them on integer kernels and keeps the activations in 8 bits between them.
//! Ops without an integer kernel stay as they are (float, between their own Q/DQ nodes); each
//! quantized-looking node that is not fused gets a note saying why.

use std::collections::{HashMap, HashSet};

use lowbit_core::{Act, DType, Graph, Node, Op, PoolAttrs};
use lowbit_kernels::int8::ops::QParams;
use lowbit_kernels::int8::Out;

use crate::qunits::{bin_unit, deconv_unit, mac_unit, BinUnit, DeconvUnit, MacUnit};
use crate::specialize::Specialized;

#[derive(Clone, Debug)]
pub(crate) enum Unit {
    Mac(Box<MacUnit>),
    Bin(Box<BinUnit>),
    Add {
        a: String,
        qa: QParams,
        b: String,
        qb: QParams,
        lo: f32,
        hi: f32,
        qo: QParams,
    },
    Gap {
        x: String,
        qi: QParams,
        qo: QParams,
    },
    MaxPool {
        x: String,
        q: QParams,
        attrs: PoolAttrs,
    },
    /// `DequantizeLinear → activation → QuantizeLinear` as a byte table (hard-swish, hard-sigmoid, ReLU, Clip).
    Lut {
        x: String,
        table: Box<[u8; 256]>,
    },
    /// `DequantizeLinear(a) · DequantizeLinear(b) → QuantizeLinear`: same shapes, or `b` one value per channel of a
    /// 4-D `a` (`[n, c, 1, 1]`, a squeeze-and-excitation gate).
    Mul {
        a: String,
        qa: QParams,
        b: String,
        qb: QParams,
        qo: QParams,
        per_channel: bool,
    },
    /// The output is the input's bytes (a reshape between equal Q/DQ parameters).
    Alias {
        x: String,
    },
    /// `DequantizeLinear → PRelu → QuantizeLinear` with a constant slope per channel (axis 1).
    PRelu {
        x: String,
        qi: QParams,
        qo: QParams,
        slope: Vec<f32>,
    },
    /// `DequantizeLinear → op → QuantizeLinear` for an op that maps each channel (axis 1) through
    /// its own function: BatchNormalization with constant statistics (left unfolded after a
    /// quantized ConvTranspose, for example): one byte table per channel.
    ChannelLut {
        x: String,
        tables: Vec<[u8; 256]>,
    },
    /// `DequantizeLinear` of each input `→ Concat → QuantizeLinear`; `axis` of the NCHW (or plain) shape.
    Concat {
        xs: Vec<(String, QParams)>,
        qo: QParams,
        axis: usize,
    },
    /// A quantized 2-D ConvTranspose (group 1) with a quantized output.
    Deconv(Box<DeconvUnit>),
    /// `DequantizeLinear → Resize (nearest or linear, 4-D, height and width only) → QuantizeLinear`.
    Resize {
        x: String,
        qi: QParams,
        qo: QParams,
        rows: Option<lowbit_kernels::resample::Taps>,
        cols: Option<lowbit_kernels::resample::Taps>,
    },
}

impl Unit {
    pub fn inputs(&self) -> Vec<String> {
        match self {
            Unit::Mac(m) => vec![m.x.clone()],
            Unit::Deconv(d) => vec![d.x.clone()],
            Unit::Bin(b) => vec![b.x.clone()],
            Unit::Add { a, b, .. } | Unit::Mul { a, b, .. } => vec![a.clone(), b.clone()],
            Unit::Gap { x, .. }
            | Unit::MaxPool { x, .. }
            | Unit::Lut { x, .. }
            | Unit::Alias { x }
            | Unit::PRelu { x, .. }
            | Unit::ChannelLut { x, .. }
            | Unit::Resize { x, .. } => vec![x.clone()],
            Unit::Concat { xs, .. } => xs.iter().map(|p| p.0.clone()).collect(),
        }
    }
}

pub(crate) struct Fusion {
    /// Anchor node index → (unit, the value it writes).
    pub units: HashMap<usize, (Unit, String)>,
    /// Nodes absorbed into units (their Q, activation and now-unused DQ nodes).
    pub skip: HashSet<usize>,
    /// Values stored as integers in lowbit's layout (NHWC when 4-D).
    pub int_vals: HashSet<String>,
    /// Why quantized-looking nodes stayed in float.
    pub notes: Vec<String>,
}

impl Fusion {
    /// The nodes in step order, each integer unit in place of its anchor node (an alias becomes an
    /// Identity), absorbed nodes dropped.
    pub fn interleave(&self, g: &Graph) -> Vec<(Node, Option<Unit>)> {
        let mut items = vec![];
        for (i, n) in g.nodes.iter().enumerate() {
            if self.skip.contains(&i) {
                continue;
            }
            match self.units.get(&i) {
                Some((u, out)) => {
                    let op = if matches!(u, Unit::Alias { .. }) { Op::Identity } else { n.op.clone() };
                    let node = Node { name: n.name.clone(), op, inputs: u.inputs(), outputs: vec![out.clone()] };
                    items.push((node, Some(u.clone())));
                }
                None => items.push((n.clone(), None)),
            }
        }
        items
    }
}

/// Per-tensor parameters of a Q or DQ node with constant scale and zero point.
pub(crate) fn qparams(g: &Graph, n: &Node) -> Option<QParams> {
    let s = g.initializers.get(n.input(1)?)?;
    if s.len() != 1 || s.dtype() != DType::F32 {
        return None;
    }
    let scale = s.to_f32_vec()[0];
    if !(scale.is_finite() && scale > 0.0) {
        return None;
    }
    let (zp, signed) = match n.input(2) {
        None => (0, false),
        Some(z) => {
            let z = g.initializers.get(z)?;
            if z.len() != 1 || !matches!(z.dtype(), DType::U8 | DType::I8) {
                return None;
            }
            (z.to_i64_vec()[0] as i32, z.dtype() == DType::I8)
        }
    };
    Some(QParams { scale, zp, signed })
}

pub(crate) fn analyze(spec: &Specialized, enabled: bool) -> Fusion {
    let g = &spec.graph;
    let mut f = Fusion { units: HashMap::new(), skip: HashSet::new(), int_vals: HashSet::new(), notes: vec![] };
    if !enabled {
        return f;
    }
    let mut prod: HashMap<&str, usize> = HashMap::new();
    let mut cons: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for o in &n.outputs {
            prod.insert(o, i);
        }
        for x in n.inputs.iter().filter(|s| !s.is_empty()) {
            cons.entry(x).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let shape = |v: &str| spec.types.get(v).map(|t| t.1.clone()).unwrap_or_default();
    let dtype = |v: &str| spec.types.get(v).map(|t| t.0);
    // The one reader of `v`, if `v` has exactly one and is not a graph output.
    let sole = |v: &str| -> Option<usize> {
        match cons.get(v) {
            Some(c) if c.len() == 1 && !outputs.contains(v) => Some(c[0]),
            _ => None,
        }
    };
    let is = |i: usize, q: bool| {
        matches!((&g.nodes[i].op, q), (Op::QuantizeLinear { .. }, true) | (Op::DequantizeLinear { .. }, false))
    };
    // DQ outputs consumed as integers by units, counted per reader.
    let mut int_reads: HashMap<String, usize> = HashMap::new();
    let mut pending: Vec<(usize, String)> = vec![];

    for (i, n) in g.nodes.iter().enumerate() {
        if f.skip.contains(&i) {
            continue;
        }
        // Integer input behind a DQ: (int value, params).
        let dq_in = |f: &Fusion, slot: usize| -> Option<(String, QParams)> {
            let d = *prod.get(n.input(slot)?)?;
            if !is(d, false) {
                return None;
            }
            let dn = &g.nodes[d];
            let q = qparams(g, dn)?;
            let src = dn.inputs[0].clone();
            f.int_vals.contains(&src).then_some((src, q))
        };
        // Q right after `v` (the only reader): (Q node, its params).
        let q_after = |v: &str| -> Option<(usize, QParams)> {
            let c = sole(v)?;
            if !is(c, true) {
                return None;
            }
            Some((c, qparams(g, &g.nodes[c])?))
        };
        let mut fused: Option<(Unit, String, Vec<usize>)> = None;
        let mut note: Option<String> = None;
        // A layer the quantized file keeps float (noted although no DequantizeLinear feeds it).
        let mut file_float = false;
        // A binary convolution: the whole binarization chain in front of the Conv.
        if let Op::Conv(attrs) = &n.op {
            let chain = (|| -> Option<(Vec<usize>, String, Option<u8>, Option<String>, QParams)> {
                // Scale 1/m for an integer level m (so ±1 is stored exactly as ±m), zero point 0.
                let level = |p: &QParams| {
                    let m = (1.0 / p.scale).round();
                    p.zp == 0 && p.signed && (1.0..=127.0).contains(&m) && (1.0 / m) == p.scale
                };
                let unit_q =
                    |k: usize, q: bool| -> bool { is(k, q) && qparams(g, &g.nodes[k]).is_some_and(|p| level(&p)) };
                let d1 = *prod.get(n.input(0)?)?;
                let q1 = *prod.get(g.nodes[d1].inputs[0].as_str())?;
                let s2 = *prod.get(g.nodes[q1].inputs[0].as_str())?;
                let a = *prod.get(g.nodes[s2].inputs[0].as_str())?;
                let an = &g.nodes[a];
                if !(unit_q(d1, false) && unit_q(q1, true) && g.nodes[s2].op == Op::Sign && an.op == Op::Add) {
                    return None;
                }
                let lq = qparams(g, &g.nodes[q1])?;
                if qparams(g, &g.nodes[d1])? != lq {
                    return None;
                }
                let half = |v: &str| g.initializers.get(v).is_some_and(|t| t.len() == 1 && t.to_f32_vec()[0] == 0.5);
                let sv = if half(&an.inputs[1]) {
                    &an.inputs[0]
                } else if half(&an.inputs[0]) {
                    &an.inputs[1]
                } else {
                    return None;
                };
                let s1 = *prod.get(sv.as_str())?;
                if g.nodes[s1].op != Op::Sign {
                    return None;
                }
                for (v, reader) in [(d1, i), (q1, d1), (s2, q1), (a, s2), (s1, a)] {
                    if sole(&g.nodes[v].outputs[0]) != Some(reader) {
                        return None;
                    }
                }
                let xv = g.nodes[s1].inputs[0].clone();
                // The input behind a DQ of integers (uint8), or a float value.
                if let Some(&d0) = prod.get(xv.as_str()) {
                    if is(d0, false) {
                        let q = qparams(g, &g.nodes[d0])?;
                        let src = g.nodes[d0].inputs[0].clone();
                        if !q.signed && f.int_vals.contains(&src) && shape(&src).len() == 4 {
                            return Some((vec![d1, q1, s2, a, s1], src, Some(q.zp as u8), Some(xv), lq));
                        }
                    }
                }
                (dtype(&xv) == Some(DType::F32) && shape(&xv).len() == 4)
                    .then(|| (vec![d1, q1, s2, a, s1], xv, None, None, lq))
            })();
            if let Some((absorbed, x, zx, dq_read, lq)) = chain {
                match bin_unit(spec, n, attrs, x, zx, lq) {
                    Ok(mut b) => {
                        let o = &n.outputs[0];
                        let mut absorbed = absorbed;
                        let target = if let Some((qn, qo)) = q_after(o) {
                            let (qmin, qmax) = qo.range();
                            b.out = Out::Q { scale: qo.scale, zp: qo.zp, qmin, qmax };
                            absorbed.push(qn);
                            Some(g.nodes[qn].outputs[0].clone())
                        } else if shape(o).len() <= 2 || shape(o)[2..].iter().product::<usize>() == 1 {
                            Some(o.clone())
                        } else {
                            note = Some("binary convolution whose output is not quantized".into());
                            None
                        };
                        if let Some(t) = target {
                            if let Some(d) = dq_read {
                                *int_reads.entry(d).or_default() += 1;
                            }
                            f.skip.extend(absorbed);
                            f.int_vals.insert(t.clone());
                            f.units.insert(i, (Unit::Bin(Box::new(b)), t));
                            continue;
                        }
                    }
                    Err(why) => note = Some(why),
                }
            }
        }
        match &n.op {
            Op::QuantizeLinear { .. } => {
                if qparams(g, n).is_some() && dtype(&n.inputs[0]) == Some(DType::F32) {
                    f.int_vals.insert(n.outputs[0].clone());
                }
            }
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                // Integer 4-D values are NHWC bytes, a reshape assumes NCHW order: only where the two agree (no
                // spatial plane, or fewer than 4 dimensions) on both sides.
                let plain = |s: &[usize]| s.len() < 4 || s[2..].iter().product::<usize>() == 1;
                let xs = shape(&n.inputs[0]);
                let plain_out = plain(&shape(&n.outputs[0]));
                if f.int_vals.contains(&n.inputs[0]) && plain(&xs) && plain_out {
                    f.int_vals.insert(n.outputs[0].clone());
                } else if let (Some((x, q)), Some((qn, qo))) = (dq_in(&f, 0), q_after(&n.outputs[0])) {
                    if qo == q && plain(&shape(&x)) && plain_out {
                        fused = Some((Unit::Alias { x }, g.nodes[qn].outputs[0].clone(), vec![qn]));
                    }
                }
            }
            Op::Conv(_) | Op::Gemm { .. } | Op::MatMul => match mac_unit(spec, n, dq_in(&f, 0)) {
                Ok(mut m) => {
                    let o = &n.outputs[0];
                    if let Some((qn, qo)) = q_after(o) {
                        let (qmin, qmax) = qo.range();
                        m.out = Out::Q { scale: qo.scale, zp: qo.zp, qmin, qmax };
                        fused = Some((Unit::Mac(Box::new(m)), g.nodes[qn].outputs[0].clone(), vec![qn]));
                    } else if shape(o).len() <= 2 || shape(o)[2..].iter().product::<usize>() == 1 {
                        m.out = Out::F32;
                        fused = Some((Unit::Mac(Box::new(m)), o.clone(), vec![]));
                    } else {
                        note = Some("its output is not quantized".into());
                    }
                }
                // A float layer of a quantized file (its output is quantized, its input is not): the file's choice,
                // e.g. a first layer kept float so the model input is not rounded to 8 bits.
                Err(None)
                    if dq_in(&f, 0).is_none()
                        && (q_after(&n.outputs[0]).is_some()
                            || sole(&n.outputs[0]).is_some_and(|r| {
                                lowbit_core::passes::as_activation(g, &g.nodes[r]).is_some()
                                    && q_after(&g.nodes[r].outputs[0]).is_some()
                            })) =>
                {
                    note = Some("its input is not quantized (the file keeps this layer float)".into());
                    file_float = true;
                }
                Err(why) => note = why,
            },
            Op::Add => {
                let (a, b) = (dq_in(&f, 0), dq_in(&f, 1));
                let same = shape(&n.inputs[0]) == shape(&n.outputs[0]) && shape(&n.inputs[1]) == shape(&n.outputs[0]);
                if let (Some((a, qa)), Some((b, qb)), true) = (a, b, same) {
                    let o = &n.outputs[0];
                    // An activation clamp after the Add (Relu, or a Clip with constant bounds).
                    let clamp = sole(o).and_then(|r| match lowbit_core::passes::as_activation(g, &g.nodes[r]) {
                        Some(Act::Relu) => Some((r, 0.0, f32::INFINITY)),
                        Some(Act::Clip { lo, hi }) => Some((r, lo, hi)),
                        _ => None,
                    });
                    let relu = clamp.map(|c| c.0);
                    let after = relu.map(|r| g.nodes[r].outputs[0].clone()).unwrap_or(o.clone());
                    if let Some((qn, qo)) = q_after(&after) {
                        let (lo, hi) = clamp.map_or((f32::NEG_INFINITY, f32::INFINITY), |c| (c.1, c.2));
                        let unit = Unit::Add { a, qa, b, qb, lo, hi, qo };
                        fused = Some((unit, g.nodes[qn].outputs[0].clone(), relu.into_iter().chain([qn]).collect()));
                    } else {
                        note = Some("its output is not quantized".into());
                    }
                } else if n.inputs.iter().any(|x| prod.get(x.as_str()).is_some_and(|&d| is(d, false))) {
                    note = Some("needs two per-tensor integer inputs of the output's shape".into());
                }
            }
            Op::Relu | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::HardSwish | Op::Sigmoid | Op::Unary(_) => {
                // The f32 function the reference evaluator computes for the node (`Act::apply` is also what the
                // float kernels run for the activations).
                let func: Option<Box<dyn Fn(f32) -> f32>> = match &n.op {
                    Op::Sigmoid => Some(Box::new(|v: f32| 1.0 / (1.0 + (-v).exp()))),
                    Op::Unary(u) => {
                        let u = *u;
                        Some(Box::new(move |v: f32| u.apply(v)))
                    }
                    _ => lowbit_core::passes::as_activation(g, n).map(|a| Box::new(move |v: f32| a.apply(v)) as _),
                };
                match (func, dq_in(&f, 0), q_after(&n.outputs[0])) {
                    (Some(act), Some((x, qi)), Some((qn, qo))) => {
                        let table = Box::new(lowbit_kernels::int8::ops::lut_table(qi, qo, act));
                        fused = Some((Unit::Lut { x, table }, g.nodes[qn].outputs[0].clone(), vec![qn]));
                    }
                    (None, _, _) => note = Some("its parameters are not constants".into()),
                    (_, None, _) => note = Some("its input is not a per-tensor integer value".into()),
                    (_, _, None) => note = Some("its output is not quantized".into()),
                }
            }
            Op::Mul => {
                let ins = (dq_in(&f, 0), dq_in(&f, 1), q_after(&n.outputs[0]));
                if ins.0.is_none() || ins.1.is_none() {
                    note = Some("needs two per-tensor integer inputs".into());
                } else if ins.2.is_none() {
                    note = Some("its output is not quantized".into());
                }
                if let (Some((a, qa)), Some((b, qb)), Some((qn, qo))) = ins {
                    let (sa, sb, so) = (shape(&a), shape(&b), shape(&n.outputs[0]));
                    let gate = |full: &[usize], g: &[usize]| {
                        full.len() == 4 && g.len() == 4 && g[0] == full[0] && g[1] == full[1] && g[2] * g[3] == 1
                    };
                    let unit = if sa == so && sb == so {
                        Some(Unit::Mul { a, qa, b, qb, qo, per_channel: false })
                    } else if sa == so && gate(&so, &sb) {
                        Some(Unit::Mul { a, qa, b, qb, qo, per_channel: true })
                    } else if sb == so && gate(&so, &sa) {
                        // The product commutes exactly in f32: the full tensor goes first.
                        Some(Unit::Mul { a: b, qa: qb, b: a, qb: qa, qo, per_channel: true })
                    } else {
                        note = Some("needs inputs of the output's shape or a per-channel gate".into());
                        None
                    };
                    if let Some(u) = unit {
                        fused = Some((u, g.nodes[qn].outputs[0].clone(), vec![qn]));
                    }
                }
            }
            Op::GlobalAveragePool => {
                if let (Some((x, qi)), Some((qn, qo))) = (dq_in(&f, 0), q_after(&n.outputs[0])) {
                    if shape(&x).len() == 4 {
                        fused = Some((Unit::Gap { x, qi, qo }, g.nodes[qn].outputs[0].clone(), vec![qn]));
                    }
                }
            }
            Op::PRelu => {
                let slope = n.input(1).and_then(|v| g.initializers.get(v));
                match (slope, dq_in(&f, 0), q_after(&n.outputs[0])) {
                    (Some(sl), Some((x, qi)), Some((qn, qo))) => {
                        let xs = shape(&x);
                        let r = xs.len();
                        // One slope, or one per channel on axis 1 (right-aligned, 1 elsewhere); the channels are the
                        // last axis of the bytes for a 4-D (NHWC) or 2-D value.
                        let c = xs.get(1).copied().unwrap_or(0);
                        let dims: Vec<usize> = (0..r)
                            .map(|i| if i + sl.shape.len() >= r { sl.shape[i + sl.shape.len() - r] } else { 1 })
                            .collect();
                        let per_channel =
                            sl.rank() <= r && dims.iter().enumerate().all(|(i, &d)| d == 1 || (i == 1 && d == c));
                        if (r == 4 || r == 2) && per_channel && sl.dtype() == DType::F32 && c > 0 {
                            let sv = sl.to_f32_vec();
                            let slope = if sv.len() == 1 { vec![sv[0]; c] } else { sv };
                            fused = Some((Unit::PRelu { x, qi, qo, slope }, g.nodes[qn].outputs[0].clone(), vec![qn]));
                        } else {
                            note = Some("needs a constant slope per channel of a 2-D or 4-D input".into());
                        }
                    }
                    (None, _, _) => note = Some("its slope is not a constant".into()),
                    (_, None, _) => note = Some("its input is not a per-tensor integer value".into()),
                    (_, _, None) => note = Some("its output is not quantized".into()),
                }
            }
            Op::BatchNorm { epsilon } => {
                let eps = *epsilon;
                let params: Option<Vec<Vec<f32>>> = (1..5)
                    .map(|i| n.input(i).and_then(|v| g.initializers.get(v)))
                    .map(|t| t.filter(|t| t.dtype() == DType::F32).map(|t| t.to_f32_vec()))
                    .collect();
                match (params, dq_in(&f, 0), q_after(&n.outputs[0])) {
                    (Some(p), Some((x, qi)), Some((qn, qo))) => {
                        let xs = shape(&x);
                        let c = xs.get(1).copied().unwrap_or(0);
                        if (xs.len() == 4 || xs.len() == 2) && c > 0 && p.iter().all(|v| v.len() == c) {
                            // The reference evaluator's f32 arithmetic, channel by channel.
                            let tables = (0..c)
                                .map(|ch| {
                                    let (gamma, beta, mean, var) = (p[0][ch], p[1][ch], p[2][ch], p[3][ch]);
                                    lowbit_kernels::int8::ops::lut_table(qi, qo, |v| {
                                        (v - mean) / (var + eps).sqrt() * gamma + beta
                                    })
                                })
                                .collect();
                            let unit = Unit::ChannelLut { x, tables };
                            fused = Some((unit, g.nodes[qn].outputs[0].clone(), vec![qn]));
                        } else {
                            note = Some("needs one value per channel of a 2-D or 4-D input".into());
                        }
                    }
                    (None, _, _) => note = Some("its statistics are not f32 constants".into()),
                    (_, None, _) => note = Some("its input is not a per-tensor integer value".into()),
                    (_, _, None) => note = Some("its output is not quantized".into()),
                }
            }
            Op::ConvTranspose(c) => match (deconv_unit(spec, n, c, dq_in(&f, 0)), q_after(&n.outputs[0])) {
                (Ok(mut d), Some((qn, qo))) => {
                    d.qo = qo;
                    fused = Some((Unit::Deconv(Box::new(d)), g.nodes[qn].outputs[0].clone(), vec![qn]));
                }
                (Err(why), _) => note = why,
                (Ok(_), None) => note = Some("its output is not quantized".into()),
            },
            Op::Concat { axis } if !n.inputs.iter().any(|s| s.is_empty()) => {
                let ins: Vec<Option<(String, QParams)>> = (0..n.inputs.len()).map(|i| dq_in(&f, i)).collect();
                let rank = shape(&n.outputs[0]).len();
                match (ins.iter().all(|i| i.is_some()), q_after(&n.outputs[0])) {
                    (true, Some((qn, qo))) => match lowbit_core::shape::norm_axis(*axis, rank) {
                        Ok(axis) if rank > 0 => {
                            let xs = ins.into_iter().flatten().collect();
                            fused = Some((Unit::Concat { xs, qo, axis }, g.nodes[qn].outputs[0].clone(), vec![qn]));
                        }
                        _ => note = Some("its axis is out of range".into()),
                    },
                    (false, _) => note = Some("needs every input per-tensor integer".into()),
                    (_, None) => note = Some("its output is not quantized".into()),
                }
            }
            Op::Resize(r) if r.coord != lowbit_core::CoordMode::TfCropAndResize => {
                let konst = |i: usize| n.input(i).and_then(|s| g.initializers.get(s));
                match (dq_in(&f, 0), q_after(&n.outputs[0])) {
                    (Some((x, qi)), Some((qn, qo))) => {
                        let (xs, os) = (shape(&x), shape(&n.outputs[0]));
                        match (xs.len() == 4)
                            .then(|| lowbit_kernels::resample::resize_taps(n, r, &xs, &os, &konst))
                            .flatten()
                        {
                            Some((rows, cols)) => {
                                let unit = Unit::Resize { x, qi, qo, rows, cols };
                                fused = Some((unit, g.nodes[qn].outputs[0].clone(), vec![qn]));
                            }
                            None => note = Some("only nearest or linear resizing of height and width".into()),
                        }
                    }
                    (None, _) => note = Some("its input is not a per-tensor integer value".into()),
                    (_, None) => note = Some("its output is not quantized".into()),
                }
            }
            Op::MaxPool(p) if n.outputs.iter().skip(1).all(|o| o.is_empty()) => {
                if let (Some((x, q)), Some((qn, qo))) = (dq_in(&f, 0), q_after(&n.outputs[0])) {
                    if q == qo && shape(&x).len() == 4 {
                        let unit = Unit::MaxPool { x, q, attrs: p.clone() };
                        fused = Some((unit, g.nodes[qn].outputs[0].clone(), vec![qn]));
                    } else {
                        note = Some("input and output quantization differ".into());
                    }
                }
            }
            Op::DequantizeLinear { .. } => {}
            op => note = Some(format!("lowbit has no integer kernel for {}", op.op_type())),
        }
        if let Some(why) = note {
            if file_float || n.inputs.iter().any(|x| prod.get(x.as_str()).is_some_and(|&d| is(d, false))) {
                pending.push((i, format!("{} '{}' runs in f32: {}", n.op.op_type(), n.name, why)));
            }
        }
        if let Some((unit, out, absorbed)) = fused {
            for x in n.inputs.iter().filter(|s| !s.is_empty()) {
                if prod.get(x.as_str()).is_some_and(|&d| is(d, false)) && !unit.inputs().is_empty() {
                    let d = &g.nodes[prod[x.as_str()]];
                    if unit.inputs().contains(&d.inputs[0]) {
                        *int_reads.entry(x.clone()).or_default() += 1;
                    }
                }
            }
            f.skip.extend(absorbed);
            f.int_vals.insert(out.clone());
            f.units.insert(i, (unit, out));
        }
    }
    // The notes of nodes no later unit absorbed (a binarization chain's Sign comes before its convolution).
    f.notes.extend(pending.into_iter().filter(|(i, _)| !f.skip.contains(i)).map(|p| p.1));
    // DQ nodes whose every reader now reads the integers directly.
    for (i, n) in g.nodes.iter().enumerate() {
        if is(i, false) {
            let o = n.outputs[0].as_str();
            let readers = cons.get(o).map(|c| c.len()).unwrap_or(0);
            if readers > 0 && int_reads.get(o).copied().unwrap_or(0) == readers && !outputs.contains(o) {
                f.skip.insert(i);
            }
        }
    }
    f
}
