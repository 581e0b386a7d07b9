//! The compiled plan: steps with chosen kernels and packed weights, value buffers placed in one
//! arena by liveness ([`crate::layout`]), lowered node by node ([`crate::lower`]) and run by
//! [`crate::exec`]. A [`Plan`] is immutable once compiled; each run takes a [`State`] (its own
//! arena and scratch), so one plan serves several threads or requests at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lowbit_core::{DType, Error, Graph, Result, Tensor};
use lowbit_kernels::isa::{trace, BinIsa, Isa, Paths};

use crate::exec::{with_spinning_helpers, State, StateSizes};
use crate::layout::{Layout, Values};
use crate::lower::{lower_node, lower_unit};
use crate::qfuse;
use crate::specialize::{specialize, Specialized};
use crate::step::{Operand, Step, StepInfo};

/// How to compile a plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Worker threads for kernels (1 = run on the calling thread).
    pub threads: usize,
    /// Run the canonicalization passes (BatchNorm folding, activation fusion, ...).
    pub optimize: bool,
    /// Run QDQ units on integer kernels (off: simulate them in f32).
    pub int8: bool,
    /// Kernel paths; `None` = [`Paths::selected`] (`LOWBIT_ISA`, `LOWBIT_BIN_ISA`, else the best
    /// this CPU has).
    pub paths: Option<Paths>,
    /// Fuse integer expansion + depthwise convolution pairs into one step (bit-exact either way;
    /// default on, `LOWBIT_FUSE=0` turns it off for comparisons).
    pub fuse: bool,
    /// Stride-1 3x3 convolutions as Winograd F(4x4, 3x3), integer (bit-exact either way) and f32
    /// (equal up to rounding): `Some(false)` never (the memory-lean plan: transformed weights take
    /// 8x the bytes of int8 3x3 weights, 4x those of f32 ones), `Some(true)` wherever the geometry
    /// allows, `None` where it pays on the path. Default from `LOWBIT_WINOGRAD=0|1`, else `None`.
    pub winograd: Option<bool>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        let fuse = std::env::var("LOWBIT_FUSE").map_or(true, |v| v != "0");
        let winograd = lowbit_kernels::int8::conv::wino_mode();
        PlanOptions { threads: 1, optimize: true, int8: true, paths: None, fuse, winograd }
    }
}

impl PlanOptions {
    /// The paths of one integer path (and the f32 and binary paths of the same width).
    pub fn with_isa(self, isa: Isa) -> PlanOptions {
        PlanOptions { paths: Some(Paths::for_int8(isa)), ..self }
    }
    /// The same with another binary path.
    pub fn with_bin_isa(self, b: BinIsa) -> PlanOptions {
        let p = self.paths.unwrap_or_else(Paths::selected_or_scalar);
        PlanOptions { paths: Some(Paths { binary: b, ..p }), ..self }
    }
}

