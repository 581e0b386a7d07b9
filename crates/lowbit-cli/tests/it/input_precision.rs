//! `quantize --float-input`: a model input whose values one 8-bit grid cannot hold (RGB normalised
//! per channel) stays float in the file; the first layer reads it in float with int8 weights whose
//! rounding is learned on the calibration images, and lowbit's integer runtime and ONNX Runtime
//! run the file alike.

use std::process::Command;

use crate::common::*;
use lowbit_core::{Data, Op, Tensor};
use lowbit_runtime::{Plan, PlanOptions};

#[test]
fn float_input_keeps_the_input_exact_and_learns_the_first_layers_rounding() {
    let d = tmpdir("input-float");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (q, j) = (d.join("lite0.onnx"), d.join("lite0.json"));
    let photos = shared().join("data/photos224");
    let o = Command::new(lowbit_bin())
        .args(["quantize", &s(&zoo("efficientnet-lite0-imagenet.onnx")), "--calib", &s(&photos)])
        .args(["--calib-n", "16", "--preset", "imagenet", "--threads", "2", "--float-input"])
        .args(["-o", &s(&q), "--json", &s(&j)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(report["rounding"], "nearest", "asked for nearest: only the first layer's rounding is learned");

    let g = lowbit_onnx::read_model(&q).unwrap();
    let x = g.runtime_inputs()[0].name.clone();
    assert!(
        !g.nodes.iter().any(|n| matches!(n.op, Op::QuantizeLinear { .. }) && n.inputs.first() == Some(&x)),
        "the input is not quantized"
    );
    let first = g.nodes.iter().find(|n| n.inputs.first() == Some(&x)).expect("a node reads the input");
    assert!(matches!(first.op, Op::Conv(_)), "{:?}", first.op);
    let wdq = g.nodes.iter().find(|n| n.outputs.first() == first.inputs.get(1)).expect("weights from a node");
    assert!(matches!(wdq.op, Op::DequantizeLinear { .. }), "{:?}", wdq.op);
    assert!(matches!(g.initializers[&wdq.inputs[0]].data, Data::I8(_)), "int8 weights");
    // Exactly that layer was re-rounded, and its output error fell.
    let layers = report["adaround_layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{layers:?}");
    assert_eq!(layers[0]["node"], first.name.as_str());
    let (near, learned) =
        (layers[0]["rel_err_nearest"].as_f64().unwrap(), layers[0]["rel_err_adaround"].as_f64().unwrap());
    assert!(learned < 0.5 * near, "first layer error {near} -> {learned}");

    // lowbit's integer plan (the float first layer fused with its output's quantization) and ONNX
    // Runtime's QDQ semantics: same top-1, logits close, on photos the calibration did not use.
    let set = lowbit_data::load_image_folder(&photos, &lowbit_data::Preprocess::imagenet(), Some(24)).unwrap();
    let (n, per) = (4, 3 * 224 * 224);
    let xs = &set.data[20 * per..24 * per];
    let shape = [n, 3, 224, 224];
    let want = ort_all(&q, xs, &shape, "input-float-ort", "none").swap_remove(0).1;
    let p = Plan::compile(&g, &[shape.to_vec()], &PlanOptions { threads: 2, ..Default::default() }).unwrap();
    assert!(p.int8_steps() > 0);
    assert!(p.steps()[0].kernel.starts_with("f32"), "the first layer runs in float: {}", p.steps()[0].kernel);
    let got = p.run(&[Tensor::f32(shape.to_vec(), xs.to_vec())]).unwrap()[0].to_f32_vec();
    let classes = want.len() / n;
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    for i in 0..n {
        let (a, b) = (&got[i * classes..(i + 1) * classes], &want[i * classes..(i + 1) * classes]);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(dot / (na * nb) > 0.99, "image {i}: cosine {}", dot / (na * nb));
        assert_eq!(argmax(a), argmax(b), "image {i}");
    }
}
