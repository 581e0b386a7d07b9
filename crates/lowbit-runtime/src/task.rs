//! Task-aware quality of a model's outputs against a reference model's (usually the float
//! original): detection boxes decoded by a built-in decoder and scored as mAP@0.5 against the
//! reference's boxes, segmentation maps as IoU of the thresholded maps, embeddings as cosine and
//! verification agreement, and for every output cosine, max abs error and SQNR.
//!
//! Everything here works on plain `(shape, values)` outputs of batch 1, so it serves any runtime
//! (lowbit's plan, ONNX Runtime's numbers read back from .npy files).

/// One output of one image: its shape (batch first, batch 1) and values.
#[derive(Clone, Debug)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a model does, which decides how its outputs are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Classify,
    Detect(Decoder),
    Segment,
    Embed,
}

/// Detection head layouts the built-in decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// CenterFace / CenterNet-style: heatmap [1,1,h,w] (after sigmoid), log box size [1,2,h,w],
    /// center offset [1,2,h,w], optionally landmarks; output stride from input size / h.
    CenterNet,
    /// YOLOv8/v9/v11: one output [1, 4 + classes, anchors] of decoded cx, cy, w, h and class
    /// scores (no objectness).
    YoloV8,
    /// YOLOv5/v7/YOLOX decoded: one output [1, anchors, 5 + classes] of cx, cy, w, h, objectness,
    /// class scores.
    YoloV5,
    /// SSD / UltraFace: scores [1, anchors, classes] (class 0 background) and boxes [1, anchors, 4]
    /// as x1, y1, x2, y2 relative to the image.
    Ssd,
}