/// A model compiled for fixed input shapes. Create with [`Plan::compile`], execute with
/// [`Plan::run`] (or [`Plan::run_with`] on a [`State`] of your own).
pub struct Plan {
    steps: Vec<Step>,
    infos: Vec<StepInfo>,
    inputs: Vec<(String, DType, Vec<usize>, usize)>,
    outputs: Vec<(String, Operand)>,
    sizes: StateSizes,
    /// Run states kept for reuse by [`Plan::run`] (one per concurrent caller).
    states: Mutex<Vec<State>>,
    paths: Paths,
    notes: Vec<String>,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    spec: Specialized,
    /// Accumulated seconds per step when profiling is on.
    profile: Mutex<Option<Vec<f64>>>,
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
        let mut spec = specialize(graph, &named, opts.optimize)?;
        let fu = qfuse::analyze(&spec, opts.int8);
        let mut paths = match opts.paths {
            Some(p) => p,
            None => Paths::selected().map_err(Error::Invalid)?,
        };
        if !paths.supported() {
            return Err(Error::Invalid(format!(
                "kernel paths f32 {}, integer {}, binary {} are not all supported by this CPU",
                paths.f32.name(),
                paths.int8.name(),
                paths.binary.name()
            )));
        }
        if fu.units.is_empty() {
            // No integer step: report the portable integer path (nothing runs on it).
            paths.int8 = Isa::Scalar;
        }
        let items = fu.interleave(&spec.graph);
        let v = Values { spec: &spec, int_vals: &fu.int_vals };
        let nodes: Vec<_> = items.iter().map(|(n, _)| n.clone()).collect();
        let layout = Layout::plan(&v, &rt_inputs, &nodes)?;
        let g = &spec.graph;
        let (mut steps, mut infos, mut sizes) =
            (vec![], vec![], StateSizes { arena_bytes: layout.arena_bytes, ..Default::default() });
        // Constants that packed steps hold in their own layout, and those other steps read.
        let (mut packed, mut const_used) = (HashSet::new(), HashSet::new());
        for (n, unit) in items.iter().filter(|(n, _)| !v.is_alias(n)) {
            let mut ins: Vec<Option<Operand>> = n
                .inputs
                .iter()
                .map(|s| if s.is_empty() { Ok(None) } else { layout.operand(&v, s).map(Some) })
                .collect::<Result<_>>()?;
            let out = layout.operand(&v, &n.outputs[0])?;
            let l = match unit {
                Some(u) => lower_unit(&v, n, u, paths, opts.winograd)?,
                None => lower_node(&v, n, &ins, paths, opts.winograd)?,
            };
            sizes.scratch = sizes.scratch.max(l.scratch);
            sizes.qscratch = sizes.qscratch.max(l.qscratch);
            sizes.bscratch = sizes.bscratch.max(l.bscratch);
            for (slot, name) in n.inputs.iter().enumerate().filter(|(_, s)| g.initializers.contains_key(*s)) {
                if l.kind.packs_weights() && slot > 0 {
                    ins[slot] = None;
                    packed.insert(name.clone());
                } else if !l.kind.packs_weights() {
                    const_used.insert(name.clone());
                }
            }
            let out_shape = v.ty(&n.outputs[0])?.1;
            let (name, op, output) = (n.name.clone(), n.op.op_type().to_string(), n.outputs[0].clone());
            infos.push(StepInfo { name, op, kernel: l.kernel, out_shape, macs: l.macs, params: l.params, output });
            steps.push(Step { kind: l.kind, ins, out });
        }
        let outputs =
            g.outputs.iter().map(|o| Ok((o.name.clone(), layout.operand(&v, &o.name)?))).collect::<Result<Vec<_>>>()?;
        if opts.fuse {
            crate::blocks::fuse_expand_dw(&mut steps, &mut infos, &outputs, paths.int8.name());
            crate::blocks::fuse_conv_quantize(&mut steps, &mut infos, &outputs);
        }
        let inputs = rt_inputs
            .iter()
            .map(|i| {
                let (dt, sh) = v.ty(&i.name)?;
                Ok((i.name.clone(), dt, sh, layout.offset(&i.name)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // Weights live once, packed in their step: the graph's copies of constants that only
        // packed steps (and integer units) read are dropped.
        packed
            .extend(fu.units.keys().flat_map(|&i| g.nodes[i].inputs.iter().skip(1)).filter(|s| !s.is_empty()).cloned());
        let outs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        let unused: Vec<String> =
            packed.iter().filter(|s| !const_used.contains(*s) && !outs.contains(s.as_str())).cloned().collect();
        for name in unused {
            spec.graph.initializers.remove(&name);
            spec.dq_consts.remove(&name);
        }
        let threads = opts.threads.max(1);
        let pool = match threads {
            1 => None,
            t => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?,
            ),
        };
        // Everything one run allocates, checked against the memory limit before it is allocated.
        let run_bytes = [(sizes.scratch, 4), (sizes.qscratch, 1), (sizes.bscratch, 8)]
            .iter()
            .try_fold(sizes.arena_bytes, |a, &(n, b)| a.checked_add(n.checked_mul(b)?))
            .unwrap_or(usize::MAX);
        lowbit_core::limits::check_memory("one run of the plan (activations and scratch)", run_bytes)?;
        let states = Mutex::new(vec![State::new(&sizes)]);
        let (notes, profile) = (fu.notes, Mutex::new(None));
        Ok(Plan { steps, infos, inputs, outputs, sizes, states, paths, notes, pool, threads, spec, profile })
    }
}

impl Plan {
    /// Starts (or resets) per-step timing.
    pub fn enable_profiling(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(vec![0.0; self.steps.len()]);
    }
    /// Accumulated seconds per step (same order as [`Plan::steps`]) since profiling was enabled.
    pub fn profile(&self) -> Option<Vec<f64>> {
        self.profile.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Bytes of the activation arena (all intermediate values, placed by liveness).
    pub fn arena_bytes(&self) -> usize {
        self.sizes.arena_bytes
    }
    /// Bytes of per-run scratch (im2col, padded inputs).
    pub fn scratch_bytes(&self) -> usize {
        self.sizes.scratch * 4 + self.sizes.qscratch
    }
    /// Bytes of weights the plan holds: packed kernel weights, per-channel epilogue parameters
    /// and constant operands.
    pub fn weight_bytes(&self) -> usize {
        let mut seen = HashSet::new();
        let mut total = 0;
        for s in &self.steps {
            total += s.kind.weight_bytes();
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
        self.paths.int8
    }
    /// The kernel paths of every family.
    pub fn paths(&self) -> Paths {
        self.paths
    }
    /// Why quantized-looking nodes of the model run in f32 (empty when everything is integer).
    pub fn int8_notes(&self) -> &[String] {
        &self.notes
    }
    /// Steps running on integer kernels.
    pub fn int8_steps(&self) -> usize {
        self.steps.iter().filter(|s| s.kind.is_integer()).count()
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

    /// A fresh run state (arena and scratch) for [`Plan::run_with`].
    pub fn new_state(&self) -> State {
        State::new(&self.sizes)
    }

    /// Runs the plan on `inputs` (in the order of the model's runtime inputs). Callers on several
    /// threads at once each get their own state (kept for reuse).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run_observed(inputs, None)
    }

    /// Runs the plan and calls `observe(value_name, shape, values)` for each model input and each
    /// float32 value a step writes (calibration taps these).
    pub fn run_observed(
        &self,
        inputs: &[Tensor],
        observe: Option<&mut (dyn FnMut(&str, &[usize], &[f32]) + Send)>,
    ) -> Result<Vec<Tensor>> {
        let popped = self.states.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut state = popped.unwrap_or_else(|| self.new_state());
        let r = self.run_with(&mut state, inputs, observe);
        self.states.lock().unwrap_or_else(|e| e.into_inner()).push(state);
        r
    }

    /// [`Plan::run_observed`] on a state of the caller's ([`Plan::new_state`]).
    pub fn run_with(
        &self,
        state: &mut State,
        inputs: &[Tensor],
        observe: Option<&mut (dyn FnMut(&str, &[usize], &[f32]) + Send)>,
    ) -> Result<Vec<Tensor>> {
        self.run_impl(state, inputs, observe, None)
    }

    /// Runs once and returns, per step, its kernel calls by path ([`trace`]): what tests and
    /// `lowbit bench` use to show that a forced path reached every step. Complete for plans with
    /// one thread (calls made on other pool threads are not seen).
    pub fn run_traced(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<trace::Counts>)> {
        let mut state = self.new_state();
        let mut counts = vec![];
        let out = self.run_impl(&mut state, inputs, None, Some(&mut counts))?;
        Ok((out, counts))
    }

    fn run_impl(
        &self,
        state: &mut State,
        inputs: &[Tensor],
        mut observe: Option<&mut (dyn FnMut(&str, &[usize], &[f32]) + Send)>,
        mut traces: Option<&mut Vec<trace::Counts>>,
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
        for ((name, dt, shape, _), t) in self.inputs.iter().zip(inputs) {
            if t.dtype() != *dt || &t.shape != shape {
                return Err(Error::value(
                    name,
                    format!("expected {} {:?}, got {} {:?}", dt.name(), shape, t.dtype().name(), t.shape),
                ));
            }
        }
        let offs: Vec<(usize, &Tensor)> = self.inputs.iter().map(|i| i.3).zip(inputs).collect();
        state.write_inputs(&offs);
        let mut times = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| vec![0.0; p.len()]);
        let (steps, infos, paths, threads) = (&self.steps, &self.infos, self.paths, self.threads);
        let mut exec = || -> Result<()> {
            if traces.is_some() {
                trace::take();
            }
            let mut t0 = std::time::Instant::now();
            state.exec(steps, paths, threads, infos, &mut |i, base| {
                if let Some(t) = times.as_mut() {
                    t[i] += t0.elapsed().as_secs_f64();
                }
                if let Some(tr) = traces.as_deref_mut() {
                    tr.push(trace::take());
                }
                if let (Some(f), Operand::Buf { off, dtype: DType::F32, shape, .. }) =
                    (observe.as_deref_mut(), &steps[i].out)
                {
                    let n: usize = shape.iter().product();
                    // SAFETY: the step just wrote this f32 buffer of the arena at `base`.
                    let v = unsafe { std::slice::from_raw_parts(base.add(*off) as *const f32, n) };
                    f(&infos[i].output, shape, v);
                }
                t0 = std::time::Instant::now();
            })
        };
        let r = match &self.pool {
            Some(p) => p.install(|| with_spinning_helpers(&mut exec)),
            None => exec(),
        };
        if let Some(t) = times {
            if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                p.iter_mut().zip(&t).for_each(|(a, b)| *a += b);
            }
        }
        r?;
        Ok(self.outputs.iter().map(|(_, o)| state.read(o)).collect())
    }
}
