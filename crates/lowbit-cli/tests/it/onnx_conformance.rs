//! ONNX's own operator conformance tests (Debian's `libonnx-testdata`) for every op lowbit
//! supports, run through the compiled plan. Integer inputs (shapes, axes, indices), Resize's
//! roi and scales and Range's bounds are given as constants, as exporters do; float inputs are fed at run time. A test whose model uses a feature
//! lowbit does not implement (an element type, 3-D pooling, ...) is counted as skipped with its
//! reason; a test that runs must match the expected outputs, and every model read must write and
//! read back as the same graph. Prints passed/failed/skipped per op.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use lowbit_core::{DType, Tensor};
use lowbit_onnx::pb;
use lowbit_runtime::{Plan, PlanOptions};
use prost::Message;

const DATA: &str = "/usr/share/libonnx-testdata/data/node";

use crate::common::CLAIMED_OPS as CLAIMED;

fn load_tensor(p: &Path) -> Tensor {
    let t = pb::TensorProto::decode(std::fs::read(p).unwrap().as_slice()).unwrap();
    lowbit_onnx::tensor_from_proto(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn op_of(g: &lowbit_core::Graph) -> Option<&'static str> {
    g.nodes.first().map(|n| n.op.op_type())
}

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn run_case(dir: &Path) -> Outcome {
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let mut g = match lowbit_onnx::decode_model(&bytes) {
        Ok(g) => g,
        Err(e) => return Outcome::Skip(e.to_string()),
    };
    // What lowbit writes reads back as the same graph (every attribute of every operator).
    match lowbit_onnx::decode_model(&lowbit_onnx::encode_model(&g)) {
        Ok(g2) if g2 == g => {}
        Ok(g2) => return Outcome::Fail(format!("written and read back: {:?} became {:?}", g.nodes, g2.nodes)),
        Err(e) => return Outcome::Fail(format!("written and read back: {e}")),
    }
    let mut sets: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    sets.sort();
    for set in sets {
        let mut inputs = vec![];
        for (i, vi) in g.inputs.clone().iter().enumerate() {
            let p = set.join(format!("input_{i}.pb"));
            if !p.exists() {
                continue;
            }
            let t = match std::panic::catch_unwind(|| load_tensor(&p)) {
                Ok(t) => t,
                Err(_) => return Outcome::Skip(format!("input {i} has an unsupported element type")),
            };
            // Resize's roi/scales and Range's bounds are constants in exported models.
            let constant_float =
                matches!(op_of(&g), Some("Resize" | "Upsample")) && i > 0 || op_of(&g) == Some("Range");
            if t.dtype() == DType::F32 && !constant_float {
                inputs.push((vi.name.clone(), t));
            } else {
                g.initializers.insert(vi.name.clone(), t);
            }
        }
        let rt: Vec<String> = g.runtime_inputs().iter().map(|v| v.name.clone()).collect();
        let feeds: Vec<Tensor> = rt
            .iter()
            .map(|n| inputs.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone()))
            .collect::<Option<_>>()
            .unwrap_or_default();
        if feeds.len() != rt.len() {
            return Outcome::Skip("an input has no data".into());
        }
        let shapes: Vec<Vec<usize>> = feeds.iter().map(|t| t.shape.clone()).collect();
        let plan = match Plan::compile(&g, &shapes, &PlanOptions::default()) {
            Ok(p) => p,
            Err(e) => return Outcome::Skip(e.to_string()),
        };
        let outs = match plan.run(&feeds) {
            Ok(o) => o,
            Err(e) => return Outcome::Skip(e.to_string()),
        };
        for (i, got) in outs.iter().enumerate() {
            let p = set.join(format!("output_{i}.pb"));
            let want = load_tensor(&p);
            if got.shape != want.shape || got.dtype() != want.dtype() {
                return Outcome::Fail(format!(
                    "output {i}: got {} {:?}, want {} {:?}",
                    got.dtype().name(),
                    got.shape,
                    want.dtype().name(),
                    want.shape
                ));
            }
            for j in 0..want.len() {
                let (a, b) = (got.data.get_f64(j), want.data.get_f64(j));
                if !((a - b).abs() <= 1e-5 + 1e-3 * b.abs() || (a.is_nan() && b.is_nan())) {
                    return Outcome::Fail(format!("output {i}[{j}]: got {a}, want {b}"));
                }
            }
        }
    }
    Outcome::Pass
}

/// Why a test of a newly added operator may be skipped: element types lowbit does not hold
/// (float64/16, bfloat16, strings, 4-bit, unsigned 16/32/64), features refused with a message.
const ALLOWED_SKIPS: &[&str] = &[
    "element type",
    "spatial dims is not supported",
    "Resize mode",
    "antialias",
    "keep_aspect_ratio_policy",
    "training",
    "blocked QuantizeLinear",
    // Dropout's second output: always all-true at inference; a step has one output.
    "the mask output of Dropout",
];

#[test]
fn onnx_node_tests() {
    let root = Path::new(DATA);
    assert!(root.is_dir(), "{DATA} is missing: install it with `apt-get install -y libonnx-testdata`");
    let mut dirs: Vec<_> = std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()).collect();
    dirs.sort();
    // op -> (passed, failed, skipped)
    let mut table: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = vec![];
    let mut skips = vec![];
    for d in dirs {
        let Ok(bytes) = std::fs::read(d.join("model.onnx")) else { continue };
        let Ok(m) = pb::ModelProto::decode(bytes.as_slice()) else { continue };
        let ops: Vec<String> =
            m.graph.as_ref().map(|g| g.node.iter().map(|n| n.op_type().to_string()).collect()).unwrap_or_default();
        if ops.is_empty() || !ops.iter().all(|o| CLAIMED.contains(&o.as_str())) {
            continue;
        }
        let op = ops.iter().find(|o| o.as_str() != "Constant").cloned().unwrap_or_else(|| ops[0].clone());
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let e = table.entry(op.clone()).or_default();
        match run_case(&d) {
            Outcome::Pass => e.0 += 1,
            Outcome::Fail(r) => {
                e.1 += 1;
                failures.push(format!("{name}: {r}"));
            }
            Outcome::Skip(r) => {
                e.2 += 1;
                let new = common::new_ops().contains(&op.as_str()) || name.contains("blocked");
                if new && !ALLOWED_SKIPS.iter().any(|a| r.contains(a)) {
                    failures.push(format!("{name}: skipped for a reason not allowed for a new operator: {r}"));
                }
                skips.push(format!("{name}: {r}"));
            }
        }
    }
    println!("{:<20} {:>6} {:>6} {:>7}", "op", "passed", "failed", "skipped");
    let (mut tp, mut tf, mut ts) = (0, 0, 0);
    for (op, (p, f, s)) in &table {
        println!("{op:<20} {p:>6} {f:>6} {s:>7}");
        tp += p;
        tf += f;
        ts += s;
    }
    println!("{:<20} {tp:>6} {tf:>6} {ts:>7}", "total");
    for s in &skips {
        println!("skipped {s}");
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    assert!(tp > 150, "too few conformance tests ran ({tp})");
    assert!(failures.is_empty(), "{} conformance tests failed:\n{}", failures.len(), failures.join("\n"));
}
