//! ONNX round trip (read -> write -> read gives the same graph and the same outputs) and
//! canonicalizing passes (constant folding, BatchNorm folding, activation fusion, dead-node
//! removal) preserving outputs, on every zoo model.

use crate::common::*;
use lowbit_core::{Graph, Tensor};
use lowbit_runtime::{Plan, PlanOptions};

const MODELS: &[(&str, [usize; 4])] = &[
    ("mnist-cnn.onnx", [2, 1, 28, 28]),
    ("fmnist-resnet.onnx", [2, 1, 28, 28]),
    ("fmnist-mobilenet.onnx", [2, 1, 28, 28]),
    ("mobilenetv2-imagenet.onnx", [1, 3, 224, 224]),
    ("efficientnet-lite0-imagenet.onnx", [1, 3, 224, 224]),
    ("ppocr-textline-cls.onnx", [2, 3, 48, 192]),
    ("resnet18-random.onnx", [1, 3, 224, 224]),
];

fn input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f32(shape.to_vec(), (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect())
}

fn run(g: &Graph, shape: &[usize], optimize: bool) -> Vec<f32> {
    let p = Plan::compile(g, &[shape.to_vec()], &PlanOptions { threads: 1, optimize, ..Default::default() }).unwrap();
    p.run(&[input(shape)]).unwrap().remove(0).to_f32_vec()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

#[test]
fn read_write_read_is_identity() {
    for (name, shape) in MODELS {
        let g = lowbit_onnx::read_model(&zoo(name)).unwrap();
        let bytes = lowbit_onnx::encode_model(&g);
        let g2 = lowbit_onnx::decode_model(&bytes).unwrap();
        assert_eq!(g, g2, "{name}: graph changed in the round trip");
        assert_eq!(run(&g, shape, true), run(&g2, shape, true), "{name}: outputs changed in the round trip");
    }
}

#[test]
fn written_file_is_atomic_and_loads() {
    let d = tmpdir("write");
    let g = lowbit_onnx::read_model(&zoo("mnist-cnn.onnx")).unwrap();
    let out = d.join("m.onnx");
    lowbit_onnx::write_model(&g, &out).unwrap();
    assert_eq!(lowbit_onnx::read_model(&out).unwrap(), g);
    let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().filter(|e| e.file_name() != "m.onnx").collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    // Writing into a folder that does not exist fails cleanly.
    assert!(lowbit_onnx::write_model(&g, &d.join("no/such/dir/m.onnx")).is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn canonicalized_graph_writes_standard_onnx_that_reloads_with_same_outputs() {
    // Fused activations are written back as separate standard nodes.
    for (name, shape) in MODELS {
        let g = lowbit_onnx::read_model(&zoo(name)).unwrap();
        let spec =
            lowbit_runtime::specialize(&g, &[(g.runtime_inputs()[0].name.clone(), shape.to_vec())], true).unwrap();
        let g2 = lowbit_onnx::decode_model(&lowbit_onnx::encode_model(&spec.graph)).unwrap();
        let r = max_rel(&run(&g2, shape, false), &run(&g, shape, false));
        assert!(r < 1e-5, "{name}: canonical graph written and reread differs by {r}");
    }
}

#[test]
fn passes_preserve_outputs_and_do_their_job() {
    for (name, shape) in MODELS {
        let g = lowbit_onnx::read_model(&zoo(name)).unwrap();
        let plain = run(&g, shape, false);
        let opt = run(&g, shape, true);
        let r = max_rel(&opt, &plain);
        assert!(r < 1e-5, "{name}: optimized plan differs from the unoptimized one by {r}");
        let spec =
            lowbit_runtime::specialize(&g, &[(g.runtime_inputs()[0].name.clone(), shape.to_vec())], true).unwrap();
        let bn_before = g.nodes.iter().filter(|n| n.op.op_type() == "BatchNormalization").count();
        let bn_after = spec.graph.nodes.iter().filter(|n| n.op.op_type() == "BatchNormalization").count();
        assert_eq!(bn_after, 0, "{name}: BatchNorm left unfolded");
        assert_eq!(spec.passes.batchnorms_folded, bn_before, "{name}");
        let convs = spec.graph.nodes.iter().filter(|n| n.op.op_type() == "Conv").count();
        let standalone_relu = spec
            .graph
            .nodes
            .iter()
            .filter(|n| {
                n.op.op_type() == "Relu"
                    && g.producers().get(&n.inputs[0]).is_some_and(|&p| g.nodes[p].op.op_type() == "Conv")
            })
            .count();
        assert!(convs > 0);
        assert_eq!(standalone_relu, 0, "{name}: conv->relu left unfused");
        if *name == "ppocr-textline-cls.onnx" {
            // Shape/Cast/Slice/Concat on the batch size fold to a constant.
            assert!(spec.folded >= 5, "ppocr: only {} nodes folded", spec.folded);
            assert!(!spec.graph.nodes.iter().any(|n| n.op.op_type() == "Shape"));
            // Every x*clip(x+3,0,6)/6 became one HardSwish (18 in this model).
            assert_eq!(spec.passes.hardswish_patterns, 18);
            assert!(!spec.graph.nodes.iter().any(|n| n.op.op_type() == "Div"));
        }
    }
}

/// `x * HardSigmoid(x; 1/6, 1/2)` (how HardSwish is written before opset 14) becomes one HardSwish with the same bits;
/// other HardSigmoid parameters, or a Mul by another tensor, stay as they are.
#[test]
fn hardsigmoid_times_input_becomes_hardswish_only_when_exact() {
    use lowbit_core::{DType, Dim, Node, Op, ValueInfo};
    let vi =
        |n: &str| ValueInfo { name: n.into(), dtype: DType::F32, shape: Some(vec![Dim::Fixed(1), Dim::Fixed(64)]) };
    let build = |alpha: f32, other: bool, first: bool| Graph {
        name: "g".into(),
        inputs: vec![vi("x"), vi("z")],
        outputs: vec![vi("y")],
        initializers: Default::default(),
        nodes: vec![
            Node {
                name: "h".into(),
                op: Op::HardSigmoid { alpha, beta: 0.5 },
                inputs: vec!["x".into()],
                outputs: vec!["s".into()],
            },
            Node {
                name: "m".into(),
                op: Op::Mul,
                inputs: {
                    let v: Vec<String> = vec!["s".into(), if other { "z" } else { "x" }.into()];
                    if first {
                        v
                    } else {
                        v.into_iter().rev().collect()
                    }
                },
                outputs: vec!["y".into()],
            },
        ],
        opset: 13,
        metadata: vec![],
    };
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.3127).collect();
    let z: Vec<f32> = (0..64).map(|i| i as f32 * 0.01).collect();
    // HardSigmoid as the Mul's first input and as its second (the order lowbit's writer uses).
    let cases = [(1.0f32 / 6.0, false, 1), (0.2, false, 0), (1.0 / 6.0, true, 0)];
    for ((alpha, other, fused), first) in cases.iter().flat_map(|&c| [(c, true), (c, false)]) {
        let g = build(alpha, other, first);
        let mut c = g.clone();
        assert_eq!(lowbit_core::passes::fuse_hardswish(&mut c), fused, "alpha {alpha}, other {other}");
        assert_eq!(c.nodes.iter().filter(|n| n.op == Op::HardSwish).count(), fused);
        let out = |g: &Graph| {
            // Only the inputs a node reads are fed ("z" is unread unless `other`).
            let feeds: Vec<Tensor> = g
                .runtime_inputs()
                .iter()
                .map(|i| Tensor::f32(vec![1, 64], if i.name == "x" { x.clone() } else { z.clone() }))
                .collect();
            let shapes: Vec<Vec<usize>> = feeds.iter().map(|t| t.shape.clone()).collect();
            let p = Plan::compile(g, &shapes, &PlanOptions { optimize: false, ..Default::default() }).unwrap();
            p.run(&feeds).unwrap().remove(0).to_f32_vec()
        };
        let (a, b) = (out(&g), out(&c));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{a:?} vs {b:?}");
    }
}

#[test]
fn batchnorm_after_conv_transpose_is_folded_and_outputs_are_kept() {
    // CenterFace's decoder: ConvTranspose -> BatchNormalization, three times.
    let mut g = lowbit_onnx::read_model(&zoo("det-centerface.onnx")).unwrap();
    let name = g.runtime_inputs()[0].name.clone();
    let shape = [1, 3, 64, 96];
    for i in g.inputs.iter_mut().filter(|i| i.name == name) {
        i.shape = Some(shape.iter().map(|&d| lowbit_core::Dim::Fixed(d)).collect());
    }
    let after_deconv = |g: &Graph| {
        let p = g.producers();
        g.nodes
            .iter()
            .filter(|n| n.op.op_type() == "BatchNormalization")
            .filter(|n| p.get(&n.inputs[0]).is_some_and(|&i| g.nodes[i].op.op_type() == "ConvTranspose"))
            .count()
    };
    assert_eq!(after_deconv(&g), 3);
    let spec = lowbit_runtime::specialize(&g, &[(name, shape.to_vec())], true).unwrap();
    assert_eq!(after_deconv(&spec.graph), 0, "BatchNorm after ConvTranspose left unfolded");
    let opts = |optimize| PlanOptions { threads: 1, optimize, ..Default::default() };
    let a = Plan::compile(&g, &[shape.to_vec()], &opts(true)).unwrap().run(&[input(&shape)]).unwrap();
    let b = Plan::compile(&g, &[shape.to_vec()], &opts(false)).unwrap().run(&[input(&shape)]).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let r = max_rel(&x.to_f32_vec(), &y.to_f32_vec());
        assert!(r < 1e-5, "folded and unfolded plans differ by {r}");
    }
}

#[test]
fn batchnorm_after_an_activation_folds_forward_into_the_gemm_that_reads_it() {
    // SFace's head: PRelu -> BatchNormalization -> Dropout -> Flatten -> Gemm (-> BatchNormalization).
    let g = lowbit_onnx::read_model(&zoo("rec-sface-int8bq.onnx")).unwrap();
    let name = g.runtime_inputs()[0].name.clone();
    let shape = [1, 3, 112, 112];
    let bns = |g: &Graph| g.nodes.iter().filter(|n| n.op.op_type() == "BatchNormalization").count();
    assert!(bns(&g) > 0);
    let spec = lowbit_runtime::specialize(&g, &[(name, shape.to_vec())], true).unwrap();
    assert_eq!(bns(&spec.graph), 0, "BatchNorm left unfolded");
    let opts = |optimize| PlanOptions { threads: 1, optimize, ..Default::default() };
    let a = Plan::compile(&g, &[shape.to_vec()], &opts(true)).unwrap().run(&[input(&shape)]).unwrap();
    let b = Plan::compile(&g, &[shape.to_vec()], &opts(false)).unwrap().run(&[input(&shape)]).unwrap();
    let r = max_rel(&a[0].to_f32_vec(), &b[0].to_f32_vec());
    assert!(r < 1e-4, "folded and unfolded plans differ by {r}");

    // Without a Flatten (BatchNorm1d on [N, C]), B not transposed, alpha and beta not 1, and a Relu in front that
    // no Gemm precedes: folded, same outputs. With a second reader of the BatchNorm it stays.
    use lowbit_core::{Act, DType, Dim, Node, Op, ValueInfo};
    let (c, n) = (6usize, 5usize);
    let v = |k: usize, s: f32| -> Vec<f32> { (0..k).map(|i| ((i * 37 % 11) as f32 - 5.0) * s + 0.1).collect() };
    let node = |name: &str, op: Op, i: &[&str], o: &[&str]| Node {
        name: name.into(),
        op,
        inputs: i.iter().map(|s| s.to_string()).collect(),
        outputs: o.iter().map(|s| s.to_string()).collect(),
    };
    let mut h = Graph { name: "bn1d".into(), opset: 13, ..Default::default() };
    h.inputs.push(ValueInfo { name: "x".into(), dtype: DType::F32, shape: Some(vec![Dim::Fixed(3), Dim::Fixed(c)]) });
    h.outputs.push(ValueInfo { name: "y".into(), dtype: DType::F32, shape: None });
    h.initializers.insert("g".into(), Tensor::f32(vec![c], v(c, 0.3).iter().map(|x| x + 1.0).collect()));
    h.initializers.insert("b".into(), Tensor::f32(vec![c], v(c, 0.2)));
    h.initializers.insert("m".into(), Tensor::f32(vec![c], v(c, 0.1)));
    h.initializers.insert("s".into(), Tensor::f32(vec![c], v(c, 0.05).iter().map(|x| x.abs() + 0.5).collect()));
    h.initializers.insert("w".into(), Tensor::f32(vec![c, n], v(c * n, 0.07)));
    h.initializers.insert("c".into(), Tensor::f32(vec![n], v(n, 0.4)));
    h.nodes.push(node("relu", Op::Relu, &["x"], &["r"]));
    h.nodes.push(node("bn", Op::BatchNorm { epsilon: 1e-5 }, &["r", "g", "b", "m", "s"], &["t"]));
    let gemm = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: false, trans_b: false, act: Act::None };
    h.nodes.push(node("fc", gemm, &["t", "w", "c"], &["y"]));
    let x = Tensor::f32(vec![3, c], v(3 * c, 0.9));
    let run_h = |h: &Graph, optimize: bool| {
        Plan::compile(h, &[vec![3, c]], &opts(optimize)).unwrap().run(&[x.clone()]).unwrap().remove(0).to_f32_vec()
    };
    let mut folded = h.clone();
    assert_eq!(lowbit_core::passes::fold_batchnorm_forward(&mut folded), 1);
    assert_eq!(bns(&folded), 0);
    let (a, b) = (run_h(&folded, false), run_h(&h, false));
    assert!(max_rel(&a, &b) < 1e-5, "{a:?} vs {b:?}");
    let mut two = h.clone();
    two.outputs.push(ValueInfo { name: "t".into(), dtype: DType::F32, shape: None });
    assert_eq!(lowbit_core::passes::fold_batchnorm_forward(&mut two), 0);
}
