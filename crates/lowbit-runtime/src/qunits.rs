//! The multiply-accumulate units of a QDQ graph (convolution, Gemm/MatMul, ConvTranspose, binary convolution): what
//! each needs from its nodes (integer input behind a DequantizeLinear, int8 weights with zero point 0, scales per
//! output channel, the bias split into its integer and f32 parts), checked and gathered for the integer plan.

use lowbit_core::{Act, ConvAttrs, DType, Node, Op};
use lowbit_kernels::int8::ops::QParams;
use lowbit_kernels::int8::{split_bias, Out};

use crate::specialize::Specialized;

/// A quantized convolution (also used for Gemm with `attrs == None`).
#[derive(Clone, Debug)]
pub(crate) struct MacUnit {
    pub x: String,
    pub xq: QParams,
    /// Conv: OIHW weights. Gemm: `[n][k]` (one row per output).
    pub w: Vec<i8>,
    pub n: usize,
    pub k: usize,
    pub wshape: Vec<usize>,
    /// Accumulator scale per output: x scale × weight scale.
    pub scale: Vec<f32>,
    pub bias_i: Vec<i32>,
    pub bias_f: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
    pub out: Out,
    pub conv: Option<ConvAttrs>,
}

/// A quantized ConvTranspose: ONNX weights `[C_in][C_out][kh][kw]` int8, the accumulator's scale and bias per
/// output channel, the output's quantization.
#[derive(Clone, Debug)]
pub(crate) struct DeconvUnit {
    pub x: String,
    pub xq: QParams,
    pub w: Vec<i8>,
    pub wshape: Vec<usize>,
    pub scale: Vec<f32>,
    pub bias_i: Vec<i32>,
    pub bias_f: Vec<f32>,
    pub qo: QParams,
    pub attrs: lowbit_core::ConvTransposeAttrs,
}

/// A binary convolution: `Sign(Sign(x) + 0.5)` → int8 Q/DQ (scale 1) → Conv with `±1` int8
/// weights (per-channel scales).
#[derive(Clone, Debug)]
pub(crate) struct BinUnit {
    pub x: String,
    /// Zero point of the uint8 input (NHWC); `None`: the input is f32 (NCHW).
    pub zx: Option<u8>,
    /// OIHW, each `±1`.
    pub w: Vec<i8>,
    pub wshape: Vec<usize>,
    /// The binarized input's integer level `m` (`±1` stored as `±m` with scale `1/m`): the
    /// accumulator is `m` times the `±1` dot product.
    pub mul: i32,
    /// Accumulator scale per output (`1/m` × the weight scale).
    pub scale: Vec<f32>,
    pub bias_i: Vec<i32>,
    pub bias_f: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
    pub out: Out,
    pub conv: ConvAttrs,
}

/// The uint8 input behind a DequantizeLinear and the int8 weights (zero point 0) of a multiply-accumulate node, or why
/// it has none (`None`: not a quantized node at all).
fn int8_operands<'a>(
    spec: &'a Specialized,
    n: &Node,
    x: Option<(String, QParams)>,
) -> Result<(String, QParams, &'a crate::specialize::QConst), Option<String>> {
    let (x, xq) = x.ok_or(None)?;
    if xq.signed {
        return Err(Some("int8 activations (lowbit's kernels take uint8 activations)".into()));
    }
    let wname = n.input(1).ok_or(None)?;
    let wc =
        spec.dq_consts.get(wname).ok_or_else(|| Some("its weights are not DequantizeLinear of a constant".into()))?;
    if wc.q.dtype() != DType::I8 || wc.zp.as_ref().is_some_and(|z| z.to_i64_vec().iter().any(|&v| v != 0)) {
        return Err(Some("weights are not int8 with zero point 0".into()));
    }
    Ok((x, xq, wc))
}

