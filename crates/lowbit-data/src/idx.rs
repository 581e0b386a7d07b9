//! IDX files (the MNIST / Fashion-MNIST format): reading, writing, and finding them in a folder.
//!
//! An IDX file is a 4-byte magic `00 00 <type> <ndims>`, `ndims` big-endian u32 dimensions, then
//! the data. Only unsigned-byte data (type 0x08) is supported: images are `0x00000803` (N, H, W)
//! and labels `0x00000801` (N). Files may be gzip-compressed; that is detected from the content
//! (`1f 8b`), not the file name.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{DataError, Result};
use crate::imageset::ImageSet;
use crate::preprocess::Preprocess;

const IDX_U8: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Which part of a data set to load from a folder holding both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(format!("unknown split {s:?} (expected train or test)")),
        }
    }
}

impl Split {
    /// Whether an IDX file name belongs to this split (`train*` vs `t10k*` / `test*`, also after a
    /// prefix and a dash, as in `fmnist-train-500-images-idx3-ubyte.gz`).
    fn matches(self, file_name: &str) -> bool {
        let name = file_name.to_ascii_lowercase();
        match self {
            Split::Train => name.starts_with("train") || name.contains("-train"),
            Split::Test => {
                name.starts_with("t10k") || name.starts_with("test") || name.contains("-t10k") || name.contains("-test")
            }
        }
    }
}

fn idx_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Idx { path: path.to_path_buf(), reason: reason.into() }
}

/// Opens a file, transparently decompressing it if it starts with the gzip magic.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(|e| DataError::io(path, "cannot read", e))?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads up to `want` bytes (less only at end of stream); errors name the path and `what`.
fn read_up_to(r: &mut dyn Read, want: usize, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(want as u64).read_to_end(&mut buf).map_err(|e| {
        idx_err(path, format!("corrupt or truncated file while reading {what} (after {} bytes): {e}", buf.len()))
    })?;
    Ok(buf)
}

/// Reads and checks the header; returns the dimensions.
fn read_header(r: &mut dyn Read, path: &Path, ndims: u8) -> Result<Vec<usize>> {
    let kind = if ndims == 3 { "image" } else { "label" };
    let magic = read_up_to(r, 4, path, "the IDX header")?;
    if magic.len() < 4 {
        return Err(idx_err(path, format!("not an IDX file: only {} bytes long", magic.len())));
    }
    let m = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    let expected = 0x0800 | u32::from(ndims);
    if m != expected {
        let what = match m {
            0x0801 => " (that is an IDX label file)",
            0x0803 => " (that is an IDX image file)",
            _ if magic[..2] == [0, 0] && magic[2] != IDX_U8 => " (IDX with non-u8 data is not supported)",
            _ => "",
        };
        return Err(idx_err(path, format!("not an IDX {kind} file: magic 0x{m:08x}{what}, expected 0x{expected:08x}")));
    }
    let n = usize::from(ndims);
    let raw = read_up_to(r, 4 * n, path, "the IDX header")?;
    if raw.len() < 4 * n {
        return Err(idx_err(
            path,
            format!("truncated IDX file: header needs {} dimension bytes, only {} present", 4 * n, raw.len()),
        ));
    }
    Ok(raw.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect())
}

/// Reads what follows the data to its end, so that a gzip file's checksum and length are verified
/// (a bad CRC is only seen there); at most 1 MiB of trailing bytes is tolerated.
fn check_end(r: &mut dyn Read, path: &Path) -> Result<()> {
    let mut rest = Vec::new();
    r.take(1 << 20).read_to_end(&mut rest).map_err(|e| idx_err(path, format!("corrupt file: {e}")))?;
    Ok(())
}

/// Reads an IDX label file header and the first `take` labels; returns (header count, labels).
fn read_labels(path: &Path, take: usize) -> Result<(usize, Vec<u32>)> {
    let mut r = open_maybe_gz(path)?;
    let count = read_header(&mut *r, path, 1)?[0];
    let take = take.min(count);
    let raw = read_up_to(&mut *r, take, path, "labels")?;
    if raw.len() < take {
        return Err(idx_err(
            path,
            format!("truncated IDX file: header says {count} labels but only {} bytes of labels", raw.len()),
        ));
    }
    if take == count {
        check_end(&mut *r, path)?;
    }
    Ok((count, raw.into_iter().map(u32::from).collect()))
}

