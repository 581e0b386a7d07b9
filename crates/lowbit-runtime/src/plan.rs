//! The compiled plan: steps with chosen kernels and packed weights, value buffers placed in one
//! arena by liveness, and the executor.

use std::collections::HashMap;
use std::sync::Arc;

use lowbit_core::{Act, DType, Data, Error, Graph, Node, Op, Result, Tensor};
use lowbit_kernels::binary::{BinConv, BinIsa};
use lowbit_kernels::eltwise::{self, BinOp, Broadcast};
use lowbit_kernels::f32conv::{self, ConvGeom, PackedConv};
use lowbit_kernels::f32gemm;
use lowbit_kernels::int8::ops::{self as qops, PoolGeom, QParams};
use lowbit_kernels::int8::{self, Isa, OutPtr, PackedB, QConv, Requant};
use lowbit_kernels::{pool, reference};

use crate::memory::{self, Interval};
use crate::qfuse::{self, Unit};
use crate::specialize::{specialize, Specialized};

/// Largest single value and total arena a plan may need (guards against absurd shapes).
pub const MAX_BUFFER_BYTES: usize = 4 << 30;
pub const MAX_ARENA_BYTES: usize = 16 << 30;

/// How to compile a plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Worker threads for kernels (1 = run on the calling thread).
    pub threads: usize,
    /// Run the canonicalization passes (BatchNorm folding, activation fusion, ...).
    pub optimize: bool,
    /// Run QDQ units on integer kernels (off: simulate them in f32).
    pub int8: bool,
    /// Integer kernel path; `None` = `LOWBIT_ISA` or the best this CPU has.
    pub isa: Option<Isa>,
    /// Binary kernel path; `None` = `LOWBIT_BIN_ISA` or the best this CPU has.
    pub bin_isa: Option<BinIsa>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { threads: 1, optimize: true, int8: true, isa: None, bin_isa: None }
    }
}

/// What one step of the plan does, for reports.
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub name: String,
    pub op: String,
    pub kernel: String,
    pub out_shape: Vec<usize>,
    pub macs: u64,
    pub params: usize,
    /// The value this step writes.
    pub output: String,
}

#[derive(Clone, Debug)]
enum Operand {
    /// A buffer in the arena: byte offset, element type, shape.
    Buf {
        off: usize,
        dtype: DType,
        shape: Vec<usize>,
        /// 4-D integer value stored NHWC (the integer kernels' layout).
        nhwc: bool,
    },
    Const(Arc<Tensor>),
}

impl Operand {
    fn len(&self) -> usize {
        match self {
            Operand::Buf { shape, .. } => shape.iter().product(),
            Operand::Const(t) => t.len(),
        }
    }
}

enum Kind {
    Conv {
        p: PackedConv,
        batch: usize,
    },
    Gemm {
        m: usize,
        n: usize,
        k: usize,
        b: Vec<f32>,
        prefill: Option<Vec<f32>>,
        trans_a: bool,
        act: Act,
    },
    Act(Act),
    Binary {
        op: BinOp,
        bc: Broadcast,
    },
    Pool {
        g: ConvGeom,
        planes: usize,
        max: bool,
        cip: bool,
        pb: usize,
        pr: usize,
    },
    GlobalPool {
        plane: usize,
        max: bool,
    },
    /// Per-tensor QuantizeLinear f32 -> u8/i8 (NCHW -> NHWC with a layout).
    Quantize {
        q: QParams,
        layout: qops::Layout,
    },
    /// Per-tensor DequantizeLinear u8/i8 -> f32 (NHWC -> NCHW with a layout).
    Dequantize {
        q: QParams,
        layout: qops::Layout,
    },
    QConv {
        c: QConv,
        batch: usize,
    },
    /// Binary convolution; `zx`: zero point of a uint8 NHWC input, `None` for f32 NCHW.
    BinConv {
        c: BinConv,
        batch: usize,
        zx: Option<u8>,
    },
    QGemm {
        b: PackedB,
        rq: Requant,
        m: usize,
        k: usize,
    },
    QAdd(qops::AddQ),
    QLut(Box<[u8; 256]>),
    /// Same shapes, or with `gate = Some((n, plane, c))` `b` scales each channel of NHWC `a` (`[n][plane][c]`).
    QMul {
        p: qops::MulQ,
        gate: Option<(usize, usize, usize)>,
    },
    QGap {
        n: usize,
        plane: usize,
        c: usize,
        qi: QParams,
        qo: QParams,
    },
    QMaxPool {
        g: PoolGeom,
        n: usize,
        signed: bool,
    },
    Generic(Node),
}

