//! Replays every input the ONNX-reader fuzzer ever crashed on (`fuzz/regressions/`): reading must
//! not panic, what is read must survive a write/read round trip unchanged, and shape
//! specialization, plan compilation and one run must fail cleanly or succeed, never panic or
//! exhaust memory. Crashes the mutation harness (tests/mutate.rs) finds are kept here too.

use crate::common::*;

#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = root().join("fuzz/regressions/onnx_reader");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 8, "regression inputs missing from {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let Ok(g) = lowbit_onnx::decode_model(&bytes) else { continue };
        let g2 = lowbit_onnx::decode_model(&lowbit_onnx::encode_model(&g)).unwrap();
        assert_eq!(format!("{g:?}"), format!("{g2:?}"), "{}: round trip changed the graph", f.display());
        let inputs = declared_inputs(&g);
        let _ = lowbit_runtime::specialize(&g, &inputs, true);
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, s)| s.clone()).collect();
        let Ok(p) = lowbit_runtime::Plan::compile(&g, &shapes, &Default::default()) else { continue };
        // And run once (the mutation harness's crashes are here too).
        let xs: Vec<lowbit_core::Tensor> = shapes
            .iter()
            .map(|s| lowbit_core::Tensor::f32(s.clone(), vec![0.5; s.iter().product::<usize>()]))
            .collect();
        let _ = p.run(&xs);
    }
}