impl Decoder {
    pub const NAMES: [&'static str; 4] = ["centernet", "yolov8", "yolov5", "ssd"];

    pub fn parse(s: &str) -> Option<Decoder> {
        match s.to_ascii_lowercase().as_str() {
            "centernet" | "centerface" => Some(Decoder::CenterNet),
            "yolov8" | "yolo8" | "yolov11" => Some(Decoder::YoloV8),
            "yolov5" | "yolo5" | "yolox" | "yolov7" => Some(Decoder::YoloV5),
            "ssd" | "ultraface" => Some(Decoder::Ssd),
            _ => None,
        }
    }

    /// Score threshold above which the reference model's boxes count as objects.
    pub fn default_conf(self) -> f32 {
        match self {
            Decoder::CenterNet => 0.35,
            Decoder::YoloV8 | Decoder::YoloV5 => 0.25,
            Decoder::Ssd => 0.5,
        }
    }

    /// IoU above which non-maximum suppression drops the lower-scored box.
    fn nms_iou(self) -> f32 {
        match self {
            Decoder::CenterNet => 0.3,
            _ => 0.45,
        }
    }

    /// The decoder whose layout `shapes` (every output, batch first) match, if exactly one does.
    pub fn detect(shapes: &[Vec<usize>]) -> Option<Decoder> {
        let found: Vec<Decoder> = [Decoder::CenterNet, Decoder::YoloV8, Decoder::YoloV5, Decoder::Ssd]
            .into_iter()
            .filter(|d| d.layout(shapes).is_some())
            .collect();
        match found[..] {
            [d] => Some(d),
            _ => None,
        }
    }

    /// Indices of the outputs this decoder reads, if `shapes` has its layout.
    fn layout(self, shapes: &[Vec<usize>]) -> Option<Vec<usize>> {
        let b1 = |s: &Vec<usize>| s.first() == Some(&1);
        match self {
            Decoder::CenterNet => {
                let four: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].len() == 4 && b1(&shapes[i])).collect();
                let heat = *four.iter().find(|&&i| shapes[i][1] == 1)?;
                let hw = &shapes[heat][2..];
                let twos: Vec<usize> =
                    four.iter().copied().filter(|&i| shapes[i][1] == 2 && shapes[i][2..] == *hw).collect();
                (twos.len() == 2 && four.iter().filter(|&&i| shapes[i][1] == 1).count() == 1)
                    .then(|| vec![heat, twos[0], twos[1]])
            }
            Decoder::YoloV8 => match shapes {
                [s] if s.len() == 3 && b1(s) && s[1] > 4 && s[2] > 4 * s[1] => Some(vec![0]),
                _ => None,
            },
            Decoder::YoloV5 => match shapes {
                [s] if s.len() == 3 && b1(s) && s[2] > 5 && s[1] > 4 * s[2] => Some(vec![0]),
                _ => None,
            },
            Decoder::Ssd => {
                let three: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].len() == 3 && b1(&shapes[i])).collect();
                let boxes = three.iter().copied().filter(|&i| shapes[i][2] == 4).collect::<Vec<_>>();
                let scores =
                    three.iter().copied().filter(|&i| shapes[i][2] >= 2 && shapes[i][2] != 4).collect::<Vec<_>>();
                match (&boxes[..], &scores[..]) {
                    ([b], [s]) if shapes[*b][1] == shapes[*s][1] && shapes.len() == 2 => Some(vec![*s, *b]),
                    _ => None,
                }
            }
        }
    }

    /// Boxes (in input pixels) with score at least `min_score`, after per-class NMS.
    /// `input_hw` is the model input's height and width.
    pub fn decode(self, outs: &[Output], input_hw: (usize, usize), min_score: f32) -> Result<Vec<Detection>, String> {
        let shapes: Vec<Vec<usize>> = outs.iter().map(|o| o.shape.clone()).collect();
        let idx = self.layout(&shapes).ok_or_else(|| format!("outputs {shapes:?} do not have the {self:?} layout"))?;
        let (ih, iw) = (input_hw.0 as f32, input_hw.1 as f32);
        let mut dets = vec![];
        match self {
            Decoder::CenterNet => {
                let (heat, size, off) = (&outs[idx[0]], &outs[idx[1]], &outs[idx[2]]);
                let (h, w) = (heat.shape[2], heat.shape[3]);
                let (sy, sx) = (ih / h as f32, iw / w as f32);
                let plane = h * w;
                for y in 0..h {
                    for x in 0..w {
                        let p = y * w + x;
                        let score = heat.data[p];
                        if !(score >= min_score) {
                            continue;
                        }
                        let bh = size.data[p].exp() * sy;
                        let bw = size.data[plane + p].exp() * sx;
                        let cy = (y as f32 + off.data[p] + 0.5) * sy;
                        let cx = (x as f32 + off.data[plane + p] + 0.5) * sx;
                        let x1 = (cx - bw / 2.0).max(0.0);
                        let y1 = (cy - bh / 2.0).max(0.0);
                        dets.push(Detection { x1, y1, x2: (x1 + bw).min(iw), y2: (y1 + bh).min(ih), score, class: 0 });
                    }
                }
            }
            Decoder::YoloV8 => {
                let o = &outs[idx[0]];
                let (c, a) = (o.shape[1], o.shape[2]);
                for j in 0..a {
                    let v = |k: usize| o.data[k * a + j];
                    let (class, score) =
                        (4..c).map(|k| (k - 4, v(k))).fold((0, f32::MIN), |m, x| if x.1 > m.1 { x } else { m });
                    if score >= min_score {
                        dets.push(Detection::from_center(v(0), v(1), v(2), v(3), score, class));
                    }
                }
            }
            Decoder::YoloV5 => {
                let o = &outs[idx[0]];
                let (a, c) = (o.shape[1], o.shape[2]);
                for j in 0..a {
                    let r = &o.data[j * c..(j + 1) * c];
                    let (class, cls) =
                        (5..c).map(|k| (k - 5, r[k])).fold((0, f32::MIN), |m, x| if x.1 > m.1 { x } else { m });
                    let score = r[4] * cls;
                    if score >= min_score {
                        dets.push(Detection::from_center(r[0], r[1], r[2], r[3], score, class));
                    }
                }
            }
            Decoder::Ssd => {
                let (s, b) = (&outs[idx[0]], &outs[idx[1]]);
                let (a, c) = (s.shape[1], s.shape[2]);
                for j in 0..a {
                    for k in 1..c {
                        let score = s.data[j * c + k];
                        if score >= min_score {
                            let r = &b.data[j * 4..j * 4 + 4];
                            dets.push(Detection {
                                x1: r[0] * iw,
                                y1: r[1] * ih,
                                x2: r[2] * iw,
                                y2: r[3] * ih,
                                score,
                                class: k - 1,
                            });
                        }
                    }
                }
            }
        }
        Ok(nms(dets, self.nms_iou()))
    }
}

