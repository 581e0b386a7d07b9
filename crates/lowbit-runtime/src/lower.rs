//! Lowering: one node of the specialized graph (or one fused integer unit) becomes one plan step,
//! with its kernel chosen for the plan's paths and its weights packed.

use lowbit_core::{Act, DType, Error, Node, Op, Result, Tensor};
use lowbit_kernels::binary::BinConv;
use lowbit_kernels::eltwise::{BinOp, Broadcast};
use lowbit_kernels::fp32::conv::PackedConv;
use lowbit_kernels::fp32::gemm as f32gemm;
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::ops as qops;
use lowbit_kernels::int8::{self, PackedB, QConv, Requant};
use lowbit_kernels::isa::Paths;
use lowbit_kernels::reference;

use crate::layout::Values;
use crate::qfuse::{self, Unit};
use crate::step::{shape_of, Kind, Operand};

/// One lowered step: what it runs, the kernel's name for reports, its multiply-accumulates and
/// parameters, and the scratch its kernel needs (f32 elements, bytes, words).
pub(crate) struct Lowered {
    pub kind: Kind,
    pub kernel: String,
    pub macs: u64,
    pub params: usize,
    pub scratch: usize,
    pub qscratch: usize,
    pub bscratch: usize,
}

impl Lowered {
    fn new(kind: Kind, kernel: impl Into<String>) -> Lowered {
        Lowered { kind, kernel: kernel.into(), macs: 0, params: 0, scratch: 0, qscratch: 0, bscratch: 0 }
    }
}

fn conv_geom(x: &[usize], w: &[usize], c: &lowbit_core::ConvAttrs) -> Result<ConvGeom> {
    let win = lowbit_core::shape::window(&x[2..], &w[2..], &c.strides, &c.dilations, &c.pads, c.auto_pad, false)?;
    Ok(ConvGeom {
        c_in: x[1],
        h: x[2],
        w: x[3],
        c_out: w[0],
        kh: w[2],
        kw: w[3],
        sh: win.strides[0],
        sw: win.strides[1],
        dh: win.dilations[0],
        dw: win.dilations[1],
        pt: win.pads_begin[0],
        pl: win.pads_begin[1],
        oh: win.out[0],
        ow: win.out[1],
        group: c.group.max(1),
    })
}

/// Window of a 2-D pooling node on an NCHW input shape: the geometry (channels as `c_in`) and the
/// bottom and right end paddings.
fn pool_geom(x: &[usize], p: &lowbit_core::PoolAttrs) -> Result<(ConvGeom, usize, usize)> {
    let win = lowbit_core::shape::window(
        &x[2..],
        &p.kernel_shape,
        &p.strides,
        &p.dilations,
        &p.pads,
        p.auto_pad,
        p.ceil_mode,
    )?;
    let g = ConvGeom {
        c_in: x[1],
        h: x[2],
        w: x[3],
        c_out: x[1],
        kh: win.kernel[0],
        kw: win.kernel[1],
        sh: win.strides[0],
        sw: win.strides[1],
        dh: win.dilations[0],
        dw: win.dilations[1],
        pt: win.pads_begin[0],
        pl: win.pads_begin[1],
        oh: win.out[0],
        ow: win.out[1],
        group: 1,
    };
    Ok((g, win.pads_end[0], win.pads_end[1]))
}

