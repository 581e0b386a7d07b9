//! Elementwise f32 kernels: activations in place and broadcasting binary ops. The binary kernel
//! collapses the broadcast pattern into an outer odometer and a contiguous (or splatted) inner run,
//! so the inner loop vectorizes for the same-shape, per-channel and scalar cases alike.

use lowbit_core::Act;

use crate::isa::{trace, F32Isa};

#[inline(always)]
fn act_impl(act: Act, x: &mut [f32]) {
    match act {
        Act::None => {}
        Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Act::Clip { lo, hi } => x.iter_mut().for_each(|v| *v = v.max(lo).min(hi)),
        a => x.iter_mut().for_each(|v| *v = a.apply(*v)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn act_avx512(act: Act, x: &mut [f32]) {
    act_impl(act, x)
}

/// Applies `act` to every element in place, on path `isa` (the loop compiled for AVX-512 or AVX2,
/// or portable: the same IEEE operations, so the same bits).
pub fn apply_act(isa: F32Isa, act: Act, x: &mut [f32]) {
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    trace::f32(isa);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU supports the path (asserted above).
        F32Isa::Avx512 => return unsafe { act_avx512(act, x) },
        // SAFETY: as above.
        F32Isa::Avx2 => return unsafe { act_avx2(act, x) },
        F32Isa::Scalar => {}
    }
    act_impl(act, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_avx2(act: Act, x: &mut [f32]) {
    act_impl(act, x)
}

/// A binary elementwise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// Precomputed loop structure of a broadcasting binary op (built once, at plan time).
#[derive(Clone, Debug, PartialEq)]
pub struct Broadcast {
    /// Collapsed output dims, outermost first; the last one is the inner run.
    pub dims: Vec<usize>,
    pub a_strides: Vec<usize>,
    pub b_strides: Vec<usize>,
}

impl Broadcast {
    /// `a` and `b` are the input shapes, `out` the broadcast output shape.
    pub fn new(a: &[usize], b: &[usize], out: &[usize]) -> Broadcast {
        let r = out.len();
        let st = |s: &[usize]| -> Vec<usize> {
            let full = lowbit_core::tensor::strides(s);
            let mut v = vec![0; r];
            for d in 0..s.len() {
                v[r - s.len() + d] = if s[d] == 1 { 0 } else { full[d] };
            }
            v
        };
        let (sa, sb) = (st(a), st(b));
        let ost = lowbit_core::tensor::strides(out);
        // Collapse adjacent dims that are contiguous for a, b and out alike; drop size-1 dims.
        let mut dims: Vec<usize> = vec![];
        let mut ast: Vec<usize> = vec![];
        let mut bst: Vec<usize> = vec![];
        let mut ostv: Vec<usize> = vec![];
        for d in 0..r {
            if out[d] == 1 {
                continue;
            }
            if let Some(last) = dims.len().checked_sub(1) {
                let merge = ostv[last] == out[d] * ost[d] && ast[last] == out[d] * sa[d] && bst[last] == out[d] * sb[d];
                if merge {
                    dims[last] *= out[d];
                    ast[last] = sa[d];
                    bst[last] = sb[d];
                    ostv[last] = ost[d];
                    continue;
                }
            }
            dims.push(out[d]);
            ast.push(sa[d]);
            bst.push(sb[d]);
            ostv.push(ost[d]);
        }
        if dims.is_empty() {
            dims.push(1);
            ast.push(0);
            bst.push(0);
        }
        Broadcast { dims, a_strides: ast, b_strides: bst }
    }
}

#[inline(always)]
fn run(op: BinOp, a: &[f32], sa: usize, b: &[f32], sb: usize, o: &mut [f32]) {
    macro_rules! lanes {
        ($f:expr) => {
            match (sa, sb) {
                (1, 1) => o.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = $f(x, y)),
                (1, 0) => {
                    let y = b[0];
                    o.iter_mut().zip(a).for_each(|(o, &x)| *o = $f(x, y))
                }
                (0, 1) => {
                    let x = a[0];
                    o.iter_mut().zip(b).for_each(|(o, &y)| *o = $f(x, y))
                }
                _ => o.iter_mut().enumerate().for_each(|(i, o)| *o = $f(a[i * sa], b[i * sb])),
            }
        };
    }
    match op {
        BinOp::Add => lanes!(|x: f32, y: f32| x + y),
        BinOp::Sub => lanes!(|x: f32, y: f32| x - y),
        BinOp::Mul => lanes!(|x: f32, y: f32| x * y),
        BinOp::Div => lanes!(|x: f32, y: f32| x / y),
    }
}

#[inline(always)]
fn binary_impl(op: BinOp, bc: &Broadcast, a: &[f32], b: &[f32], out: &mut [f32]) {
    let r = bc.dims.len();
    let inner = bc.dims[r - 1];
    let (ia, ib) = (bc.a_strides[r - 1], bc.b_strides[r - 1]);
    let outer: usize = bc.dims[..r - 1].iter().product();
    let mut idx = vec![0usize; r - 1];
    let (mut pa, mut pb) = (0usize, 0usize);
    for row in 0..outer {
        let o = &mut out[row * inner..(row + 1) * inner];
        let alen = if ia == 0 { 1 } else { (inner - 1) * ia + 1 };
        let blen = if ib == 0 { 1 } else { (inner - 1) * ib + 1 };
        run(op, &a[pa..pa + alen], ia, &b[pb..pb + blen], ib, o);
        // advance odometer
        let mut d = r - 1;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            pa += bc.a_strides[d];
            pb += bc.b_strides[d];
            if idx[d] < bc.dims[d] {
                break;
            }
            pa -= bc.a_strides[d] * bc.dims[d];
            pb -= bc.b_strides[d] * bc.dims[d];
            idx[d] = 0;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn binary_avx512(op: BinOp, bc: &Broadcast, a: &[f32], b: &[f32], out: &mut [f32]) {
    binary_impl(op, bc, a, b, out)
}

/// `out = a (op) b` with numpy broadcasting described by `bc`.
pub fn binary(isa: F32Isa, op: BinOp, bc: &Broadcast, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    trace::f32(isa);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU supports the path (asserted above).
        F32Isa::Avx512 => return unsafe { binary_avx512(op, bc, a, b, out) },
        // SAFETY: as above.
        F32Isa::Avx2 => return unsafe { binary_avx2(op, bc, a, b, out) },
        F32Isa::Scalar => {}
    }
    binary_impl(op, bc, a, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn binary_avx2(op: BinOp, bc: &Broadcast, a: &[f32], b: &[f32], out: &mut [f32]) {
    binary_impl(op, bc, a, b, out)
}

/// [`binary`] split over threads along the outermost broadcast dimension (or in equal chunks when
/// the pattern collapsed to one dimension). Small tensors run on the calling thread.
pub fn binary_par(isa: F32Isa, op: BinOp, bc: &Broadcast, a: &[f32], b: &[f32], out: &mut [f32], threads: usize) {
    use rayon::prelude::*;
    let total = out.len();
    if threads <= 1 || total < 1 << 15 {
        return binary(isa, op, bc, a, b, out);
    }
    let parts = threads * 2;
    if bc.dims.len() == 1 {
        let chunk = total.div_ceil(parts);
        let (sa, sb) = (bc.a_strides[0], bc.b_strides[0]);
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
            let start = i * chunk;
            let sub = Broadcast { dims: vec![o.len()], a_strides: vec![sa], b_strides: vec![sb] };
            binary(isa, op, &sub, &a[start * sa..], &b[start * sb..], o);
        });
        return;
    }
    let d0 = bc.dims[0];
    let inner: usize = bc.dims[1..].iter().product();
    let rows = d0.div_ceil(parts).max(1);
    out.par_chunks_mut(rows * inner).enumerate().for_each(|(i, o)| {
        let r0 = i * rows;
        let mut sub = bc.clone();
        sub.dims[0] = o.len() / inner;
        binary(isa, op, &sub, &a[r0 * bc.a_strides[0]..], &b[r0 * bc.b_strides[0]..], o);
    });
}

/// [`apply_act`] split over threads for large tensors.
pub fn apply_act_par(isa: F32Isa, act: Act, x: &mut [f32], threads: usize) {
    use rayon::prelude::*;
    if threads <= 1 || x.len() < 1 << 15 {
        return apply_act(isa, act, x);
    }
    let chunk = x.len().div_ceil(threads * 2);
    x.par_chunks_mut(chunk).for_each(|c| apply_act(isa, act, c));
}
