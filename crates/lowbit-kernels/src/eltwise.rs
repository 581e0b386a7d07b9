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

/// `e^x` for the logistic function, written so the loop vectorizes (no library call): Cody-Waite
/// reduction `x = n·ln 2 + r`, Cephes' degree-6 polynomial for `e^r`, `2^n` built in the exponent
/// bits; `x` clamped to [-87, 88] (normal results). Within 2 ulp of the exact value there.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // SAFETY: `n` is an integer in [-126, 127] (from the clamp), so the conversion is exact.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    e * f32::from_bits(((n + 127) as u32) << 23)
}

/// The logistic function `1 / (1 + e^-x)` (NaN stays NaN).
#[inline(always)]
pub fn sigmoid_one(x: f32) -> f32 {
    if x.is_nan() {
        x
    } else {
        1.0 / (1.0 + exp_poly(-x))
    }
}

#[inline(always)]
fn sigmoid_impl(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = sigmoid_one(v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sigmoid_avx512(x: &[f32], out: &mut [f32]) {
    sigmoid_impl(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_avx2(x: &[f32], out: &mut [f32]) {
    sigmoid_impl(x, out)
}

/// `out[i] = sigmoid(x[i])` on path `isa` (every path the same IEEE operations, so the same bits;
/// a model's logistic outputs ran on the reference evaluator's scalar `expf` before: U²-Netp's
/// seven 320x320 side outputs took 1.2 ms), split over the pool for large tensors.
pub fn sigmoid(isa: F32Isa, x: &[f32], out: &mut [f32], threads: usize) {
    use rayon::prelude::*;
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    assert_eq!(x.len(), out.len());
    trace::f32(isa);
    let run = |x: &[f32], out: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: the CPU supports the path (asserted above).
            F32Isa::Avx512 => return unsafe { sigmoid_avx512(x, out) },
            // SAFETY: as above.
            F32Isa::Avx2 => return unsafe { sigmoid_avx2(x, out) },
            F32Isa::Scalar => {}
        }
        sigmoid_impl(x, out)
    };
    if threads <= 1 || x.len() < 1 << 15 {
        return run(x, out);
    }
    let chunk = x.len().div_ceil(threads * 2);
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, x)| run(x, o));
}

#[cfg(test)]
mod sigmoid_tests {
    use super::*;

    /// Within 4e-7 (relative) of the exact logistic function down to the subnormal range, NaN kept,
    /// the infinities handled, every path and thread count the same bits.
    #[test]
    fn sigmoid_is_accurate_and_the_same_on_every_path() {
        let mut x: Vec<f32> = (0..200_001).map(|i| (i as f32 - 100_000.0) * 1e-3).collect();
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-30, 88.5, -88.5, 200.0, -200.0]);
        let mut want = vec![0f32; x.len()];
        sigmoid(F32Isa::Scalar, &x, &mut want, 1);
        for (&v, &y) in x.iter().zip(&want) {
            if v.is_nan() {
                assert!(y.is_nan());
                continue;
            }
            let exact = 1.0 / (1.0 + (-(v as f64)).exp());
            let err = (y as f64 - exact).abs();
            assert!(err <= 4e-7 * exact + 1e-38, "sigmoid({v}) = {y}, exact {exact}");
            if v == f32::INFINITY || v == 200.0 {
                assert_eq!(y, 1.0);
            }
        }
        for isa in F32Isa::all_supported() {
            for threads in [1, 2] {
                let mut got = vec![0f32; x.len()];
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| sigmoid(isa, &x, &mut got, threads));
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} threads {threads}");
            }
        }
    }
}
