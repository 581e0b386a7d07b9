//! lowbit's end-to-end tests, one binary (one link instead of fifteen: CI's compile time). Each
//! module is one area; `cargo test --release -p lowbit-cli --test it <module>::` runs one.

mod common;

mod acteq;
mod adaround;
mod binary;
mod cli;
mod convquant;
mod dms;
mod embed;
mod fuzz_regressions;
mod input_precision;
mod int8;
mod module_graph;
mod mutate;
mod onnx_conformance;
mod ort_crosscheck;
mod ptq;
mod qat_model;
mod realworld;
mod recon;
mod reliability;
mod roundtrip_and_passes;
mod train;
