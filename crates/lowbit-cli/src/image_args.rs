//! The preprocessing flags every command that reads images takes (`run`, `eval`, `dump-data`,
//! `quantize`): a preset as shorthand, explicit settings on top of it.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use lowbit_core::{Dim, Graph};
use lowbit_data::Preprocess;

use crate::common::{choose_preset, override_input_shape};

#[derive(clap::Args, Clone, Default)]
pub struct ImageArgs {
    /// Preprocessing: imagenet | mnist | fmnist | ppocr | none (default: guessed from model and data)
    #[arg(long)]
    pub preset: Option<String>,
    /// Resize every image to WxH (after the preset; overrides a file's fixed input height and width)
    #[arg(long)]
    pub size: Option<String>,
    /// Multiply pixels (0-255) by this before mean/std (overrides the preset)
    #[arg(long)]
    pub scale: Option<f32>,
    /// Per-channel mean, e.g. 0.485,0.456,0.406 (overrides the preset)
    #[arg(long)]
    pub mean: Option<String>,
    /// Per-channel standard deviation, e.g. 0.229,0.224,0.225 (overrides the preset)
    #[arg(long)]
    pub std: Option<String>,
    /// Convert to one gray channel (default: the preset's channels; RGB without a preset)
    #[arg(long)]
    pub gray: bool,
    /// Feed channels in BGR order (OpenCV-trained models); mean/std are given in that order
    #[arg(long)]
    pub bgr: bool,
    /// Letterbox: keep the aspect ratio, fit inside --size (or pad up to --multiple), centre the image and fill the rest with PAD (default 114, as detectors are trained)
    #[arg(long, num_args = 0..=1, default_missing_value = "114", value_name = "PAD")]
    pub letterbox: Option<u8>,
    /// Keep each image's size, rounded to a multiple of N (a detector's stride, e.g. 32); with --letterbox padded up to it. Images of different sizes then run at their own shapes (one plan per shape)
    #[arg(long, value_name = "N")]
    pub multiple: Option<usize>,
    /// Image files: N deterministic square views of each photo (the centred largest square, then
    /// smaller ones on a grid), each preprocessed as an image; an evaluation set of ImageNet-style
    /// crops from a few full-size photos (1..=1000)
    #[arg(long, value_name = "N")]
    pub crops: Option<usize>,
}

impl ImageArgs {
    /// Whether any explicit setting is given.
    pub fn has_flags(&self) -> bool {
        self.size.is_some()
            || self.scale.is_some()
            || self.mean.is_some()
            || self.std.is_some()
            || self.gray
            || self.bgr
            || self.letterbox.is_some()
            || self.multiple.is_some()
    }

    /// The preset (named, from the model, or guessed) with the explicit flags applied on top; with
    /// flags and no preset to go on, RGB 0-255 without normalisation.
    pub fn resolve(&self, g: &Graph, data: &Path) -> Result<(String, Preprocess)> {
        let (mut name, mut pre) = match choose_preset(self.preset.as_deref(), g, data) {
            Ok(p) => p,
            Err(_) if self.has_flags() => ("rgb".to_string(), Preprocess { channels: 3, ..Preprocess::none() }),
            Err(e) => return Err(e),
        };
        self.apply(&mut pre)?;
        if self.has_flags() {
            name.push_str(" + flags");
        }
        Ok((name, pre))
    }

    /// The named preset (no model to guess from) with the flags applied.
    pub fn resolve_without_model(&self) -> Result<Preprocess> {
        let mut pre = match self.preset.as_deref() {
            Some(name) => Preprocess::by_name(name).ok_or_else(|| anyhow!("unknown --preset '{name}'"))?,
            None if self.has_flags() => Preprocess { channels: 3, ..Preprocess::none() },
            None => bail!("needs --preset or preprocessing flags (--size, --scale, --mean, --std, --gray, --bgr)"),
        };
        self.apply(&mut pre)?;
        Ok(pre)
    }

    /// --size/--gray/--bgr/--scale/--mean/--std applied to a preset.
    pub fn apply(&self, pre: &mut Preprocess) -> Result<()> {
        let floats = |flag: &str, s: &str| -> Result<Vec<f32>> {
            s.split(',')
                .map(|v| v.trim().parse::<f32>().ok().filter(|x| x.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| anyhow!("{flag} '{s}': want comma-separated finite numbers, e.g. 0.485,0.456,0.406"))
        };
        if let Some(sz) = &self.size {
            let wh: Vec<usize> = sz.split(['x', 'X', ',']).filter_map(|v| v.trim().parse().ok()).collect();
            let [w, h] = wh[..] else { bail!("--size '{sz}': want WxH, e.g. 640x480") };
            if w == 0 || h == 0 {
                bail!("--size '{sz}': width and height must be at least 1");
            }
            pre.resize_exact = Some((h, w));
            pre.resize_shorter = None;
            pre.crop = None;
        }
        if let Some(m) = self.multiple {
            if m == 0 {
                bail!("--multiple 0: want a positive stride, e.g. 32");
            }
            pre.multiple = Some(m);
            if self.size.is_none() {
                // Each image keeps its own size (rounded): no preset resize or crop.
                (pre.resize_exact, pre.resize_shorter, pre.crop) = (None, None, None);
            }
        }
        if let Some(n) = self.crops {
            if !(1..=1000).contains(&n) {
                bail!("--crops {n}: want 1 to 1000 views per image");
            }
            pre.crops = Some(n);
        }
        if let Some(pad) = self.letterbox {
            if self.size.is_none() && self.multiple.is_none() {
                bail!("--letterbox needs --size WxH to fit into or --multiple N to pad to");
            }
            pre.letterbox = Some(pad);
        }
        if self.gray {
            pre.channels = 1;
        }
        if self.bgr {
            pre.bgr = true;
        }
        if let Some(x) = self.scale {
            pre.scale = x;
        }
        if let Some(m) = &self.mean {
            pre.mean = floats("--mean", m)?;
        }
        if let Some(sd) = &self.std {
            pre.std = floats("--std", sd)?;
        }
        pre.validate().map_err(|e| anyhow!("preprocessing: {e}"))
    }

    /// With --size, the model's input takes the images' channels, height and width (also where the
    /// file fixes others) and a free batch dimension.
    pub fn fit_model(&self, g: &mut Graph, model: &Path, chw: [usize; 3]) -> Result<()> {
        if self.size.is_some() || self.multiple.is_some() {
            override_input_shape(g, &[1, chw[0], chw[1], chw[2]]).map_err(|e| anyhow!("{}: {e}", model.display()))?;
            for i in g.inputs.iter_mut() {
                if let Some(d) = i.shape.as_mut().filter(|d| d.len() == 4 && d[1..] == chw.map(Dim::Fixed)) {
                    d[0] = Dim::Sym("N".into());
                }
            }
        }
        Ok(())
    }
}
