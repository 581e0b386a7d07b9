//! Choosing the activation-range method (and whether to correct biases) automatically: build the
//! QDQ model with each candidate from the same calibration statistics, score each against the float model on the
//! calibration images, keep the best.
//!
//! "Best" is top-1 agreement with float where the scoring images can tell candidates apart, and KL of the logits where
//! they cannot. Well-quantized candidates differ from float on a handful of images, so their agreement differs by one
//! or two images, which is sampling noise; KL scores every image. A candidate counts as tied with the most-agreeing
//! one when the paired difference is within two standard errors (McNemar: the images where exactly one of the two
//! agrees with float split `b` against `c`, tied if `b - c <= 2 sqrt(b + c)`). Among the tied, the lowest KL wins.

use lowbit_core::{Graph, Result, Tensor};
use lowbit_runtime::classify::{argmax, kl_divergence, Classifier};
use lowbit_runtime::{Plan, PlanOptions};

use crate::calibrate::Stats;
use crate::observer::Method;
use crate::qdq::{build_qdq, QdqConfig, QdqModel};

/// One candidate's score.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub method: Method,
    pub bias_correction: bool,
    /// Top-1 agreement with float on the scoring images.
    pub agreement: f64,
    /// Mean KL(float softmax || candidate softmax) on the scoring images.
    pub kl: f64,
    /// Agreement within sampling noise of the most-agreeing candidate (so KL decided among these).
    pub tied_best: bool,
    /// Models that are not classifiers (the first output is not [N, classes]): the mean over the
    /// outputs of each output's SQNR against float, in dB, which decides instead of agreement and
    /// KL (both NaN then).
    pub sqnr_db: Option<f64>,
}

/// The methods `auto` tries.
pub fn default_candidates() -> Vec<Method> {
    vec![Method::Mse, Method::Percentile(0.9999), Method::Percentile(0.99999), Method::MinMax, Method::Entropy]
}

/// Logits of `n` images of `data`, 100 at a time.
fn all_logits(c: &mut Classifier, data: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
    let per = data.len() / n.max(1);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let len = 100.min(n - start);
        out.extend(c.logits(&data[start * per..(start + len) * per], len)?);
    }
    Ok(out)
}

/// Builds and scores every candidate (each method with each of `bias_correction`) on `n` images of `data`; returns the chosen model and all scores, the chosen one
/// first, then the others tied with the best agreement, then the rest, each group by KL.
#[allow(clippy::too_many_arguments)]
pub fn choose_method(
    canon: &Graph,
    stats: &Stats,
    base: &QdqConfig,
    candidates: &[Method],
    bias_correction: &[bool],
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    threads: usize,
) -> Result<(QdqModel, Vec<Candidate>)> {
    if candidates.is_empty() || bias_correction.is_empty() {
        return Err(lowbit_core::Error::Invalid("no range method candidates to choose from".into()));
    }
    if !is_classifier(canon, image_shape, data, threads)? {
        return choose_by_sqnr(canon, stats, base, candidates, bias_correction, image_shape, data, n, threads);
    }
    let reference = all_logits(&mut Classifier::new(canon.clone(), image_shape.to_vec(), threads), data, n)?;
    // Only the scores are kept (not every candidate's model): the chosen model is built again at the end.
    let (mut cands, mut agrees_all) = (vec![], vec![]);
    for (m, bc) in candidates.iter().flat_map(|&m| bias_correction.iter().map(move |&bc| (m, bc))) {
        let cfg = QdqConfig { method: m, bias_correction: bc, ..base.clone() };
        let q = build_qdq(canon, stats, &cfg)?;
        let logits = all_logits(&mut Classifier::new(q.graph.clone(), image_shape.to_vec(), threads), data, n)?;
        let agrees: Vec<bool> = reference.iter().zip(&logits).map(|(r, l)| argmax(r) == argmax(l)).collect();
        let k = n.max(1) as f64;
        // A model with non-finite logits is never chosen over one without.
        let kl = if logits.iter().flatten().all(|v| v.is_finite()) {
            reference.iter().zip(&logits).map(|(r, l)| kl_divergence(r, l)).sum::<f64>() / k
        } else {
            f64::INFINITY
        };
        let agreement = agrees.iter().filter(|&&a| a).count() as f64 / k;
        cands.push(Candidate { method: m, bias_correction: bc, agreement, kl, tied_best: false, sqnr_db: None });
        agrees_all.push(agrees);
    }
    let top = pick(&mut cands, &agrees_all);
    let chosen = cands.remove(top);
    let q = build_qdq(
        canon,
        stats,
        &QdqConfig { method: chosen.method, bias_correction: chosen.bias_correction, ..base.clone() },
    )?;
    cands.sort_by(|a, b| b.tied_best.cmp(&a.tied_best).then(a.kl.total_cmp(&b.kl)));
    cands.insert(0, chosen);
    Ok((q, cands))
}

