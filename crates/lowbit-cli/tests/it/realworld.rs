//! The non-classifier zoo models (a detector with ConvTranspose, a segmentation network whose 38
//! Resizes are sized by Shape subgraphs, an embedder another tool quantized with block-wise
//! DequantizeLinear and PRelu) load, and lowbit's float outputs match ONNX Runtime's, run live, on
//! real photos at two input shapes: every output within 1e-4 of its range (or, where ONNX Runtime
//! with and without graph optimizations differs by more, within twice that difference).

use std::process::Command;

use crate::common::*;
use lowbit_data::Preprocess;
use lowbit_runtime::{Plan, PlanOptions};

/// Runs `model` on `n` images of `folder` resized to `h`x`w` in lowbit and ONNX Runtime and
/// compares every output.
fn check(model: &str, folder: &str, pre: Preprocess, n: usize, h: usize, w: usize) {
    let path = zoo(model);
    let mut g = lowbit_onnx::read_model(&path).unwrap();
    // As --input-shape does: the file's fixed input size no longer binds.
    let first = g.runtime_inputs()[0].name.clone();
    g.inputs.iter_mut().filter(|i| i.name == first).for_each(|i| i.shape = None);
    let pre = Preprocess { resize_exact: Some((h, w)), resize_shorter: None, crop: None, ..pre };
    let set = lowbit_data::load_image_folder(&shared().join("data").join(folder), &pre, Some(n)).unwrap();
    assert_eq!(set.n, n);
    let shape = vec![set.n, set.c, h, w];
    let plan = Plan::compile(&g, &[shape.clone()], &PlanOptions::default()).unwrap();
    let outs = plan.run(&[lowbit_core::Tensor::f32(shape.clone(), set.data.clone())]).unwrap();
    let want = ort_all(&path, &set.data, &shape, model, "all");
    // ONNX Runtime with and without its graph optimizations sums in other orders: how far apart
    // two correct float runs of this model are on this input.
    let other = ort_all(&path, &set.data, &shape, model, "none");
    assert_eq!(outs.len(), want.len(), "{model}: number of outputs");
    for (i, (got, (ws, wv))) in outs.iter().zip(&want).enumerate() {
        assert_eq!(&got.shape, ws, "{model} {h}x{w}: output {i} shape");
        let gv = got.as_f32().unwrap();
        let (lo, hi) = wv.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let range = (hi - lo).max(f32::MIN_POSITIVE);
        let maxdiff = gv.iter().zip(wv).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let noise = other[i].1.iter().zip(wv).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{model} {n}x{h}x{w} output {i} {ws:?}: max|diff| {maxdiff:.3e} = {:.2e} of range {range:.3}; ORT optimized vs not: {noise:.3e}",
            maxdiff / range
        );
        // 1e-4 of the range, unless ONNX Runtime's own two modes differ by more (deep networks
        // with sigmoid side outputs): then within twice that.
        let allowed = (1e-4 * range).max(2.0 * noise);
        assert!(
            maxdiff <= allowed,
            "{model} {h}x{w} output {i}: max|diff| {maxdiff} > {allowed} (range {range}, ORT noise {noise})"
        );
    }
}

fn raw_rgb() -> Preprocess {
    Preprocess { scale: 1.0, mean: vec![0.0], std: vec![1.0], ..Preprocess::imagenet() }
}

#[test]
fn centerface_matches_ort_at_two_sizes() {
    // The file fixes its input at [10,3,32,32]; real use runs it at any multiple of 32.
    check("det-centerface.onnx", "scenes", raw_rgb(), 2, 192, 256);
    check("det-centerface.onnx", "scenes", raw_rgb(), 1, 320, 224);
}

#[test]
fn u2netp_matches_ort_at_two_sizes() {
    check("seg-u2netp.onnx", "scenes", Preprocess::imagenet(), 1, 320, 320);
    check("seg-u2netp.onnx", "scenes", Preprocess::imagenet(), 1, 160, 224);
}

#[test]
fn sface_blockwise_int8_matches_ort_at_two_batch_sizes() {
    // Flatten -> Gemm fixes the face size at 112x112; the batch is what varies.
    check("rec-sface-int8bq.onnx", "faces", raw_rgb(), 1, 112, 112);
    check("rec-sface-int8bq.onnx", "faces", raw_rgb(), 3, 112, 112);
}

