//! Post-training quantization end to end: calibrate on Fashion-MNIST *train* images, write the QDQ
//! file, and check that ONNX Runtime loads it and agrees with lowbit's executor on >= 99.5% of
//! test images; accuracy stays close to float; bad requests fail cleanly with no file left.

use crate::common::*;
use lowbit_data::{Preprocess, Split};
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig};
use lowbit_quant::scheme::{Kind, Mode};
use lowbit_runtime::classify::{argmax, Classifier};

/// `model` from the zoo, canonicalized, calibrated on the first `n` Fashion-MNIST training images:
/// `(canonical graph, statistics, calibration images)`.
fn calibrated_fmnist(
    model: &str,
    n: usize,
) -> (lowbit_core::Graph, lowbit_quant::calibrate::Stats, lowbit_data::ImageSet) {
    let g = lowbit_onnx::read_model(&zoo(model)).unwrap();
    let calib = lowbit_data::load_idx_dir(&fashion_dir(), Split::Train, &Preprocess::fmnist(), Some(n)).unwrap();
    let (canon, _) = lowbit_runtime::canonicalize_free(&g).unwrap();
    let stats =
        lowbit_quant::calibrate::calibrate(&canon, &[1, 28, 28], &calib.data, calib.n, 50, 2, true, &mut |_, _| {})
            .unwrap();
    (canon, stats, calib)
}

fn quantize_fmnist(model: &str, weight_bits: u8, kind: Kind) -> lowbit_quant::qdq::QdqModel {
    let (canon, stats, _) = calibrated_fmnist(model, 300);
    let cfg = QdqConfig { weight_bits, method: Method::Mse, weight_kind: kind, ..Default::default() };
    build_qdq(&canon, &stats, &cfg).unwrap()
}

fn check_against_ort(model: &str, weight_bits: u8, n: usize, max_drop_pp: f64) {
    let kind = Kind::Linear(Mode::Symmetric);
    check_model_against_ort(model, &quantize_fmnist(model, weight_bits, kind), weight_bits, kind, n, max_drop_pp);
}

