//! The reference evaluator: every [`Op`] on owned [`Tensor`]s, any supported element type, written
//! for clarity rather than speed. It folds constants, runs ops without a fast kernel, and is the
//! yardstick the fast kernels are tested against.

use lowbit_core::shape::{self, Known};
use lowbit_core::{Act, Data, Error, Node, Op, Result, Tensor};

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    t.as_f32().ok_or_else(|| Error::Invalid(format!("{what} must be float32, got {}", t.dtype().name())))
}

/// Largest tensor (elements) the reference evaluator will materialize (1 GiB of f32).
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Evaluates one node. `inputs[i]` is `None` for an absent optional input.
pub fn eval(node: &Node, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    eval_op(node, inputs).map_err(|e| e.in_node(&node.name))
}

fn eval_op(node: &Node, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let known: Vec<Option<Known>> =
        inputs.iter().map(|t| t.map(|t| Known { dtype: t.dtype(), shape: &t.shape, value: Some(t) })).collect();
    let out_shapes = shape::infer(node, &known)?;
    for (_, s) in &out_shapes {
        let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(Error::Invalid(format!("output of shape {s:?} is too large to compute")));
        }
    }
    let x = inputs.first().copied().flatten().ok_or_else(|| Error::Invalid("missing input 0".into()))?;
    let (odt, oshape) = out_shapes[0].clone();
    let in_ = |i: usize| inputs.get(i).copied().flatten();
    let out = match &node.op {
        Op::Conv(c) => {
            let w = in_(1).unwrap();
            let b = in_(2);
            conv(x, w, b, c)?
        }
        Op::BatchNorm { epsilon } => {
            let xs = f32s(x, "BatchNormalization input")?;
            let p: Vec<&[f32]> =
                (1..5).map(|i| f32s(in_(i).unwrap(), "BatchNormalization parameter")).collect::<Result<_>>()?;
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let mut o = xs.to_vec();
            for (i, v) in o.iter_mut().enumerate() {
                let ch = (i / inner) % c;
                *v = (*v - p[2][ch]) / (p[3][ch] + epsilon).sqrt() * p[0][ch] + p[1][ch];
            }
            Tensor::f32(oshape, o)
        }
        Op::Sign => {
            let xs = f32s(x, "input")?;
            let o = xs
                .iter()
                .map(|&v| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else if v.is_nan() {
                        v
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::f32(oshape, o)
        }
        Op::Relu | Op::HardSigmoid { .. } | Op::HardSwish | Op::Sigmoid => {
            let act = match &node.op {
                Op::Relu => Some(Act::Relu),
                Op::HardSigmoid { alpha, beta } => Some(Act::HardSigmoid { alpha: *alpha, beta: *beta }),
                Op::HardSwish => Some(Act::HardSwish),
                _ => None,
            };
            let xs = f32s(x, "input")?;
            let o = match act {
                Some(a) => xs.iter().map(|&v| a.apply(v)).collect(),
                None => xs.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
            };
            Tensor::f32(oshape, o)
        }
        Op::Clip { min, max } => clip(x, in_(1), in_(2), *min, *max)?,
        Op::Add | Op::Sub | Op::Mul | Op::Div => binary(&node.op, x, in_(1).unwrap(), &oshape)?,
        Op::MaxPool(p) | Op::AveragePool(p) => pool(x, p, matches!(node.op, Op::MaxPool(_)))?,
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let xs = f32s(x, "input")?;
            let inner: usize = x.shape[2..].iter().product();
            let avg = matches!(node.op, Op::GlobalAveragePool);
            if inner == 0 {
                // Over nothing: the mean is 0/0, the max the identity of max.
                let n: usize = oshape.iter().product();
                return Ok(vec![Tensor::f32(oshape, vec![if avg { f32::NAN } else { f32::NEG_INFINITY }; n])]);
            }
            let o = xs
                .chunks(inner)
                .map(|c| {
                    if avg {
                        c.iter().sum::<f32>() / inner as f32
                    } else {
                        c.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    }
                })
                .collect();
            Tensor::f32(oshape, o)
        }
        Op::Gemm { alpha, beta, trans_a, trans_b, act } => {
            let a = f32s(x, "A")?;
            let bt = in_(1).unwrap();
            let b = f32s(bt, "B")?;
            let (m, n) = (oshape[0], oshape[1]);
            let k = if *trans_a { x.shape[0] } else { x.shape[1] };
            let mut o = vec![0f32; m * n];
            if let Some(c) = in_(2) {
                let cv = f32s(c, "C")?;
                let cs = broadcast_index(&c.shape, &oshape);
                for (i, v) in o.iter_mut().enumerate() {
                    *v = beta * cv[cs[i]];
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f32;
                    for p in 0..k {
                        let av = if *trans_a { a[p * m + i] } else { a[i * k + p] };
                        let bv = if *trans_b { b[j * k + p] } else { b[p * n + j] };
                        s += av * bv;
                    }
                    o[i * n + j] = act.apply(o[i * n + j] + alpha * s);
                }
            }
            Tensor::f32(oshape, o)
        }
        Op::MatMul => matmul(x, in_(1).unwrap(), &oshape)?,
        Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity | Op::Unsqueeze { .. } | Op::Squeeze { .. } => {
            Tensor { shape: oshape, data: x.data.clone() }
        }
        Op::Concat { axis } => {
            let a = shape::norm_axis(*axis, x.rank())?;
            let parts: Vec<&Tensor> = inputs.iter().map(|t| t.unwrap()).collect();
            let outer: usize = x.shape[..a].iter().product();
            let mut idx_sets: Vec<Vec<usize>> = vec![];
            let mut datas = vec![];
            for p in &parts {
                let inner: usize = p.shape[a..].iter().product();
                idx_sets.push((0..outer).flat_map(|o| (0..inner).map(move |i| o * inner + i)).collect());
                datas.push(&p.data);
            }
            // Interleave blocks: for each outer index, each part's block in turn.
            let mut order = vec![];
            for o in 0..outer {
                for (pi, p) in parts.iter().enumerate() {
                    let inner: usize = p.shape[a..].iter().product();
                    order.push((pi, o * inner, inner));
                }
            }
            let mut chunks = vec![];
            for (pi, start, len) in order {
                chunks.push(datas[pi].gather(&(start..start + len).collect::<Vec<_>>()));
            }
            let refs: Vec<&Data> = chunks.iter().collect();
            let _ = idx_sets;
            Tensor { shape: oshape, data: if refs.is_empty() { Data::zeros(odt, 0) } else { Data::concat(&refs)? } }
        }
        Op::Softmax { axis, coerce_2d } => {
            let xs = f32s(x, "input")?;
            let a = shape::norm_axis(*axis, x.rank())?;
            let (outer, len, inner) = if *coerce_2d {
                (x.shape[..a].iter().product::<usize>(), x.shape[a..].iter().product::<usize>(), 1)
            } else {
                (x.shape[..a].iter().product(), x.shape[a], x.shape[a + 1..].iter().product::<usize>())
            };
            let mut o = xs.to_vec();
            for ou in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| ou * len * inner + k * inner + i;
                    let m = (0..len).map(|k| xs[at(k)]).fold(f32::NEG_INFINITY, f32::max);
                    let s: f32 = (0..len).map(|k| (xs[at(k)] - m).exp()).sum();
                    for k in 0..len {
                        o[at(k)] = (xs[at(k)] - m).exp() / s;
                    }
                }
            }
            Tensor::f32(oshape, o)
        }
        Op::Shape { start, .. } => {
            let r = x.rank() as i64;
            let s = (if *start < 0 { start + r } else { *start }).clamp(0, r) as usize;
            let v: Vec<i64> = x.shape[s..s + oshape[0]].iter().map(|&d| d as i64).collect();
            Tensor::i64(oshape, v)
        }
        Op::Gather { axis } => {
            let a = shape::norm_axis(*axis, x.rank())?;
            let idx = in_(1).unwrap().to_i64_vec();
            let d = x.shape[a] as i64;
            let outer: usize = x.shape[..a].iter().product();
            let inner: usize = x.shape[a + 1..].iter().product();
            let mut sel = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let i = if i < 0 { i + d } else { i };
                    if i < 0 || i >= d {
                        return Err(Error::Invalid(format!("Gather index {i} out of range for dim {d}")));
                    }
                    for k in 0..inner {
                        sel.push((o * d as usize + i as usize) * inner + k);
                    }
                }
            }
            Tensor { shape: oshape, data: x.data.gather(&sel) }
        }
        Op::Cast { to } => Tensor { shape: oshape, data: x.data.cast(*to) },
        Op::Slice { attrs } => {
            let (starts, ends, axes, steps) = match attrs {
                Some((s, e, a)) => (s.clone(), e.clone(), if a.is_empty() { None } else { Some(a.clone()) }, None),
                None => (
                    in_(1).unwrap().to_i64_vec(),
                    in_(2).unwrap().to_i64_vec(),
                    in_(3).map(|t| t.to_i64_vec()),
                    in_(4).map(|t| t.to_i64_vec()),
                ),
            };
            let r = shape::slice_ranges(&x.shape, &starts, &ends, axes.as_deref(), steps.as_deref())?;
            let st = lowbit_core::tensor::strides(&x.shape);
            let mut sel = vec![];
            let total: usize = oshape.iter().product();
            let ost = lowbit_core::tensor::strides(&oshape);
            for flat in 0..total {
                let mut src = 0usize;
                for d in 0..oshape.len() {
                    let i = (flat / ost[d]) % oshape[d].max(1);
                    let (s, _, step) = r[d];
                    src += (s + i as i64 * step) as usize * st[d];
                }
                sel.push(src);
            }
            Tensor { shape: oshape, data: x.data.gather(&sel) }
        }
        Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
            let scale = f32s(in_(1).unwrap(), "scale")?;
            let zp = in_(2);
            let zpv: Vec<i64> = zp.map(|z| z.to_i64_vec()).unwrap_or_else(|| vec![0; scale.len()]);
            let (outer_stride, per) = if scale.len() == 1 {
                (usize::MAX, 1)
            } else {
                let a = shape::norm_axis(*axis, x.rank())?;
                (x.shape[a + 1..].iter().product::<usize>(), x.shape[a])
            };
            let ch = |i: usize| if per == 1 { 0 } else { (i / outer_stride) % per };
            if matches!(node.op, Op::QuantizeLinear { .. }) {
                let xs = f32s(x, "QuantizeLinear input")?;
                let (lo, hi) = match odt {
                    lowbit_core::DType::U8 => (0i64, 255i64),
                    lowbit_core::DType::I8 => (-128, 127),
                    _ => (i32::MIN as i64, i32::MAX as i64),
                };
                let q: Vec<i64> = xs
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = ch(i);
                        let r = (v / scale[c]).round_ties_even() as f64 + zpv[c] as f64;
                        (r.clamp(lo as f64, hi as f64)) as i64
                    })
                    .collect();
                Tensor { shape: oshape, data: Data::I64(q).cast(odt) }
            } else {
                let n = x.len();
                let o: Vec<f32> = (0..n)
                    .map(|i| {
                        let c = ch(i);
                        ((x.data.get_f64(i) as i64 - zpv[c]) as f32) * scale[c]
                    })
                    .collect();
                Tensor::f32(oshape, o)
            }
        }
        Op::Transpose { perm } => {
            let r = x.rank();
            let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            let st = lowbit_core::tensor::strides(&x.shape);
            let ost = lowbit_core::tensor::strides(&oshape);
            let total: usize = oshape.iter().product();
            let sel: Vec<usize> =
                (0..total).map(|flat| (0..r).map(|d| ((flat / ost[d]) % oshape[d].max(1)) * st[p[d]]).sum()).collect();
            Tensor { shape: oshape, data: x.data.gather(&sel) }
        }
        // The operators of detection/segmentation/embedding networks.
        _ => crate::refops::eval(&node.op, inputs, odt, oshape)?,
    };
    debug_assert_eq!(out.dtype(), odt);
    Ok(vec![out])
}

