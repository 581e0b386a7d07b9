//! Shape inference for every [`Op`]: given input element types, shapes and (when constant) values,
//! the output element types and shapes.

pub use crate::dims::{broadcast, norm_axis, Known};
use crate::dims::{need, need_const, or_ones};
use crate::{AutoPad, DType, Error, Node, Op, Result};

/// A resolved sliding window (convolution or pooling) over the spatial dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads_begin: Vec<usize>,
    pub pads_end: Vec<usize>,
    pub out: Vec<usize>,
}

/// Resolves strides/dilations/pads/auto_pad/ceil_mode against the input's spatial size.
pub fn window(
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Window> {
    let n = input.len();
    if kernel.len() != n {
        return Err(Error::Invalid(format!("kernel_shape {kernel:?} does not match {n} spatial dims")));
    }
    let strides = or_ones(strides, n);
    let dilations = or_ones(dilations, n);
    if strides.len() != n || dilations.len() != n {
        return Err(Error::Invalid("strides/dilations have the wrong length".into()));
    }
    if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
        return Err(Error::Invalid("zero stride, dilation or kernel size".into()));
    }
    let pads = if pads.is_empty() { vec![0; 2 * n] } else { pads.to_vec() };
    if pads.len() != 2 * n {
        return Err(Error::Invalid(format!("pads {pads:?} should have {} values", 2 * n)));
    }
    let mut w = Window {
        kernel: kernel.to_vec(),
        strides: strides.clone(),
        dilations: dilations.clone(),
        pads_begin: vec![0; n],
        pads_end: vec![0; n],
        out: vec![0; n],
    };
    let overflow = || {
        Error::Invalid(format!(
            "kernel {kernel:?}, dilations {dilations:?} and pads {pads:?} overflow the shape arithmetic"
        ))
    };
    for d in 0..n {
        let ek = dilations[d].checked_mul(kernel[d] - 1).and_then(|v| v.checked_add(1)).ok_or_else(overflow)?;
        let (s, i) = (strides[d], input[d]);
        match auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = i.div_ceil(s);
                let total = ((out.max(1) - 1) * s).checked_add(ek).ok_or_else(overflow)?.saturating_sub(i);
                let small = total / 2;
                let (b, e) =
                    if auto_pad == AutoPad::SameUpper { (small, total - small) } else { (total - small, small) };
                w.pads_begin[d] = b;
                w.pads_end[d] = e;
                w.out[d] = out;
            }
            AutoPad::Valid => {
                if i < ek {
                    return Err(Error::Invalid(format!("input size {i} smaller than window {ek}")));
                }
                w.out[d] = (i - ek) / s + 1;
            }
            AutoPad::NotSet => {
                let (b, e) = (pads[d], pads[d + n]);
                let span = i.checked_add(b).and_then(|v| v.checked_add(e)).ok_or_else(overflow)?;
                if span < ek {
                    return Err(Error::Invalid(format!("padded input size {span} smaller than window {ek}")));
                }
                let mut out = if ceil_mode { (span - ek).div_ceil(s) + 1 } else { (span - ek) / s + 1 };
                if ceil_mode && (out - 1) * s >= i + b {
                    out -= 1;
                }
                w.pads_begin[d] = b;
                w.pads_end[d] = e;
                w.out[d] = out;
            }
        }
    }
    Ok(w)
}

/// Target shape of a Reshape (`0` copies the input dim unless `allowzero`, `-1` is inferred).
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err(Error::Invalid("reshape has more than one -1".into()));
                }
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*input.get(i).ok_or_else(|| Error::Invalid("reshape copies a missing dim".into()))?)
            }
            s if s < 0 => return Err(Error::Invalid(format!("reshape dim {s} is invalid"))),
            s => out.push(s as usize),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("reshape target {spec:?} overflows")))?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(Error::Invalid(format!("cannot reshape {input:?} to {spec:?}")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::Invalid(format!("cannot reshape {input:?} ({total} elements) to {spec:?}")));
    }
    Ok(out)
}

