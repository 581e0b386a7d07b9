//! `lowbit train`'s arguments (classifier and embedding training) and what both training
//! commands share: the progress printer, the loss/accuracy plot, the training configuration and
//! the binarization asked for. Kept apart from `train`, `embed` and `widths` so that none imports
//! another's module.

use std::path::PathBuf;

use anyhow::{bail, Result};
use lowbit_data::{ImageSet, Split};
use lowbit_train::qat::QatConfig;
use lowbit_train::train::{self as tr, Distill, Event, OptimizerKind, TrainConfig};
use lowbit_train::{Binary, QatMethod};

use crate::common::*;

#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// The model to train (its architecture, and its weights unless --reinit)
    pub model: PathBuf,
    /// An IDX folder with train and test files (e.g. /usr/share/datasets/fashion-mnist)
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (default 0.1 for float training, 0.002 for --qat)
    #[arg(long)]
    pub lr: Option<f64>,
    /// sgd (momentum 0.9, Nesterov) | adamw (default: sgd; adamw for --binary)
    #[arg(long, value_parser = ["sgd", "adamw"])]
    pub optimizer: Option<String>,
    /// L2 weight decay on convolution and linear weights (default 5e-4; 0 for --binary)
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Share of the steps spent warming up (default 0.15 float, 0 for --qat)
    #[arg(long)]
    pub warmup: Option<f64>,
    /// No random crop / flip
    #[arg(long)]
    pub no_augment: bool,
    /// Start from freshly initialised weights (train the architecture from scratch)
    #[arg(long)]
    pub reinit: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on at most this many images
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on at most this many test images
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Quantization-aware training: ste | lsq | pact | dsq
    #[arg(long)]
    pub qat: Option<String>,
    /// QAT weight bits (per-channel symmetric)
    #[arg(long, default_value_t = 4)]
    pub weights: u8,
    /// QAT activation bits (per-tensor affine)
    #[arg(long, default_value_t = 4)]
    pub acts: u8,
    #[arg(long)]
    pub per_tensor: bool,
    #[arg(long)]
    pub skip_first: bool,
    #[arg(long)]
    pub skip_last: bool,
    /// QAT: keep the first and last layers quantized at this width (their weights and the
    /// activation the last layer reads), the usual setting below 4 bits
    #[arg(long, requires = "qat", conflicts_with_all = ["skip_first", "skip_last"], value_parser = clap::value_parser!(u8).range(2..=8))]
    pub first_last_bits: Option<u8>,
    /// Binary network (W1A1, first/last layers 8-bit, Bi-Real shortcuts): irnet (Libra-PB + EDE)
    /// or xnor (sign with mean |w| scale, straight-through estimator: the baseline)
    #[arg(long, value_parser = ["irnet", "xnor"], conflicts_with = "qat")]
    pub binary: Option<String>,
    /// IR-Net ablation: without Libra-PB (XNOR weight scale instead)
    #[arg(long, requires = "binary")]
    pub no_libra: bool,
    /// IR-Net ablation: without EDE (straight-through estimator instead)
    #[arg(long, requires = "binary")]
    pub no_ede: bool,
    /// Binary network widths: a file written by `lowbit search-widths`, or one multiplier for every
    /// searched channel group (e.g. 1.5); trains the architecture from scratch
    #[arg(long, requires = "binary")]
    pub widths: Option<String>,
    /// Unified INT8 training: every convolution's forward, input-gradient and weight-gradient
    /// products on lowbit's integer kernels (int32 accumulation; f32 master weights); linear
    /// layers stay f32, and convolutions reading the model input unless --int8-all
    #[arg(long, conflicts_with_all = ["qat", "binary"])]
    pub int8_train: bool,
    /// INT8 training ablation: clip errors at their largest magnitude instead of DSGC's clip
    #[arg(long, requires = "int8_train")]
    pub no_dsgc: bool,
    /// INT8 training ablation: no deviation counteractive learning-rate scaling
    #[arg(long, requires = "int8_train")]
    pub no_dcls: bool,
    /// INT8 training: bits of the quantized errors (output gradients)
    #[arg(long, default_value_t = 8, requires = "int8_train", value_parser = clap::value_parser!(u32).range(2..=8))]
    pub grad_bits: u32,
    /// INT8 training: the convolutions reading the model input (the stem) on the integer kernels too
    #[arg(long, requires = "int8_train")]
    pub int8_all: bool,
    /// Calibration images for the post-training start of QAT
    #[arg(long, default_value_t = 1000)]
    pub calib_n: usize,
    /// Distil from the float model (or --teacher)
    #[arg(long)]
    pub distill: bool,
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f32,
    /// Weight of the distillation term (the label loss gets 1 - this)
    #[arg(long, default_value_t = 0.5)]
    pub distill_weight: f32,
    /// Start over even if a checkpoint (OUTPUT.ckpt.json) exists
    #[arg(long)]
    pub no_resume: bool,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Loss/accuracy curve (SVG); default: OUTPUT with .curve.svg
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub embed: EmbedTrainArgs,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct EmbedArgs {
    /// A second labelled IDX source for the open-set protocol (its classes become identities
    /// 10-19), e.g. ../shared/data/mnist10k beside Fashion-MNIST
    #[arg(long)]
    pub extra_data: Option<PathBuf>,
    /// Classes of every source kept out of training and evaluated as unseen identities
    #[arg(long, value_delimiter = ',', default_value = "6,7,8,9")]
    pub unseen: Vec<u32>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct EmbedTrainArgs {
    /// classify (a classifier, the default) | embed (open-set embedding training)
    #[arg(long, default_value = "classify", value_parser = ["classify", "embed"])]
    pub task: String,
    /// Embedding loss: cosface | arcface | rcm (ArcFace with the rotation consistent margin;
    /// needs --qat)
    #[arg(long, default_value = "arcface", value_parser = ["cosface", "arcface", "rcm"])]
    pub loss: String,
    /// Margin (default 0.35 CosFace, 0.5 rad ArcFace)
    #[arg(long)]
    pub margin: Option<f32>,
    /// Scale s of the margin-softmax logits
    #[arg(long, default_value_t = 16.0)]
    pub scale: f32,
    /// Embedding width (the last fully connected layer is resized to it for float training)
    #[arg(long, default_value_t = 128)]
    pub embed_dim: usize,
    /// RCM weight λ on the individual error
    #[arg(long, default_value_t = 1.0)]
    pub rcm_weight: f32,
    #[command(flatten)]
    pub data: EmbedArgs,
}

impl TrainArgs {
    /// The quantization-aware training settings these arguments ask for, with `method`.
    pub fn qat_config(&self, method: QatMethod) -> QatConfig {
        QatConfig {
            method,
            weight_bits: self.weights,
            act_bits: self.acts,
            per_channel: !self.per_tensor,
            skip_first: self.skip_first,
            skip_last: self.skip_last,
            first_last_bits: self.first_last_bits,
            ..Default::default()
        }
    }
}

/// Prints training progress: a bar per epoch, a line per finished epoch (`train` and `test`
/// name its two accuracies).
pub(crate) fn progress_printer<'a>(
    epochs: usize,
    ckpt: &'a std::path::Path,
    train: &'a str,
    test: &'a str,
) -> impl FnMut(Event) + 'a {
    let mut pb: Option<indicatif::ProgressBar> = None;
    move |e: Event| match e {
        Event::Batch { epoch, step, steps, loss, acc } => {
            let p = pb.get_or_insert_with(|| progress(steps as u64, &format!("epoch {}/{epochs}", epoch + 1)));
            p.set_position(step as u64 + 1);
            p.set_message(format!("epoch {}/{epochs} loss {loss:.4} acc {:.2}%", epoch + 1, acc * 100.0));
        }
        Event::Evaluating { .. } => {
            if let Some(p) = pb.take() {
                p.finish_and_clear();
            }
        }
        Event::Epoch(l) => eprintln!(
            "epoch {:>3}: loss {:.4}  {train} {:.2}%  {test} {:.2}%  {:.0} s",
            l.epoch,
            l.loss,
            l.train_acc * 100.0,
            l.test_acc * 100.0,
            l.seconds
        ),
        Event::Resumed { epoch } => eprintln!("resuming from {} after epoch {epoch}", ckpt.display()),
    }
}