struct Step {
    kind: Kind,
    ins: Vec<Option<Operand>>,
    out: Operand,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A model compiled for fixed input shapes. Create with [`Plan::compile`], execute with
/// [`Plan::run`].
pub struct Plan {
    steps: Vec<Step>,
    infos: Vec<StepInfo>,
    inputs: Vec<(String, DType, Vec<usize>, usize)>,
    outputs: Vec<(String, Operand)>,
    arena: Vec<Line>,
    arena_bytes: usize,
    scratch: Vec<f32>,
    /// Byte scratch of the integer kernels (im2col rows, padded inputs).
    qscratch: Vec<u8>,
    /// Word scratch of the binary kernels (packed input, bit im2col).
    bscratch: Vec<u64>,
    isa: Isa,
    notes: Vec<String>,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    spec: Specialized,
    /// Accumulated seconds per step when profiling is on.
    profile: Option<Vec<f64>>,
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

impl Plan {
    /// Compiles `graph` for the given input shapes (in the order of the graph's runtime inputs).
    pub fn compile(graph: &Graph, input_shapes: &[Vec<usize>], opts: &PlanOptions) -> Result<Plan> {
        let rt_inputs: Vec<_> = graph.runtime_inputs().into_iter().cloned().collect();
        if rt_inputs.len() != input_shapes.len() {
            return Err(Error::Invalid(format!(
                "model has {} inputs, {} shapes given",
                rt_inputs.len(),
                input_shapes.len()
            )));
        }
        let named: Vec<(String, Vec<usize>)> =
            rt_inputs.iter().map(|v| v.name.clone()).zip(input_shapes.iter().cloned()).collect();
        let spec = specialize(graph, &named, opts.optimize)?;
        let g = &spec.graph;
        let ty = |name: &str| spec.types.get(name).cloned().ok_or_else(|| Error::value(name, "no inferred type"));
        let fu = qfuse::analyze(&spec, opts.int8);
        let isa = match opts.isa {
            Some(i) => i,
            None if fu.units.is_empty() => Isa::Scalar,
            None => Isa::selected().map_err(Error::Invalid)?,
        };
        if !isa.supported() {
            return Err(Error::Invalid(format!("integer path {} is not supported by this CPU", isa.name())));
        }
        // Nodes in order, each integer unit in place of its anchor node, absorbed nodes dropped.
        let mut items: Vec<(Node, Option<Unit>)> = vec![];
        for (i, n) in g.nodes.iter().enumerate() {
            if fu.skip.contains(&i) {
                continue;
            }
            match fu.units.get(&i) {
                Some((u, out)) => {
                    let op = if matches!(u, Unit::Alias { .. }) { Op::Identity } else { n.op.clone() };
                    let node = Node { name: n.name.clone(), op, inputs: u.inputs(), outputs: vec![out.clone()] };
                    items.push((node, Some(u.clone())));
                }
                None => items.push((n.clone(), None)),
            }
        }
        let spatial = |v: &str| spec.types.get(v).map(|t| t.1.iter().skip(2).product::<usize>()).unwrap_or(1);
        let nhwc = |v: &str| fu.int_vals.contains(v) && spec.types.get(v).is_some_and(|t| t.1.len() == 4);

        // Buffers: one per non-alias non-constant value.
        let mut buf_of: HashMap<String, usize> = HashMap::new();
        let mut bufs: Vec<Interval> = vec![];
        let new_buf = |bufs: &mut Vec<Interval>, dt: DType, shape: &[usize], at: usize| {
            let bytes = shape.iter().try_fold(dt.size(), |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
            bufs.push(Interval { bytes: bytes.max(1), first: at, last: at });
            bufs.len() - 1
        };
        for v in &rt_inputs {
            let (dt, sh) = ty(&v.name)?;
            let b = new_buf(&mut bufs, dt, &sh, 0);
            buf_of.insert(v.name.clone(), b);
        }
        let is_alias = |n: &Node| {
            let reshape =
                matches!(n.op, Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. });
            (reshape || matches!(n.op, Op::Identity))
                && !g.initializers.contains_key(&n.inputs[0])
                // NHWC bytes are not the NCHW order a reshape assumes (unless the plane is 1x1).
                && !(reshape && nhwc(&n.inputs[0]) && spatial(&n.inputs[0]) > 1)
        };
        // Step index of each node (aliases share the index of the next real step).
        let mut step_no = 0usize;
        let mut node_step = vec![0usize; items.len()];
        for (i, (n, _)) in items.iter().enumerate() {
            node_step[i] = step_no + 1;
            if is_alias(n) {
                let root =
                    *buf_of.get(&n.inputs[0]).ok_or_else(|| Error::node(&n.name, "alias of an unknown buffer"))?;
                buf_of.insert(n.outputs[0].clone(), root);
            } else {
                step_no += 1;
                for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                    let (dt, sh) = ty(o)?;
                    let b = new_buf(&mut bufs, dt, &sh, step_no);
                    buf_of.insert(o.clone(), b);
                }
            }
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                if let Some(&b) = buf_of.get(inp) {
                    bufs[b].last = bufs[b].last.max(node_step[i]);
                }
            }
        }
        let end = step_no + 1;
        for o in &g.outputs {
            if let Some(&b) = buf_of.get(&o.name) {
                bufs[b].last = end;
            }
        }
        if bufs.iter().any(|b| b.bytes > MAX_BUFFER_BYTES) {
            return Err(Error::Invalid(format!(
                "a value needs more than {} GiB; refusing to plan it",
                MAX_BUFFER_BYTES >> 30
            )));
        }
        let (offsets, arena_bytes) = memory::plan(&bufs);
        if arena_bytes > MAX_ARENA_BYTES {
            return Err(Error::Invalid(format!(
                "the plan needs {:.1} GiB of activation memory; refusing",
                arena_bytes as f64 / (1u64 << 30) as f64
            )));
        }

