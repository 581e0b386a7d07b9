//! DSQ's fake quantizer as one differentiable operation (a backend extension with a handwritten
//! backward, like [`crate::conv`]).
//!
//! Written with burn's tensor operations ([`crate::fq::dsq`]), the quantizer is about fifteen
//! element-wise passes forward (scale, clamp, floor, log, tanh, round, the straight-through
//! combination) and as many backward, each a separate kernel holding its own intermediate
//! tensor. Here the forward is one pass and the backward one pass that also reduces the step and
//! `α` gradients. The values and gradients are those of the composed version:
//! - `u = x/s + zp`, `v = clamp(u, qmin, qmax)`, forward `y = (round_half_even(v) - zp)·s`;
//! - backward through the soft staircase `φ(v) = i + (tanh(k(v - i - ½))/tanh(k/2) + 1)/2`,
//!   `i = clamp(⌊v⌋, qmin, qmax - 1)`, `k = ln(2/α - 1)`, `α` clamped to `[0.001, 0.5]`;
//! - the step's gradient scaled by LSQ's `g`.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::conv::f32_data;
use crate::fq::{floor, rint, Range};

/// The quantizer's constants: `[zp, qmin, qmax, g, inner]`; `x` is viewed as rows of `inner`
/// values, row `r` in channel `r mod C` (`C` = the step's length; with one step, one channel).
pub type DsqParams = [f32; 5];

/// The α clamp of [`crate::model`]'s DSQ quantizers.
const ALPHA_MIN: f32 = 1e-3;
const ALPHA_MAX: f32 = 0.5;

#[backend_extension(Flex, Autodiff)]
pub trait LbDsq: Backend {
    /// DSQ fake quantization of `x` with per-channel steps `s` (`C`) and one `alpha` (`1`).
    fn lb_dsq(x: FloatTensor<Self>, s: FloatTensor<Self>, alpha: FloatTensor<Self>, p: DsqParams) -> FloatTensor<Self>;
}

/// DSQ fake quantization of `x` (any rank) with steps `s` (length 1, or one per index of `axis`)
/// and the characteristic variable `alpha` (length 1); see the module documentation.
pub fn dsq<const D: usize>(
    x: Tensor<D>,
    s: Tensor<1>,
    alpha: Tensor<1>,
    r: Range,
    g: f32,
    axis: Option<usize>,
) -> Tensor<D> {
    let dims = x.dims();
    let c = s.dims()[0];
    let inner = crate::fq::row_len(&dims, c, axis, "dsq");
    let p = [r.zp, r.qmin, r.qmax, g, inner as f32];
    Tensor::<D>::from_dispatch(<Dispatch as LbDsq>::lb_dsq(
        x.into_dispatch(),
        s.into_dispatch(),
        alpha.into_dispatch(),
        p,
    ))
}

struct Consts {
    zp: f32,
    qmin: f32,
    qmax: f32,
    g: f32,
    inner: usize,
}

fn consts(p: DsqParams) -> Consts {
    Consts { zp: p[0], qmin: p[1], qmax: p[2], g: p[3], inner: (p[4] as usize).max(1) }
}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2^23: adding and subtracting it rounds to the nearest integer.
const ROUND_M: f32 = 12_582_912.0;
/// `tanh(20)` is 1 in f32.
const TANH_Y_MAX: f32 = 40.0;
/// Taylor coefficients of `e^r` after the constant term: 1, 1/2!, ..., 1/7!.
const EXP_C: [f32; 7] = [1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// `tanh(x)` to about 3e-7 absolute error, branch-free (`f32::tanh` is a library call per
/// element: it made a DSQ epoch 3.4x a float one on one thread). `tanh(|x|) = 1 - 2/(e^(2|x|) +
/// 1)`, `e^y = 2^n·p(r)` with `n = round(y/ln 2)`, `|r| <= ln2/2` and `p` the degree-7 Taylor
/// polynomial (relative error below 2e-8 on that interval). [`tanh_avx2`] does the same
/// operations in the same order.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let y = (2.0 * x.abs()).min(TANH_Y_MAX);
    let t = y * std::f32::consts::LOG2_E + ROUND_M;
    let n = t - ROUND_M;
    // n in 0..=58 sits in t's low mantissa bits: 2^n built with integer operations only.
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND_M.to_bits()).wrapping_add(127)) << 23);
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_C[6];
    for c in EXP_C[..6].iter().rev() {
        p = c + r * p;
    }
    let e = (1.0 + r * p) * two_n;
    (1.0 - 2.0 / (e + 1.0)).copysign(x)
}

