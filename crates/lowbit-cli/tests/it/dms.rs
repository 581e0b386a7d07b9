//! DMS width search (issue 24): the channel groups of a Bi-Real ResNet, widening a graph, the
//! logistic relaxation's masks, penalty and gradient against their formulas, the supernet at a
//! collapsed distribution against the narrow network it stands for, and the two commands end to
//! end (`search-widths`, `train --binary --widths`) with their errors.

use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use lowbit_core::{Graph, Op};
use lowbit_data::{Preprocess, Split};
use lowbit_train::dms::{self, Dms};
use lowbit_train::model::host;
use lowbit_train::{Binary, Model};

use crate::common::*;

fn bireal() -> (Graph, Vec<String>) {
    let g = lowbit_onnx::read_model(&zoo("fmnist-resnet.onnx")).unwrap();
    let br = lowbit_train::binary::bireal(&g).unwrap();
    (br.graph, br.binary_convs)
}

fn model(g: &Graph, binary: &[String], how: Binary) -> Model {
    let mut m = Model::from_graph(g, &lowbit_train::device()).unwrap();
    lowbit_train::binary::mark(&mut m, binary, how).unwrap();
    m
}

fn images(n: usize) -> lowbit_data::ImageSet {
    lowbit_data::load_idx_dir(&root().join("assets"), Split::Train, &Preprocess::fmnist(), Some(n)).unwrap()
}

const IRNET: Binary = Binary { libra: true, ede: true };

#[test]
fn a_bireal_resnet_has_one_channel_group_per_stage() {
    let (g, binary) = bireal();
    let gr = dms::channel_groups(&g).unwrap();
    let bases: Vec<usize> = gr.groups.iter().map(|x| x.base).collect();
    assert_eq!(bases, [16, 32, 64]);
    // The stem opens stage 1 and a projection each later stage, with the stage's six binary convs.
    assert_eq!(gr.groups[0].convs[0], "/conv1/Conv");
    assert!(gr.groups[1].convs.iter().any(|c| c.contains("layers.3/shortcut")));
    for gp in &gr.groups {
        assert_eq!(gp.convs.len(), 7, "{gp:?}");
    }
    for c in &binary {
        assert!(gr.output_group.contains_key(c) && gr.input_group.contains_key(c), "{c}");
    }
    // The classifier reads the last stage; the stem reads the image (no group).
    let fc = g.nodes.iter().find(|n| matches!(n.op, Op::Gemm { .. })).unwrap();
    assert_eq!(gr.input_group.get(&fc.name), Some(&2));
    assert!(!gr.input_group.contains_key("/conv1/Conv"));
    // The first binary convolution of stage 2 reads stage 1.
    assert_eq!(gr.input_group["/layers/layers.3/conv1/Conv"], 0);
    assert_eq!(gr.output_group["/layers/layers.3/conv1/Conv"], 1);
}

#[test]
fn widening_keeps_the_leading_channels_and_runs() {
    let (g, _) = bireal();
    let gr = dms::channel_groups(&g).unwrap();
    let w = dms::apply_widths(&g, &gr, &[Some(24), Some(12), None], 3).unwrap();
    let shape = |g: &Graph, name: &str| g.initializers[name].shape.clone();
    assert_eq!(shape(&w, "conv1.weight"), [24, 1, 3, 3]);
    assert_eq!(shape(&w, "layers.0.conv1.weight"), [24, 24, 3, 3]);
    assert_eq!(shape(&w, "layers.3.conv1.weight"), [12, 24, 3, 3]);
    assert_eq!(shape(&w, "layers.3.shortcut.0.weight"), [12, 24, 1, 1]);
    assert_eq!(shape(&w, "layers.6.conv1.weight"), [64, 12, 3, 3]);
    assert_eq!(shape(&w, "layers.0.bn1.running_var"), [24]);
    assert_eq!(shape(&w, "fc.weight"), [10, 64]);
    // Old values lead: stage 1's first binary conv, filter 5, input channel 7.
    let (a, b) = (
        g.initializers["layers.0.conv1.weight"].as_f32().unwrap(),
        w.initializers["layers.0.conv1.weight"].as_f32().unwrap(),
    );
    assert_eq!(a[(5 * 16 + 7) * 9..(5 * 16 + 8) * 9], b[(5 * 24 + 7) * 9..(5 * 24 + 8) * 9]);
    // New BatchNorms are the identity.
    let var = w.initializers["layers.0.bn1.running_var"].as_f32().unwrap();
    assert!(var[16..].iter().all(|&v| v == 1.0));
    // The widened float graph compiles and runs on lowbit's runtime.
    let set = images(20);
    let acc = lowbit_cli::common::top1(&w, &set, 1).unwrap();
    assert!((0.0..=1.0).contains(&acc));
}

