//! `lowbit run --save-outputs DIR`: every output of every image as `DIR/<image stem>/<output>.npy`,
//! for any model; with `--multiple` and no `--size` each image runs at its own (rounded) size, on
//! one plan per input shape met ([`PlanCache`]).

use std::path::Path;

use anyhow::{anyhow, Result};
use lowbit_core::{Dim, Tensor};
use lowbit_runtime::{PlanCache, PlanOptions};
use serde_json::json;

use crate::commands::{image_stem, load_for, npy_f32, safe_name, split};
use crate::common::*;
use crate::DataArgs;

/// Writes one image's outputs as `DIR/<image stem>/<output>.npy`; their entries for the JSON report.
fn write_image(dir: &Path, img: &str, i: usize, names: &[String], outs: &[Tensor]) -> Result<Vec<serde_json::Value>> {
    let d = dir.join(safe_name(&image_stem(img, i)));
    std::fs::create_dir_all(&d).map_err(|e| anyhow!("{}: {e}", d.display()))?;
    let mut files = vec![];
    for (name, t) in names.iter().zip(outs) {
        let p = d.join(format!("{}.npy", safe_name(name)));
        write_atomic(&p, &npy_f32(&t.shape, &t.to_f32_vec()))?;
        files.push(json!({"output": name, "shape": t.shape, "file": p.display().to_string()}));
    }
    Ok(files)
}

/// `run --save-outputs DIR`: every output of every image as DIR/<image stem>/<output>.npy.
pub fn save_outputs(
    model: &Path,
    input: &Path,
    a: &DataArgs,
    threads: usize,
    dir: &Path,
    json_out: Option<&Path>,
) -> Result<()> {
    if a.image.multiple.is_some() && a.image.size.is_none() {
        return save_outputs_each(model, input, a, threads, dir, json_out);
    }
    let (mut g, preset, set) = load_for(model, input, a)?;
    let one = [1, set.c, set.h, set.w];
    override_input_shape(&mut g, &one).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    let plan = compile(&g, model, one.to_vec(), threads)?;
    let names: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let per = set.c * set.h * set.w;
    let mut rows = vec![];
    let mut report = vec![];
    for (i, img) in set.names.iter().enumerate() {
        let x = Tensor::f32(one.to_vec(), set.data[i * per..(i + 1) * per].to_vec());
        let outs = plan.run(&[x]).map_err(|e| anyhow!("{}: {img}: {e}", model.display()))?;
        let files = write_image(dir, img, i, &names, &outs)?;
        rows.push(vec![img.clone(), outs.iter().map(|t| format!("{:?}", t.shape)).collect::<Vec<_>>().join(" ")]);
        report.push(json!({"image": img, "outputs": files}));
    }
    crate::say!("preset {preset}, {} images, outputs written to {}", set.n, dir.display());
    print_table(&["image", &format!("output shapes ({})", names.join(", "))], &rows);
    if let Some(p) = json_out {
        write_json(p, &json!({"model": model.display().to_string(), "preset": preset, "results": report}))?;
    }
    Ok(())
}

/// Where [`save_outputs_each`] gets its images: a file decoded when its turn comes, or IDX data (one size).
enum Source {
    File(std::path::PathBuf),
    Set(lowbit_data::ImageSet),
}

/// [`save_outputs`] with every image at its own size (`--multiple` without `--size`): the model's
/// input gets free batch, height and width, and a plan is compiled for each input shape met.
fn save_outputs_each(
    model: &Path,
    input: &Path,
    a: &DataArgs,
    threads: usize,
    dir: &Path,
    json_out: Option<&Path>,
) -> Result<()> {
    let mut g = load_model(model)?;
    // Surface missing/empty/corrupt data before anything else.
    load_data(input, split(&a.split), &lowbit_data::Preprocess::none(), Some(1))?;
    let (preset, pre) = a.image.resolve(&g, input)?;
    // One image at a time: at their own sizes the decoded images of a large folder would not fit.
    let sources: Vec<Source> = match lowbit_data::image_paths(input, a.limit).map_err(|e| anyhow!("{e}"))? {
        Some(files) => files.into_iter().map(Source::File).collect(),
        None => vec![Source::Set(load_data(input, split(&a.split), &pre, a.limit)?)],
    };
    let c = pre.channels;
    let vi = single_input(&g).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    let free = Some(vec![Dim::Sym("N".into()), Dim::Fixed(c), Dim::Sym("H".into()), Dim::Sym("W".into())]);
    g.inputs.iter_mut().filter(|i| i.name == vi.name).for_each(|i| i.shape = free.clone());
    let names: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    // A few plans kept: each holds its arena and threads (photos rarely share more than a few sizes).
    let cache = PlanCache::new(g, PlanOptions { threads, ..Default::default() }, 4);
    let (mut rows, mut report, mut n) = (vec![], vec![], 0);
    for src in sources {
        let set = match src {
            Source::File(f) => lowbit_data::load_image_file(&f, &pre).map_err(|e| anyhow!("{e}"))?,
            Source::Set(s) => s,
        };
        for i in 0..set.n {
            let shape = vec![1, set.c, set.h, set.w];
            let (plan, new) =
                cache.plan(std::slice::from_ref(&shape)).map_err(|e| anyhow!("{}: {e}", model.display()))?;
            if new {
                for note in plan.int8_notes() {
                    eprintln!("note: {} at {shape:?}: {note}", model.display());
                }
            }
            let img = &set.names[i];
            let x = Tensor::f32(shape.clone(), set.image(i).to_vec());
            let outs = plan.run(&[x]).map_err(|e| anyhow!("{}: {img}: {e}", model.display()))?;
            let files = write_image(dir, img, n, &names, &outs)?;
            let shapes = outs.iter().map(|t| format!("{:?}", t.shape)).collect::<Vec<_>>().join(" ");
            rows.push(vec![img.clone(), format!("{shape:?}"), shapes]);
            report.push(json!({"image": img, "input_shape": shape, "outputs": files}));
            n += 1;
        }
    }
    crate::say!(
        "preset {preset}, {n} images at {} input shapes (one plan each), outputs written to {}",
        cache.compiled(),
        dir.display()
    );
    print_table(&["image", "input shape", &format!("output shapes ({})", names.join(", "))], &rows);
    if let Some(p) = json_out {
        write_json(p, &json!({"model": model.display().to_string(), "preset": preset, "results": report}))?;
    }
    Ok(())
}