/// One box in input pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
    pub class: usize,
}

impl Detection {
    fn from_center(cx: f32, cy: f32, w: f32, h: f32, score: f32, class: usize) -> Detection {
        Detection { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0, score, class }
    }

    pub fn iou(&self, o: &Detection) -> f32 {
        let iw = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let ih = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = iw * ih;
        let area = |d: &Detection| (d.x2 - d.x1).max(0.0) * (d.y2 - d.y1).max(0.0);
        let union = area(self) + area(o) - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// Greedy per-class non-maximum suppression, highest score first. Non-finite scores are dropped.
pub fn nms(mut dets: Vec<Detection>, iou: f32) -> Vec<Detection> {
    dets.retain(|d| d.score.is_finite() && [d.x1, d.y1, d.x2, d.y2].iter().all(|v| v.is_finite()));
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Detection> = vec![];
    for d in dets {
        if keep.iter().all(|k| k.class != d.class || k.iou(&d) <= iou) {
            keep.push(d);
        }
    }
    keep
}

/// mAP@`iou` of `preds` against `truth` (per image), VOC all-point interpolation, averaged over
/// the classes present in the truth. `None` when the truth has no box at all.
pub fn mean_ap(truth: &[Vec<Detection>], preds: &[Vec<Detection>], iou: f32) -> Option<f64> {
    let mut classes: Vec<usize> = truth.iter().flatten().map(|d| d.class).collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for &c in &classes {
        let n_truth = truth.iter().flatten().filter(|d| d.class == c).count();
        // (score, image, detection) of every prediction of this class, best first.
        let mut ranked: Vec<(f32, usize, &Detection)> = preds
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.iter().filter(|d| d.class == c).map(move |d| (d.score, i, d)))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: Vec<Vec<bool>> = truth.iter().map(|t| vec![false; t.len()]).collect();
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut curve = vec![]; // (recall, precision)
        for (_, i, d) in ranked {
            let best = truth
                .get(i)
                .into_iter()
                .flatten()
                .enumerate()
                .filter(|(k, t)| t.class == c && !used[i][*k])
                .map(|(k, t)| (k, t.iou(d)))
                .fold(None, |m: Option<(usize, f32)>, x| if m.is_none_or(|m| x.1 > m.1) { Some(x) } else { m });
            match best {
                Some((k, v)) if v >= iou => {
                    used[i][k] = true;
                    tp += 1;
                }
                _ => fp += 1,
            }
            curve.push((tp as f64 / n_truth as f64, tp as f64 / (tp + fp) as f64));
        }
        // Area under the precision envelope.
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for k in 0..curve.len() {
            let p = curve[k..].iter().map(|x| x.1).fold(0.0, f64::max);
            ap += (curve[k].0 - prev_recall) * p;
            prev_recall = curve[k].0;
        }
        sum += ap;
    }
    Some(sum / classes.len() as f64)
}

/// Segmentation agreement of one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegScore {
    /// IoU of the foreground (one channel, thresholded) or mean IoU over the classes present in
    /// either map (several channels, argmax per pixel). 1 when both maps are empty.
    pub iou: f64,
    /// Mean absolute difference of the raw maps.
    pub mae: f64,
    /// Pixels in both masks and in either (summed over the classes): over many images,
    /// Σ intersection / Σ union is the IoU of all their pixels together, which a nearly empty
    /// mask cannot dominate.
    pub inter: u64,
    pub union: u64,
}

