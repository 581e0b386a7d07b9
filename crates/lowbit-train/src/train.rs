//! The training loop: shuffled mini-batches with random-crop/flip augmentation, cross-entropy
//! (plus optional distillation from a teacher's logits), burn's SGD-momentum or AdamW per
//! parameter, a linear warm-up then cosine learning-rate schedule, evaluation after every epoch
//! and a checkpoint after every epoch so that an interrupted run resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, Optimizer, RecordState, Sgd, SgdConfig, StateSink, StateSource};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use lowbit_data::ImageSet;
use serde::{Deserialize, Serialize};

use crate::model::{host, Model};
use crate::{Error, Result, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Sgd,
    AdamW,
}

/// Distillation from a teacher: `loss = (1 - weight) * CE + weight * T^2 * KL(teacher || student)`
/// on temperature-`T` softmaxes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Distill {
    pub temperature: f32,
    pub weight: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f32,
    /// Share of all steps spent warming the learning rate up from lr/10.
    pub warmup: f64,
    /// Random crop from a zero-padded image (pixels of padding per side; 0 disables).
    pub crop_pad: usize,
    /// Random horizontal flip.
    pub flip: bool,
    pub seed: u64,
    pub distill: Option<Distill>,
    /// Train on at most this many images (all when `None`).
    pub limit: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch: 128,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup: 0.15,
            crop_pad: 2,
            flip: true,
            seed: 0,
            distill: None,
            limit: None,
        }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub seconds: f64,
    pub lr_end: f64,
}

/// What the loop reports while it runs.
pub enum Event<'a> {
    Batch { epoch: usize, step: usize, steps: usize, loss: f64, acc: f64 },
    Evaluating { epoch: usize },
    Epoch(&'a EpochLog),
    Resumed { epoch: usize },
}

/// Gives the teacher's logits for a batch (row-major `n x classes`).
pub type Teacher<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;

enum Opt {
    Sgd(Sgd, Vec<Option<<Sgd as Optimizer>::State<1>>>),
    AdamW(AdamW, Vec<Option<<AdamW as Optimizer>::State<1>>>),
}

/// The optimizer's per-parameter state (SGD velocities, AdamW moments and step counts) as named
/// leaves, so that a resumed run continues exactly where the interrupted one stopped.
#[derive(Serialize, Deserialize, Default)]
struct OptState {
    tensors: Vec<(String, TensorData)>,
    scalars: Vec<(String, burn_pack::Scalar)>,
}

fn flatten_states<S: RecordState>(st: &[Option<S>], sink: &mut StateSink) {
    for (i, s) in st.iter().enumerate() {
        if let Some(s) = s {
            s.state_flatten(&i.to_string(), sink);
        }
    }
}

fn unflatten_states<S: RecordState>(
    st: &mut [Option<S>],
    src: &mut StateSource,
    dev: &burn::tensor::Device,
) -> std::result::Result<(), String> {
    for (i, slot) in st.iter_mut().enumerate() {
        let p = i.to_string();
        *slot = if src.has_under(&p) {
            Some(
                S::state_unflatten(&p, src, dev)
                    .ok_or_else(|| format!("optimizer state of parameter {i} is incomplete"))?,
            )
        } else {
            None
        };
    }
    Ok(())
}

impl Opt {
    fn save(&self) -> OptState {
        let mut sink = StateSink::default();
        match self {
            Opt::Sgd(_, st) => flatten_states(st, &mut sink),
            Opt::AdamW(_, st) => flatten_states(st, &mut sink),
        }
        OptState { tensors: sink.tensors, scalars: sink.scalars }
    }

    fn load(&mut self, s: OptState, dev: &burn::tensor::Device) -> std::result::Result<(), String> {
        let mut src = StateSource::new(s.scalars.into_iter().collect());
        for (n, t) in s.tensors {
            src.insert_tensor(n, t);
        }
        match self {
            Opt::Sgd(_, st) => unflatten_states(st, &mut src, dev),
            Opt::AdamW(_, st) => unflatten_states(st, &mut src, dev),
        }
    }
}

