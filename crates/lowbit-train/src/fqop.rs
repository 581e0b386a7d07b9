//! The STE, LSQ and PACT fake quantizers as one differentiable operation each (a backend
//! extension with a handwritten backward, like [`crate::dsq`]), on the rayon pool.
//!
//! Composed from burn's tensor operations ([`crate::fq`]), a quantizer is six to ten element-wise
//! passes forward and as many backward (divide, shift, clamp, round, the straight-through
//! combination, the broadcast step), each single-threaded in burn-flex and each holding its own
//! intermediate tensor: with two threads a quantization-aware epoch ran 1.3x faster than with one
//! while float training ran 1.9x faster. Here the forward is one pass and the backward one pass
//! that also reduces the step (LSQ) or clip level (PACT) gradient per channel. Values and
//! gradients are those of the composed functions:
//! - STE and LSQ: `u = x/s + zp`, `v = clamp(u, qmin, qmax)`, `y = (round_half_even(v) - zp)·s`;
//!   `dy/dx = [qmin <= u <= qmax]`; LSQ's `dy/ds = g·((round(v) - zp) - [inside]·x/s)`.
//! - PACT (the parameter is the clip level `α`; step `s = α/(qmax - zp)`, not differentiated):
//!   `xc = max(min(x, α), s·(qmin - zp))`, `y` = the quantizer above at `xc`; `dy/dx = [lo < x <
//!   α]`, `dy/dα = [x >= α]` (the straight-through estimator of the paper).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::conv::f32_data;
use crate::fq::{rint, Range};

/// Which quantizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ste,
    Lsq,
    Pact,
}

/// `[zp, qmin, qmax, g, inner, kind]`: `x` is viewed as rows of `inner` values, row `r` in
/// channel `r mod C` (`C` = the parameter's length); `kind` 0 STE, 1 LSQ, 2 PACT.
pub type FqParams = [f32; 6];

#[backend_extension(Flex, Autodiff)]
pub trait LbFq: Backend {
    /// Fake quantization of `x` with per-channel steps (STE, LSQ) or clip levels (PACT) `s`.
    fn lb_fq(x: FloatTensor<Self>, s: FloatTensor<Self>, p: FqParams) -> FloatTensor<Self>;
}

/// Fake quantization of `x` (any rank) by `kind`, with `s` (length 1, or one per index of
/// `axis`) the step (STE, LSQ) or the clip level (PACT); `g` is LSQ's gradient scale.
pub fn fake_quant<const D: usize>(
    x: Tensor<D>,
    s: Tensor<1>,
    kind: Kind,
    r: Range,
    g: f32,
    axis: Option<usize>,
) -> Tensor<D> {
    let dims = x.dims();
    let c = s.dims()[0];
    let inner = crate::fq::row_len(&dims, c, axis, "fake_quant");
    let k = match kind {
        Kind::Ste => 0.0,
        Kind::Lsq => 1.0,
        Kind::Pact => 2.0,
    };
    let p = [r.zp, r.qmin, r.qmax, g, inner as f32, k];
    Tensor::<D>::from_dispatch(<Dispatch as LbFq>::lb_fq(x.into_dispatch(), s.into_dispatch(), p))
}

pub(crate) struct Consts {
    zp: f32,
    qmin: f32,
    qmax: f32,
    g: f32,
    inner: usize,
    kind: Kind,
}

/// The constants of the STE quantizer with this zero point and range (its forward row is also
/// DSQ's forward value).
pub(crate) fn ste_consts(zp: f32, qmin: f32, qmax: f32) -> Consts {
    Consts { zp, qmin, qmax, g: 0.0, inner: 1, kind: Kind::Ste }
}

impl Consts {
    fn new(p: FqParams) -> Consts {
        let kind = match p[5] as u32 {
            0 => Kind::Ste,
            1 => Kind::Lsq,
            _ => Kind::Pact,
        };
        Consts { zp: p[0], qmin: p[1], qmax: p[2], g: p[3], inner: (p[4] as usize).max(1), kind }
    }
    /// The step of channel parameter `v`.
    fn step(&self, v: f32) -> f32 {
        if self.kind == Kind::Pact {
            v / (self.qmax - self.zp)
        } else {
            v
        }
    }
}

