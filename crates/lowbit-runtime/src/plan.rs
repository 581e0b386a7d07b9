//! The compiled plan: steps with chosen kernels and packed weights, value buffers placed in one
//! arena by liveness, and the executor.

use std::collections::HashMap;
use std::sync::Arc;

use lowbit_core::{Act, DType, Data, Error, Graph, Node, Op, Result, Tensor};
use lowbit_kernels::eltwise::{self, BinOp, Broadcast};
use lowbit_kernels::f32conv::{self, ConvGeom, PackedConv};
use lowbit_kernels::f32gemm;
use lowbit_kernels::{pool, reference};

use crate::memory::{self, Interval};
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
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { threads: 1, optimize: true }
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
    /// Per-tensor QuantizeLinear f32 -> u8/i8.
    Quantize {
        scale: f32,
        zp: i32,
        signed: bool,
    },
    /// Per-tensor DequantizeLinear u8/i8 -> f32.
    Dequantize {
        scale: f32,
        zp: i32,
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
            matches!(
                n.op,
                Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity
            ) && !g.initializers.contains_key(&n.inputs[0])
        };
        // Step index of each node (aliases share the index of the next real step).
        let mut step_no = 0usize;
        let mut node_step = vec![0usize; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
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
            Ok(Operand::Buf { off: offsets[b], dtype, shape })
        };

        let mut steps = vec![];
        let mut infos = vec![];
        let mut scratch_len = 0usize;
        for n in g.nodes.iter() {
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
                    (Kind::Gemm { m, n: nn, k, b, prefill, trans_a: *trans_a, act: *act }, "f32 gemm")
                }
                Op::MatMul if all_f32 && in_shape(0).len() >= 2 && konst(1).is_some_and(|b| b.rank() == 2) => {
                    let bt = konst(1).unwrap();
                    let (k, nn) = (bt.shape[0], bt.shape[1]);
                    let m = in_shape(0).iter().product::<usize>() / k;
                    macs = (m * nn * k) as u64;
                    params = bt.len();
                    (
                        Kind::Gemm { m, n: nn, k, b: bt.to_f32_vec(), prefill: None, trans_a: false, act: Act::None },
                        "f32 gemm",
                    )
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
                    let win = lowbit_core::shape::window(
                        &xs[2..],
                        &p.kernel_shape,
                        &p.strides,
                        &p.dilations,
                        &p.pads,
                        p.auto_pad,
                        p.ceil_mode,
                    )
                    .map_err(|e| e.in_node(&n.name))?;
                    let geom = ConvGeom {
                        c_in: xs[1],
                        h: xs[2],
                        w: xs[3],
                        c_out: xs[1],
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
                    let max = matches!(n.op, Op::MaxPool(_));
                    let kind = Kind::Pool {
                        g: geom,
                        planes: xs[0] * xs[1],
                        max,
                        cip: p.count_include_pad,
                        pb: win.pads_end[0],
                        pr: win.pads_end[1],
                    };
                    (kind, "f32 pool")
                }
                Op::GlobalAveragePool | Op::GlobalMaxPool if all_f32 => {
                    let xs = in_shape(0);
                    (
                        Kind::GlobalPool { plane: xs[2..].iter().product(), max: matches!(n.op, Op::GlobalMaxPool) },
                        "f32 pool",
                    )
                }
                Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. }
                    if konst(1).is_some_and(|t| t.len() == 1)
                        && n.input(2).is_some_and(|z| {
                            g.initializers
                                .get(z)
                                .is_some_and(|t| t.len() == 1 && matches!(t.dtype(), DType::U8 | DType::I8))
                        }) =>
                {
                    let scale = konst(1).unwrap().to_f32_vec()[0];
                    let z = konst(2).unwrap();
                    let signed = z.dtype() == DType::I8;
                    let zp = z.to_i64_vec()[0] as i32;
                    let q = matches!(n.op, Op::QuantizeLinear { .. });
                    let in_ok = if q { ty(&n.inputs[0])?.0 == DType::F32 } else { ty(&n.inputs[0])?.0 == z.dtype() };
                    if in_ok {
                        if q {
                            (Kind::Quantize { scale, zp, signed }, "quantize")
                        } else {
                            (Kind::Dequantize { scale, zp, signed }, "dequantize")
                        }
                    } else {
                        (Kind::Generic(n.clone()), "reference")
                    }
                }
                _ => (Kind::Generic(n.clone()), "reference"),
            };
            infos.push(StepInfo {
                name: n.name.clone(),
                op: n.op.op_type().to_string(),
                kernel: kernel.to_string(),
                out_shape,
                macs,
                params,
                output: n.outputs[0].clone(),
            });
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
        self.scratch.len() * 4
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
        let threads = self.threads;
        let mut profile = self.profile.take();
        let infos = &self.infos;
        let mut exec = || -> Result<()> {
            for (i, (s, info)) in steps.iter().zip(infos).enumerate() {
                let t = profile.as_ref().map(|_| std::time::Instant::now());
                // SAFETY: the planner gives every live buffer disjoint bytes.
                unsafe { exec_step(s, base.get(), scratch, threads) }.map_err(|e| e.in_node(&info.name))?;
                if let (Some(p), Some(t)) = (profile.as_mut(), t) {
                    p[i] += t.elapsed().as_secs_f64();
                }
                if let (Some(f), Operand::Buf { off, dtype: DType::F32, shape }) = (observe.as_deref_mut(), &s.out) {
                    let n: usize = shape.iter().product();
                    // SAFETY: the step just wrote this f32 buffer.
                    let v = unsafe { std::slice::from_raw_parts(base.get().add(*off) as *const f32, n) };
                    f(&info.output, shape, v);
                }
            }
            Ok(())
        };
        let r = match &self.pool {
            Some(p) => p.install(&mut exec),
            None => exec(),
        };
        drop(exec);
        self.profile = profile;
        r?;
        let base = self.arena.as_ptr() as *const u8;
        Ok(self.outputs.iter().map(|(_, o)| unsafe { read_operand(base, o) }).collect())
    }
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
        Operand::Buf { off, dtype, shape } => {
            let n: usize = shape.iter().product();
            let p = base.add(*off);
            let data = match dtype {
                DType::F32 => Data::F32(std::slice::from_raw_parts(p as *const f32, n).to_vec()),
                DType::I64 => Data::I64(std::slice::from_raw_parts(p as *const i64, n).to_vec()),
                DType::I32 => Data::I32(std::slice::from_raw_parts(p as *const i32, n).to_vec()),
                DType::I8 => Data::I8(std::slice::from_raw_parts(p as *const i8, n).to_vec()),
                DType::U8 => Data::U8(std::slice::from_raw_parts(p, n).to_vec()),
                DType::Bool => Data::Bool(std::slice::from_raw_parts(p, n).iter().map(|&b| b != 0).collect()),
            };
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

unsafe fn f32_out<'a>(base: *mut u8, o: &Operand) -> &'a mut [f32] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts_mut(base.add(*off) as *mut f32, o.len()),
        Operand::Const(_) => unreachable!("outputs are buffers"),
    }
}

