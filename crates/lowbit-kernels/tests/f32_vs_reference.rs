//! The fast f32 kernels against the reference evaluator on random shapes: pointwise, shifted-rows
//! (stride 1), im2col (stride 2, dilation), grouped and depthwise convolutions with every fused
//! activation, pooling, and broadcasting elementwise ops.

use lowbit_core::{Act, ConvAttrs, Node, Op, PoolAttrs, Tensor};
use lowbit_kernels::eltwise::{self, BinOp, Broadcast};
use lowbit_kernels::fp32::conv::{conv2d, conv2d_bands, PackedConv};
use lowbit_kernels::fp32::deconv::{Deconv2d, PackedDeconv};
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::isa::F32Isa;
use lowbit_kernels::{pool, reference};
use proptest::prelude::*;

fn rnd(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {}: {} vs {}", i, x, y);
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct ConvCase {
    c_in: usize,
    c_out: usize,
    group: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    s: usize,
    d: usize,
    pads: [usize; 4],
    act: u8,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        1usize..5,
        1usize..6,
        0usize..4,
        1usize..20,
        1usize..40,
        (1usize..6, 1usize..6),
        1usize..4,
        1usize..3,
        [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        0u8..5,
        any::<u64>(),
    )
        .prop_map(|(cg, og, gsel, h, w, k, s, d, pads, act, seed)| {
            // group: 1, depthwise, or a small group count; 3: enough output channels (16-60) for the
            // channel-vector GEMM that small planes take
            let (c_in, c_out, group) = match gsel {
                0 => (cg * 2, og * 3, 1),
                3 => (cg * 2, og * 12, 1),
                1 => (cg * 4, cg * 4, cg * 4),
                _ => (cg * 2, og * 2, 2),
            };
            ConvCase { c_in, c_out, group, h: h + (k.0 - 1) * d, w: w + (k.1 - 1) * d, k, s, d, pads, act, seed }
        })
}

fn act_of(a: u8) -> Act {
    match a {
        0 => Act::None,
        1 => Act::Relu,
        2 => Act::Clip { lo: 0.0, hi: 0.5 },
        3 => Act::HardSwish,
        _ => Act::HardSigmoid { alpha: 0.2, beta: 0.5 },
    }
}

/// The reference's output of a convolution node with input `x`, weights `w` and bias `b`.
fn reference_conv(attrs: &ConvAttrs, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let inputs = vec!["x".into(), "w".into(), "b".into()];
    let node = Node { name: "c".into(), op: Op::Conv(attrs.clone()), inputs, outputs: vec!["y".into()] };
    reference::eval(&node, &[Some(x), Some(w), Some(b)]).unwrap().remove(0)
}

/// The channels-in-lanes depthwise kernel reuses one buffer per thread and zeroes only the padding
/// of full channel groups: a padded convolution right after an unpadded one over a larger plane
/// (which filled the buffer with values) must still read zeros in its padding.
#[test]
fn depthwise_padding_after_a_larger_plane_reads_zeros() {
    let run = |c: usize, h: usize, w: usize, pad: usize, seed: u64| {
        let attrs = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![pad; 4],
            dilations: vec![1, 1],
            group: c,
            act: Act::None,
            ..Default::default()
        };
        let (xs, ws) = (vec![1, c, h, w], vec![c, 1, 3, 3]);
        let x = Tensor::f32(xs.clone(), rnd(seed, c * h * w).iter().map(|v| v + 5.0).collect());
        let wt = Tensor::f32(ws.clone(), rnd(seed ^ 7, c * 9));
        let b = Tensor::f32(vec![c], rnd(seed ^ 9, c));
        let want = reference_conv(&attrs, &x, &wt, &b);
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let g = ConvGeom {
            c_in: c,
            h,
            w,
            c_out: c,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: pad,
            pl: pad,
            oh,
            ow,
            group: c,
        };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), wt.to_f32_vec(), Some(b.to_f32_vec()), Act::None);
            let mut out = vec![f32::NAN; c * oh * ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, 1);
            close(&out, want.as_f32().unwrap(), 1e-4).unwrap();
        }
    };
    run(32, 30, 30, 0, 1);
    run(32, 9, 13, 1, 2);
    run(16, 20, 7, 0, 3);
    run(48, 6, 6, 2, 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn conv_matches_reference(c in conv_case(), batch in 1usize..3, threads in 1usize..3) {
        let act = act_of(c.act);
        let attrs = ConvAttrs {
            kernel_shape: vec![c.k.0, c.k.1],
            strides: vec![c.s, c.s],
            pads: c.pads.to_vec(),
            dilations: vec![c.d, c.d],
            group: c.group,
            act,
            ..Default::default()
        };
        let xs = vec![batch, c.c_in, c.h, c.w];
        let ws = vec![c.c_out, c.c_in / c.group, c.k.0, c.k.1];
        let x = Tensor::f32(xs.clone(), rnd(c.seed, xs.iter().product()));
        let w = Tensor::f32(ws.clone(), rnd(c.seed ^ 7, ws.iter().product()));
        let b = Tensor::f32(vec![c.c_out], rnd(c.seed ^ 9, c.c_out));
        let node = Node { name: "c".into(), op: Op::Conv(attrs.clone()), inputs: vec!["x".into(), "w".into(), "b".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&x), Some(&w), Some(&b)]).unwrap().remove(0);
        let win = lowbit_core::shape::window(&xs[2..], &ws[2..], &attrs.strides, &attrs.dilations, &attrs.pads, attrs.auto_pad, false).unwrap();
        let g = ConvGeom { c_in: c.c_in, h: c.h, w: c.w, c_out: c.c_out, kh: c.k.0, kw: c.k.1, sh: c.s, sw: c.s, dh: c.d, dw: c.d,
            pt: c.pads[0], pl: c.pads[1], oh: win.out[0], ow: win.out[1], group: c.group };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), w.to_f32_vec(), Some(b.to_f32_vec()), act);
            let mut out = vec![f32::NAN; batch * c.c_out * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (isz, osz) = (c.c_in * c.h * c.w, c.c_out * g.oh * g.ow);
            pool.install(|| for n in 0..batch {
                conv2d(&p, &x.to_f32_vec()[n * isz..(n + 1) * isz], &mut out[n * osz..(n + 1) * osz], &mut scratch, threads);
            });
            close(&out, want.as_f32().unwrap(), 1e-4)?;
        }
    }

    /// On AVX-512 and AVX2 the direct channel-lane kernel gives the bits of the GEMM strategies it replaces
    /// (the same FMA chain per output: the bias, then tap by tap), at stride 1 and 2, with
    /// dilation, padding and every activation; and its bands (the f32 output of a fused
    /// convolution + quantization) hold the bits of the whole convolution.
    #[test]
    fn direct_channel_lanes_match_the_gemm_paths(c in conv_case(), threads in 1usize..3) {
        if c.group != 1 {
            return Ok(());
        }
        let act = act_of(c.act);
        let attrs = ConvAttrs { kernel_shape: vec![c.k.0, c.k.1], strides: vec![c.s, c.s], pads: c.pads.to_vec(),
            dilations: vec![c.d, c.d], group: 1, act, ..Default::default() };
        let xs = [1, c.c_in, c.h, c.w];
        let ws = [c.c_out, c.c_in, c.k.0, c.k.1];
        let win = lowbit_core::shape::window(&xs[2..], &ws[2..], &attrs.strides, &attrs.dilations, &attrs.pads, attrs.auto_pad, false).unwrap();
        let g = ConvGeom { c_in: c.c_in, h: c.h, w: c.w, c_out: c.c_out, kh: c.k.0, kw: c.k.1, sh: c.s, sw: c.s, dh: c.d, dw: c.d,
            pt: c.pads[0], pl: c.pads[1], oh: win.out[0], ow: win.out[1], group: 1 };
        let (x, w, b) = (rnd(c.seed, c.c_in * c.h * c.w), rnd(c.seed ^ 7, ws.iter().product()), rnd(c.seed ^ 9, c.c_out));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let run = |p: &PackedConv| {
            let mut out = vec![f32::NAN; c.c_out * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            pool.install(|| conv2d(p, &x, &mut out, &mut scratch, threads));
            out
        };
        for isa in [F32Isa::Avx512, F32Isa::Avx2].into_iter().filter(|i| i.supported()) {
            let d = PackedConv::with_strategy(isa, g.clone(), w.clone(), Some(b.clone()), act, Some(false), Some(true));
            let s = PackedConv::with_strategy(isa, g.clone(), w.clone(), Some(b.clone()), act, Some(false), Some(false));
            let shiftable = !g.is_pointwise() && (c.s == 1 || (c.s == 2 && c.d == 1 && c.k.0 >= 2 && c.k.1 >= 2));
            // (On AVX2 1x1 convolutions run on it too, straight from the input planes.)
            let runs = shiftable || (isa == F32Isa::Avx2 && g.is_pointwise());
            prop_assert_eq!(d.direct(), runs, "{} {}", isa.name(), d.kernel_name());
            let want = run(&s);
            let got = run(&d);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want), "{}: {} vs {}", isa.name(), d.kernel_name(), s.kernel_name());
            if d.bands() {
                // The bands, gathered into planes.
                let banded = std::sync::Mutex::new(vec![f32::NAN; c.c_out * g.oh * g.ow]);
                let sink = |y0: usize, y1: usize, cb: &[f32], nw: usize| {
                    let pitch = nw / (y1 - y0);
                    let mut o = banded.lock().unwrap();
                    for ch in 0..c.c_out {
                        for y in y0..y1 {
                            for xx in 0..g.ow {
                                o[(ch * g.oh + y) * g.ow + xx] = cb[ch * nw + (y - y0) * pitch + xx];
                            }
                        }
                    }
                };
                let mut scratch = vec![0.0; d.scratch_len()];
                prop_assert!(pool.install(|| conv2d_bands(&d, &x, &mut scratch, threads, &sink)));
                prop_assert_eq!(bits(&banded.into_inner().unwrap()), bits(&want));
            }
        }
    }

    /// 1x1 convolutions on AVX2's channel-lane kernel (runs of image rows taken as one row) give
    /// the bits of the GEMMs they replace, on planes from 1x1 to past the 48-pixel runs, channel
    /// counts off the 8-lane grid, every activation, one and two threads.
    #[test]
    fn pointwise_channel_lanes_match_the_gemms(c_in in 1usize..70, c_out in 1usize..40, h in 1usize..20, w in 1usize..20,
                                               act in 0u8..5, threads in 1usize..3, seed in any::<u64>()) {
        if !F32Isa::Avx2.supported() {
            return Ok(());
        }
        let act = act_of(act);
        let g = ConvGeom { c_in, h, w, c_out, kh: 1, kw: 1, sh: 1, sw: 1, dh: 1, dw: 1, pt: 0, pl: 0, oh: h, ow: w, group: 1 };
        let (x, wt, b) = (rnd(seed, c_in * h * w), rnd(seed ^ 7, c_out * c_in), rnd(seed ^ 9, c_out));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let run = |p: &PackedConv| {
            let mut out = vec![f32::NAN; c_out * h * w];
            pool.install(|| conv2d(p, &x, &mut out, &mut [], threads));
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let d = PackedConv::with_strategy(F32Isa::Avx2, g.clone(), wt.clone(), Some(b.clone()), act, Some(false), Some(true));
        let s = PackedConv::with_strategy(F32Isa::Avx2, g, wt, Some(b), act, Some(false), Some(false));
        prop_assert!(d.direct() && !s.direct(), "{} / {}", d.kernel_name(), s.kernel_name());
        prop_assert_eq!(run(&d), run(&s), "{} vs {}", d.kernel_name(), s.kernel_name());
    }

    /// Winograd F(4x4, 3x3) on every path against the reference's direct loops: ragged planes (any
    /// size mod 4 and mod 32 columns), asymmetric pads, several bands of tile rows, every
    /// activation; equal up to rounding (bounded relative to the output's range).
    #[test]
    fn winograd_matches_reference(ci in 1usize..20, co in 1usize..20, h in 1usize..40, w in 1usize..70,
            pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3], act in 0u8..5, threads in 1usize..3, seed in any::<u64>()) {
        let act = act_of(act);
        let (h, w) = (h + 2, w + 2);
        let attrs = ConvAttrs { kernel_shape: vec![3, 3], strides: vec![1, 1], pads: pads.to_vec(), dilations: vec![1, 1], group: 1, act, ..Default::default() };
        let (xs, ws) = (vec![1, ci, h, w], vec![co, ci, 3, 3]);
        let x = Tensor::f32(xs.clone(), rnd(seed, xs.iter().product()));
        let wt = Tensor::f32(ws.clone(), rnd(seed ^ 7, ws.iter().product()));
        let b = Tensor::f32(vec![co], rnd(seed ^ 9, co));
        let node = Node { name: "c".into(), op: Op::Conv(attrs.clone()), inputs: vec!["x".into(), "w".into(), "b".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&x), Some(&wt), Some(&b)]).unwrap().remove(0);
        let want = want.as_f32().unwrap();
        // The range before the activation (a clamp hides how large the sums were).
        let lin = Node { op: Op::Conv(ConvAttrs { act: Act::None, ..attrs.clone() }), ..node.clone() };
        let pre = reference::eval(&lin, &[Some(&x), Some(&wt), Some(&b)]).unwrap().remove(0);
        let range = pre.as_f32().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
        let g = ConvGeom { c_in: ci, h, w, c_out: co, kh: 3, kw: 3, sh: 1, sw: 1, dh: 1, dw: 1, pt: pads[0], pl: pads[1],
            oh: h + pads[0] + pads[2] - 2, ow: w + pads[1] + pads[3] - 2, group: 1 };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::with_strategy(isa, g.clone(), wt.to_f32_vec(), Some(b.to_f32_vec()), act, Some(true), None);
            prop_assert_eq!(p.kernel_name(), "f32 winograd F(4x4,3x3)");
            let mut out = vec![f32::NAN; co * g.oh * g.ow];
            let mut scratch = vec![f32::NAN; p.scratch_len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, threads));
            for (i, (a, e)) in out.iter().zip(want).enumerate() {
                prop_assert!((a - e).abs() <= 1e-5 * (1.0 + range), "{} element {}: {} vs {} (range {})", isa.name(), i, a, e, range);
            }
        }
    }

    /// ConvTranspose as GEMM + col2im against the reference's direct loops: groups, strides,
    /// dilations, asymmetric pads, output padding, ragged sizes.
    #[test]
    fn conv_transpose_matches_reference(cig in 1usize..4, cog in 1usize..4, group in 1usize..4, h in 1usize..9, w in 1usize..12,
            k in (1usize..5, 1usize..5), s in (1usize..4, 1usize..4), d in (1usize..3, 1usize..3), pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
            opad in (0usize..3, 0usize..3), batch in 1usize..3, seed in any::<u64>()) {
        // output_padding must be smaller than the stride or the dilation.
        let opad = (opad.0 % s.0.max(d.0), opad.1 % s.1.max(d.1));
        let attrs = lowbit_core::ConvTransposeAttrs {
            kernel_shape: vec![k.0, k.1], strides: vec![s.0, s.1], pads: pads.to_vec(), dilations: vec![d.0, d.1], group,
            auto_pad: Default::default(), output_padding: vec![opad.0, opad.1], output_shape: vec![],
        };
        let (ci, co) = (cig * group, cog * group);
        let xs = vec![batch, ci, h, w];
        let ws = vec![ci, cog, k.0, k.1];
        let x = Tensor::f32(xs.clone(), rnd(seed, xs.iter().product()));
        let wt = Tensor::f32(ws.clone(), rnd(seed ^ 7, ws.iter().product()));
        let b = Tensor::f32(vec![co], rnd(seed ^ 9, co));
        let Ok(geom) = lowbit_core::shape_ops::conv_transpose_geom(&xs, &ws, &attrs) else { return Ok(()) };
        let node = Node { name: "t".into(), op: Op::ConvTranspose(attrs.clone()), inputs: vec!["x".into(), "w".into(), "b".into()], outputs: vec!["y".into()] };
        let mut want = reference::eval(&node, &[Some(&x), Some(&wt), Some(&b)]).unwrap();
        let want = want.remove(0);
        let g = Deconv2d::new(&xs, &geom, group).unwrap();
        prop_assert_eq!(&want.shape, &vec![batch, co, g.oh, g.ow]);
        for isa in F32Isa::all_supported() {
            let p = PackedDeconv::new(isa, g, &wt.to_f32_vec(), Some(b.to_f32_vec()));
            let mut out = vec![f32::NAN; batch * co * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            let (isz, osz) = (ci * h * w, co * g.oh * g.ow);
            for n in 0..batch {
                p.run(&x.to_f32_vec()[n * isz..(n + 1) * isz], &mut out[n * osz..(n + 1) * osz], &mut scratch, 1);
            }
            close(&out, want.as_f32().unwrap(), 1e-4)?;
        }
    }

    /// MobileNet's stride-2 depthwise shape (3x3 or 5x5, stride 2, left padding 1), which the random
    /// convolution cases almost never draw: every plane size, ragged right edges, asymmetric
    /// padding, fused clamps.
    #[test]
    fn depthwise_3x3_stride2_matches_reference(c in 1usize..6, h in 1usize..40, w in 1usize..70,
                                                pt in 0usize..3, pb in 0usize..3, pr in 0usize..3,
                                                act in 0u8..3, k5 in any::<bool>(), seed in any::<u64>()) {
        // 5x5 too (EfficientNet's stride-2 depthwise), whose taps reach 4 columns past the block.
        let k = if k5 { 5 } else { 3 };
        let (h, w) = (h + k - 1, w + k - 1);
        let act = act_of(act);
        let attrs = ConvAttrs { kernel_shape: vec![k, k], strides: vec![2, 2], pads: vec![pt, 1, pb, pr], dilations: vec![1, 1],
            group: c, act, ..Default::default() };
        let xs = vec![1, c, h, w];
        let ws = vec![c, 1, k, k];
        let x = Tensor::f32(xs.clone(), rnd(seed, c * h * w));
        let wt = Tensor::f32(ws.clone(), rnd(seed ^ 7, c * k * k));
        let b = Tensor::f32(vec![c], rnd(seed ^ 9, c));
        let node = Node { name: "c".into(), op: Op::Conv(attrs.clone()), inputs: vec!["x".into(), "w".into(), "b".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&x), Some(&wt), Some(&b)]).unwrap().remove(0);
        let win = lowbit_core::shape::window(&xs[2..], &ws[2..], &attrs.strides, &attrs.dilations, &attrs.pads, attrs.auto_pad, false).unwrap();
        let g = ConvGeom { c_in: c, h, w, c_out: c, kh: k, kw: k, sh: 2, sw: 2, dh: 1, dw: 1, pt, pl: 1, oh: win.out[0], ow: win.out[1], group: c };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), wt.to_f32_vec(), Some(b.to_f32_vec()), act);
            let mut out = vec![f32::NAN; c * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, 1);
            close(&out, want.as_f32().unwrap(), 1e-4)?;
        }
    }

    #[test]
    fn pool_matches_reference(c in 1usize..4, h in 1usize..30, w in 1usize..30, k in (1usize..4, 1usize..4), s in 1usize..3,
                              pads in [0usize..2, 0usize..2, 0usize..2, 0usize..2], max in any::<bool>(), cip in any::<bool>(), ceil in any::<bool>(), seed in any::<u64>()) {
        let (h, w) = (h + k.0, w + k.1);
        let pads: Vec<usize> = vec![pads[0].min(k.0 - 1), pads[1].min(k.1 - 1), pads[2].min(k.0 - 1), pads[3].min(k.1 - 1)];
        let attrs = PoolAttrs { kernel_shape: vec![k.0, k.1], strides: vec![s, s], pads: pads.clone(), ceil_mode: ceil, count_include_pad: cip, ..Default::default() };
        let op = if max { Op::MaxPool(attrs.clone()) } else { Op::AveragePool(attrs.clone()) };
        let x = Tensor::f32(vec![1, c, h, w], rnd(seed, c * h * w));
        let node = Node { name: "p".into(), op, inputs: vec!["x".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&x)]).unwrap().remove(0);
        let win = lowbit_core::shape::window(&[h, w], &[k.0, k.1], &attrs.strides, &[], &pads, attrs.auto_pad, ceil).unwrap();
        let g = ConvGeom { c_in: c, h, w, c_out: c, kh: k.0, kw: k.1, sh: s, sw: s, dh: 1, dw: 1, pt: pads[0], pl: pads[1], oh: win.out[0], ow: win.out[1], group: 1 };
        for isa in F32Isa::all_supported() {
            let mut out = vec![f32::NAN; c * g.oh * g.ow];
            pool::pool2d(isa, &g, c, max, cip, win.pads_end[0], win.pads_end[1], x.as_f32().unwrap(), &mut out, 1);
            close(&out, want.as_f32().unwrap(), 1e-5)?;
        }
    }

    /// Depthwise convolutions on the small planes that run with channels in the vector lanes (groups
    /// of 8 or 16 channels, the last one partial): several groups, 3x3 and 5x5, strides 1-2,
    /// dilation, asymmetric padding, fused clamps, one and two threads.
    #[test]
    fn depthwise_channel_groups_match_reference(c in 8usize..60, h in 1usize..20, w in 1usize..20, k5 in any::<bool>(),
            s in 1usize..3, d in 1usize..3, pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3], act in 0u8..3,
            threads in 1usize..3, seed in any::<u64>()) {
        let k = if k5 { 5 } else { 3 };
        let (h, w) = (h + (k - 1) * d, w + (k - 1) * d);
        let act = act_of(act);
        let attrs = ConvAttrs { kernel_shape: vec![k, k], strides: vec![s, s], pads: pads.to_vec(), dilations: vec![d, d],
            group: c, act, ..Default::default() };
        let (xs, ws) = (vec![1, c, h, w], vec![c, 1, k, k]);
        let x = Tensor::f32(xs.clone(), rnd(seed, c * h * w));
        let wt = Tensor::f32(ws.clone(), rnd(seed ^ 7, c * k * k));
        let b = Tensor::f32(vec![c], rnd(seed ^ 9, c));
        let want = reference_conv(&attrs, &x, &wt, &b);
        let win = lowbit_core::shape::window(&xs[2..], &ws[2..], &attrs.strides, &attrs.dilations, &attrs.pads, attrs.auto_pad, false).unwrap();
        let g = ConvGeom { c_in: c, h, w, c_out: c, kh: k, kw: k, sh: s, sw: s, dh: d, dw: d, pt: pads[0], pl: pads[1],
            oh: win.out[0], ow: win.out[1], group: c };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), wt.to_f32_vec(), Some(b.to_f32_vec()), act);
            let mut out = vec![f32::NAN; c * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, threads));
            close(&out, want.as_f32().unwrap(), 1e-4)?;
        }
    }

    /// 2x2 stride-2 max pooling (its own row-pair kernel): odd and even planes, rows up to 70 wide
    /// (ragged 8- and 16-lane ends), ceil mode (whose last window leaves the plane on odd sizes and
    /// then takes the general kernel), negative inputs (a zero-filled lane must not win).
    #[test]
    fn max_pool_2x2_stride2_matches_reference(c in 1usize..4, h in 2usize..40, w in 2usize..70, ceil in any::<bool>(), seed in any::<u64>()) {
        let attrs = PoolAttrs { kernel_shape: vec![2, 2], strides: vec![2, 2], pads: vec![0; 4], ceil_mode: ceil, ..Default::default() };
        let x = Tensor::f32(vec![1, c, h, w], rnd(seed, c * h * w).iter().map(|v| v - 3.0).collect());
        let node = Node { name: "p".into(), op: Op::MaxPool(attrs.clone()), inputs: vec!["x".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&x)]).unwrap().remove(0);
        let win = lowbit_core::shape::window(&[h, w], &[2, 2], &attrs.strides, &[], &attrs.pads, attrs.auto_pad, ceil).unwrap();
        let g = ConvGeom { c_in: c, h, w, c_out: c, kh: 2, kw: 2, sh: 2, sw: 2, dh: 1, dw: 1, pt: 0, pl: 0, oh: win.out[0], ow: win.out[1], group: 1 };
        for isa in F32Isa::all_supported() {
            let mut out = vec![f32::NAN; c * g.oh * g.ow];
            pool::pool2d(isa, &g, c, true, false, win.pads_end[0], win.pads_end[1], x.as_f32().unwrap(), &mut out, 1);
            prop_assert_eq!(&out[..], want.as_f32().unwrap(), "{}", isa.name());
        }
    }

    #[test]
    fn binary_broadcast_matches_reference(a in proptest::collection::vec(1usize..4, 0..5), mask in proptest::collection::vec(any::<bool>(), 5), op in 0u8..4, seed in any::<u64>()) {
        // b takes a's shape with some dims set to 1 and maybe fewer leading dims.
        let mut b: Vec<usize> = a.iter().zip(&mask).map(|(&d, &m)| if m { 1 } else { d }).collect();
        if mask[4] && !b.is_empty() { b.remove(0); }
        let out = lowbit_core::shape::broadcast(&a, &b).unwrap();
        let (ta, tb) = (Tensor::f32(a.clone(), rnd(seed, a.iter().product())), Tensor::f32(b.clone(), rnd(seed ^ 3, b.iter().product::<usize>()).iter().map(|v| v + 2.0).collect()));
        let (bop, o) = match op { 0 => (BinOp::Add, Op::Add), 1 => (BinOp::Sub, Op::Sub), 2 => (BinOp::Mul, Op::Mul), _ => (BinOp::Div, Op::Div) };
        let node = Node { name: "e".into(), op: o, inputs: vec!["a".into(), "b".into()], outputs: vec!["y".into()] };
        let want = reference::eval(&node, &[Some(&ta), Some(&tb)]).unwrap().remove(0);
        for isa in F32Isa::all_supported() {
            let mut got = vec![f32::NAN; out.iter().product()];
            eltwise::binary(isa, bop, &Broadcast::new(&a, &b, &out), ta.as_f32().unwrap(), tb.as_f32().unwrap(), &mut got);
            close(&got, want.as_f32().unwrap(), 1e-6)?;
        }
        // and with the operands swapped
        let out2 = lowbit_core::shape::broadcast(&b, &a).unwrap();
        let node2 = Node { inputs: vec!["b".into(), "a".into()], ..node };
        let want2 = reference::eval(&node2, &[Some(&tb), Some(&ta)]).unwrap().remove(0);
        let mut got2 = vec![f32::NAN; out2.iter().product()];
        eltwise::binary(F32Isa::best(), bop, &Broadcast::new(&b, &a, &out2), tb.as_f32().unwrap(), ta.as_f32().unwrap(), &mut got2);
        close(&got2, want2.as_f32().unwrap(), 1e-6)?;
    }
}

