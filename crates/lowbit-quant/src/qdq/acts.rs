//! The activation pass of [`super::build_qdq`]: which float values get a Q/DQ pair and with which
//! parameters, which nodes stay float, and where clipping below 8 bits is made explicit.

use std::collections::{HashMap, HashSet};

use lowbit_core::{Act, Error, Graph, Node, Op, Result};

use crate::calibrate::Stats;
use crate::observer::Method;
use crate::qdq::config::{is_compute, is_passthrough, is_qio, QdqConfig};
use crate::scheme::{linear_params, QScheme};

/// What the activation pass decided.
pub(crate) struct ActPlan {
    /// Nodes that stay float (skipped layers and what must stay float with them).
    pub float_nodes: HashSet<String>,
    /// Scale and zero point of every value that gets a Q/DQ pair, in graph order (`order`).
    pub params: HashMap<String, (f32, i32)>,
    pub order: Vec<String>,
    /// Node name -> its activation narrowed to the representable range (below 8 bits).
    pub narrowed: HashMap<String, Act>,
    /// Values clipped by an explicit Clip before their QuantizeLinear.
    pub clip_before_q: HashMap<String, (f32, f32)>,
}

/// Plans the activations of `g` from calibration `stats`.
pub(crate) fn plan_activations(g: &Graph, stats: &Stats, cfg: &QdqConfig) -> Result<ActPlan> {
    let producers = g.producers();
    let inputs: HashSet<&str> = g.runtime_inputs().iter().map(|v| v.name.as_str()).collect();
    // First and last compute layers.
    let compute: Vec<usize> = (0..g.nodes.len()).filter(|&i| is_compute(&g.nodes[i], g)).collect();
    let mut float_nodes: HashSet<String> = cfg.keep_float.clone();
    if cfg.skip_first {
        if let Some(&i) = compute.first() {
            float_nodes.insert(g.nodes[i].name.clone());
        }
    }
    if cfg.skip_last {
        if let Some(&i) = compute.last() {
            float_nodes.insert(g.nodes[i].name.clone());
        }
    }
    // An activation split out of a float layer (`split_activations`) stays float with it. A Mul is quantized only when
    // both its inputs are activations of quantized nodes: a constant operand has no integer form here.
    for n in &g.nodes {
        let float_producer = |v: &str| producers.get(v).is_some_and(|&p| float_nodes.contains(&g.nodes[p].name));
        let float = match n.op {
            Op::HardSwish | Op::HardSigmoid { .. } => n.inputs.first().is_some_and(|v| float_producer(v)),
            Op::Mul => n.inputs.iter().any(|v| g.initializers.contains_key(v) || float_producer(v)),
            _ => false,
        };
        if float {
            float_nodes.insert(n.name.clone());
        }
    }
    let quantized = |n: &Node| !float_nodes.contains(&n.name);

    // Which float values get a Q/DQ pair, with which parameters.
    let mut params: HashMap<String, (f32, i32)> = HashMap::new();
    let mut order: Vec<String> = vec![];
    // Values that take their parameters from a pass-through producer's input (already in range).
    let mut inherited: HashSet<String> = HashSet::new();
    // The statistics of a value: its own, or, for the output of a reshape (which the runtime
    // aliases and so never observes), those of the reshape's input: the same numbers.
    let stats_of = |v: &str| -> Option<&crate::observer::Observer> {
        let mut v = v;
        for _ in 0..g.nodes.len() + 1 {
            if let Some(o) = stats.get(v) {
                return Some(o);
            }
            let n = &g.nodes[*producers.get(v)?];
            let reshape = matches!(
                n.op,
                Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity
            );
            if !reshape {
                return None;
            }
            v = n.inputs.first()?;
        }
        None
    };
    let act_of = |v: &str| -> Result<(f32, i32)> {
        if let Some(&p) = cfg.act_override.get(v) {
            return Ok(p);
        }
        let o = stats_of(v).ok_or_else(|| Error::value(v, "no calibration statistics for this value"))?;
        // The model input is data the user controls: never clip it, and keep it at 8 bits (images
        // are 8-bit data; min-max over 256 levels loses nothing for u8 pixels).
        let is_input = inputs.contains(v);
        let bits = if is_input { 8 } else { cfg.act_bits_of(v) };
        let method = if is_input { Method::MinMax } else { cfg.method };
        let (lo, hi) = o.range(method, 1usize << bits);
        if std::env::var_os("LOWBIT_DEBUG_RANGES").is_some() {
            eprintln!("{v}: minmax [{}, {}] -> {:?} [{lo}, {hi}]", o.min, o.max, cfg.method);
        }
        let p = linear_params(&QScheme::activations(bits), &[lo], &[hi]);
        Ok((p.scale[0], p.zero_point[0]))
    };
    let want = |v: &str, params: &mut HashMap<String, (f32, i32)>, order: &mut Vec<String>| -> Result<()> {
        if v.is_empty() || g.initializers.contains_key(v) || params.contains_key(v) || g.is_output(v) {
            return Ok(());
        }
        if !(inputs.contains(v) || producers.contains_key(v)) || (cfg.float_input && inputs.contains(v)) {
            return Ok(());
        }
        // Only float activations are observed; integer values (shapes, indices) stay as they are.
        if stats_of(v).is_none() {
            return Ok(());
        }
        params.insert(v.to_string(), act_of(v)?);
        order.push(v.to_string());
        Ok(())
    };
    let consumers = g.consumers();
    // An Add read only by a ReLU/Clip: its output is not quantized, the clamp's is (one rounding,
    // and the integer Add applies the clamp in its epilogue), as ONNX Runtime places it.
    let clamped_add = |n: &Node| -> bool {
        n.op == Op::Add
            && consumers.get(&n.outputs[0]).is_some_and(|c| {
                c.len() == 1
                    && matches!(
                        lowbit_core::passes::as_activation(g, &g.nodes[c[0]]),
                        Some(Act::Relu) | Some(Act::Clip { .. })
                    )
            })
    };
    for n in &g.nodes {
        if (is_compute(n, g) && quantized(n)) || (is_qio(&n.op) && quantized(n)) {
            want(&n.inputs[0], &mut params, &mut order)?;
            if is_qio(&n.op) {
                for i in n.inputs.iter().skip(1) {
                    want(i, &mut params, &mut order)?;
                }
            }
            if clamped_add(n) {
                let r = &g.nodes[consumers[&n.outputs[0]][0]];
                if !g.is_output(&r.outputs[0]) {
                    want(&r.outputs[0], &mut params, &mut order)?;
                }
            } else {
                want(&n.outputs[0], &mut params, &mut order)?;
            }
        } else if is_passthrough(&n.op) {
            if let Some(p) = params.get(&n.inputs[0]).copied() {
                let o = &n.outputs[0];
                if !g.is_output(o) && !params.contains_key(o) {
                    params.insert(o.clone(), p);
                    order.push(o.clone());
                    inherited.insert(o.clone());
                }
            }
        }
    }

    // Below 8 bits, QuantizeLinear's uint8 saturation is wider than the quantizer's range: make the
    // clipping to the representable range explicit, in the producer's activation where it has one
    // (a fused Conv/Gemm activation or a Relu/Clip node), else as a Clip before the Q.
    let mut narrowed: HashMap<String, Act> = HashMap::new(); // node name -> new activation
    let mut clip_before_q: HashMap<String, (f32, f32)> = HashMap::new();
    for v in &order {
        let bits = cfg.act_bits_of(v);
        if bits >= 8 || inherited.contains(v) || inputs.contains(v.as_str()) {
            continue;
        }
        let qmax_b = ((1u32 << bits) - 1) as f32;
        let (s, z) = params[v];
        let (lo, hi) = (-(z as f32) * s, (qmax_b - z as f32) * s);
        let prod = producers.get(v.as_str()).map(|&i| &g.nodes[i]);
        let current = prod.and_then(|n| match n.op {
            Op::Conv(_) | Op::Gemm { .. } => Some(n.op.fused_act()),
            Op::Relu | Op::Clip { .. } => lowbit_core::passes::as_activation(g, n),
            _ => None,
        });
        let merged = match current {
            Some(Act::None) => Some(Act::Clip { lo, hi }),
            Some(Act::Relu) => Some(Act::Clip { lo: lo.max(0.0), hi }),
            Some(Act::Clip { lo: a, hi: b }) => Some(Act::Clip { lo: lo.max(a), hi: hi.min(b) }),
            _ => None,
        };
        match (prod, merged) {
            (Some(n), Some(a)) => {
                narrowed.insert(n.name.clone(), a);
            }
            _ => {
                clip_before_q.insert(v.clone(), (lo, hi));
            }
        }
    }
    Ok(ActPlan { float_nodes, params, order, narrowed, clip_before_q })
}