/// Checks a Conv/Gemm for integer execution and gathers its numbers (output decided by caller).
pub(crate) fn mac_unit(spec: &Specialized, n: &Node, x: Option<(String, QParams)>) -> Result<MacUnit, Option<String>> {
    let (x, xq, wc) = int8_operands(spec, n, x)?;
    let ws = wc.q.shape.clone();
    let w8: Vec<i8> = wc.q.to_i64_vec().iter().map(|&v| v as i8).collect();
    let sw = wc.scale.to_f32_vec();
    let rank = ws.len() as i64;
    let axis = if wc.axis < 0 { wc.axis + rank } else { wc.axis };
    let (act, conv, n_out, k, w) = match &n.op {
        Op::Conv(c) => {
            if ws.len() != 4 || spec.types.get(&x).is_none_or(|t| t.1.len() != 4) {
                return Err(Some("only 2-D convolutions have integer kernels".into()));
            }
            if sw.len() != 1 && axis != 0 {
                return Err(Some("weight scales are not per output channel".into()));
            }
            (c.act, Some(c.clone()), ws[0], ws[1] * ws[2] * ws[3], w8)
        }
        Op::Gemm { .. } | Op::MatMul => {
            // A 2-D MatMul by constant weights is a Gemm without transposes or bias.
            let (alpha, beta, trans_a, trans_b, act) = match &n.op {
                Op::Gemm { alpha, beta, trans_a, trans_b, act } => (alpha, beta, trans_a, trans_b, act),
                _ => {
                    if spec.types.get(&x).is_none_or(|t| t.1.len() != 2) || n.inputs.len() != 2 {
                        return Err(Some("only 2-D MatMul has an integer kernel".into()));
                    }
                    (&1.0, &1.0, &false, &false, &Act::None)
                }
            };
            if *alpha != 1.0 || *trans_a || (n.input(2).is_some() && *beta != 1.0) || ws.len() != 2 {
                return Err(Some("only Gemm with alpha = beta = 1 and A not transposed".into()));
            }
            let (nn, k) = if *trans_b { (ws[0], ws[1]) } else { (ws[1], ws[0]) };
            let out_axis = if *trans_b { 0 } else { 1 };
            if sw.len() != 1 && axis != out_axis {
                return Err(Some("weight scales are not per output".into()));
            }
            let w = if *trans_b {
                w8
            } else {
                let mut t = vec![0i8; nn * k];
                for kk in 0..k {
                    for j in 0..nn {
                        t[j * k + kk] = w8[kk * nn + j];
                    }
                }
                t
            };
            (*act, None, nn, k, w)
        }
        _ => return Err(None),
    };
    if sw.len() != 1 && sw.len() != n_out {
        return Err(Some("weight scale length does not match the outputs".into()));
    }
    let (lo, hi) = lowbit_kernels::fp32::layout::clamp_of(act)
        .ok_or_else(|| Some(format!("fused activation {act:?} has no integer epilogue")))?;
    let scale: Vec<f32> = (0..n_out).map(|c| xq.scale * sw[if sw.len() == 1 { 0 } else { c }]).collect();
    let (bias_i, bias_f) = bias_parts(spec, n, &scale).map_err(Some)?;
    let wshape = if conv.is_some() { ws } else { vec![n_out, k] };
    Ok(MacUnit { x, xq, w, n: n_out, k, wshape, scale, bias_i, bias_f, lo, hi, out: Out::F32, conv })
}

/// Checks a ConvTranspose for integer execution (uint8 input, int8 weights with zero point 0 per tensor or per output
/// channel, group 1, few enough input channels for exact f32 columns) and gathers its numbers (the output quantization
/// is set by the caller).
pub(crate) fn deconv_unit(
    spec: &Specialized,
    n: &Node,
    c: &lowbit_core::ConvTransposeAttrs,
    x: Option<(String, QParams)>,
) -> Result<DeconvUnit, Option<String>> {
    let (x, xq, wc) = int8_operands(spec, n, x)?;
    let ws = wc.q.shape.clone();
    let xs = spec.types.get(&x).map(|t| t.1.clone()).unwrap_or_default();
    if ws.len() != 4 || xs.len() != 4 {
        return Err(Some("only 2-D transposed convolutions have integer kernels".into()));
    }
    if c.group.max(1) != 1 {
        return Err(Some("grouped transposed convolutions have no integer kernel".into()));
    }
    if !lowbit_kernels::int8::QDeconv::exact_for(ws[0]) {
        return Err(Some("too many input channels for exact integer columns".into()));
    }
    let n_out = ws[1];
    let sw = wc.scale.to_f32_vec();
    let axis = if wc.axis < 0 { wc.axis + 4 } else { wc.axis };
    if sw.len() != 1 && (axis != 1 || sw.len() != n_out) {
        return Err(Some("weight scales are not per output channel".into()));
    }
    let w: Vec<i8> = wc.q.to_i64_vec().iter().map(|&v| v as i8).collect();
    let scale: Vec<f32> = (0..n_out).map(|o| xq.scale * sw[if sw.len() == 1 { 0 } else { o }]).collect();
    let (bias_i, bias_f) = bias_parts(spec, n, &scale).map_err(Some)?;
    let qo = QParams { scale: 1.0, zp: 0, signed: false };
    Ok(DeconvUnit { x, xq, w, wshape: ws, scale, bias_i, bias_f, qo, attrs: c.clone() })
}

