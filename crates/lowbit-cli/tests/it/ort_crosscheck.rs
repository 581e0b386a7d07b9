//! Acceptance: every zoo model loads, and lowbit's float outputs match ONNX Runtime, run live, on
//! 16 inputs from the matching data: max |diff| <= 1e-4 * max |output|.

use crate::common::*;
use lowbit_data::{Preprocess, Split};
use lowbit_runtime::{Plan, PlanOptions};

fn check(model: &str, data: std::path::PathBuf, pre: Preprocess) {
    let path = zoo(model);
    let g = lowbit_onnx::read_model(&path).unwrap();
    let set = lowbit_data::load_any(&data, Split::Test, &pre, Some(16)).unwrap();
    assert_eq!(set.n, 16, "{}: need 16 images", data.display());
    let shape = vec![set.n, set.c, set.h, set.w];
    for threads in [1, 2] {
        let plan = Plan::compile(&g, &[shape.clone()], &PlanOptions { threads, ..Default::default() }).unwrap();
        let out = plan.run(&[lowbit_core::Tensor::f32(shape.clone(), set.data.clone())]).unwrap().remove(0);
        let (oshape, want) = ort_run(&path, &set.data, &shape, model);
        assert_eq!(out.shape, oshape, "{model}: output shape");
        let got = out.as_f32().unwrap();
        let maxabs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let maxdiff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{model} threads {threads}: max|diff| {maxdiff:.3e}, max|out| {maxabs:.3}, ratio {:.3e}",
            maxdiff / maxabs
        );
        assert!(maxdiff <= 1e-4 * maxabs, "{model}: max|diff| {maxdiff} > 1e-4 * {maxabs}");
    }
}

#[test]
fn mnist_cnn_matches_ort() {
    check("mnist-cnn.onnx", shared().join("data/mnist10k"), Preprocess::mnist());
}

#[test]
fn fmnist_resnet_matches_ort() {
    check("fmnist-resnet.onnx", fashion_dir(), Preprocess::fmnist());
}

#[test]
fn fmnist_mobilenet_matches_ort() {
    check("fmnist-mobilenet.onnx", fashion_dir(), Preprocess::fmnist());
}

#[test]
fn mobilenetv2_matches_ort() {
    check("mobilenetv2-imagenet.onnx", shared().join("data/photos224"), Preprocess::imagenet());
}

#[test]
fn efficientnet_lite0_matches_ort() {
    check("efficientnet-lite0-imagenet.onnx", shared().join("data/photos224"), Preprocess::imagenet());
}

#[test]
fn resnet18_matches_ort() {
    check("resnet18-random.onnx", shared().join("data/photos224"), Preprocess::imagenet());
}

#[test]
fn ppocr_cls_matches_ort() {
    check("ppocr-textline-cls.onnx", shared().join("data/photos224"), Preprocess::ppocr());
}
