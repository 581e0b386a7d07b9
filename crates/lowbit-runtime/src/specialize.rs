//! Shape specialization: given concrete input shapes, infer every value's type and shape, fold every
//! node whose inputs are all constant (including `Shape` of a known shape) into an initializer, then
//! run the data-free canonicalization passes.

use std::collections::HashMap;

use lowbit_core::passes::{self, PassReport};
use lowbit_core::shape::{self, Known};
use lowbit_core::{DType, Dim, Error, Graph, Op, Result, Tensor};

/// A graph whose every value has a known element type and shape.
#[derive(Clone, Debug)]
pub struct Specialized {
    pub graph: Graph,
    pub types: HashMap<String, (DType, Vec<usize>)>,
    pub folded: usize,
    pub passes: PassReport,
    /// Constants that were DequantizeLinear of constant integers (quantized weights and biases),
    /// by the name of the folded f32 value: the integer plan packs the integers themselves.
    pub dq_consts: HashMap<String, QConst>,
}

/// A folded DequantizeLinear: integer tensor, scale, zero point (if given) and axis.
#[derive(Clone, Debug)]
pub struct QConst {
    pub q: Tensor,
    pub scale: Tensor,
    pub zp: Option<Tensor>,
    pub axis: i64,
}

fn check_input(vi: &lowbit_core::ValueInfo, shape: &[usize]) -> Result<()> {
    if let Some(decl) = &vi.shape {
        let fits = decl.len() == shape.len()
            && decl.iter().zip(shape).all(|(d, &s)| match d {
                Dim::Fixed(v) => *v == s,
                Dim::Sym(_) => true,
            });
        if !fits {
            let want: Vec<String> = decl
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => v.to_string(),
                    Dim::Sym(s) => s.clone(),
                })
                .collect();
            return Err(Error::value(&vi.name, format!("model expects shape [{}], got {:?}", want.join(", "), shape)));
        }
    }
    Ok(())
}

fn propagate(
    g: &mut Graph,
    inputs: &[(String, Vec<usize>)],
    fold: bool,
    dq_consts: &mut HashMap<String, QConst>,
) -> Result<(HashMap<String, (DType, Vec<usize>)>, usize)> {
    let mut types: HashMap<String, (DType, Vec<usize>)> = HashMap::new();
    // Every input given a shape keeps its type, also once folding left it unread (a Shape of
    // it was all that read it); an input something reads must have a shape.
    let read: Vec<String> = g.runtime_inputs().iter().map(|v| v.name.clone()).collect();
    for vi in g.inputs.iter().filter(|i| !g.initializers.contains_key(&i.name)) {
        match inputs.iter().find(|(n, _)| *n == vi.name) {
            Some((_, shape)) => {
                check_input(vi, shape)?;
                types.insert(vi.name.clone(), (vi.dtype, shape.clone()));
            }
            None if read.contains(&vi.name) => {
                return Err(Error::value(&vi.name, "no shape given for this model input"));
            }
            None => {}
        }
    }
    for (k, t) in &g.initializers {
        types.insert(k.clone(), (t.dtype(), t.shape.clone()));
    }
    let mut folded = 0;
    let mut keep = Vec::with_capacity(g.nodes.len());
    let nodes = std::mem::take(&mut g.nodes);
    for node in nodes {
        let mut ins: Vec<Option<Known>> = Vec::with_capacity(node.inputs.len());
        for i in &node.inputs {
            if i.is_empty() {
                ins.push(None);
                continue;
            }
            let (dt, sh) =
                types.get(i).ok_or_else(|| Error::node(&node.name, format!("input '{i}' has no known shape")))?;
            ins.push(Some(Known { dtype: *dt, shape: sh, value: g.initializers.get(i) }));
        }
        let all_const = ins.iter().all(|k| k.is_none_or(|k| k.value.is_some()));
        if fold && (all_const || matches!(node.op, Op::Shape { .. })) {
            let outs = if let (Op::Shape { .. }, false) = (&node.op, all_const) {
                // Shape of a value with a known shape is a constant.
                let x = ins[0].unwrap();
                let Op::Shape { start, end } = node.op else { unreachable!() };
                let r = x.shape.len() as i64;
                let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (c(start), c(end.unwrap_or(r)));
                let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
                vec![Tensor::i64(vec![dims.len()], dims)]
            } else {
                let tensors: Vec<Option<&Tensor>> = ins.iter().map(|k| k.and_then(|k| k.value)).collect();
                let (q, scale) = (tensors.first().copied().flatten(), tensors.get(1).copied().flatten());
                if let (Op::DequantizeLinear { axis }, Some(q), Some(scale)) = (&node.op, q, scale) {
                    dq_consts.insert(
                        node.outputs[0].clone(),
                        QConst {
                            q: q.clone(),
                            scale: scale.clone(),
                            zp: tensors.get(2).copied().flatten().cloned(),
                            axis: *axis,
                        },
                    );
                }
                lowbit_kernels::reference::eval(&node, &tensors)?
            };
            for (name, t) in node.outputs.iter().zip(outs) {
                types.insert(name.clone(), (t.dtype(), t.shape.clone()));
                g.initializers.insert(name.clone(), t);
            }
            folded += 1;
            continue;
        }
        let outs = shape::infer(&node, &ins)?;
        for (name, t) in node.outputs.iter().zip(outs) {
            if !name.is_empty() {
                types.insert(name.clone(), t);
            }
        }
        keep.push(node);
    }
    g.nodes = keep;
    Ok((types, folded))
}