/// Compares two segmentation outputs [1, C, H, W]. One channel: foreground where the value
/// exceeds `threshold` (0.5 for probability maps; the caller passes 0 for logits).
pub fn segmentation(reference: &Output, test: &Output, threshold: f32) -> Result<SegScore, String> {
    if reference.shape != test.shape || reference.shape.len() != 4 {
        return Err(format!(
            "segmentation maps {:?} and {:?} differ or are not [1,C,H,W]",
            reference.shape, test.shape
        ));
    }
    let mae = reference.data.iter().zip(&test.data).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
        / reference.data.len().max(1) as f64;
    let (c, plane) = (reference.shape[1], reference.shape[2] * reference.shape[3]);
    let labels = |o: &Output| -> Vec<usize> {
        if c == 1 {
            o.data.iter().map(|&v| (v > threshold) as usize).collect()
        } else {
            (0..plane)
                .map(|p| (0..c).fold(0, |m, k| if o.data[k * plane + p] > o.data[m * plane + p] { k } else { m }))
                .collect()
        }
    };
    let (a, b) = (labels(reference), labels(test));
    let classes: Vec<usize> = if c == 1 { vec![1] } else { (0..c).collect() };
    let mut ious = vec![];
    let (mut ti, mut tu) = (0u64, 0u64);
    for k in classes {
        let inter = a.iter().zip(&b).filter(|(x, y)| **x == k && **y == k).count();
        let union = a.iter().zip(&b).filter(|(x, y)| **x == k || **y == k).count();
        if union > 0 {
            ious.push(inter as f64 / union as f64);
        }
        (ti, tu) = (ti + inter as u64, tu + union as u64);
    }
    let iou = if ious.is_empty() { 1.0 } else { ious.iter().sum::<f64>() / ious.len() as f64 };
    Ok(SegScore { iou, mae, inter: ti, union: tu })
}

/// Cosine similarity (1 for two zero vectors, 0 when only one is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    match (na > 0.0, nb > 0.0) {
        (true, true) => dot / (na * nb),
        (false, false) => 1.0,
        _ => 0.0,
    }
}

/// Signal and error energy of outputs against their reference, summed over as many images as
/// are added: the SQNR of all of them together.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sqnr {
    pub signal: f64,
    pub noise: f64,
}

impl Sqnr {
    pub fn add(&mut self, reference: &[f32], test: &[f32]) {
        self.signal += reference.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
        self.noise += reference.iter().zip(test).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>();
    }

    /// In dB (infinite when equal).
    pub fn db(&self) -> f64 {
        10.0 * (self.signal / self.noise).log10()
    }
}

/// Signal-to-quantization-noise ratio of `test` against `reference`, in dB (infinite when equal).
pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    let mut s = Sqnr::default();
    s.add(reference, test);
    s.db()
}

/// Whether the model's first output is computed by a Softmax (a classifier's probabilities).
pub fn ends_in_softmax(g: &lowbit_core::Graph) -> bool {
    g.outputs.first().is_some_and(|o| {
        g.nodes.iter().any(|n| n.outputs.contains(&o.name) && matches!(n.op, lowbit_core::Op::Softmax { .. }))
    })
}

/// Verification of embeddings: every pair of images is "same" when the cosine of their
/// embeddings is at least the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    pub pairs: usize,
    pub threshold: f64,
    /// Pairs decided the same way with the reference's and the test's embeddings.
    pub agreement: f64,
    /// Decisions right against the identities, with the reference's and the test's embeddings.
    pub reference_accuracy: f64,
    pub test_accuracy: f64,
}

/// The threshold that decides the most pairs right with `reference` embeddings (the midpoint
/// between neighbouring cosines), ties to the widest margin.
fn best_threshold(pairs: &[(f64, bool)]) -> f64 {
    let mut cos: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    cos.sort_by(f64::total_cmp);
    let mut cands: Vec<(f64, f64)> = cos.windows(2).map(|w| ((w[0] + w[1]) / 2.0, w[1] - w[0])).collect();
    cands.push((cos.first().copied().unwrap_or(0.0) - 1e-3, 0.0));
    cands.push((cos.last().copied().unwrap_or(0.0) + 1e-3, 0.0));
    let right = |t: f64| pairs.iter().filter(|(c, same)| (*c >= t) == *same).count();
    cands.into_iter().max_by(|a, b| right(a.0).cmp(&right(b.0)).then(a.1.total_cmp(&b.1))).map(|c| c.0).unwrap_or(0.5)
}

