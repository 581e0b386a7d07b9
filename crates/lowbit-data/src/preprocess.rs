//! Turning decoded u8 pixels into normalized CHW f32 tensors.

use std::borrow::Cow;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb};

use crate::error::{DataError, Result};

/// How raw u8 pixels become model input.
///
/// The steps run in this order:
/// 1. convert to `channels` (1 = grayscale, 3 = RGB); gray is replicated to RGB, RGB becomes gray
///    with Pillow's `convert("L")` formula (0.299 R + 0.587 G + 0.114 B, rounded), alpha is dropped;
/// 2. resize: to exactly `resize_exact` (h, w) ignoring aspect ratio, or else so that the shorter
///    side equals `resize_shorter` (the longer side is scaled and truncated, as torchvision does);
///    both use the `image` crate's bilinear (`Triangle`) filter on u8 pixels;
///    with `letterbox` the resize keeps the aspect ratio (fits inside `resize_exact`) and the image is
///    centred on a canvas of the pad value; `multiple` rounds the size (or, letterboxed, pads it) to
///    a multiple;
/// 3. center crop to `crop` (h, w) — an image smaller than the crop is an error, a larger one is
///    just cropped (no implicit resize);
/// 4. `(pixel * scale - mean[c]) / std[c]`, written in CHW order.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// 1 = grayscale, 3 = RGB; images are converted to this.
    pub channels: usize,
    /// Resize so the shorter side equals this, before cropping.
    pub resize_shorter: Option<usize>,
    /// Resize to exactly (h, w), ignoring aspect ratio, before cropping. Excludes `resize_shorter`.
    pub resize_exact: Option<(usize, usize)>,
    /// Center crop (h, w).
    pub crop: Option<(usize, usize)>,
    /// Multiplies the u8 pixel first (usually 1/255).
    pub scale: f32,
    /// Per-channel mean (len == channels, or len 1 to broadcast).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (len == channels, or len 1 to broadcast).
    pub std: Vec<f32>,
    /// Write 3-channel images in B, G, R order (mean/std are then in that order too).
    pub bgr: bool,
    /// Letterbox with this pixel value: the resize keeps the aspect ratio and fits the image inside
    /// `resize_exact`, the image is centred and the rest filled with the value (as detectors are
    /// fed); with `multiple` and no `resize_exact`, the image keeps its size and is padded up to the
    /// next multiple.
    pub letterbox: Option<u8>,
    /// Round the size after the resize step to a multiple of this (detector strides): each side to
    /// the nearest multiple (at least one), or with `letterbox` padded up to the next one.
    pub multiple: Option<usize>,
    /// Image files become this many deterministic square views each before the steps above
    /// ([`crop_views`]): more ImageNet-style evaluation images from a few full-size photos.
    pub crops: Option<usize>,
}

/// The first `n` square views `(top, left, side)` of an `h` x `w` image, in a fixed order: level
/// `L = 0, 1, 2, ...` has sides `0.8^L` of the shorter side at `(L + 1)²` positions spread evenly
/// over the image (level 0: the centred largest square), so 1, 5, 14, 30, 55, 91 views cover levels
/// 0-5. Views are at least 16 pixels; the same image and `n` give the same views on every machine.
pub fn crop_views(h: usize, w: usize, n: usize) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::with_capacity(n);
    let short = h.min(w);
    let mut level = 0i32;
    while v.len() < n && level < 64 {
        let side = ((short as f64) * 0.8f64.powi(level)).round().max(16.0).min(short as f64) as usize;
        let k = level as usize + 1;
        let at = |free: usize, i: usize| if k == 1 { free / 2 } else { (free * i + (k - 1) / 2) / (k - 1) };
        for iy in 0..k {
            for ix in 0..k {
                if v.len() < n {
                    v.push((at(h - side, iy), at(w - side, ix), side));
                }
            }
        }
        level += 1;
    }
    v
}

/// Placeholder path used in errors from [`Preprocess::apply_u8`], which has no file to name.
const IN_MEMORY: &str = "<in-memory image>";