/// Partial sums kept per lane in the backward's reductions (the AVX2 vector width).
const LANES: usize = 8;

/// The per-element constants of one channel's backward.
#[derive(Clone, Copy)]
struct Elem {
    st: f32,
    zp: f32,
    qmin: f32,
    qmax: f32,
    i_max: f32,
    kk: f32,
    /// `2·tanh(k/2)`, `1 - tanh²(k/2)`, `2·tanh²(k/2)`.
    two_norm: f32,
    norm: f32,
    one_minus_norm2: f32,
    two_norm2: f32,
}

impl Elem {
    fn new(st: f32, k: &Consts, i_max: f32, kk: f32) -> Elem {
        let norm = (0.5 * kk).tanh();
        Elem {
            st,
            zp: k.zp,
            qmin: k.qmin,
            qmax: k.qmax,
            i_max,
            kk,
            two_norm: 2.0 * norm,
            norm,
            one_minus_norm2: 1.0 - norm * norm,
            two_norm2: 2.0 * norm * norm,
        }
    }

    /// `(dx, ds term, dk term)` of one element with input `xv` and output gradient `gy`; the
    /// operations and their order are those of [`row_avx2`]'s lanes.
    #[inline(always)]
    fn grads(&self, xv: f32, gy: f32) -> (f32, f32, f32) {
        let u = xv / self.st + self.zp;
        let inside = u >= self.qmin && u <= self.qmax;
        let v = u.max(self.qmin).min(self.qmax);
        let hard = rint(v);
        let i = floor(v).max(self.qmin).min(self.i_max);
        let e = (v - i) - 0.5;
        let th = tanh(self.kk * e);
        let sech2 = 1.0 - th * th;
        // dφ/dv and dφ/dk.
        let dphi_dv = (self.kk * sech2) / self.two_norm;
        let dphi_dk = ((e * sech2) * self.norm - (0.5 * th) * self.one_minus_norm2) / self.two_norm2;
        let dv = if inside { dphi_dv } else { 0.0 };
        // y = (φ(v) - zp)·s in the backward: dy/dx = dφ/dv·[inside], dy/ds = (hard - zp) - dφ/dv·[inside]·x/s.
        (gy * dv, gy * ((hard - self.zp) - (dv * xv) / self.st), (gy * self.st) * dphi_dk)
    }
}