pub use lowbit_core::tensor::broadcast_index;

fn binary(op: &Op, a: &Tensor, b: &Tensor, oshape: &[usize]) -> Result<Tensor> {
    let ia = broadcast_index(&a.shape, oshape);
    let ib = broadcast_index(&b.shape, oshape);
    macro_rules! go {
        ($x:expr, $y:expr, $add:expr, $sub:expr, $mul:expr, $div:expr) => {{
            let f: fn(_, _) -> Result<_> = match op {
                Op::Add => $add,
                Op::Sub => $sub,
                Op::Mul => $mul,
                _ => $div,
            };
            ia.iter().zip(&ib).map(|(&i, &j)| f($x[i], $y[j])).collect::<Result<Vec<_>>>()?
        }};
    }
    fn divz() -> Error {
        Error::Invalid("integer division by zero".into())
    }
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(go!(
            x,
            y,
            |p: f32, q: f32| Ok(p + q),
            |p: f32, q: f32| Ok(p - q),
            |p: f32, q: f32| Ok(p * q),
            |p: f32, q: f32| Ok(p / q)
        )),
        (Data::I64(x), Data::I64(y)) => Data::I64(go!(
            x,
            y,
            |p: i64, q: i64| Ok(p.wrapping_add(q)),
            |p: i64, q: i64| Ok(p.wrapping_sub(q)),
            |p: i64, q: i64| Ok(p.wrapping_mul(q)),
            |p: i64, q: i64| p.checked_div(q).ok_or_else(divz)
        )),
        (Data::I32(x), Data::I32(y)) => Data::I32(go!(
            x,
            y,
            |p: i32, q: i32| Ok(p.wrapping_add(q)),
            |p: i32, q: i32| Ok(p.wrapping_sub(q)),
            |p: i32, q: i32| Ok(p.wrapping_mul(q)),
            |p: i32, q: i32| p.checked_div(q).ok_or_else(divz)
        )),
        (Data::U8(x), Data::U8(y)) => Data::U8(go!(
            x,
            y,
            |p: u8, q: u8| Ok(p.wrapping_add(q)),
            |p: u8, q: u8| Ok(p.wrapping_sub(q)),
            |p: u8, q: u8| Ok(p.wrapping_mul(q)),
            |p: u8, q: u8| p.checked_div(q).ok_or_else(divz)
        )),
        (Data::I8(x), Data::I8(y)) => Data::I8(go!(
            x,
            y,
            |p: i8, q: i8| Ok(p.wrapping_add(q)),
            |p: i8, q: i8| Ok(p.wrapping_sub(q)),
            |p: i8, q: i8| Ok(p.wrapping_mul(q)),
            |p: i8, q: i8| p.checked_div(q).ok_or_else(divz)
        )),
        _ => return Err(Error::Invalid(format!("{} of {} is not supported", op.op_type(), a.dtype().name()))),
    };
    Ok(Tensor { shape: oshape.to_vec(), data })
}

