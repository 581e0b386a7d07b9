//! Float data movement of detection/segmentation networks: Concat and 2-D Resize (nearest and
//! linear) over NCHW planes. Portable code with no SIMD; each computes exactly what the reference
//! evaluator does, in the same order (Resize: along the height, then along the width), so the
//! results are bit-identical to it.

use lowbit_core::{DType, Node, Tensor};

/// Concatenation: for each of `outer` blocks, each part's `inners[i]` values in turn.
pub fn concat_f32(parts: &[&[f32]], outer: usize, inners: &[usize], out: &mut [f32]) {
    let mut at = 0;
    for o in 0..outer {
        for (p, &inner) in parts.iter().zip(inners) {
            out[at..at + inner].copy_from_slice(&p[o * inner..(o + 1) * inner]);
            at += inner;
        }
    }
}

/// One resized axis: per output index, the two source indices and the weight of the second
/// (linear), or the source index in both with weight 0 (nearest).
#[derive(Clone, Debug, PartialEq)]
pub struct Taps {
    pub taps: Vec<(usize, usize, f32)>,
    pub nearest: bool,
}

/// Resizes `planes` planes of `h`x`w` to `oh`x`ow`: the height first (when `rows` is given), then
/// the width (when `cols` is given). `scratch` holds `planes * oh * w` values when both are given.
#[allow(clippy::too_many_arguments)]
pub fn resize2d_f32(
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    rows: Option<&Taps>,
    cols: Option<&Taps>,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let along_h = |src: &[f32], dst: &mut [f32], t: &Taps| {
        for p in 0..planes {
            let (s, d) = (&src[p * h * w..(p + 1) * h * w], &mut dst[p * oh * w..(p + 1) * oh * w]);
            for (j, &(i0, i1, f)) in t.taps.iter().enumerate() {
                let (a, b, o) = (&s[i0 * w..(i0 + 1) * w], &s[i1 * w..(i1 + 1) * w], &mut d[j * w..(j + 1) * w]);
                if t.nearest {
                    o.copy_from_slice(a);
                } else {
                    for k in 0..w {
                        o[k] = a[k] + (b[k] - a[k]) * f;
                    }
                }
            }
        }
    };
    let along_w = |src: &[f32], dst: &mut [f32], t: &Taps| {
        for (s, d) in src.chunks_exact(w).zip(dst.chunks_exact_mut(ow)) {
            for (o, &(j0, j1, f)) in d.iter_mut().zip(&t.taps) {
                *o = if t.nearest { s[j0] } else { s[j0] + (s[j1] - s[j0]) * f };
            }
        }
    };
    match (rows, cols) {
        (Some(r), Some(c)) => {
            let mid = &mut scratch[..planes * oh * w];
            along_h(x, mid, r);
            along_w(mid, out, c);
        }
        (Some(r), None) => along_h(x, out, r),
        (None, Some(c)) => along_w(x, out, c),
        (None, None) => out.copy_from_slice(&x[..out.len()]),
    }
}

pub type ResizeTaps = (Option<Taps>, Option<Taps>);

/// The per-axis taps of a Resize that changes only the last two axes of NCHW, as the reference
/// evaluator computes them (`None` when it resizes N or C, or its sizes are not constant).
pub fn resize_taps<'a>(
    n: &Node,
    r: &lowbit_core::ResizeAttrs,
    xs: &[usize],
    out: &[usize],
    konst: &dyn Fn(usize) -> Option<&'a Tensor>,
) -> Option<ResizeTaps> {
    use crate::refops::{linear_taps, nearest_index, resize_coord};
    use lowbit_core::shape::Known;
    let known: Vec<Option<Known>> = (0..n.inputs.len())
        .map(|i| match i {
            0 => Some(Known { dtype: DType::F32, shape: xs, value: None }),
            _ => konst(i).map(|t| Known { dtype: t.dtype(), shape: &t.shape, value: Some(t) }),
        })
        .collect();
    let (shape, scales) = lowbit_core::shape_ops::resize_plan(xs, r, &known).ok()?;
    if shape != out || scales[0] != 1.0 || scales[1] != 1.0 || xs[2] == 0 || xs[3] == 0 {
        return None;
    }
    let axis = |d: usize| -> Option<Taps> {
        if xs[d] == out[d] && scales[d] == 1.0 {
            return None; // the reference skips an unchanged axis
        }
        let nearest = r.mode == lowbit_core::ResizeMode::Nearest;
        let taps = (0..out[d])
            .map(|j| {
                let c = resize_coord(r.coord, j, scales[d], xs[d], out[d], (0.0, 1.0));
                if nearest {
                    let i = nearest_index(r.nearest, c, xs[d]);
                    (i, i, 0.0)
                } else {
                    linear_taps(c, xs[d])
                }
            })
            .collect();
        Some(Taps { taps, nearest })
    };
    Some((axis(2), axis(3)))
}