/// Checks a binary convolution's weights (int8 `±1`, per-channel scales on axis 0, group 1) and
/// gathers its numbers (output decided by the caller).
pub(crate) fn bin_unit(
    spec: &Specialized,
    n: &Node,
    c: &ConvAttrs,
    x: String,
    zx: Option<u8>,
    lq: QParams,
) -> Result<BinUnit, String> {
    let wname = n.input(1).ok_or("no weights")?;
    let wc = spec.dq_consts.get(wname).ok_or("its weights are not DequantizeLinear of a constant")?;
    if wc.q.dtype() != DType::I8 || wc.zp.as_ref().is_some_and(|z| z.to_i64_vec().iter().any(|&v| v != 0)) {
        return Err("binary weights are not int8 with zero point 0".into());
    }
    let ws = wc.q.shape.clone();
    let w: Vec<i8> = wc.q.to_i64_vec().iter().map(|&v| v as i8).collect();
    if ws.len() != 4 || w.iter().any(|&v| v != 1 && v != -1) {
        return Err("binary convolution weights are not all +1 or -1".into());
    }
    if c.group != 1 {
        return Err("binary convolutions take group 1".into());
    }
    let sw = wc.scale.to_f32_vec();
    let rank = ws.len() as i64;
    let axis = if wc.axis < 0 { wc.axis + rank } else { wc.axis };
    let n_out = ws[0];
    if sw.len() != 1 && (axis != 0 || sw.len() != n_out) {
        return Err("weight scales are not per output channel".into());
    }
    let scale: Vec<f32> = (0..n_out).map(|o| lq.scale * sw[if sw.len() == 1 { 0 } else { o }]).collect();
    let mul = (1.0 / lq.scale).round() as i32;
    let (lo, hi) = lowbit_kernels::fp32::layout::clamp_of(c.act)
        .ok_or_else(|| format!("fused activation {:?} has no integer epilogue", c.act))?;
    let (bias_i, bias_f) = bias_parts(spec, n, &scale)?;
    Ok(BinUnit { x, zx, w, wshape: ws, mul, scale, bias_i, bias_f, lo, hi, out: Out::F32, conv: c.clone() })
}

/// A Conv/Gemm bias split for the epilogue (`bias_i`, `bias_f`; see `split_bias`): int32 behind
/// a DequantizeLinear whose scale is the accumulator scale `scale` goes to the integer part,
/// anything else to the f32 part.
fn bias_parts(spec: &Specialized, n: &Node, scale: &[f32]) -> Result<(Vec<i32>, Vec<f32>), String> {
    let n_out = scale.len();
    let Some(b) = n.input(2) else { return Ok((vec![0; n_out], vec![0.0; n_out])) };
    let bt = spec.graph.initializers.get(b).ok_or("bias is not constant")?;
    if bt.len() != n_out {
        return Err("bias does not have one value per output".into());
    }
    Ok(match spec.dq_consts.get(b) {
        Some(bc)
            if bc.q.dtype() == DType::I32 && bc.zp.as_ref().is_none_or(|z| z.to_i64_vec().iter().all(|&v| v == 0)) =>
        {
            let q: Vec<i32> = bc.q.to_i64_vec().iter().map(|&v| v as i32).collect();
            split_bias(Some((&q, &bc.scale.to_f32_vec())), scale)
        }
        _ => (vec![0; n_out], bt.to_f32_vec()),
    })
}