/// A plane narrower than the dilated window with padding wider than it (U²-Netp's dilation-8 stages at 160x224):
/// some taps' columns never meet the image. The im2col path once indexed before the row there (a panic).
#[test]
fn dilated_taps_wholly_in_the_padding_match_reference() {
    for (h, w, d, pad, s) in [(3usize, 3usize, 4usize, 4usize, 1usize), (5, 2, 8, 8, 1), (4, 7, 3, 5, 2)] {
        let attrs = ConvAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![s, s],
            pads: vec![pad; 4],
            dilations: vec![d, d],
            ..Default::default()
        };
        // 32 outputs: small planes take the channel-vector GEMM on AVX-512, whose window goes through im2col.
        let (c_in, c_out) = (3, 32);
        let xs = vec![1, c_in, h, w];
        let ws = vec![c_out, c_in, 3, 3];
        let x = Tensor::f32(xs.clone(), rnd(11, xs.iter().product()));
        let wt = Tensor::f32(ws.clone(), rnd(13, ws.iter().product()));
        let node = Node {
            name: "c".into(),
            op: Op::Conv(attrs.clone()),
            inputs: vec!["x".into(), "w".into()],
            outputs: vec!["y".into()],
        };
        let want = reference::eval(&node, &[Some(&x), Some(&wt)]).unwrap().remove(0);
        let win = lowbit_core::shape::window(
            &xs[2..],
            &ws[2..],
            &attrs.strides,
            &attrs.dilations,
            &attrs.pads,
            attrs.auto_pad,
            false,
        )
        .unwrap();
        let g = ConvGeom {
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            pt: pad,
            pl: pad,
            oh: win.out[0],
            ow: win.out[1],
            group: 1,
        };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), wt.to_f32_vec(), None, Act::None);
            let mut out = vec![f32::NAN; c_out * g.oh * g.ow];
            let mut scratch = vec![0.0; p.scratch_len()];
            conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, 1);
            close(&out, want.as_f32().unwrap(), 1e-4).unwrap();
        }
    }
}

