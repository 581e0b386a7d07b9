//! Block reconstruction (BRECQ, QDrop): the blocks follow the residual structure, learned
//! rounding starts at the float weights and only ever rounds each weight up or down, and a 4-bit
//! model reconstructed either way beats rounding to nearest on unseen images, as a standard QDQ
//! file that ONNX Runtime runs with lowbit's answers.

use std::collections::{HashMap, HashSet};

use crate::common::*;
use lowbit_data::{Preprocess, Split};
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig};
use lowbit_train::recon::{blocks, reconstruct, ReconOptions, SoftRound, GAMMA, ZETA};

fn compute_layers(g: &lowbit_core::Graph) -> HashSet<String> {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, lowbit_core::Op::Conv(_) | lowbit_core::Op::Gemm { .. }))
        .map(|n| n.name.clone())
        .collect()
}

#[test]
fn blocks_follow_the_residual_structure() {
    for (file, residual, min_blocks) in [("fmnist-resnet.onnx", 9, 11), ("mobilenetv2-imagenet.onnx", 10, 17)] {
        let g = lowbit_onnx::read_model(&zoo(file)).unwrap();
        let (canon, _) = lowbit_runtime::canonicalize_free(&g).unwrap();
        let layers = compute_layers(&canon);
        let bs = blocks(&canon, &layers);
        assert!(bs.len() >= min_blocks, "{file}: {} blocks", bs.len());
        // The blocks tile the graph in order, each reading the value the previous one leaves.
        assert_eq!(bs[0].steps.start, 0);
        assert_eq!(bs[0].input, canon.runtime_inputs()[0].name);
        assert_eq!(bs.last().unwrap().steps.end, canon.nodes.len());
        assert_eq!(bs.last().unwrap().output, canon.outputs[0].name);
        for w in bs.windows(2) {
            assert_eq!(w[0].steps.end, w[1].steps.start, "{file}");
            assert_eq!(w[0].output, w[1].input, "{file}");
        }
        // Every compute layer in exactly one block, at most three per block unless a residual
        // block (an Add inside) holds more.
        let mut seen: Vec<&String> = bs.iter().flat_map(|b| &b.layers).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), layers.len(), "{file}");
        assert_eq!(bs.iter().map(|b| b.layers.len()).sum::<usize>(), layers.len(), "{file}");
        let adds = |b: &lowbit_train::recon::Block| {
            canon.nodes[b.steps.clone()].iter().filter(|n| matches!(n.op, lowbit_core::Op::Add)).count()
        };
        assert_eq!(bs.iter().filter(|b| adds(b) > 0).count(), residual, "{file}: blocks holding a residual Add");
        for b in &bs {
            assert!(b.layers.len() <= 3 || adds(b) > 0, "{file}: {b:?}");
            // A residual Add's both operands are computed inside its block (or are its input).
            for n in &canon.nodes[b.steps.clone()] {
                if matches!(n.op, lowbit_core::Op::Add) {
                    for x in &n.inputs {
                        let inside = canon.nodes[b.steps.clone()].iter().any(|m| m.outputs.contains(x));
                        assert!(inside || *x == b.input, "{file}: {} reads {x} from outside its block", n.name);
                    }
                }
            }
        }
    }
}

#[test]
fn soft_rounding_starts_at_the_float_weights_and_nearest() {
    let mut rng = lowbit_train::Rng::new(3);
    let w: Vec<f32> = (0..4096).map(|_| rng.normal() * 0.3).collect();
    let scale = vec![0.05f32; w.len()];
    let (r, v0) = SoftRound::new(&w, scale.clone(), -8.0, 7.0);
    let h = |v: f32| (1.0 / (1.0 + (-v).exp()) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0);
    let near = r.ints(&v0, true);
    let up = r.ints(&v0, false);
    for i in 0..w.len() {
        let x = w[i] / scale[i];
        let soft = (r.base[i] + h(v0[i])).clamp(-8.0, 7.0);
        assert!((soft - x.clamp(-8.0, 7.0)).abs() < 2e-3, "{i}: soft {soft} for {x}");
        assert_eq!(near[i], x.round().clamp(-8.0, 7.0), "{i}: {x}");
        // At the start, V >= 0 is exactly rounding to nearest (h(V) = 1/2 at V = 0).
        assert_eq!(up[i], near[i], "{i}: {x}");
    }
}

