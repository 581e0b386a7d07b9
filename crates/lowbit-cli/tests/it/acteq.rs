//! Activation equalization into depthwise convolutions: the float function is unchanged, the
//! per-channel integer weights are unchanged, and the narrow activation channels are stretched
//! without any of them reaching a clip they did not reach before.

use crate::common::*;
use lowbit_core::{Graph, Tensor};
use lowbit_quant::acteq::equalize_activations;
use lowbit_quant::calibrate::{calibrate, Stats};
use lowbit_quant::scheme::{quantize_linear_weights, QScheme};
use lowbit_runtime::{Plan, PlanOptions};

const SHAPE: [usize; 3] = [3, 224, 224];

/// Deterministic smooth "images" in about [-2, 2.6] (an LCG-driven sum of gradients and noise).
fn images(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32) / (1u64 << 31) as f32
    };
    let per: usize = SHAPE.iter().product();
    let mut v = Vec::with_capacity(n * per);
    for _ in 0..n {
        let (a, b, c) = (rnd() * 4.0 - 2.0, rnd() * 4.0 - 2.0, rnd() * 2.0 - 1.0);
        for ch in 0..3 {
            for y in 0..SHAPE[1] {
                for x in 0..SHAPE[2] {
                    let g = a * x as f32 / 224.0 + b * y as f32 / 224.0 + c * ch as f32;
                    v.push((g + rnd() - 0.5).clamp(-2.1, 2.6));
                }
            }
        }
    }
    v
}

fn run(g: &Graph, x: &[f32], n: usize) -> Vec<f32> {
    let mut s = vec![n];
    s.extend_from_slice(&SHAPE);
    let plan =
        Plan::compile(g, std::slice::from_ref(&s), &PlanOptions { threads: 2, optimize: false, ..Default::default() })
            .unwrap();
    plan.run(&[Tensor::f32(s, x.to_vec())]).unwrap()[0].to_f32_vec()
}

fn stats(g: &Graph, x: &[f32], n: usize) -> Stats {
    calibrate(g, &SHAPE, x, n, n, 2, false, &mut |_, _| {}).unwrap()
}

#[test]
fn activation_equalization_keeps_function_and_integer_weights() {
    let g = lowbit_onnx::read_model(&zoo("mobilenetv2-imagenet.onnx")).unwrap();
    let (canon, _) = lowbit_runtime::canonicalize_free(&g).unwrap();
    let n = 4;
    let x = images(n);
    let before = stats(&canon, &x, n);
    let mut eq = canon.clone();
    let rep = equalize_activations(&mut eq, &before);
    // MobileNetV2: the stem and every expansion feed a depthwise convolution (17 pairs).
    assert_eq!(rep.pairs, 17, "{rep:?}");
    assert!(rep.channels > 1000, "{rep:?}");

    // The float function is unchanged (up to float rounding).
    let (y0, y1) = (run(&canon, &x, n), run(&eq, &x, n));
    let range = y0.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = y0.iter().zip(&y1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * range, "outputs moved by {err} (range {range})");

    // Per-channel int8 weights are the same integers (ties may round differently in float).
    let s = QScheme::weights(8);
    let (mut total, mut differ, mut changed_nodes) = (0usize, 0usize, 0usize);
    for (n0, n1) in canon.nodes.iter().zip(&eq.nodes) {
        let (Some(w0), Some(w1)) =
            (n0.input(1).and_then(|w| canon.initializers.get(w)), n1.input(1).and_then(|w| eq.initializers.get(w)))
        else {
            continue;
        };
        if w0.rank() != 4 {
            continue;
        }
        let (f0, f1) = (w0.to_f32_vec(), w1.to_f32_vec());
        if f0 != f1 {
            changed_nodes += 1;
        }
        let (q0, _) = quantize_linear_weights(&f0, &w0.shape, &s, false);
        let (q1, _) = quantize_linear_weights(&f1, &w1.shape, &s, false);
        total += q0.len();
        differ += q0.iter().zip(&q1).filter(|(a, b)| a != b).count();
        assert!(q0.iter().zip(&q1).all(|(a, b)| (a - b).abs() <= 1), "{}", n0.name);
    }
    assert!(changed_nodes >= 2 * rep.pairs, "both convolutions of each pair are rescaled ({changed_nodes})");
    assert!(differ * 1000 <= total, "{differ} of {total} integer weights changed");

    // Stretched channels: wider, and never at a ReLU6 bound they did not reach before.
    let after = stats(&eq, &x, n);
    for (node, inv) in &rep.channel_scale {
        let out = &eq.nodes.iter().find(|m| &m.name == node).unwrap().outputs[0];
        let (b, a) = (&before[out].channel_max, &after[out].channel_max);
        for ((mb, ma), inv) in b.iter().zip(a).zip(inv) {
            assert!((ma * inv - mb).abs() <= 1e-4 * mb.abs().max(1.0), "{node}: {mb} -> {ma} (1/s = {inv})");
            if *inv < 1.0 {
                assert!(*ma < 6.0 + 1e-4, "{node}: a stretched channel reaches the clip ({mb} -> {ma})");
            }
        }
        let spread = |m: &[f32]| {
            let live: Vec<f32> = m.iter().copied().filter(|v| *v > 1e-2).collect();
            live.iter().fold(0f32, |x, v| x.max(*v)) / live.iter().fold(f32::INFINITY, |x, v| x.min(*v))
        };
        assert!(spread(a) <= spread(b) + 1e-3, "{node}: channel ranges spread {} -> {}", spread(b), spread(a));
    }
}