/// Reads an IDX image file (magic 0x00000803, u8 pixels) and optional IDX label file
/// (0x00000801); gz or plain, detected by magic bytes (1f 8b) not extension.
/// `limit` = read at most this many images.
pub fn load_idx(images: &Path, labels: Option<&Path>, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    let mut r = open_maybe_gz(images)?;
    let dims = read_header(&mut *r, images, 3)?;
    let (total, h, w) = (dims[0], dims[1], dims[2]);
    let (c, oh, ow) =
        pre.output_shape(h, w).map_err(|reason| DataError::Preprocess { path: images.to_path_buf(), reason })?;
    let n = limit.map_or(total, |l| l.min(total));
    let hw = h
        .checked_mul(w)
        .filter(|&hw| hw.checked_mul(total).is_some())
        .ok_or_else(|| idx_err(images, format!("IDX header size {total}x{h}x{w} is too large")))?;
    // The pixels and the preprocessed floats, checked against the memory limit before reading:
    // a small gzip file can claim (and hold) gigabytes.
    let need = [c, oh, ow, 4]
        .iter()
        .try_fold(n, |a, &d| a.checked_mul(d))
        .and_then(|f| f.checked_add(n * hw))
        .unwrap_or(usize::MAX);
    lowbit_core::limits::check_memory(&format!("{n} image(s) of {h}x{w}"), need)
        .map_err(|e| idx_err(images, e.to_string()))?;
    let pixels = read_up_to(&mut *r, n * hw, images, &format!("pixels of {total}x{h}x{w} images"))?;
    if pixels.len() < n * hw {
        return Err(idx_err(
            images,
            format!("truncated IDX file: header says {total}x{h}x{w} but only {} bytes of pixels", pixels.len()),
        ));
    }
    if n == total {
        check_end(&mut *r, images)?;
    }
    drop(r);

    let labels = match labels {
        None => None,
        Some(lp) => {
            let (count, l) = read_labels(lp, n)?;
            if count != total {
                return Err(DataError::Labels {
                    path: lp.to_path_buf(),
                    reason: format!("has {count} labels but {} has {total} images", images.display()),
                });
            }
            Some(l)
        }
    };

    let mut data = Vec::with_capacity(n * c * oh * ow);
    if hw > 0 {
        for img in pixels.chunks_exact(hw) {
            pre.apply_at(images, img, 1, h, w, &mut data)?;
        }
    }
    Ok(ImageSet {
        n,
        c,
        h: oh,
        w: ow,
        data,
        labels,
        names: (0..n).map(|i| format!("idx:{i}")).collect(),
        source: images.display().to_string(),
    })
}

/// Whether a file name looks like an IDX image / label file (`*images-idx3-ubyte[.gz]`).
fn is_idx_name(name: &str, stem: &str) -> bool {
    let name = name.strip_suffix(".gz").unwrap_or(name);
    name.ends_with(stem)
}

pub(crate) fn is_idx_images_name(name: &str) -> bool {
    is_idx_name(name, "images-idx3-ubyte")
}

/// The label file belonging to an image file: same name with `images-idx3` replaced by
/// `labels-idx1`, with or without `.gz`, if such a file exists.
pub(crate) fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    if !name.contains("images-idx3") {
        return None;
    }
    let label_name = name.replace("images-idx3", "labels-idx1");
    let base = label_name.strip_suffix(".gz").unwrap_or(&label_name).to_string();
    [label_name, base.clone(), format!("{base}.gz")].into_iter().map(|n| images.with_file_name(n)).find(|p| p.is_file())
}

/// File names (sorted) in `dir` that satisfy `keep`.
pub(crate) fn list_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, "cannot list folder", e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, "cannot list folder", e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if keep(name) && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// A folder holding MNIST-style files: finds `*images-idx3-ubyte[.gz]` and
/// `*labels-idx1-ubyte[.gz]`. If several image files exist (train-*/t10k-*), picks by split
/// (Test -> t10k*/test*, Train -> train*). Labels are optional (missing -> labels None).
pub fn load_idx_dir(dir: &Path, split: Split, pre: &Preprocess, limit: Option<usize>) -> Result<ImageSet> {
    if !dir.exists() {
        return Err(DataError::NotFound { path: dir.to_path_buf() });
    }
    if !dir.is_dir() {
        return Err(DataError::Layout { path: dir.to_path_buf(), reason: "not a folder".into() });
    }
    let all = list_files(dir, is_idx_images_name)?;
    let images = pick_images(dir, &all, split)?;
    let labels = sibling_labels(&images);
    load_idx(&images, labels.as_deref(), pre, limit)
}

