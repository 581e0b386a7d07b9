//! `lowbit train` end to end on small slices of Fashion-MNIST (the repository's assets): float
//! training writes a model whose accuracy on lowbit's runtime equals the training loop's own
//! evaluation; QAT writes a QDQ model that ONNX Runtime and lowbit's integer runtime agree on;
//! checkpoints resume; bad requests fail with clear messages and leave no output.

use std::process::Command;

use crate::common::*;
use lowbit_data::{Preprocess, Split};
use lowbit_runtime::classify::{argmax, Classifier};

fn assets() -> std::path::PathBuf {
    root().join("assets")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(lowbit_bin()).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

fn report(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn float_training_runs_resumes_and_exports_what_it_evaluated() {
    let d = tmpdir("train-float");
    let out = d.join("m.onnx");
    let js = d.join("m.json");
    let model = zoo("fmnist-mobilenet.onnx");
    let data = assets();
    let args = [
        "train",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--preset",
        "fmnist",
        "--epochs",
        "1",
        "--batch",
        "50",
        "--lr",
        "0.01",
        "--test-limit",
        "300",
        "-o",
        out.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("epoch time"), "{stdout}");
    let r = report(&js);
    let h = r["history"].as_array().unwrap();
    assert_eq!(h.len(), 1);
    let loss = h[0]["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    // The written model, run by lowbit's runtime, scores what the training loop measured.
    let test_acc = h[0]["test_acc"].as_f64().unwrap();
    let deployed = r["deployed_top1"].as_f64().unwrap();
    assert!((test_acc - deployed).abs() <= 0.004, "loop {test_acc} vs runtime {deployed}");
    let g = lowbit_onnx::read_model(&out).unwrap();
    // Float training keeps the architecture: BatchNorm stays a separate, trained node.
    let bn = |g: &lowbit_core::Graph| g.nodes.iter().filter(|n| n.op.op_type() == "BatchNormalization").count();
    let orig = lowbit_onnx::read_model(&model).unwrap();
    assert_eq!(bn(&g), bn(&orig));
    assert!(bn(&g) > 0);
    let changed = orig.initializers.iter().filter(|(k, t)| g.initializers.get(*k) != Some(*t)).count();
    assert!(changed > bn(&g), "training changed only {changed} tensors");
    assert!(d.join("m.onnx.curve.svg").exists());
    // Same command again: the checkpoint says the epoch is done, nothing retrains.
    let (ok, _, stderr) = run(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("resuming from") && stderr.contains("after epoch 1"), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn qat_exports_qdq_that_ort_and_the_integer_runtime_agree_on() {
    let d = tmpdir("train-qat");
    let model = zoo("fmnist-resnet.onnx");
    let data = assets();
    for method in ["dsq", "pact"] {
        let out = d.join(format!("{method}.onnx"));
        let js = d.join(format!("{method}.json"));
        let (ok, stdout, stderr) = run(&[
            "train",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "fmnist",
            "--qat",
            method,
            "--weights",
            "4",
            "--acts",
            "4",
            "--epochs",
            "1",
            "--batch",
            "50",
            "--calib-n",
            "200",
            "--test-limit",
            "200",
            "--no-resume",
            "-o",
            out.to_str().unwrap(),
            "--json",
            js.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("PTQ W4A4") && stdout.contains("integer runtime"), "{stdout}");
        let r = report(&js);
        let (ptq, dep) = (r["ptq_top1"].as_f64().unwrap(), r["deployed_top1"].as_f64().unwrap());
        assert!(dep > 0.6 && dep > ptq - 0.1, "{method}: PTQ {ptq} -> deployed {dep}");
        // The file is standard QDQ: ONNX Runtime runs it and agrees with lowbit.
        let n = 500;
        let test = lowbit_data::load_any(&assets(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
        let g = lowbit_onnx::read_model(&out).unwrap();
        assert!(g.nodes.iter().any(|x| x.op.op_type() == "QuantizeLinear"));
        let mut c = Classifier::new(g, vec![1, 28, 28], 2);
        let ours = c.logits(&test.data, n).unwrap();
        let (_, ort) = ort_run_qdq(&out, &test.data, &[n, 1, 28, 28], &format!("train-qat-{method}"));
        let agree = (0..n).filter(|&i| argmax(&ours[i]) == argmax(&ort[i * 10..(i + 1) * 10])).count();
        assert!(agree * 1000 >= n * 995, "{method}: ORT agrees on {agree}/{n}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_requests_fail_clearly_and_write_nothing() {
    let d = tmpdir("train-bad");
    let out = d.join("never.onnx");
    let model = zoo("fmnist-resnet.onnx");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--qat".into(), "xnor".into()], "unknown --qat 'xnor'"),
        (vec!["--qat".into(), "lsq".into(), "--acts".into(), "9".into()], "--acts 9 is out of range"),
        (vec!["--epochs".into(), "0".into()], "--epochs and --batch must be at least 1"),
        (vec!["--batch".into(), "5000".into()], "fewer than one batch"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<String> = vec![
            "train".into(),
            model.to_str().unwrap().into(),
            "--data".into(),
            assets().to_str().unwrap().into(),
            "--preset".into(),
            "fmnist".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ];
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (ok, _, stderr) = run(&refs);
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
    let (ok, _, stderr) =
        run(&["train", model.to_str().unwrap(), "--data", "/no/such/dir", "-o", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("/no/such/dir"), "{stderr}");
    // An operator training does not support names the node.
    let ppocr = zoo("ppocr-textline-cls.onnx");
    let data = assets();
    let (ok, _, stderr) = run(&[
        "train",
        ppocr.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--preset",
        "fmnist",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("node 'Mul@0': Mul is not supported by training"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn pipeline_stops_at_the_first_stage_within_budget() {
    let d = tmpdir("pipeline");
    let model = zoo("fmnist-mobilenet.onnx");
    let data = assets();
    let run_budget = |budget: &str, tag: &str| {
        let out = d.join(format!("{tag}.onnx"));
        let js = d.join(format!("{tag}.json"));
        let budget = format!("--max-drop={budget}");
        let (ok, stdout, stderr) = run(&[
            "quantize",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "fmnist",
            "--weights",
            "4",
            "--acts",
            "4",
            &budget,
            "--calib-n",
            "200",
            "--eval-limit",
            "300",
            // Short learned-rounding candidates (their quality is tested in adaround:: and recon::).
            "--adaround-iters",
            "100",
            "--recon-iters",
            "40",
            "--recon-images",
            "64",
            "-o",
            out.to_str().unwrap(),
            "--json",
            js.to_str().unwrap(),
        ]);
        (ok, stdout, stderr, report(&js), out)
    };
    // A generous budget: calibration (L2) is enough and no training runs.
    let (ok, stdout, stderr, r, out) = run_budget("50", "generous");
    assert!(ok, "{stderr}");
    assert_eq!(r["met_by"], "L2", "{stdout}");
    assert!(stdout.contains("L1 data-free W4") && !stdout.contains("L3 QAT"), "{stdout}");
    assert!(out.exists());
    // An impossible budget: below 8 bits the learned-rounding candidates run after L2, then L3;
    // the report says no stage met it, the exit code says so.
    let (ok, stdout, _, r, _) = run_budget("-100", "impossible");
    assert!(!ok);
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["float", "L1", "L2", "L2-adaround", "L2-qdrop", "L3"], "{stdout}");
    assert_eq!(r["met_by"], "");
    // A budget between L2's drop and the best candidate's: the first candidate (in the order
    // AdaRound, QDrop) within it ends the pipeline, its file is written, and no training runs.
    let drop = |stage: &str| {
        r["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap()["decide_drop_pp"]
            .as_f64()
            .unwrap()
    };
    let (l2, ada, qdrop) = (drop("L2"), drop("L2-adaround"), drop("L2-qdrop"));
    assert!(ada.min(qdrop) < l2, "learned rounding beats nearest at W4A4: L2 {l2}, AdaRound {ada}, QDrop {qdrop} pp");
    let budget = (l2 + ada.min(qdrop)) / 2.0;
    let expect = if ada <= budget { "L2-adaround" } else { "L2-qdrop" };
    let (ok, stdout, stderr, r2, out) = run_budget(&format!("{budget}"), "between");
    assert!(ok, "{stderr}");
    assert_eq!(r2["met_by"], expect, "{stdout}");
    let stages: Vec<&str> = r2["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages.last(), Some(&expect), "{stdout}");
    assert!(!stdout.contains("L3 QAT"), "{stdout}");
    assert!(lowbit_onnx::read_model(&out).is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn binary_training_exports_a_binary_qdq_model_that_runs_on_the_binary_kernels() {
    let d = tmpdir("train-binary");
    let out = d.join("b.onnx");
    let js = d.join("b.json");
    let model = zoo("fmnist-resnet.onnx");
    let data = assets();
    let (ok, stdout, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--preset",
        "fmnist",
        "--binary",
        "irnet",
        "--epochs",
        "1",
        "--batch",
        "50",
        "--limit",
        "200",
        "--test-limit",
        "200",
        "--calib-n",
        "50",
        "-o",
        out.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("irnet W1A1"), "{stdout}");
    let r = report(&js);
    assert_eq!(r["binary"]["method"], "irnet");
    let layers = r["layers"].as_array().unwrap();
    let binary = layers.iter().filter(|l| l["weight_bits"] == 1).count();
    assert_eq!(binary, 18, "18 binary convolutions: {layers:?}");
    // Binary weights are stored as 1 bit each (plus per-channel scales) in the size report.
    let wb = r["weight_bytes"].as_f64().unwrap();
    assert!(wb < r["float_weight_bytes"].as_f64().unwrap() / 8.0, "weights {wb} bytes");
    // The export runs on lowbit's binary kernels, and its deployed accuracy is what was reported.
    let g = lowbit_onnx::read_model(&out).unwrap();
    let p = lowbit_runtime::Plan::compile(&g, &[vec![1, 1, 28, 28]], &Default::default()).unwrap();
    assert_eq!(p.steps().iter().filter(|s| s.kernel.starts_with("binary")).count(), 18);
    let set = lowbit_data::load_idx_dir(&assets(), Split::Test, &Preprocess::fmnist(), Some(200)).unwrap();
    let mut c = Classifier::new(g, vec![1, 28, 28], 1);
    let logits = c.logits(&set.data, set.n).unwrap();
    let labels = set.labels.as_ref().unwrap();
    let correct = (0..set.n).filter(|&i| argmax(&logits[i]) == labels[i] as usize).count();
    let deployed = r["deployed_top1"].as_f64().unwrap();
    assert!((correct as f64 / set.n as f64 - deployed).abs() < 1e-9, "{correct}/{} vs {deployed}", set.n);
    // No residual blocks: refused with a clear message and no output.
    let bad = d.join("bad.onnx");
    let cnn = zoo("mnist-cnn.onnx");
    let (ok, _, stderr) = run(&[
        "train",
        cnn.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--preset",
        "fmnist",
        "--binary",
        "irnet",
        "--epochs",
        "1",
        "--limit",
        "50",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("no residual block"), "{stderr}");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&d).unwrap();
}
