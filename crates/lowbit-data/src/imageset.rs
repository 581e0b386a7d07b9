//! A preprocessed, in-memory batch of images.

/// N preprocessed images in NCHW order, with optional labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// N*C*H*W values, NCHW, already preprocessed.
    pub data: Vec<f32>,
    /// One label per image, when the source had labels.
    pub labels: Option<Vec<u32>>,
    /// Per image: its file name, or `idx:<i>` for images from an IDX file.
    pub names: Vec<String>,
    /// The path the images came from (for messages).
    pub source: String,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Values per image (C*H*W).
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// `[n, c, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// The CHW values of image `i`. Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.n, "image {i} out of range: {} has {} images", self.source, self.n);
        let len = self.image_len();
        &self.data[i * len..(i + 1) * len]
    }

    /// The label of image `i`, if the set is labelled.
    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().and_then(|l| l.get(i).copied())
    }

    /// Largest label + 1 (None when unlabelled or empty).
    pub fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref()?.iter().max().map(|&m| m as usize + 1)
    }

    /// Images `start..start+len`, clamped to the set (so possibly fewer, or none).
    pub fn slice(&self, start: usize, len: usize) -> ImageSet {
        let start = start.min(self.n);
        let end = start.saturating_add(len).min(self.n);
        let il = self.image_len();
        ImageSet {
            n: end - start,
            c: self.c,
            h: self.h,
            w: self.w,
            data: self.data[start * il..end * il].to_vec(),
            labels: self.labels.as_ref().map(|l| l[start..end].to_vec()),
            names: self.names[start..end].to_vec(),
            source: self.source.clone(),
        }
    }

    /// `(start, len, data)` for consecutive batches of `batch` images (at least 1); the last batch
    /// may be shorter.
    pub fn batches(&self, batch: usize) -> impl Iterator<Item = (usize, usize, &[f32])> + '_ {
        let batch = batch.max(1);
        let il = self.image_len();
        (0..self.n).step_by(batch).map(move |start| {
            let len = batch.min(self.n - start);
            (start, len, &self.data[start * il..(start + len) * il])
        })
    }

    /// Keeps at most the first `limit` images.
    pub fn take(mut self, limit: usize) -> ImageSet {
        if limit < self.n {
            self.n = limit;
            self.data.truncate(limit * self.image_len());
            if let Some(l) = &mut self.labels {
                l.truncate(limit);
            }
            self.names.truncate(limit);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5 images of 1x1x2, image i holds [i, i + 0.5], label 10 + i.
    fn five() -> ImageSet {
        ImageSet {
            n: 5,
            c: 1,
            h: 1,
            w: 2,
            data: (0..5).flat_map(|i| [i as f32, i as f32 + 0.5]).collect(),
            labels: Some((10..15).collect()),
            names: (0..5).map(|i| format!("idx:{i}")).collect(),
            source: "test".into(),
        }
    }

    #[test]
    fn image_and_label() {
        let s = five();
        assert_eq!(s.image(3), &[3.0, 3.5]);
        assert_eq!(s.label(3), Some(13));
        assert_eq!(s.label(5), None);
        assert_eq!(s.num_classes(), Some(15));
        assert_eq!(s.shape(), [5, 1, 1, 2]);
    }

    #[test]
    fn slice_is_clamped() {
        let s = five().slice(3, 10);
        assert_eq!(s.n, 2);
        assert_eq!(s.data, vec![3.0, 3.5, 4.0, 4.5]);
        assert_eq!(s.labels, Some(vec![13, 14]));
        assert_eq!(s.names, vec!["idx:3", "idx:4"]);
        let empty = five().slice(7, 2);
        assert!(empty.is_empty() && empty.data.is_empty() && empty.names.is_empty());
    }

    #[test]
    fn batches_cover_everything_last_shorter() {
        let s = five();
        let b: Vec<_> = s.batches(2).map(|(st, len, d)| (st, len, d.to_vec())).collect();
        assert_eq!(
            b,
            vec![(0, 2, vec![0.0, 0.5, 1.0, 1.5]), (2, 2, vec![2.0, 2.5, 3.0, 3.5]), (4, 1, vec![4.0, 4.5]),]
        );
        assert_eq!(s.batches(0).count(), 5, "batch 0 is treated as 1");
        assert_eq!(s.batches(100).count(), 1);
    }

    #[test]
    fn take_truncates_everything() {
        let s = five().take(2);
        assert_eq!((s.n, s.data.len(), s.names.len()), (2, 4, 2));
        assert_eq!(s.labels, Some(vec![10, 11]));
        assert_eq!(five().take(99), five());
    }
}