impl Preprocess {
    /// Names accepted by [`Preprocess::by_name`].
    pub const NAMES: [&'static str; 5] = ["imagenet", "mnist", "fmnist", "ppocr", "none"];

    /// ImageNet classifiers: RGB, center crop 224x224, torchvision mean/std.
    pub fn imagenet() -> Self {
        Preprocess {
            channels: 3,
            resize_shorter: None,
            resize_exact: None,
            crop: Some((224, 224)),
            scale: 1.0 / 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            bgr: false,
            letterbox: None,
            multiple: None,
            crops: None,
        }
    }

    /// MNIST digits: grayscale, mean 0.1307, std 0.3081.
    pub fn mnist() -> Self {
        Self::gray(0.1307, 0.3081)
    }

    /// Fashion-MNIST: grayscale, mean 0.2860, std 0.3530.
    pub fn fmnist() -> Self {
        Self::gray(0.2860, 0.3530)
    }

    /// PaddleOCR recognition models: RGB resized to exactly 48x192, mapped to [-1, 1].
    pub fn ppocr() -> Self {
        Preprocess {
            channels: 3,
            resize_shorter: None,
            resize_exact: Some((48, 192)),
            crop: None,
            scale: 1.0 / 255.0,
            mean: vec![0.5],
            std: vec![0.5],
            bgr: false,
            letterbox: None,
            multiple: None,
            crops: None,
        }
    }

    /// No normalization: grayscale, raw 0..255 values as f32.
    pub fn none() -> Self {
        Preprocess {
            channels: 1,
            resize_shorter: None,
            resize_exact: None,
            crop: None,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            bgr: false,
            letterbox: None,
            multiple: None,
            crops: None,
        }
    }

    fn gray(mean: f32, std: f32) -> Self {
        Preprocess {
            channels: 1,
            resize_shorter: None,
            resize_exact: None,
            crop: None,
            scale: 1.0 / 255.0,
            mean: vec![mean],
            std: vec![std],
            bgr: false,
            letterbox: None,
            multiple: None,
            crops: None,
        }
    }

    /// One of [`Preprocess::NAMES`] (case-insensitive); `fashion-mnist` is accepted for `fmnist`.
    pub fn by_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "imagenet" => Some(Self::imagenet()),
            "mnist" => Some(Self::mnist()),
            "fmnist" | "fashion-mnist" | "fashion_mnist" => Some(Self::fmnist()),
            "ppocr" => Some(Self::ppocr()),
            "none" => Some(Self::none()),
            _ => None,
        }
    }

    /// Checks the settings themselves; the message says which field is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels != 1 && self.channels != 3 {
            return Err(format!("preprocessing: channels must be 1 or 3, not {}", self.channels));
        }
        for (field, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != self.channels {
                return Err(format!("preprocessing: {field} has {} values, expected 1 or {}", v.len(), self.channels));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("preprocessing: {field} {v:?} is not finite"));
            }
        }
        if self.std.iter().any(|&s| s == 0.0) {
            return Err(format!("preprocessing: std {:?} contains 0", self.std));
        }
        if !self.scale.is_finite() {
            return Err(format!("preprocessing: scale {} is not finite", self.scale));
        }
        if self.resize_shorter.is_some() && self.resize_exact.is_some() {
            return Err("preprocessing: resize_shorter and resize_exact are both set".into());
        }
        if self.multiple.is_some_and(|m| m == 0 || m > 4096) {
            return Err(format!("preprocessing: multiple {} is outside 1..=4096", self.multiple.unwrap_or(0)));
        }
        if self.crops.is_some_and(|n| n == 0 || n > 1000) {
            return Err(format!("preprocessing: crops {} is outside 1..=1000", self.crops.unwrap_or(0)));
        }
        if self.letterbox.is_some() && self.resize_exact.is_none() && self.multiple.is_none() {
            return Err(
                "preprocessing: letterbox needs a size to fit into (resize_exact) or a multiple to pad to".into()
            );
        }
        let zero = |d: Option<(usize, usize)>| d.is_some_and(|(h, w)| h == 0 || w == 0);
        if self.resize_shorter == Some(0) || zero(self.resize_exact) || zero(self.crop) {
            return Err("preprocessing: resize/crop sizes must be positive".into());
        }
        Ok(())
    }

    /// The (c, h, w) an input image of size `h` x `w` becomes, or why it cannot be processed.
    pub fn output_shape(&self, h: usize, w: usize) -> std::result::Result<(usize, usize, usize), String> {
        self.validate()?;
        if h == 0 || w == 0 {
            return Err(format!("image is empty ({h}x{w})"));
        }
        let (rh, rw) = self.resized_size(h, w);
        if rh.checked_mul(rw).and_then(|v| v.checked_mul(self.channels)).is_none_or(|v| v > 1 << 31) {
            return Err(format!("image is {h}x{w}, to be resized to {rh}x{rw}: too large"));
        }
        match self.crop {
            Some((ch, cw)) if ch > rh || cw > rw => Err(if (rh, rw) == (h, w) {
                format!("image is {h}x{w}, smaller than the {ch}x{cw} center crop")
            } else {
                format!("image is {h}x{w}, resized to {rh}x{rw}, smaller than the {ch}x{cw} center crop")
            }),
            Some((ch, cw)) => Ok((self.channels, ch, cw)),
            None => Ok((self.channels, rh, rw)),
        }
    }

    /// Size after the resize step (before cropping).
    fn resized_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.resize_plan(h, w).1
    }

    /// The resize step: the size the image is resized to, and the canvas it is placed on (the
    /// same unless letterboxed).
    fn resize_plan(&self, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
        let base = if let Some(hw) = self.resize_exact {
            hw
        } else {
            match self.resize_shorter {
                // Same rule as torchvision's Resize(int): the long side is scaled and truncated.
                Some(s) if h <= w => (s, (s * w / h).max(1)),
                Some(s) => ((s * h / w).max(1), s),
                None => (h, w),
            }
        };
        let (mut content, mut canvas) = (base, base);
        if self.letterbox.is_some() && self.resize_exact.is_some() {
            // Fit inside the canvas, keeping the aspect ratio (rounded as the usual letterbox does).
            let s = (base.0 as f64 / h as f64).min(base.1 as f64 / w as f64);
            let fit = |v: usize, lim: usize| ((v as f64 * s).round() as usize).clamp(1, lim);
            content = (fit(h, base.0), fit(w, base.1));
        }
        if let Some(m) = self.multiple {
            if self.letterbox.is_some() {
                canvas = (canvas.0.div_ceil(m) * m, canvas.1.div_ceil(m) * m);
            } else {
                let near = |v: usize| ((v + m / 2) / m).max(1) * m;
                content = (near(content.0), near(content.1));
                canvas = content;
            }
        }
        (content, canvas)
    }

    /// Preprocesses one HWC-interleaved u8 image with `c` channels (1, 2 = gray+alpha, 3, 4 = RGBA)
    /// and appends the CHW f32 result to `out`. Returns the output (c, h, w).
    ///
    /// Errors (nothing is appended then) if the pixel count does not match `c*h*w`, the channel
    /// count cannot be converted, or the image is smaller than the crop.
    pub fn apply_u8(
        &self,
        pixels: &[u8],
        c: usize,
        h: usize,
        w: usize,
        out: &mut Vec<f32>,
    ) -> Result<(usize, usize, usize)> {
        self.apply_at(Path::new(IN_MEMORY), pixels, c, h, w, out)
    }

    /// [`Preprocess::apply_u8`] with errors naming `path`.
    pub(crate) fn apply_at(
        &self,
        path: &Path,
        pixels: &[u8],
        c: usize,
        h: usize,
        w: usize,
        out: &mut Vec<f32>,
    ) -> Result<(usize, usize, usize)> {
        self.apply_inner(pixels, c, h, w, out)
            .map_err(|reason| DataError::Preprocess { path: path.to_path_buf(), reason })
    }

    fn apply_inner(
        &self,
        pixels: &[u8],
        c: usize,
        h: usize,
        w: usize,
        out: &mut Vec<f32>,
    ) -> std::result::Result<(usize, usize, usize), String> {
        let (oc, oh, ow) = self.output_shape(h, w)?;
        let expected = c
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .ok_or_else(|| format!("image size {c}x{h}x{w} overflows"))?;
        if pixels.len() != expected {
            return Err(format!(
                "{} bytes of pixels for a {h}x{w} image with {c} channels (expected {expected})",
                pixels.len()
            ));
        }
        let px = convert_channels(pixels, c, oc)?;
        let ((ih, iw), (rh, rw)) = self.resize_plan(h, w);
        let px = if (ih, iw) == (h, w) { px } else { Cow::Owned(resize(&px, oc, h, w, ih, iw)?) };
        let px = match self.letterbox {
            Some(pad) if (ih, iw) != (rh, rw) => Cow::Owned(letterbox(&px, oc, (ih, iw), (rh, rw), pad)),
            _ => px,
        };
        // Center crop offsets (floor of half the excess); zero when there is no crop.
        let top = (rh - oh) / 2;
        let left = (rw - ow) / 2;
        out.reserve(oc * oh * ow);
        for ch in 0..oc {
            // Output channel `ch` reads source channel `src` (reversed for BGR).
            let src = if self.bgr && oc == 3 { 2 - ch } else { ch };
            let mean = self.mean[if self.mean.len() == 1 { 0 } else { ch }];
            let std = self.std[if self.std.len() == 1 { 0 } else { ch }];
            for y in top..top + oh {
                let row = &px[(y * rw + left) * oc..(y * rw + left + ow) * oc];
                out.extend(row.iter().skip(src).step_by(oc).map(|&v| (f32::from(v) * self.scale - mean) / std));
            }
        }
        Ok((oc, oh, ow))
    }
}