fn clip(x: &Tensor, lo: Option<&Tensor>, hi: Option<&Tensor>, amin: Option<f32>, amax: Option<f32>) -> Result<Tensor> {
    let scalar = |t: Option<&Tensor>| -> Result<Option<f64>> {
        match t {
            None => Ok(None),
            Some(t) if t.len() == 1 => Ok(Some(t.data.get_f64(0))),
            Some(t) => Err(Error::Invalid(format!("Clip bound must be a scalar, got shape {:?}", t.shape))),
        }
    };
    let lo = scalar(lo)?.or(amin.map(|v| v as f64));
    let hi = scalar(hi)?.or(amax.map(|v| v as f64));
    let data = match &x.data {
        Data::F32(v) => Data::F32(
            v.iter()
                .map(|&a| {
                    let mut a = a;
                    if let Some(l) = lo {
                        a = a.max(l as f32);
                    }
                    if let Some(h) = hi {
                        a = a.min(h as f32);
                    }
                    a
                })
                .collect(),
        ),
        d => {
            let f: Vec<f64> = (0..d.len())
                .map(|i| {
                    let mut a = d.get_f64(i);
                    if let Some(l) = lo {
                        a = a.max(l);
                    }
                    if let Some(h) = hi {
                        a = a.min(h);
                    }
                    a
                })
                .collect();
            Data::F32(f.iter().map(|&v| v as f32).collect()).cast(d.dtype())
        }
    };
    Ok(Tensor { shape: x.shape.clone(), data })
}

