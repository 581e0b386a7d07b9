//! Reference evaluators of the operators detection, segmentation and embedding networks add:
//! element-wise functions, comparisons, reductions, ConvTranspose, Resize, Pad, shape generators,
//! depth/space rearrangement, normalizations and blocked DequantizeLinear. Written for clarity;
//! the plan runs them where no fast kernel exists, and the tests use them as the oracle.

use lowbit_core::shape::Known;
use lowbit_core::shape_ops::{conv_transpose_geom, reduce_axes, resize_plan};
use lowbit_core::tensor::{broadcast_index, strides};
use lowbit_core::{
    CoordMode, DType, Data, Error, NearestMode, Op, PadMode, Reduce, ResizeAttrs, ResizeMode, Result, Tensor, Variadic,
};

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    t.as_f32().ok_or_else(|| Error::Invalid(format!("{what} must be float32, got {}", t.dtype().name())))
}

/// Storage of `dtype` from f64 values (integers round toward zero, as Cast does).
fn from_f64(dtype: DType, v: Vec<f64>) -> Data {
    match dtype {
        DType::F32 => Data::F32(v.into_iter().map(|x| x as f32).collect()),
        DType::I64 => Data::I64(v.into_iter().map(|x| x as i64).collect()),
        DType::I32 => Data::I32(v.into_iter().map(|x| x as i32).collect()),
        DType::I8 => Data::I8(v.into_iter().map(|x| x as i8).collect()),
        DType::U8 => Data::U8(v.into_iter().map(|x| x as u8).collect()),
        DType::Bool => Data::Bool(v.into_iter().map(|x| x != 0.0).collect()),
    }
}

/// Coordinates of flat index `f` in `shape` (with its row-major strides `st`).
fn coords(f: usize, shape: &[usize], st: &[usize], out: &mut [usize]) {
    for d in 0..shape.len() {
        out[d] = (f / st[d]) % shape[d].max(1);
    }
}

