//! A structure-aware mutation harness: decodes the zoo's models and the reproducers, changes them
//! the way damaged or hostile files differ from good ones (attribute values at the edges of their
//! types, missing or extra node inputs, other operator types, wrong initializer sizes and values,
//! zero/NaN/negative quantization scales, other opsets, missing graph outputs, odd input shapes),
//! and puts every mutant through the reader, shape specialization, plan compilation and one run.
//! Any of them may fail with an error; none may panic. The memory limit is set low so that no mutant
//! can make the harness allocate much.
//!
//! Runs for `LOWBIT_MUTATE_SECS` seconds (default 20) from seed `LOWBIT_MUTATE_SEED` (default 1);
//! `.ci/run` gives it 60 s. A panicking mutant is written to `target/mutate-crashes/` and fails the
//! test with its seed; minimized, it belongs in `tests/repro/`.

use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::common::*;
use lowbit_core::Tensor;
use lowbit_onnx::pb;
use prost::Message;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const EDGE_INTS: &[i64] = &[0, 1, -1, 2, 3, 7, 64, 1000, 8000, 1 << 31, -(1 << 31), i64::MAX, i64::MIN, 1 << 40];
const EDGE_FLOATS: &[f32] = &[0.0, -0.0, -1.0, 1e-30, 1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5];

fn mutate(m: &mut pb::ModelProto, r: &mut Rng) {
    let Some(g) = m.graph.as_mut() else { return };
    match r.below(12) {
        // An attribute's integer(s) at an edge.
        0 | 1 => {
            if let Some(n) = pick_node(g, r) {
                if let Some(a) = n.attribute.iter_mut().nth(r.below(3)) {
                    if a.ints.is_empty() {
                        a.i = Some(*r.pick(EDGE_INTS));
                    } else {
                        let k = r.below(a.ints.len());
                        a.ints[k] = *r.pick(EDGE_INTS);
                        if r.below(4) == 0 {
                            a.ints.pop();
                        }
                    }
                }
            }
        }
        // A node loses, gains or swaps an input.
        2 => {
            if let Some(n) = pick_node(g, r) {
                match r.below(3) {
                    0 => {
                        n.input.pop();
                    }
                    1 => n.input.push(n.input.first().cloned().unwrap_or_default()),
                    _ => n.input.reverse(),
                }
            }
        }
        // Another operator type.
        3 => {
            if let Some(n) = pick_node(g, r) {
                n.op_type = Some(r.pick(CLAIMED_OPS).to_string());
            }
        }
        // An initializer's dims changed (its data no longer fits, or fits another shape).
        4 => {
            if !g.initializer.is_empty() {
                let k = r.below(g.initializer.len());
                let t = &mut g.initializer[k];
                match r.below(3) {
                    0 => t.dims.reverse(),
                    1 => {
                        t.dims.pop();
                    }
                    _ => t.dims.push(*r.pick(&[0, 1, 2, -1])),
                }
            }
        }
        // Initializer values at the edges (scales become 0, NaN, negative; weights Inf).
        5 | 6 => {
            if !g.initializer.is_empty() {
                let k = r.below(g.initializer.len());
                let t = &mut g.initializer[k];
                if let Some(raw) = t.raw_data.as_mut() {
                    if t.data_type == Some(1) && raw.len() >= 4 {
                        let i = r.below(raw.len() / 4) * 4;
                        raw[i..i + 4].copy_from_slice(&r.pick(EDGE_FLOATS).to_le_bytes());
                    } else if !raw.is_empty() {
                        let i = r.below(raw.len());
                        raw[i] = r.next() as u8;
                    }
                } else if !t.float_data.is_empty() {
                    let i = r.below(t.float_data.len());
                    t.float_data[i] = *r.pick(EDGE_FLOATS);
                } else if !t.int64_data.is_empty() {
                    let i = r.below(t.int64_data.len());
                    t.int64_data[i] = *r.pick(EDGE_INTS);
                }
            }
        }
        // Opset and IR version.
        7 => {
            if let Some(o) = m.opset_import.first_mut() {
                o.version = Some(*r.pick(&[1, 6, 9, 10, 11, 13, 17, 21, 28, 99, -1]));
            }
        }
        // Graph outputs removed or renamed.
        8 => {
            let g = m.graph.as_mut().unwrap();
            if r.below(2) == 0 {
                g.output.clear();
            } else if let Some(o) = g.output.first_mut() {
                o.name = Some("nowhere".into());
            }
        }
        // Declared input dims changed.
        9 => {
            let g = m.graph.as_mut().unwrap();
            if let Some(pb::type_proto::Value::TensorType(t)) =
                g.input.first_mut().and_then(|i| i.r#type.as_mut()).and_then(|t| t.value.as_mut())
            {
                if let Some(s) = t.shape.as_mut() {
                    if let Some(d) = s.dim.iter_mut().nth(r.below(4)) {
                        d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                            *r.pick(&[0, 1, 2, 5, 100000, -3]),
                        ));
                    } else {
                        s.dim.pop();
                    }
                }
            }
        }
        // A node removed or duplicated.
        10 => {
            let g = m.graph.as_mut().unwrap();
            if !g.node.is_empty() {
                let k = r.below(g.node.len());
                if r.below(2) == 0 {
                    g.node.remove(k);
                } else {
                    let n = g.node[k].clone();
                    g.node.insert(k, n);
                }
            }
        }
        // A byte flipped in the encoding (done by the caller on the bytes).
        _ => {}
    }
}