        let operand = |name: &str| -> Result<Operand> {
            if let Some(t) = g.initializers.get(name) {
                return Ok(Operand::Const(Arc::new(t.clone())));
            }
            let b = *buf_of.get(name).ok_or_else(|| Error::value(name, "no buffer"))?;
            let (dtype, shape) = ty(name)?;
            Ok(Operand::Buf { off: offsets[b], dtype, shape, nhwc: nhwc(name) })
        };

        let mut steps = vec![];
        let mut infos = vec![];
        let mut scratch_len = 0usize;
        let mut qscratch_len = 0usize;
        let mut bscratch_len = 0usize;
        let mut bin_isa: Option<BinIsa> = opts.bin_isa;
        if let Some(b) = bin_isa {
            if !b.supported() {
                return Err(Error::Invalid(format!("binary path {} is not supported by this CPU", b.name())));
            }
        }
        let mut packed: std::collections::HashSet<String> = Default::default();
        let mut const_used: std::collections::HashSet<String> = Default::default();
        for (n, unit) in items.iter() {
            if is_alias(n) {
                continue;
            }
            let ins: Vec<Option<Operand>> = n
                .inputs
                .iter()
                .map(|s| if s.is_empty() { Ok(None) } else { operand(s).map(Some) })
                .collect::<Result<_>>()?;
            let out = operand(&n.outputs[0])?;
            let out_shape = ty(&n.outputs[0])?.1;
            let all_f32 =
                n.inputs.iter().filter(|s| !s.is_empty()).all(|s| ty(s).map(|t| t.0 == DType::F32).unwrap_or(false))
                    && ty(&n.outputs[0])?.0 == DType::F32;
            let konst = |i: usize| n.input(i).and_then(|s| g.initializers.get(s));
            let in_shape = |i: usize| n.input(i).and_then(|s| ty(s).ok()).map(|t| t.1).unwrap_or_default();
            let mut macs = 0u64;
            let mut params = 0usize;
            let (kind, kernel): (Kind, String) = if let Some(u) = unit {
                let xs = in_shape(0);
                match u {
                    Unit::Mac(m) => {
                        let rq = Requant::new(&m.scale, &m.bias_i, &m.bias_f, m.lo, m.hi, m.out);
                        params = m.w.len() + m.n;
                        if let Some(c) = &m.conv {
                            let geom = conv_geom(&xs, &m.wshape, c).map_err(|e| e.in_node(&n.name))?;
                            macs = (xs[0] * geom.macs()) as u64;
                            let qc = QConv::new(isa, geom, &m.w, m.xq.zp as u8, rq);
                            qscratch_len = qscratch_len.max(qc.scratch_len());
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
                                qscratch_len = qscratch_len.max(mm * b.k4);
                            }
                            macs = (mm * nn * k) as u64;
                            (Kind::QGemm { b, rq, m: mm, k }, format!("int8 gemm ({})", isa.name()))
                        }
                    }
                    Unit::Bin(b) => {
                        let bisa = match bin_isa {
                            Some(i) => i,
                            None => *bin_isa.insert(BinIsa::selected().map_err(Error::Invalid)?),
                        };
                        let rq = Requant::new(&b.scale, &b.bias_i, &b.bias_f, b.lo, b.hi, b.out);
                        let geom = conv_geom(&xs, &b.wshape, &b.conv).map_err(|e| e.in_node(&n.name))?;
                        macs = (xs[0] * geom.macs()) as u64;
                        params = b.w.len() + b.scale.len();
                        let c = BinConv::new(bisa, geom, &b.w, b.mul, rq).map_err(|e| Error::node(&n.name, e))?;
                        bscratch_len = bscratch_len.max(c.scratch_words());
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
                    Unit::Alias { .. } => unreachable!("aliases have no step"),
                }
            } else {
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
                        scratch_len = scratch_len.max(geom.scratch_len());
                        macs = (xs[0] * geom.macs()) as u64;
                        params = w.len() + geom.c_out;
                        let kernel = if geom.is_depthwise() {
                            "f32 depthwise direct"
                        } else if geom.channel_vector() {
                            if geom.is_pointwise() {
                                "f32 1x1 channel-vector gemm"
                            } else {
                                "f32 im2col+channel-vector gemm"
                            }
                        } else if geom.is_pointwise() {
                            "f32 1x1 gemm"
                        } else if geom.is_shifted() {
                            "f32 shifted-rows gemm"
                        } else {
                            "f32 im2col+gemm"
                        };
                        let p = PackedConv::new(geom, w.to_f32_vec(), konst(2).map(|b| b.to_f32_vec()), c.act);
                        (Kind::Conv { p, batch: xs[0] }, kernel)
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
                    Op::Relu | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::HardSwish if all_f32 => {
                        match lowbit_core::passes::as_activation(g, n) {
                            Some(a) => (Kind::Act(a), "f32 eltwise"),
                            None => (Kind::Generic(n.clone()), "reference"),
                        }
                    }
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
                        (
                            Kind::GlobalPool {
                                plane: xs[2..].iter().product(),
                                max: matches!(n.op, Op::GlobalMaxPool),
                            },
                            "f32 pool",
                        )
                    }
                    Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } if qfuse::qparams(g, n).is_some() => {
                        let q = qfuse::qparams(g, n).unwrap();
                        let layout = |v: &str| -> qops::Layout {
                            let sh = ty(v).map(|t| t.1).unwrap_or_default();
                            nhwc(v).then(|| (sh[0], sh[1], sh[2] * sh[3]))
                        };
                        let int_t = if q.signed { DType::I8 } else { DType::U8 };
                        if matches!(n.op, Op::QuantizeLinear { .. }) && ty(&n.inputs[0])?.0 == DType::F32 {
                            qscratch_len = qscratch_len.max(out_shape.iter().product());
                            (Kind::Quantize { q, layout: layout(&n.outputs[0]) }, "quantize")
                        } else if matches!(n.op, Op::DequantizeLinear { .. }) && ty(&n.inputs[0])?.0 == int_t {
                            (Kind::Dequantize { q, layout: layout(&n.inputs[0]) }, "dequantize")
                        } else {
                            (Kind::Generic(n.clone()), "reference")
                        }
                    }
                    _ => (Kind::Generic(n.clone()), "reference"),
                };
                (kind, kernel.to_string())
            };
            infos.push(StepInfo {
                name: n.name.clone(),
                op: n.op.op_type().to_string(),
                kernel,
                out_shape,
                macs,
                params,
                output: n.outputs[0].clone(),
            });
            // Packed steps hold their weights in their own layout: drop the constant operands.
            let mut ins = ins;
            if matches!(kind, Kind::Conv { .. } | Kind::Gemm { .. }) {
                for (slot, name) in n.inputs.iter().enumerate().skip(1) {
                    if g.initializers.contains_key(name) {
                        ins[slot] = None;
                        packed.insert(name.clone());
                    }
                }
            }
            for name in n.inputs.iter().filter(|s| g.initializers.contains_key(*s)) {
                if !matches!(kind, Kind::Conv { .. } | Kind::Gemm { .. }) {
                    const_used.insert(name.clone());
                }
            }
            steps.push(Step { kind, ins, out });
        }
        let inputs = rt_inputs
            .iter()
            .map(|v| {
                let (dt, sh) = ty(&v.name)?;
                Ok((v.name.clone(), dt, sh, offsets[buf_of[&v.name]]))
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = g.outputs.iter().map(|o| Ok((o.name.clone(), operand(&o.name)?))).collect::<Result<Vec<_>>>()?;
        // Weights live once, packed in their step: the graph's copies of constants that only
        // packed steps (and integer units) read are dropped.
        packed
            .extend(fu.units.keys().flat_map(|&i| g.nodes[i].inputs.iter().skip(1)).filter(|s| !s.is_empty()).cloned());
        let outs: std::collections::HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        let unused: Vec<String> =
            packed.iter().filter(|s| !const_used.contains(*s) && !outs.contains(s.as_str())).cloned().collect();
        let mut spec = spec;
        for name in unused {
            spec.graph.initializers.remove(&name);
            spec.dq_consts.remove(&name);
        }
        let threads = opts.threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(Plan {
            steps,
            infos,
            inputs,
            outputs,
            arena: vec![Line([0; 64]); arena_bytes.div_ceil(64)],
            arena_bytes,
            scratch: vec![0.0; scratch_len],
            qscratch: vec![0; qscratch_len],
            bscratch: vec![0; bscratch_len],
            isa,
            notes: fu.notes,
            pool,
            threads,
            spec,
            profile: None,
        })
    }

    /// Starts (or resets) per-step timing.
    pub fn enable_profiling(&mut self) {
        self.profile = Some(vec![0.0; self.steps.len()]);
    }
    /// Accumulated seconds per step (same order as [`Plan::steps`]) since profiling was enabled.
    pub fn profile(&self) -> Option<&[f64]> {
        self.profile.as_deref()
    }
    /// Bytes of the activation arena (all intermediate values, placed by liveness).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }
    /// Bytes of per-plan scratch (im2col).
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.len() * 4 + self.qscratch.len()
    }
    /// Bytes of weights the plan holds: packed kernel weights, per-channel epilogue parameters
    /// and constant operands.
    pub fn weight_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for s in &self.steps {
            total += match &s.kind {
                Kind::Conv { p, .. } => p.weight_bytes(),
                Kind::Gemm { b, prefill, .. } => (b.len() + prefill.as_ref().map_or(0, |p| p.len())) * 4,
                Kind::QConv { c, .. } => c.weight_bytes(),
                Kind::BinConv { c, .. } => c.weight_bytes(),
                Kind::QGemm { b, rq, .. } => b.bytes() + rq.bytes(),
                _ => 0,
            };
            for o in s.ins.iter().flatten() {
                if let Operand::Const(t) = o {
                    if seen.insert(Arc::as_ptr(t)) {
                        total += t.len() * t.dtype().size();
                    }
                }
            }
        }
        total
    }
    /// The integer kernel path the plan uses.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Why quantized-looking nodes of the model run in f32 (empty when everything is integer).
    pub fn int8_notes(&self) -> &[String] {
        &self.notes
    }
    /// Steps running on integer kernels.
    pub fn int8_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    Kind::QConv { .. }
                        | Kind::BinConv { .. }
                        | Kind::QGemm { .. }
                        | Kind::QAdd(_)
                        | Kind::QLut(_)
                        | Kind::QMul { .. }
                        | Kind::QGap { .. }
                        | Kind::QMaxPool { .. }
                )
            })
            .count()
    }
    pub fn steps(&self) -> &[StepInfo] {
        &self.infos
    }
    pub fn macs(&self) -> u64 {
        self.infos.iter().map(|s| s.macs).sum()
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// The specialized, canonicalized graph this plan runs.
    pub fn graph(&self) -> &Graph {
        &self.spec.graph
    }
    pub fn specialized(&self) -> &Specialized {
        &self.spec
    }
    /// Input names, types and shapes the plan was compiled for.
    pub fn input_specs(&self) -> Vec<(String, DType, Vec<usize>)> {
        self.inputs.iter().map(|(n, d, s, _)| (n.clone(), *d, s.clone())).collect()
    }

    /// Runs the plan on `inputs` (in the order of the model's runtime inputs).
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run_observed(inputs, None)
    }

    /// Runs the plan and calls `observe(value_name, shape, values)` for each model input and each
    /// float32 value a step writes (calibration taps these).
    pub fn run_observed(
        &mut self,
        inputs: &[Tensor],
        mut observe: Option<&mut (dyn FnMut(&str, &[usize], &[f32]) + Send)>,
    ) -> Result<Vec<Tensor>> {
        if let Some(f) = observe.as_deref_mut() {
            for ((name, _, _, _), t) in self.inputs.iter().zip(inputs) {
                if let Some(v) = t.as_f32() {
                    f(name, &t.shape, v);
                }
            }
        }
        if inputs.len() != self.inputs.len() {
            return Err(Error::Invalid(format!("model has {} inputs, {} given", self.inputs.len(), inputs.len())));
        }
        for ((name, dt, shape, off), t) in self.inputs.iter().zip(inputs) {
            if t.dtype() != *dt || &t.shape != shape {
                return Err(Error::value(
                    name,
                    format!("expected {} {:?}, got {} {:?}", dt.name(), shape, t.dtype().name(), t.shape),
                ));
            }
            let base = self.arena.as_mut_ptr() as *mut u8;
            // SAFETY: the input buffer at `off` has room for the whole tensor (planned from its shape).
            unsafe { write_data(base.add(*off), &t.data) };
        }
        let base = self.arena.as_mut_ptr() as *mut u8;
        let base = SendPtr(base);
        let steps = &self.steps;
        let scratch = &mut self.scratch;
        let qscratch = &mut self.qscratch;
        let bscratch = &mut self.bscratch;
        let threads = self.threads;
        let mut profile = self.profile.take();
        let infos = &self.infos;
        let mut exec = || -> Result<()> {
            for (i, (s, info)) in steps.iter().zip(infos).enumerate() {
                let t = profile.as_ref().map(|_| std::time::Instant::now());
                // SAFETY: the planner gives every live buffer disjoint bytes.
                unsafe { exec_step(s, base.get(), scratch, qscratch, bscratch, threads) }
                    .map_err(|e| e.in_node(&info.name))?;
                if let (Some(p), Some(t)) = (profile.as_mut(), t) {
                    p[i] += t.elapsed().as_secs_f64();
                }
                if let (Some(f), Operand::Buf { off, dtype: DType::F32, shape, .. }) = (observe.as_deref_mut(), &s.out)
                {
                    let n: usize = shape.iter().product();
                    // SAFETY: the step just wrote this f32 buffer.
                    let v = unsafe { std::slice::from_raw_parts(base.get().add(*off) as *const f32, n) };
                    f(&info.output, shape, v);
                }
            }
            Ok(())
        };
        let r = match &self.pool {
            Some(p) => p.install(|| with_spinning_helpers(&mut exec)),
            None => exec(),
        };
        drop(exec);
        self.profile = profile;
        r?;
        let base = self.arena.as_ptr() as *const u8;
        Ok(self.outputs.iter().map(|(_, o)| unsafe { read_operand(base, o) }).collect())
    }
}