/// One row of the backward: writes `dx` into `dr`, returns the row's sums of the step and `k`
/// terms. Lane `l` sums elements `l, l + 8, ...` of the whole-vector part, the tail goes to lane
/// 0, and the lanes are added in order (the order [`row_avx2`] keeps, so the two agree bit for bit).
fn row_scalar(e: &Elem, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> (f32, f32) {
    let (mut sa, mut sb) = ([0f32; LANES], [0f32; LANES]);
    let body = dr.len() / LANES * LANES;
    for j in 0..body {
        let (d, a, b) = e.grads(xr[j], gr[j]);
        dr[j] = d;
        sa[j % LANES] += a;
        sb[j % LANES] += b;
    }
    row_tail(e, xr, gr, dr, body, sa, sb)
}

fn row_tail(
    e: &Elem,
    xr: &[f32],
    gr: &[f32],
    dr: &mut [f32],
    body: usize,
    mut sa: [f32; LANES],
    mut sb: [f32; LANES],
) -> (f32, f32) {
    for j in body..dr.len() {
        let (d, a, b) = e.grads(xr[j], gr[j]);
        dr[j] = d;
        sa[0] += a;
        sb[0] += b;
    }
    (sa.iter().fold(0.0, |s, v| s + v), sb.iter().fold(0.0, |s, v| s + v))
}

/// [`row_scalar`] on AVX2, eight elements per step, bit-identical to it (no FMA: every multiply
/// and add rounds as the scalar code's does).
///
/// # Safety
/// The CPU has AVX2; `xr`, `gr` and `dr` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(e: &Elem, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps;
    let (st, zp, qmin, qmax, i_max, kk) = (s(e.st), s(e.zp), s(e.qmin), s(e.qmax), s(e.i_max), s(e.kk));
    let (two_norm, norm, omn2, two_norm2) = (s(e.two_norm), s(e.norm), s(e.one_minus_norm2), s(e.two_norm2));
    let (one, half) = (s(1.0), s(0.5));
    let (mut sa, mut sb) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let body = dr.len() / LANES * LANES;
    let mut j = 0;
    while j < body {
        let xv = _mm256_loadu_ps(xr.as_ptr().add(j));
        let gy = _mm256_loadu_ps(gr.as_ptr().add(j));
        let u = _mm256_add_ps(_mm256_div_ps(xv, st), zp);
        let inside = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(u, qmin), _mm256_cmp_ps::<_CMP_LE_OQ>(u, qmax));
        let v = _mm256_min_ps(_mm256_max_ps(u, qmin), qmax);
        let hard = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let i = _mm256_min_ps(_mm256_max_ps(_mm256_floor_ps(v), qmin), i_max);
        let ev = _mm256_sub_ps(_mm256_sub_ps(v, i), half);
        let th = tanh_avx2(_mm256_mul_ps(kk, ev));
        let sech2 = _mm256_sub_ps(one, _mm256_mul_ps(th, th));
        let dphi_dv = _mm256_div_ps(_mm256_mul_ps(kk, sech2), two_norm);
        let dphi_dk = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(ev, sech2), norm), _mm256_mul_ps(_mm256_mul_ps(half, th), omn2)),
            two_norm2,
        );
        let dv = _mm256_and_ps(dphi_dv, inside);
        _mm256_storeu_ps(dr.as_mut_ptr().add(j), _mm256_mul_ps(gy, dv));
        let a = _mm256_mul_ps(gy, _mm256_sub_ps(_mm256_sub_ps(hard, zp), _mm256_div_ps(_mm256_mul_ps(dv, xv), st)));
        let b = _mm256_mul_ps(_mm256_mul_ps(gy, st), dphi_dk);
        sa = _mm256_add_ps(sa, a);
        sb = _mm256_add_ps(sb, b);
        j += LANES;
    }
    let (mut la, mut lb) = ([0f32; LANES], [0f32; LANES]);
    _mm256_storeu_ps(la.as_mut_ptr(), sa);
    _mm256_storeu_ps(lb.as_mut_ptr(), sb);
    row_tail(e, xr, gr, dr, body, la, lb)
}

