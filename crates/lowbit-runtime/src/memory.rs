//! Liveness-based memory planning: every intermediate value gets an offset in one arena; values
//! whose lifetimes do not overlap share bytes. Greedy by size (largest first), lowest fitting
//! offset, as in TFLite's arena planner.

/// One buffer to place: size in bytes and the step range `[first, last]` during which it is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

pub const ALIGN: usize = 64;

/// Returns an offset per interval and the arena size. Offsets are `ALIGN`-aligned.
pub fn plan(intervals: &[Interval]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by(|&a, &b| intervals[b].bytes.cmp(&intervals[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![usize::MAX; intervals.len()];
    let mut placed: Vec<usize> = vec![];
    let mut total = 0;
    for &i in &order {
        let iv = intervals[i];
        let size = iv.bytes.div_ceil(ALIGN) * ALIGN;
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| intervals[j].first <= iv.last && iv.first <= intervals[j].last)
            .map(|&j| (offsets[j], offsets[j] + intervals[j].bytes.div_ceil(ALIGN) * ALIGN))
            .collect();
        busy.sort();
        let mut at = 0;
        for (s, e) in busy {
            if at + size <= s {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        total = total.max(at + size);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let iv = [Interval { bytes: 100, first: 0, last: 1 }, Interval { bytes: 100, first: 2, last: 3 }];
        let (off, total) = plan(&iv);
        assert_eq!(off[0], off[1]);
        assert_eq!(total, 128);
    }

    proptest::proptest! {
        #[test]
        fn live_buffers_never_overlap(spec in proptest::collection::vec((1usize..5000, 0usize..20, 0usize..6), 1..40)) {
            let iv: Vec<Interval> = spec.iter().map(|&(b, f, l)| Interval { bytes: b, first: f, last: f + l }).collect();
            let (off, total) = plan(&iv);
            for i in 0..iv.len() {
                proptest::prop_assert!(off[i] % ALIGN == 0);
                proptest::prop_assert!(off[i] + iv[i].bytes <= total);
                for j in 0..i {
                    let live = iv[i].first <= iv[j].last && iv[j].first <= iv[i].last;
                    if live {
                        proptest::prop_assert!(!overlaps((off[i], off[i] + iv[i].bytes), (off[j], off[j] + iv[j].bytes)));
                    }
                }
            }
        }
    }
}