/// Specializes `graph` to the given input shapes (name, shape) and canonicalizes it.
/// With `optimize == false` only shapes are inferred and constants folded (no BN folding/fusion).
pub fn specialize(graph: &Graph, inputs: &[(String, Vec<usize>)], optimize: bool) -> Result<Specialized> {
    for (name, shape) in inputs {
        let bytes = lowbit_core::limits::checked_bytes(shape, 4)
            .ok_or_else(|| Error::value(name, format!("input shape {shape:?} overflows")))?;
        lowbit_core::limits::check_memory(&format!("input '{name}' of shape {shape:?}"), bytes)?;
    }
    let mut g = graph.clone();
    let mut dq_consts = HashMap::new();
    let (_, folded) = propagate(&mut g, inputs, true, &mut dq_consts)?;
    let report = if optimize {
        passes::canonicalize(&mut g)
    } else {
        PassReport { nodes_removed: passes::remove_dead(&mut g), ..Default::default() }
    };
    // Graph outputs that became constants stay as initializers; shapes are recomputed after passes.
    let (types, _) = propagate(&mut g, inputs, false, &mut dq_consts)?;
    Ok(Specialized { graph: g, types, folded, passes: report, dq_consts })
}

/// Shape-independent canonicalization: folds nodes whose inputs are all constants and runs the
/// data-free passes, leaving the batch dimension free (unlike [`specialize`], which also folds
/// `Shape` of known shapes). Quantization starts from this graph.
pub fn canonicalize_free(graph: &Graph) -> Result<(Graph, PassReport)> {
    let mut g = graph.clone();
    let nodes = std::mem::take(&mut g.nodes);
    for node in nodes {
        let all_const = node.inputs.iter().all(|i| i.is_empty() || g.initializers.contains_key(i));
        if all_const {
            let ins: Vec<Option<&Tensor>> =
                node.inputs.iter().map(|i| if i.is_empty() { None } else { g.initializers.get(i) }).collect();
            let outs = lowbit_kernels::reference::eval(&node, &ins)?;
            for (name, t) in node.outputs.iter().zip(outs) {
                g.initializers.insert(name.clone(), t);
            }
        } else {
            g.nodes.push(node);
        }
    }
    let r = passes::canonicalize(&mut g);
    Ok((g, r))
}
