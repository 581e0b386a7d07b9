//! Quantization-aware training: a float model is canonicalized (BatchNorm folded into the
//! convolutions, activations fused: exactly the graph that deploys), calibrated and quantized
//! post-training ([`prepare`]); fake quantizers initialised from that result are attached to the
//! trainable model ([`attach`]); after training, the learned steps are exported as a standard QDQ
//! graph ([`export`]).
//!
//! BatchNorm is folded before training, so the trained weights are the deployed weights: nothing
//! is folded after training and the exported model computes what was trained.

use std::collections::HashMap;

use lowbit_core::Graph;
use lowbit_data::ImageSet;
use lowbit_quant::calibrate::{calibrate, Stats};
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig, QdqModel};
use lowbit_quant::scheme::{quantize_linear_weights, Granularity, QScheme};

use crate::fq::Range;
use crate::model::{host, Model, QatMethod, Quantizer};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct QatConfig {
    pub method: QatMethod,
    pub weight_bits: u8,
    pub act_bits: u8,
    pub per_channel: bool,
    /// Observer for the initial activation ranges.
    pub observer: Method,
    pub skip_first: bool,
    pub skip_last: bool,
    /// DSQ's initial characteristic variable.
    pub dsq_alpha: f32,
    /// Per-node weight bits overriding `weight_bits` (mixed precision from post-training).
    pub weight_bits_for: HashMap<String, u8>,
    /// Keep the first and last compute layers quantized at this width (weights, and the
    /// activation the last layer reads); `skip_first`/`skip_last` keep them float instead.
    pub first_last_bits: Option<u8>,
}

impl Default for QatConfig {
    fn default() -> Self {
        QatConfig {
            method: QatMethod::Lsq,
            weight_bits: 4,
            act_bits: 4,
            per_channel: true,
            observer: Method::Mse,
            skip_first: false,
            skip_last: false,
            dsq_alpha: 0.2,
            weight_bits_for: HashMap::new(),
            first_last_bits: None,
        }
    }
}

/// The deployable float graph, its calibration and the post-training quantization QAT starts from.
pub struct Prepared {
    pub graph: Graph,
    pub stats: Stats,
    pub ptq: QdqModel,
    pub qdq_config: QdqConfig,
    pub image_shape: Vec<usize>,
}

/// Canonicalizes `float` and quantizes it post-training with calibration images `calib`.
pub fn prepare(float: &Graph, calib: &ImageSet, cfg: &QatConfig, threads: usize) -> Result<Prepared> {
    let (graph, _) = lowbit_runtime::specialize::canonicalize_free(float).map_err(Error::Core)?;
    let image_shape = vec![calib.c, calib.h, calib.w];
    let stats = calibrate(&graph, &image_shape, &calib.data, calib.n, 100, threads, true, &mut |_, _| {})
        .map_err(Error::Core)?;
    let mut weight_bits_for = cfg.weight_bits_for.clone();
    let mut act_bits_for = HashMap::new();
    if let Some(b) = cfg.first_last_bits {
        let (w, a) = lowbit_quant::qdq::first_last_overrides(&graph, b);
        weight_bits_for.extend(w);
        act_bits_for = a;
    }
    let qdq_config = QdqConfig {
        weight_bits: cfg.weight_bits,
        act_bits: cfg.act_bits,
        per_channel: cfg.per_channel,
        method: cfg.observer,
        weight_mse: cfg.weight_bits < 8,
        skip_first: cfg.skip_first,
        skip_last: cfg.skip_last,
        bias_correction: false,
        weight_bits_for,
        act_bits_for,
        ..Default::default()
    };
    let ptq = build_qdq(&graph, &stats, &qdq_config).map_err(Error::Core)?;
    Ok(Prepared { graph, stats, ptq, qdq_config, image_shape })
}