unsafe fn exec_step(s: &Step, base: *mut u8, scratch: &mut [f32], threads: usize) -> Result<()> {
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
            if *m == 1 && prefill.as_ref().is_none_or(|p| p.len() == *n) {
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
        Kind::Quantize { scale, zp, signed } => {
            let xs = x();
            let Operand::Buf { off, .. } = &s.out else { unreachable!() };
            let (lo, hi) = if *signed { (-128f32, 127f32) } else { (0f32, 255f32) };
            let o = std::slice::from_raw_parts_mut(base.add(*off), xs.len());
            let z = *zp as f32;
            for (d, &v) in o.iter_mut().zip(xs) {
                let q = ((v / scale).round_ties_even() + z).clamp(lo, hi);
                *d = if *signed { q as i8 as u8 } else { q as u8 };
            }
        }
        Kind::Dequantize { scale, zp, signed } => {
            let inp = s.ins[0].as_ref().unwrap();
            let out = f32_out(base, &s.out);
            let src: &[u8] = match inp {
                Operand::Buf { off, .. } => std::slice::from_raw_parts(base.add(*off), out.len()),
                Operand::Const(t) => match &t.data {
                    Data::U8(v) => v,
                    Data::I8(v) => std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()),
                    _ => unreachable!(),
                },
            };
            for (d, &q) in out.iter_mut().zip(src) {
                let qi = if *signed { q as i8 as i32 } else { q as i32 };
                *d = (qi - zp) as f32 * scale;
            }
        }
        Kind::Generic(node) => {
            let owned: Vec<Option<Tensor>> = s.ins.iter().map(|o| o.as_ref().map(|o| read_operand(base, o))).collect();
            let refs: Vec<Option<&Tensor>> = owned.iter().map(|o| o.as_ref()).collect();
            let outs = reference::eval(node, &refs)?;
            let t = &outs[0];
            if let Operand::Buf { off, dtype, shape } = &s.out {
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
