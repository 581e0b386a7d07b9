//! Open-set metrics for embedding models, and the decomposition of a quantized model's embedding
//! error into the rotation of whole classes and each image's own deviation.
//!
//! Open set: the identities compared were never trained on, so a model is judged by angles
//! between embeddings, not by a classifier. [`open_set`] scores every pair of images (no sampled
//! pair list, so no seed): TAR at a FAR (the share of same-identity pairs accepted at the cosine
//! threshold that accepts that share of different-identity pairs) and leave-one-out rank-1
//! retrieval.
//!
//! Decomposition (after Wu et al., "Rotation Consistent Margin Loss for Efficient Low-bit Face
//! Recognition", CVPR 2020): with `f` the reference (float) embedding of an image of identity
//! `y`, `q` the quantized one, `c_y` and `ĉ_y` the normalised means of the normalised `f` and `q`
//! of that identity:
//! - total error: the angle between `f` and `q`;
//! - class error: the angle between `c_y` and `ĉ_y` (the whole class rotates; pairwise angles
//!   inside the class and the gaps between classes change little);
//! - individual error: the angle between `f` and `R_y q`, where `R_y` is the smallest rotation
//!   taking `ĉ_y` to `c_y` (what is left once the class rotation is undone);
//! - compactness change: the mean angle to the own centre, quantized minus float (positive: the
//!   class got looser).

use rayon::prelude::*;

/// `v / |v|` (zero stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| (*x as f64 / n) as f32).collect()
    } else {
        vec![0.0; v.len()]
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Angle in degrees between two unit vectors.
fn angle(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b).clamp(-1.0, 1.0).acos().to_degrees()
}

/// TAR at one FAR.
#[derive(Clone, Debug, PartialEq)]
pub struct TarAtFar {
    pub far: f64,
    /// Cosine threshold: pairs scoring above it are accepted.
    pub threshold: f64,
    pub tar: f64,
    /// Different-identity pairs actually accepted at the threshold (at most `far` of them).
    pub far_measured: f64,
}

/// Open-set verification and retrieval over every pair of a set of embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenSet {
    pub images: usize,
    pub identities: usize,
    pub positive_pairs: usize,
    pub negative_pairs: usize,
    /// One entry per FAR asked for that the negative pairs can resolve (at least 10 false
    /// accepts allowed: `far * negative_pairs >= 10`).
    pub tar: Vec<TarAtFar>,
    /// Share of images whose nearest other image (by cosine) has the same identity.
    pub rank1: f64,
    /// At the threshold of the smallest resolved FAR: the identity pairs with the most accepted
    /// different-identity pairs, `(a, b, count)`, most first (at most 5). Shows whether a few
    /// look-alike identities decide the TAR.
    pub confused: Vec<(u32, u32, usize)>,
}

/// Scores every pair of `emb` (rows of equal length) with identities `ids`.
pub fn open_set(emb: &[Vec<f32>], ids: &[u32], fars: &[f64]) -> OpenSet {
    let n = emb.len().min(ids.len());
    let e: Vec<Vec<f32>> = emb[..n].iter().map(|v| normalized(v)).collect();
    // Per row i: cosines to every j > i split by identity, and the best match over all j != i.
    let rows: Vec<(Vec<f32>, Vec<f32>, bool)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (mut pos, mut neg) = (vec![], vec![]);
            let (mut best, mut best_same) = (f64::NEG_INFINITY, false);
            for j in 0..n {
                if j == i {
                    continue;
                }
                let c = dot(&e[i], &e[j]);
                if c > best {
                    best = c;
                    best_same = ids[i] == ids[j];
                }
                if j > i {
                    if ids[i] == ids[j] {
                        pos.push(c as f32);
                    } else {
                        neg.push(c as f32);
                    }
                }
            }
            (pos, neg, best_same)
        })
        .collect();
    let rank1 = rows.iter().filter(|r| r.2).count() as f64 / n.max(1) as f64;
    let mut pos: Vec<f32> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let mut neg: Vec<f32> = rows.into_iter().flat_map(|r| r.1).collect();
    pos.sort_by(|a, b| b.total_cmp(a));
    neg.sort_by(|a, b| b.total_cmp(a));
    let mut ident: Vec<u32> = ids[..n].to_vec();
    ident.sort_unstable();
    ident.dedup();
    let tar: Vec<TarAtFar> = fars
        .iter()
        .filter(|&&far| far * neg.len() as f64 >= 10.0)
        .map(|&far| {
            // Accept at most floor(far * N) negatives: the threshold is the score of the next one.
            let k = (far * neg.len() as f64).floor() as usize;
            let threshold = neg[k.min(neg.len() - 1)] as f64;
            let accepted = |v: &[f32]| v.partition_point(|&c| c as f64 > threshold);
            TarAtFar {
                far,
                threshold,
                tar: accepted(&pos) as f64 / pos.len().max(1) as f64,
                far_measured: accepted(&neg) as f64 / neg.len() as f64,
            }
        })
        .collect();
    let confused = match tar.iter().map(|t| t.threshold).reduce(f64::max) {
        Some(t) => confusions(&e, &ids[..n], t),
        None => vec![],
    };
    OpenSet {
        images: n,
        identities: ident.len(),
        positive_pairs: pos.len(),
        negative_pairs: neg.len(),
        tar,
        rank1,
        confused,
    }
}

