//! Datasets and preprocessing for lowbit's image classifiers.
//!
//! This crate owns getting images into memory as model-ready tensors: reading and writing IDX
//! files (MNIST / Fashion-MNIST, plain or gzipped), loading folders of .jpg/.png images, and the
//! preprocessing that turns u8 pixels into normalized NCHW `f32` ([`Preprocess`] with presets for
//! ImageNet, MNIST, Fashion-MNIST and PaddleOCR). The result is an [`ImageSet`]. [`openset`] turns labelled sets into an open-set recognition
//! protocol (identities trained on apart from identities evaluated). Loaders never
//! panic on bad files: every [`DataError`] names the file or folder and the reason. The crate does
//! not depend on the other lowbit crates.

mod error;
mod folder;
mod idx;
mod imageset;
pub mod openset;
mod preprocess;

#[cfg(test)]
mod real_data_tests;
#[cfg(test)]
mod test_util;

use std::path::{Path, PathBuf};

pub use error::{DataError, Result};
pub use folder::{image_files, load_image_file, load_image_folder, LABELS_FILE};
pub use idx::{load_idx, load_idx_dir, write_idx_images, write_idx_labels, Split};
pub use imageset::ImageSet;
pub use preprocess::Preprocess;

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Loads whatever `path` is:
/// - a file whose name ends in `.jpg`/`.jpeg`/`.png` -> that one image;
/// - any other file (e.g. `*-ubyte`, `*.gz`) -> [`load_idx`], with labels from the sibling file
///   named with `images-idx3` replaced by `labels-idx1` (with or without `.gz`) if it exists;
/// - a folder with IDX image files -> [`load_idx_dir`];
/// - a folder with images -> [`load_image_folder`].
///
/// A missing path is [`DataError::NotFound`].
pub fn load_any(path: &Path, split: Split, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    if !path.exists() {
        return Err(DataError::NotFound { path: path.to_path_buf() });
    }
    if path.is_dir() {
        if !idx::list_files(path, idx::is_idx_images_name)?.is_empty() {
            return load_idx_dir(path, split, pre, limit);
        }
        return match load_image_folder(path, pre, limit) {
            Err(DataError::NoImages { .. }) => Err(DataError::Layout {
                path: path.to_path_buf(),
                reason: "no IDX files (*images-idx3-ubyte[.gz]) and no images (.jpg/.jpeg/.png) in this folder".into(),
            }),
            other => other,
        };
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if folder::is_image_name(name) {
        let set = load_image_file(path, pre)?;
        return Ok(if limit == Some(0) { set.take(0) } else { set });
    }
    let labels = idx::sibling_labels(path);
    load_idx(path, labels.as_deref(), pre, limit)
}

/// The image files [`load_any`] would read from `path` one at a time (a folder of images, or one image
/// file), so callers can decode and run them one by one at their own sizes; `None` for IDX data (one
/// size for all, load it with [`load_any`]).
pub fn image_paths(path: &Path, limit: Option<usize>) -> Result<Option<Vec<PathBuf>>> {
    if path.is_dir() && idx::list_files(path, idx::is_idx_images_name)?.is_empty() {
        return image_files(path, limit).map(Some);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    Ok((path.is_file() && folder::is_image_name(name)).then(|| vec![path.to_path_buf()]))
}

/// The Fashion-MNIST folder, or an error saying how to install it:
/// "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; install it with: apt-get install
/// -y dataset-fashion-mnist".
pub fn fashion_mnist_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(FASHION_MNIST_DIR);
    let present = dir.is_dir() && idx::list_files(&dir, idx::is_idx_images_name).is_ok_and(|files| !files.is_empty());
    if present {
        Ok(dir)
    } else {
        Err(DataError::DatasetMissing {
            name: "Fashion-MNIST",
            dir,
            install: "apt-get install -y dataset-fashion-mnist",
        })
    }
}

/// Fashion-MNIST `split` (60,000 train or 10,000 test images, labelled) from [`fashion_mnist_dir`].
pub fn load_fashion_mnist(split: Split, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    load_idx_dir(&fashion_mnist_dir()?, split, pre, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;
    use image::{Rgb, RgbImage};

    #[test]
    fn load_any_missing_path_names_it() {
        let tmp = TempDir::new("any-missing");
        let p = tmp.join("no-such-thing");
        let err = load_any(&p, Split::Test, &Preprocess::none(), None).expect_err("missing");
        assert!(matches!(&err, DataError::NotFound { path } if path == &p), "{err:?}");
        assert!(err.to_string().contains("no-such-thing: not found"), "{err}");
    }

    #[test]
    fn load_any_dispatches() {
        let tmp = TempDir::new("any-dispatch");
        let idx_dir = tmp.join("idx");
        let img_dir = tmp.join("img");
        let empty = tmp.join("empty");
        for d in [&idx_dir, &img_dir, &empty] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let ip = idx_dir.join("t10k-images-idx3-ubyte.gz");
        write_idx_images(&ip, &[0, 1, 2, 3, 4, 5, 6, 7], 2, 2, 2, true).expect("write");
        write_idx_labels(&idx_dir.join("t10k-labels-idx1-ubyte"), &[4, 2], false).expect("write");
        let png = img_dir.join("one.png");
        RgbImage::from_pixel(2, 2, Rgb([10, 20, 30])).save(&png).expect("save");
        let pre = Preprocess::none();

        // a single IDX file picks up its sibling labels (plain, next to a .gz image file)
        let set = load_any(&ip, Split::Train, &pre, None).expect("idx file");
        assert_eq!((set.n, set.labels), (2, Some(vec![4, 2])));
        let set = load_any(&idx_dir, Split::Test, &pre, Some(1)).expect("idx dir");
        assert_eq!((set.n, set.labels), (1, Some(vec![4])));
        let set = load_any(&img_dir, Split::Test, &pre, None).expect("image dir");
        assert_eq!((set.shape(), set.data[0]), ([1, 1, 2, 2], 18.0)); // luma of (10,20,30)
        let set = load_any(&png, Split::Test, &Preprocess { channels: 3, ..pre.clone() }, None).expect("image file");
        assert_eq!(set.data, vec![10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0, 30.0, 30.0, 30.0, 30.0]);
        assert_eq!(set.source, png.display().to_string());

        let msg = load_any(&empty, Split::Test, &pre, None).expect_err("empty").to_string();
        assert!(msg.starts_with(&empty.display().to_string()) && msg.contains("no IDX files"), "{msg}");
    }

    #[test]
    fn fashion_mnist_message() {
        let err = DataError::DatasetMissing {
            name: "Fashion-MNIST",
            dir: FASHION_MNIST_DIR.into(),
            install: "apt-get install -y dataset-fashion-mnist",
        };
        assert_eq!(
            err.to_string(),
            "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; \
             install it with: apt-get install -y dataset-fashion-mnist"
        );
    }
}