/// [`tanh`] on eight lanes, the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tanh_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps;
    let sign = _mm256_set1_ps(-0.0);
    let ax = _mm256_andnot_ps(sign, x);
    let y = _mm256_min_ps(_mm256_mul_ps(s(2.0), ax), s(TANH_Y_MAX));
    let t = _mm256_add_ps(_mm256_mul_ps(y, s(std::f32::consts::LOG2_E)), s(ROUND_M));
    let n = _mm256_sub_ps(t, s(ROUND_M));
    let bits = _mm256_add_epi32(
        _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(ROUND_M.to_bits() as i32)),
        _mm256_set1_epi32(127),
    );
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits));
    let r = _mm256_sub_ps(_mm256_sub_ps(y, _mm256_mul_ps(n, s(LN2_HI))), _mm256_mul_ps(n, s(LN2_LO)));
    let mut p = s(EXP_C[6]);
    for c in EXP_C[..6].iter().rev() {
        p = _mm256_add_ps(s(*c), _mm256_mul_ps(r, p));
    }
    let e = _mm256_mul_ps(_mm256_add_ps(s(1.0), _mm256_mul_ps(r, p)), two_n);
    let th = _mm256_sub_ps(s(1.0), _mm256_div_ps(s(2.0), _mm256_add_ps(e, s(1.0))));
    _mm256_or_ps(th, _mm256_and_ps(sign, x))
}

/// Whether the backward runs [`row_avx2`]: where the fake quantizers' rows run vectorised (AVX2
/// or AVX-512 CPUs unless `LOWBIT_ISA=scalar`; [`crate::fqop::width`]).
fn use_avx2() -> bool {
    crate::fqop::width() != crate::fqop::Width::Scalar
}

fn row(avx2: bool, e: &Elem, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `use_avx2` checked the CPU; the three slices have the row's length.
        return unsafe { row_avx2(e, xr, gr, dr) };
    }
    let _ = avx2;
    row_scalar(e, xr, gr, dr)
}

fn forward(x: &FlexTensor, s: &FlexTensor, p: DsqParams) -> FlexTensor {
    let (x, s) = (f32_data(x, "input"), f32_data(s, "step"));
    let k = consts(p);
    let xs: &[f32] = x.storage();
    let ss: &[f32] = s.storage();
    let c = ss.len();
    let chunk = crate::fq::rows_per_task(k.inner) * k.inner;
    // DSQ's forward value is the hard quantizer's, STE's forward row.
    let (w, ste) = (crate::fqop::width(), crate::fqop::ste_consts(k.zp, k.qmin, k.qmax));
    let y = crate::par_build(xs.len(), chunk, |t, yc| {
        let row0 = t * chunk / k.inner;
        for (j, yr) in yc.chunks_mut(k.inner).enumerate() {
            let (off, len) = ((row0 + j) * k.inner, yr.len());
            crate::fqop::fwd_row_on(w, &ste, ss[(row0 + j) % c], &xs[off..off + len], yr);
        }
    });
    FlexTensor::from_data(TensorData::new(y, x.layout().shape().to_vec()))
}

/// `(dx, ds, dalpha)`.
fn backward(x: &FlexTensor, s: &FlexTensor, alpha: &FlexTensor, dy: &FlexTensor, p: DsqParams) -> [FlexTensor; 3] {
    let (x, s, dy) = (f32_data(x, "input"), f32_data(s, "step"), f32_data(dy, "gradient"));
    let a_raw = f32_data(alpha, "alpha").storage::<f32>()[0];
    let k = consts(p);
    let (xs, ss, dys): (&[f32], &[f32], &[f32]) = (x.storage(), s.storage(), dy.storage());
    let c = ss.len();
    let a = a_raw.clamp(ALPHA_MIN, ALPHA_MAX);
    let a_live = (ALPHA_MIN..=ALPHA_MAX).contains(&a_raw);
    let kk = (2.0 / a - 1.0).ln();
    let avx2 = use_avx2();
    let dk_da = -2.0 / (a * (2.0 - a));
    let i_max = (k.qmax - 1.0).max(k.qmin);
    let chunk = crate::fq::rows_per_task(k.inner) * k.inner;
    // `dx` is built on the pool (zeroing it first on the calling thread ran serially); the
    // per-task sums are added in task order.
    let (dx, parts) = crate::par_build_map(xs.len(), chunk, |t, dc| {
        let row0 = t * chunk / k.inner;
        let mut ds = vec![0f64; c];
        let mut dk = 0f64;
        for (j, dr) in dc.chunks_mut(k.inner).enumerate() {
            let ch = (row0 + j) % c;
            let st = ss[ch];
            let (off, len) = ((row0 + j) * k.inner, dr.len());
            let e = Elem::new(st, &k, i_max, kk);
            let (ds_row, dk_row) = row(avx2, &e, &xs[off..off + len], &dys[off..off + len], dr);
            ds[ch] += ds_row as f64;
            dk += dk_row as f64;
        }
        (ds, dk)
    });
    let (mut ds, mut dalpha) = (vec![0f64; c], 0f64);
    for (p, kp) in &parts {
        for (x, y) in ds.iter_mut().zip(p) {
            *x += y;
        }
        dalpha += kp;
    }
    let ds: Vec<f32> = ds.iter().map(|&v| (v * k.g as f64) as f32).collect();
    let da = if a_live { (dalpha * dk_da as f64) as f32 } else { 0.0 };
    [
        FlexTensor::from_data(TensorData::new(dx, x.layout().shape().to_vec())),
        FlexTensor::from_data(TensorData::new(ds, [c])),
        FlexTensor::from_data(TensorData::new(vec![da], [1])),
    ]
}