/// Runs `f` on the current pool thread while every other thread of the pool busy-waits for work
/// (`rayon::yield_now`) instead of going to sleep between parallel steps. A plan run is a chain of
/// short parallel regions (hundreds per MobileNet inference); waking a sleeping worker for each of
/// them costs more than the regions' own imbalance. `LOWBIT_SPIN=0` turns it off.
fn with_spinning_helpers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || *OFF.get_or_init(|| std::env::var("LOWBIT_SPIN").is_ok_and(|v| v == "0")) {
        return f();
    }
    let done = AtomicBool::new(false);
    let me = rayon::current_thread_index();
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                // A helper job picked up by the running thread itself (while it waits inside a
                // parallel step) must not spin there: it would never get back to its own work.
                if rayon::current_thread_index() == me {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut u8 {
        self.0
    }
}

fn shape_of(o: &Operand) -> Vec<usize> {
    match o {
        Operand::Buf { shape, .. } => shape.clone(),
        Operand::Const(t) => t.shape.clone(),
    }
}

unsafe fn write_data(dst: *mut u8, d: &Data) {
    let (src, bytes) = match d {
        Data::F32(v) => (v.as_ptr() as *const u8, v.len() * 4),
        Data::I64(v) => (v.as_ptr() as *const u8, v.len() * 8),
        Data::I32(v) => (v.as_ptr() as *const u8, v.len() * 4),
        Data::I8(v) => (v.as_ptr() as *const u8, v.len()),
        Data::U8(v) => (v.as_ptr(), v.len()),
        Data::Bool(v) => (v.as_ptr() as *const u8, v.len()),
    };
    std::ptr::copy_nonoverlapping(src, dst, bytes);
}

