//! Shape inference of the operators detection, segmentation and embedding networks add (element-wise
//! functions, comparisons, reductions, ConvTranspose, Resize, Pad, shape generators, blocked
//! DequantizeLinear), and the geometry their kernels share.

use crate::dims::{broadcast, need, need_const, norm_axis, or_ones, Known};
use crate::{DType, Error, Node, Op, Result};

pub(crate) fn infer(node: &Node, ins: &[Option<Known>]) -> Result<Vec<(DType, Vec<usize>)>> {
    let x = need(ins, 0)?;
    let one = |dt: DType, s: Vec<usize>| Ok(vec![(dt, s)]);
    match &node.op {
        Op::Unary(_) => {
            float_in(x, node)?;
            one(x.dtype, x.shape.to_vec())
        }
        Op::PRelu => {
            float_in(x, node)?;
            let slope = need(ins, 1)?;
            if broadcast(x.shape, slope.shape)? != x.shape {
                return Err(Error::Invalid(format!(
                    "PRelu slope {:?} does not broadcast to {:?}",
                    slope.shape, x.shape
                )));
            }
            one(x.dtype, x.shape.to_vec())
        }
        Op::Pow => {
            if x.dtype == DType::Bool {
                return Err(Error::Invalid("Pow of bool".into()));
            }
            one(x.dtype, broadcast(x.shape, need(ins, 1)?.shape)?)
        }
        Op::Variadic(_) | Op::Compare(_) => {
            let mut s = x.shape.to_vec();
            for i in 1..ins.len() {
                let k = need(ins, i)?;
                if k.dtype != x.dtype {
                    return Err(Error::Invalid(format!(
                        "{} of {} and {}",
                        node.op.op_type(),
                        x.dtype.name(),
                        k.dtype.name()
                    )));
                }
                s = broadcast(&s, k.shape)?;
            }
            one(if matches!(node.op, Op::Compare(_)) { DType::Bool } else { x.dtype }, s)
        }
        Op::Where => {
            let (a, b) = (need(ins, 1)?, need(ins, 2)?);
            if x.dtype != DType::Bool || a.dtype != b.dtype {
                return Err(Error::Invalid(format!(
                    "Where needs a bool condition and two values of one type, got {}, {}, {}",
                    x.dtype.name(),
                    a.dtype.name(),
                    b.dtype.name()
                )));
            }
            one(a.dtype, broadcast(&broadcast(x.shape, a.shape)?, b.shape)?)
        }
        Op::Reduce { axes, keepdims, noop_with_empty_axes, .. } => {
            let axes = reduce_axes(x.shape.len(), axes.as_deref(), ins, *noop_with_empty_axes)?;
            let s = (0..x.shape.len())
                .filter_map(|d| match (axes.contains(&d), keepdims) {
                    (false, _) => Some(x.shape[d]),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            one(x.dtype, s)
        }
        Op::ConvTranspose(c) => {
            float_in(x, node)?;
            let w = need(ins, 1)?;
            let t = conv_transpose_geom(x.shape, w.shape, c)?;
            if let Some(b) = ins.get(2).copied().flatten() {
                if b.shape != [t.out_channels] {
                    return Err(Error::Invalid(format!(
                        "ConvTranspose bias shape {:?} should be [{}]",
                        b.shape, t.out_channels
                    )));
                }
            }
            let mut s = vec![x.shape[0], t.out_channels];
            s.extend(&t.out);
            one(DType::F32, s)
        }
        Op::Resize(r) => {
            let out = resize_shape(x.shape, r, ins)?;
            one(x.dtype, out)
        }
        Op::Pad { pads, .. } => {
            let r = x.shape.len();
            let p = match pads {
                Some(p) => p.clone(),
                None => need_const(ins, 1, "Pad pads")?.to_i64_vec(),
            };
            let axes: Vec<usize> = match ins.get(3).copied().flatten() {
                Some(_) => need_const(ins, 3, "Pad axes")?
                    .to_i64_vec()
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<Result<_>>()?,
                None => (0..r).collect(),
            };
            if p.len() != 2 * axes.len() {
                return Err(Error::Invalid(format!("pads {p:?} should have {} values", 2 * axes.len())));
            }
            let mut s = x.shape.to_vec();
            for (k, &a) in axes.iter().enumerate() {
                let v = (s[a] as i64).checked_add(p[k]).and_then(|v| v.checked_add(p[k + axes.len()]));
                s[a] = v
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| Error::Invalid(format!("pads {p:?} do not fit input {:?}", x.shape)))?;
            }
            one(x.dtype, s)
        }
        Op::ConstantOfShape { value } => {
            let s = need_const(ins, 0, "ConstantOfShape shape")?.to_i64_vec();
            let s: Vec<usize> = s
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| Error::Invalid(format!("negative dimension {d}"))))
                .collect::<Result<_>>()?;
            one(value.dtype(), s)
        }
        Op::Range => {
            let v: Vec<f64> = (0..3)
                .map(|i| {
                    let t = need_const(ins, i, "Range start/limit/delta")?;
                    if t.len() != 1 {
                        return Err(Error::Invalid("Range takes scalars".into()));
                    }
                    Ok(t.data.get_f64(0))
                })
                .collect::<Result<_>>()?;
            let n = range_len(v[0], v[1], v[2])?;
            one(x.dtype, vec![n])
        }
        Op::Expand => {
            let s = need_const(ins, 1, "Expand shape")?.to_i64_vec();
            let s: Vec<usize> = s
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| Error::Invalid(format!("negative dimension {d}"))))
                .collect::<Result<_>>()?;
            one(x.dtype, broadcast(x.shape, &s)?)
        }
        Op::Tile => {
            let r = need_const(ins, 1, "Tile repeats")?.to_i64_vec();
            if r.len() != x.shape.len() {
                return Err(Error::Invalid(format!("Tile repeats {r:?} do not match rank {}", x.shape.len())));
            }
            let s = x
                .shape
                .iter()
                .zip(&r)
                .map(|(&d, &k)| usize::try_from(k).ok().and_then(|k| d.checked_mul(k)))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| Error::Invalid(format!("Tile repeats {r:?} are negative or overflow")))?;
            one(x.dtype, s)
        }
        Op::DepthSpace { to_space, block, .. } => {
            if x.shape.len() != 4 {
                return Err(Error::Invalid(format!("{} needs a 4-D input, got {:?}", node.op.op_type(), x.shape)));
            }
            let b = *block;
            let bb = b.checked_mul(b).ok_or_else(|| Error::Invalid("blocksize overflows".into()))?;
            let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
            let s = if *to_space {
                if c % bb != 0 {
                    return Err(Error::Invalid(format!("{c} channels are not a multiple of blocksize^2 = {bb}")));
                }
                vec![
                    n,
                    c / bb,
                    h.checked_mul(b).ok_or_else(|| Error::Invalid("overflow".into()))?,
                    w.checked_mul(b).ok_or_else(|| Error::Invalid("overflow".into()))?,
                ]
            } else {
                if h % b != 0 || w % b != 0 {
                    return Err(Error::Invalid(format!("{h}x{w} is not a multiple of blocksize {b}")));
                }
                vec![n, c.checked_mul(bb).ok_or_else(|| Error::Invalid("overflow".into()))?, h / b, w / b]
            };
            one(x.dtype, s)
        }
        Op::InstanceNorm { .. } => {
            float_in(x, node)?;
            if x.shape.len() < 3 {
                return Err(Error::Invalid("InstanceNormalization needs N,C,spatial input".into()));
            }
            for i in 1..3 {
                if need(ins, i)?.shape != [x.shape[1]] {
                    return Err(Error::Invalid(format!(
                        "InstanceNormalization input {i} should have shape [{}]",
                        x.shape[1]
                    )));
                }
            }
            one(x.dtype, x.shape.to_vec())
        }
        Op::LpNorm { axis, .. } => {
            float_in(x, node)?;
            norm_axis(*axis, x.shape.len())?;
            one(x.dtype, x.shape.to_vec())
        }
        Op::DequantizeBlocked { axis, block } => {
            let s = need(ins, 1)?;
            let a = norm_axis(*axis, x.shape.len())?;
            let mut want = x.shape.to_vec();
            want[a] = x.shape[a].div_ceil(*block);
            if s.shape != want.as_slice() {
                return Err(Error::Invalid(format!(
                    "block size {block} along axis {a} of {:?} needs scales of shape {want:?}, got {:?}",
                    x.shape, s.shape
                )));
            }
            if let Some(z) = ins.get(2).copied().flatten() {
                if z.shape != s.shape {
                    return Err(Error::Invalid("zero_point and scale differ in shape".into()));
                }
            }
            one(DType::F32, x.shape.to_vec())
        }
        _ => Err(Error::Invalid(format!("{} has no shape rule here", node.op.op_type()))),
    }
}

