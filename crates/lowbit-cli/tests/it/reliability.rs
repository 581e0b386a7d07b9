//! Bad input as a careless user, a corrupted download or a hostile file brings it: every reproducer
//! in `tests/repro/` (copied from the workplace's `repro/` folder, see its README) ends with one error
//! line naming the file and the reason, exit code 1, no panic or abort, under a 1 GiB address-space
//! cap; and no command replaces its own input, another of its outputs, a symlink, a special file or a
//! read-only file unless `--force` is given, with every output folder checked before the work starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn repro(name: &str) -> PathBuf {
    root().join("crates/lowbit-cli/tests/repro").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs lowbit under a 1 GiB address-space limit (`ulimit -v`) and kills it if it hangs.
fn lowbit_capped(args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg("ulimit -v 1048576 && exec \"$0\" \"$@\"").arg(lowbit_bin()).args(args);
    run_guarded(c, args)
}

fn lowbit(args: &[&str]) -> Output {
    let mut c = Command::new(lowbit_bin());
    c.args(args);
    run_guarded(c, args)
}

/// A hang guard (not a speed claim): a command that has not ended after two minutes has hung.
fn run_guarded(mut c: Command, args: &[&str]) -> Output {
    use std::io::Read;
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Drained while the command runs: a full pipe would stall it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = vec![];
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("lowbit {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_clean_failure(o: &Output, what: &str, must_mention: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(!err.contains("memory allocation"), "{what}: aborted: {err}");
    assert_eq!(o.status.code(), Some(1), "{what}: exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "{what}: want one line of error, got: {err}");
    for m in must_mention {
        assert!(err.contains(m), "{what}: error should mention '{m}': {err}");
    }
}

fn data() -> PathBuf {
    root().join("assets/fmnist-test-1k-images-idx3-ubyte.gz")
}

/// Every command a model file can be given to, with small data so that a model that is fine runs fast.
fn commands_on(model: &Path, out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let (m, d, o) = (s(model).to_string(), s(&data()).to_string(), s(out).to_string());
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("inspect", v(&["inspect", &m])),
        ("bench", v(&["bench", &m, "--iters", "1", "--warmup", "0"])),
        ("run", v(&["run", &m, "--input", &d, "--preset", "mnist", "--limit", "2"])),
        ("eval", v(&["eval", &m, "--data", &d, "--preset", "mnist", "--limit", "8"])),
        ("quantize", v(&["quantize", &m, "--calib", &d, "--preset", "mnist", "--calib-n", "8", "-o", &o])),
    ]
}

#[test]
fn every_reproducer_fails_cleanly_under_1gib() {
    let d = tmpdir("repro");
    let out = d.join("out.onnx");
    // (file, commands expected to fail (None = all), words the error must carry besides the file name)
    let cases: &[(&str, Option<&[&str]>, &[&str])] = &[
        ("no-outputs.onnx", None, &["no outputs"]),
        ("zero-classes.onnx", Some(&["run", "eval", "quantize"]), &["0 classes"]),
        ("dq-scalar-perchannel.onnx", None, &["'dq'", "axis"]),
        ("mul-one-input.onnx", None, &["Mul", "input"]),
        ("gap-pads-8000.onnx", Some(&["bench", "run", "eval", "quantize"]), &["memory"]),
        ("gap-pads-wrap.onnx", None, &["'conv'", "pads"]),
        ("q-scale-zero.onnx", None, &["scale"]),
    ];
    for (file, which, words) in cases {
        let model = repro(file);
        for (cmd, args) in commands_on(&model, &out) {
            if which.is_some_and(|w| !w.contains(&cmd)) {
                continue;
            }
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let o = lowbit_capped(&args);
            let mut must = vec![*file];
            must.extend_from_slice(words);
            assert_clean_failure(&o, &format!("{cmd} {file}"), &must);
            assert!(!out.exists(), "{cmd} {file}: left an output behind");
        }
    }
}

#[test]
fn gzip_idx_bomb_is_refused_before_decompressing() {
    let bomb = repro("idx-gzbomb/images-idx3-ubyte.gz");
    let m = zoo("mnist-cnn.onnx");
    for args in [
        vec!["eval", s(&m), "--data", s(&bomb), "--preset", "mnist"],
        vec!["run", s(&m), "--input", s(&bomb), "--preset", "mnist"],
    ] {
        let o = lowbit_capped(&args);
        assert_clean_failure(&o, &format!("{args:?}"), &["images-idx3-ubyte.gz", "20000x20000"]);
    }
}

#[test]
fn a_50000_node_chain_without_names_reads_and_plans() {
    let o = lowbit(&["inspect", s(&repro("chain-unnamed-50000.onnx"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "inspect failed: {err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("50000"), "inspect should count 50000 nodes: {out}");
}

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn outputs_never_replace_inputs_links_or_special_files() {
    let d = tmpdir("outsafe");
    let model = d.join("model.onnx");
    std::fs::write(&model, std::fs::read(zoo("mnist-cnn.onnx")).unwrap()).unwrap();
    let orig = sha(&model);
    let dat = data();
    let q = |o: &str, extra: &[&str]| {
        let mut a = vec!["quantize", s(&model), "--calib", s(&dat), "--preset", "mnist", "--calib-n", "8"];
        a.extend_from_slice(&["-o", o]);
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| lowbit(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());

    // -o equal to the input, also through another spelling of the same path.
    let o = run(q(s(&model), &[]));
    assert_clean_failure(&o, "-o = input", &["model.onnx", "input"]);
    let other_spelling = d.join(".").join("model.onnx");
    assert_clean_failure(&run(q(s(&other_spelling), &[])), "-o = ./input", &["input"]);
    // --json equal to -o, or to the input.
    let out = d.join("q.onnx");
    assert_clean_failure(&run(q(s(&out), &["--json", s(&out)])), "--json = -o", &["q.onnx", "--json"]);
    assert_clean_failure(&run(q(s(&out), &["--json", s(&model)])), "--json = input", &["model.onnx", "input"]);
    assert_eq!(sha(&model), orig, "the input model changed");
    assert!(!out.exists(), "a refused command wrote its output");

    // A symlink, a FIFO, a folder, a read-only file.
    let target = d.join("target.txt");
    std::fs::write(&target, b"keep").unwrap();
    let link = d.join("link.onnx");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_clean_failure(&run(q(s(&link), &[])), "-o symlink", &["link.onnx", "symlink", "--force"]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    let fifo = d.join("fifo.onnx");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_clean_failure(&run(q(s(&fifo), &[])), "-o fifo", &["fifo.onnx", "not a regular file"]);
    assert_clean_failure(&run(q(s(&d), &[])), "-o folder", &["folder"]);
    let ro = d.join("ro.onnx");
    std::fs::write(&ro, b"read-only").unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    assert_clean_failure(&run(q(s(&ro), &[])), "-o read-only", &["ro.onnx", "read-only"]);
    assert_eq!(std::fs::read(&ro).unwrap(), b"read-only");

    // --force replaces the symlink with the model; the link's target is untouched.
    let o = run(q(s(&link), &["--force"]));
    assert!(o.status.success(), "--force: {}", String::from_utf8_lossy(&o.stderr));
    assert!(lowbit_onnx::read_model(&link).is_ok());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

#[test]
fn missing_output_folders_are_found_before_the_work() {
    let d = tmpdir("outdirs");
    let missing = d.join("no/such/dir");
    let model = zoo("mnist-cnn.onnx");
    let cases: Vec<Vec<String>> = vec![
        vec!["quantize", s(&model), "--calib", s(&data()), "--preset", "mnist", "-o", s(&missing.join("q.onnx"))],
        vec![
            "quantize",
            s(&model),
            "--calib",
            s(&data()),
            "--preset",
            "mnist",
            "-o",
            s(&d.join("q.onnx")),
            "--json",
            s(&missing.join("r.json")),
        ],
        vec!["eval", s(&model), "--data", s(&data()), "--preset", "mnist", "--json", s(&missing.join("e.json"))],
        vec![
            "train",
            s(&model),
            "--data",
            s(&root().join("assets")),
            "--preset",
            "mnist",
            "--epochs",
            "1",
            "-o",
            s(&d.join("t.onnx")),
            "--json",
            s(&missing.join("t.json")),
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for a in cases {
        let o = lowbit(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_clean_failure(&o, &format!("{a:?}"), &["no/such/dir", "folder"]);
        // Refused before any work: nothing was calibrated, evaluated or trained.
        assert!(o.stdout.is_empty(), "{a:?}: worked before refusing: {}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn absurd_thread_counts_are_clamped_with_a_warning() {
    let o = lowbit(&["bench", s(&zoo("mnist-cnn.onnx")), "--threads", "10000", "--iters", "2", "--warmup", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning:") && err.contains("10000"), "no clamp warning: {err}");
}

/// A `train` interrupted (killed) after a checkpoint and run again ends with the same weights, bit
/// for bit, as the same command run without interruption: momentum state and shuffle order are
/// restored, not only the weights.
#[test]
fn a_resumed_train_equals_the_uninterrupted_run() {
    let d = tmpdir("resume-exact");
    let model = zoo("mnist-cnn.onnx");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            s(&model),
            "--data",
            s(&root().join("assets")),
            "--preset",
            "fmnist",
            "--epochs",
            "4",
            "--batch",
            "50",
            "--lr",
            "0.01",
            "--limit",
            "300",
            "--test-limit",
            "50",
            "--threads",
            "1",
            "-o",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let whole = d.join("whole.onnx");
    let o = lowbit(&args(&whole).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Interrupted: killed as soon as the first checkpoint exists, then the same command again.
    let cut = d.join("cut.onnx");
    let ckpt = d.join("cut.onnx.ckpt.json");
    let mut child =
        Command::new(lowbit_bin()).args(args(&cut)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !ckpt.exists() && t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ckpt.exists(), "no checkpoint was written");
    assert!(!cut.exists(), "the run finished before it could be interrupted");
    let o = lowbit(&args(&cut).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming from"), "did not resume: {err}");
    let (a, b) = (lowbit_onnx::read_model(&whole).unwrap(), lowbit_onnx::read_model(&cut).unwrap());
    assert_eq!(a.initializers.len(), b.initializers.len());
    for (name, t) in &a.initializers {
        let u = &b.initializers[name];
        let (x, y) = (t.to_f32_vec(), u.to_f32_vec());
        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same && x.len() == y.len(), "{name}: resumed weights differ from the uninterrupted run's");
    }
}

/// A checkpoint with the wrong number of values, or none, is refused with its path; it never
/// "resumes" into untrained weights.
#[test]
fn damaged_checkpoints_are_refused() {
    let d = tmpdir("bad-ckpt");
    let model = zoo("mnist-cnn.onnx");
    let out = d.join("m.onnx");
    let assets = root().join("assets");
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            s(&model),
            "--data",
            s(&assets),
            "--preset",
            "fmnist",
            "--epochs",
            "1",
            "--batch",
            "50",
            "--limit",
            "100",
            "--test-limit",
            "20",
            "-o",
            s(&out),
        ];
        a.extend_from_slice(extra);
        lowbit(&a)
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = d.join("m.onnx.ckpt.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    for (what, edit) in [
        (
            "one parameter dropped",
            Box::new(|v: &mut serde_json::Value| {
                v["params"].as_array_mut().unwrap().pop();
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "values of a parameter cut",
            Box::new(|v: &mut serde_json::Value| {
                v["params"][0][2].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "empty",
            Box::new(|v: &mut serde_json::Value| {
                v["params"] = serde_json::json!([]);
                v["buffers"] = serde_json::json!([]);
            }),
        ),
    ] {
        let mut v = good.clone();
        edit(&mut v);
        std::fs::write(&ckpt, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = train(&[]);
        // `train` reports what it is about to train on stderr before it reads the checkpoint.
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains("m.onnx.ckpt.json"), "{what}: {err}");
        assert!(!out.exists(), "{what}: wrote a model from a damaged checkpoint");
    }
}

/// Nonsense numbers are refused up front with the flag's name.
#[test]
fn nonsense_arguments_are_refused() {
    let m = zoo("mnist-cnn.onnx");
    let d = tmpdir("nonsense");
    let out = d.join("o.onnx");
    let assets = root().join("assets");
    for (flag, val) in [("--lr", "-1"), ("--lr", "nan"), ("--weight-decay", "-0.1"), ("--temperature", "0")] {
        let arg = format!("{flag}={val}");
        let o = lowbit(&["train", s(&m), "--data", s(&assets), "--preset", "fmnist", "-o", s(&out), &arg]);
        assert_clean_failure(&o, &format!("train {arg}"), &[flag]);
    }
    let o = lowbit(&["quantize", s(&m), "--calib", s(&data()), "--preset", "mnist", "--max-drop=nan", "-o", s(&out)]);
    assert_clean_failure(&o, "quantize --max-drop nan", &["--max-drop"]);
    // Argument syntax errors come from clap: exit code 2 with its usage hint.
    let o = lowbit(&["bench", s(&m), "--max-memory", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad size 'lots'"));
    assert!(!out.exists());
}

/// Per-layer sensitivity and mixed precision quantize each layer alone: a layer that reads a
/// reshaped activation (mnist-cnn's first Gemm reads the Flatten of a MaxPool) takes the
/// reshape's input statistics ("input activation is not quantized" before).
#[test]
fn sensitivity_and_mixed_precision_run_on_mnist_cnn() {
    let d = tmpdir("sens-mnist");
    let out = d.join("q.onnx");
    let o = lowbit(&[
        "quantize",
        s(&zoo("mnist-cnn.onnx")),
        "--calib",
        s(&data()),
        "--preset",
        "mnist",
        "--calib-n",
        "64",
        "--weights",
        "4",
        "--sensitivity",
        "--max-drop",
        "0.5",
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("/classifier/classifier.0/Gemm"), "no sensitivity row: {stdout}");
    assert!(lowbit_onnx::read_model(&out).is_ok());
}

/// An IDX folder with train and test splits cut from `../shared/data/mnist10k` (the MNIST test
/// set, which mnist-cnn was not trained on): `train` images for L3, `test` to decide and report.
fn mnist_split(d: &std::path::Path, train: usize, test: usize) -> std::path::PathBuf {
    let src = shared().join("data/mnist10k");
    let set = lowbit_data::load_any(&src, lowbit_data::Split::Test, &lowbit_data::Preprocess::none(), None).unwrap();
    let labels = set.labels.clone().unwrap();
    let dir = d.join("mnist-split");
    std::fs::create_dir_all(&dir).unwrap();
    let per = set.c * set.h * set.w;
    let write = |prefix: &str, from: usize, n: usize| {
        let mut img = vec![0, 0, 8, 3];
        for v in [n, set.h, set.w] {
            img.extend((v as u32).to_be_bytes());
        }
        img.extend(set.data[from * per..(from + n) * per].iter().map(|&v| v.round().clamp(0.0, 255.0) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        let mut lab = vec![0, 0, 8, 1];
        lab.extend((n as u32).to_be_bytes());
        lab.extend(labels[from..from + n].iter().map(|&l| l as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    };
    write("train", 0, train);
    write("t10k", train, test);
    dir
}

#[test]
fn the_automatic_pipeline_runs_on_mnist_cnn() {
    // mnist-cnn's first Gemm reads a Flatten: the pipeline failed there with "input activation is
    // not quantized". A negative budget makes every stage run, L3 included.
    let d = tmpdir("pipeline-mnist");
    let split = mnist_split(&d, 1024, 600);
    let (out, js) = (d.join("q.onnx"), d.join("q.json"));
    let o = lowbit(&[
        "quantize",
        s(&zoo("mnist-cnn.onnx")),
        "--data",
        s(&split),
        "--preset",
        "mnist",
        "--weights",
        "4",
        "--acts",
        "4",
        "--max-drop=-100",
        // Calibration straight to training (the learned-rounding candidates are tested in train::).
        "--no-learned-rounding",
        "--calib-n",
        "128",
        "-o",
        s(&out),
        "--json",
        s(&js),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "an impossible budget is reported as missed: {stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["float", "L1", "L2", "L3"], "{stdout}");
    assert_eq!(r["decide_images"], 300);
    for s in r["stages"].as_array().unwrap() {
        let t = s["test_top1"].as_f64().unwrap();
        assert!(t > 0.5, "every stage classifies digits: {s}");
    }
    assert!(lowbit_onnx::read_model(&out).is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}
