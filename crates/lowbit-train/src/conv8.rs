//! INT8 training convolutions (`lowbit train --int8-train`; issue 22, after Zhu et al., "Towards
//! Unified INT8 Training for Convolutional Neural Network", CVPR 2020).
//!
//! One differentiable operation, registered with burn's autodiff like [`crate::conv`]'s, whose
//! three products run on lowbit's integer kernels (uint8 × int8, int32 accumulation):
//! - forward: the input `X` and the weights `W` quantized symmetrically per tensor at 8 bits
//!   (nearest, clip at the largest magnitude), `Y = sx·sw · conv(Xq, Wq)` on the inference
//!   convolution ([`QConv`], NHWC bytes with zero point 128, f32 outputs);
//! - the error `dY` quantized at `--grad-bits` with the DSGC clip ([`int8grad::dsgc_clip`], re-searched
//!   every `dsgc_every` steps on a sample of the tensor) and stochastic rounding;
//! - input gradient: for stride-1 convolutions the transposed convolution is a convolution of
//!   `dYq` with the flipped, transposed `Wq` on the same integer kernel; strided ones (the
//!   downsampling layers) multiply the same dequantized operands in f32 (identical values, not
//!   faster);
//! - weight gradient: `dWᵀ = Σ_images cols(Xq) · dYqᵀ` on the integer GEMM, the byte columns built
//!   from `Xq`'s planes and `dYq` packed straight into the GEMM's VNNI layout;
//! - DCLS: the weight gradient is scaled by `max(exp(-alpha·d), beta)`, `d` the deviation of this
//!   step's quantized error (with SGD-momentum that is the layer's learning rate scaled).
//!
//! The quantizers are straight-through: gradients reach `X` and `W` (the f32 master weights)
//! unchanged. Each layer keeps its clip, a history of (deviation, clip, max, factor) and the time
//! spent per phase, for the gradient report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use burn_flex::FlexTensor;
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::ops::QParams;
use lowbit_kernels::int8::{edges, gemm, Isa, Out, OutPtr, PackedB, QConv, Requant};
use rayon::prelude::*;

use crate::conv::{f32_data, flex, ConvParams, Geom};
use crate::int8grad::{self, absmax, levels_stochastic, qmax, step_of};

/// How the int8 layers quantize and scale.
#[derive(Clone, Copy, Debug)]
pub struct Int8Config {
    pub isa: Isa,
    /// Error (output gradient) bits, 2..=8.
    pub grad_bits: u32,
    /// Direction Sensitive Gradient Clipping (else: clip at the largest magnitude).
    pub dsgc: bool,
    /// Deviation Counteractive Learning-rate Scaling.
    pub dcls: bool,
    pub alpha: f64,
    pub beta: f64,
    /// Steps between DSGC searches.
    pub dsgc_every: usize,
    /// Elements of the error tensor the DSGC search runs on.
    pub dsgc_sample: usize,
    /// Steps between history records.
    pub record_every: usize,
    pub seed: u64,
}

impl Int8Config {
    /// The paper's setting on `isa`: 8-bit errors, DSGC, DCLS with alpha 20, beta 0.1.
    pub fn new(isa: Isa) -> Int8Config {
        // The integer kernels' contract: the path runs on this CPU.
        assert!(isa.supported(), "integer path {} is not supported by this CPU", isa.name());
        Int8Config {
            isa,
            grad_bits: 8,
            dsgc: true,
            dcls: true,
            alpha: 20.0,
            beta: 0.1,
            dsgc_every: 100,
            dsgc_sample: 1 << 16,
            record_every: 10,
            seed: 0,
        }
    }
}

/// One step of a layer's gradient history.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Record {
    pub step: usize,
    /// `1 - cos(dY, dYq)` of the quantized error.
    pub deviation: f64,
    pub clip: f32,
    /// Largest magnitude of the error (max clipping's clip).
    pub max: f32,
    /// DCLS factor applied to the weight gradient (1 without DCLS).
    pub factor: f64,
}

