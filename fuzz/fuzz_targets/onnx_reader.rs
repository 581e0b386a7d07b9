//! Fuzzes the ONNX reader (`lowbit_onnx::decode_model`) with arbitrary bytes.
//!
//! For every input the reader accepts it also checks that
//! 1. `encode_model` followed by `decode_model` succeeds and gives back an equal graph, and
//! 2. `specialize` (shape inference + constant folding + canonicalization) does not panic when
//!    fed the graph's runtime inputs at their declared shapes (symbolic dims set to 1).
//!
//! Known, already-reported round-trip differences are normalized away before comparing (see
//! `normalize`) so that a long run can look for new bugs. Set `LOWBIT_FUZZ_STRICT=1` to disable
//! that and compare exactly (e.g. to reproduce the files in `fuzz/regressions/`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lowbit_core::{Dim, Graph};

/// Largest input (in elements) handed to `specialize`; bigger declared shapes are skipped so a
/// model declaring a giant input does not simply OOM the fuzzer.
const MAX_INPUT_ELEMS: usize = 1 << 20;

fn strict() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var_os("LOWBIT_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

/// Removes differences the writer introduces on purpose or that are already reported:
/// - trailing empty (absent optional) node inputs: `write.rs` strips them (`strip_empty_tail`),
///   the reader keeps them (regressions/onnx_reader/roundtrip-trailing-empty-inputs.onnx);
/// - an empty graph name: the writer substitutes "lowbit"
///   (regressions/onnx_reader/roundtrip-empty-graph-name.onnx).
fn normalize(g: &mut Graph) {
    if g.name.is_empty() {
        g.name = "lowbit".into();
    }
    for n in &mut g.nodes {
        while n.inputs.last().is_some_and(|s| s.is_empty()) {
            n.inputs.pop();
        }
    }
}

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
    let diff = if strict() {
        first_diff(&g, &g2)
    } else {
        let (mut a, mut b) = (g.clone(), g2);
        normalize(&mut a);
        normalize(&mut b);
        first_diff(&a, &b)
    };
    if let Some(d) = diff {
        panic!("round trip changed the graph: {d}");
    }

    // Shape specialization / constant folding on the declared input shapes.
    if let Some(inputs) = runtime_shapes(&g) {
        let _ = lowbit_runtime::specialize::specialize(&g, &inputs, true);
    }
});
