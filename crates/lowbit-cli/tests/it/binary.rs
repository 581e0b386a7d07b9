//! Binary networks end to end: the Bi-Real rewrite of a ResNet, its QDQ export (±1 weights,
//! `Sign(Sign(x) + 0.5)` inputs), lowbit's binary plan against the fake-quant executor (every
//! int8 value and the outputs equal, on every binary and integer path this CPU has), and ONNX
//! Runtime running the same file.

use std::collections::{HashMap, HashSet};

use crate::common::*;
use lowbit_core::{Graph, Op, Tensor, ValueInfo};
use lowbit_data::{Preprocess, Split};
use lowbit_kernels::binary::BinIsa;
use lowbit_kernels::int8::Isa;
use lowbit_runtime::classify::argmax;
use lowbit_runtime::{fakequant, Plan, PlanOptions};

fn binarized(model: &str, calib_n: usize) -> (Graph, usize) {
    let g = lowbit_onnx::read_model(&zoo(&format!("{model}.onnx"))).unwrap();
    let calib = lowbit_data::load_idx_dir(&fashion_dir(), Split::Train, &Preprocess::fmnist(), Some(calib_n)).unwrap();
    let br = lowbit_train::binary::bireal(&g).unwrap();
    let n = br.binary_convs.len();
    let q = lowbit_train::binary::export_graph(&br.graph, br.binary_convs.into_iter().collect(), &calib, 2).unwrap();
    // Through the ONNX writer and reader, as a user would run the file.
    let d = tmpdir(&format!("binary-{model}"));
    let path = d.join("b.onnx");
    lowbit_onnx::write_model(&q.graph, &path).unwrap();
    let g = lowbit_onnx::read_model(&path).unwrap();
    (g, n)
}

#[test]
fn bireal_rewrites_every_block() {
    let g = lowbit_onnx::read_model(&zoo("fmnist-resnet.onnx")).unwrap();
    let br = lowbit_train::binary::bireal(&g).unwrap();
    // 9 blocks, two binary convolutions each; the stem and the shortcut projections stay real.
    assert_eq!(br.binary_convs.len(), 18);
    assert!(!br.binary_convs.iter().any(|c| c.contains("shortcut") || c == "/conv1/Conv"));
    assert!(!br.graph.nodes.iter().any(|n| n.op == Op::Relu), "every ReLU becomes hardtanh");
    let adds = br.graph.nodes.iter().filter(|n| n.op == Op::Add).count();
    assert_eq!(adds, 18, "one real-valued shortcut per binary convolution");
    // The rewritten graph still runs (float).
    let p = Plan::compile(&br.graph, &[vec![1, 1, 28, 28]], &PlanOptions::default()).unwrap();
    let out = p.run(&[Tensor::f32(vec![1, 1, 28, 28], vec![0.1; 784])]).unwrap();
    assert_eq!(out[0].shape, vec![1, 10]);
    // The unclipped variant: no hardtanh on the real-valued path, still 18 binary convolutions.
    let nc = lowbit_train::binary::bireal_with(&g, false).unwrap();
    assert_eq!(nc.binary_convs.len(), 18);
    assert!(!nc.graph.nodes.iter().any(|n| matches!(n.op, Op::Relu | Op::Clip { .. })));
    // No residual block: a clear error.
    let cnn = lowbit_onnx::read_model(&zoo("mnist-cnn.onnx")).unwrap();
    let e = lowbit_train::binary::bireal(&cnn).err().expect("mnist-cnn has no residual blocks").to_string();
    assert!(e.contains("no residual block"), "{e}");
}

/// The graph with every activation QuantizeLinear output (not the binarization's own int8 ±1)
/// also made a graph output.
fn expose_int8(g: &Graph) -> Graph {
    let mut g = g.clone();
    let have: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    for n in &g.nodes.clone() {
        if matches!(n.op, Op::QuantizeLinear { .. })
            && !n.name.ends_with("_binarize_QuantizeLinear")
            && !have.contains(&n.outputs[0])
        {
            g.outputs.push(ValueInfo { name: n.outputs[0].clone(), dtype: lowbit_core::DType::U8, shape: None });
        }
    }
    g
}

#[test]
fn binary_plan_equals_fake_quant_on_every_path() {
    let (g, nbin) = binarized("fmnist-resnet", 64);
    let g = expose_int8(&g);
    let set = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(12)).unwrap();
    let names: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let want: Vec<HashMap<String, Tensor>> = (0..set.n)
        .map(|i| fakequant::run(&g, &[Tensor::f32(vec![1, 1, 28, 28], set.image(i).to_vec())]).unwrap())
        .collect();
    for bisa in BinIsa::all_supported() {
        for isa in [Isa::Scalar, Isa::best()] {
            let opts = PlanOptions { threads: 2, ..Default::default() }.with_isa(isa).with_bin_isa(bisa);
            let p = Plan::compile(&g, &[vec![1, 1, 28, 28]], &opts).unwrap();
            let binary_steps = p.steps().iter().filter(|s| s.kernel.starts_with("binary")).count();
            assert_eq!(binary_steps, nbin, "{}: every binary convolution runs on the binary kernel", bisa.name());
            assert!(p.int8_notes().is_empty(), "f32 fallbacks: {:?}", p.int8_notes());
            let mut values = 0;
            for (i, w) in want.iter().enumerate() {
                let got = p.run(&[Tensor::f32(vec![1, 1, 28, 28], set.image(i).to_vec())]).unwrap();
                for (name, t) in names.iter().zip(&got) {
                    assert!(t.data == w[name].data, "{} / {}: image {i} value {name} differs", bisa.name(), isa.name());
                    values += t.len();
                }
                assert_eq!(argmax(&got[0].to_f32_vec()), argmax(&w[&names[0]].to_f32_vec()));
            }
            eprintln!(
                "[{} / {}] {} images, {values} values equal the fake-quant executor",
                bisa.name(),
                isa.name(),
                set.n
            );
        }
    }
}