/// Chooses the image file for `split` among `all` (sorted by name). A plain and a gzipped copy of
/// the same file count as one (the plain one is used); a single file is used whatever its name.
fn pick_images(dir: &Path, all: &[PathBuf], split: Split) -> Result<PathBuf> {
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = |p: &PathBuf| {
        let n = name(p);
        n.strip_suffix(".gz").map(str::to_string).unwrap_or(n)
    };
    let list = |v: &[&PathBuf]| v.iter().map(|p| name(p)).collect::<Vec<_>>().join(", ");
    let mut files: Vec<&PathBuf> = all.iter().collect();
    // Sorted by name, so a plain file comes right before its .gz twin.
    files.dedup_by(|b, a| stem(a) == stem(b));
    let pattern = match split {
        Split::Train => "train*",
        Split::Test => "t10k* or test*",
    };
    let reason = match files.as_slice() {
        [] => "no IDX image file (*images-idx3-ubyte[.gz]) in this folder".to_string(),
        [one] => return Ok((*one).clone()),
        several => {
            let matching: Vec<&PathBuf> = several.iter().copied().filter(|p| split.matches(&name(p))).collect();
            match matching.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {
                    format!("cannot choose the {split:?} IDX image file: none of {} is named {pattern}", list(several))
                }
                _ => format!("cannot choose the {split:?} IDX image file: {} all match {pattern}", list(&matching)),
            }
        }
    };
    Err(DataError::Layout { path: dir.to_path_buf(), reason })
}

fn write_idx(path: &Path, ndims: u8, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    let mut header = vec![0, 0, IDX_U8, ndims];
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| idx_err(path, format!("cannot write IDX: dimension {d} does not fit in u32")))?;
        header.extend_from_slice(&d.to_be_bytes());
    }
    let io = |e| DataError::io(path, "cannot write", e);
    let file = BufWriter::new(File::create(path).map_err(io)?);
    if gzip {
        let mut gz = GzEncoder::new(file, Compression::default());
        gz.write_all(&header).map_err(io)?;
        gz.write_all(data).map_err(io)?;
        gz.finish().map_err(io)?.flush().map_err(io)
    } else {
        let mut file = file;
        file.write_all(&header).map_err(io)?;
        file.write_all(data).map_err(io)?;
        file.flush().map_err(io)
    }
}

/// Writes `n` u8 images of `h` x `w` (row-major, image after image) as an IDX image file
/// (magic 0x00000803), gzip-compressed if `gzip`.
pub fn write_idx_images(path: &Path, images: &[u8], n: usize, h: usize, w: usize, gzip: bool) -> Result<()> {
    let want = n.checked_mul(h).and_then(|x| x.checked_mul(w));
    if want != Some(images.len()) {
        return Err(idx_err(
            path,
            format!("cannot write IDX: {} bytes of pixels given for {n}x{h}x{w} images", images.len()),
        ));
    }
    write_idx(path, 3, &[n, h, w], images, gzip)
}