/// Whether `canon` is a classifier (its outputs on the first image of `data` look like class scores).
fn is_classifier(canon: &Graph, image_shape: &[usize], data: &[f32], threads: usize) -> Result<bool> {
    let one: Vec<usize> = [&[1][..], image_shape].concat();
    let first = Plan::compile(canon, &[one.clone()], &PlanOptions { threads, ..Default::default() })?
        .run(&[Tensor::f32(one, data[..image_shape.iter().product()].to_vec())])?;
    let shapes: Vec<Vec<usize>> = first.iter().map(|t| t.shape.clone()).collect();
    let hw = (image_shape.get(1).copied().unwrap_or(1), image_shape.get(2).copied().unwrap_or(1));
    Ok(lowbit_runtime::task::guess(&shapes, hw, lowbit_runtime::task::ends_in_softmax(canon))
        == lowbit_runtime::task::Task::Classify)
}

/// How much closer to float a model's outputs must come (mean SQNR, dB) for
/// [`choose_input_precision`] to keep its input float. The float input costs the first layer's
/// integer speed (MobileNetV2 and EfficientNet-Lite0 take 9-25% longer with their 3x3 stems in
/// f32), so a small gain does not pay for it by default; `--float-input` asks for it (their top-1
/// agreement with float rises by 2 and 5 pp on the scene crops with only 0.2 and 0.4 dB of logit SQNR).
pub const FLOAT_INPUT_MIN_GAIN_DB: f64 = 1.0;

/// What [`choose_input_precision`] measured: mean output SQNR against float with the model input
/// quantized to 8 bits (as `base` builds it) and with it kept float (`float_input`).
#[derive(Clone, Debug)]
pub struct InputPrecision {
    pub sqnr_int8_input_db: f64,
    pub sqnr_float_input_db: f64,
}

impl InputPrecision {
    /// The input stays float: that brings the outputs at least [`FLOAT_INPUT_MIN_GAIN_DB`] closer to float.
    pub fn float_input(&self) -> bool {
        self.sqnr_float_input_db >= self.sqnr_int8_input_db + FLOAT_INPUT_MIN_GAIN_DB
    }
}

/// Whether every value of `data` lies on the 8-bit grid the model input `v` gets (min-max over its
/// calibration statistics): then quantizing the input loses nothing (8-bit pixels under one scale).
pub fn input_on_grid(stats: &Stats, v: &str, data: &[f32]) -> bool {
    let Some(o) = stats.get(v) else { return false };
    let (lo, hi) = o.range(Method::MinMax, 256);
    let p = crate::scheme::linear_params(&crate::scheme::QScheme::activations(8), &[lo], &[hi]);
    let (s, z) = (p.scale[0], p.zero_point[0] as f32);
    data.iter().all(|&x| {
        let q = ((x / s).round_ties_even() + z).clamp(0.0, 255.0);
        ((q - z) * s - x).abs() <= 1e-3 * s
    })
}

