//! Embedding models on the open-set protocol (issue 23), end to end on the repository's
//! Fashion-MNIST slices plus `mnist10k`: float training with a margin head exports an embedding
//! model whose report is what lowbit's runtime computes from the file; QAT with RCM starts from it
//! and reports the class / individual error decomposition that `lowbit eval` reproduces; bad
//! requests fail with clear messages.

use std::process::Command;

use crate::common::*;
use lowbit_data::openset::{self, DEFAULT_UNSEEN};
use lowbit_data::{Preprocess, Split};
use lowbit_runtime::classify::Classifier;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(lowbit_bin()).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// `lowbit train MODEL --data DATA --task embed ARGS...`.
fn train_embed(model: &std::path::Path, data: &str, args: &[&str]) -> (bool, String, String) {
    let mut v = vec!["train", model.to_str().unwrap(), "--data", data, "--task", "embed"];
    v.extend_from_slice(args);
    run(&v)
}

fn report(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tol
}

#[test]
fn embedding_training_qat_with_rcm_and_open_set_evaluation() {
    let d = tmpdir("embed");
    let assets = root().join("assets");
    let mnist = shared().join("data/mnist10k");
    let (a, m) = (assets.to_str().unwrap(), mnist.to_str().unwrap());
    let float = d.join("emb.onnx");
    let fj = d.join("emb.json");
    let resnet = zoo("fmnist-resnet.onnx");
    let (ok, stdout, stderr) = train_embed(
        &resnet,
        a,
        &[
            "--extra-data",
            m,
            "--preset",
            "fmnist",
            "--loss",
            "cosface",
            "--embed-dim",
            "32",
            "--reinit",
            "--epochs",
            "2",
            "--limit",
            "640",
            "--batch",
            "64",
            "--test-limit",
            "300",
            "-o",
            float.to_str().unwrap(),
            "--json",
            fj.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("TAR @ FAR") && stdout.contains("rank-1"), "{stdout}");
    let r = report(&fj);
    let h = r["history"].as_array().unwrap();
    assert!(h[1]["loss"].as_f64().unwrap() < h[0]["loss"].as_f64().unwrap(), "training lowers the loss: {h:?}");
    assert_eq!(r["train_identities"].as_array().unwrap().len(), 12);
    // The exported file is a 32-wide embedder, and the report is what it computes on the
    // unseen identities.
    let g = lowbit_onnx::read_model(&float).unwrap();
    let pre = Preprocess::fmnist();
    let sets: Vec<_> = [&assets, &mnist]
        .iter()
        .map(|p| {
            (
                lowbit_data::load_any(p, Split::Train, &pre, None).unwrap(),
                lowbit_data::load_any(p, Split::Test, &pre, None).unwrap(),
            )
        })
        .collect();
    let o = openset::open_set(&sets.iter().map(|(x, y)| (x, y)).collect::<Vec<_>>(), &DEFAULT_UNSEEN).unwrap();
    let mut c = Classifier::new(g, vec![1, 28, 28], 2);
    let mut emb = vec![];
    for (_, n, x) in o.eval.batches(250) {
        emb.extend(c.logits(x, n).unwrap()); // batches as the command runs them
    }
    assert_eq!(emb[0].len(), 32);
    let ids = o.eval.labels.clone().unwrap();
    let s = lowbit_runtime::embedding::open_set(&emb, &ids, &[1e-2]);
    let rep = &r["open_set"]["model"];
    assert!((rep["rank1"].as_f64().unwrap() - s.rank1).abs() < 1e-9, "{rep} vs {s:?}");
    assert!((rep["tar"][0]["tar"].as_f64().unwrap() - s.tar[0].tar).abs() < 1e-9, "{rep} vs {s:?}");
    assert!(s.rank1 > 0.5, "a trained embedding retrieves unseen identities: {s:?}");

    // QAT W4A4 with RCM from the float embedder: decomposition against it in the report.
    let q = d.join("q.onnx");
    let qj = d.join("q.json");
    let (ok, _, stderr) = train_embed(
        &float,
        a,
        &[
            "--extra-data",
            m,
            "--loss",
            "rcm",
            "--qat",
            "lsq",
            "--epochs",
            "1",
            "--limit",
            "256",
            "--batch",
            "64",
            "--calib-n",
            "128",
            "--test-limit",
            "200",
            "-o",
            q.to_str().unwrap(),
            "--json",
            qj.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let r = report(&qj);
    assert!(r["embed"]["rcm"].as_f64().is_some(), "{}", r["embed"]);
    let dec = &r["open_set"]["decomposition"];
    let total = dec["total_deg"].as_f64().unwrap();
    assert!(total > 0.0 && total < 90.0, "{dec}");
    assert!(dec["class_deg"].as_f64().unwrap() >= 0.0 && dec["individual_deg"].as_f64().unwrap() > 0.0, "{dec}");
    let gq = lowbit_onnx::read_model(&q).unwrap();
    assert!(gq.nodes.iter().any(|n| n.op.op_type() == "QuantizeLinear"), "QAT exports QDQ");

    // `lowbit eval --task embed` on the same protocol reproduces the decomposition.
    let ej = d.join("e.json");
    let (ok, stdout, stderr) = run(&[
        "eval",
        q.to_str().unwrap(),
        "--data",
        a,
        "--extra-data",
        m,
        "--task",
        "embed",
        "--reference",
        float.to_str().unwrap(),
        "--threads",
        "2",
        "--json",
        ej.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("individual error"), "{stdout}");
    let e = report(&ej);
    for k in ["total_deg", "class_deg", "individual_deg"] {
        assert!(close(&e["decomposition"][k], &dec[k], 1e-6), "{k}: {} vs {}", e["decomposition"][k], dec[k]);
    }
    assert!(close(&e["model"]["rank1"], &r["open_set"]["model"]["rank1"], 1e-9));

    // Bad requests.
    let (ok, _, stderr) = train_embed(&float, a, &["--loss", "rcm", "-o", d.join("x.onnx").to_str().unwrap()]);
    assert!(!ok && stderr.contains("--qat"), "{stderr}");
    let (ok, _, stderr) =
        train_embed(&float, a, &["--qat", "lsq", "--weights", "9", "-o", d.join("x.onnx").to_str().unwrap()]);
    assert!(!ok && stderr.contains("--weights 9 is out of range"), "{stderr}");
    let ppocr = zoo("ppocr-textline-cls.onnx");
    let (ok, _, stderr) =
        train_embed(&ppocr, a, &["--extra-data", m, "--preset", "fmnist", "-o", d.join("y.onnx").to_str().unwrap()]);
    assert!(!ok && stderr.contains("last fully connected layer"), "{stderr}");
    assert!(!d.join("x.onnx").exists() && !d.join("y.onnx").exists());
}
