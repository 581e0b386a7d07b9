//! Tests on the real data sets. They fail (never skip) when the data is missing, saying how to get it.

use std::path::Path;

use crate::{fashion_mnist_dir, load_any, load_fashion_mnist, load_idx_dir, load_image_folder, Preprocess, Split};

const MNIST10K: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/mnist10k");
const PHOTOS224: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/photos224");

fn require(dir: &str) -> &Path {
    let p = Path::new(dir);
    assert!(
        p.is_dir(),
        "test data missing: {dir} does not exist. It is part of the project's shared data \
         (shared/data/, see shared/data/README.md); restore it from the repository checkout."
    );
    p
}

fn check_labels(labels: &[u32], classes: u32) -> [usize; 10] {
    let mut counts = [0usize; 10];
    for &l in labels {
        assert!(l < classes, "label {l} out of 0..{classes}");
        counts[l as usize] += 1;
    }
    counts
}

fn range(data: &[f32]) -> (f32, f32) {
    data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

#[test]
fn mnist10k_loads_10000_labelled_digits() {
    let dir = require(MNIST10K);
    let set = load_idx_dir(dir, Split::Test, &Preprocess::mnist(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.shape(), [10000, 1, 28, 28]);
    let labels = set.labels.as_deref().expect("mnist10k has a label file");
    assert_eq!(labels.len(), 10000);
    let counts = check_labels(labels, 10);
    assert!(counts.iter().all(|&c| c > 500), "every digit present: {counts:?}");
    let (lo, hi) = range(&set.data);
    let (want_lo, want_hi) = ((0.0 - 0.1307) / 0.3081, (1.0 - 0.1307) / 0.3081);
    assert!((lo - want_lo).abs() < 1e-4 && (hi - want_hi).abs() < 1e-4, "range {lo}..{hi}");
    // load_any on the folder gives the same thing
    let again = load_any(dir, Split::Train, &Preprocess::mnist(), Some(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.data, set.slice(0, 10).data);
}

#[test]
fn photos224_loads_256_rgb_images() {
    let dir = require(PHOTOS224);
    let set = load_image_folder(dir, &Preprocess::imagenet(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.shape(), [256, 3, 224, 224]);
    assert_eq!(set.names[0], "000.jpg");
    let (lo, hi) = range(&set.data);
    assert!((-2.2..=2.7).contains(&lo) && (-2.2..=2.7).contains(&hi), "range {lo}..{hi}");
    assert!(hi - lo > 3.0, "natural photos span most of the range: {lo}..{hi}");
    // per-image not constant, and channels differ (these are colour photos)
    let img = set.image(0);
    let plane = 224 * 224;
    assert_ne!(img[..plane], img[plane..2 * plane]);
}

#[test]
fn fashion_mnist_test_split_has_10000_balanced_images() {
    let dir = fashion_mnist_dir().unwrap_or_else(|e| panic!("{e}"));
    let set = load_idx_dir(&dir, Split::Test, &Preprocess::fmnist(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.shape(), [10000, 1, 28, 28]);
    assert!(set.source.contains("t10k"), "test split file: {}", set.source);
    let counts = check_labels(set.labels.as_deref().expect("labelled"), 10);
    assert_eq!(counts, [1000; 10]);
    // mean of the normalized test set is near 0 (the preset's mean is the training mean)
    let mean = set.data.iter().map(|&v| f64::from(v)).sum::<f64>() / set.data.len() as f64;
    assert!(mean.abs() < 0.05, "normalized mean {mean}");

    let train = load_fashion_mnist(Split::Train, &Preprocess::fmnist(), Some(100)).unwrap_or_else(|e| panic!("{e}"));
    assert!(train.source.contains("train"), "{}", train.source);
    assert_eq!((train.n, train.labels.map(|l| l.len())), (100, Some(100)));
}