/// Views an N-D (1-D or 2-D spatial) NC... tensor shape as NCHW.
fn as_2d_spatial(shape: &[usize]) -> Result<[usize; 4]> {
    match shape.len() {
        3 => Ok([shape[0], shape[1], 1, shape[2]]),
        4 => Ok([shape[0], shape[1], shape[2], shape[3]]),
        r => Err(Error::Invalid(format!("only 1-D and 2-D spatial inputs are supported, got rank {r}"))),
    }
}

fn expand_2d(v: &[usize], spatial: usize, dflt: usize) -> Vec<usize> {
    if spatial == 1 {
        vec![dflt, v.first().copied().unwrap_or(dflt)]
    } else if v.is_empty() {
        vec![dflt; 2]
    } else {
        v.to_vec()
    }
}

fn expand_pads_2d(p: &[usize], spatial: usize) -> Vec<usize> {
    if spatial == 1 {
        if p.is_empty() {
            vec![0; 4]
        } else {
            vec![0, p[0], 0, p[1]]
        }
    } else {
        p.to_vec()
    }
}

fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &lowbit_core::ConvAttrs) -> Result<Tensor> {
    let [n, ci, h, wd] = as_2d_spatial(&x.shape)?;
    let sp = x.rank() - 2;
    let ws = as_2d_spatial(&w.shape)?;
    let (co, cig, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let strides = expand_2d(&c.strides, sp, 1);
    let dil = expand_2d(&c.dilations, sp, 1);
    let pads = expand_pads_2d(&c.pads, sp);
    let win = shape::window(&[h, wd], &[kh, kw], &strides, &dil, &pads, c.auto_pad, false)?;
    let (oh, ow) = (win.out[0], win.out[1]);
    let xs = f32s(x, "Conv input")?;
    let wv = f32s(w, "Conv weight")?;
    let bv = match b {
        Some(b) => Some(f32s(b, "Conv bias")?),
        None => None,
    };
    let g = c.group.max(1);
    let cog = co / g;
    let mut o = vec![0f32; n * co * oh * ow];
    for ni in 0..n {
        for oc in 0..co {
            let gi = oc / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.map(|b| b[oc]).unwrap_or(0.0);
                    for icg in 0..cig {
                        let ic = gi * cig + icg;
                        for ky in 0..kh {
                            let iy =
                                (oy * win.strides[0] + ky * win.dilations[0]) as isize - win.pads_begin[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix =
                                    (ox * win.strides[1] + kx * win.dilations[1]) as isize - win.pads_begin[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                s += xs[((ni * ci + ic) * h + iy as usize) * wd + ix as usize]
                                    * wv[((oc * cig + icg) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    o[((ni * co + oc) * oh + oy) * ow + ox] = c.act.apply(s);
                }
            }
        }
    }
    let mut shape = vec![n, co];
    if sp == 1 {
        shape.push(ow);
    } else {
        shape.extend([oh, ow]);
    }
    Ok(Tensor::f32(shape, o))
}

fn pool(x: &Tensor, p: &lowbit_core::PoolAttrs, max: bool) -> Result<Tensor> {
    let [n, c, h, wd] = as_2d_spatial(&x.shape)?;
    let sp = x.rank() - 2;
    let k = expand_2d(&p.kernel_shape, sp, 1);
    let strides = expand_2d(&p.strides, sp, 1);
    let dil = expand_2d(&p.dilations, sp, 1);
    let pads = expand_pads_2d(&p.pads, sp);
    let win = shape::window(&[h, wd], &k, &strides, &dil, &pads, p.auto_pad, p.ceil_mode)?;
    let (oh, ow) = (win.out[0], win.out[1]);
    let xs = f32s(x, "pooling input")?;
    let mut o = vec![0f32; n * c * oh * ow];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut cnt = 0usize;
                let mut cnt_pad = 0usize;
                for ky in 0..k[0] {
                    let iy = (oy * win.strides[0] + ky * win.dilations[0]) as isize - win.pads_begin[0] as isize;
                    for kx in 0..k[1] {
                        let ix = (ox * win.strides[1] + kx * win.dilations[1]) as isize - win.pads_begin[1] as isize;
                        // count_include_pad counts positions inside the padded input only.
                        if iy < h as isize + win.pads_end[0] as isize && ix < wd as isize + win.pads_end[1] as isize {
                            cnt_pad += 1;
                        }
                        if iy < 0 || iy >= h as isize || ix < 0 || ix >= wd as isize {
                            continue;
                        }
                        let v = xs[(pl * h + iy as usize) * wd + ix as usize];
                        if max {
                            acc = acc.max(v);
                        } else {
                            acc += v;
                        }
                        cnt += 1;
                    }
                }
                o[(pl * oh + oy) * ow + ox] = if max {
                    acc
                } else if p.count_include_pad {
                    acc / cnt_pad.max(1) as f32
                } else {
                    acc / cnt.max(1) as f32
                };
            }
        }
    }
    let mut shape = vec![n, c];
    if sp == 1 {
        shape.push(ow);
    } else {
        shape.extend([oh, ow]);
    }
    Ok(Tensor::f32(shape, o))
}

fn matmul(a: &Tensor, b: &Tensor, oshape: &[usize]) -> Result<Tensor> {
    let av = f32s(a, "MatMul A")?;
    let bv = f32s(b, "MatMul B")?;
    let a2: Vec<usize> = if a.rank() == 1 { vec![1, a.shape[0]] } else { a.shape.clone() };
    let b2: Vec<usize> = if b.rank() == 1 { vec![b.shape[0], 1] } else { b.shape.clone() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let batch = shape::broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let nb: usize = batch.iter().product();
    let ia = broadcast_index(&a2[..a2.len() - 2], &batch);
    let ib = broadcast_index(&b2[..b2.len() - 2], &batch);
    let mut o = vec![0f32; nb * m * n];
    for bi in 0..nb {
        let (ao, bo) = (ia[bi] * m * k, ib[bi] * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f32;
                for p in 0..k {
                    s += av[ao + i * k + p] * bv[bo + p * n + j];
                }
                o[bi * m * n + i * n + j] = s;
            }
        }
    }
    Ok(Tensor::f32(oshape.to_vec(), o))
}