/// HWC pixels of an `ih`×`iw` image centred on an `rh`×`rw` canvas of `pad`.
fn letterbox(px: &[u8], c: usize, (ih, iw): (usize, usize), (rh, rw): (usize, usize), pad: u8) -> Vec<u8> {
    let mut out = vec![pad; rh * rw * c];
    let (top, left) = ((rh - ih) / 2, (rw - iw) / 2);
    for y in 0..ih {
        let d = ((top + y) * rw + left) * c;
        out[d..d + iw * c].copy_from_slice(&px[y * iw * c..(y + 1) * iw * c]);
    }
    out
}

/// Luma as Pillow's `convert("L")` computes it (ITU-R 601-2 weights 0.299/0.587/0.114 in 16-bit
/// fixed point, rounded), so grayscale models see what torchvision/PIL pipelines feed them.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 0x8000) >> 16) as u8
}

/// HWC pixels with `from` channels to HWC pixels with `to` (1 or 3) channels; alpha is dropped.
fn convert_channels(px: &[u8], from: usize, to: usize) -> std::result::Result<Cow<'_, [u8]>, String> {
    Ok(match (from, to) {
        (a, b) if a == b => Cow::Borrowed(px),
        (1, 3) => Cow::Owned(px.iter().flat_map(|&v| [v, v, v]).collect()),
        (2, 1) => Cow::Owned(px.chunks_exact(2).map(|p| p[0]).collect()),
        (2, 3) => Cow::Owned(px.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect()),
        (3 | 4, 1) => Cow::Owned(px.chunks_exact(from).map(|p| luma(p[0], p[1], p[2])).collect()),
        (4, 3) => Cow::Owned(px.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
        _ => return Err(format!("cannot convert a {from}-channel image to {to} channels")),
    })
}