/// The loss and accuracy curves of a training run as SVG (`--plot`, default OUTPUT.curve.svg);
/// `acc` = (axis label, train series name, test series name).
pub(crate) fn write_curves(
    a: &TrainArgs,
    history: &[tr::EpochLog],
    title: &str,
    acc: (&str, &str, &str),
) -> Result<()> {
    let plot = a.plot.clone().unwrap_or_else(|| {
        let mut s = a.output.as_os_str().to_owned();
        s.push(".curve.svg");
        PathBuf::from(s)
    });
    let loss: Vec<(f64, f64)> = history.iter().map(|l| (l.epoch as f64, l.loss)).collect();
    let tra: Vec<(f64, f64)> = history.iter().map(|l| (l.epoch as f64, l.train_acc * 100.0)).collect();
    let tea: Vec<(f64, f64)> = history.iter().map(|l| (l.epoch as f64, l.test_acc * 100.0)).collect();
    write_atomic(
        &plot,
        crate::svg::curves(
            &format!("{}: {title}", a.model.display()),
            &[("loss", vec![("train loss", loss)]), (acc.0, vec![(acc.1, tra), (acc.2, tea)])],
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// The training configuration `a` asks for (with the defaults of float, QAT and binary training),
/// after checking its values.
pub(crate) fn train_config(a: &TrainArgs, method: Option<QatMethod>, binary: bool) -> Result<TrainConfig> {
    if a.epochs == 0 || a.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    let positive = |what: &str, v: Option<f64>| match v {
        Some(x) if !(x.is_finite() && x > 0.0) => bail!("{what} {x} must be a finite number above 0"),
        _ => Ok(()),
    };
    positive("--lr", a.lr)?;
    positive("--temperature", Some(a.temperature as f64))?;
    if let Some(w) = a.weight_decay.filter(|w| !(w.is_finite() && *w >= 0.0)) {
        bail!("--weight-decay {w} must be a finite number, 0 or above");
    }
    if let Some(w) = a.warmup.filter(|w| !(0.0..=1.0).contains(w)) {
        bail!("--warmup {w} is a share of the training steps: 0 to 1");
    }
    if !(0.0..=1.0).contains(&a.distill_weight) {
        bail!("--distill-weight {} must be 0 to 1", a.distill_weight);
    }
    Ok(TrainConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr.unwrap_or(if binary {
            0.001
        } else if method.is_some() {
            0.002
        } else {
            0.1
        }),
        optimizer: match a.optimizer.as_deref() {
            Some("adamw") => OptimizerKind::AdamW,
            None if binary => OptimizerKind::AdamW,
            _ => OptimizerKind::Sgd,
        },
        momentum: 0.9,
        weight_decay: a.weight_decay.unwrap_or(if binary { 0.0 } else { 5e-4 }),
        warmup: a.warmup.unwrap_or(if method.is_some() || binary { 0.0 } else { 0.15 }),
        crop_pad: if a.no_augment { 0 } else { 2 },
        flip: !a.no_augment,
        seed: a.seed,
        distill: a.distill.then_some(Distill { temperature: a.temperature, weight: a.distill_weight }),
        limit: a.limit,
    })
}

/// The binarization `--binary` asks for, with the ablation flags.
pub(crate) fn binary_of(a: &TrainArgs) -> Option<Binary> {
    a.binary.as_deref().map(|b| match b {
        "xnor" => Binary { libra: false, ede: false },
        _ => Binary { libra: !a.no_libra, ede: !a.no_ede },
    })
}

pub(crate) fn binary_name(b: Binary) -> &'static str {
    match (b.libra, b.ede) {
        (true, true) => "irnet",
        (true, false) => "irnet-no-ede",
        (false, true) => "irnet-no-libra",
        (false, false) => "xnor-ste",
    }
}

/// What both training commands do first: the thread pool, the model, and the training and test
/// images with the model's preprocessing (printed). Returns the model, the preset's name and the
/// two sets.
pub(crate) fn load_training(a: &TrainArgs) -> Result<(lowbit_core::Graph, String, ImageSet, ImageSet)> {
    if a.threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global();
    }
    lowbit_train::keep_freed_memory();
    let g = load_model(&a.model)?;
    let (preset, pre) = choose_preset(a.preset.as_deref(), &g, &a.data)?;
    let train_set = load_data(&a.data, Split::Train, &pre, a.limit)?;
    let test_set = load_data(&a.data, Split::Test, &pre, a.test_limit)?;
    if train_set.labels.is_none() {
        bail!("{}: training needs labels", a.data.display());
    }
    eprintln!(
        "{}: {} training and {} test images ({}x{}x{}, preset {preset})",
        a.data.display(),
        train_set.n,
        test_set.n,
        train_set.c,
        train_set.h,
        train_set.w
    );
    Ok((g, preset, train_set, test_set))
}