fn int8_and_scales(g: &lowbit_core::Graph) -> HashMap<String, (Vec<i8>, Vec<f32>)> {
    int8_weights(g).into_iter().map(|(n, q, s)| (n, (q, s))).collect()
}

#[test]
fn brecq_and_qdrop_w4a4_beat_nearest_and_run_in_ort() {
    let (g, canon, stats, calib) = calibrated_fmnist_resnet();
    let cfg = QdqConfig {
        weight_bits: 4,
        act_bits: 4,
        method: Method::Mse,
        weight_mse: true,
        bias_correction: true,
        ..Default::default()
    };
    let near = build_qdq(&canon, &stats, &cfg).unwrap();
    let n = 2000;
    let test = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
    let acc = |gr: &lowbit_core::Graph| fmnist_top1(gr, &test);
    let (fa, na) = (acc(&g).0, acc(&near.graph).0);
    let floats: HashMap<String, Vec<f32>> = canon
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), canon.initializers.get(n.input(1)?)?.to_f32_vec())))
        .collect();
    let wn = int8_and_scales(&near.graph);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for o in [ReconOptions::brecq(), ReconOptions::qdrop()] {
        let o = ReconOptions { iters: 300, images: 256, ..o };
        let mut done = 0;
        let (q, reports, _) = pool
            .install(|| {
                reconstruct(&canon, &stats, &cfg, &near, &[1, 28, 28], &calib.data, calib.n, &o, &mut |d, _| done = d)
            })
            .unwrap();
        assert!(done >= 11, "blocks reported: {done}");
        assert_eq!(reports.iter().map(|r| r.layers.len()).sum::<usize>(), near.layers.len(), "every layer learned");
        let (e0, e1): (f64, f64) =
            reports.iter().fold((0.0, 0.0), |(a, b), r| (a + r.rel_err_nearest, b + r.rel_err_learned));
        assert!(e1 < 0.95 * e0, "{:?}: block errors {e0} -> {e1}", o.drop);
        // Same scales; each weight its nearest integer or the neighbour on the other side.
        let wq = int8_and_scales(&q.graph);
        let mut flipped = 0usize;
        for (name, (qn, sn)) in &wn {
            let (qq, sq) = &wq[name];
            assert_eq!(sn, sq, "{name}: scales kept");
            let w = &floats[name.trim_end_matches("_weight_DequantizeLinear")];
            let per = w.len() / sn.len();
            for (i, (&a, &b)) in qn.iter().zip(qq).enumerate() {
                let x = w[i] / sn[i / per];
                assert!(
                    b as f32 == x.floor().clamp(-8.0, 7.0) || b as f32 == x.ceil().clamp(-8.0, 7.0),
                    "{name}[{i}]: {b} for {x}"
                );
                flipped += (a != b) as usize;
            }
        }
        assert!(flipped > 0);
        let (qa, ours) = acc(&q.graph);
        eprintln!("W4A4 top-1 on {n} test images ({:?}): float {fa:.4}, nearest {na:.4}, learned {qa:.4}", o.drop);
        assert!(qa >= na + 0.003, "{:?}: {qa} vs nearest {na}", o.drop);
        assert!(fa - qa <= 0.015, "{:?}: {qa} vs float {fa}", o.drop);
        assert_ort_agrees_fmnist(&q.graph, &test, &ours, "recon-w4a4");
    }
}

#[test]
fn reconstruction_refuses_what_it_cannot_do() {
    assert_rounding_refuses(
        "recon-cli",
        &[
            ("brecq", &["--scheme", "kmeans"], "linear weights"),
            ("qdrop", &["--max-drop", "1"], "does not combine"),
            ("brecq", &["--recon-iters", "0"], "at least 1"),
        ],
    );
}