/// Lanes of the per-row parameter-gradient sums: element `j` of a row's first `16·⌊len/16⌋`
/// goes to lane `j mod 16`, the rest to lane 0, and the lanes are added in order. Every ISA runs
/// the same source ([`fwd_row`], [`bwd_row`]) compiled for its vector width, so the sums, and with
/// them the results, are bit-identical on every path; a single running sum (as before) kept the
/// compiler from vectorising the backward at all.
const LANES: usize = 16;

/// The vector width the element loops are compiled for: training's f32 path (`LOWBIT_ISA`), as
/// the convolutions choose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn width() -> Width {
    #[cfg(target_arch = "x86_64")]
    {
        use lowbit_kernels::isa::F32Isa;
        match crate::conv::f32_path() {
            F32Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return Width::Avx512,
            F32Isa::Avx512 | F32Isa::Avx2 if std::arch::is_x86_feature_detected!("avx2") => return Width::Avx2,
            _ => {}
        }
    }
    Width::Scalar
}

/// One row of the forward: channel parameter `a`, input `xr`, output `yr` (every element written).
#[inline(always)]
fn fwd_row(k: &Consts, a: f32, xr: &[f32], yr: &mut [f32]) {
    let st = k.step(a);
    if k.kind == Kind::Pact {
        let lo = st * (k.qmin - k.zp);
        for (o, &v) in yr.iter_mut().zip(xr) {
            let xc = v.min(a).max(lo);
            *o = (rint((xc / st + k.zp).clamp(k.qmin, k.qmax)) - k.zp) * st;
        }
    } else {
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (rint((v / st + k.zp).clamp(k.qmin, k.qmax)) - k.zp) * st;
        }
    }
}

/// One row of the backward: writes `dx` into `dr`, returns the row's parameter-gradient sum
/// (in the lane order of [`LANES`]; 0 for STE). The quantizer is matched once per row, so that
/// each element loop is one straight vectorisable body.
#[inline(always)]
fn bwd_row(k: &Consts, a: f32, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> f32 {
    let st = k.step(a);
    match k.kind {
        Kind::Ste => {
            for ((d, &v), &g) in dr.iter_mut().zip(xr).zip(gr) {
                let u = v / st + k.zp;
                *d = if u >= k.qmin && u <= k.qmax { g } else { 0.0 };
            }
            0.0
        }
        Kind::Lsq => lanes(xr, gr, dr, |v, g| {
            let u = v / st + k.zp;
            let inside = u >= k.qmin && u <= k.qmax;
            let hard = rint(u.clamp(k.qmin, k.qmax));
            (if inside { g } else { 0.0 }, g * (hard - k.zp - if inside { v / st } else { 0.0 }))
        }),
        Kind::Pact => {
            let lo = st * (k.qmin - k.zp);
            lanes(xr, gr, dr, |v, g| (if v < a && v > lo { g } else { 0.0 }, if v >= a { g } else { 0.0 }))
        }
    }
}

/// `dr[j] = f(xr[j], gr[j]).0`, and the sum of the `.1` in the lane order of [`LANES`].
#[inline(always)]
fn lanes(xr: &[f32], gr: &[f32], dr: &mut [f32], f: impl Fn(f32, f32) -> (f32, f32)) -> f32 {
    let mut acc = [0f32; LANES];
    let body = dr.len() / LANES * LANES;
    let (xb, gb) = (&xr[..body], &gr[..body]);
    for ((dc, xc), gc) in dr[..body].chunks_exact_mut(LANES).zip(xb.chunks_exact(LANES)).zip(gb.chunks_exact(LANES)) {
        for l in 0..LANES {
            let (d, t) = f(xc[l], gc[l]);
            dc[l] = d;
            acc[l] += t;
        }
    }
    for j in body..dr.len() {
        let (d, t) = f(xr[j], gr[j]);
        dr[j] = d;
        acc[0] += t;
    }
    acc.iter().fold(0.0, |s, v| s + v)
}

/// [`fwd_row`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fwd_row_avx2(k: &Consts, a: f32, xr: &[f32], yr: &mut [f32]) {
    fwd_row(k, a, xr, yr)
}

