//! Image files (.jpg/.jpeg/.png): a whole folder, or a single file.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx::list_files;
use crate::imageset::ImageSet;
use crate::preprocess::Preprocess;

/// Name of the optional label file in an image folder.
pub const LABELS_FILE: &str = "labels.txt";

/// Whether a file name has an image extension we decode (.jpg/.jpeg/.png, any case).
pub(crate) fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// An image's name in its set: its path below the folder (`alice/1.jpg` in an identity
/// sub-folder), or its file name.
fn set_name(path: &Path, root: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if root.is_dir() && rel.components().count() > 1 => rel.to_string_lossy().into_owned(),
        _ => file_name(path),
    }
}

/// The images of a folder: its .jpg/.jpeg/.png files, or, when it has none, those of its
/// sub-folders one level down (one sub-folder per identity or class), sorted by sub-folder then
/// name.
fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let files = list_files(dir, is_image_name)?;
    if !files.is_empty() {
        return Ok(files);
    }
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, "cannot list folder", e))?;
    let mut subs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    subs.sort();
    let mut all = vec![];
    for s in subs {
        all.extend(list_files(&s, is_image_name)?);
    }
    Ok(all)
}

/// Decodes one image file and appends its preprocessed CHW values; returns (c, h, w).
fn decode_into(path: &Path, pre: &Preprocess, out: &mut Vec<f32>) -> Result<Vec<(usize, usize, usize)>> {
    pre.validate().map_err(|reason| DataError::Preprocess { path: path.to_path_buf(), reason })?;
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, "cannot open", e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, "cannot read", e))?
        .decode()
        .map_err(|e| DataError::Image { path: path.to_path_buf(), reason: e.to_string() })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // Colour images are decoded to RGB and, if needed, turned gray by `Preprocess` itself, so the
    // gray formula is the same for files and raw pixels.
    let (pixels, c) =
        if img.color().has_color() { (img.to_rgb8().into_raw(), 3) } else { (img.to_luma8().into_raw(), 1) };
    let Some(n) = pre.crops else { return Ok(vec![pre.apply_at(path, &pixels, c, h, w, out)?]) };
    // Each view cropped from the decoded pixels, then preprocessed as a whole image.
    let one = Preprocess { crops: None, ..pre.clone() };
    let mut shapes = vec![];
    let mut view = vec![];
    for (top, left, side) in crate::preprocess::crop_views(h, w, n) {
        view.clear();
        for y in top..top + side {
            view.extend_from_slice(&pixels[(y * w + left) * c..(y * w + left + side) * c]);
        }
        shapes.push(one.apply_at(path, &view, c, side, side, out)?);
    }
    Ok(shapes)
}

/// Decodes `files` in order into one set; all must come out the same size.
fn load_files(files: &[PathBuf], pre: &Preprocess, source: &Path) -> Result<ImageSet> {
    let mut data = Vec::new();
    let mut shape = None;
    let mut names = vec![];
    for path in files {
        let shapes = decode_into(path, pre, &mut data)?;
        for (k, &s) in shapes.iter().enumerate() {
            let name = set_name(path, source);
            names.push(if pre.crops.is_some() { format!("{name}#{k}") } else { name });
            match shape {
                None => shape = Some(s),
                Some(first) if first != s => {
                    return Err(DataError::Preprocess {
                        path: path.clone(),
                        reason: format!(
                            "image is {}x{}x{} after preprocessing but {} was {}x{}x{}; \
                         set a resize or crop so all images come out the same size",
                            s.0,
                            s.1,
                            s.2,
                            file_name(&files[0]),
                            first.0,
                            first.1,
                            first.2
                        ),
                    })
                }
                Some(_) => {}
            }
        }
    }
    let (c, h, w) = shape.unwrap_or((pre.channels, 0, 0));
    Ok(ImageSet { n: names.len(), c, h, w, data, labels: None, names, source: source.display().to_string() })
}

/// Parses `labels.txt`: lines `<filename> <label>`; blank lines and `#` comments are skipped.
fn read_labels_txt(path: &Path) -> Result<HashMap<String, u32>> {
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, "cannot read", e))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |why: String| DataError::Labels { path: path.to_path_buf(), reason: format!("line {}: {why}", i + 1) };
        let (name, label) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| bad(format!("expected \"<filename> <label>\", got {line:?}")))?;
        let label: u32 = label.parse().map_err(|_| bad(format!("label {label:?} is not a non-negative integer")))?;
        if map.insert(name.trim_end().to_string(), label).is_some() {
            return Err(bad(format!("second label for {}", name.trim_end())));
        }
    }
    Ok(map)
}