/// Images normalised per channel (different means and deviations) do not fit one uint8 scale over
/// the input: its step is wider than a gray level of the narrowest channel, and neighbouring levels
/// merge. The layers reading the input can compute from it in float instead (their weights stay
/// quantized; [`QdqConfig::float_input`]). Where the calibration images of `data` are not on the
/// input's 8-bit grid, this scores `base` against the same configuration with the input float, on
/// `n` images; `None` when the input loses nothing to its grid. The caller keeps the input float
/// when [`InputPrecision::float_input`].
#[allow(clippy::too_many_arguments)]
pub fn choose_input_precision(
    canon: &Graph,
    stats: &Stats,
    base: &QdqConfig,
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    threads: usize,
) -> Result<Option<(InputPrecision, QdqModel)>> {
    let Some(input) = canon.runtime_inputs().first().map(|v| v.name.clone()) else { return Ok(None) };
    if n == 0 || base.skip_first || base.float_input || input_on_grid(stats, &input, data) {
        return Ok(None);
    }
    let reference = all_outputs(canon, image_shape, data, n, threads)?;
    let score = |cfg: &QdqConfig| -> Result<(f64, QdqModel)> {
        let q = build_qdq(canon, stats, cfg)?;
        Ok((mean_sqnr_db(&reference, &all_outputs(&q.graph, image_shape, data, n, threads)?), q))
    };
    let (int8_input, _) = score(base)?;
    let (float_input, q) = score(&QdqConfig { float_input: true, ..base.clone() })?;
    Ok(Some((InputPrecision { sqnr_int8_input_db: int8_input, sqnr_float_input_db: float_input }, q)))
}

/// Every output of every image (batch 1): `[image][output]` values.
fn all_outputs(g: &Graph, image_shape: &[usize], data: &[f32], n: usize, threads: usize) -> Result<Vec<Vec<Vec<f32>>>> {
    let one: Vec<usize> = [&[1][..], image_shape].concat();
    let per: usize = image_shape.iter().product();
    let plan = Plan::compile(g, &[one.clone()], &PlanOptions { threads, ..Default::default() })?;
    (0..n)
        .map(|i| {
            let outs = plan.run(&[Tensor::f32(one.clone(), data[i * per..(i + 1) * per].to_vec())])?;
            Ok(outs.iter().map(|t| t.to_f32_vec()).collect())
        })
        .collect()
}

/// Mean over the outputs of each output's SQNR (dB, capped at 200) of `test` against `reference`
/// over all images; -inf when `test` has a non-finite value.
pub fn mean_sqnr_db(reference: &[Vec<Vec<f32>>], test: &[Vec<Vec<f32>>]) -> f64 {
    let outs = reference.first().map(|r| r.len()).unwrap_or(0);
    if outs == 0 {
        return f64::NEG_INFINITY;
    }
    let mut sum = 0.0;
    for k in 0..outs {
        let mut e = lowbit_runtime::task::Sqnr::default();
        for (r, t) in reference.iter().zip(test) {
            if t[k].iter().any(|v| !v.is_finite()) {
                return f64::NEG_INFINITY;
            }
            e.add(&r[k], &t[k]);
        }
        sum += if e.noise == 0.0 { 200.0 } else { e.db().min(200.0) };
    }
    sum / outs as f64
}

/// [`choose_method`] for models that are not classifiers (detectors, segmentation, embedders):
/// the candidate whose outputs are closest to float by mean SQNR wins (the earliest on a tie).
#[allow(clippy::too_many_arguments)]
fn choose_by_sqnr(
    canon: &Graph,
    stats: &Stats,
    base: &QdqConfig,
    candidates: &[Method],
    bias_correction: &[bool],
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    threads: usize,
) -> Result<(QdqModel, Vec<Candidate>)> {
    let reference = all_outputs(canon, image_shape, data, n, threads)?;
    let mut cands = vec![];
    for (m, bc) in candidates.iter().flat_map(|&m| bias_correction.iter().map(move |&bc| (m, bc))) {
        let cfg = QdqConfig { method: m, bias_correction: bc, ..base.clone() };
        let q = build_qdq(canon, stats, &cfg)?;
        let sqnr = mean_sqnr_db(&reference, &all_outputs(&q.graph, image_shape, data, n, threads)?);
        cands.push(Candidate {
            method: m,
            bias_correction: bc,
            agreement: f64::NAN,
            kl: f64::NAN,
            tied_best: false,
            sqnr_db: Some(sqnr),
        });
    }
    let score = |c: &Candidate| c.sqnr_db.unwrap_or(f64::NEG_INFINITY);
    let top = (0..cands.len()).fold(0, |b, i| if score(&cands[i]) > score(&cands[b]) { i } else { b });
    let chosen = cands.remove(top);
    let q = build_qdq(
        canon,
        stats,
        &QdqConfig { method: chosen.method, bias_correction: chosen.bias_correction, ..base.clone() },
    )?;
    cands.sort_by(|a, b| score(b).total_cmp(&score(a)));
    cands.insert(0, chosen);
    Ok((q, cands))
}

