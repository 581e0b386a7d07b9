//! The trainable views agree with lowbit's runtime: the float view of a zoo model with its
//! ONNX file, and the fake-quant view (before training) with the QDQ model it starts from.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use lowbit_data::{ImageSet, Preprocess};
use lowbit_runtime::classify::{argmax, Classifier};
use lowbit_train::qat::{self, QatConfig};
use lowbit_train::{Model, QatMethod};

fn zoo(name: &str) -> lowbit_core::Graph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/zoo").join(name);
    lowbit_onnx::read_model(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn images(n: usize) -> ImageSet {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/fmnist-test-1k-images-idx3-ubyte.gz");
    lowbit_data::load_any(&p, lowbit_data::Split::Test, &Preprocess::fmnist(), Some(n)).unwrap()
}

fn model_logits(m: &mut Model, set: &ImageSet) -> Vec<Vec<f32>> {
    let x: Tensor<4> = Tensor::from_data(TensorData::new(set.data.clone(), [set.n, set.c, set.h, set.w]), &m.device);
    let v = m.forward(x, false).unwrap().into_data().try_to_vec::<f32>().unwrap();
    v.chunks(v.len() / set.n).map(|c| c.to_vec()).collect()
}

fn runtime_logits(g: &lowbit_core::Graph, set: &ImageSet) -> Vec<Vec<f32>> {
    Classifier::new(g.clone(), vec![set.c, set.h, set.w], 1).logits(&set.data, set.n).unwrap()
}

#[test]
fn float_view_matches_the_runtime() {
    let set = images(64);
    for name in ["fmnist-resnet.onnx", "fmnist-mobilenet.onnx", "mnist-cnn.onnx"] {
        let g = zoo(name);
        let mut m = Model::from_graph(&g, &Device::flex().autodiff()).unwrap();
        let a = model_logits(&mut m, &set);
        let b = runtime_logits(&g, &set);
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < 1e-3 * (1.0 + y.abs()), "{name}: {x} vs {y}");
            }
        }
        // Writing back untrained values reproduces the graph's numbers.
        let g2 = m.to_graph();
        assert_eq!(runtime_logits(&g2, &set), b, "{name}");
    }
}

#[test]
fn fake_quant_view_starts_at_the_post_training_model() {
    let set = images(200);
    for (name, bits) in [("fmnist-resnet.onnx", 4u8), ("fmnist-mobilenet.onnx", 4), ("fmnist-resnet.onnx", 8)] {
        for method in [QatMethod::Ste, QatMethod::Lsq, QatMethod::Pact, QatMethod::Dsq] {
            let g = zoo(name);
            let qc = QatConfig { method, weight_bits: bits, act_bits: bits, ..Default::default() };
            let prep = qat::prepare(&g, &set.slice(0, 100), &qc, 1).unwrap();
            let dev = Device::flex().autodiff();
            let mut m = Model::from_graph(&prep.graph, &dev).unwrap();
            let _ = model_logits(&mut m, &set.slice(0, 1));
            let sizes = m.value_sizes.clone();
            qat::attach(&mut m, &prep, &qc, &sizes).unwrap();
            let a = model_logits(&mut m, &set);
            let b = runtime_logits(&prep.ptq.graph, &set);
            let same = a.iter().zip(&b).filter(|(x, y)| argmax(x) == argmax(y)).count();
            // Simulation and deployment differ only in float summation order, which moves a few
            // values across a rounding threshold; at 4 bits one step is coarse.
            let need = if bits == 8 { 98 } else { 90 };
            assert!(same * 100 >= set.n * need, "{name} {method:?} W{bits}A{bits}: {same}/{} same top-1", set.n);
            // The export of the untrained model is the post-training model again.
            let e = qat::export(&m, &prep).unwrap();
            let c = runtime_logits(&e.graph, &set);
            let same = c.iter().zip(&b).filter(|(x, y)| argmax(x) == argmax(y)).count();
            assert_eq!(same, set.n, "{name} {method:?}: the untrained export differs from the PTQ model");
        }
    }
}