/// Learning rate at `step` of `total`.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let total = total.max(1) as f64;
    let warm = (cfg.warmup * total).max(1.0);
    let s = step as f64;
    if s < warm {
        cfg.lr * (0.1 + 0.9 * s / warm)
    } else {
        let p = ((s - warm) / (total - warm).max(1.0)).min(1.0);
        cfg.lr * (0.001 + 0.999 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
    }
}

/// Copies image `i` of `set` into `dst`, randomly cropped from a `pad`-padded copy (padding value
/// `fill`) and flipped.
fn augment(set: &ImageSet, i: usize, pad: usize, flip: bool, fill: f32, rng: &mut Rng, dst: &mut [f32]) {
    let (c, h, w) = (set.c, set.h, set.w);
    let src = set.image(i);
    let (dy, dx) = if pad > 0 {
        (rng.below(2 * pad + 1) as isize - pad as isize, rng.below(2 * pad + 1) as isize - pad as isize)
    } else {
        (0, 0)
    };
    let mirror = flip && rng.uniform() < 0.5;
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            for x in 0..w {
                let xx = if mirror { w - 1 - x } else { x };
                let sx = xx as isize + dx;
                dst[(ch * h + y) * w + x] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                    src[(ch * h + sy as usize) * w + sx as usize]
                } else {
                    fill
                };
            }
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b
}

