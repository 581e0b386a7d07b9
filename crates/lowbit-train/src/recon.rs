//! Reconstruction-based post-training quantization over blocks: BRECQ (Li et al. 2021) and QDrop
//! (Wei et al. 2022), after the activation ranges and weight scales are chosen.
//!
//! The deployable float graph is cut into *blocks* ([`blocks`]): a block starts and ends at a
//! value that is the only one alive between its producer and the next node (a residual block,
//! or an inverted residual with its shortcut), and runs of single-layer pieces (a stem, an
//! inverted residual without shortcut) are merged up to three layers. Block by block, in order:
//!
//! - every quantized weight gets AdaRound's parametrisation, `w = s·clamp(floor(w/s) + h(V),
//!   qmin, qmax)` with the rectified sigmoid `h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)` (ζ = 1.1,
//!   γ = −0.1), `V` initialised so that `h(V) = frac(w/s)` (the float weight);
//! - the block's activations keep their calibrated steps (BRECQ) or learn them with LSQ;
//! - the loss is the block output's squared error against the float block's output on the float
//!   input (summed over channels, averaged over images and positions) plus, after a warm-up, the
//!   rounding regulariser `λ Σ (1 − |2h(V) − 1|^β)` with β annealed 20 → 2;
//! - the block reads the *quantized* model's input (the blocks before it already hardened), so
//!   it compensates their error. QDrop: the block input is the quantized input or the float one
//!   element by element (probability 1/2 each), and every activation quantizer inside the block
//!   quantizes each element with probability 1/2 (the rest pass in float), which flattens the
//!   loss surface the learned rounding must generalise over; activation steps learn (LSQ).
//!
//! After its iterations a block's rounding is hardened (`V >= 0` rounds up) and its quantized
//! output over the calibration images becomes the next block's input. The result is an ordinary
//! QDQ model: the learned integers, steps and biases replace the nearest ones. Biases start from
//! the file's (bias correction for rounding to nearest) and learn with the rounding.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Instant;

use burn::optim::{AdamW, AdamWConfig, Optimizer};
use burn::tensor::{Tensor, TensorData};
use lowbit_core::Graph;
use lowbit_quant::calibrate::Stats;
use lowbit_quant::qdq::{build_qdq, QdqConfig, QdqModel};
use lowbit_quant::scheme::QScheme;

use crate::fq::Range as QRange;
use crate::model::{host, Model, QatMethod, Quantizer, V};
pub use crate::softround::{Drop, SoftRound, GAMMA, ZETA};
use crate::{Error, Result, Rng};

/// A piece of the graph reconstructed at once.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Node (= model step) indices.
    pub steps: Range<usize>,
    /// The one value the block reads and the one it leaves alive.
    pub input: String,
    pub output: String,
    /// Its quantized compute layers (node names).
    pub layers: Vec<String>,
}

/// Cuts `g` (one input) into blocks (see the module documentation); `quantized`: the compute
/// layers whose weights are learned.
pub fn blocks(g: &Graph, quantized: &HashSet<String>) -> Vec<Block> {
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for x in n.inputs.iter().filter(|x| !x.is_empty()) {
            last_use.insert(x.as_str(), i);
        }
    }
    for o in &g.outputs {
        last_use.insert(o.name.as_str(), usize::MAX);
    }
    let first = g.runtime_inputs().first().map(|v| v.name.clone()).unwrap_or_default();
    let mut live: HashSet<&str> = g.runtime_inputs().iter().map(|v| v.name.as_str()).collect();
    let mut segs: Vec<Block> = vec![];
    let (mut start, mut input) = (0usize, first);
    for (i, n) in g.nodes.iter().enumerate() {
        for o in &n.outputs {
            if last_use.contains_key(o.as_str()) {
                live.insert(o.as_str());
            }
        }
        for x in &n.inputs {
            if last_use.get(x.as_str()) == Some(&i) {
                live.remove(x.as_str());
            }
        }
        let out = n.outputs.first().map(|s| s.as_str()).unwrap_or("");
        if live.len() == 1 && live.contains(out) {
            let layers =
                g.nodes[start..=i].iter().filter(|n| quantized.contains(&n.name)).map(|n| n.name.clone()).collect();
            segs.push(Block { steps: start..i + 1, input: input.clone(), output: out.to_string(), layers });
            start = i + 1;
            input = out.to_string();
        }
    }
    if start < g.nodes.len() {
        if let Some(last) = segs.last_mut() {
            last.steps.end = g.nodes.len();
            last.layers.extend(g.nodes[start..].iter().filter(|n| quantized.contains(&n.name)).map(|n| n.name.clone()));
        }
    }
    // Merge: a piece with two or more layers (a residual block) stands alone; runs of smaller
    // pieces join up to three layers.
    let mut out: Vec<Block> = vec![];
    let mut cur: Option<Block> = None;
    let join = |a: Option<Block>, b: Block| -> Block {
        match a {
            None => b,
            Some(mut a) => {
                a.steps.end = b.steps.end;
                a.output = b.output;
                a.layers.extend(b.layers);
                a
            }
        }
    };
    for s in segs {
        if s.layers.len() >= 2 {
            if cur.as_ref().is_some_and(|c| !c.layers.is_empty()) {
                out.push(cur.take().unwrap());
            }
            out.push(join(cur.take(), s));
        } else {
            let c = join(cur.take(), s);
            if c.layers.len() >= 3 {
                out.push(c);
            } else {
                cur = Some(c);
            }
        }
    }
    if let Some(c) = cur {
        match out.last_mut() {
            Some(last) if c.layers.is_empty() => {
                last.steps.end = c.steps.end;
                last.output = c.output;
            }
            _ => out.push(c),
        }
    }
    out
}