fn pick_node<'a>(g: &'a mut pb::GraphProto, r: &mut Rng) -> Option<&'a mut pb::NodeProto> {
    if g.node.is_empty() {
        return None;
    }
    let k = r.below(g.node.len());
    g.node.get_mut(k)
}

/// Everything a command does with a model, short of data: read, specialize, compile, run once.
fn exercise(bytes: &[u8]) {
    let Ok(g) = lowbit_onnx::decode_model(bytes) else { return };
    let _ = lowbit_onnx::decode_model(&lowbit_onnx::encode_model(&g));
    let inputs = declared_inputs(&g);
    let _ = lowbit_runtime::specialize(&g, &inputs, true);
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, s)| s.clone()).collect();
    let Ok(p) = lowbit_runtime::Plan::compile(&g, &shapes, &Default::default()) else { return };
    let xs: Vec<Tensor> =
        shapes.iter().map(|s| Tensor::f32(s.clone(), vec![0.5; s.iter().product::<usize>()])).collect();
    let _ = p.run(&xs);
}

#[test]
fn mutated_models_never_panic() {
    // The limit holds on this thread only: the other tests of this binary run beside it.
    lowbit_core::limits::with_max_memory(256 << 20, mutate_for_a_while);
}

fn mutate_for_a_while() {
    let secs: u64 = std::env::var("LOWBIT_MUTATE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed0: u64 = std::env::var("LOWBIT_MUTATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut seeds: Vec<(String, Vec<u8>)> = vec![];
    for name in [
        "mnist-cnn.onnx",
        "fmnist-resnet.onnx",
        "fmnist-mobilenet.onnx",
        "ppocr-textline-cls.onnx",
        "det-centerface.onnx",
        "rec-sface-int8bq.onnx",
    ] {
        seeds.push((name.into(), std::fs::read(zoo(name)).unwrap()));
    }
    // The ONNX node tests of the operators added for detection/segmentation/embedding networks:
    // small models that carry every attribute those operators have (Resize modes, Pad modes,
    // ConvTranspose output shapes, reduction axes, ...).
    let node_tests = std::path::Path::new("/usr/share/libonnx-testdata/data/node");
    if let Ok(rd) = std::fs::read_dir(node_tests) {
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let Ok(b) = std::fs::read(d.join("model.onnx")) else { continue };
            let Ok(m) = pb::ModelProto::decode(b.as_slice()) else { continue };
            let new = m.graph.as_ref().is_some_and(|g| g.node.iter().any(|n| common::new_ops().contains(&n.op_type())));
            if new {
                seeds.push((d.file_name().unwrap().to_string_lossy().into(), b));
            }
        }
    }
    let repro = root().join("crates/lowbit-cli/tests/repro");
    for e in std::fs::read_dir(&repro).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "onnx") && std::fs::metadata(&p).unwrap().len() < 1_000_000 {
            seeds.push((p.file_name().unwrap().to_string_lossy().into(), std::fs::read(&p).unwrap()));
        }
    }
    let decoded: Vec<(String, pb::ModelProto)> =
        seeds.iter().map(|(n, b)| (n.clone(), pb::ModelProto::decode(b.as_slice()).unwrap())).collect();
    // Panics are caught and reported below (with where they happened), not printed per mutant;
    // other threads' panics (the other tests of this binary) still reach the usual hook.
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let me = std::thread::current().id();
    let usual = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let t = std::thread::current();
        // libtest names each test's thread after the test; the pools' workers are unnamed.
        let other_test = t.id() != me && t.name().is_some_and(|n| n.contains("::"));
        if !other_test {
            if let Ok(mut l) = LAST.lock() {
                *l = info.to_string();
            }
        }
        if t.id() != me {
            usual(info);
        }
    }));
    let crashes = root().join("target/mutate-crashes");
    std::fs::create_dir_all(&crashes).unwrap();
    let last_seed = crashes.join(format!("last-seed-{seed0}"));
    let t0 = Instant::now();
    let (mut runs, mut read_ok) = (0u64, 0u64);
    let mut seed = seed0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (name, base) = &decoded[r.below(decoded.len())];
        let mut m = base.clone();
        for _ in 0..1 + r.below(3) {
            mutate(&mut m, &mut r);
        }
        let mut bytes = m.encode_to_vec();
        if r.below(12) == 0 && !bytes.is_empty() {
            let i = r.below(bytes.len());
            bytes[i] ^= 1 << r.below(8);
        }
        read_ok += lowbit_onnx::decode_model(&bytes).is_ok() as u64;
        // An abort (not a panic) cannot be caught: the seed on disk says which mutant it was.
        let _ = std::fs::write(&last_seed, seed.to_string());
        if catch_unwind(AssertUnwindSafe(|| exercise(&bytes))).is_err() {
            let f = crashes.join(format!("seed-{seed}-{name}"));
            std::fs::write(&f, &bytes).unwrap();
            let _ = std::panic::take_hook();
            let why = LAST.lock().map(|l| l.clone()).unwrap_or_default();
            panic!("a mutant of {name} (seed {seed}) panicked ({why}); written to {}", f.display());
        }
        runs += 1;
        seed += 1;
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "{runs} mutants (seeds {seed0}..{seed}) in {:.0} s, {read_ok} of them read as valid models; no panic",
        t0.elapsed().as_secs_f64()
    );
    assert!(runs > 0);
}