/// Bilinear (`Triangle`) resize of HWC u8 pixels with 1 or 3 channels.
fn resize(px: &[u8], c: usize, h: usize, w: usize, nh: usize, nw: usize) -> std::result::Result<Vec<u8>, String> {
    let dim = |v: usize| u32::try_from(v).map_err(|_| format!("image dimension {v} is too large"));
    let (h, w, nh, nw) = (dim(h)?, dim(w)?, dim(nh)?, dim(nw)?);
    let bad = || "pixel buffer does not match the image size".to_string();
    match c {
        1 => {
            let img = ImageBuffer::<Luma<u8>, &[u8]>::from_raw(w, h, px).ok_or_else(bad)?;
            Ok(imageops::resize(&img, nw, nh, FilterType::Triangle).into_raw())
        }
        3 => {
            let img = ImageBuffer::<Rgb<u8>, &[u8]>::from_raw(w, h, px).ok_or_else(bad)?;
            Ok(imageops::resize(&img, nw, nh, FilterType::Triangle).into_raw())
        }
        _ => Err(format!("cannot resize a {c}-channel image")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views are deterministic, inside the image, square, in level order (largest first), and the
    /// count asked for; a wide image's level-0 view is centred.
    #[test]
    fn crop_views_cover_levels_in_order() {
        let v = crop_views(480, 640, 36);
        assert_eq!(v.len(), 36);
        assert_eq!(v, crop_views(480, 640, 36));
        assert_eq!(v[0], (0, 80, 480));
        assert!(v.iter().all(|&(t, l, s)| t + s <= 480 && l + s <= 640 && s >= 16));
        assert!(v.windows(2).all(|p| p[0].2 >= p[1].2), "sides shrink level by level");
        // Level 1: four views of side 384 at the corners.
        assert_eq!(&v[1..5], &[(0, 0, 384), (0, 256, 384), (96, 0, 384), (96, 256, 384)]);
        assert_eq!(crop_views(20, 20, 3).len(), 3);
        let small = crop_views(20, 20, 100);
        assert!(
            small.len() == 100 && small.iter().all(|&(t, l, s)| (16..=20).contains(&s) && t + s <= 20 && l + s <= 20)
        );
        assert_eq!(crop_views(10, 12, 2), [(0, 1, 10), (0, 0, 10)]);
    }

    fn plain(channels: usize) -> Preprocess {
        Preprocess {
            channels,
            resize_shorter: None,
            resize_exact: None,
            crop: None,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            bgr: false,
            letterbox: None,
            multiple: None,
            crops: None,
        }
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "element {i}: got {g}, want {w} (all: {got:?})");
        }
    }

    #[test]
    fn tiny_rgb_hand_computed_chw() {
        // 2x2 RGB, HWC: (0,0)=(0,51,102) (0,1)=(153,204,255) (1,0)=(255,0,51) (1,1)=(102,153,204)
        let px = [0, 51, 102, 153, 204, 255, 255, 0, 51, 102, 153, 204];
        let pre = Preprocess { scale: 1.0 / 255.0, mean: vec![0.5, 0.25, 0.0], std: vec![0.5, 0.25, 2.0], ..plain(3) };
        let mut out = vec![42.0]; // apply_u8 appends
        let shape = pre.apply_u8(&px, 3, 2, 2, &mut out).expect("valid image");
        assert_eq!(shape, (3, 2, 2));
        #[rustfmt::skip]
        let want = [
            42.0,
            // R: (v/255 - 0.5) / 0.5 for 0, 153, 255, 102
            -1.0, 0.2, 1.0, -0.2,
            // G: (v/255 - 0.25) / 0.25 for 51, 204, 0, 153
            -0.2, 2.2, -1.0, 1.4,
            // B: (v/255) / 2 for 102, 255, 51, 204
            0.2, 0.5, 0.1, 0.4,
        ];
        assert_close(&out, &want);
    }

    #[test]
    fn bgr_reverses_the_channels_and_takes_mean_std_in_that_order() {
        // One pixel (R, G, B) = (10, 20, 30); mean/std are per output channel, i.e. B, G, R.
        let pre =
            Preprocess { scale: 1.0, mean: vec![30.0, 0.0, 0.0], std: vec![1.0, 2.0, 5.0], bgr: true, ..plain(3) };
        let mut out = Vec::new();
        pre.apply_u8(&[10, 20, 30], 3, 1, 1, &mut out).expect("valid image");
        assert_close(&out, &[0.0, 10.0, 2.0]);
        // Gray models are unaffected.
        let mut gray = Vec::new();
        Preprocess { bgr: true, ..plain(1) }.apply_u8(&[7], 1, 1, 1, &mut gray).expect("gray");
        assert_close(&gray, &[7.0]);
    }

    #[test]
    fn mean_std_broadcast_from_one_value() {
        let pre = Preprocess { scale: 2.0, mean: vec![1.0], std: vec![4.0], ..plain(3) };
        let mut out = Vec::new();
        pre.apply_u8(&[1, 2, 3], 3, 1, 1, &mut out).expect("valid image");
        assert_close(&out, &[0.25, 0.75, 1.25]);
    }

    #[test]
    fn center_crop_picks_the_middle() {
        // 4x4 gray, value = 10*y + x; crop 2x2 -> rows 1..3, cols 1..3
        let px: Vec<u8> = (0..4).flat_map(|y| (0..4).map(move |x| 10 * y + x)).collect();
        let pre = Preprocess { crop: Some((2, 2)), ..plain(1) };
        let mut out = Vec::new();
        assert_eq!(pre.apply_u8(&px, 1, 4, 4, &mut out).expect("fits"), (1, 2, 2));
        assert_close(&out, &[11.0, 12.0, 21.0, 22.0]);

        // 3x5 crop 1x3: row 1, cols 1..4
        let px: Vec<u8> = (0..3).flat_map(|y| (0..5).map(move |x| 10 * y + x)).collect();
        let pre = Preprocess { crop: Some((1, 3)), ..plain(1) };
        out.clear();
        pre.apply_u8(&px, 1, 3, 5, &mut out).expect("fits");
        assert_close(&out, &[11.0, 12.0, 13.0]);
    }

    #[test]
    fn center_crop_of_rgb_keeps_channels_apart() {
        // 3x3 RGB, pixel (y,x) = (y*3+x, 100+y*3+x, 200+y*3+x); crop 1x1 -> the center (4)
        let px: Vec<u8> = (0..9u8).flat_map(|i| [i, 100 + i, 200 + i]).collect();
        let pre = Preprocess { crop: Some((1, 1)), ..plain(3) };
        let mut out = Vec::new();
        pre.apply_u8(&px, 3, 3, 3, &mut out).expect("fits");
        assert_close(&out, &[4.0, 104.0, 204.0]);
    }

    #[test]
    fn crop_larger_than_image_is_an_error() {
        let mut out = Vec::new();
        let err = Preprocess::imagenet()
            .apply_u8(&[0; 3 * 100 * 100], 3, 100, 100, &mut out)
            .expect_err("100x100 cannot be cropped to 224x224");
        let msg = err.to_string();
        assert!(msg.contains("100x100") && msg.contains("224x224"), "{msg}");
        assert!(out.is_empty(), "nothing appended on error");
    }

    #[test]
    fn resize_shorter_then_crop() {
        let pre = Preprocess { resize_shorter: Some(4), crop: Some((4, 4)), ..plain(1) };
        assert_eq!(pre.output_shape(8, 16), Ok((1, 4, 4)));
        assert_eq!(pre.resized_size(8, 16), (4, 8));
        assert_eq!(pre.resized_size(30, 20), (6, 4));
        // A constant image stays constant through bilinear resize.
        let mut out = Vec::new();
        pre.apply_u8(&[77; 8 * 16], 1, 8, 16, &mut out).expect("fits");
        assert_close(&out, &[77.0; 16]);
    }

    #[test]
    fn resize_exact_ignores_aspect() {
        let pre = Preprocess::ppocr();
        assert_eq!(pre.output_shape(32, 100), Ok((3, 48, 192)));
        let mut out = Vec::new();
        // constant gray 255 -> (1 - 0.5) / 0.5 = 1 everywhere
        pre.apply_u8(&[255; 32 * 100], 1, 32, 100, &mut out).expect("resizable");
        assert_eq!(out.len(), 3 * 48 * 192);
        assert!(out.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn letterbox_keeps_the_aspect_and_centres_on_the_pad_value() {
        // 2x4 into 4x4: no resize (scale 1 fits), one pad row above and below.
        let pre = Preprocess { resize_exact: Some((4, 4)), letterbox: Some(7), ..Preprocess::none() };
        let mut out = vec![];
        assert_eq!(pre.apply_u8(&[200; 8], 1, 2, 4, &mut out).unwrap(), (1, 4, 4));
        assert_eq!(out, [[7.0; 4], [200.0; 4], [200.0; 4], [7.0; 4]].concat());
        // 4x2 into 2x8: scaled by 1/2 to 2x1, centred at column 3 of 8.
        let pre = Preprocess { resize_exact: Some((2, 8)), letterbox: Some(0), ..Preprocess::none() };
        let mut out = vec![];
        assert_eq!(pre.apply_u8(&[90; 8], 1, 4, 2, &mut out).unwrap(), (1, 2, 8));
        let row = [0.0, 0.0, 0.0, 90.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(out, [row, row].concat());
        // Keep the size, pad up to a multiple of 8: 10x21 -> 16x24, the image at (3, 1).
        let pre = Preprocess { multiple: Some(8), letterbox: Some(114), ..Preprocess::none() };
        let mut out = vec![];
        assert_eq!(pre.apply_u8(&[1; 210], 1, 10, 21, &mut out).unwrap(), (1, 16, 24));
        let at = |y: usize, x: usize| out[y * 24 + x];
        assert_eq!(
            (at(2, 1), at(3, 0), at(3, 1), at(12, 21), at(13, 22), at(15, 23)),
            (114.0, 114.0, 1.0, 1.0, 114.0, 114.0)
        );
        assert_eq!(out.iter().filter(|&&v| v == 1.0).count(), 210);
        // Without letterbox each side is resized to the nearest multiple (at least one).
        let pre = Preprocess { multiple: Some(8), ..Preprocess::none() };
        assert_eq!(pre.output_shape(10, 21), Ok((1, 8, 24)));
        assert_eq!(pre.output_shape(3, 13), Ok((1, 8, 16)));
        // A letterbox needs something to fit into or pad to; a zero multiple is refused.
        assert!(Preprocess { letterbox: Some(0), ..Preprocess::none() }.validate().unwrap_err().contains("letterbox"));
        assert!(Preprocess { multiple: Some(0), ..Preprocess::none() }.validate().unwrap_err().contains("multiple"));
        assert!(Preprocess { multiple: Some(1 << 40), ..Preprocess::none() }
            .validate()
            .unwrap_err()
            .contains("multiple"));
        let huge = Preprocess { resize_exact: Some((1 << 20, 1 << 20)), letterbox: Some(0), ..Preprocess::none() };
        assert!(huge.output_shape(10, 10).unwrap_err().contains("too large"));
    }

    #[test]
    fn resize_downscale_averages() {
        // 1x2 -> 1x1 with a triangle filter averages the two pixels
        let pre = Preprocess { resize_exact: Some((1, 1)), ..plain(1) };
        let mut out = Vec::new();
        pre.apply_u8(&[100, 200], 1, 1, 2, &mut out).expect("resizable");
        assert_close(&out, &[150.0]);
    }

    #[test]
    fn channel_conversions() {
        let mut out = Vec::new();
        plain(3).apply_u8(&[7], 1, 1, 1, &mut out).expect("gray to rgb");
        assert_close(&out, &[7.0, 7.0, 7.0]);
        out.clear();
        // Pillow's luma: (19595*100 + 38470*200 + 7471*50 + 32768) >> 16 = 153
        plain(1).apply_u8(&[100, 200, 50, 0, 0, 0, 255, 255, 255], 3, 1, 3, &mut out).expect("rgb to gray");
        assert_close(&out, &[153.0, 0.0, 255.0]);
        out.clear();
        plain(3).apply_u8(&[1, 2, 3, 255], 4, 1, 1, &mut out).expect("rgba to rgb");
        assert_close(&out, &[1.0, 2.0, 3.0]);
        let err = plain(3).apply_u8(&[1, 2, 3, 4, 5], 5, 1, 1, &mut out).expect_err("5 channels");
        assert!(err.to_string().contains("5-channel"), "{err}");
    }

    #[test]
    fn wrong_pixel_count_is_an_error() {
        let mut out = Vec::new();
        let err = plain(1).apply_u8(&[1, 2, 3], 1, 2, 2, &mut out).expect_err("3 != 4");
        assert!(err.to_string().contains("expected 4"), "{err}");
    }

    #[test]
    fn presets_and_names() {
        for name in Preprocess::NAMES {
            let pre = Preprocess::by_name(name).unwrap_or_else(|| panic!("{name} is listed"));
            pre.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(Preprocess::by_name("MNIST"), Some(Preprocess::mnist()));
        assert_eq!(Preprocess::by_name("fashion-mnist"), Some(Preprocess::fmnist()));
        assert_eq!(Preprocess::by_name("cifar"), None);
        let none = Preprocess::by_name("none").expect("listed");
        assert_eq!((none.channels, none.scale, none.mean[0], none.std[0]), (1, 1.0, 0.0, 1.0));
        assert_eq!(Preprocess::imagenet().crop, Some((224, 224)));
        assert_eq!(Preprocess::imagenet().resize_shorter, None);
        assert_eq!(Preprocess::ppocr().resize_exact, Some((48, 192)));
        assert_eq!(Preprocess::fmnist().mean, vec![0.2860]);
    }

    #[test]
    fn invalid_settings_are_reported() {
        let bad = [
            Preprocess { channels: 2, ..plain(1) },
            Preprocess { mean: vec![0.0, 0.0], ..plain(3) },
            Preprocess { std: vec![0.0], ..plain(1) },
            Preprocess { crop: Some((0, 4)), ..plain(1) },
            Preprocess { resize_shorter: Some(4), resize_exact: Some((4, 4)), ..plain(1) },
        ];
        for pre in bad {
            let mut out = Vec::new();
            assert!(pre.apply_u8(&[0], 1, 1, 1, &mut out).is_err(), "{pre:?} accepted");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn output_matches_shape_and_range(
                c in prop::sample::select(vec![1usize, 3, 4]),
                channels in prop::sample::select(vec![1usize, 3]),
                h in 1usize..12, w in 1usize..12,
                resize in prop::option::of(1usize..10),
                crop in prop::option::of((1usize..6, 1usize..6)),
                seed in any::<u64>(),
            ) {
                let pre = Preprocess {
                    channels, resize_shorter: resize, crop,
                    scale: 1.0 / 255.0, mean: vec![0.5], std: vec![0.25],
                    ..plain(channels)
                };
                let px: Vec<u8> = (0..c * h * w)
                    .map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64 * 1442695040888963407) >> 56) as u8)
                    .collect();
                let mut out = Vec::new();
                match pre.output_shape(h, w) {
                    Ok((oc, oh, ow)) => {
                        prop_assert_eq!(pre.apply_u8(&px, c, h, w, &mut out).ok(), Some((oc, oh, ow)));
                        prop_assert_eq!(out.len(), oc * oh * ow);
                        prop_assert!(out.iter().all(|v| (-2.0 - 1e-5..=2.0 + 1e-5).contains(v)));
                    }
                    Err(_) => {
                        prop_assert!(pre.apply_u8(&px, c, h, w, &mut out).is_err());
                        prop_assert!(out.is_empty());
                    }
                }
            }
        }
    }
}
