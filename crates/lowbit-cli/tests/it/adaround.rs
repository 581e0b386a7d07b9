//! AdaRound end to end: learned rounding on a 4-bit model beats rounding to nearest on unseen
//! images, only ever rounds each weight up or down, keeps the scales, and the file stays standard
//! QDQ that ONNX Runtime runs with the same answers as lowbit.

use crate::common::*;
use lowbit_data::{Preprocess, Split};
use lowbit_quant::adaround::{adaround, learn::LearnSettings, AdaRoundOptions};
use lowbit_quant::observer::Method;
use lowbit_quant::qdq::{build_qdq, QdqConfig};

#[test]
fn adaround_w4a4_beats_nearest_and_runs_in_ort() {
    let (g, canon, stats, calib) = calibrated_fmnist_resnet();
    let cfg = QdqConfig {
        weight_bits: 4,
        act_bits: 4,
        method: Method::Mse,
        weight_mse: true,
        bias_correction: false,
        ..Default::default()
    };
    let near = build_qdq(&canon, &stats, &cfg).unwrap();
    let o = AdaRoundOptions {
        learn: LearnSettings { iters: 300, ..Default::default() },
        images: 128,
        threads: 2,
        ..Default::default()
    };
    let mut waves = 0;
    let (learned, layers, _) =
        adaround(&canon, &stats, &cfg, &[1, 28, 28], &calib.data, calib.n, &o, &mut |_, d, _| waves = d).unwrap();
    let ada = build_qdq(&canon, &stats, &learned).unwrap();
    assert!(waves > 1, "layers are learned in sequence");
    assert_eq!(layers.len(), near.layers.len(), "every quantized layer is re-rounded");
    for l in &layers {
        assert!(l.rel_err_learned <= l.rel_err_nearest * 1.0001 + 1e-9, "{}: {l:?}", l.node);
    }
    // Same scales; each weight is the nearest integer or its neighbour (rounded the other way).
    let floats: std::collections::HashMap<String, Vec<f32>> = canon
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), canon.initializers.get(n.input(1)?)?.to_f32_vec())))
        .collect();
    let (wn, wa) = (int8_weights(&near.graph), int8_weights(&ada.graph));
    assert_eq!(wn.len(), wa.len());
    let mut flipped = 0usize;
    for ((name, qn, sn), (name2, qa, sa)) in wn.iter().zip(&wa) {
        assert_eq!(name, name2);
        assert_eq!(sn, sa, "{name}: scales kept");
        let w = &floats[name.trim_end_matches("_weight_DequantizeLinear")];
        let per = w.len() / sn.len();
        for (i, (&a, &b)) in qn.iter().zip(qa).enumerate() {
            let x = w[i] / sn[i / per];
            assert!((b as f32 - x).abs() < 1.0 + 1e-4 || b == 7 || b == -8, "{name}[{i}]: {b} for {x}");
            assert!((a as i32 - b as i32).abs() <= 1);
            flipped += (a != b) as usize;
        }
    }
    assert!(flipped > 0);
    // Unseen images: better than nearest by a margin, and ORT runs the file with lowbit's answers.
    let n = 2000;
    let test = lowbit_data::load_idx_dir(&fashion_dir(), Split::Test, &Preprocess::fmnist(), Some(n)).unwrap();
    let acc = |gr: &lowbit_core::Graph| fmnist_top1(gr, &test);
    let ((fa, _), (na, _), (aa, ours)) = (acc(&g), acc(&near.graph), acc(&ada.graph));
    eprintln!("W4A4 top-1 on {n} test images: float {fa:.4}, nearest {na:.4}, adaround {aa:.4}");
    assert!(aa >= na + 0.005, "adaround {aa} vs nearest {na}");
    assert!(fa - aa <= 0.015, "adaround {aa} vs float {fa}");
    assert_ort_agrees_fmnist(&ada.graph, &test, &ours, "adaround-w4a4");
}

#[test]
fn adaround_refuses_what_it_cannot_do() {
    assert_rounding_refuses(
        "adaround-cli",
        &[
            ("adaround", &["--scheme", "kmeans"], "linear weights"),
            ("adaround", &["--max-drop", "1"], "does not combine"),
            ("adaround", &["--adaround-iters", "0"], "at least 1"),
        ],
    );
}