fn float_in(x: Known, node: &Node) -> Result<()> {
    if x.dtype != DType::F32 {
        return Err(Error::Invalid(format!(
            "{} of {} is not supported (float32 only)",
            node.op.op_type(),
            x.dtype.name()
        )));
    }
    Ok(())
}

/// Number of elements of Range(start, limit, delta).
pub fn range_len(start: f64, limit: f64, delta: f64) -> Result<usize> {
    if delta == 0.0 || !(start.is_finite() && limit.is_finite() && delta.is_finite()) {
        return Err(Error::Invalid(format!("Range({start}, {limit}, {delta}) is not finite")));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > (1u64 << 40) as f64 {
        return Err(Error::Invalid(format!("Range({start}, {limit}, {delta}) is too long")));
    }
    Ok(n as usize)
}

/// The sorted, distinct axes a Reduce works on (all axes when none are given, unless
/// `noop_with_empty_axes`, which gives none).
pub fn reduce_axes(rank: usize, attr: Option<&[i64]>, ins: &[Option<Known>], noop: bool) -> Result<Vec<usize>> {
    let given: Vec<i64> = match attr {
        Some(a) => a.to_vec(),
        None => match ins.get(1).copied().flatten() {
            Some(_) => need_const(ins, 1, "Reduce axes")?.to_i64_vec(),
            None => vec![],
        },
    };
    if given.is_empty() {
        return Ok(if noop { vec![] } else { (0..rank).collect() });
    }
    let mut a: Vec<usize> = given.iter().map(|&v| norm_axis(v, rank)).collect::<Result<_>>()?;
    a.sort();
    a.dedup();
    Ok(a)
}

/// Resolved ConvTranspose geometry (2-D or 1-D spatial).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTransposeGeom {
    pub out_channels: usize,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads_begin: Vec<usize>,
    pub out: Vec<usize>,
}