/// Supernet at 2x with the search attached at `start`; returns it with the cost terms.
fn supernet(how: Binary, start: &[f32], budget_scale: f64) -> (Model, Vec<dms::CostTerm>, Vec<Vec<usize>>, f64) {
    let (g, binary) = bireal();
    let gr = dms::channel_groups(&g).unwrap();
    let mut base = model(&g, &binary, how);
    lowbit_train::train::evaluate(&mut base, &images(2), 2).unwrap();
    let terms = lowbit_train::dms_setup::cost_terms(&base, &gr, true).unwrap();
    let own = dms::cost_at(&terms, &|i| gr.groups[i].base as f64);
    let cands: Vec<Vec<usize>> = gr.groups.iter().map(|gp| (2..=8).map(|q| gp.base * q / 4).collect()).collect();
    let sg = dms::apply_widths(&g, &gr, &cands.iter().map(|c| c.last().copied()).collect::<Vec<_>>(), 1).unwrap();
    let mut m = model(&sg, &binary, how);
    let search = (0..3).map(|i| (i, cands[i].clone())).collect();
    Dms::attach(&mut m, &gr, search, start, terms.clone(), own * budget_scale, 2.0).unwrap();
    (m, terms, cands, own * budget_scale)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn masks_penalty_and_gradient_follow_the_logistic_relaxation() {
    let (mut m, terms, cands, budget) = supernet(IRNET, &[2.3, 4.0, 0.2], 0.5);
    let mu = m.dms.as_ref().unwrap().locations(&m);
    for (a, b) in mu.iter().zip([2.3f32, 4.0, 0.2]) {
        assert!((a - b).abs() < 1e-4, "{mu:?}");
    }
    m.require_grad();
    let progress = 0.25f32;
    let s = Dms::spread(progress) as f64;
    assert!((s - 0.02f64.powf(0.25)).abs() < 1e-6);
    let masks = {
        let th: Vec<Tensor<1>> = m.dms.as_ref().unwrap().searched.iter().map(|s| m.params[s.theta].t.clone()).collect();
        m.dms.as_mut().unwrap().masks(&th, progress, true)
    };
    let mut expected = vec![];
    for (gi, w) in cands.iter().enumerate() {
        let u = mu[gi] as f64;
        let j = (u.round() as usize).clamp(1, w.len() - 2);
        let f = |b: f64| sigmoid((b - u) / s);
        let p = [f(j as f64 - 0.5), f(j as f64 + 0.5) - f(j as f64 - 0.5), 1.0 - f(j as f64 + 0.5)];
        let pts = [w[j - 1], w[j], w[j + 1]];
        let got = host(&masks[&gi]);
        assert_eq!(got.len(), *w.last().unwrap());
        for (c, &g) in got.iter().enumerate() {
            let want: f64 = (0..3).filter(|&k| c < pts[k]).map(|k| p[k]).sum();
            assert!((g as f64 - want).abs() < 1e-5, "group {gi} channel {c}: {g} vs {want}");
        }
        expected.push((0..3).map(|k| p[k] * pts[k] as f64).sum::<f64>());
    }
    let cost = dms::cost_at(&terms, &|i| expected[i]);
    let want = 2.0 * (cost / budget).ln().powi(2);
    let pen = m.dms.as_mut().unwrap().penalty.take().unwrap();
    let got = host(&pen)[0] as f64;
    assert!((got - want).abs() < 1e-4 * want, "penalty {got} vs {want}");
    // Over budget: every location's gradient points to narrower widths.
    let grads = pen.sum().backward();
    let d = m.dms.as_ref().unwrap();
    for sg in &d.searched {
        let gth = host(&m.params[sg.theta].t.grad(&grads).unwrap())[0];
        assert!(gth > 0.0, "group {}: d penalty / d theta = {gth}", sg.group);
    }
}

/// With the spread annealed and each location on a candidate, the masks are exactly 0 or 1 and the
/// supernet computes what the narrow network made of its leading channels computes: the masked
/// filter statistics (Libra-PB's mean, deviation and power-of-two scale) are the narrow filters'
/// own. Binary networks amplify any rounding difference (a value near 0 flips a sign), so this
/// only holds because nothing of the wider supernet leaks in.
#[test]
fn the_collapsed_supernet_is_the_narrow_network() {
    let (mut sup, _, cands, _) = supernet(IRNET, &[1.0, 3.0, 5.0], 1.0);
    let picks = [cands[0][1], cands[1][3], cands[2][5]];
    assert_eq!(picks, [12, 40, 112]);
    let (_, binary) = bireal();
    let sg = sup.to_graph();
    let gr = dms::channel_groups(&sg).unwrap();
    let narrow = dms::apply_widths(&sg, &gr, &picks.map(Some), 9).unwrap();
    let mut nar = model(&narrow, &binary, IRNET);
    sup.progress = 1.0;
    let set = images(16);
    let x = || Tensor::<4>::from_data(TensorData::new(set.data.clone(), [16, 1, 28, 28]), &lowbit_train::device());
    let a = sup.forward(x(), true).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let b = nar.forward(x(), true).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(worst <= 1e-4 * scale, "worst {worst} of {scale}");
    // And not by accident: another width differs.
    let other = dms::apply_widths(&sg, &gr, &[Some(16), Some(40), Some(112)], 9).unwrap();
    let c = model(&other, &binary, IRNET).forward(x(), true).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let diff = c.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(diff > 1e-2 * scale, "{diff}");
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(lowbit_bin()).args(args).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The output channels of convolution `name` in an exported QDQ graph: the length of its bias
/// (through its DequantizeLinear; binary weights are stored as packed bits).
fn conv_out_channels(g: &Graph, name: &str) -> usize {
    let n = g.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"));
    let prod = g.producers();
    let mut v = n.inputs[2].clone();
    while let Some(&i) = prod.get(&v) {
        v = g.nodes[i].inputs[0].clone();
    }
    g.initializers[&v].shape[0]
}

#[test]
fn search_then_train_the_found_widths_end_to_end() {
    let d = tmpdir("dms-cli");
    let (model, data) = (zoo("fmnist-resnet.onnx"), root().join("assets"));
    let (m, dt) = (model.to_str().unwrap(), data.to_str().unwrap());
    let w = d.join("w.json");
    let common = [
        "--data",
        dt,
        "--preset",
        "fmnist",
        "--epochs",
        "1",
        "--batch",
        "50",
        "--limit",
        "200",
        "--test-limit",
        "100",
        "--threads",
        "1",
    ];
    let mut args = vec!["search-widths", m, "--binary", "irnet", "--budget-ops", "1x", "--candidates", "0.5,1,1.5"];
    args.extend(common);
    args.extend(["-o", w.to_str().unwrap()]);
    let (ok, out) = run(&args);
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&w).unwrap()).unwrap();
    let widths = r["widths"].as_array().unwrap();
    assert_eq!(widths.len(), 3);
    assert!(r["cost"].as_f64().unwrap() <= r["budget"]["value"].as_f64().unwrap() * (1.0 + 1e-9), "{r}");
    assert!(r["expected_widths"].as_array().unwrap().len() >= 2);
    assert!(std::fs::read_to_string(d.join("w.json.curve.svg")).unwrap().contains("<svg"));
    // Train the found widths: the exported binary network has them.
    let out_m = d.join("b.onnx");
    let mut args = vec!["train", m, "--binary", "irnet", "--widths", w.to_str().unwrap()];
    args.extend(common);
    args.extend(["-o", out_m.to_str().unwrap()]);
    let (ok, out) = run(&args);
    assert!(ok, "{out}");
    let g = lowbit_onnx::read_model(&out_m).unwrap();
    for e in widths {
        let width = e["width"].as_u64().unwrap() as usize;
        for l in e["layers"].as_array().unwrap() {
            assert_eq!(conv_out_channels(&g, l.as_str().unwrap()), width, "{l}");
        }
    }
    // A uniform multiplier.
    let out_u = d.join("u.onnx");
    let js = d.join("u.json");
    let mut args = vec!["train", m, "--binary", "xnor", "--widths", "1.5"];
    args.extend(common);
    args.extend(["-o", out_u.to_str().unwrap(), "--json", js.to_str().unwrap()]);
    let (ok, out) = run(&args);
    assert!(ok, "{out}");
    // Its report counts 1.5² the model's own binary multiply-accumulates.
    let u: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
    let own = r["budget"]["model_own"].as_f64().unwrap();
    let macs = u["binary_macs"].as_f64().unwrap();
    assert!((macs / own - 2.25).abs() < 1e-9, "{macs} vs {own}");
    let g = lowbit_onnx::read_model(&out_u).unwrap();
    assert_eq!(conv_out_channels(&g, "/layers/layers.7/conv2/Conv"), 96);
    assert_eq!(conv_out_channels(&g, "/layers/layers.3/shortcut/shortcut.0/Conv"), 48);
    assert_eq!(conv_out_channels(&g, "/conv1/Conv"), 24);
}