/// Evaluates one of this module's ops; `oshape`/`odt` come from shape inference.
pub(crate) fn eval(op: &Op, inputs: &[Option<&Tensor>], odt: DType, oshape: Vec<usize>) -> Result<Tensor> {
    let in_ = |i: usize| inputs.get(i).copied().flatten();
    let need = |i: usize| in_(i).ok_or_else(|| Error::Invalid(format!("missing input {i}")));
    let x = need(0)?;
    let n_out: usize = oshape.iter().product();
    Ok(match op {
        Op::Unary(u) => Tensor::f32(oshape, f32s(x, "input")?.iter().map(|&v| u.apply(v)).collect()),
        Op::PRelu => {
            let xs = f32s(x, "input")?;
            let s = need(1)?;
            let sv = f32s(s, "slope")?;
            let is = broadcast_index(&s.shape, &oshape);
            Tensor::f32(oshape, xs.iter().zip(&is).map(|(&v, &j)| if v >= 0.0 { v } else { v * sv[j] }).collect())
        }
        Op::Pow if x.dtype() != DType::F32 => {
            let y = need(1)?;
            let (ia, ib) = (broadcast_index(&x.shape, &oshape), broadcast_index(&y.shape, &oshape));
            let o = ia.iter().zip(&ib).map(|(&i, &j)| x.data.get_f64(i).powf(y.data.get_f64(j))).collect();
            Tensor { shape: oshape, data: from_f64(odt, o) }
        }
        Op::Pow => {
            let xs = f32s(x, "base")?;
            let y = need(1)?;
            let (ia, ib) = (broadcast_index(&x.shape, &oshape), broadcast_index(&y.shape, &oshape));
            let o = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| {
                    let e = y.data.get_f64(j);
                    if e == 2.0 {
                        xs[i] * xs[i]
                    } else {
                        xs[i].powf(e as f32)
                    }
                })
                .collect();
            Tensor::f32(oshape, o)
        }
        Op::Variadic(v) => {
            let parts: Vec<&Tensor> = (0..inputs.len()).map(need).collect::<Result<_>>()?;
            let idx: Vec<Vec<usize>> = parts.iter().map(|p| broadcast_index(&p.shape, &oshape)).collect();
            let o: Vec<f64> = (0..n_out)
                .map(|f| {
                    let mut it = parts.iter().zip(&idx).map(|(p, ix)| p.data.get_f64(ix[f]));
                    let first = it.next().unwrap_or(0.0);
                    let r = it.fold(first, |a, b| match v {
                        Variadic::Min => {
                            if a.is_nan() || b.is_nan() {
                                f64::NAN
                            } else {
                                a.min(b)
                            }
                        }
                        Variadic::Max => {
                            if a.is_nan() || b.is_nan() {
                                f64::NAN
                            } else {
                                a.max(b)
                            }
                        }
                        Variadic::Sum | Variadic::Mean => a + b,
                    });
                    if *v == Variadic::Mean {
                        r / parts.len() as f64
                    } else {
                        r
                    }
                })
                .collect();
            Tensor { shape: oshape, data: from_f64(odt, o) }
        }
        Op::Compare(c) => {
            let y = need(1)?;
            let (ia, ib) = (broadcast_index(&x.shape, &oshape), broadcast_index(&y.shape, &oshape));
            let o = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| {
                    let (a, b) = (x.data.get_f64(i), y.data.get_f64(j));
                    a.partial_cmp(&b).is_some_and(|o| c.test(o))
                })
                .collect();
            Tensor { shape: oshape, data: Data::Bool(o) }
        }
        Op::Where => {
            let (a, b) = (need(1)?, need(2)?);
            let Data::Bool(cv) = &x.data else { return Err(Error::Invalid("Where condition must be bool".into())) };
            let (ic, ia, ib) = (
                broadcast_index(&x.shape, &oshape),
                broadcast_index(&a.shape, &oshape),
                broadcast_index(&b.shape, &oshape),
            );
            let both = Data::concat(&[&a.data, &b.data])?;
            let sel: Vec<usize> = (0..n_out).map(|f| if cv[ic[f]] { ia[f] } else { a.len() + ib[f] }).collect();
            Tensor { shape: oshape, data: both.gather(&sel) }
        }
        Op::Reduce { kind, axes, noop_with_empty_axes, .. } => {
            let known: Vec<Option<Known>> =
                inputs.iter().map(|t| t.map(|t| Known { dtype: t.dtype(), shape: &t.shape, value: Some(t) })).collect();
            let ax = reduce_axes(x.rank(), axes.as_deref(), &known, *noop_with_empty_axes)?;
            reduce(x, &ax, *kind, odt, oshape)?
        }
        Op::ConvTranspose(c) => conv_transpose(x, need(1)?, in_(2), c)?,
        Op::Resize(r) => resize(x, r, inputs, oshape)?,
        Op::Pad { mode, pads, value } => pad(x, *mode, pads.as_deref(), *value, inputs, oshape)?,
        Op::ConstantOfShape { value } => Tensor { shape: oshape, data: value.data.gather(&vec![0; n_out]) },
        Op::Range => {
            let (s, d) = (x.data.get_f64(0), need(2)?.data.get_f64(0));
            let v = match &x.data {
                Data::I64(_) => Data::I64((0..n_out as i64).map(|i| s as i64 + i * d as i64).collect()),
                Data::I32(_) => Data::I32((0..n_out as i32).map(|i| s as i32 + i * d as i32).collect()),
                _ => from_f64(odt, (0..n_out).map(|i| s + i as f64 * d).collect()),
            };
            Tensor { shape: oshape, data: v }
        }
        Op::Expand => Tensor { data: x.data.gather(&broadcast_index(&x.shape, &oshape)), shape: oshape },
        Op::Tile => {
            let (ist, ost) = (strides(&x.shape), strides(&oshape));
            let mut c = vec![0; oshape.len()];
            let sel: Vec<usize> = (0..n_out)
                .map(|f| {
                    coords(f, &oshape, &ost, &mut c);
                    (0..c.len()).map(|d| (c[d] % x.shape[d].max(1)) * ist[d]).sum()
                })
                .collect();
            Tensor { data: x.data.gather(&sel), shape: oshape }
        }
        Op::DepthSpace { to_space, block, dcr } => {
            let b = *block;
            let [_, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
            let [_, oc, oh, ow] = [oshape[0], oshape[1], oshape[2], oshape[3]];
            let sel: Vec<usize> = (0..n_out)
                .map(|f| {
                    let (n, rest) = (f / (oc * oh * ow), f % (oc * oh * ow));
                    let (co, y, xx) = (rest / (oh * ow), (rest / ow) % oh, rest % ow);
                    let (ci, iy, ix) = if *to_space {
                        let (i, j) = (y % b, xx % b);
                        let ci = if *dcr { (i * b + j) * oc + co } else { co * b * b + i * b + j };
                        (ci, y / b, xx / b)
                    } else {
                        let (blk, cc) = (co / c, co % c);
                        (cc, y * b + blk / b, xx * b + blk % b)
                    };
                    ((n * c + ci) * h + iy) * w + ix
                })
                .collect();
            Tensor { data: x.data.gather(&sel), shape: oshape }
        }
        Op::InstanceNorm { epsilon } => {
            let xs = f32s(x, "input")?;
            let (sc, bi) = (f32s(need(1)?, "scale")?, f32s(need(2)?, "B")?);
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let mut o = xs.to_vec();
            for (p, chunk) in o.chunks_mut(inner.max(1)).enumerate() {
                let ch = p % c;
                let m = chunk.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
                let var = chunk.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / inner as f64;
                let k = 1.0 / (var + *epsilon as f64).sqrt();
                for v in chunk.iter_mut() {
                    *v = ((*v as f64 - m) * k) as f32 * sc[ch] + bi[ch];
                }
            }
            Tensor::f32(oshape, o)
        }
        Op::LpNorm { axis, p } => {
            let xs = f32s(x, "input")?;
            let a = lowbit_core::shape::norm_axis(*axis, x.rank())?;
            let (len, inner) = (x.shape[a], x.shape[a + 1..].iter().product::<usize>());
            let outer: usize = x.shape[..a].iter().product();
            let mut o = xs.to_vec();
            for ou in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (ou * len + k) * inner + i;
                    let norm = if *p == 1 {
                        (0..len).map(|k| xs[at(k)].abs()).sum::<f32>()
                    } else {
                        (0..len).map(|k| xs[at(k)] * xs[at(k)]).sum::<f32>().sqrt()
                    };
                    for k in 0..len {
                        o[at(k)] = xs[at(k)] / norm;
                    }
                }
            }
            Tensor::f32(oshape, o)
        }
        Op::DequantizeBlocked { axis, block } => {
            let s = need(1)?;
            let sv = f32s(s, "scale")?;
            let zp = in_(2);
            let a = lowbit_core::shape::norm_axis(*axis, x.rank())?;
            let (xst, sst) = (strides(&x.shape), strides(&s.shape));
            let mut c = vec![0; x.rank()];
            let o = (0..x.len())
                .map(|f| {
                    coords(f, &x.shape, &xst, &mut c);
                    c[a] /= *block;
                    let j: usize = c.iter().zip(&sst).map(|(i, s)| i * s).sum();
                    let z = zp.map_or(0.0, |z| z.data.get_f64(j));
                    ((x.data.get_f64(f) - z) as f32) * sv[j]
                })
                .collect();
            Tensor::f32(oshape, o)
        }
        other => return Err(Error::Invalid(format!("{} is not evaluated here", other.op_type()))),
    })
}