/// [`fwd_row`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_row_avx512(k: &Consts, a: f32, xr: &[f32], yr: &mut [f32]) {
    fwd_row(k, a, xr, yr)
}

/// [`bwd_row`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bwd_row_avx2(k: &Consts, a: f32, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> f32 {
    bwd_row(k, a, xr, gr, dr)
}

/// [`bwd_row`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_row_avx512(k: &Consts, a: f32, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> f32 {
    bwd_row(k, a, xr, gr, dr)
}

pub(crate) fn fwd_row_on(w: Width, k: &Consts, a: f32, xr: &[f32], yr: &mut [f32]) {
    match w {
        // SAFETY: `width` checked the CPU for the feature.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { fwd_row_avx512(k, a, xr, yr) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { fwd_row_avx2(k, a, xr, yr) },
        Width::Scalar => fwd_row(k, a, xr, yr),
    }
}

fn bwd_row_on(w: Width, k: &Consts, a: f32, xr: &[f32], gr: &[f32], dr: &mut [f32]) -> f32 {
    match w {
        // SAFETY: `width` checked the CPU for the feature.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { bwd_row_avx512(k, a, xr, gr, dr) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { bwd_row_avx2(k, a, xr, gr, dr) },
        Width::Scalar => bwd_row(k, a, xr, gr, dr),
    }
}

fn forward(x: &FlexTensor, s: &FlexTensor, p: FqParams) -> FlexTensor {
    forward_on(width(), x, s, p)
}

fn forward_on(w: Width, x: &FlexTensor, s: &FlexTensor, p: FqParams) -> FlexTensor {
    let (x, s) = (f32_data(x, "input"), f32_data(s, "step"));
    let k = Consts::new(p);
    let xs: &[f32] = x.storage();
    let ss: &[f32] = s.storage();
    let c = ss.len();
    let chunk = crate::fq::rows_per_task(k.inner) * k.inner;
    let y = crate::par_build(xs.len(), chunk, |t, yc| {
        let row0 = t * chunk / k.inner;
        for (j, yr) in yc.chunks_mut(k.inner).enumerate() {
            let off = (row0 + j) * k.inner;
            fwd_row_on(w, &k, ss[(row0 + j) % c], &xs[off..off + yr.len()], yr);
        }
    });
    FlexTensor::from_data(TensorData::new(y, x.layout().shape().to_vec()))
}

/// `(dx, ds)`; `ds` is `None` for STE (its step is fixed).
fn backward(x: &FlexTensor, s: &FlexTensor, dy: &FlexTensor, p: FqParams) -> (FlexTensor, Option<FlexTensor>) {
    backward_on(width(), x, s, dy, p)
}

fn backward_on(
    w: Width,
    x: &FlexTensor,
    s: &FlexTensor,
    dy: &FlexTensor,
    p: FqParams,
) -> (FlexTensor, Option<FlexTensor>) {
    let (x, s, dy) = (f32_data(x, "input"), f32_data(s, "step"), f32_data(dy, "gradient"));
    let k = Consts::new(p);
    let (xs, ss, dys): (&[f32], &[f32], &[f32]) = (x.storage(), s.storage(), dy.storage());
    assert_eq!(xs.len(), dys.len(), "fake_quant: input and its gradient differ in size");
    let c = ss.len();
    let chunk = crate::fq::rows_per_task(k.inner) * k.inner;
    // Per task: the parameter gradient of each channel it touched (rows of one task cover at most
    // `c` channels; summed in f64 across tasks, in task order). `dx` is built on the pool: zeroing
    // it on the calling thread first was a serial tenth of a second per epoch.
    let (dx, parts) = crate::par_build_map(xs.len(), chunk, |t, dc| {
        let row0 = t * chunk / k.inner;
        let mut dp = vec![0f64; if k.kind == Kind::Ste { 0 } else { c }];
        for (j, dr) in dc.chunks_mut(k.inner).enumerate() {
            let ch = (row0 + j) % c;
            let off = (row0 + j) * k.inner;
            let (xr, gr) = (&xs[off..off + dr.len()], &dys[off..off + dr.len()]);
            let sum = bwd_row_on(w, &k, ss[ch], xr, gr, dr);
            if k.kind != Kind::Ste {
                dp[ch] += sum as f64;
            }
        }
        dp
    });
    let ds = (k.kind != Kind::Ste).then(|| {
        let mut sum = vec![0f64; c];
        for part in &parts {
            for (a, b) in sum.iter_mut().zip(part) {
                *a += b;
            }
        }
        let scale = if k.kind == Kind::Lsq { k.g as f64 } else { 1.0 };
        let ds: Vec<f32> = sum.iter().map(|&v| (v * scale) as f32).collect();
        FlexTensor::from_data(TensorData::new(ds, [c]))
    });
    (FlexTensor::from_data(TensorData::new(dx, x.layout().shape().to_vec())), ds)
}