/// All .jpg/.jpeg/.png files in a folder, sorted by file name (or, in a folder without any, those of
/// its sub-folders, named `sub/file`, see `list_images`); decoded with the
/// `image` crate, converted to `pre.channels`, resized/cropped, normalized. Empty folder -> error
/// "no images (.jpg/.jpeg/.png) in <dir>". Optional labels: if a file `labels.txt` exists with
/// lines "<filename> <label>", it is used, and every loaded image must have a label.
pub fn load_image_folder(dir: &Path, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    if !dir.exists() {
        return Err(DataError::NotFound { path: dir.to_path_buf() });
    }
    if !dir.is_dir() {
        return Err(DataError::Layout { path: dir.to_path_buf(), reason: "not a folder".into() });
    }
    let mut files = list_images(dir)?;
    if files.is_empty() {
        return Err(DataError::NoImages { dir: dir.to_path_buf() });
    }
    if let Some(l) = limit {
        files.truncate(l);
    }
    let mut set = load_files(&files, pre, dir)?;
    let labels_path = dir.join(LABELS_FILE);
    if labels_path.is_file() {
        let map = read_labels_txt(&labels_path)?;
        let labels = set
            .names
            .iter()
            .map(|name| {
                // A view `file#k` has its file's label.
                let file =
                    if pre.crops.is_some() { name.rsplit_once('#').map_or(name.as_str(), |(f, _)| f) } else { name };
                map.get(file).copied().ok_or_else(|| DataError::Labels {
                    path: labels_path.clone(),
                    reason: format!("no label for {name}"),
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        set.labels = Some(labels);
    }
    Ok(set)
}

/// The image files of a folder, as [`load_image_folder`] lists them (at most `limit`).
pub fn image_files(dir: &Path, limit: Option<usize>) -> Result<Vec<std::path::PathBuf>> {
    let mut files = list_images(dir)?;
    if files.is_empty() {
        return Err(DataError::NoImages { dir: dir.to_path_buf() });
    }
    if let Some(l) = limit {
        files.truncate(l);
    }
    Ok(files)
}

/// One image file as a set of one (unlabelled).
pub fn load_image_file(path: &Path, pre: &Preprocess) -> Result<ImageSet> {
    if !path.exists() {
        return Err(DataError::NotFound { path: path.to_path_buf() });
    }
    load_files(&[path.to_path_buf()], pre, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn raw(channels: usize) -> Preprocess {
        Preprocess { channels, ..Preprocess::none() }
    }

    #[test]
    fn empty_folder_is_an_error() {
        let tmp = TempDir::new("folder-empty");
        fs::write(tmp.join("notes.txt"), "no images here").expect("write");
        let err = load_image_folder(tmp.path(), &Preprocess::imagenet(), None).expect_err("empty");
        assert!(matches!(err, DataError::NoImages { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("no images (.jpg/.jpeg/.png) in {}", tmp.path().display()));
    }

    #[test]
    fn crops_make_views_with_their_files_labels() {
        let d = TempDir::new("crops");
        let mut a = RgbImage::new(40, 30);
        a.put_pixel(20, 15, Rgb([255, 0, 0]));
        a.save(d.path().join("a.png")).unwrap();
        RgbImage::new(30, 30).save(d.path().join("b.png")).unwrap();
        std::fs::write(d.path().join(LABELS_FILE), "a.png 3\nb.png 5\n").unwrap();
        let pre = Preprocess { channels: 3, resize_exact: Some((8, 8)), crops: Some(5), ..Preprocess::none() };
        let s = load_image_folder(d.path(), &pre, None).unwrap();
        assert_eq!((s.n, s.c, s.h, s.w), (10, 3, 8, 8));
        assert_eq!(s.names[0], "a.png#0");
        assert_eq!(s.names[9], "b.png#4");
        assert_eq!(s.labels.as_deref(), Some(&[3, 3, 3, 3, 3, 5, 5, 5, 5, 5][..]));
        // The same views on another load; without crops one image per file.
        assert_eq!(load_image_folder(d.path(), &pre, None).unwrap().data, s.data);
        assert_eq!(load_image_folder(d.path(), &Preprocess { crops: None, ..pre }, None).unwrap().n, 2);
    }

    #[test]
    fn png_folder_sorted_with_labels_and_limit() {
        let tmp = TempDir::new("folder-png");
        // written out of order; b is red, a is blue, c is green
        for (name, rgb) in [("b.png", [255, 0, 0]), ("a.PNG", [0, 0, 255]), ("c.png", [0, 255, 0])] {
            RgbImage::from_pixel(3, 2, Rgb(rgb)).save(tmp.join(name)).expect("save png");
        }
        fs::write(tmp.join(LABELS_FILE), "# name label\nb.png 1\n\na.PNG 0\nc.png 2\n").expect("write");
        let set = load_image_folder(tmp.path(), &raw(3), None).expect("load");
        assert_eq!(set.shape(), [3, 3, 2, 3]);
        assert_eq!(set.names, vec!["a.PNG", "b.png", "c.png"]);
        assert_eq!(set.labels, Some(vec![0, 1, 2]));
        // a is blue: channel 0 and 1 zero, channel 2 all 255 (CHW, 6 values per channel)
        assert_eq!(set.image(0)[..6], [0.0; 6]);
        assert_eq!(set.image(0)[12..], [255.0; 6]);
        assert_eq!(set.image(1)[..6], [255.0; 6]);

        let two = load_image_folder(tmp.path(), &raw(3), Some(2)).expect("load");
        assert_eq!((two.n, two.labels), (2, Some(vec![0, 1])));

        // grayscale conversion uses Pillow's luma: pure green -> (38470*255 + 32768) >> 16 = 150
        let gray = load_image_folder(tmp.path(), &raw(1), None).expect("load");
        assert_eq!(gray.shape(), [3, 1, 2, 3]);
        assert_eq!(gray.image(2), &[150.0; 6]);
    }

    /// One sub-folder per identity (or class): images named `sub/file`, sorted by sub-folder.
    #[test]
    fn identity_subfolders_are_read_one_level_down() {
        let tmp = TempDir::new("folder-ids");
        for (sub, file, v) in [("bob", "1.png", 20u8), ("alice", "2.png", 10), ("alice", "1.png", 5)] {
            fs::create_dir_all(tmp.join(sub)).expect("mkdir");
            GrayImage::from_pixel(2, 2, Luma([v])).save(tmp.join(sub).join(file)).expect("save");
        }
        fs::write(tmp.join("notes.txt"), "not an image").expect("write");
        let set = load_image_folder(tmp.path(), &raw(1), None).expect("load");
        assert_eq!(set.names, vec!["alice/1.png", "alice/2.png", "bob/1.png"]);
        assert_eq!([set.image(0)[0], set.image(1)[0], set.image(2)[0]], [5.0, 10.0, 20.0]);
        assert_eq!(image_files(tmp.path(), Some(2)).expect("list").len(), 2);
        // A folder with images of its own ignores its sub-folders.
        GrayImage::from_pixel(2, 2, Luma([1])).save(tmp.join("top.png")).expect("save");
        assert_eq!(load_image_folder(tmp.path(), &raw(1), None).expect("load").names, vec!["top.png"]);
    }

    #[test]
    fn labels_txt_problems_are_errors() {
        let tmp = TempDir::new("folder-labels");
        GrayImage::from_pixel(2, 2, Luma([9])).save(tmp.join("x.png")).expect("save");
        GrayImage::from_pixel(2, 2, Luma([9])).save(tmp.join("y.png")).expect("save");
        fs::write(tmp.join(LABELS_FILE), "x.png 3\n").expect("write");
        let msg = load_image_folder(tmp.path(), &raw(1), None).expect_err("y has no label").to_string();
        assert!(msg.contains("labels.txt: no label for y.png"), "{msg}");
        // but with a limit of 1, only x is loaded and it has a label
        assert_eq!(load_image_folder(tmp.path(), &raw(1), Some(1)).expect("load").labels, Some(vec![3]));

        fs::write(tmp.join(LABELS_FILE), "x.png 3\ny.png cat\n").expect("write");
        let msg = load_image_folder(tmp.path(), &raw(1), None).expect_err("bad label").to_string();
        assert!(msg.contains("labels.txt: line 2: label \"cat\""), "{msg}");
    }

    #[test]
    fn corrupt_image_names_the_file() {
        let tmp = TempDir::new("folder-corrupt");
        fs::write(tmp.join("broken.jpg"), b"definitely not a jpeg").expect("write");
        let msg = load_image_folder(tmp.path(), &raw(3), None).expect_err("corrupt").to_string();
        assert!(msg.contains("broken.jpg: cannot decode image"), "{msg}");
    }

    #[test]
    fn mixed_sizes_need_a_crop() {
        let tmp = TempDir::new("folder-mixed");
        GrayImage::from_pixel(4, 4, Luma([1])).save(tmp.join("a.png")).expect("save");
        GrayImage::from_pixel(6, 5, Luma([2])).save(tmp.join("b.png")).expect("save");
        let msg = load_image_folder(tmp.path(), &raw(1), None).expect_err("mixed").to_string();
        assert!(msg.contains("b.png: image is 1x5x6 after preprocessing but a.png was 1x4x4"), "{msg}");
        let set = load_image_folder(tmp.path(), &Preprocess { crop: Some((4, 4)), ..raw(1) }, None).expect("cropped");
        assert_eq!(set.shape(), [2, 1, 4, 4]);
        assert_eq!(set.image(1), &[2.0; 16]);
    }

    #[test]
    fn jpeg_round_trip_is_close() {
        let tmp = TempDir::new("folder-jpeg");
        let p = tmp.join("gray.jpg");
        RgbImage::from_pixel(16, 16, Rgb([128, 128, 128])).save(&p).expect("save jpeg");
        let set = load_image_file(&p, &Preprocess::imagenet()).expect_err("16x16 < 224 crop");
        assert!(set.to_string().contains("gray.jpg: image is 16x16, smaller than the 224x224 center crop"), "{set}");
        let set = load_image_file(&p, &raw(3)).expect("load");
        assert_eq!(set.names, vec!["gray.jpg"]);
        assert!(set.data.iter().all(|&v| (v - 128.0).abs() <= 2.0), "{:?}", &set.data[..8]);
    }
}