/// Different-identity pairs of unit embeddings `e` scoring above `t`, counted per identity pair;
/// the 5 largest counts.
fn confusions(e: &[Vec<f32>], ids: &[u32], t: f64) -> Vec<(u32, u32, usize)> {
    use std::collections::HashMap;
    let n = e.len();
    let counts = (0..n)
        .into_par_iter()
        .fold(HashMap::new, |mut m: HashMap<(u32, u32), usize>, i| {
            for j in i + 1..n {
                if ids[i] != ids[j] && dot(&e[i], &e[j]) as f32 as f64 > t {
                    *m.entry((ids[i].min(ids[j]), ids[i].max(ids[j]))).or_default() += 1;
                }
            }
            m
        })
        .reduce(HashMap::new, |mut a, b| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
            a
        });
    let mut v: Vec<(u32, u32, usize)> = counts.into_iter().map(|((a, b), c)| (a, b, c)).collect();
    v.sort_by(|x, y| y.2.cmp(&x.2).then((x.0, x.1).cmp(&(y.0, y.1))));
    v.truncate(5);
    v
}

/// `x` rotated by the smallest rotation taking unit vector `a` to unit vector `b` (in the plane
/// they span; identity elsewhere): `x + (b u - a v) + (u (b c - a) - v (b - a c)) / (1 + c)`
/// with `u = a.x`, `v = b.x`, `c = a.b` (Rodrigues' formula written without the matrix).
pub fn rotate(x: &[f32], a: &[f32], b: &[f32]) -> Vec<f32> {
    let (u, v, c) = (dot(a, x), dot(b, x), dot(a, b));
    if c <= -1.0 + 1e-9 {
        return x.to_vec(); // opposite centres: no unique smallest rotation
    }
    x.iter()
        .zip(a.iter().zip(b))
        .map(|(&xi, (&ai, &bi))| {
            let (ai, bi) = (ai as f64, bi as f64);
            (xi as f64 + (bi * u - ai * v) + (u * (bi * c - ai) - v * (bi - ai * c)) / (1.0 + c)) as f32
        })
        .collect()
}

/// One identity's share of the decomposition (angles in degrees).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassError {
    pub id: u32,
    pub images: usize,
    /// Angle between the reference and the quantized class centre.
    pub rotation: f64,
    /// Mean individual error of its images.
    pub individual: f64,
    /// Mean angle to the own centre: reference, quantized.
    pub spread: (f64, f64),
}

/// The decomposition of embedding error over a set of images (means over images, degrees).
#[derive(Clone, Debug, PartialEq)]
pub struct Decomposition {
    /// Mean angle between each image's reference and quantized embedding.
    pub total: f64,
    /// Mean over images of their class centre's rotation.
    pub class: f64,
    /// Mean over images of the angle left after undoing their class's rotation.
    pub individual: f64,
    /// Mean angle to the own class centre, quantized minus reference.
    pub compactness_change: f64,
    pub per_class: Vec<ClassError>,
}