/// Time spent per phase (all images of all steps).
#[derive(Clone, Copy, Debug, Default)]
pub struct Times {
    pub forward: Duration,
    pub input_grad: Duration,
    pub weight_grad: Duration,
    /// Quantizing `X`, `W` and `dY` (clip search included) and the layout conversions.
    pub quant: Duration,
    pub steps: usize,
}

#[derive(Debug, Default)]
struct State {
    step: usize,
    clip: Option<f32>,
    history: Vec<Record>,
    times: Times,
}

/// One int8 convolution layer of a training run: its configuration and running state.
#[derive(Debug)]
pub struct Int8Layer {
    pub name: String,
    /// Position among the model's int8 convolutions (graph order).
    pub index: usize,
    pub cfg: Int8Config,
    /// Salt of this layer's random draws.
    salt: u32,
    state: Mutex<State>,
}

impl Int8Layer {
    pub fn new(name: &str, cfg: Int8Config, index: usize) -> Arc<Int8Layer> {
        let salt = (cfg.seed as u32) ^ (index as u32).wrapping_mul(0x85eb_ca6b);
        Arc::new(Int8Layer { name: name.into(), index, cfg, salt, state: Mutex::new(State::default()) })
    }
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn history(&self) -> Vec<Record> {
        self.st().history.clone()
    }
    pub fn times(&self) -> Times {
        self.st().times
    }
    /// Backward passes seen.
    pub fn steps(&self) -> usize {
        self.st().step
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait LbConv8: Backend {
    /// [`crate::conv::LbConv::lb_conv2d`] on the integer kernels of `layer`.
    fn lb_conv2d_int8(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        p: ConvParams,
        layer: Arc<Int8Layer>,
    ) -> FloatTensor<Self>;
}

/// Whether [`conv2d`] runs a convolution with options `o` and weights of shape `ws`: one group or
/// depthwise, no dilation.
pub fn supports(o: &ConvOptions<2>, ws: &[usize]) -> bool {
    o.dilation == [1, 1] && (o.groups == 1 || (ws.len() == 4 && ws[1] == 1 && ws[0] == o.groups))
}

/// An int8 training convolution (one group or depthwise, no dilation: the caller checks).
pub fn conv2d(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, o: ConvOptions<2>, layer: Arc<Int8Layer>) -> Tensor<4> {
    let p = [o.stride[0], o.stride[1], o.padding[0].0, o.padding[1].0, o.padding[0].1, o.padding[1].1];
    let y = Tensor::<4>::from_dispatch(<Dispatch as LbConv8>::lb_conv2d_int8(
        x.into_dispatch(),
        w.into_dispatch(),
        p,
        layer,
    ));
    match b {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// What the forward pass keeps for the backward one.
#[derive(Debug)]
struct Saved {
    /// `Xq` as planes (NCHW bytes, level + 128).
    xq: Vec<u8>,
    sx: f32,
    /// `Wq` levels (OIHW).
    wq: Vec<i8>,
    sw: f32,
    xshape: [usize; 4],
    wshape: [usize; 4],
}

fn shape4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

/// Symmetric 8-bit levels of `w` at step `s` (nearest, ties to even).
fn weight_levels(w: &[f32], s: f32) -> Vec<i8> {
    w.iter().map(|&v| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8).collect()
}

/// The shapes of a convolution of input `xs` with weights `ws` (one group, or depthwise: then
/// `g.c == g.o` and `g.k()` is not the weight row length), and whether it is depthwise.
fn geom_of(xs: &[usize], ws: &[usize], p: ConvParams) -> (Geom, bool) {
    let depthwise = dw::is_depthwise(xs, ws);
    let cin = if depthwise { xs[1] } else { ws[1] };
    (Geom::new(xs, &[ws[0], cin, ws[2], ws[3]], p), depthwise)
}

fn forward8(x: &FlexTensor, w: &FlexTensor, p: ConvParams, layer: &Int8Layer) -> (FlexTensor, Saved) {
    let t0 = Instant::now();
    let (x, w) = (f32_data(x, "input"), f32_data(w, "weight"));
    let (g, depthwise) = geom_of(x.layout().shape(), w.layout().shape(), p);
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), w.storage());
    let isa = layer.cfg.isa;
    let sx = step_of(absmax(xs), 127);
    let (mut xn, mut xq) = (vec![0u8; xs.len()], vec![0u8; xs.len()]);
    let q = QParams { scale: sx, zp: 128, signed: false };
    // `xq` receives the planes on the way to the NHWC bytes.
    // Images in parallel, each converted on one thread (splitting one small image's pixels
    // over the pool costs more than it saves).
    let chw = g.chw().max(1);
    xn.par_chunks_mut(chw)
        .zip(xq.par_chunks_mut(chw))
        .zip(xs.par_chunks(chw))
        .for_each(|((n, t), x)| edges::quantize(isa, x, q, Some((1, g.c, g.h * g.w)), n, t, 1));
    let sw = step_of(absmax(ws), 127);
    let wq = weight_levels(ws, sw);
    let t1 = Instant::now();
    let geom = ConvGeom {
        c_in: g.c,
        h: g.h,
        w: g.w,
        c_out: g.o,
        kh: g.kh,
        kw: g.kw,
        sh: p[0],
        sw: p[1],
        dh: 1,
        dw: 1,
        pt: p[2],
        pl: p[3],
        oh: g.oh,
        ow: g.ow,
        group: if depthwise { g.c } else { 1 },
    };
    let y = run_conv(isa, geom, &wq, sx * sw, &xn, g.n);
    let mut st = layer.st();
    st.times.quant += t1 - t0;
    st.times.forward += t1.elapsed();
    drop(st);
    let saved = Saved { xq, sx, wq, sw, xshape: shape4(x.layout().shape()), wshape: shape4(w.layout().shape()) };
    (flex(y, [g.n, g.o, g.oh, g.ow]), saved)
}

/// `n` NHWC byte images (zero point 128) through the integer convolution `geom` with weight
/// levels `w`, f32 outputs scaled by `scale`, returned as NCHW f32.
fn run_conv(isa: Isa, geom: ConvGeom, w: &[i8], scale: f32, src: &[u8], n: usize) -> Vec<f32> {
    let rq = Requant::new(&vec![scale; geom.c_out], &[], &[], f32::NEG_INFINITY, f32::INFINITY, Out::F32);
    let (in_len, pix, co) = (geom.c_in * geom.h * geom.w, geom.oh * geom.ow, geom.c_out);
    let qc = QConv::new(isa, geom, w, 128, rq);
    let scratch = qc.scratch_len();
    crate::par_build_init(
        n * co * pix,
        co * pix,
        || (vec![0u8; scratch], vec![0f32; pix * co]),
        |(s, t), i, out| {
            // SAFETY: `t` holds the `pix × co` outputs; the path is the one this CPU was probed for.
            unsafe { qc.run(&src[i * in_len..(i + 1) * in_len], OutPtr(t.as_mut_ptr() as *mut u8), s, 1) };
            lowbit_kernels::fp32::layout::transpose(t, pix, co, out);
        },
    )
}

fn backward8(
    s: &Saved,
    dy: &FlexTensor,
    p: ConvParams,
    layer: &Int8Layer,
    want_dx: bool,
    want_dw: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let t0 = Instant::now();
    let cfg = &layer.cfg;
    let isa = cfg.isa;
    let dy = f32_data(dy, "output gradient");
    let (g, depthwise) = geom_of(&s.xshape, &s.wshape, p);
    let dys: &[f32] = dy.storage();
    let max = absmax(dys);
    let qm = qmax(cfg.grad_bits);
    let (step, clip) = {
        let mut st = layer.st();
        let step = st.step;
        st.step += 1;
        let clip = if cfg.dsgc {
            if st.clip.is_none() || step % cfg.dsgc_every.max(1) == 0 {
                // An all-zero error (a dead branch) has no clip to keep: search again next step.
                let c = int8grad::dsgc_clip(&int8grad::sample(dys, cfg.dsgc_sample), cfg.grad_bits).clip;
                st.clip = (c.is_finite() && c > 0.0).then_some(c);
            }
            st.clip.unwrap_or(max).min(max)
        } else {
            max
        };
        (step, clip)
    };
    let sg = step_of(clip, qm);
    // The levels as planes (weight gradient) and NHWC bytes (input gradient), zero point 128.
    let mut dyp = vec![0u8; dys.len()];
    let seed = layer.salt ^ (step as u32).wrapping_mul(0x27d4_eb2f);
    let mom = levels_stochastic(dys, sg, qm as f32, seed, &mut dyp);
    let dev = mom.deviation();
    let factor = if cfg.dcls { int8grad::dcls_factor(dev, cfg.alpha, cfg.beta) } else { 1.0 };
    let mut dyn_ = vec![];
    if want_dx {
        dyn_ = vec![0u8; dys.len()];
        let img = (g.o * g.pix()).max(1);
        dyn_.par_chunks_mut(img)
            .zip(dyp.par_chunks(img))
            .for_each(|(d, p)| edges::planes_to_nhwc(isa, p, 1, g.o, g.pix(), d, 1));
    }
    let t1 = Instant::now();
    let dx = want_dx.then(|| {
        let [_, _, pt, pl, pb, pr] = p;
        let stride1 = p[0] == 1 && p[1] == 1 && pt < g.kh && pb < g.kh && pl < g.kw && pr < g.kw;
        if depthwise && !stride1 {
            return flex(dw::input_grad_direct(&g, &s.wq, sg * s.sw, &dyp), [g.n, g.c, g.h, g.w]);
        }
        if stride1 {
            // dX = the full correlation of dYq with the flipped kernel, transposed (O in, C out).
            let kk = g.kh * g.kw;
            let wf = if depthwise {
                dw::flipped(&s.wq, kk)
            } else {
                let mut wf = vec![0i8; g.c * g.o * kk];
                for o in 0..g.o {
                    for c in 0..g.c {
                        for t in 0..kk {
                            wf[(c * g.o + o) * kk + kk - 1 - t] = s.wq[(o * g.c + c) * kk + t];
                        }
                    }
                }
                wf
            };
            let geom = ConvGeom {
                c_in: g.o,
                h: g.oh,
                w: g.ow,
                c_out: g.c,
                kh: g.kh,
                kw: g.kw,
                sh: 1,
                sw: 1,
                dh: 1,
                dw: 1,
                pt: g.kh - 1 - pt,
                pl: g.kw - 1 - pl,
                oh: g.h,
                ow: g.w,
                group: if depthwise { g.c } else { 1 },
            };
            flex(run_conv(isa, geom, &wf, sg * s.sw, &dyn_, g.n), [g.n, g.c, g.h, g.w])
        } else {
            // Strided: the same dequantized operands through the f32 transposed convolution.
            let wd: Vec<f32> = s.wq.iter().map(|&v| v as f32 * s.sw).collect();
            let dyd: Vec<f32> = dyp.iter().map(|&v| (v as f32 - 128.0) * sg).collect();
            crate::conv::input_grad(&s.xshape, &flex(wd, s.wshape), &flex(dyd, [g.n, g.o, g.oh, g.ow]), p)
        }
    });
    let t2 = Instant::now();
    let dw = want_dw.then(|| {
        let sc = s.sx * sg * factor as f32;
        if depthwise {
            let v: Vec<f32> = dw::weight_grad(&g, &s.xq, &dyp).into_iter().map(|v| v * sc).collect();
            return flex(v, s.wshape);
        }
        let dwt = weight_grad8(&g, isa, &s.xq, &dyp);
        let (k, o) = (g.k(), g.o);
        let mut dw = vec![0f32; o * k];
        lowbit_kernels::fp32::layout::transpose(&dwt, k, o, &mut dw);
        dw.iter_mut().for_each(|v| *v *= sc);
        flex(dw, s.wshape)
    });
    let mut st = layer.st();
    st.times.quant += t1 - t0;
    st.times.input_grad += t2 - t1;
    st.times.weight_grad += t2.elapsed();
    st.times.steps += 1;
    if step % cfg.record_every.max(1) == 0 {
        st.history.push(Record { step, deviation: dev, clip, max, factor });
    }
    (dx, dw)
}

/// `Σ_images cols(Xq) · dYqᵀ` as `K × O` f32 (integer sums; `K = C·kh·kw` in OIHW order), images
/// split over the pool, partial sums added: [`weight_grad_grid`] for stride 1, else per image the
/// `K` byte rows of [`byte_cols`] times `dYq` packed as a `pix × O` GEMM right-hand side.
fn weight_grad8(g: &Geom, isa: Isa, xq: &[u8], dyp: &[u8]) -> Vec<f32> {
    let (k, pix, o) = (g.k(), g.pix(), g.o);
    let parts = rayon::current_num_threads().max(1);
    let per = g.n.div_ceil(parts).max(1);
    let stride1 = g.p[0] == 1 && g.p[1] == 1;
    (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|part| {
            let imgs = part * per..((part + 1) * per).min(g.n);
            if stride1 {
                return weight_grad_grid(g, isa, xq, dyp, imgs);
            }
            let p4 = pix.div_ceil(4) * 4;
            let (mut acc, mut tmp) = (vec![0f32; k * o], vec![0f32; k * o]);
            let mut a = vec![128u8; k * p4];
            let mut sub = vec![];
            for i in imgs {
                byte_cols(g, &xq[i * g.chw()..(i + 1) * g.chw()], p4, &mut a);
                let planes = &dyp[i * o * pix..(i + 1) * o * pix];
                // Pixel ranges of at most GRID_LIMIT (whole quads), so int32 sums cannot overflow.
                for p0 in (0..pix).step_by(GRID_LIMIT) {
                    let p1 = (p0 + GRID_LIMIT).min(pix);
                    let b = if p0 == 0 && p1 == pix {
                        pack_planes(isa, planes, o, pix)
                    } else {
                        sub.clear();
                        (0..o).for_each(|c| sub.extend_from_slice(&planes[c * pix + p0..c * pix + p1]));
                        pack_planes(isa, &sub, o, p1 - p0)
                    };
                    let rq = shift_requant(&b);
                    // SAFETY: the k rows of `a` are p4 bytes apart and hold p4 - p0 >= b.k4 bytes from
                    // p0 (p0 and p4 are multiples of 4); `tmp` holds k rows of o f32.
                    unsafe { gemm(k, a.as_ptr().add(p0), p4, &b, &rq, OutPtr(tmp.as_mut_ptr() as *mut u8), o, 1) };
                    acc.iter_mut().zip(&tmp).for_each(|(s, t)| *s += t);
                }
            }
            acc
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(s, t)| *s += t);
            a
        })
        .unwrap_or_else(|| vec![0f32; k * o])
}

/// The epilogue of a product whose left operand carries the +128 byte shift: integer sums less
/// `128·Σ b` per column, unscaled f32.
fn shift_requant(b: &PackedB) -> Requant {
    let corr: Vec<i32> = b.colsum.iter().map(|&s| s.wrapping_mul(-128)).collect();
    Requant::new(&vec![1.0; b.n], &corr, &[], f32::NEG_INFINITY, f32::INFINITY, Out::F32)
}

/// Positions of one reduction at most: `|Σ (x+128)·dy| <= 255·127·positions` stays in int32
/// (a multiple of 4: the strided path splits pixel rows of whole quads).
const GRID_LIMIT: usize = 60_000;

/// The stride-1 weight gradient without columns: on a grid of padded planes (`wp = ow + kw - 1`
/// bytes per row), tap `(ki, kj)`'s column row for channel `c` is plane `c` read from offset
/// `ki·wp + kj`, so each tap is one GEMM of the `C` planes (rows `q` bytes apart) with `dYq` laid
/// on the same grid (zero outside the output). Segments of output rows (whole images where they
/// fit) are concatenated up to [`GRID_LIMIT`] positions per GEMM.
fn weight_grad_grid(g: &Geom, isa: Isa, xq: &[u8], dyp: &[u8], imgs: std::ops::Range<usize>) -> Vec<f32> {
    let (taps, o, pix) = (g.kh * g.kw, g.o, g.pix());
    let [_, _, pt, pl, _, _] = g.p;
    let wp = g.ow + g.kw - 1;
    let band = (GRID_LIMIT / wp).saturating_sub(g.kh - 1).clamp(1, g.oh);
    let seg_len = |y0: usize, y1: usize| (y1 - y0 + g.kh - 1) * wp;
    // (image, first output row, end row) segments, grouped into GEMMs.
    let mut chunks: Vec<Vec<(usize, usize, usize)>> = vec![vec![]];
    let mut used = 0;
    for i in imgs {
        for y0 in (0..g.oh).step_by(band) {
            let y1 = (y0 + band).min(g.oh);
            let len = seg_len(y0, y1);
            if used + len > GRID_LIMIT && used > 0 {
                chunks.push(vec![]);
                used = 0;
            }
            chunks.last_mut().unwrap().push((i, y0, y1));
            used += len;
        }
    }
    let mut acc = vec![0f32; g.k() * o];
    let mut tmp = vec![0f32; g.k() * o];
    let (mut a, mut grid) = (vec![], vec![]);
    for segs in chunks.iter().filter(|s| !s.is_empty()) {
        let q: usize = segs.iter().map(|&(_, y0, y1)| seg_len(y0, y1)).sum();
        a.clear();
        a.resize(g.c * q + (g.kh - 1) * wp + g.kw + 4, 128u8);
        grid.clear();
        grid.resize(o * q, 128u8);
        let mut at = 0;
        for &(i, y0, y1) in segs {
            // Input planes: padded rows y0 .. y1 + kh - 1, the image at column `pl`.
            for c in 0..g.c {
                let plane = &xq[(i * g.c + c) * g.h * g.w..(i * g.c + c + 1) * g.h * g.w];
                for (r, py) in (y0..y1 + g.kh - 1).enumerate() {
                    if let Some(iy) = py.checked_sub(pt).filter(|&y| y < g.h) {
                        let d = c * q + at + r * wp + pl;
                        let w = g.w.min(wp - pl);
                        a[d..d + w].copy_from_slice(&plane[iy * g.w..iy * g.w + w]);
                    }
                }
            }
            for oc in 0..o {
                let src = &dyp[(i * o + oc) * pix..(i * o + oc + 1) * pix];
                for (r, oy) in (y0..y1).enumerate() {
                    let d = oc * q + at + r * wp;
                    grid[d..d + g.ow].copy_from_slice(&src[oy * g.ow..(oy + 1) * g.ow]);
                }
            }
            at += seg_len(y0, y1);
        }
        let b = pack_planes(isa, &grid, o, q);
        let rq = shift_requant(&b);
        for t in 0..taps {
            let off = (t / g.kw) * wp + t % g.kw;
            // SAFETY: row c reads a[c·q + off .. + b.k4], inside `a` by its slack; tap t's outputs are
            // rows of o f32 taps·o apart from tmp[t·o], inside tmp (C·taps rows of o).
            unsafe {
                let out = OutPtr(tmp.as_mut_ptr().add(t * o) as *mut u8);
                gemm(g.c, a.as_ptr().add(off), q, &b, &rq, out, taps * o, 1)
            };
        }
        acc.iter_mut().zip(&tmp).for_each(|(s, t)| *s += t);
    }
    acc
}

/// The byte columns of one image: row `(c, ki, kj)` holds, for each output pixel, the input byte
/// that tap reads (128, the zero level, where it reads padding); rows are `p4` bytes apart.
pub(crate) fn byte_cols(g: &Geom, img: &[u8], p4: usize, a: &mut [u8]) {
    crate::conv::im2col_rows(g, img, a, p4, 128, |d, s| d.copy_from_slice(s))
}

/// `o` planes of `pix` bytes (level + 128) as the GEMM right-hand side `B[pix][o] = level`,
/// written directly in the layout the path reads (VNNI quads: each plane's 4 neighbouring pixels;
/// AVX2 pairs), or through [`PackedB::new`] for AMX.
pub(crate) fn pack_planes(isa: Isa, planes: &[u8], o: usize, pix: usize) -> PackedB {
    let level = |kk: usize, j: usize| (planes[j * pix + kk] ^ 0x80) as i8;
    if isa == Isa::Amx {
        return PackedB::new(isa, pix, o, level);
    }
    let k4 = pix.div_ceil(4) * 4;
    let n_pad = o.div_ceil(16) * 16;
    let colsum: Vec<i32> = (0..o)
        .map(|j| planes[j * pix..(j + 1) * pix].iter().map(|&v| v as i32).sum::<i32>() - 128 * pix as i32)
        .collect();
    if isa == Isa::Avx2 {
        // Each plane's pixel pairs, in the paneled pair layout.
        use lowbit_kernels::int8::pack::{pair_index, pairs_len};
        let mut pairs = vec![0i8; pairs_len(k4, o)];
        for j in 0..o {
            let plane = &planes[j * pix..(j + 1) * pix];
            for (kk, &v) in plane.iter().enumerate() {
                pairs[pair_index(k4, kk, j)] = (v ^ 0x80) as i8;
            }
        }
        return PackedB { isa, k4, kp: k4, n: o, n_pad, quad: lowbit_kernels::aligned::Aligned::new(), pairs, colsum };
    }
    let panel = lowbit_kernels::int8::pack::PANEL;
    let mut quad = lowbit_kernels::aligned::Aligned::zeroed(k4 * n_pad);
    for j in 0..o {
        let plane = &planes[j * pix..(j + 1) * pix];
        let (pi, jj) = (j / panel, j % panel);
        let width = panel.min(n_pad - pi * panel);
        let base = pi * panel * k4 + jj * 4;
        let mut full = plane.chunks_exact(4);
        for (gi, q) in (&mut full).enumerate() {
            let d = base + gi * width * 4;
            for r in 0..4 {
                quad[d + r] = (q[r] ^ 0x80) as i8;
            }
        }
        let rest = full.remainder();
        if !rest.is_empty() {
            let d = base + (pix / 4) * width * 4;
            for (r, &v) in rest.iter().enumerate() {
                quad[d + r] = (v ^ 0x80) as i8;
            }
        }
    }
    PackedB { isa, k4, kp: k4, n: o, n_pad, quad, pairs: vec![], colsum }
}

impl LbConv8 for Flex {
    fn lb_conv2d_int8(x: FlexTensor, w: FlexTensor, p: ConvParams, layer: Arc<Int8Layer>) -> FlexTensor {
        forward8(&x, &w, p, &layer).0
    }
}

#[derive(Debug)]
struct Conv8Backward;

impl Backward<Flex, 2> for Conv8Backward {
    type State = (Arc<Saved>, ConvParams, Arc<Int8Layer>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (saved, p, layer) = ops.state;
        let (dx, dw) = backward8(&saved, &dy, p, &layer, node_x.is_some(), node_w.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> LbConv8 for Autodiff<Flex, C> {
    fn lb_conv2d_int8(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        p: ConvParams,
        layer: Arc<Int8Layer>,
    ) -> FloatTensor<Self> {
        match Conv8Backward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) = forward8(x.primitive(), w.primitive(), p, &layer);
                prep.finish((Arc::new(saved), p, layer), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward8(x.primitive(), w.primitive(), p, &layer).0),
        }
    }
}

#[path = "conv8_dw.rs"]
mod dw;

#[cfg(test)]
#[path = "conv8_tests.rs"]
mod tests;