impl LbDsq for Flex {
    fn lb_dsq(x: FlexTensor, s: FlexTensor, _alpha: FlexTensor, p: DsqParams) -> FlexTensor {
        forward(&x, &s, p)
    }
}

#[derive(Debug)]
struct DsqBackward;

impl Backward<Flex, 3> for DsqBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, DsqParams);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_s, node_a] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, s, alpha, p) = ops.state;
        let [dx, ds, da] = backward(&x, &s, &alpha, &dy, p);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_s {
            grads.register::<Flex>(node.id, ds);
        }
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, da);
        }
    }
}

impl<C: CheckpointStrategy> LbDsq for Autodiff<Flex, C> {
    fn lb_dsq(x: FloatTensor<Self>, s: FloatTensor<Self>, alpha: FloatTensor<Self>, p: DsqParams) -> FloatTensor<Self> {
        match DsqBackward.prepare::<C>([x.node(), s.node(), alpha.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, sp, ap) = (x.primitive().clone(), s.primitive().clone(), alpha.primitive().clone());
                let y = forward(&xp, &sp, p);
                prep.finish((xp, sp, ap, p), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), s.primitive(), p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: fused {x}, composed {y}");
        }
    }

    #[test]
    fn fast_tanh_is_close_to_tanh() {
        let mut worst = 0f64;
        for i in -400_000..=400_000 {
            let x = i as f32 * 5e-5 * (1.0 + (i as f32).abs() * 1e-5);
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        for x in [0.0f32, -0.0, 1e-30, 19.9, 20.0, 1e6, -1e6, f32::MAX, f32::MIN] {
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
    }

    /// The AVX2 row against the scalar one, bit for bit: rows of 0 to 70 values (ragged tails),
    /// inputs inside, at and beyond both ends of the range, signed and unsigned ranges with zero
    /// points, α near both ends of its clamp.
    #[test]
    fn avx2_row_is_bit_exact_with_scalar() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = crate::Rng::new(23);
        let ranges =
            [Range::signed(2), Range::signed(4), Range::unsigned(4, 3), Range::unsigned(8, 0), Range::unsigned(8, 255)];
        for (case, r) in ranges.iter().cycle().take(60).enumerate() {
            let k = Consts { zp: r.zp, qmin: r.qmin, qmax: r.qmax, g: 1.0, inner: 1 };
            let alpha = [ALPHA_MIN, 0.01, 0.2, ALPHA_MAX][case % 4];
            let kk = (2.0 / alpha - 1.0).ln();
            let st = 0.01 + rng.normal().abs() * 0.2;
            let e = Elem::new(st, &k, (r.qmax - 1.0).max(r.qmin), kk);
            let len = case * 7 % 71;
            let span = (r.qmax - r.qmin) * st;
            let xr: Vec<f32> = (0..len)
                .map(|j| match j % 5 {
                    0 => (r.qmin - r.zp) * st,       // the lower end exactly
                    1 => (r.qmax - r.zp) * st * 1.5, // beyond the upper end
                    _ => rng.normal() * span,
                })
                .collect();
            let gr: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
            let (mut d1, mut d2) = (vec![0f32; len], vec![0f32; len]);
            let a = row_scalar(&e, &xr, &gr, &mut d1);
            // SAFETY: AVX2 checked above; equal lengths.
            let b = unsafe { row_avx2(&e, &xr, &gr, &mut d2) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d1), bits(&d2), "case {case}: dx");
            assert_eq!((a.0.to_bits(), a.1.to_bits()), (b.0.to_bits(), b.1.to_bits()), "case {case}: sums {a:?} {b:?}");
        }
    }

