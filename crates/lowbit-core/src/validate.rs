//! Checks a graph once, right after it is read, so that everything after the reader can rely on
//! it: the graph has outputs, the opset is one lowbit knows, every node has the inputs and outputs
//! its operator needs, quantization parameters are finite, positive scales, and the weights of Conv,
//! Gemm, MatMul and BatchNormalization are finite numbers. Shapes are checked (with overflow-checked
//! arithmetic and the memory limit) by shape inference, which needs the input sizes.

use crate::{Data, Error, Graph, Node, Op, Result};

/// The newest default-domain opset lowbit accepts (that of ONNX 1.23, which the tests use).
pub const MAX_OPSET: i64 = 28;

/// Required and allowed input counts of an operator (`None`: no upper bound).
pub fn arity(op: &Op) -> (usize, Option<usize>) {
    match op {
        Op::Conv(_) | Op::Gemm { .. } => (2, Some(3)),
        Op::BatchNorm { .. } => (5, Some(5)),
        Op::Clip { .. } => (1, Some(3)),
        Op::Relu
        | Op::HardSigmoid { .. }
        | Op::HardSwish
        | Op::Sigmoid
        | Op::Sign
        | Op::Identity
        | Op::MaxPool(_)
        | Op::AveragePool(_)
        | Op::GlobalAveragePool
        | Op::GlobalMaxPool
        | Op::Flatten { .. }
        | Op::Softmax { .. }
        | Op::Shape { .. }
        | Op::Cast { .. }
        | Op::Transpose { .. }
        | Op::Unsqueeze { axes: Some(_) }
        | Op::Squeeze { axes: Some(_) }
        | Op::Slice { attrs: Some(_) } => (1, Some(1)),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::MatMul | Op::Reshape { .. } | Op::Gather { .. } => (2, Some(2)),
        Op::Unsqueeze { axes: None } => (2, Some(2)),
        Op::Squeeze { axes: None } => (1, Some(2)),
        Op::Concat { .. } => (1, None),
        Op::Slice { attrs: None } => (3, Some(5)),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DequantizeBlocked { .. } => (2, Some(3)),
        Op::Unary(_)
        | Op::Reduce { axes: Some(_), .. }
        | Op::ConstantOfShape { .. }
        | Op::DepthSpace { .. }
        | Op::LpNorm { .. }
        | Op::Pad { pads: Some(_), .. } => (1, Some(1)),
        Op::Reduce { axes: None, .. } => (1, Some(2)),
        Op::PRelu | Op::Pow | Op::Compare(_) | Op::Expand | Op::Tile => (2, Some(2)),
        Op::Variadic(_) => (1, None),
        Op::Where | Op::Range | Op::InstanceNorm { .. } => (3, Some(3)),
        Op::ConvTranspose(_) => (2, Some(3)),
        Op::Resize(r) if r.upsample => (1, Some(2)),
        Op::Resize(r) if r.opset10 => (2, Some(2)),
        Op::Resize(_) => (1, Some(4)),
        Op::Pad { pads: None, .. } => (2, Some(4)),
    }
}

/// Quantization scales (input 1, when constant) must be finite and positive.
fn check_scales(s: Option<&crate::Tensor>, n: &Node) -> Result<()> {
    if let Some(x) = s.and_then(|s| s.to_f32_vec().into_iter().find(|x| !(x.is_finite() && *x > 0.0))) {
        return Err(Error::Node {
            node: n.name.clone(),
            reason: format!(
                "({}) quantization scale '{}' holds {x}; scales must be finite and positive",
                n.op.op_type(),
                n.inputs[1]
            ),
        });
    }
    Ok(())
}

/// Validates a graph as read from a file. Errors name the node or value and the reason.
pub fn validate(g: &Graph) -> Result<()> {
    if !(1..=MAX_OPSET).contains(&g.opset) {
        return Err(Error::Invalid(format!(
            "opset {} is not supported (lowbit reads default-domain opsets 1 to {MAX_OPSET})",
            g.opset
        )));
    }
    if g.outputs.is_empty() {
        return Err(Error::Invalid("the graph has no outputs".into()));
    }
    for n in &g.nodes {
        check_node(g, n)?;
    }
    Ok(())
}

fn check_node(g: &Graph, n: &Node) -> Result<()> {
    let bad = |r: String| Error::Node { node: n.name.clone(), reason: format!("({}) {r}", n.op.op_type()) };
    let (lo, hi) = arity(&n.op);
    let have = n.inputs.len();
    if have < lo || hi.is_some_and(|h| have > h) {
        let want = match hi {
            Some(h) if h == lo => format!("{lo}"),
            Some(h) => format!("{lo} to {h}"),
            None => format!("at least {lo}"),
        };
        return Err(bad(format!("needs {want} input(s), has {have}")));
    }
    if let Some(i) = (0..lo).find(|&i| n.input(i).is_none()) {
        return Err(bad(format!("required input {i} is empty")));
    }
    if n.outputs.first().is_none_or(|o| o.is_empty()) {
        return Err(bad("has no output".into()));
    }
    let init = |i: usize| n.input(i).and_then(|v| g.initializers.get(v));
    match &n.op {
        Op::DequantizeBlocked { .. } => {
            check_scales(init(1), n)?;
        }
        Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
            // A per-axis scale must fit a constant input here (other inputs: in shape inference).
            if let (Some(x), Some(s)) = (init(0), init(1)) {
                let k = s.len();
                if k != 1 {
                    let r = x.shape.len() as i64;
                    let a = if *axis < 0 { axis + r } else { *axis };
                    if r == 0 || a < 0 || a >= r || x.shape[a as usize] != k {
                        return Err(bad(format!(
                            "{k} scales along axis {axis} do not fit input '{}' of shape {:?}",
                            n.inputs[0], x.shape
                        )));
                    }
                }
            }
            check_scales(init(1), n)?;
        }
        Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::BatchNorm { .. } | Op::ConvTranspose(_) => {
            for i in 1..n.inputs.len() {
                if let Some(Data::F32(v)) = init(i).map(|t| &t.data) {
                    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                        return Err(bad(format!("weight '{}' holds {x}; weights must be finite", n.inputs[i])));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}
