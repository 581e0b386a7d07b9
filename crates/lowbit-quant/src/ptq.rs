//! Post-training quantization as one library call ([`quantize`]): optional data-free steps
//! (cross-layer equalization, bias absorption, BatchNorm statistics), calibration, the activation
//! range method (one given, or `auto`: every candidate scored against float on the calibration
//! images), bias correction, per-layer sensitivity and sensitivity-driven mixed precision. The
//! result is a QDQ graph plus everything a report needs; printing, plots and files are the
//! caller's.

use lowbit_core::{Error, Graph, Result};

use crate::acteq;
use crate::adaround::{adaround, AdaRoundOptions, LayerRounding};
use crate::calibrate::{calibrate, Stats};
use crate::dfq::{self, BnDists};
use crate::observer::Method;
use crate::qdq::{build_qdq, first_last_overrides, split_activations, QdqConfig, QdqModel};
use crate::scheme::{Kind, Mode};
use crate::select::{choose_input_precision, choose_method, default_candidates, Candidate, InputPrecision};
use crate::sensitivity::{layer_sensitivity, mixed_precision, LayerSensitivity, MixedPrecision, Reference, ScoreSet};

/// Calibration images, already preprocessed: `n` images of `image_shape` (C, H, W) in `data`.
pub struct CalibSet<'a> {
    pub image_shape: &'a [usize],
    pub data: &'a [f32],
    pub n: usize,
    pub labels: Option<&'a [u32]>,
}

/// What [`quantize`] does.
#[derive(Clone, Debug)]
pub struct PtqOptions {
    pub weight_bits: u8,
    pub act_bits: u8,
    pub per_channel: bool,
    /// The activation range method; `None`: choose automatically.
    pub method: Option<Method>,
    /// The values weights take (linear, power-of-two scales, logarithmic, k-means).
    pub weight_kind: Kind,
    /// Cross-layer equalization; with `cle_relu6_to_relu` every pair, ReLU6 replaced by ReLU.
    pub cle: bool,
    pub cle_relu6_to_relu: bool,
    pub absorb_bias: bool,
    /// Stretch narrow activation channels feeding depthwise convolutions ([`acteq`]); only with
    /// per-channel linear weights, where it costs the weights nothing.
    pub act_equalize: bool,
    pub bias_correction: bool,
    /// Bias correction and absorption statistics from the model's BatchNorm layers.
    pub bn_stats: bool,
    /// Per-layer sensitivity (implied by `max_drop`).
    pub sensitivity: bool,
    /// Mixed precision: raise layers to 8-bit weights until the drop is at most this (pp).
    pub max_drop: Option<f64>,
    pub skip_first: bool,
    pub skip_last: bool,
    /// Keep the first and last compute layers at this width (weights, and the activation the last
    /// layer reads): the low-bit literature's convention (MQBench, BRECQ, QDrop) below 8 bits.
    pub first_last_bits: Option<u8>,
    /// Keep the model input float (the layers reading it compute in float with quantized weights)
    /// when its values do not fit one 8-bit grid and that brings the outputs closer to float
    /// ([`crate::select::choose_input_precision`]); off keeps the input quantized.
    pub input_check: bool,
    /// Keep the model input float whatever the check finds (accuracy over the first layer's speed).
    pub float_input: bool,
    pub threads: usize,
    /// Learn the weights' rounding (AdaRound) after the ranges are chosen; `None`: round to nearest.
    pub adaround: Option<AdaRoundOptions>,
}

impl Default for PtqOptions {
    fn default() -> Self {
        PtqOptions {
            weight_bits: 8,
            act_bits: 8,
            per_channel: true,
            method: None,
            weight_kind: Kind::Linear(crate::scheme::Mode::Symmetric),
            cle: false,
            cle_relu6_to_relu: false,
            absorb_bias: false,
            act_equalize: true,
            bias_correction: true,
            bn_stats: false,
            sensitivity: false,
            max_drop: None,
            skip_first: false,
            skip_last: false,
            first_last_bits: None,
            input_check: true,
            float_input: false,
            threads: 1,
            adaround: None,
        }
    }
}