/// Verification over every pair of images with identities `ids`. The threshold is `threshold`
/// or, without one, the one that best separates the identities with the reference embeddings.
pub fn verification(reference: &[Vec<f32>], test: &[Vec<f32>], ids: &[String], threshold: Option<f64>) -> Verification {
    let mut rp = vec![];
    let mut tp = vec![];
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            let same = ids[i] == ids[j];
            rp.push((cosine(&reference[i], &reference[j]), same));
            tp.push((cosine(&test[i], &test[j]), same));
        }
    }
    let t = threshold.unwrap_or_else(|| best_threshold(&rp));
    let n = rp.len().max(1) as f64;
    let acc = |p: &[(f64, bool)]| p.iter().filter(|(c, s)| (*c >= t) == *s).count() as f64 / n;
    let agree = rp.iter().zip(&tp).filter(|(a, b)| (a.0 >= t) == (b.0 >= t)).count() as f64 / n;
    Verification {
        pairs: rp.len(),
        threshold: t,
        agreement: agree,
        reference_accuracy: acc(&rp),
        test_accuracy: acc(&tp),
    }
}

/// The identity of an image from its name: the folder it is in when it has one, else the letters
/// its file stem starts with (`obama2.jpg`, `obama_partial_face.jpg` -> `obama`; a stem without
/// leading letters is its own identity).
pub fn identity(name: &str) -> String {
    let p = std::path::Path::new(name);
    if let Some(parent) = p.parent().and_then(|d| d.file_name()) {
        return parent.to_string_lossy().to_string();
    }
    let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let letters: String = stem.chars().take_while(|c| c.is_alphabetic()).collect();
    if letters.is_empty() {
        stem
    } else {
        letters
    }
}