/// What [`reconstruct`] does.
#[derive(Clone, Debug)]
pub struct ReconOptions {
    /// QDrop's probability that an activation element is quantized; `None`: always (BRECQ).
    pub drop: Option<f32>,
    /// Iterations per block, and images per iteration.
    pub iters: usize,
    pub batch: usize,
    /// Calibration images used (at most).
    pub images: usize,
    /// Adam learning rates of the rounding variables and of the activation steps (cosine decay).
    pub lr_round: f64,
    pub lr_act: f64,
    /// Adam learning rate of the block's biases (cosine decay; 0 keeps the file's, which bias
    /// correction set for rounding to nearest).
    pub lr_bias: f64,
    /// Rounding regulariser weight, the share of iterations before it starts, and β's range.
    pub lambda: f32,
    pub warmup: f32,
    pub beta: (f32, f32),
    /// Learn the activation steps (LSQ).
    pub learn_act: bool,
    pub seed: u64,
}

impl ReconOptions {
    pub fn brecq() -> ReconOptions {
        ReconOptions {
            drop: None,
            iters: 1000,
            batch: 32,
            images: 256,
            lr_round: 1e-2,
            lr_act: 4e-5,
            lr_bias: 1e-3,
            lambda: 0.01,
            warmup: 0.2,
            beta: (20.0, 2.0),
            learn_act: true,
            seed: 0,
        }
    }
    pub fn qdrop() -> ReconOptions {
        ReconOptions { drop: Some(0.5), ..ReconOptions::brecq() }
    }
}

/// What happened to one block.
#[derive(Clone, Debug)]
pub struct BlockReport {
    pub layers: Vec<String>,
    pub output: String,
    /// The block output's squared error relative to the float output's power (on the quantized
    /// input), rounding to nearest with the calibrated steps, and after reconstruction.
    pub rel_err_nearest: f64,
    pub rel_err_learned: f64,
    /// Fraction of the block's weights rounded the other way than nearest.
    pub flipped: f64,
    /// The learned rounding was worse than nearest on the check images, so nearest was kept.
    pub kept_nearest: bool,
    pub secs: f64,
}

/// Values of one tensor over the calibration images (per-image dims, flat data).
struct Cache {
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl Cache {
    fn per(&self) -> usize {
        self.dims.iter().product()
    }
    fn value(&self, idx: &[usize], dev: &burn::tensor::Device, other: Option<(&Cache, &mut Rng, f32)>) -> V {
        let per = self.per();
        let mut v = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            v.extend_from_slice(&self.data[i * per..(i + 1) * per]);
        }
        if let Some((o, rng, p)) = other {
            for (j, &i) in idx.iter().enumerate() {
                let f = &o.data[i * per..(i + 1) * per];
                for (d, &fv) in v[j * per..(j + 1) * per].iter_mut().zip(f) {
                    if rng.uniform() >= p {
                        *d = fv;
                    }
                }
            }
        }
        let n = idx.len();
        match self.dims.len() {
            3 => V::T4(Tensor::from_data(TensorData::new(v, [n, self.dims[0], self.dims[1], self.dims[2]]), dev)),
            _ => V::T2(Tensor::from_data(TensorData::new(v, [n, per]), dev)),
        }
    }
}