/// Decomposes the error of `test` embeddings against `reference` ones for images of
/// identities `ids` (see the module documentation).
pub fn decompose(reference: &[Vec<f32>], test: &[Vec<f32>], ids: &[u32]) -> Decomposition {
    let n = reference.len().min(test.len()).min(ids.len());
    let f: Vec<Vec<f32>> = reference[..n].iter().map(|v| normalized(v)).collect();
    let q: Vec<Vec<f32>> = test[..n].iter().map(|v| normalized(v)).collect();
    let mut uniq: Vec<u32> = ids[..n].to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    let (mut total, mut class, mut indiv, mut spread_f, mut spread_q) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut per_class = vec![];
    for &id in &uniq {
        let members: Vec<usize> = (0..n).filter(|&i| ids[i] == id).collect();
        let centre = |e: &[Vec<f32>]| {
            let d = e[0].len();
            let mut s = vec![0f32; d];
            for &i in &members {
                for (a, b) in s.iter_mut().zip(&e[i]) {
                    *a += b;
                }
            }
            normalized(&s)
        };
        let (cf, cq) = (centre(&f), centre(&q));
        let rot = angle(&cf, &cq);
        let (mut ind, mut sf, mut sq) = (0.0, 0.0, 0.0);
        for &i in &members {
            total += angle(&f[i], &q[i]);
            ind += angle(&f[i], &normalized(&rotate(&q[i], &cq, &cf)));
            sf += angle(&f[i], &cf);
            sq += angle(&q[i], &cq);
        }
        let m = members.len() as f64;
        class += rot * m;
        indiv += ind;
        spread_f += sf;
        spread_q += sq;
        per_class.push(ClassError {
            id,
            images: members.len(),
            rotation: rot,
            individual: ind / m,
            spread: (sf / m, sq / m),
        });
    }
    let n = n.max(1) as f64;
    Decomposition {
        total: total / n,
        class: class / n,
        individual: indiv / n,
        compactness_change: (spread_q - spread_f) / n,
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn rotation_takes_a_to_b_and_keeps_angles() {
        let mut s = 7;
        let a = normalized(&(0..16).map(|_| rng(&mut s)).collect::<Vec<_>>());
        let b = normalized(&(0..16).map(|_| rng(&mut s)).collect::<Vec<_>>());
        let ra = rotate(&a, &a, &b);
        assert!(ra.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "{ra:?} vs {b:?}");
        let x = normalized(&(0..16).map(|_| rng(&mut s)).collect::<Vec<_>>());
        let y = normalized(&(0..16).map(|_| rng(&mut s)).collect::<Vec<_>>());
        let (rx, ry) = (rotate(&x, &a, &b), rotate(&y, &a, &b));
        assert!((dot(&rx, &ry) - dot(&x, &y)).abs() < 1e-5, "a rotation keeps inner products");
        assert!((dot(&rx, &rx) - 1.0).abs() < 1e-5);
    }

    /// A whole-class rotation is all class error and no individual error; noise on single images
    /// is individual error and barely moves the centre.
    #[test]
    fn decomposition_separates_class_rotation_from_individual_noise() {
        let mut s = 3;
        let d = 32;
        let mut reference = vec![];
        let mut ids = vec![];
        for id in 0..4u32 {
            let centre: Vec<f32> = (0..d).map(|_| rng(&mut s)).collect();
            for _ in 0..50 {
                reference.push(centre.iter().map(|c| c + 0.3 * rng(&mut s)).collect::<Vec<f32>>());
                ids.push(id);
            }
        }
        // Rotate every embedding of class 0..4 by its own small rotation (a plane rotation by 10
        // degrees of axes 2k, 2k+1): classes rotate whole.
        let rotated: Vec<Vec<f32>> = reference
            .iter()
            .zip(&ids)
            .map(|(v, &id)| {
                let mut w = v.clone();
                let (i, j) = (2 * id as usize, 2 * id as usize + 1);
                let (c, sn) = (10f32.to_radians().cos(), 10f32.to_radians().sin());
                w[i] = c * v[i] - sn * v[j];
                w[j] = sn * v[i] + c * v[j];
                w
            })
            .collect();
        let dr = decompose(&reference, &rotated, &ids);
        assert!(dr.class > 1.0, "class rotation seen: {dr:?}");
        assert!(dr.individual < 0.5 * dr.class, "{dr:?}");
        assert!(dr.compactness_change.abs() < 0.05, "{dr:?}");
        let noisy: Vec<Vec<f32>> =
            reference.iter().map(|v| v.iter().map(|x| x + 0.25 * rng(&mut s)).collect()).collect();
        let dn = decompose(&reference, &noisy, &ids);
        assert!(dn.individual > 3.0 * dn.class, "{dn:?}");
        assert!(dn.compactness_change > 0.0, "noise loosens classes: {dn:?}");
        // Identical embeddings: zero up to the acos of f32-rounded unit vectors (~0.005 degrees).
        let same = decompose(&reference, &reference, &ids);
        assert!(same.total < 0.02 && same.class < 0.02 && same.individual < 0.02, "{same:?}");
    }

    #[test]
    fn open_set_counts_every_pair_and_finds_tar() {
        // 3 identities x 20 images: well separated but one identity overlaps another a little.
        let mut s = 11;
        let mut emb = vec![];
        let mut ids = vec![];
        for id in 0..3u32 {
            for _ in 0..20 {
                let mut v: Vec<f32> = (0..8).map(|_| 0.2 * rng(&mut s)).collect();
                v[id as usize] += 1.0;
                emb.push(v);
                ids.push(id);
            }
        }
        let r = open_set(&emb, &ids, &[1e-3, 0.01, 0.1]);
        assert_eq!(r.positive_pairs, 3 * 190);
        assert_eq!(r.negative_pairs, 3 * 400);
        assert_eq!(r.identities, 3);
        // 1200 negatives resolve 0.01 (12) and 0.1, not 1e-3 (1.2).
        assert_eq!(r.tar.iter().map(|t| t.far).collect::<Vec<_>>(), vec![0.01, 0.1]);
        for t in &r.tar {
            assert!(t.far_measured <= t.far, "{t:?}");
            assert!(t.tar > 0.9, "{t:?}");
        }
        assert!(r.rank1 > 0.95);
        // The accepted negatives at the tightest threshold, per identity pair, are all of them.
        let tight = &r.tar[0];
        let per_pair: usize = r.confused.iter().map(|c| c.2).sum();
        assert_eq!(per_pair, (tight.far_measured * r.negative_pairs as f64).round() as usize, "{r:?}");
        assert!(r.confused.iter().all(|c| c.0 < c.1 && c.2 > 0), "{r:?}");
        // Random embeddings: rank-1 near chance, TAR near FAR.
        let rand: Vec<Vec<f32>> = (0..60).map(|_| (0..8).map(|_| rng(&mut s)).collect()).collect();
        let r = open_set(&rand, &ids, &[0.1]);
        assert!(r.rank1 < 0.7 && r.tar[0].tar < 0.4, "{r:?}");
    }
}