unsafe fn read_operand(base: *const u8, o: &Operand) -> Tensor {
    match o {
        Operand::Const(t) => (**t).clone(),
        Operand::Buf { off, dtype, shape, nhwc } => {
            let n: usize = shape.iter().product();
            let mut p = base.add(*off);
            let mut tmp = vec![];
            if *nhwc {
                tmp = vec![0u8; n];
                qops::nhwc_to_nchw(std::slice::from_raw_parts(p, n), shape[0], shape[1], shape[2] * shape[3], &mut tmp);
                p = tmp.as_mut_ptr();
            }
            let data = match dtype {
                DType::F32 => Data::F32(std::slice::from_raw_parts(p as *const f32, n).to_vec()),
                DType::I64 => Data::I64(std::slice::from_raw_parts(p as *const i64, n).to_vec()),
                DType::I32 => Data::I32(std::slice::from_raw_parts(p as *const i32, n).to_vec()),
                DType::I8 => Data::I8(std::slice::from_raw_parts(p as *const i8, n).to_vec()),
                DType::U8 => Data::U8(std::slice::from_raw_parts(p, n).to_vec()),
                DType::Bool => Data::Bool(std::slice::from_raw_parts(p, n).iter().map(|&b| b != 0).collect()),
            };
            drop(tmp);
            Tensor { shape: shape.clone(), data }
        }
    }
}

