//! Shared helpers for lowbit's integration tests: paths to the shared zoo and data, the Python
//! with ONNX Runtime used for live cross-checks, and running ONNX Runtime on a batch.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(
        p.is_dir(),
        "the shared zoo/data folder {} is missing: lowbit's tests expect it beside the repository",
        p.display()
    );
    p
}

pub fn zoo(name: &str) -> PathBuf {
    let p = shared().join("zoo").join(name);
    assert!(p.is_file(), "model {} is missing", p.display());
    p
}

pub fn fashion_dir() -> PathBuf {
    lowbit_data::fashion_mnist_dir().unwrap_or_else(|e| panic!("{e}"))
}

/// The Python interpreter that has onnxruntime: $LOWBIT_PYTHON, else ./venv/bin/python.
pub fn python() -> PathBuf {
    let p = std::env::var_os("LOWBIT_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join("venv/bin/python"));
    assert!(
        p.is_file(),
        "{} not found: create it with `python3 -m venv venv && venv/bin/pip install onnxruntime numpy onnx` (scripts/test.sh does), or set LOWBIT_PYTHON",
        p.display()
    );
    p
}

/// A fresh folder per call (tests of one binary run in parallel and may use the same tag).
pub fn tmpdir(tag: &str) -> TmpDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("lowbit-test-{tag}-{}-{k}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// A test's scratch directory, removed when the test is done with it (a failing test's too:
/// its assertion message names what to look at). `LOWBIT_KEEP_TEST_DIRS=1` keeps them all.
pub struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("LOWBIT_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `model` in ONNX Runtime on `x` (shape `shape`) and returns (output shape, values).
pub fn ort_run(model: &Path, x: &[f32], shape: &[usize], tag: &str) -> (Vec<usize>, Vec<f32>) {
    ort_run_opt(model, x, shape, tag, true)
}

/// Whether ONNX Runtime's fused u8 x s8 kernels sum exactly on this CPU. Without VNNI or AMX they
/// use `vpmaddubsw`, whose 16-bit pair sums saturate when two adjacent weights near +-127 meet large
/// activations (ONNX Runtime's documentation says so and recommends 7-bit weights there).
pub fn ort_int8_exact() -> bool {
    let f = lowbit_kernels::isa::features();
    f.avx512vnni || f.avxvnni || f.amx_int8
}

/// Runs a QDQ `model` in ONNX Runtime as the reference for lowbit's integer results: optimized (its
/// integer kernels) where they are exact ([`ort_int8_exact`]), otherwise with graph optimizations
/// off (QDQ operators as the standard defines them, in float).
pub fn ort_run_qdq(model: &Path, x: &[f32], shape: &[usize], tag: &str) -> (Vec<usize>, Vec<f32>) {
    let exact = ort_int8_exact();
    if !exact {
        eprintln!("(no VNNI/AMX: ONNX Runtime's u8s8 sums saturate, so it runs {} unoptimized)", model.display());
    }
    ort_run_opt(model, x, shape, tag, exact)
}

/// [`ort_run`], with ONNX Runtime's graph optimizations on or off (off: QDQ runs as float
/// simulation instead of ONNX Runtime's integer kernels).
pub fn ort_run_opt(model: &Path, x: &[f32], shape: &[usize], tag: &str, optimize: bool) -> (Vec<usize>, Vec<f32>) {
    ort_all(model, x, shape, tag, if optimize { "all" } else { "none" }).swap_remove(0)
}

/// Every output of `model` in ONNX Runtime: (shape, values) per output.
pub fn ort_all(model: &Path, x: &[f32], shape: &[usize], tag: &str, opt: &str) -> Vec<(Vec<usize>, Vec<f32>)> {
    let d = tmpdir(tag);
    let (inp, out) = (d.join("in.f32"), d.join("out.f32"));
    std::fs::write(&inp, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let shape_s: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    let o = Command::new(python())
        .arg(root().join("tools/ort_run.py"))
        .args([model.as_os_str(), inp.as_os_str()])
        .arg(shape_s.join(","))
        .arg(&out)
        .args(["1", opt, "all"])
        .output()
        .expect("run python");
    assert!(o.status.success(), "ONNX Runtime failed on {}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let all: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let _ = std::fs::remove_dir_all(&d);
    let mut at = 0;
    v["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s: Vec<usize> = s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let n: usize = s.iter().product();
            at += n;
            (s, all[at - n..at].to_vec())
        })
        .collect()
}

pub fn lowbit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lowbit"))
}

/// ppocr-textline-cls as `lowbit quantize` prepares it (canonical, hard-swish split out of its convolutions),
/// calibrated on the first 16 photos224 crops: `(graph, statistics, images)`.
pub fn calibrated_ppocr() -> (lowbit_core::Graph, lowbit_quant::calibrate::Stats, lowbit_data::ImageSet) {
    let g = lowbit_onnx::read_model(&zoo("ppocr-textline-cls.onnx")).unwrap();
    let photos =
        lowbit_data::load_image_folder(&shared().join("data/photos224"), &lowbit_data::Preprocess::ppocr(), Some(16))
            .unwrap();
    let (mut canon, _) = lowbit_runtime::canonicalize_free(&g).unwrap();
    assert!(lowbit_quant::qdq::split_activations(&mut canon) > 0);
    let stats =
        lowbit_quant::calibrate::calibrate(&canon, &[3, 48, 192], &photos.data, photos.n, 8, 2, true, &mut |_, _| {})
            .unwrap();
    (canon, stats, photos)
}

/// The ONNX op types lowbit claims to support.
pub const CLAIMED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Sigmoid",
    "Sign",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Gemm",
    "MatMul",
    "Flatten",
    "Reshape",
    "Concat",
    "Softmax",
    "Identity",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Slice",
    "Transpose",
    "QuantizeLinear",
    "DequantizeLinear",
    "Constant",
    // Operators of detection, segmentation and embedding networks (issue 19).
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Softplus",
    "Softsign",
    "Mish",
    "Erf",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "LeakyRelu",
    "Elu",
    "Selu",
    "PRelu",
    "Pow",
    "Min",
    "Max",
    "Sum",
    "Mean",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Where",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "ConvTranspose",
    "Resize",
    "Upsample",
    "Pad",
    "ConstantOfShape",
    "Range",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "InstanceNormalization",
    "LpNormalization",
    "Dropout",
];

/// The operators added for detection, segmentation and embedding networks (from "Tanh" on): their
/// conformance tests must pass, skipped only for a reason in `onnx_conformance.rs`'s list.
#[allow(dead_code)]
pub fn new_ops() -> &'static [&'static str] {
    let at = CLAIMED_OPS.iter().position(|o| *o == "Tanh").unwrap_or(CLAIMED_OPS.len());
    &CLAIMED_OPS[at..]
}

/// A graph's runtime inputs at their declared shapes, symbolic dims set to 1.
pub fn declared_inputs(g: &lowbit_core::Graph) -> Vec<(String, Vec<usize>)> {
    g.runtime_inputs()
        .iter()
        .map(|v| {
            let s = v
                .shape
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|d| if let lowbit_core::Dim::Fixed(n) = d { *n } else { 1 })
                .collect();
            (v.name.clone(), s)
        })
        .collect()
}