/// Attaches fake quantizers initialised from `prep.ptq` to `model` (built from `prep.graph`).
/// `value_sizes`: per-image element count of each activation (for LSQ's gradient scale).
pub fn attach(model: &mut Model, prep: &Prepared, cfg: &QatConfig, value_sizes: &HashMap<String, usize>) -> Result<()> {
    let bits_of: HashMap<&str, Option<u8>> = prep.ptq.layers.iter().map(|l| (l.node.as_str(), l.weight_bits)).collect();
    for (node, w, cout) in model.compute_layers() {
        let Some(Some(bits)) = bits_of.get(node.as_str()).copied() else { continue };
        let p = &model.params[w];
        let shape = p.shape.clone();
        let axis = if shape.len() == 2 && shape[1] == cout && shape[0] != cout { 1 } else { 0 };
        let scheme = QScheme {
            granularity: if cfg.per_channel { Granularity::PerChannel { axis } } else { Granularity::PerTensor },
            ..QScheme::weights(bits)
        };
        let (_, qp) = quantize_linear_weights(&host(&p.t), &shape, &scheme, bits < 8);
        let channels = qp.scale.len();
        let numel: usize = shape.iter().product();
        let range = Range::signed(bits);
        let step = model.add_param(&format!("{node}.weight_step"), qp.scale.clone());
        let (method, alpha) = match cfg.method {
            // PACT is an activation method: weights keep their calibrated steps.
            QatMethod::Pact => (QatMethod::Ste, None),
            QatMethod::Dsq => {
                (QatMethod::Dsq, Some(model.add_param(&format!("{node}.weight_alpha"), vec![cfg.dsq_alpha])))
            }
            m => (m, None),
        };
        let grad_scale = range.lsq_grad_scale(numel, channels);
        model.weight_q.insert(w, Quantizer { method, range, step, alpha, grad_scale, channels });
    }
    let mut acts: Vec<(&String, &(f32, i32))> = prep.ptq.act_params.iter().collect();
    acts.sort_by(|a, b| a.0.cmp(b.0));
    let inputs: Vec<String> = prep.graph.runtime_inputs().iter().map(|i| i.name.clone()).collect();
    for (v, &(s, zp)) in acts {
        // The model input is 8-bit data quantized losslessly (see `build_qdq`): a fixed step.
        let is_input = inputs.contains(v);
        let method = if is_input { QatMethod::Ste } else { cfg.method };
        let range = Range::unsigned(if is_input { 8 } else { prep.qdq_config.act_bits_of(v) }, zp);
        let init = if method == QatMethod::Pact { (range.qmax - range.zp) * s } else { s };
        let step = model.add_param(&format!("{v}.act_step"), vec![init]);
        let alpha = (method == QatMethod::Dsq).then(|| model.add_param(&format!("{v}.act_alpha"), vec![cfg.dsq_alpha]));
        let numel = value_sizes.get(v).copied().unwrap_or(1);
        let grad_scale = range.lsq_grad_scale(numel, 1);
        model.act_q.insert(v.clone(), Quantizer { method, range, step, alpha, grad_scale, channels: 1 });
    }
    Ok(())
}

/// The learned activation parameters and weight steps, as QDQ overrides.
pub fn learned(model: &Model) -> (HashMap<String, (f32, i32)>, HashMap<String, Vec<f32>>) {
    let mut acts = HashMap::new();
    for (v, q) in &model.act_q {
        let p = host(&model.params[q.step].t)[0];
        let s = if q.method == QatMethod::Pact { p / (q.range.qmax - q.range.zp) } else { p };
        acts.insert(v.clone(), (s.abs().max(1e-12), q.range.zp as i32));
    }
    let mut weights = HashMap::new();
    let layers = model.compute_layers();
    for (node, w, _) in layers {
        if let Some(q) = model.weight_q.get(&w) {
            let s: Vec<f32> = host(&model.params[q.step].t).iter().map(|v| v.abs().max(1e-12)).collect();
            weights.insert(node, s);
        }
    }
    (acts, weights)
}

/// Exports the trained model as a QDQ graph with the learned steps.
pub fn export(model: &Model, prep: &Prepared) -> Result<QdqModel> {
    let g = model.to_graph();
    let (acts, weights) = learned(model);
    let cfg = QdqConfig { act_override: acts, weight_scale_override: weights, ..prep.qdq_config.clone() };
    build_qdq(&g, &prep.stats, &cfg).map_err(Error::Core)
}

/// The trainable fake-quant model for `prep`: built from the deployable graph, one forward pass
/// on `sample` (one image, CHW) to learn activation sizes, quantizers attached.
pub fn model(prep: &Prepared, cfg: &QatConfig, sample: &[f32], device: &burn::tensor::Device) -> Result<Model> {
    let mut m = Model::from_graph(&prep.graph, device)?;
    let s = &prep.image_shape;
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(sample.to_vec(), [1, s[0], s[1], s[2]]),
        device,
    );
    m.forward(x, false)?;
    let sizes = m.value_sizes.clone();
    attach(&mut m, prep, cfg, &sizes)?;
    Ok(m)
}