/// The shifted-rows path in several bands of output rows (each compacted while in cache): every
/// band, group and thread count against the reference, and the same bits with 1, 2 and 3 threads
/// (the bands split over the pool, each value the same reduction).
#[test]
fn shifted_rows_in_bands_match_reference() {
    for (c_in, c_out, group, h, w) in
        [(3usize, 96usize, 1usize, 37usize, 150usize), (4, 96, 2, 23, 141), (8, 200, 1, 9, 300)]
    {
        let attrs =
            ConvAttrs { kernel_shape: vec![3, 5], pads: vec![1, 2, 1, 2], group, act: Act::Relu, ..Default::default() };
        let xs = vec![1, c_in, h, w];
        let ws = vec![c_out, c_in / group, 3, 5];
        let x = Tensor::f32(xs.clone(), rnd(21, xs.iter().product()));
        let wt = Tensor::f32(ws.clone(), rnd(23, ws.iter().product()));
        let b = Tensor::f32(vec![c_out], rnd(25, c_out));
        let node = Node {
            name: "c".into(),
            op: Op::Conv(attrs.clone()),
            inputs: vec!["x".into(), "w".into(), "b".into()],
            outputs: vec!["y".into()],
        };
        let want = reference::eval(&node, &[Some(&x), Some(&wt), Some(&b)]).unwrap().remove(0);
        let g =
            ConvGeom { c_in, h, w, c_out, kh: 3, kw: 5, sh: 1, sw: 1, dh: 1, dw: 1, pt: 1, pl: 2, oh: h, ow: w, group };
        for isa in F32Isa::all_supported() {
            let p = PackedConv::new(isa, g.clone(), wt.to_f32_vec(), Some(b.to_f32_vec()), Act::Relu);
            let mut bits = vec![];
            for threads in 1..4 {
                let mut out = vec![f32::NAN; c_out * h * w];
                let mut scratch = vec![0.0; p.scratch_len()];
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| conv2d(&p, &x.to_f32_vec(), &mut out, &mut scratch, threads));
                close(&out, want.as_f32().unwrap(), 1e-4).unwrap();
                bits.push(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
            assert!(
                bits.windows(2).all(|b| b[0] == b[1]),
                "{isa:?} {c_in}->{c_out} group {group}: threads change bits"
            );
            if isa != F32Isa::Scalar {
                assert!(p.shifted(), "{isa:?} {c_in}->{c_out}: expected the shifted-rows path");
            }
        }
    }
}