unsafe fn f32_in<'a>(base: *mut u8, o: &'a Operand) -> &'a [f32] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts(base.add(*off) as *const f32, o.len()),
        Operand::Const(t) => t.as_f32().expect("planned as f32"),
    }
}

unsafe fn bytes_in<'a>(base: *mut u8, o: &'a Operand) -> &'a [u8] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts(base.add(*off), o.len()),
        Operand::Const(t) => match &t.data {
            Data::U8(v) => v,
            Data::I8(v) => std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()),
            _ => unreachable!("planned as bytes"),
        },
    }
}

unsafe fn bytes_out<'a>(base: *mut u8, o: &Operand) -> &'a mut [u8] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts_mut(base.add(*off), o.len()),
        Operand::Const(_) => unreachable!("outputs are buffers"),
    }
}

unsafe fn f32_out<'a>(base: *mut u8, o: &Operand) -> &'a mut [f32] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts_mut(base.add(*off) as *mut f32, o.len()),
        Operand::Const(_) => unreachable!("outputs are buffers"),
    }
}

unsafe fn exec_step(
    s: &Step,
    base: *mut u8,
    scratch: &mut [f32],
    qscratch: &mut [u8],
    bscratch: &mut [u64],
    threads: usize,
) -> Result<()> {
    let x = || f32_in(base, s.ins[0].as_ref().unwrap());
    match &s.kind {
        Kind::Conv { p, batch } => {
            let xs = x();
            let out = f32_out(base, &s.out);
            let (isz, osz) = (p.geom.c_in * p.geom.h * p.geom.w, p.geom.c_out * p.geom.oh * p.geom.ow);
            for b in 0..*batch {
                f32conv::conv2d(p, &xs[b * isz..(b + 1) * isz], &mut out[b * osz..(b + 1) * osz], scratch, threads);
            }
        }
        Kind::Gemm { m, n, k, b, prefill, trans_a, act } => {
            let a = x();
            let out = f32_out(base, &s.out);
            if let Some(p) = prefill {
                out.copy_from_slice(p);
            }
            if *m == 1 {
                // `b` is in pack_gemv's panel layout; a batch-1 prefill is one row of n.
                f32gemm::gemv_bias_act(a, b, *k, *n, prefill.as_deref(), *act, out, threads);
                return Ok(());
            }
            let (lrs, lcs) = if *trans_a { (1, *m as isize) } else { (*k as isize, 1) };
            f32conv::sgemm(
                *m,
                *n,
                *k,
                out.as_mut_ptr(),
                *n as isize,
                a.as_ptr(),
                lrs,
                lcs,
                b.as_ptr(),
                *n as isize,
                1,
                prefill.is_some(),
                threads,
            );
            eltwise::apply_act(*act, out);
        }
        Kind::Act(a) => {
            let out = f32_out(base, &s.out);
            out.copy_from_slice(x());
            eltwise::apply_act_par(*a, out, threads);
        }
        Kind::Binary { op, bc } => {
            let b = f32_in(base, s.ins[1].as_ref().unwrap());
            eltwise::binary_par(*op, bc, x(), b, f32_out(base, &s.out), threads);
        }
        Kind::Pool { g, planes, max, cip, pb, pr } => {
            pool::pool2d(g, *planes, *max, *cip, *pb, *pr, x(), f32_out(base, &s.out), threads);
        }
        Kind::GlobalPool { plane, max } => pool::global_pool(x(), *plane, *max, f32_out(base, &s.out)),
        Kind::Quantize { q, layout } => {
            let xs = x();
            qops::quantize(xs, *q, *layout, bytes_out(base, &s.out), qscratch);
        }
        Kind::Dequantize { q, layout } => {
            let out = f32_out(base, &s.out);
            let src = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::dequantize(src, *q, *layout, out);
        }
        Kind::QConv { c, batch } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let g = &c.geom;
            let (isz, osz) = (g.h * g.w * g.c_in, g.oh * g.ow * g.c_out);
            let esz = if c.out() == int8::Out::F32 { 4 } else { 1 };
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            for b in 0..*batch {
                c.run(&xs[b * isz..(b + 1) * isz], OutPtr(base.add(off + b * osz * esz)), qscratch, threads);
            }
        }
        Kind::BinConv { c, batch, zx } => {
            let g = &c.geom;
            let osz = g.oh * g.ow * g.c_out;
            let esz = if c.out() == int8::Out::F32 { 4 } else { 1 };
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            let pixels = g.h * g.w;
            for b in 0..*batch {
                let o = OutPtr(base.add(off + b * osz * esz));
                match zx {
                    Some(z) => {
                        let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
                        c.run_u8(&xs[b * pixels * g.c_in..(b + 1) * pixels * g.c_in], *z, o, bscratch, threads);
                    }
                    None => {
                        let xs = f32_in(base, s.ins[0].as_ref().unwrap());
                        c.run_f32_nchw(&xs[b * pixels * g.c_in..(b + 1) * pixels * g.c_in], o, bscratch, threads);
                    }
                }
            }
        }
        Kind::QGemm { b, rq, m, k } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            let (a, lda) = if k % 4 == 0 {
                (xs, *k)
            } else {
                let a = &mut qscratch[..m * b.k4];
                for i in 0..*m {
                    a[i * b.k4..i * b.k4 + k].copy_from_slice(&xs[i * k..(i + 1) * k]);
                    a[i * b.k4 + k..(i + 1) * b.k4].fill(0);
                }
                (&*a, b.k4)
            };
            int8::gemm(*m, a.as_ptr(), lda, b, rq, OutPtr(base.add(*off)), b.n, threads);
        }
        Kind::QAdd(p) => {
            let a = bytes_in(base, s.ins[0].as_ref().unwrap());
            let b = bytes_in(base, s.ins[1].as_ref().unwrap());
            let o = bytes_out(base, &s.out);
            if threads > 1 && o.len() >= 1 << 15 {
                use rayon::prelude::*;
                let chunk = o.len().div_ceil(threads * 4);
                o.par_chunks_mut(chunk).enumerate().for_each(|(i, oc)| {
                    let r = i * chunk..i * chunk + oc.len();
                    qops::add(&a[r.clone()], &b[r], p, oc);
                });
            } else {
                qops::add(a, b, p, o);
            }
        }
        Kind::QLut(table) => {
            let x = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::lut(x, table, bytes_out(base, &s.out));
        }
        Kind::QMul { p, gate } => {
            let a = bytes_in(base, s.ins[0].as_ref().unwrap());
            let b = bytes_in(base, s.ins[1].as_ref().unwrap());
            let o = bytes_out(base, &s.out);
            match *gate {
                None => qops::mul(a, b, p, o),
                Some((n, plane, c)) => qops::mul_channels(a, b, n, plane, c, p, o),
            }
        }
        Kind::QGap { n, plane, c, qi, qo } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::global_avg(xs, *n, *plane, *c, *qi, *qo, bytes_out(base, &s.out));
        }
        Kind::QMaxPool { g, n, signed } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::max_pool(g, *n, *signed, xs, bytes_out(base, &s.out));
        }
        Kind::Generic(node) => {
            let owned: Vec<Option<Tensor>> = s.ins.iter().map(|o| o.as_ref().map(|o| read_operand(base, o))).collect();
            let refs: Vec<Option<&Tensor>> = owned.iter().map(|o| o.as_ref()).collect();
            let outs = reference::eval(node, &refs)?;
            let t = &outs[0];
            if let Operand::Buf { off, dtype, shape, .. } = &s.out {
                if t.dtype() != *dtype || &t.shape != shape {
                    return Err(Error::Invalid(format!(
                        "produced {} {:?}, planned {} {:?}",
                        t.dtype().name(),
                        t.shape,
                        dtype.name(),
                        shape
                    )));
                }
                write_data(base.add(*off), &t.data);
            }
        }
    }
    Ok(())
}