pub fn conv_transpose_geom(x: &[usize], w: &[usize], c: &crate::ConvTransposeAttrs) -> Result<ConvTransposeGeom> {
    if x.len() < 3 || w.len() != x.len() {
        return Err(Error::Invalid(format!("ConvTranspose input {x:?} / weight {w:?} ranks do not fit")));
    }
    let g = c.group.max(1);
    if w[0] != x[1] || w[0] % g != 0 {
        return Err(Error::Invalid(format!(
            "ConvTranspose input has {} channels but weight {w:?} (group {g}) expects {}",
            x[1], w[0]
        )));
    }
    let n = x.len() - 2;
    let kernel = if c.kernel_shape.is_empty() { w[2..].to_vec() } else { c.kernel_shape.clone() };
    if kernel != w[2..] {
        return Err(Error::Invalid(format!("kernel_shape {kernel:?} does not match weight {w:?}")));
    }
    let strides = or_ones(&c.strides, n);
    let dilations = or_ones(&c.dilations, n);
    let opad = if c.output_padding.is_empty() { vec![0; n] } else { c.output_padding.clone() };
    let pads = if c.pads.is_empty() { vec![0; 2 * n] } else { c.pads.clone() };
    if strides.len() != n || dilations.len() != n || opad.len() != n || pads.len() != 2 * n {
        return Err(Error::Invalid("strides/dilations/output_padding/pads have the wrong length".into()));
    }
    if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
        return Err(Error::Invalid("zero stride, dilation or kernel size".into()));
    }
    let of = || Error::Invalid("ConvTranspose shape arithmetic overflows".into());
    let mut out = vec![0; n];
    let mut pads_begin = vec![0; n];
    for d in 0..n {
        let ek = dilations[d].checked_mul(kernel[d] - 1).and_then(|v| v.checked_add(1)).ok_or_else(of)?;
        // Output size before padding is removed.
        let full = (x[2 + d].max(1) - 1)
            .checked_mul(strides[d])
            .and_then(|v| v.checked_add(opad[d]))
            .and_then(|v| v.checked_add(ek))
            .ok_or_else(of)?;
        let explicit = !c.output_shape.is_empty();
        let same = matches!(c.auto_pad, crate::AutoPad::SameUpper | crate::AutoPad::SameLower);
        let (target, begin) = if explicit || same {
            let t = if explicit {
                *c.output_shape
                    .get(c.output_shape.len().wrapping_sub(n).wrapping_add(d))
                    .ok_or_else(|| Error::Invalid("output_shape is too short".into()))?
            } else {
                x[2 + d].checked_mul(strides[d]).ok_or_else(of)?
            };
            // A target beyond the full output is reached by zeros (and bias) at the end.
            let total = full.saturating_sub(t);
            let begin = if c.auto_pad == crate::AutoPad::SameUpper { total / 2 } else { total - total / 2 };
            (t, begin)
        } else if c.auto_pad == crate::AutoPad::Valid {
            (full, 0)
        } else {
            let t = pads[d].checked_add(pads[d + n]).ok_or_else(of)?;
            let out = full
                .checked_sub(t)
                .ok_or_else(|| Error::Invalid(format!("pads {pads:?} are larger than the output")))?;
            (out, pads[d])
        };
        pads_begin[d] = begin;
        out[d] = target;
    }
    let out_channels = w[1].checked_mul(g).ok_or_else(of)?;
    Ok(ConvTransposeGeom { out_channels, kernel, strides, dilations, pads_begin, out })
}