/// The task a model's outputs suggest, where that is unambiguous: a detection layout, a map as
/// large as an eighth of the input (segmentation), a 2-D vector of 64..=512 (power of two) values
/// from a model that ends without Softmax (embedding); otherwise classification.
pub fn guess(shapes: &[Vec<usize>], input_hw: (usize, usize), ends_in_softmax: bool) -> Task {
    if let Some(d) = Decoder::detect(shapes) {
        return Task::Detect(d);
    }
    let first = match shapes.first() {
        Some(s) => s,
        None => return Task::Classify,
    };
    if first.len() == 4 && first[2] * 8 >= input_hw.0 && first[3] * 8 >= input_hw.1 {
        return Task::Segment;
    }
    let d = first.iter().skip(1).product::<usize>();
    if first.len() == 2 && !ends_in_softmax && (64..=512).contains(&d) && d.is_power_of_two() {
        return Task::Embed;
    }
    Task::Classify
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class: usize) -> Detection {
        Detection { x1, y1, x2, y2, score, class }
    }

    #[test]
    fn iou_and_nms() {
        let a = det(0.0, 0.0, 10.0, 10.0, 0.9, 0);
        let b = det(5.0, 0.0, 15.0, 10.0, 0.8, 0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        // Same place, other class: kept; overlapping same class above 0.3: dropped.
        let c = det(5.0, 0.0, 15.0, 10.0, 0.7, 1);
        let kept = nms(vec![b, a, c, det(1.0, 1.0, 10.0, 10.0, f32::NAN, 0)], 0.3);
        assert_eq!(kept, vec![a, c]);
        assert_eq!(nms(vec![a, b], 0.5).len(), 2);
    }

    #[test]
    fn map_is_one_for_identical_boxes_and_drops_with_misses_and_false_alarms() {
        let truth = vec![vec![det(0.0, 0.0, 10.0, 10.0, 0.9, 0), det(20.0, 20.0, 30.0, 30.0, 0.8, 0)], vec![]];
        assert_eq!(mean_ap(&truth, &truth, 0.5), Some(1.0));
        // One box found, one missed: recall stops at 0.5.
        let half = vec![vec![truth[0][0]], vec![]];
        assert!((mean_ap(&truth, &half, 0.5).unwrap() - 0.5).abs() < 1e-9);
        // A confident false alarm ranked first: precision 1/2 at recall 0.5, 2/3 at recall 1.
        let fa = vec![truth[0].clone(), vec![det(0.0, 0.0, 5.0, 5.0, 0.99, 0)]];
        let want = 0.5 * (2.0 / 3.0) + 0.5 * (2.0 / 3.0);
        assert!((mean_ap(&truth, &fa, 0.5).unwrap() - want).abs() < 1e-9);
        // Shifted boxes under IoU 0.5 do not count.
        let shifted = vec![vec![det(6.0, 0.0, 16.0, 10.0, 0.9, 0)], vec![]];
        assert_eq!(mean_ap(&truth, &shifted, 0.5), Some(0.0));
        assert_eq!(mean_ap(&[vec![]], &[vec![]], 0.5), None);
    }

    #[test]
    fn centernet_decoder_reads_heatmap_size_and_offset() {
        // 2x2 heatmap at stride 4 (input 8x8): one peak at (y=1, x=0).
        let heat = Output { shape: vec![1, 1, 2, 2], data: vec![0.1, 0.0, 0.9, 0.2] };
        let mut size = vec![0.0; 8];
        size[2] = (4.0f32).ln(); // height 4 * 4 = 16 px... clipped to the image
        size[4 + 2] = (1.0f32).ln(); // width 1 * 4 = 4 px
        let off = Output { shape: vec![1, 2, 2, 2], data: vec![0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.5, 0.0] };
        let outs = [heat, Output { shape: vec![1, 2, 2, 2], data: size }, off];
        assert_eq!(
            Decoder::detect(&[vec![1, 1, 2, 2], vec![1, 2, 2, 2], vec![1, 2, 2, 2], vec![1, 10, 2, 2]]),
            Some(Decoder::CenterNet)
        );
        let d = Decoder::CenterNet.decode(&outs, (8, 8), 0.35).unwrap();
        assert_eq!(d.len(), 1);
        // center y = (1 + 0.25 + 0.5) * 4 = 7, x = (0 + 0.5 + 0.5) * 4 = 4
        let b = d[0];
        assert!((b.x1 - 2.0).abs() < 1e-5 && (b.x2 - 6.0).abs() < 1e-5, "{b:?}");
        assert!((b.y1 - 0.0).abs() < 1e-5 && (b.y2 - 8.0).abs() < 1e-5, "{b:?}");
        assert!((b.score - 0.9).abs() < 1e-6);
    }

    #[test]
    fn yolo_and_ssd_layouts_decode() {
        // YOLOv8: [1, 4+2, 12] with one box of class 1.
        let (c, a) = (6, 30);
        let mut v = vec![0.0; c * a];
        for (k, x) in [50.0, 40.0, 20.0, 10.0, 0.1, 0.8].iter().enumerate() {
            v[k * a + 3] = *x;
        }
        let o = Output { shape: vec![1, c, a], data: v };
        assert_eq!(Decoder::detect(&[o.shape.clone()]), Some(Decoder::YoloV8));
        let d = Decoder::YoloV8.decode(&[o], (100, 100), 0.25).unwrap();
        assert_eq!(d, vec![det(40.0, 35.0, 60.0, 45.0, 0.8, 1)]);
        // YOLOv5: [1, 30, 7]: objectness times class score.
        let mut v = vec![0.0; 30 * 7];
        v[7..14].copy_from_slice(&[10.0, 10.0, 4.0, 4.0, 0.5, 0.2, 0.9]);
        let o = Output { shape: vec![1, 30, 7], data: v };
        assert_eq!(Decoder::detect(&[o.shape.clone()]), Some(Decoder::YoloV5));
        let d = Decoder::YoloV5.decode(&[o], (20, 20), 0.25).unwrap();
        assert_eq!(d, vec![det(8.0, 8.0, 12.0, 12.0, 0.45, 1)]);
        // SSD: background column ignored, boxes relative.
        let s = Output { shape: vec![1, 2, 2], data: vec![0.1, 0.9, 0.95, 0.05] };
        let b = Output { shape: vec![1, 2, 4], data: vec![0.125, 0.25, 0.375, 0.5, 0.0, 0.0, 1.0, 1.0] };
        assert_eq!(Decoder::detect(&[s.shape.clone(), b.shape.clone()]), Some(Decoder::Ssd));
        let d = Decoder::Ssd.decode(&[s, b], (100, 200), 0.5).unwrap();
        assert_eq!(d, vec![det(25.0, 25.0, 75.0, 50.0, 0.9, 0)]);
    }

    #[test]
    fn segmentation_iou_and_mae() {
        let r = Output { shape: vec![1, 1, 1, 4], data: vec![0.9, 0.8, 0.1, 0.0] };
        let t = Output { shape: vec![1, 1, 1, 4], data: vec![0.9, 0.4, 0.6, 0.0] };
        let s = segmentation(&r, &t, 0.5).unwrap();
        assert!((s.iou - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.mae - 0.9 / 4.0).abs() < 1e-6);
        assert_eq!((s.inter, s.union), (1, 3));
        let empty = Output { shape: vec![1, 1, 1, 4], data: vec![0.0; 4] };
        assert_eq!(segmentation(&empty, &empty, 0.5).unwrap().iou, 1.0);
        // Two classes by argmax: pixel labels [0, 1] vs [0, 0] -> IoU class 0 = 1/2, class 1 = 0.
        let r2 = Output { shape: vec![1, 2, 1, 2], data: vec![1.0, 0.0, 0.0, 1.0] };
        let t2 = Output { shape: vec![1, 2, 1, 2], data: vec![1.0, 1.0, 0.0, 0.0] };
        assert!((segmentation(&r2, &t2, 0.5).unwrap().iou - 0.25).abs() < 1e-9);
        assert!(segmentation(&r, &r2, 0.5).is_err());
    }

    #[test]
    fn embeddings_cosine_verification_and_identity() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-9);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
        assert_eq!(identity("obama2.jpg"), "obama");
        assert_eq!(identity("obama_partial_face2.jpg"), "obama");
        assert_eq!(identity("people/alice/01.png"), "alice");
        assert_eq!(identity("7.png"), "7");
        let ids: Vec<String> = ["a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let r = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0]];
        let v = verification(&r, &r, &ids, None);
        assert_eq!((v.pairs, v.agreement, v.reference_accuracy), (3, 1.0, 1.0));
        // A test model that maps everything to one point calls every pair "same".
        let t = vec![vec![1.0, 0.0]; 3];
        let v = verification(&r, &t, &ids, None);
        assert!((v.agreement - 1.0 / 3.0).abs() < 1e-9 && (v.test_accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert!(sqnr_db(&[1.0, 1.0], &[1.0, 1.1]) > 22.0 && sqnr_db(&[1.0], &[1.0]).is_infinite());
    }

    #[test]
    fn guesses_the_task_from_output_shapes() {
        let hw = (320, 320);
        assert_eq!(guess(&[vec![1, 1, 320, 320], vec![1, 1, 320, 320]], hw, false), Task::Segment);
        assert_eq!(guess(&[vec![1, 128]], hw, false), Task::Embed);
        assert_eq!(guess(&[vec![1, 128]], hw, true), Task::Classify);
        assert_eq!(guess(&[vec![1, 1000]], hw, false), Task::Classify);
        assert_eq!(guess(&[vec![1, 84, 8400]], hw, false), Task::Detect(Decoder::YoloV8));
        assert_eq!(
            guess(&[vec![1, 1, 80, 80], vec![1, 2, 80, 80], vec![1, 2, 80, 80], vec![1, 10, 80, 80]], hw, false),
            Task::Detect(Decoder::CenterNet)
        );
    }
}