#[test]
fn bad_width_requests_fail_clearly() {
    let d = tmpdir("dms-bad");
    let (model, data) = (zoo("fmnist-resnet.onnx"), root().join("assets"));
    let (m, dt) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = d.join("o.onnx");
    let o = out.to_str().unwrap();
    let bad = d.join("bad.json");
    std::fs::write(&bad, r#"{"widths": [{"layers": ["/no/such/Conv"], "width": 8}]}"#).unwrap();
    let missing = d.join("missing.json");
    let (bad, missing) = (bad.to_str().unwrap(), missing.to_str().unwrap());
    let base = |cmd: &'static str| vec![cmd, m, "--data", dt, "--preset", "fmnist", "-o", o];
    let train = |w| [base("train"), vec!["--binary", "irnet", "--widths", w]].concat();
    let search = |extra: &[&'static str]| [base("search-widths"), extra.to_vec()].concat();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (train(bad), "/no/such/Conv"),
        (train(missing), "missing.json"),
        (train("0"), "above 0"),
        (search(&["--binary", "irnet"]), "--budget-ops"),
        (search(&["--binary", "irnet", "--budget-ops", "lots"]), "lots"),
        (search(&["--budget-ops", "1x"]), "--binary"),
        (search(&["--binary", "irnet", "--budget-ops", "1x", "--candidates", "1"]), "two"),
    ];
    for (args, want) in cases {
        let (ok, text) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(text.contains(want), "{args:?}: {text}");
        assert!(!out.exists(), "{args:?} left an output");
    }
}
