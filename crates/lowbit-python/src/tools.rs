//! quantize / evaluate / bench / inspect from Python: the command line's own functions (same
//! options, checks, printed tables and JSON reports), with images given as numpy arrays as well as
//! paths. Each returns its JSON report as a string (python/lowbit/__init__.py parses it). The long
//! ones release the GIL.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use lowbit_cli::commands::{self, EvalInputs};
use lowbit_cli::quantize::{self as q, QuantizeArgs};
use lowbit_cli::{common, outputs, DataArgs};
use lowbit_data::ImageSet;
use numpy::{PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::convert::{err, guarded};

/// `lowbit quantize`'s options, parsed from the flags the Python wrapper builds (so defaults and
/// checks are the command line's).
#[derive(Parser)]
#[command(name = "lowbit quantize", no_binary_name = true)]
struct QuantizeCli {
    #[command(flatten)]
    a: QuantizeArgs,
}

/// Images given by the caller, already preprocessed (N, C, H, W float32), with optional labels.
fn image_set(x: &PyReadonlyArray4<'_, f32>, labels: Option<Vec<u32>>, what: &str) -> PyResult<ImageSet> {
    let s = x.shape();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    if n == 0 || c * h * w == 0 {
        return Err(err(format!("{what}: no images (array of shape {s:?})")));
    }
    if let Some(l) = labels.as_ref().filter(|l| l.len() != n) {
        return Err(err(format!("{what}: {} labels for {n} images", l.len())));
    }
    let data = match x.as_slice() {
        Ok(v) => v.to_vec(),
        Err(_) => x.as_array().iter().copied().collect(),
    };
    Ok(ImageSet {
        n,
        c,
        h,
        w,
        data,
        labels,
        names: (0..n).map(|i| format!("array:{i}")).collect(),
        source: what.to_string(),
    })
}

fn quiet(verbose: bool) {
    common::set_quiet(!verbose);
}

/// Parses `flags` (with `calib_path` when given) as `lowbit quantize` would and checks the options,
/// the model file and the outputs, before the caller reads any calibration data.
#[pyfunction]
#[pyo3(signature = (flags, calib_path = None, arrays = false))]
pub fn check_quantize(flags: Vec<String>, calib_path: Option<PathBuf>, arrays: bool) -> PyResult<()> {
    let a = parse_quantize(flags, calib_path.as_deref())?;
    lowbit_cli::quantize_args::options(&a).map_err(err)?;
    if arrays && a.eval.is_some() {
        return Err(err("quantize: eval needs lowbit's own preprocessing; give the calibration data as a path"));
    }
    if !a.model.is_file() {
        common::load_model(&a.model).map_err(err)?;
    }
    check_quantize_outputs(&a, calib_path.as_deref())
}

fn parse_quantize(mut flags: Vec<String>, calib_path: Option<&std::path::Path>) -> PyResult<QuantizeArgs> {
    let calib = calib_path.map_or("<arrays>".into(), |p| p.display().to_string());
    // Before the positional model path (which follows `--`).
    let at = flags.iter().position(|f| f == "--").unwrap_or(flags.len());
    flags.insert(at, format!("--calib={calib}"));
    let a =
        QuantizeCli::try_parse_from(&flags).map_err(|e| err(e.to_string().lines().next().unwrap_or("").to_string()))?.a;
    Ok(QuantizeArgs { threads: common::clamp_threads(a.threads), ..a })
}

fn check_quantize_outputs(a: &QuantizeArgs, calib_path: Option<&std::path::Path>) -> PyResult<()> {
    let mut ins = vec![a.model.as_path()];
    ins.extend(calib_path);
    ins.extend(a.eval.as_deref());
    let mut outs = vec![("out", a.output.as_path())];
    outs.extend(a.json.as_deref().map(|j| ("json", j)));
    outputs::check_outputs(&ins, &outs).map_err(err)?;
    if let Some(d) = &a.plots {
        outputs::check_folder("plots", d).map_err(err)?;
    }
    Ok(())
}

/// `lowbit quantize MODEL --calib ... -o OUT` with `flags` (the command line's, without --calib):
/// calibration images from `calib` (arrays, preprocessed) or `calib_path` (a file or folder lowbit
/// reads with its presets). Returns the JSON report.
#[pyfunction]
#[pyo3(signature = (flags, calib = None, labels = None, calib_path = None, verbose = false))]
pub fn quantize(
    py: Python<'_>,
    flags: Vec<String>,
    calib: Option<PyReadonlyArray4<'_, f32>>,
    labels: Option<Vec<u32>>,
    calib_path: Option<PathBuf>,
    verbose: bool,
) -> PyResult<String> {
    let a = parse_quantize(flags, calib_path.as_deref())?;
    check_quantize_outputs(&a, calib_path.as_deref())?;
    let set = match (&calib, &calib_path) {
        (Some(x), None) => Some(image_set(x, labels, "calibration arrays")?),
        (None, Some(_)) => None,
        _ => return Err(err("quantize: give calibration images as arrays or as a path, one of the two")),
    };
    quiet(verbose);
    let r = py
        .detach(|| {
            guarded(|| match set {
                Some(set) => {
                    let g = common::load_model(&a.model)?;
                    q::quantize_set(&a, g, &set, "none (arrays preprocessed by the caller)", None, Instant::now())
                }
                None => q::quantize(&a),
            })
        })
        .map_err(err)?;
    Ok(r.map_err(err)?.report.to_string())
}

/// `lowbit eval MODEL --data ...` (classification: top-1/top-5 with labels, agreement with a
/// reference model): images from `data` (arrays, preprocessed) or `data_path` with `preset`,
/// `split`, `limit`. Returns the JSON report.
#[pyfunction]
#[pyo3(signature = (model, data = None, labels = None, data_path = None, reference = None, preset = None,
    split = "test".to_string(), limit = None, batch = 50, threads = 1, json = None, verbose = false))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    model: PathBuf,
    data: Option<PyReadonlyArray4<'_, f32>>,
    labels: Option<Vec<u32>>,
    data_path: Option<PathBuf>,
    reference: Option<PathBuf>,
    preset: Option<String>,
    split: String,
    limit: Option<usize>,
    batch: usize,
    threads: usize,
    json: Option<PathBuf>,
    verbose: bool,
) -> PyResult<String> {
    let threads = common::clamp_threads(threads);
    if let Some(j) = &json {
        let mut ins = vec![model.as_path()];
        ins.extend(data_path.as_deref());
        ins.extend(reference.as_deref());
        outputs::check_outputs(&ins, &[("json", j.as_path())]).map_err(err)?;
    }
    if !["train", "test"].contains(&split.as_str()) {
        return Err(err(format!("split '{split}': train or test")));
    }
    let set = match (&data, &data_path) {
        (Some(x), None) => Some(image_set(x, labels, "evaluation arrays")?),
        (None, Some(_)) => None,
        _ => return Err(err("evaluate: give the images as arrays or as a path, one of the two")),
    };
    quiet(verbose);
    let r = py
        .detach(|| {
            guarded(|| match (set, &data_path) {
                (Some(set), _) => {
                    let g = common::load_model(&model)?;
                    let reference = reference
                        .as_deref()
                        .map(|p| Ok::<_, anyhow::Error>((p, common::load_model(p)?)))
                        .transpose()?;
                    let what = EvalInputs {
                        model: &model,
                        data: &set.source,
                        preset: "none (arrays preprocessed by the caller)",
                        reference,
                    };
                    commands::eval_set(&what, g, &set, batch, threads, json.as_deref(), false)
                }
                (None, Some(p)) => {
                    let mut a = DataArgs { split, limit, image: Default::default() };
                    a.image.preset = preset;
                    commands::eval(&model, p, &a, reference.as_deref(), batch, threads, json.as_deref(), false)
                }
                (None, None) => unreachable!("checked above"),
            })
        })
        .map_err(err)?;
    Ok(r.map_err(err)?.1.to_string())
}

