//! `lowbit quantize`: load, calibrate and quantize ([`lowbit_quant::ptq`]), evaluate before/after,
//! write the file and the report.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_data::Split;
use lowbit_quant::ptq::{self, CalibSet, Stage};

use crate::common::*;
use crate::quantize_args::options;
pub use crate::quantize_args::QuantizeArgs;
use crate::quantize_report as report;

/// Summary of a quantization run.
pub struct QuantizeOutcome {
    pub float_top1: Option<f64>,
    pub quant_top1: Option<f64>,
    pub float_weight_bytes: usize,
    pub quant_weight_bytes: usize,
    /// Weight bits per quantized layer (after mixed precision).
    pub weight_bits: Vec<(String, Option<u8>)>,
    pub graph: lowbit_core::Graph,
    /// The JSON report (what `--json` writes).
    pub report: serde_json::Value,
}

pub fn quantize(a: &QuantizeArgs) -> Result<QuantizeOutcome> {
    options(a)?;
    let t0 = Instant::now();
    let g = load_model(&a.model)?;
    let split = if a.calib_split == "test" { Split::Test } else { Split::Train };
    let calib_path = a.calib.clone().ok_or_else(|| anyhow!("--calib is required"))?;
    load_data(&calib_path, split, &lowbit_data::Preprocess::none(), Some(1))?;
    let (preset, pre) = a.image.resolve(&g, &calib_path)?;
    let calib = load_data(&calib_path, split, &pre, Some(a.calib_n))?;
    quantize_set(a, g, &calib, &preset, Some(&pre), t0)
}

/// [`quantize`] on calibration images already loaded and preprocessed (`a.calib` is not read; the
/// first `a.calib_n` images of `calib` are used); `pre` is their preprocessing when lowbit did it
/// (then `a.eval` can be loaded the same way), `preset` its name for the report.
pub fn quantize_set(
    a: &QuantizeArgs,
    mut g: lowbit_core::Graph,
    calib: &lowbit_data::ImageSet,
    preset: &str,
    pre: Option<&lowbit_data::Preprocess>,
    t0: Instant,
) -> Result<QuantizeOutcome> {
    let opts = options(a)?;
    let calib = &calib.slice(0, a.calib_n);
    if calib.is_empty() {
        bail!("{}: no calibration images", calib.source);
    }
    a.image.fit_model(&mut g, &a.model, [calib.c, calib.h, calib.w])?;
    let image_shape = vec![calib.c, calib.h, calib.w];
    // Check shapes with a clear message before the long part.
    let (canon, _) = lowbit_runtime::canonicalize_free(&g).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    compile(&canon, &a.model, [vec![1], image_shape.clone()].concat(), 1)
        .map_err(|e| anyhow!("{e} (calibration data {} has images of shape {:?})", calib.source, image_shape))?;
    let labels: Option<Vec<u32>> = calib.labels.clone();
    let set = CalibSet { image_shape: &image_shape, data: &calib.data, n: calib.n, labels: labels.as_deref() };
    let mut bar: Option<(Stage, indicatif::ProgressBar)> = None;
    let r = ptq::quantize(&g, &set, &opts, &mut |stage, done, total| {
        if bar.as_ref().is_none_or(|b| b.0 != stage) {
            bar.take().inspect(|b| b.1.finish_and_clear());
            let name = match stage {
                Stage::Calibrate => "calibrate",
                Stage::Sensitivity => "sensitivity",
                Stage::AdaRound => "adaround",
            };
            bar = Some((stage, progress(total as u64, name)));
        }
        if let Some((_, b)) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    })
    .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    if let Some((_, b)) = bar {
        b.finish_and_clear();
    }
    let mut r = r;
    let recon = match crate::quantize_args::recon_options(a) {
        None => None,
        Some(o) => {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads.max(1)).build()?;
            let bar = progress(0, "reconstruct blocks");
            let (m, blocks, secs) = pool
                .install(|| {
                    lowbit_train::recon::reconstruct(
                        &r.canon,
                        &r.stats,
                        &r.config,
                        &r.model,
                        &image_shape,
                        &calib.data,
                        calib.n,
                        &o,
                        &mut |d, t| {
                            bar.set_length(t as u64);
                            bar.set_position(d as u64);
                        },
                    )
                })
                .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
            bar.finish_and_clear();
            r.model = m;
            Some(report::Recon { kind: if o.drop.is_some() { "qdrop" } else { "brecq" }, blocks, secs })
        }
    };
    report::choice_and_sensitivity(a, &r, calib.labels.is_some());
    if let Some(dir) = &a.plots {
        report::plots(a, &r, dir, calib.labels.is_some())?;
    }
    let calib_secs = t0.elapsed().as_secs_f64();
    let ev = match (&a.eval, pre) {
        (Some(ev), Some(pre)) => Some(report::evaluate(a, ev, &g, &r.model.graph, pre, &image_shape)?),
        (Some(ev), None) => bail!(
            "{}: evaluation data needs lowbit's preprocessing, and these calibration images came preprocessed",
            ev.display()
        ),
        (None, _) => None,
    };
    lowbit_onnx::write_model(&r.model.graph, &a.output).map_err(|e| anyhow!("{e}"))?;
    let report = report::summary(a, &r, recon.as_ref(), preset, calib.n, ev.as_ref(), calib_secs, t0)?;
    let q = &r.model;
    Ok(QuantizeOutcome {
        float_top1: ev.as_ref().and_then(|e| e.float_top1),
        quant_top1: ev.as_ref().and_then(|e| e.quant_top1),
        float_weight_bytes: q.float_weight_bytes,
        quant_weight_bytes: q.weight_bytes,
        weight_bits: q.layers.iter().map(|l| (l.node.clone(), l.weight_bits)).collect(),
        graph: q.graph.clone(),
        report,
    })
}