/// The long stages, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Calibrate,
    Sensitivity,
    /// AdaRound's statistics pass (images) and learning (layers).
    AdaRound,
}

/// What [`quantize`] produced.
pub struct PtqOutcome {
    /// The QDQ model (after mixed precision, when asked).
    pub model: QdqModel,
    pub method: Method,
    pub bias_corrected: bool,
    /// `auto`'s candidates, the chosen one first, scored on `scored_images` calibration images.
    pub candidates: Vec<Candidate>,
    pub scored_images: usize,
    /// Per-layer sensitivity (empty unless asked).
    pub sensitivity: Vec<LayerSensitivity>,
    pub mixed: Option<MixedSummary>,
    /// What the data-free steps did, one line each.
    pub notes: Vec<String>,
    /// The input-precision check (dense-prediction models; `None` when it did not run).
    pub input_precision: Option<InputPrecision>,
    /// Calibration statistics of the graph that was quantized (histograms for plots).
    pub stats: Stats,
    /// AdaRound's per-layer outcome and seconds (empty and 0 without it).
    pub rounding: Vec<LayerRounding>,
    pub rounding_secs: f64,
    /// The float graph that was quantized (after the data-free steps) and the configuration of
    /// the chosen result: what a later reconstruction (BRECQ, QDrop) starts from.
    pub canon: Graph,
    pub config: QdqConfig,
}

/// The mixed-precision result without its model (that is [`PtqOutcome::model`]).
pub struct MixedSummary {
    pub max_drop: f64,
    pub raised: Vec<String>,
    pub drop_pp: f64,
    pub within_budget: bool,
}

/// Images `auto`, sensitivity and mixed precision score on (at most).
pub const SCORE_IMAGES: usize = 1000;