/// A xorshift64 stream of uniform f32 values in `[0, 1)` (24 bits each), reproducible from `seed`.
pub fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The int8 weight initializers read by DequantizeLinear nodes, with their scales, by node name.
pub fn int8_weights(g: &lowbit_core::Graph) -> Vec<(String, Vec<i8>, Vec<f32>)> {
    g.nodes
        .iter()
        .filter(|n| {
            matches!(n.op, lowbit_core::Op::DequantizeLinear { .. }) && n.name.ends_with("_weight_DequantizeLinear")
        })
        .map(|n| {
            let lowbit_core::Data::I8(q) = &g.initializers[&n.inputs[0]].data else { panic!("{}: not int8", n.name) };
            (n.name.clone(), q.clone(), g.initializers[&n.inputs[1]].to_f32_vec())
        })
        .collect()
}

/// fmnist-resnet as read, its canonical graph, calibration statistics (with histograms) from the
/// first 256 training images, and those images: the set-up of the learned-rounding tests.
pub fn calibrated_fmnist_resnet(
) -> (lowbit_core::Graph, lowbit_core::Graph, lowbit_quant::calibrate::Stats, lowbit_data::ImageSet) {
    use lowbit_data::{Preprocess, Split};
    let g = lowbit_onnx::read_model(&zoo("fmnist-resnet.onnx")).unwrap();
    let calib = lowbit_data::load_idx_dir(&fashion_dir(), Split::Train, &Preprocess::fmnist(), Some(256)).unwrap();
    let (canon, _) = lowbit_runtime::canonicalize_free(&g).unwrap();
    let stats =
        lowbit_quant::calibrate::calibrate(&canon, &[1, 28, 28], &calib.data, calib.n, 64, 2, true, &mut |_, _| {})
            .unwrap();
    (g, canon, stats, calib)
}

