//! `lowbit quantize`'s command line and the library options it stands for.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use lowbit_quant::adaround::{learn::LearnSettings, AdaRoundOptions};
use lowbit_quant::observer::Method;
use lowbit_quant::ptq::PtqOptions;
use lowbit_quant::scheme::{Kind, Mode};

#[derive(clap::Args, Clone)]
pub struct QuantizeArgs {
    pub model: PathBuf,
    /// Calibration data (IDX folder/file or image folder)
    #[arg(long, required_unless_present = "data")]
    pub calib: Option<PathBuf>,
    /// Automatic pipeline on a labelled IDX folder with train and test splits: L1 data-free
    /// (weights only), L2 calibrated with sensitivity-driven mixed precision (--max-drop); below
    /// 8 bits, if L2 misses the budget, L2 with learned weight rounding (AdaRound, then QDrop; or
    /// only the one --rounding names); and L3 quantization-aware training only if the budget is
    /// still missed; a table of every stage
    #[arg(long, conflicts_with_all = ["calib", "eval"])]
    pub data: Option<PathBuf>,
    /// Automatic pipeline: go from calibration (L2) straight to training (L3), without the
    /// learned-rounding candidates
    #[arg(long, requires = "data")]
    pub no_learned_rounding: bool,
    /// L3 method (ste, lsq, pact, dsq) and epochs
    #[arg(long, default_value = "lsq")]
    pub qat_method: String,
    #[arg(long, default_value_t = 1)]
    pub qat_epochs: usize,
    /// Split of an IDX folder used for calibration
    #[arg(long, default_value = "train", value_parser = ["train", "test"])]
    pub calib_split: String,
    /// Number of calibration images
    #[arg(long, default_value_t = 1000)]
    pub calib_n: usize,
    /// Weight bits (2..=8), per-channel symmetric
    #[arg(long, default_value_t = 8)]
    pub weights: u8,
    /// Activation bits (2..=8), per-tensor affine
    #[arg(long, default_value_t = 8)]
    pub acts: u8,
    /// Activation range method: auto (try all, keep the one closest to float on the
    /// calibration images) | minmax | percentile[:P] | entropy | mse
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// Weight rounding: nearest; adaround (each layer's rounding learned to reconstruct its float
    /// output from the quantized model's input, Nagel et al. 2020); brecq (the same parametrisation
    /// learned a block at a time, residual blocks whole, with the activation steps, Li et al.
    /// 2021); qdrop (brecq with each activation element quantized with probability 1/2 during
    /// learning, Wei et al. 2022). `--method adaround|brecq|qdrop` is short for `--method auto
    /// --rounding ...`
    #[arg(long, default_value = "nearest", value_parser = ["nearest", "adaround", "brecq", "qdrop"])]
    pub rounding: String,
    /// BRECQ/QDrop: iterations per block, images per iteration, calibration images used
    #[arg(long, default_value_t = 1000)]
    pub recon_iters: usize,
    #[arg(long, default_value_t = 32)]
    pub recon_batch: usize,
    #[arg(long, default_value_t = 256)]
    pub recon_images: usize,
    /// AdaRound: iterations per layer (each exact over all sampled rows), calibration images the
    /// statistics come from
    #[arg(long, default_value_t = 1000)]
    pub adaround_iters: usize,
    #[arg(long, default_value_t = 256)]
    pub adaround_images: usize,
    /// Per-tensor weights instead of per-channel
    #[arg(long)]
    pub per_tensor: bool,
    /// Weight values: linear (symmetric scale), pow2 (power-of-two scales: requantization is a
    /// shift), log (0 or ±2^k, 2..4 bits), kmeans (2^bits shared values per layer). All are written
    /// as int8 weights of a standard DequantizeLinear, so ONNX Runtime and lowbit's integer kernels run
    /// them; the file's metadata names the scheme of each layer
    #[arg(long, default_value = "linear")]
    pub scheme: String,
    /// Cross-layer equalization of consecutive convolutions before quantizing (DFQ)
    #[arg(long)]
    pub cle: bool,
    /// With --cle: equalize every pair, replacing ReLU6 by ReLU even where activations reach 6 (as
    /// the DFQ paper does; this changes the float function, and --eval measures against the
    /// original model)
    #[arg(long)]
    pub cle_relu6_to_relu: bool,
    /// Bias absorption across Conv-ReLU-Conv pairs (DFQ; uses calibration minima since
    /// folded models carry no BatchNorm statistics)
    #[arg(long)]
    pub absorb_bias: bool,
    /// Turn off activation equalization (on by default with per-channel linear weights: activation
    /// channels feeding a depthwise convolution are stretched towards a common range, the
    /// depthwise weights shrunk to match, which per-channel weight scales absorb exactly)
    #[arg(long)]
    pub no_act_equalize: bool,
    /// Turn off bias correction of weight-quantization error
    #[arg(long)]
    pub no_bias_correction: bool,
    /// DFQ's data-free statistics: where a layer's input comes from a convolution followed by
    /// BatchNormalization in the given (unfolded) model, bias correction and bias absorption use
    /// that BatchNorm's beta and gamma (the input as N(beta, gamma^2) through its activation)
    /// instead of calibration data; activation ranges and the ReLU6 check of --cle still come
    /// from --calib
    #[arg(long)]
    pub bn_stats: bool,
    /// Per-layer sensitivity table (and plot with --plots)
    #[arg(long)]
    pub sensitivity: bool,
    /// Mixed precision: raise the most sensitive layers to 8-bit weights until the top-1 drop
    /// on the (labelled) calibration images is at most this many percentage points
    #[arg(long)]
    pub max_drop: Option<f64>,
    /// Folder for SVG plots: per-layer sensitivity and activation histograms with clip ranges
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Keep the first / last compute layer in float
    #[arg(long)]
    pub skip_first: bool,
    #[arg(long)]
    pub skip_last: bool,
    /// Keep the first and last compute layers quantized at this width (their weights and the
    /// activation the last layer reads), the low-bit literature's convention below 8 bits
    #[arg(long, conflicts_with_all = ["skip_first", "skip_last"], value_parser = clap::value_parser!(u8).range(2..=8))]
    pub first_last_bits: Option<u8>,
    /// Keep the model input quantized to 8 bits even where its values do not fit one 8-bit grid
    /// (images normalised per channel) and keeping it float brings the outputs closer to float (by
    /// default checked on the calibration images: kept float, read in float by the first layers with
    /// their weights still quantized, when it gains at least 1 dB of output SQNR)
    #[arg(long, conflicts_with = "skip_first")]
    pub quantize_input: bool,
    /// Keep the model input float whatever the check finds: the first layers read it in float with
    /// their int8 weights, whose rounding is learned on the calibration images. More accurate where
    /// one 8-bit grid cannot hold the input (MobileNetV2 and EfficientNet-Lite0 on ImageNet-normalised
    /// photos), slower by the first layer's float arithmetic
    #[arg(long, conflicts_with_all = ["skip_first", "quantize_input"])]
    pub float_input: bool,
    /// Evaluate float and quantized on this labelled data (or agreement when unlabelled)
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Limit the evaluation images
    #[arg(long)]
    pub eval_limit: Option<usize>,
    #[command(flatten)]
    pub image: crate::image_args::ImageArgs,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The library's options from the command line (typed, checked before any work).
pub fn options(a: &QuantizeArgs) -> Result<PtqOptions> {
    let method = match a.method.as_str() {
        "auto" | "adaround" | "brecq" | "qdrop" => None,
        m => Some(Method::parse(m).ok_or_else(|| {
            anyhow!("unknown --method '{m}' (auto, minmax, percentile[:P], entropy, mse, adaround, brecq, qdrop)")
        })?),
    };
    for (what, b) in [("--weights", a.weights), ("--acts", a.acts)] {
        if !(2..=8).contains(&b) {
            bail!("{what} {b} is out of range: linear quantization takes 2 to 8 bits");
        }
    }
    if a.calib_n == 0 {
        bail!("--calib-n must be at least 1");
    }
    if let Some(d) = a.max_drop.filter(|d| !d.is_finite()) {
        bail!("--max-drop {d} must be a finite number of percentage points");
    }
    let weight_kind = match a.scheme.as_str() {
        "linear" => Kind::Linear(Mode::Symmetric),
        "pow2" => Kind::Linear(Mode::PowerOfTwo),
        "log" if a.weights <= 4 => Kind::Log2,
        "log" => bail!(
            "--scheme log takes --weights 2 to 4 ({} asked): logarithmic levels ±2^k are stored as int8 multiples of the smallest level, and 2^(bits-1)-1 exponents must fit ±127",
            a.weights
        ),
        "kmeans" => Kind::KMeans,
        other => bail!("unknown --scheme '{other}' (linear, pow2, log, kmeans)"),
    };
    let adaround = (rounding(a) == "adaround").then(|| AdaRoundOptions {
        learn: LearnSettings { iters: a.adaround_iters, ..Default::default() },
        images: a.adaround_images,
        ..Default::default()
    });
    if adaround.is_some() && (a.adaround_iters == 0 || a.adaround_images == 0) {
        bail!("--adaround-iters and --adaround-images must be at least 1");
    }
    if reconstruction(a).is_some() && (a.recon_iters == 0 || a.recon_batch == 0 || a.recon_images == 0) {
        bail!("--recon-iters, --recon-batch and --recon-images must be at least 1");
    }
    // Every learned rounding: linear weights only, and not with the passes that rebuild layers.
    let r = rounding(a);
    if r != "nearest" {
        if !matches!(weight_kind, Kind::Linear(_)) {
            bail!(
                "--rounding {r} learns the rounding of linear weights (--scheme linear or pow2), not --scheme {}",
                a.scheme
            );
        }
        if a.sensitivity || a.max_drop.is_some() {
            bail!("--rounding {r} does not combine with --sensitivity or --max-drop yet");
        }
    }
    Ok(PtqOptions {
        weight_bits: a.weights,
        act_bits: a.acts,
        per_channel: !a.per_tensor,
        method,
        weight_kind,
        cle: a.cle,
        cle_relu6_to_relu: a.cle_relu6_to_relu,
        absorb_bias: a.absorb_bias,
        act_equalize: !a.no_act_equalize,
        bias_correction: !a.no_bias_correction,
        bn_stats: a.bn_stats,
        sensitivity: a.sensitivity,
        max_drop: a.max_drop,
        skip_first: a.skip_first,
        first_last_bits: a.first_last_bits,
        skip_last: a.skip_last,
        input_check: !a.quantize_input,
        float_input: a.float_input,
        threads: a.threads,
        adaround,
    })
}

/// The rounding asked for, `--method adaround|brecq|qdrop` included.
pub fn rounding(a: &QuantizeArgs) -> &str {
    match a.method.as_str() {
        m @ ("adaround" | "brecq" | "qdrop") => m,
        _ => a.rounding.as_str(),
    }
}

/// `brecq` or `qdrop` when a block reconstruction is asked for.
pub fn reconstruction(a: &QuantizeArgs) -> Option<&str> {
    Some(rounding(a)).filter(|r| matches!(*r, "brecq" | "qdrop"))
}

/// The block reconstruction's options.
pub fn recon_options(a: &QuantizeArgs) -> Option<lowbit_train::recon::ReconOptions> {
    let base = match reconstruction(a)? {
        "qdrop" => lowbit_train::recon::ReconOptions::qdrop(),
        _ => lowbit_train::recon::ReconOptions::brecq(),
    };
    Some(lowbit_train::recon::ReconOptions {
        iters: a.recon_iters,
        batch: a.recon_batch,
        images: a.recon_images,
        ..base
    })
}