fn reduce(x: &Tensor, axes: &[usize], kind: Reduce, odt: DType, oshape: Vec<usize>) -> Result<Tensor> {
    let r = x.rank();
    // Output strides over the input's rank (reduced axes contribute nothing).
    let kept: Vec<usize> = (0..r).map(|d| if axes.contains(&d) { 1 } else { x.shape[d] }).collect();
    let kst = strides(&kept);
    let xst = strides(&x.shape);
    let n_out: usize = kept.iter().product();
    let init = match kind {
        Reduce::Max => f64::NEG_INFINITY,
        Reduce::Min => f64::INFINITY,
        Reduce::Prod => 1.0,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    let mut lse_max = vec![f64::NEG_INFINITY; n_out];
    let mut c = vec![0; r];
    let target = |c: &[usize]| -> usize { (0..r).filter(|d| !axes.contains(d)).map(|d| c[d] * kst[d]).sum() };
    if kind == Reduce::LogSumExp {
        for f in 0..x.len() {
            coords(f, &x.shape, &xst, &mut c);
            let t = target(&c);
            lse_max[t] = lse_max[t].max(x.data.get_f64(f));
        }
    }
    for f in 0..x.len() {
        coords(f, &x.shape, &xst, &mut c);
        let t = target(&c);
        let v = x.data.get_f64(f);
        let a = &mut acc[t];
        *a = match kind {
            Reduce::Max => a.max(v),
            Reduce::Min => a.min(v),
            Reduce::Sum | Reduce::Mean => *a + v,
            Reduce::Prod => *a * v,
            Reduce::L1 => *a + v.abs(),
            Reduce::L2 | Reduce::SumSquare => *a + v * v,
            Reduce::LogSumExp => *a + (v - lse_max[t]).exp(),
        };
    }
    let count: usize = axes.iter().map(|&d| x.shape[d]).product();
    for (t, a) in acc.iter_mut().enumerate() {
        *a = match kind {
            Reduce::Mean => *a / count as f64,
            Reduce::L2 => a.sqrt(),
            Reduce::LogSumExp => a.ln() + lse_max[t],
            _ => *a,
        };
    }
    if x.is_empty() && matches!(kind, Reduce::Max | Reduce::Min) {
        // ONNX: reducing an empty set gives the identity (-inf / +inf for floats).
    }
    Ok(Tensor { shape: oshape, data: from_f64(odt, acc) })
}

/// The sizes of a 1-D or 2-D ConvTranspose (a 1-D one as height 1).
#[derive(Clone, Copy, Debug)]
pub struct DeconvShape {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub group: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl DeconvShape {
    /// From the input and weight shapes (`[C_in][C_out/group][k..]`) and the attributes.
    pub fn new(xs: &[usize], ws: &[usize], c: &lowbit_core::ConvTransposeAttrs) -> Result<DeconvShape> {
        let g = conv_transpose_geom(xs, ws, c)?;
        let sp = xs.len() - 2;
        if sp > 2 {
            return Err(Error::Invalid(format!("ConvTranspose with {sp} spatial dims is not supported (1 or 2)")));
        }
        let two = |v: &[usize], d: usize| if sp == 1 { [d, v[0]] } else { [v[0], v[1]] };
        let ([h, w], [oh, ow], [kh, kw]) = (two(&xs[2..], 1), two(&g.out, 1), two(&g.kernel, 1));
        let ([sh, sw], [dh, dw], [ph, pw]) = (two(&g.strides, 1), two(&g.dilations, 1), two(&g.pads_begin, 0));
        let (n, ci, co, group) = (xs[0], xs[1], g.out_channels, c.group.max(1));
        Ok(DeconvShape { n, ci, co, group, h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw })
    }

    /// Output elements (`n·co·oh·ow`).
    pub fn out_len(&self) -> usize {
        self.n * self.co * self.oh * self.ow
    }
}

/// Adds ConvTranspose's products into `o` (NCHW, `s.out_len()` values, holding the bias or zeros):
/// every input value scattered through the window, `y[co][oy][ox] += x[ci][iy][ix]·w[ci][co][ky][kx]`
/// for `oy = iy·sh + ky·dh - ph` (and across). On f32 the reference's order; on integers (the
/// fake-quant executor) exact.
pub fn conv_transpose_acc<T: Copy + std::ops::Mul<Output = T> + std::ops::AddAssign>(
    s: &DeconvShape,
    xs: &[T],
    wv: &[T],
    o: &mut [T],
) {
    let (cig, cog) = (s.ci / s.group, s.co / s.group);
    for ni in 0..s.n {
        for ic in 0..s.ci {
            let gi = ic / cig;
            for iy in 0..s.h {
                for ix in 0..s.w {
                    let xv = xs[((ni * s.ci + ic) * s.h + iy) * s.w + ix];
                    for ocg in 0..cog {
                        let oc = gi * cog + ocg;
                        for ky in 0..s.kh {
                            let oy = (iy * s.sh + ky * s.dh) as isize - s.ph as isize;
                            if oy < 0 || oy >= s.oh as isize {
                                continue;
                            }
                            for kx in 0..s.kw {
                                let ox = (ix * s.sw + kx * s.dw) as isize - s.pw as isize;
                                if ox < 0 || ox >= s.ow as isize {
                                    continue;
                                }
                                o[((ni * s.co + oc) * s.oh + oy as usize) * s.ow + ox as usize] +=
                                    xv * wv[((ic * cog + ocg) * s.kh + ky) * s.kw + kx];
                            }
                        }
                    }
                }
            }
        }
    }
}

fn conv_transpose(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &lowbit_core::ConvTransposeAttrs) -> Result<Tensor> {
    let s = DeconvShape::new(&x.shape, &w.shape, c)?;
    let xs = f32s(x, "ConvTranspose input")?;
    let wv = f32s(w, "ConvTranspose weight")?;
    let mut o = vec![0f32; s.out_len()];
    if let Some(b) = b {
        let bv = f32s(b, "ConvTranspose bias")?;
        for (i, v) in o.iter_mut().enumerate() {
            *v = bv[(i / (s.oh * s.ow)) % s.co];
        }
    }
    conv_transpose_acc(&s, xs, wv, &mut o);
    let mut shape = vec![s.n, s.co];
    shape.extend(&conv_transpose_geom(&x.shape, &w.shape, c)?.out);
    Ok(Tensor::f32(shape, o))
}

/// Source coordinate of output coordinate `o` along one axis (ONNX coordinate_transformation_mode);
/// `roi` is the (start, end) box of tf_crop_and_resize, as fractions of the input.
pub fn resize_coord(mode: CoordMode, o: usize, scale: f64, len_in: usize, len_out: usize, roi: (f64, f64)) -> f64 {
    let o = o as f64;
    match mode {
        CoordMode::TfCropAndResize => {
            let span = len_in as f64 - 1.0;
            if len_out > 1 {
                roi.0 * span + o * (roi.1 - roi.0) * span / (len_out as f64 - 1.0)
            } else {
                0.5 * (roi.0 + roi.1) * span
            }
        }
        CoordMode::HalfPixel => (o + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel => {
            if len_out > 1 {
                (o + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        // ONNX divides by the unrounded output length (input length x scale).
        CoordMode::AlignCorners => {
            let lo = len_in as f64 * scale;
            if len_out == 1 || lo <= 1.0 {
                0.0
            } else {
                o * (len_in as f64 - 1.0) / (lo - 1.0)
            }
        }
        CoordMode::Asymmetric => o / scale,
        CoordMode::TfHalfPixelForNn => (o + 0.5) / scale,
        CoordMode::HalfPixelSymmetric => {
            let adj = len_out as f64 / (scale * len_in as f64);
            let center = len_in as f64 / 2.0;
            center * (1.0 - adj) + (o + 0.5) / scale - 0.5
        }
    }
}

/// Nearest source index (clamped to the input).
pub fn nearest_index(mode: NearestMode, x: f64, len_in: usize) -> usize {
    let r = match mode {
        NearestMode::RoundPreferFloor => {
            if x.fract() == 0.5 || x.fract() == -0.5 {
                x.floor()
            } else {
                x.round()
            }
        }
        NearestMode::RoundPreferCeil => {
            if x.fract() == 0.5 || x.fract() == -0.5 {
                x.ceil()
            } else {
                x.round()
            }
        }
        NearestMode::Floor => x.floor(),
        NearestMode::Ceil => x.ceil(),
    };
    r.clamp(0.0, len_in as f64 - 1.0) as usize
}

/// Linear taps: (i0, i1, weight of i1), the coordinate clamped to the input.
pub fn linear_taps(x: f64, len_in: usize) -> (usize, usize, f32) {
    let x = x.clamp(0.0, len_in as f64 - 1.0);
    let i0 = x.floor() as usize;
    let i1 = (i0 + 1).min(len_in - 1);
    (i0, i1, (x - i0 as f64) as f32)
}

fn resize(x: &Tensor, r: &ResizeAttrs, inputs: &[Option<&Tensor>], oshape: Vec<usize>) -> Result<Tensor> {
    let known: Vec<Option<Known>> =
        inputs.iter().map(|t| t.map(|t| Known { dtype: t.dtype(), shape: &t.shape, value: Some(t) })).collect();
    let (_, scales) = resize_plan(&x.shape, r, &known)?;
    if x.is_empty() || oshape.contains(&0) {
        return Ok(Tensor { data: Data::zeros(x.dtype(), oshape.iter().product()), shape: oshape });
    }
    // The crop box of tf_crop_and_resize per axis (starts, then ends; over `axes` when given).
    let mut roi = vec![(0.0f64, 1.0f64); x.rank()];
    if r.coord == CoordMode::TfCropAndResize {
        let rv = inputs.get(1).copied().flatten().map(|t| t.to_f32_vec()).unwrap_or_default();
        let axes: Vec<usize> = match &r.axes {
            Some(a) => a.iter().map(|&v| lowbit_core::shape::norm_axis(v, x.rank())).collect::<Result<_>>()?,
            None => (0..x.rank()).collect(),
        };
        if rv.len() != 2 * axes.len() {
            return Err(Error::Invalid(format!("tf_crop_and_resize needs a roi of {} values", 2 * axes.len())));
        }
        for (k, &a) in axes.iter().enumerate() {
            roi[a] = (rv[k] as f64, rv[k + axes.len()] as f64);
        }
    }
    let crop = r.coord == CoordMode::TfCropAndResize;
    // Separable: one axis at a time (multilinear = linear along each axis in turn).
    let mut cur = x.clone();
    for d in 0..x.rank() {
        if cur.shape[d] == oshape[d] && scales[d] == 1.0 && !crop {
            continue;
        }
        let (len_in, len_out) = (cur.shape[d], oshape[d]);
        let outer: usize = cur.shape[..d].iter().product();
        let inner: usize = cur.shape[d + 1..].iter().product();
        let mut shape = cur.shape.clone();
        shape[d] = len_out;
        cur = match (r.mode, &cur.data) {
            (ResizeMode::Linear, Data::F32(v)) => {
                let mut o = vec![0f32; outer * len_out * inner];
                for j in 0..len_out {
                    let c = resize_coord(r.coord, j, scales[d], len_in, len_out, roi[d]);
                    let (i0, i1, t) = linear_taps(c, len_in);
                    let outside = crop && !(0.0..=len_in as f64 - 1.0).contains(&c);
                    for ou in 0..outer {
                        for k in 0..inner {
                            if outside {
                                o[(ou * len_out + j) * inner + k] = r.extrapolation_value;
                                continue;
                            }
                            let (a, b) = (v[(ou * len_in + i0) * inner + k], v[(ou * len_in + i1) * inner + k]);
                            o[(ou * len_out + j) * inner + k] = a + (b - a) * t;
                        }
                    }
                }
                Tensor::f32(shape, o)
            }
            (ResizeMode::Linear, _) => {
                return Err(Error::Invalid(format!("linear Resize of {} is not supported", x.dtype().name())))
            }
            (ResizeMode::Nearest, data) => {
                if crop {
                    return Err(Error::Invalid("nearest tf_crop_and_resize is not supported".into()));
                }
                let src: Vec<usize> = (0..len_out)
                    .map(|j| {
                        nearest_index(r.nearest, resize_coord(r.coord, j, scales[d], len_in, len_out, roi[d]), len_in)
                    })
                    .collect();
                let mut sel = Vec::with_capacity(outer * len_out * inner);
                for ou in 0..outer {
                    for &s in &src {
                        sel.extend((0..inner).map(|k| (ou * len_in + s) * inner + k));
                    }
                }
                Tensor { data: data.gather(&sel), shape }
            }
        };
    }
    Ok(Tensor { shape: oshape, data: cur.data })
}

fn pad(
    x: &Tensor,
    mode: PadMode,
    attr: Option<&[i64]>,
    value: f32,
    inputs: &[Option<&Tensor>],
    oshape: Vec<usize>,
) -> Result<Tensor> {
    let r = x.rank();
    let p = match attr {
        Some(p) => p.to_vec(),
        None => inputs.get(1).copied().flatten().map(|t| t.to_i64_vec()).unwrap_or_default(),
    };
    let axes: Vec<usize> = match inputs.get(3).copied().flatten() {
        Some(a) => a.to_i64_vec().iter().map(|&v| lowbit_core::shape::norm_axis(v, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    let mut begin = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = p[k];
    }
    let cval = match inputs.get(2).copied().flatten() {
        Some(t) if !t.is_empty() => t.data.get_f64(0),
        _ => value as f64,
    };
    if mode != PadMode::Constant && x.shape.iter().zip(&oshape).any(|(&i, &o)| i == 0 && o > 0) {
        return Err(Error::Invalid("reflect/edge/wrap padding of an empty axis".into()));
    }
    let n_out: usize = oshape.iter().product();
    let (xst, ost) = (strides(&x.shape), strides(&oshape));
    let mut c = vec![0; r];
    // Source index of each output element, or x.len() for the constant.
    let mut sel = Vec::with_capacity(n_out);
    for f in 0..n_out {
        coords(f, &oshape, &ost, &mut c);
        let mut src = 0usize;
        let mut outside = false;
        for d in 0..r {
            let len = x.shape[d] as i64;
            let mut i = c[d] as i64 - begin[d];
            if i < 0 || i >= len {
                match mode {
                    PadMode::Constant => {
                        outside = true;
                        break;
                    }
                    PadMode::Edge => i = i.clamp(0, len - 1),
                    PadMode::Wrap => i = i.rem_euclid(len),
                    PadMode::Reflect => {
                        if len == 1 {
                            i = 0;
                        } else {
                            let period = 2 * (len - 1);
                            let m = i.rem_euclid(period);
                            i = if m < len { m } else { period - m };
                        }
                    }
                }
            }
            src += i as usize * xst[d];
        }
        sel.push(if outside { x.len() } else { src });
    }
    let fill = from_f64(x.dtype(), vec![cval]);
    let both = Data::concat(&[&x.data, &fill])?;
    Ok(Tensor { data: both.gather(&sel), shape: oshape })
}