/// Top-1 accuracy of `g` (28x28 Fashion-MNIST classifier) on `test`, with its logits.
pub fn fmnist_top1(g: &lowbit_core::Graph, test: &lowbit_data::ImageSet) -> (f64, Vec<Vec<f32>>) {
    use lowbit_runtime::classify::{argmax, Classifier};
    let labels = test.labels.as_ref().unwrap();
    let l = Classifier::new(g.clone(), vec![1, 28, 28], 2).logits(&test.data, test.n).unwrap();
    let correct = (0..test.n).filter(|&i| argmax(&l[i]) as u32 == labels[i]).count();
    (correct as f64 / test.n as f64, l)
}

/// Writes `g` (a Fashion-MNIST QDQ classifier whose logits on `test` lowbit gave as `ours`), runs it
/// in ONNX Runtime, and asserts the two give the same top-1 on at least 99.5% of the images.
pub fn assert_ort_agrees_fmnist(g: &lowbit_core::Graph, test: &lowbit_data::ImageSet, ours: &[Vec<f32>], tag: &str) {
    use lowbit_runtime::classify::argmax;
    let n = test.n;
    let d = tmpdir(tag);
    let path = d.join("q.onnx");
    lowbit_onnx::write_model(g, &path).unwrap();
    let (shape, ort) = ort_run_qdq(&path, &test.data, &[n, 1, 28, 28], tag);
    assert_eq!(shape, vec![n, 10]);
    let agree = (0..n).filter(|&i| argmax(&ours[i]) == argmax(&ort[i * 10..(i + 1) * 10])).count();
    assert!(agree as f64 >= 0.995 * n as f64, "ORT agrees on {agree}/{n}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `lowbit quantize fmnist-resnet --rounding R` with each of `cases` (extra flags, text the error
/// must hold) fails cleanly: non-zero exit, the text, no panic, no output file.
pub fn assert_rounding_refuses(tag: &str, cases: &[(&str, &[&str], &str)]) {
    let d = tmpdir(tag);
    let out = d.join("q.onnx");
    let model = zoo("fmnist-resnet.onnx");
    for &(rounding, extra, needle) in cases {
        let r = std::process::Command::new(lowbit_bin())
            .args(["quantize", model.to_str().unwrap(), "--calib", fashion_dir().to_str().unwrap()])
            .args(["--calib-n", "16", "--rounding", rounding, "-o", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{rounding} {extra:?} should fail");
        assert!(err.contains(needle), "{rounding} {extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&d).unwrap();
}