/// `lowbit bench MODEL`: latency on random input of the model's shape. Returns the JSON report.
#[pyfunction]
#[pyo3(signature = (model, batch = 1, threads = 1, iters = 50, warmup = 10, input_shape = None, json = None, verbose = false))]
#[allow(clippy::too_many_arguments)]
pub fn bench(
    py: Python<'_>,
    model: PathBuf,
    batch: usize,
    threads: usize,
    iters: usize,
    warmup: usize,
    input_shape: Option<Vec<usize>>,
    json: Option<PathBuf>,
    verbose: bool,
) -> PyResult<String> {
    let threads = common::clamp_threads(threads);
    if let Some(j) = &json {
        outputs::check_outputs(&[model.as_path()], &[("json", j.as_path())]).map_err(err)?;
    }
    let shape = input_shape.map(|s| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
    quiet(verbose);
    let r = py
        .detach(|| {
            guarded(|| commands::bench(&model, batch, threads, iters, warmup, shape.as_deref(), json.as_deref()))
        })
        .map_err(err)?;
    Ok(r.map_err(err)?.report.to_string())
}

/// `lowbit inspect MODEL`: layers, kernels, MACs, memory. Returns the JSON report.
#[pyfunction]
#[pyo3(signature = (model, input_shape = None, json = None, verbose = false))]
pub fn inspect(
    py: Python<'_>,
    model: PathBuf,
    input_shape: Option<Vec<usize>>,
    json: Option<PathBuf>,
    verbose: bool,
) -> PyResult<String> {
    if let Some(j) = &json {
        outputs::check_outputs(&[model.as_path()], &[("json", j.as_path())]).map_err(err)?;
    }
    let shape = input_shape.map(|s| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
    quiet(verbose);
    let r = py.detach(|| guarded(|| commands::inspect(&model, shape.as_deref(), json.as_deref()))).map_err(err)?;
    Ok(r.map_err(err)?.to_string())
}

/// This CPU (model name, features) and the kernel paths lowbit runs on it (`LOWBIT_ISA`,
/// `LOWBIT_BIN_ISA` respected), as JSON: what a benchmark should name.
#[pyfunction]
pub fn cpu() -> PyResult<String> {
    use lowbit_kernels::isa::{features, Paths};
    let name = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    });
    let p = Paths::selected().map_err(err)?;
    let paths = serde_json::json!({"f32": p.f32.name(), "int8": p.int8.name(), "binary": p.binary.name()});
    Ok(serde_json::json!({"model_name": name, "features": features().names(), "paths": paths}).to_string())
}
