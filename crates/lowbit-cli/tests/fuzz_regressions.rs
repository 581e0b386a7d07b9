//! Replays every input the ONNX-reader fuzzer ever crashed on (`fuzz/regressions/`): reading must
//! not panic, what is read must survive a write/read round trip unchanged, and shape
//! specialization and plan compilation must fail cleanly or succeed, never panic or exhaust memory.

mod common;

use common::*;

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
        let _ = lowbit_runtime::Plan::compile(&g, &shapes, &Default::default());
    }
}