/// Marks the candidates tied with the most-agreeing one (`agrees[i][j]`: candidate `i` agrees with float on image `j`)
/// and returns the index of the tied one with the lowest KL (the earliest on equal KL).
fn pick(cands: &mut [Candidate], agrees: &[Vec<bool>]) -> usize {
    let counts: Vec<usize> = agrees.iter().map(|a| a.iter().filter(|&&x| x).count()).collect();
    let lead = (0..cands.len()).fold(0, |b, i| if counts[i] > counts[b] { i } else { b });
    let mut chosen = lead;
    for (i, a) in agrees.iter().enumerate() {
        // Images where exactly one of the two agrees with float.
        let only_lead = agrees[lead].iter().zip(a).filter(|(&l, &c)| l && !c).count() as f64;
        let only_this = agrees[lead].iter().zip(a).filter(|(&l, &c)| !l && c).count() as f64;
        let tied = only_lead - only_this <= 2.0 * (only_lead + only_this).sqrt();
        cands[i].tied_best = tied;
        if tied && (cands[i].kl < cands[chosen].kl || (cands[i].kl == cands[chosen].kl && i < chosen)) {
            chosen = i;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kl: f64) -> Candidate {
        Candidate {
            method: Method::MinMax,
            bias_correction: false,
            agreement: 0.0,
            kl,
            tied_best: false,
            sqnr_db: None,
        }
    }

    fn agrees(n: usize, wrong: &[usize]) -> Vec<bool> {
        (0..n).map(|i| !wrong.contains(&i)).collect()
    }

    fn run(a: &[Vec<bool>], kl: &[f64]) -> (usize, Vec<bool>) {
        let mut c: Vec<Candidate> = kl.iter().map(|&k| cand(k)).collect();
        let i = pick(&mut c, a);
        (i, c.iter().map(|c| c.tied_best).collect())
    }

    #[test]
    fn agreement_decides_when_the_images_resolve_it_and_kl_otherwise() {
        // The most-agreeing candidate is the second (2 misses); the first misses 3 (one more: noise, 1 <= 2 sqrt(1)),
        // the third 12 (10 more on the leader's hits: beyond 2 sqrt(10)). The first has the lowest KL of the tied.
        let a = [agrees(100, &[0, 1, 2]), agrees(100, &[0, 1]), agrees(100, &(0..12).collect::<Vec<_>>())];
        assert_eq!(run(&a, &[0.1, 0.3, 0.05]), (0, vec![true, true, false]));

        // Pairing matters: 5 more misses than the leader. Nested in the leader's misses (b = 5, c = 0): 5 > 2 sqrt(5),
        // resolved, the leader stays despite its higher KL. On disjoint images (b = 15, c = 10): 5 <= 2 sqrt(25), a
        // tie, and the lower KL wins.
        let lead = agrees(100, &(0..10).collect::<Vec<_>>());
        let nested = agrees(100, &(0..15).collect::<Vec<_>>());
        let disjoint = agrees(100, &(10..25).collect::<Vec<_>>());
        assert_eq!(run(&[nested, lead.clone()], &[0.1, 0.2]), (1, vec![false, true]));
        assert_eq!(run(&[disjoint, lead], &[0.1, 0.2]), (0, vec![true, true]));

        // The boundary: b = 4, c = 0 is within 2 sqrt(4).
        assert_eq!(run(&[agrees(50, &[]), agrees(50, &[0, 1, 2, 3])], &[0.2, 0.1]), (1, vec![true, true]));

        // Equal KL: the earlier candidate stays.
        assert_eq!(run(&[agrees(10, &[]), agrees(10, &[])], &[0.2, 0.2]).0, 0);
    }
}
