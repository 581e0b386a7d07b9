//! lowbit's commands as a library: what the `lowbit` binary runs (inspect, run, evaluate, bench,
//! quantize with its automatic pipeline, binarize, train), callable with the same arguments and
//! reports from other front ends (the Python package). Logic a library user would need lives in
//! the other crates (PTQ is `lowbit_quant::ptq::quantize`); this crate loads files, prints tables
//! and writes JSON. [`common::set_quiet`] turns the printed tables off.

pub mod binarize;
pub mod commands;
pub mod common;
pub mod embed;
pub mod image_args;
pub mod int8_report;
pub mod outputs;
pub mod pipeline;
pub mod quantize;
pub mod quantize_args;
pub mod quantize_report;
pub mod save;
pub mod svg;
pub mod task_eval;
pub mod train;
pub mod train_args;
pub mod widths;

#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// For IDX folders with train and test files: which split
    #[arg(long, default_value = "test", value_parser = ["train", "test"])]
    pub split: String,
    /// Use at most this many images
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub image: image_args::ImageArgs,
}
