//! The primitives shape inference is built from: what is known about an input, broadcasting,
//! axis normalization and constant inputs. A leaf module ([`crate::shape`] and
//! [`crate::shape_ops`] both use it).

use crate::{DType, Error, Result, Tensor};

/// What is known about one input while inferring shapes.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    /// The value itself when it is a constant.
    pub value: Option<&'a Tensor>,
}

pub(crate) fn or_ones(v: &[usize], n: usize) -> Vec<usize> {
    if v.is_empty() {
        vec![1; n]
    } else {
        v.to_vec()
    }
}

/// Numpy-style multidirectional broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::Invalid(format!("shapes {a:?} and {b:?} do not broadcast")));
        };
    }
    Ok(out)
}

/// Normalizes a possibly negative axis against `rank` (a scalar has no axis).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis.saturating_add(r) } else { axis };
    if a < 0 || a >= r {
        return Err(Error::Invalid(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

pub(crate) fn need<'a>(ins: &'a [Option<Known<'a>>], i: usize) -> Result<Known<'a>> {
    ins.get(i).copied().flatten().ok_or_else(|| Error::Invalid(format!("missing input {i}")))
}

pub(crate) fn need_const<'a>(ins: &'a [Option<Known<'a>>], i: usize, what: &str) -> Result<&'a Tensor> {
    need(ins, i)?
        .value
        .ok_or_else(|| Error::Invalid(format!("{what} (input {i}) must be a constant or computable from shapes")))
}