/// Top-1 accuracy of `model` (inference mode) on a labelled set.
pub fn evaluate(model: &mut Model, set: &ImageSet, batch: usize) -> Result<f64> {
    let labels = set.labels.as_ref().ok_or_else(|| Error::Invalid(format!("{}: no labels", set.source)))?;
    let mut correct = 0usize;
    // Untracked parameters: evaluation must not record (and keep) an autodiff graph.
    model.detach_all();
    for (start, n, data) in set.batches(batch.max(1)) {
        let x: Tensor<4> = Tensor::from_data(TensorData::new(data.to_vec(), [n, set.c, set.h, set.w]), &model.device);
        let logits = model.forward(x.inner(), false)?;
        let v = logits.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?;
        let k = v.len() / n.max(1);
        for j in 0..n {
            if argmax(&v[j * k..(j + 1) * k]) == labels[start + j] as usize {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / set.n.max(1) as f64)
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Epochs completed.
    epoch: usize,
    params: Vec<(String, Vec<usize>, Vec<f32>)>,
    buffers: Vec<(String, Vec<f32>)>,
    history: Vec<EpochLog>,
    fingerprint: String,
    /// The optimizer's state after the last completed epoch.
    optimizer: OptState,
}

fn fingerprint(model: &Model, cfg: &TrainConfig, tag: &str) -> String {
    let shapes: Vec<String> = model.params.iter().map(|p| format!("{}{:?}", p.name, p.shape)).collect();
    format!("{tag}|{}|{}", serde_json::to_string(cfg).unwrap_or_default(), shapes.join(","))
}

fn save_checkpoint(path: &Path, ck: &Checkpoint) -> Result<()> {
    let bytes =
        serde_json::to_vec(ck).map_err(|e| Error::File { path: path.display().to_string(), msg: e.to_string() })?;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| Error::File { path: path.display().to_string(), msg: e.to_string() };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn load_checkpoint(path: &Path, model: &mut Model, fp: &str) -> Result<Option<Checkpoint>> {
    if !path.exists() {
        return Ok(None);
    }
    let err = |m: String| Error::File { path: path.display().to_string(), msg: m };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let ck: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| err(format!("not a lowbit checkpoint: {e}")))?;
    if ck.fingerprint != fp {
        return Err(err("checkpoint is from a different model or configuration; delete it to start over".into()));
    }
    // Every value is checked before any is loaded: a damaged checkpoint is refused, never half-used.
    if ck.params.len() != model.params.len() || ck.buffers.len() != model.buffers.len() {
        return Err(err(format!(
            "holds {} parameters and {} buffers, the model has {} and {}; delete it to start over",
            ck.params.len(),
            ck.buffers.len(),
            model.params.len(),
            model.buffers.len()
        )));
    }
    for (p, (name, shape, v)) in model.params.iter().zip(&ck.params) {
        let n: usize = p.shape.iter().product();
        if *name != p.name || *shape != p.shape || v.len() != n || v.iter().any(|x| !x.is_finite()) {
            return Err(err(format!("parameter '{}' is damaged (want {:?}, {n} finite values)", p.name, p.shape)));
        }
    }
    for ((bn, bt), (name, v)) in model.buffers.iter().zip(&ck.buffers) {
        if name != bn || v.len() != bt.dims()[0] {
            return Err(err(format!("buffer '{bn}' is damaged")));
        }
    }
    if ck.epoch == 0 || ck.history.len() != ck.epoch {
        return Err(err(format!(
            "claims {} epochs with {} logged; delete it to start over",
            ck.epoch,
            ck.history.len()
        )));
    }
    let dev = model.device.clone();
    for (p, (_, _, v)) in model.params.iter_mut().zip(&ck.params) {
        let n = v.len();
        p.t = Tensor::from_data(TensorData::new(v.clone(), [n]), &dev);
    }
    for (b, (_, v)) in model.buffers.iter_mut().zip(&ck.buffers) {
        let n = v.len();
        b.1 = Tensor::from_data(TensorData::new(v.clone(), [n]), &dev);
    }
    Ok(Some(ck))
}

/// Trains `model` on `train`, evaluating on `test` after each epoch. `teacher` supplies logits
/// for distillation when `cfg.distill` is set. `checkpoint`: file to resume from and save to.
pub fn train(
    model: &mut Model,
    train: &ImageSet,
    test: &ImageSet,
    cfg: &TrainConfig,
    mut teacher: Option<&mut Teacher>,
    checkpoint: Option<&Path>,
    tag: &str,
    on: &mut dyn FnMut(Event),
) -> Result<Vec<EpochLog>> {
    let labels =
        train.labels.as_ref().ok_or_else(|| Error::Invalid(format!("{}: training needs labels", train.source)))?;
    if cfg.distill.is_some() && teacher.is_none() {
        return Err(Error::Invalid("distillation needs a teacher model".into()));
    }
    let n = cfg.limit.map_or(train.n, |l| l.min(train.n));
    let bs = cfg.batch.max(1);
    let steps = n / bs; // drop the ragged last batch (BatchNorm statistics of tiny batches are noisy)
    if steps == 0 {
        return Err(Error::Invalid(format!("{n} training images are fewer than one batch of {bs}")));
    }
    let total = steps * cfg.epochs;
    let fp = fingerprint(model, cfg, tag);
    let mut history = vec![];
    let mut start_epoch = 0;
    let mut saved_opt = None;
    if let Some(p) = checkpoint {
        if let Some(ck) = load_checkpoint(p, model, &fp)? {
            if ck.epoch > cfg.epochs {
                return Err(Error::File {
                    path: p.display().to_string(),
                    msg: format!("checkpoint is after epoch {} of {}", ck.epoch, cfg.epochs),
                });
            }
            start_epoch = ck.epoch;
            history = ck.history;
            saved_opt = Some(ck.optimizer);
            on(Event::Resumed { epoch: start_epoch });
        }
    }
    model.require_grad();
    let np = model.params.len();
    let mut opt = match cfg.optimizer {
        OptimizerKind::Sgd => Opt::Sgd(
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig { momentum: cfg.momentum, dampening: 0.0, nesterov: true }))
                .build(),
            vec![None; np],
        ),
        OptimizerKind::AdamW => Opt::AdamW(AdamWConfig::new().with_weight_decay(0.0).build(), vec![None; np]),
    };
    if let Some(s) = saved_opt {
        opt.load(s, &model.device).map_err(|m| Error::File {
            path: checkpoint.map(|p| p.display().to_string()).unwrap_or_default(),
            msg: m,
        })?;
    }
    // Padding is black: the smallest value of the (normalized) data.
    let fill = train.data.iter().copied().fold(f32::INFINITY, f32::min);
    let classes = train.num_classes().unwrap_or(10).max(1);
    let img = train.image_len();
    let dev = model.device.clone();
    let mut order: Vec<usize> = (0..train.n).collect();
    // Each epoch shuffles the previous epoch's order: a resumed run replays the shuffles of the
    // epochs it skips, so it sees the same batches as an uninterrupted one.
    for epoch in 0..start_epoch {
        Rng::new(cfg.seed.wrapping_mul(1000).wrapping_add(epoch as u64)).shuffle(&mut order);
    }
    for epoch in start_epoch..cfg.epochs {
        let t0 = Instant::now();
        let mut rng = Rng::new(cfg.seed.wrapping_mul(1000).wrapping_add(epoch as u64));
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        let mut xb = vec![0f32; bs * img];
        for step in 0..steps {
            let idx = &order[step * bs..(step + 1) * bs];
            let idx: Vec<usize> = idx.iter().map(|&i| i % n.max(1)).collect();
            for (j, &i) in idx.iter().enumerate() {
                augment(train, i, cfg.crop_pad, cfg.flip, fill, &mut rng, &mut xb[j * img..(j + 1) * img]);
            }
            let mut onehot = vec![0f32; bs * classes];
            for (j, &i) in idx.iter().enumerate() {
                let l = labels[i] as usize;
                if l < classes {
                    onehot[j * classes + l] = 1.0;
                }
            }
            let x: Tensor<4> = Tensor::from_data(TensorData::new(xb.clone(), [bs, train.c, train.h, train.w]), &dev);
            model.progress = (epoch * steps + step) as f32 / total.max(1) as f32;
            let out = model.forward(x, true)?;
            let (loss, lg) = match model.head.clone() {
                Some(h) => embed_step(model, &h, out, &xb, &idx, labels, teacher.as_mut())?,
                None => {
                    let (l, logits) = class_loss(out, onehot, bs, classes, cfg, teacher.as_mut(), &xb)?;
                    (l, logits)
                }
            };
            // A width search's budget penalty ([`crate::dms`]).
            let loss = match model.dms.as_mut().and_then(|d| d.penalty.take()) {
                Some(p) => loss + p,
                None => loss,
            };
            let grads = loss.backward();
            let lv = loss.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?[0] as f64;
            if !lv.is_finite() {
                return Err(Error::Invalid(format!(
                    "loss became {lv} at epoch {} step {step}; lower the learning rate",
                    epoch + 1
                )));
            }
            let classes = lg.len() / bs;
            for (j, &i) in idx.iter().enumerate() {
                if argmax(&lg[j * classes..(j + 1) * classes]) == labels[i] as usize {
                    correct += 1;
                }
            }
            seen += bs;
            loss_sum += lv * bs as f64;
            lr = lr_at(cfg, epoch * steps + step, total);
            for (i, p) in model.params.iter_mut().enumerate() {
                let Some(g) = p.t.grad(&grads) else { continue };
                let w = p.t.clone().inner();
                let g = if p.decay && cfg.weight_decay > 0.0 { g + w.clone().mul_scalar(cfg.weight_decay) } else { g };
                let nw = match &mut opt {
                    Opt::Sgd(o, st) => {
                        let (nw, s) = o.step(lr, w, g, st[i].take());
                        st[i] = s;
                        nw
                    }
                    Opt::AdamW(o, st) => {
                        let (nw, s) = o.step(lr, w, g, st[i].take());
                        st[i] = s;
                        nw
                    }
                };
                p.t = Tensor::from_inner(nw).require_grad();
            }
            model.after_step();
            on(Event::Batch { epoch, step, steps, loss: loss_sum / seen as f64, acc: correct as f64 / seen as f64 });
        }
        on(Event::Evaluating { epoch });
        let test_acc = match (&model.head, test.labels.is_some() && test.n > 0) {
            (_, false) => f64::NAN,
            (Some(_), true) => crate::embed::evaluate(model, test, 500)?,
            (None, true) => evaluate(model, test, 500)?,
        };
        model.require_grad();
        let log = EpochLog {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            seconds: t0.elapsed().as_secs_f64(),
            lr_end: lr,
        };
        on(Event::Epoch(&log));
        history.push(log);
        if let Some(p) = checkpoint {
            let ck = Checkpoint {
                epoch: epoch + 1,
                params: model.params.iter().map(|p| (p.name.clone(), p.shape.clone(), host(&p.t))).collect(),
                buffers: model.buffers.iter().map(|(n, t)| (n.clone(), host(t))).collect(),
                history: history.clone(),
                fingerprint: fp.clone(),
                optimizer: opt.save(),
            };
            save_checkpoint(p, &ck)?;
        }
    }
    Ok(history)
}