/// Resolved [start, end, step] per axis of a Slice.
pub fn slice_ranges(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Vec<(i64, i64, i64)>> {
    let rank = shape.len();
    let mut r: Vec<(i64, i64, i64)> = shape.iter().map(|&d| (0, d as i64, 1)).collect();
    if starts.len() != ends.len() {
        return Err(Error::Invalid("slice starts and ends differ in length".into()));
    }
    for k in 0..starts.len() {
        let axis = match axes {
            Some(a) => norm_axis(*a.get(k).ok_or_else(|| Error::Invalid("slice axes too short".into()))?, rank)?,
            None => k,
        };
        if axis >= rank {
            return Err(Error::Invalid("slice axis out of range".into()));
        }
        let step = steps.and_then(|s| s.get(k).copied()).unwrap_or(1);
        if step == 0 {
            return Err(Error::Invalid("slice step 0".into()));
        }
        let d = shape[axis] as i64;
        let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let mut s = starts[k];
        let mut e = ends[k];
        if s < 0 {
            s += d;
        }
        if e < 0 {
            e += d;
        }
        if step > 0 {
            s = clampi(s, 0, d);
            e = clampi(e, 0, d);
        } else {
            s = clampi(s, 0, d - 1);
            e = clampi(e, -1, d - 1);
        }
        r[axis] = (s, e, step);
    }
    Ok(r)
}

pub fn slice_len(s: i64, e: i64, step: i64) -> usize {
    if step > 0 {
        if e > s {
            ((e - s + step - 1) / step) as usize
        } else {
            0
        }
    } else if s > e {
        ((s - e + (-step) - 1) / (-step)) as usize
    } else {
        0
    }
}

/// Infers output element types and shapes of `node`.
/// Every output is checked: its size in bytes must not overflow nor exceed the memory limit
/// ([`crate::limits`]), so that nothing later allocates from an absurd shape.
pub fn infer(node: &Node, ins: &[Option<Known>]) -> Result<Vec<(DType, Vec<usize>)>> {
    let outs = infer_inner(node, ins).map_err(|e| e.in_node(&node.name))?;
    for (i, (dt, shape)) in outs.iter().enumerate() {
        let name = node.outputs.get(i).map(String::as_str).unwrap_or("?");
        let bytes = crate::limits::checked_bytes(shape, dt.size())
            .ok_or_else(|| Error::node(&node.name, format!("output '{name}' of shape {shape:?} overflows")))?;
        crate::limits::check_memory(&format!("output '{name}' of shape {shape:?}"), bytes)
            .map_err(|e| e.in_node(&node.name))?;
    }
    Ok(outs)
}

fn infer_inner(node: &Node, ins: &[Option<Known>]) -> Result<Vec<(DType, Vec<usize>)>> {
    let x = need(ins, 0)?;
    let one = |dt: DType, s: Vec<usize>| Ok(vec![(dt, s)]);
    match &node.op {
        Op::Conv(c) => {
            let w = need(ins, 1)?;
            if x.shape.len() < 3 || w.shape.len() != x.shape.len() {
                return Err(Error::Invalid(format!(
                    "Conv input {:?} / weight {:?} ranks do not fit",
                    x.shape, w.shape
                )));
            }
            let g = c.group.max(1);
            if x.shape[1] != w.shape[1] * g || w.shape[0] % g != 0 {
                return Err(Error::Invalid(format!(
                    "Conv input has {} channels but weight {:?} with group {g} expects {}",
                    x.shape[1],
                    w.shape,
                    w.shape[1] * g
                )));
            }
            if let Some(b) = ins.get(2).copied().flatten() {
                if b.shape != [w.shape[0]] {
                    return Err(Error::Invalid(format!("Conv bias shape {:?} should be [{}]", b.shape, w.shape[0])));
                }
            }
            let k = if c.kernel_shape.is_empty() { w.shape[2..].to_vec() } else { c.kernel_shape.clone() };
            if k != w.shape[2..] {
                return Err(Error::Invalid(format!("kernel_shape {k:?} does not match weight {:?}", w.shape)));
            }
            let win = window(&x.shape[2..], &k, &c.strides, &c.dilations, &c.pads, c.auto_pad, false)?;
            // The kernels' per-image working copies: the padded input and the im2col matrix.
            let padded = (0..win.out.len())
                .try_fold(x.shape[1].checked_mul(4), |a, d| {
                    let span = x.shape[2 + d].checked_add(win.pads_begin[d])?.checked_add(win.pads_end[d])?;
                    a?.checked_mul(span).map(Some)
                })
                .flatten();
            let im2col = win
                .out
                .iter()
                .chain(&k)
                .try_fold(w.shape[1].checked_mul(4), |a, &d| a?.checked_mul(d).map(Some))
                .flatten();
            for (what, b) in [("padded input", padded), ("im2col matrix", im2col)] {
                let b = b.ok_or_else(|| Error::Invalid(format!("the {what} of this Conv overflows")))?;
                crate::limits::check_memory(&format!("the {what} of this Conv"), b)?;
            }
            let mut s = vec![x.shape[0], w.shape[0]];
            s.extend(win.out);
            one(DType::F32, s)
        }
        Op::MaxPool(p) | Op::AveragePool(p) => {
            if x.shape.len() < 3 {
                return Err(Error::Invalid(format!("pooling needs N,C,spatial input, got {:?}", x.shape)));
            }
            let win =
                window(&x.shape[2..], &p.kernel_shape, &p.strides, &p.dilations, &p.pads, p.auto_pad, p.ceil_mode)?;
            let mut s = x.shape[..2].to_vec();
            s.extend(win.out);
            one(x.dtype, s)
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            if x.shape.len() < 3 {
                return Err(Error::Invalid(format!("global pooling needs N,C,spatial input, got {:?}", x.shape)));
            }
            let mut s = x.shape[..2].to_vec();
            s.extend(std::iter::repeat(1).take(x.shape.len() - 2));
            one(x.dtype, s)
        }
        Op::BatchNorm { .. } => {
            if x.shape.len() < 2 {
                return Err(Error::Invalid("BatchNormalization needs rank >= 2".into()));
            }
            for i in 1..5 {
                let p = need(ins, i)?;
                if p.shape != [x.shape[1]] {
                    return Err(Error::Invalid(format!(
                        "BatchNormalization parameter {i} has shape {:?}, expected [{}]",
                        p.shape, x.shape[1]
                    )));
                }
            }
            one(x.dtype, x.shape.to_vec())
        }
        Op::Relu | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::HardSwish | Op::Sigmoid | Op::Sign | Op::Identity => {
            one(x.dtype, x.shape.to_vec())
        }
        Op::Softmax { axis, .. } => {
            norm_axis(*axis, x.shape.len())?;
            one(x.dtype, x.shape.to_vec())
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let y = need(ins, 1)?;
            if x.dtype != y.dtype {
                return Err(Error::Invalid(format!(
                    "{} of {} and {}",
                    node.op.op_type(),
                    x.dtype.name(),
                    y.dtype.name()
                )));
            }
            one(x.dtype, broadcast(x.shape, y.shape)?)
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            let b = need(ins, 1)?;
            if x.shape.len() != 2 || b.shape.len() != 2 {
                return Err(Error::Invalid(format!("Gemm needs 2-D inputs, got {:?} and {:?}", x.shape, b.shape)));
            }
            let (m, k) = if *trans_a { (x.shape[1], x.shape[0]) } else { (x.shape[0], x.shape[1]) };
            let (k2, n) = if *trans_b { (b.shape[1], b.shape[0]) } else { (b.shape[0], b.shape[1]) };
            if k != k2 {
                return Err(Error::Invalid(format!("Gemm inner dims differ: A {:?} B {:?}", x.shape, b.shape)));
            }
            if let Some(c) = ins.get(2).copied().flatten() {
                if broadcast(c.shape, &[m, n])? != [m, n] {
                    return Err(Error::Invalid(format!("Gemm C {:?} does not broadcast to [{m}, {n}]", c.shape)));
                }
            }
            one(DType::F32, vec![m, n])
        }
        Op::MatMul => {
            let b = need(ins, 1)?;
            let (a, bs) = (x.shape, b.shape);
            if a.is_empty() || bs.is_empty() {
                return Err(Error::Invalid("MatMul of a scalar".into()));
            }
            let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
            let b2: Vec<usize> = if bs.len() == 1 { vec![bs[0], 1] } else { bs.to_vec() };
            let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
            let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
            if k != k2 {
                return Err(Error::Invalid(format!("MatMul inner dims differ: {a:?} x {bs:?}")));
            }
            let mut s = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
            if a.len() > 1 {
                s.push(m);
            }
            if bs.len() > 1 {
                s.push(n);
            }
            one(x.dtype, s)
        }
        Op::Flatten { axis } => {
            let r = x.shape.len() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if a < 0 || a > r {
                return Err(Error::Invalid(format!("Flatten axis {axis} out of range for rank {r}")));
            }
            let a = a as usize;
            one(x.dtype, vec![x.shape[..a].iter().product(), x.shape[a..].iter().product()])
        }
        Op::Reshape { allowzero } => {
            let spec = need_const(ins, 1, "Reshape shape")?.to_i64_vec();
            one(x.dtype, reshape_target(x.shape, &spec, *allowzero)?)
        }
        Op::Concat { axis } => {
            let a = norm_axis(*axis, x.shape.len())?;
            let mut s = x.shape.to_vec();
            s[a] = 0;
            for (i, k) in ins.iter().enumerate() {
                let k = k.ok_or_else(|| Error::Invalid(format!("Concat input {i} missing")))?;
                if k.shape.len() != s.len()
                    || k.dtype != x.dtype
                    || k.shape.iter().enumerate().any(|(d, &v)| d != a && v != x.shape[d])
                {
                    return Err(Error::Invalid(format!(
                        "Concat input {i} shape {:?} does not fit {:?} on axis {a}",
                        k.shape, x.shape
                    )));
                }
                s[a] += k.shape[a];
            }
            one(x.dtype, s)
        }
        Op::Shape { start, end } => {
            let r = x.shape.len() as i64;
            let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
            let (s, e) = (c(*start), c(end.unwrap_or(r)));
            one(DType::I64, vec![(e - s).max(0) as usize])
        }
        Op::Gather { axis } => {
            let idx = need(ins, 1)?;
            if x.shape.is_empty() {
                return Err(Error::Invalid("Gather data must have rank >= 1".into()));
            }
            let a = norm_axis(*axis, x.shape.len())?;
            let mut s = x.shape[..a].to_vec();
            s.extend_from_slice(idx.shape);
            s.extend_from_slice(&x.shape[a + 1..]);
            one(x.dtype, s)
        }
        Op::Unsqueeze { axes } => {
            let axes = match axes {
                Some(a) => a.clone(),
                None => need_const(ins, 1, "Unsqueeze axes")?.to_i64_vec(),
            };
            let r = x.shape.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Result<_>>()?;
            ax.sort();
            ax.dedup();
            if ax.len() != axes.len() {
                return Err(Error::Invalid("Unsqueeze axes repeat".into()));
            }
            let mut it = x.shape.iter();
            let s = (0..r).map(|d| if ax.contains(&d) { 1 } else { *it.next().unwrap() }).collect();
            one(x.dtype, s)
        }
        Op::Squeeze { axes } => {
            let axes = match axes {
                Some(a) => Some(a.clone()),
                None => ins
                    .get(1)
                    .copied()
                    .flatten()
                    .map(|k| k.value.map(|v| v.to_i64_vec()))
                    .map(|v| v.ok_or_else(|| Error::Invalid("Squeeze axes must be constant".into())))
                    .transpose()?,
            };
            let r = x.shape.len();
            let s = match axes {
                None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
                Some(a) => {
                    let ax: Vec<usize> = a.iter().map(|&v| norm_axis(v, r)).collect::<Result<_>>()?;
                    if ax.iter().any(|&d| x.shape[d] != 1) {
                        return Err(Error::Invalid(format!("Squeeze of a non-1 dim of {:?}", x.shape)));
                    }
                    (0..r).filter(|d| !ax.contains(d)).map(|d| x.shape[d]).collect()
                }
            };
            one(x.dtype, s)
        }
        Op::Cast { to } => one(*to, x.shape.to_vec()),
        Op::Slice { attrs } => {
            let (starts, ends, axes, steps) = match attrs {
                Some((s, e, a)) => (s.clone(), e.clone(), if a.is_empty() { None } else { Some(a.clone()) }, None),
                None => (
                    need_const(ins, 1, "Slice starts")?.to_i64_vec(),
                    need_const(ins, 2, "Slice ends")?.to_i64_vec(),
                    match ins.get(3).copied().flatten() {
                        Some(_) => Some(need_const(ins, 3, "Slice axes")?.to_i64_vec()),
                        None => None,
                    },
                    match ins.get(4).copied().flatten() {
                        Some(_) => Some(need_const(ins, 4, "Slice steps")?.to_i64_vec()),
                        None => None,
                    },
                ),
            };
            let r = slice_ranges(x.shape, &starts, &ends, axes.as_deref(), steps.as_deref())?;
            one(x.dtype, r.iter().map(|&(s, e, st)| slice_len(s, e, st)).collect())
        }
        Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
            let s = need(ins, 1)?;
            if s.shape.len() > 1 {
                return Err(Error::Invalid(format!("scale must be a scalar or 1-D, got {:?}", s.shape)));
            }
            let n: usize = s.shape.iter().product();
            if n != 1 {
                if x.shape.is_empty() {
                    return Err(Error::Invalid(format!("{n} scales along axis {axis} of a rank-0 input")));
                }
                let a = norm_axis(*axis, x.shape.len())?;
                if x.shape[a] != n {
                    return Err(Error::Invalid(format!("{n} scales for axis {a} of {:?}", x.shape)));
                }
            }
            if let Some(z) = ins.get(2).copied().flatten() {
                if z.shape.iter().product::<usize>() != n {
                    return Err(Error::Invalid("zero_point and scale differ in size".into()));
                }
            }
            let dt = match &node.op {
                Op::QuantizeLinear { .. } => {
                    let d = ins.get(2).copied().flatten().map(|z| z.dtype).unwrap_or(DType::U8);
                    if !matches!(d, DType::U8 | DType::I8 | DType::I32) {
                        return Err(Error::Invalid(format!("QuantizeLinear to {} is not supported", d.name())));
                    }
                    d
                }
                _ => DType::F32,
            };
            one(dt, x.shape.to_vec())
        }
        Op::Transpose { perm } => {
            let r = x.shape.len();
            let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            let mut seen = p.clone();
            seen.sort();
            if seen != (0..r).collect::<Vec<_>>() {
                return Err(Error::Invalid(format!("Transpose perm {p:?} is not a permutation of rank {r}")));
            }
            one(x.dtype, p.iter().map(|&i| x.shape[i]).collect())
        }
        // The operators of detection/segmentation/embedding networks.
        _ => crate::shape_ops::infer(node, ins),
    }
}