/// A fused integer unit (anchored at node `n`) as one step on `paths`.
pub(crate) fn lower_unit(v: &Values, n: &Node, u: &Unit, paths: Paths, winograd: Option<bool>) -> Result<Lowered> {
    let xs = n.input(0).and_then(|s| v.ty(s).ok()).map(|t| t.1).unwrap_or_default();
    let isa = paths.int8;
    let (mut macs, mut params, mut qscratch, mut bscratch) = (0u64, 0usize, 0usize, 0usize);
    let (kind, kernel): (Kind, String) = match u {
        Unit::Mac(m) => {
            let rq = Requant::new(&m.scale, &m.bias_i, &m.bias_f, m.lo, m.hi, m.out);
            params = m.w.len() + m.n;
            if let Some(c) = &m.conv {
                let geom = conv_geom(&xs, &m.wshape, c).map_err(|e| e.in_node(&n.name))?;
                macs = (xs[0] * geom.macs()) as u64;
                let qc = QConv::with_choice(isa, geom, &m.w, m.xq.zp as u8, rq, winograd);
                qscratch = qscratch.max(qc.scratch_len());
                let name = format!("{} ({})", qc.kernel_name(), isa.name());
                (Kind::QConv { c: qc, batch: xs[0] }, name)
            } else {
                let (mm, k, nn) = (xs[0], m.k, m.n);
                let mut b = PackedB::new(isa, k, nn, |kk, j| m.w[j * k + kk]);
                let mut rq = rq;
                let corr: Vec<i32> = b.colsum.iter().map(|&s| -m.xq.zp * s).collect();
                rq.add_bias_i(&corr);
                rq.allow_unclamped(b.k4 as f64 * 255.0 * 128.0);
                b.colsum = vec![];
                if k % 4 != 0 {
                    qscratch = qscratch.max(mm * b.k4);
                }
                macs = (mm * nn * k) as u64;
                (Kind::QGemm { b, rq, m: mm, k }, format!("int8 gemm ({})", isa.name()))
            }
        }
        Unit::Bin(b) => {
            let bisa = paths.binary;
            let rq = Requant::new(&b.scale, &b.bias_i, &b.bias_f, b.lo, b.hi, b.out);
            let geom = conv_geom(&xs, &b.wshape, &b.conv).map_err(|e| e.in_node(&n.name))?;
            macs = (xs[0] * geom.macs()) as u64;
            params = b.w.len() + b.scale.len();
            let c = BinConv::new(bisa, geom, &b.w, b.mul, rq).map_err(|e| Error::node(&n.name, e))?;
            bscratch = bscratch.max(c.scratch_words());
            let name = c.kernel_name().to_string();
            (Kind::BinConv { c, batch: xs[0], zx: b.zx }, name)
        }
        Unit::Add { qa, qb, lo, hi, qo, .. } => {
            (Kind::QAdd(qops::AddQ::new(*qa, *qb, *lo, *hi, *qo)), "int8 add".into())
        }
        Unit::Lut { table, .. } => (Kind::QLut(table.clone()), "int8 table".into()),
        Unit::Mul { qa, qb, qo, per_channel, .. } => {
            let gate = per_channel.then(|| (xs[0], xs[2] * xs[3], xs[1]));
            (Kind::QMul { p: qops::MulQ::new(*qa, *qb, *qo), gate }, "int8 mul".into())
        }
        Unit::Gap { qi, qo, .. } => (
            Kind::QGap { n: xs[0], plane: xs[2] * xs[3], c: xs[1], qi: *qi, qo: *qo },
            "int8 global average pool".into(),
        ),
        Unit::MaxPool { q, attrs: p, .. } => {
            let (pg, _, _) = pool_geom(&xs, p).map_err(|e| e.in_node(&n.name))?;
            (Kind::QMaxPool { g: pg, n: xs[0], signed: q.signed }, "int8 max pool".into())
        }
        Unit::Deconv(d) => {
            let geom = lowbit_core::shape_ops::conv_transpose_geom(&xs, &d.wshape, &d.attrs)
                .map_err(|e| e.in_node(&n.name))?;
            let dg = lowbit_kernels::fp32::deconv::Deconv2d::new(&xs, &geom, 1)
                .ok_or_else(|| Error::node(&n.name, "ConvTranspose geometry is not 2-D"))?;
            let (qmin, qmax) = d.qo.range();
            let out = int8::Out::Q { scale: d.qo.scale, zp: d.qo.zp, qmin, qmax };
            let (lo, hi) = (f32::NEG_INFINITY, f32::INFINITY);
            let q = int8::QDeconv::new(isa, dg, &d.w, d.xq.zp as u8, &d.scale, &d.bias_i, &d.bias_f, lo, hi, out)
                .ok_or_else(|| Error::node(&n.name, "ConvTranspose has no integer kernel"))?;
            macs = (xs[0] * dg.macs()) as u64;
            params = d.w.len() + d.scale.len();
            let name = format!("{} ({})", q.kernel_name(), isa.name());
            (Kind::QDeconv { d: q, batch: xs[0] }, name)
        }
        Unit::PRelu { qi, qo, slope, .. } => {
            (Kind::QPRelu { qi: *qi, qo: *qo, slope: slope.clone() }, "int8 prelu".into())
        }
        Unit::ChannelLut { tables, .. } => (Kind::QLutChannels(tables.clone()), "int8 channel table".into()),
        Unit::Concat { xs: parts, qo, axis } => {
            // The bytes' own axis and shapes: NHWC for 4-D values.
            let nhwc = |s: Vec<usize>| if s.len() == 4 { vec![s[0], s[2], s[3], s[1]] } else { s };
            let a = if xs.len() == 4 { [0, 3, 1, 2][*axis] } else { *axis };
            let mut inners = vec![];
            let mut outer = 0;
            for name in &n.inputs {
                let sh = nhwc(v.ty(name)?.1);
                outer = sh[..a].iter().product();
                inners.push(sh[a..].iter().product());
            }
            let tables =
                parts.iter().map(|(_, q)| (q != qo).then(|| Box::new(qops::lut_table(*q, *qo, |v| v)))).collect();
            (Kind::QConcat { outer, inners, tables }, "int8 concat".into())
        }
        Unit::Resize { qi, qo, rows, cols, .. } => {
            let os = v.ty(&n.outputs[0])?.1;
            let kind = Kind::QResize {
                n: xs[0],
                c: xs[1],
                hw: (xs[2], xs[3]),
                ohw: (os[2], os[3]),
                rows: rows.clone(),
                cols: cols.clone(),
                qi: *qi,
                qo: *qo,
            };
            (kind, "int8 resize".into())
        }
        Unit::Alias { .. } => unreachable!("aliases have no step"),
    };
    Ok(Lowered { macs, params, qscratch, bscratch, ..Lowered::new(kind, kernel) })
}

