//! `lowbit binarize`: a float ResNet to a binary network without training (XNOR-style: weights
//! `sign(w)` with the per-channel mean |w|, binary activations, Bi-Real shortcuts, first/last and
//! shortcut projections at 8 bits), for deployment speed measurements and as the starting point
//! of a comparison. Accuracy needs training (`lowbit train --binary irnet`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use lowbit_data::Split;
use serde_json::json;

use crate::common::*;

#[derive(clap::Args, Clone)]
pub struct BinarizeArgs {
    pub model: PathBuf,
    /// Calibration images for the 8-bit activation ranges (IDX folder/file or image folder)
    #[arg(long)]
    pub calib: PathBuf,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub calib_n: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn binarize(a: &BinarizeArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.calib_n == 0 {
        bail!("--calib-n must be at least 1");
    }
    let g = load_model(&a.model)?;
    let (_, pre) = choose_preset(a.preset.as_deref(), &g, &a.calib)?;
    let calib = load_data(&a.calib, Split::Train, &pre, Some(a.calib_n))?;
    let br = lowbit_train::binary::bireal(&g).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let names: HashSet<String> = br.binary_convs.iter().cloned().collect();
    let q = lowbit_train::binary::export_graph(&br.graph, names, &calib, a.threads)
        .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    lowbit_onnx::write_model(&q.graph, &a.output).map_err(|e| anyhow!("{e}"))?;
    let rows: Vec<Vec<String>> = q
        .layers
        .iter()
        .map(|l| {
            vec![
                l.node.clone(),
                l.weight_bits.map_or("f32".into(), |b| format!("W{b}")),
                l.act_bits.map_or("f32".into(), |b| format!("A{b}")),
                l.params.to_string(),
            ]
        })
        .collect();
    print_table(&["layer", "weights", "input", "params"], &rows);
    let binary_params: usize = q.layers.iter().filter(|l| l.weight_bits == Some(1)).map(|l| l.params).sum();
    println!(
        "{} binary convolutions ({} weights, {:.1} KB at 1 bit); weights {:.1} KB vs {:.1} KB f32 ({:.1}x smaller); wrote {} in {:.1} s",
        br.binary_convs.len(),
        binary_params,
        binary_params as f64 / 8.0 / 1e3,
        q.weight_bytes as f64 / 1e3,
        q.float_weight_bytes as f64 / 1e3,
        q.float_weight_bytes as f64 / q.weight_bytes.max(1) as f64,
        a.output.display(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(j) = &a.json {
        write_json(
            j,
            &json!({
                "model": a.model.display().to_string(),
                "binary_convs": br.binary_convs,
                "binary_params": binary_params,
                "weight_bytes": q.weight_bytes,
                "float_weight_bytes": q.float_weight_bytes,
                "layers": q.layers.iter().map(|l| json!({"node": l.node, "weight_bits": l.weight_bits, "act_bits": l.act_bits, "params": l.params})).collect::<Vec<_>>(),
            }),
        )?;
    }
    Ok(())
}