/// Cross-entropy on the model's logits, plus distillation from the teacher's when asked.
/// Returns the loss and the logits (host).
fn class_loss(
    logits: Tensor<2>,
    onehot: Vec<f32>,
    bs: usize,
    classes: usize,
    cfg: &TrainConfig,
    teacher: Option<&mut &mut Teacher>,
    xb: &[f32],
) -> Result<(Tensor<1>, Vec<f32>)> {
    let dev = logits.device();
    let y: Tensor<2> = Tensor::from_data(TensorData::new(onehot, [bs, classes]), &dev);
    let ce = (log_softmax(logits.clone(), 1) * y).sum().neg().div_scalar(bs as f32);
    let loss = match (&cfg.distill, teacher) {
        (Some(d), Some(t)) => {
            let tl = t(xb, bs)?;
            if tl.len() != bs * classes {
                return Err(Error::Invalid(format!(
                    "teacher gave {} logits for {bs} images of {classes} classes",
                    tl.len()
                )));
            }
            let tt = d.temperature;
            let tl: Tensor<2> = Tensor::from_data(TensorData::new(tl, [bs, classes]), &dev);
            let pt = burn::tensor::activation::softmax(tl.clone().div_scalar(tt), 1);
            let lpt = log_softmax(tl.div_scalar(tt), 1);
            let lps = log_softmax(logits.clone().div_scalar(tt), 1);
            let kl = (pt * (lpt - lps)).sum().div_scalar(bs as f32).mul_scalar(tt * tt);
            ce.mul_scalar(1.0 - d.weight) + kl.mul_scalar(d.weight)
        }
        _ => ce,
    };
    let lg = logits.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?;
    Ok((loss, lg))
}