fn to_host(v: V) -> Result<(Vec<usize>, Vec<f32>)> {
    let (dims, data) = match v {
        V::T4(t) => (t.dims()[1..].to_vec(), t.into_data()),
        V::T2(t) => (t.dims()[1..].to_vec(), t.into_data()),
    };
    Ok((dims, data.convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?))
}

fn inner(v: V) -> V {
    match v {
        V::T4(t) => V::T4(t.inner()),
        V::T2(t) => V::T2(t.inner()),
    }
}

/// Runs `steps` of `m` (no gradient) over every image of `x`.
fn run(m: &mut Model, b: &Block, x: &Cache, batch: usize) -> Result<Cache> {
    m.detach_all();
    let n = x.data.len() / x.per().max(1);
    let mut out = Cache { dims: vec![], data: vec![] };
    for s in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch).min(n)).collect();
        let v = inner(x.value(&idx, &m.device, None));
        let (dims, d) = to_host(m.forward_range(&b.input, v, b.steps.clone(), false)?)?;
        out.dims = dims;
        out.data.extend_from_slice(&d);
    }
    Ok(out)
}

/// `Σ (a − b)² / Σ b²` over two caches.
fn rel_err(a: &Cache, b: &Cache) -> f64 {
    let (mut e, mut p) = (0f64, 0f64);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        e += ((x - y) as f64).powi(2);
        p += (y as f64).powi(2);
    }
    if p > 0.0 {
        e / p
    } else {
        0.0
    }
}

fn squared_error(y: V, t: V) -> Result<Tensor<1>> {
    let (y, t, c): (Tensor<2>, Tensor<2>, usize) = match (y, t) {
        (V::T4(y), V::T4(t)) => {
            let [n, c, h, w] = y.dims();
            (y.reshape([n, c * h * w]), t.reshape([n, c * h * w]), c)
        }
        (V::T2(y), V::T2(t)) => {
            let c = y.dims()[1];
            (y, t, c)
        }
        _ => return Err(Error::Invalid("block output and its float target differ in rank".into())),
    };
    Ok((y - t).square().mean().mul_scalar(c as f32))
}

