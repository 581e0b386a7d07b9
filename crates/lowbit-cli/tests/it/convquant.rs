//! A float convolution whose output only a QuantizeLinear reads (a first layer the quantizer keeps
//! float, as U²-Netp's) runs as one step that quantizes each band of output rows into NHWC bytes.

use lowbit_core::{Act, ConvAttrs, DType, Data, Dim, Graph, Node, Op, Tensor, ValueInfo};
use lowbit_kernels::int8::Isa;
use lowbit_runtime::{Plan, PlanOptions};

/// `x -> Conv (f32, kernel kh x kw) -> QuantizeLinear -> DequantizeLinear -> Conv (int8 1x1) -> Q -> DQ -> y`.
fn graph(c_in: usize, c_mid: usize, kh: usize, kw: usize) -> Graph {
    let vi = |n: &str| ValueInfo {
        name: n.into(),
        dtype: DType::F32,
        shape: Some(vec![Dim::Sym("n".into()), Dim::Fixed(c_in), Dim::Sym("h".into()), Dim::Sym("w".into())]),
    };
    let mut g = Graph { name: "convquant".into(), opset: 13, ..Default::default() };
    g.inputs = vec![vi("x")];
    g.outputs = vec![ValueInfo { name: "y".into(), dtype: DType::F32, shape: None }];
    let mut s = 7u64;
    let mut r = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % 2001) as f32 / 1000.0 - 1.0
    };
    let w: Vec<f32> = (0..c_mid * c_in * kh * kw).map(|_| r() * 0.4).collect();
    let b: Vec<f32> = (0..c_mid).map(|_| r() * 0.1).collect();
    g.initializers.insert("w".into(), Tensor::f32(vec![c_mid, c_in, kh, kw], w));
    g.initializers.insert("b".into(), Tensor::f32(vec![c_mid], b));
    g.initializers.insert("s".into(), Tensor::f32(vec![], vec![0.02]));
    g.initializers.insert("z".into(), Tensor { shape: vec![], data: Data::U8(vec![3]) });
    let wq: Vec<i8> = (0..8 * c_mid).map(|_| (r() * 127.0) as i8).collect();
    g.initializers.insert("wq".into(), Tensor { shape: vec![8, c_mid, 1, 1], data: Data::I8(wq) });
    g.initializers.insert("ws".into(), Tensor::f32(vec![], vec![0.01]));
    g.initializers.insert("ys".into(), Tensor::f32(vec![], vec![0.05]));
    g.initializers.insert("yz".into(), Tensor { shape: vec![], data: Data::U8(vec![128]) });
    let node = |name: &str, op: Op, i: &[&str], o: &str| Node {
        name: name.into(),
        op,
        inputs: i.iter().map(|s| s.to_string()).collect(),
        outputs: vec![o.into()],
    };
    let first = ConvAttrs {
        kernel_shape: vec![kh, kw],
        pads: vec![kh / 2, kw / 2, kh / 2, kw / 2],
        act: Act::Relu,
        ..Default::default()
    };
    g.nodes = vec![
        node("stem", Op::Conv(first), &["x", "w", "b"], "c0"),
        node("q0", Op::QuantizeLinear { axis: 1 }, &["c0", "s", "z"], "q0"),
        node("d0", Op::DequantizeLinear { axis: 1 }, &["q0", "s", "z"], "d0"),
        node("dw", Op::DequantizeLinear { axis: 0 }, &["wq", "ws"], "wd"),
        node("c1", Op::Conv(ConvAttrs::default()), &["d0", "wd"], "c1"),
        node("q1", Op::QuantizeLinear { axis: 1 }, &["c1", "ys", "yz"], "q1"),
        node("d1", Op::DequantizeLinear { axis: 1 }, &["q1", "ys", "yz"], "y"),
    ];
    g
}

/// The fused step where the float convolution runs as shifted rows, the unfused plan's outputs bit for
/// bit (every path, 1 and 2 threads, batches of 1 and 2, planes of several bands, saturating values: the
/// zero point 3 clips every output below -0.06).
#[test]
fn float_conv_and_quantize_fused_equal_the_two_steps() {
    for (batch, c_in, c_mid, kh, kw, h, w) in
        [(1, 3, 64, 3, 3, 70, 181), (2, 3, 64, 3, 3, 70, 181), (2, 3, 24, 3, 5, 33, 160), (1, 5, 40, 5, 5, 17, 129)]
    {
        let g = graph(c_in, c_mid, kh, kw);
        let shape = vec![batch, c_in, h, w];
        let n: usize = shape.iter().product();
        let x = Tensor::f32(shape.clone(), (0..n).map(|i| ((i * 7919) % 1013) as f32 / 300.0 - 1.5).collect());
        let mut fused_somewhere = false;
        for isa in Isa::all_supported() {
            for threads in [1, 2] {
                let opts = |fuse| PlanOptions { threads, fuse, ..Default::default() }.with_isa(isa);
                let (f, u) = (
                    Plan::compile(&g, &[shape.clone()], &opts(true)).unwrap(),
                    Plan::compile(&g, &[shape.clone()], &opts(false)).unwrap(),
                );
                let fused = |p: &Plan| p.steps().iter().filter(|s| s.kernel.ends_with("+ quantize")).count();
                let shifted = u.steps().iter().any(|s| s.name == "stem" && s.kernel.contains("shifted-rows"));
                assert_eq!(fused(&u), 0);
                // With a batch, the arena may give the input and the output the same bytes (then the
                // steps stay apart: image 0's bytes would overwrite image 1's input).
                let want = if batch == 1 { shifted as usize } else { fused(&f).min(shifted as usize) };
                assert_eq!(
                    fused(&f),
                    want,
                    "{} {kh}x{kw}: {:?}",
                    isa.name(),
                    f.steps().iter().map(|s| &s.kernel).collect::<Vec<_>>()
                );
                fused_somewhere |= fused(&f) > 0;
                let (a, b) = (f.run(std::slice::from_ref(&x)).unwrap(), u.run(std::slice::from_ref(&x)).unwrap());
                assert!(
                    a.iter().zip(&b).all(|(p, q)| p.data == q.data),
                    "{} {kh}x{kw} threads {threads}: fused differs",
                    isa.name()
                );
                // Not a constant: the stem's output reaches y.
                let y = a[0].as_f32().unwrap();
                assert!(y.iter().any(|&v| v != y[0]));
            }
        }
        // Every x86-64 CPU with AVX2 runs some path as shifted rows at these widths.
        if batch == 1 && lowbit_kernels::isa::features().avx2 {
            assert!(fused_somewhere, "{kh}x{kw}: never fused");
        }
    }
}