#[test]
fn every_unsupported_operator_is_listed_at_once() {
    use lowbit_onnx::pb;
    use prost::Message;
    let node = |op: &str, domain: &str, i: &str, o: &str| pb::NodeProto {
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        name: Some(format!("n_{o}")),
        input: vec![i.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    let vi = |n: &str| pb::ValueInfoProto { name: Some(n.into()), ..Default::default() };
    let m = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(13) }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Relu", "", "x", "a"),
                node("NonZero", "", "a", "b"),
                node("Relu", "", "b", "c"),
                node("NonZero", "", "c", "d"),
                node("FusedConv", "com.microsoft", "d", "e"),
                node("Relu", "", "e", "y"),
            ],
            input: vec![vi("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = lowbit_onnx::decode_model(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("2 operator type(s) in 3 node(s)"), "{e}");
    assert!(
        e.contains("NonZero (2 nodes, first 'n_b')") && e.contains("com.microsoft:FusedConv (1 node, first 'n_e')"),
        "{e}"
    );
}

#[test]
fn input_shape_overrides_a_fixed_file_shape() {
    let m = zoo("det-centerface.onnx");
    let run = |args: &[&str]| Command::new(lowbit_bin()).args(args).output().unwrap();
    let o = run(&["bench", m.to_str().unwrap(), "--input-shape", "1,3,96,128", "--iters", "1", "--warmup", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["inspect", m.to_str().unwrap(), "--input-shape", "1,3,96,128"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("ConvTranspose"), "{out}");
    // Another rank is refused, naming the file and the input.
    let o = run(&["inspect", m.to_str().unwrap(), "--input-shape", "1,3,96"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("det-centerface.onnx") && err.contains("input.1") && err.contains("rank"), "{err}");
}

/// Reads a little-endian float32 .npy file: (shape, values).
fn read_npy(p: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", p.display());
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(h.contains("'descr': '<f4'") && h.contains("'fortran_order': False"), "{h}");
    let dims = &h[h.find("'shape': (").unwrap() + 10..];
    let dims = &dims[..dims.find(')').unwrap()];
    let shape: Vec<usize> = dims.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let v = b[10 + hl..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (shape, v)
}

#[test]
fn run_save_outputs_writes_what_onnx_runtime_computes() {
    // The same flags give run and dump-data the same tensors; ONNX Runtime runs the dumped ones.
    let d = tmpdir("save-outputs");
    let m = zoo("det-centerface.onnx");
    let scenes = shared().join("data/scenes");
    let flags = ["--limit", "2", "--size", "160x96"];
    let o = Command::new(lowbit_bin())
        .args(["run", m.to_str().unwrap(), "--input", scenes.to_str().unwrap(), "--save-outputs"])
        .arg(d.join("outs"))
        .args(flags)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(lowbit_bin())
        .args(["dump-data", scenes.to_str().unwrap(), "-o"])
        .arg(d.join("in"))
        .args(flags)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, x) = read_npy(&d.join("in.npy"));
    assert_eq!(shape, [2, 3, 96, 160]);
    let want = ort_all(&m, &x, &shape, "save-outputs-ort", "all");
    let mut stems: Vec<String> =
        std::fs::read_dir(d.join("outs")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    stems.sort();
    assert_eq!(stems.len(), 2);
    for (i, stem) in stems.iter().enumerate() {
        for (k, name) in ["537", "538", "539", "540"].iter().enumerate() {
            let (s, v) = read_npy(&d.join("outs").join(stem).join(format!("{name}.npy")));
            let (ws, wv) = &want[k];
            assert_eq!(s[1..], ws[1..], "{stem}/{name}");
            let per: usize = ws[1..].iter().product();
            let wv = &wv[i * per..(i + 1) * per];
            let (lo, hi) = wv.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let diff = v.iter().zip(wv).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * (hi - lo), "{stem}/{name}: max|diff| {diff}, range {}", hi - lo);
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn run_at_each_images_own_size_with_a_plan_per_shape() {
    // --multiple without --size: every image keeps its size, letterboxed up to a multiple of 32; the detector runs
    // at each shape (one plan per shape) and its outputs have that shape's geometry (CenterFace: stride 4).
    let d = tmpdir("each-size");
    let m = zoo("det-centerface.onnx");
    let scenes = shared().join("data/scenes");
    let o = Command::new(lowbit_bin())
        .args(["run", m.to_str().unwrap(), "--input", scenes.to_str().unwrap(), "--limit", "3", "--multiple", "32"])
        .args(["--letterbox", "--save-outputs"])
        .arg(d.join("outs"))
        .arg("--json")
        .arg(d.join("r.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    let rows = r["results"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let mut shapes = std::collections::HashSet::new();
    for row in rows {
        let s: Vec<usize> = serde_json::from_value(row["input_shape"].clone()).unwrap();
        assert!(s[2] % 32 == 0 && s[3] % 32 == 0 && s[0] == 1 && s[1] == 3, "{s:?}");
        shapes.insert(s.clone());
        for out in row["outputs"].as_array().unwrap() {
            let (os, v) = read_npy(std::path::Path::new(out["file"].as_str().unwrap()));
            assert_eq!((os[2], os[3]), (s[2] / 4, s[3] / 4), "{}: {s:?} -> {os:?}", out["output"]);
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }
    assert!(shapes.len() >= 2, "the first three scenes should come out at different sizes: {shapes:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("at {} input shapes", shapes.len())));
    // A letterbox needs a size or a multiple.
    let o = Command::new(lowbit_bin())
        .args(["run", m.to_str().unwrap(), "--input", scenes.to_str().unwrap(), "--letterbox", "--save-outputs"])
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--letterbox needs"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resize_and_concat_kernels_equal_the_reference_bit_for_bit() {
    use lowbit_core::{CoordMode, Graph, NearestMode, Node, Op, ResizeAttrs, ResizeMode, Tensor, ValueInfo};
    let mut u = uniform(0x9E37_79B9_7F4A_7C15);
    let mut rnd = move || u() * 8.0 - 4.0;
    let coords = [
        CoordMode::HalfPixel,
        CoordMode::PytorchHalfPixel,
        CoordMode::AlignCorners,
        CoordMode::Asymmetric,
        CoordMode::TfHalfPixelForNn,
        CoordMode::HalfPixelSymmetric,
    ];
    let nearest = [NearestMode::RoundPreferFloor, NearestMode::RoundPreferCeil, NearestMode::Floor, NearestMode::Ceil];
    let mut cases = 0;
    for (k, &(h, w, sh, sw)) in
        [(5, 7, 2.0, 2.0), (3, 4, 1.0, 2.5), (8, 6, 0.5, 1.0), (1, 9, 3.0, 0.7), (6, 6, 1.7, 2.3)].iter().enumerate()
    {
        for mode in [ResizeMode::Linear, ResizeMode::Nearest] {
            let coord = coords[k % coords.len()];
            let r = ResizeAttrs {
                mode,
                coord,
                nearest: nearest[k % nearest.len()],
                scales_attr: None,
                upsample: false,
                opset10: false,
                axes: None,
                exclude_outside: false,
                extrapolation_value: 0.0,
                cubic_coeff_a: -0.75,
            };
            let vi = |n: &str| ValueInfo { name: n.into(), dtype: lowbit_core::DType::F32, shape: None };
            let mut g = Graph { opset: 13, ..Default::default() };
            g.inputs = vec![vi("x")];
            g.outputs = vec![vi("y")];
            g.initializers.insert("scales".into(), Tensor::f32(vec![4], vec![1.0, 1.0, sh, sw]));
            g.nodes = vec![
                Node {
                    name: "r".into(),
                    op: Op::Resize(r),
                    inputs: vec!["x".into(), "".into(), "scales".into()],
                    outputs: vec!["z".into()],
                },
                // Concat of the resized map with itself along channels, and along width.
                Node {
                    name: "c".into(),
                    op: Op::Concat { axis: 1 },
                    inputs: vec!["z".into(), "z".into()],
                    outputs: vec!["y".into()],
                },
            ];
            let shape = vec![2, 3, h, w];
            let x = Tensor::f32(shape.clone(), (0..2 * 3 * h * w).map(|_| rnd()).collect());
            let plan = Plan::compile(&g, &[shape], &PlanOptions::default()).unwrap();
            let kernels: Vec<&str> = plan.steps().iter().map(|s| s.kernel.as_str()).collect();
            assert_eq!(kernels, ["f32 resize", "f32 concat"], "the fast kernels run");
            let got = plan.run(std::slice::from_ref(&x)).unwrap().remove(0);
            let z = lowbit_kernels::reference::eval(&g.nodes[0], &[Some(&x), None, g.initializers.get("scales")])
                .unwrap()
                .remove(0);
            let want = lowbit_kernels::reference::eval(&g.nodes[1], &[Some(&z), Some(&z)]).unwrap().remove(0);
            assert_eq!(got.shape, want.shape);
            let (a, b) = (got.as_f32().unwrap(), want.as_f32().unwrap());
            assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "{mode:?} {coord:?} {h}x{w} x{sh},{sw}");
            cases += 1;
        }
    }
    assert_eq!(cases, 10);
}

/// `lowbit eval ... --json` as JSON, asserting success.
fn eval_json(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let o = Command::new(lowbit_bin()).arg("eval").args(args).arg("--json").arg(out).output().unwrap();
    assert!(o.status.success(), "eval {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn task_eval_judges_detector_segmenter_and_embedder_against_float() {
    let d = tmpdir("task-eval");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let lb = |args: &[&str]| {
        let o = Command::new(lowbit_bin()).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let (scenes, faces) = (s(&shared().join("data/scenes")), s(&shared().join("data/faces")));
    // Detector: the float model against itself finds every box; quantized W8A8 and W3A3 are
    // scored by mAP@0.5 against float, W3 lower than W8; a folder of saved outputs as the
    // reference scores exactly as the model it was saved from.
    let cf = s(&zoo("det-centerface.onnx"));
    let flags = ["--size", "320x256", "--scale", "1"];
    let same =
        eval_json(&[&[cf.as_str(), "--data", &faces, "--reference", &cf][..], &flags[..]].concat(), &d.join("a.json"));
    let m = &same["metric"];
    assert_eq!((m["task"].as_str(), m["decoder"].as_str()), (Some("detect"), Some("CenterNet")), "{same}");
    assert!(m["reference_boxes"].as_u64().unwrap() >= 3, "{same}");
    assert_eq!(m["map50"].as_f64(), Some(1.0), "{same}");
    let mut maps = vec![];
    for bits in ["8", "3"] {
        let q = s(&d.join(format!("cf{bits}.onnx")));
        lb(&[
            &[
                "quantize",
                cf.as_str(),
                "--calib",
                &scenes,
                "--calib-n",
                "8",
                "--method",
                "minmax",
                "--weights",
                bits,
                "--acts",
                bits,
                "-o",
                &q,
            ][..],
            &flags[..],
        ]
        .concat());
        let r = eval_json(
            &[&[q.as_str(), "--data", &faces, "--reference", &cf][..], &flags[..]].concat(),
            &d.join("q.json"),
        );
        maps.push(r["metric"]["map50"].as_f64().unwrap());
        if bits == "8" {
            let outs = s(&d.join("float-outs"));
            lb(&[&["run", cf.as_str(), "--input", &faces, "--save-outputs", &outs][..], &flags[..]].concat());
            let r2 = eval_json(
                &[&[q.as_str(), "--data", &faces, "--reference", &outs][..], &flags[..]].concat(),
                &d.join("q2.json"),
            );
            assert_eq!(r2["metric"], r["metric"], "saved outputs as reference");
        }
    }
    assert!(maps[0] >= 0.8 && maps[0] <= 1.0 && maps[1] < maps[0], "W8 and W3 mAP {maps:?}");
    // Segmentation: IoU of the thresholded masks.
    let u2 = s(&zoo("seg-u2netp.onnx"));
    let flags = ["--preset", "imagenet", "--size", "96x96", "--limit", "3"];
    let r =
        eval_json(&[&[u2.as_str(), "--data", &scenes, "--reference", &u2][..], &flags[..]].concat(), &d.join("u.json"));
    assert_eq!((r["metric"]["task"].as_str(), r["metric"]["iou"].as_f64()), (Some("segment"), Some(1.0)), "{r}");
    assert_eq!(r["metric"]["pooled_iou"].as_f64(), Some(1.0), "{r}");
    // Embeddings: cosine and verification over pairs (identities from the file names).
    let sf = s(&zoo("rec-sface-int8bq.onnx"));
    let flags = ["--size", "112x112", "--scale", "1"];
    let r =
        eval_json(&[&[sf.as_str(), "--data", &faces, "--reference", &sf][..], &flags[..]].concat(), &d.join("e.json"));
    let m = &r["metric"];
    assert_eq!(
        (m["task"].as_str(), m["pairs"].as_u64(), m["agreement"].as_f64()),
        (Some("embed"), Some(15), Some(1.0)),
        "{r}"
    );
    assert!((m["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
    // Asking for a task without a reference is an error.
    let o = Command::new(lowbit_bin())
        .args(["eval", &sf, "--data", &faces, "--task", "embed"])
        .args(flags)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--reference"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn files_written_at_a_raised_opset_load_in_onnx_runtime_with_the_same_outputs() {
    // A quantized file is written at opset 13 at least: attribute forms of older opsets
    // (Unsqueeze axes, Slice starts/ends, Clip min/max, Pad pads, Upsample) become inputs.
    let d = tmpdir("raised-opset");
    for (model, shape) in [
        ("seg-u2netp.onnx", [1usize, 3, 64, 64]),
        ("det-centerface.onnx", [1, 3, 64, 96]),
        ("ppocr-textline-cls.onnx", [1, 3, 48, 192]),
    ] {
        let path = zoo(model);
        let mut g = lowbit_onnx::read_model(&path).unwrap();
        for opset in [13, 18] {
            g.opset = g.opset.max(opset);
            let out = d.join(format!("{opset}-{model}"));
            lowbit_onnx::write_model(&g, &out).unwrap();
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32) / 4.0).collect();
            let want = ort_all(&path, &x, &shape, "raised-a", "none");
            let got = ort_all(&out, &x, &shape, "raised-b", "none");
            assert_eq!(want.len(), got.len(), "{model}");
            for ((ws, wv), (gs, gv)) in want.iter().zip(&got) {
                assert_eq!(ws, gs, "{model} opset {opset}");
                let range = wv.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let diff = wv.iter().zip(gv).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff <= 1e-5 * range, "{model} opset {opset}: max|diff| {diff} of {range}");
            }
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_quantized_file_asks_onnx_runtime_for_no_input_the_model_does_not_read() {
    // SFace lists 29 weight names as graph inputs that no node reads (its converter left them);
    // the quantized file must not make ONNX Runtime require them.
    let d = tmpdir("unread-inputs");
    let q = d.join("sface-w8a8.onnx");
    let o = Command::new(lowbit_bin())
        .args(["quantize", zoo("rec-sface-int8bq.onnx").to_str().unwrap(), "--calib"])
        .arg(shared().join("data/faces"))
        .args(["--size", "112x112", "--scale", "1", "--calib-n", "2", "--method", "minmax", "-o"])
        .arg(&q)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = lowbit_onnx::read_model(&q).unwrap();
    assert_eq!(g.runtime_inputs().len(), 1);
    let read: std::collections::HashSet<&String> = g.nodes.iter().flat_map(|n| n.inputs.iter()).collect();
    let stray: Vec<&str> = g
        .inputs
        .iter()
        .filter(|i| !read.contains(&i.name) && !g.initializers.contains_key(&i.name))
        .map(|i| i.name.as_str())
        .collect();
    assert!(stray.is_empty(), "declared inputs nothing reads: {stray:?}");
    let x = vec![100.0f32; 3 * 112 * 112];
    let outs = ort_all(&q, &x, &[1, 3, 112, 112], "unread-inputs-ort", "all");
    assert_eq!(outs[0].0, vec![1, 128]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn models_keep_their_input_float_when_its_rounding_costs_accuracy() {
    // U²-Netp reads ImageNet-normalised images: one uint8 scale over its three channels merges
    // neighbouring gray levels, and its masks move. `quantize` measures both choices on the
    // calibration images and keeps the input float (the first layer reads it in float, its weights
    // still int8) when that is >= 1 dB closer to float; `--quantize-input` keeps the input
    // quantized.
    let d = tmpdir("input-precision");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    // Four photos of text and fine structure, where U²-Netp's masks hinge on detail below a gray level (on all 28
    // scenes at 320x320 the check measures 23.2 dB against 26.6 dB; on these at 224x224 about 27.4 against 29.1).
    let photos = d.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for f in ["text_defocus.jpg", "building.jpg", "imageTextN.png", "text_motion.jpg"] {
        std::os::unix::fs::symlink(shared().join("data/scenes").join(f), photos.join(f)).unwrap();
    }
    let scenes = s(&photos);
    let u2 = s(&zoo("seg-u2netp.onnx"));
    let flags = ["--preset", "imagenet", "--size", "224x224"];
    let quantize = |extra: &[&str], name: &str| -> (lowbit_core::Graph, serde_json::Value, serde_json::Value) {
        let (q, j) = (d.join(format!("{name}.onnx")), d.join(format!("{name}.json")));
        let o = Command::new(lowbit_bin())
            .args([
                "quantize",
                &u2,
                "--calib",
                &scenes,
                "--calib-n",
                "6",
                "--method",
                "minmax",
                "-o",
                &s(&q),
                "--json",
                &s(&j),
            ])
            .args(flags)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        let ev = eval_json(
            &[&[s(&q).as_str(), "--data", &scenes, "--reference", &u2][..], &flags[..]].concat(),
            &d.join(format!("{name}-eval.json")),
        );
        (lowbit_onnx::read_model(&q).unwrap(), report, ev)
    };
    // Is the model input read by a QuantizeLinear?
    let input_quantized = |g: &lowbit_core::Graph| {
        let x = &g.runtime_inputs()[0].name;
        g.nodes.iter().any(|n| matches!(n.op, lowbit_core::Op::QuantizeLinear { .. }) && n.inputs.first() == Some(x))
    };
    let (auto, report, ev_auto) = quantize(&[], "auto");
    let ip = &report["input_precision"];
    let (int8_db, float_db) = (ip["sqnr_int8_input_db"].as_f64().unwrap(), ip["sqnr_float_input_db"].as_f64().unwrap());
    assert!(int8_db.is_finite() && float_db.is_finite(), "{ip}");
    let kept_float = ip["input_float"].as_bool().unwrap();
    assert_eq!(kept_float, float_db >= int8_db + 1.0, "{ip}");
    assert!(kept_float, "{ip}");
    assert!(!input_quantized(&auto), "the first layer reads the float input");
    // ... with its weights still 8-bit integers behind a DequantizeLinear.
    let x = &auto.runtime_inputs()[0].name;
    let first = auto.nodes.iter().find(|n| n.inputs.first() == Some(x)).expect("a node reads the input");
    assert!(matches!(first.op, lowbit_core::Op::Conv(_)), "{:?}", first.op);
    let w = auto.nodes.iter().find(|n| n.outputs.first() == first.inputs.get(1)).expect("weights from a node");
    assert!(matches!(w.op, lowbit_core::Op::DequantizeLinear { .. }), "{:?}", w.op);
    assert!(matches!(auto.initializers[&w.inputs[0]].data, lowbit_core::Data::I8(_)));
    let (forced, report, ev_forced) = quantize(&["--quantize-input"], "forced");
    assert!(report["input_precision"].is_null(), "{report}");
    assert!(input_quantized(&forced));
    // The mask error the check predicted: lower with the input float.
    let mae = |e: &serde_json::Value| e["metric"]["mae"].as_f64().unwrap();
    assert!(mae(&ev_auto) < mae(&ev_forced), "{} vs {}", ev_auto["metric"], ev_forced["metric"]);
    // MNIST normalised by its mean and deviation: its gray levels sit a third of a step off the
    // input's 8-bit grid (the zero point is an integer), checked, and kept quantized (a fraction
    // of a dB); as plain p/255 they sit on the grid, and nothing is checked.
    let mnist = |extra: &[&str], name: &str| -> (lowbit_core::Graph, serde_json::Value) {
        let (q, j) = (d.join(format!("{name}.onnx")), d.join(format!("{name}.json")));
        let o = Command::new(lowbit_bin())
            .args(["quantize", &s(&zoo("mnist-cnn.onnx")), "--calib", &s(&shared().join("data/mnist10k"))])
            .args(["--calib-n", "50", "--method", "minmax", "-o", &s(&q), "--json", &s(&j)])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        (lowbit_onnx::read_model(&q).unwrap(), report)
    };
    let (g, report) = mnist(&[], "mnist");
    let ip = &report["input_precision"];
    assert_eq!(ip["input_float"], false, "{report}");
    assert!(ip["sqnr_int8_input_db"].as_f64().unwrap().is_finite(), "{report}");
    assert!(input_quantized(&g));
    let (g, report) = mnist(&["--mean", "0", "--std", "1"], "mnist-raw");
    assert!(report["input_precision"].is_null(), "{report}");
    assert!(input_quantized(&g));
    std::fs::remove_dir_all(&d).unwrap();
}