/// A node outside the integer units as one step on `paths` (`ins`: its operands).
pub(crate) fn lower_node(
    v: &Values,
    n: &Node,
    ins: &[Option<Operand>],
    paths: Paths,
    winograd: Option<bool>,
) -> Result<Lowered> {
    let g = &v.spec.graph;
    let ty = |name: &str| v.ty(name);
    let out_shape = ty(&n.outputs[0])?.1;
    let all_f32 = n.inputs.iter().filter(|s| !s.is_empty()).all(|s| ty(s).map(|t| t.0 == DType::F32).unwrap_or(false))
        && ty(&n.outputs[0])?.0 == DType::F32;
    let konst = |i: usize| -> Option<&Tensor> { n.input(i).and_then(|s| g.initializers.get(s)) };
    let in_shape = |i: usize| n.input(i).and_then(|s| ty(s).ok()).map(|t| t.1).unwrap_or_default();
    let (mut macs, mut params, mut scratch, mut qscratch) = (0u64, 0usize, 0usize, 0usize);
    let (kind, kernel) = match &n.op {
        Op::Conv(c)
            if all_f32
                && in_shape(0).len() == 4
                && konst(1).is_some()
                && (n.input(2).is_none() || konst(2).is_some()) =>
        {
            let xs = in_shape(0);
            let w = konst(1).unwrap();
            let geom = conv_geom(&xs, &w.shape, c).map_err(|e| e.in_node(&n.name))?;
            macs = (xs[0] * geom.macs()) as u64;
            params = w.len() + geom.c_out;
            let b = konst(2).map(|b| b.to_f32_vec());
            let p = PackedConv::with_strategy(paths.f32, geom, w.to_f32_vec(), b, c.act, winograd, None);
            scratch = scratch.max(p.scratch_len());
            let kernel = p.kernel_name();
            (Kind::Conv { p, batch: xs[0] }, kernel)
        }
        Op::ConvTranspose(c) if all_f32 && konst(1).is_some() && (n.input(2).is_none() || konst(2).is_some()) => {
            let xs = in_shape(0);
            let w = konst(1).unwrap();
            let geom = lowbit_core::shape_ops::conv_transpose_geom(&xs, &w.shape, c).map_err(|e| e.in_node(&n.name))?;
            match lowbit_kernels::fp32::deconv::Deconv2d::new(&xs, &geom, c.group) {
                Some(d) if out_shape == [xs[0], d.c_out, d.oh, d.ow] => {
                    macs = (xs[0] * d.macs()) as u64;
                    params = w.len() + d.c_out;
                    let p = lowbit_kernels::fp32::deconv::PackedDeconv::new(
                        paths.f32,
                        d,
                        &w.to_f32_vec(),
                        konst(2).map(|b| b.to_f32_vec()),
                    );
                    scratch = scratch.max(p.scratch_len());
                    (Kind::Deconv { p, batch: xs[0] }, "f32 deconv gemm")
                }
                _ => (Kind::Generic(n.clone()), "reference"),
            }
        }
        Op::Gemm { alpha, beta, trans_a, trans_b, act }
            if all_f32 && konst(1).is_some() && (n.input(2).is_none() || konst(2).is_some()) =>
        {
            let bt = konst(1).unwrap();
            let (m, nn) = (out_shape[0], out_shape[1]);
            let k = if *trans_b { bt.shape[1] } else { bt.shape[0] };
            let bv = bt.to_f32_vec();
            let mut b = vec![0f32; k * nn];
            for kk in 0..k {
                for j in 0..nn {
                    b[kk * nn + j] = alpha * if *trans_b { bv[j * k + kk] } else { bv[kk * nn + j] };
                }
            }
            let prefill = konst(2).map(|c| {
                let idx = reference::broadcast_index(&c.shape, &[m, nn]);
                let cv = c.to_f32_vec();
                idx.iter().map(|&i| beta * cv[i]).collect()
            });
            macs = (m * nn * k) as u64;
            params = bt.len() + konst(2).map(|c| c.len()).unwrap_or(0);
            // Batch 1: the matrix-vector kernel's panel layout.
            let b = if m == 1 { f32gemm::pack_gemv(k, nn, &b) } else { b };
            (Kind::Gemm { m, n: nn, k, b, prefill, trans_a: *trans_a, act: *act }, "f32 gemm")
        }
        Op::MatMul if all_f32 && in_shape(0).len() >= 2 && konst(1).is_some_and(|b| b.rank() == 2) => {
            let bt = konst(1).unwrap();
            let (k, nn) = (bt.shape[0], bt.shape[1]);
            let m = in_shape(0).iter().product::<usize>() / k;
            macs = (m * nn * k) as u64;
            params = bt.len();
            let b = if m == 1 { f32gemm::pack_gemv(k, nn, &bt.to_f32_vec()) } else { bt.to_f32_vec() };
            (Kind::Gemm { m, n: nn, k, b, prefill: None, trans_a: false, act: Act::None }, "f32 gemm")
        }
        // PRelu with a constant slope per channel (or one slope): a plane at a time.
        Op::PRelu if all_f32 && konst(1).is_some() && out_shape.len() >= 2 => {
            let sl = konst(1).unwrap();
            let c = out_shape[1];
            // Right-aligned against the output: one value, or C values on axis 1 and 1 elsewhere.
            let r = out_shape.len();
            let dims: Vec<usize> =
                (0..r).map(|i| if i + sl.shape.len() >= r { sl.shape[i + sl.shape.len() - r] } else { 1 }).collect();
            let per_channel = dims.iter().enumerate().all(|(i, &d)| d == 1 || (i == 1 && d == c));
            if per_channel && sl.rank() <= r {
                let sv = sl.to_f32_vec();
                let slope = if sv.len() == 1 { vec![sv[0]; c] } else { sv };
                let plane = out_shape[2..].iter().product();
                (Kind::PRelu { slope, plane }, "f32 eltwise")
            } else {
                (Kind::Generic(n.clone()), "reference")
            }
        }
        Op::Relu | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::HardSwish if all_f32 => {
            match lowbit_core::passes::as_activation(g, n) {
                Some(a) => (Kind::Act(a), "f32 eltwise"),
                None => (Kind::Generic(n.clone()), "reference"),
            }
        }
        Op::Sigmoid if all_f32 => (Kind::Sigmoid, "f32 eltwise"),
        Op::Add | Op::Sub | Op::Mul | Op::Div if all_f32 => {
            let op = match n.op {
                Op::Add => BinOp::Add,
                Op::Sub => BinOp::Sub,
                Op::Mul => BinOp::Mul,
                _ => BinOp::Div,
            };
            let a_shape = ins[0].as_ref().map(|o| shape_of(o)).unwrap_or_default();
            let b_shape = ins[1].as_ref().map(|o| shape_of(o)).unwrap_or_default();
            (Kind::Binary { op, bc: Broadcast::new(&a_shape, &b_shape, &out_shape) }, "f32 eltwise")
        }
        Op::MaxPool(p) | Op::AveragePool(p) if all_f32 && in_shape(0).len() == 4 => {
            let xs = in_shape(0);
            let (geom, pb, pr) = pool_geom(&xs, p).map_err(|e| e.in_node(&n.name))?;
            let max = matches!(n.op, Op::MaxPool(_));
            let kind = Kind::Pool { g: geom, planes: xs[0] * xs[1], max, cip: p.count_include_pad, pb, pr };
            (kind, "f32 pool")
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool if all_f32 => {
            let xs = in_shape(0);
            (Kind::GlobalPool { plane: xs[2..].iter().product(), max: matches!(n.op, Op::GlobalMaxPool) }, "f32 pool")
        }
        Op::Concat { axis } if all_f32 && !n.inputs.iter().any(|s| s.is_empty()) => {
            let a = lowbit_core::shape::norm_axis(*axis, out_shape.len()).map_err(|e| e.in_node(&n.name))?;
            let outer = out_shape[..a].iter().product();
            let inners = (0..n.inputs.len()).map(|i| in_shape(i)[a..].iter().product()).collect();
            (Kind::Concat { outer, inners }, "f32 concat")
        }
        // Only the data must be f32 (sizes are int64, roi and scales may be empty).
        Op::Resize(r)
            if ty(&n.inputs[0])?.0 == DType::F32
                && ty(&n.outputs[0])?.0 == DType::F32
                && out_shape.len() == 4
                && r.coord != lowbit_core::CoordMode::TfCropAndResize =>
        {
            match lowbit_kernels::resample::resize_taps(n, r, &in_shape(0), &out_shape, &konst) {
                Some((rows, cols)) => {
                    let xs = in_shape(0);
                    scratch = scratch.max(xs[0] * xs[1] * out_shape[2] * xs[3]);
                    let kind = Kind::Resize2d {
                        planes: xs[0] * xs[1],
                        hw: (xs[2], xs[3]),
                        ohw: (out_shape[2], out_shape[3]),
                        rows,
                        cols,
                    };
                    (kind, "f32 resize")
                }
                None => (Kind::Generic(n.clone()), "reference"),
            }
        }
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } if qfuse::qparams(g, n).is_some() => {
            let q = qfuse::qparams(g, n).unwrap();
            let layout = |name: &str| -> qops::Layout {
                let sh = ty(name).map(|t| t.1).unwrap_or_default();
                v.nhwc(name).then(|| (sh[0], sh[1], sh[2] * sh[3]))
            };
            let int_t = if q.signed { DType::I8 } else { DType::U8 };
            if matches!(n.op, Op::QuantizeLinear { .. }) && ty(&n.inputs[0])?.0 == DType::F32 {
                qscratch = qscratch.max(out_shape.iter().product());
                (Kind::Quantize { q, layout: layout(&n.outputs[0]) }, "quantize")
            } else if matches!(n.op, Op::DequantizeLinear { .. }) && ty(&n.inputs[0])?.0 == int_t {
                (Kind::Dequantize { q, layout: layout(&n.inputs[0]) }, "dequantize")
            } else {
                (Kind::Generic(n.clone()), "reference")
            }
        }
        _ => (Kind::Generic(n.clone()), "reference"),
    };
    Ok(Lowered { macs, params, scratch, qscratch, ..Lowered::new(kind, kernel) })
}
