//! An open-set recognition protocol built from labelled classification sets: each source's
//! classes become identities (source `s`, class `c` -> identity `10 s + c`), some classes of every
//! source are trained on and the rest are kept for evaluation only, so that the evaluated
//! identities are never seen in training (as in face recognition, where test people are not in
//! the training set).
//!
//! lowbit's proxy (issue 23): Fashion-MNIST and MNIST, classes 0-5 of each trained on (12
//! identities), classes 6-9 of each evaluated (8 identities). Training images come from each
//! source's training split, evaluation images from its test split; a source with one file (the
//! 10,000 MNIST digits in `../shared/data/mnist10k`) serves both, which cannot leak because the
//! two sides share no class.

use crate::{DataError, ImageSet, Result};

/// Identities per source: source `s`, class `c` is identity `IDS_PER_SOURCE * s + c`.
pub const IDS_PER_SOURCE: u32 = 10;

/// The default split: these classes of every source are held out of training.
pub const DEFAULT_UNSEEN: [u32; 4] = [6, 7, 8, 9];

/// A training set of seen identities and an evaluation set of unseen ones.
#[derive(Clone, Debug)]
pub struct OpenSet {
    /// Images of the seen identities; labels renumbered `0..train_ids.len()`.
    pub train: ImageSet,
    /// The identity behind each training label.
    pub train_ids: Vec<u32>,
    /// Images of the unseen identities; labels are the identities themselves.
    pub eval: ImageSet,
}

fn keep(set: &ImageSet, want: impl Fn(u32) -> bool, id: impl Fn(u32) -> u32, out: &mut ImageSet) -> Result<()> {
    let labels = set.labels.as_ref().ok_or_else(|| DataError::Layout {
        path: set.source.clone().into(),
        reason: "open-set protocol needs labels".into(),
    })?;
    if (set.c, set.h, set.w) != (out.c, out.h, out.w) && out.n > 0 {
        return Err(DataError::Layout {
            path: set.source.clone().into(),
            reason: format!(
                "images are {}x{}x{}, the other source's {}x{}x{}",
                set.c, set.h, set.w, out.c, out.h, out.w
            ),
        });
    }
    (out.c, out.h, out.w) = (set.c, set.h, set.w);
    for (i, &l) in labels.iter().enumerate().take(set.n) {
        if want(l) {
            out.data.extend_from_slice(set.image(i));
            out.labels.get_or_insert_with(Vec::new).push(id(l));
            out.names.push(format!("{}:{}", set.source, set.names[i]));
            out.n += 1;
        }
    }
    Ok(())
}

fn empty(source: String) -> ImageSet {
    ImageSet { n: 0, c: 0, h: 0, w: 0, data: vec![], labels: Some(vec![]), names: vec![], source }
}

/// Builds the protocol from `(training split, test split)` of each source, holding out the
/// classes in `unseen`. Labels of a source must be below [`IDS_PER_SOURCE`].
pub fn open_set(sources: &[(&ImageSet, &ImageSet)], unseen: &[u32]) -> Result<OpenSet> {
    let names: Vec<String> = sources.iter().map(|(t, _)| t.source.clone()).collect();
    let mut train = empty(format!("open-set training identities of {}", names.join(" + ")));
    let mut eval = empty(format!("open-set unseen identities of {}", names.join(" + ")));
    for (s, (tr, te)) in sources.iter().enumerate() {
        for set in [tr, te] {
            if let Some(l) = set.labels.as_ref().and_then(|l| l.iter().find(|&&l| l >= IDS_PER_SOURCE)) {
                return Err(DataError::Layout {
                    path: set.source.clone().into(),
                    reason: format!(
                        "label {l}: the open-set protocol takes at most {IDS_PER_SOURCE} classes per source"
                    ),
                });
            }
        }
        let base = IDS_PER_SOURCE * s as u32;
        keep(tr, |l| !unseen.contains(&l), |l| base + l, &mut train)?;
        keep(te, |l| unseen.contains(&l), |l| base + l, &mut eval)?;
    }
    // Renumber the training identities densely for the classifier head.
    let mut train_ids: Vec<u32> = train.labels.clone().unwrap_or_default();
    train_ids.sort_unstable();
    train_ids.dedup();
    if let Some(l) = &mut train.labels {
        for v in l.iter_mut() {
            *v = train_ids.binary_search(v).unwrap_or(0) as u32;
        }
    }
    if train.n == 0 || eval.n == 0 {
        return Err(DataError::Layout {
            path: names.join(" + ").into(),
            reason: format!("open-set split leaves {} training and {} evaluation images", train.n, eval.n),
        });
    }
    Ok(OpenSet { train, train_ids, eval })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(source: &str, labels: &[u32]) -> ImageSet {
        ImageSet {
            n: labels.len(),
            c: 1,
            h: 1,
            w: 2,
            data: labels.iter().flat_map(|&l| [l as f32, 0.5]).collect(),
            labels: Some(labels.to_vec()),
            names: (0..labels.len()).map(|i| format!("idx:{i}")).collect(),
            source: source.into(),
        }
    }

    #[test]
    fn unseen_classes_never_reach_training() {
        let a_train = set("a", &[0, 6, 1, 9, 5]);
        let a_test = set("a", &[6, 0, 7]);
        let b = set("b", &[2, 8, 3, 6]);
        let o = open_set(&[(&a_train, &a_test), (&b, &b)], &DEFAULT_UNSEEN).unwrap();
        assert_eq!(o.train_ids, vec![0, 1, 5, 12, 13]);
        assert_eq!(o.train.labels.as_deref(), Some(&[0, 1, 2, 3, 4][..]));
        // Pixels travel with their labels: the first value of each image is its source class.
        let firsts: Vec<f32> = (0..o.train.n).map(|i| o.train.image(i)[0]).collect();
        assert_eq!(firsts, vec![0.0, 1.0, 5.0, 2.0, 3.0]);
        assert_eq!(o.eval.labels.as_deref(), Some(&[6, 7, 18, 16][..]));
        assert!(o.eval.labels.as_ref().unwrap().iter().all(|l| DEFAULT_UNSEEN.contains(&(l % 10))));
        assert_eq!(o.eval.n, 4);
    }

    #[test]
    fn bad_sources_are_refused_with_their_name() {
        let big = set("big", &[0, 12]);
        let e = open_set(&[(&big, &big)], &DEFAULT_UNSEEN).unwrap_err().to_string();
        assert!(e.contains("big") && e.contains("label 12"), "{e}");
        let only_seen = set("seen", &[0, 1]);
        let e = open_set(&[(&only_seen, &only_seen)], &DEFAULT_UNSEEN).unwrap_err().to_string();
        assert!(e.contains("0 evaluation images"), "{e}");
        let mut odd = set("odd", &[6]);
        odd.w = 1;
        odd.data = vec![6.0];
        let a = set("a", &[0, 6]);
        let e = open_set(&[(&a, &a), (&odd, &odd)], &DEFAULT_UNSEEN).unwrap_err().to_string();
        assert!(e.contains("odd") && e.contains("1x1x1"), "{e}");
    }
}
