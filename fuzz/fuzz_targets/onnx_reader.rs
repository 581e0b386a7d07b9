//! Fuzzes the ONNX reader (`lowbit_onnx::decode_model`) with arbitrary bytes.
//!
//! For every input the reader accepts it also checks that
//! 1. `encode_model` followed by `decode_model` succeeds and gives back an equal graph, and
//! 2. `specialize` (shape inference + constant folding + canonicalization) does not panic when
//!    fed the graph's runtime inputs at their declared shapes (symbolic dims set to 1).
//!
//! Every crash it found is kept in `fuzz/regressions/` and replayed by the workspace test
//! `crates/lowbit-cli/tests/it/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::{Dim, Graph};

/// Largest input (in elements) handed to `specialize`; bigger declared shapes are skipped so a
/// model declaring a giant input does not simply OOM the fuzzer.
const MAX_INPUT_ELEMS: usize = 1 << 20;

/// `Debug` text of `x`. f32 `Debug` is exact (shortest round-trip repr) and prints every NaN the
/// same, so comparing it is as strict as `==` except that NaN equals NaN (`Graph: PartialEq` is
/// derived, so one NaN weight or float attribute makes `g == g` false).
fn dbg<T: std::fmt::Debug>(x: &T) -> String {
    format!("{x:?}")
}

/// First difference between two graphs, or `None` if they are equal (NaN == NaN).
fn first_diff(a: &Graph, b: &Graph) -> Option<String> {
    if a == b {
        return None;
    }
    if a.name != b.name {
        return Some(format!("name: {:?} vs {:?}", a.name, b.name));
    }
    if a.opset != b.opset {
        return Some(format!("opset: {} vs {}", a.opset, b.opset));
    }
    if a.metadata != b.metadata {
        return Some(format!("metadata: {:?} vs {:?}", a.metadata, b.metadata));
    }
    if a.inputs != b.inputs {
        return Some(format!("inputs: {:?} vs {:?}", a.inputs, b.inputs));
    }
    if a.outputs != b.outputs {
        return Some(format!("outputs: {:?} vs {:?}", a.outputs, b.outputs));
    }
    let (ka, kb): (Vec<_>, Vec<_>) = (a.initializers.keys().collect(), b.initializers.keys().collect());
    if ka != kb {
        return Some(format!("initializer names: {ka:?} vs {kb:?}"));
    }
    for (k, ta) in &a.initializers {
        let tb = &b.initializers[k];
        if ta != tb && (ta.shape != tb.shape || dbg(ta) != dbg(tb)) {
            let cut = |s: String| s.chars().take(400).collect::<String>();
            return Some(format!("initializer {k:?}: {} vs {}", cut(dbg(ta)), cut(dbg(tb))));
        }
    }
    if a.nodes.len() != b.nodes.len() {
        return Some(format!(
            "node count: {} vs {}\nfirst:  {:#?}\nsecond: {:#?}",
            a.nodes.len(),
            b.nodes.len(),
            a.nodes,
            b.nodes
        ));
    }
    for (i, (na, nb)) in a.nodes.iter().zip(&b.nodes).enumerate() {
        if na != nb && dbg(na) != dbg(nb) {
            return Some(format!("node #{i}:\nfirst:  {na:?}\nsecond: {nb:?}"));
        }
    }
    None
}

fn runtime_shapes(g: &Graph) -> Option<Vec<(String, Vec<usize>)>> {
    let mut out = Vec::new();
    for vi in g.runtime_inputs() {
        let shape: Vec<usize> = match &vi.shape {
            Some(dims) => dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(_) => 1,
                })
                .collect(),
            // No declared shape: `specialize` accepts any shape; feed a scalar.
            None => Vec::new(),
        };
        let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        if n > MAX_INPUT_ELEMS {
            return None;
        }
        out.push((vi.name.clone(), shape));
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(g) = lowbit_onnx::decode_model(data) else {
        return;
    };

    // Round trip: what we write, we must read back unchanged.
    let bytes = lowbit_onnx::encode_model(&g);
    let g2 = match lowbit_onnx::decode_model(&bytes) {
        Ok(g2) => g2,
        Err(e) => panic!("re-decoding an encoded graph failed: {e}"),
    };
    if let Some(d) = first_diff(&g, &g2) {
        panic!("round trip changed the graph: {d}");
    }

    // Shape specialization / constant folding on the declared input shapes.
    if let Some(inputs) = runtime_shapes(&g) {
        let _ = lowbit_runtime::specialize::specialize(&g, &inputs, true);
    }
});
