//! Helpers shared by the subcommands: loading models and data with good errors, choosing the
//! preprocessing, compiling plans, writing outputs atomically, printing tables.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use lowbit_core::{Dim, Graph};
use lowbit_data::{ImageSet, Preprocess, Split};
use lowbit_runtime::{Plan, PlanOptions};

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the commands' printed tables and summaries off (or on again); reports, files and errors
/// are unchanged. The Python package runs quiet unless asked.
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// `println!` unless [`set_quiet`] is on.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        if !$crate::common::quiet() {
            println!($($t)*)
        }
    };
}

/// A `--threads` value bounded by this machine's CPUs (with a warning when it was more), at least 1.
pub fn clamp_threads(n: usize) -> usize {
    let cpus = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    if n > cpus {
        eprintln!("warning: --threads {n} is more than this machine's {cpus} CPUs; using {cpus}");
        cpus
    } else {
        n.max(1)
    }
}

pub fn load_model(path: &Path) -> Result<Graph> {
    lowbit_onnx::read_model(path).map_err(|e| anyhow!("{e}"))
}

/// The one runtime input of an image classifier.
pub fn single_input(g: &Graph) -> Result<lowbit_core::ValueInfo> {
    let ins = g.runtime_inputs();
    if ins.len() != 1 {
        bail!("model has {} inputs; this command needs exactly one (an image batch)", ins.len());
    }
    Ok(ins[0].clone())
}

/// The input shape for batch `batch`: symbolic leading dim -> batch; other symbolic dims must come
/// from `override_shape`.
pub fn input_shape(g: &Graph, batch: usize, override_shape: Option<&[usize]>) -> Result<Vec<usize>> {
    let vi = single_input(g)?;
    if let Some(s) = override_shape {
        let mut s = s.to_vec();
        if !s.is_empty() {
            s[0] = batch;
        }
        return Ok(s);
    }
    let dims = vi.shape.ok_or_else(|| anyhow!("input '{}' declares no shape; pass --input-shape", vi.name))?;
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(v) if i == 0 => Ok(if *v == 1 { batch } else { *v }),
            Dim::Fixed(v) => Ok(*v),
            Dim::Sym(_) if i == 0 => Ok(batch),
            Dim::Sym(s) => Err(anyhow!("input '{}' dim {i} is symbolic ('{s}'); pass --input-shape", vi.name)),
        })
        .collect()
}

/// `--input-shape`: the model's (single) input is declared with this shape, also where the file
/// fixes another one (old exports fix a size the network does not need). The rank must match.
pub fn override_input_shape(g: &mut Graph, shape: &[usize]) -> Result<()> {
    let vi = single_input(g)?;
    if let Some(d) = vi.shape.as_ref().filter(|d| d.len() != shape.len()) {
        bail!("--input-shape {shape:?} has rank {}, input '{}' has rank {}", shape.len(), vi.name, d.len());
    }
    if shape.contains(&0) {
        bail!("--input-shape {shape:?} has a zero dimension");
    }
    let dims = Some(shape.iter().map(|&d| Dim::Fixed(d)).collect());
    g.inputs.iter_mut().filter(|i| i.name == vi.name).for_each(|i| i.shape = dims.clone());
    Ok(())
}

pub fn parse_shape(s: &str) -> Result<Vec<usize>> {
    s.split(|c| c == ',' || c == 'x')
        .map(|p| p.trim().parse::<usize>().with_context(|| format!("bad --input-shape '{s}' (want e.g. 1,3,224,224)")))
        .collect()
}

/// Picks the preprocessing: explicit name, model metadata `lowbit.preprocess`, or a guess from the
/// data path and the model's input shape.
pub fn choose_preset(name: Option<&str>, g: &Graph, data: &Path) -> Result<(String, Preprocess)> {
    if let Some(n) = name {
        let p =
            Preprocess::by_name(n).ok_or_else(|| anyhow!("unknown --preset '{n}' (one of {:?})", Preprocess::NAMES))?;
        return Ok((n.to_string(), p));
    }
    if let Some((_, v)) = g.metadata.iter().find(|(k, _)| k == "lowbit.preprocess") {
        if let Some(p) = Preprocess::by_name(v) {
            return Ok((v.clone(), p));
        }
    }
    let d = data.display().to_string().to_lowercase();
    let shape = single_input(g)?.shape.unwrap_or_default();
    let fixed: Vec<Option<usize>> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        })
        .collect();
    let guess = if d.contains("fashion") || d.contains("fmnist") {
        "fmnist"
    } else if d.contains("mnist") {
        "mnist"
    } else if fixed.get(1) == Some(&Some(3)) && fixed.get(2) == Some(&Some(224)) {
        "imagenet"
    } else if fixed.get(1) == Some(&Some(3)) && fixed.get(2) == Some(&Some(48))
        || g.inputs.iter().any(|i| i.name == "x") && fixed.get(1) == Some(&Some(3))
    {
        "ppocr"
    } else {
        bail!("cannot tell how to preprocess {}; pass --preset ({:?})", data.display(), Preprocess::NAMES)
    };
    Ok((guess.to_string(), Preprocess::by_name(guess).unwrap()))
}

pub fn load_data(path: &Path, split: Split, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    let set = lowbit_data::load_any(path, split, pre, limit).map_err(|e| anyhow!("{e}"))?;
    if set.is_empty() {
        bail!("{}: no images", path.display());
    }
    Ok(set)
}

/// Compiles a plan, turning errors into messages that name the model file.
/// Quantized nodes that stay in f32 are reported on stderr.
pub fn compile(g: &Graph, model: &Path, shape: Vec<usize>, threads: usize) -> Result<Plan> {
    let p = Plan::compile(g, &[shape], &PlanOptions { threads, ..Default::default() })
        .map_err(|e| anyhow!("{}: {e}", model.display()))?;
    for note in p.int8_notes() {
        eprintln!("note: {}: {note}", model.display());
    }
    Ok(p)
}

pub use crate::outputs::write_atomic;

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// Prints a table with aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    if quiet() {
        return;
    }
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<width$}", c, width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    println!("{}", w.iter().map(|&n| "-".repeat(n)).collect::<Vec<_>>().join("  "));
    for r in rows {
        line(r.clone());
    }
}

pub fn progress(len: u64, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Top-1 accuracy of `g` on a labelled set, on lowbit's runtime.
pub fn top1(g: &Graph, set: &ImageSet, threads: usize) -> Result<f64> {
    let mut c = lowbit_runtime::classify::Classifier::new(g.clone(), vec![set.c, set.h, set.w], threads);
    let r = lowbit_runtime::classify::evaluate(&mut c, None, &set.data, set.n, set.labels.as_deref(), 500, &mut |_| {})
        .map_err(|e| anyhow!("{e}"))?;
    r.top1.ok_or_else(|| anyhow!("{}: no labels", set.source))
}