    /// The fused quantizer against the composed one ([`crate::fq::dsq`], itself checked against
    /// finite differences): values, and the gradients of x, the steps and α, per channel on axis
    /// 0 and 1, and per tensor, for signed weights and unsigned activations with a zero point.
    #[test]
    fn matches_composed_dsq() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(7);
        let cases: [([usize; 4], Option<usize>, Range, f32); 5] = [
            ([6, 3, 3, 3], Some(0), Range::signed(2), 0.4),
            ([4, 5, 1, 1], Some(1), Range::signed(4), 0.2),
            ([3, 4, 5, 7], None, Range::unsigned(2, 0), 0.2),
            ([2, 3, 4, 4], None, Range::unsigned(4, 3), 0.05),
            // α outside the clamp: no gradient for α.
            ([2, 2, 3, 3], None, Range::unsigned(3, 1), 0.7),
        ];
        for (shape, axis, r, alpha) in cases {
            let n: usize = shape.iter().product();
            let c = axis.map_or(1, |a| shape[a]);
            let xv: Vec<f32> = (0..n).map(|_| rng.normal() * 1.5).collect();
            let sv: Vec<f32> = (0..c).map(|i| 0.3 + 0.1 * i as f32).collect();
            let wv: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let g = 0.37;
            let run = |fused: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
                let s = Tensor::<1>::from_data(TensorData::new(sv.clone(), [c]), &dev).require_grad();
                let a = Tensor::<1>::from_data(TensorData::new(vec![alpha], [1]), &dev).require_grad();
                let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), shape), &dev);
                let y = if fused {
                    dsq(x.clone(), s.clone(), a.clone(), r, g, axis)
                } else {
                    let mut bs = [1usize; 4];
                    if let Some(ax) = axis {
                        bs[ax] = c;
                    }
                    let sb: Tensor<4> = s.clone().reshape(bs);
                    let ab: Tensor<4> = a.clone().reshape([1, 1, 1, 1]).clamp(ALPHA_MIN, ALPHA_MAX);
                    crate::fq::dsq(x.clone(), sb, ab, r, g)
                };
                let grads = (y.clone() * w).sum().backward();
                let ga = a.grad(&grads).map(vals).unwrap_or(vec![0.0]);
                (vals(y), vals(x.grad(&grads).unwrap()), vals(s.grad(&grads).unwrap()), ga)
            };
            let (f, b) = (run(true), run(false));
            let what = format!("{shape:?} axis {axis:?} {r:?} alpha {alpha}");
            close(&f.0, &b.0, 1e-5, &format!("{what} y"));
            close(&f.1, &b.1, 1e-4, &format!("{what} dx"));
            close(&f.2, &b.2, 1e-4, &format!("{what} ds"));
            close(&f.3, &b.3, 1e-3, &format!("{what} dalpha"));
            if alpha > ALPHA_MAX {
                assert_eq!(f.3, vec![0.0]);
            } else {
                assert!(f.3[0].abs() > 1e-6, "{what}: α should receive gradient");
            }
        }
    }
}