/// Quantizes `g` (a float model as read) with `calib`.
pub fn quantize(
    g: &Graph,
    calib: &CalibSet,
    o: &PtqOptions,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<PtqOutcome> {
    for (what, b) in [("weight", o.weight_bits), ("activation", o.act_bits)] {
        if !(2..=8).contains(&b) {
            return Err(Error::Invalid(format!("{b} {what} bits are out of range: linear quantization takes 2 to 8")));
        }
    }
    if calib.n == 0 {
        return Err(Error::Invalid("no calibration images".into()));
    }
    if o.adaround.is_some() && (o.sensitivity || o.max_drop.is_some()) {
        return Err(Error::Invalid(
            "AdaRound does not combine with --sensitivity or --max-drop yet (they rebuild layers with rounding to nearest)".into(),
        ));
    }
    let (mut canon, _) = lowbit_runtime::canonicalize_free(g)?;
    let shape = calib.image_shape;
    // Calibration batches: the batch size the file fixes (many exports fix 1), else 32.
    let batch = match g.runtime_inputs().first().and_then(|v| v.shape.as_ref()).and_then(|d| d.first()) {
        Some(lowbit_core::Dim::Fixed(b)) if *b > 0 => *b,
        _ => 32,
    };
    let quick = |canon: &Graph| calibrate(canon, shape, calib.data, calib.n, batch, o.threads, false, &mut |_, _| {});
    let mut notes = vec![];
    let mut bn = o.bn_stats.then(|| BnDists::from_graph(g));
    if let Some(d) = &bn {
        // Only pairs that folding merged describe a convolution of the canonical graph.
        let described = d.stats(&canon).len();
        if described == 0 {
            return Err(Error::Invalid(
                "--bn-stats needs Conv -> BatchNormalization pairs with constant parameters, and this model has none (BatchNorm already folded?)".into(),
            ));
        }
        notes.push(format!("BatchNorm statistics: {described} convolutions described by N(beta, gamma^2)"));
        if !o.bias_correction && !o.absorb_bias {
            notes.push("--bn-stats has no effect without bias correction or --absorb-bias".into());
        }
    }
    if o.cle {
        // The ReLU6 check stays on calibration data: BatchNorm's normal tails under-predict 6.
        let st = quick(&canon)?;
        let r = dfq::equalize(&mut canon, if o.cle_relu6_to_relu { None } else { Some(&st) }, 8);
        if let Some(d) = bn.as_mut() {
            d.rescale(&r.channel_scale);
        }
        notes.push(format!(
            "cross-layer equalization: {} conv pairs, {} ReLU6 -> ReLU{}, {} pairs skipped (ReLU6 saturates: {})",
            r.pairs,
            r.relu6_replaced,
            if o.cle_relu6_to_relu { " (all, as asked)" } else { " (never reached 6 on the calibration images)" },
            r.relu6_unsafe.len(),
            if r.relu6_unsafe.is_empty() { "none".to_string() } else { r.relu6_unsafe.join(", ") }
        ));
    }
    if o.absorb_bias {
        let mut st = quick(&canon)?;
        if let Some(d) = &bn {
            d.overlay(&canon, &mut st);
        }
        let (n, shifts) = dfq::absorb_biases(&mut canon, &st);
        if let Some(d) = bn.as_mut() {
            d.shift(&shifts);
        }
        notes.push(format!("bias absorption: {n} channels"));
    }
    if o.act_equalize && o.per_channel && matches!(o.weight_kind, Kind::Linear(Mode::Affine | Mode::Symmetric)) {
        let st = quick(&canon)?;
        let r = acteq::equalize_activations(&mut canon, &st);
        if let Some(d) = bn.as_mut() {
            d.rescale(&r.channel_scale);
        }
        if r.pairs > 0 {
            notes.push(format!(
                "activation equalization: {} narrow channels stretched in {} conv -> depthwise pairs",
                r.channels, r.pairs
            ));
        }
    }
    // Hard-swish and hard-sigmoid become their own nodes, so their inputs are calibrated and quantized too.
    let split = split_activations(&mut canon);
    if split > 0 {
        notes.push(format!("{split} hard-swish/hard-sigmoid activations quantized on their own (8-bit table)"));
    }
    let hist = o.method.is_none_or(|m| m.needs_histogram());
    let mut stats = calibrate(&canon, shape, calib.data, calib.n, batch, o.threads, hist, &mut |d, t| {
        progress(Stage::Calibrate, d, t)
    })
    .map_err(|e| Error::Invalid(format!("calibration failed: {e}")))?;
    // With --bn-stats, bias correction reads BatchNorm's per-channel means (ranges stay calibrated).
    if let Some(d) = &bn {
        d.overlay(&canon, &mut stats);
    }
    let mut cfg = QdqConfig {
        weight_bits: o.weight_bits,
        act_bits: o.act_bits,
        per_channel: o.per_channel,
        method: o.method.unwrap_or(Method::Mse),
        weight_mse: o.weight_bits < 8,
        skip_first: o.skip_first,
        skip_last: o.skip_last,
        bias_correction: o.bias_correction,
        weight_kind: o.weight_kind,
        ..Default::default()
    };
    if let Some(b) = o.first_last_bits {
        let (w, a) = first_last_overrides(&canon, b);
        cfg.weight_bits_for.extend(w);
        cfg.act_bits_for.extend(a);
    }
    let scored = calib.n.min(SCORE_IMAGES);
    let per: usize = shape.iter().product();
    let (mut model, method, bias_corrected, candidates) = match o.method {
        None => {
            // Bias correction off holds for auto too; otherwise auto tries both.
            let bc: &[bool] = if o.bias_correction { &[true, false] } else { &[false] };
            let cands = default_candidates();
            let (q, c) =
                choose_method(&canon, &stats, &cfg, &cands, bc, shape, &calib.data[..scored * per], scored, o.threads)?;
            let (m, b) = (c[0].method, c[0].bias_correction);
            (q, m, b, c)
        }
        Some(m) => (build_qdq(&canon, &stats, &cfg)?, m, o.bias_correction, vec![]),
    };
    // The model input's 8-bit rounding against the input kept float.
    let mut input_precision = None;
    if o.float_input {
        cfg.float_input = true;
        model = build_qdq(&canon, &stats, &QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() })?;
    } else if o.input_check && !o.skip_first {
        let chosen = QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() };
        if let Some((ip, q)) =
            choose_input_precision(&canon, &stats, &chosen, shape, &calib.data[..scored * per], scored, o.threads)?
        {
            notes.push(format!(
                "input precision: outputs {:.2} dB from float with the input quantized to 8 bits, {:.2} dB with it float: {}",
                ip.sqnr_int8_input_db,
                ip.sqnr_float_input_db,
                if ip.float_input() { "input kept float" } else { "input quantized" }
            ));
            if ip.float_input() {
                cfg.float_input = true;
                model = q;
            }
            input_precision = Some(ip);
        }
    }
    // Learned rounding: of every layer (AdaRound asked), or, with the input float, of the layers
    // reading it: their weights' rounding is then their only error, and their narrow output
    // channels are what activation equalization stretches (a few input channels make it cheap).
    // The learned integers travel in `cfg`, so later builds from it keep them.
    let (mut rounding, mut rounding_secs) = (vec![], 0.0);
    let learn = match &o.adaround {
        Some(ao) => Some(AdaRoundOptions { threads: o.threads, ..ao.clone() }),
        None if cfg.float_input => {
            let x = canon.runtime_inputs().first().map(|v| v.name.clone()).unwrap_or_default();
            let first: std::collections::HashSet<String> = canon
                .nodes
                .iter()
                .filter(|n| n.inputs.first() == Some(&x) && crate::qdq::is_compute(n, &canon))
                .map(|n| n.name.clone())
                .collect();
            (!first.is_empty()).then(|| AdaRoundOptions { threads: o.threads, only: Some(first), ..Default::default() })
        }
        None => None,
    };
    if let Some(ao) = learn {
        let chosen = QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() };
        let (learned, r, secs) = adaround(&canon, &stats, &chosen, shape, calib.data, calib.n, &ao, &mut |_, d, t| {
            progress(Stage::AdaRound, d, t)
        })?;
        cfg.weight_scale_override = learned.weight_scale_override;
        cfg.weight_int_override = learned.weight_int_override;
        cfg.bias_override = learned.bias_override;
        model = build_qdq(&canon, &stats, &QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() })?;
        if ao.only.is_some() {
            notes.push(format!(
                "input float: the rounding of the {} layer(s) reading it learned on the calibration images ({secs:.1} s)",
                r.len()
            ));
        }
        rounding = r;
        rounding_secs = secs;
    }
    // Sensitivity and mixed precision, scored on the calibration images (never the evaluation set).
    let (mut sensitivity, mut mixed) = (vec![], None);
    if o.sensitivity || o.max_drop.is_some() {
        let set = ScoreSet {
            image_shape: shape,
            data: &calib.data[..scored * per],
            n: scored,
            labels: calib.labels.map(|l| &l[..scored]),
            threads: o.threads,
        };
        let chosen = QdqConfig { method, bias_correction: bias_corrected, ..cfg.clone() };
        let r = Reference::new(&canon, &set)?;
        sensitivity =
            layer_sensitivity(&canon, &stats, &chosen, &set, &r, &mut |d, t| progress(Stage::Sensitivity, d, t))?;
        if let Some(md) = o.max_drop {
            let MixedPrecision { model: m, raised, drop_pp, within_budget } =
                mixed_precision(&canon, &stats, &chosen, 8, &sensitivity, md, &set, &r)?;
            mixed = Some(MixedSummary { max_drop: md, raised, drop_pp, within_budget });
            model = m;
        }
    }
    if !model.layers.iter().any(|l| l.weight_bits.is_some()) {
        return Err(Error::Invalid(
            "no quantizable layer (Conv/Gemm/MatMul with constant weights) in this model".into(),
        ));
    }
    let config = QdqConfig { method, bias_correction: bias_corrected, ..cfg };
    Ok(PtqOutcome {
        canon,
        config,
        model,
        method,
        bias_corrected,
        candidates,
        scored_images: scored,
        sensitivity,
        mixed,
        notes,
        input_precision,
        stats,
        rounding,
        rounding_secs,
    })
}