/// The margin-softmax loss of an embedding batch; with RCM, the teacher gives the float model's
/// embeddings of the batch. Returns the loss and the cosines to every identity (host).
fn embed_step(
    model: &Model,
    h: &crate::head::Head,
    feats: Tensor<2>,
    xb: &[f32],
    idx: &[usize],
    labels: &[u32],
    teacher: Option<&mut &mut Teacher>,
) -> Result<(Tensor<1>, Vec<f32>)> {
    let y: Vec<usize> = idx.iter().map(|&i| labels[i] as usize).collect();
    let w = model.params[h.param].t.clone();
    let rcm = match (h.cfg.rcm, &h.centres) {
        (Some(lambda), Some(centres)) => {
            let t = teacher.ok_or_else(|| Error::Invalid("RCM needs the float model's embeddings".into()))?;
            let ff = t(xb, idx.len())?;
            if ff.len() != idx.len() * h.cfg.dim {
                return Err(Error::Invalid(format!(
                    "the float model gave {} values for {} embeddings of {}",
                    ff.len(),
                    idx.len(),
                    h.cfg.dim
                )));
            }
            Some((lambda, centres, ff))
        }
        _ => None,
    };
    // RCM's extra margins from the current cosine of each sample to its identity's head row.
    let extra = |cos: &[f32]| match &rcm {
        Some((lambda, centres, ff)) => {
            let cq: Vec<f32> = y.iter().enumerate().map(|(i, &l)| cos[i * h.cfg.classes + l]).collect();
            crate::embed::rcm_extra(h.cfg.kind, *lambda, &cq, ff, centres, &y)
        }
        None => vec![],
    };
    Ok(crate::embed::margin_loss(feats, w, &y, &h.cfg, extra))
}

/// The default checkpoint file for an output model: `OUT.ckpt.json`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt.json");
    PathBuf::from(s)
}