/// Writes u8 labels as an IDX label file (magic 0x00000801), gzip-compressed if `gzip`.
pub fn write_idx_labels(path: &Path, labels: &[u8], gzip: bool) -> Result<()> {
    write_idx(path, 1, &[labels.len()], labels, gzip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    /// `n` images of h x w with pixel value (i*7 + p) mod 256, and labels i mod 10.
    fn sample(n: usize, h: usize, w: usize) -> (Vec<u8>, Vec<u8>) {
        let px = (0..n * h * w).map(|p| ((p / (h * w)) * 7 + p % (h * w)) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        (px, labels)
    }

    fn raw() -> Preprocess {
        Preprocess::none()
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let tmp = TempDir::new("idx-roundtrip");
        let (px, labels) = sample(5, 3, 4);
        for gzip in [false, true] {
            let ip = tmp.join(&format!("x{gzip}-images-idx3-ubyte"));
            let lp = tmp.join(&format!("x{gzip}-labels-idx1-ubyte"));
            write_idx_images(&ip, &px, 5, 3, 4, gzip).expect("write images");
            write_idx_labels(&lp, &labels, gzip).expect("write labels");
            let head = fs::read(&ip).expect("written");
            assert_eq!(head.starts_with(&GZIP_MAGIC), gzip);
            let set = load_idx(&ip, Some(&lp), &raw(), None).expect("load");
            assert_eq!(set.shape(), [5, 1, 3, 4]);
            assert_eq!(set.data, px.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
            assert_eq!(set.labels, Some(vec![0, 1, 2, 3, 4]));
            assert_eq!(set.names[4], "idx:4");
            assert_eq!(set.source, ip.display().to_string());
        }
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let tmp = TempDir::new("idx-magic");
        let (px, _) = sample(2, 2, 2);
        let gz_named_plain = tmp.join("plain.gz");
        let plain_named_gz = tmp.join("compressed.bin");
        write_idx_images(&gz_named_plain, &px, 2, 2, 2, false).expect("write");
        write_idx_images(&plain_named_gz, &px, 2, 2, 2, true).expect("write");
        for p in [&gz_named_plain, &plain_named_gz] {
            let set = load_idx(p, None, &raw(), None).expect("load");
            assert_eq!(set.data.len(), 8);
            assert_eq!(set.labels, None);
        }
    }

    #[test]
    fn limit_reads_only_the_first_images() {
        let tmp = TempDir::new("idx-limit");
        let (px, labels) = sample(10, 2, 3);
        let ip = tmp.join("images-idx3-ubyte.gz");
        let lp = tmp.join("labels-idx1-ubyte.gz");
        write_idx_images(&ip, &px, 10, 2, 3, true).expect("write");
        write_idx_labels(&lp, &labels, true).expect("write");
        let set = load_idx(&ip, Some(&lp), &raw(), Some(4)).expect("load");
        assert_eq!(set.n, 4);
        assert_eq!(set.data.len(), 4 * 6);
        assert_eq!(set.image(3)[0], f32::from(px[3 * 6]));
        assert_eq!(set.labels, Some(vec![0, 1, 2, 3]));
        assert_eq!(load_idx(&ip, None, &raw(), Some(99)).expect("load").n, 10);
        assert_eq!(load_idx(&ip, None, &raw(), Some(0)).expect("load").n, 0);
    }

    #[test]
    fn preprocessing_is_applied() {
        let tmp = TempDir::new("idx-pre");
        let ip = tmp.join("i");
        write_idx_images(&ip, &[0, 255, 51, 102], 1, 2, 2, false).expect("write");
        let set = load_idx(&ip, None, &Preprocess::mnist(), None).expect("load");
        let want = [0.0f32, 1.0, 0.2, 0.4].map(|v| (v - 0.1307) / 0.3081);
        for (g, w) in set.data.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{:?} vs {want:?}", set.data);
        }
        // 3 channels: gray replicated
        let set = load_idx(&ip, None, &Preprocess { channels: 3, ..raw() }, None).expect("load");
        assert_eq!(set.shape(), [1, 3, 2, 2]);
        assert_eq!(&set.data[4..8], &[0.0, 255.0, 51.0, 102.0]);
    }

    #[test]
    fn truncated_files_are_errors_naming_the_path() {
        let tmp = TempDir::new("idx-trunc");
        let (px, labels) = sample(4, 5, 5);
        let full = tmp.join("full-images-idx3-ubyte");
        write_idx_images(&full, &px, 4, 5, 5, false).expect("write");
        let bytes = fs::read(&full).expect("read back");

        let cut = tmp.join("cut-images-idx3-ubyte");
        fs::write(&cut, &bytes[..16 + 30]).expect("write");
        let msg = load_idx(&cut, None, &raw(), None).expect_err("truncated").to_string();
        assert!(msg.starts_with(&cut.display().to_string()), "{msg}");
        assert!(msg.contains("truncated IDX file: header says 4x5x5 but only 30 bytes of pixels"), "{msg}");
        // with a limit that fits in what is there, the file is fine
        assert_eq!(load_idx(&cut, None, &raw(), Some(1)).expect("1 image fits").n, 1);

        let header_cut = tmp.join("hdr");
        fs::write(&header_cut, &bytes[..9]).expect("write");
        let msg = load_idx(&header_cut, None, &raw(), None).expect_err("truncated").to_string();
        assert!(msg.contains("hdr") && msg.contains("truncated"), "{msg}");

        let empty = tmp.join("empty");
        fs::write(&empty, b"").expect("write");
        let msg = load_idx(&empty, None, &raw(), None).expect_err("empty").to_string();
        assert!(msg.contains("empty") && msg.contains("only 0 bytes"), "{msg}");

        // truncated gzip stream
        let gz = tmp.join("full.gz");
        write_idx_images(&gz, &px, 4, 5, 5, true).expect("write");
        let gz_bytes = fs::read(&gz).expect("read back");
        let gz_cut = tmp.join("cut.gz");
        fs::write(&gz_cut, &gz_bytes[..gz_bytes.len() / 2]).expect("write");
        let msg = load_idx(&gz_cut, None, &raw(), None).expect_err("truncated gzip").to_string();
        assert!(msg.starts_with(&gz_cut.display().to_string()), "{msg}");

        // a gzip file whose checksum (the trailer's first 4 bytes) is wrong
        let mut bad = gz_bytes.clone();
        let at = bad.len() - 8;
        bad[at] ^= 0xff;
        let gz_crc = tmp.join("crc.gz");
        fs::write(&gz_crc, &bad).expect("write");
        let msg = load_idx(&gz_crc, None, &raw(), None).expect_err("bad crc").to_string();
        assert!(msg.starts_with(&gz_crc.display().to_string()) && msg.contains("corrupt"), "{msg}");

        // truncated labels
        let lp = tmp.join("labels");
        write_idx_labels(&lp, &labels, false).expect("write");
        let lbytes = fs::read(&lp).expect("read back");
        fs::write(&lp, &lbytes[..lbytes.len() - 1]).expect("write");
        let msg = load_idx(&full, Some(&lp), &raw(), None).expect_err("short labels").to_string();
        assert!(msg.contains("labels") && msg.contains("truncated IDX file: header says 4 labels"), "{msg}");
    }

    #[test]
    fn wrong_magic_is_an_error() {
        let tmp = TempDir::new("idx-magic-bad");
        let ip = tmp.join("images");
        let lp = tmp.join("labels");
        write_idx_images(&ip, &[1, 2, 3, 4], 1, 2, 2, false).expect("write");
        write_idx_labels(&lp, &[1], false).expect("write");

        let msg = load_idx(&lp, None, &raw(), None).expect_err("label file as images").to_string();
        assert!(msg.contains("labels: not an IDX image file: magic 0x00000801 (that is an IDX label file)"), "{msg}");
        let msg = load_idx(&ip, Some(&ip), &raw(), None).expect_err("image file as labels").to_string();
        assert!(msg.contains("not an IDX label file"), "{msg}");

        let junk = tmp.join("junk.png");
        fs::write(&junk, b"\x89PNG\r\n\x1a\n0000000000").expect("write");
        let msg = load_idx(&junk, None, &raw(), None).expect_err("png").to_string();
        assert!(msg.contains("junk.png: not an IDX image file: magic 0x89504e47"), "{msg}");

        let floats = tmp.join("floats");
        fs::write(&floats, [0, 0, 0x0d, 3, 0, 0, 0, 0]).expect("write");
        let msg = load_idx(&floats, None, &raw(), None).expect_err("f32 idx").to_string();
        assert!(msg.contains("non-u8"), "{msg}");
    }

    #[test]
    fn label_count_mismatch_is_an_error() {
        let tmp = TempDir::new("idx-count");
        let ip = tmp.join("i");
        let lp = tmp.join("l");
        write_idx_images(&ip, &[0; 12], 3, 2, 2, false).expect("write");
        write_idx_labels(&lp, &[1, 2], false).expect("write");
        let msg = load_idx(&ip, Some(&lp), &raw(), None).expect_err("2 labels for 3 images").to_string();
        assert!(msg.contains("has 2 labels but") && msg.contains("has 3 images"), "{msg}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let tmp = TempDir::new("idx-missing");
        let p = tmp.join("nope-images-idx3-ubyte.gz");
        let err = load_idx(&p, None, &raw(), None).expect_err("missing");
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{}: not found", p.display()));
    }

    #[test]
    fn writer_rejects_wrong_length() {
        let tmp = TempDir::new("idx-wlen");
        let err = write_idx_images(&tmp.join("w"), &[0; 5], 2, 2, 2, false).expect_err("5 != 8");
        assert!(err.to_string().contains("5 bytes of pixels given for 2x2x2"), "{err}");
    }

    #[test]
    fn dir_picks_split_and_labels() {
        let tmp = TempDir::new("idx-dir");
        write_idx_images(&tmp.join("train-images-idx3-ubyte.gz"), &[1; 3 * 4], 3, 2, 2, true).expect("write");
        write_idx_labels(&tmp.join("train-labels-idx1-ubyte.gz"), &[7, 8, 9], true).expect("write");
        write_idx_images(&tmp.join("t10k-images-idx3-ubyte"), &[2; 2 * 4], 2, 2, 2, false).expect("write");
        fs::write(tmp.join("README"), "not idx").expect("write");

        let train = load_idx_dir(tmp.path(), Split::Train, &raw(), None).expect("train");
        assert_eq!((train.n, train.data[0]), (3, 1.0));
        assert_eq!(train.labels, Some(vec![7, 8, 9]));
        let test = load_idx_dir(tmp.path(), Split::Test, &raw(), None).expect("test");
        assert_eq!((test.n, test.data[0]), (2, 2.0));
        assert_eq!(test.labels, None, "no t10k labels file");
        // limit
        assert_eq!(load_idx_dir(tmp.path(), Split::Train, &raw(), Some(1)).expect("train").n, 1);
    }

    #[test]
    fn dir_with_one_unprefixed_file_ignores_split() {
        let tmp = TempDir::new("idx-dir-one");
        write_idx_images(&tmp.join("images-idx3-ubyte.gz"), &[5; 4], 1, 2, 2, true).expect("write");
        write_idx_labels(&tmp.join("labels-idx1-ubyte.gz"), &[3], true).expect("write");
        for split in [Split::Train, Split::Test] {
            let set = load_idx_dir(tmp.path(), split, &raw(), None).expect("load");
            assert_eq!(set.labels, Some(vec![3]));
        }
    }

    #[test]
    fn dir_plain_and_gz_twins_count_once() {
        let tmp = TempDir::new("idx-dir-twins");
        for gz in ["", ".gz"] {
            write_idx_images(&tmp.join(format!("t10k-images-idx3-ubyte{gz}")), &[5; 4], 1, 2, 2, !gz.is_empty())
                .expect("write");
        }
        write_idx_images(&tmp.join("train-images-idx3-ubyte"), &[5; 4], 1, 2, 2, false).expect("write");
        let set = load_idx_dir(tmp.path(), Split::Test, &raw(), None).expect("one test file");
        assert_eq!(set.source, tmp.join("t10k-images-idx3-ubyte").display().to_string());
    }

    #[test]
    fn dir_errors() {
        let tmp = TempDir::new("idx-dir-err");
        let msg = load_idx_dir(tmp.path(), Split::Test, &raw(), None).expect_err("empty").to_string();
        assert!(msg.contains("no IDX image file"), "{msg}");

        write_idx_images(&tmp.join("a-images-idx3-ubyte"), &[0; 4], 1, 2, 2, false).expect("write");
        write_idx_images(&tmp.join("b-images-idx3-ubyte"), &[0; 4], 1, 2, 2, false).expect("write");
        let msg = load_idx_dir(tmp.path(), Split::Test, &raw(), None).expect_err("ambiguous").to_string();
        assert!(msg.starts_with(&tmp.path().display().to_string()), "{msg}");
        assert!(msg.contains("a-images-idx3-ubyte, b-images-idx3-ubyte"), "{msg}");

        let msg = load_idx_dir(&tmp.join("gone"), Split::Test, &raw(), None).expect_err("missing").to_string();
        assert!(msg.ends_with("gone: not found"), "{msg}");
    }

    #[test]
    fn split_parses() {
        assert_eq!("TEST".parse::<Split>(), Ok(Split::Test));
        assert_eq!("train".parse::<Split>(), Ok(Split::Train));
        assert!("val".parse::<Split>().is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn any_u8_images_round_trip(
                (n, h, w, px) in (0usize..6, 1usize..7, 1usize..7)
                    .prop_flat_map(|(n, h, w)| (Just(n), Just(h), Just(w), prop::collection::vec(any::<u8>(), n * h * w))),
                labels_seed in any::<u8>(),
                gzip in any::<bool>(),
            ) {
                let tmp = TempDir::new("idx-prop");
                let ip = tmp.join("i");
                let lp = tmp.join("l");
                let labels: Vec<u8> = (0..n).map(|i| labels_seed.wrapping_add(i as u8)).collect();
                write_idx_images(&ip, &px, n, h, w, gzip).expect("write");
                write_idx_labels(&lp, &labels, gzip).expect("write");
                let set = load_idx(&ip, Some(&lp), &raw(), None).expect("load");
                prop_assert_eq!(set.shape(), [n, 1, h, w]);
                prop_assert_eq!(set.data, px.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
                prop_assert_eq!(set.labels, Some(labels.iter().map(|&l| u32::from(l)).collect()));
            }
        }
    }
}