/// Output shape of a Resize/Upsample and the scale per axis (output/input unless given).
pub fn resize_plan(x: &[usize], r: &crate::ResizeAttrs, ins: &[Option<Known>]) -> Result<(Vec<usize>, Vec<f64>)> {
    let rank = x.len();
    let present = |i: usize| ins.get(i).copied().flatten().filter(|k| !k.shape.contains(&0) || k.shape.is_empty());
    let (scales_i, sizes_i) = if r.upsample || r.opset10 { (Some(1), None) } else { (Some(2), Some(3)) };
    let axes: Vec<usize> = match &r.axes {
        Some(a) => a.iter().map(|&v| norm_axis(v, rank)).collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    let mut out = x.to_vec();
    let mut scales = vec![1.0f64; rank];
    if let Some(s) = &r.scales_attr {
        if s.len() != rank {
            return Err(Error::Invalid(format!("{} scales for rank {rank}", s.len())));
        }
        for d in 0..rank {
            scales[d] = s[d] as f64;
        }
    } else if let Some(k) = sizes_i.and_then(present) {
        let v = k
            .value
            .ok_or_else(|| Error::Invalid("Resize sizes must be a constant or computable from shapes".into()))?
            .to_i64_vec();
        if v.len() != axes.len() {
            return Err(Error::Invalid(format!("Resize sizes {v:?} do not fit {} axes", axes.len())));
        }
        for (k, &a) in axes.iter().enumerate() {
            let sz = usize::try_from(v[k]).map_err(|_| Error::Invalid(format!("negative size {}", v[k])))?;
            out[a] = sz;
            scales[a] = if x[a] == 0 { 1.0 } else { sz as f64 / x[a] as f64 };
        }
        return Ok((out, scales));
    } else if let Some(k) = scales_i.and_then(present) {
        let v = k.value.ok_or_else(|| Error::Invalid("Resize scales must be a constant".into()))?.to_f32_vec();
        if v.len() != axes.len() {
            return Err(Error::Invalid(format!("Resize scales {v:?} do not fit {} axes", axes.len())));
        }
        for (k, &a) in axes.iter().enumerate() {
            scales[a] = v[k] as f64;
        }
    } else {
        return Err(Error::Invalid("Resize needs scales or sizes".into()));
    }
    for d in 0..rank {
        let s = scales[d];
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Invalid(format!("Resize scale {s} must be finite and positive")));
        }
        let o = (x[d] as f64 * s).floor();
        if o > (1u64 << 40) as f64 {
            return Err(Error::Invalid(format!("Resize scale {s} gives an absurd size")));
        }
        out[d] = o as usize;
    }
    Ok((out, scales))
}

fn resize_shape(x: &[usize], r: &crate::ResizeAttrs, ins: &[Option<Known>]) -> Result<Vec<usize>> {
    Ok(resize_plan(x, r, ins)?.0)
}
