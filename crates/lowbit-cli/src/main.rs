//! The `lowbit` command: inspect, run, evaluate and benchmark ONNX CNNs (and, in later issues,
//! quantize them). Logic a library user would need lives in the other crates; this file parses
//! arguments, prints tables and writes JSON.

mod commands;
mod common;
mod quantize;
mod svg;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lowbit", version, about = "Low-bit quantization toolkit and runtime for ONNX CNNs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Preprocessing: imagenet | mnist | fmnist | ppocr | none (default: guessed from model and data)
    #[arg(long)]
    pub preset: Option<String>,
    /// For IDX folders with train and test files: which split
    #[arg(long, default_value = "test", value_parser = ["train", "test"])]
    pub split: String,
    /// Use at most this many images
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's layers, parameters, MACs, memory and this CPU's features
    Inspect {
        model: PathBuf,
        /// Input shape when the model's is symbolic, e.g. 1,3,48,192
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
        #[arg(long)]
        input_shape: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Quantize a float model (post-training, calibrated) and write a QDQ ONNX file
    Quantize {
        model: PathBuf,
        /// Calibration data (IDX folder/file or image folder)
        #[arg(long)]
        calib: PathBuf,
        /// Split of an IDX folder used for calibration
        #[arg(long, default_value = "train", value_parser = ["train", "test"])]
        calib_split: String,
        /// Number of calibration images
        #[arg(long, default_value_t = 1000)]
        calib_n: usize,
        /// Weight bits (2..=8), per-channel symmetric
        #[arg(long, default_value_t = 8)]
        weights: u8,
        /// Activation bits (2..=8), per-tensor affine
        #[arg(long, default_value_t = 8)]
        acts: u8,
        /// Activation range method: auto (try all, keep the one closest to float on the
        /// calibration images) | minmax | percentile[:P] | entropy | mse
        #[arg(long, default_value = "auto")]
        method: String,
        /// Per-tensor weights instead of per-channel
        #[arg(long)]
        per_tensor: bool,
        /// Cross-layer equalization of consecutive convolutions before quantizing (DFQ)
        #[arg(long)]
        cle: bool,
        /// Bias absorption across Conv-ReLU-Conv pairs (DFQ; uses calibration minima since
        /// folded models carry no BatchNorm statistics)
        #[arg(long)]
        absorb_bias: bool,
        /// Turn off bias correction of weight-quantization error
        #[arg(long)]
        no_bias_correction: bool,
        /// Per-layer sensitivity table (and plot with --plots)
        #[arg(long)]
        sensitivity: bool,
        /// Mixed precision: raise the most sensitive layers to 8-bit weights until the top-1 drop
        /// on the (labelled) calibration images is at most this many percentage points
        #[arg(long)]
        max_drop: Option<f64>,
        /// Folder for SVG plots: per-layer sensitivity and activation histograms with clip ranges
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Keep the first / last compute layer in float
        #[arg(long)]
        skip_first: bool,
        #[arg(long)]
        skip_last: bool,
        /// Evaluate float and quantized on this labelled data (or agreement when unlabelled)
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Limit the evaluation images
        #[arg(long)]
        eval_limit: Option<usize>,
        #[arg(long)]
        preset: Option<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(short = 'o', long)]
        output: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write preprocessed images (raw little-endian f32, NCHW) and labels for other tools
    DumpData {
        data: PathBuf,
        #[command(flatten)]
        data_args: DataArgs,
        /// Output prefix: PREFIX.f32, PREFIX.labels (u8 per image, if labelled), PREFIX.json
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

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Inspect { model, input_shape, json } => commands::inspect(&model, input_shape.as_deref(), json.as_deref()),
        Cmd::Run { model, input, data, top, threads, json } => {
            commands::run(&model, &input, &data, top, threads, json.as_deref())
        }
        Cmd::Eval { model, data, data_args, reference, batch, threads, json } => {
            commands::eval(&model, &data, &data_args, reference.as_deref(), batch, threads, json.as_deref()).map(|_| ())
        }
        Cmd::Bench { model, batch, threads, iters, warmup, input_shape, json } => {
            commands::bench(&model, batch, threads, iters, warmup, input_shape.as_deref(), json.as_deref()).map(|_| ())
        }
        Cmd::Demo { threads, out } => commands::demo(threads, &out),
        Cmd::DumpData { data, data_args, output } => commands::dump_data(&data, &data_args, &output),
        Cmd::Quantize {
            model,
            calib,
            calib_split,
            calib_n,
            weights,
            acts,
            method,
            per_tensor,
            cle,
            absorb_bias,
            no_bias_correction,
            sensitivity,
            max_drop,
            plots,
            skip_first,
            skip_last,
            eval,
            eval_limit,
            preset,
            threads,
            output,
            json,
        } => quantize::quantize(&quantize::QuantizeArgs {
            model,
            calib,
            calib_split,
            calib_n,
            weights,
            acts,
            method,
            per_tensor,
            cle,
            absorb_bias,
            bias_correction: !no_bias_correction,
            sensitivity,
            max_drop,
            plots,
            skip_first,
            skip_last,
            eval,
            eval_limit,
            preset,
            threads,
            output,
            json,
        })
        .map(|_| ()),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