#[test]
fn onnx_runtime_runs_the_binary_export() {
    let (g, _) = binarized("fmnist-resnet", 64);
    let d = tmpdir("binary-ort");
    let path = d.join("b.onnx");
    lowbit_onnx::write_model(&g, &path).unwrap();
    // On disk the binary weights take one bit each (packed uint8, unpacked by standard ops).
    let (disk, float_disk) =
        (std::fs::metadata(&path).unwrap().len(), std::fs::metadata(zoo("fmnist-resnet.onnx")).unwrap().len());
    let binary_weights: usize =
        g.initializers.iter().filter(|(k, _)| k.ends_with("_bits")).map(|(_, t)| t.len() * 8).sum();
    eprintln!("file {disk} bytes (float {float_disk}); {binary_weights} binary weights stored as bits");
    assert!(binary_weights >= 260_000, "binary weights not stored packed: {binary_weights}");
    // (The rest of this small file is mostly node names and the 8-bit layers.)
    assert!(disk * 6 < float_disk, "binary file {disk} bytes vs float {float_disk}");
    let n = 300;
    let set = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
    let shape = vec![set.n, 1, 28, 28];
    let agree = |a: &[f32], b: &[f32]| {
        (0..set.n).filter(|&i| argmax(&a[i * 10..(i + 1) * 10]) == argmax(&b[i * 10..(i + 1) * 10])).count()
    };
    // ONNX Runtime's fused u8 x s8 kernels on AVX2 without VNNI add pairs of products in 16 bits
    // (vpmaddubsw) and saturate when a weight pair nears +-127 (its documentation says so and
    // recommends 7-bit weights there). So the file as exported is compared with optimized ONNX
    // Runtime only where VNNI or AMX computes in 32 bits; on every CPU the same network with its
    // 8-bit weights halved (no pair can saturate) is compared too, which checks the rounding.
    let exact_u8s8 = ort_int8_exact();
    let mut g7 = g.clone();
    for t in g7.initializers.values_mut() {
        if let lowbit_core::Data::I8(v) = &mut t.data {
            v.iter_mut().for_each(|w| *w /= 2);
        }
    }
    let p7 = d.join("b7.onnx");
    lowbit_onnx::write_model(&g7, &p7).unwrap();
    for (tag, graph, file, vs_optimized) in [("8-bit", &g, &path, exact_u8s8), ("7-bit", &g7, &p7, true)] {
        let (oshape, ort) = ort_run(file, &set.data, &shape, "binary-ort-run");
        let (_, ort_sim) = ort_run_opt(file, &set.data, &shape, "binary-ort-run-noopt", false);
        assert_eq!(oshape, vec![set.n, 10]);
        let p = Plan::compile(graph, &[shape.clone()], &PlanOptions { threads: 2, ..Default::default() }).unwrap();
        let ours = p.run(&[Tensor::f32(shape.clone(), set.data.clone())]).unwrap()[0].to_f32_vec();
        let (vs_ort, vs_sim, ort_self) = (agree(&ours, &ort), agree(&ours, &ort_sim), agree(&ort, &ort_sim));
        eprintln!(
            "{tag} weights, same top-1 on {} images: lowbit vs ONNX Runtime {vs_ort}, lowbit vs ONNX Runtime unoptimized {vs_sim}, ONNX Runtime optimized vs unoptimized {ort_self}{}",
            set.n,
            if vs_optimized { "" } else { " (no VNNI: ONNX Runtime's u8s8 sums saturate, not compared)" }
        );
        // The bias is int32 at the accumulator scale, so ONNX Runtime's QLinearConv, its float
        // simulation and lowbit's binary kernel compute the same integers; an untrained binary network
        // is chaotic (one rounding step flips top-1), so this also checks the rounding is the same.
        assert!(vs_sim * 100 >= set.n * 99, "{tag}: lowbit vs ONNX Runtime unoptimized: only {vs_sim}/{}", set.n);
        if vs_optimized {
            assert!(vs_ort * 100 >= set.n * 99, "{tag}: lowbit vs ONNX Runtime: only {vs_ort}/{}", set.n);
            assert!(ort_self * 100 >= set.n * 99, "{tag}: ONNX Runtime disagrees with itself: {ort_self}/{}", set.n);
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}