impl LbFq for Flex {
    fn lb_fq(x: FlexTensor, s: FlexTensor, p: FqParams) -> FlexTensor {
        forward(&x, &s, p)
    }
}

#[derive(Debug)]
struct FqBackward;

impl Backward<Flex, 2> for FqBackward {
    type State = (FlexTensor, FlexTensor, FqParams);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_s] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, s, p) = ops.state;
        let (dx, ds) = backward(&x, &s, &dy, p);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(ds)) = (node_s, ds) {
            grads.register::<Flex>(node.id, ds);
        }
    }
}

impl<C: CheckpointStrategy> LbFq for Autodiff<Flex, C> {
    fn lb_fq(x: FloatTensor<Self>, s: FloatTensor<Self>, p: FqParams) -> FloatTensor<Self> {
        match FqBackward.prepare::<C>([x.node(), s.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (xp, sp) = (x.primitive().clone(), s.primitive().clone());
                let y = forward(&xp, &sp, p);
                prep.finish((xp, sp, p), y)
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

    /// Every vector width the CPU has gives the portable rows' results bit for bit: outputs,
    /// input gradients and parameter-gradient sums, for each quantizer, on rows of every length
    /// from 1 to 70 (ragged against the 16 lanes), inputs far outside the range (both clamps) and
    /// on rounding ties, signed and unsigned ranges.
    #[test]
    fn vector_rows_are_bit_exact_with_scalar() {
        let mut widths = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                widths.push(Width::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                widths.push(Width::Avx512);
            }
        }
        let mut rng = crate::Rng::new(5);
        let mut checked = 0;
        for kind in [Kind::Ste, Kind::Lsq, Kind::Pact] {
            for r in [Range::signed(4), Range::unsigned(8, 3), Range::unsigned(2, 0), Range::signed(8)] {
                if kind == Kind::Pact && r.qmin < 0.0 {
                    continue;
                }
                let k = Consts::new([r.zp, r.qmin, r.qmax, 0.5, 1.0, [0.0, 1.0, 2.0][kind as usize]]);
                for len in 1..=70 {
                    let st = 0.05 + 0.01 * (len % 7) as f32;
                    let a = if kind == Kind::Pact { st * (r.qmax - r.zp) } else { st };
                    let xr: Vec<f32> = (0..len)
                        .map(|i| match i % 5 {
                            0 => rng.normal() * 40.0 * st,
                            1 => (rng.normal() * 4.0).round() * st + 0.5 * st,
                            _ => rng.normal() * 3.0 * st * (r.qmax - r.qmin).sqrt(),
                        })
                        .collect();
                    let gr: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
                    let (mut y0, mut d0) = (vec![0f32; len], vec![0f32; len]);
                    fwd_row_on(Width::Scalar, &k, a, &xr, &mut y0);
                    let s0 = bwd_row_on(Width::Scalar, &k, a, &xr, &gr, &mut d0);
                    for &w in &widths {
                        let (mut y1, mut d1) = (vec![0f32; len], vec![0f32; len]);
                        fwd_row_on(w, &k, a, &xr, &mut y1);
                        let s1 = bwd_row_on(w, &k, a, &xr, &gr, &mut d1);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        let what = format!("{w:?} {kind:?} {r:?} len {len}");
                        assert_eq!(bits(&y1), bits(&y0), "{what}: forward");
                        assert_eq!(bits(&d1), bits(&d0), "{what}: input gradient");
                        assert_eq!(s1.to_bits(), s0.to_bits(), "{what}: parameter gradient {s1} vs {s0}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(widths.is_empty() || checked > 0);
    }

    /// The fused quantizers against the composed ones of [`crate::fq`] (themselves checked
    /// against the papers' formulas): values, and the gradients of x and of the step / clip
    /// level, per channel on axis 0 and 1 and per tensor, signed weights and unsigned
    /// activations with a zero point, on a tensor of several parallel tasks with a ragged end.
    #[test]
    fn matches_composed_quantizers() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(11);
        let cases: [([usize; 4], Option<usize>, Range); 5] = [
            ([6, 3, 3, 3], Some(0), Range::signed(2)),
            ([4, 5, 1, 1], Some(1), Range::signed(4)),
            ([3, 4, 5, 7], None, Range::unsigned(2, 0)),
            ([2, 3, 4, 4], None, Range::unsigned(4, 3)),
            ([5, 7, 31, 29], Some(1), Range::unsigned(8, 0)),
        ];
        for kind in [Kind::Ste, Kind::Lsq, Kind::Pact] {
            for (shape, axis, r) in cases {
                if kind == Kind::Pact && r.qmin < 0.0 {
                    continue; // PACT clips activations (unsigned ranges)
                }
                let n: usize = shape.iter().product();
                let c = axis.map_or(1, |a| shape[a]);
                let xv: Vec<f32> = (0..n).map(|_| rng.normal() * 1.5).collect();
                let step = |i: usize| 0.3 / (r.qmax - r.qmin).max(1.0).sqrt() + 0.05 * i as f32;
                let sv: Vec<f32> =
                    (0..c).map(|i| if kind == Kind::Pact { step(i) * (r.qmax - r.zp) } else { step(i) }).collect();
                let wv: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let g = 0.37;
                let run = |fused: bool| {
                    let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
                    let s = Tensor::<1>::from_data(TensorData::new(sv.clone(), [c]), &dev).require_grad();
                    let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), shape), &dev);
                    let y = if fused {
                        fake_quant(x.clone(), s.clone(), kind, r, g, axis)
                    } else {
                        let mut bs = [1usize; 4];
                        if let Some(ax) = axis {
                            bs[ax] = c;
                        }
                        let sb: Tensor<4> = s.clone().reshape(bs);
                        match kind {
                            Kind::Ste => crate::fq::ste(x.clone(), sb, r),
                            Kind::Lsq => crate::fq::lsq(x.clone(), sb, r, g),
                            Kind::Pact => crate::fq::pact(x.clone(), sb, r),
                        }
                    };
                    let grads = (y.clone() * w).sum().backward();
                    let gs = s.grad(&grads).map(vals).unwrap_or(vec![0.0; c]);
                    (vals(y), vals(x.grad(&grads).unwrap()), gs)
                };
                let (f, b) = (run(true), run(false));
                let what = format!("{kind:?} {shape:?} axis {axis:?} {r:?}");
                let close = |a: &[f32], b: &[f32], tol: f32, part: &str| {
                    assert_eq!(a.len(), b.len(), "{what} {part}");
                    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    for (i, (x, y)) in a.iter().zip(b).enumerate() {
                        assert!((x - y).abs() <= tol * scale, "{what} {part}[{i}]: fused {x}, composed {y}");
                    }
                };
                close(&f.0, &b.0, 1e-5, "y");
                close(&f.1, &b.1, 1e-6, "dx");
                close(&f.2, &b.2, 1e-4, "ds");
                if kind != Kind::Ste {
                    assert!(f.2.iter().any(|v| v.abs() > 1e-6), "{what}: the parameter should receive gradient");
                }
            }
        }
    }
}