/// Reconstructs `model` (the QDQ model `cfg` builds from `canon` with `stats`) block by block on
/// `n` calibration images of `data` (each of `image_shape`); returns the new QDQ model, a report
/// per block that learned anything, and the seconds taken. `progress(done, total)` counts blocks.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct(
    canon: &Graph,
    stats: &Stats,
    cfg: &QdqConfig,
    model: &QdqModel,
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    o: &ReconOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(QdqModel, Vec<BlockReport>, f64)> {
    let t0 = Instant::now();
    let mut o = o.clone();
    let mut max_blocks = usize::MAX;
    if let Ok(v) = std::env::var("LOWBIT_RECON_DEBUG_OPTS") {
        for kv in v.split(',') {
            let (k, x) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "act" => o.learn_act = x == "1",
                "lr_round" => o.lr_round = x.parse().unwrap_or(o.lr_round),
                "lr_act" => o.lr_act = x.parse().unwrap_or(o.lr_act),
                "lr_bias" => o.lr_bias = x.parse().unwrap_or(o.lr_bias),
                "lambda" => o.lambda = x.parse().unwrap_or(o.lambda),
                "blocks" => max_blocks = x.parse().unwrap_or(max_blocks),
                _ => {}
            }
        }
    }
    let o = &o;
    if !matches!(cfg.weight_kind, lowbit_quant::scheme::Kind::Linear(_)) {
        return Err(Error::Invalid("block reconstruction learns the rounding of linear weights".into()));
    }
    if image_shape.len() != 3 {
        return Err(Error::Invalid(format!("images of shape {image_shape:?}: CHW expected")));
    }
    crate::keep_freed_memory();
    // Block tensors exceed glibc's largest mmap threshold (32 MB): serve them from the heap too,
    // so an iteration reuses the last one's memory instead of faulting fresh pages in.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
    let dev = crate::device();
    let mut m = Model::from_graph(canon, &dev).map_err(|e| Error::Invalid(format!("block reconstruction: {e}")))?;
    let mut mf = Model::from_graph(canon, &dev)?;
    let per: usize = image_shape.iter().product();
    let n = n.min(o.images).min(data.len() / per.max(1)).max(1);
    let [c, h, w] = [image_shape[0], image_shape[1], image_shape[2]];
    let one = Tensor::<4>::from_data(TensorData::new(data[..per].to_vec(), [1, c, h, w]), &dev);
    m.detach_all();
    m.forward(one.inner(), false)?;
    let sizes = m.value_sizes.clone();

    // Weights: AdaRound's parametrisation from the model's own integers and scales.
    // Per learned layer: its weight's parameter index and its scales, one per output channel.
    let mut layer_w: HashMap<String, usize> = HashMap::new();
    let mut channel_scales: HashMap<String, Vec<f32>> = HashMap::new();
    for (node, wi, _) in m.compute_layers() {
        let Some((ints, scales, axis)) = model.weight_ints(&node) else { continue };
        let shape = m.params[wi].shape.clone();
        let numel: usize = shape.iter().product();
        if ints.len() != numel || axis >= shape.len() {
            return Err(Error::node(&node, "quantized weights do not match the float layer"));
        }
        let (ch, inner) = (shape[axis], shape[axis + 1..].iter().product::<usize>());
        let sfull: Vec<f32> =
            (0..numel).map(|i| if scales.len() == 1 { scales[0] } else { scales[(i / inner) % ch] }).collect();
        let bits = cfg.weight_bits_for.get(&node).copied().unwrap_or(cfg.weight_bits);
        let qs = QScheme::weights(bits);
        let (mut r, v0) = SoftRound::new(&host(&m.params[wi].t), sfull, qs.qmin() as f32, qs.qmax() as f32);
        r.v = m.add_param(&format!("{node}.rounding"), v0);
        // The bias the file computes with (bias-corrected for the weights' rounding to nearest).
        if let (Some(bi), Some(b)) = (m.layer_bias(&node), model.bias(&node)) {
            if b.len() == m.params[bi].shape.iter().product::<usize>() {
                let n = b.len();
                m.params[bi].t = Tensor::from_data(TensorData::new(b, [n]), &dev);
            }
        }
        m.soft_round.insert(wi, r);
        channel_scales.insert(node.clone(), if scales.len() == 1 { vec![scales[0]; ch] } else { scales });
        layer_w.insert(node, wi);
    }
    if layer_w.is_empty() {
        return Err(Error::Invalid("block reconstruction: no quantized convolution or matrix product".into()));
    }
    // Activations: the calibrated steps, learned (LSQ) or fixed.
    let input = m.input.clone();
    for (v, &(s, zp)) in &model.act_params {
        let is_input = *v == input;
        let method = if o.learn_act && !is_input { QatMethod::Lsq } else { QatMethod::Ste };
        let range = QRange::unsigned(if is_input { 8 } else { cfg.act_bits_of(v) }, zp);
        let step = m.add_param(&format!("{v}.act_step"), vec![s]);
        let grad_scale = range.lsq_grad_scale(sizes.get(v).copied().unwrap_or(1), 1);
        m.act_q.insert(v.clone(), Quantizer { method, range, step, alpha: None, grad_scale, channels: 1 });
    }
    let quantized: HashSet<String> = layer_w.keys().cloned().collect();
    let bs = blocks(canon, &quantized);

    // The float and the quantized model's values at the current block's input.
    let mut x_fp = Cache { dims: image_shape.to_vec(), data: data[..n * per].to_vec() };
    let mut x_q = Cache { dims: image_shape.to_vec(), data: vec![] };
    m.detach_all();
    for s in (0..n).step_by(o.batch.max(1)) {
        let idx: Vec<usize> = (s..(s + o.batch).min(n)).collect();
        let v = inner(x_fp.value(&idx, &dev, None));
        let v = m.quantize_value(&input, v);
        x_q.data.extend_from_slice(&to_host(v)?.1);
    }
    let eval_n = n.min(64);
    let debug = std::env::var("LOWBIT_DEBUG_RECON").is_ok();
    let mut reports = vec![];
    let mut rng = Rng::new(o.seed);
    for (bi, b) in bs.iter().enumerate().take(max_blocks) {
        let tb = Instant::now();
        // Float target: the float model.
        let y_fp = run(&mut mf, b, &x_fp, o.batch)?;
        let outs: HashSet<String> = m.step_outputs(b.steps.clone()).into_iter().collect();
        let rounds: Vec<usize> = b.layers.iter().filter_map(|l| layer_w.get(l)).copied().collect();
        let acts: Vec<usize> = if o.learn_act {
            m.act_q
                .iter()
                .filter(|(v, q)| outs.contains(*v) && q.method == QatMethod::Lsq)
                .map(|(_, q)| q.step)
                .collect()
        } else {
            vec![]
        };
        let biases: Vec<usize> =
            if o.lr_bias > 0.0 { b.layers.iter().filter_map(|l| m.layer_bias(l)).collect() } else { vec![] };
        if rounds.is_empty() && acts.is_empty() {
            x_q = run(&mut m, b, &x_q, o.batch)?;
            x_fp = y_fp;
            progress(bi + 1, bs.len());
            continue;
        }
        let sub = |c: &Cache| Cache { dims: c.dims.clone(), data: c.data[..eval_n * c.per()].to_vec() };
        let (xq_eval, y_eval) = (sub(&x_q), sub(&y_fp));
        let set_hard = |m: &mut Model, nearest: Option<bool>| {
            for w in &rounds {
                let v = host(&m.params[m.soft_round[w].v].t);
                let r = m.soft_round.get_mut(w).unwrap();
                r.hard = nearest.map(|near| r.ints(&v, near));
            }
        };
        set_hard(&mut m, Some(true));
        let nearest_ints: Vec<Vec<f32>> = rounds.iter().map(|w| m.soft_round[w].hard.clone().unwrap()).collect();
        let err_nearest = rel_err(&run(&mut m, b, &xq_eval, o.batch)?, &y_eval);
        if std::env::var("LOWBIT_DEBUG_RECON").is_ok() {
            let aq = std::mem::take(&mut m.act_q);
            let ew = rel_err(&run(&mut m, b, &xq_eval, o.batch)?, &y_eval);
            m.act_q = aq;
            let sr = std::mem::take(&mut m.soft_round);
            let ea = rel_err(&run(&mut m, b, &xq_eval, o.batch)?, &y_eval);
            m.soft_round = sr;
            eprintln!("block {bi}: nearest {err_nearest:.5}, weights only {ew:.5}, activations only {ea:.5}");
        }
        set_hard(&mut m, None);

        // Learn.
        let trainable: Vec<usize> = rounds
            .iter()
            .map(|w| m.soft_round[w].v)
            .chain(acts.iter().copied())
            .chain(biases.iter().copied())
            .collect();
        let is_bias: HashSet<usize> = biases.iter().copied().collect();
        let is_round: HashSet<usize> = rounds.iter().map(|w| m.soft_round[w].v).collect();
        for (i, p) in m.params.iter_mut().enumerate() {
            let t = p.t.clone().autodiff().detach();
            p.t = if trainable.contains(&i) { t.require_grad() } else { t };
        }
        let initial: Vec<(usize, Vec<f32>)> = trainable.iter().map(|&i| (i, host(&m.params[i].t))).collect();
        let adam: AdamW = AdamWConfig::new().with_weight_decay(0.0).build();
        let mut states: HashMap<usize, Option<<AdamW as Optimizer>::State<1>>> = HashMap::new();
        m.qdrop = o.drop.map(|p| Drop::new(p, o.seed ^ (bi as u64) << 20));
        let warm = (o.warmup * o.iters as f32) as usize;
        let tl = Instant::now();
        for it in 0..o.iters {
            let idx: Vec<usize> = (0..o.batch.min(n)).map(|_| rng.below(n)).collect();
            let x = match o.drop {
                Some(p) => x_q.value(&idx, &dev, Some((&x_fp, &mut rng, p))),
                None => x_q.value(&idx, &dev, None),
            };
            let target = y_fp.value(&idx, &dev, None);
            let y = m.forward_range(&b.input, x, b.steps.clone(), true)?;
            let mut loss = squared_error(y, target)?;
            if debug && it % 50 == 0 {
                eprintln!("  it {it}: reconstruction loss {:.5}", host(&loss.clone().inner().reshape([1]))[0]);
            }
            if it >= warm {
                let t = (it - warm) as f32 / (o.iters - warm).max(1) as f32;
                let beta = o.beta.1 + (o.beta.0 - o.beta.1) * (1.0 - t);
                for w in &rounds {
                    let r = &m.soft_round[w];
                    loss = loss + r.regulariser(m.params[r.v].t.clone(), beta).mul_scalar(o.lambda);
                }
            }
            let grads = loss.backward();
            let lr_act = o.lr_act * 0.5 * (1.0 + (std::f64::consts::PI * it as f64 / o.iters as f64).cos());
            for &i in &trainable {
                let p = &mut m.params[i];
                let Some(g) = p.t.grad(&grads) else { continue };
                let lr = if is_round.contains(&i) {
                    o.lr_round
                } else if is_bias.contains(&i) {
                    lr_act / o.lr_act.max(1e-30) * o.lr_bias
                } else {
                    lr_act
                };
                let (nw, st) = adam.step(lr, p.t.clone().inner(), g, states.remove(&i).flatten());
                states.insert(i, st);
                let nw = if is_round.contains(&i) || is_bias.contains(&i) { nw } else { nw.clamp(1e-8, f32::MAX) };
                p.t = Tensor::from_inner(nw).require_grad();
            }
        }
        let learn_secs = tl.elapsed().as_secs_f64();
        if debug {
            m.qdrop = None;
            let (mut und, mut tot) = (0usize, 0usize);
            for w in &rounds {
                let v = host(&m.params[m.soft_round[w].v].t);
                und += v.iter().filter(|&&x| x.abs() < 2.3).count();
                tot += v.len();
            }
            eprintln!(
                "  soft weights: rel err {:.5}, {und} of {tot} roundings undecided",
                rel_err(&run(&mut m, b, &xq_eval, o.batch)?, &y_eval)
            );
        }
        m.qdrop = None;
        set_hard(&mut m, Some(false));
        let y_learn = run(&mut m, b, &xq_eval, o.batch)?;
        let mut err_learned = rel_err(&y_learn, &y_eval);
        // A block the short schedule made worse than rounding to nearest keeps nearest (and its
        // initial steps and biases).
        let kept_nearest = err_learned > err_nearest;
        if kept_nearest {
            for (i, v) in &initial {
                let n = v.len();
                m.params[*i].t = Tensor::from_data(TensorData::new(v.clone(), [n]), &dev);
            }
            for (w, near) in rounds.iter().zip(&nearest_ints) {
                m.soft_round.get_mut(w).unwrap().hard = Some(near.clone());
            }
            err_learned = err_nearest;
        }
        let (mut flips, mut total) = (0usize, 0usize);
        for (w, near) in rounds.iter().zip(&nearest_ints) {
            let h = m.soft_round[w].hard.as_ref().unwrap();
            flips += h.iter().zip(near).filter(|(a, b)| a != b).count();
            total += h.len();
        }
        reports.push(BlockReport {
            layers: b.layers.clone(),
            output: b.output.clone(),
            rel_err_nearest: err_nearest,
            rel_err_learned: err_learned,
            flipped: flips as f64 / total.max(1) as f64,
            kept_nearest,
            secs: tb.elapsed().as_secs_f64(),
        });
        if std::env::var("LOWBIT_DEBUG_RECON").is_ok() {
            let r = reports.last().unwrap();
            eprintln!(
                "block {bi} -> {} ({} layers): rel err {:.5} -> {:.5}, flipped {:.3}, {:.1} s ({learn_secs:.1} s learning)",
                b.output,
                b.layers.len(),
                r.rel_err_nearest,
                r.rel_err_learned,
                r.flipped,
                r.secs
            );
        }
        x_q = run(&mut m, b, &x_q, o.batch)?;
        x_fp = y_fp;
        progress(bi + 1, bs.len());
    }

    // Export: the learned integers, steps and biases.
    let mut cfg2 = cfg.clone();
    for (node, wi) in &layer_w {
        let r = &m.soft_round[wi];
        let ints = match &r.hard {
            Some(h) => h.clone(),
            None => r.ints(&host(&m.params[r.v].t), true),
        };
        let sc = channel_scales.remove(node).expect("every learned layer has its scales");
        cfg2.weight_int_override.insert(node.clone(), (ints.iter().map(|&v| v as i32).collect(), sc));
        if let Some(bi) = m.layer_bias(node) {
            cfg2.bias_override.insert(node.clone(), host(&m.params[bi].t));
        }
    }
    for (v, q) in &m.act_q {
        if q.method == QatMethod::Lsq {
            let s = host(&m.params[q.step].t)[0].abs().max(1e-12);
            cfg2.act_override.insert(v.clone(), (s, q.range.zp as i32));
        }
    }
    let out = build_qdq(canon, stats, &cfg2)?;
    Ok((out, reports, t0.elapsed().as_secs_f64()))
}
