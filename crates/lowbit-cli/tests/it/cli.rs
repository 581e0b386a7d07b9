//! The `lowbit` command as a user meets it: the README's main job, and bad input giving a one-line
//! error that names the problem, a non-zero exit and never a panic.

use std::process::{Command, Output};

use crate::common::*;

fn lowbit(args: &[&str]) -> Output {
    Command::new(lowbit_bin()).args(args).output().unwrap()
}

fn assert_clean_failure(o: &Output, must_mention: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line of error, got: {err}");
    for m in must_mention {
        assert!(err.contains(m), "error should mention '{m}': {err}");
    }
}

#[test]
fn truncated_model() {
    let d = tmpdir("trunc");
    let bytes = std::fs::read(zoo("mnist-cnn.onnx")).unwrap();
    let p = d.join("truncated.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let o = lowbit(&["inspect", p.to_str().unwrap()]);
    assert_clean_failure(&o, &["truncated.onnx", "not a valid ONNX model"]);
}

#[test]
fn random_bytes_and_empty_file() {
    let d = tmpdir("rand");
    let p = d.join("random.onnx");
    let mut s = 12345u64;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    std::fs::write(&p, junk).unwrap();
    assert_clean_failure(&lowbit(&["inspect", p.to_str().unwrap()]), &["random.onnx"]);
    let e = d.join("empty.onnx");
    std::fs::write(&e, b"").unwrap();
    assert_clean_failure(&lowbit(&["bench", e.to_str().unwrap()]), &["empty.onnx", "empty"]);
    assert_clean_failure(&lowbit(&["inspect", d.join("missing.onnx").to_str().unwrap()]), &["missing.onnx"]);
}

#[test]
fn unknown_op_names_op_and_node() {
    use lowbit_onnx::pb;
    use prost::Message;
    let d = tmpdir("unk");
    let mut m = pb::ModelProto::decode(std::fs::read(zoo("mnist-cnn.onnx")).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.node[1].op_type = Some("FancyActivation".into());
    g.node[1].name = Some("my_node".into());
    let p = d.join("unknown-op.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    assert_clean_failure(
        &lowbit(&["inspect", p.to_str().unwrap()]),
        &["unknown-op.onnx", "FancyActivation", "my_node"],
    );
}

#[test]
fn data_shape_mismatch() {
    // 3x224x224 photos into a 1x28x28 MNIST model.
    let o = lowbit(&[
        "eval",
        zoo("mnist-cnn.onnx").to_str().unwrap(),
        "--data",
        shared().join("data/photos224").to_str().unwrap(),
        "--preset",
        "imagenet",
        "--limit",
        "4",
    ]);
    assert_clean_failure(&o, &["mnist-cnn.onnx", "expects"]);
}

#[test]
fn missing_data_and_bad_preset() {
    let o = lowbit(&["eval", zoo("mnist-cnn.onnx").to_str().unwrap(), "--data", "/nonexistent/data"]);
    assert_clean_failure(&o, &["/nonexistent/data"]);
    let o = lowbit(&[
        "eval",
        zoo("mnist-cnn.onnx").to_str().unwrap(),
        "--data",
        shared().join("data/mnist10k").to_str().unwrap(),
        "--preset",
        "bogus",
    ]);
    assert_clean_failure(&o, &["bogus"]);
}

#[test]
fn eval_reports_accuracy_and_json() {
    let d = tmpdir("eval");
    let j = d.join("r.json");
    let o = lowbit(&[
        "eval",
        zoo("mnist-cnn.onnx").to_str().unwrap(),
        "--data",
        shared().join("data/mnist10k").to_str().unwrap(),
        "--json",
        j.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    // mnist-cnn scores 99.85% on these 10,000 digits in ONNX Runtime.
    assert_eq!(v["images"], 10000);
    assert!((v["top1"].as_f64().unwrap() - 0.9985).abs() < 1e-9, "top1 {}", v["top1"]);
}

#[test]
fn eval_agreement_with_reference() {
    let photos = shared().join("data/photos224");
    let m = zoo("mobilenetv2-imagenet.onnx");
    let o = lowbit(&[
        "eval",
        m.to_str().unwrap(),
        "--data",
        photos.to_str().unwrap(),
        "--reference",
        m.to_str().unwrap(),
        "--limit",
        "8",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("top-1 agreement  100.00%"), "{out}");
}

#[test]
fn demo_runs_on_embedded_data() {
    let d = tmpdir("demo");
    let o = Command::new(lowbit_bin()).args(["demo", "--out", d.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (w, max_drop) in [(8, 0.01), (4, 0.03)] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(format!("quantize-w{w}a8.json"))).unwrap()).unwrap();
        assert_eq!(v["eval_images"], 1000);
        let (f, q) = (v["float_top1"].as_f64().unwrap(), v["quant_top1"].as_f64().unwrap());
        assert!(f > 0.85 && f - q <= max_drop, "W{w}A8: float {f} quantized {q}");
        assert!(v["quant_weight_bytes"].as_u64().unwrap() * 3 < v["float_weight_bytes"].as_u64().unwrap());
        assert!(lowbit_onnx::read_model(&d.join(format!("fmnist-default-w{w}a8.onnx"))).is_ok());
    }
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("bench.json")).unwrap()).unwrap();
    assert!(b["median_ms"].as_f64().unwrap() > 0.0);
}
