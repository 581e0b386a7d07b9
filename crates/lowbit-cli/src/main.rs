//! The `lowbit` command: inspect, run, evaluate, benchmark, quantize (PTQ with a QAT fallback),
//! binarize and train ONNX CNNs. The commands are the `lowbit_cli` library; this file parses the
//! command line and dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lowbit_cli::{binarize, commands, common, outputs, pipeline, quantize, save, task_eval, train, widths, DataArgs};

#[derive(Parser)]
#[command(name = "lowbit", version, about = "Low-bit quantization toolkit and runtime for ONNX CNNs")]
struct Cli {
    /// Replace an output that is an input, a symlink, a special or a read-only file
    #[arg(long, global = true)]
    force: bool,
    /// Memory limit for what model and data sizes make lowbit allocate, e.g. 512M, 4G (default:
    /// 3/4 of the smallest of RAM, `ulimit -v` and the cgroup limit)
    #[arg(long, global = true, value_parser = parse_size)]
    max_memory: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

fn parse_size(s: &str) -> Result<usize, String> {
    lowbit_core::limits::parse_size(s)
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's layers, parameters, MACs, memory and this CPU's features
    Inspect {
        model: PathBuf,
        /// Input shape (overrides the file's, also a fixed one; same rank), e.g. 1,3,48,192
        #[arg(long)]
        input_shape: Option<String>,
        /// Also save the report as JSON
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a model on images and print the top classes
    Run {
        model: PathBuf,
        /// An image, an image folder, an IDX file or an IDX folder
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Write every output of every image as DIR/<image stem>/<output name>.npy (float32),
        /// for any model (detectors, segmentation, embedders), instead of printing top classes
        #[arg(long)]
        save_outputs: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Measure accuracy on labelled data, or agreement with a reference model
    Eval {
        model: PathBuf,
        /// An IDX folder/file (labelled) or an image folder
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        data_args: DataArgs,
        /// Compare against this model's outputs (top-1 agreement, top-5 overlap, cosine, KL)
        #[arg(long)]
        reference: Option<PathBuf>,
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also run every image through the fake-quant executor (the QDQ graph's arithmetic, node
        /// by node; slow) and count identical outputs and top-1 against the plan
        #[arg(long)]
        check_fake_quant: bool,
        #[command(flatten)]
        task: task_eval::TaskArgs,
    },
    /// Measure latency and throughput
    Bench {
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Input shape (overrides the file's, also a fixed one; same rank; --batch sets N),
        /// e.g. 1,3,480,640
        #[arg(long)]
        input_shape: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Quantize a float model (post-training, calibrated) and write a QDQ ONNX file
    Quantize(quantize::QuantizeArgs),
    /// A float ResNet to a binary network (W1A1, Bi-Real shortcuts, first/last 8-bit) without
    /// training, as QDQ ONNX (for speed measurements; train with `train --binary` for accuracy)
    Binarize(binarize::BinarizeArgs),
    /// Train a model in float, or quantization-aware (--qat ste|lsq|pact|dsq), on labelled data
    Train(train::TrainArgs),
    /// DMS channel-width search for a binary network under a binary-ops or parameter budget;
    /// writes the widths (JSON) that `train --binary ... --widths` builds
    SearchWidths(widths::SearchArgs),
    /// Write preprocessed images (raw little-endian f32, NCHW) and labels for other tools
    DumpData {
        data: PathBuf,
        #[command(flatten)]
        data_args: DataArgs,
        /// Output prefix: PREFIX.f32, PREFIX.npy (the same float32 tensor, NCHW), PREFIX.labels
        /// (u8 per image, if labelled), PREFIX.json
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// The main job on the embedded default model and data (no downloads needed)
    Demo {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Folder for the reports (default: lowbit-demo/)
        #[arg(long, default_value = "lowbit-demo")]
        out: PathBuf,
    },
}

/// Bounds every `--threads` by the CPU count.
fn clamp_threads(cmd: &mut Cmd) {
    let t = match cmd {
        Cmd::Run { threads, .. }
        | Cmd::Eval { threads, .. }
        | Cmd::Bench { threads, .. }
        | Cmd::Demo { threads, .. } => threads,
        Cmd::Quantize(a) => &mut a.threads,
        Cmd::Train(a) | Cmd::SearchWidths(widths::SearchArgs { train: a, .. }) => &mut a.threads,
        Cmd::Binarize(a) => &mut a.threads,
        Cmd::Inspect { .. } | Cmd::DumpData { .. } => return,
    };
    *t = common::clamp_threads(*t);
}

/// Checks every file the command will write against its inputs and each other, before any work.
fn check_outputs(cmd: &Cmd) -> anyhow::Result<()> {
    use std::path::Path;
    fn some<'a>(v: &[Option<&'a PathBuf>]) -> Vec<&'a Path> {
        v.iter().flatten().map(|p| p.as_path()).collect()
    }
    match cmd {
        Cmd::Inspect { model, json: Some(j), .. } | Cmd::Bench { model, json: Some(j), .. } => {
            outputs::check_outputs(&[model.as_path()], &[("--json", j.as_path())])
        }
        Cmd::Run { model, input, json, save_outputs, .. } if json.is_some() || save_outputs.is_some() => {
            if let Some(j) = json {
                outputs::check_outputs(&[model.as_path(), input.as_path()], &[("--json", j.as_path())])?;
            }
            match save_outputs {
                Some(d) => outputs::check_folder("--save-outputs", d),
                None => Ok(()),
            }
        }
        Cmd::Eval { model, data, reference, json: Some(j), .. } => {
            outputs::check_outputs(&some(&[Some(model), Some(data), reference.as_ref()]), &[("--json", j.as_path())])
        }
        Cmd::Quantize(a) => {
            let ins = some(&[Some(&a.model), a.calib.as_ref(), a.data.as_ref(), a.eval.as_ref()]);
            let mut outs = vec![("-o", a.output.as_path())];
            outs.extend(a.json.as_deref().map(|j| ("--json", j)));
            outputs::check_outputs(&ins, &outs)?;
            match &a.plots {
                Some(d) => outputs::check_folder("--plots", d),
                None => Ok(()),
            }
        }
        Cmd::Binarize(a) => {
            let mut outs = vec![("-o", a.output.as_path())];
            outs.extend(a.json.as_deref().map(|j| ("--json", j)));
            outputs::check_outputs(&[a.model.as_path(), a.calib.as_path()], &outs)
        }
        Cmd::Train(a) | Cmd::SearchWidths(widths::SearchArgs { train: a, .. }) => {
            let ins = some(&[Some(&a.model), Some(&a.data), a.teacher.as_ref()]);
            let plot = a.plot.clone().unwrap_or_else(|| {
                let mut s = a.output.as_os_str().to_owned();
                s.push(".curve.svg");
                PathBuf::from(s)
            });
            let mut outs = vec![("-o", a.output.as_path()), ("--plot", plot.as_path())];
            outs.extend(a.json.as_deref().map(|j| ("--json", j)));
            outputs::check_outputs(&ins, &outs)
        }
        Cmd::DumpData { data, output, .. } => {
            let with = |ext: &str| PathBuf::from(format!("{}.{ext}", output.display()));
            let (f, l, j, n) = (with("f32"), with("labels"), with("json"), with("npy"));
            outputs::check_outputs(
                &[data.as_path()],
                &[
                    ("-o (.f32)", f.as_path()),
                    ("-o (.labels)", l.as_path()),
                    ("-o (.json)", j.as_path()),
                    ("-o (.npy)", n.as_path()),
                ],
            )
        }
        Cmd::Demo { out, .. } => outputs::check_folder("--out", out),
        _ => Ok(()),
    }
}

fn main() {
    let mut cli = Cli::parse();
    outputs::set_force(cli.force);
    if let Some(m) = cli.max_memory {
        lowbit_core::limits::set_max_memory(m);
    }
    clamp_threads(&mut cli.cmd);
    if let Err(e) = check_outputs(&cli.cmd) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let r = match cli.cmd {
        Cmd::Inspect { model, input_shape, json } => {
            commands::inspect(&model, input_shape.as_deref(), json.as_deref()).map(|_| ())
        }
        Cmd::Run { model, input, data, threads, json, save_outputs: Some(dir), .. } => {
            save::save_outputs(&model, &input, &data, threads, &dir, json.as_deref())
        }
        Cmd::Run { model, input, data, top, threads, json, save_outputs: None } => {
            commands::run(&model, &input, &data, top, threads, json.as_deref())
        }
        Cmd::Eval { model, data, data_args, reference, batch, threads, json, check_fake_quant, task } => (|| {
            if task.task == "embed" && matches!(lowbit_data::image_paths(&data, None), Ok(None)) {
                // Labelled IDX data: the open-set protocol (identities never trained on).
                return lowbit_cli::embed::eval_open_set(
                    &model,
                    &data,
                    &task.open_set,
                    reference.as_deref(),
                    data_args.image.preset.as_deref(),
                    threads,
                    json.as_deref(),
                );
            }
            if let Some(r) = reference.as_deref().filter(|_| task.task != "classify") {
                if task_eval::eval(&model, &data, &data_args, r, &task, threads, json.as_deref())?.is_some() {
                    return Ok(());
                }
            } else if task.task != "classify" && task.task != "auto" {
                anyhow::bail!("--task {} compares against a model: pass --reference FLOAT.onnx", task.task);
            }
            commands::eval(
                &model,
                &data,
                &data_args,
                reference.as_deref(),
                batch,
                threads,
                json.as_deref(),
                check_fake_quant,
            )
            .map(|_| ())
        })(),
        Cmd::Bench { model, batch, threads, iters, warmup, input_shape, json } => {
            commands::bench(&model, batch, threads, iters, warmup, input_shape.as_deref(), json.as_deref()).map(|_| ())
        }
        Cmd::Demo { threads, out } => commands::demo(threads, &out),
        Cmd::DumpData { data, data_args, output } => commands::dump_data(&data, &data_args, &output),
        Cmd::Quantize(args) if args.data.is_some() => pipeline::pipeline(&args),
        Cmd::Quantize(args) => quantize::quantize(&args).map(|_| ()),
        Cmd::Train(args) => train::train(&args),
        Cmd::SearchWidths(args) => widths::search_widths(&args),
        Cmd::Binarize(args) => binarize::binarize(&args),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