/// `q` (`model` quantized to `weight_bits` of `kind`) runs in ONNX Runtime, agrees with lowbit on
/// at least 99.5% of `n` test images and drops at most `max_drop_pp` from float.
fn check_model_against_ort(
    model: &str,
    q: &lowbit_quant::qdq::QdqModel,
    weight_bits: u8,
    kind: Kind,
    n: usize,
    max_drop_pp: f64,
) {
    let d = tmpdir(&format!("ptq-{model}-{weight_bits}-{kind:?}"));
    let path = d.join("q.onnx");
    lowbit_onnx::write_model(&q.graph, &path).unwrap();
    let test = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
    let labels = test.labels.clone().unwrap();
    let mut qc = Classifier::new(q.graph.clone(), vec![1, 28, 28], 2);
    let mut fc = Classifier::new(lowbit_onnx::read_model(&zoo(model)).unwrap(), vec![1, 28, 28], 2);
    let ours = qc.logits(&test.data, n).unwrap();
    let float = fc.logits(&test.data, n).unwrap();
    let (oshape, ort) =
        ort_run_qdq(&path, &test.data, &[n, 1, 28, 28], &format!("ptq-ort-{model}-{weight_bits}-{kind:?}"));
    assert_eq!(oshape, vec![n, 10]);
    let agree = (0..n).filter(|&i| argmax(&ours[i]) == argmax(&ort[i * 10..(i + 1) * 10])).count();
    let acc = |l: &Vec<Vec<f32>>| (0..n).filter(|&i| argmax(&l[i]) as u32 == labels[i]).count() as f64 / n as f64;
    let (qa, fa) = (acc(&ours), acc(&float));
    eprintln!(
        "{model} W{weight_bits}A8 {kind:?}: lowbit vs ORT top-1 agreement {agree}/{n}; float {:.2}% quantized {:.2}%",
        fa * 100.0,
        qa * 100.0
    );
    assert!(agree as f64 >= 0.995 * n as f64, "{model}: ORT agrees on only {agree}/{n}");
    assert!((fa - qa) * 100.0 <= max_drop_pp, "{model}: drop {:.2} pp", (fa - qa) * 100.0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn fmnist_resnet_w8a8_runs_in_ort_and_agrees() {
    check_against_ort("fmnist-resnet.onnx", 8, 2000, 0.5);
}

#[test]
fn fmnist_mobilenet_w8a8_runs_in_ort_and_agrees() {
    check_against_ort("fmnist-mobilenet.onnx", 8, 2000, 0.7);
}

#[test]
fn fmnist_mobilenet_w4a8_runs_in_ort_and_agrees() {
    check_against_ort("fmnist-mobilenet.onnx", 4, 2000, 2.5);
}

#[test]
fn pow2_log_and_kmeans_weights_are_standard_int8_that_ort_runs() {
    for (kind, name, max_drop) in
        [(Kind::Linear(Mode::PowerOfTwo), "pow2", 2.0), (Kind::Log2, "log", 14.0), (Kind::KMeans, "kmeans", 1.5)]
    {
        let q = quantize_fmnist("fmnist-resnet.onnx", 4, kind);
        let w = int8_weights(&q.graph);
        assert!(w.len() >= 20, "{name}: {} quantized layers", w.len());
        for (node, v, scales) in &w {
            let layer = node.trim_end_matches("_weight_DequantizeLinear");
            let tag = q.graph.metadata.iter().find(|(k, _)| *k == format!("lowbit.quant.scheme.{layer}"));
            assert_eq!(tag.map(|(_, t)| t.as_str()), Some(format!("{name}:4").as_str()), "{node}");
            match kind {
                Kind::Linear(_) => {
                    assert!(scales.iter().all(|s| s.log2().fract() == 0.0), "{node}: a scale is not a power of two");
                    assert!(v.iter().all(|&x| (-8..=7).contains(&x)), "{node}: beyond 4 bits");
                }
                Kind::Log2 => assert!(
                    v.iter()
                        .all(|&x| x == 0 || ((x as i32).unsigned_abs().is_power_of_two() && x.unsigned_abs() <= 64)),
                    "{node}: not 0 or ±2^k (k <= 6)"
                ),
                _ => {
                    let mut d = v.clone();
                    d.sort();
                    d.dedup();
                    assert!(
                        d.len() <= 16 && scales.len() == 1,
                        "{node}: {} shared values, {} scales",
                        d.len(),
                        scales.len()
                    );
                }
            }
        }
        check_model_against_ort("fmnist-resnet.onnx", &q, 4, kind, 1000, max_drop);
    }
}

#[test]
fn quantize_cli_bad_requests_leave_no_file() {
    use std::process::Command;
    let d = tmpdir("ptq-bad");
    let out = d.join("out.onnx");
    let model = zoo("fmnist-mobilenet.onnx");
    let run = |extra: &[&str]| {
        let mut args = vec!["quantize", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        Command::new(lowbit_bin()).args(&args).output().unwrap()
    };
    let fashion = fashion_dir();
    let photos = shared().join("data/photos224");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--calib", fashion.to_str().unwrap(), "--weights", "9"], "out of range"),
        (vec!["--calib", fashion.to_str().unwrap(), "--acts", "1"], "out of range"),
        (vec!["--calib", d.to_str().unwrap()], "no IDX files"),
        (vec!["--calib", photos.to_str().unwrap(), "--preset", "imagenet", "--calib-n", "4"], "expects"),
        (vec!["--calib", fashion.to_str().unwrap(), "--method", "magic"], "magic"),
        (vec!["--calib", fashion.to_str().unwrap(), "--scheme", "log", "--weights", "5"], "2 to 4"),
        (vec!["--calib", fashion.to_str().unwrap(), "--scheme", "ternary"], "unknown --scheme"),
        (vec!["--data", fashion.to_str().unwrap(), "--max-drop", "1", "--scheme", "kmeans"], "automatic pipeline"),
    ];
    for (extra, want) in cases {
        let o = run(&extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: error should mention '{want}': {err}");
        assert!(!err.contains("panicked"));
        assert!(!out.exists(), "{extra:?}: output file left behind");
    }
    // A model with no quantizable layer: a lone Relu.
    let g = lowbit_core::Graph {
        name: "relu".into(),
        inputs: vec![lowbit_core::ValueInfo {
            name: "input".into(),
            dtype: lowbit_core::DType::F32,
            shape: Some(vec![
                lowbit_core::Dim::Sym("N".into()),
                lowbit_core::Dim::Fixed(1),
                lowbit_core::Dim::Fixed(28),
                lowbit_core::Dim::Fixed(28),
            ]),
        }],
        outputs: vec![lowbit_core::ValueInfo { name: "y".into(), dtype: lowbit_core::DType::F32, shape: None }],
        nodes: vec![lowbit_core::Node {
            name: "r".into(),
            op: lowbit_core::Op::Relu,
            inputs: vec!["input".into()],
            outputs: vec!["y".into()],
        }],
        opset: 13,
        ..Default::default()
    };
    let m = d.join("relu.onnx");
    lowbit_onnx::write_model(&g, &m).unwrap();
    let o = Command::new(lowbit_bin())
        .args([
            "quantize",
            m.to_str().unwrap(),
            "--calib",
            fashion.to_str().unwrap(),
            "--calib-n",
            "10",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no quantizable layer"), "{err}");
    assert!(!out.exists());
    // BatchNorm statistics asked of a model without BatchNorm.
    let o = Command::new(lowbit_bin())
        .args(["quantize", m.to_str().unwrap(), "--calib", fashion.to_str().unwrap(), "--calib-n", "10", "--bn-stats"])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("relu.onnx") && err.contains("BatchNormalization"), "{err}");
    assert!(!out.exists());
}

#[test]
fn sensitivity_and_mixed_precision_meet_a_budget() {
    use lowbit_quant::sensitivity::*;
    let (canon, stats, calib) = calibrated_fmnist("fmnist-mobilenet.onnx", 300);
    let cfg = QdqConfig { weight_bits: 2, method: Method::Mse, ..Default::default() };
    let set = ScoreSet {
        image_shape: &[1, 28, 28],
        data: &calib.data,
        n: calib.n,
        labels: calib.labels.as_deref(),
        threads: 2,
    };
    let r = Reference::new(&canon, &set).unwrap();
    let sens = layer_sensitivity(&canon, &stats, &cfg, &set, &r, &mut |_, _| {}).unwrap();
    let all2 = build_qdq(&canon, &stats, &cfg).unwrap();
    let nq = all2.layers.iter().filter(|l| l.weight_bits.is_some()).count();
    assert_eq!(sens.len(), nq, "one entry per quantized layer");
    assert!(sens.windows(2).all(|w| w[0].sqnr_db <= w[1].sqnr_db), "sorted most sensitive first");
    // All layers at 2 bits is far over a 1 pp budget; the search must raise layers until it holds.
    let (s2, _) = score(&all2.graph, &set, &r).unwrap();
    assert!((r.score - s2) * 100.0 > 1.0, "W2 should not already meet the budget");
    let mp = mixed_precision(&canon, &stats, &cfg, 8, &sens, 1.0, &set, &r).unwrap();
    assert!(mp.within_budget && mp.drop_pp <= 1.0, "drop {}", mp.drop_pp);
    assert!(!mp.raised.is_empty() && mp.raised.len() < nq);
    let eight = mp.model.layers.iter().filter(|l| l.weight_bits == Some(8)).count();
    assert_eq!(eight, mp.raised.len());
}

#[test]
fn ppocr_qdq_with_hardswish_loads_in_ort() {
    // Opset-11 model whose hard-swish patterns are fused: the QDQ file must still be valid ONNX
    // at its opset (HardSwish only exists from opset 14).
    // As `lowbit quantize` prepares it: hard-swish on its own, its input quantized.
    let (canon, stats, photos) = calibrated_ppocr();
    let q = build_qdq(&canon, &stats, &QdqConfig::default()).unwrap();
    // The first convolution's pre-activation and hard-swish output are quantized. When that layer is kept float, its
    // split-out activation stays float with it: the pre-activation is not quantized (the output still is, as the next
    // layer's input).
    let conv = canon.nodes.iter().find(|n| matches!(n.op, lowbit_core::Op::Conv(_))).unwrap();
    let act = canon.nodes.iter().find(|n| n.inputs.first() == Some(&conv.outputs[0])).unwrap();
    assert_eq!(act.op, lowbit_core::Op::HardSwish);
    let quantized = |g: &lowbit_core::Graph, v: &str| {
        g.nodes.iter().any(|n| matches!(n.op, lowbit_core::Op::QuantizeLinear { .. }) && n.inputs[0] == v)
    };
    assert!(quantized(&q.graph, &conv.outputs[0]) && quantized(&q.graph, &act.outputs[0]));
    let kept = build_qdq(&canon, &stats, &QdqConfig { skip_first: true, ..Default::default() }).unwrap();
    assert!(!quantized(&kept.graph, &conv.outputs[0]) && quantized(&kept.graph, &act.outputs[0]));
    let d = tmpdir("ppocr-qdq");
    let path = d.join("q.onnx");
    lowbit_onnx::write_model(&q.graph, &path).unwrap();
    let (shape, ort) = ort_run_qdq(&path, &photos.data[..4 * 3 * 48 * 192], &[4, 3, 48, 192], "ppocr-qdq-ort");
    assert_eq!(shape, vec![4, 2]);
    let mut qc = Classifier::new(q.graph.clone(), vec![3, 48, 192], 1);
    let ours = qc.logits(&photos.data[..4 * 3 * 48 * 192], 4).unwrap();
    for i in 0..4 {
        for j in 0..2 {
            assert!(
                (ours[i][j] - ort[i * 2 + j]).abs() < 0.05,
                "image {i}: lowbit {:?} ORT {:?}",
                ours[i],
                &ort[i * 2..i * 2 + 2]
            );
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn cle_can_replace_every_relu6_as_the_dfq_paper_does() {
    use std::process::Command;
    let d = tmpdir("ptq-cle-relu6");
    let out = d.join("q.onnx");
    let fashion = fashion_dir();
    let model = zoo("fmnist-mobilenet.onnx");
    let run = |extra: &[&str]| {
        let mut args = vec!["quantize", model.to_str().unwrap()];
        args.extend_from_slice(&["--calib", fashion.to_str().unwrap(), "--calib-n", "64", "--per-tensor", "--cle"]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        let o = Command::new(lowbit_bin()).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let safe = run(&[]);
    let all = run(&["--cle-relu6-to-relu"]);
    let skipped = |s: &str| -> usize {
        let i = s.find(" pairs skipped").expect("equalization line");
        s[..i].rsplit(", ").next().unwrap().trim().parse().unwrap()
    };
    assert!(all.contains("(all, as asked)"), "{all}");
    assert_eq!(skipped(&all), 0, "{all}");
    assert!(skipped(&safe) >= skipped(&all));
    assert!(out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn first_and_last_layers_keep_their_own_width() {
    // W2A2 with the first and last layers at 8 bits: the overrides name the first conv and the
    // classifier, the activation the classifier reads (and the pass-through chain up to its
    // quantized producer) gets 8-bit parameters, every other activation stays at 2 bits.
    let (canon, stats, _) = calibrated_fmnist("fmnist-resnet.onnx", 100);
    let (wb, ab) = lowbit_quant::qdq::first_last_overrides(&canon, 8);
    let convs: Vec<&str> =
        canon.nodes.iter().filter(|n| matches!(n.op.op_type(), "Conv" | "Gemm")).map(|n| n.name.as_str()).collect();
    let mut expect_w = vec![convs[0].to_string(), convs[convs.len() - 1].to_string()];
    let mut got_w: Vec<String> = wb.keys().cloned().collect();
    expect_w.sort();
    got_w.sort();
    assert_eq!(got_w, expect_w);
    assert!(wb.values().all(|&b| b == 8));
    let last = canon.nodes.iter().find(|n| n.name == convs[convs.len() - 1]).unwrap();
    assert!(ab.contains_key(&last.inputs[0]), "the classifier's input must be overridden");
    let base = QdqConfig { weight_bits: 2, act_bits: 2, method: Method::Mse, ..Default::default() };
    let all2 = build_qdq(&canon, &stats, &base).unwrap();
    let fl = build_qdq(&canon, &stats, &QdqConfig { weight_bits_for: wb, act_bits_for: ab.clone(), ..base }).unwrap();
    let mut checked = 0;
    for (v, &(s8, _)) in &fl.act_params {
        let (s2, _) = all2.act_params[v];
        if ab.contains_key(v) {
            // 255 steps instead of 3 over a similar range.
            assert!(s8 < s2 / 10.0, "{v}: 8-bit scale {s8} vs 2-bit {s2}");
            checked += 1;
        } else {
            assert_eq!(s8, s2, "{v} is not overridden and must keep its 2-bit parameters");
        }
    }
    assert!(checked >= 1);
    let bits =
        |m: &lowbit_quant::qdq::QdqModel, node: &str| m.layers.iter().find(|l| l.node == node).unwrap().weight_bits;
    assert_eq!(bits(&fl, convs[0]), Some(8));
    assert_eq!(bits(&fl, convs[convs.len() - 1]), Some(8));
    assert_eq!(bits(&fl, convs[1]), Some(2));
    // The file runs in ONNX Runtime with the same predictions as lowbit's executor.
    let n = 200;
    let test = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
    let d = tmpdir("ptq-first-last");
    let path = d.join("q.onnx");
    lowbit_onnx::write_model(&fl.graph, &path).unwrap();
    let (_, ort) = ort_run_qdq(&path, &test.data, &[n, 1, 28, 28], "ptq-first-last-ort");
    let ours = Classifier::new(fl.graph.clone(), vec![1, 28, 28], 2).logits(&test.data, n).unwrap();
    let agree = (0..n).filter(|&i| argmax(&ours[i]) == argmax(&ort[i * 10..(i + 1) * 10])).count();
    assert!(agree * 1000 >= n * 995, "lowbit/ORT agreement {agree}/{n}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// DFQ's data-free statistics: the per-channel means that BatchNorm's beta and gamma predict for
/// each post-activation tensor (N(beta, gamma^2) through ReLU / ReLU6) are close to the means
/// measured on real images, in the canonical (BN-folded) graph's names, and stay close after
/// cross-layer equalization rescales the channels.
#[test]
fn batchnorm_statistics_predict_calibration_means() {
    let g = lowbit_onnx::read_model(&zoo("fmnist-mobilenet.onnx")).unwrap();
    let d = lowbit_quant::dfq::BnDists::from_graph(&g);
    let (canon, stats, calib) = calibrated_fmnist("fmnist-mobilenet.onnx", 500);
    // (channels predicted within 2% of their tensor's measured range, channels)
    let compare =
        |canon: &lowbit_core::Graph, d: &lowbit_quant::dfq::BnDists, stats: &lowbit_quant::calibrate::Stats| {
            let bn = d.stats(canon);
            assert!(bn.len() >= 20, "{} of {} BatchNorms described", bn.len(), d.0.len());
            let (mut close, mut total) = (0, 0);
            for (k, o) in &bn {
                let cal = stats.get(k).unwrap_or_else(|| panic!("{k}: not a value of the canonical graph"));
                let (pred, meas) = (o.channel_means(), cal.channel_means());
                assert_eq!(pred.len(), meas.len(), "{k}");
                let spread = (cal.max - cal.min).max(1e-6);
                for (p, m) in pred.iter().zip(&meas) {
                    total += 1;
                    close += ((p - m).abs() <= 0.02 * spread) as usize;
                }
            }
            (close, total)
        };
    let (close, total) = compare(&canon, &d, &stats);
    eprintln!("BatchNorm-predicted channel means within 2% of the range of the measured ones: {close}/{total}");
    assert!(close as f64 >= 0.95 * total as f64, "only {close}/{total} channel means predicted");
    // Equalization divides channels by up to large factors; the statistics must follow.
    let (mut eq, mut d2) = (canon.clone(), d.clone());
    let r = lowbit_quant::dfq::equalize(&mut eq, None, 8);
    assert!(r.pairs >= 10 && r.channel_scale.values().flatten().any(|&s| (s - 1.0).abs() > 0.5), "{r:?}");
    d2.rescale(&r.channel_scale);
    let stats2 =
        lowbit_quant::calibrate::calibrate(&eq, &[1, 28, 28], &calib.data, calib.n, 50, 2, false, &mut |_, _| {})
            .unwrap();
    let (close2, total2) = compare(&eq, &d2, &stats2);
    eprintln!("after equalization: {close2}/{total2}");
    assert!(close2 as f64 >= 0.95 * total2 as f64, "after equalization only {close2}/{total2}");
}
